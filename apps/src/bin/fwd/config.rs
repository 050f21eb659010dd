//! fwd's settings: every option declared once ([`Options`]) for the command line (testpmd's option
//! names where testpmd has one) and an optional TOML file under it (`--config`, keys = the long
//! option names with `_` for `-`, unknown keys rejected), and the checks that turn both into
//! [`Settings`].
//!
//! Command-line options override the file; ports given on the command line replace the file's
//! list. See `config/fwd.toml` for a commented example.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use virtio_pmd::mbuf::DEFAULT_DATA_ROOM;
use virtio_pmd::mem::HugePages;
use virtio_pmd::net::{MacAddr, RingChoice};
use virtio_pmd::setup::DeviceSpec;
use virtio_pmd_apps::options::layered;

use crate::frame;

/// Most frames in one burst.
pub const MAX_BURST: usize = 512;
/// Ethernet header bytes a frame carries besides its MTU.
pub const ETH_HEADER_LEN: u32 = 14;
/// `--max-pkt-len` by default: a 1500-byte MTU frame.
pub const DEFAULT_MAX_PKT_LEN: u32 = 1514;
/// The smallest `--mbuf-size` (the pool's own minimum).
const MIN_MBUF_SIZE: u16 = 64;

/// Most streams (ports x queue pairs): stream ids travel in 16 bits, and receivers keep a
/// sequence number per id.
pub const MAX_STREAMS: usize = 1024;

/// Forwarding modes (testpmd's `--forward-mode`, plus `echo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Forward unchanged.
    Io,
    /// Source MAC = the output port's, destination MAC = its `--eth-peer`.
    Mac,
    /// Swap source and destination MAC.
    Macswap,
    /// Receive and free (checks frames with `--verify`).
    Rxonly,
    /// Generate `--txpkts`-byte frames with sequence numbers and a checkable payload.
    Txonly,
    /// Generate like txonly, receive the frames back on the same queue (from a peer in macswap
    /// or io mode) and check every byte, the MACs and the order; at most `--echo-window` frames
    /// in flight per queue, so that a correct path loses nothing.
    Echo,
}

impl Mode {
    /// The name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Io => "io",
            Mode::Mac => "mac",
            Mode::Macswap => "macswap",
            Mode::Rxonly => "rxonly",
            Mode::Txonly => "txonly",
            Mode::Echo => "echo",
        }
    }
}

/// Which generator's frames `--verify` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// fwd's own txonly/echo frames: every byte, and per-stream sequence numbers.
    Fwd,
    /// DPDK testpmd's txonly frames: headers, and the payload (zeros, as sent by a testpmd that
    /// has not received any frame since it started: txonly writes only the headers).
    DpdkTxonly,
}

/// What `echo` expects the peer to have done to the MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EchoExpect {
    /// Source and destination swapped (a peer in macswap mode).
    Swapped,
    /// Unchanged (a peer in io mode).
    Same,
    /// Not checked (a peer in mac mode rewrites them).
    Any,
}

/// `--eth-peer N,MAC`: the destination MAC of frames sent out of port N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct EthPeer {
    /// The port.
    pub port: usize,
    /// Its peer's MAC.
    pub mac: MacAddr,
}

impl TryFrom<String> for EthPeer {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<EthPeer> for String {
    fn from(p: EthPeer) -> String {
        format!("{},{}", p.port, p.mac)
    }
}

impl FromStr for EthPeer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, mac) = s.split_once(',').ok_or_else(|| format!("--eth-peer '{s}': expected PORT,MAC"))?;
        let port = port.parse().map_err(|_| format!("--eth-peer '{s}': '{port}' is not a port number"))?;
        Ok(EthPeer { port, mac: mac.parse()? })
    }
}

/// The command line: the file, `--check-config`, and every [`Options`] option.
#[derive(Parser, Debug, Default)]
#[command(
    name = "fwd",
    about = "testpmd-like forwarding on virtio-net ports (VFIO PCI and vhost-user), on the virtio-pmd API",
    after_help = "Ports pair up like testpmd's: 0<->1, 2<->3, ...; a single port forwards to itself. \
                  Stops after --duration, or on SIGINT/SIGTERM; prints a FWD-SUMMARY line last."
)]
pub struct Cli {
    /// A TOML file with defaults for the other options (see config/fwd.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the settings, print them, and exit.
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub options: Options,
}

