//! The forwarding loops of the lcores (the library's [`virtio_pmd::lcore`]): one lcore per group
//! of queue sets, each owning its queues outright.
//!
//! A *stream* is what testpmd calls a forwarding stream: receive from one queue, (maybe) rewrite,
//! transmit on another. Thread `t` owns queue pair `q` of every port for each queue set
//! `q ≡ t (mod threads)`, so every queue has exactly one polling thread and no queue is shared.
//!
//! The polling loops allocate nothing, take no lock and make no system call: the burst vectors,
//! per-stream state, defect log, frame dump and latency histogram are all allocated before the
//! loop starts, and frames that cannot be sent go back with [`free_bulk`]. (The mempool creates
//! its per-thread cache on the first burst; a kick, when the device asks for one, is an eventfd
//! write or an MMIO store inside the library.)
//!
//! Busy cycles are counted exactly as testpmd's `--record-core-cycles`: the time-stamp counter
//! is read before each receive burst (before each allocation in txonly), and the cycles of the
//! iterations that moved at least one frame are added up; the summary divides them by the frames
//! received (by the frames sent in txonly).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use virtio_pmd::lcore::Lcore;
use virtio_pmd::mbuf::{free_bulk, Mbuf, Mempool};
use virtio_pmd::net::{RxQueue, TxQueue};

use crate::config::{EchoExpect, Mode, Verify, MAX_STREAMS};
use crate::frame::{Defect, Order, Sequences, Template, Verifier};
use virtio_pmd_apps::tsc;

/// How long the stop phase waits for frames still in flight (transmit completions, echo
/// replies, receive rings to go quiet).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// rxonly's stop phase ends once the receive queues were empty this long.
const RX_QUIET: Duration = Duration::from_millis(20);
/// Defects kept, with the stream they came from, for the report.
const DEFECTS_KEPT: usize = 8;
/// Bytes of each dumped frame.
pub const DUMP_BYTES: usize = 64;

/// One forwarding stream of a thread.
#[derive(Clone, Debug)]
pub struct Stream {
    /// Index of the receive queue in [`Work::rx`].
    pub rx: usize,
    /// Index of the transmit queue in [`Work::tx`].
    pub tx: usize,
    /// Transmit queue frames go out of, numbered over every port's queues (the index of its
    /// drop counter in [`Live::drops`]).
    pub tx_slot: usize,
    /// Stream id carried in generated frames.
    pub id: u16,
    /// mac mode: the destination and source MAC written into every frame.
    pub l2: [u8; 12],
    /// txonly, echo: the frames this stream generates.
    pub template: Option<Template>,
}

/// What one lcore owns.
pub struct Work {
    /// Receive queues.
    pub rx: Vec<RxQueue>,
    /// Transmit queues.
    pub tx: Vec<TxQueue>,
    /// Streams over them.
    pub streams: Vec<Stream>,
}

/// Settings every thread reads.
#[derive(Clone, Debug)]
pub struct Params {
    /// Forwarding mode.
    pub mode: Mode,
    /// Frames per burst.
    pub burst: usize,
    /// rxonly frame check.
    pub verify: Option<Verify>,
    /// Expected frame length.
    pub verify_len: Option<usize>,
    /// echo: frames in flight per stream.
    pub echo_window: usize,
    /// echo: the MAC rewrite expected from the peer.
    pub echo_expect: EchoExpect,
    /// Frames to dump.
    pub dump: usize,
    /// Transmit queues of every port (for the per-queue drop counters).
    pub tx_slots: usize,
    /// Largest frame (the room of the buffer a chained frame is copied into to be checked).
    pub max_pkt_len: usize,
    /// The pool generated frames come from.
    pub pool: Mempool,
}

/// Counters a thread publishes while it runs (it alone writes them).
#[derive(Debug)]
pub struct Live {
    /// Frames dropped by this thread because a transmit queue did not take them, per transmit
    /// queue ([`Stream::tx_slot`]).
    pub drops: Vec<AtomicU64>,
}

