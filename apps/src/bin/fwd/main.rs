//! `fwd`: testpmd-like forwarding on any mix of virtio-net ports — VFIO PCI functions
//! (`--port pci:0000:00:03.0`) and vhost-user backends (`--port vhost:/tmp/vh.sock`) — written on
//! virtio-pmd's public API only.
//!
//! Modes: `io`, `mac`, `macswap` (as testpmd's), `rxonly` (with `--verify`, every frame is checked
//! against fwd's or DPDK txonly's generator), `txonly` (frames with per-stream sequence numbers and
//! a checkable payload, [`frame`]) and `echo` (generate, get the frames back from a peer in
//! macswap or io mode, check every byte, the MACs and the order, measure the round trip).
//!
//! Ports pair up like testpmd's (0<->1, 2<->3; a lone last port forwards to itself); queue pair q
//! of a port forwards to queue pair q of its peer. One thread per queue set (`--nb-cores`,
//! pinned with `--cores`); see [`engine`] for the loops and the busy-cycle accounting.
//!
//! Output: the settings, one line per port, `FWD-READY` once forwarding runs, statistics every
//! `--stats-period`, per-port totals at the end, the pool check, and last a machine-readable
//! line:
//!
//! ```text
//! FWD-SUMMARY mode=mac ring=packed ports=1 queues=1 threads=1 burst=32 seconds=5.000 rx_pkts=.. tx_pkts=..
//!   drops=.. mpps=.. cycles_per_pkt=.. busy_cycles=.. avg_burst=.. tsc_mhz=.. tx_inflight=0 pool_in_use=0 [verified=..
//!   bad=.. gaps=.. reorders=.. lost=..] [rtt_p50_us=.. rtt_p99_us=.. rtt_p999_us=.. rtt_max_us=..]
//! ```
//!
//! (one line). `mpps` is frames received per second (sent, in txonly) over the forwarding time;
//! `cycles_per_pkt` is testpmd's `--record-core-cycles` figure; `avg_burst` is frames per poll
//! iteration that moved any (the iterations those cycles are counted over).
//!
//! Exit status: 0 clean; 1 damaged frames, or buffers missing from the pool after the stop;
//! 2 the run could not be set up (bad option, port that would not open).
#![deny(unsafe_code)]

mod config;
mod engine;
mod frame;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use virtio_pmd::mbuf::{Mempool, MempoolConfig};
use virtio_pmd::mem::IovaAllocator;
use virtio_pmd::net::{Port, PortConfig};
use virtio_pmd::transport::vfio::{Container, VfioPciTransport};
use virtio_pmd::transport::vhost_user::{VhostUserConfig, VhostUserTransport};
use virtio_pmd::transport::{RingFormat, Transport};

use config::{peer_of, Cli, Mode, PortSpec, Settings};
use engine::{Lcore, Live, Params, Stream, Totals};
use frame::Template;
use virtio_pmd_apps::mac::Mac;
use virtio_pmd_apps::report::{init_logging, mpps, Snapshot};
use virtio_pmd_apps::signal::{self, STOP};
use virtio_pmd_apps::tsc;

/// How often the main thread looks at the clock and the stop flag.
const TICK: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    init_logging("warn", true);
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("fwd: {err}");
            return ExitCode::from(2);
        }
    };
    print_settings(&settings);
    if cli.check_config {
        return ExitCode::SUCCESS;
    }
    if let Err(err) = signal::install() {
        eprintln!("fwd: cannot install the SIGINT/SIGTERM handler: {err}");
        return ExitCode::from(2);
    }
    match run(&settings) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("fwd: {err}");
            ExitCode::from(2)
        }
    }
}

fn print_settings(s: &Settings) {
    println!(
        "fwd: mode {} | {} port(s) | {} queue set(s) on {} thread(s){} | burst {} | {} descriptors | ring {:?} | in_order {} | \
         {} mbufs (cache {}) | huge pages {:?}{}",
        s.mode.name(),
        s.ports.len(),
        s.queue_sets,
        s.threads,
        if s.cores.is_empty() { String::new() } else { format!(" (cores {:?})", &s.cores[..s.threads]) },
        s.burst,
        s.ring_size,
        s.ring,
        s.in_order,
        s.mbufs,
        s.mbuf_cache,
        s.huge_pages,
        match s.mode {
            Mode::Txonly | Mode::Echo => format!(" | frames of {} bytes", s.txpkts),
            _ => String::new(),
        },
    );
}

