//! l2fwd's settings: one declaration ([`Options`]) for the command line and the TOML file
//! (`--config`), the command line on top of it, and the checks that turn both into [`Settings`].
//!
//! The file is parsed with `deny_unknown_fields` everywhere, so a misspelt key is an error that
//! names the key and the file, never a silently ignored setting. Command-line options override
//! the file's values; ports given on the command line replace the file's list.
//!
//! ```toml
//! ring = "auto"             # "auto" | "packed" | "split"
//! ring_size = 256           # descriptors per ring (default: the device's maximum, at most 1024)
//! burst = 32                # frames per rx/tx burst
//! pool_size = 8192          # mbufs in the (one, shared) pool
//! pool_cache = 256          # mbufs each thread caches
//! stats_interval = 1        # seconds between statistics lines (0: none)
//! cores = [1]               # one polling thread per core (empty: one thread, not pinned)
//! huge_pages = "preferred"  # "preferred" | "required" | "never"
//! idle_sleep_us = 0         # sleep this long when a thread's queues stay empty (0: pure polling)
//! promiscuous = true        # promiscuous mode on (true) or off (false) at start, through the
//!                           # device's control queue (left out: as the device starts)
//! json = false              # also print JSON lines (statistics, summaries, the pool check)
//! no_iommu = false          # no IOMMU: ports in VFIO no-IOMMU mode or on uio_pci_generic, physical addresses (root)
//! queues = 1                # queue pairs per port (more than one: the device's control queue)
//! ring_sizes = [256, 128]   # descriptors per ring of queue pairs 0, 1, .. (the rest: ring_size)
//! allmulti = [1]            # ports in all-multicast mode (receive filters, control queue)
//!
//! # Receive filters and RSS keys of a port, set through the control queue at start:
//! # [[mac_tables]]          the MAC filtering table (unicast and multicast addresses)
//! # port = 0
//! # macs = ["02:00:00:00:aa:01", "01:00:5e:00:00:01"]
//! # [[vlans]]               VLAN ids the VLAN filter lets through
//! # port = 0
//! # ids = [100]
//! # [[rss_keys]]            the RSS key (hex; 40 bytes for the default hash types)
//! # port = 1
//! # key = "6d5a6d5a.."
//! max_pkt_len = 1514        # largest frame; beyond a buffer: mergeable receive buffers, transmit chains
//! offloads = false          # checksum, TSO and LRO, passed through from receive to transmit
//! hash_to_src_mac = false   # the device's hash of each frame over its source MAC (tests)
//! rx_offloads = true        # receive offloads on/off at start (control queue; left out: as negotiated)
//!
//! # An RSS indirection table for a port (entries: its queue pairs, repeated to fill the table),
//! # set through the control queue once the port runs (default: 0, 1, .., queues - 1, repeated)
//! # [[rss_tables]]
//! # port = 1
//! # queues = [3, 2, 1, 0]
//!
//! [[ports]]
//! pci = "0000:00:03.0"
//! # dst_mac = "02:00:00:00:00:00"   destination MAC of frames sent out of this port
//! # mac = "52:54:00:00:00:01"       source MAC when the device reports none
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_pmd::net::MacAddr;
use virtio_pmd::setup::DeviceSpec;
use virtio_pmd_apps::options::{layered, Huge, Ring};

/// Most frames in one burst.
pub const MAX_BURST: usize = 1024;
/// Default frames per burst (DPDK l2fwd's MAX_PKT_BURST).
pub const DEFAULT_BURST: usize = 32;
/// Default mbufs in the pool.
pub const DEFAULT_POOL_SIZE: u32 = 8192;
/// Default per-thread mbuf cache.
pub const DEFAULT_POOL_CACHE: u32 = 256;
/// Longest idle sleep, in microseconds.
pub const MAX_IDLE_SLEEP_US: u64 = 100_000;
/// Default seconds between statistics lines.
pub const DEFAULT_STATS_INTERVAL: u64 = 1;
/// Most queue pairs per port l2fwd asks for.
pub const MAX_QUEUES: u16 = 64;
/// A standard Ethernet frame (MTU 1500 + 14).
pub const DEFAULT_MAX_PKT_LEN: u32 = 1514;
/// The largest frame: a 64 KiB super-packet (65550 bytes of buffer less the header).
pub const MAX_PKT_LEN: u32 = 65_550;
/// Data room of the pool's buffers.
pub const BUFFER_DATA_ROOM: u32 = 2048;

