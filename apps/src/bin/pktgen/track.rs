//! The receive side's bookkeeping: per flow, which sequence numbers came back, to tell frames in
//! order, late (reordered), duplicated and missing apart.
//!
//! Each flow keeps the next sequence number it expects (one past the highest seen) and a bitmap
//! of the [`WINDOW`] numbers below it. A frame at or above the expected number is in order (the
//! numbers it skips are a gap, possibly filled later by late frames); one below it is a duplicate
//! when its bit is set, late otherwise (its bit then gets set); one more than [`WINDOW`] below is
//! counted late (too old to tell from a duplicate). Loss is what was sent minus the distinct
//! frames received, so frames late but received are not lost.

/// Sequence numbers below the highest one seen whose arrival is remembered, per flow.
pub const WINDOW: u64 = 128;

/// One flow's state.
#[derive(Clone, Copy, Debug, Default)]
struct Flow {
    /// One past the highest sequence number seen.
    expect: u64,
    /// Bit `i`: sequence number `expect - 2 - i` was seen.
    seen: u128,
}

/// How a received frame relates to those before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next one expected, or after a gap of `skipped` numbers.
    InOrder {
        /// Sequence numbers skipped (0 for the expected one).
        skipped: u64,
    },
    /// Below numbers already seen, seen for the first time (or too old to tell).
    Late,
    /// Seen before.
    Duplicate,
}

/// Counts per kind of arrival over every flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames received that were not seen before.
    pub unique: u64,
    /// Frames that came after a higher-numbered frame of their flow.
    pub late: u64,
    /// Frames received more than once (the extra copies).
    pub duplicates: u64,
    /// Frames that are not pktgen's, or of a flow that was not sent.
    pub foreign: u64,
}

/// Arrival bookkeeping for every flow.
pub struct Tracker {
    flows: Vec<Flow>,
    /// The running counts.
    pub counts: Counts,
}

impl Tracker {
    /// State for `flows` flows, nothing received yet.
    pub fn new(flows: usize) -> Tracker {
        Tracker { flows: vec![Flow::default(); flows], counts: Counts::default() }
    }

    /// Records frame `seq` of `flow`; `None` (counted foreign) for a flow that does not exist.
    #[inline(always)]
    pub fn observe(&mut self, flow: u16, seq: u64) -> Option<Arrival> {
        let Some(f) = self.flows.get_mut(usize::from(flow)) else {
            self.counts.foreign += 1;
            return None;
        };
        // Bit `i` of `seen`: `expect - 2 - i` was seen (`expect - 1`, the highest, always was).
        let arrival = if seq >= f.expect {
            let skipped = seq - f.expect;
            // The window moves up by `skipped + 1`; the previous highest lands on bit `skipped`.
            f.seen = f.seen.checked_shl((skipped + 1).min(128) as u32).unwrap_or(0);
            if f.expect > 0 && skipped < WINDOW {
                f.seen |= 1 << skipped;
            }
            f.expect = seq + 1;
            Arrival::InOrder { skipped }
        } else {
            match f.expect - 1 - seq {
                0 => Arrival::Duplicate,
                below if below > WINDOW => Arrival::Late,
                below if f.seen & (1 << (below - 1)) != 0 => Arrival::Duplicate,
                below => {
                    f.seen |= 1 << (below - 1);
                    Arrival::Late
                }
            }
        };
        match arrival {
            Arrival::InOrder { .. } => self.counts.unique += 1,
            Arrival::Late => {
                self.counts.unique += 1;
                self.counts.late += 1;
            }
            Arrival::Duplicate => self.counts.duplicates += 1,
        }
        Some(arrival)
    }

    /// A frame that is not pktgen's.
    #[inline(always)]
    pub fn foreign(&mut self) {
        self.counts.foreign += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gaps_late_and_duplicates() {
        let mut t = Tracker::new(2);
        assert_eq!(t.observe(0, 0), Some(Arrival::InOrder { skipped: 0 }));
        assert_eq!(t.observe(0, 1), Some(Arrival::InOrder { skipped: 0 }));
        assert_eq!(t.observe(0, 1), Some(Arrival::Duplicate));
        assert_eq!(t.observe(0, 0), Some(Arrival::Duplicate));
        assert_eq!(t.observe(0, 5), Some(Arrival::InOrder { skipped: 3 }));
        assert_eq!(t.observe(0, 3), Some(Arrival::Late));
        assert_eq!(t.observe(0, 3), Some(Arrival::Duplicate));
        assert_eq!(t.observe(0, 2), Some(Arrival::Late));
        assert_eq!(t.observe(0, 1), Some(Arrival::Duplicate));
        // Flows are independent.
        assert_eq!(t.observe(1, 0), Some(Arrival::InOrder { skipped: 0 }));
        assert_eq!(t.observe(2, 0), None);
        assert_eq!(t.counts, Counts { unique: 6, late: 2, duplicates: 4, foreign: 1 });
    }

    #[test]
    fn a_jump_beyond_the_window_forgets_what_came_before() {
        let mut t = Tracker::new(1);
        for seq in 0..10 {
            t.observe(0, seq);
        }
        assert_eq!(t.observe(0, 10 + 2 * WINDOW), Some(Arrival::InOrder { skipped: 2 * WINDOW }));
        // Too old to tell: counted late, not duplicate.
        assert_eq!(t.observe(0, 5), Some(Arrival::Late));
        // Just inside the window: remembered once seen.
        let edge = 10 + 2 * WINDOW - WINDOW;
        assert_eq!(t.observe(0, edge), Some(Arrival::Late));
        assert_eq!(t.observe(0, edge), Some(Arrival::Duplicate));
    }

    #[test]
    fn the_window_edge_is_exact() {
        let mut t = Tracker::new(1);
        t.observe(0, 0);
        t.observe(0, WINDOW);
        // 0 is WINDOW below the highest (WINDOW): still remembered.
        assert_eq!(t.observe(0, 0), Some(Arrival::Duplicate));
        t.observe(0, WINDOW + 1);
        // Now it is WINDOW + 1 below: forgotten.
        assert_eq!(t.observe(0, 0), Some(Arrival::Late));
    }
}