/// Opens every port's transport (VFIO ports first share one container), then the pool, then the
/// ports. Returns the ports, their source MACs, and the pool.
fn open_ports(s: &Settings) -> Result<(Vec<Port>, Vec<Mac>, Mempool), String> {
    let mut container = None;
    let mut transports: Vec<Box<dyn Transport>> = Vec::new();
    let mut macs = Vec::new();
    for (id, spec) in s.ports.iter().enumerate() {
        match spec {
            PortSpec::Pci { bdf } => {
                if container.is_none() {
                    container = Some(Container::open().map_err(|e| format!("opening the VFIO container: {e}"))?);
                }
                let c = container.as_ref().ok_or("no VFIO container")?;
                let t = VfioPciTransport::open(c, bdf).map_err(|e| format!("port {id} ({bdf}): {e}"))?;
                transports.push(Box::new(t));
                macs.push(None);
            }
            PortSpec::Vhost { path, mac, .. } => {
                let mac = mac.unwrap_or(Mac::default_vhost(id));
                let mut config = VhostUserConfig::new(path);
                config.mac = mac.0;
                let t = VhostUserTransport::connect(config).map_err(|e| format!("port {id}: {e}"))?;
                macs.push(Some(mac));
                transports.push(Box::new(t));
            }
        }
    }
    // IOVAs: the VFIO container's allocator when a PCI port is present (its IOMMU decides what is
    // valid), otherwise identity (a vhost-user backend maps our memory by its virtual address).
    let iova: Arc<IovaAllocator> = match &container {
        Some(c) => c.iova_allocator().map_err(|e| format!("VFIO IOVA allocator: {e}"))?,
        None => Arc::new(IovaAllocator::identity()),
    };
    let pool = Mempool::new(
        &MempoolConfig {
            name: "fwd".into(),
            count: s.mbufs,
            cache_size: s.mbuf_cache,
            huge_pages: s.huge_pages.into(),
            ..MempoolConfig::default()
        },
        &iova,
    )
    .map_err(|e| format!("mempool of {} mbufs: {e}", s.mbufs))?;
    let mut ports = Vec::new();
    let mut port_macs = Vec::new();
    for (id, (transport, configured)) in transports.into_iter().zip(macs).enumerate() {
        let config = PortConfig {
            port_id: id as u16,
            queue_pairs: s.port_queues[id],
            ring_size: Some(s.ring_size),
            ring: s.ring.into(),
            in_order: s.in_order,
            huge_pages: s.huge_pages.into(),
            ..PortConfig::default()
        };
        let port = Port::open(transport, &pool, &config, &iova)
            .map_err(|e| format!("port {id} ({}): {e}", s.ports[id].describe()))?;
        let mac = port.mac().map(Mac).or(configured).unwrap_or(Mac([0x02, 0, 0, 0xff, 0, id as u8]));
        println!(
            "port {id}: {} | mac {mac} | {:?} ring of {} | {} queue pair(s) | features {:?} | peer port {} -> {}",
            s.ports[id].describe(),
            port.ring_format(),
            port.ring_size(),
            port.queue_pairs(),
            port.features(),
            peer_of(id, s.ports.len()),
            s.eth_peers[id],
        );
        ports.push(port);
        port_macs.push(mac);
    }
    Ok((ports, port_macs, pool))
}

/// Splits the ports' queues among the threads and builds each thread's streams.
fn build_lcores(s: &Settings, ports: &mut [Port], macs: &[Mac]) -> Result<Vec<Lcore>, String> {
    let n = ports.len();
    // Stream id of (port, pair): ports' pairs numbered in order.
    let first_id: Vec<usize> =
        s.port_queues.iter().scan(0usize, |next, &q| Some(std::mem::replace(next, *next + q as usize))).collect();
    let mut lcores: Vec<Lcore> = (0..s.threads)
        .map(|index| Lcore {
            index,
            core: s.cores.get(index).copied(),
            rx: Vec::new(),
            tx: Vec::new(),
            streams: Vec::new(),
        })
        .collect();
    for q in 0..s.queue_sets {
        let lcore = &mut lcores[q as usize % s.threads];
        // Index of each port's pair q in this thread's queue lists.
        let mut local = vec![None; n];
        for (p, port) in ports.iter_mut().enumerate() {
            if q >= s.port_queues[p] {
                continue;
            }
            let (rx, tx) = port.take_queues(q).ok_or_else(|| format!("port {p}: queue pair {q} is not available"))?;
            local[p] = Some(lcore.rx.len());
            lcore.rx.push(rx);
            lcore.tx.push(tx);
        }
        for p in 0..n {
            let Some(rx) = local[p] else { continue };
            let out = match s.mode {
                Mode::Echo | Mode::Rxonly => p,
                _ => peer_of(p, n),
            };
            let tx = local[out].ok_or_else(|| format!("port {out} has no queue pair {q} to forward port {p}'s to"))?;
            let id = (first_id[p] + q as usize) as u16;
            let mut l2 = [0u8; 12];
            l2[..6].copy_from_slice(&s.eth_peers[out].0);
            l2[6..].copy_from_slice(&macs[out].0);
            let template = matches!(s.mode, Mode::Txonly | Mode::Echo)
                .then(|| Template::new(s.eth_peers[out].0, macs[out].0, s.txpkts, id));
            lcore.streams.push(Stream { rx, tx, tx_port: out, id, l2, template });
        }
    }
    Ok(lcores)
}

