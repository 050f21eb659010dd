//! DMA memory: shared, pinned-for-life regions that devices read and write, and the address
//! (IOVA) each region is known by on the device side.
//!
//! Invariants: a [`DmaRegion`] is mapped `MAP_SHARED` from a memfd for its whole life, so its
//! virtual address, length and IOVA never change; it unmaps on drop. Every byte of it may be
//! written by a device at any time, so no `&`/`&mut` to its contents is ever handed out: only raw
//! pointers and volatile or atomic accesses.

mod iova;
mod region;

pub use iova::{IovaAllocator, IovaRange};
pub use region::{DmaRegion, HugePages, HUGE_PAGE_SIZE};