/// Every option, as given on the command line or written in the file (the same names, `-` on
/// the command line for `_` in the file): every one optional, the defaults filled in by
/// [`Settings::resolve`]. A new option is one field here and its check there.
#[derive(Clone, Debug, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// A port: `pci:<address>[,queues=N]` or `vhost:<socket>[,queues=N][,mac=MAC]`; repeat for more.
    #[arg(long = "port", value_name = "SPEC")]
    pub ports: Option<Vec<DeviceSpec>>,
    /// Forwarding mode [default: io].
    #[arg(long, visible_alias = "mode", value_enum)]
    pub forward_mode: Option<Mode>,
    /// Destination MAC of frames sent out of a port (mac, txonly, echo), as PORT,MAC; repeat
    /// per port (default: `02:00:00:00:00:<port>`).
    #[arg(long, value_name = "PORT,MAC")]
    pub eth_peer: Option<Vec<EthPeer>>,
    /// Forwarding threads; queue set q (queue pair q of every port) goes to thread q mod N
    /// [default: the number of --cores, or 1].
    #[arg(long)]
    pub nb_cores: Option<usize>,
    /// CPU cores to pin the forwarding threads to, in order (e.g. 1 or 0,1) [default: not pinned].
    #[arg(long, value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// Frames per rx/tx burst [default: 32].
    #[arg(long)]
    pub burst: Option<usize>,
    /// Receive descriptors per ring [default: 1024].
    #[arg(long)]
    pub rxd: Option<u16>,
    /// Transmit descriptors per ring (must equal --rxd: one ring size per port) [default: 1024].
    #[arg(long)]
    pub txd: Option<u16>,
    /// Queue pairs per port [default: 1].
    #[arg(long)]
    pub queues: Option<u16>,
    /// Receive queues per port (testpmd's `--rxq`). Virtio-net queues come in pairs (receive
    /// queue i and transmit queue i are pair i): --rxq and --txq must be equal when both are
    /// given, one alone sets both; the same as --queues.
    #[arg(long)]
    pub rxq: Option<u16>,
    /// Transmit queues per port (testpmd's `--txq`); see --rxq.
    #[arg(long)]
    pub txq: Option<u16>,
    /// RSS over the IPv4/IPv6 source and destination addresses (testpmd's `--rss-ip`), set on
    /// every port through the control queue (VIRTIO_NET_F_RSS; an error on a device without it)
    /// [default: the driver's default, addresses and TCP/UDP ports].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub rss_ip: Option<bool>,
    /// RSS over the IPv4/IPv6 addresses and the UDP ports (testpmd's `--rss-udp`); see --rss-ip.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub rss_udp: Option<bool>,
    /// Largest frame, Ethernet header included, FCS not (testpmd's `--max-pkt-len`). Frames
    /// larger than an mbuf's data room (--mbuf-size) are received into mergeable buffers and sent
    /// as chains [default: 1514].
    #[arg(long, value_name = "BYTES")]
    pub max_pkt_len: Option<u32>,
    /// The same as --max-pkt-len MTU+14.
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,
    /// Data room of each mbuf, after its headroom (testpmd's `--mbuf-size`, which counts the
    /// headroom too) [default: 2048].
    #[arg(long, value_name = "BYTES")]
    pub mbuf_size: Option<u16>,
    /// Checksum, TSO and LRO offloads on every port, each negotiated when the device offers it
    /// (with mergeable buffers and transmit chains); a received frame's offload metadata goes out
    /// with it [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub offloads: Option<bool>,
    /// Ring layout [default: auto].
    #[arg(long, value_enum)]
    pub ring: Option<RingChoice>,
    /// Negotiate VIRTIO_F_IN_ORDER when offered (command line: `--no-in-order` to not) [default:
    /// true].
    #[arg(long = "no-in-order", num_args = 0, default_missing_value = "false")]
    pub in_order: Option<bool>,
    /// Stop after this many seconds [default: run until SIGINT/SIGTERM].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Print per-port statistics every SECS seconds (0: never) [default: 0].
    #[arg(long, value_name = "SECS")]
    pub stats_period: Option<f64>,
    /// Frame length for txonly and echo, 60 bytes to --max-pkt-len [default: 64].
    #[arg(long, value_name = "BYTES")]
    pub txpkts: Option<usize>,
    /// rxonly: check every frame against a generator's pattern [default when given: fwd].
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "fwd", value_name = "GENERATOR")]
    pub verify: Option<Verify>,
    /// rxonly --verify, echo: also insist on frames of exactly this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub verify_len: Option<usize>,
    /// echo: most frames in flight per queue, at most half the ring [default: 256, or half the
    /// ring when that is less].
    #[arg(long)]
    pub echo_window: Option<usize>,
    /// echo: what the peer does to the MACs [default: swapped].
    #[arg(long, value_enum)]
    pub echo_expect: Option<EchoExpect>,
    /// rxonly, echo: print the first N frames received (hex, up to 64 bytes each) at exit.
    #[arg(long, value_name = "N")]
    pub dump: Option<usize>,
    /// Mbufs in the pool [default: enough for every ring, burst and cache].
    #[arg(long)]
    pub mbufs: Option<u32>,
    /// Mbufs each thread caches [default: 256].
    #[arg(long)]
    pub mbuf_cache: Option<u32>,
    /// Huge pages for the pool and the rings [default: preferred].
    #[arg(long, value_enum)]
    pub huge_pages: Option<HugePages>,
    /// Count packet classes per queue (size bins, multicast, broadcast) in the extended
    /// statistics: a look at every frame [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub packet_classes: Option<bool>,
    /// Also print statistics and summaries as JSON lines (one object per line, starting with
    /// `{`) [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub json: Option<bool>,
}

