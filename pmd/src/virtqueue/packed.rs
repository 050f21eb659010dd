//! The driver side of a packed virtqueue ("Packed Virtqueues", 2.8).
//!
//! Buffer ids: with IN_ORDER they are handed out sequentially modulo the ring size, so a used
//! descriptor carrying id `x` also completes every older chain ("In-order use of descriptors",
//! 2.8.8); without it they come from a queue of free ids. Either way the shadow knows each
//! in-flight id's descriptor count, which is how far the used position skips.
//!
//! Publishing: descriptors are written fully as they are added, except the flags of the first
//! head since the last publish; [`Virtqueue::publish`] stores those flags last, with release
//! ordering, which makes the whole batch available at once ("Driver notifications", 2.8.21.1).
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicU16, Ordering};

use super::event::packed_need_event;
use super::layout::RingMemory;
use super::position::RingPos;
use super::shadow::Shadow;
use super::{RingErrors, Segment, UsedLen, Virtqueue};
use crate::error::{Error, Result};
use crate::spec::packed::{
    EventSuppress, PackedDesc, DESC_F_AVAIL, DESC_F_NEXT, DESC_F_USED, DESC_F_WRITE, EVENT_FLAGS_DESC,
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
    /// IN_ORDER was negotiated: ids are sequential and completions may come in batches.
    in_order: bool,
    /// IN_ORDER: the id of the next chain added.
    next_id: u16,
    /// IN_ORDER: the id of the oldest chain in flight.
    oldest_id: u16,
    /// IN_ORDER: a used descriptor read but not fully processed (its id and length): the
    /// chains before it complete first, one by one, as `max` allows.
    batch_end: Option<(u16, u32)>,
    /// Without IN_ORDER: the free ids, least recently freed first, so that an id comes back into
    /// use as late as possible and a device completing it twice is caught.
    free_ids: VecDeque<u16>,
    shadow: Shadow<T>,
    errors: RingErrors,
    broken: bool,
}

// SAFETY: the raw pointer targets ring memory owned (through `memory`) by this value; the ring
// is used from one thread at a time and tokens are `Send`.
unsafe impl<T: Send> Send for PackedRing<T> {}

/// The AVAIL/USED bits that mark a descriptor available in wrap lap `wrap` (2.8.1).
#[inline(always)]
const fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL
    } else {
        DESC_F_USED
    }
}

impl<T: Send> PackedRing<T> {
    /// A fresh ring in `memory`. Used-buffer notifications are disabled (poll mode).
    pub fn new(memory: RingMemory, in_order: bool) -> Result<Self> {
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
            in_order,
            next_id: 0,
            oldest_id: 0,
            batch_end: None,
            free_ids: if in_order { VecDeque::new() } else { (0..size).collect() },
            shadow: Shadow::new(size),
            errors: RingErrors::default(),
            broken: false,
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

    /// The flags word of slot `slot`, as an atomic.
    #[inline(always)]
    fn flags(&self, slot: u16) -> &AtomicU16 {
        debug_assert!(slot < self.size);
        // SAFETY: `slot < size`, so the descriptor is inside the ring memory (RingMemory's
        // invariant), 16-byte aligned, and its flags field is 2-byte aligned; the memory lives as
        // long as `self`. The device accesses it concurrently, hence the atomic.
        unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.desc.add(slot as usize)).flags).cast()) }
    }

    /// The device's event suppression structure: (off_wrap, flags).
    #[inline(always)]
    fn device_event(&self) -> (u16, u16) {
        let event = self.memory.device().cast::<EventSuppress>();
        // SAFETY: the device area holds an `EventSuppress` (RingMemory's invariant); the device
        // writes it concurrently, so it is read with volatile loads.
        let event = unsafe { event.read_volatile() };
        (event.desc.get(), event.flags.get())
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

    /// Hands chain `id` to `sink` and frees its descriptors; false if it was not in flight.
    #[inline(always)]
    fn complete(&mut self, id: u16, len: Option<u32>, sink: &mut impl FnMut(T, UsedLen)) -> bool {
        let Some(chain) = self.shadow.take(id) else {
            return false;
        };
        let used_len = chain.used_len(len, &mut self.errors);
        self.used.advance(chain.descs, self.size);
        self.free += chain.descs;
        if self.in_order {
            self.oldest_id = self.next_in_ring(id);
        } else {
            self.free_ids.push_back(id);
        }
        sink(chain.token, used_len);
        true
    }
}

