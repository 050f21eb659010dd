//! What the forwarders print: per-port counter snapshots, rates in Mpps, and the logging set-up
//! (tracing to stderr, so that stdout carries only the programs' own lines).

use std::time::Duration;

use virtio_pmd::net::PortStats;

/// Counters of one port at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Frames dropped: by the port (receive and transmit) and by the program (`app_drops`).
    pub dropped: u64,
    /// Receive and transmit errors.
    pub errors: u64,
    /// Receive buffer allocation failures.
    pub alloc_failures: u64,
    /// Notifications sent to the device (receive and transmit).
    pub kicks: u64,
}

impl Snapshot {
    /// The port's counters, with `app_drops` frames the program dropped on it added to its drops.
    pub fn of(stats: &PortStats, app_drops: u64) -> Snapshot {
        Snapshot {
            rx: stats.rx.packets,
            tx: stats.tx.packets,
            dropped: app_drops + stats.rx.drops + stats.tx.drops,
            errors: stats.rx.errors + stats.tx.errors,
            alloc_failures: stats.rx.alloc_failures,
            kicks: stats.rx.kicks + stats.tx.kicks,
        }
    }
}

/// `packets` over `over`, in millions per second (0 over no time).
pub fn mpps(packets: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        packets as f64 / over.as_secs_f64() / 1e6
    }
}

/// Sends tracing output to stderr, filtered by `RUST_LOG` or else by `default_filter`; `targets`
/// says whether each line names its module.
pub fn init_logging(default_filter: &str, targets: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_target(targets)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(mpps(3_000_000, Duration::from_secs(2)), 1.5);
        assert_eq!(mpps(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn a_fresh_port_snapshots_as_zeros_plus_the_programs_drops() {
        let s = Snapshot::of(&PortStats::default(), 7);
        assert_eq!(s, Snapshot { dropped: 7, ..Snapshot::default() });
    }
}
