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
//! Start-up: the library's [`PortSet`] opens the ports (one VFIO container, one mempool,
//! `queues` queue pairs each: more than one set through the control queue, with the device's
//! default RSS configuration or the `--rss-table` given); l2fwd waits up to 9 s for every link
//! to come up (`L2FWD-LINK port=<p> state=up|down`); the lanes (receive queue q -> the peer's
//! transmit queue q) are spread over one lcore per listed core, pinned (no cores: one unpinned
//! lcore polls every lane). Once every lcore polls it prints `L2FWD-READY ports=<n> threads=<t>`;
//! then `L2FWD-STATS` lines (per port: rx, tx, dropped, Mpps) every `stats_interval` seconds, and
//! an `L2FWD-LINK port=<p> state=<s> t=<secs>` line for every change of link state, polled once
//! per statistics period. The summary has an `L2FWD-RXQ` line per queue pair.
//!
//! SIGINT/SIGTERM (or `--duration`) stop it: the lcores stop polling and hand their lanes back,
//! the queues and ports drop (each device is reset before its buffers are released), the final
//! `L2FWD-SUMMARY` lines are printed, and `L2FWD-POOL` says whether every mbuf came back.
//!
//! Exit status: 0 clean; 1 a device or runtime error, or mbufs missing from the pool at exit;
//! 2 a usage or configuration error.
#![deny(unsafe_code)]

mod config;
mod fwd;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use virtio_pmd::lcore::{self, LcoreWork, Lcores, STOP};
use virtio_pmd::mbuf::{MempoolConfig, PoolStats};
use virtio_pmd::net::{OffloadConfig, Port, PortConfig};
use virtio_pmd::setup::{PortSet, PortSetConfig, SetupError};
use virtio_pmd::transport::RingFormat;

use config::{FilePort, Options, Settings};
use fwd::{Lane, LaneCounters};
use virtio_pmd::net::Xstat;
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
    /// PCI addresses of the ports, in port-id order (e.g. 0000:00:03.0 0000:00:04.0).
    #[arg(value_name = "PCI")]
    pci: Vec<String>,
    /// A port's PCI address (repeatable; instead of the positional form).
    #[arg(long = "port", value_name = "PCI")]
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

/// Why l2fwd stopped with an error; the exit status follows from the kind.
#[derive(Debug)]
enum Failure {
    /// Bad options or configuration: exit 2.
    Usage(String),
    /// A device or runtime error: exit 1.
    Runtime(String),
}

