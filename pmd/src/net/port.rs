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
//! The control queue (VIRTIO_NET_F_CTRL_VQ, "Control Virtqueue", 5.1.6.5) is negotiated when the
//! device offers it, the transport can give it and [`PortConfig::control_queue`] asks for it,
//! with every VIRTIO_NET_F_CTRL_* feature, GUEST_ANNOUNCE and MQ the device offers (each
//! requires CTRL_VQ, "Feature bit requirements", 5.1.3.1). It is virtqueue
//! `2 * max_virtqueue_pairs` with MQ, 2 without, set up with the data queues before DRIVER_OK;
//! commands go only after DRIVER_OK. With MQ, more than one pair is activated with
//! VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET right after DRIVER_OK ("Device operation in multiqueue mode").
//! With VIRTIO_NET_F_RSS (negotiated whenever offered with the control queue) and more than one
//! pair, the port then sends the default RSS configuration ([`RssConfig::spread`]), so that the
//! receive queue of every packet follows from the key and table alone; [`Port::set_rss`]
//! changes it at run time.
//!
//! Hash reports (VIRTIO_NET_F_HASH_REPORT, "Hash calculation for incoming packets") are
//! negotiated only when [`PortConfig::rx_hash_report`] asks, and need the control queue: the
//! device computes hashes only for the hash types the driver enables, with the RSS
//! configuration (VIRTIO_NET_CTRL_MQ_RSS_CONFIG, sent then for one pair too) or, without
//! VIRTIO_NET_F_RSS, VIRTIO_NET_CTRL_MQ_HASH_CONFIG; both with the default key and hash types.
//! The header grows to 20 bytes both ways and the receive queues take [`RxPath::HashReport`].
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
use std::time::Duration;

use super::ctrl::{CtrlCommand, CtrlQueue, CtrlRingSpec, CtrlUnavailable, RxFilter, MAX_DATA};
use super::offload::{OffloadConfig, Offloads};
use super::queue::{Quiesce, Ring, RxPath, RxQueue, TxPath, TxQueue};
use super::rss::{RssCapabilities, RssConfig, DEFAULT_HASH_TYPES, DEFAULT_KEY};
use super::stats::QueueCounters;
use super::QueueStats;
use crate::error::{Error, Result};
use crate::mbuf::Mempool;
use crate::mem::{DmaRegion, HugePages, IovaAllocator};
use crate::spec::features::{self, Features};
use crate::spec::net::{self as net_spec, config as net_config};
use crate::spec::status;
use crate::transport::{RingFormat, Transport};
use crate::virtqueue::{
    indirect_bytes, ring_bytes, table_segments, Chains, IndirectTables, PackedRing, RingMemory, SplitRing,
};

/// Which ring layout to use (`auto`, `packed`, `split` in a file or on a command line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize), serde(rename_all = "lowercase"))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
    /// Use the control queue (VIRTIO_NET_F_CTRL_VQ) when the device offers it and the transport
    /// can give it. On by default; without it, the port's control commands return
    /// [`Error::NoControlQueue`] and a PCI device runs one queue pair.
    pub control_queue: bool,
    /// How long a control-queue command may take before the port gives up on the control queue
    /// ([`Error::CtrlTimeout`]).
    pub control_timeout: Duration,
    /// Use mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF) when the device offers them: a
    /// frame larger than one buffer (a jumbo frame, a large receive offload) comes back as a
    /// chained mbuf, so the pool's buffers need not hold a whole frame of the MTU. Off by
    /// default: the one-buffer receive path does not read the header and is the fastest.
    pub rx_mergeable: bool,
    /// Send multi-segment mbufs, one descriptor chain each. Off by default: the one-descriptor
    /// transmit path is the fastest, and drops (and counts) a multi-segment mbuf.
    pub tx_multi_segment: bool,
    /// On the transmit chains paths (`tx_multi_segment`, transmit offloads), send a packet of
    /// several segments as one ring descriptor naming an indirect table of them
    /// (VIRTIO_F_INDIRECT_DESC, negotiated only then, and when offered): the ring then holds as
    /// many such packets as it has descriptors, not a fraction of that (size the pool for it:
    /// every segment of every packet in flight is out of the pool), and the device reads one
    /// ring descriptor per packet. The tables are laid out once, with the rings. Off by
    /// default: the driver's cost per packet is the same as a chain's within 3% for 2 to 4
    /// segments (callgrind, `scripts/bench/tx-chains-instr.sh`), so it pays only where ring
    /// room or the device's ring reads matter. No effect on the one-descriptor path.
    pub tx_indirect: bool,
    /// Descriptors per ring of each queue pair, by pair (both rings of pair `i` get entry `i`):
    /// per-queue ring sizes, as DPDK's queue set-up takes them. Pairs beyond the list, or all
    /// when it is empty, get [`ring_size`](Self::ring_size).
    pub pair_ring_sizes: Vec<u16>,
    /// Checksum and segmentation offloads, each negotiated only when asked for here and offered
    /// ([`Port::offloads`]). A transmit offload implies transmit chains (TSO packets are large).
    pub offloads: OffloadConfig,
    /// Count packet classes per queue (size bins, multicast, broadcast: the `rx_size_64_packets`
    /// family of [`PortStats::xstats`]). Off by default: it reads every frame's length and
    /// destination MAC, a cache line the forwarding may not otherwise touch.
    pub packet_classes: bool,
    /// Ask the device for each received frame's hash (VIRTIO_NET_F_HASH_REPORT), put on its
    /// mbuf ([`Mbuf::rx_hash`](crate::mbuf::Mbuf::rx_hash)); an error at open when the device
    /// does not offer it with a control queue. Off by default: the header grows to 20 bytes and
    /// receive takes the header-reading path.
    pub rx_hash_report: bool,
    /// The largest frame the application means to forward, Ethernet header included
    /// ([`for_forwarding`](Self::for_forwarding) sets it): a device that states a smaller MTU
    /// (VIRTIO_NET_F_MTU) is logged as a warning at open (it will not send or take such frames).
    pub max_frame: Option<u32>,
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
            control_queue: true,
            control_timeout: Duration::from_secs(1),
            rx_mergeable: false,
            tx_multi_segment: false,
            tx_indirect: false,
            pair_ring_sizes: Vec::new(),
            offloads: OffloadConfig::default(),
            packet_classes: false,
            rx_hash_report: false,
            max_frame: None,
        }
    }
}

