//! The driver side of a packed virtqueue ("Packed Virtqueues", 2.8).
//!
//! Buffer ids: with IN_ORDER they are handed out sequentially modulo the ring size, so a used
//! descriptor carrying id `x` also completes every older chain ("In-order use of descriptors",
//! 2.8.8); without it they come from a queue of free ids. Either way the shadow knows each
//! in-flight id's descriptor count, which is how far the used position skips. The receive and
//! transmit queues' rings take one descriptor per chain ([`Chains::OneDescriptor`]):
//! in order, an id is then its slot, and completions are followed slot by slot.
//!
//! The hot loops ([`Virtqueue::add_each`], [`Virtqueue::pop_used`]) keep the ring's positions in
//! locals and write them back once: after an acquire load the compiler would otherwise reload
//! every field from memory per descriptor. The locals are the fields of a guard ([`Adding`],
//! [`Completing`], [`CompletingChains`]) whose `Drop` writes them back, so that a caller's iterator or sink that panics
//! inside a loop leaves the ring exactly as far as the loop got: every chain written is counted
//! in flight, every chain handed to the sink is complete.
//!
//! Publishing: descriptors are written fully as they are added, except the flags of the first
//! head since the last publish; [`Virtqueue::publish`] stores those flags last, with release
//! ordering, which makes the whole batch available at once ("Driver notifications", 2.8.21.1).
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use super::event::packed_need_event;
use super::indirect::IndirectTables;
use super::layout::RingMemory;
use super::position::RingPos;
use super::shadow::Shadow;
use super::{Chains, RingErrors, Segment, UsedLen, Virtqueue};
use crate::error::{Error, Result};
use crate::spec::packed::{
    EventSuppress, PackedDesc, DESC_F_AVAIL, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_USED, DESC_F_WRITE, EVENT_FLAGS_DESC,
    EVENT_FLAGS_DISABLE, EVENT_FLAGS_ENABLE, MAX_QUEUE_SIZE,
};
use crate::spec::{Le16, Le32, Le64};
use crate::transport::{QueueAddresses, RingFormat};

/// The driver side of a packed ring of `size` descriptors (any size from 1 to 32768).
pub struct PackedRing<T> {
    memory: RingMemory,
    desc: *mut PackedDesc,
    size: u16,
    /// Where the next descriptor is written.
    avail: RingPos,
    /// Where the next used descriptor is expected.
    used: RingPos,
    /// `avail` at the last publish.
    published: RingPos,
    /// Slot and flags of the first head added since the last publish.
    pending_head: Option<(u16, u16)>,
    free: u16,
    /// Chains in flight.
    chains: u16,
    /// IN_ORDER was negotiated: ids are sequential and completions may come in batches.
    in_order: bool,
    /// IN_ORDER, and every chain is one descriptor ([`Chains::OneDescriptor`]): a
    /// chain's id is its slot, so completions are followed slot by slot from the used position.
    single: bool,
    /// IN_ORDER: the id of the next chain added.
    next_id: u16,
    /// IN_ORDER: the id of the oldest chain in flight.
    oldest_id: u16,
    /// IN_ORDER: chains of the batch being completed that are still to hand out after the
    /// oldest; the last of them carries `batch_len`, the length the used descriptor gave.
    batch_left: u16,
    batch_len: u32,
    /// Without IN_ORDER: the free ids, least recently freed first, so that an id comes back into
    /// use as late as possible and a device completing it twice is caught.
    free_ids: VecDeque<u16>,
    shadow: Shadow<T>,
    errors: RingErrors,
    broken: bool,
    /// With VIRTIO_F_INDIRECT_DESC: one table per buffer id, table `i` for the chain with id
    /// `i` ([`Virtqueue::add_indirect`]).
    indirect: Option<IndirectTables>,
}

// SAFETY: the raw pointer targets ring memory owned (through `memory`) by this value; the ring
// is used from one thread at a time and tokens are `Send`.
unsafe impl<T: Send> Send for PackedRing<T> {}

