//! `vm-peer`: the host-side traffic peer of the VM harness.
//!
//! The guest runs l2fwd between two virtio-net NICs; QEMU wires each NIC to a pair of host UDP
//! ports (`scripts/vm/run-vm.sh`), one raw Ethernet frame per datagram. `vm-peer run` sends paced
//! test frames into both ports at once and checks every byte of what comes out of the other port,
//! the MAC rewrite included ([`frame`]), then prints
//! `RESULT sent=<n> received=<n> lost=<n> corrupted=<n> p50_us=<x> p99_us=<x>` and exits 1 on any
//! loss or corruption. `vm-peer reflect` plays QEMU + l2fwd over the same sockets, as a self-test
//! of the peer without a VM ([`reflect`](mod@reflect)).
//!
//! Exit codes: 0 clean run; 1 frames lost or corrupted; 2 the run could not be made (bad option,
//! port in use, forwarder never ready, damaged probe).
#![deny(unsafe_code)]

mod frame;
mod link;
mod peer;
mod ports;
mod reflect;
mod toeplitz;

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use frame::{Defect, MacExpect, SizePlan};
use link::Link;
use peer::{FrameClass, PeerConfig, PeerPort, RssPlan};
use reflect::ReflectConfig;
use virtio_pmd::net::MacAddr;

