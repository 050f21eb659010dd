//! A [`Transport`] backed by the software device: it keeps a virtio status register and
//! feature words as a PCI device would, validates FEATURES_OK like QEMU does, and starts the
//! software device in loopback on queue pair 0 at DRIVER_OK. For tests of the port layer: it
//! logs what the driver did, in order ([`FakeEvent`]), can refuse DRIVER_OK, and runs a test's
//! hook at every reset.
//!
//! With VIRTIO_NET_F_CTRL_VQ negotiated it also plays the device side of the control queue
//! ("Control Virtqueue", 5.1.6.5) in the control queue's notify hook, synchronously: it records
//! each command ([`CtrlRecord`]), answers as the test configured ([`CtrlAnswer`]), and serves
//! nothing before DRIVER_OK (a notification then is counted in [`FakeCtrlState::early`]).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::device_ring::{Chain, DeviceRing, RingFault};
use super::{AddressSpace, CountingNotify, DeviceConfig, DeviceCore, Mode, NotifyMode, QueueSpec, SoftDevice};
use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::features::{self, Features};
use crate::spec::net::{self as net_spec, config as net_config, ctrl as ctrl_spec, S_ANNOUNCE, S_LINK_UP};
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
    /// The hash fields the device reports for each frame it loops back, once the driver
    /// negotiated VIRTIO_NET_F_HASH_REPORT (offer it in `offered`).
    pub hash_reporter: Option<super::HashReporter>,
}

impl FakeDeviceConfig {
    /// A modern virtio-net device (VERSION_1, RING_PACKED, IN_ORDER, MAC, STATUS, MTU; two
    /// queues of up to 256 descriptors, MAC 52:54:00:00:00:01, MTU 1500) that never asks for
    /// notifications and loops every transmitted frame back to receive.
    pub fn modern() -> Self {
        FakeDeviceConfig {
            offered: Features::from_bits(&[
                features::VERSION_1,
                features::RING_PACKED,
                features::IN_ORDER,
                net_spec::F_MAC,
                net_spec::F_STATUS,
                net_spec::F_MTU,
            ]),
            max_queue_size: 256,
            num_queues: 2,
            mac: [0x52, 0x54, 0, 0, 0, 1],
            mtu: 1500,
            notify: NotifyMode::Never,
            behind_iommu: false,
            refuse_driver_ok: false,
            hash_reporter: None,
        }
    }
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
    /// A queue set up, by index.
    SetupQueue(u16),
    /// A control-queue command the device read: class and command.
    Ctrl(u8, u8),
}

/// How the fake control queue answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CtrlAnswer {
    /// VIRTIO_NET_OK to every command (VIRTIO_NET_ERR to a VQ_PAIRS_SET beyond
    /// `max_virtqueue_pairs`, as a device does).
    #[default]
    Ok,
    /// VIRTIO_NET_ERR to every command.
    Err,
    /// VIRTIO_NET_ERR to this class and command, OK to the others.
    ErrOn(u8, u8),
    /// Never: commands are read, recorded and left in flight.
    Never,
}

/// A command the fake control queue got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlRecord {
    /// `class`.
    pub class: u8,
    /// `command`.
    pub command: u8,
    /// The command-specific data, as on the wire.
    pub data: Vec<u8>,
    /// Descriptors in the chain.
    pub descs: u16,
    /// Device-writable bytes in the chain (the ack).
    pub writable: u32,
}

/// The fake control queue's state, shared with the test.
#[derive(Default)]
pub struct FakeCtrlState {
    /// How to answer.
    pub answer: CtrlAnswer,
    /// Commands received, in order.
    pub commands: Vec<CtrlRecord>,
    /// Notifications on the control queue before DRIVER_OK (left unserved).
    pub early: u32,
    /// A malformed control ring the device found.
    pub fault: Option<RingFault>,
    ring: Option<DeviceRing>,
    space: Option<AddressSpace>,
    driver_ok: bool,
    max_pairs: u16,
}

