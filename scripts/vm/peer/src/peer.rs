//! The traffic peer: paced test frames into both ports at once, every frame that comes back
//! checked byte by byte.
//!
//! Direction 0 is sent into port 0 and must come out of port 1; direction 1 the reverse. One
//! sender thread paces both directions (`rate` frames per second each); one receiver thread per
//! port checks what comes out of it ([`crate::frame::check`]), keeps the set of sequence numbers
//! seen (duplicates are corrupted frames) and the latency histogram (send time carried in the
//! frame, read against the same process's monotonic clock, so no clock sync is involved).
//!
//! Before counting anything, the peer can wait until the forwarder really forwards: it sends
//! probe frames into each port every 200 ms until one comes back out of the other
//! ([`PeerConfig::ready_timeout`]). A probe that comes back damaged (wrong MAC rewrite, ...) stops
//! the run at once with the reason. Probes that arrive late, during the run, are ignored.
//!
//! Accounting per direction: `received` counts every datagram that came out of the port (probes
//! aside), `corrupted` those that failed a check or were duplicates, `lost` the frames sent of
//! which no intact copy arrived (so a corrupted frame also counts as lost).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use virtio_pmd::net::MacAddr;

use crate::frame::{self, flow_of, Defect, Expect, Flow, FrameId, Kind, MacExpect, SizePlan};
use crate::link::{Link, Received};
use crate::toeplitz;
use crate::PeerError;

/// Interval between probe frames while waiting for the forwarder.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Receive timeout of the receiver threads (how quickly they notice the end of the run).
const RECV_POLL: Duration = Duration::from_millis(50);
/// Defects printed in detail per direction (all are counted).
const SAMPLES: usize = 5;

/// What to send and what to expect back.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Data frames per direction.
    pub frames: u64,
    /// Frames per second per direction; 0 sends as fast as possible.
    pub rate: u64,
    /// Which directions run (`[0to1, 1to0]`).
    pub dirs: [bool; 2],
    /// Destination MAC of frames sent into port p (the guest NIC's own address).
    pub tx_dst: [MacAddr; 2],
    /// Source MAC of frames sent into port p.
    pub tx_src: [MacAddr; 2],
    /// Expected destination MAC per direction after forwarding.
    pub expect_dst: [MacExpect; 2],
    /// Expected source MAC per direction after forwarding.
    pub expect_src: [MacExpect; 2],
    /// Data frame lengths.
    pub sizes: SizePlan,
    /// How long to probe for a working forwarder; zero skips probing.
    pub ready_timeout: Duration,
    /// How long to wait for stragglers after the last frame was sent.
    pub drain: Duration,
    /// Interval of progress lines; `None` prints none.
    pub progress: Option<Duration>,
    /// Flows of IPv4/UDP flow frames (0: frames without IPv4/UDP headers).
    pub flows: u32,
    /// The RSS steering to predict, for flow frames.
    pub rss: Option<RssPlan>,
    /// Receive-filter tests: the classes of frames sent into port p, data frame `seq` being of
    /// class `seq % len`. Empty: every frame goes to the port's own MAC, untagged, and must pass.
    pub classes: [Vec<FrameClass>; 2],
}

/// A class of frames sent into a port, for receive-filter tests: their destination MAC and
/// VLAN tag, and whether the device must let them through or drop them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameClass {
    /// What the class tests (e.g. `foreign-unicast`).
    pub name: String,
    /// Destination MAC.
    pub dst: MacAddr,
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// The device must pass them (else drop them).
    pub pass: bool,
}

/// What came of one class of frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassReport {
    /// The class.
    pub class: FrameClass,
    /// Frames of the class sent.
    pub sent: u64,
    /// Frames of the class that arrived intact.
    pub received: u64,
}

impl ClassReport {
    /// Whether the device did what the class expects: every frame through, or none.
    pub fn ok(&self) -> bool {
        if self.class.pass {
            self.received == self.sent
        } else {
            self.received == 0
        }
    }
}

impl PeerConfig {
    /// The class of data frame `seq` sent into port `dir`, with receive-filter classes.
    fn class_of(&self, dir: usize, seq: u64) -> Option<&FrameClass> {
        let classes = &self.classes[dir];
        (!classes.is_empty()).then(|| &classes[(seq % classes.len() as u64) as usize])
    }
}

/// The RSS steering of the devices: each port's key and indirection table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssPlan {
    /// Port p's Toeplitz key.
    pub keys: [Vec<u8>; 2],
    /// Port p's indirection table (queue pairs; a power-of-two length).
    pub tables: [Vec<u16>; 2],
}

impl RssPlan {
    /// The receive queue of port `port` that RSS puts `flow` on (UDPv4: addresses and ports).
    pub fn queue_of(&self, port: usize, flow: &Flow) -> u16 {
        let input = toeplitz::ipv4_ports_input(flow.src, flow.dst, flow.sport, flow.dport);
        toeplitz::queue_of(toeplitz::hash(&self.keys[port], &input), &self.tables[port])
    }

