//! A virtio-net port: device initialisation ("Device Initialization", 3.1.1), feature
//! negotiation, queue set-up, and the port-level view (MAC, MTU, link, health, statistics).
//!
//! Negotiation requires VIRTIO_F_VERSION_1 (modern devices only), accepts ACCESS_PLATFORM
//! whenever offered (a device behind an IOMMU refuses FEATURES_OK without it), prefers
//! RING_PACKED and IN_ORDER, asks for MAC, STATUS and MTU when offered, and EVENT_IDX only when
//! configured. Queue pair `i` is
//! virtqueue `2i` (receive) and `2i + 1` (transmit) ("Device Types / Network Device /
//! Virtqueues", 5.1.2).
//!
//! Invariant: a queue hands its in-flight buffers back to their pools only after the device was
//! reset: every queue holds the shared device from the moment it is made, so dropping any queue
//! (or the port), on a failed initialisation too, resets the device first, and a device can
//! never write into a buffer the application got back. When the reset fails and the device may
//! still be there (a hung vhost-user backend), the buffers are leaked instead; a device that is
//! gone for good (a backend that closed its connection) gives them back.
//!
//! Order ("Device Initialization", 3.1.1): the receive rings are filled and their buffers made
//! available before DRIVER_OK, and the device is notified of them (if it asks) only after it.
//! The pool's data room must hold a full frame (MTU and Ethernet header), checked before any
//! buffer is posted.
//!
//! The port meets [`Transport::setup_queue`]'s `unsafe` contract: the rings it hands the device
//! lie in a region of their own, made and mapped here, and kept alive by the queues' rings.
#![allow(unsafe_code)]

use std::sync::{Arc, Mutex};

use super::queue::{Quiesce, Ring, RxQueue, TxQueue};
use super::stats::QueueCounters;
use super::QueueStats;
use crate::error::{Error, Result};
use crate::mbuf::Mempool;
use crate::mem::{DmaRegion, HugePages, IovaAllocator};
use crate::spec::features::{self, Features};
use crate::spec::net::{self as net_spec, config as net_config};
use crate::spec::status;
use crate::transport::{RingFormat, Transport};
use crate::virtqueue::{ring_bytes, Chains, PackedRing, RingMemory, SplitRing};

/// Which ring layout to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RingChoice {
    /// Packed when the device offers it, split otherwise.
    #[default]
    Auto,
    /// Packed, or an error when the device does not offer it.
    Packed,
    /// Split.
    Split,
}

/// How to set a port up.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// The port's number, stamped on received mbufs.
    pub port_id: u16,
    /// Receive/transmit queue pairs.
    pub queue_pairs: u16,
    /// Descriptors per ring; `None`: the device's maximum, capped at 1024.
    pub ring_size: Option<u16>,
    /// Ring layout.
    pub ring: RingChoice,
    /// Use IN_ORDER when the device offers it.
    pub in_order: bool,
    /// Use EVENT_IDX when the device offers it. Off by default: a poll-mode driver wants no
    /// notifications either way, and with EVENT_IDX every publish must read the split ring's
    /// `avail_event`, which a busy device rewrites all the time (a cache miss per burst).
    pub event_idx: bool,
    /// Huge page policy for the rings' memory.
    pub huge_pages: HugePages,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            port_id: 0,
            queue_pairs: 1,
            ring_size: None,
            ring: RingChoice::Auto,
            in_order: true,
            event_idx: false,
            huge_pages: HugePages::Preferred,
        }
    }
}

/// Statistics of a port: per queue pair, and summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Receive queues, by pair.
    pub rx_queues: Vec<QueueStats>,
    /// Transmit queues, by pair.
    pub tx_queues: Vec<QueueStats>,
    /// All receive queues.
    pub rx: QueueStats,
    /// All transmit queues.
    pub tx: QueueStats,
}

/// The transport, shared by the port and its queues so that whichever goes first resets the
/// device before buffers are handed back.
struct Device {
    transport: Mutex<Box<dyn Transport>>,
    name: String,
}