/// Everything checked, defaults filled in.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Ports, in port-id order.
    pub ports: Vec<DeviceSpec>,
    /// Queue pairs of each port.
    pub port_queues: Vec<u16>,
    /// Destination MAC of frames sent out of each port.
    pub eth_peers: Vec<MacAddr>,
    /// Forwarding mode.
    pub mode: Mode,
    /// Forwarding threads.
    pub threads: usize,
    /// Core of each thread, when pinned.
    pub cores: Vec<usize>,
    /// Frames per burst.
    pub burst: usize,
    /// Descriptors per ring.
    pub ring_size: u16,
    /// Queue pairs: the most any port has (queue set q holds pair q of every port that has it).
    pub queue_sets: u16,
    /// Ring layout.
    pub ring: RingChoice,
    /// Negotiate IN_ORDER.
    pub in_order: bool,
    /// How long to run.
    pub duration: Option<Duration>,
    /// Statistics period.
    pub stats_period: Option<Duration>,
    /// Generated frame length.
    pub txpkts: usize,
    /// rxonly check.
    pub verify: Option<Verify>,
    /// Expected frame length.
    pub verify_len: Option<usize>,
    /// echo window per queue.
    pub echo_window: usize,
    /// echo MAC expectation.
    pub echo_expect: EchoExpect,
    /// Frames to dump.
    pub dump: usize,
    /// Pool size.
    pub mbufs: u32,
    /// Per-thread cache.
    pub mbuf_cache: u32,
    /// Huge pages.
    pub huge_pages: HugePages,
    /// Count packet classes.
    pub packet_classes: bool,
    /// Also print JSON lines.
    pub json: bool,
    /// `--rss-ip` / `--rss-udp`: the RSS hash types to set on every port.
    pub rss: Option<Rss>,
    /// Largest frame.
    pub max_pkt_len: u32,
    /// Mbuf data room.
    pub mbuf_size: u16,
    /// Offloads asked for.
    pub offloads: bool,
}

/// testpmd's RSS choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rss {
    /// `--rss-ip`: IPv4 and IPv6 addresses.
    Ip,
    /// `--rss-udp`: addresses, and UDP ports too.
    Udp,
}