/// An RSS indirection table for one port (`[[rss_tables]]`, `--rss-table PORT=Q,..`): its
/// entries, repeated to fill the table.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RssTable {
    /// The port.
    pub port: usize,
    /// Queue pairs of the port, in table order (repeated to the table's length).
    pub queues: Vec<u16>,
}

impl std::str::FromStr for RssTable {
    type Err = String;

    /// `PORT=Q,Q,..` (e.g. `1=3,2,1,0`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not PORT=QUEUE,QUEUE,.. (e.g. 1=3,2,1,0)");
        let (port, queues) = s.split_once('=').ok_or_else(bad)?;
        let port = port.trim().parse().map_err(|_| bad())?;
        let queues = queues.split(',').map(|q| q.trim().parse()).collect::<Result<Vec<u16>, _>>().map_err(|_| bad())?;
        Ok(RssTable { port, queues })
    }
}

/// `PORT=V,V,..` of the command line, split.
fn port_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<(usize, Vec<T>), String>
where
    T::Err: std::fmt::Display,
{
    let (port, values) = s.split_once('=').ok_or_else(|| format!("'{s}' is not PORT={what},{what},.."))?;
    let port = port.trim().parse().map_err(|_| format!("'{s}': '{port}' is not a port number"))?;
    let values = values
        .split(',')
        .map(|v| v.trim().parse::<T>().map_err(|e| format!("'{s}': '{v}' is not a {what}: {e}")))
        .collect::<Result<Vec<T>, String>>()?;
    Ok((port, values))
}

/// A port's MAC filtering table (`[[mac_tables]]`, `--mac-table PORT=MAC,..`): unicast and
/// multicast addresses (by their I/G bit), VIRTIO_NET_CTRL_MAC_TABLE_SET.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MacTable {
    /// The port.
    pub port: usize,
    /// The addresses.
    pub macs: Vec<MacAddr>,
}

impl std::str::FromStr for MacTable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        port_list(s, "MAC").map(|(port, macs)| MacTable { port, macs })
    }
}

/// VLAN ids a port's VLAN filter lets through (`[[vlans]]`, `--vlan PORT=VID,..`),
/// VIRTIO_NET_CTRL_VLAN_ADD.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vlans {
    /// The port.
    pub port: usize,
    /// The VLAN ids (0..=4095).
    pub ids: Vec<u16>,
}

impl std::str::FromStr for Vlans {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        port_list(s, "VLAN id").map(|(port, ids)| Vlans { port, ids })
    }
}

/// A port's RSS key (`[[rss_keys]]`, `--rss-key PORT=HEX`), set once it runs.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RssKey {
    /// The port.
    pub port: usize,
    /// The key, hex.
    pub key: String,
}

impl std::str::FromStr for RssKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, key) = s.split_once('=').ok_or_else(|| format!("'{s}' is not PORT=HEX"))?;
        let port = port.trim().parse().map_err(|_| format!("'{s}': '{port}' is not a port number"))?;
        Ok(RssKey { port, key: key.trim().to_owned() })
    }
}

/// A key written as hex digits (`6d5a56da...`).
fn parse_key(hex: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("'{hex}' is not an RSS key: an even number of hex digits, e.g. 6d5a56da255b0ec2..");
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)
}

/// The receive filters and RSS key of one port, checked, set at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortControl {
    /// The port.
    pub port: usize,
    /// The MAC filtering table (empty: left as it is).
    pub mac_table: Vec<MacAddr>,
    /// All-multicast mode on.
    pub allmulti: bool,
    /// VLAN ids added to the VLAN filter.
    pub vlans: Vec<u16>,
    /// A new RSS key.
    pub rss_key: Option<Vec<u8>>,
}

impl PortControl {
    /// Whether there is a receive filter to set.
    pub fn has_filters(&self) -> bool {
        !self.mac_table.is_empty() || self.allmulti || !self.vlans.is_empty()
    }
}