impl Quiesce for Device {
    fn quiesce(&self) -> bool {
        let mut transport = self.transport();
        // A status of 0 means the device is already reset.
        if transport.status().is_ok_and(|s| s == 0) {
            return true;
        }
        match transport.reset() {
            Ok(()) => true,
            Err(err) if transport.device_gone() => {
                tracing::warn!("{}: the device is gone ({err}): its buffers return to the pool", self.name);
                true
            }
            Err(err) => {
                tracing::error!("{}: reset before returning buffers failed: {err}", self.name);
                false
            }
        }
    }
}

impl Device {
    fn transport(&self) -> std::sync::MutexGuard<'_, Box<dyn Transport>> {
        self.transport.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What initialisation found out, for the port.
struct Negotiated {
    features: Features,
    format: RingFormat,
    ring_size: u16,
    mac: Option<[u8; 6]>,
    mtu: Option<u16>,
    rings: Arc<DmaRegion>,
}

/// Ethernet header bytes a frame carries besides its MTU ("Device configuration layout": "plus
/// low level ethernet header length").
const ETH_HEADER_LEN: u32 = 14;

/// The MTU when the device reports none (VIRTIO_NET_F_MTU not negotiated).
const DEFAULT_MTU: u16 = 1500;

/// A virtio-net device, initialised and running, with its queues.
pub struct Port {
    device: Arc<Device>,
    features: Features,
    format: RingFormat,
    ring_size: u16,
    mac: Option<[u8; 6]>,
    mtu: Option<u16>,
    queues: Vec<Option<(RxQueue, TxQueue)>>,
    counters: Vec<(Arc<QueueCounters>, Arc<QueueCounters>)>,
    _rings: Arc<DmaRegion>,
}

impl Port {
    /// Initialises the device behind `transport`: reset, ACKNOWLEDGE, DRIVER, features,
    /// FEATURES_OK (read back), device configuration (MAC, MTU; `pool`'s data room must hold a
    /// full frame), DMA mappings (`pool` and the rings), queues (receive rings filled from
    /// `pool`), DRIVER_OK, then the notifications the receive rings are owed. Ring memory gets
    /// its IOVAs from `iova`.
    pub fn open(
        transport: Box<dyn Transport>,
        pool: &Mempool,
        config: &PortConfig,
        iova: &IovaAllocator,
    ) -> Result<Port> {
        let name = transport.name().to_owned();
        let device = Arc::new(Device { transport: Mutex::new(transport), name });
        // Filled by `init`, and owned here: if `init` fails after making queues, they drop below,
        // with the transport's lock released, and reset the device before their buffers return.
        let mut queues = Vec::with_capacity(config.queue_pairs as usize);
        match Self::init(&device, pool, config, iova, &mut queues) {
            Ok(found) => {
                let mut port = Port {
                    device,
                    features: found.features,
                    format: found.format,
                    ring_size: found.ring_size,
                    mac: found.mac,
                    mtu: found.mtu,
                    queues: Vec::with_capacity(queues.len()),
                    counters: Vec::with_capacity(queues.len()),
                    _rings: found.rings,
                };
                for (rx, tx) in queues {
                    port.counters.push((rx.counters(), tx.counters()));
                    port.queues.push(Some((rx, tx)));
                }
                Ok(port)
            }
            Err(err) => {
                // The queues reset the device (their `Quiesce`) before their buffers go back.
                drop(queues);
                // Leave the device reset and tell it the driver gave up (best effort).
                let mut transport = device.transport();
                let _ = transport.reset();
                let _ = transport.set_status(status::FAILED);
                let _ = transport.reset();
                Err(err)
            }
        }
    }

