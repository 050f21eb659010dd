//! The time-stamp counter and a prefetch hint: the two CPU instructions the polling loops of
//! `fwd` and `pktgen` use directly. Both are `unsafe` intrinsics in this Rust version; this module
//! is the only place that calls them, and neither touches memory the program could observe.
#![allow(unsafe_code)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("fwd and pktgen read the x86-64 time-stamp counter (rdtsc) for cycle accounting and latency");

use core::arch::x86_64::{_mm_prefetch, _rdtsc, _MM_HINT_T0};
use std::time::{Duration, Instant};

/// The time-stamp counter (`rdtsc`), as testpmd's `rte_rdtsc()` reads it for
/// `--record-core-cycles`.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: `rdtsc` reads a counter register; it has no memory operands and no preconditions
    // (it is available on every x86-64 CPU).
    unsafe { _rdtsc() }
}

/// Hints the CPU to bring the cache line at `ptr` in; never faults, whatever `ptr` is.
#[inline(always)]
pub fn prefetch(ptr: *const u8) {
    // SAFETY: `prefetcht0` is a hint: it never faults, even on an invalid address, and changes
    // no architectural state; SSE, which it belongs to, is part of the x86-64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.cast()) }
}

/// A pair of (counter, clock) readings, to turn counter ticks into time.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    tsc: u64,
    at: Instant,
}

impl Mark {
    /// Both readings now.
    pub fn now() -> Mark {
        Mark { tsc: now(), at: Instant::now() }
    }

    /// Counter ticks per second between `self` and `later` (0 when no time passed).
    pub fn hz_until(&self, later: &Mark) -> f64 {
        let elapsed = later.at.duration_since(self.at);
        if elapsed < Duration::from_micros(100) {
            return 0.0;
        }
        later.tsc.wrapping_sub(self.tsc) as f64 / elapsed.as_secs_f64()
    }
}