/// One `[[ports]]` entry of the file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePort {
    /// PCI address of the virtio-net function (bound to vfio-pci).
    pub pci: String,
    /// Destination MAC of frames sent out of this port (default `02:00:00:00:00:<port id>`).
    pub dst_mac: Option<MacAddr>,
    /// Source MAC of frames sent out of this port when the device reports none.
    pub mac: Option<MacAddr>,
}

/// Every option, as given on the command line or written in the file (the same names, `-` on
/// the command line for `_` in the file): every one optional, the defaults filled in by
/// [`Settings::resolve`]. A new option is one field here and its check there.
#[derive(Clone, Debug, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The ports, in port-id order (the file's `[[ports]]`; on the command line, positional
    /// or `--port`).
    #[arg(skip)]
    pub ports: Option<Vec<FilePort>>,
    /// Ring layout [default: auto].
    #[arg(long, value_enum)]
    pub ring: Option<Ring>,
    /// Descriptors per ring [default: the device's maximum, at most 1024].
    #[arg(long)]
    pub ring_size: Option<u16>,
    /// Frames per burst [default: 32].
    #[arg(long)]
    pub burst: Option<usize>,
    /// Mbufs in the pool [default: 8192].
    #[arg(long)]
    pub pool_size: Option<u32>,
    /// Mbufs each polling thread caches [default: 256].
    #[arg(long)]
    pub pool_cache: Option<u32>,
    /// Seconds between statistics lines, 0 for none [default: 1].
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Cores of the polling threads, one thread each (e.g. 0,1) [default: one unpinned thread].
    #[arg(long, value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// Huge pages for the pool and the rings [default: preferred].
    #[arg(long, value_enum)]
    pub huge_pages: Option<Huge>,
    /// Microseconds a polling thread sleeps once its queues stayed empty for a while, 0 for never
    /// (pure polling) [default: 0].
    #[arg(long, value_name = "US")]
    pub idle_sleep_us: Option<u64>,
    /// Promiscuous mode on (`--promisc`) or off (`--promisc=false`) at start, through the device's
    /// control queue (DPDK's -P) [default: as the device starts; QEMU's start promiscuous].
    #[arg(long = "promisc", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub promiscuous: Option<bool>,
    /// Also print statistics, summaries and the pool check as JSON lines (one object per line,
    /// starting with `{`) [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub json: Option<bool>,
    /// Queue pairs per port, each receive queue a lane of its own (more than one: set through
    /// the device's control queue; with RSS the device spreads flows over them) [default: 1].
    #[arg(long, value_name = "N")]
    pub queues: Option<u16>,
    /// RSS indirection table of a port, set once it runs: PORT=Q,Q,.. (queue pairs, repeated to
    /// fill the table; repeatable) [default: 0..queues round robin].
    #[arg(long = "rss-table", value_name = "PORT=Q,..")]
    pub rss_tables: Option<Vec<RssTable>>,
    /// Descriptors per ring of queue pairs 0, 1, .. of every port (per-queue ring sizes; the
    /// others get ring_size), e.g. 256,128,64,256.
    #[arg(long, value_delimiter = ',', value_name = "N,N,..")]
    pub ring_sizes: Option<Vec<u16>>,
    /// RSS key of a port, set once it runs: PORT=HEX (repeatable) [default: the Microsoft key].
    #[arg(long = "rss-key", value_name = "PORT=HEX")]
    pub rss_keys: Option<Vec<RssKey>>,
    /// Receive filter: a port's MAC table, unicast and multicast addresses, PORT=MAC,..
    /// (VIRTIO_NET_CTRL_MAC_TABLE_SET; repeatable).
    #[arg(long = "mac-table", value_name = "PORT=MAC,..")]
    pub mac_tables: Option<Vec<MacTable>>,
    /// Receive filter: all-multicast mode on for PORT (VIRTIO_NET_CTRL_RX_ALLMULTI; repeatable).
    #[arg(long, value_name = "PORT")]
    pub allmulti: Option<Vec<usize>>,
    /// Receive filter: VLAN ids a port's VLAN filter lets through, PORT=VID,..
    /// (VIRTIO_NET_CTRL_VLAN_ADD; repeatable).
    #[arg(long = "vlan", value_name = "PORT=VID,..")]
    pub vlans: Option<Vec<Vlans>>,
    /// Largest frame forwarded, in bytes without the virtio-net header (up to the device's MTU
    /// plus 14); larger than a buffer's 2048 bytes: received into mergeable buffers and sent as
    /// descriptor chains [default: 1514].
    #[arg(long, value_name = "BYTES")]
    pub max_pkt_len: Option<u32>,
    /// Checksum, TSO and LRO offloads on every port (with mergeable buffers and transmit
    /// chains): a received super-packet and its checksum state go out as received [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub offloads: Option<bool>,
    /// No IOMMU (a VM without a vIOMMU): open every port through VFIO's no-IOMMU mode (bound to
    /// vfio-pci) or uio_pci_generic, with physical-address DMA memory (root, huge pages). The
    /// devices can then reach ALL memory [default: off].
    #[arg(long = "no-iommu", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub no_iommu: Option<bool>,
    /// Ask every port for the device's hash of each received frame (VIRTIO_NET_F_HASH_REPORT)
    /// and write it over the forwarded frame's source MAC: the hash value, then the report type,
    /// both big-endian (all zero without a hash); for tests that check the device's hashes
    /// [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub hash_to_src_mac: Option<bool>,
    /// Turn the negotiated receive offloads (checksum, LRO) on or off at start through the
    /// device's control queue (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET) [default: as negotiated].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub rx_offloads: Option<bool>,
}