    /// The features this driver asks for, given what the device offers.
    fn choose_features(name: &str, offered: Features, config: &PortConfig) -> Result<(Features, RingFormat)> {
        if config.queue_pairs == 0 {
            return Err(Error::InvalidConfig(format!("{name}: at least one queue pair is needed")));
        }
        if !offered.has(features::VERSION_1) {
            return Err(Error::Transport(format!(
                "{name}: the device does not offer VIRTIO_F_VERSION_1: legacy-only devices are not supported; \
                 use a modern device (QEMU: disable-legacy=on)"
            )));
        }
        let mut wanted = Features::from_bits(&[features::VERSION_1]);
        for optional in [features::ACCESS_PLATFORM, net_spec::F_MAC, net_spec::F_STATUS, net_spec::F_MTU] {
            if offered.has(optional) {
                wanted = wanted.with(optional);
            }
        }
        let format = match config.ring {
            RingChoice::Split => RingFormat::Split,
            RingChoice::Auto if !offered.has(features::RING_PACKED) => RingFormat::Split,
            RingChoice::Auto => RingFormat::Packed,
            RingChoice::Packed if offered.has(features::RING_PACKED) => RingFormat::Packed,
            RingChoice::Packed => {
                return Err(Error::Transport(format!(
                    "{name}: packed rings were asked for, but the device does not offer VIRTIO_F_RING_PACKED: \
                     use ring = \"split\" or \"auto\" (QEMU: packed=on)"
                )))
            }
        };
        if format == RingFormat::Packed {
            wanted = wanted.with(features::RING_PACKED);
        }
        if config.in_order && offered.has(features::IN_ORDER) {
            wanted = wanted.with(features::IN_ORDER);
        }
        if config.event_idx && offered.has(features::EVENT_IDX) {
            wanted = wanted.with(features::EVENT_IDX);
        }
        Ok((wanted, format))
    }