/// The handle a test keeps on the fake control queue.
pub type FakeCtrl = Arc<Mutex<FakeCtrlState>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeCtrlState {
    /// Serves every available command.
    fn serve(&mut self, events: &FakeEvents, announce: &AtomicBool) {
        if !self.driver_ok {
            self.early += 1;
            return;
        }
        let (Some(ring), Some(space)) = (self.ring.as_mut(), self.space.as_ref()) else { return };
        let mut chain = Chain::default();
        loop {
            match ring.pop_avail(space, &mut chain) {
                Ok(true) => {}
                Ok(false) => return,
                Err(fault) => {
                    self.fault = Some(fault);
                    return;
                }
            }
            let mut bytes = vec![0u8; 4096];
            let n = chain.gather(&mut bytes);
            bytes.truncate(n);
            let (class, command) = (bytes.first().copied().unwrap_or(0xff), bytes.get(1).copied().unwrap_or(0xff));
            let data = bytes.get(2..).unwrap_or_default().to_vec();
            log(events, FakeEvent::Ctrl(class, command));
            let ack = match self.answer {
                CtrlAnswer::Never => None,
                CtrlAnswer::Err => Some(ctrl_spec::ERR),
                CtrlAnswer::ErrOn(c, k) if (c, k) == (class, command) => Some(ctrl_spec::ERR),
                CtrlAnswer::ErrOn(..) | CtrlAnswer::Ok => {
                    Some(Self::apply(self.max_pairs, class, command, &data, announce))
                }
            };
            self.commands.push(CtrlRecord { class, command, data, descs: chain.descs, writable: chain.writable_len() });
            if let Some(ack) = ack {
                chain.scatter(&[ack]);
                ring.push_used(chain.id, 1, chain.descs, 1);
            }
        }
    }

    /// What a device does with an accepted command; its ack.
    fn apply(max_pairs: u16, class: u8, command: u8, data: &[u8], announce: &AtomicBool) -> u8 {
        match (class, command) {
            (ctrl_spec::ANNOUNCE, ctrl_spec::ANNOUNCE_ACK) => {
                announce.store(false, Ordering::Relaxed);
                ctrl_spec::OK
            }
            (ctrl_spec::MQ, ctrl_spec::MQ_VQ_PAIRS_SET) => {
                let pairs = data.get(..2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                if (1..=max_pairs).contains(&pairs) {
                    ctrl_spec::OK
                } else {
                    ctrl_spec::ERR
                }
            }
            _ => ctrl_spec::OK,
        }
    }
}

/// The log of [`FakeEvent`]s, shared with the test and the queues' notifiers.
pub type FakeEvents = Arc<Mutex<Vec<FakeEvent>>>;

fn log(events: &FakeEvents, event: FakeEvent) {
    events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
}

/// A queue's notifier: counts, and logs; the control queue's serves its commands.
struct FakeNotify {
    queue: u16,
    kicks: CountingNotify,
    events: FakeEvents,
    ctrl: Option<(FakeCtrl, Arc<AtomicBool>)>,
}

impl Notify for FakeNotify {
    fn notify(&self) {
        self.kicks.notify();
        log(&self.events, FakeEvent::Notify(self.queue));
        if let Some((ctrl, announce)) = &self.ctrl {
            lock(ctrl).serve(&self.events, announce);
        }
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
    /// The control queue's device side.
    pub ctrl: FakeCtrl,
    /// VIRTIO_NET_S_ANNOUNCE in the config `status`: set by a test, cleared by ANNOUNCE_ACK.
    pub announce: Arc<AtomicBool>,
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
            ctrl: FakeCtrl::default(),
            announce: Arc::default(),
        }
    }

    /// `max_virtqueue_pairs`: half the data queues (the control queue, if any, is the last).
    fn max_pairs(&self) -> u16 {
        self.config.num_queues / 2
    }

    /// The control queue's index under the negotiated features, if it has one.
    fn ctrl_index(&self) -> Option<u16> {
        let f = self.driver_features;
        f.has(net_spec::F_CTRL_VQ).then(|| if f.has(net_spec::F_MQ) { 2 * self.max_pairs() } else { 2 })
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
            mergeable: self.driver_features.has(net_spec::F_MRG_RXBUF),
            hash_report: self.config.hash_reporter.filter(|_| self.driver_features.has(net_spec::F_HASH_REPORT)),
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
        let mut ctrl = lock(&self.ctrl);
        (ctrl.ring, ctrl.space, ctrl.driver_ok) = (None, None, false);
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
            lock(&self.ctrl).driver_ok = true;
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
        // Through `supported_hash_types`; RSS limits as QEMU's virtio-net reports them.
        let mut space = [0u8; 24];
        space[net_config::RSS_MAX_KEY_SIZE] = 40;
        space[net_config::RSS_MAX_INDIRECTION_TABLE_LENGTH..net_config::RSS_MAX_INDIRECTION_TABLE_LENGTH + 2]
            .copy_from_slice(&128u16.to_le_bytes());
        space[net_config::SUPPORTED_HASH_TYPES..net_config::SUPPORTED_HASH_TYPES + 4]
            .copy_from_slice(&0x1ffu32.to_le_bytes());
        space[net_config::MAC..net_config::MAC + 6].copy_from_slice(&self.config.mac);
        let announce = if self.announce.load(Ordering::Relaxed) { S_ANNOUNCE } else { 0 };
        space[net_config::STATUS..net_config::STATUS + 2].copy_from_slice(&(S_LINK_UP | announce).to_le_bytes());
        space[net_config::MAX_VIRTQUEUE_PAIRS..net_config::MAX_VIRTQUEUE_PAIRS + 2]
            .copy_from_slice(&self.max_pairs().to_le_bytes());
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
        log(&self.events, FakeEvent::SetupQueue(queue));
        let mut ctrl = None;
        if self.ctrl_index() == Some(queue) {
            let space = AddressSpace::new(self.regions.clone());
            let event_idx = self.driver_features.has(features::EVENT_IDX);
            let ring = DeviceRing::new(format, size, addresses, &space, event_idx)
                .map_err(|e| Error::Transport(format!("fake: control queue: {e:?}")))?;
            let mut state = lock(&self.ctrl);
            (state.ring, state.space, state.max_pairs) = (Some(ring), Some(space), self.max_pairs());
            ctrl = Some((self.ctrl.clone(), self.announce.clone()));
        }
        Ok(Box::new(FakeNotify { queue, kicks: self.kicks.clone(), events: self.events.clone(), ctrl }))
    }
}

impl Drop for FakeTransport {
    fn drop(&mut self) {
        let _ = self.reset();
    }
}
