//! `l2fwd`: DPDK's l2fwd on virtio-pmd. Frames received on port 0 leave on port 1 and the
//! reverse (2 <-> 3, ...; the last of an odd number of ports answers on itself), each with its
//! destination MAC set to `02:00:00:00:00:<output port>` (or the port's configured `dst_mac`) and
//! its source MAC set to the output port's own.
//!
//! ```text
//! l2fwd 0000:00:03.0 0000:00:04.0            # ports by PCI address (bound to vfio-pci)
//! l2fwd --port 0000:00:03.0 --port 0000:00:04.0 --cores 0,1
//! l2fwd --config config/l2fwd-vm.toml         # or from a TOML file (see config.rs)
//! ```
//!
//! Start-up: the library's [`PortSet`] opens the ports (one VFIO container, one mempool, `queues`
//! queue pairs each) and sets their receive filters and RSS tables; l2fwd waits up to 9 s for
//! every link (`L2FWD-LINK port=<p> state=up|down`); the lanes (receive queue q -> the peer's
//! transmit queue q) are spread over one lcore per listed core, pinned (no cores: one unpinned
//! lcore polls every lane). Once every lcore polls it prints `L2FWD-READY ports=<n> threads=<t>`;
//! then `L2FWD-STATS` lines every `stats_interval` seconds, and an `L2FWD-LINK port=<p>
//! state=<s> t=<secs>` line for every change of link state, polled once per statistics period.
//!
//! SIGINT/SIGTERM (or `--duration`) stop it: the lcores hand their lanes back, the ports drop
//! (each device reset before its buffers are released), the `L2FWD-SUMMARY` and `L2FWD-RXQ`
//! lines are printed, and `L2FWD-POOL` says whether every mbuf came back.
//!
//! Exit status: 0 clean; 1 a device or runtime error, or mbufs missing from the pool at exit;
//! 2 a usage or configuration error.
#![deny(unsafe_code)]

mod config;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use virtio_pmd::lcore::{self, Lane, LaneCounters, LcoreWork, Lcores, STOP};
use virtio_pmd::mbuf::PoolStats;
use virtio_pmd::net::{Port, Xstat};
use virtio_pmd::setup::{DeviceSpec, LinkState, PortSet, SetupError};

use config::{FilePort, Options, Settings};
use virtio_pmd_apps::report::{describe, init_logging, mpps, JsonLine, Record, Snapshot};

#[derive(Parser, Debug)]
#[command(
    name = "l2fwd",
    version,
    about = "Layer-2 forwarder on virtio-pmd (DPDK l2fwd semantics): port 0 <-> 1, 2 <-> 3, ...",
    after_help = "Exit status: 0 clean; 1 device/runtime error or mbufs missing at exit; 2 usage or \
                  configuration error.\nStop with Ctrl-C (SIGINT) or SIGTERM; a second signal exits at once."
)]
struct Cli {
    /// The ports in port-id order: PCI addresses (0000:00:03.0) or device strings
    /// (pci:0000:00:03.0,queues=2 / vhost:/tmp/vh0.sock).
    #[arg(value_name = "PORT")]
    pci: Vec<String>,
    /// A port (repeatable; instead of the positional form).
    #[arg(long = "port", value_name = "PORT")]
    port: Vec<String>,
    /// TOML configuration file; command-line options override its values.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Check the configuration, print it and exit without touching any device.
    #[arg(long)]
    check_config: bool,
}

