//! What pktgen prints: the live line once a second and the summary at the end, each as a human
//! line or, with `--json`, as one JSON object per line (`"kind": "live"` / `"kind": "summary"`).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use virtio_pmd::net::PortStats;

use crate::track::Counts;

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Frames measured.
    pub count: u64,
    /// Smallest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// The percentiles of `h` (TSC ticks at `tsc_hz`); all zero when it is empty.
    pub fn of(h: &Histogram<u64>, tsc_hz: f64) -> Latency {
        if h.is_empty() || tsc_hz <= 0.0 {
            return Latency::default();
        }
        let us = |ticks: u64| ticks as f64 / tsc_hz * 1e6;
        Latency {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / tsc_hz * 1e6,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// The live line: totals so far and the latency of the last interval.
#[derive(Clone, Debug, Serialize)]
pub struct Live {
    kind: &'static str,
    /// Seconds since sending began.
    pub seconds: f64,
    /// Frames sent so far.
    pub sent: u64,
    /// Frames received so far.
    pub received: u64,
    /// Distinct frames of ours received so far.
    pub unique: u64,
    /// Late (reordered) frames so far.
    pub late: u64,
    /// Duplicates so far.
    pub duplicates: u64,
    /// Latency over the last interval.
    pub latency: Latency,
}

impl Live {
    /// The counters at `seconds`, and the latency of `interval` (TSC ticks at `tsc_hz`).
    pub fn new(
        seconds: Duration,
        sent: u64,
        received: u64,
        counts: Counts,
        interval: &Histogram<u64>,
        tsc_hz: f64,
    ) -> Live {
        Live {
            kind: "live",
            seconds: seconds.as_secs_f64(),
            sent,
            received,
            unique: counts.unique,
            late: counts.late,
            duplicates: counts.duplicates,
            latency: Latency::of(interval, tsc_hz),
        }
    }

    /// The human form.
    pub fn line(&self) -> String {
        format!(
            "[{:6.1}s] sent {} received {} (in flight or lost {}) late {} duplicates {} | last second: \
             latency p50 {:.2} us p99 {:.2} us max {:.2} us over {} frames",
            self.seconds,
            self.sent,
            self.received,
            self.sent.saturating_sub(self.unique),
            self.late,
            self.duplicates,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.max_us,
            self.latency.count,
        )
    }
}

/// The end-of-run summary (read back by `--overlay`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    kind: String,
    /// The port, as given.
    pub port: String,
    /// Ring layout used.
    pub ring: String,
    /// Queue pairs used.
    pub queues: u16,
    /// Flows.
    pub flows: usize,
    /// Frame sizes, in turn.
    pub sizes: Vec<usize>,
    /// The rate asked for (frames per second); `null`: as fast as possible.
    pub rate_pps: Option<f64>,
    /// Sending time, seconds.
    pub seconds: f64,
    /// Frames the transmit queues took.
    pub sent: u64,
    /// Frames received, all of them.
    pub received: u64,
    /// Distinct frames of ours received.
    pub unique: u64,
    /// Frames sent and never received (sent - unique).
    pub lost: u64,
    /// Frames that arrived after a higher-numbered frame of their flow.
    pub late: u64,
    /// Extra copies received.
    pub duplicates: u64,
    /// Frames received that were not ours.
    pub foreign: u64,
    /// Sent frames per second over the sending time, millions.
    pub tx_mpps: f64,
    /// Received frames per second over the sending time, millions.
    pub rx_mpps: f64,
    /// Passes in which a full transmit ring refused frames.
    pub tx_full_polls: u64,
    /// Bursts the pool could not fill.
    pub alloc_failures: u64,
    /// Frames left in the transmit rings.
    pub tx_inflight: u64,
    /// Frames each transmit queue sent, by queue pair (the port's counters).
    #[serde(default)]
    pub queue_sent: Vec<u64>,
    /// Frames each receive queue received, by queue pair (the port's counters).
    #[serde(default)]
    pub queue_received: Vec<u64>,
    /// Latency of every frame of ours received.
    pub latency: Latency,
    /// TSC ticks per second.
    pub tsc_hz: f64,
    /// Mbufs not back in the pool at the end (0 in a clean run).
    pub pool_in_use: u32,
    /// The plot written, if any.
    pub plot: Option<String>,
    /// The latency percentile curve: (quantile, microseconds) points, quantiles rising.
    pub curve: Vec<[f64; 2]>,
}

/// What goes into the summary besides the run's outcome.
pub struct Setup {
    /// The port, as given.
    pub port: String,
    /// Ring layout used.
    pub ring: String,
    /// Queue pairs used.
    pub queues: u16,
    /// Frame sizes.
    pub sizes: Vec<usize>,
    /// Flows.
    pub flows: usize,
    /// Requested rate.
    pub rate_pps: Option<f64>,
    /// TSC ticks per second.
    pub tsc_hz: f64,
    /// The port's counters at the end.
    pub stats: PortStats,
}

impl Summary {
    /// The summary of a run.
    pub fn new(
        setup: Setup,
        o: &crate::engine::Outcome,
        pool_in_use: u32,
        plot: Option<String>,
        curve: Vec<[f64; 2]>,
    ) -> Summary {
        let secs = o.sending.as_secs_f64();
        let mpps = |n: u64| if secs > 0.0 { n as f64 / secs / 1e6 } else { 0.0 };
        Summary {
            kind: "summary".into(),
            port: setup.port,
            ring: setup.ring,
            queues: setup.queues,
            flows: setup.flows,
            sizes: setup.sizes,
            rate_pps: setup.rate_pps,
            seconds: secs,
            sent: o.sent,
            received: o.received,
            unique: o.counts.unique,
            lost: o.sent.saturating_sub(o.counts.unique),
            late: o.counts.late,
            duplicates: o.counts.duplicates,
            foreign: o.counts.foreign,
            tx_mpps: mpps(o.sent),
            rx_mpps: mpps(o.received),
            tx_full_polls: o.tx_full_polls,
            alloc_failures: o.alloc_failures,
            tx_inflight: o.tx_inflight,
            queue_sent: setup.stats.tx_queues.iter().map(|q| q.packets).collect(),
            queue_received: setup.stats.rx_queues.iter().map(|q| q.packets).collect(),
            latency: Latency::of(&o.latency, setup.tsc_hz),
            tsc_hz: setup.tsc_hz,
            pool_in_use,
            plot,
            curve,
        }
    }

    /// The human form (several lines).
    pub fn text(&self) -> String {
        let l = &self.latency;
        format!(
            "sent {} received {} (unique {}) lost {} late {} duplicates {} foreign {} | tx {:.3} Mpps rx {:.3} Mpps \
             over {:.3} s | tx ring full in {} passes, {} allocation failures, {} left in flight\n\
             per queue sent {:?} received {:?}\n\
             latency (us) over {} frames: min {:.2} mean {:.2} p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}\n\
             pool: {} mbufs in use{}",
            self.sent,
            self.received,
            self.unique,
            self.lost,
            self.late,
            self.duplicates,
            self.foreign,
            self.tx_mpps,
            self.rx_mpps,
            self.seconds,
            self.tx_full_polls,
            self.alloc_failures,
            self.tx_inflight,
            self.queue_sent,
            self.queue_received,
            l.count,
            l.min_us,
            l.mean_us,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            self.pool_in_use,
            self.plot.as_ref().map(|p| format!("\nplot: {p}")).unwrap_or_default(),
        )
    }
}
