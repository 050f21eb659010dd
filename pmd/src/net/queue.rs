//! Receive and transmit queues: burst functions on mbufs over either ring format.
//!
//! Receive buffers are posted so that the 12-byte virtio-net header lands in the mbuf's
//! headroom, right before the data offset, and the frame starts at the (cache-aligned) data
//! offset. Transmit writes the header in place into the headroom: one descriptor per packet.
//!
//! Paths, chosen once when the queue is built and logged by the port ([`RxPath`], [`TxPath`]):
//! the simple ones above (one buffer per frame, the header neither read nor written), and the
//! richer ones: mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF, "Processing of Incoming
//! Packets", 5.1.6.4: a frame over `num_buffers` buffers, the first holding the header, comes
//! back as one chained mbuf; `num_buffers` is checked against the ring and the buffers the
//! device returned) and transmit chains (a multi-segment mbuf goes out as one descriptor chain,
//! the header in the first segment's headroom: "Packet Transmission", 5.1.6.2; on a ring with
//! indirect tables, VIRTIO_F_INDIRECT_DESC, as one ring descriptor naming a table that holds
//! the chain), and hash reports (VIRTIO_NET_F_HASH_REPORT: the header is 20 bytes both ways,
//! and the receive side puts each frame's `hash_value` and `hash_report` on its mbuf as an
//! [`RxHash`]).
//!
//! The ring format is chosen once, when the queue is built ([`Ring`]); each burst matches on it
//! once and runs a loop specialised for that format. No allocation, lock, system call (a kick
//! is an MMIO write or, for vhost-user, an eventfd write the backend normally suppresses) or
//! panic happens inside a burst.
//!
//! These queues are where the rings' `unsafe` contracts are met, so that their API is safe:
//! every buffer posted is an mbuf the queue owns until the ring gives it back, and in-flight
//! mbufs return to their pools only after the device was stopped ([`Quiesce`]), or are leaked.
#![allow(unsafe_code)]

use crate::mbuf::{recycle, ChainBuilder, HashKind, Mbuf, Mempool, RxHash};

use super::offload::Offloads;
use crate::spec::net::{HashFields, NetHeader, HASH_FIELDS_LEN, HASH_REPORT_NONE, NET_HDR_HASH_LEN, NET_HDR_LEN};
use crate::transport::{Notify, QueueAddresses};
#[cfg(doc)]
use crate::virtqueue::Chains;
use crate::virtqueue::{PackedRing, Segment, SplitRing, Virtqueue};

use std::sync::Arc;

use super::stats::QueueCounters;
use super::QueueStats;

/// Stops a device from touching its rings: called before a queue hands its in-flight buffers
/// back to their pools.
pub(crate) trait Quiesce: Send + Sync {
    /// Resets (or otherwise stops) the device; idempotent. False when the device could not be
    /// confirmed stopped (it may still write into the buffers it holds).
    fn quiesce(&self) -> bool;
}

/// A ring of either format, chosen at set-up time.
pub enum Ring {
    /// A packed ring.
    Packed(PackedRing<Mbuf>),
    /// A split ring.
    Split(SplitRing<Mbuf>),
}

macro_rules! with_ring {
    ($ring:expr, $r:ident => $body:expr) => {
        match $ring {
            Ring::Packed($r) => $body,
            Ring::Split($r) => $body,
        }
    };
}

impl Ring {
    /// Device addresses of the ring's areas.
    pub fn addresses(&self) -> QueueAddresses {
        with_ring!(self, r => r.addresses())
    }

    /// Descriptors in the ring.
    fn size(&self) -> u16 {
        with_ring!(self, r => r.size())
    }
}

