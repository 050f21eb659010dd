//! Per-queue counters. Each queue's thread is the only writer: it adds with a relaxed load and
//! store (a plain add, no locked instruction) once per burst. Any thread may read them, e.g. to
//! print a port summary while the queues run.
//!
//! Packet classes (size bins, multicast, broadcast) need a look at every frame: they are counted
//! only when the port was configured for them ([`PortConfig::packet_classes`](super::PortConfig)),
//! decided when the queue is made; without them a burst pays one branch.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::mbuf::Mbuf;
use crate::virtqueue::RingErrors;

/// The frame-size bins, as DPDK's virtio PMD names and bounds them (`rx_q0_size_64_packets`
/// ...): upper bounds, inclusive, on the frame's length as the driver sees it (no FCS: a
/// 60-byte frame, the shortest Ethernet frame without its FCS, is `undersize` there too).
pub const SIZE_BINS: [(&str, u32); 8] = [
    ("undersize_packets", 63),
    ("size_64_packets", 64),
    ("size_65_127_packets", 127),
    ("size_128_255_packets", 255),
    ("size_256_511_packets", 511),
    ("size_512_1023_packets", 1023),
    ("size_1024_1518_packets", 1518),
    ("size_1519_max_packets", u32::MAX),
];

/// The bin of a frame of `len` bytes.
#[inline(always)]
fn size_bin(len: u32) -> usize {
    SIZE_BINS.iter().position(|(_, max)| len <= *max).unwrap_or(SIZE_BINS.len() - 1)
}

/// A snapshot of one queue's counters (or a sum of several). Receive queues count packets
/// received, transmit queues packets sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets moved.
    pub packets: u64,
    /// Bytes moved (frame bytes, without the virtio-net header).
    pub bytes: u64,
    /// Packets dropped by the driver (receive: a length from the device that does not fit;
    /// transmit: no headroom for the virtio-net header, a multi-segment packet on the
    /// one-descriptor path).
    pub drops: u64,
    /// Protocol errors the ring detected (bad ids, bad lengths, bad used indices): the sum of
    /// [`errors_by_kind`](Self::errors_by_kind).
    pub errors: u64,
    /// The ring's protocol errors by kind.
    pub errors_by_kind: RingErrors,
    /// Receive: frames dropped because the device filled their virtio-net header wrongly
    /// (`num_buffers` of 0, beyond the ring, or beyond the buffers it returned). Transmit:
    /// packets dropped because they have more segments than the ring has descriptors.
    pub bad_headers: u64,
    /// Receive, with hash reports: frames whose `hash_report` is no type the spec defines,
    /// delivered without a hash.
    pub bad_hash_reports: u64,
    /// Receive: refills that found the pool empty.
    pub alloc_failures: u64,
    /// Notifications sent to the device.
    pub kicks: u64,
    /// Bursts that published buffers (at most one kick each).
    pub publishes: u64,
    /// Packet classes, when counted ([`PortConfig::packet_classes`](super::PortConfig)).
    pub classes: Option<PacketClasses>,
}

/// Packets by class: destination address kind and size bin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketClasses {
    /// Multicast destination (group bit set), broadcast included.
    pub multicast: u64,
    /// Broadcast destination (ff:ff:ff:ff:ff:ff).
    pub broadcast: u64,
    /// Packets per [`SIZE_BINS`] bin.
    pub sizes: [u64; SIZE_BINS.len()],
}

impl std::ops::AddAssign for PacketClasses {
    fn add_assign(&mut self, other: PacketClasses) {
        self.multicast += other.multicast;
        self.broadcast += other.broadcast;
        self.sizes.iter_mut().zip(other.sizes).for_each(|(a, b)| *a += b);
    }
}

