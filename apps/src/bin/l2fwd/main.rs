//! `l2fwd`: DPDK's l2fwd on virtio-pmd. Frames received on port 0 leave on port 1 and the
//! reverse (2 <-> 3, ..., or `--portmap`; an odd last port answers on itself), each with its
//! destination MAC set to `02:00:00:00:00:<output port>` and its source MAC to the output port's
//! own (unless `--no-mac-updating`).
//!
//! ```text
//! l2fwd 0000:00:03.0 0000:00:04.0                     # ports by PCI address (bound to vfio-pci)
//! l2fwd --cores 0,1 pci:0000:00:03.0,queues=2 vhost:/tmp/vh0.sock
//! l2fwd --config config/l2fwd-vm.toml                  # or from a TOML file (see config.rs)
//! ```
//!
//! The library does the work: [`PortSet`] opens the ports (one VFIO container, one pool) and
//! applies their device-string options, waits for the links (`L2FWD-LINK port=<p> state=<s>`)
//! and takes the lanes (receive queue q -> the peer's transmit queue q); [`lcore`] runs them on
//! one pinned thread per core (`L2FWD-READY ports=<n> threads=<t>` once all poll) and supervises
//! them: an `L2FWD-STATS` line per port every `stats_interval`, an `L2FWD-LINK .. t=<secs>` line
//! for every change of link state.
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
use std::time::Duration;

use clap::Parser;
use virtio_pmd::lcore::{self, Lane, Supervised, STOP};
use virtio_pmd::mbuf::PoolStats;
use virtio_pmd::net::MacAddr;
use virtio_pmd::setup::{PortSet, SetupError};
use virtio_pmd::Error;

use config::{Options, Settings};
use virtio_pmd_apps::report::{describe, init_logging, mpps, Record, Sampler, Snapshot};

