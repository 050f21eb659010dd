//! The driver side of a split virtqueue ("Split Virtqueues", 2.7).
//!
//! Descriptors: without IN_ORDER, free descriptors form a list through the driver's own copy of
//! the `next` links (the device never gets to change it); with IN_ORDER they are used in ring
//! order, a chain at offset `x` linking to `x + 1` ("The Virtqueue Descriptor Table", 2.7.5).
//!
//! Used ring: each entry's id must be the head of a chain in flight. With IN_ORDER one entry may
//! stand for a batch: every chain from the oldest up to that id, and `used.idx` moves by the
//! batch size ("In-order use of descriptors", 2.7.9). A bad id is counted; without IN_ORDER the
//! entry is skipped and the queue stays usable (the chain the device meant stays in flight until
//! [`Virtqueue::drain`]); with IN_ORDER nothing after it can be followed, so the ring stops.
//! A transmit ring in order, with one descriptor per chain, reads no used entry at all
//! ([`Chains::OneDescriptorNoLengths`]): `used.idx` alone counts its completions.
//!
//! The one-descriptor bulk loops keep the ring's indices in locals, the fields of a guard
//! ([`Adding`], [`Completing`]) whose `Drop` writes them back, so that a caller's iterator or
//! sink that panics inside a loop leaves the ring exactly as far as the loop got.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU16, Ordering};

use super::event::split_need_event;
use super::indirect::IndirectTables;
use super::layout::RingMemory;
use super::shadow::Shadow;
use super::{Chains, RingErrors, Segment, UsedLen, Virtqueue};
use crate::error::{Error, Result};
use crate::spec::split::{
    avail, used, SplitDesc, UsedElem, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, MAX_QUEUE_SIZE,
    USED_F_NO_NOTIFY,
};
use crate::transport::{QueueAddresses, RingFormat};

/// The driver side of a split ring of `size` descriptors (a power of two up to 32768).
pub struct SplitRing<T> {
    memory: RingMemory,
    desc: *mut SplitDesc,
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    mask: u16,
    event_idx: bool,
    in_order: bool,
    /// IN_ORDER, and every chain is one descriptor ([`Chains::OneDescriptor`]): the
    /// chain added `n`-th sits in descriptor `n mod size`, named by available ring entry
    /// `n mod size`, so the oldest chain in flight is at `last_used mod size`.
    single: bool,
    /// `single`, and the caller needs no used lengths ([`Chains::OneDescriptorNoLengths`]):
    /// completions are counted from `used.idx`, the used ring's entries are never read.
    count_only: bool,
    /// Our `avail.idx`, free-running.
    avail_idx: u16,
    /// `avail_idx` at the last publish.
    published_idx: u16,
    /// Used entries consumed, free-running.
    last_used: u16,
    free: u16,
    /// Chains in flight.
    chains: u16,
    /// Without IN_ORDER: head of the free descriptor list, linked through `next`, oldest first
    /// (freed chains join at the tail, so a descriptor comes back into use as late as possible
    /// and a device completing it twice is caught).
    free_head: u16,
    /// Without IN_ORDER: the last descriptor of the free list (meaningless while `free == 0`).
    free_tail: u16,
    /// The driver's copy of every descriptor's `next` link.
    next: Box<[u16]>,
    /// IN_ORDER: the descriptor the next chain starts at.
    next_desc: u16,
    /// IN_ORDER: the head of the oldest chain in flight.
    oldest_head: u16,
    /// IN_ORDER: chains of the batch being completed that are still to hand out after the
    /// oldest; the last of them carries `batch_len`, the length the used entry gave.
    batch_left: u16,
    batch_len: u32,
    shadow: Shadow<T>,
    errors: RingErrors,
    broken: bool,
    /// With VIRTIO_F_INDIRECT_DESC: one table per descriptor, table `i` for the chain headed by
    /// descriptor `i` ([`Virtqueue::add_indirect`]).
    indirect: Option<IndirectTables>,
}