/// How a receive queue turns used buffers into packets, chosen at set-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxPath {
    /// One buffer per frame; the header is not read (no MRG_RXBUF, no receive offload): the
    /// fast path.
    #[default]
    Simple,
    /// VIRTIO_NET_F_MRG_RXBUF: a frame spread over `num_buffers` buffers comes back chained.
    Mergeable,
    /// Receive offloads (GUEST_CSUM, GUEST_TSO): the header's checksum and segmentation fields
    /// become the mbuf's [`Offload`](crate::mbuf::Offload) metadata; with or without mergeable
    /// buffers.
    Offloads {
        /// VIRTIO_NET_F_MRG_RXBUF negotiated.
        mergeable: bool,
        /// The offloads negotiated.
        offloads: Offloads,
    },
    /// VIRTIO_NET_F_HASH_REPORT: the 20-byte header, whose hash value and report type become
    /// each frame's [`RxHash`] ([`Mbuf::rx_hash`]); a report type the spec does not define is
    /// counted (`bad_hash_reports`) and the frame delivered without a hash. With or without
    /// mergeable buffers and receive offloads.
    HashReport {
        /// VIRTIO_NET_F_MRG_RXBUF negotiated.
        mergeable: bool,
        /// The receive offloads negotiated, if any.
        offloads: Option<Offloads>,
    },
}

impl RxPath {
    /// Bytes of the virtio-net header in front of each received frame.
    pub fn header_len(self) -> usize {
        match self {
            RxPath::HashReport { .. } => NET_HDR_HASH_LEN,
            _ => NET_HDR_LEN,
        }
    }
}

/// How a transmit queue puts packets on its ring, chosen at set-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TxPath {
    /// One descriptor per packet, an all-zero header: the fast path. A multi-segment packet is
    /// dropped and counted (`drops`): open the port with `PortConfig::tx_multi_segment`.
    #[default]
    Simple,
    /// A descriptor chain per packet, one descriptor per segment.
    Chains,
    /// Chains, the header filled from each mbuf's [`Offload`](crate::mbuf::Offload) request
    /// (CSUM, HOST_TSO); a request the port did not negotiate is refused (`bad_headers`).
    Offloads(Offloads),
}

impl std::fmt::Display for RxPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RxPath::Simple => "simple (one buffer per frame)",
            RxPath::Mergeable => "mergeable (num_buffers, chained mbufs)",
            RxPath::Offloads { mergeable: true, .. } => "mergeable with offloads (num_buffers, checksum, LRO)",
            RxPath::Offloads { mergeable: false, .. } => "offloads (one buffer per frame, checksum, LRO)",
            RxPath::HashReport { mergeable: true, .. } => {
                "hash report (20-byte header, num_buffers, hash on each mbuf)"
            }
            RxPath::HashReport { mergeable: false, .. } => "hash report (20-byte header, hash on each mbuf)",
        })
    }
}

impl std::fmt::Display for TxPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxPath::Simple => "simple (one descriptor per packet)",
            TxPath::Chains => "chains (one descriptor per segment)",
            TxPath::Offloads(_) => "chains with offloads (checksum, TSO)",
        })
    }
}

/// Where the header-reading receive paths find things, and what they check.
#[derive(Clone, Copy)]
struct HeaderPath {
    /// The pool's data offset: where a frame's first buffer's data starts.
    data_off: u16,
    /// Where a posted buffer starts (the header, or a later buffer's data).
    post_offset: u16,
    /// `num_buffers` is meaningful (VIRTIO_NET_F_MRG_RXBUF).
    mergeable: bool,
    /// Receive offloads to read from the header.
    offloads: Option<Offloads>,
    /// The header is 20 bytes, its hash fields to be read (VIRTIO_NET_F_HASH_REPORT).
    hash_report: bool,
}

impl HeaderPath {
    /// The header's length.
    fn header_len(self) -> u32 {
        if self.hash_report {
            NET_HDR_HASH_LEN as u32
        } else {
            NET_HDR_LEN as u32
        }
    }
}

/// What receive and transmit queues share: the ring, its notifier, its counters, and the device
/// to stop before in-flight buffers go back to their pools.
struct QueueCore {
    ring: Ring,
    notify: Box<dyn Notify>,
    counters: Arc<QueueCounters>,
    device: Option<Arc<dyn Quiesce>>,
}

impl QueueCore {
    fn new(ring: Ring, notify: Box<dyn Notify>) -> Self {
        Self { ring, notify, counters: Arc::default(), device: None }
    }

    /// Counts a publish, notifying the device first when it asked for it.
    #[inline(always)]
    fn published(&self, kick: bool) {
        if kick {
            self.notify.notify();
        }
        self.counters.add_publish(kick);
    }

    fn is_broken(&self) -> bool {
        with_ring!(&self.ring, r => r.is_broken())
    }
}