impl Live {
    /// Zeroed counters for `tx_slots` transmit queues.
    pub fn new(tx_slots: usize) -> Live {
        Live { drops: (0..tx_slots).map(|_| AtomicU64::new(0)).collect() }
    }
}

/// The bytes of `m`: its data when it is one segment, else its segments copied into `scratch`
/// (allocated before the loop with room for the largest frame, so this does not allocate).
#[inline(always)]
fn contiguous<'a>(m: &'a Mbuf, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if m.is_contiguous() {
        return m.data();
    }
    scratch.clear();
    m.segments().for_each(|segment| scratch.extend_from_slice(segment));
    scratch
}

/// Adds `n` to a counter only this thread writes (a plain load and store, no locked add).
#[inline(always)]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// What a thread did, reported when it ends.
#[derive(Debug)]
pub struct Totals {
    /// Frames received.
    pub rx: u64,
    /// Frames sent (taken by a transmit queue).
    pub tx: u64,
    /// Frames dropped because a transmit queue was full.
    pub drops: u64,
    /// Generator bursts the pool could not serve.
    pub alloc_failures: u64,
    /// Busy cycles (testpmd's `--record-core-cycles`).
    pub busy_cycles: u64,
    /// Poll iterations that moved at least one frame (the ones whose cycles are busy cycles).
    pub busy_polls: u64,
    /// Frames checked and found correct.
    pub verified: u64,
    /// Frames found damaged.
    pub bad: u64,
    /// Frames missing from per-stream sequences (rxonly --verify fwd).
    pub gaps: u64,
    /// Frames that arrived out of order or twice.
    pub reorders: u64,
    /// echo: frames sent and never received back.
    pub lost: u64,
    /// Frames still in transmit rings after the stop phase.
    pub tx_inflight: u64,
    /// The first defects found, with their stream (rx queue index for DPDK frames).
    pub defects: Vec<(usize, Defect)>,
    /// The first frames received: (rx queue index, length, first bytes).
    pub dumps: Vec<(usize, usize, [u8; DUMP_BYTES])>,
    /// echo: round trip times, in TSC cycles.
    pub rtt: Histogram<u64>,
    /// When the thread stopped polling (after its stop phase).
    pub stopped: Option<Instant>,
}

impl Totals {
    fn new(params: &Params) -> Totals {
        Totals {
            rx: 0,
            tx: 0,
            drops: 0,
            alloc_failures: 0,
            busy_cycles: 0,
            busy_polls: 0,
            verified: 0,
            bad: 0,
            gaps: 0,
            reorders: 0,
            lost: 0,
            tx_inflight: 0,
            defects: Vec::with_capacity(DEFECTS_KEPT),
            dumps: Vec::with_capacity(params.dump),
            // 1 cycle to 2^42 cycles (over 20 minutes), 3 significant digits.
            rtt: Histogram::new_with_bounds(1, 1 << 42, 3).unwrap_or_else(|_| Histogram::new(3).unwrap()),
            stopped: None,
        }
    }

    /// Adds another thread's totals.
    pub fn merge(&mut self, other: &Totals) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.drops += other.drops;
        self.alloc_failures += other.alloc_failures;
        self.busy_cycles += other.busy_cycles;
        self.busy_polls += other.busy_polls;
        self.verified += other.verified;
        self.bad += other.bad;
        self.gaps += other.gaps;
        self.reorders += other.reorders;
        self.lost += other.lost;
        self.tx_inflight += other.tx_inflight;
        self.defects.extend(other.defects.iter().copied());
        self.dumps.extend(other.dumps.iter().copied());
        let _ = self.rtt.add(&other.rtt);
        self.stopped = self.stopped.max(other.stopped);
    }

    #[inline(always)]
    fn defect(&mut self, stream: usize, defect: Defect) {
        self.bad += 1;
        if self.defects.len() < DEFECTS_KEPT {
            self.defects.push((stream, defect));
        }
    }

    #[inline(always)]
    fn dump(&mut self, stream: usize, frame: &[u8]) {
        if self.dumps.len() < self.dumps.capacity() {
            let mut bytes = [0u8; DUMP_BYTES];
            let n = frame.len().min(DUMP_BYTES);
            bytes[..n].copy_from_slice(&frame[..n]);
            self.dumps.push((stream, frame.len(), bytes));
        }
    }
}