// SAFETY: the raw pointers target ring memory owned (through `memory`) by this value; the ring
// is used from one thread at a time and tokens are `Send`.
unsafe impl<T: Send> Send for SplitRing<T> {}

/// The state [`Virtqueue::add_each`] keeps in locals, written back into the ring when the loop
/// ends, however it ends. It holds indices only (how many chains were added is how far the
/// available index got past `start`), so that as few values as possible stay live across the
/// calls a caller's iterator makes.
///
/// Invariant: the one-descriptor chains from `start` to the available index (free-running) are
/// written, named by their available ring entries and recorded in the shadow. The available
/// index is `idx` on one-descriptor in-order rings (`single`); the other loop moves the ring's
/// own `avail_idx`.
struct Adding<'a, T: Send> {
    ring: &'a mut SplitRing<T>,
    start: u16,
    idx: u16,
}

impl<T: Send> Drop for Adding<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        let ring = &mut *self.ring;
        if ring.single {
            ring.avail_idx = self.idx;
            ring.next_desc = self.idx & ring.mask;
        }
        let added = ring.avail_idx.wrapping_sub(self.start);
        ring.free -= added;
        ring.chains += added;
    }
}

/// The state the one-descriptor completion loops keep in locals, written back into the ring
/// when the loop ends, however it ends.
///
/// Invariant: the chains from used position `start` to `last` (free-running) are taken from the
/// shadow, their tokens handed out or being handed out; `left` and `batch_len` are the ring's
/// in-order batch state after them.
struct Completing<'a, T: Send> {
    ring: &'a mut SplitRing<T>,
    start: u16,
    last: u16,
    left: u16,
    batch_len: u32,
}

impl<'a, T: Send> Completing<'a, T> {
    #[inline(always)]
    fn new(ring: &'a mut SplitRing<T>) -> Self {
        let (start, left, batch_len) = (ring.last_used, ring.batch_left, ring.batch_len);
        Completing { ring, start, last: start, left, batch_len }
    }

    /// Chains completed so far.
    #[inline(always)]
    fn done(&self) -> u16 {
        self.last.wrapping_sub(self.start)
    }
}

impl<T: Send> Drop for Completing<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        let done = self.done();
        let ring = &mut *self.ring;
        (ring.batch_left, ring.batch_len) = (self.left, self.batch_len);
        ring.last_used = self.last;
        ring.oldest_head = self.last & ring.mask;
        ring.free += done;
        ring.chains -= done;
    }
}

