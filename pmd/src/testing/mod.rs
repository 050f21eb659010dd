//! Test support, behind the `testing` feature: a software device that plays the DEVICE side of
//! packed and split rings ([`SoftDevice`], [`DeviceCore`]), fault injection ([`Fault`]), a
//! counting notifier, helpers that build driver queues on fresh ring memory, and a hostile
//! vhost-user backend ([`HostileBackend`]) that scribbles over everything it is given. Reused by
//! the unit and integration tests, the benches and the fuzz targets.

mod device_ring;
mod fake_transport;
pub mod fuzz;
mod hostile_backend;
mod rng;
mod soft_device;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use device_ring::{AddressSpace, NotifyMode, RingFault};
pub use fake_transport::{
    CtrlAnswer, CtrlRecord, FakeCtrl, FakeCtrlState, FakeDeviceConfig, FakeEvent, FakeEvents, FakeTransport,
};
pub use hostile_backend::{AfterAttack, AttackEnd, HostileBackend, HostileConfig, HostileReport, Target};
pub use rng::Rng;
pub use soft_device::{
    DeviceConfig, DeviceCore, DeviceStats, Fault, FaultPlan, FrameSink, FrameSource, HashReporter, Mode, QueueSpec,
    Role, SoftDevice,
};

use crate::error::Result;
use crate::mbuf::{Mbuf, Mempool};
use crate::mem::{DmaRegion, HugePages, IovaAllocator};
use crate::net::{Ring, RxPath, RxQueue, TxPath, TxQueue};
use crate::transport::{Notify, RingFormat};
use crate::virtqueue::{indirect_bytes, ring_bytes, Chains, IndirectTables, PackedRing, RingMemory, SplitRing};

/// A notifier that counts the notifications it is asked to send.
#[derive(Clone, Debug, Default)]
pub struct CountingNotify(pub Arc<AtomicU64>);

