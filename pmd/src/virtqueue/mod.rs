//! The driver side of virtqueues: one [`Virtqueue`] trait over the packed ([`PackedRing`]) and
//! split ([`SplitRing`]) formats.
//!
//! Invariants both formats keep:
//! - The driver's own shadow records every in-flight chain (its token, descriptor count and
//!   device-writable length). Nothing the device writes is trusted: each used id is checked
//!   against the shadow and each used length against the chain's writable length (an in-order
//!   split transmit ring reads neither, and counts completions from `used.idx`, which is checked
//!   against the chains in flight). A bad value is
//!   counted in [`RingErrors`]; when the ring can no longer be followed safely it reports itself
//!   broken and stops handing out completions. Never a panic, never undefined behaviour.
//! - Chains become visible to the device only in [`Virtqueue::publish`], once per burst: split
//!   rings with one release store of `avail.idx`, packed rings by writing the first head's flags
//!   last, with release ordering.
//! - [`Virtqueue::publish`] says whether the device asked to be notified, per its event
//!   suppression state, so the caller kicks at most once per burst.
//! - Ring memory is only accessed through raw pointers with volatile or atomic operations.
//! - Aiming the device at memory is `unsafe`: [`Virtqueue::add`] and [`Virtqueue::add_each`]
//!   take raw device addresses whose memory the caller vouches for until the chain comes back,
//!   and [`Virtqueue::drain`] hands tokens back only on the caller's word that the device has
//!   stopped. Ring memory itself comes only from this crate ([`RingMemory`]). The safe surface
//!   is the receive and transmit queues (`crate::net`), which post owned mbufs.
#![allow(unsafe_code)]

/// The [`Virtqueue`] methods that both formats answer from same-named fields: `size`, `free`
/// (descriptors), `chains` (in flight), `broken`, `errors`, `shadow`, `memory` and `indirect`.
macro_rules! ring_state_methods {
    () => {
        #[inline]
        fn size(&self) -> u16 {
            self.size
        }

        #[inline]
        fn free_descriptors(&self) -> u16 {
            self.free
        }

        #[inline]
        fn in_flight(&self) -> u16 {
            self.chains
        }

        fn is_broken(&self) -> bool {
            self.broken
        }

        fn errors(&self) -> RingErrors {
            self.errors
        }

        unsafe fn drain(&mut self, sink: impl FnMut(T)) {
            // Stopped first, so that a sink that panics leaves a ring that moves nothing more.
            self.broken = true;
            self.chains = 0;
            self.shadow.drain(sink);
        }

        fn addresses(&self) -> QueueAddresses {
            self.memory.addresses()
        }

        #[inline(always)]
        fn indirect_segments(&self) -> u16 {
            self.indirect.as_ref().map_or(0, |tables| tables.max_segments())
        }
    };
}

pub mod event;
mod indirect;
mod layout;
mod packed;
pub mod position;
mod shadow;
mod split;

pub use indirect::{indirect_bytes, table_segments, IndirectTables, MAX_INDIRECT_SEGMENTS};
pub use layout::{ring_bytes, RingMemory, RING_ALIGN};
pub use packed::PackedRing;
pub use split::SplitRing;

use crate::transport::QueueAddresses;

/// What a ring's chains look like, fixed when the ring is built ([`PackedRing::new`],
/// [`SplitRing::new`]): the completion path follows from it once, and cannot change under
/// chains already in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chains {
    /// Chains of any length, each completion with its used length.
    #[default]
    Any,
    /// One descriptor per chain: the receive queues' rings. In order, completions are then
    /// followed by position alone, and [`Virtqueue::add`] refuses longer chains.
    OneDescriptor,
    /// One descriptor per chain, and the caller needs no used lengths: the transmit queues'
    /// rings. In order, a split ring then reads no used entry: `used.idx` alone says which
    /// chains completed, every one up to it (a device may even write a single used entry for a
    /// batch and skip the rest: "In-order use of descriptors", 2.7.9). Completions carry no
    /// length, and ids go unread: a wrong one cannot lose a chain there, while a `used.idx`
    /// beyond the chains in flight still stops the ring; the device finds the used ring's lines
    /// still in its own cache when it writes them again, one ring later. A packed ring treats
    /// it as [`OneDescriptor`](Self::OneDescriptor).
    OneDescriptorNoLengths,
}

/// One buffer of a descriptor chain, as the device will see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Device address (IOVA) of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes (true) or reads (false) this buffer.
    pub writable: bool,
}

/// Device misbehaviour a ring detected. Plain counters owned by the queue's thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingErrors {
    /// Used ids that were out of range or not in flight.
    pub bad_id: u64,
    /// Used lengths larger than the chain's device-writable length.
    pub bad_len: u64,
    /// Used index moves larger than the number of chains in flight (split rings).
    pub bad_used_idx: u64,
}

impl RingErrors {
    /// All detected errors.
    pub fn total(&self) -> u64 {
        self.bad_id + self.bad_len + self.bad_used_idx
    }
}

/// A completed chain: the token it was added with, and how many bytes the device wrote into
/// it, or `None` when that length is unknown or was out of bounds (then already counted in
/// [`RingErrors`] if the device was at fault).
pub type UsedLen = Option<u32>;