impl<T: Send> SplitRing<T> {
    /// A fresh ring in `memory`, carrying `chains`. Used-buffer notifications are suppressed
    /// (poll mode): with `event_idx` through `used_event`, otherwise with
    /// VIRTQ_AVAIL_F_NO_INTERRUPT.
    pub fn new(memory: RingMemory, event_idx: bool, in_order: bool, chains: Chains) -> Result<Self> {
        let size = memory.size();
        if memory.format() != RingFormat::Split || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidConfig(format!(
                "split ring size {size} must be a power of two up to {MAX_QUEUE_SIZE}"
            )));
        }
        let ring = SplitRing {
            desc: memory.desc().cast(),
            avail: memory.driver(),
            used: memory.device(),
            size,
            mask: size - 1,
            event_idx,
            in_order,
            single: in_order && chains != Chains::Any,
            count_only: in_order && chains == Chains::OneDescriptorNoLengths,
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
            free: size,
            chains: 0,
            free_head: 0,
            free_tail: size - 1,
            next: (1..=size).map(|i| i & (size - 1)).collect(),
            next_desc: 0,
            oldest_head: 0,
            batch_left: 0,
            batch_len: 0,
            shadow: Shadow::new(size),
            errors: RingErrors::default(),
            broken: false,
            indirect: None,
            memory,
        };
        // Ask for no used-buffer notifications. With EVENT_IDX, `used_event` is put as far
        // behind as it goes, so the device's used index passes it only once every 2^16 entries.
        ring.avail_u16(avail::FLAGS).store(AVAIL_F_NO_INTERRUPT.to_le(), Ordering::Relaxed);
        ring.avail_u16(avail::used_event(size)).store(0u16.wrapping_sub(size + 1).to_le(), Ordering::Relaxed);
        if in_order {
            // In order, one-descriptor chains sit at their own ring offset: entry `i` names
            // descriptor `i` from the start, and `add` rewrites an entry only when that changes.
            for i in 0..size {
                ring.avail_u16(avail::ring(i)).store(i.to_le(), Ordering::Relaxed);
            }
        }
        Ok(ring)
    }

    /// The ring, taking chains through indirect `tables` as well ([`Virtqueue::add_indirect`]);
    /// the device must have negotiated VIRTIO_F_INDIRECT_DESC. Only on a fresh ring: `tables`
    /// must be split tables, one per descriptor.
    pub fn with_indirect(mut self, tables: IndirectTables) -> Result<Self> {
        tables.check_fits(RingFormat::Split, self.size, self.avail_idx == 0)?;
        self.indirect = Some(tables);
        Ok(self)
    }

    /// In order with one descriptor per chain, lengths unneeded: completes the oldest
    /// `used.idx - last_used` chains, up to `max`, without reading a used entry.
    #[inline(always)]
    fn pop_used_counted(&mut self, max: usize, mut sink: impl FnMut(T, UsedLen)) -> usize {
        let Some(used_idx) = self.load_used_idx() else { return 0 };
        let pending = used_idx.wrapping_sub(self.last_used);
        let (mask, limit) = (self.mask, max.min(pending as usize) as u16);
        let mut state = Completing::new(self);
        let end = state.start.wrapping_add(limit);
        let ring = &mut *state.ring;
        while state.last != end {
            // In flight: `pending` chains from the oldest on.
            let Some(chain) = ring.shadow.take(state.last & mask) else { break };
            // Past the chain before the sink runs: if it panics, the chain stays complete.
            state.last = state.last.wrapping_add(1);
            sink(chain.token, None);
        }
        state.done() as usize
    }

    /// In order with one descriptor per chain: the oldest chain in flight sits in descriptor
    /// `last_used mod size`, and a used entry naming descriptor `x` completes every chain up to
    /// the one in `x` ("In-order use of descriptors", 2.7.9).
    #[inline(always)]
    fn pop_used_single(&mut self, max: usize, mut sink: impl FnMut(T, UsedLen)) -> usize {
        let Some(used_idx) = self.load_used_idx() else { return 0 };
        let pending = used_idx.wrapping_sub(self.last_used);
        let (size, mask, used_ring) = (self.size, self.mask, self.used);
        let limit = max.min(pending as usize) as u16;
        let mut state = Completing::new(self);
        let end = state.start.wrapping_add(limit);
        let ring = &mut *state.ring;
        while state.last != end {
            let slot = state.last & mask;
            let len = if state.left > 0 {
                // Inside a batch: the last chain carries the used entry's length.
                state.left -= 1;
                (state.left == 0).then_some(state.batch_len)
            } else {
                // SAFETY: the entry is inside the used ring (`slot < size`), 8-byte aligned;
                // the acquire load of `used.idx` ordered this read after the device's write.
                let elem = unsafe { used_ring.add(used::ring(slot)).cast::<UsedElem>().read_volatile() };
                let (id, len) = (elem.id.get(), elem.len.get());
                if id == slot as u32 {
                    // The common case: the entry completes just this chain.
                    Some(len)
                } else {
                    // The chains after this one that the entry completes too (`used.idx` moved
                    // by as many more).
                    let batch = (id as u16).wrapping_sub(slot) & mask;
                    if id >= size as u32 || batch >= pending - state.last.wrapping_sub(state.start) {
                        ring.errors.bad_id += 1;
                        ring.broken = true;
                        break;
                    }
                    (state.left, state.batch_len) = (batch, len);
                    None
                }
            };
            // In flight: `pending` chains from the oldest on.
            let Some(chain) = ring.shadow.take(slot) else { break };
            let used_len = chain.used_len(len, &mut ring.errors);
            // Past the chain before the sink runs: if it panics, the chain stays complete.
            state.last = state.last.wrapping_add(1);
            sink(chain.token, used_len);
        }
        state.done() as usize
    }

    /// The device's `used.idx`, or `None` when it claims more completions than chains in
    /// flight: then nothing it says can be followed any more (counted; the ring is broken).
    /// Acquire: the used entries read afterwards, and the caller's reuse of the buffers it
    /// completes, come after the device's writes of those entries and its reads of those buffers.
    #[inline(always)]
    fn load_used_idx(&mut self) -> Option<u16> {
        let used_idx = u16::from_le(self.used_u16(used::IDX).load(Ordering::Acquire));
        if used_idx.wrapping_sub(self.last_used) > self.chains {
            self.errors.bad_used_idx += 1;
            self.broken = true;
            return None;
        }
        Some(used_idx)
    }

    /// A 16-bit field of the available ring, at byte `offset` (from `spec::split::avail`).
    #[inline(always)]
    fn avail_u16(&self, offset: usize) -> &AtomicU16 {
        debug_assert!(offset + 2 <= avail::bytes(self.size));
        // SAFETY: offsets from `spec::split::avail` are within `avail::bytes(size)`, inside the
        // ring memory and 2-byte aligned (RingMemory's invariant); shared with the device,
        // hence atomic; the memory lives as long as `self`.
        unsafe { AtomicU16::from_ptr(self.avail.add(offset).cast()) }
    }

    /// A 16-bit field of the used ring, at byte `offset` (from `spec::split::used`).
    #[inline(always)]
    fn used_u16(&self, offset: usize) -> &AtomicU16 {
        debug_assert!(offset + 2 <= used::bytes(self.size));
        // SAFETY: as in `avail_u16`, for the used ring.
        unsafe { AtomicU16::from_ptr(self.used.add(offset).cast()) }
    }

    /// Frees the descriptors of a chain taken back from the shadow.
    #[inline(always)]
    fn free_chain(&mut self, head: u16, descs: u16) {
        if self.in_order {
            self.oldest_head = (head + descs) & self.mask;
        } else {
            let mut tail = head;
            for _ in 1..descs {
                tail = self.next[tail as usize];
            }
            if self.free == 0 {
                self.free_head = head;
            } else {
                self.next[self.free_tail as usize] = head;
            }
            self.free_tail = tail;
        }
        self.free += descs;
    }

    /// The next chain to complete and the length to check for it: the oldest of an in-order
    /// batch being handed out, or the chain the next used entry names. `None` when there is no
    /// used entry left below `used_idx`, or the device broke the protocol (then counted; the
    /// ring is broken). A bad id out of order is counted and skipped.
    #[inline(always)]
    fn next_used(&mut self, used_idx: u16) -> Option<(u16, Option<u32>)> {
        loop {
            if self.batch_left > 0 {
                self.batch_left -= 1;
                return Some((self.oldest_head, (self.batch_left == 0).then_some(self.batch_len)));
            }
            if self.last_used == used_idx {
                return None;
            }
            let offset = used::ring(self.last_used & self.mask);
            // SAFETY: the entry is inside the used ring (`last_used & mask < size`), 8-byte
            // aligned; the acquire load of `used.idx` ordered this read after the device's write.
            let elem = unsafe { self.used.add(offset).cast::<UsedElem>().read_volatile() };
            let (id, len) = (elem.id.get(), elem.len.get());
            let head = id as u16;
            if id >= self.size as u32 || !self.shadow.contains(head) {
                self.errors.bad_id += 1;
                if self.in_order {
                    // In order, every later entry is judged by the chains before it: with one
                    // lost, nothing after it can be followed.
                    self.broken = true;
                    return None;
                }
                self.last_used = self.last_used.wrapping_add(1);
                continue;
            }
            if !self.in_order || head == self.oldest_head {
                return Some((head, Some(len)));
            }
            match self.in_order_batch(head) {
                // The entry stands for `batch` chains; `used.idx` moved by as many.
                Some(batch) if batch <= used_idx.wrapping_sub(self.last_used) => {
                    (self.batch_left, self.batch_len) = (batch - 1, len);
                    return Some((self.oldest_head, None));
                }
                _ => {
                    self.errors.bad_id += 1;
                    self.broken = true;
                    return None;
                }
            }
        }
    }

    /// Writes one descriptor as two 8-byte stores (`next` only matters when `flags` has NEXT).
    #[inline(always)]
    fn write_desc(&mut self, at: u16, segment: &Segment, flags: u16, next: u16) {
        debug_assert!(at < self.size);
        let tail = segment.len as u64 | (flags as u64) << 32 | (next as u64) << 48;
        // SAFETY: `at <= mask < size`, so the descriptor is inside the ring memory, 16-byte
        // aligned; it is free, so the device does not read it until the next publish.
        unsafe {
            let desc = self.desc.add(at as usize).cast::<u64>();
            desc.write_volatile(segment.addr.to_le());
            desc.add(1).write_volatile(tail.to_le());
        }
    }

    /// Puts chain `head` in the next available ring entry. In order the entry usually holds
    /// `head` already (see `new`) and is left alone: the device's copy of the line stays valid.
    #[inline(always)]
    fn push_avail(&mut self, head: u16) {
        let entry = self.avail_u16(avail::ring(self.avail_idx & self.mask));
        if !self.in_order || entry.load(Ordering::Relaxed) != head.to_le() {
            entry.store(head.to_le(), Ordering::Relaxed);
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// How many chains, from the oldest in flight, end with the one headed by `head` (IN_ORDER);
    /// `None` when `head` does not start a chain in flight.
    fn in_order_batch(&self, head: u16) -> Option<u16> {
        let mut at = self.oldest_head;
        for count in 1..=self.chains {
            if at == head {
                return Some(count);
            }
            at = (at + self.shadow.descs(at)) & self.mask;
        }
        None
    }
}

impl<T: Send> Virtqueue<T> for SplitRing<T> {
    ring_state_methods!();

    #[inline(always)]
    unsafe fn add(&mut self, segments: &[Segment], token: T) -> Result<(), T> {
        let count = segments.len();
        if count == 0 || count > self.free as usize || self.broken || (self.single && count > 1) {
            return Err(token);
        }
        let head = if self.in_order { self.next_desc } else { self.free_head };
        let mut at = head;
        let mut writable_len = 0u32;
        for (i, segment) in segments.iter().enumerate() {
            let next = if self.in_order { (at + 1) & self.mask } else { self.next[at as usize] };
            let mut flags = 0;
            if segment.writable {
                flags |= DESC_F_WRITE;
                writable_len = writable_len.saturating_add(segment.len);
            }
            if i + 1 < count {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(at, segment, flags, if i + 1 < count { next } else { 0 });
            at = next;
        }
        if self.in_order {
            self.next_desc = at;
        } else {
            self.free_head = at;
        }
        self.free -= count as u16;
        self.chains += 1;
        self.shadow.insert(head, token, count as u16, writable_len);
        self.push_avail(head);
        Ok(())
    }

    #[inline(always)]
    unsafe fn add_indirect(&mut self, segments: &[Segment], token: T) -> Result<(), T> {
        let Some(tables) = self.indirect.as_mut() else { return Err(token) };
        if segments.is_empty() || segments.len() > tables.max_segments() as usize || self.free == 0 || self.broken {
            return Err(token);
        }
        let head = if self.in_order { self.next_desc } else { self.free_head };
        // The head is free, so is its table: a table is in use exactly while its chain is.
        let (addr, len, writable_len) = tables.write(head, segments);
        // "The device MUST ignore the write-only flag ... in the descriptor that refers to an
        // indirect table" (2.7.5.3.2): none set, and no NEXT with INDIRECT (2.7.5.3.1).
        self.write_desc(head, &Segment { addr, len, writable: false }, DESC_F_INDIRECT, 0);
        if self.in_order {
            self.next_desc = (head + 1) & self.mask;
        } else {
            self.free_head = self.next[head as usize];
        }
        self.free -= 1;
        self.chains += 1;
        self.shadow.insert(head, token, 1, writable_len);
        self.push_avail(head);
        Ok(())
    }

    #[inline(always)]
    unsafe fn add_each(&mut self, chains: impl Iterator<Item = (Segment, T)>) -> usize {
        if self.broken {
            return 0;
        }
        let chains = chains.take(self.free as usize);
        let mut state = Adding { start: self.avail_idx, idx: self.avail_idx, ring: self };
        let ring = &mut *state.ring;
        if ring.single {
            // The chain goes into descriptor `avail_idx mod size`, which the available ring
            // entry of that position already names (see `new`).
            for (segment, token) in chains {
                let slot = state.idx & ring.mask;
                ring.write_desc(slot, &segment, if segment.writable { DESC_F_WRITE } else { 0 }, 0);
                ring.shadow.insert(slot, token, 1, if segment.writable { segment.len } else { 0 });
                state.idx = state.idx.wrapping_add(1);
            }
            return state.idx.wrapping_sub(state.start) as usize;
        }
        for (segment, token) in chains {
            let head = if ring.in_order { ring.next_desc } else { ring.free_head };
            let next = if ring.in_order { (head + 1) & ring.mask } else { ring.next[head as usize] };
            ring.write_desc(head, &segment, if segment.writable { DESC_F_WRITE } else { 0 }, 0);
            if ring.in_order {
                ring.next_desc = next;
            } else {
                ring.free_head = next;
            }
            ring.shadow.insert(head, token, 1, if segment.writable { segment.len } else { 0 });
            ring.push_avail(head);
        }
        ring.avail_idx.wrapping_sub(state.start) as usize
    }

    #[inline]
    fn publish(&mut self) -> bool {
        if self.avail_idx == self.published_idx {
            return false;
        }
        // Release: the descriptors and ring entries written in `add` are visible before the
        // device can see the new index (2.7.13.3).
        // Sequentially consistent (one locked exchange, cheaper than a store and a full fence):
        // the read of the device's suppression state below cannot move before it (2.7.13.4).
        self.avail_u16(avail::IDX).swap(self.avail_idx.to_le(), Ordering::SeqCst);
        let old = std::mem::replace(&mut self.published_idx, self.avail_idx);
        if self.event_idx {
            let event = u16::from_le(self.used_u16(used::avail_event(self.size)).load(Ordering::SeqCst));
            split_need_event(event, self.avail_idx, old)
        } else {
            u16::from_le(self.used_u16(used::FLAGS).load(Ordering::SeqCst)) & USED_F_NO_NOTIFY == 0
        }
    }

    #[inline(always)]
    fn pop_used(&mut self, max: usize, mut sink: impl FnMut(T, UsedLen)) -> usize {
        if self.broken {
            return 0;
        }
        if self.count_only {
            return self.pop_used_counted(max, sink);
        }
        if self.single {
            return self.pop_used_single(max, sink);
        }
        let Some(used_idx) = self.load_used_idx() else { return 0 };
        let mut done = 0;
        while done < max {
            let Some((head, len)) = self.next_used(used_idx) else { break };
            // `next_used` checked that `head` is in flight.
            let Some(chain) = self.shadow.take(head) else { break };
            self.chains -= 1;
            let used_len = chain.used_len(len, &mut self.errors);
            self.free_chain(head, chain.descs);
            self.last_used = self.last_used.wrapping_add(1);
            sink(chain.token, used_len);
            done += 1;
        }
        done
    }
}
