//! Packed virtqueue layouts ("Packed Virtqueues", 2.8): the 16-byte descriptor and the 4-byte
//! event suppression structure.

use super::{Le16, Le32, Le64};

/// `VIRTQ_DESC_F_NEXT`: the buffer continues in the next descriptor.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer holds a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_DESC_F_AVAIL` (bit 7).
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// `VIRTQ_DESC_F_USED` (bit 15).
pub const DESC_F_USED: u16 = 1 << 15;

/// `RING_EVENT_FLAGS_ENABLE`: notify on every event.
pub const EVENT_FLAGS_ENABLE: u16 = 0;
/// `RING_EVENT_FLAGS_DISABLE`: do not notify.
pub const EVENT_FLAGS_DISABLE: u16 = 1;
/// `RING_EVENT_FLAGS_DESC`: notify when a given descriptor is made available/used (EVENT_IDX).
pub const EVENT_FLAGS_DESC: u16 = 2;

/// `struct pvirtq_desc`: one element of the descriptor ring.
#[repr(C, align(16))]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PackedDesc {
    /// Buffer address, as the device knows it (IOVA or the frontend's VA).
    pub addr: Le64,
    /// Buffer length; in a used descriptor, the bytes the device wrote.
    pub len: Le32,
    /// Buffer ID.
    pub id: Le16,
    /// `DESC_F_*` flags, with the AVAIL/USED bits.
    pub flags: Le16,
}
const _: () = assert!(core::mem::size_of::<PackedDesc>() == 16);

/// Byte offset of `flags` within a [`PackedDesc`].
pub const DESC_FLAGS_OFFSET: usize = 14;
/// Byte offset of `id` within a [`PackedDesc`].
pub const DESC_ID_OFFSET: usize = 12;
/// Byte offset of `len` within a [`PackedDesc`].
pub const DESC_LEN_OFFSET: usize = 8;

/// `struct pvirtq_event_suppress`: the driver and device event suppression areas.
#[repr(C, align(4))]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct EventSuppress {
    /// Bits 0..14: descriptor ring change event offset; bit 15: its wrap counter.
    pub desc: Le16,
    /// `EVENT_FLAGS_*` in bits 0..1.
    pub flags: Le16,
}
const _: () = assert!(core::mem::size_of::<EventSuppress>() == 4);

/// Byte offset of `flags` within an [`EventSuppress`].
pub const EVENT_FLAGS_OFFSET: usize = 2;

/// Largest queue size a packed ring can have: positions are 15-bit ("Packed Virtqueues").
pub const MAX_QUEUE_SIZE: u16 = 1 << 15;

/// Bytes of descriptor ring for `size` descriptors.
pub const fn desc_ring_bytes(size: u16) -> usize {
    16 * size as usize
}