/// One port, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSettings {
    /// The device (`mac=`: the source MAC to use when the device reports none).
    pub spec: DeviceSpec,
    /// Destination MAC of frames sent out of this port.
    pub dst_mac: MacAddr,
}

/// Everything l2fwd runs with, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The ports; port `i` forwards to port `i ^ 1` (the last of an odd count to itself).
    pub ports: Vec<PortSettings>,
    /// Ring layout.
    pub ring: Ring,
    /// Descriptors per ring (`None`: the device's maximum, at most 1024).
    pub ring_size: Option<u16>,
    /// Frames per burst.
    pub burst: usize,
    /// Mbufs in the pool.
    pub pool_size: u32,
    /// Mbufs cached per thread.
    pub pool_cache: u32,
    /// Time between statistics lines (`None`: none).
    pub stats_interval: Option<Duration>,
    /// Cores of the polling threads (empty: one unpinned thread).
    pub cores: Vec<usize>,
    /// Huge page policy.
    pub huge_pages: Huge,
    /// How long a polling thread sleeps when idle (`None`: it never sleeps).
    pub idle_sleep: Option<Duration>,
    /// Promiscuous mode on or off at start (`None`: as the device starts).
    pub promiscuous: Option<bool>,
    /// Also print JSON lines.
    pub json: bool,
    /// No IOMMU: every port's spec has `iommu=off`.
    pub no_iommu: bool,
    /// Queue pairs per port.
    pub queues: u16,
    /// RSS indirection tables set once the ports run, per port (checked: ports exist, entries
    /// name queue pairs that exist).
    pub rss_tables: Vec<RssTable>,
    /// Descriptors per ring of queue pairs 0, 1, ... (the others: `ring_size`).
    pub ring_sizes: Vec<u16>,
    /// Receive filters and RSS keys, per port that has any.
    pub control: Vec<PortControl>,
    /// Largest frame forwarded.
    pub max_pkt_len: u32,
    /// Checksum, TSO and LRO on every port.
    pub offloads: bool,
    /// The reported hash of each frame over its source MAC.
    pub hash_to_src_mac: bool,
    /// Receive offloads on or off at start (`None`: as negotiated).
    pub rx_offloads: Option<bool>,
    /// Where the file came from, if any.
    pub source: Option<PathBuf>,
}

