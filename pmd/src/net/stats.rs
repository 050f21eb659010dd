//! Per-queue counters. Each queue's thread is the only writer: it adds with a relaxed load and
//! store (a plain add, no locked instruction) once per burst. Any thread may read them, e.g. to
//! print a port summary while the queues run.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::virtqueue::RingErrors;

/// A snapshot of one queue's counters (or a sum of several). Receive queues count packets
/// received, transmit queues packets sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets moved.
    pub packets: u64,
    /// Bytes moved (frame bytes, without the virtio-net header).
    pub bytes: u64,
    /// Packets dropped by the driver (receive: a length from the device that does not fit;
    /// transmit: no headroom for the virtio-net header).
    pub drops: u64,
    /// Protocol errors the ring detected (bad ids, bad lengths, bad used indices).
    pub errors: u64,
    /// Receive: frames dropped because the device filled their virtio-net header wrongly
    /// (`num_buffers` of 0, beyond the ring, or beyond the buffers it returned). Transmit:
    /// packets dropped because they have more segments than the ring has descriptors.
    pub bad_headers: u64,
    /// Receive: refills that found the pool empty.
    pub alloc_failures: u64,
    /// Notifications sent to the device.
    pub kicks: u64,
    /// Bursts that published buffers (at most one kick each).
    pub publishes: u64,
}

impl std::ops::AddAssign for QueueStats {
    fn add_assign(&mut self, other: QueueStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.drops += other.drops;
        self.errors += other.errors;
        self.bad_headers += other.bad_headers;
        self.alloc_failures += other.alloc_failures;
        self.kicks += other.kicks;
        self.publishes += other.publishes;
    }
}

/// The live counters of one queue.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: AtomicU64,
    errors: AtomicU64,
    bad_headers: AtomicU64,
    alloc_failures: AtomicU64,
    kicks: AtomicU64,
    publishes: AtomicU64,
}

/// Adds `n` to a counter this thread alone writes.
#[inline(always)]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

impl QueueCounters {
    #[inline(always)]
    pub fn add_traffic(&self, packets: u64, bytes: u64, drops: u64) {
        bump(&self.packets, packets);
        bump(&self.bytes, bytes);
        if drops > 0 {
            bump(&self.drops, drops);
        }
    }

    #[inline(always)]
    pub fn set_errors(&self, errors: &RingErrors) {
        self.errors.store(errors.total(), Ordering::Relaxed);
    }

    #[inline]
    pub fn add_bad_headers(&self, n: u64) {
        bump(&self.bad_headers, n);
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
        QueueStats {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            drops: get(&self.drops),
            errors: get(&self.errors),
            bad_headers: get(&self.bad_headers),
            alloc_failures: get(&self.alloc_failures),
            kicks: get(&self.kicks),
            publishes: get(&self.publishes),
        }
    }
}
