//! `l2fwd`: DPDK's l2fwd on virtio-pmd. Frames received on port 0 leave on port 1 and the
//! reverse (2 <-> 3, ...; the last of an odd number of ports answers on itself), each with its
//! destination MAC set to `02:00:00:00:00:<output port>` (or the port's configured `dst_mac`) and
//! its source MAC set to the output port's own.
//!
//! ```text
//! l2fwd 0000:00:03.0 0000:00:04.0            # ports by PCI address (bound to vfio-pci)
//! l2fwd --port 0000:00:03.0 --port 0000:00:04.0 --cores 0,1
//! l2fwd --config config/l2fwd-vm.toml         # or from a TOML file (see config.rs)
//! l2fwd --no-iommu 0000:00:03.0 0000:00:04.0 # no IOMMU (VFIO no-IOMMU or uio_pci_generic), physical addresses
//! ```
//!
//! Start-up: one VFIO container for every port, one mempool, each port initialised with one
//! queue pair; the lanes (receive queue -> peer's transmit queue) are spread over one polling
//! thread per listed core, pinned (no cores: one unpinned thread polls every lane). Once every
//! thread polls it prints `L2FWD-READY ports=<n> threads=<t>`; then `L2FWD-STATS` lines (per port:
//! rx, tx, dropped, Mpps) every `stats_interval` seconds.
//!
//! SIGINT/SIGTERM (or `--duration`) stop it: the threads stop polling and hand their queues back,
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use virtio_pmd::mbuf::{Mempool, MempoolConfig};
use virtio_pmd::mem::IovaAllocator;
use virtio_pmd::net::{Port, PortConfig};
use virtio_pmd::transport::vfio::{Container, VfioPciTransport};
use virtio_pmd::transport::{open_without_iommu, RingFormat, Transport};

use config::{FileConfig, Settings};
use fwd::{Lane, LaneCounters};
use virtio_pmd_apps::mac::Mac;
use virtio_pmd_apps::options::{Huge, Ring};
use virtio_pmd_apps::report::{init_logging, mpps, Snapshot};
use virtio_pmd_apps::signal::{self, STOP};

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
    /// Ring layout [default: auto].
    #[arg(long, value_enum)]
    ring: Option<Ring>,
    /// Descriptors per ring [default: the device's maximum, at most 1024].
    #[arg(long)]
    ring_size: Option<u16>,
    /// Frames per burst [default: 32].
    #[arg(long)]
    burst: Option<usize>,
    /// Mbufs in the pool [default: 8192].
    #[arg(long)]
    pool_size: Option<u32>,
    /// Mbufs each polling thread caches [default: 256].
    #[arg(long)]
    pool_cache: Option<u32>,
    /// Seconds between statistics lines, 0 for none [default: 1].
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// Cores of the polling threads, one thread each (e.g. 0,1) [default: one unpinned thread].
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Huge pages for the pool and the rings [default: preferred].
    #[arg(long, value_enum)]
    huge_pages: Option<Huge>,
    /// Microseconds a polling thread sleeps once its queues stayed empty for a while, 0 for never
    /// (pure polling) [default: 0].
    #[arg(long, value_name = "US")]
    idle_sleep_us: Option<u64>,
    /// Turn promiscuous mode on at start, through the device's control queue [default: off].
    #[arg(long)]
    promisc: bool,
    /// No IOMMU (a VM without a vIOMMU): open the ports through VFIO's no-IOMMU mode (bound to
    /// vfio-pci) or uio_pci_generic, and give the devices physical addresses (root, huge pages).
    /// The devices can then reach ALL memory.
    #[arg(long)]
    no_iommu: bool,
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

impl Failure {
    /// A library error while doing `what`: a configuration the device cannot take (ring size,
    /// ring layout) is a configuration error, anything else a device error.
    fn device(what: impl std::fmt::Display) -> impl FnOnce(virtio_pmd::Error) -> Failure {
        move |e| {
            let msg = format!("{what}: {}", describe(&e));
            match e {
                virtio_pmd::Error::InvalidConfig(_) | virtio_pmd::Error::QueueSizeRefused { .. } => Failure::Usage(msg),
                _ => Failure::Runtime(msg),
            }
        }
    }
}

