//! Multi-segment packets: a chain of buffers owned through its first ([`Mbuf`]), with the
//! packet length and segment count in the head's private header.
//!
//! Invariants (with [`MbufHeader`]'s): the head's `pkt_len` is the sum of every segment's
//! `data_len` and its `nb_segs` the number of segments; `next` links end; every segment is an
//! element out of its pool's store, owned by nobody but the head's `Mbuf`. All of it lives in
//! CPU-private memory: a device can neither lengthen a chain nor point it elsewhere. Dropping
//! the head returns every segment to its pool (`free_bulk` too), so the pools' `in_use` counts
//! every segment of every packet still held.

use std::ptr::NonNull;

use super::{segment_data, segment_data_mut, Mbuf, MbufHeader, Mempool};

/// Why a chain could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The pool had too few free buffers for the new segments; the packet is unchanged.
    #[error(
        "the pool has too few free buffers for {needed} more segments: make the pool larger, or free packets first"
    )]
    PoolEmpty {
        /// Segments that were needed.
        needed: usize,
    },
    /// The packet would have more than `u16::MAX` segments or `u32::MAX` bytes; unchanged.
    #[error(
        "the packet would exceed {} segments or {} bytes: use larger buffers (MempoolConfig::data_room)",
        u16::MAX,
        u32::MAX
    )]
    TooLarge,
}

/// The segments' data, first to last ([`Mbuf::segments`]).
pub struct Segments<'a> {
    next: Option<NonNull<MbufHeader>>,
    _packet: std::marker::PhantomData<&'a Mbuf>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let seg = self.next?;
        // SAFETY: every segment of the chain is owned through the packet this iterator
        // borrows for `'a`.
        self.next = unsafe { seg.as_ref() }.next;
        // SAFETY: as above.
        Some(unsafe { segment_data(seg) })
    }
}

/// The segments' data, writable, first to last ([`Mbuf::segments_mut`]).
pub struct SegmentsMut<'a> {
    next: Option<NonNull<MbufHeader>>,
    _packet: std::marker::PhantomData<&'a mut Mbuf>,
}

impl<'a> Iterator for SegmentsMut<'a> {
    type Item = &'a mut [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a mut [u8]> {
        let seg = self.next?;
        // SAFETY: every segment is owned through the packet this iterator borrows mutably for
        // `'a`; each is handed out once (distinct elements, distinct buffers).
        self.next = unsafe { seg.as_ref() }.next;
        // SAFETY: as above.
        Some(unsafe { segment_data_mut(seg) })
    }
}

