//! Zero-copy packet buffers ([`Mbuf`]) and the pools they come from ([`Mempool`]).
//!
//! A pool has two parts. Its DMA region holds, per element, only `headroom` bytes (room for the
//! 12-byte virtio-net header to be written in place, and for encapsulations) and the data
//! room: the bytes a device may read or write. Every element's metadata (`MbufHeader`: where
//! its buffer is, its bounds, its data window, its pool) lives in a header table of CPU-private
//! memory, which is never mapped for a device nor shared with a vhost-user backend. An `Mbuf`
//! points to its header; it moves into a ring and back out, and goes back to its pool when
//! dropped.
//!
//! Accounting invariant: every element is, at any time, in exactly one place: the pool's shared
//! store, one thread's cache, a ring's shadow state, or an `Mbuf` the application holds.
//!
//! # Threat model for packet data
//! The device (or backend) is untrusted for everything it reports (ring entries, lengths, ids:
//! the rings check them) and it can never reach an mbuf's metadata, so no write of its can
//! turn into a bad pointer, bound or length in this process. It is trusted for one thing only:
//! not to write a buffer it does not hold. [`Mbuf::data`] and [`Mbuf::data_mut`] hand out
//! ordinary slices over DMA memory, as every zero-copy driver does; a device that breaks that
//! rule and writes a buffer the application holds can change the bytes under such a slice (the
//! application sees garbage data, which it must treat as untrusted input anyway), but it cannot
//! change where the slice points nor how long it is. Code in this crate never derives a length,
//! offset or pointer from packet bytes.
#![allow(unsafe_code)]

mod chain;
mod hash;
mod offload;
mod pool;

use std::ptr::NonNull;

pub(crate) use chain::ChainBuilder;
pub use chain::{ChainError, Segments, SegmentsMut};
pub use hash::{HashKind, RxHash};
pub use offload::{Checksum, Gso, GsoKind, Offload};

pub(crate) use pool::recycle;
pub use pool::{free_bulk, Mempool, MempoolConfig, PoolStats};

/// Bytes reserved before the data in every buffer (at least the virtio-net header, and a cache
/// line multiple so that the data starts cache-aligned).
pub const DEFAULT_HEADROOM: u16 = 128;
/// Default data room: a full 1514-byte frame plus its header, rounded to 2 KiB.
pub const DEFAULT_DATA_ROOM: u16 = 2048;

/// Per-element metadata, two cache lines in the pool's header table (CPU-private memory): the
/// first holds what every packet touches, the second what chains, offloads and the application
/// use.
///
/// Invariants: `buf..buf + buf_len` is this element's buffer inside the pool's DMA region, at
/// device address `buf_iova`; `data_off + data_len <= buf_len`; `pool` is the pool's shared
/// state, alive while the element is out of its store. `buf`, `buf_iova`, `buf_len` and `pool`
/// never change after the pool is built.
///
/// Chains: `next` links the segments of one packet, each an element of a pool (any pool), all
/// owned by the head's [`Mbuf`]. In the head, `nb_segs` counts the segments (itself included)
/// and `pkt_len` is the sum of their `data_len`; the other segments keep `nb_segs == 1` and
/// their `pkt_len` is unused. An
/// element in its pool's store (or a cache) has `next == None` and `nb_segs == 1`, so a freshly
/// allocated buffer is a one-segment packet without a reset.
#[repr(C, align(64))]
pub(crate) struct MbufHeader {
    /// The first headroom byte, in the pool's DMA region.
    buf: NonNull<u8>,
    /// IOVA of `buf`.
    buf_iova: u64,
    /// Owning pool.
    pool: NonNull<pool::PoolShared>,
    /// The next segment of the packet, owned through the head.
    next: Option<NonNull<MbufHeader>>,
    /// Bytes of valid data in this segment, starting at `data_off`.
    data_len: u32,
    /// Bytes of data in the whole packet (head only).
    pkt_len: u32,
    /// The hash value the device reported; meaningful only with `hash_kind`.
    rss_hash: u32,
    /// Headroom + data room (at most `u16::MAX`: the pool checks it).
    buf_len: u16,
    /// Offset of the first data byte from the start of `buf`.
    data_off: u16,
    /// Port the packet was received on, or is bound for.
    port: u16,
    /// Segments in the packet (head only).
    nb_segs: u16,
    /// Checksum and segmentation offload metadata (head only).
    offload: Offload,
    /// What `rss_hash` was computed over; `None`: no hash (head only). Clearing it alone clears
    /// the hash, one byte store on the receive fast path.
    hash_kind: Option<HashKind>,
    // Second cache line.
    /// Free for the application's use (e.g. a timestamp or sequence number).
    user_data: u64,
}
const _: () = assert!(core::mem::size_of::<MbufHeader>() == 128);
const _: () = assert!(core::mem::offset_of!(MbufHeader, user_data) == 64);
const _: () = assert!(core::mem::size_of::<Offload>() == 10);
const _: () = assert!(core::mem::size_of::<Option<HashKind>>() == 1);

