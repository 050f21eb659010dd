//! The virtio-net control virtqueue ("Control Virtqueue", 5.1.6.5): commands that set receive
//! filters, MAC addresses, VLAN filters, queue pairs and guest offloads, acknowledge
//! announcements, sent one at a time from the control path (never from a burst).
//!
//! The control queue is virtqueue `2N` where `N` is `max_virtqueue_pairs` with VIRTIO_NET_F_MQ,
//! 1 without ("Virtqueues", 5.1.2). Each command is one chain of two descriptors in a DMA region
//! the control queue owns, beside its ring: `class`, `command` and the command-specific data
//! (device-readable), then the `ack` byte (device-writable). A command is synchronous: added,
//! published, notified (when the device asks), then `pop_used` is polled for at most the
//! configured timeout, and the ack is read: anything but VIRTIO_NET_OK is a typed error naming
//! the command.
//!
//! Invariants:
//! - At most one chain is in flight, and only while [`CtrlQueue::command`] runs, or after a
//!   command that never completed: the queue then marks itself unusable and never writes its
//!   buffers again.
//! - The region (ring and buffers) is unmapped only once the device was stopped ([`Quiesce`]);
//!   when it cannot be confirmed stopped, the region is leaked, never freed under a device that
//!   may still write the ack byte.
//! - The driver writes the buffers only while no chain is in flight, and reads the ack only
//!   after the chain came back (the ring's acquire read of the used entry orders it).
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::Quiesce;
use crate::error::{Error, Result};
use crate::mem::{DmaRegion, HugePages, IovaAllocator};
use crate::spec::net::ctrl as spec;
use crate::transport::{Notify, RingFormat, Transport};
use crate::virtqueue::{ring_bytes, Chains, PackedRing, RingMemory, Segment, SplitRing, Virtqueue};

/// A control-queue command, by its spec name (class and command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtrlCommand {
    /// `VIRTIO_NET_CTRL_RX` / `VIRTIO_NET_CTRL_RX_*`, for one receive filter.
    Rx(RxFilter),
    /// `VIRTIO_NET_CTRL_MAC` / `VIRTIO_NET_CTRL_MAC_TABLE_SET`.
    MacTableSet,
    /// `VIRTIO_NET_CTRL_MAC` / `VIRTIO_NET_CTRL_MAC_ADDR_SET`.
    MacAddrSet,
    /// `VIRTIO_NET_CTRL_VLAN` / `VIRTIO_NET_CTRL_VLAN_ADD`.
    VlanAdd,
    /// `VIRTIO_NET_CTRL_VLAN` / `VIRTIO_NET_CTRL_VLAN_DEL`.
    VlanDel,
    /// `VIRTIO_NET_CTRL_ANNOUNCE` / `VIRTIO_NET_CTRL_ANNOUNCE_ACK`.
    AnnounceAck,
    /// `VIRTIO_NET_CTRL_MQ` / `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
    MqVqPairsSet,
    /// `VIRTIO_NET_CTRL_MQ` / `VIRTIO_NET_CTRL_MQ_RSS_CONFIG`.
    MqRssConfig,
    /// `VIRTIO_NET_CTRL_MQ` / `VIRTIO_NET_CTRL_MQ_HASH_CONFIG`.
    MqHashConfig,
    /// `VIRTIO_NET_CTRL_GUEST_OFFLOADS` / `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`.
    GuestOffloadsSet,
}

/// A receive filter of the `VIRTIO_NET_CTRL_RX` class ("Packet Receive Filtering").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RxFilter {
    /// `VIRTIO_NET_CTRL_RX_PROMISC` (VIRTIO_NET_F_CTRL_RX).
    Promiscuous,
    /// `VIRTIO_NET_CTRL_RX_ALLMULTI` (VIRTIO_NET_F_CTRL_RX).
    AllMulticast,
    /// `VIRTIO_NET_CTRL_RX_ALLUNI` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    AllUnicast,
    /// `VIRTIO_NET_CTRL_RX_NOMULTI` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    NoMulticast,
    /// `VIRTIO_NET_CTRL_RX_NOUNI` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    NoUnicast,
    /// `VIRTIO_NET_CTRL_RX_NOBCAST` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    NoBroadcast,
}