impl Drop for QueueCore {
    /// Hands every in-flight mbuf back to its pool once the device (if any) is stopped; leaks
    /// them, with an error, when it cannot be confirmed stopped: a device that may still write
    /// into a buffer must never see it reused.
    fn drop(&mut self) {
        if self.device.as_ref().is_none_or(|device| device.quiesce()) {
            // SAFETY: the device was just stopped (or, without a handle to it, the queue's
            // creator stopped it before dropping the queue: `RxQueue::new`, `TxQueue::new`).
            with_ring!(&mut self.ring, r => unsafe { r.drain(drop) });
        } else {
            let mut leaked = 0usize;
            // SAFETY: the device may still write the buffers, so none of them is handed back:
            // every token is forgotten and its buffer never returns to its pool.
            with_ring!(&mut self.ring, r => unsafe { r.drain(|mbuf| {
                std::mem::forget(mbuf);
                leaked += 1;
            }) });
            if leaked > 0 {
                tracing::error!("the device could not be stopped: leaking its {leaked} in-flight buffers");
            }
        }
    }
}

/// A receive queue: posts empty mbufs, hands back received frames.
pub struct RxQueue {
    core: QueueCore,
    pool: Mempool,
    port: u16,
    /// Refill once at least this many descriptors are free.
    refill_threshold: u16,
    /// The pool's data offset (headroom), where received frames start.
    data_off: u16,
    /// Where a posted buffer starts, from the buffer's first byte: the header lands right
    /// before the pool's data offset.
    post_offset: u64,
    /// Bytes a posted buffer offers the device: header and data room.
    post_len: u32,
    /// How used buffers become packets.
    path: RxPath,
    /// Buffers on their way from the pool into the ring (capacity: the ring size).
    staging: Vec<Mbuf>,
    /// The device asked to be notified of the buffers posted at set-up, which must wait for
    /// [`RxQueue::start`] (no notification before DRIVER_OK).
    kick_at_start: bool,
}

/// A transmit queue: takes frames, reclaims their mbufs once the device is done.
pub struct TxQueue {
    core: QueueCore,
    /// Reclaim completions once this many transmissions are in flight.
    reclaim_threshold: u16,
    /// How packets go on the ring.
    path: TxPath,
    /// Bytes of the virtio-net header: 12, or 20 with VIRTIO_NET_F_HASH_REPORT ("Packet
    /// Transmission": the receive header's size).
    header_len: usize,
    /// One chain's segments, for the chains paths (capacity: the ring size).
    chain: Vec<Segment>,
}

/// The accessors both queue kinds share.
macro_rules! queue_accessors {
    ($queue:ty) => {
        impl $queue {
            /// The queue's counters.
            pub fn stats(&self) -> QueueStats {
                self.core.counters.snapshot()
            }

            /// Descriptors in the queue's ring.
            pub fn ring_size(&self) -> u16 {
                self.core.ring.size()
            }

            /// The live counters, for a port summary read from another thread.
            pub(crate) fn counters(&self) -> Arc<QueueCounters> {
                self.core.counters.clone()
            }

            /// Whether the device broke the ring protocol; the queue then moves nothing more.
            pub fn is_broken(&self) -> bool {
                self.core.is_broken()
            }

            /// Device addresses of the ring's areas.
            pub fn addresses(&self) -> QueueAddresses {
                self.core.ring.addresses()
            }

            /// Counts packet classes (size bins, multicast, broadcast) on this queue: a look at
            /// every frame. Only before the queue's counters are shared (right after `new`).
            pub(crate) fn with_packet_classes(mut self) -> Self {
                match Arc::get_mut(&mut self.core.counters) {
                    Some(counters) => counters.count_classes(),
                    None => debug_assert!(false, "packet classes enabled after the counters were shared"),
                }
                self
            }

            /// Makes dropping the queue stop `device` before the buffers go back to their pools.
            pub(crate) fn with_quiesce(mut self, device: Arc<dyn Quiesce>) -> Self {
                self.core.device = Some(device);
                self
            }
        }
    };
}

queue_accessors!(RxQueue);
queue_accessors!(TxQueue);

