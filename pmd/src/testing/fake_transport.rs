//! A [`Transport`] backed by the software device: it keeps a virtio status register and
//! feature words as a PCI device would, validates FEATURES_OK like QEMU does, and starts the
//! software device in loopback on queue pair 0 at DRIVER_OK. For tests of the port layer: it
//! logs what the driver did, in order ([`FakeEvent`]), can refuse DRIVER_OK, and runs a test's
//! hook at every reset.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{AddressSpace, CountingNotify, DeviceConfig, DeviceCore, Mode, NotifyMode, QueueSpec, SoftDevice};
use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::features::{self, Features};
use crate::spec::net::{config as net_config, S_LINK_UP};
use crate::spec::status;
use crate::transport::{Notify, QueueAddresses, RingFormat, Transport};

/// What the fake device offers and how it behaves.
#[derive(Clone, Debug)]
pub struct FakeDeviceConfig {
    /// Features offered.
    pub offered: Features,
    /// Largest ring size per queue.
    pub max_queue_size: u16,
    /// Virtqueues.
    pub num_queues: u16,
    /// MAC address in the config space.
    pub mac: [u8; 6],
    /// MTU in the config space.
    pub mtu: u16,
    /// Notification suppression the device asks for.
    pub notify: NotifyMode,
    /// The transport puts the device behind an IOMMU (like VFIO): ACCESS_PLATFORM is required.
    pub behind_iommu: bool,
    /// The device refuses DRIVER_OK: the bit does not stick and the device does not start.
    pub refuse_driver_ok: bool,
}

/// What the driver did to the fake device, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeEvent {
    /// A status write, with the value written.
    Status(u8),
    /// A reset.
    Reset,
    /// An available-buffer notification on this queue.
    Notify(u16),
}

/// The log of [`FakeEvent`]s, shared with the test and the queues' notifiers.
pub type FakeEvents = Arc<Mutex<Vec<FakeEvent>>>;

fn log(events: &FakeEvents, event: FakeEvent) {
    events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
}

/// A queue's notifier: counts, and logs.
struct FakeNotify {
    queue: u16,
    kicks: CountingNotify,
    events: FakeEvents,
}

impl Notify for FakeNotify {
    fn notify(&self) {
        self.kicks.notify();
        log(&self.events, FakeEvent::Notify(self.queue));
    }
}

/// The fake transport. Shares a "needs reset" switch with the test, to raise
/// DEVICE_NEEDS_RESET as a device would after an internal error.
pub struct FakeTransport {
    config: FakeDeviceConfig,
    status: u8,
    driver_features: Features,
    queues: Vec<Option<QueueSpec>>,
    regions: Vec<Arc<DmaRegion>>,
    device: Option<SoftDevice>,
    /// Set by a test to make the device report DEVICE_NEEDS_RESET.
    pub needs_reset: Arc<AtomicBool>,
    /// Notifications sent, over all queues.
    pub kicks: CountingNotify,
    /// What the driver did, in order.
    pub events: FakeEvents,
    /// Called at every reset, before the device stops (a test's probe of what the reset saw).
    pub on_reset: Option<Box<dyn FnMut() + Send>>,
}

impl FakeTransport {
    /// A fake device with `config`.
    pub fn new(config: FakeDeviceConfig) -> Self {
        Self {
            queues: vec![None; config.num_queues as usize],
            config,
            status: 0,
            driver_features: Features::EMPTY,
            regions: Vec::new(),
            device: None,
            needs_reset: Arc::default(),
            kicks: CountingNotify::default(),
            events: FakeEvents::default(),
            on_reset: None,
        }
    }

    fn start_device(&mut self) -> Result<()> {
        let (Some(rx), Some(tx)) = (self.queues.first().copied().flatten(), self.queues.get(1).copied().flatten())
        else {
            return Err(Error::Transport("fake device: DRIVER_OK without queue pair 0".into()));
        };
        let config = DeviceConfig {
            mode: Mode::Loopback,
            in_order: self.driver_features.has(features::IN_ORDER),
            event_idx: self.driver_features.has(features::EVENT_IDX),
            notify: self.config.notify,
            ..Default::default()
        };
        let core = DeviceCore::new(config, AddressSpace::new(self.regions.clone()), Some(rx), Some(tx))
            .map_err(|e| Error::Transport(format!("fake device: {e:?}")))?;
        self.device =
            Some(SoftDevice::spawn(core).map_err(|source| Error::Io { what: "fake device thread".into(), source })?);
        Ok(())
    }
}