impl CtrlCommand {
    /// The `class` and `command` bytes on the wire.
    pub fn class_command(self) -> (u8, u8) {
        match self {
            CtrlCommand::Rx(filter) => (
                spec::RX,
                match filter {
                    RxFilter::Promiscuous => spec::RX_PROMISC,
                    RxFilter::AllMulticast => spec::RX_ALLMULTI,
                    RxFilter::AllUnicast => spec::RX_ALLUNI,
                    RxFilter::NoMulticast => spec::RX_NOMULTI,
                    RxFilter::NoUnicast => spec::RX_NOUNI,
                    RxFilter::NoBroadcast => spec::RX_NOBCAST,
                },
            ),
            CtrlCommand::MacTableSet => (spec::MAC, spec::MAC_TABLE_SET),
            CtrlCommand::MacAddrSet => (spec::MAC, spec::MAC_ADDR_SET),
            CtrlCommand::VlanAdd => (spec::VLAN, spec::VLAN_ADD),
            CtrlCommand::VlanDel => (spec::VLAN, spec::VLAN_DEL),
            CtrlCommand::AnnounceAck => (spec::ANNOUNCE, spec::ANNOUNCE_ACK),
            CtrlCommand::MqVqPairsSet => (spec::MQ, spec::MQ_VQ_PAIRS_SET),
            CtrlCommand::MqRssConfig => (spec::MQ, spec::MQ_RSS_CONFIG),
            CtrlCommand::MqHashConfig => (spec::MQ, spec::MQ_HASH_CONFIG),
            CtrlCommand::GuestOffloadsSet => (spec::GUEST_OFFLOADS, spec::GUEST_OFFLOADS_SET),
        }
    }

    /// The spec's name of the command.
    pub fn name(self) -> &'static str {
        match self {
            CtrlCommand::Rx(RxFilter::Promiscuous) => "VIRTIO_NET_CTRL_RX_PROMISC",
            CtrlCommand::Rx(RxFilter::AllMulticast) => "VIRTIO_NET_CTRL_RX_ALLMULTI",
            CtrlCommand::Rx(RxFilter::AllUnicast) => "VIRTIO_NET_CTRL_RX_ALLUNI",
            CtrlCommand::Rx(RxFilter::NoMulticast) => "VIRTIO_NET_CTRL_RX_NOMULTI",
            CtrlCommand::Rx(RxFilter::NoUnicast) => "VIRTIO_NET_CTRL_RX_NOUNI",
            CtrlCommand::Rx(RxFilter::NoBroadcast) => "VIRTIO_NET_CTRL_RX_NOBCAST",
            CtrlCommand::MacTableSet => "VIRTIO_NET_CTRL_MAC_TABLE_SET",
            CtrlCommand::MacAddrSet => "VIRTIO_NET_CTRL_MAC_ADDR_SET",
            CtrlCommand::VlanAdd => "VIRTIO_NET_CTRL_VLAN_ADD",
            CtrlCommand::VlanDel => "VIRTIO_NET_CTRL_VLAN_DEL",
            CtrlCommand::AnnounceAck => "VIRTIO_NET_CTRL_ANNOUNCE_ACK",
            CtrlCommand::MqVqPairsSet => "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET",
            CtrlCommand::MqRssConfig => "VIRTIO_NET_CTRL_MQ_RSS_CONFIG",
            CtrlCommand::MqHashConfig => "VIRTIO_NET_CTRL_MQ_HASH_CONFIG",
            CtrlCommand::GuestOffloadsSet => "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET",
        }
    }
}

impl std::fmt::Display for CtrlCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (class, command) = self.class_command();
        write!(f, "{} (class {class}, command {command})", self.name())
    }
}

/// Why a control-queue command cannot be sent on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrlUnavailable {
    /// The transport has no control queue to give (vhost-user: the backend serves none).
    #[error(
        "this transport gives no control queue (a vhost-user backend serves only the data queues): \
         configure the backend instead (e.g. testpmd's own `set promisc`), or use a PCI device"
    )]
    Transport,
    /// The device does not offer VIRTIO_NET_F_CTRL_VQ.
    #[error(
        "the device offers no control queue (VIRTIO_NET_F_CTRL_VQ): give it one (QEMU: \
         `-device virtio-net-pci,ctrl_vq=on`, the default)"
    )]
    NotOffered,
    /// The port was opened with [`PortConfig::control_queue`](crate::net::PortConfig) off.
    #[error("the port was opened without its control queue: set PortConfig::control_queue")]
    Disabled,
    /// The device has a control queue, but does not offer the feature the command needs.
    #[error("the device has a control queue but does not offer {0}, which this command needs")]
    FeatureNotOffered(&'static str),
}

/// The ring of a control queue, of either format; its tokens carry nothing.
enum CtrlRing {
    Packed(PackedRing<()>),
    Split(SplitRing<()>),
}

macro_rules! with_ring {
    ($ring:expr, $r:ident => $body:expr) => {
        match $ring {
            CtrlRing::Packed($r) => $body,
            CtrlRing::Split($r) => $body,
        }
    };
}