impl Settings {
    /// Layers `cli` over the file at `file` (if any) and checks the result.
    pub fn resolve(cli: &Options, file: Option<&Path>) -> Result<Settings, String> {
        let o = layered(cli, file)?;
        let source = file.map(Path::to_path_buf);
        let from = source.as_ref().map(|p| format!(" (config file {})", p.display())).unwrap_or_default();
        let entries = o.ports.unwrap_or_default();
        if entries.is_empty() {
            return Err(format!(
                "no ports given{from}: name them by PCI address (`l2fwd 0000:00:03.0 0000:00:04.0`, \
                 `--port BDF`) or in a config file's [[ports]] entries"
            ));
        }
        let mut ports: Vec<PortSettings> = Vec::with_capacity(entries.len());
        for (id, entry) in entries.into_iter().enumerate() {
            let mut spec = DeviceSpec::pci(&entry.pci).map_err(|_| {
                format!(
                    "port {id}: '{}' is not a PCI address{from}: expected DDDD:BB:DD.F, e.g. 0000:00:03.0",
                    entry.pci
                )
            })?;
            spec.mac = entry.mac;
            spec.no_iommu = o.no_iommu.unwrap_or(false);
            if let Some(prev) = ports.iter().position(|p| p.spec.device == spec.device) {
                return Err(format!("ports {prev} and {id} are both {}{from}: give each device once", spec.target()));
            }
            ports.push(PortSettings { spec, dst_mac: entry.dst_mac.unwrap_or(MacAddr::default_peer(id)) });
        }

        let burst = o.burst.unwrap_or(DEFAULT_BURST);
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(format!("burst {burst} is out of range{from}: use 1..={MAX_BURST}"));
        }
        let ring_size = o.ring_size;
        if ring_size == Some(0) {
            return Err(format!("ring_size 0 is invalid{from}: leave it out for the device's maximum"));
        }
        let pool_size = o.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size == 0 {
            return Err(format!("pool_size 0 is invalid{from}"));
        }
        let pool_cache = o.pool_cache.unwrap_or(DEFAULT_POOL_CACHE);
        if pool_cache > pool_size / 4 {
            return Err(format!(
                "pool_cache {pool_cache} is too large for pool_size {pool_size}{from}: keep it at most a quarter \
                 of the pool"
            ));
        }
        let stats = o.stats_interval.unwrap_or(DEFAULT_STATS_INTERVAL);
        let cores = o.cores.unwrap_or_default();
        let idle_sleep_us = o.idle_sleep_us.unwrap_or(0);
        if idle_sleep_us > MAX_IDLE_SLEEP_US {
            return Err(format!(
                "idle_sleep_us {idle_sleep_us} is out of range{from}: use 0 (never sleep) to {MAX_IDLE_SLEEP_US}"
            ));
        }
        for (i, c) in cores.iter().enumerate() {
            if cores[..i].contains(c) {
                return Err(format!("core {c} is listed twice in cores{from}"));
            }
        }
        let queues = o.queues.unwrap_or(1);
        if !(1..=MAX_QUEUES).contains(&queues) {
            return Err(format!("queues {queues} is out of range{from}: use 1..={MAX_QUEUES} queue pairs per port"));
        }
        let rss_tables = o.rss_tables.unwrap_or_default();
        for (i, t) in rss_tables.iter().enumerate() {
            if t.port >= ports.len() {
                return Err(format!("RSS table for port {}{from}: there are only {} ports", t.port, ports.len()));
            }
            if rss_tables[..i].iter().any(|o| o.port == t.port) {
                return Err(format!("two RSS tables for port {}{from}: give one", t.port));
            }
            if t.queues.is_empty() || t.queues.iter().any(|q| *q >= queues) {
                return Err(format!(
                    "RSS table for port {}{from}: entries must be queue pairs 0..{queues} (queues = {queues}), and \
                     at least one",
                    t.port
                ));
            }
        }
        let control = port_control(
            (o.mac_tables.as_deref(), o.allmulti.as_deref(), o.vlans.as_deref(), o.rss_keys.as_deref()),
            ports.len(),
        )
        .map_err(|e| format!("{e}{from}"))?;
        let ring_sizes = o.ring_sizes.unwrap_or_default();
        if ring_sizes.len() > usize::from(queues) || ring_sizes.contains(&0) {
            return Err(format!(
                "ring_sizes {ring_sizes:?}{from}: give at most one non-zero size per queue pair (queues = {queues})"
            ));
        }
        let max_pkt_len = o.max_pkt_len.unwrap_or(DEFAULT_MAX_PKT_LEN);
        if !(60..=MAX_PKT_LEN).contains(&max_pkt_len) {
            return Err(format!("max_pkt_len {max_pkt_len} is out of range{from}: use 60..={MAX_PKT_LEN} bytes"));
        }
        Ok(Settings {
            max_pkt_len,
            offloads: o.offloads.unwrap_or(false),
            hash_to_src_mac: o.hash_to_src_mac.unwrap_or(false),
            rx_offloads: o.rx_offloads,
            ports,
            ring: o.ring.unwrap_or(Ring::Auto),
            ring_size,
            burst,
            pool_size,
            pool_cache,
            stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
            cores,
            huge_pages: o.huge_pages.unwrap_or(Huge::Preferred),
            idle_sleep: Some(idle_sleep_us).filter(|us| *us > 0).map(Duration::from_micros),
            promiscuous: o.promiscuous,
            json: o.json.unwrap_or(false),
            no_iommu: o.no_iommu.unwrap_or(false),
            queues,
            rss_tables,
            ring_sizes,
            control,
            source,
        })
    }

    /// The port that port `id` forwards to: 0 <-> 1, 2 <-> 3, ...; the last of an odd number
    /// of ports forwards to itself.
    pub fn peer_of(&self, id: usize) -> usize {
        peer_of(id, self.ports.len())
    }
}