impl Mbuf {
    /// The data of every segment, first to last.
    #[inline]
    pub fn segments(&self) -> Segments<'_> {
        Segments { next: Some(self.hdr), _packet: std::marker::PhantomData }
    }

    /// The data of every segment, writable, first to last.
    #[inline]
    pub fn segments_mut(&mut self) -> SegmentsMut<'_> {
        SegmentsMut { next: Some(self.hdr), _packet: std::marker::PhantomData }
    }

    /// Device address and length of every segment's data, first to last (the transmit chain).
    #[inline]
    pub(crate) fn for_each_segment_dma(&self, mut f: impl FnMut(u64, u32)) {
        let mut seg = Some(self.hdr);
        while let Some(hdr) = seg {
            // SAFETY: owned through this packet.
            let h = unsafe { hdr.as_ref() };
            f(h.buf_iova + h.data_off as u64, h.data_len);
            seg = h.next;
        }
    }

    /// The whole packet's data, copied into one vector (for inspection and tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.segments().for_each(|s| out.extend_from_slice(s));
        out
    }

    /// Appends the segments of `tail` after this packet's last (`rte_pktmbuf_chain`); gives
    /// `tail` back when the result would be too large ([`ChainError::TooLarge`]).
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), Mbuf> {
        let (segs, len) = (tail.nb_segs(), tail.len() as u32);
        let h = self.header();
        let (Some(nb_segs), Some(pkt_len)) = (h.nb_segs.checked_add(segs), h.pkt_len.checked_add(len)) else {
            return Err(tail);
        };
        let mut last = self.last_segment();
        let mut tail = tail.into_raw();
        // SAFETY: `tail`'s ownership of its chain moves into this packet here: its first
        // segment is one segment among others now (the counters of a non-head segment stay at
        // the free-element values, so that it can go back to its pool on its own).
        unsafe { tail.as_mut() }.nb_segs = 1;
        // SAFETY: the last segment is owned through this packet.
        unsafe { last.as_mut() }.next = Some(tail);
        let h = self.header_mut();
        h.nb_segs = nb_segs;
        h.pkt_len = pkt_len;
        Ok(())
    }

    /// Appends `bytes` at the end of the packet: into the last segment's tailroom, then into new
    /// segments from `pool`, each filled up to its data room. All or nothing: when the pool
    /// cannot give every segment needed, the packet is unchanged.
    pub fn extend_from_slice(&mut self, pool: &Mempool, bytes: &[u8]) -> Result<(), ChainError> {
        let room = self.tailroom().min(bytes.len());
        let rest = &bytes[room..];
        let per_segment = pool.data_room() as usize;
        let needed = rest.len().div_ceil(per_segment);
        self.check_growth(needed, bytes.len())?;
        let mut new = Vec::with_capacity(needed);
        if !pool.alloc_bulk(&mut new, needed) {
            return Err(ChainError::PoolEmpty { needed });
        }
        if room > 0 {
            // Cannot fail: `room` is within the tailroom.
            if let Some(dst) = self.append(room) {
                dst.copy_from_slice(&bytes[..room]);
            }
        }
        for (mut seg, chunk) in new.into_iter().zip(rest.chunks(per_segment)) {
            // Cannot fail: a fresh buffer has its whole data room as tailroom.
            if let Some(dst) = seg.append(chunk.len()) {
                dst.copy_from_slice(chunk);
            }
            // Cannot fail: checked above.
            let _ = self.chain(seg);
        }
        Ok(())
    }

    /// Puts `bytes` before the packet's data: into the first segment's headroom, then into new
    /// segments from `pool` placed in front (each filled from the end of its buffer, keeping at
    /// least the pool's headroom before its data, the first the least full). The packet's port,
    /// hash, offload metadata and user data move to the new first segment. All or nothing, as
    /// [`Mbuf::extend_from_slice`].
    pub fn prepend_from_slice(&mut self, pool: &Mempool, bytes: &[u8]) -> Result<(), ChainError> {
        let room = self.headroom().min(bytes.len());
        let (rest, into_headroom) = bytes.split_at(bytes.len() - room);
        let per_segment = pool.data_room() as usize;
        let needed = rest.len().div_ceil(per_segment);
        self.check_growth(needed, bytes.len())?;
        let mut new = Vec::with_capacity(needed);
        if !pool.alloc_bulk(&mut new, needed) {
            return Err(ChainError::PoolEmpty { needed });
        }
        if room > 0 {
            // Cannot fail: `room` is within the headroom.
            if let Some(dst) = self.prepend(room) {
                dst.copy_from_slice(into_headroom);
            }
        }
        // Chunks from the end, so that only the new first segment is partly filled.
        for (mut seg, chunk) in new.into_iter().zip(rest.rchunks(per_segment)) {
            let h = seg.header_mut();
            h.data_off = (h.buf_len as usize - chunk.len()) as u16;
            h.data_len = chunk.len() as u32;
            h.pkt_len = h.data_len;
            seg.data_mut().copy_from_slice(chunk);
            let old = std::mem::replace(self, seg);
            let (new_head, old_head) = (self.header_mut() as *mut MbufHeader, old.header());
            // SAFETY: two distinct headers (two elements), both owned here.
            let new_head = unsafe { &mut *new_head };
            (new_head.port, new_head.rss_hash, new_head.hash_kind, new_head.offload, new_head.user_data) =
                (old_head.port, old_head.rss_hash, old_head.hash_kind, old_head.offload, old_head.user_data);
            // Cannot fail: checked above.
            let _ = self.chain(old);
        }
        Ok(())
    }

    /// Whether `segments` more segments and `bytes` more bytes fit the packet's counters.
    fn check_growth(&self, segments: usize, bytes: usize) -> Result<(), ChainError> {
        let h = self.header();
        let segs_ok = h.nb_segs as usize + segments <= u16::MAX as usize;
        let len_ok = h.pkt_len as usize + bytes <= u32::MAX as usize;
        if segs_ok && len_ok {
            Ok(())
        } else {
            Err(ChainError::TooLarge)
        }
    }

    /// Cuts a chained packet to `len <= len()` bytes: the segment the cut falls in keeps its
    /// part, the segments after it go back to their pools.
    pub(super) fn truncate_chain(&mut self, len: u32) {
        let mut kept = 0u32;
        let mut segs = 1u16;
        let mut seg = self.hdr;
        loop {
            // SAFETY: owned through this packet; one header borrowed at a time.
            let h = unsafe { seg.as_mut() };
            if kept + h.data_len >= len || h.next.is_none() {
                h.data_len = len - kept;
                if let Some(rest) = h.next.take() {
                    // SAFETY: the rest of the chain was owned through this packet and is cut
                    // off it here: its head becomes the sole owner, dropped (every segment
                    // back to its pool).
                    drop(unsafe { Mbuf::from_raw(rest) });
                }
                break;
            }
            kept += h.data_len;
            segs += 1;
            // Present: checked above.
            seg = h.next.unwrap_or(seg);
        }
        let h = self.header_mut();
        h.pkt_len = len;
        h.nb_segs = segs;
    }
}