impl Rss {
    /// The `VIRTIO_NET_RSS_HASH_TYPE_*` bits ("Supported/enabled hash types", 5.1.6.4.3.1).
    pub fn hash_types(self) -> u32 {
        use virtio_pmd::spec::net::hash_type;
        let ip = hash_type::IPV4 | hash_type::IPV6;
        match self {
            Rss::Ip => ip,
            Rss::Udp => ip | hash_type::UDPV4 | hash_type::UDPV6,
        }
    }

    /// The option's name.
    pub fn option(self) -> &'static str {
        match self {
            Rss::Ip => "--rss-ip",
            Rss::Udp => "--rss-udp",
        }
    }
}

impl Settings {
    /// Whether a frame can span several mbufs (mergeable receive buffers, transmit chains).
    pub fn multi_segment(&self) -> bool {
        self.offloads || self.max_pkt_len > u32::from(self.mbuf_size)
    }
}

/// Seconds as a duration; `what` names the option in errors.
fn seconds(value: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("{what} {value}: expected a non-negative number of seconds"))
}

impl Settings {
    /// Layers the command line over the file (if any) and checks the result.
    pub fn resolve(cli: &Cli) -> Result<Settings, String> {
        let o = layered(&cli.options, cli.config.as_deref())?;
        let ports = o.ports.unwrap_or_default();
        if ports.is_empty() {
            return Err("no ports: give at least one --port pci:<address> or --port vhost:<socket>".into());
        }
        let mode = o.forward_mode.unwrap_or(Mode::Io);
        let queues = queue_pairs(o.queues, o.rxq, o.txq)?;
        let port_queues: Vec<u16> = ports.iter().map(|p| p.queues.unwrap_or(queues)).collect();
        let mut eth_peers: Vec<MacAddr> = (0..ports.len()).map(MacAddr::default_peer).collect();
        for peer in o.eth_peer.unwrap_or_default() {
            let slot = eth_peers
                .get_mut(peer.port)
                .ok_or_else(|| format!("--eth-peer {},{}: there is no port {}", peer.port, peer.mac, peer.port))?;
            *slot = peer.mac;
        }
        // Ports pair up 0<->1, 2<->3; forwarding from q on one port to q on its peer needs both
        // to have pair q.
        if matches!(mode, Mode::Io | Mode::Mac | Mode::Macswap | Mode::Txonly) {
            for (id, &q) in port_queues.iter().enumerate() {
                let peer = peer_of(id, ports.len());
                if port_queues[peer] != q {
                    return Err(format!(
                        "port {id} has {q} queue pairs, its peer port {peer} has {}: forwarding from queue q to \
                         queue q needs the same count on both",
                        port_queues[peer]
                    ));
                }
            }
        }
        let queue_sets = port_queues.iter().copied().max().unwrap_or(1);
        let streams: usize = port_queues.iter().map(|&q| q as usize).sum();
        if streams > MAX_STREAMS {
            return Err(format!("{streams} streams (ports x queue pairs): at most {MAX_STREAMS}"));
        }

        let cores = o.cores.unwrap_or_default();
        let available: Vec<usize> = virtio_pmd::lcore::available_cores();
        for core in &cores {
            if !available.contains(core) {
                return Err(format!("--cores: core {core} is not one this process may run on ({available:?})"));
            }
        }
        let nb_cores = o.nb_cores.unwrap_or(cores.len().max(1));
        if nb_cores == 0 {
            return Err("--nb-cores must be at least 1".into());
        }
        if !cores.is_empty() && nb_cores > cores.len() {
            return Err(format!("--nb-cores {nb_cores} but only {} --cores listed", cores.len()));
        }
        let threads = nb_cores.min(queue_sets as usize);

        let burst = o.burst.unwrap_or(32);
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(format!("--burst {burst}: expected 1..={MAX_BURST}"));
        }
        let rxd = o.rxd.unwrap_or(1024);
        let txd = o.txd.unwrap_or(rxd);
        if rxd != txd {
            return Err(format!("--rxd {rxd} and --txd {txd} differ: this driver uses one ring size per port"));
        }
        if rxd == 0 {
            return Err("--rxd must be at least 1".into());
        }
        let max_pkt_len = match (o.max_pkt_len, o.mtu) {
            (Some(len), Some(mtu)) if len != mtu + ETH_HEADER_LEN => {
                return Err(format!("--max-pkt-len {len} and --mtu {mtu} disagree: give one of them"))
            }
            (Some(len), _) => len,
            (None, Some(mtu)) => mtu.saturating_add(ETH_HEADER_LEN),
            (None, None) => DEFAULT_MAX_PKT_LEN,
        };
        if !(frame::MIN_LEN as u32..=frame::MAX_LEN as u32).contains(&max_pkt_len) {
            return Err(format!(
                "--max-pkt-len {max_pkt_len} (or --mtu {}): expected {}..={} bytes",
                max_pkt_len.saturating_sub(ETH_HEADER_LEN),
                frame::MIN_LEN,
                frame::MAX_LEN
            ));
        }
        let mbuf_size = o.mbuf_size.unwrap_or(DEFAULT_DATA_ROOM);
        if mbuf_size < MIN_MBUF_SIZE {
            return Err(format!("--mbuf-size {mbuf_size}: expected at least {MIN_MBUF_SIZE} bytes"));
        }
        let txpkts = o.txpkts.unwrap_or(64);
        if !(frame::MIN_LEN..=max_pkt_len as usize).contains(&txpkts) {
            return Err(format!(
                "--txpkts {txpkts}: expected {}..={max_pkt_len} bytes (the most is --max-pkt-len)",
                frame::MIN_LEN
            ));
        }
        let rss = match (o.rss_ip.unwrap_or(false), o.rss_udp.unwrap_or(false)) {
            (true, true) => {
                return Err("--rss-ip and --rss-udp: give one of them (--rss-udp hashes the addresses too)".into())
            }
            (true, false) => Some(Rss::Ip),
            (false, true) => Some(Rss::Udp),
            (false, false) => None,
        };
        // A frame larger than a buffer takes several receive descriptors (the first buffer
        // also holds the 12-byte virtio-net header).
        let buffers_per_frame = (txpkts + 12).div_ceil(mbuf_size as usize);
        let most_in_flight = rxd as usize / 2 / buffers_per_frame;
        let echo_window = o.echo_window.unwrap_or(256.min(most_in_flight));
        if echo_window == 0 || echo_window > most_in_flight {
            return Err(format!(
                "--echo-window {echo_window}: expected 1..={most_in_flight} (half the ring, so that the peer always \
                 finds room{})",
                if buffers_per_frame > 1 {
                    format!(", with {buffers_per_frame} buffers per {txpkts}-byte frame")
                } else {
                    String::new()
                }
            ));
        }
        let duration = o.duration.map(|d| seconds(d, "--duration")).transpose()?;
        let stats_period = o.stats_period.map(|d| seconds(d, "--stats-period")).transpose()?.filter(|d| !d.is_zero());
        let mbuf_cache = o.mbuf_cache.unwrap_or(256);
        // Every receive ring full, every transmit ring full (a descriptor per mbuf), two bursts
        // of the largest frames per stream, and up to 3 caches' worth per thread (a cache holds
        // up to twice its size before it flushes).
        let segments = (max_pkt_len as usize).div_ceil(mbuf_size as usize);
        let needed = streams * (2 * rxd as usize + 2 * burst * segments) + (threads + 1) * 3 * mbuf_cache as usize;
        let mbufs = o.mbufs.unwrap_or(needed.max(8192) as u32);

