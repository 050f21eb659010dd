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
//! Queues: `--queues N`, or testpmd's `--rxq N --txq N` (equal: a virtio-net port has queue
//! pairs); `--rss-ip`/`--rss-udp` set testpmd's RSS hash types on every port through the
//! library's [`Port::set_rss`] (an error on a device without VIRTIO_NET_F_RSS). Frames:
//! `--max-pkt-len`/`--mtu`, `--mbuf-size`; a frame larger than an mbuf is received into
//! mergeable buffers and sent as a chain, and generated frames are written as chains
//! ([`PortConfig::for_forwarding`]). `--offloads`: checksum, TSO and LRO negotiated where
//! offered; a forwarded frame keeps its offload metadata (the mbuf carries it from the receive
//! to the transmit side).
//!
//! Output: the settings, two lines per port, `FWD-READY` once forwarding runs, statistics every
//! `--stats-period`, per-port and per-queue totals at the end (testpmd's RX/TX packets and
//! drops per queue; `queue_total` JSON lines), the pool check, and last a machine-readable
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use virtio_pmd::lcore::{self, LcoreWork, STOP};
use virtio_pmd::mbuf::MempoolConfig;
use virtio_pmd::net::{MacAddr, Port, PortConfig, PortStats, RssConfig, DEFAULT_KEY, DEFAULT_TABLE_LEN};
use virtio_pmd::setup::{DeviceSpec, PortSet, PortSetConfig, SetupError};
use virtio_pmd::transport::RingFormat;

use config::{peer_of, Cli, Mode, Rss, Settings};
use engine::{Live, Params, Stream, Totals, Work};
use frame::Template;
use virtio_pmd_apps::report::{init_logging, mpps, JsonLine, Period, Record, Sampler, Snapshot};
use virtio_pmd_apps::tsc;

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
    if let Err(err) = lcore::install_stop_handler() {
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
    println!(
        "fwd: max frame {} bytes | mbuf data room {} bytes | multi-segment {} | offloads {} | rss {}",
        s.max_pkt_len,
        s.mbuf_size,
        s.multi_segment(),
        if s.offloads { "on" } else { "off" },
        s.rss.map_or("device default", Rss::option),
    );
}

/// Opens the ports through the library's [`PortSet`], sets RSS when asked, and prints two
/// lines per port.
fn open_ports(s: &Settings) -> Result<PortSet, String> {
    let config = PortSetConfig {
        pool: MempoolConfig {
            name: "fwd".into(),
            count: s.mbufs,
            cache_size: s.mbuf_cache,
            huge_pages: s.huge_pages,
            data_room: s.mbuf_size,
            ..MempoolConfig::default()
        },
        port: PortConfig {
            queue_pairs: s.port_queues[0],
            ring_size: Some(s.ring_size),
            ring: s.ring,
            in_order: s.in_order,
            huge_pages: s.huge_pages,
            packet_classes: s.packet_classes,
            ..PortConfig::default()
        }
        .for_forwarding(s.max_pkt_len, u32::from(s.mbuf_size), s.offloads),
    };
    let specs: Vec<DeviceSpec> =
        s.ports.iter().zip(&s.port_queues).map(|(p, &q)| DeviceSpec { queues: Some(q), ..p.clone() }).collect();
    let mut set = PortSet::open(&specs, &config).map_err(|e| e.to_string())?;
    let macs: Vec<MacAddr> = (0..s.ports.len()).map(|id| set.mac(id)).collect();
    for (id, port) in set.ports_mut().iter_mut().enumerate() {
        if let Some(rss) = s.rss {
            set_rss(port, rss).map_err(|e| format!("port {id} ({}): {}: {e}", s.ports[id], rss.option()))?;
        }
        println!(
            "port {id}: {} | mac {} | {:?} ring of {} | {} queue pair(s) | features {:?} | peer port {} -> {}",
            s.ports[id],
            macs[id],
            port.ring_format(),
            port.ring_size(),
            port.queue_pairs(),
            port.features(),
            peer_of(id, s.ports.len()),
            s.eth_peers[id],
        );
        println!(
            "port {id}: rx path {} | tx path {} | offloads {:?} | mtu {} | rss {}",
            port.rx_path(),
            port.tx_path(),
            port.offloads(),
            port.mtu().map_or("-".into(), |m| m.to_string()),
            port.rss_config().map_or("none (the device has no VIRTIO_NET_F_RSS)".into(), |c| format!(
                "hash types {:#x}, {}-byte key, {}-entry table",
                c.hash_types,
                c.key.len(),
                c.table.len()
            )),
        );
    }
    Ok(set)
}

/// Sets testpmd's `--rss-ip`/`--rss-udp` hash types on `port`, keeping its key and table (the
/// library's default spread over every queue pair); a device without RSS gets the library's
/// error, which says why.
fn set_rss(port: &mut Port, rss: Rss) -> virtio_pmd::Result<()> {
    let config = match port.rss_config() {
        Some(current) => RssConfig { hash_types: rss.hash_types(), ..current.clone() },
        // No RSS negotiated: `set_rss` refuses before sending anything, and says why.
        None => RssConfig {
            hash_types: rss.hash_types(),
            key: DEFAULT_KEY.to_vec(),
            table: vec![0; DEFAULT_TABLE_LEN],
            unclassified: 0,
        },
    };
    port.set_rss(&config)
}