/// A port's counters at one moment.
fn snapshots(ports: &[Port], lives: &[Arc<Live>]) -> Vec<Snapshot> {
    ports
        .iter()
        .enumerate()
        .map(|(p, port)| {
            let drops = lives.iter().map(|l| l.drops[p].load(Ordering::Relaxed)).sum();
            Snapshot::of(&port.stats(), drops)
        })
        .collect()
}

fn print_stats(elapsed: Duration, over: Duration, before: &[Snapshot], now: &[Snapshot]) {
    for (p, (b, n)) in before.iter().zip(now).enumerate() {
        println!(
            "[{:7.1}s] port {p}: rx {} tx {} drops {} errors {} | rx {:.3} Mpps tx {:.3} Mpps",
            elapsed.as_secs_f64(),
            n.rx,
            n.tx,
            n.dropped,
            n.errors,
            mpps(n.rx - b.rx, over),
            mpps(n.tx - b.tx, over),
        );
    }
    let _ = std::io::stdout().flush();
}

/// Sets up, forwards until the duration is over or a signal comes, stops cleanly and reports.
/// Ok(false): the run finished but found damaged frames or missing buffers.
fn run(s: &Settings) -> Result<bool, String> {
    let (mut ports, macs, pool) = open_ports(s)?;
    let lcores = build_lcores(s, &mut ports, &macs)?;
    let format = ports.first().map(Port::ring_format);
    let params = Params {
        mode: s.mode,
        burst: s.burst,
        verify: s.verify,
        verify_len: s.verify_len,
        echo_window: s.echo_window,
        echo_expect: s.echo_expect,
        dump: s.dump,
        ports: ports.len(),
        pool: pool.clone(),
    };
    let lives: Vec<Arc<Live>> = lcores.iter().map(|_| Arc::new(Live::new(params.ports))).collect();
    let drained = Arc::new(Barrier::new(lcores.len()));
    let begin = tsc::Mark::now();
    let started = Instant::now();
    let mut handles = Vec::new();
    for (lcore, live) in lcores.into_iter().zip(&lives) {
        let (params, live, drained) = (params.clone(), live.clone(), drained.clone());
        let name = format!("fwd-lcore-{}", lcore.index);
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || engine::run(lcore, &params, &live, &STOP, &drained))
            .map_err(|e| format!("cannot start thread {name}: {e}"))?;
        handles.push(handle);
    }
    println!("FWD-READY ports={} threads={}", ports.len(), handles.len());
    let _ = std::io::stdout().flush();

    let mut last = snapshots(&ports, &lives);
    let mut last_at = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if s.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if let Some(period) = s.stats_period {
            if last_at.elapsed() >= period {
                let now = snapshots(&ports, &lives);
                print_stats(started.elapsed(), last_at.elapsed(), &last, &now);
                (last, last_at) = (now, Instant::now());
            }
        }
    }
    STOP.store(true, Ordering::SeqCst);

    let mut totals: Option<Totals> = None;
    let mut panicked = 0;
    for handle in handles {
        match handle.join() {
            Ok(t) => match &mut totals {
                Some(sum) => sum.merge(&t),
                None => totals = Some(t),
            },
            Err(_) => panicked += 1,
        }
    }
    let Some(totals) = totals else {
        return Err("every forwarding thread panicked".into());
    };
    // Forwarding time: until the last thread stopped polling (its stop phase included, since
    // what it received then is counted too).
    let forwarding = totals.stopped.unwrap_or_else(Instant::now).duration_since(started);
    let end = tsc::Mark::now();
    let end_stats = snapshots(&ports, &lives);
    for (p, (n, port)) in end_stats.iter().zip(&ports).enumerate() {
        let stats = port.stats();
        let per_queue = |queues: &[virtio_pmd::net::QueueStats]| {
            queues.iter().map(|q| q.packets.to_string()).collect::<Vec<_>>().join(",")
        };
        println!(
            "port {p} total: rx {} tx {} drops {} errors {} | rx {:.3} Mpps tx {:.3} Mpps | per queue rx [{}] tx [{}] \
             | tx kicks {} of {} publishes",
            n.rx,
            n.tx,
            n.dropped,
            n.errors,
            mpps(n.rx, forwarding),
            mpps(n.tx, forwarding),
            per_queue(&stats.rx_queues),
            per_queue(&stats.tx_queues),
            stats.tx.kicks,
            stats.tx.publishes,
        );
    }
    drop(ports);
    let pool_stats = pool.stats();
    drop(params);
    println!(
        "pool: {} mbufs, {} available, {} in use, {} allocation failures",
        pool_stats.size, pool_stats.available, pool_stats.in_use, pool_stats.alloc_failures
    );
    report(s, format, &totals, forwarding, begin.hz_until(&end), pool_stats.in_use);
    let clean = panicked == 0 && totals.bad == 0 && pool_stats.in_use == 0;
    if panicked > 0 {
        eprintln!("fwd: {panicked} forwarding thread(s) panicked");
    }
    if pool_stats.in_use > 0 {
        eprintln!("fwd: {} mbufs did not come back to the pool", pool_stats.in_use);
    }
    Ok(clean)
}