impl Notify for CountingNotify {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The ring set-up of a test queue pair.
#[derive(Clone, Copy, Debug)]
pub struct RingSpec {
    /// Ring format.
    pub format: RingFormat,
    /// Descriptors per ring.
    pub size: u16,
    /// IN_ORDER negotiated.
    pub in_order: bool,
    /// EVENT_IDX negotiated (split rings).
    pub event_idx: bool,
}

/// Driver-side receive and transmit queues on fresh ring memory, and what a device needs to
/// attach to them.
pub struct QueuePair {
    /// The receive queue (already filled from the pool).
    pub rx: RxQueue,
    /// The transmit queue.
    pub tx: TxQueue,
    /// Notifications sent on the receive queue.
    pub rx_kicks: CountingNotify,
    /// Notifications sent on the transmit queue.
    pub tx_kicks: CountingNotify,
    /// The receive ring, for the device.
    pub rx_spec: QueueSpec,
    /// The transmit ring, for the device.
    pub tx_spec: QueueSpec,
    /// The rings' and the pool's memory, for the device.
    pub space: AddressSpace,
}

/// A fresh ring of `spec` in its own region, as the generic ring type `R`.
pub fn ring_memory(spec: RingSpec) -> Result<(RingMemory, Arc<DmaRegion>)> {
    let region = Arc::new(DmaRegion::new(
        "test-ring",
        ring_bytes(spec.format, spec.size),
        HugePages::Never,
        &IovaAllocator::identity(),
    )?);
    Ok((RingMemory::new(region.clone(), 0, spec.format, spec.size)?, region))
}

/// Indirect tables for a ring of `spec`, in a region of their own.
pub fn indirect_tables(spec: RingSpec) -> Result<(IndirectTables, Arc<DmaRegion>)> {
    let region = Arc::new(DmaRegion::new(
        "test-indirect",
        indirect_bytes(spec.size),
        HugePages::Never,
        &IovaAllocator::identity(),
    )?);
    Ok((IndirectTables::new(region.clone(), 0, spec.format, spec.size)?, region))
}

/// A ring of `spec` carrying mbufs in `chains`.
pub fn mbuf_ring(spec: RingSpec, chains: Chains) -> Result<(Ring, Arc<DmaRegion>)> {
    let (memory, region) = ring_memory(spec)?;
    let ring = match spec.format {
        RingFormat::Packed => Ring::Packed(PackedRing::<Mbuf>::new(memory, spec.in_order, chains)?),
        RingFormat::Split => Ring::Split(SplitRing::<Mbuf>::new(memory, spec.event_idx, spec.in_order, chains)?),
    };
    Ok((ring, region))
}

/// Builds a receive and a transmit queue for `port` of `spec`, the receive side filled from
/// `pool`, on the simple paths.
pub fn queue_pair(spec: RingSpec, pool: &Mempool, port: u16) -> Result<QueuePair> {
    queue_pair_with_paths(spec, pool, port, RxPath::Simple, TxPath::Simple)
}

/// [`queue_pair`] on the given paths (a device for [`RxPath::Mergeable`] must write
/// `num_buffers` as with VIRTIO_NET_F_MRG_RXBUF: [`DeviceConfig::mergeable`]). With
/// [`RxPath::HashReport`] the transmit queue writes the 20-byte header too, as a port's does
/// (a device for it needs [`DeviceConfig::hash_report`]).
pub fn queue_pair_with_paths(
    spec: RingSpec,
    pool: &Mempool,
    port: u16,
    rx_path: RxPath,
    tx_path: TxPath,
) -> Result<QueuePair> {
    queue_pair_with_tx_indirect(spec, pool, port, rx_path, tx_path, false)
}

/// [`queue_pair_with_paths`], the transmit ring with indirect tables when `indirect` (as a
/// port that negotiated VIRTIO_F_INDIRECT_DESC builds it): multi-segment packets that fit a
/// table go as one descriptor each. The tables get a region of their own, in the pair's space.
pub fn queue_pair_with_tx_indirect(
    spec: RingSpec,
    pool: &Mempool,
    port: u16,
    rx_path: RxPath,
    tx_path: TxPath,
    indirect: bool,
) -> Result<QueuePair> {
    let (rx_ring, rx_region) = mbuf_ring(spec, Chains::OneDescriptor)?;
    let tx_chains = match tx_path {
        TxPath::Simple => Chains::OneDescriptorNoLengths,
        TxPath::Chains | TxPath::Offloads(_) => Chains::Any,
    };
    let (tx_ring, tx_region) = mbuf_ring(spec, tx_chains)?;
    let mut regions = vec![rx_region, tx_region, pool.region().clone()];
    let tx_ring = if indirect {
        let (tables, region) = indirect_tables(spec)?;
        regions.push(region);
        match tx_ring {
            Ring::Packed(ring) => Ring::Packed(ring.with_indirect(tables)?),
            Ring::Split(ring) => Ring::Split(ring.with_indirect(tables)?),
        }
    } else {
        tx_ring
    };
    let rx_kicks = CountingNotify::default();
    let tx_kicks = CountingNotify::default();
    let rx_spec = QueueSpec { format: spec.format, size: spec.size, addresses: rx_ring.addresses() };
    let tx_spec = QueueSpec { format: spec.format, size: spec.size, addresses: tx_ring.addresses() };
    let mut rx = RxQueue::new(rx_ring, pool.clone(), Box::new(rx_kicks.clone()), port, rx_path);
    // No DRIVER_OK to wait for here: the notification owed for the posted buffers goes now.
    rx.start();
    let mut tx = TxQueue::new(tx_ring, Box::new(tx_kicks.clone()), tx_path);
    if let RxPath::HashReport { .. } = rx_path {
        tx = tx.with_hash_header();
    }
    Ok(QueuePair { rx, tx, rx_kicks, tx_kicks, rx_spec, tx_spec, space: AddressSpace::new(regions) })
}