/// The driver side of one virtqueue. Owned by one thread (`Send`, not `Sync`); the token type
/// `T` is what the caller gets back on completion (an [`Mbuf`](crate::mbuf::Mbuf) on the data
/// path).
///
/// Safe code cannot aim the device at memory. Adding a chain takes `unsafe`:
///
/// ```compile_fail,E0133
/// use virtio_pmd::virtqueue::{PackedRing, Segment, Virtqueue};
/// fn post(ring: &mut PackedRing<u32>) {
///     let _ = ring.add(&[Segment { addr: 0xdead_0000, len: 64, writable: true }], 0);
/// }
/// ```
///
/// and so do the bulk add and taking buffers back from a device that may still run:
///
/// ```compile_fail,E0133
/// use virtio_pmd::virtqueue::{Segment, SplitRing, Virtqueue};
/// fn post(ring: &mut SplitRing<u32>) {
///     ring.add_each(std::iter::once((Segment { addr: 0xdead_0000, len: 64, writable: true }, 0)));
/// }
/// ```
///
/// ```compile_fail,E0133
/// use virtio_pmd::virtqueue::{PackedRing, Virtqueue};
/// fn take_back(ring: &mut PackedRing<u32>) {
///     ring.drain(drop);
/// }
/// ```
///
/// Ring memory comes only from this crate, never from a slice of a region in use:
///
/// ```compile_fail,E0624
/// use std::sync::Arc;
/// use virtio_pmd::mem::DmaRegion;
/// use virtio_pmd::transport::RingFormat;
/// use virtio_pmd::virtqueue::RingMemory;
/// fn lay_over(pool_region: Arc<DmaRegion>) {
///     let _ = RingMemory::new(pool_region, 0, RingFormat::Packed, 256);
/// }
/// ```
pub trait Virtqueue<T>: Send {
    /// Number of descriptors.
    fn size(&self) -> u16;

    /// Descriptors not in flight.
    fn free_descriptors(&self) -> u16;

    /// Chains added and not yet completed.
    fn in_flight(&self) -> u16;

    /// Writes one chain into the ring; the device sees it after the next [`publish`](Self::publish).
    /// Gives `token` back when the chain is empty, longer than the ring, or there is no room.
    ///
    /// # Safety
    /// Once published, the device reads every segment, and writes the `writable` ones, at its
    /// device address. For each segment the caller guarantees that the bytes the device can
    /// reach at `addr..addr + len` belong to the caller, and that nothing else writes them (nor,
    /// for a `writable` segment, reads them) while the chain is in flight: until `token` comes
    /// back from [`pop_used`](Self::pop_used), or from [`drain`](Self::drain) after the device
    /// stopped. A ring dropped with chains in flight drops their tokens: the device must be
    /// stopped by then. (Holding each buffer's ownership in its token, as the queues do with
    /// mbufs, keeps all of this.)
    unsafe fn add(&mut self, segments: &[Segment], token: T) -> Result<(), T>;

    /// Adds one single-descriptor chain per item of `chains`, stopping when the ring is full
    /// (what is left of `chains` is not consumed); returns how many it added. The same as
    /// [`add`](Self::add) with one segment per item, in one loop: the bulk path of the data plane.
    /// If `chains` panics, the chains added before stay in flight and are accounted for.
    ///
    /// # Safety
    /// [`add`](Self::add)'s contract, for every item `chains` yields.
    unsafe fn add_each(&mut self, chains: impl Iterator<Item = (Segment, T)>) -> usize;

    /// Writes one chain as a single ring descriptor (VIRTQ_DESC_F_INDIRECT) naming the ring's
    /// indirect table for it, which gets the segments ([`IndirectTables`]); the device sees it
    /// after the next [`publish`](Self::publish), and completes it as any one-descriptor chain.
    /// Gives `token` back when the ring has no tables, `segments` is empty or longer than
    /// [`indirect_segments`](Self::indirect_segments), or no descriptor is free.
    ///
    /// # Safety
    /// [`add`](Self::add)'s contract, for every segment.
    unsafe fn add_indirect(&mut self, segments: &[Segment], token: T) -> Result<(), T>;

    /// The longest chain [`add_indirect`](Self::add_indirect) takes: 0 on a ring built without
    /// indirect tables.
    fn indirect_segments(&self) -> u16;

    /// Makes every chain added since the last call visible to the device, and returns whether
    /// the device asked to be notified of that.
    fn publish(&mut self) -> bool;

    /// Hands up to `max` completed chains, oldest first, to `sink`; returns how many. If `sink`
    /// panics, the chains handed to it so far are complete and the ring goes on.
    fn pop_used(&mut self, max: usize, sink: impl FnMut(T, UsedLen)) -> usize;

    /// Whether the ring stopped because the device broke the protocol (see [`RingErrors`]).
    fn is_broken(&self) -> bool;

    /// What the ring detected so far.
    fn errors(&self) -> RingErrors;

    /// Hands every in-flight token to `sink`, for teardown after the device was reset (or is
    /// gone). The ring must not be used afterwards; it reports itself broken.
    ///
    /// # Safety
    /// The device must no longer access this ring or any buffer in flight on it (it was reset,
    /// or is gone for good): the tokens give those buffers back to the caller.
    unsafe fn drain(&mut self, sink: impl FnMut(T));

    /// Device addresses of the ring's three areas, for the transport.
    fn addresses(&self) -> QueueAddresses;
}