    /// The steps of [`Port::open`]; the queues it makes go into `queues`, each holding the
    /// device to reset before its buffers return.
    fn init(
        device: &Arc<Device>,
        pool: &Mempool,
        config: &PortConfig,
        iova: &IovaAllocator,
        queues: &mut Vec<(RxQueue, TxQueue)>,
    ) -> Result<Negotiated> {
        let name = device.name.as_str();
        let mut transport = device.transport();
        let transport = &mut **transport;
        if config.queue_pairs > 1 && !transport.queue_pairs_without_control_queue() {
            return Err(Error::InvalidConfig(format!(
                "{name}: {} queue pairs asked for, but over this transport the device activates more than one \
                 pair only through the control queue, which this driver does not drive yet: use one queue pair",
                config.queue_pairs
            )));
        }
        transport.reset()?;
        transport.set_status(status::ACKNOWLEDGE)?;
        transport.set_status(status::ACKNOWLEDGE | status::DRIVER)?;
        let offered = transport.device_features()?;
        if transport.requires_access_platform() && !offered.has(features::ACCESS_PLATFORM) {
            return Err(Error::Transport(format!(
                "{name}: the device does not offer VIRTIO_F_ACCESS_PLATFORM, so it would bypass the IOMMU and \
                 take the driver's IOVAs for physical addresses: give it one (QEMU: iommu_platform=on)"
            )));
        }
        let (wanted, format) = Self::choose_features(name, offered, config)?;
        transport.set_driver_features(wanted)?;
        transport.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
        let now = transport.status()?;
        if now & status::FEATURES_OK == 0 {
            return Err(Error::Transport(format!(
                "{name}: the device refused the features {wanted:?} (offered {offered:?}; status read back {now:#x}): \
                 it needs a feature this driver does not support"
            )));
        }

        let (mac, mtu) = Self::read_config(transport, wanted)?;
        // "Device configuration layout" (5.1.4): with VIRTIO_NET_F_MTU the driver must supply
        // receive buffers for a packet of `mtu` plus the Ethernet header; without it "Setting Up
        // Receive Buffers" (5.1.6.3) sizes them for 1514-byte packets.
        let frame = u32::from(mtu.unwrap_or(DEFAULT_MTU)) + ETH_HEADER_LEN;
        if pool.data_room() < frame {
            return Err(Error::InvalidConfig(format!(
                "{name}: the pool's data room of {} bytes cannot hold a full frame of {frame} bytes (MTU {}{} + \
                 {ETH_HEADER_LEN}-byte Ethernet header): make the pool with a data room of at least {frame} bytes \
                 (MempoolConfig::data_room; see Mempool::data_room)",
                pool.data_room(),
                mtu.unwrap_or(DEFAULT_MTU),
                if mtu.is_some() { ", from the device" } else { "" },
            )));
        }

        let queues_needed = 2 * config.queue_pairs;
        let available = transport.num_queues()?;
        if available < queues_needed {
            return Err(Error::InvalidConfig(format!(
                "{name}: {} queue pairs need {queues_needed} virtqueues, the device has {available}",
                config.queue_pairs
            )));
        }
        let max = (0..queues_needed).map(|q| transport.max_queue_size(q)).collect::<Result<Vec<_>>>()?;
        let device_max = max.iter().copied().min().unwrap_or(0);
        let size = match config.ring_size {
            Some(size) => {
                if size == 0 || size > device_max || (format == RingFormat::Split && !size.is_power_of_two()) {
                    return Err(Error::QueueSizeRefused {
                        queue: 0,
                        requested: size,
                        max: device_max,
                        hint: if format == RingFormat::Split {
                            ": use a power of two no larger than the maximum"
                        } else {
                            ": use a size no larger than the maximum"
                        },
                    });
                }
                size
            }
            None => {
                let size = device_max.min(1024);
                if format == RingFormat::Split {
                    1 << (15 - size.leading_zeros().min(15))
                } else {
                    size
                }
            }
        };

        transport.map_dma(pool.region())?;
        let per_ring = ring_bytes(format, size);
        let rings = Arc::new(DmaRegion::new(
            &format!("{name}-rings"),
            per_ring * queues_needed as usize,
            config.huge_pages,
            iova,
        )?);
        transport.map_dma(&rings)?;

        let in_order = wanted.has(features::IN_ORDER);
        let event_idx = wanted.has(features::EVENT_IDX);
        // One descriptor per chain; transmit completions need no length.
        let make_ring = |index: u16, chains: Chains| -> Result<Ring> {
            let memory = RingMemory::new(rings.clone(), per_ring * index as usize, format, size)?;
            Ok(match format {
                RingFormat::Packed => Ring::Packed(PackedRing::new(memory, in_order, chains)?),
                RingFormat::Split => Ring::Split(SplitRing::new(memory, event_idx, in_order, chains)?),
            })
        };
        let quiesce: Arc<dyn Quiesce> = device.clone();
        for pair in 0..config.queue_pairs {
            let (rx_index, tx_index) = (2 * pair, 2 * pair + 1);
            let rx_ring = make_ring(rx_index, Chains::OneDescriptor)?;
            let tx_ring = make_ring(tx_index, Chains::OneDescriptorNoLengths)?;
            // SAFETY: both rings were just laid in `rings`, a region made for this port's rings
            // alone and mapped for the device above; each ring's memory keeps the region alive,
            // and its queue resets the device before the ring is dropped (`with_quiesce`).
            let rx_notify = unsafe { transport.setup_queue(rx_index, size, format, rx_ring.addresses()) }?;
            // SAFETY: as for the receive ring.
            let tx_notify = unsafe { transport.setup_queue(tx_index, size, format, tx_ring.addresses()) }?;
            // Buffers are posted (not notified) now; the queues hold the device from here on.
            let rx = RxQueue::new(rx_ring, pool.clone(), rx_notify, config.port_id).with_quiesce(quiesce.clone());
            queues.push((rx, TxQueue::new(tx_ring, tx_notify).with_quiesce(quiesce.clone())));
        }
        transport.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK)?;
        let now = transport.status()?;
        if now & status::DEVICE_NEEDS_RESET != 0 || now & status::DRIVER_OK == 0 {
            return Err(Error::Transport(format!("{name}: the device did not accept DRIVER_OK (status {now:#x})")));
        }
        // The device is live: the receive rings' notifications may go now.
        for (rx, _) in queues.iter_mut() {
            rx.start();
        }
        Ok(Negotiated { features: wanted, format, ring_size: size, mac, mtu, rings })
    }

