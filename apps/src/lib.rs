//! Code the sample programs share (the `l2fwd`, `fwd`, `pktgen` and `vm-peer` binaries of this package).
//!
//! - [`mac`]: the [`Mac`](mac::Mac) address type: parsing (`02:00:00:00:00:01`), printing, and
//!   the default addresses the programs use.
//! - [`options`]: the ring layout and huge page choices as written on the command line and in the
//!   TOML files, and their conversions into the library's [`RingChoice`](virtio_pmd::net::RingChoice)
//!   and [`HugePages`](virtio_pmd::mem::HugePages).
//! - [`signal`]: the SIGINT/SIGTERM handler and the stop flag it sets.
//! - [`report`]: the rate arithmetic behind the statistics lines, and the logging set-up.
//! - [`tsc`]: the time-stamp counter (cycle counts, latency stamps) and a prefetch hint.
#![deny(unsafe_code)]

pub mod mac;
pub mod options;
pub mod report;
pub mod signal;
pub mod tsc;