#[derive(Parser, Debug)]
#[command(
    name = "l2fwd",
    version,
    about = "Layer-2 forwarder on virtio-pmd (DPDK l2fwd semantics): port 0 <-> 1, 2 <-> 3, ...",
    after_help = "Exit status: 0 clean; 1 device/runtime error or mbufs missing at exit; 2 usage or \
                  configuration error.\nStop with Ctrl-C (SIGINT) or SIGTERM; a second signal exits at once."
)]
struct Cli {
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

/// Why l2fwd failed: the exit status (2 a usage or configuration error, 1 a device or runtime
/// error) and the message.
struct Failure(u8, String);

fn runtime(e: impl std::error::Error) -> Failure {
    Failure(1, describe(&e))
}

impl From<SetupError> for Failure {
    /// A configuration the device cannot take (ring size, a value out of range) is a
    /// configuration error, anything else a device error.
    fn from(e: SetupError) -> Failure {
        let usage = matches!(e, SetupError::Spec { .. })
            || matches!(e.error(), Some(Error::InvalidConfig(_) | Error::QueueSizeRefused { .. }));
        Failure(if usage { 2 } else { 1 }, describe(&e))
    }
}

fn main() -> ExitCode {
    // vfio-ioctls warns about every IRQ index a device lacks: noise here.
    init_logging("warn,vfio_ioctls=error", false);
    let cli = Cli::parse();
    if let Some(d) = cli.duration.filter(|d| !(d.is_finite() && *d > 0.0)) {
        eprintln!("l2fwd: error: --duration {d} is not a positive number of seconds");
        return ExitCode::from(2);
    }
    let result = Settings::resolve(&cli.options, cli.config.as_deref()).map_err(|e| Failure(2, e)).and_then(|s| {
        let (ports, cores) = (s.specs.iter().map(|p| p.target()).collect::<Vec<_>>(), s.lcores.cores());
        let cores = if cores.is_empty() { "unpinned".into() } else { format!("{cores:?}") };
        let per_lcore = s.queues_per_lcore.map_or("spread".into(), |n| n.to_string());
        let idle = s.lcores.idle_sleep().map_or("busy polling".into(), |d| format!("sleep {} us", d.as_micros()));
        let stats = s.stats_interval.map_or("never".into(), |d| format!("{} s", d.as_secs()));
        let macs = if s.mac_updating { "rewritten" } else { "unchanged" };
        println!(
            "l2fwd: ports {} (pairs {}), {}, burst {}, cores {cores}, queues per lcore {per_lcore}, MACs {macs}, \
             idle {idle}, stats every {stats}, max frame {} bytes",
            ports.join(" "),
            s.peers,
            s.config,
            s.lcores.burst(),
            s.max_pkt_len,
        );
        s.specs.iter().enumerate().for_each(|(id, p)| println!("l2fwd: port {id}: {p}"));
        if cli.check_config {
            println!("L2FWD-CONFIG-OK");
            return Ok(());
        }
        lcore::install_stop_handler().map_err(|e| Failure(1, format!("cannot install the signal handler: {e}")))?;
        run(&s, cli.duration.map(Duration::from_secs_f64))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("l2fwd: error: {msg}");
            ExitCode::from(code)
        }
    }
}

/// How long l2fwd waits for every link to come up at start (DPDK's l2fwd: 9 s).
const LINK_WAIT: Duration = Duration::from_secs(9);

/// Opens the ports (the library applies their filters and RSS settings) and describes them.
fn open(s: &Settings) -> Result<PortSet, Failure> {
    let set = PortSet::open(&s.specs, &s.config).inspect_err(|e| e.pool().into_iter().for_each(|p| pool_line(p, s)))?;
    for (id, port) in set.ports().iter().enumerate() {
        println!("L2FWD-PORT {id} {} peer={}", set.report(id), s.peers.peer(id));
        let options = &s.specs[id].options;
        if options.has_filters() {
            println!("L2FWD-FILTER port={id} {}", options.to_string().trim_start_matches(','));
        }
        if let Some(rss) = port.rss_config() {
            println!("L2FWD-RSS port={id} {rss}");
        }
    }
    Ok(set)
}

fn run(s: &Settings, duration: Option<Duration>) -> Result<(), Failure> {
    let mut set = open(s)?;
    println!("l2fwd: checking link status (up to {} s)", LINK_WAIT.as_secs());
    let mut links = set.wait_for_link(LINK_WAIT, &STOP);
    links.iter().enumerate().for_each(|(id, state)| println!("L2FWD-LINK port={id} state={state}"));
    // DPDK l2fwd's destination MACs: 02:00:00:00:00:<output port>.
    let dst_macs: Vec<MacAddr> = (0..set.ports().len()).map(MacAddr::default_peer).collect();
    let lanes = set.lanes(&s.peers, s.mac_updating.then_some(&dst_macs)).map_err(runtime)?;
    let lanes = lanes.into_iter().map(|l| if s.hash_to_src_mac { l.with_hash_to_src_mac() } else { l }).collect();
    let work = lcore::distribute(lanes, s.lcores.cores(), s.queues_per_lcore);
    let needed = set.mbufs_held(work.len(), s.lcores.burst());
    if needed > s.config.pool.count {
        println!(
            "l2fwd: warning: pool_size {} may be too small: the rings and thread caches can hold {needed} mbufs",
            s.config.pool.count
        );
    }
    let lane_drops: Vec<_> = work.iter().flat_map(|w| &w.work).map(|l| (l.tx_port, l.counters())).collect();
    let app_drops = |id: usize| -> u64 {
        lane_drops.iter().filter(|(tx, _)| *tx == id).map(|(_, c)| c.dropped.load(Ordering::Relaxed)).sum()
    };
    for (t, w) in work.iter().enumerate() {
        let core = w.core.map_or("unpinned".into(), |c| format!("core {c}"));
        println!("l2fwd: thread {t} ({core}; lanes {})", w.work.iter().map(Lane::name).collect::<Vec<_>>().join(" "));
    }
    let (burst, idle_sleep) = (s.lcores.burst(), s.lcores.idle_sleep());
    let lcores = lcore::launch("l2fwd", work, &STOP, move |lcore, mut lanes: Vec<Lane>| {
        lcore.poll(burst, idle_sleep, |pkts| lanes.iter_mut().map(|lane| lane.forward(pkts)).sum());
        lanes
    })
    .map_err(runtime)?;
    if lcores.wait_started() {
        println!("L2FWD-READY ports={} threads={}", set.ports().len(), lcores.len());
        std::io::stdout().flush().ok();
    }

    // Once per statistics period (every second without statistics lines): every change of link
    // state, the statistics lines (if any), and the devices' health.
    let mut sampler = Sampler::new("l2fwd", set.ports(), &app_drops);
    let period = s.stats_interval.unwrap_or(Duration::from_secs(1));
    let stopped = lcores.supervise(period, duration, |elapsed| {
        for (id, state) in set.link_changes(&mut links) {
            println!("L2FWD-LINK port={id} state={state} t={:.1}s", elapsed.as_secs_f64());
        }
        if s.stats_interval.is_some() {
            let p = sampler.sample(set.ports(), &app_drops);
            for id in 0..p.ports.len() {
                println!("L2FWD-STATS {}", p.record(id).key_values());
                if s.json {
                    println!("{}", p.json(id));
                }
            }
        }
        std::io::stdout().flush().ok();
        set.check().map_err(|e| describe(&e))
    });
    let mut failure = match stopped {
        Supervised::Stopped | Supervised::DurationReached => {
            let why = if stopped == Supervised::Stopped { "stop requested (signal)" } else { "--duration reached" };
            println!("l2fwd: {why}, stopping");
            None
        }
        Supervised::LcoreEnded(t) => Some(Failure(1, format!("polling lcore {t} stopped unexpectedly"))),
        Supervised::Failed(msg) => Some(Failure(1, msg)),
    };
    let seconds = sampler.elapsed();

    // Shutdown: the lcores hand their lanes back; dropping the queues resets each device before
    // its buffers return to the pool; then every mbuf must be back.
    for joined in lcores.join() {
        if let Err(e) = joined {
            failure.get_or_insert(runtime(e));
        }
    }
    summary(s, &set, &app_drops, seconds);
    let closed = set.close();
    match &closed {
        Ok(pool) | Err(SetupError::MbufsMissing { stats: pool }) => pool_line(pool, s),
        Err(e) => return Err(runtime(e)),
    }
    if let Some(f) = failure {
        return Err(f);
    }
    closed?;
    println!("L2FWD-DONE clean");
    Ok(())
}

/// The `L2FWD-SUMMARY` lines (and their JSON, with the extended statistics): per port with an
/// `L2FWD-RXQ` line per queue pair, then the total.
fn summary(s: &Settings, set: &PortSet, app_drops: &dyn Fn(usize) -> u64, over: Duration) {
    let mut total = Snapshot::default();
    for (id, port) in set.ports().iter().enumerate() {
        let (stats, app_dropped) = (port.stats(), app_drops(id));
        let n = Snapshot::of(&stats, app_dropped);
        let record = Record::default().int("port", id as u64).text("pci", port.name());
        let record = record.int("rx", n.rx).int("tx", n.tx).int("dropped", n.dropped).int("errors", n.errors);
        let record = record.int("alloc_failures", n.alloc_failures).int("kicks", n.kicks);
        let record = record.num("rx_mpps", mpps(n.rx, over), 4).num("tx_mpps", mpps(n.tx, over), 4);
        println!("L2FWD-SUMMARY {}", record.key_values());
        if s.json {
            let line = record.json("l2fwd", "summary").num("seconds", over.as_secs_f64());
            println!("{}", line.int("app_dropped", app_dropped).xstats("xstats", &port.xstats()).finish());
        }
        total += n;
        for (q, (r, t)) in stats.rx_queues.iter().zip(&stats.tx_queues).enumerate() {
            let (ring_size, kicks) = (port.pair_ring_size(q as u16).unwrap_or(0), r.kicks + t.kicks);
            println!(
                "L2FWD-RXQ port={id} queue={q} rx={} tx={} kicks={kicks} ring_size={ring_size}",
                r.packets, t.packets
            );
        }
    }
    let (rx, tx, dropped, errors, ports) = (total.rx, total.tx, total.dropped, total.errors, set.ports().len());
    let seconds = over.as_secs_f64();
    println!(
        "L2FWD-SUMMARY total ports={ports} rx={rx} tx={tx} dropped={dropped} errors={errors} seconds={seconds:.1}"
    );
}

/// The `L2FWD-POOL` line (and its JSON line): whether every mbuf is back.
fn pool_line(pool: &PoolStats, s: &Settings) {
    let record = Record::default().int("size", pool.size.into()).int("available", pool.available.into());
    let record = record.int("in_use", pool.in_use.into()).int("alloc_failures", pool.alloc_failures);
    let verdict = if pool.in_use == 0 {
        "every mbuf is back in the pool".into()
    } else {
        format!("{} mbufs LEAKED", pool.in_use)
    };
    println!("L2FWD-POOL {}: {verdict}", record.key_values());
    if s.json {
        println!("{}", record.json("l2fwd", "pool").finish());
    }
}