/// Runs one lcore: polls until a stop, drains, waits for every other lcore (so that no device is
/// reset while another lcore still drains it), then drops its queues (which resets their devices
/// and returns every buffer) and reports. A panic stops every lcore (the library's `Lcore` sees
/// to it) and drops the queues while unwinding.
pub fn run(lcore: &mut Lcore, mut work: Work, params: &Params, live: &Live) -> Totals {
    let stop = lcore.stop_flag();
    let mut totals = Totals::new(params);
    match params.mode {
        Mode::Io => forward(&mut work, params, live, stop, &mut totals, |_, _| {}),
        Mode::Mac => forward(&mut work, params, live, stop, &mut totals, rewrite_mac),
        Mode::Macswap => forward(&mut work, params, live, stop, &mut totals, swap_mac),
        Mode::Rxonly => rxonly(&mut work, params, stop, &mut totals),
        Mode::Txonly => txonly(&mut work, params, stop, &mut totals),
        Mode::Echo => echo(&mut work, params, stop, &mut totals),
    }
    drain_tx(&mut work.tx);
    totals.stopped = Some(Instant::now());
    totals.tx_inflight = work.tx.iter().map(|q| u64::from(q.in_flight())).sum();
    lcore.wait_for_all();
    drop(work);
    totals
}