impl std::ops::AddAssign for QueueStats {
    fn add_assign(&mut self, other: QueueStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.drops += other.drops;
        self.errors += other.errors;
        self.errors_by_kind.bad_id += other.errors_by_kind.bad_id;
        self.errors_by_kind.bad_len += other.errors_by_kind.bad_len;
        self.errors_by_kind.bad_used_idx += other.errors_by_kind.bad_used_idx;
        self.bad_headers += other.bad_headers;
        self.bad_hash_reports += other.bad_hash_reports;
        self.alloc_failures += other.alloc_failures;
        self.kicks += other.kicks;
        self.publishes += other.publishes;
        self.classes = match (self.classes, other.classes) {
            (Some(mut a), Some(b)) => {
                a += b;
                Some(a)
            }
            (a, b) => a.or(b),
        };
    }
}

impl QueueStats {
    /// The counters since `earlier` (a snapshot of the same queues): each counter's difference
    /// (0 where `earlier` is ahead, which only a reset of the queue can cause).
    pub fn since(&self, earlier: &QueueStats) -> QueueStats {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        let e = (&self.errors_by_kind, &earlier.errors_by_kind);
        QueueStats {
            packets: d(self.packets, earlier.packets),
            bytes: d(self.bytes, earlier.bytes),
            drops: d(self.drops, earlier.drops),
            errors: d(self.errors, earlier.errors),
            errors_by_kind: RingErrors {
                bad_id: d(e.0.bad_id, e.1.bad_id),
                bad_len: d(e.0.bad_len, e.1.bad_len),
                bad_used_idx: d(e.0.bad_used_idx, e.1.bad_used_idx),
            },
            bad_headers: d(self.bad_headers, earlier.bad_headers),
            bad_hash_reports: d(self.bad_hash_reports, earlier.bad_hash_reports),
            alloc_failures: d(self.alloc_failures, earlier.alloc_failures),
            kicks: d(self.kicks, earlier.kicks),
            publishes: d(self.publishes, earlier.publishes),
            classes: self.classes.map(|now| {
                let then = earlier.classes.unwrap_or_default();
                let mut sizes = now.sizes;
                sizes.iter_mut().zip(then.sizes).for_each(|(a, b)| *a = a.saturating_sub(b));
                PacketClasses {
                    multicast: d(now.multicast, then.multicast),
                    broadcast: d(now.broadcast, then.broadcast),
                    sizes,
                }
            }),
        }
    }
}

/// The live class counters of one queue.
#[derive(Debug, Default)]
struct ClassCounters {
    multicast: AtomicU64,
    broadcast: AtomicU64,
    sizes: [AtomicU64; SIZE_BINS.len()],
}

/// The live counters of one queue.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: AtomicU64,
    bad_id: AtomicU64,
    bad_len: AtomicU64,
    bad_used_idx: AtomicU64,
    bad_headers: AtomicU64,
    bad_hash_reports: AtomicU64,
    alloc_failures: AtomicU64,
    kicks: AtomicU64,
    publishes: AtomicU64,
    classes: Option<Box<ClassCounters>>,
}

/// Adds `n` to a counter this thread alone writes.
#[inline(always)]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

impl QueueCounters {
    /// Counts packet classes from now on (set when the queue is made).
    pub fn count_classes(&mut self) {
        self.classes = Some(Box::default());
    }

    #[inline(always)]
    pub fn add_traffic(&self, packets: u64, bytes: u64, drops: u64) {
        bump(&self.packets, packets);
        bump(&self.bytes, bytes);
        if drops > 0 {
            bump(&self.drops, drops);
        }
    }

    /// Counts the classes of `frames` (`taken_back`: takes them back out, for frames a transmit
    /// burst did not take), when this queue counts classes; one branch otherwise.
    #[inline(always)]
    pub fn add_classes(&self, frames: &[Mbuf], taken_back: bool) {
        if let Some(classes) = &self.classes {
            classes.add(frames, taken_back);
        }
    }

    #[inline(always)]
    pub fn set_errors(&self, errors: &RingErrors) {
        self.bad_id.store(errors.bad_id, Ordering::Relaxed);
        self.bad_len.store(errors.bad_len, Ordering::Relaxed);
        self.bad_used_idx.store(errors.bad_used_idx, Ordering::Relaxed);
    }