impl PortConfig {
    /// Sets the port up to forward frames of up to `max_frame` bytes (Ethernet header included,
    /// no FCS) through buffers of `data_room` bytes, with every checksum and segmentation offload
    /// ([`OffloadConfig::ALL`]) when `offloads`: mergeable receive buffers and transmit chains
    /// whenever a frame may span buffers (one larger than a buffer, or an offloaded
    /// super-packet), so that a received frame goes out again whole and with its offload
    /// metadata ([`Mbuf::offload`](crate::mbuf::Mbuf::offload): a partial checksum, a TSO
    /// segment size), as a vSwitch in a VM forwards it. Without either, the one-buffer paths.
    pub fn for_forwarding(mut self, max_frame: u32, data_room: u32, offloads: bool) -> PortConfig {
        let multi_segment = offloads || max_frame > data_room;
        self.rx_mergeable = multi_segment;
        self.tx_multi_segment = multi_segment;
        self.offloads = if offloads { OffloadConfig::ALL } else { OffloadConfig::default() };
        self.max_frame = Some(max_frame);
        self
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
    ctrl_missing: CtrlUnavailable,
    max_pairs: u16,
    rss: Option<(RssCapabilities, RssConfig)>,
    rx_path: RxPath,
    tx_path: TxPath,
    pair_sizes: Vec<u16>,
}

/// Ethernet header bytes a frame carries besides its MTU ("Device configuration layout": "plus
/// low level ethernet header length").
const ETH_HEADER_LEN: u32 = 14;

/// The largest receive offload super-packet without its header: 65562 bytes of buffer
/// ("Setting Up Receive Buffers", 5.1.6.3) less the 12-byte header.
const LRO_FRAME: u32 = 65562 - 12;

/// The MTU when the device reports none (VIRTIO_NET_F_MTU not negotiated).
const DEFAULT_MTU: u16 = 1500;

/// The control-queue features negotiated whenever offered with VIRTIO_NET_F_CTRL_VQ.
const CTRL_FEATURES: [u32; 8] = [
    net_spec::F_CTRL_RX,
    net_spec::F_CTRL_RX_EXTRA,
    net_spec::F_CTRL_VLAN,
    net_spec::F_GUEST_ANNOUNCE,
    net_spec::F_MQ,
    net_spec::F_CTRL_MAC_ADDR,
    net_spec::F_CTRL_GUEST_OFFLOADS,
    net_spec::F_RSS,
];

/// A virtio-net device, initialised and running, with its queues.
///
/// Open it on a transport ([`setup::PortSet`](crate::setup::PortSet) does that from device
/// strings), take each queue pair to the thread that polls it, and drop everything when done:
/// the device is reset before any buffer returns to its pool. Here over the software device of
/// the `testing` feature, which loops every frame back:
///
/// ```
/// use virtio_pmd::mbuf::{Mempool, MempoolConfig};
/// use virtio_pmd::mem::{HugePages, IovaAllocator};
/// use virtio_pmd::net::{Port, PortConfig};
/// use virtio_pmd::testing::{FakeDeviceConfig, FakeTransport};
///
/// # fn main() -> virtio_pmd::Result<()> {
/// let iova = IovaAllocator::identity();
/// let pool = Mempool::new(&MempoolConfig { count: 1024, huge_pages: HugePages::Never, ..Default::default() }, &iova)?;
/// let device = Box::new(FakeTransport::new(FakeDeviceConfig::modern()));
/// let mut port = Port::open(device, &pool, &PortConfig { huge_pages: HugePages::Never, ..Default::default() }, &iova)?;
/// let (mut rx, mut tx) = port.take_queues(0).expect("queue pair 0");
///
/// let mut burst = Vec::with_capacity(32); // reserved once: bursts never allocate
/// let mut frame = pool.alloc().expect("a free mbuf");
/// frame.append(60).expect("room").copy_from_slice(&[0xab; 60]);
/// burst.push(frame);
/// assert_eq!(tx.tx_burst(&mut burst), 1);
/// while rx.rx_burst(&mut burst) == 0 {} // the software device loops it back
/// assert_eq!(burst[0].data(), &[0xab; 60][..]);
///
/// drop(burst);
/// drop((rx, tx, port)); // the device is reset, then the posted buffers go back
/// assert_eq!(pool.stats().in_use, 0);
/// # Ok(())
/// # }
/// ```
pub struct Port {
    device: Arc<Device>,
    features: Features,
    format: RingFormat,
    ring_size: u16,
    mac: Option<[u8; 6]>,
    mtu: Option<u16>,
    queues: Vec<Option<(RxQueue, TxQueue)>>,
    counters: Vec<(Arc<QueueCounters>, Arc<QueueCounters>)>,
    /// The counters at the last [`Port::reset_stats`], by queue pair (empty: never reset).
    stats_base: Vec<(QueueStats, QueueStats)>,
    /// The control queue, when negotiated; dropped after the queues' device reset.
    ctrl: Option<CtrlQueue>,
    /// Why there is no control queue, when there is none.
    ctrl_missing: CtrlUnavailable,
    /// `max_virtqueue_pairs` with VIRTIO_NET_F_MQ, 1 without.
    max_pairs: u16,
    rx_path: RxPath,
    tx_path: TxPath,
    /// With VIRTIO_NET_F_RSS: what the device supports, and the configuration it was last given
    /// (none yet: the device steers as without RSS).
    rss_caps: Option<RssCapabilities>,
    rss: Option<RssConfig>,
    /// Descriptors per ring, by queue pair.
    pair_sizes: Vec<u16>,
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
        let mut ctrl = None;
        match Self::init(&device, pool, config, iova, &mut queues, &mut ctrl) {
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
                    stats_base: Vec::new(),
                    ctrl,
                    ctrl_missing: found.ctrl_missing,
                    max_pairs: found.max_pairs,
                    rss_caps: found.rss.as_ref().map(|(caps, _)| *caps),
                    rss: found.rss.map(|(_, config)| config),
                    pair_sizes: found.pair_sizes,
                    rx_path: found.rx_path,
                    tx_path: found.tx_path,
                    _rings: found.rings,
                };
                for (rx, tx) in queues {
                    port.counters.push((rx.counters(), tx.counters()));
                    port.queues.push(Some((rx, tx)));
                }
                port.log_data_path(config);
                Ok(port)
            }
            Err(err) => {
                // The queues reset the device (their `Quiesce`) before their buffers go back.
                drop(queues);
                drop(ctrl);
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
    /// Besides the features, says why there will be no control queue (when there will be none).
    fn choose_features(
        name: &str,
        offered: Features,
        config: &PortConfig,
        transport_ctrl: bool,
    ) -> Result<(Features, RingFormat, CtrlUnavailable)> {
        if config.queue_pairs == 0 {
            return Err(Error::InvalidConfig(format!("{name}: at least one queue pair is needed")));
        }
        if !offered.has(features::VERSION_1) {
            return Err(Error::FeatureNotOffered {
                device: name.to_owned(),
                feature: "VIRTIO_F_VERSION_1",
                why: "legacy-only devices are not supported; use a modern device (QEMU: disable-legacy=on)",
            });
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
                return Err(Error::FeatureNotOffered {
                    device: name.to_owned(),
                    feature: "VIRTIO_F_RING_PACKED",
                    why: "packed rings were asked for: use ring = \"split\" or \"auto\" (QEMU: packed=on)",
                })
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
        if config.rx_mergeable && offered.has(net_spec::F_MRG_RXBUF) {
            wanted = wanted.with(net_spec::F_MRG_RXBUF);
        }
        for offload in config.offloads.wanted(offered) {
            wanted = wanted.with(offload);
        }
        // The transmit chains paths (see `init`) are the only users of indirect tables.
        let tx_chains = config.tx_multi_segment || wanted.has(net_spec::F_CSUM);
        if tx_chains && config.tx_indirect && offered.has(features::INDIRECT_DESC) {
            wanted = wanted.with(features::INDIRECT_DESC);
        }
        let ctrl_missing = if !transport_ctrl {
            CtrlUnavailable::Transport
        } else if !offered.has(net_spec::F_CTRL_VQ) {
            CtrlUnavailable::NotOffered
        } else if !config.control_queue {
            CtrlUnavailable::Disabled
        } else {
            wanted = wanted.with(net_spec::F_CTRL_VQ);
            for optional in CTRL_FEATURES {
                if offered.has(optional) {
                    wanted = wanted.with(optional);
                }
            }
            // Never read: the control queue exists.
            CtrlUnavailable::NotOffered
        };
        if config.rx_hash_report {
            // "Device configuration layout": not without the control queue, which enables the
            // hash types.
            if !offered.has(net_spec::F_HASH_REPORT) {
                return Err(Error::FeatureNotOffered {
                    device: name.to_owned(),
                    feature: "VIRTIO_NET_F_HASH_REPORT",
                    why: "PortConfig::rx_hash_report asks for per-packet hashes: give the device hash reports \
                          (QEMU: -device virtio-net-pci,hash=on) or turn rx_hash_report off",
                });
            }
            if !wanted.has(net_spec::F_CTRL_VQ) {
                return Err(Error::InvalidConfig(format!(
                    "{name}: PortConfig::rx_hash_report needs the control queue to enable the hash types, and \
                     {ctrl_missing}; or turn rx_hash_report off"
                )));
            }
            wanted = wanted.with(net_spec::F_HASH_REPORT);
        }
        Ok((wanted, format, ctrl_missing))
    }

    /// The steps of [`Port::open`]; the queues it makes go into `queues`, each holding the
    /// device to reset before its buffers return.
    fn init(
        device: &Arc<Device>,
        pool: &Mempool,
        config: &PortConfig,
        iova: &IovaAllocator,
        queues: &mut Vec<(RxQueue, TxQueue)>,
        ctrl: &mut Option<CtrlQueue>,
    ) -> Result<Negotiated> {
        let name = device.name.as_str();
        let mut transport = device.transport();
        let transport = &mut **transport;
        transport.reset()?;
        transport.set_status(status::ACKNOWLEDGE)?;
        transport.set_status(status::ACKNOWLEDGE | status::DRIVER)?;
        let offered = transport.device_features()?;
        if transport.requires_access_platform() && !offered.has(features::ACCESS_PLATFORM) {
            return Err(Error::FeatureNotOffered {
                device: name.to_owned(),
                feature: "VIRTIO_F_ACCESS_PLATFORM",
                why: "without it the device would bypass the IOMMU and take the driver's IOVAs for physical \
                      addresses: give it one (QEMU: iommu_platform=on)",
            });
        }
        let (wanted, format, ctrl_missing) = Self::choose_features(name, offered, config, transport.control_queue())?;
        // "Device configuration layout": `max_virtqueue_pairs` exists with MQ or RSS.
        let multiqueue = wanted.has(net_spec::F_MQ) || wanted.has(net_spec::F_RSS);
        if config.queue_pairs > 1 && !transport.queue_pairs_without_control_queue() && !multiqueue {
            let why = if wanted.has(net_spec::F_CTRL_VQ) {
                "the device does not offer VIRTIO_NET_F_MQ (QEMU: mq=on)".to_owned()
            } else {
                ctrl_missing.to_string()
            };
            return Err(Error::InvalidConfig(format!(
                "{name}: {} queue pairs asked for, but over this transport the device activates more than one \
                 pair only through the control queue with VIRTIO_NET_F_MQ, and {why}; or use one queue pair",
                config.queue_pairs
            )));
        }
        transport.set_driver_features(wanted)?;
        transport.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
        let now = transport.status()?;
        if now & status::FEATURES_OK == 0 {
            return Err(Error::FeaturesRefused { device: name.to_owned(), wanted, offered, status: now });
        }

        let (mac, mtu) = Self::read_config(transport, wanted)?;
        // Only a device that states its MTU (VIRTIO_NET_F_MTU) is held to it.
        let mtu_frame = mtu.map(|mtu| u32::from(mtu) + ETH_HEADER_LEN);
        if let (Some(max_frame), Some(mtu_frame)) = (config.max_frame, mtu_frame) {
            if max_frame > mtu_frame {
                tracing::warn!("{name}: frames of up to {max_frame} bytes asked for, but the device's MTU frame is {mtu_frame} bytes");
            }
        }
        let max_pairs = if multiqueue {
            let mut bytes = [0u8; 2];
            transport.read_device_config(net_config::MAX_VIRTQUEUE_PAIRS, &mut bytes)?;
            let max = u16::from_le_bytes(bytes);
            if !(net_spec::ctrl::MQ_VQ_PAIRS_MIN..=net_spec::ctrl::MQ_VQ_PAIRS_MAX).contains(&max) {
                return Err(Error::Transport(format!(
                    "{name}: the device reports max_virtqueue_pairs = {max}, outside the spec's 1..=0x8000"
                )));
            }
            max
        } else {
            1
        };
        if multiqueue && config.queue_pairs > max_pairs {
            return Err(Error::TooManyQueuePairs {
                device: name.to_owned(),
                requested: config.queue_pairs,
                max: max_pairs,
                limit: "the device's max_virtqueue_pairs is lower",
            });
        }
        let offloads = Offloads::from_features(wanted);
        let mergeable = wanted.has(net_spec::F_MRG_RXBUF);
        let hash_report = wanted.has(net_spec::F_HASH_REPORT);
        let rx_path = match (hash_report, offloads.any_rx(), mergeable) {
            (true, _, _) => RxPath::HashReport { mergeable, offloads: offloads.any_rx().then_some(offloads) },
            (false, true, _) => RxPath::Offloads { mergeable, offloads },
            (false, false, true) => RxPath::Mergeable,
            (false, false, false) => RxPath::Simple,
        };
        let tx_path = match (offloads.tx_checksum, config.tx_multi_segment) {
            (true, _) => TxPath::Offloads(offloads),
            (false, true) => TxPath::Chains,
            (false, false) => TxPath::Simple,
        };
        Self::check_pool(name, pool, mtu, (mergeable, offloads), offered.has(net_spec::F_MRG_RXBUF))?;

        // Counted in u32: max_virtqueue_pairs may be 0x8000, whose control queue index (0x10000)
        // no u16 virtqueue count reaches.
        let queues_needed = 2 * u32::from(config.queue_pairs);
        // "Virtqueues" (5.1.2): the control queue follows the most data queues the device has.
        let ctrl_index = wanted.has(net_spec::F_CTRL_VQ).then_some(2 * u32::from(max_pairs));
        let available = transport.num_queues()?;
        if u32::from(available) < queues_needed || ctrl_index.is_some_and(|index| u32::from(available) <= index) {
            return Err(Error::InvalidConfig(format!(
                "{name}: {} queue pairs need {queues_needed} virtqueues, the device has {available}",
                config.queue_pairs
            )));
        }
        // Both are now below `available`, a u16.
        let (queues_needed, ctrl_index) = (queues_needed as u16, ctrl_index.map(|index| index as u16));
        let max = (0..queues_needed).map(|q| transport.max_queue_size(q)).collect::<Result<Vec<_>>>()?;
        let device_max = max.iter().copied().min().unwrap_or(0);
        if config.pair_ring_sizes.len() > config.queue_pairs as usize {
            return Err(Error::InvalidConfig(format!(
                "{name}: {} per-pair ring sizes given for {} queue pairs: give at most one per pair",
                config.pair_ring_sizes.len(),
                config.queue_pairs
            )));
        }
        let size = Self::ring_size_for(config.ring_size, device_max, format, 0)?;
        // Per pair, both rings the same size; the rings lie one after the other in one region.
        let sizes = (0..config.queue_pairs)
            .map(|pair| match config.pair_ring_sizes.get(pair as usize) {
                Some(&requested) => {
                    let max = max[2 * pair as usize].min(max[2 * pair as usize + 1]);
                    Self::ring_size_for(Some(requested), max, format, 2 * pair)
                }
                None => Ok(size),
            })
            .collect::<Result<Vec<u16>>>()?;
        // Per pair: the receive ring, the transmit ring, and with indirect descriptors the
        // transmit ring's tables.
        let indirect = wanted.has(features::INDIRECT_DESC);
        let offsets: Vec<usize> = sizes
            .iter()
            .flat_map(|&s| [ring_bytes(format, s), ring_bytes(format, s), if indirect { indirect_bytes(s) } else { 0 }])
            .scan(0, |at, bytes| {
                let offset = *at;
                *at += bytes;
                Some(offset)
            })
            .collect();
        let total =
            sizes.iter().map(|&s| 2 * ring_bytes(format, s) + if indirect { indirect_bytes(s) } else { 0 }).sum();

        transport.map_dma(pool.region())?;
        let rings = Arc::new(DmaRegion::new(&format!("{name}-rings"), total, config.huge_pages, iova)?);
        transport.map_dma(&rings)?;

        let in_order = wanted.has(features::IN_ORDER);
        let event_idx = wanted.has(features::EVENT_IDX);
        // Queue `index` of pair `index / 2` lies at `offsets[3 * pair + index % 2]`, a transmit
        // ring's tables right after it.
        let make_ring = |index: u16, chains: Chains, indirect: bool| -> Result<Ring> {
            let (pair, at) = (index as usize / 2, 3 * (index as usize / 2) + index as usize % 2);
            let size = sizes[pair];
            let memory = RingMemory::new(rings.clone(), offsets[at], format, size)?;
            let tables = indirect.then(|| IndirectTables::new(rings.clone(), offsets[3 * pair + 2], format, size));
            Ok(match (format, tables.transpose()?) {
                (RingFormat::Packed, None) => Ring::Packed(PackedRing::new(memory, in_order, chains)?),
                (RingFormat::Packed, Some(tables)) => {
                    Ring::Packed(PackedRing::new(memory, in_order, chains)?.with_indirect(tables)?)
                }
                (RingFormat::Split, None) => Ring::Split(SplitRing::new(memory, event_idx, in_order, chains)?),
                (RingFormat::Split, Some(tables)) => {
                    Ring::Split(SplitRing::new(memory, event_idx, in_order, chains)?.with_indirect(tables)?)
                }
            })
        };
        let quiesce: Arc<dyn Quiesce> = device.clone();
        for pair in 0..config.queue_pairs {
            let (rx_index, tx_index) = (2 * pair, 2 * pair + 1);
            let size = sizes[pair as usize];
            // One descriptor per receive chain; transmit completions need no length.
            let rx_ring = make_ring(rx_index, Chains::OneDescriptor, false)?;
            let tx_chains = match tx_path {
                TxPath::Simple => Chains::OneDescriptorNoLengths,
                TxPath::Chains | TxPath::Offloads(_) => Chains::Any,
            };
            let tx_ring = make_ring(tx_index, tx_chains, indirect && tx_path != TxPath::Simple)?;
            // SAFETY: both rings were just laid in `rings`, a region made for this port's rings
            // alone and mapped for the device above; each ring's memory keeps the region alive,
            // and its queue resets the device before the ring is dropped (`with_quiesce`).
            let rx_notify = unsafe { transport.setup_queue(rx_index, size, format, rx_ring.addresses()) }?;
            // SAFETY: as for the receive ring.
            let tx_notify = unsafe { transport.setup_queue(tx_index, size, format, tx_ring.addresses()) }?;
            // Buffers are posted (not notified) now; the queues hold the device from here on.
            let mut rx = RxQueue::new(rx_ring, pool.clone(), rx_notify, config.port_id, rx_path);
            let mut tx = TxQueue::new(tx_ring, tx_notify, tx_path);
            if hash_report {
                tx = tx.with_hash_header();
            }
            if config.packet_classes {
                (rx, tx) = (rx.with_packet_classes(), tx.with_packet_classes());
            }
            queues.push((rx.with_quiesce(quiesce.clone()), tx.with_quiesce(quiesce.clone())));
        }
        if let Some(index) = ctrl_index {
            let spec = CtrlRingSpec { format, in_order, event_idx };
            *ctrl = Some(CtrlQueue::new(
                transport,
                index,
                spec,
                config.control_timeout,
                config.huge_pages,
                iova,
                quiesce.clone(),
            )?);
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
        let rss_caps = if wanted.has(net_spec::F_RSS) { Some(Self::read_rss_caps(transport, name)?) } else { None };
        let mut rss = None;
        // With hash reports the hash types are enabled for one pair too.
        if (config.queue_pairs > 1 && multiqueue) || hash_report {
            if let Some(ctrl) = ctrl.as_mut() {
                if wanted.has(net_spec::F_MQ) && config.queue_pairs > 1 {
                    ctrl.command(CtrlCommand::MqVqPairsSet, &config.queue_pairs.to_le_bytes())?;
                }
                if let Some(caps) = rss_caps {
                    let spread = RssConfig::spread(config.queue_pairs, &caps);
                    let data = spread.encode(config.queue_pairs, &caps).map_err(|problem| Error::CtrlBadArgument {
                        device: name.to_owned(),
                        command: CtrlCommand::MqRssConfig,
                        problem: format!("the default RSS configuration: {problem}"),
                    })?;
                    ctrl.command(CtrlCommand::MqRssConfig, &data)?;
                    rss = Some((caps, spread));
                } else if hash_report {
                    let data = Self::hash_config(transport, name)?;
                    ctrl.command(CtrlCommand::MqHashConfig, &data)?;
                }
            }
        }
        let rss = rss.or_else(|| rss_caps.map(|caps| (caps, RssConfig::spread(1, &caps))));
        Ok(Negotiated {
            features: wanted,
            format,
            ring_size: size,
            mac,
            mtu,
            rings,
            ctrl_missing,
            max_pairs,
            rx_path,
            tx_path,
            rss,
            pair_sizes: sizes,
        })
    }

    /// "Device configuration layout" (5.1.4): with VIRTIO_NET_F_MTU the driver must supply
    /// receive buffers for a packet of `mtu` plus the Ethernet header; without it "Setting Up
    /// Receive Buffers" (5.1.6.3) sizes them for 1514-byte packets, and for 65562 bytes (a
    /// 64 KiB super-packet and its header) with GUEST_TSO4/GUEST_TSO6. With mergeable buffers a
    /// frame may span several, each of which must hold at least the header.
    fn check_pool(
        name: &str,
        pool: &Mempool,
        mtu: Option<u16>,
        (mergeable, offloads): (bool, Offloads),
        mergeable_offered: bool,
    ) -> Result<()> {
        if mergeable {
            return Ok(());
        }
        let mtu_frame = u32::from(mtu.unwrap_or(DEFAULT_MTU)) + ETH_HEADER_LEN;
        let lro = offloads.lro4 || offloads.lro6;
        let frame = if lro { mtu_frame.max(LRO_FRAME) } else { mtu_frame };
        if pool.data_room() >= frame {
            return Ok(());
        }
        let why = if frame > mtu_frame {
            "a 64 KiB LRO super-packet (GUEST_TSO4/GUEST_TSO6)".to_owned()
        } else {
            format!(
                "a full frame (MTU {}{} + {ETH_HEADER_LEN}-byte Ethernet header)",
                mtu.unwrap_or(DEFAULT_MTU),
                if mtu.is_some() { ", from the device" } else { "" }
            )
        };
        Err(Error::InvalidConfig(format!(
            "{name}: the pool's data room of {} bytes cannot hold {frame} bytes, {why}: make the pool with a data \
             room of at least {frame} bytes (MempoolConfig::data_room; see Mempool::data_room){}",
            pool.data_room(),
            if mergeable_offered {
                ", or receive into several buffers per frame: PortConfig::rx_mergeable = true (the device offers \
                 VIRTIO_NET_F_MRG_RXBUF)"
            } else {
                ""
            },
        )))
    }

    /// The ring size for queue `queue`: `requested` if the device takes it (at most `max`, a
    /// power of two for split rings), else the device's maximum capped at 1024 (rounded down to
    /// a power of two for split rings).
    fn ring_size_for(requested: Option<u16>, max: u16, format: RingFormat, queue: u16) -> Result<u16> {
        match requested {
            Some(size) => {
                if size == 0 || size > max || (format == RingFormat::Split && !size.is_power_of_two()) {
                    return Err(Error::QueueSizeRefused {
                        queue,
                        requested: size,
                        max,
                        hint: if format == RingFormat::Split {
                            ": use a power of two no larger than the maximum"
                        } else {
                            ": use a size no larger than the maximum"
                        },
                    });
                }
                Ok(size)
            }
            None => {
                let size = max.min(1024);
                Ok(if format == RingFormat::Split { 1 << (15 - size.leading_zeros().min(15)) } else { size })
            }
        }
    }

    /// The RSS limits the device reports (with VIRTIO_NET_F_RSS), checked against the spec's
    /// minimums ("Device configuration layout": a key of at least 40 bytes, a table of at least
    /// 128 entries).
    fn read_rss_caps(transport: &mut dyn Transport, name: &str) -> Result<RssCapabilities> {
        let mut key = [0u8; 1];
        transport.read_device_config(net_config::RSS_MAX_KEY_SIZE, &mut key)?;
        let mut table = [0u8; 2];
        transport.read_device_config(net_config::RSS_MAX_INDIRECTION_TABLE_LENGTH, &mut table)?;
        let mut types = [0u8; 4];
        transport.read_device_config(net_config::SUPPORTED_HASH_TYPES, &mut types)?;
        let caps = RssCapabilities {
            max_key_size: key[0],
            max_table_len: u16::from_le_bytes(table),
            hash_types: u32::from_le_bytes(types),
        };
        if caps.max_key_size < 40 || caps.max_table_len < 128 {
            return Err(Error::Transport(format!(
                "{name}: the device offers VIRTIO_NET_F_RSS with rss_max_key_size {} and \
                 rss_max_indirection_table_length {}, below the spec's minimums of 40 and 128",
                caps.max_key_size, caps.max_table_len
            )));
        }
        Ok(caps)
    }

    /// `struct virtio_net_hash_config` ("Hash calculation"), for hash reports without RSS: the
    /// default hash types the device supports (`supported_hash_types`), `reserved` zero, and
    /// the default key, cut to `rss_max_key_size` when the device takes less.
    fn hash_config(transport: &mut dyn Transport, name: &str) -> Result<Vec<u8>> {
        let mut key_size = [0u8; 1];
        transport.read_device_config(net_config::RSS_MAX_KEY_SIZE, &mut key_size)?;
        let mut types = [0u8; 4];
        transport.read_device_config(net_config::SUPPORTED_HASH_TYPES, &mut types)?;
        let hash_types = DEFAULT_HASH_TYPES & u32::from_le_bytes(types);
        let key_len = usize::from(key_size[0]).min(DEFAULT_KEY.len());
        if hash_types == 0 || key_len == 0 {
            return Err(Error::Transport(format!(
                "{name}: the device offers VIRTIO_NET_F_HASH_REPORT with supported_hash_types {:#x} and \
                 rss_max_key_size {}: no IP hash to enable; turn PortConfig::rx_hash_report off",
                u32::from_le_bytes(types),
                key_size[0]
            )));
        }
        let mut data = Vec::with_capacity(4 + 8 + 1 + key_len);
        data.extend_from_slice(&hash_types.to_le_bytes());
        data.extend_from_slice(&[0; 8]);
        data.push(key_len as u8);
        data.extend_from_slice(&DEFAULT_KEY[..key_len]);
        Ok(data)
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

    /// The one line saying which data path the port runs, logged once when it opens (as DPDK
    /// names the receive and transmit functions it picked).
    fn log_data_path(&self, config: &PortConfig) {
        tracing::info!(
            "port {} ({}): {} ring of {} descriptors, {} queue pair(s), in_order {}, event_idx {}, control queue {}, \
             rx path: {}, tx path: {}{}, packet classes {}, features {:?}",
            config.port_id,
            self.device.name,
            self.format.name(),
            self.ring_size,
            self.queues.len(),
            self.features.has(features::IN_ORDER),
            self.features.has(features::EVENT_IDX),
            self.ctrl.is_some(),
            self.rx_path,
            self.tx_path,
            match self.tx_indirect_segments() {
                0 => String::new(),
                max => format!(", indirect tables of up to {max} segments"),
            },
            config.packet_classes,
            self.features,
        );
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

    /// Descriptors per ring of the pairs without a size of their own
    /// ([`PortConfig::pair_ring_sizes`]).
    pub fn ring_size(&self) -> u16 {
        self.ring_size
    }

    /// Descriptors per ring of queue pair `pair` (its own size from
    /// [`PortConfig::pair_ring_sizes`], or [`ring_size`](Self::ring_size)); `None` if there is no
    /// such pair.
    pub fn pair_ring_size(&self, pair: u16) -> Option<u16> {
        self.pair_sizes.get(pair as usize).copied()
    }

    /// The receive path chosen at open.
    pub fn rx_path(&self) -> RxPath {
        self.rx_path
    }

    /// The transmit path chosen at open.
    pub fn tx_path(&self) -> TxPath {
        self.tx_path
    }

    /// The most segments a transmitted packet may have to go as one descriptor naming an
    /// indirect table ([`PortConfig::tx_indirect`]); 0 when packets go as direct chains (or
    /// on the one-descriptor path).
    pub fn tx_indirect_segments(&self) -> u16 {
        match self.tx_path {
            TxPath::Simple => 0,
            _ if self.features.has(features::INDIRECT_DESC) => {
                self.pair_sizes.iter().copied().min().map_or(0, table_segments)
            }
            _ => 0,
        }
    }

    /// The checksum and segmentation offloads negotiated.
    pub fn offloads(&self) -> Offloads {
        Offloads::from_features(self.features)
    }

    /// Turns the negotiated receive offloads on or off at run time
    /// (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, "Setting Offloads State"): receive checksum
    /// reporting and LRO (each only as far as negotiated). Frames already in the rings keep
    /// what they were received with.
    pub fn set_rx_offloads(&mut self, checksum: bool, lro: bool) -> Result<()> {
        let negotiated = self.offloads();
        let mut mask = 0u64;
        for (on, bit) in [
            (checksum && negotiated.rx_checksum, net_spec::F_GUEST_CSUM),
            (lro && negotiated.lro4, net_spec::F_GUEST_TSO4),
            (lro && negotiated.lro6, net_spec::F_GUEST_TSO6),
        ] {
            if on {
                mask |= 1 << bit;
            }
        }
        self.set_guest_offloads(mask)
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

    /// Whether the control queue is set up (VIRTIO_NET_F_CTRL_VQ negotiated).
    pub fn has_control_queue(&self) -> bool {
        self.ctrl.is_some()
    }

    /// The control queue, for `command`, which needs `feature` (named) to be negotiated.
    fn ctrl(&mut self, command: CtrlCommand, feature: Option<(u32, &'static str)>) -> Result<&mut CtrlQueue> {
        let device = || self.device.name.clone();
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Err(Error::NoControlQueue { device: device(), command, why: self.ctrl_missing });
        };
        if let Some((bit, feature)) = feature {
            if !self.features.has(bit) {
                return Err(Error::NoControlQueue {
                    device: device(),
                    command,
                    why: CtrlUnavailable::FeatureNotOffered(feature),
                });
            }
        }
        Ok(ctrl)
    }

    /// Turns a receive filter on or off (VIRTIO_NET_CTRL_RX, "Packet Receive Filtering"):
    /// promiscuous and all-multicast need VIRTIO_NET_F_CTRL_RX, the others
    /// VIRTIO_NET_F_CTRL_RX_EXTRA.
    pub fn set_rx_filter(&mut self, filter: RxFilter, on: bool) -> Result<()> {
        let feature = match filter {
            RxFilter::Promiscuous | RxFilter::AllMulticast => (net_spec::F_CTRL_RX, "VIRTIO_NET_F_CTRL_RX"),
            _ => (net_spec::F_CTRL_RX_EXTRA, "VIRTIO_NET_F_CTRL_RX_EXTRA"),
        };
        let command = CtrlCommand::Rx(filter);
        self.ctrl(command, Some(feature))?.command(command, &[u8::from(on)])
    }

    /// Promiscuous mode on or off (VIRTIO_NET_CTRL_RX_PROMISC).
    pub fn set_promiscuous(&mut self, on: bool) -> Result<()> {
        self.set_rx_filter(RxFilter::Promiscuous, on)
    }

    /// All-multicast mode on or off (VIRTIO_NET_CTRL_RX_ALLMULTI).
    pub fn set_all_multicast(&mut self, on: bool) -> Result<()> {
        self.set_rx_filter(RxFilter::AllMulticast, on)
    }

    /// Sets the device's MAC address (VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_F_CTRL_MAC_ADDR);
    /// [`mac`](Self::mac) reports it from then on.
    pub fn set_mac_address(&mut self, mac: [u8; 6]) -> Result<()> {
        let command = CtrlCommand::MacAddrSet;
        self.ctrl(command, Some((net_spec::F_CTRL_MAC_ADDR, "VIRTIO_NET_F_CTRL_MAC_ADDR")))?.command(command, &mac)?;
        self.mac = Some(mac);
        Ok(())
    }

    /// Replaces the MAC filtering table (VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_F_CTRL_RX):
    /// `unicast` and `multicast` addresses, each table a le32 count then the addresses ("Setting
    /// MAC Address Filtering").
    pub fn set_mac_table(&mut self, unicast: &[[u8; 6]], multicast: &[[u8; 6]]) -> Result<()> {
        let command = CtrlCommand::MacTableSet;
        let ctrl = self.ctrl(command, Some((net_spec::F_CTRL_RX, "VIRTIO_NET_F_CTRL_RX")))?;
        let bytes = 8 + 6 * (unicast.len() + multicast.len());
        if bytes > MAX_DATA {
            return Err(Error::CtrlBadArgument {
                device: self.device.name.clone(),
                command,
                problem: format!(
                    "{} + {} addresses take {bytes} bytes, at most {MAX_DATA} fit: use fewer (or promiscuous mode)",
                    unicast.len(),
                    multicast.len()
                ),
            });
        }
        let mut data = Vec::with_capacity(bytes);
        for table in [unicast, multicast] {
            data.extend_from_slice(&(table.len() as u32).to_le_bytes());
            table.iter().for_each(|mac| data.extend_from_slice(mac));
        }
        ctrl.command(command, &data)
    }

    /// Adds `vid` to the VLAN filter table, or removes it (VIRTIO_NET_CTRL_VLAN_ADD / _DEL,
    /// VIRTIO_NET_F_CTRL_VLAN).
    pub fn vlan_filter(&mut self, vid: u16, add: bool) -> Result<()> {
        let command = if add { CtrlCommand::VlanAdd } else { CtrlCommand::VlanDel };
        let ctrl = self.ctrl(command, Some((net_spec::F_CTRL_VLAN, "VIRTIO_NET_F_CTRL_VLAN")))?;
        if vid > 4095 {
            return Err(Error::CtrlBadArgument {
                device: self.device.name.clone(),
                command,
                problem: format!("VLAN id {vid} is not a 12-bit VLAN id (0..=4095)"),
            });
        }
        ctrl.command(command, &vid.to_le_bytes())
    }

    /// Whether the device asks for an announcement (VIRTIO_NET_S_ANNOUNCE in the config
    /// `status`, with VIRTIO_NET_F_GUEST_ANNOUNCE): the application should then send its
    /// gratuitous packets and call [`announce_ack`](Self::announce_ack) ("Gratuitous Packet
    /// Sending").
    pub fn announce_pending(&mut self) -> Result<bool> {
        self.ctrl(CtrlCommand::AnnounceAck, Some((net_spec::F_GUEST_ANNOUNCE, "VIRTIO_NET_F_GUEST_ANNOUNCE")))?;
        if !self.features.has(net_spec::F_STATUS) {
            return Ok(false);
        }
        let mut status = [0u8; 2];
        self.device.transport().read_device_config(net_config::STATUS, &mut status)?;
        Ok(u16::from_le_bytes(status) & net_spec::S_ANNOUNCE != 0)
    }

    /// Acknowledges an announcement request (VIRTIO_NET_CTRL_ANNOUNCE_ACK,
    /// VIRTIO_NET_F_GUEST_ANNOUNCE): the device clears VIRTIO_NET_S_ANNOUNCE.
    pub fn announce_ack(&mut self) -> Result<()> {
        let command = CtrlCommand::AnnounceAck;
        self.ctrl(command, Some((net_spec::F_GUEST_ANNOUNCE, "VIRTIO_NET_F_GUEST_ANNOUNCE")))?.command(command, &[])
    }

    /// Sets the guest offloads the device may apply to received packets
    /// (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS): a mask of
    /// VIRTIO_NET_F_GUEST_* feature bits, each of which must have been negotiated.
    pub fn set_guest_offloads(&mut self, offloads: u64) -> Result<()> {
        let command = CtrlCommand::GuestOffloadsSet;
        let negotiated = self.features.0;
        let ctrl = self.ctrl(command, Some((net_spec::F_CTRL_GUEST_OFFLOADS, "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS")))?;
        if offloads & !negotiated != 0 {
            return Err(Error::CtrlBadArgument {
                device: self.device.name.clone(),
                command,
                problem: format!(
                    "offload bits {:#x} were not negotiated (negotiated features {negotiated:#x})",
                    offloads & !negotiated
                ),
            });
        }
        ctrl.command(command, &offloads.to_le_bytes())
    }

    /// Tells the device to use `pairs` queue pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    /// VIRTIO_NET_F_MQ): at least 1, at most the pairs this port set up (and so at most
    /// `max_virtqueue_pairs`).
    pub fn set_queue_pairs(&mut self, pairs: u16) -> Result<()> {
        let command = CtrlCommand::MqVqPairsSet;
        let set_up = self.queues.len() as u16;
        let max_pairs = self.max_pairs;
        let ctrl = self.ctrl(command, Some((net_spec::F_MQ, "VIRTIO_NET_F_MQ")))?;
        if pairs == 0 || pairs > set_up {
            return Err(Error::TooManyQueuePairs {
                device: self.device.name.clone(),
                requested: pairs,
                max: set_up,
                limit: if set_up == max_pairs {
                    "the device's max_virtqueue_pairs is lower"
                } else {
                    "the port set up fewer (PortConfig::queue_pairs)"
                },
            });
        }
        ctrl.command(command, &pairs.to_le_bytes())
    }

    /// What the device supports for RSS, when VIRTIO_NET_F_RSS was negotiated.
    pub fn rss_capabilities(&self) -> Option<RssCapabilities> {
        self.rss_caps
    }

    /// The RSS configuration the device was last given (the default one at open when the port
    /// has more than one queue pair), when VIRTIO_NET_F_RSS was negotiated.
    pub fn rss_config(&self) -> Option<&RssConfig> {
        self.rss.as_ref()
    }

    /// Sets the RSS hash types, key and indirection table (VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    /// VIRTIO_NET_F_RSS), at any time while the port runs: packets the device receives after
    /// the command was acknowledged follow the new table. Table entries name queue pairs of this
    /// port; `max_tx_vq` is the port's pair count. A configuration the device cannot take is a
    /// [`Error::CtrlBadArgument`] saying why, before anything is sent.
    pub fn set_rss(&mut self, config: &RssConfig) -> Result<()> {
        let command = CtrlCommand::MqRssConfig;
        let pairs = self.queues.len() as u16;
        let caps = self.rss_caps;
        let name = self.device.name.clone();
        let ctrl = self.ctrl(command, Some((net_spec::F_RSS, "VIRTIO_NET_F_RSS")))?;
        let caps = caps.ok_or_else(|| Error::NoControlQueue {
            device: name.clone(),
            command,
            why: CtrlUnavailable::FeatureNotOffered("VIRTIO_NET_F_RSS"),
        })?;
        let data =
            config.encode(pairs, &caps).map_err(|problem| Error::CtrlBadArgument { device: name, command, problem })?;
        ctrl.command(command, &data)?;
        self.rss = Some(config.clone());
        Ok(())
    }

    /// Counters of every queue, wherever the queues are now, and their sums (since the last
    /// [`reset_stats`](Self::reset_stats)).
    pub fn stats(&self) -> PortStats {
        let mut stats = PortStats::default();
        for (i, (rx, tx)) in self.counters.iter().enumerate() {
            let (mut rx, mut tx) = (rx.snapshot(), tx.snapshot());
            if let Some((rx0, tx0)) = self.stats_base.get(i) {
                (rx, tx) = (rx.since(rx0), tx.since(tx0));
            }
            stats.rx += rx;
            stats.tx += tx;
            stats.rx_queues.push(rx);
            stats.tx_queues.push(tx);
        }
        stats
    }

    /// Every counter by name ([`PortStats::xstats`]): DPDK's `rte_eth_xstats` names where they
    /// exist.
    pub fn xstats(&self) -> Vec<super::Xstat> {
        self.stats().xstats()
    }

    /// Starts the counters from zero: [`stats`](Self::stats) counts from now on. The queues'
    /// threads keep counting undisturbed (their counters have one writer each; the port keeps
    /// the values at the reset and subtracts them).
    pub fn reset_stats(&mut self) {
        self.stats_base = self.counters.iter().map(|(rx, tx)| (rx.snapshot(), tx.snapshot())).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_frames_spanning_buffers_and_offloads() {
        let plain = PortConfig::default().for_forwarding(1514, 2048, false);
        assert_eq!(
            (plain.rx_mergeable, plain.tx_multi_segment, plain.offloads),
            (false, false, OffloadConfig::default())
        );
        let jumbo = PortConfig::default().for_forwarding(9014, 2048, false);
        assert_eq!(
            (jumbo.rx_mergeable, jumbo.tx_multi_segment, jumbo.offloads),
            (true, true, OffloadConfig::default())
        );
        let big_buffers = PortConfig::default().for_forwarding(9014, 9216, false);
        assert!(!big_buffers.rx_mergeable && !big_buffers.tx_multi_segment, "a frame fits one buffer");
        let offloads = PortConfig::default().for_forwarding(1514, 2048, true);
        assert_eq!(
            (offloads.rx_mergeable, offloads.tx_multi_segment, offloads.offloads),
            (true, true, OffloadConfig::ALL)
        );
    }
}