    /// Frames per receive queue of each port for the frames sent into it: the data frames
    /// `0..sent[p]` and the probes `probes[p]`.
    pub fn predict(&self, flows: u32, sent: [u64; 2], probes: &[Vec<u64>; 2]) -> [Vec<u64>; 2] {
        std::array::from_fn(|p| {
            let queues = self.tables[p].iter().copied().max().map_or(1, |q| usize::from(q) + 1);
            let mut counts = vec![0u64; queues];
            let data = (0..sent[p]).map(|seq| flow_of(Kind::Data, p as u8, seq, flows));
            let probes = probes[p].iter().map(|seq| flow_of(Kind::Probe, p as u8, *seq, flows));
            for flow in data.chain(probes) {
                counts[usize::from(self.queue_of(p, &flow))] += 1;
            }
            counts
        })
    }
}

/// One port as the peer sees it: frames are sent into it and received from it over `link`.
#[derive(Debug)]
pub struct PeerPort {
    /// The UDP socket or tap of the port.
    pub link: Link,
}

/// Results of one direction.
#[derive(Debug)]
pub struct DirReport {
    /// Whether this direction ran.
    pub active: bool,
    /// Data frames sent.
    pub sent: u64,
    /// Datagrams that came out of the exit port (probes excluded).
    pub received: u64,
    /// Data frames that arrived intact, once.
    pub good: u64,
    /// Datagrams that failed a check, duplicates included.
    pub corrupted: u64,
    /// Second copies of intact frames (also in `corrupted`).
    pub duplicates: u64,
    /// Probe frames that arrived after the ready phase (ignored).
    pub late_probes: u64,
    /// Times a send was retried because the kernel's queue was full.
    pub send_retries: u64,
    /// Latency of intact frames, ns.
    pub latency_ns: Histogram<u64>,
    /// The first few defects, described.
    pub samples: Vec<String>,
    /// With receive-filter classes: each class's counts.
    pub classes: Vec<ClassReport>,
}

impl DirReport {
    /// Frames sent that should have arrived (all, or those of classes the device must pass).
    pub fn expected(&self) -> u64 {
        if self.classes.is_empty() {
            self.sent
        } else {
            self.classes.iter().filter(|c| c.class.pass).map(|c| c.sent).sum()
        }
    }

    /// Intact frames of classes the device must drop: it let them through.
    pub fn leaked(&self) -> u64 {
        self.classes.iter().filter(|c| !c.class.pass).map(|c| c.received).sum()
    }

    /// Frames that should have arrived of which no intact copy did.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.good - self.leaked())
    }
}

/// Results of a run.
#[derive(Debug)]
pub struct Report {
    /// Direction 0 (port 0 -> port 1) and 1 (port 1 -> port 0).
    pub dirs: [DirReport; 2],
    /// Time from the first data frame to the end of the drain.
    pub elapsed: Duration,
    /// With an RSS plan: per port, the frames each of its receive queues should have got.
    pub predicted: Option<[Vec<u64>; 2]>,
}

impl Report {
    /// True when nothing was lost or corrupted.
    pub fn clean(&self) -> bool {
        self.dirs.iter().all(|d| d.lost() == 0 && d.corrupted == 0 && d.leaked() == 0)
    }

    /// Both directions' latencies merged.
    fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for d in &self.dirs {
            // Auto-resizing histograms of the same precision always merge.
            all.add(&d.latency_ns).ok();
        }
        all
    }

    /// With an RSS plan, one line per port and receive queue: `RSS-PREDICT port=<p> queue=<q>
    /// frames=<n>`, the frames sent into the port (probes included) that RSS puts on that queue.
    pub fn prediction_lines(&self) -> Vec<String> {
        let Some(predicted) = &self.predicted else { return Vec::new() };
        predicted
            .iter()
            .enumerate()
            .flat_map(|(p, counts)| {
                counts.iter().enumerate().map(move |(q, n)| format!("RSS-PREDICT port={p} queue={q} frames={n}"))
            })
            .collect()
    }

    /// With receive-filter classes, one line per direction and class: `FILTER dir=<d>
    /// class=<name> dst=<mac> vlan=<id|-> expect=pass|drop sent=<n> received=<n> ok|WRONG`.
    pub fn filter_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, d) in self.dirs.iter().enumerate().filter(|(_, d)| d.active) {
            for c in &d.classes {
                lines.push(format!(
                    "FILTER dir={} class={} dst={} vlan={} expect={} sent={} received={} {}",
                    dir_name(i),
                    c.class.name,
                    c.class.dst,
                    c.class.vlan.map_or("-".to_string(), |v| v.to_string()),
                    if c.class.pass { "pass" } else { "drop" },
                    c.sent,
                    c.received,
                    if c.ok() { "ok" } else { "WRONG" }
                ));
            }
        }
        lines
    }

    /// One line per active direction with every counter.
    pub fn dir_lines(&self) -> Vec<String> {
        self.dirs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.active)
            .map(|(i, d)| {
                format!(
                    "dir={} sent={} received={} lost={} corrupted={} leaked={} duplicates={} late_probes={} send_retries={} p50_us={} p99_us={} max_us={}",
                    dir_name(i),
                    d.sent,
                    d.received,
                    d.lost(),
                    d.corrupted,
                    d.leaked(),
                    d.duplicates,
                    d.late_probes,
                    d.send_retries,
                    us(&d.latency_ns, 0.5),
                    us(&d.latency_ns, 0.99),
                    us(&d.latency_ns, 1.0),
                )
            })
            .collect()
    }

    /// The summary line: `RESULT sent=.. received=.. lost=.. corrupted=.. p50_us=.. p99_us=..`.
    pub fn result_line(&self) -> String {
        let sum = |f: fn(&DirReport) -> u64| self.dirs.iter().map(f).sum::<u64>();
        let lat = self.latency();
        format!(
            "RESULT sent={} received={} lost={} corrupted={} p50_us={} p99_us={}",
            sum(|d| d.sent),
            sum(|d| d.received),
            sum(|d| d.lost()),
            sum(|d| d.corrupted),
            us(&lat, 0.5),
            us(&lat, 0.99),
        )
    }
}