impl RxQueue {
    /// A receive queue for `port` over `ring`, filled from `pool`. The ring is filled and its
    /// buffers made available now, without notifying the device ("Device Initialization",
    /// 3.1.1: no notification before DRIVER_OK): call [`RxQueue::start`] once the device runs.
    /// The device must be told about the ring by the caller, and must reach `pool`'s region.
    /// Dropping returns the posted buffers to the pool, after stopping the device given to
    /// [`RxQueue::with_quiesce`] (without one, the caller must have stopped the device).
    /// With [`RxPath::Mergeable`], the device must have negotiated VIRTIO_NET_F_MRG_RXBUF.
    pub(crate) fn new(ring: Ring, pool: Mempool, notify: Box<dyn Notify>, port: u16, path: RxPath) -> RxQueue {
        let refill_threshold = (ring.size() / 8).clamp(4, 64);
        let mut queue = RxQueue {
            path,
            data_off: pool.headroom(),
            post_offset: (pool.headroom() as usize - path.header_len()) as u64,
            post_len: pool.data_room() + path.header_len() as u32,
            staging: Vec::with_capacity(ring.size() as usize),
            core: QueueCore::new(ring, notify),
            pool,
            port,
            refill_threshold,
            kick_at_start: false,
        };
        if let Some(kick) = queue.post() {
            queue.kick_at_start = kick;
            queue.core.counters.add_publish(false);
        }
        queue
    }

    /// Sends the notification the buffers posted at set-up are owed, if the device asked for
    /// one when they were published: once, after DRIVER_OK.
    pub(crate) fn start(&mut self) {
        if std::mem::take(&mut self.kick_at_start) {
            self.core.notify.notify();
            self.core.counters.add_kick();
        }
    }