/// Splits the ports' queues among the lcores and builds each lcore's streams.
fn build_lcores(s: &Settings, set: &mut PortSet) -> Result<Vec<LcoreWork<Work>>, String> {
    let n = set.ports().len();
    let macs: Vec<MacAddr> = (0..n).map(|id| set.mac(id)).collect();
    // Stream id of (port, pair): ports' pairs numbered in order.
    let first_id = first_queue_ids(s);
    let mut lcores: Vec<LcoreWork<Work>> = (0..s.threads)
        .map(|index| LcoreWork {
            core: s.cores.get(index).copied(),
            work: Work { rx: Vec::new(), tx: Vec::new(), streams: Vec::new() },
        })
        .collect();
    for q in 0..s.queue_sets {
        let lcore = &mut lcores[q as usize % s.threads].work;
        // Index of each port's pair q in this lcore's queue lists.
        let mut local = vec![None; n];
        for (p, port) in set.ports_mut().iter_mut().enumerate() {
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
            let tx_slot = first_id[out] + q as usize;
            let mut l2 = [0u8; 12];
            l2[..6].copy_from_slice(&s.eth_peers[out].0);
            l2[6..].copy_from_slice(&macs[out].0);
            let template = matches!(s.mode, Mode::Txonly | Mode::Echo)
                .then(|| Template::new(s.eth_peers[out].0, macs[out].0, s.txpkts, id));
            lcore.streams.push(Stream { rx, tx, tx_slot, id, l2, template });
        }
    }
    Ok(lcores)
}

/// The number of each port's queue pair 0 among every port's queue pairs (ports' pairs numbered
/// in order): stream ids and drop counter slots.
fn first_queue_ids(s: &Settings) -> Vec<usize> {
    s.port_queues.iter().scan(0usize, |next, &q| Some(std::mem::replace(next, *next + q as usize))).collect()
}

/// Frames the lcores dropped on transmit queue `slot` (it did not take them).
fn queue_app_drops(lives: &[Arc<Live>], slot: usize) -> u64 {
    lives.iter().map(|l| l.drops[slot].load(Ordering::Relaxed)).sum()
}

/// Frames the lcores dropped on port `p`'s transmit queues (they did not take them).
fn app_drops(s: &Settings, lives: &[Arc<Live>], p: usize) -> u64 {
    let first = first_queue_ids(s)[p];
    (first..first + s.port_queues[p] as usize).map(|slot| queue_app_drops(lives, slot)).sum()
}

/// The ports' counters at one moment.
fn snapshots(s: &Settings, ports: &[Port], lives: &[Arc<Live>]) -> Vec<Snapshot> {
    ports.iter().enumerate().map(|(p, port)| Snapshot::of(&port.stats(), app_drops(s, lives, p))).collect()
}

/// One `[t s] port p: ..` line per port over the period (and its JSON line).
fn print_stats(period: &Period, json: bool) {
    for (p, (_, n)) in period.ports.iter().enumerate() {
        let (rx, tx) = period.mpps(p);
        println!(
            "[{:7.1}s] port {p}: rx {} tx {} drops {} errors {} | rx {rx:.3} Mpps tx {tx:.3} Mpps",
            period.t, n.rx, n.tx, n.dropped, n.errors,
        );
        if json {
            println!("{}", period.json(p));
        }
    }
    let _ = std::io::stdout().flush();
}