        Ok(Settings {
            ports,
            port_queues,
            eth_peers,
            mode,
            threads,
            cores,
            burst,
            ring_size: rxd,
            queue_sets,
            ring: o.ring.unwrap_or_default(),
            in_order: o.in_order.unwrap_or(true),
            duration,
            stats_period,
            txpkts,
            verify: o.verify,
            verify_len: o.verify_len,
            echo_window,
            echo_expect: o.echo_expect.unwrap_or(EchoExpect::Swapped),
            dump: o.dump.unwrap_or(0),
            mbufs,
            mbuf_cache,
            huge_pages: o.huge_pages.unwrap_or_default(),
            packet_classes: o.packet_classes.unwrap_or(false),
            json: o.json.unwrap_or(false),
            rss,
            max_pkt_len,
            mbuf_size,
            offloads: o.offloads.unwrap_or(false),
        })
    }
}

/// Queue pairs per port from `--queues`, `--rxq` and `--txq` (testpmd's names for the receive
/// and transmit queue counts): virtio-net queues come in pairs ("Virtqueues", 5.1.2: receiveq
/// i and transmitq i), so the counts given must agree.
fn queue_pairs(queues: Option<u16>, rxq: Option<u16>, txq: Option<u16>) -> Result<u16, String> {
    if let (Some(rx), Some(tx)) = (rxq, txq) {
        if rx != tx {
            return Err(format!(
                "--rxq {rx} and --txq {tx} differ: virtio-net queues come in pairs (receive queue i and transmit \
                 queue i), so a port has as many of each; give the same count to both (or --queues N)"
            ));
        }
    }
    let pairs = rxq.or(txq);
    if let (Some(q), Some(p)) = (queues, pairs) {
        if q != p {
            return Err(format!("--queues {q} and --rxq/--txq {p} differ: give one of them"));
        }
    }
    let pairs = queues.or(pairs).unwrap_or(1);
    if pairs == 0 {
        return Err("--queues (--rxq, --txq) must be at least 1".into());
    }
    Ok(pairs)
}