/// The state [`Virtqueue::add_each`] keeps in locals, written back into the ring when the loop
/// ends, however it ends. It holds positions only (how many chains were added is how far
/// `avail` got past `start`), so that as few values as possible stay live across the calls a
/// caller's iterator makes.
///
/// Invariant: the one-descriptor chains from `start` to `avail` are written and recorded in
/// the shadow; `avail` is where the next descriptor goes.
struct Adding<'a, T: Send> {
    ring: &'a mut PackedRing<T>,
    start: RingPos,
    avail: RingPos,
}

impl<T: Send> Adding<'_, T> {
    /// Chains added so far.
    #[inline(always)]
    fn added(&self) -> u16 {
        self.avail.since(self.start, self.ring.size)
    }
}

impl<T: Send> Drop for Adding<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        let added = self.added();
        let ring = &mut *self.ring;
        ring.avail = self.avail;
        ring.free -= added;
        ring.chains += added;
        if ring.single {
            // In order with one descriptor per chain, the next id is the next slot.
            ring.next_id = self.avail.idx();
        }
    }
}

/// The state the one-descriptor completion loop keeps in locals, written back into the ring
/// when the loop ends, however it ends: positions only, like [`Adding`]. (Its in-order batch
/// state stays in the ring, written as it changes: it is rarely touched, and a register is
/// worth more here.)
///
/// Invariant: the one-descriptor chains from `start` to `used` are taken from the shadow, their
/// tokens handed out or being handed out.
struct Completing<'a, T: Send> {
    ring: &'a mut PackedRing<T>,
    start: RingPos,
    used: RingPos,
}

impl<T: Send> Completing<'_, T> {
    /// Chains completed so far.
    #[inline(always)]
    fn done(&self) -> u16 {
        self.used.since(self.start, self.ring.size)
    }
}

impl<T: Send> Drop for Completing<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        let done = self.done();
        let ring = &mut *self.ring;
        ring.used = self.used;
        ring.free += done;
        ring.chains -= done;
    }
}

/// The state the completion loop for chains of any length keeps in locals, written back into
/// the ring when the loop ends, however it ends.
///
/// Invariant: the chains before `used` (`freed` descriptors) are taken from the shadow, their
/// tokens handed out or being handed out, and no longer counted in `ring.chains`; `oldest`,
/// `left` and `batch_len` are the ring's in-order state after them.
struct CompletingChains<'a, T: Send> {
    ring: &'a mut PackedRing<T>,
    used: RingPos,
    oldest: u16,
    left: u16,
    batch_len: u32,
    freed: u16,
}

impl<T: Send> Drop for CompletingChains<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        let ring = &mut *self.ring;
        (ring.used, ring.oldest_id, ring.batch_left, ring.batch_len) =
            (self.used, self.oldest, self.left, self.batch_len);
        ring.free += self.freed;
    }
}