/// Reclaims transmit completions until every ring is empty, or for at most [`DRAIN_LIMIT`].
fn drain_tx(queues: &mut [TxQueue]) {
    let begin = Instant::now();
    loop {
        queues.iter_mut().for_each(TxQueue::reclaim);
        if queues.iter().all(|q| q.in_flight() == 0) || begin.elapsed() > DRAIN_LIMIT {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Frames a transmit queue did not take: freed in bulk and counted.
#[inline(always)]
fn drop_rest(pkts: &mut Vec<Mbuf>, counter: &AtomicU64, drops: &mut u64) {
    if !pkts.is_empty() {
        let n = pkts.len() as u64;
        *drops += n;
        bump(counter, n);
        free_bulk(pkts);
    }
}

/// io, mac, macswap: receive a burst, rewrite it, send it on the peer's queue.
#[inline(never)]
fn forward(
    work: &mut Work,
    params: &Params,
    live: &Live,
    stop: &AtomicBool,
    totals: &mut Totals,
    rewrite: impl Fn(&Stream, &mut [Mbuf]),
) {
    let Work { rx, tx, streams, .. } = work;
    let mut pkts: Vec<Mbuf> = Vec::with_capacity(params.burst);
    let (mut received, mut sent, mut drops, mut cycles, mut polls) = (0u64, 0u64, 0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        for s in streams.iter() {
            let start = tsc::now();
            let n = rx[s.rx].rx_burst(&mut pkts);
            if n == 0 {
                continue;
            }
            rewrite(s, &mut pkts);
            sent += tx[s.tx].tx_burst(&mut pkts) as u64;
            drop_rest(&mut pkts, &live.drops[s.tx_slot], &mut drops);
            received += n as u64;
            polls += 1;
            cycles += tsc::now().wrapping_sub(start);
        }
    }
    totals.rx += received;
    totals.tx += sent;
    totals.drops += drops;
    totals.busy_cycles += cycles;
    totals.busy_polls += polls;
}

/// testpmd's mac mode: destination = the output port's peer, source = the output port.
#[inline(always)]
fn rewrite_mac(s: &Stream, pkts: &mut [Mbuf]) {
    for i in 0..pkts.len() {
        if let Some(next) = pkts.get(i + 1) {
            tsc::prefetch(next.data().as_ptr());
        }
        if let Some(l2) = pkts[i].data_mut().get_mut(..12) {
            l2.copy_from_slice(&s.l2);
        }
    }
}

/// testpmd's macswap mode.
#[inline(always)]
fn swap_mac(_: &Stream, pkts: &mut [Mbuf]) {
    for i in 0..pkts.len() {
        if let Some(next) = pkts.get(i + 1) {
            tsc::prefetch(next.data().as_ptr());
        }
        if let Some(l2) = pkts[i].data_mut().get_mut(..12) {
            let (dst, src) = l2.split_at_mut(6);
            dst.swap_with_slice(src);
        }
    }
}

/// The checks rxonly makes on every frame.
struct RxCheck {
    verify: Option<Verify>,
    verifier: Verifier,
    sequences: Sequences,
    /// Chained frames are copied here to be checked.
    scratch: Vec<u8>,
}

impl RxCheck {
    #[inline(always)]
    fn mbuf(&mut self, stream: usize, m: &Mbuf, totals: &mut Totals) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.frame(stream, contiguous(m, &mut scratch), totals);
        self.scratch = scratch;
    }

    #[inline(always)]
    fn frame(&mut self, stream: usize, frame: &[u8], totals: &mut Totals) {
        totals.dump(stream, frame);
        match self.verify {
            None => {}
            Some(Verify::DpdkTxonly) => match self.verifier.check_dpdk_txonly(frame) {
                Ok(()) => totals.verified += 1,
                Err(defect) => totals.defect(stream, defect),
            },
            Some(Verify::Fwd) => match self.verifier.check_ours(frame) {
                Ok((id, seq)) => match self.sequences.observe(id, seq) {
                    Some(order) => {
                        totals.verified += 1;
                        match order {
                            Order::Next => {}
                            Order::Gap(n) => totals.gaps += n,
                            Order::Old => totals.reorders += 1,
                        }
                    }
                    None => totals.defect(stream, Defect::Stream(id)),
                },
                Err(defect) => totals.defect(stream, defect),
            },
        }
    }
}

/// rxonly: receive, check (with --verify), free.
#[inline(never)]
fn rxonly(work: &mut Work, params: &Params, stop: &AtomicBool, totals: &mut Totals) {
    let Work { rx, streams, .. } = work;
    let mut pkts: Vec<Mbuf> = Vec::with_capacity(params.burst);
    let mut check = RxCheck {
        verify: params.verify,
        verifier: Verifier::new(params.verify_len),
        sequences: Sequences::new(MAX_STREAMS),
        scratch: Vec::with_capacity(params.max_pkt_len),
    };
    let inspect = params.verify.is_some() || params.dump > 0;
    let mut poll = |totals: &mut Totals| -> u64 {
        let mut moved = 0;
        for s in streams.iter() {
            let start = tsc::now();
            let n = rx[s.rx].rx_burst(&mut pkts);
            if n == 0 {
                continue;
            }
            if inspect {
                for m in &pkts {
                    check.mbuf(s.rx, m, totals);
                }
            }
            free_bulk(&mut pkts);
            moved += n as u64;
            totals.busy_polls += 1;
            totals.busy_cycles += tsc::now().wrapping_sub(start);
        }
        moved
    };
    while !stop.load(Ordering::Relaxed) {
        totals.rx += poll(totals);
    }
    // Whatever the peer sent before it stopped is in the rings: take it until they stay quiet.
    let (begin, mut quiet) = (Instant::now(), Instant::now());
    while quiet.elapsed() < RX_QUIET && begin.elapsed() < DRAIN_LIMIT {
        let n = poll(totals);
        if n > 0 {
            totals.rx += n;
            quiet = Instant::now();
        }
    }
}

/// Per-stream state of the generators.
struct Generator {
    /// Frames allocated and written, not yet taken by the transmit queue.
    pending: Vec<Mbuf>,
    /// Next sequence number to write.
    next_seq: u64,
    /// Frames taken by the transmit queue.
    sent: u64,
    /// echo: frames received back.
    received: u64,
    /// echo: sequence number expected next.
    expect: u64,
    /// echo: TSC when frame `seq` was written, at `seq % window` (empty for txonly).
    stamps: Vec<u64>,
    /// Frames larger than a buffer are written here, then copied into a chain of buffers
    /// (empty when a frame fits one buffer).
    scratch: Vec<u8>,
}

impl Generator {
    fn new(burst: usize, window: usize, template: Option<&Template>, pool: &Mempool) -> Generator {
        let len = template.map_or(0, Template::len);
        Generator {
            pending: Vec::with_capacity(burst),
            next_seq: 0,
            sent: 0,
            received: 0,
            expect: 0,
            stamps: vec![0; window],
            scratch: if len > pool.data_room() as usize { vec![0; len] } else { Vec::new() },
        }
    }

    /// Tops `pending` up with `want` new frames of `template`; false when the pool had fewer.
    #[inline(always)]
    fn generate(&mut self, pool: &Mempool, template: &Template, want: usize, now: u64) -> bool {
        let have = self.pending.len();
        if !pool.alloc_bulk(&mut self.pending, want) {
            return false;
        }
        let window = self.stamps.len() as u64;
        for at in have..self.pending.len() {
            let seq = self.next_seq;
            let m = &mut self.pending[at];
            if let Some(frame) = m.append(template.len()) {
                template.write(frame, seq);
            } else if !write_chain(m, pool, template, seq, &mut self.scratch) {
                // The pool ran dry: this frame and the rest of the burst go back unsent.
                self.pending.truncate(at);
                return false;
            }
            if window > 0 {
                self.stamps[(seq % window) as usize] = now;
            }
            self.next_seq += 1;
        }
        true
    }
}

/// Writes frame `seq` of `template`, larger than one buffer, into `head` and as many buffers
/// from `pool` as it takes, chained (through `scratch`, the frame's length); false when the pool
/// had too few (`head` then holds a partial frame, to be freed).
#[inline(never)]
fn write_chain(head: &mut Mbuf, pool: &Mempool, template: &Template, seq: u64, scratch: &mut [u8]) -> bool {
    template.write(scratch, seq);
    let first = head.tailroom().min(scratch.len());
    if let Some(bytes) = head.append(first) {
        bytes.copy_from_slice(&scratch[..first]);
    }
    for chunk in scratch[first..].chunks(pool.data_room() as usize) {
        let Some(mut segment) = pool.alloc() else { return false };
        if let Some(bytes) = segment.append(chunk.len()) {
            bytes.copy_from_slice(chunk);
        }
        if head.chain(segment).is_err() {
            return false;
        }
    }
    true
}

/// txonly: generate, send; frames the queue did not take are kept and sent first next time, so
/// that every stream's sequence stays gap-free.
#[inline(never)]
fn txonly(work: &mut Work, params: &Params, stop: &AtomicBool, totals: &mut Totals) {
    let Work { tx, streams, .. } = work;
    let mut gens: Vec<Generator> =
        streams.iter().map(|s| Generator::new(params.burst, 0, s.template.as_ref(), &params.pool)).collect();
    let (mut sent, mut cycles, mut failures, mut polls) = (0u64, 0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        for (s, g) in streams.iter().zip(gens.iter_mut()) {
            let Some(template) = &s.template else { continue };
            let start = tsc::now();
            let want = params.burst - g.pending.len();
            if want > 0 && !g.generate(&params.pool, template, want, start) {
                failures += 1;
            }
            let n = tx[s.tx].tx_burst(&mut g.pending);
            if n == 0 {
                continue;
            }
            g.sent += n as u64;
            sent += n as u64;
            polls += 1;
            cycles += tsc::now().wrapping_sub(start);
        }
    }
    for g in &mut gens {
        free_bulk(&mut g.pending);
    }
    totals.tx += sent;
    totals.busy_cycles += cycles;
    totals.busy_polls += polls;
    totals.alloc_failures += failures;
}

/// echo's state: everything the polling loop touches, allocated before it starts.
struct Echo<'a> {
    rx: &'a mut [RxQueue],
    tx: &'a mut [TxQueue],
    streams: &'a [Stream],
    gens: Vec<Generator>,
    /// The MACs expected on every frame that comes back, per stream.
    expected_l2: Vec<[u8; 12]>,
    check_mac: bool,
    pkts: Vec<Mbuf>,
    verifier: Verifier,
    /// Chained frames are copied here to be checked.
    scratch: Vec<u8>,
    window: usize,
    burst: usize,
    pool: &'a Mempool,
}

impl Echo<'_> {
    /// One pass over the streams: top up and send (while `generating`), receive and check.
    #[inline(always)]
    fn poll(&mut self, generating: bool, totals: &mut Totals) {
        let window = self.window;
        for ((s, g), l2) in self.streams.iter().zip(self.gens.iter_mut()).zip(&self.expected_l2) {
            let Some(template) = &s.template else { continue };
            let start = tsc::now();
            let mut sent = 0;
            if generating {
                let outstanding = (g.sent - g.received) as usize + g.pending.len();
                let want = window.saturating_sub(outstanding).min(self.burst - g.pending.len());
                if want > 0 && !g.generate(self.pool, template, want, start) {
                    totals.alloc_failures += 1;
                }
                if !g.pending.is_empty() {
                    sent = self.tx[s.tx].tx_burst(&mut g.pending) as u64;
                    g.sent += sent;
                }
            }
            let n = self.rx[s.rx].rx_burst(&mut self.pkts);
            if n > 0 {
                let now = tsc::now();
                for m in &self.pkts {
                    let frame = contiguous(m, &mut self.scratch);
                    totals.dump(s.rx, frame);
                    match self.verifier.check_ours(frame) {
                        Ok((id, _)) if id != s.id => totals.defect(s.rx, Defect::Stream(id)),
                        Ok((_, seq)) if self.check_mac && frame[..12] != l2[..] => {
                            totals.defect(s.rx, Defect::Mac { seq })
                        }
                        Ok((_, seq)) => {
                            totals.verified += 1;
                            if seq != g.expect {
                                totals.reorders += 1;
                            }
                            g.expect = seq + 1;
                            let stamp = g.stamps[(seq % window as u64) as usize];
                            totals.rtt.saturating_record(now.wrapping_sub(stamp).max(1));
                        }
                        Err(defect) => totals.defect(s.rx, defect),
                    }
                }
                free_bulk(&mut self.pkts);
                g.received += n as u64;
                totals.rx += n as u64;
            }
            if sent + n as u64 > 0 {
                totals.tx += sent;
                totals.busy_polls += 1;
                totals.busy_cycles += tsc::now().wrapping_sub(start);
            }
        }
    }
}