/// The port that frames received on `port` go out of: 0<->1, 2<->3, ...; the last of an odd
/// count forwards to itself.
pub fn peer_of(port: usize, ports: usize) -> usize {
    let peer = port ^ 1;
    if peer < ports {
        peer
    } else {
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("fwd").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        Settings::resolve(&cli)
    }

    #[test]
    fn ports_and_defaults() {
        let s =
            resolve(&["--port", "vhost:/tmp/a.sock,queues=2,mac=02:00:00:00:00:09", "--forward-mode", "mac"]).unwrap();
        assert_eq!(
            s.ports,
            vec![DeviceSpec {
                queues: Some(2),
                mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
                ..DeviceSpec::vhost("/tmp/a.sock")
            }]
        );
        assert_eq!((s.queue_sets, s.threads, s.burst, s.ring_size, s.txpkts), (2, 1, 32, 1024, 64));
        assert_eq!(s.eth_peers, vec![MacAddr::default_peer(0)]);
        assert_eq!(s.echo_window, 256);
        // A smaller ring gets a smaller default window rather than an error.
        let small = resolve(&["--port", "vhost:/a", "--rxd", "256", "--txd", "256"]).unwrap();
        assert_eq!((small.ring_size, small.echo_window), (256, 128));
        assert!(s.mbufs >= 2 * 2 * 1024);
        assert_eq!(peer_of(0, 1), 0);
        assert_eq!(peer_of(1, 2), 0);
        assert_eq!(peer_of(2, 3), 2);
    }

    #[test]
    fn bad_options_are_explained() {
        assert!(resolve(&[]).unwrap_err().contains("no ports"));
        assert!(resolve(&["--port", "tap:x"]).unwrap_err().contains("expected [pci:]<address>"));
        assert!(resolve(&["--port", "vhost:/a,foo=1"]).unwrap_err().contains("unknown option"));
        assert!(resolve(&["--port", "vhost:/a", "--rxd", "512", "--txd", "256"]).unwrap_err().contains("differ"));
        assert!(resolve(&["--port", "vhost:/a", "--txpkts", "20"]).unwrap_err().contains("--txpkts"));
        let err = resolve(&["--port", "vhost:/a", "--rxd", "256", "--txd", "256", "--echo-window", "200"]).unwrap_err();
        assert!(err.contains("--echo-window 200: expected 1..=128"), "{err}");
        assert!(resolve(&["--port", "vhost:/a", "--eth-peer", "3,02:00:00:00:00:01"])
            .unwrap_err()
            .contains("no port 3"));
        let err = resolve(&["--port", "vhost:/a,queues=2", "--port", "vhost:/b", "--forward-mode", "io"]).unwrap_err();
        assert!(err.contains("same count"), "{err}");
    }

    #[test]
    fn queues_as_testpmd_names_them() {
        let pairs = |args: &[&str]| resolve(&[&["--port", "vhost:/a"], args].concat()).map(|s| s.port_queues[0]);
        assert_eq!(pairs(&["--rxq", "4", "--txq", "4"]), Ok(4));
        assert_eq!(pairs(&["--rxq", "2"]), Ok(2));
        assert_eq!(pairs(&["--txq", "3", "--queues", "3"]), Ok(3));
        assert!(pairs(&["--rxq", "4", "--txq", "2"]).unwrap_err().contains("come in pairs"));
        assert!(pairs(&["--rxq", "4", "--queues", "2"]).unwrap_err().contains("give one of them"));
        assert!(pairs(&["--rxq", "0"]).unwrap_err().contains("at least 1"));
    }

    #[test]
    fn rss_jumbo_frames_and_offloads() {
        let s = resolve(&["--port", "vhost:/a"]).unwrap();
        assert_eq!(
            (s.rss, s.max_pkt_len, s.mbuf_size, s.offloads, s.multi_segment()),
            (None, 1514, 2048, false, false)
        );
        let s =
            resolve(&["--port", "vhost:/a", "--rss-udp", "--mtu", "9000", "--txpkts", "9014", "--offloads"]).unwrap();
        assert_eq!(
            (s.rss, s.max_pkt_len, s.txpkts, s.offloads, s.multi_segment()),
            (Some(Rss::Udp), 9014, 9014, true, true)
        );
        assert_eq!(Rss::Udp.hash_types(), 0b10_1101, "IPv4, UDPv4, IPv6, UDPv6");
        assert_eq!(Rss::Ip.hash_types(), 0b1001, "IPv4, IPv6");
        assert_eq!(s.echo_window, 102, "half the ring over 5 buffers per frame");
        let s = resolve(&["--port", "vhost:/a", "--max-pkt-len", "9014", "--mbuf-size", "9216"]).unwrap();
        assert!(!s.multi_segment(), "a frame fits one buffer");
        assert!(s.mbufs as usize >= 2 * 1024, "rings and bursts");
        let err = |args: &[&str]| resolve(&[&["--port", "vhost:/a"], args].concat()).unwrap_err();
        assert!(err(&["--rss-ip", "--rss-udp"]).contains("give one of them"));
        assert!(err(&["--txpkts", "2000"]).contains("--max-pkt-len"));
        assert!(err(&["--max-pkt-len", "9014", "--mtu", "1500"]).contains("disagree"));
        assert!(err(&["--max-pkt-len", "70000"]).contains("expected 60..=65535"));
        assert!(err(&["--mbuf-size", "10"]).contains("--mbuf-size"));
    }

    #[test]
    fn verify_takes_an_optional_value() {
        assert_eq!(resolve(&["--port", "vhost:/a", "--verify"]).unwrap().verify, Some(Verify::Fwd));
        let s = resolve(&["--port", "vhost:/a", "--verify", "dpdk-txonly"]).unwrap();
        assert_eq!(s.verify, Some(Verify::DpdkTxonly));
    }

    #[test]
    fn the_example_file_parses_and_the_command_line_overrides_it() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fwd.toml");
        let s = resolve(&["--config", path]).unwrap();
        assert_eq!((s.ports, s.mode, s.in_order), (vec![DeviceSpec::vhost("/tmp/vh.sock")], Mode::Mac, true));
        let s =
            resolve(&["--config", path, "--port", "pci:00:03.0,queues=2", "--no-in-order", "--burst", "8"]).unwrap();
        assert_eq!(
            (s.ports[0].to_string(), s.port_queues[0], s.in_order),
            ("pci:0000:00:03.0,queues=2".into(), 2, false)
        );
        assert_eq!((s.burst, s.mode), (8, Mode::Mac));
        let err = toml::from_str::<Options>("burts = 32").unwrap_err().to_string();
        assert!(err.contains("burts"), "{err}");
    }
}