/// An error with its chain of sources (each once).
fn describe(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    msg
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
    let file = match &cli.config {
        Some(path) => Some((path.as_path(), FileConfig::load(path)?)),
        None => None,
    };
    let cli_ports = if cli.port.is_empty() { cli.pci.clone() } else { cli.port.clone() };
    Settings::resolve(
        file,
        FileConfig {
            ring: cli.ring,
            ring_size: cli.ring_size,
            burst: cli.burst,
            pool_size: cli.pool_size,
            pool_cache: cli.pool_cache,
            stats_interval: cli.stats_interval,
            cores: cli.cores.clone(),
            huge_pages: cli.huge_pages,
            idle_sleep_us: cli.idle_sleep_us,
            promiscuous: cli.promisc.then_some(true),
            no_iommu: cli.no_iommu.then_some(true),
            ..FileConfig::with_ports(&cli_ports)
        },
    )
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
    if let Err(e) = signal::install() {
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
    let ports: Vec<String> = s.ports.iter().map(|p| p.pci.clone()).collect();
    println!(
        "l2fwd: ports {} (pairs {}), ring {}, ring size {}, burst {}, pool {} mbufs (cache {}), huge pages {}, \
         cores {}, idle {}, stats every {}{}{}",
        ports.join(" "),
        (0..s.ports.len()).map(|i| format!("{i}->{}", s.peer_of(i))).collect::<Vec<_>>().join(" "),
        s.ring.name(),
        s.ring_size.map_or("device max".into(), |n| n.to_string()),
        s.burst,
        s.pool_size,
        s.pool_cache,
        s.huge_pages.name(),
        if s.cores.is_empty() { "unpinned (one thread)".into() } else { format!("{:?}", s.cores) },
        s.idle_sleep.map_or("busy polling".into(), |d| format!("sleep {} us", d.as_micros())),
        s.stats_interval.map_or("never".into(), |d| format!("{} s", d.as_secs())),
        if s.no_iommu { ", NO IOMMU (physical addresses)" } else { "" },
        s.source.as_ref().map(|p| format!(", from {}", p.display())).unwrap_or_default(),
    );
}

/// The ports, the lanes' counters, and which lanes transmit on which port.
struct Monitor<'a> {
    ports: &'a [Port],
    lanes: Vec<(usize, Arc<LaneCounters>)>,
}

impl Monitor<'_> {
    fn snapshots(&self) -> Vec<Snapshot> {
        self.ports
            .iter()
            .enumerate()
            .map(|(id, port)| {
                let drops =
                    self.lanes.iter().filter(|(tx, _)| *tx == id).map(|(_, c)| c.dropped.load(Ordering::Relaxed)).sum();
                Snapshot::of(&port.stats(), drops)
            })
            .collect()
    }
}

/// The opened ports and the IOVA allocator every DMA region of theirs gets its address from.
type OpenPorts = (Vec<Box<dyn Transport>>, Arc<IovaAllocator>);

/// Opens every port: through VFIO, in one container, before any DMA memory exists (the IOMMU's
/// valid IOVA ranges are known once the groups are attached); or, without an IOMMU, through
/// VFIO's no-IOMMU mode (bound to vfio-pci) or uio_pci_generic, with physical addresses. Returns the transports and the IOVA allocator.
fn open_transports(s: &Settings) -> Result<OpenPorts, Failure> {
    let mut transports: Vec<Box<dyn Transport>> = Vec::with_capacity(s.ports.len());
    if s.no_iommu {
        for (id, p) in s.ports.iter().enumerate() {
            transports.push(open_without_iommu(&p.pci).map_err(Failure::device(format!("port {id}")))?);
        }
        println!(
            "l2fwd: no IOMMU: {} ports through VFIO's no-IOMMU mode or uio_pci_generic, DMA at physical addresses",
            transports.len()
        );
        return Ok((transports, Arc::new(IovaAllocator::physical())));
    }
    let container = Container::open().map_err(Failure::device("opening the VFIO container"))?;
    for (id, p) in s.ports.iter().enumerate() {
        transports
            .push(Box::new(VfioPciTransport::open(&container, &p.pci).map_err(Failure::device(format!("port {id}")))?));
    }
    let iova = container.iova_allocator().map_err(Failure::device("VFIO IOVA allocator"))?;
    Ok((transports, iova))
}

