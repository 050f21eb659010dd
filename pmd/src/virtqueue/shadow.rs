//! The driver's shadow of in-flight chains, indexed by buffer id (packed) or head descriptor
//! index (split). It is the only source of truth for what the device may complete. It does not
//! count them: the rings keep that count, in a local across their bulk loops.

use super::{RingErrors, UsedLen};

/// One in-flight chain.
struct Slot<T> {
    token: Option<T>,
    descs: u16,
    writable_len: u32,
}

/// What the driver remembers of each in-flight chain.
pub(super) struct Shadow<T> {
    slots: Box<[Slot<T>]>,
}

/// A chain taken back from the shadow.
pub(super) struct Completed<T> {
    pub token: T,
    pub descs: u16,
    pub writable_len: u32,
}

impl<T> Completed<T> {
    /// The length to hand out for this chain, given what the device reported: `Some(len)` from
    /// its used entry, or `None` when a later in-order entry completed it implicitly. A length
    /// beyond the chain's writable length is counted in `errors` and handed out as `None`.
    ///
    /// For a chain the device may only read, the length means nothing ("Element Address and
    /// Length", 2.8.4: it is reserved for such used descriptors and ignored by drivers; some
    /// devices report the bytes they read) and is taken as 0. A writable chain completed
    /// implicitly has an unknown length.
    #[inline(always)]
    pub fn used_len(&self, len: Option<u32>, errors: &mut RingErrors) -> UsedLen {
        if self.writable_len == 0 {
            return Some(0);
        }
        match len {
            Some(len) if len <= self.writable_len => Some(len),
            Some(_) => {
                errors.bad_len += 1;
                None
            }
            None => None,
        }
    }
}

impl<T> Shadow<T> {
    pub fn new(size: u16) -> Self {
        let slots = (0..size).map(|_| Slot { token: None, descs: 0, writable_len: 0 }).collect();
        Self { slots }
    }

    /// Records a chain under `id`, which must be free (the id allocators guarantee it).
    #[inline(always)]
    pub fn insert(&mut self, id: u16, token: T, descs: u16, writable_len: u32) {
        self.slots().insert(id, token, descs, writable_len);
    }

    /// Whether `id` is a chain in flight.
    #[inline(always)]
    pub fn contains(&self, id: u16) -> bool {
        self.slots.get(id as usize).is_some_and(|s| s.token.is_some())
    }

    /// Descriptor count of the in-flight chain `id` (0 when not in flight).
    #[inline(always)]
    pub fn descs(&self, id: u16) -> u16 {
        self.slots.get(id as usize).map_or(0, |s| if s.token.is_some() { s.descs } else { 0 })
    }

    /// Takes chain `id` back, or `None` when `id` is out of range or not in flight.
    #[inline(always)]
    pub fn take(&mut self, id: u16) -> Option<Completed<T>> {
        self.slots().take(id)
    }

    /// The slots as a plain slice, for a bulk loop: held in a local, its address and length
    /// stay in registers, where the shadow's fields would be read again after every acquire
    /// load of the ring.
    #[inline(always)]
    pub fn slots(&mut self) -> Slots<'_, T> {
        Slots(&mut self.slots)
    }

    /// Hands every in-flight token to `sink`.
    pub fn drain(&mut self, mut sink: impl FnMut(T)) {
        for slot in self.slots.iter_mut() {
            if let Some(token) = slot.token.take() {
                sink(token);
            }
        }
    }
}

/// The shadow's slots, borrowed for a bulk loop ([`Shadow::slots`]).
pub(super) struct Slots<'a, T>(&'a mut [Slot<T>]);

impl<T> Slots<'_, T> {
    /// See [`Shadow::insert`].
    #[inline(always)]
    pub fn insert(&mut self, id: u16, token: T, descs: u16, writable_len: u32) {
        let slot = &mut self.0[id as usize];
        let previous = slot.token.replace(token);
        debug_assert!(previous.is_none());
        // Never anything to drop: the id was free.
        std::mem::forget(previous);
        (slot.descs, slot.writable_len) = (descs, writable_len);
    }

    /// See [`Shadow::take`].
    #[inline(always)]
    pub fn take(&mut self, id: u16) -> Option<Completed<T>> {
        let slot = self.0.get_mut(id as usize)?;
        let token = slot.token.take()?;
        Some(Completed { token, descs: slot.descs, writable_len: slot.writable_len })
    }
}