/// Builds a packet segment by segment with O(1) appends (the mergeable receive path): the
/// head's counters are kept as segments come.
pub(crate) struct ChainBuilder {
    head: Mbuf,
    tail: NonNull<MbufHeader>,
}

impl ChainBuilder {
    /// Starts a packet with `head`, which must be one segment.
    #[inline]
    pub(crate) fn new(head: Mbuf) -> ChainBuilder {
        debug_assert!(head.is_contiguous());
        let tail = head.hdr;
        ChainBuilder { head, tail }
    }

    /// Appends `seg`, one segment; gives it back when the packet would be too large.
    #[inline]
    pub(crate) fn push(&mut self, seg: Mbuf) -> Result<(), Mbuf> {
        debug_assert!(seg.is_contiguous());
        let len = seg.data_len() as u32;
        let h = self.head.header();
        let (Some(nb_segs), Some(pkt_len)) = (h.nb_segs.checked_add(1), h.pkt_len.checked_add(len)) else {
            return Err(seg);
        };
        let seg = seg.into_raw();
        // SAFETY: `tail` is the last segment of the chain owned through `head` (the builder's
        // invariant); `seg`'s ownership moves into the chain.
        unsafe { self.tail.as_mut() }.next = Some(seg);
        self.tail = seg;
        let h = self.head.header_mut();
        h.nb_segs = nb_segs;
        h.pkt_len = pkt_len;
        Ok(())
    }

    /// The packet.
    #[inline]
    pub(crate) fn finish(self) -> Mbuf {
        self.head
    }
}