/// Everything that can stop a run before it produces a result.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// An option is invalid.
    #[error("{0}")]
    Config(String),
    /// A UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}; is another vm-peer (or QEMU, for the qemu ports) using it? Pick other ports with --port-base")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A socket or thread operation failed.
    #[error("cannot {what}: {source}")]
    Socket {
        /// What was attempted.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending failed for a reason other than a full queue.
    #[error("sending on {to} failed: {source}")]
    Send {
        /// The link.
        to: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Receiving failed.
    #[error("receiving failed: {source}")]
    Recv {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No probe came back in time.
    #[error("no probe came back within {secs} s in direction {missing}: is the VM up and the guest's forwarder running on these ports? (check the console log for VM-READY and the app's output; --ready-timeout sets the wait)")]
    NotReady {
        /// The wait, in seconds.
        secs: u64,
        /// The directions that never answered.
        missing: String,
    },
    /// A probe came back, damaged.
    #[error("a probe came back damaged in direction {dir}: {defect}; check the forwarder's MAC rewrite against --expect-dst-mac-*/--expect-src-mac-* (\"any\" disables a check)")]
    ProbeDamaged {
        /// The direction.
        dir: &'static str,
        /// What was wrong.
        defect: Defect,
    },
    /// A worker thread died.
    #[error("internal error: {0}")]
    Thread(&'static str),
}

#[derive(Parser, Debug)]
#[command(
    name = "vm-peer",
    version,
    about = "Host traffic peer for the l2fwd VM test (QEMU -netdev dgram UDP sockets)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send test frames into both ports, check what comes back, print RESULT.
    Run(Box<RunArgs>),
    /// Self-test: stand in for QEMU + l2fwd (MAC rewrite included) on the QEMU side of the ports.
    Reflect(ReflectArgs),
}

/// Where the ports are and what the guest NICs are called.
#[derive(Args, Debug)]
struct PortArgs {
    /// IP address of QEMU's UDP sockets (and of the peer's).
    #[arg(long, default_value_t = ports::LOOPBACK)]
    host: IpAddr,
    /// Port i uses QEMU port BASE+10i and peer port BASE+10i+1 (as run-vm.sh --port-base).
    #[arg(long, default_value_t = ports::DEFAULT_PORT_BASE)]
    port_base: u16,
    /// Explicit QEMU_PORT:PEER_PORT per port, e.g. 40001:40002,40011:40012 (as run-vm.sh --ports).
    #[arg(long)]
    ports: Option<String>,
    /// The ports are QEMU taps (`-netdev tap`, run-vm.sh --taps) reached with AF_PACKET, not UDP
    /// sockets: the taps of port 0 and port 1 (run in their network namespace; needs root).
    #[arg(long, value_delimiter = ',', value_name = "TAP0,TAP1")]
    tap: Vec<String>,
    /// MAC addresses of the guest NICs of port 0 and port 1 (run-vm.sh's defaults).
    #[arg(long, value_delimiter = ',', value_parser = frame::parse_mac, default_values_t = [
        MacAddr([0x52, 0x54, 0, 0, 0, 1]), MacAddr([0x52, 0x54, 0, 0, 0, 2])])]
    port_mac: Vec<MacAddr>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    ports: PortArgs,
    /// Data frames per direction.
    #[arg(long, default_value_t = 10_000)]
    frames: u64,
    /// Frames per second per direction (0: unpaced; QEMU's socket overflows without pacing).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Which directions run: both, 0to1 (into port 0, out of port 1) or 1to0.
    #[arg(long, default_value = "both", value_parser = ["both", "0to1", "1to0"])]
    direction: String,
    /// Shortest frame (bytes, without FCS; at least 60, 70 with --flows) [default: the least].
    #[arg(long)]
    min_size: Option<usize>,
    /// Longest frame (bytes, without FCS; at most 1514).
    #[arg(long, default_value_t = frame::MAX_LEN)]
    max_size: usize,
    /// Destination MAC expected on frames out of port 1 ("any": no check) [default: 02:00:00:00:00:01].
    #[arg(long)]
    expect_dst_mac_0to1: Option<MacExpect>,
    /// Source MAC expected on frames out of port 1 ("any": no check) [default: port 1's MAC].
    #[arg(long)]
    expect_src_mac_0to1: Option<MacExpect>,
    /// Destination MAC expected on frames out of port 0 ("any": no check) [default: 02:00:00:00:00:00].
    #[arg(long)]
    expect_dst_mac_1to0: Option<MacExpect>,
    /// Source MAC expected on frames out of port 0 ("any": no check) [default: port 0's MAC].
    #[arg(long)]
    expect_src_mac_1to0: Option<MacExpect>,
    /// Seconds to probe for a working forwarder before sending (0: no probing, send at once).
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// Milliseconds to wait for stragglers after the last frame.
    #[arg(long, default_value_t = 2000)]
    drain_ms: u64,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Send IPv4/UDP frames of this many flows (distinct source address and port), for RSS;
    /// 0: frames without IPv4/UDP headers.
    #[arg(long, default_value_t = 0)]
    flows: u32,
    /// Predict the receive queue of every frame under RSS with this many queue pairs (the
    /// default table: 128 entries, entry i = i % N), and print RSS-PREDICT lines; needs --flows.
    #[arg(long, value_name = "N")]
    rss_queues: Option<u16>,
    /// A port's RSS indirection table instead of the default: PORT=Q,Q,.. (repeated to 128
    /// entries, as l2fwd --rss-table).
    #[arg(long, value_name = "PORT=Q,..")]
    rss_table: Vec<String>,
    /// A class of frames for receive-filter tests: PORT,NAME,DST_MAC,VLAN|-,pass|drop (e.g.
    /// `0,foreign,02:00:00:00:bb:01,-,drop`), repeatable; data frame `seq` sent into PORT is of
    /// its class `seq % classes`, and each class must arrive whole (pass) or not at all (drop).
    /// Prints FILTER lines. Default: every frame to the port's MAC, untagged, passing.
    #[arg(long = "class", value_name = "PORT,NAME,MAC,VLAN,pass|drop")]
    classes: Vec<String>,
    /// A port's RSS key, PORT=HEX (repeatable) [default: the Microsoft key, the driver's default].
    #[arg(long, value_name = "PORT=HEX")]
    rss_key: Vec<String>,
    /// Check the hash the guest's device reported for every frame, which the forwarder wrote over
    /// the source MAC (l2fwd --hash-to-src-mac): it must be the Toeplitz hash of the frame's flow
    /// under the receiving port's key, type UDPv4 (replaces the source MAC check); needs
    /// --rss-queues.
    #[arg(long)]
    check_hash: bool,
}

#[derive(Args, Debug)]
struct ReflectArgs {
    #[command(flatten)]
    ports: PortArgs,
    /// Exit after this many seconds without a frame (0: run until killed).
    #[arg(long, default_value_t = 0)]
    idle_exit: u64,
}

fn bind(addr: SocketAddr) -> Result<UdpSocket, PeerError> {
    ports::bind_udp(addr).map_err(|source| PeerError::Bind { addr, source })
}

fn addrs(args: &PortArgs) -> Result<([ports::PortAddrs; 2], [MacAddr; 2]), String> {
    let addrs = ports::resolve(args.host, args.port_base, args.ports.as_deref())?;
    let macs = match args.port_mac.as_slice() {
        [a, b] => [*a, *b],
        _ => return Err("--port-mac takes exactly two MACs: port 0's,port 1's".into()),
    };
    Ok((addrs, macs))
}