impl MbufHeader {
    /// A fresh element's header: an empty one-segment packet with `headroom` (`buf`'s
    /// invariants are the caller's).
    pub(crate) fn new(
        buf: NonNull<u8>,
        buf_iova: u64,
        pool: NonNull<pool::PoolShared>,
        buf_len: u16,
        headroom: u16,
    ) -> Self {
        MbufHeader {
            buf,
            buf_iova,
            pool,
            next: None,
            buf_len,
            data_len: 0,
            pkt_len: 0,
            rss_hash: 0,
            data_off: headroom,
            port: 0,
            nb_segs: 1,
            offload: Offload::NONE,
            hash_kind: None,
            user_data: 0,
        }
    }
}

/// An owned packet from a [`Mempool`]: one buffer, or a chain of segments (each a buffer of a
/// pool) owned through its first. `Send`, not `Clone`; every segment returns to its pool when
/// the packet is dropped.
///
/// The first segment's data is [`data()`](Mbuf::data): `data_len()` bytes at offset
/// `headroom()` of its buffer; bytes before it can be claimed with [`Mbuf::prepend`], bytes
/// after the last segment's data with [`Mbuf::append`]. [`len()`](Mbuf::len) is the whole
/// packet; [`segments()`](Mbuf::segments) walks it (see the `chain` module for chains).
pub struct Mbuf {
    hdr: NonNull<MbufHeader>,
}

// SAFETY: an `Mbuf` is the unique owner of its element and header, and of the elements chained
// after it (the pool hands each element out once), so moving it to another thread moves that
// ownership; the pools it points to are `Sync`.
unsafe impl Send for Mbuf {}

impl Mbuf {
    #[inline(always)]
    fn header(&self) -> &MbufHeader {
        // SAFETY: `hdr` points to this mbuf's header, which only its owner touches.
        unsafe { self.hdr.as_ref() }
    }

    #[inline(always)]
    fn header_mut(&mut self) -> &mut MbufHeader {
        // SAFETY: as in `header`; `&mut self` makes the access unique.
        unsafe { self.hdr.as_mut() }
    }

    /// Takes ownership of an element handed out by a pool (and of the segments chained to it).
    ///
    /// # Safety
    /// `hdr` must be the header of an element of a live pool, out of its store, that nothing
    /// else owns.
    #[inline(always)]
    pub(crate) unsafe fn from_raw(hdr: NonNull<MbufHeader>) -> Mbuf {
        Mbuf { hdr }
    }

    /// Gives up ownership without returning the element (or its chain) to its pool.
    #[inline(always)]
    fn into_raw(self) -> NonNull<MbufHeader> {
        let hdr = self.hdr;
        std::mem::forget(self);
        hdr
    }

