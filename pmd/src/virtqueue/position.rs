//! A position in a packed ring: index plus wrap counter ("Driver and Device Ring Wrap Counters",
//! 2.8.1). [`RingPos::advance`] and [`RingPos::step`] are the only code that flips a wrap
//! counter; the descriptor flags that depend on it ([`RingPos::avail_flags`],
//! [`RingPos::used_flags`]) are derived from it, never flipped by hand.
//!
//! The wrap counter is kept as the AVAIL/USED bits of a descriptor the device used in the
//! current lap (both equal to the wrap counter, 2.8.1): the bulk loops then get a descriptor's
//! flags from a position with one XOR at most, and a flip is one XOR too.

use crate::spec::packed::{DESC_F_AVAIL, DESC_F_USED};

/// Both flag bits that carry a wrap counter.
const LAP: u16 = DESC_F_AVAIL | DESC_F_USED;

/// An index into a ring of `size` slots and the wrap counter that goes with it.
///
/// Invariant: `lap` is `LAP` (wrap counter 1) or 0 (wrap counter 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPos {
    idx: u16,
    lap: u16,
}

impl RingPos {
    /// Slot 0 with the wrap counter at 1, where both sides of a fresh ring start.
    pub const START: RingPos = RingPos { idx: 0, lap: LAP };

    /// A position from its parts. `idx` must be below the ring size it is used with.
    pub const fn new(idx: u16, wrap: bool) -> RingPos {
        RingPos { idx, lap: if wrap { LAP } else { 0 } }
    }

    /// The slot index.
    #[inline(always)]
    pub const fn idx(self) -> u16 {
        self.idx
    }

    /// The wrap counter.
    #[inline(always)]
    pub const fn wrap(self) -> bool {
        self.lap != 0
    }

    /// The AVAIL/USED bits that make a descriptor at this position available: AVAIL equal to
    /// the wrap counter, USED its inverse ("Driver and Device Ring Wrap Counters", 2.8.1).
    #[inline(always)]
    pub const fn avail_flags(self) -> u16 {
        self.lap ^ DESC_F_USED
    }

    /// The AVAIL/USED bits of a descriptor the device used at this position: both equal to the
    /// wrap counter (2.8.1).
    #[inline(always)]
    pub const fn used_flags(self) -> u16 {
        self.lap
    }

    /// Moves `n` slots forward in a ring of `size` slots, flipping the wrap counter when passing
    /// the end. Requires `n <= size`.
    #[inline(always)]
    pub fn advance(&mut self, n: u16, size: u16) {
        debug_assert!(n <= size && self.idx < size);
        let next = self.idx as u32 + n as u32;
        if next >= size as u32 {
            self.idx = (next - size as u32) as u16;
            self.lap ^= LAP;
        } else {
            self.idx = next as u16;
        }
    }

    /// Moves one slot forward in a ring of `size` slots, flipping the wrap counter when passing
    /// the end: `advance(1, size)` for the one-descriptor loops, where the compare with the end
    /// is all there is to it. Requires `idx < size`.
    #[inline(always)]
    pub fn step(&mut self, size: u16) {
        debug_assert!(self.idx < size);
        self.idx += 1;
        if self.idx == size {
            self.idx = 0;
            self.lap ^= LAP;
        }
    }

    /// The position as a number in `0..2*size`, increasing by one per slot and wrapping at
    /// `2*size`: two laps of the ring tell every (index, wrap counter) pair apart.
    #[inline(always)]
    pub const fn linear(self, size: u16) -> u32 {
        self.idx as u32 + if self.wrap() { 0 } else { size as u32 }
    }

    /// How many slots this position is past `earlier` in a ring of `size` slots: the `n` for
    /// which `earlier.advance(n, size)` gives this position. Requires that `n <= size`.
    #[inline(always)]
    pub const fn since(self, earlier: RingPos, size: u16) -> u16 {
        let laps = 2 * size as u32;
        let ahead = self.linear(size) + laps - earlier.linear(size);
        (if ahead >= laps { ahead - laps } else { ahead }) as u16
    }

    /// The position as the event suppression structure encodes it: offset in bits 0..14, wrap
    /// counter in bit 15 ("Event Suppression Structure Format", 2.8.10).
    #[inline(always)]
    pub const fn off_wrap(self) -> u16 {
        self.idx | (self.lap & 0x8000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn advance_matches_one_step_at_a_time(size in 1u16..=32768, start in 0u16..32768, wrap: bool, n in 0u16..=32768) {
            let start = RingPos::new(start % size, wrap);
            let n = n % (size + 1);
            let mut fast = start;
            fast.advance(n, size);
            let mut slow = start;
            for _ in 0..n {
                slow.advance(1, size);
            }
            prop_assert_eq!(fast, slow);
            let mut stepped = start;
            for _ in 0..n {
                stepped.step(size);
            }
            prop_assert_eq!(stepped, slow);
            prop_assert_eq!(fast.since(start, size), n);
            prop_assert!(fast.idx() < size);
            prop_assert_eq!(fast.linear(size), (start.linear(size) + n as u32) % (2 * size as u32));
        }
    }

    #[test]
    fn wrap_flips_exactly_at_the_end() {
        let mut p = RingPos::START;
        p.advance(999, 1000);
        assert_eq!(p, RingPos::new(999, true));
        p.advance(1, 1000);
        assert_eq!(p, RingPos::new(0, false));
        assert_eq!(p.off_wrap(), 0);
        p.advance(1000, 1000);
        assert_eq!(p.off_wrap(), 0x8000);
    }

    #[test]
    fn flags_follow_the_wrap_counter() {
        // 2.8.1: available = AVAIL equal to the wrap counter and USED not; used = both equal.
        let (one, zero) = (RingPos::new(3, true), RingPos::new(3, false));
        assert_eq!((one.avail_flags(), one.used_flags()), (DESC_F_AVAIL, DESC_F_AVAIL | DESC_F_USED));
        assert_eq!((zero.avail_flags(), zero.used_flags()), (DESC_F_USED, 0));
        let mut p = RingPos::new(3, true);
        p.step(4);
        assert_eq!((p, p.avail_flags()), (RingPos::new(0, false), DESC_F_USED));
    }
}
