//! Notification suppression arithmetic.
//!
//! Split rings: `vring_need_event` of "Used Buffer Notification Suppression" (2.7.10) /
//! "Available Buffer Notification Suppression" (2.7.7.1), wrap-safe in 16 bits.
//! Packed rings: "Event Suppression Structure Format" (2.8.10) with RING_EVENT_FLAGS_DESC: the
//! event fires when the descriptor at (offset, wrap counter) is among those just published.

use super::position::RingPos;

/// Split ring, EVENT_IDX: whether moving an index from `old` to `new` passed `event`, i.e.
/// whether `event` lies in `[old, new)` modulo 2^16.
#[inline(always)]
pub const fn split_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Packed ring, RING_EVENT_FLAGS_DESC: whether the descriptor at `off_wrap` (bit 15: wrap
/// counter) is in `[old, new)`, the positions just made available (or used). Requires the move
/// from `old` to `new` to span at most `size` slots.
#[inline(always)]
pub fn packed_need_event(off_wrap: u16, old: RingPos, new: RingPos, size: u16) -> bool {
    let event = RingPos::new((off_wrap & 0x7fff) % size.max(1), off_wrap & 0x8000 != 0);
    let laps = 2 * size as u32;
    let from_old = |p: RingPos| (p.linear(size) + laps - old.linear(size)) % laps;
    from_old(event) < from_old(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_matches_walking_the_indices(old: u16, step in 0u16..=32768, event: u16) {
            let new = old.wrapping_add(step);
            let walked = (0..step).any(|i| old.wrapping_add(i) == event);
            prop_assert_eq!(split_need_event(event, new, old), walked);
        }

        #[test]
        fn packed_matches_walking_the_ring(size in 1u16..=4096, old_idx: u16, old_wrap: bool,
                                           step in 0u16..=4096, ev_idx: u16, ev_wrap: bool) {
            let step = step % (size + 1);
            let old = RingPos::new(old_idx % size, old_wrap);
            let mut new = old;
            new.advance(step, size);
            let event = RingPos::new(ev_idx % size, ev_wrap);
            let mut walker = old;
            let mut walked = false;
            for _ in 0..step {
                walked |= walker == event;
                walker.advance(1, size);
            }
            prop_assert_eq!(packed_need_event(event.off_wrap(), old, new, size), walked);
        }
    }
}