    /// Marks the buffer as a received frame: `len` bytes at offset `data_off`, from `port`, no
    /// offload metadata or hash, one segment (a buffer posted for receive is never chained: it
    /// came from its pool's store). Every field of the data window is set here, so buffers
    /// posted for receive need no reset when they are allocated. `data_off + len` must fit the
    /// buffer.
    #[inline(always)]
    pub(crate) fn init_received(&mut self, data_off: u16, len: u32, port: u16) {
        let h = self.header_mut();
        debug_assert!(data_off as u32 + len <= h.buf_len as u32 && h.next.is_none());
        h.data_off = data_off;
        h.data_len = len;
        h.pkt_len = len;
        h.port = port;
        h.hash_kind = None;
        h.offload = Offload::NONE;
    }

    /// Bytes of data in the whole packet (every segment).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.header().pkt_len as usize
    }

    /// Whether the packet has no data.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of data in the first segment (all of [`len()`](Mbuf::len) for one segment).
    #[inline(always)]
    pub fn data_len(&self) -> usize {
        self.header().data_len as usize
    }

    /// Segments in the packet (1 for a single buffer).
    #[inline(always)]
    pub fn nb_segs(&self) -> u16 {
        self.header().nb_segs
    }

    /// Whether the packet is one segment.
    #[inline(always)]
    pub fn is_contiguous(&self) -> bool {
        self.header().next.is_none()
    }

    /// Free bytes before the data.
    #[inline(always)]
    pub fn headroom(&self) -> usize {
        self.header().data_off as usize
    }

    /// Free bytes after the data of the last segment (where [`append`](Mbuf::append) writes).
    #[inline(always)]
    pub fn tailroom(&self) -> usize {
        // SAFETY: the last segment's header is owned through this mbuf.
        let h = unsafe { self.last_segment().as_ref() };
        (h.buf_len as u32 - h.data_off as u32 - h.data_len) as usize
    }

    /// Headroom + data room: the whole buffer of the first segment.
    #[inline(always)]
    pub fn capacity(&self) -> usize {
        self.header().buf_len as usize
    }

    /// The first segment's data (the whole packet when [`is_contiguous`](Mbuf::is_contiguous)).
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        // SAFETY: the header is this mbuf's own.
        unsafe { segment_data(self.hdr) }
    }

    /// The first segment's data, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: the header is this mbuf's own; `&mut self` makes the access unique.
        unsafe { segment_data_mut(self.hdr) }
    }

    /// The header of the last segment (this one when it is not chained).
    #[inline(always)]
    fn last_segment(&self) -> NonNull<MbufHeader> {
        let mut seg = self.hdr;
        // SAFETY: every header on the chain is owned through this mbuf; the chain ends.
        while let Some(next) = unsafe { seg.as_ref() }.next {
            seg = next;
        }
        seg
    }

    /// Grows the data by `n` bytes at the end of the last segment and returns them, or `None`
    /// without enough tailroom there ([`Mbuf::extend_from_slice`] adds segments instead).
    #[inline]
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let mut last = self.last_segment();
        // SAFETY: the last segment is owned through this mbuf (and is `self.hdr` itself when
        // unchained: one mutable access at a time, below).
        let seg = unsafe { last.as_mut() };
        if n > (seg.buf_len as u32 - seg.data_off as u32 - seg.data_len) as usize {
            return None;
        }
        let old = seg.data_len as usize;
        seg.data_len += n as u32;
        self.header_mut().pkt_len += n as u32;
        // SAFETY: as above; the window was just grown within the buffer.
        Some(&mut unsafe { segment_data_mut(last) }[old..])
    }

    /// Grows the data by `n` bytes at the front and returns them, or `None` without enough headroom.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.headroom() {
            return None;
        }
        let h = self.header_mut();
        h.data_off -= n as u16;
        h.data_len += n as u32;
        h.pkt_len += n as u32;
        Some(&mut self.data_mut()[..n])
    }

    /// Grows the data of a one-segment packet by `N` zero bytes at the front (a header with
    /// nothing to say) and returns the device address and length of the whole; `None` without
    /// enough headroom or for a chained packet (one test: the one-descriptor transmit path
    /// refuses both). The bytes are written only when they are not zero already: a device
    /// usually left a zero header there when the buffer was received, and leaving its cache
    /// line unwritten spares it a transfer. The transmit path's own step: it reads the header
    /// fields once, where [`Mbuf::prepend`] and [`Mbuf::data_iova`] would read them again (2
    /// instructions per packet more, measured with callgrind).
    #[inline(always)]
    pub(crate) fn prepend_zeroed<const N: usize>(&mut self) -> Option<(u64, u32)> {
        if self.header().next.is_some() {
            return None;
        }
        self.prepend_zeroed_first::<N>()
    }

    /// [`Mbuf::prepend_zeroed`] for the first segment of a packet of any length: the device
    /// address and length of that segment.
    #[inline(always)]
    pub(crate) fn prepend_zeroed_first<const N: usize>(&mut self) -> Option<(u64, u32)> {
        self.prepend_header_first(&[0; N])
    }

    /// Grows the first segment's data by the `N` bytes of `header` at the front (written only
    /// where they differ from what is there) and returns the device address and length of that
    /// segment; `None` without enough headroom.
    #[inline(always)]
    pub(crate) fn prepend_header_first<const N: usize>(&mut self, header: &[u8; N]) -> Option<(u64, u32)> {
        let h = self.header_mut();
        if (h.data_off as usize) < N {
            return None;
        }
        h.data_off -= N as u16;
        h.data_len += N as u32;
        h.pkt_len += N as u32;
        let (off, len, iova) = (h.data_off, h.data_len, h.buf_iova + h.data_off as u64);
        // SAFETY: `off + N` is the old data offset, within the buffer (the header's invariant),
        // which this mbuf owns and no device writes while the application holds it; `[u8; N]`
        // needs no alignment.
        let room = unsafe { &mut *h.buf.as_ptr().add(off as usize).cast::<[u8; N]>() };
        if room != header {
            *room = *header;
        }
        Some((iova, len))
    }

    /// Removes `n` bytes from the front of the first segment's data (they become headroom);
    /// false if `n > data_len()`.
    #[inline]
    pub fn adj(&mut self, n: usize) -> bool {
        if n > self.data_len() {
            return false;
        }
        let h = self.header_mut();
        h.data_off += n as u16;
        h.data_len -= n as u32;
        h.pkt_len -= n as u32;
        true
    }

    /// Shortens the packet to `len` bytes (no-op when already shorter); segments left empty
    /// past the cut go back to their pools.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        if self.is_contiguous() {
            let h = self.header_mut();
            h.data_len = len as u32;
            h.pkt_len = len as u32;
            return;
        }
        self.truncate_chain(len as u32);
    }

    /// Empties the packet (one segment again, the rest back to their pools) and restores the
    /// headroom `headroom`.
    #[inline]
    pub fn reset(&mut self, headroom: u16) {
        if !self.is_contiguous() {
            self.truncate_chain(0);
        }
        let h = self.header_mut();
        h.data_off = headroom.min(h.buf_len);
        h.data_len = 0;
        h.pkt_len = 0;
        h.offload = Offload::NONE;
        h.hash_kind = None;
    }

    /// Port the packet arrived on (set by receive) or is meant for.
    #[inline(always)]
    pub fn port(&self) -> u16 {
        self.header().port
    }

    /// Sets the port.
    #[inline(always)]
    pub fn set_port(&mut self, port: u16) {
        self.header_mut().port = port;
    }

    /// The packet's offload metadata: what the device reported on receive (with receive
    /// offloads negotiated), or what the application asks of it on transmit (honoured by a
    /// port opened with the matching transmit offload, ignored by the others, as DPDK does).
    #[inline(always)]
    pub fn offload(&self) -> Offload {
        self.header().offload
    }

    /// Sets the offload metadata (for transmit: a partial checksum to complete, a segmentation).
    #[inline(always)]
    pub fn set_offload(&mut self, offload: Offload) {
        self.header_mut().offload = offload;
    }

    /// The hash the device reported for the packet (a port opened with
    /// [`PortConfig::rx_hash_report`](crate::net::PortConfig::rx_hash_report)); `None` when it
    /// reported none, or when the port does not ask for hashes.
    #[inline(always)]
    pub fn rx_hash(&self) -> Option<RxHash> {
        let h = self.header();
        h.hash_kind.map(|kind| RxHash { value: h.rss_hash, kind })
    }

    /// Sets (or, `None`, clears) the packet's hash.
    #[inline(always)]
    pub fn set_rx_hash(&mut self, hash: Option<RxHash>) {
        let h = self.header_mut();
        h.hash_kind = hash.map(|hash| hash.kind);
        h.rss_hash = hash.map_or(0, |hash| hash.value);
    }

    /// The application's own 64 bits of per-packet data.
    #[inline(always)]
    pub fn user_data(&self) -> u64 {
        self.header().user_data
    }

    /// Sets the application's per-packet data.
    #[inline(always)]
    pub fn set_user_data(&mut self, value: u64) {
        self.header_mut().user_data = value;
    }

    /// IOVA of the buffer's first byte (headroom included).
    #[inline(always)]
    pub(crate) fn buf_iova(&self) -> u64 {
        self.header().buf_iova
    }

    /// Device address (IOVA) of the first data byte, for an application that hands the buffer
    /// to other hardware (DPDK's `rte_pktmbuf_iova`).
    #[inline(always)]
    pub fn data_iova(&self) -> u64 {
        self.header().buf_iova + self.header().data_off as u64
    }

    /// The `N` bytes at `offset` of the buffer (the header room a device wrote a received
    /// frame's virtio-net header into), copied out with one volatile read: device-written
    /// memory, read once, every value checked by the caller. `None` when they lie beyond the
    /// buffer.
    #[inline(always)]
    pub(crate) fn read_buffer<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let h = self.header();
        if offset + N > h.buf_len as usize {
            return None;
        }
        // SAFETY: inside this element's buffer (checked above), which this mbuf owns; `[u8; N]`
        // needs no alignment.
        Some(unsafe { h.buf.as_ptr().add(offset).cast::<[u8; N]>().read_volatile() })
    }

    /// Address of the buffer's first byte in this process.
    #[cfg(test)]
    pub(crate) fn buf_ptr(&self) -> *mut u8 {
        self.header().buf.as_ptr()
    }
}