impl<T: Send> PackedRing<T> {
    /// A fresh ring in `memory`, carrying `chains`. Used-buffer notifications are disabled
    /// (poll mode).
    pub fn new(memory: RingMemory, in_order: bool, chains: Chains) -> Result<Self> {
        let size = memory.size();
        if memory.format() != RingFormat::Packed || size == 0 || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidConfig(format!("packed ring size {size} must be 1..={MAX_QUEUE_SIZE}")));
        }
        let desc = memory.desc().cast::<PackedDesc>();
        let ring = PackedRing {
            desc,
            size,
            avail: RingPos::START,
            used: RingPos::START,
            published: RingPos::START,
            pending_head: None,
            free: size,
            chains: 0,
            in_order,
            single: in_order && chains != Chains::Any,
            next_id: 0,
            oldest_id: 0,
            batch_left: 0,
            batch_len: 0,
            free_ids: if in_order { VecDeque::new() } else { (0..size).collect() },
            shadow: Shadow::new(size),
            errors: RingErrors::default(),
            broken: false,
            indirect: None,
            memory,
        };
        // SAFETY: the driver area holds an `EventSuppress` (RingMemory's invariant), and the
        // device does not look at it before the queue is enabled.
        unsafe {
            ring.memory
                .driver()
                .cast::<EventSuppress>()
                .write_volatile(EventSuppress { desc: Le16::new(0), flags: Le16::new(EVENT_FLAGS_DISABLE) })
        };
        Ok(ring)
    }

    /// The ring, taking chains through indirect `tables` as well ([`Virtqueue::add_indirect`]);
    /// the device must have negotiated VIRTIO_F_INDIRECT_DESC. Only on a fresh ring: `tables`
    /// must be packed tables, one per buffer id.
    pub fn with_indirect(mut self, tables: IndirectTables) -> Result<Self> {
        tables.check_fits(RingFormat::Packed, self.size, self.avail == RingPos::START)?;
        self.indirect = Some(tables);
        Ok(self)
    }

    /// In order with one descriptor per chain: a chain's id is its slot, chains complete slot
    /// by slot from the used position, and a used descriptor with id `x` completes every slot
    /// up to `x` ("In-order use of descriptors", 2.8.8).
    #[inline(always)]
    fn pop_used_single(&mut self, max: usize, mut sink: impl FnMut(T, UsedLen)) -> usize {
        let (size, desc) = (self.size, self.desc);
        let mut remaining = max.min(self.chains as usize) as u16;
        let mut state = Completing { start: self.used, used: self.used, ring: self };
        let ring = &mut *state.ring;
        let mut slots = ring.shadow.slots();
        while remaining > 0 {
            let slot = state.used.idx();
            let len = if ring.batch_left > 0 {
                // Inside a batch: the last chain carries the used descriptor's length.
                ring.batch_left -= 1;
                (ring.batch_left == 0).then_some(ring.batch_len)
            } else {
                // SAFETY: `slot < size` (RingPos invariant): the descriptor is inside the ring memory.
                let (flags, id, len) = unsafe { Self::read_used_desc(desc.add(slot as usize)) };
                if flags & (DESC_F_AVAIL | DESC_F_USED) != state.used.used_flags() {
                    break;
                }
                if id == slot {
                    // The common case: the descriptor completes just this chain.
                    Some(len)
                } else {
                    // The chains after this one that the descriptor completes too, within the
                    // chains still in flight (the slot's own chain and those after it).
                    let batch = if id >= slot { id - slot } else { id.wrapping_add(size - slot) };
                    if id >= size || batch >= ring.chains - state.used.since(state.start, size) {
                        ring.errors.bad_id += 1;
                        ring.broken = true;
                        break;
                    }
                    (ring.batch_left, ring.batch_len) = (batch, len);
                    None
                }
            };
            // In flight: every slot from the used position on, `chains` of them.
            let Some(chain) = slots.take(slot) else { break };
            let used_len = chain.used_len(len, &mut ring.errors);
            // Past the chain before the sink runs: if it panics, the chain stays complete.
            state.used.step(size);
            remaining -= 1;
            sink(chain.token, used_len);
        }
        state.done() as usize
    }

    /// The flags word of slot `slot`, as an atomic.
    #[inline(always)]
    fn flags(&self, slot: u16) -> &AtomicU16 {
        debug_assert!(slot < self.size);
        // SAFETY: `slot < size`, so the descriptor is inside the ring memory (RingMemory's
        // invariant), 16-byte aligned, and its flags field is 2-byte aligned; the memory lives as
        // long as `self`. The device accesses it concurrently, hence the atomic.
        unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.desc.add(slot as usize)).flags).cast()) }
    }

    /// The device's event suppression structure, (off_wrap, flags), read with one sequentially
    /// consistent load: after the flags swap in `publish`, it cannot be read early.
    #[inline(always)]
    fn device_event(&self) -> (u16, u16) {
        // SAFETY: the device area holds an `EventSuppress` (4 bytes, RingMemory's invariant) and
        // is 4-byte aligned; the device writes it concurrently, hence the atomic.
        let event = unsafe { AtomicU32::from_ptr(self.memory.device().cast()) };
        let raw = event.load(Ordering::SeqCst).to_ne_bytes();
        (u16::from_le_bytes([raw[0], raw[1]]), u16::from_le_bytes([raw[2], raw[3]]))
    }

    #[inline(always)]
    fn next_in_ring(&self, id: u16) -> u16 {
        if id + 1 == self.size {
            0
        } else {
            id + 1
        }
    }

    #[inline(always)]
    fn alloc_id(&mut self) -> Option<u16> {
        if self.in_order {
            let id = self.next_id;
            self.next_id = self.next_in_ring(id);
            Some(id)
        } else {
            self.free_ids.pop_front()
        }
    }

    /// Reads a descriptor the device may be writing: its flags (little-endian decoded) with
    /// acquire ordering first, so that the id and length read after them are the ones the
    /// device wrote before it set those flags.
    ///
    /// # Safety
    /// `d` must point to a descriptor inside this ring's memory (16-byte aligned).
    #[inline(always)]
    unsafe fn read_used_desc(d: *mut PackedDesc) -> (u16, u16, u32) {
        // SAFETY: per the caller, `d` is a valid, aligned descriptor of live ring memory; the
        // device writes it concurrently, hence an atomic for the flags and volatile reads.
        unsafe {
            let flags = AtomicU16::from_ptr(std::ptr::addr_of_mut!((*d).flags).cast()).load(Ordering::Acquire);
            (
                u16::from_le(flags),
                std::ptr::addr_of!((*d).id).read_volatile().get(),
                std::ptr::addr_of!((*d).len).read_volatile().get(),
            )
        }
    }

    /// Writes a whole descriptor as two 8-byte stores, `flags` last (the device is not
    /// looking at it: its slot is not available yet).
    #[inline(always)]
    fn write_desc(desc: *mut PackedDesc, addr: u64, len: u32, id: u16, flags: u16) {
        let tail = len as u64 | (id as u64) << 32 | (flags as u64) << 48;
        // SAFETY: the caller passes a descriptor of the ring (inside its memory, 16-byte
        // aligned) that is free, so the device does not read it now.
        unsafe {
            desc.cast::<u64>().write_volatile(addr.to_le());
            desc.cast::<u64>().add(1).write_volatile(tail.to_le());
        }
    }
}