/// echo: generate within a window, receive the frames back on the same queue, check each.
#[inline(never)]
fn echo(work: &mut Work, params: &Params, stop: &AtomicBool, totals: &mut Totals) {
    let Work { rx, tx, streams, .. } = work;
    let expected_l2 = streams
        .iter()
        .map(|s| {
            let l2 = s.template.as_ref().map(Template::l2).unwrap_or([0; 12]);
            match params.echo_expect {
                EchoExpect::Swapped => {
                    let mut swapped = [0u8; 12];
                    swapped[..6].copy_from_slice(&l2[6..]);
                    swapped[6..].copy_from_slice(&l2[..6]);
                    swapped
                }
                EchoExpect::Same | EchoExpect::Any => l2,
            }
        })
        .collect();
    let mut state = Echo {
        rx,
        tx,
        streams,
        gens: streams
            .iter()
            .map(|s| Generator::new(params.burst, params.echo_window, s.template.as_ref(), &params.pool))
            .collect(),
        expected_l2,
        check_mac: params.echo_expect != EchoExpect::Any,
        pkts: Vec::with_capacity(params.burst),
        verifier: Verifier::new(params.verify_len),
        scratch: Vec::with_capacity(params.max_pkt_len),
        window: params.echo_window,
        burst: params.burst,
        pool: &params.pool,
    };
    while !stop.load(Ordering::Relaxed) {
        state.poll(true, totals);
    }
    // Stop sending; wait for the frames still out to come back.
    let begin = Instant::now();
    while begin.elapsed() < DRAIN_LIMIT && state.gens.iter().any(|g| g.received < g.sent) {
        state.poll(false, totals);
    }
    for g in &mut state.gens {
        totals.lost += g.sent.saturating_sub(g.received);
        free_bulk(&mut g.pending);
    }
}