fn run(args: &RunArgs) -> Result<ExitCode, PeerError> {
    let (addrs, macs) = addrs(&args.ports).map_err(PeerError::Config)?;
    if args.flows > frame::MAX_FLOWS {
        return Err(PeerError::Config(format!("--flows {} is too many: at most {}", args.flows, frame::MAX_FLOWS)));
    }
    let min_size = args.min_size.unwrap_or(frame::min_len(args.flows));
    if min_size < frame::min_len(args.flows) {
        return Err(PeerError::Config(format!(
            "--min-size {min_size} is too short for the headers: at least {}",
            frame::min_len(args.flows)
        )));
    }
    let sizes = SizePlan::new(min_size, args.max_size).map_err(PeerError::Config)?;
    let rss = rss_plan(args).map_err(PeerError::Config)?;
    // Direction d's frames go into port d, whose device hashes them with port d's key.
    let hash_keys = match (&rss, args.check_hash) {
        (Some(rss), true) => Some(rss.keys.clone().map(|key| {
            let mut padded = [0u8; 40];
            padded[..key.len().min(40)].copy_from_slice(&key[..key.len().min(40)]);
            MacExpect::ReportedHash(padded)
        })),
        (None, true) => return Err(PeerError::Config("--check-hash needs --rss-queues (and --flows)".into())),
        (_, false) => None,
    };
    let dirs = match args.direction.as_str() {
        "0to1" => [true, false],
        "1to0" => [false, true],
        _ => [true, true],
    };
    let exact = MacExpect::Exact;
    let cfg = PeerConfig {
        frames: args.frames,
        rate: args.rate,
        dirs,
        tx_dst: macs,
        // Locally administered "peer" addresses: 02:00:00:00:10:<port>.
        tx_src: [MacAddr([2, 0, 0, 0, 0x10, 0]), MacAddr([2, 0, 0, 0, 0x10, 1])],
        expect_dst: [
            args.expect_dst_mac_0to1.unwrap_or(exact(MacAddr::default_peer(1))),
            args.expect_dst_mac_1to0.unwrap_or(exact(MacAddr::default_peer(0))),
        ],
        expect_src: hash_keys.unwrap_or([
            args.expect_src_mac_0to1.unwrap_or(exact(macs[1])),
            args.expect_src_mac_1to0.unwrap_or(exact(macs[0])),
        ]),
        sizes,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        drain: Duration::from_millis(args.drain_ms),
        progress: if args.quiet { None } else { Some(Duration::from_secs(1)) },
        flows: args.flows,
        rss,
        classes: frame_classes(&args.classes).map_err(PeerError::Config)?,
    };
    let ports = match args.ports.tap.as_slice() {
        [] => [
            PeerPort { link: Link::Udp { socket: bind(addrs[0].peer)?, qemu: addrs[0].qemu } },
            PeerPort { link: Link::Udp { socket: bind(addrs[1].peer)?, qemu: addrs[1].qemu } },
        ],
        [t0, t1] => [PeerPort { link: tap(t0)? }, PeerPort { link: tap(t1)? }],
        _ => return Err(PeerError::Config("--tap takes exactly two taps: port 0's,port 1's".into())),
    };
    let mut err = io::stderr();
    writeln!(
        err,
        "vm-peer: {} frames per direction ({}) at {} pps, sizes {}..{}, {}; port0 {}, port1 {}; expect 0to1 dst={} src={}, 1to0 dst={} src={}; receive buffer {} KiB",
        cfg.frames,
        args.direction,
        cfg.rate,
        sizes.min,
        sizes.max,
        if cfg.flows == 0 { "no IPv4/UDP headers".to_string() } else { format!("IPv4/UDP, {} flows", cfg.flows) },
        ports[0].link,
        ports[1].link,
        cfg.expect_dst[0],
        cfg.expect_src[0],
        cfg.expect_dst[1],
        cfg.expect_src[1],
        ports[0].link.recv_buffer() / 1024,
    )
    .ok();
    let report = peer::run(&cfg, ports, &mut err)?;
    for (i, d) in report.dirs.iter().enumerate() {
        for s in &d.samples {
            writeln!(err, "corrupted {}: {s}", peer::dir_name(i)).ok();
        }
    }
    let mut out = io::stdout().lock();
    for line in report.dir_lines() {
        writeln!(out, "{line}").ok();
    }
    for line in report.filter_lines().into_iter().chain(report.prediction_lines()) {
        writeln!(out, "{line}").ok();
    }
    writeln!(out, "elapsed_s={:.2}", report.elapsed.as_secs_f64()).ok();
    writeln!(out, "{}", report.result_line()).ok();
    Ok(if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The classes of `--class` options, per port.
fn frame_classes(specs: &[String]) -> Result<[Vec<FrameClass>; 2], String> {
    let mut classes: [Vec<FrameClass>; 2] = Default::default();
    for spec in specs {
        let bad = |why: &str| format!("--class '{spec}': {why} (expected PORT,NAME,MAC,VLAN|-,pass|drop)");
        let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
        let [port, name, mac, vlan, verdict] = parts[..] else { return Err(bad("five fields")) };
        let port: usize = port.parse().ok().filter(|p| *p < 2).ok_or_else(|| bad("PORT is 0 or 1"))?;
        let dst = frame::parse_mac(mac).map_err(|e| bad(&e))?;
        let vlan = match vlan {
            "-" => None,
            v => Some(v.parse::<u16>().ok().filter(|v| *v < 4096).ok_or_else(|| bad("VLAN is 0..4095 or -"))?),
        };
        let pass = match verdict {
            "pass" => true,
            "drop" => false,
            _ => return Err(bad("the verdict is pass or drop")),
        };
        classes[port].push(FrameClass { name: name.to_owned(), dst, vlan, pass });
    }
    for (p, c) in classes.iter().enumerate() {
        if !c.is_empty() && !c.iter().any(|c| c.pass) {
            return Err(format!("--class: port {p} has no class that passes: nothing would show the forwarder works"));
        }
    }
    Ok(classes)
}

fn tap(name: &str) -> Result<Link, PeerError> {
    Link::tap(name).map_err(|source| PeerError::Socket {
        what: "open an AF_PACKET socket on the tap (root, in the tap's namespace)",
        source,
    })
}

/// The RSS plan of `--rss-queues`, `--rss-table` and `--rss-key`.
fn rss_plan(args: &RunArgs) -> Result<Option<RssPlan>, String> {
    let Some(queues) = args.rss_queues else {
        return if args.rss_table.is_empty() && args.rss_key.is_empty() {
            Ok(None)
        } else {
            Err("--rss-table and --rss-key need --rss-queues".into())
        };
    };
    if args.flows == 0 {
        return Err("--rss-queues needs --flows: RSS hashes IPv4/UDP frames".into());
    }
    if queues == 0 {
        return Err("--rss-queues must be at least 1".into());
    }
    let len = virtio_pmd::net::DEFAULT_TABLE_LEN;
    let spread = |entries: &[u16]| entries.iter().copied().cycle().take(len).collect::<Vec<u16>>();
    let default: Vec<u16> = (0..queues).collect();
    let mut tables = [spread(&default), spread(&default)];
    for t in &args.rss_table {
        let bad = || format!("--rss-table '{t}' is not PORT=Q,Q,.. with PORT 0 or 1 and queues below {queues}");
        let (port, entries) = t.split_once('=').ok_or_else(bad)?;
        let port: usize = port.trim().parse().map_err(|_| bad())?;
        let entries: Vec<u16> =
            entries.split(',').map(|q| q.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad())?;
        if port > 1 || entries.is_empty() || entries.iter().any(|q| *q >= queues) {
            return Err(bad());
        }
        tables[port] = spread(&entries);
    }
    let mut keys = [virtio_pmd::net::DEFAULT_KEY.to_vec(), virtio_pmd::net::DEFAULT_KEY.to_vec()];
    for k in &args.rss_key {
        let bad = |why: String| format!("--rss-key '{k}': {why} (expected PORT=HEX with PORT 0 or 1)");
        let (port, hex) = k.split_once('=').ok_or_else(|| bad("no '='".into()))?;
        let port: usize = port.trim().parse().ok().filter(|p| *p < 2).ok_or_else(|| bad("bad port".into()))?;
        keys[port] = hex.trim().parse::<virtio_pmd::setup::RssKey>().map_err(|e| bad(e.to_string()))?.0;
    }
    Ok(Some(RssPlan { keys, tables }))
}

fn reflect(args: &ReflectArgs) -> Result<ExitCode, PeerError> {
    let (addrs, macs) = addrs(&args.ports).map_err(PeerError::Config)?;
    let cfg = ReflectConfig {
        out_dst: [MacAddr::default_peer(0), MacAddr::default_peer(1)],
        out_src: macs,
        idle_exit: (args.idle_exit > 0).then(|| Duration::from_secs(args.idle_exit)),
    };
    let qemu = [bind(addrs[0].qemu)?, bind(addrs[1].qemu)?];
    eprintln!(
        "vm-peer reflect: {} <-> {} (l2fwd MAC rewrite: port0 out src {}, port1 out src {})",
        addrs[0].qemu, addrs[1].qemu, macs[0], macs[1]
    );
    let stop = AtomicBool::new(false);
    let n = reflect::serve(&cfg, qemu, [addrs[0].peer, addrs[1].peer], &stop, &mut io::stderr())?;
    println!("reflect forwarded port0->port1={} port1->port0={}", n[0], n[1]);
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Reflect(args) => reflect(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vm-peer: error: {e}");
            ExitCode::from(2)
        }
    }
}