/// Longest latency the histogram tells apart; longer ones are recorded as this.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A latency histogram: 1 ns to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    // These bounds and precision are valid (low >= 1, high >= 2 * low, precision <= 5).
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap_or_else(|e| unreachable!("hdrhistogram bounds: {e}"))
}

/// Quantile `q` of a ns histogram in µs with one decimal; 0 when empty.
fn us(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        return "0.0".to_string();
    }
    format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0)
}

/// "0to1" or "1to0".
pub fn dir_name(dir: usize) -> &'static str {
    if dir == 0 {
        "0to1"
    } else {
        "1to0"
    }
}

/// Live counters of one direction, shared by the threads.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    received: AtomicU64,
    good: AtomicU64,
    corrupted: AtomicU64,
    send_retries: AtomicU64,
}

/// What a receiver thread hands back.
struct RxResult {
    /// Data frames that arrived intact, by sequence number (a bitmap).
    seen: Vec<u64>,
    duplicates: u64,
    late_probes: u64,
    latency_ns: Histogram<u64>,
    samples: Vec<String>,
}

/// Runs the peer on two bound ports: probe, send, drain, report.
pub fn run(cfg: &PeerConfig, ports: [PeerPort; 2], log: &mut dyn Write) -> Result<Report, PeerError> {
    let epoch = Instant::now();
    let probes = wait_ready(cfg, &ports, epoch, log)?;

    let live: Arc<[Live; 2]> = Arc::new(Default::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (p, port) in ports.iter().enumerate() {
        let link = port.link.try_clone().map_err(|source| PeerError::Socket { what: "clone", source })?;
        link.set_read_timeout(RECV_POLL)
            .map_err(|source| PeerError::Socket { what: "set the read timeout", source })?;
        let dir = 1 - p;
        let expect = Expect {
            dir: dir as u8,
            dst: cfg.expect_dst[dir],
            src: cfg.expect_src[dir],
            frames: if cfg.dirs[dir] { cfg.frames } else { 0 },
            sizes: cfg.sizes,
            flows: cfg.flows,
        };
        let (live, stop, classes) = (Arc::clone(&live), Arc::clone(&stop), cfg.classes[dir].clone());
        let handle = thread::Builder::new()
            .name(format!("rx-port{p}"))
            .spawn(move || receive(&link, &expect, &classes, &live[dir], &stop, epoch))
            .map_err(|source| PeerError::Socket { what: "spawn a receiver thread", source })?;
        receivers.push(handle);
    }

    let links = [
        ports[0].link.try_clone().map_err(|source| PeerError::Socket { what: "clone", source })?,
        ports[1].link.try_clone().map_err(|source| PeerError::Socket { what: "clone", source })?,
    ];
    let sender = {
        let (cfg, live, stop) = (cfg.clone(), Arc::clone(&live), Arc::clone(&stop));
        thread::Builder::new()
            .name("tx".into())
            .spawn(move || send(&cfg, &links, &live, &stop, epoch))
            .map_err(|source| PeerError::Socket { what: "spawn the sender thread", source })?
    };

    let start = Instant::now();
    let mut next_progress = cfg.progress.map(|p| start + p);
    let mut sent_at: Option<Instant> = None;
    loop {
        thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        if sent_at.is_none() && sender.is_finished() {
            sent_at = Some(now);
        }
        if let (Some(at), Some(interval)) = (next_progress, cfg.progress) {
            if now >= at {
                progress(log, start, &live);
                next_progress = Some(at + interval);
            }
        }
        if let Some(at) = sent_at {
            let all_in = (0..2)
                .all(|d| !cfg.dirs[d] || live[d].good.load(Ordering::Relaxed) >= live[d].sent.load(Ordering::Relaxed));
            if all_in || now.duration_since(at) >= cfg.drain {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let send_result = sender.join().map_err(|_| PeerError::Thread("the sender thread panicked"))?;
    let mut rx = Vec::new();
    for handle in receivers {
        rx.push(handle.join().map_err(|_| PeerError::Thread("a receiver thread panicked"))??);
    }
    send_result?;
    let elapsed = start.elapsed();

    // Receiver of port p holds direction 1 - p.
    let mut rx = rx.into_iter();
    let (rx_port0, rx_port1) = match (rx.next(), rx.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(PeerError::Thread("a receiver thread is missing")),
    };
    let dir_report = |d: usize, r: RxResult| DirReport {
        classes: class_reports(cfg, d, live[d].sent.load(Ordering::Relaxed), &r.seen),
        sent: live[d].sent.load(Ordering::Relaxed),
        received: live[d].received.load(Ordering::Relaxed),
        good: live[d].good.load(Ordering::Relaxed),
        corrupted: live[d].corrupted.load(Ordering::Relaxed),
        duplicates: r.duplicates,
        late_probes: r.late_probes,
        send_retries: live[d].send_retries.load(Ordering::Relaxed),
        latency_ns: r.latency_ns,
        samples: r.samples,
        active: cfg.dirs[d],
    };
    let sent = [live[0].sent.load(Ordering::Relaxed), live[1].sent.load(Ordering::Relaxed)];
    let predicted = cfg.rss.as_ref().map(|rss| rss.predict(cfg.flows, sent, &probes));
    Ok(Report { dirs: [dir_report(0, rx_port1), dir_report(1, rx_port0)], elapsed, predicted })
}

fn progress(log: &mut dyn Write, start: Instant, live: &[Live; 2]) {
    let d = |i: usize| {
        let l = &live[i];
        format!(
            "{} sent={} received={} good={} corrupted={}",
            dir_name(i),
            l.sent.load(Ordering::Relaxed),
            l.received.load(Ordering::Relaxed),
            l.good.load(Ordering::Relaxed),
            l.corrupted.load(Ordering::Relaxed)
        )
    };
    // Progress is best effort: a closed stderr must not stop the run.
    writeln!(log, "progress t={:.1}s {} | {}", start.elapsed().as_secs_f64(), d(0), d(1)).ok();
}

/// ns since `epoch`.
fn now_ns(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Sends one frame, retrying while the kernel's queue is full (`ENOBUFS`); returns false
/// when `stop` was set before it could go.
fn send_frame(link: &Link, frame: &[u8], retries: &AtomicU64, stop: &AtomicBool) -> Result<bool, PeerError> {
    loop {
        match link.send(frame) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) => {
                retries.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                thread::sleep(Duration::from_micros(100));
            }
            Err(source) => return Err(PeerError::Send { to: link.to_string(), source }),
        }
    }
}

/// The sender thread: frame `i` of every active direction is due at `i / rate` seconds.
fn send(
    cfg: &PeerConfig,
    links: &[Link; 2],
    live: &[Live; 2],
    stop: &AtomicBool,
    epoch: Instant,
) -> Result<(), PeerError> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(frame::MAX_LEN);
    for seq in 0..cfg.frames {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(due_ns) = seq.saturating_mul(1_000_000_000).checked_div(cfg.rate) {
            let due = start + Duration::from_nanos(due_ns);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        for dir in (0..2).filter(|&d| cfg.dirs[d]) {
            let class = cfg.class_of(dir, seq);
            let id = FrameId {
                kind: Kind::Data,
                dir: dir as u8,
                seq,
                ts_ns: now_ns(epoch),
                len: cfg.sizes.len_of(seq),
                flows: cfg.flows,
                vlan: class.and_then(|c| c.vlan),
            };
            frame::build(&mut buf, class.map_or(cfg.tx_dst[dir], |c| c.dst), cfg.tx_src[dir], &id);
            if !send_frame(&links[dir], &buf, &live[dir].send_retries, stop)? {
                return Ok(());
            }
            live[dir].sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Per class of direction `dir`: frames sent (data frames `0..sent`) and intact ones in `seen`.
fn class_reports(cfg: &PeerConfig, dir: usize, sent: u64, seen: &[u64]) -> Vec<ClassReport> {
    let classes = &cfg.classes[dir];
    let mut reports: Vec<ClassReport> =
        classes.iter().map(|class| ClassReport { class: class.clone(), sent: 0, received: 0 }).collect();
    if reports.is_empty() {
        return reports;
    }
    for seq in 0..sent {
        let r = &mut reports[(seq % classes.len() as u64) as usize];
        r.sent += 1;
        if seen.get((seq / 64) as usize).is_some_and(|w| w & (1 << (seq % 64)) != 0) {
            r.received += 1;
        }
    }
    reports
}

/// A receiver thread: checks every datagram that comes out of one port.
fn receive(
    link: &Link,
    expect: &Expect,
    classes: &[FrameClass],
    live: &Live,
    stop: &AtomicBool,
    epoch: Instant,
) -> Result<RxResult, PeerError> {
    let mut seen = vec![0u64; usize::try_from(expect.frames.div_ceil(64)).unwrap_or(0)];
    let mut out =
        RxResult { seen: Vec::new(), duplicates: 0, late_probes: 0, latency_ns: new_histogram(), samples: Vec::new() };
    let mut buf = vec![0u8; 65536];
    let mut scratch = Vec::with_capacity(frame::MAX_LEN);
    let bad = |out: &mut RxResult, what: String| {
        live.corrupted.fetch_add(1, Ordering::Relaxed);
        if out.samples.len() < SAMPLES {
            out.samples.push(what);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let n = match link.recv(&mut buf) {
            Ok(Received::Frame(n)) => n,
            Ok(Received::Nothing) => continue,
            Ok(Received::Stranger(_, what)) => {
                live.received.fetch_add(1, Ordering::Relaxed);
                bad(&mut out, what);
                continue;
            }
            Err(source) => return Err(PeerError::Recv { source }),
        };
        let datagram = &buf[..n];
        match frame::check(datagram, expect, &mut scratch) {
            Ok(id) if id.kind == Kind::Probe => out.late_probes += 1,
            Ok(id) => {
                live.received.fetch_add(1, Ordering::Relaxed);
                // `check` bounds the sequence number by `expect.frames`, the bitmap's size.
                let (word, bit) = ((id.seq / 64) as usize, 1u64 << (id.seq % 64));
                if seen[word] & bit != 0 {
                    out.duplicates += 1;
                    bad(&mut out, format!("seq {}: {}", id.seq, Defect::Duplicate(id.seq)));
                    continue;
                }
                let planned = classes.get((id.seq % classes.len().max(1) as u64) as usize).and_then(|c| c.vlan);
                if id.vlan != planned {
                    bad(&mut out, format!("seq {}: VLAN {:?}, sent with {planned:?}", id.seq, id.vlan));
                    continue;
                }
                seen[word] |= bit;
                live.good.fetch_add(1, Ordering::Relaxed);
                out.latency_ns.saturating_record(now_ns(epoch).saturating_sub(id.ts_ns).max(1));
            }
            Err(defect) => {
                live.received.fetch_add(1, Ordering::Relaxed);
                let what = match defect {
                    Defect::Foreign { .. } | Defect::BadLength(_) => {
                        format!("{n}-byte frame: {defect}")
                    }
                    _ => format!(
                        "{n}-byte frame (seq {} by its header): {defect}",
                        frame::seq_field(datagram, expect.flows).unwrap_or(u64::MAX)
                    ),
                };
                bad(&mut out, what);
            }
        }
    }
    out.seen = seen;
    Ok(out)
}

/// Sends probes into each active direction until one comes back out of the other port;
/// returns the sequence numbers of the probes sent into each port.
fn wait_ready(
    cfg: &PeerConfig,
    ports: &[PeerPort; 2],
    epoch: Instant,
    log: &mut dyn Write,
) -> Result<[Vec<u64>; 2], PeerError> {
    let mut sent: [Vec<u64>; 2] = Default::default();
    if cfg.ready_timeout.is_zero() {
        return Ok(sent);
    }
    for port in ports {
        port.link
            .set_read_timeout(Duration::from_millis(10))
            .map_err(|source| PeerError::Socket { what: "set the read timeout", source })?;
    }
    writeln!(
        log,
        "waiting for the forwarder: a probe into each port every {} ms, for up to {} s",
        PROBE_INTERVAL.as_millis(),
        cfg.ready_timeout.as_secs()
    )
    .ok();
    let start = Instant::now();
    let mut ready = [!cfg.dirs[0], !cfg.dirs[1]];
    let mut probes = 0u64;
    let mut next_probe = start;
    let mut buf = vec![0u8; 65536];
    let mut scratch = Vec::with_capacity(frame::MAX_LEN);
    let never = AtomicU64::new(0);
    let no_stop = AtomicBool::new(false);
    while !ready.iter().all(|&r| r) {
        let now = Instant::now();
        if now.duration_since(start) >= cfg.ready_timeout {
            let missing: Vec<&str> = (0..2).filter(|&d| !ready[d]).map(dir_name).collect();
            return Err(PeerError::NotReady { secs: cfg.ready_timeout.as_secs(), missing: missing.join(" and ") });
        }
        if now >= next_probe {
            for dir in (0..2).filter(|&d| !ready[d]) {
                let len = frame::min_len(cfg.flows);
                let id = FrameId {
                    kind: Kind::Probe,
                    dir: dir as u8,
                    seq: probes,
                    ts_ns: now_ns(epoch),
                    len,
                    flows: cfg.flows,
                    vlan: None,
                };
                let mut f = Vec::with_capacity(len);
                frame::build(&mut f, cfg.tx_dst[dir], cfg.tx_src[dir], &id);
                send_frame(&ports[dir].link, &f, &never, &no_stop)?;
                sent[dir].push(probes);
            }
            probes += 1;
            next_probe = now + PROBE_INTERVAL;
        }
        for (p, port) in ports.iter().enumerate() {
            let dir = 1 - p;
            let n = match port.link.recv(&mut buf) {
                Ok(Received::Frame(n)) => n,
                Ok(Received::Nothing | Received::Stranger(..)) => continue,
                Err(source) => return Err(PeerError::Recv { source }),
            };
            let expect = Expect {
                dir: dir as u8,
                dst: cfg.expect_dst[dir],
                src: cfg.expect_src[dir],
                frames: 0,
                sizes: cfg.sizes,
                flows: cfg.flows,
            };
            match frame::check(&buf[..n], &expect, &mut scratch) {
                Ok(id) if id.kind == Kind::Probe => {
                    if !ready[dir] {
                        writeln!(
                            log,
                            "forwarder ready in direction {} after {:.1} s",
                            dir_name(dir),
                            start.elapsed().as_secs_f64()
                        )
                        .ok();
                    }
                    ready[dir] = true;
                }
                Ok(_) | Err(Defect::Foreign { .. }) => {}
                Err(defect) => return Err(PeerError::ProbeDamaged { dir: dir_name(dir), defect }),
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    //! End to end over loopback UDP, without a VM: a reflector thread plays QEMU + l2fwd (MAC
    //! rewrite included) and can drop, corrupt or duplicate frames to prove the checker sees it.
    use super::*;
    use crate::reflect::{self, ReflectConfig};
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::{Mutex, MutexGuard};

    /// The tests below run one at a time: on a busy 2-core machine, several paced UDP streams at
    /// once overflow the loopback socket buffers and the counts stop being deterministic.
    static NET: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        NET.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bind() -> UdpSocket {
        crate::ports::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    fn port_mac(p: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, p + 1])
    }

    fn config(frames: u64) -> PeerConfig {
        PeerConfig {
            frames,
            rate: 10_000,
            dirs: [true, true],
            tx_dst: [port_mac(0), port_mac(1)],
            tx_src: [MacAddr([2, 0, 0, 0, 0x10, 0]), MacAddr([2, 0, 0, 0, 0x10, 1])],
            expect_dst: [MacExpect::Exact(MacAddr::default_peer(1)), MacExpect::Exact(MacAddr::default_peer(0))],
            expect_src: [MacExpect::Exact(port_mac(1)), MacExpect::Exact(port_mac(0))],
            sizes: SizePlan::new(frame::MIN_LEN, frame::MAX_LEN).unwrap(),
            ready_timeout: Duration::from_secs(5),
            drain: Duration::from_millis(500),
            progress: None,
            flows: 0,
            rss: None,
            classes: Default::default(),
        }
    }

    /// Sockets for the peer and for the QEMU side, wired to each other.
    fn wiring() -> ([PeerPort; 2], [UdpSocket; 2], [SocketAddr; 2]) {
        let (q0, q1, p0, p1) = (bind(), bind(), bind(), bind());
        let peer_addrs = [p0.local_addr().unwrap(), p1.local_addr().unwrap()];
        let ports = [
            PeerPort { link: Link::Udp { qemu: q0.local_addr().unwrap(), socket: p0 } },
            PeerPort { link: Link::Udp { qemu: q1.local_addr().unwrap(), socket: p1 } },
        ];
        (ports, [q0, q1], peer_addrs)
    }

    /// A forwarder with faults: `fault(port_in, frame_index_on_that_port, frame)` returns how
    /// many copies to send (0 drops) and may change the frame.
    fn faulty_forwarder(
        qemu: [UdpSocket; 2],
        peers: [SocketAddr; 2],
        stop: Arc<AtomicBool>,
        fault: fn(usize, u64, &mut Vec<u8>) -> usize,
    ) -> Vec<thread::JoinHandle<()>> {
        let [q0, q1] = qemu;
        let outs = [q1.try_clone().unwrap(), q0.try_clone().unwrap()];
        let mut handles = Vec::new();
        for (p, (inp, out)) in [q0, q1].into_iter().zip(outs).enumerate() {
            let stop = Arc::clone(&stop);
            handles.push(thread::spawn(move || {
                inp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let mut buf = vec![0u8; 2048];
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = inp.recv_from(&mut buf) else {
                        continue;
                    };
                    let mut f = buf[..n].to_vec();
                    let q = 1 - p;
                    f[0..6].copy_from_slice(&MacAddr::default_peer(q).0);
                    f[6..12].copy_from_slice(&port_mac(q as u8).0);
                    let is_probe = f.get(18) == Some(&2);
                    let copies = if is_probe { 1 } else { fault(p, count, &mut f) };
                    if !is_probe {
                        count += 1;
                    }
                    for _ in 0..copies {
                        out.send_to(&f, peers[q]).unwrap();
                    }
                }
            }));
        }
        handles
    }

    fn run_with(frames: u64, fault: fn(usize, u64, &mut Vec<u8>) -> usize) -> Report {
        let _serial = serial();
        let (ports, qemu, peers) = wiring();
        let stop = Arc::new(AtomicBool::new(false));
        let fwd = faulty_forwarder(qemu, peers, Arc::clone(&stop), fault);
        let report = run(&config(frames), ports, &mut io::sink()).unwrap();
        stop.store(true, Ordering::Relaxed);
        for h in fwd {
            h.join().unwrap();
        }
        report
    }

    /// Port 0 gets frames to its own MAC (pass), to a foreign MAC (drop) and tagged VLAN 100
    /// (pass), in turn.
    fn filter_config(frames: u64) -> PeerConfig {
        let class = |name: &str, dst: MacAddr, vlan, pass| FrameClass { name: name.into(), dst, vlan, pass };
        let mut cfg = config(frames);
        cfg.dirs = [true, false];
        cfg.classes[0] = vec![
            class("own", port_mac(0), None, true),
            class("foreign", MacAddr([2, 0, 0, 0, 0xbb, 1]), None, false),
            class("vlan100", port_mac(0), Some(100), true),
        ];
        cfg
    }

    fn run_filtered(fault: fn(usize, u64, &mut Vec<u8>) -> usize) -> Report {
        let _serial = serial();
        let (ports, qemu, peers) = wiring();
        let stop = Arc::new(AtomicBool::new(false));
        let handles = faulty_forwarder(qemu, peers, Arc::clone(&stop), fault);
        let r = run(&filter_config(300), ports, &mut io::sink()).unwrap();
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().for_each(|h| h.join().unwrap());
        r
    }

    #[test]
    fn filter_classes_must_pass_whole_or_not_at_all() {
        // A device that drops the foreign class: clean, every class as expected.
        let r = run_filtered(|_, _, f| usize::from(frame::seq_field(f, 0).unwrap() % 3 != 1));
        assert!(r.clean(), "{:?} {:?}", r.dir_lines(), r.filter_lines());
        let counts: Vec<_> = r.dirs[0].classes.iter().map(|c| (c.sent, c.received, c.ok())).collect();
        assert_eq!(counts, [(100, 100, true), (100, 0, true), (100, 100, true)]);
        assert_eq!((r.dirs[0].expected(), r.dirs[0].lost(), r.dirs[0].leaked()), (200, 0, 0));
        assert!(
            r.filter_lines()[2].starts_with("FILTER dir=0to1 class=vlan100 dst=52:54:00:00:00:01 vlan=100 expect=pass")
        );

        // A device that lets everything through leaks the foreign class; one that drops a
        // tagged frame loses it.
        let r = run_filtered(|_, _, _| 1);
        assert!(!r.clean());
        assert_eq!((r.dirs[0].leaked(), r.dirs[0].lost()), (100, 0));
        assert!(r.filter_lines()[1].ends_with("sent=100 received=100 WRONG"), "{:?}", r.filter_lines());
        let r = run_filtered(|_, _, f| usize::from(frame::seq_field(f, 0).unwrap() % 3 == 0));
        assert_eq!((r.dirs[0].leaked(), r.dirs[0].lost()), (0, 100));
    }

    #[test]
    fn rss_predictions_count_every_frame_and_follow_the_table() {
        let spread = |e: &[u16]| e.iter().copied().cycle().take(128).collect::<Vec<u16>>();
        let key = virtio_pmd::net::DEFAULT_KEY.to_vec();
        let default =
            RssPlan { keys: [key.clone(), key.clone()], tables: [spread(&[0, 1, 2, 3]), spread(&[0, 1, 2, 3])] };
        let reversed =
            RssPlan { keys: [key.clone(), key.clone()], tables: [spread(&[0, 1, 2, 3]), spread(&[3, 2, 1, 0])] };
        let probes = [vec![0, 1, 2], vec![0]];
        let d = default.predict(256, [5000, 4000], &probes);
        let r = reversed.predict(256, [5000, 4000], &probes);
        assert_eq!(d[0].iter().sum::<u64>(), 5003);
        assert_eq!(d[1].iter().sum::<u64>(), 4001);
        assert!(d.iter().flatten().all(|n| *n > 500), "256 flows spread over 4 queues: {d:?}");
        // Port 0 keeps its table; port 1's flows move from queue q to queue 3 - q.
        assert_eq!(r[0], d[0]);
        assert_eq!(r[1], d[1].iter().rev().copied().collect::<Vec<u64>>());
        // One flow frame, by hand: its hash picks the queue.
        let flow = flow_of(Kind::Data, 0, 7, 256);
        let input = toeplitz::ipv4_ports_input(flow.src, flow.dst, flow.sport, flow.dport);
        let hash = toeplitz::hash(&key, &input);
        assert_eq!(default.queue_of(0, &flow), (hash % 4) as u16);
        // Another key moves flows too.
        let rekeyed = RssPlan { keys: [key, vec![0x5a; 40]], ..default.clone() };
        assert_eq!(rekeyed.predict(256, [5000, 4000], &probes)[0], d[0]);
        assert_ne!(rekeyed.predict(256, [5000, 4000], &probes)[1], d[1]);
    }

    #[test]
    fn clean_forwarder_gives_a_clean_report() {
        let r = run_with(1000, |_, _, _| 1);
        assert!(r.clean(), "{:?}", r.dir_lines());
        for d in &r.dirs {
            assert_eq!((d.sent, d.received, d.good, d.corrupted), (1000, 1000, 1000, 0));
            assert_eq!(d.latency_ns.len(), 1000);
        }
        let line = r.result_line();
        assert!(line.starts_with("RESULT sent=2000 received=2000 lost=0 corrupted=0 p50_us="), "{line}");
        assert!(!line.contains("p50_us=0.0 "), "{line}");
        assert!(line.contains(" p99_us="));
    }

    #[test]
    fn drops_corruption_and_duplicates_are_counted() {
        let r = run_with(500, |port, i, f| match (port, i) {
            (0, 10) | (0, 11) => 0,
            (0, 20) => {
                let last = f.len() - 1;
                f[last] ^= 0xff;
                1
            }
            (1, 30) => 2,
            (1, 40) => {
                f[0] = 0xee;
                1
            }
            _ => 1,
        });
        assert!(!r.clean());
        let d0 = &r.dirs[0];
        assert_eq!((d0.sent, d0.received, d0.good, d0.corrupted, d0.lost()), (500, 498, 497, 1, 3));
        assert!(d0.samples[0].contains("byte"), "{:?}", d0.samples);
        let d1 = &r.dirs[1];
        assert_eq!((d1.sent, d1.received, d1.good, d1.corrupted, d1.duplicates, d1.lost()), (500, 501, 499, 2, 1, 1));
        assert!(d1.samples.iter().any(|s| s.contains("destination MAC")), "{:?}", d1.samples);
        assert!(r.result_line().starts_with("RESULT sent=1000 received=999 lost=4 corrupted=3 "));
    }

    #[test]
    fn wrong_mac_rewrite_stops_at_the_probe() {
        let _serial = serial();
        let (ports, qemu, peers) = wiring();
        let stop = Arc::new(AtomicBool::new(false));
        // A forwarder that rewrites the source MAC to the input port's MAC instead.
        let handles = faulty_forwarder(qemu, peers, Arc::clone(&stop), |_, _, _| 1);
        let mut cfg = config(10);
        cfg.expect_src = [MacExpect::Exact(port_mac(0)), MacExpect::Exact(port_mac(1))];
        let err = run(&cfg, ports, &mut io::sink()).unwrap_err();
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert!(matches!(err, PeerError::ProbeDamaged { defect: Defect::SrcMac { .. }, .. }), "{err}");
    }

    #[test]
    fn no_forwarder_times_out_with_a_clear_error() {
        let (ports, _qemu, _) = wiring();
        let mut cfg = config(10);
        cfg.ready_timeout = Duration::from_millis(300);
        let err = run(&cfg, ports, &mut io::sink()).unwrap_err();
        assert!(matches!(err, PeerError::NotReady { .. }));
        assert!(err.to_string().contains("0to1 and 1to0"), "{err}");
    }

    #[test]
    fn one_direction_only() {
        let _serial = serial();
        let (ports, qemu, peers) = wiring();
        let stop = Arc::new(AtomicBool::new(false));
        let handles = faulty_forwarder(qemu, peers, Arc::clone(&stop), |_, _, _| 1);
        let mut cfg = config(300);
        cfg.dirs = [false, true];
        let r = run(&cfg, ports, &mut io::sink()).unwrap();
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert!(r.clean());
        assert_eq!((r.dirs[0].sent, r.dirs[1].good), (0, 300));
        assert_eq!(r.dir_lines().len(), 1);
    }

    #[test]
    fn the_reflect_subcommand_emulates_l2fwd() {
        let _serial = serial();
        let (ports, qemu, peers) = wiring();
        let stop = Arc::new(AtomicBool::new(false));
        let rcfg = ReflectConfig {
            out_dst: [MacAddr::default_peer(0), MacAddr::default_peer(1)],
            out_src: [port_mac(0), port_mac(1)],
            idle_exit: None,
        };
        let reflector = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || reflect::serve(&rcfg, qemu, peers, &stop, &mut io::sink()))
        };
        let r = run(&config(1000), ports, &mut io::sink()).unwrap();
        stop.store(true, Ordering::Relaxed);
        let forwarded = reflector.join().unwrap().unwrap();
        assert!(r.clean(), "{:?}", r.dir_lines());
        assert!(forwarded[0] >= 1000 && forwarded[1] >= 1000, "{forwarded:?}");
    }
}