/// Hands every segment of the chain starting at `first` (owned by the caller) to `put`, first
/// to last, restoring the free-element invariant (`next == None`, `nb_segs == 1`)
/// on each.
#[cold]
pub(super) fn unlink_chain(first: NonNull<MbufHeader>, mut put: impl FnMut(NonNull<MbufHeader>)) {
    let mut seg = Some(first);
    while let Some(mut hdr) = seg {
        // SAFETY: every segment of the chain being freed is owned by the caller.
        let h = unsafe { hdr.as_mut() };
        seg = h.next.take();
        h.nb_segs = 1;
        put(hdr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbuf::MempoolConfig;
    use crate::mem::{HugePages, IovaAllocator};
    use proptest::prelude::*;

    fn pool(count: u32, data_room: u16, cache_size: u32) -> Mempool {
        let config = MempoolConfig { count, data_room, cache_size, huge_pages: HugePages::Never, ..Default::default() };
        Mempool::new(&config, &IovaAllocator::identity()).unwrap()
    }

    fn segment_lens(m: &Mbuf) -> Vec<usize> {
        m.segments().map(<[u8]>::len).collect()
    }

    #[test]
    fn chains_count_segments_and_bytes_and_every_segment_comes_back() {
        let pool = pool(16, 64, 4);
        let mut head = pool.alloc().unwrap();
        head.append(10).unwrap().fill(1);
        for i in 2..5u8 {
            let mut seg = pool.alloc().unwrap();
            seg.append(20).unwrap().fill(i);
            head.chain(seg).unwrap();
        }
        assert_eq!((head.nb_segs(), head.len(), head.data_len()), (4, 70, 10));
        assert!(!head.is_contiguous());
        assert_eq!(segment_lens(&head), [10, 20, 20, 20]);
        assert_eq!(pool.stats().in_use, 4);
        // Appends go to the last segment.
        head.append(4).unwrap().fill(9);
        assert_eq!(head.to_vec()[70..], [9; 4]);
        assert_eq!(head.tailroom(), 64 - 24);
        for seg in head.segments_mut() {
            seg[0] = 0xee;
        }
        assert!(head.segments().all(|s| s[0] == 0xee));
        drop(head);
        assert_eq!(pool.stats().in_use, 0);
        // Freed segments are one-segment packets again.
        let mut again = Vec::new();
        assert!(pool.alloc_bulk(&mut again, 16));
        assert!(again.iter().all(|m| m.nb_segs() == 1 && m.is_contiguous() && m.is_empty()));
    }

    #[test]
    fn free_bulk_returns_whole_chains() {
        let pool = pool(32, 64, 8);
        let mut packets = Vec::new();
        for _ in 0..4 {
            let mut m = pool.alloc().unwrap();
            m.extend_from_slice(&pool, &[7; 300]).unwrap();
            packets.push(m);
        }
        assert_eq!(pool.stats().in_use, 4 * 5, "300 bytes in 64-byte data rooms: 5 segments each");
        crate::mbuf::free_bulk(&mut packets);
        assert_eq!(pool.stats().in_use, 0);
    }

    #[test]
    fn extend_and_prepend_are_all_or_nothing() {
        let pool = pool(4, 64, 0);
        let mut m = pool.alloc().unwrap();
        m.append(8).unwrap().fill(1);
        assert_eq!(m.extend_from_slice(&pool, &[2; 64 * 4]), Err(ChainError::PoolEmpty { needed: 4 }));
        assert_eq!((m.len(), m.nb_segs(), pool.stats().in_use), (8, 1, 1));
        assert_eq!(m.prepend_from_slice(&pool, &[2; 128 + 64 * 4]), Err(ChainError::PoolEmpty { needed: 4 }));
        assert_eq!((m.len(), m.nb_segs(), m.headroom()), (8, 1, 128));
        assert_eq!(pool.stats().alloc_failures, 2);
    }

    #[test]
    fn truncate_and_reset_free_the_cut_segments() {
        let pool = pool(16, 64, 0);
        let mut m = pool.alloc().unwrap();
        let bytes: Vec<u8> = (0..=255).collect();
        m.extend_from_slice(&pool, &bytes).unwrap();
        assert_eq!((m.nb_segs(), pool.stats().in_use), (4, 4));
        m.truncate(100);
        assert_eq!((m.len(), m.nb_segs(), pool.stats().in_use), (100, 2, 2));
        assert_eq!(m.to_vec(), bytes[..100]);
        m.truncate(64);
        assert_eq!((m.len(), m.nb_segs(), pool.stats().in_use), (64, 1, 1));
        m.extend_from_slice(&pool, &bytes).unwrap();
        m.reset(128);
        assert_eq!((m.len(), m.nb_segs(), m.headroom(), pool.stats().in_use), (0, 1, 128, 1));
    }

    #[test]
    fn prepend_moves_the_packets_metadata_to_the_new_head() {
        let pool = pool(16, 64, 0);
        let mut m = pool.alloc().unwrap();
        m.append(4).unwrap().copy_from_slice(b"tail");
        m.set_port(3);
        m.set_user_data(42);
        let front: Vec<u8> = (0..250).collect();
        m.prepend_from_slice(&pool, &front).unwrap();
        assert_eq!((m.port(), m.user_data()), (3, 42));
        let mut expected = front.clone();
        expected.extend_from_slice(b"tail");
        assert_eq!(m.to_vec(), expected);
        assert_eq!(m.len(), 254);
        // 128 bytes of the old head's headroom, then 64-byte segments, the first partly full.
        assert_eq!(segment_lens(&m), [58, 64, 132]);
        assert!(m.headroom() >= 128, "the new head keeps at least the pool's headroom");
    }

    #[test]
    fn chain_builder_keeps_the_counters() {
        let pool = pool(8, 64, 0);
        let mut head = pool.alloc().unwrap();
        head.append(1).unwrap();
        let mut b = ChainBuilder::new(head);
        for _ in 0..3 {
            let mut seg = pool.alloc().unwrap();
            seg.append(10).unwrap();
            b.push(seg).unwrap();
        }
        let m = b.finish();
        assert_eq!((m.len(), m.nb_segs()), (31, 4));
        assert_eq!(segment_lens(&m), [1, 10, 10, 10]);
        drop(m);
        assert_eq!(pool.stats().in_use, 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Extend(usize),
        Prepend(usize),
        Append(usize),
        Adj(usize),
        Truncate(usize),
        Chain(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..400usize).prop_map(Op::Extend),
            (0..400usize).prop_map(Op::Prepend),
            (0..80usize).prop_map(Op::Append),
            (0..80usize).prop_map(Op::Adj),
            (0..600usize).prop_map(Op::Truncate),
            (0..300usize).prop_map(Op::Chain),
        ]
    }

    proptest! {
        /// Every operation keeps the packet equal to a plain byte vector model, the counters
        /// equal to what the segments hold, and every segment accounted for by the pool.
        #[test]
        fn chains_match_a_byte_vector(ops in proptest::collection::vec(op(), 1..24)) {
            let pool = pool(256, 64, 8);
            let mut m = pool.alloc().unwrap();
            let mut model: Vec<u8> = Vec::new();
            let mut counter = 0u8;
            let mut fresh = |n: usize| -> Vec<u8> { (0..n).map(|_| { counter = counter.wrapping_add(1); counter }).collect() };
            for op in ops {
                match op {
                    Op::Extend(n) => {
                        let bytes = fresh(n);
                        if m.extend_from_slice(&pool, &bytes).is_ok() { model.extend_from_slice(&bytes); }
                    }
                    Op::Prepend(n) => {
                        let bytes = fresh(n);
                        if m.prepend_from_slice(&pool, &bytes).is_ok() { model.splice(0..0, bytes); }
                    }
                    Op::Append(n) => {
                        let bytes = fresh(n);
                        if let Some(dst) = m.append(n) { dst.copy_from_slice(&bytes); model.extend_from_slice(&bytes); }
                    }
                    Op::Adj(n) => {
                        if m.adj(n) { model.drain(..n); }
                    }
                    Op::Truncate(n) => {
                        m.truncate(n);
                        model.truncate(n);
                    }
                    Op::Chain(n) => {
                        let mut tail = pool.alloc().unwrap();
                        let bytes = fresh(n);
                        if tail.extend_from_slice(&pool, &bytes).is_ok() {
                            prop_assert!(m.chain(tail).is_ok());
                            model.extend_from_slice(&bytes);
                        }
                    }
                }
                prop_assert_eq!(m.to_vec(), model.clone());
                prop_assert_eq!(m.len(), model.len());
                prop_assert_eq!(m.segments().count(), m.nb_segs() as usize);
                prop_assert_eq!(m.segments().map(<[u8]>::len).sum::<usize>(), m.len());
                prop_assert_eq!(pool.stats().in_use as usize, m.nb_segs() as usize);
            }
            drop(m);
            prop_assert_eq!(pool.stats().in_use, 0);
        }
    }
}