/// The data window of the segment whose header is `hdr`.
///
/// # Safety
/// `hdr` is owned by the caller (through an [`Mbuf`]) for the lifetime `'a`.
#[inline(always)]
unsafe fn segment_data<'a>(hdr: NonNull<MbufHeader>) -> &'a [u8] {
    // SAFETY: owned by the caller; its header lives in the CPU-private table.
    let h = unsafe { hdr.as_ref() };
    // SAFETY: `data_off + data_len <= buf_len` (the header's invariant, kept by every mutator,
    // and out of the device's reach), so the slice is inside this element's buffer, which the
    // caller owns; the device does not write it while the application holds it (module docs).
    unsafe { std::slice::from_raw_parts(h.buf.as_ptr().add(h.data_off as usize), h.data_len as usize) }
}

/// The data window of the segment whose header is `hdr`, writable.
///
/// # Safety
/// As [`segment_data`], and no other reference to this segment's data lives during `'a`.
#[inline(always)]
unsafe fn segment_data_mut<'a>(hdr: NonNull<MbufHeader>) -> &'a mut [u8] {
    // SAFETY: as in `segment_data`; the caller makes the access unique.
    let h = unsafe { hdr.as_ref() };
    // SAFETY: as in `segment_data`.
    unsafe { std::slice::from_raw_parts_mut(h.buf.as_ptr().add(h.data_off as usize), h.data_len as usize) }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        pool::PoolShared::put_one(self.hdr);
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("nb_segs", &self.nb_segs())
            .field("headroom", &self.headroom())
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}