/// Most descriptors a control ring gets: one two-descriptor chain is in flight at a time.
const MAX_RING: u16 = 16;
/// Most bytes of command-specific data (a MAC table of up to 340 addresses).
pub(crate) const MAX_DATA: usize = 2048;
/// The ack value before the device writes one: neither VIRTIO_NET_OK nor VIRTIO_NET_ERR.
const ACK_UNWRITTEN: u8 = 0xff;

/// The ring's ordering features, fixed at set-up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CtrlRingSpec {
    pub(crate) format: RingFormat,
    pub(crate) in_order: bool,
    pub(crate) event_idx: bool,
}

/// The control queue of one port, owned by the control thread.
pub(crate) struct CtrlQueue {
    ring: CtrlRing,
    notify: Box<dyn Notify>,
    /// Ring (at offset 0) and command buffer (at `buffer`): the device's until it is stopped.
    region: Arc<DmaRegion>,
    buffer: usize,
    device: Arc<dyn Quiesce>,
    name: String,
    timeout: Duration,
    usable: bool,
}

impl CtrlQueue {
    /// Makes the control queue `index` in a region of its own, maps that region for the device
    /// and sets the queue up (before DRIVER_OK). Commands wait at most `timeout` each.
    pub(crate) fn new(
        transport: &mut dyn Transport,
        index: u16,
        ring: CtrlRingSpec,
        timeout: Duration,
        huge_pages: HugePages,
        iova: &IovaAllocator,
        device: Arc<dyn Quiesce>,
    ) -> Result<CtrlQueue> {
        let name = transport.name().to_owned();
        let max = transport.max_queue_size(index)?;
        let mut size = max.min(MAX_RING);
        if ring.format == RingFormat::Split {
            size = 1 << (15 - size.leading_zeros().min(15));
        }
        if size < 2 {
            return Err(Error::QueueSizeRefused {
                queue: index,
                requested: 2,
                max,
                hint: ": a control queue needs two descriptors per command",
            });
        }
        let buffer = ring_bytes(ring.format, size).next_multiple_of(64);
        // Huge pages only when asked for: the region is a page at most otherwise.
        let pages = if huge_pages == HugePages::Required { HugePages::Required } else { HugePages::Never };
        let region = Arc::new(DmaRegion::new(&format!("{name}-ctrl"), buffer + 2 + MAX_DATA + 1, pages, iova)?);
        transport.map_dma(&region)?;
        let memory = RingMemory::new(region.clone(), 0, ring.format, size)?;
        let ring = match ring.format {
            RingFormat::Packed => CtrlRing::Packed(PackedRing::new(memory, ring.in_order, Chains::Any)?),
            RingFormat::Split => CtrlRing::Split(SplitRing::new(memory, ring.event_idx, ring.in_order, Chains::Any)?),
        };
        let addresses = with_ring!(&ring, r => r.addresses());
        // SAFETY: the ring was just laid at the start of `region`, made for this control queue
        // alone and mapped for the device above; the queue keeps the region alive, and frees it
        // only after the device was stopped (`Drop`), leaking it otherwise.
        let notify = unsafe { transport.setup_queue(index, size, ring.format(), addresses) }?;
        Ok(CtrlQueue { ring, notify, region, buffer, device, name, timeout, usable: true })
    }

