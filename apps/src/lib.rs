//! Code the sample programs share (the `l2fwd`, `fwd` and `pktgen` binaries of this package).
//!
//! - [`options`]: [`layered`](options::layered), one options struct for the command line and
//!   the TOML file, the command line's values over the file's.
//! - [`report`]: the rate arithmetic behind the statistics lines, JSON lines, and the logging
//!   set-up.
//! - [`tsc`]: the time-stamp counter (cycle counts, latency stamps) and a prefetch hint.
//!
//! Bring-up (device strings, the port set), the polling threads and the stop signal come from
//! the library: [`virtio_pmd::setup`], [`virtio_pmd::lcore`].
#![deny(unsafe_code)]

pub mod options;
pub mod report;
pub mod tsc;