/// Sets up, forwards until the duration is over or a signal comes, stops cleanly and reports.
/// Ok(false): the run finished but found damaged frames or missing buffers.
fn run(s: &Settings) -> Result<bool, String> {
    let mut set = open_ports(s)?;
    let lcores = build_lcores(s, &mut set)?;
    let format = set.ports().first().map(Port::ring_format);
    let params = Params {
        mode: s.mode,
        burst: s.burst,
        verify: s.verify,
        verify_len: s.verify_len,
        echo_window: s.echo_window,
        echo_expect: s.echo_expect,
        dump: s.dump,
        tx_slots: s.port_queues.iter().map(|&q| q as usize).sum(),
        max_pkt_len: s.max_pkt_len as usize,
        pool: set.pool().clone(),
    };
    let lives: Vec<Arc<Live>> = lcores.iter().map(|_| Arc::new(Live::new(params.tx_slots))).collect();
    let begin = tsc::Mark::now();
    let started = Instant::now();
    let work: Vec<_> = lcores
        .into_iter()
        .zip(lives.clone())
        .map(|(l, live)| LcoreWork { core: l.core, work: (l.work, live) })
        .collect();
    let lcore_params = params.clone();
    let handles = lcore::launch("fwd-lcore", work, &STOP, move |lcore, (work, live): (Work, Arc<Live>)| {
        engine::run(lcore, work, &lcore_params, &live)
    })
    .map_err(|e| e.to_string())?;
    println!("FWD-READY ports={} threads={}", set.ports().len(), handles.len());
    let _ = std::io::stdout().flush();

    let port_drops = |p: usize| app_drops(s, &lives, p);
    let mut sampler = Sampler::new("fwd", set.ports(), &port_drops);
    // Until the duration (from `started`), a signal, or an lcore's end (a panic sets the stop
    // flag, and its lcore is reported after the join).
    let duration = s.duration.map(|d| d.saturating_sub(started.elapsed()));
    handles.supervise(s.stats_period.unwrap_or(Duration::MAX), duration, |_| {
        print_stats(&sampler.sample(set.ports(), &port_drops), s.json);
        Ok::<(), ()>(())
    });
    let mut totals: Option<Totals> = None;
    let mut panicked = 0;
    for joined in handles.join() {
        match joined {
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
    let end_stats = snapshots(s, set.ports(), &lives);
    for (p, (n, port)) in end_stats.iter().zip(set.ports()).enumerate() {
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
        print_queue_totals(s, p, &stats, &lives);
        if s.json {
            let line =
                JsonLine::new("fwd", "port_total").int("port", p as u64).text("port_spec", &s.ports[p].to_string());
            let line = line.int("app_dropped", app_drops(s, &lives, p)).num("seconds", forwarding.as_secs_f64());
            println!("{}", line.xstats("xstats", &stats.xstats()).finish());
        }
    }
    drop(params);
    let pool_stats = match set.close() {
        Ok(stats) | Err(SetupError::MbufsMissing { stats }) => stats,
        Err(e) => return Err(e.to_string()),
    };
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

/// testpmd-like per-queue totals of port `p`: frames received and dropped on receive (the
/// device's errors and the driver's drops), sent and dropped on transmit (frames the queue did
/// not take, and frames it refused); also as JSON lines.
fn print_queue_totals(s: &Settings, p: usize, stats: &PortStats, lives: &[Arc<Live>]) {
    let first = first_queue_ids(s)[p];
    for (q, (rx, tx)) in stats.rx_queues.iter().zip(&stats.tx_queues).enumerate() {
        let rx_dropped = rx.drops + rx.errors;
        let tx_dropped = tx.drops + queue_app_drops(lives, first + q);
        println!(
            "  port {p} queue {q}: RX-packets {} RX-dropped {rx_dropped} RX-bytes {} | TX-packets {} TX-dropped \
             {tx_dropped} TX-bytes {}",
            rx.packets, rx.bytes, tx.packets, tx.bytes
        );
        if s.json {
            let line = JsonLine::new("fwd", "queue_total").int("port", p as u64).int("queue", q as u64);
            let line = line.int("rx_packets", rx.packets).int("rx_dropped", rx_dropped).int("rx_bytes", rx.bytes);
            let line = line.int("tx_packets", tx.packets).int("tx_dropped", tx_dropped).int("tx_bytes", tx.bytes);
            println!("{}", line.finish());
        }
    }
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
    let ring = format.map_or("none", RingFormat::name);
    let mut summary = Record::default()
        .text("mode", s.mode.name())
        .text("ring", ring)
        .int("ports", s.ports.len() as u64)
        .int("queues", s.port_queues.iter().map(|&q| u64::from(q)).sum())
        .int("threads", s.threads as u64)
        .int("burst", s.burst as u64)
        .num("seconds", over.as_secs_f64(), 3)
        .int("rx_pkts", t.rx)
        .int("tx_pkts", t.tx)
        .int("drops", t.drops)
        .num("mpps", mpps(packets, over), 3)
        .num("cycles_per_pkt", cycles_per_pkt, 2)
        .int("busy_cycles", t.busy_cycles)
        .num("avg_burst", avg_burst, 1)
        .num("tsc_mhz", tsc_hz / 1e6, 0)
        .int("tx_inflight", t.tx_inflight)
        .int("alloc_failures", t.alloc_failures)
        .int("pool_in_use", in_use.into());
    if s.verify.is_some() || s.mode == Mode::Echo {
        summary = summary.int("verified", t.verified).int("bad", t.bad).int("gaps", t.gaps);
        summary = summary.int("reorders", t.reorders).int("lost", t.lost);
    }
    if s.mode == Mode::Echo && !t.rtt.is_empty() && tsc_hz > 0.0 {
        let us = |cycles: u64| cycles as f64 / tsc_hz * 1e6;
        summary = summary
            .num("rtt_p50_us", us(t.rtt.value_at_quantile(0.5)), 2)
            .num("rtt_p99_us", us(t.rtt.value_at_quantile(0.99)), 2)
            .num("rtt_p999_us", us(t.rtt.value_at_quantile(0.999)), 2)
            .num("rtt_max_us", us(t.rtt.max()), 2);
    }
    println!("FWD-SUMMARY {}", summary.key_values());
    if s.json {
        println!("{}", summary.json("fwd", "summary").finish());
    }
    let _ = std::io::stdout().flush();
}