    /// Receives up to `out`'s spare capacity of frames, appending them to `out`; returns how
    /// many. Never allocates: reserve the capacity once, up front.
    #[inline]
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>) -> usize {
        let before = out.len();
        let max = out.capacity() - before;
        let core = &mut self.core;
        let (port, data_off) = (self.port, self.data_off);
        let received = match self.path {
            RxPath::Simple => {
                with_ring!(&mut core.ring, ring => Self::receive(ring, &core.counters, port, data_off, out, max))
            }
            RxPath::Mergeable | RxPath::Offloads { .. } | RxPath::HashReport { .. } => {
                let (mergeable, offloads, hash_report) = match self.path {
                    RxPath::Offloads { mergeable, offloads } => (mergeable, Some(offloads), false),
                    RxPath::HashReport { mergeable, offloads } => (mergeable, offloads, true),
                    _ => (true, None, false),
                };
                let post_offset = self.post_offset as u16;
                let shape = HeaderPath { data_off, post_offset, mergeable, offloads, hash_report };
                with_ring!(&mut core.ring, ring => Self::receive_mergeable(ring, &core.counters, port, shape, out, max))
            }
        };
        core.counters.add_classes(&out[before..], false);
        self.refill();
        received
    }

    /// The paths that read the header ("Processing of Incoming Packets", 5.1.6.4). With
    /// mergeable buffers the first buffer of a frame holds the header, whose `num_buffers` says
    /// how many buffers (itself included) the frame took; the others hold only data, from where
    /// the header would be. Buffers are popped in passes that never go past the frames `out`
    /// can take. `num_buffers` of 0 or beyond the ring, a frame whose buffers are not all
    /// returned when the device's used entries run out (as DPDK's virtio PMD, which drops it
    /// too), and offload fields the negotiated features do not allow are counted in
    /// `bad_headers` and the frame is dropped, every buffer of it back to the pool. With hash
    /// reports, the frame's first buffer's hash fields become its [`RxHash`], a report type
    /// outside the spec's counted in `bad_hash_reports` and ignored.
    #[inline(never)]
    fn receive_mergeable<R: Virtqueue<Mbuf>>(
        ring: &mut R,
        counters: &QueueCounters,
        port: u16,
        shape: HeaderPath,
        out: &mut Vec<Mbuf>,
        max: usize,
    ) -> usize {
        let mut frames = std::mem::take(out);
        let before = frames.len();
        // Bytes delivered, frames dropped, frames dropped for their header.
        let mut tally = (0u64, 0u64, 0u64);
        let mut bad_hash_reports = 0u64;
        let header_len = shape.header_len();
        let ring_size = ring.size();
        // The frame being put together, its header, and how many more buffers it takes.
        let mut partial: Option<(ChainBuilder, NetHeader, u16)> = None;
        // A whole frame: its offload metadata checked against its length, then delivered.
        let deliver = |mut frame: Mbuf, header: &NetHeader, frames: &mut Vec<Mbuf>, tally: &mut (u64, u64, u64)| {
            if frame.is_empty() {
                tally.1 += 1;
                return;
            }
            if let Some(offloads) = shape.offloads {
                match offloads.received(header, frame.len() as u32) {
                    Some(offload) => frame.set_offload(offload),
                    None => {
                        tally.2 += 1;
                        return;
                    }
                }
            }
            tally.0 += frame.len() as u64;
            // Cannot grow: at most `max` frames complete.
            frames.push(frame);
        };
        loop {
            let want = match &partial {
                Some((_, _, remaining)) => *remaining as usize,
                None => max - (frames.len() - before),
            };
            if want == 0 {
                break;
            }
            let got = ring.pop_used(want, |mut mbuf, len| {
                let Some(len) = len else {
                    // A length the ring refused (counted there): the frame it belongs to is lost.
                    partial = None;
                    tally.1 += 1;
                    return;
                };
                match partial.take() {
                    None => {
                        let Some(bytes) = mbuf.read_buffer::<NET_HDR_LEN>(shape.post_offset as usize) else {
                            tally.1 += 1;
                            return;
                        };
                        let header = NetHeader::from_bytes(bytes);
                        let num_buffers = if shape.mergeable { header.num_buffers.get() } else { 1 };
                        if len < header_len || num_buffers == 0 || num_buffers > ring_size {
                            tally.2 += 1;
                            return;
                        }
                        mbuf.init_received(shape.data_off, len - header_len, port);
                        if shape.hash_report {
                            let at = shape.post_offset as usize + NET_HDR_LEN;
                            let fields = mbuf.read_buffer::<HASH_FIELDS_LEN>(at).map(HashFields::from_bytes);
                            match fields.map(|f| (f, HashKind::from_report(f.hash_report))) {
                                Some((fields, Some(kind))) => {
                                    mbuf.set_rx_hash(Some(RxHash { value: fields.hash_value, kind }))
                                }
                                Some((fields, None)) if fields.hash_report == HASH_REPORT_NONE => {}
                                _ => bad_hash_reports += 1,
                            }
                        }
                        if num_buffers > 1 {
                            partial = Some((ChainBuilder::new(mbuf), header, num_buffers - 1));
                        } else {
                            deliver(mbuf, &header, &mut frames, &mut tally);
                        }
                    }
                    Some((mut chain, header, remaining)) => {
                        mbuf.init_received(shape.post_offset, len, port);
                        if chain.push(mbuf).is_err() {
                            tally.2 += 1;
                        } else if remaining > 1 {
                            partial = Some((chain, header, remaining - 1));
                        } else {
                            deliver(chain.finish(), &header, &mut frames, &mut tally);
                        }
                    }
                }
            });
            if got < want {
                // The device's used entries ran out: a frame still missing buffers never gets them.
                tally.2 += u64::from(partial.take().is_some());
                break;
            }
        }
        let received = frames.len() - before;
        *out = frames;
        let (bytes, drops, bad) = tally;
        if received as u64 + drops + bad > 0 {
            counters.add_traffic(received as u64, bytes, drops + bad);
            if bad > 0 {
                counters.add_bad_headers(bad);
            }
        }
        if bad_hash_reports > 0 {
            counters.add_bad_hash_reports(bad_hash_reports);
        }
        counters.set_errors(&ring.errors());
        received
    }

    #[inline(always)]
    fn receive<R: Virtqueue<Mbuf>>(
        ring: &mut R,
        counters: &QueueCounters,
        port: u16,
        data_off: u16,
        out: &mut Vec<Mbuf>,
        max: usize,
    ) -> usize {
        // Moved into a local for the loop, so that its length stays in a register rather than
        // being read again after every store into an mbuf.
        let mut frames = std::mem::take(out);
        let before = frames.len();
        let mut bytes = 0u64;
        let mut drops = 0u64;
        ring.pop_used(max, |mut mbuf, len| match len {
            // The device wrote the header right before the pool's data offset, then the frame;
            // the ring already checked that `len` fits the buffer. The header is not read:
            // without GUEST_CSUM or GSO (never negotiated) its flags are zero (5.1.6.4.1), and
            // reading the cache line the device just wrote costs more than the rest of the
            // receive path.
            Some(len) if len as usize > NET_HDR_LEN => {
                let frame_len = len - NET_HDR_LEN as u32;
                mbuf.init_received(data_off, frame_len, port);
                bytes += frame_len as u64;
                // Cannot grow: at most `max` (the spare capacity) frames come.
                frames.push(mbuf);
            }
            _ => drops += 1,
        });
        let received = frames.len() - before;
        *out = frames;
        if received as u64 + drops > 0 {
            counters.add_traffic(received as u64, bytes, drops);
        }
        counters.set_errors(&ring.errors());
        received
    }

    /// Posts empty buffers in bulk once enough descriptors are free, and notifies the device
    /// if it asks for that.
    #[inline]
    fn refill(&mut self) {
        if let Some(kick) = self.post() {
            self.core.published(kick);
        }
    }

    /// Posts empty buffers in bulk once enough descriptors are free, and publishes them;
    /// returns whether the device asked to be notified (`None`: nothing posted).
    #[inline(always)]
    fn post(&mut self) -> Option<bool> {
        // Whole groups of four descriptors (one 64-byte cache line of a packed ring), so that a
        // backend's batched path applies (DPDK's vhost processes aligned batches of four).
        let free = with_ring!(&self.core.ring, r => r.free_descriptors()) & !3;
        // A broken ring takes nothing more: checked before the pool is asked for buffers.
        if free < self.refill_threshold || self.core.is_broken() {
            return None;
        }
        if !self.pool.alloc_bulk_unreset(&mut self.staging, free as usize) {
            self.core.counters.add_alloc_failure();
            return None;
        }
        let (offset, len) = (self.post_offset, self.post_len);
        let buffers = self.staging.drain(..).map(move |mbuf| {
            let segment = Segment { addr: mbuf.buf_iova() + offset, len, writable: true };
            (segment, mbuf)
        });
        // All are taken: `free` descriptors are free and each buffer takes one.
        let kick = with_ring!(&mut self.core.ring, ring => {
            // SAFETY: each buffer is an mbuf this queue owns, moved into the ring as the token
            // of its chain until the ring gives it back; the posted window (from the header
            // room before the pool's data offset to the end of the data room) lies inside the
            // mbuf's buffer, in the pool's region, which the device reaches (see `new`).
            unsafe { ring.add_each(buffers) };
            ring.publish()
        });
        Some(kick)
    }
}

