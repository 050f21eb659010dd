//! The generator thread: sends stamped frames on every queue pair of the port, at a TSC-paced
//! rate or as fast as the queues take them, and receives what comes back on the same queues.
//!
//! Pacing: frame `k` of the run is due at `start + k * cycles_per_frame`; each pass generates
//! the frames already due (at most a burst per queue) and stamps each with its due time, so that
//! a frame that waits in pktgen (the ring was full, the loop was late) counts that wait in its
//! latency (no coordinated omission). Unpaced, a frame is stamped when it is written.
//!
//! Paced, frame `k` goes out on queue pair `k mod Q` (of `Q`), so that every pair carries its
//! share of the rate; queue pair `q` carries the flows `f ≡ q (mod Q)`, in turn; frame sizes follow the
//! list given, frame after frame. The loop allocates nothing, takes no lock and makes no
//! system call per frame: burst vectors, per-flow state and histograms exist before it starts;
//! the live line, once per second, is the only output while it runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use virtio_pmd::mbuf::{free_bulk, Mbuf, Mempool};
use virtio_pmd::net::{RxQueue, TxQueue};
use virtio_pmd_apps::tsc;

use crate::frame::{self, Flows};
use crate::report::Live;
use crate::track::{Counts, Tracker};

/// How long the end of a run waits for frames still on their way back, and for the transmit
/// rings to empty.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// What the generator is told.
pub struct Params {
    /// Frames per burst, per queue.
    pub burst: usize,
    /// Frames per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// How long to send.
    pub duration: Duration,
    /// Frame sizes, used in turn.
    pub sizes: Vec<usize>,
    /// The flows' headers.
    pub flows: Flows,
    /// Where frames come from.
    pub pool: Mempool,
    /// TSC ticks per second.
    pub tsc_hz: f64,
}

/// What a run measured.
pub struct Outcome {
    /// Frames the transmit queues took.
    pub sent: u64,
    /// Frames received (pktgen's or not, duplicates included).
    pub received: u64,
    /// Arrival counts.
    pub counts: Counts,
    /// Bursts the pool could not fill.
    pub alloc_failures: u64,
    /// Passes in which a full transmit ring refused frames (kept and offered again next pass).
    pub tx_full_polls: u64,
    /// Frames still in the transmit rings at the end.
    pub tx_inflight: u64,
    /// Sending time.
    pub sending: Duration,
    /// Latency of every frame of ours received, in TSC ticks.
    pub latency: Histogram<u64>,
}

/// A latency histogram in TSC ticks: 1 tick to 2^42 (over 20 minutes at 4 GHz), 3 digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 42, 3).expect("valid histogram bounds")
}

/// Per queue pair: the queues, the frames written but not yet taken, the next flow.
struct Lane {
    rx: RxQueue,
    tx: TxQueue,
    pending: Vec<Mbuf>,
    /// Index of the next flow among this lane's flows (`lane + k * lanes`).
    next_flow: usize,
    /// This lane's first flow and the flow stride.
    first_flow: usize,
    /// Frames written on this lane.
    written: u64,
}

/// Everything the polling loop touches.
struct State<'a> {
    params: &'a Params,
    lanes: Vec<Lane>,
    rx_burst: Vec<Mbuf>,
    next_seq: Vec<u64>,
    frames_written: u64,
    sent: u64,
    received: u64,
    alloc_failures: u64,
    tx_full_polls: u64,
    tracker: Tracker,
    /// Latency since the last live line (added to `total` at each line).
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

impl State<'_> {
    /// Writes up to `want` new frames on lane `l`, stamped `stamp(k)` for the k-th of them.
    #[inline(always)]
    fn generate(&mut self, l: usize, want: usize, stamp: impl Fn(u64) -> u64) {
        let lanes = self.lanes.len();
        let lane = &mut self.lanes[l];
        let have = lane.pending.len();
        if !self.params.pool.alloc_bulk(&mut lane.pending, want) {
            self.alloc_failures += 1;
            return;
        }
        let flows = self.params.flows.count();
        let sizes = &self.params.sizes;
        for (k, m) in lane.pending[have..].iter_mut().enumerate() {
            let mut flow = lane.first_flow + lane.next_flow * lanes;
            if flow >= flows {
                (lane.next_flow, flow) = (0, lane.first_flow);
            }
            lane.next_flow += 1;
            let size = sizes[(self.frames_written % sizes.len() as u64) as usize];
            if let Some(bytes) = m.append(size) {
                self.params.flows.write(bytes, flow, self.next_seq[flow], stamp(k as u64));
            }
            self.next_seq[flow] += 1;
            self.frames_written += 1;
        }
        lane.written += (lane.pending.len() - have) as u64;
    }

    /// Sends what lane `l` has pending.
    #[inline(always)]
    fn transmit(&mut self, l: usize) {
        let lane = &mut self.lanes[l];
        if lane.pending.is_empty() {
            return;
        }
        let before = lane.pending.len();
        let n = lane.tx.tx_burst(&mut lane.pending);
        self.sent += n as u64;
        if n < before {
            self.tx_full_polls += 1;
        }
    }

    /// Receives a burst on lane `l` and records each frame.
    #[inline(always)]
    fn receive(&mut self, l: usize) -> usize {
        let n = self.lanes[l].rx.rx_burst(&mut self.rx_burst);
        if n == 0 {
            return 0;
        }
        let now = tsc::now();
        for m in &self.rx_burst {
            match frame::read(m.data()) {
                Some(stamp) => {
                    if self.tracker.observe(stamp.flow, stamp.seq).is_some() {
                        self.interval.saturating_record(now.wrapping_sub(stamp.tsc).max(1));
                    }
                }
                None => self.tracker.foreign(),
            }
        }
        free_bulk(&mut self.rx_burst);
        self.received += n as u64;
        n
    }

    /// The counters now, for the live line; moves the interval histogram into the total.
    fn live(&mut self, elapsed: Duration) -> Live {
        let live =
            Live::new(elapsed, self.sent, self.received, self.tracker.counts, &self.interval, self.params.tsc_hz);
        let _ = self.total.add(&self.interval);
        self.interval.reset();
        live
    }
}