impl<T: Send> Virtqueue<T> for PackedRing<T> {
    ring_state_methods!();

    #[inline(always)]
    unsafe fn add(&mut self, segments: &[Segment], token: T) -> Result<(), T> {
        let count = segments.len();
        if count == 0 || count > self.free as usize || self.broken || (self.single && count > 1) {
            return Err(token);
        }
        let Some(id) = self.alloc_id() else {
            return Err(token);
        };
        let mut writable_len = 0u32;
        for (i, segment) in segments.iter().enumerate() {
            let slot = self.avail.idx();
            let mut flags = self.avail.avail_flags();
            if segment.writable {
                flags |= DESC_F_WRITE;
                writable_len = writable_len.saturating_add(segment.len);
            }
            if i + 1 < count {
                flags |= DESC_F_NEXT;
            }
            // SAFETY: `slot < size` (RingPos invariant), so the descriptor is inside the ring
            // memory; it is free (counted in `free`), so the device does not read it now.
            let desc = unsafe { self.desc.add(slot as usize) };
            if i == 0 && self.pending_head.is_none() {
                // The batch's first head: everything but its flags now, the flags in `publish`.
                // SAFETY: as above; the device may be polling this slot's flags, which are left
                // alone here.
                unsafe {
                    std::ptr::addr_of_mut!((*desc).addr).write_volatile(Le64::new(segment.addr));
                    std::ptr::addr_of_mut!((*desc).len).write_volatile(Le32::new(segment.len));
                    std::ptr::addr_of_mut!((*desc).id).write_volatile(Le16::new(id));
                }
                self.pending_head = Some((slot, flags));
            } else {
                // SAFETY: as above; the device does not read past the unpublished first head.
                unsafe {
                    desc.write_volatile(PackedDesc {
                        addr: Le64::new(segment.addr),
                        len: Le32::new(segment.len),
                        id: Le16::new(id),
                        flags: Le16::new(flags),
                    })
                };
            }
            self.avail.step(self.size);
        }
        self.free -= count as u16;
        self.chains += 1;
        self.shadow.insert(id, token, count as u16, writable_len);
        Ok(())
    }

