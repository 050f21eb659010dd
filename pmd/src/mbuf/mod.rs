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

mod pool;

use std::ptr::NonNull;

pub(crate) use pool::recycle;
pub use pool::{free_bulk, Mempool, MempoolConfig, PoolStats};

/// Bytes reserved before the data in every buffer (at least the virtio-net header, and a cache
/// line multiple so that the data starts cache-aligned).
pub const DEFAULT_HEADROOM: u16 = 128;
/// Default data room: a full 1514-byte frame plus its header, rounded to 2 KiB.
pub const DEFAULT_DATA_ROOM: u16 = 2048;

/// Per-element metadata, one cache line in the pool's header table (CPU-private memory).
///
/// Invariants: `buf..buf + buf_len` is this element's buffer inside the pool's DMA region, at
/// device address `buf_iova`; `data_off + data_len <= buf_len`; `pool` is the pool's shared
/// state, alive while the element is out of its store. `buf`, `buf_iova`, `buf_len` and `pool`
/// never change after the pool is built.
#[repr(C, align(64))]
pub(crate) struct MbufHeader {
    /// The first headroom byte, in the pool's DMA region.
    buf: NonNull<u8>,
    /// IOVA of `buf`.
    buf_iova: u64,
    /// Owning pool.
    pool: NonNull<pool::PoolShared>,
    /// Headroom + data room.
    buf_len: u32,
    /// Bytes of valid data starting at `data_off`.
    data_len: u32,
    /// Offset of the first data byte from the start of `buf`.
    data_off: u16,
    /// Port the packet was received on, or is bound for.
    port: u16,
    /// RSS hash reported by the device.
    rss_hash: u32,
    /// Offload flags (none are set by this driver yet: it negotiates no offload).
    ol_flags: u64,
    /// Free for the application's use (e.g. a timestamp or sequence number).
    user_data: u64,
}
const _: () = assert!(core::mem::size_of::<MbufHeader>() == 64);

/// An owned packet buffer from a [`Mempool`]. `Send`, not `Clone`; returned to its pool on drop.
///
/// The data is `len()` bytes at offset `headroom()` of the buffer; bytes before it can be claimed
/// with [`Mbuf::prepend`], bytes after it with [`Mbuf::append`].
pub struct Mbuf {
    hdr: NonNull<MbufHeader>,
}