impl<T: Send> Virtqueue<T> for PackedRing<T> {
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
        self.shadow.in_flight()
    }

    #[inline(always)]
    fn add(&mut self, segments: &[Segment], token: T) -> Result<(), T> {
        let count = segments.len();
        if count == 0 || count > self.free as usize || self.broken {
            return Err(token);
        }
        let Some(id) = self.alloc_id() else {
            return Err(token);
        };
        let mut writable_len = 0u32;
        for (i, segment) in segments.iter().enumerate() {
            let slot = self.avail.idx();
            let mut flags = avail_bits(self.avail.wrap());
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
            self.avail.advance(1, self.size);
        }
        self.free -= count as u16;
        self.shadow.insert(id, token, count as u16, writable_len);
        Ok(())
    }

    #[inline]
    fn publish(&mut self) -> bool {
        let Some((slot, flags)) = self.pending_head.take() else {
            return false;
        };
        // Release: every descriptor of the batch (written above) is visible before this head's
        // flags make the batch available.
        self.flags(slot).store(flags.to_le(), Ordering::Release);
        let old = std::mem::replace(&mut self.published, self.avail);
        // Order the flags store before reading the device's event suppression structure, so a
        // device that is just disabling notifications cannot miss this batch (2.8.21.3.1).
        fence(Ordering::SeqCst);
        let (off_wrap, event_flags) = self.device_event();
        match event_flags & 0x3 {
            EVENT_FLAGS_DISABLE => false,
            EVENT_FLAGS_ENABLE => true,
            EVENT_FLAGS_DESC => packed_need_event(off_wrap, old, self.avail, self.size),
            _ => true,
        }
    }

    #[inline]
    fn pop_used(&mut self, max: usize, mut sink: impl FnMut(T, UsedLen)) -> usize {
        let mut done = 0;
        while done < max && !self.broken && self.shadow.in_flight() > 0 {
            if let Some((last_id, len)) = self.batch_end {
                // An in-order batch: the oldest chain completes; the last one carries the length.
                let oldest = self.oldest_id;
                let len = if oldest == last_id {
                    self.batch_end = None;
                    Some(len)
                } else {
                    None
                };
                self.complete(oldest, len, &mut sink);
                done += 1;
                continue;
            }
            let slot = self.used.idx();
            let flags = u16::from_le(self.flags(slot).load(Ordering::Acquire));
            let wrap = self.used.wrap();
            if (flags & DESC_F_AVAIL != 0) != wrap || (flags & DESC_F_USED != 0) != wrap {
                break;
            }
            // SAFETY: `slot < size`; the acquire load above orders these reads after the
            // device's writes of the used descriptor.
            let (id, len) = unsafe {
                let desc = self.desc.add(slot as usize);
                (
                    std::ptr::addr_of!((*desc).id).read_volatile().get(),
                    std::ptr::addr_of!((*desc).len).read_volatile().get(),
                )
            };
            if self.in_order {
                // Every chain from the oldest up to `id` is complete; `id` must be in flight.
                let batch = if id >= self.oldest_id {
                    (id - self.oldest_id) as u32
                } else {
                    id as u32 + self.size as u32 - self.oldest_id as u32
                };
                if id >= self.size || batch >= self.shadow.in_flight() as u32 {
                    self.errors.bad_id += 1;
                    self.broken = true;
                    break;
                }
                if batch == 0 {
                    self.complete(id, Some(len), &mut sink);
                    done += 1;
                } else {
                    self.batch_end = Some((id, len));
                }
            } else {
                if !self.complete(id, Some(len), &mut sink) {
                    self.errors.bad_id += 1;
                    self.broken = true;
                    break;
                }
                done += 1;
            }
        }
        done
    }

    fn is_broken(&self) -> bool {
        self.broken
    }

    fn errors(&self) -> RingErrors {
        self.errors
    }

    fn drain(&mut self, sink: impl FnMut(T)) {
        self.shadow.drain(sink);
        self.broken = true;
    }

    fn addresses(&self) -> QueueAddresses {
        self.memory.addresses()
    }
}