/// Runs the generator on `queues` until the duration is over or `stop` is set, then waits for
/// the frames still out and for the transmit rings to empty. `on_live` gets the counters once a
/// second.
pub fn run(
    queues: Vec<(RxQueue, TxQueue)>,
    params: &Params,
    stop: &AtomicBool,
    mut on_live: impl FnMut(&Live),
) -> Outcome {
    let lanes = queues
        .into_iter()
        .enumerate()
        .map(|(l, (rx, tx))| Lane {
            rx,
            tx,
            pending: Vec::with_capacity(params.burst),
            next_flow: 0,
            first_flow: l,
            written: 0,
        })
        .collect();
    let mut s = State {
        params,
        lanes,
        rx_burst: Vec::with_capacity(params.burst),
        next_seq: vec![0; params.flows.count()],
        frames_written: 0,
        sent: 0,
        received: 0,
        alloc_failures: 0,
        tx_full_polls: 0,
        tracker: Tracker::new(params.flows.count()),
        interval: histogram(),
        total: histogram(),
    };
    let hz = params.tsc_hz;
    let cycles_per_frame = params.rate.map(|r| hz / r);
    let started = Instant::now();
    let start = tsc::now();
    let end = start + (params.duration.as_secs_f64() * hz) as u64;
    let mut next_live = start + hz as u64;
    let lane_count = s.lanes.len();
    loop {
        let now = tsc::now();
        if now >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        for l in 0..lane_count {
            let room = params.burst - s.lanes[l].pending.len();
            match cycles_per_frame {
                Some(c) => {
                    // Frame k is due at start + k * c: frames 0 ..= (now - start) / c are; this
                    // lane's are those with k mod lanes = l, its j-th frame k = j * lanes + l.
                    let due = ((now - start) as f64 / c) as u64 + 1;
                    let lanes = lane_count as u64;
                    let due_here = (due + lanes - 1 - l as u64) / lanes;
                    let first = s.lanes[l].written;
                    let want = due_here.saturating_sub(first).min(room as u64) as usize;
                    if want > 0 {
                        s.generate(l, want, |k| start + (((first + k) * lanes + l as u64) as f64 * c) as u64);
                    }
                }
                None if room > 0 => s.generate(l, room, |_| now),
                None => {}
            }
            s.transmit(l);
            s.receive(l);
        }
        if now >= next_live {
            next_live += hz as u64;
            on_live(&s.live(started.elapsed()));
        }
    }
    let sending = started.elapsed();
    // Frames never taken are not sent: free them, then wait for the rest to come back.
    for lane in &mut s.lanes {
        free_bulk(&mut lane.pending);
    }
    let drain = Instant::now();
    while s.tracker.counts.unique < s.sent && drain.elapsed() < DRAIN_LIMIT {
        for l in 0..lane_count {
            s.receive(l);
            s.lanes[l].tx.reclaim();
        }
    }
    while s.lanes.iter().any(|l| l.tx.in_flight() > 0) && drain.elapsed() < 2 * DRAIN_LIMIT {
        s.lanes.iter_mut().for_each(|l| l.tx.reclaim());
        std::hint::spin_loop();
    }
    let _ = s.total.add(&s.interval);
    Outcome {
        sent: s.sent,
        received: s.received,
        counts: s.tracker.counts,
        alloc_failures: s.alloc_failures,
        tx_full_polls: s.tx_full_polls,
        tx_inflight: s.lanes.iter().map(|l| u64::from(l.tx.in_flight())).sum(),
        sending,
        latency: s.total,
    }
}