    #[inline(always)]
    unsafe fn add_indirect(&mut self, segments: &[Segment], token: T) -> Result<(), T> {
        let Some(max) = self.indirect.as_ref().map(|tables| tables.max_segments() as usize) else {
            return Err(token);
        };
        if segments.is_empty() || segments.len() > max || self.free == 0 || self.broken {
            return Err(token);
        }
        let Some(id) = self.alloc_id() else {
            return Err(token);
        };
        // The id is free, so is its table: a table is in use exactly while its chain is. (The
        // tables exist: checked above.)
        let Some(tables) = self.indirect.as_mut() else { return Err(token) };
        let (addr, len, writable_len) = tables.write(id, segments);
        let slot = self.avail.idx();
        // WRITE is reserved in a descriptor with INDIRECT (2.8.7): only the ring's bits.
        let flags = self.avail.avail_flags() | DESC_F_INDIRECT;
        // SAFETY: `slot < size` (RingPos invariant), so the descriptor is inside the ring memory;
        // it is free (counted in `free`), so the device does not read it now.
        let desc = unsafe { self.desc.add(slot as usize) };
        if self.pending_head.is_none() {
            // The batch's first head: everything but its flags now, the flags in `publish`.
            // SAFETY: as above; the device may be polling this slot's flags, left alone here.
            unsafe {
                std::ptr::addr_of_mut!((*desc).addr).write_volatile(Le64::new(addr));
                std::ptr::addr_of_mut!((*desc).len).write_volatile(Le32::new(len));
                std::ptr::addr_of_mut!((*desc).id).write_volatile(Le16::new(id));
            }
            self.pending_head = Some((slot, flags));
        } else {
            Self::write_desc(desc, addr, len, id, flags);
        }
        self.avail.step(self.size);
        self.free -= 1;
        self.chains += 1;
        self.shadow.insert(id, token, 1, writable_len);
        Ok(())
    }

    #[inline(always)]
    unsafe fn add_each(&mut self, chains: impl Iterator<Item = (Segment, T)>) -> usize {
        if self.broken || self.free == 0 {
            return 0;
        }
        let (size, desc) = (self.size, self.desc);
        let mut chains = chains.take(self.free as usize);
        let mut state = Adding { start: self.avail, avail: self.avail, ring: self };
        let ring = &mut *state.ring;
        // The batch's first head: everything but its flags now, the flags in `publish`.
        if ring.pending_head.is_none() {
            let Some((segment, token)) = chains.next() else { return 0 };
            // With one descriptor per chain there is an id for every free descriptor.
            let slot = state.avail.idx();
            let Some(id) = ring.alloc_id() else { return 0 };
            debug_assert!(!ring.single || id == slot, "in order with one descriptor per chain, ids follow slots");
            let flags = state.avail.avail_flags() | if segment.writable { DESC_F_WRITE } else { 0 };
            // SAFETY: `slot < size` (RingPos invariant), so the descriptor is inside the ring
            // memory; it is free, so the device does not read it now. It may be polling this
            // slot's flags, which are left alone.
            unsafe {
                let head = desc.add(slot as usize);
                std::ptr::addr_of_mut!((*head).addr).write_volatile(Le64::new(segment.addr));
                std::ptr::addr_of_mut!((*head).len).write_volatile(Le32::new(segment.len));
                std::ptr::addr_of_mut!((*head).id).write_volatile(Le16::new(id));
            }
            ring.pending_head = Some((slot, flags));
            ring.shadow.insert(id, token, 1, if segment.writable { segment.len } else { 0 });
            state.avail.step(size);
        }
        if ring.single {
            // In order, ids follow slots: the id is the slot.
            let mut slots = ring.shadow.slots();
            for (segment, token) in chains.by_ref() {
                let slot = state.avail.idx();
                let flags = state.avail.avail_flags() | if segment.writable { DESC_F_WRITE } else { 0 };
                // SAFETY: `slot < size` (RingPos invariant), so the descriptor is inside the ring memory.
                Self::write_desc(unsafe { desc.add(slot as usize) }, segment.addr, segment.len, slot, flags);
                slots.insert(slot, token, 1, if segment.writable { segment.len } else { 0 });
                state.avail.step(size);
            }
        }
        for (segment, token) in chains {
            let Some(id) = ring.alloc_id() else { break };
            let flags = state.avail.avail_flags() | if segment.writable { DESC_F_WRITE } else { 0 };
            let slot = state.avail.idx();
            // SAFETY: `slot < size` (RingPos invariant), so the descriptor is inside the ring memory.
            Self::write_desc(unsafe { desc.add(slot as usize) }, segment.addr, segment.len, id, flags);
            ring.shadow.insert(id, token, 1, if segment.writable { segment.len } else { 0 });
            state.avail.step(size);
        }
        state.added() as usize
    }

