//! Split virtqueue layouts ("Split Virtqueues", 2.7): the descriptor table, the available ring
//! (driver area) and the used ring (device area).
//!
//! The rings are variable-length, so only their element types are Rust structs; the byte
//! offsets of each field are given as functions of the queue size.

use super::{Le16, Le32, Le64};

/// `VIRTQ_DESC_F_NEXT`: the buffer continues via the `next` field.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer holds a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver does not want used-buffer notifications.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY`: the device does not want available-buffer notifications.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// `struct virtq_desc`: one entry of the descriptor table.
#[repr(C, align(16))]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SplitDesc {
    /// Buffer address, as the device knows it.
    pub addr: Le64,
    /// Buffer length.
    pub len: Le32,
    /// `DESC_F_*` flags.
    pub flags: Le16,
    /// Next descriptor of the chain when `DESC_F_NEXT` is set.
    pub next: Le16,
}
const _: () = assert!(core::mem::size_of::<SplitDesc>() == 16);

/// `struct virtq_used_elem` (4-byte aligned: the used ring places it at `4 + 8 * i`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Index of the head of the used descriptor chain (le32 with only 16 bits meaningful).
    pub id: Le32,
    /// Bytes written into the buffer by the device.
    pub len: Le32,
}
const _: () = assert!(core::mem::size_of::<UsedElem>() == 8);

/// Largest split queue size ("Split Virtqueues": queue size is at most 32768).
pub const MAX_QUEUE_SIZE: u16 = 1 << 15;

/// Byte offsets of the available ring (`struct virtq_avail`) fields.
pub mod avail {
    /// `flags`.
    pub const FLAGS: usize = 0;
    /// `idx`.
    pub const IDX: usize = 2;
    /// `ring[i]`.
    pub const fn ring(i: u16) -> usize {
        4 + 2 * i as usize
    }
    /// `used_event`, right after `ring[size]` (only with EVENT_IDX).
    pub const fn used_event(size: u16) -> usize {
        4 + 2 * size as usize
    }
    /// Total bytes, `used_event` included.
    pub const fn bytes(size: u16) -> usize {
        6 + 2 * size as usize
    }
}

/// Byte offsets of the used ring (`struct virtq_used`) fields.
pub mod used {
    /// `flags`.
    pub const FLAGS: usize = 0;
    /// `idx`.
    pub const IDX: usize = 2;
    /// `ring[i]`.
    pub const fn ring(i: u16) -> usize {
        4 + 8 * i as usize
    }
    /// `avail_event`, right after `ring[size]` (only with EVENT_IDX).
    pub const fn avail_event(size: u16) -> usize {
        4 + 8 * size as usize
    }
    /// Total bytes, `avail_event` included.
    pub const fn bytes(size: u16) -> usize {
        6 + 8 * size as usize
    }
}