impl From<SetupError> for Failure {
    /// A configuration the device cannot take (ring size, a value out of range) is a
    /// configuration error, anything else a device error.
    fn from(e: SetupError) -> Failure {
        let usage =
            matches!(e.error(), Some(virtio_pmd::Error::InvalidConfig(_) | virtio_pmd::Error::QueueSizeRefused { .. }));
        let msg = describe(&e);
        if usage {
            Failure::Usage(msg)
        } else {
            Failure::Runtime(msg)
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings, String> {
    if !cli.pci.is_empty() && !cli.port.is_empty() {
        return Err("give the ports either as arguments or with --port, not both".into());
    }
    if let Some(d) = cli.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(format!("--duration {d} is not a positive number of seconds"));
        }
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
    let settings = match settings(&cli) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("l2fwd: error: {msg}");
            return ExitCode::from(2);
        }
    };
    print_settings(&settings);
    if cli.check_config {
        println!("L2FWD-CONFIG-OK");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = lcore::install_stop_handler() {
        eprintln!("l2fwd: error: cannot install the SIGINT/SIGTERM handler: {e}");
        return ExitCode::from(1);
    }
    match run(&settings, cli.duration.map(Duration::from_secs_f64)) {
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
    let ports: Vec<String> = s.ports.iter().map(|p| p.spec.target()).collect();
    println!(
        "l2fwd: ports {} (pairs {}), {} queue pair(s) each, ring {}, ring size {}, burst {}, pool {} mbufs \
         (cache {}), huge pages {}, cores {}, idle {}, stats every {}, max frame {} bytes, offloads {}{}{}",
        ports.join(" "),
        (0..s.ports.len()).map(|i| format!("{i}->{}", s.peer_of(i))).collect::<Vec<_>>().join(" "),
        s.queues,
        s.ring.name(),
        s.ring_size.map_or("device max".into(), |n| n.to_string()),
        s.burst,
        s.pool_size,
        s.pool_cache,
        s.huge_pages.name(),
        if s.cores.is_empty() { "unpinned (one thread)".into() } else { format!("{:?}", s.cores) },
        s.idle_sleep.map_or("busy polling".into(), |d| format!("sleep {} us", d.as_micros())),
        s.stats_interval.map_or("never".into(), |d| format!("{} s", d.as_secs())),
        s.max_pkt_len,
        if s.offloads { "on" } else { "off" },
        if s.no_iommu { ", no IOMMU (physical addresses: the devices can reach all memory)" } else { "" },
        s.source.as_ref().map(|p| format!(", from {}", p.display())).unwrap_or_default(),
    );
}

/// Opens the ports (`queues` queue pairs each), turns promiscuous mode on and sets the RSS
/// tables when asked, prints them.
fn open(s: &Settings) -> Result<PortSet, Failure> {
    let config = PortSetConfig {
        pool: MempoolConfig {
            name: "l2fwd-pool".into(),
            count: s.pool_size,
            cache_size: s.pool_cache,
            huge_pages: s.huge_pages.into(),
            ..MempoolConfig::default()
        },
        port: PortConfig {
            queue_pairs: s.queues,
            ring_size: s.ring_size,
            pair_ring_sizes: s.ring_sizes.clone(),
            ring: s.ring.into(),
            huge_pages: s.huge_pages.into(),
            // Frames larger than a buffer, and super-packets, span several.
            rx_mergeable: s.offloads || s.max_pkt_len > config::BUFFER_DATA_ROOM,
            tx_multi_segment: s.offloads || s.max_pkt_len > config::BUFFER_DATA_ROOM,
            offloads: OffloadConfig {
                tx_checksum: s.offloads,
                tso: s.offloads,
                rx_checksum: s.offloads,
                lro: s.offloads,
            },
            rx_hash_report: s.hash_to_src_mac,
            ..PortConfig::default()
        },
    };
    let specs: Vec<_> = s.ports.iter().map(|p| p.spec.clone()).collect();
    let mut set = PortSet::open(&specs, &config).inspect_err(|e| {
        if let SetupError::Port { pool, .. } = e {
            print_pool(pool, s.json);
        }
    })?;
    if let Err(failure) = configure(s, &mut set) {
        // The ports are open: close them (devices reset, buffers back), then show the pool.
        if let Ok(pool) | Err(SetupError::MbufsMissing { stats: pool }) = set.close() {
            print_pool(&pool, s.json);
        }
        return Err(failure);
    }
    Ok(set)
}

/// Sets up the open ports as asked (promiscuous mode, receive offloads, filters, RSS) and prints
/// them.
fn configure(s: &Settings, set: &mut PortSet) -> Result<(), Failure> {
    for (id, port) in set.ports_mut().iter_mut().enumerate() {
        let mtu_frame = u32::from(port.mtu().unwrap_or(1500)) + 14;
        if s.max_pkt_len > mtu_frame {
            println!(
                "l2fwd: port {id}: warning: max_pkt_len {} exceeds the device's MTU frame of {mtu_frame} bytes",
                s.max_pkt_len
            );
        }
        println!(
            "l2fwd: port {id}: rx path {}, tx path {}, offloads {:?}",
            port.rx_path(),
            port.tx_path(),
            port.offloads()
        );
        let failed =
            |what: &str, e: virtio_pmd::Error| Failure::Runtime(format!("port {id}: {what}: {}", describe(&e)));
        if let Some(on) = s.promiscuous {
            port.set_promiscuous(on).map_err(|e| failed("promiscuous mode", e))?;
            println!(
                "l2fwd: port {id}: promiscuous mode {} (VIRTIO_NET_CTRL_RX_PROMISC acknowledged)",
                if on { "on" } else { "off" }
            );
        }
        if let Some(on) = s.rx_offloads {
            port.set_rx_offloads(on, on).map_err(|e| failed("receive offloads", e))?;
            println!(
                "l2fwd: port {id}: receive offloads {} (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET acknowledged)",
                if on { "on" } else { "off" }
            );
        }
        let control = s.control.iter().find(|c| c.port == id);
        if let Some(c) = control.filter(|c| c.has_filters()) {
            set_filters(port, c).map_err(|e| failed("receive filters", e))?;
        }
        let table = s.rss_tables.iter().find(|t| t.port == id).map(|t| t.queues.as_slice());
        let key = control.and_then(|c| c.rss_key.as_deref());
        if table.is_some() || key.is_some() {
            change_rss(port, table, key).map_err(|e| failed("RSS table and key", e))?;
        }
        if let Some(rss) = port.rss_config() {
            println!(
                "L2FWD-RSS port={id} hash_types={:#x} table_len={} table={} key={}",
                rss.hash_types,
                rss.table.len(),
                rss.table.iter().map(|q| q.to_string()).collect::<Vec<_>>().join(","),
                rss.key.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
    }
    for (id, port) in set.ports().iter().enumerate() {
        let link = match port.link_up() {
            Ok(up) => if up { "up" } else { "down" }.to_string(),
            Err(e) => format!("unknown ({})", describe(&e)),
        };
        println!(
            "L2FWD-PORT {id} pci={} mac={} out_dst_mac={} peer={} ring={} ring_size={} queues={} mtu={} \
             link={link} features={:?}",
            port.name(),
            set.mac(id),
            s.ports[id].dst_mac,
            s.peer_of(id),
            match port.ring_format() {
                RingFormat::Packed => "packed",
                RingFormat::Split => "split",
            },
            port.ring_size(),
            port.queue_pairs(),
            port.mtu().map_or("-".into(), |m| m.to_string()),
            port.features(),
        );
    }
    Ok(())
}

/// The lanes (receive queue q of port i into transmit queue q of its peer), spread over the
/// lcores: per lcore, its core and its lanes.
fn lanes(s: &Settings, set: &mut PortSet) -> Result<Vec<LcoreWork<Vec<Lane>>>, Failure> {
    let macs: Vec<_> = (0..set.ports().len()).map(|id| set.mac(id)).collect();
    let mut rx = Vec::with_capacity(macs.len());
    let mut tx: Vec<Vec<Option<_>>> = Vec::with_capacity(macs.len());
    for (id, port) in set.ports_mut().iter_mut().enumerate() {
        let (mut port_rx, mut port_tx) = (Vec::new(), Vec::new());
        for q in 0..s.queues {
            let (r, t) = port
                .take_queues(q)
                .ok_or_else(|| Failure::Runtime(format!("port {id}: the port has no queue pair {q}")))?;
            port_rx.push(r);
            port_tx.push(Some(t));
        }
        rx.push(port_rx);
        tx.push(port_tx);
    }
    let mut lanes: Vec<Option<Lane>> = Vec::with_capacity(macs.len() * usize::from(s.queues));
    for (id, port_rx) in rx.into_iter().enumerate() {
        let peer = s.peer_of(id);
        for (q, r) in port_rx.into_iter().enumerate() {
            let t = tx[peer][q].take().ok_or_else(|| {
                Failure::Runtime(format!("internal error: transmit queue {q} of port {peer} is gone"))
            })?;
            let lane = Lane::new((id, r), (peer, t), q as u16, s.ports[peer].dst_mac.0, macs[peer].0);
            lanes.push(Some(if s.hash_to_src_mac { lane.with_hash_to_src_mac() } else { lane }));
        }
    }
    let plan = lcore::spread(lanes.len(), &s.cores);
    let needed = set
        .ports()
        .iter()
        .flat_map(|p| (0..p.queue_pairs()).map(|q| 2 * u32::from(p.pair_ring_size(q).unwrap_or(0))))
        .sum::<u32>()
        + plan.len() as u32 * (s.burst as u32 + 3 * s.pool_cache);
    if needed > s.pool_size {
        println!(
            "l2fwd: warning: pool_size {} may be too small: the rings and thread caches can hold {needed} mbufs \
             (receive refills will fail and frames be dropped)",
            s.pool_size
        );
    }
    Ok(plan
        .into_iter()
        .map(|(core, indices)| LcoreWork { core, work: indices.iter().filter_map(|i| lanes[*i].take()).collect() })
        .collect())
}

/// Prints statistics every interval until a signal, the duration, or a failure (returned).
fn monitor(
    s: &Settings,
    set: &PortSet,
    lcores: &Lcores<Vec<Lane>>,
    counters: &Counters,
    links: Vec<LinkState>,
    duration: Option<Duration>,
) -> (Option<Failure>, Duration) {
    let begin = Instant::now();
    let mut links = links;
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
        report_link_changes(set.ports(), &mut links, begin);
        let now = Instant::now();
        let (snaps, x) = (counters.snapshots(set.ports()), xstats(set));
        if s.stats_interval.is_some() {
            print_stats(begin, now - last.0, &last.1, &snaps);
        }
        if s.json && s.stats_interval.is_some() {
            for (id, (before, after)) in last.2.iter().zip(&x).enumerate() {
                let line =
                    JsonLine::new("l2fwd", "stats").num("t", begin.elapsed().as_secs_f64()).int("port", id as u64);
                let line =
                    line.int("app_dropped", counters.dropped(id)).num("interval_s", (now - last.0).as_secs_f64());
                println!("{}", line.xstats("xstats", after).rates("rates", before, after, now - last.0).finish());
            }
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

fn run(s: &Settings, duration: Option<Duration>) -> Result<(), Failure> {
    let mut set = open(s)?;
    let links = wait_for_links(set.ports());
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
    let pool = match &closed {
        Ok(stats) | Err(SetupError::MbufsMissing { stats }) => *stats,
        Err(e) => return Err(Failure::Runtime(describe(e))),
    };
    print_pool(&pool, s.json);
    if let Some(f) = failure {
        return Err(f);
    }
    closed?;
    println!("L2FWD-DONE clean");
    Ok(())
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

/// How often link states are polled when no statistics lines are printed.
const LINK_POLL: Duration = Duration::from_secs(1);
/// How long l2fwd waits for every link to come up at start (DPDK's l2fwd: 9 s).
const LINK_WAIT: Duration = Duration::from_secs(9);

/// A port's link state: up, down, or unreadable (the error).
type LinkState = Result<bool, String>;

fn link_state(port: &Port) -> LinkState {
    port.link_up().map_err(|e| describe(&e))
}

fn link_name(state: &LinkState) -> String {
    match state {
        Ok(true) => "up".into(),
        Ok(false) => "down".into(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Waits (at most [`LINK_WAIT`]) until every port's link is up, as DPDK's l2fwd does, and prints
/// each port's state (`L2FWD-LINK port=<p> state=up|down`); returns the states seen.
fn wait_for_links(ports: &[Port]) -> Vec<LinkState> {
    let deadline = Instant::now() + LINK_WAIT;
    print!("l2fwd: checking link status");
    loop {
        let states: Vec<_> = ports.iter().map(link_state).collect();
        if states.iter().all(|s| *s != Ok(false)) || Instant::now() >= deadline || STOP.load(Ordering::SeqCst) {
            println!(" done");
            for (id, state) in states.iter().enumerate() {
                println!("L2FWD-LINK port={id} state={}", link_name(state));
            }
            return states;
        }
        print!(".");
        std::io::stdout().flush().ok();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints `L2FWD-LINK port=<p> state=up|down t=<s>` for every port whose link state changed
/// since `last`.
fn report_link_changes(ports: &[Port], last: &mut [LinkState], begin: Instant) {
    for (id, (port, was)) in ports.iter().zip(last.iter_mut()).enumerate() {
        let now = link_state(port);
        if now != *was {
            println!("L2FWD-LINK port={id} state={} t={:.1}s", link_name(&now), begin.elapsed().as_secs_f64());
            std::io::stdout().flush().ok();
            *was = now;
        }
    }
}

/// Changes `port`'s RSS configuration at run time, through the control queue: the indirection
/// table to `queues` (repeated to the table's length: the one in use, the default's without
/// one) and the key to `key`, each when given, keeping the rest.
fn change_rss(port: &mut Port, queues: Option<&[u16]>, key: Option<&[u8]>) -> virtio_pmd::Result<()> {
    let mut rss = port.rss_config().cloned().ok_or_else(|| {
        virtio_pmd::Error::InvalidConfig(format!(
            "{}: an RSS table or key was given, but the device does not do RSS (no VIRTIO_NET_F_RSS; QEMU: rss=on)",
            port.name()
        ))
    })?;
    if let Some(queues) = queues {
        let len = rss.table.len().max(virtio_pmd::net::DEFAULT_TABLE_LEN);
        rss.table = queues.iter().copied().cycle().take(len).collect();
    }
    if let Some(key) = key {
        rss.key = key.to_vec();
    }
    port.set_rss(&rss)
}

/// Sets a port's receive filters: its MAC table (unicast and multicast addresses sorted by
/// their I/G bit), all-multicast mode, VLAN ids; prints `L2FWD-FILTER`.
fn set_filters(port: &mut Port, c: &config::PortControl) -> virtio_pmd::Result<()> {
    if !c.mac_table.is_empty() {
        let (multicast, unicast): (Vec<[u8; 6]>, Vec<[u8; 6]>) =
            c.mac_table.iter().map(|m| m.0).partition(|m| m[0] & 1 != 0);
        port.set_mac_table(&unicast, &multicast)?;
    }
    if c.allmulti {
        port.set_all_multicast(true)?;
    }
    for vid in &c.vlans {
        port.vlan_filter(*vid, true)?;
    }
    println!(
        "L2FWD-FILTER port={} mac_table={} allmulti={} vlans={}",
        c.port,
        c.mac_table.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(","),
        if c.allmulti { "on" } else { "off" },
        c.vlans.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
    );
    Ok(())
}

fn print_stats(begin: Instant, over: Duration, before: &[Snapshot], now: &[Snapshot]) {
    let t = begin.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    for (id, (b, n)) in before.iter().zip(now).enumerate() {
        let errors = if n.errors + n.alloc_failures > 0 {
            format!(" errors={} alloc_failures={}", n.errors, n.alloc_failures)
        } else {
            String::new()
        };
        let (rx, tx) = (mpps(n.rx - b.rx, over), mpps(n.tx - b.tx, over));
        writeln!(
            out,
            "L2FWD-STATS t={t:.1}s port={id} rx={} tx={} dropped={} rx_mpps={rx:.4} tx_mpps={tx:.4}{errors}",
            n.rx, n.tx, n.dropped
        )
        .ok();
    }
    out.flush().ok();
}

/// The `L2FWD-SUMMARY` lines (and their JSON, with the extended statistics): per port, then
/// the total.
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
            println!(
                "L2FWD-RXQ port={id} queue={q} rx={} tx={} kicks={} ring_size={}",
                r.packets,
                t.packets,
                r.kicks + t.kicks,
                port.pair_ring_size(q as u16).unwrap_or(0)
            );
        }
    }
    println!(
        "L2FWD-SUMMARY total ports={} rx={} tx={} dropped={} errors={} seconds={:.1}",
        set.ports().len(),
        total.rx,
        total.tx,
        total.dropped,
        total.errors,
        over.as_secs_f64()
    );
}