    #[inline]
    fn publish(&mut self) -> bool {
        let Some((slot, flags)) = self.pending_head.take() else {
            return false;
        };
        // Release: every descriptor of the batch (written above) is visible before this head's
        // flags make the batch available. Sequentially consistent (one locked exchange, cheaper
        // than a store and a full fence): the read of the device's event suppression structure
        // below cannot move before it, so a device that is just disabling notifications cannot
        // miss this batch (2.8.21.3.1).
        self.flags(slot).swap(flags.to_le(), Ordering::SeqCst);
        let old = std::mem::replace(&mut self.published, self.avail);
        let (off_wrap, event_flags) = self.device_event();
        match event_flags & 0x3 {
            EVENT_FLAGS_DISABLE => false,
            EVENT_FLAGS_ENABLE => true,
            EVENT_FLAGS_DESC => packed_need_event(off_wrap, old, self.avail, self.size),
            _ => true,
        }
    }

    #[inline(always)]
    fn pop_used(&mut self, max: usize, mut sink: impl FnMut(T, UsedLen)) -> usize {
        if self.broken {
            return 0;
        }
        if self.single {
            return self.pop_used_single(max, sink);
        }
        // The ring's state lives in locals for the loop (the acquire loads would otherwise make
        // every field be read again from memory per descriptor), written back by the guard.
        let (size, desc, in_order) = (self.size, self.desc, self.in_order);
        let (used, oldest, left, batch_len) = (self.used, self.oldest_id, self.batch_left, self.batch_len);
        let mut state = CompletingChains { used, oldest, left, batch_len, freed: 0, ring: self };
        let ring = &mut *state.ring;
        let mut done = 0usize;
        while done < max {
            let (id, len) = if state.left > 0 {
                // An in-order batch being handed out: the oldest chain; the last one carries
                // the length.
                state.left -= 1;
                (state.oldest, (state.left == 0).then_some(state.batch_len))
            } else {
                if ring.chains == 0 {
                    break;
                }
                let slot = state.used.idx();
                // SAFETY: `slot < size` (RingPos invariant): the descriptor is inside the ring memory.
                let (flags, id, len) = unsafe { Self::read_used_desc(desc.add(slot as usize)) };
                if flags & (DESC_F_AVAIL | DESC_F_USED) != state.used.used_flags() {
                    break;
                }
                if !in_order {
                    (id, Some(len))
                } else {
                    // Every chain from the oldest up to `id` is complete; `id` must be in flight.
                    let oldest = state.oldest;
                    let batch = if id >= oldest { id - oldest } else { id.wrapping_add(size - oldest) };
                    if id >= size || batch >= ring.chains {
                        ring.errors.bad_id += 1;
                        ring.broken = true;
                        break;
                    }
                    if batch == 0 {
                        (id, Some(len))
                    } else {
                        (state.left, state.batch_len) = (batch, len);
                        (oldest, None)
                    }
                }
            };
            let Some(chain) = ring.shadow.take(id) else {
                // Out of order, an id not in flight (in order, checked above).
                ring.errors.bad_id += 1;
                ring.broken = true;
                break;
            };
            ring.chains -= 1;
            let used_len = chain.used_len(len, &mut ring.errors);
            // Accounted before the sink runs: if it panics, the chain stays complete.
            state.used.advance(chain.descs, size);
            state.freed += chain.descs;
            if in_order {
                state.oldest = if id + 1 == size { 0 } else { id + 1 };
            } else {
                ring.free_ids.push_back(id);
            }
            sink(chain.token, used_len);
            done += 1;
        }
        done
    }
}