impl Transport for FakeTransport {
    fn name(&self) -> &str {
        "fake"
    }

    fn requires_access_platform(&self) -> bool {
        self.config.behind_iommu
    }

    fn reset(&mut self) -> Result<()> {
        log(&self.events, FakeEvent::Reset);
        if let Some(probe) = self.on_reset.as_mut() {
            probe();
        }
        if let Some(device) = self.device.take() {
            device.stop().map_err(|e| Error::Transport(format!("fake device found a malformed ring: {e:?}")))?;
        }
        self.status = 0;
        self.driver_features = Features::EMPTY;
        self.queues.iter_mut().for_each(|q| *q = None);
        self.needs_reset.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn status(&mut self) -> Result<u8> {
        let needs_reset = if self.needs_reset.load(Ordering::Relaxed) { status::DEVICE_NEEDS_RESET } else { 0 };
        Ok(self.status | needs_reset)
    }

    fn set_status(&mut self, new: u8) -> Result<()> {
        log(&self.events, FakeEvent::Status(new));
        let mut new = new;
        if self.config.refuse_driver_ok {
            new &= !status::DRIVER_OK;
        }
        if new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            // Like QEMU: FEATURES_OK stays clear for features not offered, without VERSION_1,
            // or without ACCESS_PLATFORM when the device needs it.
            let f = self.driver_features;
            let platform_ok = !self.config.offered.has(features::ACCESS_PLATFORM) || f.has(features::ACCESS_PLATFORM);
            if f.minus(self.config.offered) != Features::EMPTY || !f.has(features::VERSION_1) || !platform_ok {
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0 {
            self.start_device()?;
        }
        self.status = new;
        Ok(())
    }

    fn device_features(&mut self) -> Result<Features> {
        Ok(self.config.offered)
    }

    fn set_driver_features(&mut self, features: Features) -> Result<()> {
        self.driver_features = features;
        Ok(())
    }

    fn num_queues(&mut self) -> Result<u16> {
        Ok(self.config.num_queues)
    }

    fn max_queue_size(&mut self, _queue: u16) -> Result<u16> {
        Ok(self.config.max_queue_size)
    }

    fn read_device_config(&mut self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let mut space = [0u8; 12];
        space[net_config::MAC..net_config::MAC + 6].copy_from_slice(&self.config.mac);
        space[net_config::STATUS..net_config::STATUS + 2].copy_from_slice(&S_LINK_UP.to_le_bytes());
        space[net_config::MAX_VIRTQUEUE_PAIRS..net_config::MAX_VIRTQUEUE_PAIRS + 2]
            .copy_from_slice(&(self.config.num_queues / 2).to_le_bytes());
        space[net_config::MTU..net_config::MTU + 2].copy_from_slice(&self.config.mtu.to_le_bytes());
        let bytes =
            space.get(offset..offset + buf.len()).ok_or_else(|| Error::Transport("fake: config read".into()))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn map_dma(&mut self, region: &Arc<DmaRegion>) -> Result<()> {
        if !self.regions.iter().any(|r| Arc::ptr_eq(r, region)) {
            self.regions.push(region.clone());
        }
        Ok(())
    }

    unsafe fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        format: RingFormat,
        addresses: QueueAddresses,
    ) -> Result<Box<dyn Notify>> {
        if size > self.config.max_queue_size {
            return Err(Error::QueueSizeRefused { queue, requested: size, max: self.config.max_queue_size, hint: "" });
        }
        let slot =
            self.queues.get_mut(queue as usize).ok_or_else(|| Error::Transport(format!("fake: no queue {queue}")))?;
        *slot = Some(QueueSpec { format, size, addresses });
        Ok(Box::new(FakeNotify { queue, kicks: self.kicks.clone(), events: self.events.clone() }))
    }
}

impl Drop for FakeTransport {
    fn drop(&mut self) {
        let _ = self.reset();
    }
}