/// The receive filters and RSS keys given (MAC tables, all-multicast ports, VLANs, keys), by
/// port, checked against `ports` ports.
type ControlOptions<'a> = (Option<&'a [MacTable]>, Option<&'a [usize]>, Option<&'a [Vlans]>, Option<&'a [RssKey]>);

fn port_control(
    (mac_tables, allmulti, vlans, rss_keys): ControlOptions,
    ports: usize,
) -> Result<Vec<PortControl>, String> {
    fn slot<'a>(
        all: &'a mut Vec<PortControl>,
        port: usize,
        ports: usize,
        what: &str,
    ) -> Result<&'a mut PortControl, String> {
        if port >= ports {
            return Err(format!("{what} for port {port}: there are only {ports} ports"));
        }
        let i = all.iter().position(|c| c.port == port).unwrap_or_else(|| {
            all.push(PortControl { port, ..PortControl::default() });
            all.len() - 1
        });
        Ok(&mut all[i])
    }
    let mut all = Vec::new();
    for t in mac_tables.into_iter().flatten() {
        slot(&mut all, t.port, ports, "mac_table")?.mac_table.extend_from_slice(&t.macs);
    }
    for p in allmulti.into_iter().flatten() {
        slot(&mut all, *p, ports, "allmulti")?.allmulti = true;
    }
    for v in vlans.into_iter().flatten() {
        if let Some(id) = v.ids.iter().find(|id| **id > 4095) {
            return Err(format!("vlan for port {}: {id} is not a VLAN id (0..=4095)", v.port));
        }
        slot(&mut all, v.port, ports, "vlan")?.vlans.extend_from_slice(&v.ids);
    }
    for k in rss_keys.into_iter().flatten() {
        let key = parse_key(&k.key)?;
        slot(&mut all, k.port, ports, "rss_key")?.rss_key = Some(key);
    }
    Ok(all)
}

