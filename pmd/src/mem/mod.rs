//! DMA memory: shared, pinned-for-life regions that devices read and write, and the address
//! (IOVA) each region is known by on the device side.
//!
//! Invariants: a [`DmaRegion`] is mapped `MAP_SHARED` from a memfd for its whole life, so its
//! virtual address, length and IOVA never change (the memfd's size is sealed); it unmaps on drop.
//! A device may write any byte of it at any time, so nothing whose validity matters lives there:
//! rings are accessed only through raw pointers with volatile or atomic operations, and mbuf
//! metadata lives in CPU-private memory. The one place references are made is packet data: an
//! [`Mbuf`](crate::mbuf::Mbuf) the application holds hands out slices of its buffer, under the
//! rule (the mbuf module's threat model) that a device does not write buffers it does not hold.

mod iova;
mod physical;
mod region;

pub use iova::{IovaAllocator, IovaRange};
pub use region::{DmaRegion, HugePages, HUGE_PAGE_SIZE};