    /// Sends `command` with `data` and waits for the device's ack.
    pub(crate) fn command(&mut self, command: CtrlCommand, data: &[u8]) -> Result<()> {
        let broken = with_ring!(&self.ring, r => r.is_broken());
        if !self.usable || broken {
            self.usable = false;
            return Err(Error::CtrlQueueUnusable { device: self.name.clone(), command });
        }
        if data.len() > MAX_DATA {
            return Err(Error::CtrlBadArgument {
                device: self.name.clone(),
                command,
                problem: format!("{} bytes of command data, at most {MAX_DATA} fit", data.len()),
            });
        }
        let (class, cmd) = command.class_command();
        let base = self.region.as_ptr().wrapping_add(self.buffer);
        let ack_at = 2 + MAX_DATA;
        // SAFETY: `buffer..buffer + 2 + MAX_DATA + 1` lies inside the region (sized so in
        // `new`), no chain is in flight (the last one completed, or the queue would be
        // unusable), so the device does not access these bytes now; `data` is at most MAX_DATA.
        unsafe {
            base.write_volatile(class);
            base.add(1).write_volatile(cmd);
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(2), data.len());
            base.add(ack_at).write_volatile(ACK_UNWRITTEN);
        }
        let iova = self.region.iova_of(base);
        let segments = [
            Segment { addr: iova, len: 2 + data.len() as u32, writable: false },
            Segment { addr: iova + ack_at as u64, len: 1, writable: true },
        ];
        // SAFETY: both segments lie in the region this queue owns and keeps alive (until the
        // device is stopped, or for ever); the driver touches neither until the chain comes back:
        // here, or never again once the queue is unusable.
        if with_ring!(&mut self.ring, r => unsafe { r.add(&segments, ()) }).is_err() {
            self.usable = false;
            return Err(Error::CtrlQueueUnusable { device: self.name.clone(), command });
        }
        if with_ring!(&mut self.ring, r => r.publish()) {
            self.notify.notify();
        }
        let deadline = Instant::now() + self.timeout;
        let mut spins = 0u32;
        loop {
            if with_ring!(&mut self.ring, r => r.pop_used(1, |(), _| ())) == 1 {
                break;
            }
            if with_ring!(&self.ring, r => r.is_broken()) {
                self.usable = false;
                return Err(Error::CtrlQueueUnusable { device: self.name.clone(), command });
            }
            if Instant::now() >= deadline {
                self.usable = false;
                tracing::error!("{}: {command} did not complete: the control queue is unusable", self.name);
                return Err(Error::CtrlTimeout { device: self.name.clone(), command, timeout: self.timeout });
            }
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        // SAFETY: the chain came back (the ring read its used entry with acquire ordering, so
        // the device's ack write is visible), and the ack byte lies inside the region.
        let ack = unsafe { base.add(ack_at).read_volatile() };
        if ack != spec::OK {
            return Err(Error::CtrlCommandFailed { device: self.name.clone(), command, ack });
        }
        Ok(())
    }
}

impl CtrlRing {
    fn format(&self) -> RingFormat {
        match self {
            CtrlRing::Packed(_) => RingFormat::Packed,
            CtrlRing::Split(_) => RingFormat::Split,
        }
    }
}

impl Drop for CtrlQueue {
    /// Frees the region only once the device is stopped; leaks it when that cannot be
    /// confirmed, so that a device that may still write the ack byte never writes freed memory.
    fn drop(&mut self) {
        if !self.device.quiesce() {
            tracing::error!("{}: the device could not be stopped: leaking its control queue's memory", self.name);
            std::mem::forget(self.region.clone());
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::spec::features::{self, Features};
    use crate::spec::net as net_spec;
    use crate::testing::{FakeDeviceConfig, FakeTransport};

    /// A device that can, or cannot, be confirmed stopped.
    struct Stop(bool);

    impl Quiesce for Stop {
        fn quiesce(&self) -> bool {
            self.0
        }
    }

    /// The control queue's region after a command that never completed and the queue's drop,
    /// with a device that stops or not.
    fn region_after_a_stuck_command(stops: bool) -> std::sync::Weak<DmaRegion> {
        let offered = Features::from_bits(&[features::VERSION_1, net_spec::F_CTRL_VQ]);
        let mut transport = FakeTransport::new(FakeDeviceConfig {
            offered,
            num_queues: 3,
            mac: [2, 0, 0, 0, 0, 1],
            ..FakeDeviceConfig::modern()
        });
        transport.set_driver_features(offered).unwrap();
        let spec = CtrlRingSpec { format: RingFormat::Split, in_order: false, event_idx: false };
        let device: Arc<dyn Quiesce> = Arc::new(Stop(stops));
        let timeout = Duration::from_millis(10);
        let identity = IovaAllocator::identity();
        let mut queue = CtrlQueue::new(&mut transport, 2, spec, timeout, HugePages::Never, &identity, device).unwrap();
        // Without DRIVER_OK the fake device serves nothing: the command stays in flight.
        let err = queue.command(CtrlCommand::AnnounceAck, &[]).unwrap_err();
        assert!(matches!(err, Error::CtrlTimeout { command: CtrlCommand::AnnounceAck, .. }), "{err:?}");
        assert!(matches!(queue.command(CtrlCommand::VlanAdd, &[1, 0]), Err(Error::CtrlQueueUnusable { .. })));
        // The transport lets go of the region; only the queue holds it now.
        drop(transport);
        let region = Arc::downgrade(&queue.region);
        drop(queue);
        region
    }

    #[test]
    fn the_region_is_freed_only_once_the_device_stopped() {
        assert!(region_after_a_stuck_command(true).upgrade().is_none(), "freed after the device stopped");
        assert!(region_after_a_stuck_command(false).upgrade().is_some(), "leaked: the device may still write it");
    }
}