    /// The MAC and MTU the device reports, when negotiated (readable once FEATURES_OK is set).
    fn read_config(transport: &mut dyn Transport, features: Features) -> Result<(Option<[u8; 6]>, Option<u16>)> {
        let mut mac = None;
        if features.has(net_spec::F_MAC) {
            let mut bytes = [0u8; 6];
            transport.read_device_config(net_config::MAC, &mut bytes)?;
            mac = Some(bytes);
        }
        let mut mtu = None;
        if features.has(net_spec::F_MTU) {
            let mut bytes = [0u8; 2];
            transport.read_device_config(net_config::MTU, &mut bytes)?;
            mtu = Some(u16::from_le_bytes(bytes));
        }
        Ok((mac, mtu))
    }

    /// What the user calls the device (PCI address or socket path).
    pub fn name(&self) -> &str {
        &self.device.name
    }

    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The ring layout in use.
    pub fn ring_format(&self) -> RingFormat {
        self.format
    }

    /// Descriptors per ring.
    pub fn ring_size(&self) -> u16 {
        self.ring_size
    }

    /// The device's MAC address, when it reports one (VIRTIO_NET_F_MAC).
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// The device's MTU, when it reports one (VIRTIO_NET_F_MTU).
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    /// Number of queue pairs.
    pub fn queue_pairs(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Takes queue pair `pair` out of the port, to be polled by one thread. `None` if it was
    /// already taken or does not exist.
    pub fn take_queues(&mut self, pair: u16) -> Option<(RxQueue, TxQueue)> {
        self.queues.get_mut(pair as usize)?.take()
    }

    /// Link status: up unless the device reports it down (VIRTIO_NET_F_STATUS), or the device
    /// needs a reset.
    pub fn link_up(&self) -> Result<bool> {
        self.check()?;
        if !self.features.has(net_spec::F_STATUS) {
            return Ok(true);
        }
        let mut status = [0u8; 2];
        let mut transport = self.device.transport();
        transport.read_device_config(net_config::STATUS, &mut status)?;
        Ok(u16::from_le_bytes(status) & net_spec::S_LINK_UP != 0)
    }

    /// Checks the device status: an error when the device set DEVICE_NEEDS_RESET (it stopped
    /// processing the rings) or is no longer running.
    pub fn check(&self) -> Result<()> {
        let mut transport = self.device.transport();
        let now = transport.status()?;
        if now & status::DEVICE_NEEDS_RESET != 0 {
            return Err(Error::Transport(format!(
                "{}: the device set DEVICE_NEEDS_RESET (status {now:#x}): it stopped; restart the port",
                self.device.name
            )));
        }
        if now & status::DRIVER_OK == 0 {
            return Err(Error::Transport(format!("{}: the device is not running (status {now:#x})", self.device.name)));
        }
        Ok(())
    }

    /// Counters of every queue, wherever the queues are now, and their sums.
    pub fn stats(&self) -> PortStats {
        let mut stats = PortStats::default();
        for (rx, tx) in &self.counters {
            let (rx, tx) = (rx.snapshot(), tx.snapshot());
            stats.rx += rx;
            stats.tx += tx;
            stats.rx_queues.push(rx);
            stats.tx_queues.push(tx);
        }
        stats
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // Queues still held by the port drop right after, and return their buffers only if
        // this succeeded.
        self.device.quiesce();
    }
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("name", &self.device.name)
            .field("features", &self.features)
            .field("format", &self.format)
            .field("ring_size", &self.ring_size)
            .finish_non_exhaustive()
    }
}