// SAFETY: an `Mbuf` is the unique owner of its element and header (the pool hands each element
// out once), so moving it to another thread moves that ownership; the pool it points to is `Sync`.
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

    /// Takes ownership of an element handed out by a pool.
    ///
    /// # Safety
    /// `hdr` must be the header of an element of a live pool, out of its store, that nothing
    /// else owns.
    #[inline(always)]
    pub(crate) unsafe fn from_raw(hdr: NonNull<MbufHeader>) -> Mbuf {
        Mbuf { hdr }
    }

    /// Gives up ownership without returning the element to its pool.
    #[inline(always)]
    fn into_raw(self) -> NonNull<MbufHeader> {
        let hdr = self.hdr;
        std::mem::forget(self);
        hdr
    }

    /// Marks the buffer as a received frame: `len` bytes at offset `data_off`, from `port`, no
    /// offload flags or hash. Every field of the data window is set here, so buffers posted for
    /// receive need no reset when they are allocated. `data_off + len` must fit the buffer.
    #[inline(always)]
    pub(crate) fn init_received(&mut self, data_off: u16, len: u32, port: u16) {
        let h = self.header_mut();
        debug_assert!(data_off as u32 + len <= h.buf_len);
        h.data_off = data_off;
        h.data_len = len;
        h.port = port;
        h.rss_hash = 0;
        h.ol_flags = 0;
    }

    /// Bytes of packet data.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.header().data_len as usize
    }

    /// Whether the packet has no data.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Free bytes before the data.
    #[inline(always)]
    pub fn headroom(&self) -> usize {
        self.header().data_off as usize
    }

    /// Free bytes after the data.
    #[inline(always)]
    pub fn tailroom(&self) -> usize {
        let h = self.header();
        (h.buf_len - h.data_off as u32 - h.data_len) as usize
    }

    /// Headroom + data room: the whole buffer.
    #[inline(always)]
    pub fn capacity(&self) -> usize {
        self.header().buf_len as usize
    }

    /// The packet data.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        let h = self.header();
        // SAFETY: `data_off + data_len <= buf_len` (the header's invariant, kept by every mutator,
        // and out of the device's reach), so the slice is inside this element's buffer, which this
        // mbuf owns; the device does not write it while the application holds it (module docs).
        unsafe { std::slice::from_raw_parts(h.buf.as_ptr().add(h.data_off as usize), h.data_len as usize) }
    }

    /// The packet data, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let h = self.header();
        // SAFETY: as in `data`; `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(h.buf.as_ptr().add(h.data_off as usize), h.data_len as usize) }
    }

    /// Grows the data by `n` bytes at the end and returns them, or `None` without enough tailroom.
    #[inline]
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.tailroom() {
            return None;
        }
        let old = self.len();
        self.header_mut().data_len += n as u32;
        Some(&mut self.data_mut()[old..])
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
        Some(&mut self.data_mut()[..n])
    }

    /// Grows the data by `N` zero bytes at the front (a header with nothing to say) and returns
    /// the device address and length of the whole; `None` without enough headroom. The bytes
    /// are written only when they are not zero already: a device usually left a zero header
    /// there when the buffer was received, and leaving its cache line unwritten spares it a
    /// transfer. The transmit path's own step: it reads the header fields once, where
    /// [`Mbuf::prepend`] and [`Mbuf::data_iova`] would read them again (2 instructions per packet
    /// more, measured with callgrind).
    #[inline(always)]
    pub(crate) fn prepend_zeroed<const N: usize>(&mut self) -> Option<(u64, u32)> {
        let h = self.header_mut();
        if (h.data_off as usize) < N {
            return None;
        }
        h.data_off -= N as u16;
        h.data_len += N as u32;
        let (off, len, iova) = (h.data_off, h.data_len, h.buf_iova + h.data_off as u64);
        // SAFETY: `off + N` is the old data offset, within the buffer (the header's invariant),
        // which this mbuf owns and no device writes while the application holds it; `[u8; N]`
        // needs no alignment.
        let header = unsafe { &mut *h.buf.as_ptr().add(off as usize).cast::<[u8; N]>() };
        if *header != [0; N] {
            *header = [0; N];
        }
        Some((iova, len))
    }

    /// Removes `n` bytes from the front of the data (they become headroom); false if `n > len()`.
    #[inline]
    pub fn adj(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        let h = self.header_mut();
        h.data_off += n as u16;
        h.data_len -= n as u32;
        true
    }

    /// Shortens the data to `len` bytes (no-op when already shorter).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.header_mut().data_len = len as u32;
        }
    }

    /// Empties the packet and restores the default headroom.
    #[inline]
    pub fn reset(&mut self, headroom: u16) {
        let h = self.header_mut();
        h.data_off = headroom.min(h.buf_len as u16);
        h.data_len = 0;
        h.ol_flags = 0;
        h.rss_hash = 0;
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

    /// Offload flags (none are set by this driver yet: it negotiates no offload).
    #[inline(always)]
    pub fn ol_flags(&self) -> u64 {
        self.header().ol_flags
    }

    /// Sets the offload flags.
    #[inline(always)]
    pub fn set_ol_flags(&mut self, flags: u64) {
        self.header_mut().ol_flags = flags;
    }

    /// RSS hash reported by the device (0 when none).
    #[inline(always)]
    pub fn rss_hash(&self) -> u32 {
        self.header().rss_hash
    }

    /// Sets the RSS hash.
    #[inline(always)]
    pub fn set_rss_hash(&mut self, hash: u32) {
        self.header_mut().rss_hash = hash;
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

    /// Address of the buffer's first byte in this process.
    #[cfg(test)]
    pub(crate) fn buf_ptr(&self) -> *mut u8 {
        self.header().buf.as_ptr()
    }
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
            .field("headroom", &self.headroom())
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}