impl TxQueue {
    /// A transmit queue over `ring`, best built with [`Chains::OneDescriptorNoLengths`]
    /// (transmit completions need no length). Dropping returns the mbufs still in flight to their pools,
    /// after stopping the device given to [`TxQueue::with_quiesce`] (without one, the caller
    /// must have stopped the device).
    /// With [`TxPath::Chains`] or [`TxPath::Offloads`], the ring must have been built for
    /// chains of any length ([`Chains::Any`]); a ring with indirect tables (`with_indirect`)
    /// then takes each multi-segment packet that fits a table as one descriptor.
    pub(crate) fn new(ring: Ring, notify: Box<dyn Notify>, path: TxPath) -> TxQueue {
        let reclaim_threshold = (ring.size() / 4).clamp(1, 32);
        let chain = Vec::with_capacity(if path == TxPath::Simple { 0 } else { ring.size() as usize });
        TxQueue { core: QueueCore::new(ring, notify), reclaim_threshold, path, header_len: NET_HDR_LEN, chain }
    }

    /// Prepends the 20-byte header of VIRTIO_NET_F_HASH_REPORT (its hash fields zero) rather
    /// than the 12-byte one: for a port that negotiated hash reports.
    pub(crate) fn with_hash_header(mut self) -> Self {
        self.header_len = NET_HDR_HASH_LEN;
        self
    }