    #[inline]
    pub fn add_bad_headers(&self, n: u64) {
        bump(&self.bad_headers, n);
    }

    #[inline]
    pub fn add_bad_hash_reports(&self, n: u64) {
        bump(&self.bad_hash_reports, n);
    }

    #[inline(always)]
    pub fn add_alloc_failure(&self) {
        bump(&self.alloc_failures, 1);
    }

    #[inline(always)]
    pub fn add_publish(&self, kicked: bool) {
        bump(&self.publishes, 1);
        if kicked {
            bump(&self.kicks, 1);
        }
    }

    /// A notification sent outside a burst (the one owed at start, after DRIVER_OK).
    #[inline]
    pub fn add_kick(&self) {
        bump(&self.kicks, 1);
    }

    pub fn snapshot(&self) -> QueueStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let errors_by_kind = RingErrors {
            bad_id: get(&self.bad_id),
            bad_len: get(&self.bad_len),
            bad_used_idx: get(&self.bad_used_idx),
        };
        QueueStats {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            drops: get(&self.drops),
            errors: errors_by_kind.total(),
            errors_by_kind,
            bad_headers: get(&self.bad_headers),
            bad_hash_reports: get(&self.bad_hash_reports),
            alloc_failures: get(&self.alloc_failures),
            kicks: get(&self.kicks),
            publishes: get(&self.publishes),
            classes: self.classes.as_ref().map(|c| PacketClasses {
                multicast: get(&c.multicast),
                broadcast: get(&c.broadcast),
                sizes: std::array::from_fn(|i| get(&c.sizes[i])),
            }),
        }
    }
}

impl ClassCounters {
    /// Adds (or, `taken_back`, subtracts) the classes of `frames`, summed locally first: one
    /// store per counter per burst.
    #[inline(never)]
    fn add(&self, frames: &[Mbuf], taken_back: bool) {
        let (mut multicast, mut broadcast, mut sizes) = (0u64, 0u64, [0u64; SIZE_BINS.len()]);
        for frame in frames {
            // The whole packet's length (every segment); the addresses are in the first.
            sizes[size_bin(frame.len() as u32)] += 1;
            let data = frame.data();
            if let Some(dst) = data.get(..6) {
                if dst[0] & 1 != 0 {
                    multicast += 1;
                    broadcast += u64::from(dst == [0xff; 6]);
                }
            }
        }
        let apply = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                let now = counter.load(Ordering::Relaxed);
                counter.store(if taken_back { now.saturating_sub(n) } else { now + n }, Ordering::Relaxed);
            }
        };
        apply(&self.multicast, multicast);
        apply(&self.broadcast, broadcast);
        self.sizes.iter().zip(sizes).for_each(|(c, n)| apply(c, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fall_in_dpdks_bins() {
        let bins: Vec<usize> = [0, 60, 63, 64, 65, 127, 128, 255, 256, 511, 512, 1023, 1024, 1514, 1518, 1519, 9000]
            .iter()
            .map(|len| size_bin(*len))
            .collect();
        assert_eq!(bins, [0, 0, 0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 7, 7]);
    }

    #[test]
    fn since_subtracts_every_counter() {
        let mut later = QueueStats { packets: 10, bytes: 1000, kicks: 3, ..QueueStats::default() };
        later.errors_by_kind.bad_len = 2;
        later.errors = 2;
        later.classes = Some(PacketClasses { multicast: 4, broadcast: 1, sizes: [5, 5, 0, 0, 0, 0, 0, 0] });
        let earlier = QueueStats { packets: 4, bytes: 400, kicks: 1, ..QueueStats::default() };
        let d = later.since(&earlier);
        assert_eq!((d.packets, d.bytes, d.kicks, d.errors, d.errors_by_kind.bad_len), (6, 600, 2, 2, 2));
        assert_eq!(d.classes.unwrap().sizes[0], 5);
        assert_eq!(
            later.since(&later),
            QueueStats { classes: Some(PacketClasses::default()), ..QueueStats::default() }
        );
    }
}