/// Why l2fwd stopped with an error: a usage or configuration error (exit 2) or a device or
/// runtime error (exit 1).
#[derive(Debug)]
enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<SetupError> for Failure {
    /// A configuration the device cannot take (ring size, a value out of range) is a
    /// configuration error, anything else a device error.
    fn from(e: SetupError) -> Failure {
        use virtio_pmd::Error::{InvalidConfig, QueueSizeRefused};
        match matches!(e, SetupError::Spec { .. })
            || matches!(e.error(), Some(InvalidConfig(_) | QueueSizeRefused { .. }))
        {
            true => Failure::Usage(describe(&e)),
            false => Failure::Runtime(describe(&e)),
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings, String> {
    if !cli.pci.is_empty() && !cli.port.is_empty() {
        return Err("give the ports either as arguments or with --port, not both".into());
    }
    if let Some(d) = cli.duration.filter(|d| !(d.is_finite() && *d > 0.0)) {
        return Err(format!("--duration {d} is not a positive number of seconds"));
    }
    let mut options = cli.options.clone();
    let ports = if cli.port.is_empty() { &cli.pci } else { &cli.port };
    if !ports.is_empty() {
        options.ports = Some(ports.iter().map(|pci| FilePort { pci: pci.clone(), dst_mac: None, mac: None }).collect());
    }
    Settings::resolve(&options, cli.config.as_deref())
}

fn main() -> ExitCode {
    // vfio-ioctls warns about every IRQ index a device lacks: noise here.
    init_logging("warn,vfio_ioctls=error", false);
    let cli = Cli::parse();
    let result = settings(&cli).map_err(Failure::Usage).and_then(|s| {
        print_settings(&s);
        if cli.check_config {
            println!("L2FWD-CONFIG-OK");
            return Ok(());
        }
        lcore::install_stop_handler()
            .map_err(|e| Failure::Runtime(format!("cannot install the SIGINT/SIGTERM handler: {e}")))?;
        run(&s, cli.duration.map(Duration::from_secs_f64))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("l2fwd: error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("l2fwd: error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn print_settings(s: &Settings) {
    let ports: Vec<String> = s.specs.iter().map(DeviceSpec::target).collect();
    let cores = if s.cores.is_empty() { "unpinned".into() } else { format!("{:?}", s.cores) };
    let per_lcore = s.queues_per_lcore.map_or("spread".into(), |n| n.to_string());
    let macs = if s.mac_updating { "rewritten" } else { "unchanged" };
    println!(
        "l2fwd: ports {} (pairs {}), {}, burst {}, cores {cores}, queues per lcore {per_lcore}, MACs {macs}, idle {}, \
         stats every {}, max frame {} bytes{}",
        ports.join(" "),
        s.peers,
        s.config,
        s.burst,
        s.idle_sleep.map_or("busy polling".into(), |d| format!("sleep {} us", d.as_micros())),
        s.stats_interval.map_or("never".into(), |d| format!("{} s", d.as_secs())),
        s.max_pkt_len,
        s.source.as_ref().map(|p| format!(", from {}", p.display())).unwrap_or_default(),
    );
    for (id, spec) in s.specs.iter().enumerate() {
        println!("l2fwd: port {id}: {spec} out_dst_mac={}", s.dst_macs[id]);
    }
}

/// Opens the ports (the library applies their filters and RSS settings) and describes them.
fn open(s: &Settings) -> Result<PortSet, Failure> {
    let set = PortSet::open(&s.specs, &s.config).inspect_err(|e| {
        if let Some(pool) = e.pool() {
            print_pool(pool, s.json);
        }
    })?;
    for (id, port) in set.ports().iter().enumerate() {
        let mtu_frame = u32::from(port.mtu().unwrap_or(1500)) + 14;
        if s.max_pkt_len > mtu_frame {
            println!(
                "l2fwd: port {id}: warning: max_pkt_len {} exceeds the MTU frame of {mtu_frame} bytes",
                s.max_pkt_len
            );
        }
        println!("L2FWD-PORT {id} {} out_dst_mac={} peer={}", set.report(id), s.dst_macs[id], s.peer_of(id));
        let options = &s.specs[id].options;
        if let Some(on) = options.promiscuous {
            let on = if on { "on" } else { "off" };
            println!("l2fwd: port {id}: promiscuous mode {on} (VIRTIO_NET_CTRL_RX_PROMISC acknowledged)");
        }
        if options.has_filters() {
            println!("L2FWD-FILTER port={id} {}", options.to_string().trim_start_matches(','));
        }
        if let Some(rss) = port.rss_config() {
            println!("L2FWD-RSS port={id} {rss}");
        }
    }
    Ok(set)
}

/// The lanes (receive queue q of port i into transmit queue q of its peer), spread over the
/// lcores: per lcore, its core and its lanes.
fn lanes(s: &Settings, set: &mut PortSet) -> Result<Vec<LcoreWork<Vec<Lane>>>, Failure> {
    let queues = s.config.port.queue_pairs;
    let macs: Vec<_> = (0..set.ports().len()).map(|id| set.mac(id)).collect();
    let (mut rx, mut tx) = (Vec::with_capacity(macs.len()), Vec::with_capacity(macs.len()));
    for (id, port) in set.ports_mut().iter_mut().enumerate() {
        let taken: Option<Vec<_>> = (0..queues).map(|q| port.take_queues(q)).collect();
        let taken = taken.ok_or_else(|| Failure::Runtime(format!("port {id}: fewer than {queues} queue pairs")))?;
        let (port_rx, port_tx): (Vec<_>, Vec<_>) = taken.into_iter().map(|(r, t)| (r, Some(t))).unzip();
        rx.push(port_rx);
        tx.push(port_tx);
    }
    let mut lanes = Vec::with_capacity(macs.len() * usize::from(queues));
    for (id, port_rx) in rx.into_iter().enumerate() {
        let peer = s.peer_of(id);
        for (q, r) in port_rx.into_iter().enumerate() {
            // Every transmit queue is taken by exactly one lane: the pairing is an involution.
            let Some(t) = tx[peer][q].take() else { unreachable!("transmit queue {q} of port {peer} taken twice") };
            let rewrite = s.mac_updating.then_some((s.dst_macs[peer].0, macs[peer].0));
            let lane = Lane::new((id, r), (peer, t), q as u16, rewrite);
            lanes.push(Some(if s.hash_to_src_mac { lane.with_hash_to_src_mac() } else { lane }));
        }
    }
    let plan = match s.queues_per_lcore {
        Some(n) => lcore::spread_at_most(lanes.len(), &s.cores, n),
        None => lcore::spread(lanes.len(), &s.cores),
    };
    let rings: u32 =
        set.ports().iter().flat_map(|p| (0..queues).map(|q| 2 * u32::from(p.pair_ring_size(q).unwrap_or(0)))).sum();
    let needed = rings + plan.len() as u32 * (s.burst as u32 + 3 * s.config.pool.cache_size);
    if needed > s.config.pool.count {
        println!(
            "l2fwd: warning: pool_size {} may be too small: the rings and thread caches can hold {needed} mbufs \
             (receive refills will fail and frames be dropped)",
            s.config.pool.count
        );
    }
    let mut take = |indices: Vec<usize>| indices.iter().filter_map(|i| lanes[*i].take()).collect();
    Ok(plan.into_iter().map(|(core, indices)| LcoreWork { core, work: take(indices) }).collect())
}

fn run(s: &Settings, duration: Option<Duration>) -> Result<(), Failure> {
    let mut set = open(s)?;
    println!("l2fwd: checking link status (up to {} s)", LINK_WAIT.as_secs());
    let links = set.wait_for_link(LINK_WAIT, &STOP);
    links.iter().enumerate().for_each(|(id, state)| println!("L2FWD-LINK port={id} state={state}"));
    let work = lanes(s, &mut set)?;
    let counters = Counters(work.iter().flat_map(|w| &w.work).map(|l| (l.tx_port, l.counters())).collect());
    let described: Vec<String> = work
        .iter()
        .enumerate()
        .map(|(t, w)| {
            let lanes: Vec<String> = w.work.iter().map(Lane::name).collect();
            let core = w.core.map_or("unpinned".into(), |c| format!("core {c}"));
            format!("thread {t} ({core}; lanes {})", lanes.join(" "))
        })
        .collect();
    let (burst, idle_sleep) = (s.burst, s.idle_sleep);
    let lcores = lcore::launch("l2fwd", work, &STOP, move |lcore, mut lanes: Vec<Lane>| {
        lcore.poll(burst, idle_sleep, |pkts| lanes.iter_mut().map(|lane| lane.forward(pkts)).sum());
        lanes
    })
    .map_err(|e| Failure::Runtime(describe(&e)))?;
    if lcores.wait_started() {
        described.iter().for_each(|what| println!("l2fwd: {what} polling"));
        println!("L2FWD-READY ports={} threads={}", set.ports().len(), lcores.len());
        std::io::stdout().flush().ok();
    }
    let (mut failure, stopped_at) = monitor(s, &set, &lcores, &counters, links, duration);

    // Shutdown: the lcores hand their lanes back; dropping the queues resets each device before
    // its buffers return to the pool; then every mbuf must be back.
    for joined in lcores.join() {
        if let Err(e) = joined {
            failure.get_or_insert(Failure::Runtime(format!("polling {e}")));
        }
    }
    print_summary(s, &set, &counters, stopped_at);
    let closed = set.close();
    match &closed {
        Ok(pool) | Err(SetupError::MbufsMissing { stats: pool }) => print_pool(pool, s.json),
        Err(e) => return Err(Failure::Runtime(describe(e))),
    }
    if let Some(f) = failure {
        return Err(f);
    }
    closed?;
    println!("L2FWD-DONE clean");
    Ok(())
}

/// How often link states are polled when no statistics lines are printed.
const LINK_POLL: Duration = Duration::from_secs(1);
/// How long l2fwd waits for every link to come up at start (DPDK's l2fwd: 9 s).
const LINK_WAIT: Duration = Duration::from_secs(9);

/// Prints statistics every interval until a signal, the duration, or a failure (returned).
fn monitor(
    s: &Settings,
    set: &PortSet,
    lcores: &Lcores<Vec<Lane>>,
    counters: &Counters,
    mut links: Vec<LinkState>,
    duration: Option<Duration>,
) -> (Option<Failure>, Duration) {
    let begin = Instant::now();
    let mut last = (begin, counters.snapshots(set.ports()), xstats(set));
    let failure = loop {
        std::thread::sleep(Duration::from_millis(50));
        if STOP.load(Ordering::SeqCst) {
            // The lcores may already have seen it and returned: not a failure.
            println!("l2fwd: stop requested (signal), stopping");
            break None;
        }
        if duration.is_some_and(|d| begin.elapsed() >= d) {
            println!("l2fwd: --duration reached, stopping");
            break None;
        }
        if let Some(t) = lcores.finished_early() {
            break Some(Failure::Runtime(format!("polling lcore {t} stopped unexpectedly")));
        }
        // Once per statistics period (every second without statistics lines): the counters,
        // the devices' health, and every change of link state.
        if last.0.elapsed() < s.stats_interval.unwrap_or(LINK_POLL) {
            continue;
        }
        for (id, state) in set.link_changes(&mut links) {
            println!("L2FWD-LINK port={id} state={state} t={:.1}s", begin.elapsed().as_secs_f64());
        }
        let now = Instant::now();
        let (snaps, x) = (counters.snapshots(set.ports()), xstats(set));
        if s.stats_interval.is_some() {
            print_stats(s, begin, now - last.0, (&last.1, &last.2), (&snaps, &x), counters);
        }
        last = (now, snaps, x);
        if let Some((id, e)) = set.ports().iter().enumerate().find_map(|(id, p)| p.check().err().map(|e| (id, e))) {
            break Some(Failure::Runtime(format!("port {id}: {}", describe(&e))));
        }
    };
    (failure, begin.elapsed())
}

/// The lanes' drop counters, by transmitting port.
struct Counters(Vec<(usize, Arc<LaneCounters>)>);

impl Counters {
    /// Frames the lanes transmitting on port `id` dropped.
    fn dropped(&self, id: usize) -> u64 {
        self.0.iter().filter(|(tx, _)| *tx == id).map(|(_, c)| c.dropped.load(Ordering::Relaxed)).sum()
    }

    fn snapshots(&self, ports: &[Port]) -> Vec<Snapshot> {
        ports.iter().enumerate().map(|(id, port)| Snapshot::of(&port.stats(), self.dropped(id))).collect()
    }
}

/// Every port's extended statistics.
fn xstats(set: &PortSet) -> Vec<Vec<Xstat>> {
    set.ports().iter().map(Port::xstats).collect()
}

/// Prints the `L2FWD-POOL` line (and its JSON line): whether every mbuf is back.
fn print_pool(pool: &PoolStats, json: bool) {
    let record = Record::default().int("size", pool.size.into()).int("available", pool.available.into());
    let record = record.int("in_use", pool.in_use.into()).int("alloc_failures", pool.alloc_failures);
    let verdict = match pool.in_use {
        0 => "every mbuf is back in the pool".to_string(),
        n => format!("{n} mbufs LEAKED"),
    };
    println!("L2FWD-POOL {}: {verdict}", record.key_values());
    if json {
        println!("{}", record.json("l2fwd", "pool").finish());
    }
}

/// One `L2FWD-STATS` line per port over the period `over` (and its JSON line, with the extended
/// statistics and their rates): counters and extended statistics before and now.
fn print_stats(
    s: &Settings,
    begin: Instant,
    over: Duration,
    before: (&[Snapshot], &[Vec<Xstat>]),
    now: (&[Snapshot], &[Vec<Xstat>]),
    counters: &Counters,
) {
    let t = begin.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    for (id, (b, n)) in before.0.iter().zip(now.0).enumerate() {
        let errors = if n.errors + n.alloc_failures > 0 {
            format!(" errors={} alloc_failures={}", n.errors, n.alloc_failures)
        } else {
            String::new()
        };
        let (rx, tx) = (mpps(n.rx - b.rx, over), mpps(n.tx - b.tx, over));
        let (rx_n, tx_n, dropped) = (n.rx, n.tx, n.dropped);
        writeln!(out, "L2FWD-STATS t={t:.1}s port={id} rx={rx_n} tx={tx_n} dropped={dropped} rx_mpps={rx:.4} tx_mpps={tx:.4}{errors}").ok();
        if s.json {
            let line = JsonLine::new("l2fwd", "stats").num("t", t).int("port", id as u64);
            let line = line.int("app_dropped", counters.dropped(id)).num("interval_s", over.as_secs_f64());
            writeln!(
                out,
                "{}",
                line.xstats("xstats", &now.1[id]).rates("rates", &before.1[id], &now.1[id], over).finish()
            )
            .ok();
        }
    }
    out.flush().ok();
}

/// The `L2FWD-SUMMARY` lines (and their JSON, with the extended statistics): per port with an
/// `L2FWD-RXQ` line per queue pair, then the total.
fn print_summary(s: &Settings, set: &PortSet, counters: &Counters, over: Duration) {
    let mut total = Snapshot::default();
    for (id, (port, n)) in set.ports().iter().zip(counters.snapshots(set.ports())).enumerate() {
        let record = Record::default().int("port", id as u64).text("pci", port.name());
        let record = record.int("rx", n.rx).int("tx", n.tx).int("dropped", n.dropped).int("errors", n.errors);
        let record = record.int("alloc_failures", n.alloc_failures).int("kicks", n.kicks);
        let record = record.num("rx_mpps", mpps(n.rx, over), 4).num("tx_mpps", mpps(n.tx, over), 4);
        println!("L2FWD-SUMMARY {}", record.key_values());
        if s.json {
            let line = record.json("l2fwd", "summary").num("seconds", over.as_secs_f64());
            println!("{}", line.int("app_dropped", counters.dropped(id)).xstats("xstats", &port.xstats()).finish());
        }
        total += n;
        let stats = port.stats();
        for (q, (r, t)) in stats.rx_queues.iter().zip(&stats.tx_queues).enumerate() {
            let ring_size = port.pair_ring_size(q as u16).unwrap_or(0);
            let (rx, tx, kicks) = (r.packets, t.packets, r.kicks + t.kicks);
            println!("L2FWD-RXQ port={id} queue={q} rx={rx} tx={tx} kicks={kicks} ring_size={ring_size}");
        }
    }
    let (rx, tx, dropped, errors) = (total.rx, total.tx, total.dropped, total.errors);
    let (ports, seconds) = (set.ports().len(), over.as_secs_f64());
    println!(
        "L2FWD-SUMMARY total ports={ports} rx={rx} tx={tx} dropped={dropped} errors={errors} seconds={seconds:.1}"
    );
}