    /// Queues frames from the front of `pkts` for transmission, removing the ones it accepted;
    /// returns how many. The rest stay in `pkts`, in order, for the caller to retry or drop.
    #[inline]
    pub fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        let core = &mut self.core;
        // Classes of what the burst takes: all of it, less what it leaves (no copy, no list).
        core.counters.add_classes(pkts, false);
        let threshold = self.reclaim_threshold;
        let (accepted, kick) = match self.path {
            TxPath::Simple if self.header_len == NET_HDR_LEN => {
                with_ring!(&mut core.ring, ring => Self::transmit::<_, NET_HDR_LEN>(ring, &core.counters, threshold, pkts))
            }
            TxPath::Simple => {
                with_ring!(&mut core.ring, ring => {
                    Self::transmit::<_, NET_HDR_HASH_LEN>(ring, &core.counters, threshold, pkts)
                })
            }
            TxPath::Chains | TxPath::Offloads(_) => {
                let offloads = match self.path {
                    TxPath::Offloads(offloads) => Some(offloads),
                    _ => None,
                };
                let shape = (threshold, offloads, self.header_len);
                with_ring!(&mut core.ring, ring => {
                    Self::transmit_chains(ring, &core.counters, shape, pkts, &mut self.chain)
                })
            }
        };
        core.counters.add_classes(pkts, true);
        if accepted > 0 {
            core.published(kick);
        }
        accepted
    }

    /// The chains paths: one descriptor chain per packet, the header in the first segment's
    /// headroom (all zero, or from the mbuf's offload request with `offloads`), then one
    /// descriptor per further non-empty segment. On a ring with indirect tables a packet of
    /// several segments that fit a table takes one ring descriptor, its chain in the table
    /// ([`Virtqueue::add_indirect`]). Packets go while their descriptors fit the free ones; one
    /// with more segments than the ring has descriptors can never go, and one whose offload
    /// request the port cannot honour must not go: both are dropped and counted (`bad_headers`).
    #[inline(never)]
    fn transmit_chains<R: Virtqueue<Mbuf>>(
        ring: &mut R,
        counters: &QueueCounters,
        (reclaim_threshold, offloads, header_len): (u16, Option<Offloads>, usize),
        pkts: &mut Vec<Mbuf>,
        chain: &mut Vec<Segment>,
    ) -> (usize, bool) {
        if ring.is_broken() {
            return (0, false);
        }
        let size = ring.size() as usize;
        let indirect = ring.indirect_segments() as usize;
        // Ring descriptors a packet of `segs` segments takes (at most: empty segments go without).
        let descriptors = |segs: usize| if segs > 1 && segs <= indirect { 1 } else { segs };
        let needed: usize = pkts.iter().map(|m| descriptors(m.nb_segs() as usize)).sum();
        if ring.in_flight() >= reclaim_threshold || (ring.free_descriptors() as usize) < needed {
            Self::reclaim_ring(ring);
        }
        let mut free = ring.free_descriptors() as usize;
        let count = pkts
            .iter()
            .take_while(|m| {
                let segs = m.nb_segs() as usize;
                if segs > size {
                    // Dropped below.
                    return true;
                }
                match free.checked_sub(descriptors(segs)) {
                    Some(left) => {
                        free = left;
                        true
                    }
                    None => false,
                }
            })
            .count();
        let (mut sent, mut bytes, mut drops, mut refused) = (0u64, 0u64, 0u64, 0u64);
        for mut mbuf in pkts.drain(..count) {
            if mbuf.nb_segs() as usize > size {
                refused += 1;
                continue;
            }
            let frame_len = mbuf.len();
            // Without offloads, an all-zero header (5.1.6.2).
            let header = match offloads {
                None => NetHeader::default(),
                Some(offloads) => match offloads.transmit_header(mbuf.offload(), frame_len) {
                    Some(header) => header,
                    None => {
                        refused += 1;
                        continue;
                    }
                },
            };
            let prepended = if header_len == NET_HDR_HASH_LEN {
                let mut long = [0u8; NET_HDR_HASH_LEN];
                long[..NET_HDR_LEN].copy_from_slice(&header.to_bytes());
                mbuf.prepend_header_first(&long)
            } else {
                mbuf.prepend_header_first(&header.to_bytes())
            };
            let Some((addr, len)) = prepended else {
                drops += 1;
                continue;
            };
            chain.clear();
            chain.push(Segment { addr, len, writable: false });
            let mut first = true;
            mbuf.for_each_segment_dma(|addr, len| {
                if !std::mem::take(&mut first) && len > 0 {
                    // Cannot grow: at most `nb_segs <= size` segments, the capacity.
                    chain.push(Segment { addr, len, writable: false });
                }
            });
            // SAFETY: the packet is an mbuf this queue now owns, moved into the ring as the
            // token of its chain until the ring gives it back; every segment (the first with
            // the header) lies inside the buffer of one of its segments, owned through it, and
            // the device only reads them.
            let added = unsafe {
                if chain.len() > 1 && chain.len() <= indirect {
                    ring.add_indirect(chain, mbuf)
                } else {
                    ring.add(chain, mbuf)
                }
            };
            match added {
                Ok(()) => {
                    sent += 1;
                    bytes += frame_len as u64;
                }
                // Not expected: the free descriptors were counted above.
                Err(_) => drops += 1,
            }
        }
        if count > 0 {
            counters.add_traffic(sent, bytes, drops + refused);
            if refused > 0 {
                counters.add_bad_headers(refused);
            }
            counters.set_errors(&ring.errors());
        }
        (count, ring.publish())
    }

    /// The simple path, with an all-zero header of `HEADER` bytes.
    #[inline(always)]
    fn transmit<R: Virtqueue<Mbuf>, const HEADER: usize>(
        ring: &mut R,
        counters: &QueueCounters,
        reclaim_threshold: u16,
        pkts: &mut Vec<Mbuf>,
    ) -> (usize, bool) {
        if ring.is_broken() {
            return (0, false);
        }
        // Reclaim as soon as a batch worth of transmissions may be done: the buffers go back to
        // this thread's cache while they are still warm, and the cache does not overflow into
        // the shared store.
        if ring.in_flight() >= reclaim_threshold || (ring.free_descriptors() as usize) < pkts.len() {
            Self::reclaim_ring(ring);
        }
        let count = pkts.len().min(ring.free_descriptors() as usize);
        let mut bytes = 0u64;
        let frames = pkts.drain(..count).filter_map(|mut mbuf| {
            // No offloads: an all-zero header (5.1.6.2). One descriptor: a multi-segment packet
            // is refused with the same test as a packet without headroom (the rest of it would
            // be lost); both are drops, counted below.
            let (addr, len) = mbuf.prepend_zeroed::<HEADER>()?;
            bytes += u64::from(len) - HEADER as u64;
            Some((Segment { addr, len, writable: false }, mbuf))
        });
        // All are taken: `count` descriptors are free and each packet takes one.
        // SAFETY: each frame is an mbuf this queue now owns, moved into the ring as the token of
        // its chain until the ring gives it back; the segment (header and frame) lies inside the
        // mbuf's buffer, and the device only reads it. (An mbuf of a pool the device cannot
        // reach fails there, as a DMA error of the device, not in this process.)
        let added = unsafe { ring.add_each(frames) };
        if count > 0 {
            counters.add_traffic(added as u64, bytes, (count - added) as u64);
            counters.set_errors(&ring.errors());
        }
        (count, ring.publish())
    }

    /// Returns the mbufs of completed transmissions to their pools, in bulk.
    #[inline]
    fn reclaim_ring<R: Virtqueue<Mbuf>>(ring: &mut R) {
        recycle(|recycler| ring.pop_used(usize::MAX, |mbuf, _| recycler.put(mbuf)));
    }

    /// Reclaims every completed transmission now (normally done lazily inside `tx_burst`).
    pub fn reclaim(&mut self) {
        with_ring!(&mut self.core.ring, r => Self::reclaim_ring(r));
        self.core.counters.set_errors(&with_ring!(&self.core.ring, r => r.errors()));
    }

    /// The most segments a packet may have to go as one descriptor naming an indirect table
    /// (VIRTIO_F_INDIRECT_DESC); 0 when the queue sends every packet as a direct chain.
    pub fn indirect_segments(&self) -> u16 {
        with_ring!(&self.core.ring, r => r.indirect_segments())
    }

    /// Frames handed to the device and not yet completed.
    pub fn in_flight(&self) -> u16 {
        with_ring!(&self.core.ring, r => r.in_flight())
    }
}

const _: () = assert!(std::mem::size_of::<NetHeader>() == NET_HDR_LEN);