/// Prints the defects, dumps, testpmd's cycles line and the FWD-SUMMARY line.
fn report(s: &Settings, format: Option<RingFormat>, t: &Totals, over: Duration, tsc_hz: f64, in_use: u32) {
    for (queue, defect) in &t.defects {
        eprintln!("fwd: damaged frame on rx queue {queue}: {defect}");
    }
    for (i, (queue, len, bytes)) in t.dumps.iter().enumerate() {
        let shown = &bytes[..(*len).min(bytes.len())];
        let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
        println!("frame {i} (rx queue {queue}, {len} bytes): {}", hex.join(" "));
    }
    let packets = if s.mode == Mode::Txonly { t.tx } else { t.rx };
    let cycles_per_pkt = if packets == 0 { 0.0 } else { t.busy_cycles as f64 / packets as f64 };
    let avg_burst = if t.busy_polls == 0 { 0.0 } else { packets as f64 / t.busy_polls as f64 };
    println!(
        "CPU cycles/packet={cycles_per_pkt:.2} (busy cycles={} / {} packets={packets}) at {:.0} MHz TSC",
        t.busy_cycles,
        if s.mode == Mode::Txonly { "transmitted" } else { "received" },
        tsc_hz / 1e6
    );
    let ring = match format {
        Some(RingFormat::Packed) => "packed",
        Some(RingFormat::Split) => "split",
        None => "none",
    };
    let mut line = format!(
        "FWD-SUMMARY mode={} ring={ring} ports={} queues={} threads={} burst={} seconds={:.3} rx_pkts={} tx_pkts={} \
         drops={} mpps={:.3} cycles_per_pkt={cycles_per_pkt:.2} busy_cycles={} avg_burst={avg_burst:.1} tsc_mhz={:.0} \
         tx_inflight={} alloc_failures={} pool_in_use={in_use}",
        s.mode.name(),
        s.ports.len(),
        s.port_queues.iter().map(|&q| q as u32).sum::<u32>(),
        s.threads,
        s.burst,
        over.as_secs_f64(),
        t.rx,
        t.tx,
        t.drops,
        mpps(packets, over),
        t.busy_cycles,
        tsc_hz / 1e6,
        t.tx_inflight,
        t.alloc_failures,
    );
    if s.verify.is_some() || s.mode == Mode::Echo {
        line +=
            &format!(" verified={} bad={} gaps={} reorders={} lost={}", t.verified, t.bad, t.gaps, t.reorders, t.lost);
    }
    if s.mode == Mode::Echo && !t.rtt.is_empty() && tsc_hz > 0.0 {
        let us = |cycles: u64| cycles as f64 / tsc_hz * 1e6;
        line += &format!(
            " rtt_p50_us={:.2} rtt_p99_us={:.2} rtt_p999_us={:.2} rtt_max_us={:.2}",
            us(t.rtt.value_at_quantile(0.5)),
            us(t.rtt.value_at_quantile(0.99)),
            us(t.rtt.value_at_quantile(0.999)),
            us(t.rtt.max()),
        );
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
}