/// Opens a port with one queue pair on each transport (promiscuous when asked).
fn open_ports(
    s: &Settings,
    transports: Vec<Box<dyn Transport>>,
    pool: &Mempool,
    iova: &IovaAllocator,
) -> Result<Vec<Port>, Failure> {
    let mut ports = Vec::with_capacity(s.ports.len());
    for (id, transport) in transports.into_iter().enumerate() {
        let config = PortConfig {
            port_id: id as u16,
            queue_pairs: 1,
            ring_size: s.ring_size,
            ring: s.ring.into(),
            huge_pages: s.huge_pages.into(),
            ..PortConfig::default()
        };
        let mut port = Port::open(transport, pool, &config, iova)
            .map_err(Failure::device(format!("port {id} ({})", s.ports[id].pci)))?;
        if s.promiscuous {
            port.set_promiscuous(true)
                .map_err(Failure::device(format!("port {id} ({}): promiscuous mode", s.ports[id].pci)))?;
            println!("l2fwd: port {id}: promiscuous mode on (VIRTIO_NET_CTRL_RX_PROMISC acknowledged)");
        }
        ports.push(port);
    }
    Ok(ports)
}

/// Prints the `L2FWD-POOL` line; returns how many mbufs are not back.
fn report_pool(pool: &Mempool) -> u32 {
    let stats = pool.stats();
    println!(
        "L2FWD-POOL size={} available={} in_use={} alloc_failures={}: {}",
        stats.size,
        stats.available,
        stats.in_use,
        stats.alloc_failures,
        if stats.in_use == 0 {
            "every mbuf is back in the pool".to_string()
        } else {
            format!("{} mbufs LEAKED", stats.in_use)
        }
    );
    stats.in_use
}