/// The port that port `id` of `n` forwards to.
pub fn peer_of(id: usize, n: usize) -> usize {
    let peer = id ^ 1;
    if peer < n {
        peer
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("l2fwd-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn with_ports(pcis: &[&str]) -> Options {
        let ports = pcis.iter().map(|pci| FilePort { pci: pci.to_string(), dst_mac: None, mac: None }).collect();
        Options { ports: Some(ports), ..Options::default() }
    }

    #[test]
    fn a_full_file_parses_and_resolves() {
        let path = file(
            "full",
            r#"
            ring = "split"
            ring_size = 512
            burst = 64
            pool_size = 4096
            pool_cache = 128
            stats_interval = 2
            cores = [1, 0]
            huge_pages = "required"
            idle_sleep_us = 20
            [[ports]]
            pci = "00:03.0"
            [[ports]]
            pci = "0000:00:04.0"
            dst_mac = "02:aa:bb:cc:dd:ee"
            mac = "52:54:00:00:00:09"
            "#,
        );
        let s = Settings::resolve(&Options::default(), Some(&path)).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(s.ports[0].spec.target(), "0000:00:03.0");
        assert_eq!(s.ports[0].dst_mac, MacAddr([2, 0, 0, 0, 0, 0]));
        assert_eq!(s.ports[1].dst_mac, MacAddr([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        assert_eq!(s.ports[1].spec.mac, Some(MacAddr([0x52, 0x54, 0, 0, 0, 9])));
        assert_eq!((s.ring, s.ring_size, s.burst, s.pool_size, s.pool_cache), (Ring::Split, Some(512), 64, 4096, 128));
        assert_eq!(s.stats_interval, Some(Duration::from_secs(2)));
        assert_eq!(s.cores, vec![1, 0]);
        assert_eq!(s.huge_pages, Huge::Required);
        assert_eq!(s.idle_sleep, Some(Duration::from_micros(20)));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_key_and_file() {
        for (text, want) in [
            ("ring = \"packed\"\nburts = 32\n", "burts"),
            ("[[ports]]\npci = \"00:03.0\"\nsrc_mac = \"02:00:00:00:00:01\"\n", "src_mac"),
            ("ring = \"ring\"\n", "ring"),
            ("huge_pages = \"maybe\"\n", "huge_pages"),
            ("[[ports]]\npci = \"00:03.0\"\ndst_mac = \"02:00\"\n", "MAC"),
        ] {
            let path = file("bad", text);
            let err = Settings::resolve(&Options::default(), Some(&path)).unwrap_err();
            assert!(err.contains(path.to_str().unwrap()) && err.contains(want), "{err}");
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        let resolve = |o: Options| Settings::resolve(&o, None).unwrap_err();
        assert!(resolve(with_ports(&[])).contains("no ports"));
        assert!(resolve(with_ports(&["00:99.0"])).contains("not a PCI address"));
        assert!(resolve(with_ports(&["00:03.0", "0000:00:03.0"])).contains("both"));
        assert!(resolve(Options { burst: Some(0), ..with_ports(&["00:03.0"]) }).contains("burst"));
        let cache = Options { pool_size: Some(100), pool_cache: Some(50), ..with_ports(&["00:03.0"]) };
        assert!(resolve(cache).contains("pool_cache"));
        assert!(resolve(Options { max_pkt_len: Some(70_000), ..with_ports(&["00:03.0"]) }).contains("max_pkt_len"));
    }

    #[test]
    fn jumbo_frames_and_offloads() {
        let plain = Settings::resolve(&with_ports(&["00:03.0"]), None).unwrap();
        assert_eq!((plain.max_pkt_len, plain.offloads), (1514, false));
        let path = file("jumbo", "max_pkt_len = 9014\noffloads = true\n[[ports]]\npci = \"00:03.0\"\n");
        let s = Settings::resolve(&Options::default(), Some(&path)).unwrap();
        assert_eq!((s.max_pkt_len, s.offloads), (9014, true));
    }

    #[test]
    fn command_line_overrides_the_file() {
        let path = file("override", "burst = 8\nring = \"split\"\n[[ports]]\npci = \"00:05.0\"\n");
        let cli = Options { burst: Some(16), ..with_ports(&["00:03.0", "00:04.0"]) };
        let s = Settings::resolve(&cli, Some(&path)).unwrap();
        std::fs::remove_file(&path).ok();
        let targets: Vec<String> = s.ports.iter().map(|p| p.spec.target()).collect();
        assert_eq!(targets, ["0000:00:03.0", "0000:00:04.0"]);
        assert_eq!((s.burst, s.ring), (16, Ring::Split));
        assert_eq!(s.ports[1].dst_mac, MacAddr::default_peer(1));
    }

    #[test]
    fn ports_pair_up_and_an_odd_last_port_forwards_to_itself() {
        assert_eq!((0..4).map(|i| peer_of(i, 4)).collect::<Vec<_>>(), [1, 0, 3, 2]);
        assert_eq!((0..3).map(|i| peer_of(i, 3)).collect::<Vec<_>>(), [1, 0, 2]);
        assert_eq!(peer_of(0, 1), 0);
    }

    #[test]
    fn the_shipped_vm_config_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/l2fwd-vm.toml"));
        let s = Settings::resolve(&Options::default(), Some(path)).unwrap();
        let targets: Vec<String> = s.ports.iter().map(|p| p.spec.target()).collect();
        assert_eq!(targets, ["0000:00:03.0", "0000:00:04.0"]);
        assert_eq!(s.promiscuous, Some(true));
    }
}
