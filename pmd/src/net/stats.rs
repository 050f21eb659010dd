//! Per-queue counters: plain integers owned by the queue's thread, read by copying.

use crate::virtqueue::RingErrors;

/// Counters of one queue. Receive queues count packets received, transmit queues packets sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets moved.
    pub packets: u64,
    /// Bytes moved (frame bytes, without the virtio-net header).
    pub bytes: u64,
    /// Packets dropped by the driver (receive: bad length from the device; transmit: no
    /// headroom for the virtio-net header).
    pub drops: u64,
    /// Protocol errors the ring detected (bad ids, bad lengths).
    pub errors: RingErrors,
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
        self.errors.bad_id += other.errors.bad_id;
        self.errors.bad_len += other.errors.bad_len;
        self.errors.bad_used_idx += other.errors.bad_used_idx;
        self.alloc_failures += other.alloc_failures;
        self.kicks += other.kicks;
        self.publishes += other.publishes;
    }
}