fn run(s: &Settings, duration: Option<Duration>) -> Result<(), Failure> {
    // 1. Every port, before any DMA memory exists.
    let (transports, iova) = open_transports(s)?;

    // 2. One pool for every port: a frame received on one is sent on another without a copy.
    let pool = Mempool::new(
        &MempoolConfig {
            name: "l2fwd-pool".into(),
            count: s.pool_size,
            cache_size: s.pool_cache,
            huge_pages: s.huge_pages.into(),
            ..MempoolConfig::default()
        },
        &iova,
    )
    .map_err(Failure::device("mbuf pool"))?;

    // 3. The ports, each with one queue pair. If one fails, those opened drop (each device is
    //    reset before its buffers return), and the pool shows that every mbuf came back.
    let mut ports = match open_ports(s, transports, &pool, &iova) {
        Ok(ports) => ports,
        Err(failure) => {
            report_pool(&pool);
            return Err(failure);
        }
    };
    let mut src_macs = Vec::with_capacity(ports.len());
    for (id, port) in ports.iter().enumerate() {
        let configured = s.ports[id].mac;
        let mac = match (port.mac(), configured) {
            (Some(device), Some(c)) if Mac(device) != c => {
                println!(
                    "l2fwd: port {id}: the device's MAC {} is used; the configured mac {c} is only for devices \
                     without one",
                    Mac(device)
                );
                Mac(device)
            }
            (Some(device), _) => Mac(device),
            (None, Some(c)) => c,
            (None, None) => {
                let mac = Mac::fallback(id);
                println!("l2fwd: port {id}: the device reports no MAC (no VIRTIO_NET_F_MAC) and none is configured: using {mac}");
                mac
            }
        };
        let link = match port.link_up() {
            Ok(true) => "up".to_string(),
            Ok(false) => "down".to_string(),
            Err(e) => format!("unknown ({})", describe(&e)),
        };
        println!(
            "L2FWD-PORT {id} pci={} mac={mac} out_dst_mac={} peer={} ring={} ring_size={} mtu={} link={link} \
             features={:?}",
            port.name(),
            s.ports[id].dst_mac,
            s.peer_of(id),
            match port.ring_format() {
                RingFormat::Packed => "packed",
                RingFormat::Split => "split",
            },
            port.ring_size(),
            port.mtu().map_or("-".into(), |m| m.to_string()),
            port.features(),
        );
        src_macs.push(mac);
    }
    let plan = fwd::plan(ports.len(), &s.cores);
    let needed = ports.iter().map(|p| 2 * u32::from(p.ring_size())).sum::<u32>()
        + plan.len() as u32 * (s.burst as u32 + 3 * s.pool_cache);
    if needed > s.pool_size {
        println!(
            "l2fwd: warning: pool_size {} may be too small: the rings and thread caches can hold {needed} mbufs \
             (receive refills will fail and frames be dropped)",
            s.pool_size
        );
    }

    // 4. The lanes: port i's receive queue feeds its peer's transmit queue.
    let mut rx = Vec::with_capacity(ports.len());
    let mut tx: Vec<Option<_>> = Vec::with_capacity(ports.len());
    for (id, port) in ports.iter_mut().enumerate() {
        let (r, t) =
            port.take_queues(0).ok_or_else(|| Failure::Runtime(format!("port {id}: the port has no queue pair 0")))?;
        rx.push(Some(r));
        tx.push(Some(t));
    }
    let mut slots: Vec<Option<Lane>> = Vec::with_capacity(ports.len());
    for (id, rx) in rx.into_iter().enumerate() {
        let peer = s.peer_of(id);
        match (rx, tx[peer].take()) {
            (Some(r), Some(t)) => {
                slots.push(Some(Lane::new(id, r, peer, t, s.ports[peer].dst_mac.0, src_macs[peer].0)));
            }
            _ => return Err(Failure::Runtime(format!("internal error: the queues of lane {id} -> {peer} are gone"))),
        }
    }
    let monitor =
        Monitor { ports: &ports, lanes: slots.iter().flatten().map(|lane| (lane.tx_port, lane.counters())).collect() };

    // 5. The polling threads.
    let available = core_affinity::get_core_ids().unwrap_or_default();
    let started = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<(String, JoinHandle<Vec<Lane>>)> = Vec::with_capacity(plan.len());
    let mut failure = None;
    for (t, (core, indices)) in plan.iter().enumerate() {
        let lanes: Vec<Lane> = indices.iter().filter_map(|i| slots[*i].take()).collect();
        let pin = core.and_then(|c| available.iter().find(|id| id.id == c).copied());
        if let (Some(c), None) = (core, pin) {
            println!(
                "l2fwd: warning: core {c} does not exist (cores here: {:?}); thread {t} runs unpinned",
                available.iter().map(|id| id.id).collect::<Vec<_>>()
            );
        }
        let what = format!(
            "thread {t} ({}; lanes {})",
            core.map_or("unpinned".into(), |c| format!("core {c}")),
            lanes.iter().map(|l| format!("{}->{}", l.rx_port, l.tx_port)).collect::<Vec<_>>().join(" ")
        );
        let (burst, idle_sleep, started) = (s.burst, s.idle_sleep, started.clone());
        let spawned = std::thread::Builder::new().name(format!("l2fwd-{t}")).spawn(move || {
            if let Some(id) = pin {
                if !core_affinity::set_for_current(id) {
                    eprintln!("l2fwd: warning: cannot pin thread {t} to core {}; it runs unpinned", id.id);
                }
            }
            started.fetch_add(1, Ordering::SeqCst);
            fwd::poll(lanes, burst, idle_sleep, &STOP)
        });
        match spawned {
            Ok(handle) => threads.push((what, handle)),
            Err(e) => {
                failure = Some(Failure::Runtime(format!("cannot start polling thread {t}: {e}")));
                STOP.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    while failure.is_none() && started.load(Ordering::SeqCst) < threads.len() && !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let begin = Instant::now();
    if failure.is_none() {
        for (what, _) in &threads {
            println!("l2fwd: {what} polling");
        }
        println!("L2FWD-READY ports={} threads={}", ports.len(), threads.len());
        std::io::stdout().flush().ok();
    }

    // 6. Statistics until a signal, the duration, or a failure.
    let mut last = (begin, monitor.snapshots());
    while failure.is_none() && !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if STOP.load(Ordering::SeqCst) {
            // The threads may already have seen it and returned: not a failure.
            break;
        }
        if duration.is_some_and(|d| begin.elapsed() >= d) {
            println!("l2fwd: --duration reached, stopping");
            break;
        }
        if let Some((what, _)) = threads.iter().find(|(_, h)| h.is_finished()) {
            failure = Some(Failure::Runtime(format!("polling {what} stopped unexpectedly")));
            break;
        }
        if let Some(interval) = s.stats_interval {
            let now = Instant::now();
            if now - last.0 >= interval {
                let snaps = monitor.snapshots();
                print_stats(begin, now - last.0, &last.1, &snaps);
                last = (now, snaps);
                for (id, port) in ports.iter().enumerate() {
                    if let Err(e) = port.check() {
                        failure = Some(Failure::Runtime(format!("port {id}: {}", describe(&e))));
                    }
                }
            }
        }
    }
    let stopped_at = begin.elapsed();
    if STOP.load(Ordering::SeqCst) && failure.is_none() {
        println!("l2fwd: stop requested (signal), stopping");
    }

    // 7. Shutdown: threads hand their lanes back; dropping the queues resets each device before
    //    its buffers return to the pool.
    STOP.store(true, Ordering::SeqCst);
    let mut lanes = Vec::new();
    for (what, handle) in threads {
        match handle.join() {
            Ok(l) => lanes.extend(l),
            Err(_) => {
                failure.get_or_insert(Failure::Runtime(format!("polling {what} panicked")));
            }
        }
    }
    drop(lanes);
    drop(slots);
    let end = monitor.snapshots();
    print_summary(s, &ports, &end, stopped_at);
    drop(monitor);
    drop(ports);
    drop(iova);

    // 8. Every mbuf must be back.
    let in_use = report_pool(&pool);
    if let Some(f) = failure {
        return Err(f);
    }
    if in_use != 0 {
        return Err(Failure::Runtime(format!("{in_use} mbufs did not come back to the pool")));
    }
    println!("L2FWD-DONE clean");
    Ok(())
}

fn print_stats(begin: Instant, over: Duration, before: &[Snapshot], now: &[Snapshot]) {
    let t = begin.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    for (id, (b, n)) in before.iter().zip(now).enumerate() {
        writeln!(
            out,
            "L2FWD-STATS t={t:.1}s port={id} rx={} tx={} dropped={} rx_mpps={:.4} tx_mpps={:.4}{}",
            n.rx,
            n.tx,
            n.dropped,
            mpps(n.rx - b.rx, over),
            mpps(n.tx - b.tx, over),
            if n.errors + n.alloc_failures > 0 {
                format!(" errors={} alloc_failures={}", n.errors, n.alloc_failures)
            } else {
                String::new()
            }
        )
        .ok();
    }
    out.flush().ok();
}

fn print_summary(s: &Settings, ports: &[Port], end: &[Snapshot], over: Duration) {
    let mut total = Snapshot::default();
    for (id, (port, n)) in ports.iter().zip(end).enumerate() {
        println!(
            "L2FWD-SUMMARY port={id} pci={} rx={} tx={} dropped={} errors={} alloc_failures={} kicks={} \
             rx_mpps={:.4} tx_mpps={:.4}",
            port.name(),
            n.rx,
            n.tx,
            n.dropped,
            n.errors,
            n.alloc_failures,
            n.kicks,
            mpps(n.rx, over),
            mpps(n.tx, over)
        );
        total.rx += n.rx;
        total.tx += n.tx;
        total.dropped += n.dropped;
        total.errors += n.errors;
    }
    println!(
        "L2FWD-SUMMARY total ports={} rx={} tx={} dropped={} errors={} seconds={:.1}",
        s.ports.len(),
        total.rx,
        total.tx,
        total.dropped,
        total.errors,
        over.as_secs_f64()
    );
}
