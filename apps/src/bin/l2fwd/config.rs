//! l2fwd's settings: one declaration ([`Options`]) for the command line and the TOML file
//! (`--config`, `deny_unknown_fields`: a misspelt key is an error naming it and the file), the
//! command line's values over the file's, checked into [`Settings`]: the library's device specs
//! and [`PortSetConfig`], and what the forwarding itself takes.
//!
//! ```toml
//! ring = "auto"             # "auto" | "packed" | "split"
//! ring_size = 256           # descriptors per ring (default: the device's maximum, at most 1024)
//! ring_sizes = [256, 128]   # descriptors per ring of queue pairs 0, 1, .. (the rest: ring_size)
//! queues = 1                # queue pairs per port (more than one: the device's control queue)
//! burst = 32                # frames per rx/tx burst
//! pool_size = 8192          # mbufs in the (one, shared) pool
//! pool_cache = 256          # mbufs each thread caches
//! huge_pages = "preferred"  # "preferred" | "required" | "never"
//! stats_interval = 1        # seconds between statistics lines (0: none)
//! cores = [1]               # one polling thread per core (empty: one thread, not pinned)
//! idle_sleep_us = 0         # sleep this long when a thread's queues stay empty (0: pure polling)
//! json = false              # also print JSON lines (statistics, summaries, the pool check)
//! max_pkt_len = 1514        # largest frame; beyond 2048: 9216-byte buffers, beyond those chains
//! offloads = false          # checksum, TSO and LRO, passed through from receive to transmit
//! hash_to_src_mac = false   # the device's hash of each frame over its source MAC (tests)
//! no_iommu = false          # ports in VFIO no-IOMMU mode or on uio_pci_generic, physical addresses (root)
//!
//! # Set through each device's control queue at start (virtio_pmd::setup::PortOptions):
//! promiscuous = true        # promiscuous mode on or off (left out: as the device starts)
//! allmulti = [1]            # ports in all-multicast mode
//! # [[mac_tables]]          a port's MAC filtering table (unicast and multicast addresses)
//! # port = 0
//! # macs = ["02:00:00:00:aa:01", "01:00:5e:00:00:01"]
//! # [[vlans]]               VLAN ids a port's VLAN filter lets through
//! # port = 0
//! # ids = [100]
//! # [[rss_tables]]          a port's RSS indirection table (queue pairs, repeated to fill it)
//! # port = 1
//! # queues = [3, 2, 1, 0]
//! # [[rss_keys]]            a port's RSS key (hex; 40 bytes for the default hash types)
//! # port = 1
//! # key = "6d5a6d5a.."
//!
//! [[ports]]
//! pci = "0000:00:03.0"      # or a device string: "pci:0000:00:03.0,vlans=[7]", "vhost:/tmp/vh0.sock"
//! # dst_mac = "02:00:00:00:00:00"   destination MAC of frames sent out of this port
//! # mac = "52:54:00:00:00:01"       source MAC when the device reports none
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_pmd::mbuf::MempoolConfig;
use virtio_pmd::net::{MacAddr, PortConfig};
use virtio_pmd::setup::{DeviceSpec, PortMap, PortOptions, PortSetConfig, RssKey};
use virtio_pmd_apps::options::{layered, Huge, Ring};

/// Most frames in one burst.
const MAX_BURST: usize = 1024;
/// Longest idle sleep, in microseconds.
const MAX_IDLE_SLEEP_US: u64 = 100_000;
/// Most queue pairs per port l2fwd asks for.
const MAX_QUEUES: u16 = 64;
/// The largest frame: a 64 KiB super-packet (65550 bytes of buffer less the header).
const MAX_PKT_LEN: u32 = 65_550;
/// Data room of the pool's buffers when every frame fits one (DPDK's default mbuf).
const BUFFER_DATA_ROOM: u32 = 2048;
/// Data room of the pool's buffers for jumbo frames and super-packets (max_pkt_len beyond 2048,
/// or offloads): a frame of a 9000-byte MTU fits one buffer, a 64 KiB super-packet takes 8
/// rather than 33. Every buffer is a descriptor on the receive ring and another on the transmit
/// ring, and the device works per descriptor: TCP through l2fwd in the VM (scripts/l2fwd-vm.sh
/// --tcp, iperf3 -t 5) went from 2011 to 3534 Mbit/s with offloads and from 1610 to 2505 at MTU
/// 9000 with these buffers instead of 2 KiB ones (the guest kernel's bridge in the same runs:
/// 1501 and 1969, 1357 and 1421: the machine's load moves every figure).
const JUMBO_DATA_ROOM: u32 = 9216;

/// `PORT=VALUE`: the port and option `key` of [`PortOptions`] set from `VALUE`.
fn per_port(s: &str, key: &str) -> Result<(usize, PortOptions), String> {
    let (port, value) = s.split_once('=').ok_or_else(|| format!("'{s}' is not PORT=VALUE (e.g. 1=3,2,1,0)"))?;
    let port = port.trim().parse().map_err(|_| format!("'{s}': '{port}' is not a port number"))?;
    let mut options = PortOptions::default();
    options.set(key, value.trim()).map_err(|e| format!("'{s}': {e}"))?;
    Ok((port, options))
}

/// Declares a per-port option: `[[NAME]]` entries `port = P, FIELD = ..` in the file,
/// `PORT=VALUE` on the command line (the [`PortOptions`] key `KEY`).
macro_rules! per_port_option {
    ($(#[$doc:meta])* $name:ident { $field:ident: $ty:ty } = $key:literal, $take:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The port.
            pub port: usize,
            #[doc = concat!("The `", $key, "` value.")]
            pub $field: $ty,
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                let (port, options) = per_port(s, $key)?;
                Ok($name { port, $field: $take(options) })
            }
        }
    };
}

per_port_option!(
    /// A port's RSS indirection table (`[[rss_tables]]`, `--rss-table PORT=Q,..`).
    RssTable { queues: Vec<u16> } = "rss_table", |o: PortOptions| o.rss_table
);
per_port_option!(
    /// A port's MAC filtering table (`[[mac_tables]]`, `--mac-table PORT=MAC,..`).
    MacTable { macs: Vec<MacAddr> } = "mac_table", |o: PortOptions| o.mac_table
);
per_port_option!(
    /// VLAN ids a port's VLAN filter lets through (`[[vlans]]`, `--vlan PORT=VID,..`).
    Vlans { ids: Vec<u16> } = "vlans", |o: PortOptions| o.vlans
);
per_port_option!(
    /// A port's RSS key (`[[rss_keys]]`, `--rss-key PORT=HEX`).
    RssKeyOf { key: String } = "rss_key", |o: PortOptions| o.rss_key.map(|k| k.to_string()).unwrap_or_default()
);

/// One `[[ports]]` entry of the file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePort {
    /// PCI address of the virtio-net function (bound to vfio-pci), or a device string.
    pub pci: String,
    /// Destination MAC of frames sent out of this port (default `02:00:00:00:00:<port id>`).
    pub dst_mac: Option<MacAddr>,
    /// Source MAC of frames sent out of this port when the device reports none.
    pub mac: Option<MacAddr>,
}

/// Every option, as given on the command line or written in the file (the same names, `-` on
/// the command line for `_` in the file), all optional; [`Settings::resolve`] fills in the
/// defaults and checks them.
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
    /// Descriptors per ring of queue pairs 0, 1, .. of every port (the others get ring_size),
    /// e.g. 256,128,64,256.
    #[arg(long, value_delimiter = ',', value_name = "N,N,..")]
    pub ring_sizes: Option<Vec<u16>>,
    /// Queue pairs per port, each receive queue a lane of its own (more than one: set through
    /// the device's control queue; with RSS the device spreads flows over them) [default: 1].
    #[arg(long, value_name = "N")]
    pub queues: Option<u16>,
    /// Frames per burst [default: 32].
    #[arg(long)]
    pub burst: Option<usize>,
    /// Mbufs in the pool [default: 8192].
    #[arg(long)]
    pub pool_size: Option<u32>,
    /// Mbufs each polling thread caches [default: 256].
    #[arg(long)]
    pub pool_cache: Option<u32>,
    /// Huge pages for the pool and the rings [default: preferred].
    #[arg(long, value_enum)]
    pub huge_pages: Option<Huge>,
    /// Seconds between statistics lines, 0 for none [default: 1].
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Cores of the polling threads, one thread each (e.g. 0,1) [default: one unpinned thread].
    #[arg(long, value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// Receive queues (lanes) each polling thread polls, DPDK's "queues per lcore": the lanes
    /// go to the listed cores in order, N each (without --cores, unpinned threads) [default: the
    /// lanes spread evenly over the cores].
    #[arg(short = 'q', long = "queues-per-lcore", value_name = "N")]
    pub queues_per_lcore: Option<usize>,
    /// Forwarding pairs, DPDK's syntax: "(0,1),(2,3)" forwards 0 <-> 1 and 2 <-> 3; every port
    /// once [default: 0 <-> 1, 2 <-> 3, .., an odd last port to itself].
    #[arg(long, value_name = "(A,B),..")]
    pub portmap: Option<String>,
    /// Forward frames unchanged (DPDK's --no-mac-updating) [default: the MACs are rewritten].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub no_mac_updating: Option<bool>,
    /// Microseconds a polling thread sleeps once its queues stayed empty for a while, 0 for never
    /// (pure polling) [default: 0].
    #[arg(long, value_name = "US")]
    pub idle_sleep_us: Option<u64>,
    /// Also print statistics, summaries and the pool check as JSON lines [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub json: Option<bool>,
    /// Largest frame forwarded, in bytes without the virtio-net header (up to the device's MTU
    /// plus 14); beyond 2048 bytes: buffers of 9216 bytes instead, and beyond those mergeable
    /// receive buffers and descriptor chains [default: 1514].
    #[arg(long, value_name = "BYTES")]
    pub max_pkt_len: Option<u32>,
    /// Checksum, TSO and LRO offloads on every port (with mergeable buffers of 9216 bytes and
    /// transmit chains): a received super-packet and its checksum state go out as received
    /// [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub offloads: Option<bool>,
    /// No IOMMU (a VM without a vIOMMU): every PCI port through VFIO's no-IOMMU mode or
    /// uio_pci_generic, physical-address DMA memory (root, huge pages). The devices can then
    /// reach ALL memory [default: off].
    #[arg(long = "no-iommu", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub no_iommu: Option<bool>,
    /// Ask every port for the device's hash of each received frame (VIRTIO_NET_F_HASH_REPORT)
    /// and write it over the forwarded frame's source MAC: the hash value, then the report type,
    /// both big-endian (all zero without a hash); for tests that check the device's hashes
    /// [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub hash_to_src_mac: Option<bool>,
    /// Promiscuous mode on (`--promisc`) or off (`--promisc=false`) on every port at start,
    /// through its control queue (DPDK's -P; `-P` is `--promisc`) [default: as the device starts].
    #[arg(short = 'P', long = "promisc", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub promiscuous: Option<bool>,
    /// Receive filter: all-multicast mode on for PORT (repeatable).
    #[arg(long, value_name = "PORT")]
    pub allmulti: Option<Vec<usize>>,
    /// Receive filter: a port's MAC table, unicast and multicast addresses, PORT=MAC,..
    /// (repeatable).
    #[arg(long = "mac-table", value_name = "PORT=MAC,..")]
    pub mac_tables: Option<Vec<MacTable>>,
    /// Receive filter: VLAN ids a port's VLAN filter lets through, PORT=VID,.. (repeatable).
    #[arg(long = "vlan", value_name = "PORT=VID,..")]
    pub vlans: Option<Vec<Vlans>>,
    /// RSS indirection table of a port: PORT=Q,Q,.. (queue pairs, repeated to fill the table;
    /// repeatable) [default: 0..queues round robin].
    #[arg(long = "rss-table", value_name = "PORT=Q,..")]
    pub rss_tables: Option<Vec<RssTable>>,
    /// RSS key of a port: PORT=HEX (repeatable) [default: the Microsoft key].
    #[arg(long = "rss-key", value_name = "PORT=HEX")]
    pub rss_keys: Option<Vec<RssKeyOf>>,
}

/// Everything l2fwd runs with, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The ports, each with its receive filters and RSS settings.
    pub specs: Vec<DeviceSpec>,
    /// Destination MAC of frames sent out of each port.
    pub dst_macs: Vec<MacAddr>,
    /// The port each port forwards to.
    pub peers: PortMap,
    /// Rewrite the MACs of forwarded frames.
    pub mac_updating: bool,
    /// Lanes per polling thread (`None`: spread evenly over the cores).
    pub queues_per_lcore: Option<usize>,
    /// The pool and every port's configuration.
    pub config: PortSetConfig,
    /// Frames per burst.
    pub burst: usize,
    /// Cores of the polling threads (empty: one unpinned thread).
    pub cores: Vec<usize>,
    /// How long a polling thread sleeps when idle (`None`: it never sleeps).
    pub idle_sleep: Option<Duration>,
    /// Time between statistics lines (`None`: none).
    pub stats_interval: Option<Duration>,
    /// Also print JSON lines.
    pub json: bool,
    /// Largest frame forwarded.
    pub max_pkt_len: u32,
    /// The reported hash of each frame over its source MAC.
    pub hash_to_src_mac: bool,
    /// Where the file came from, if any.
    pub source: Option<PathBuf>,
}

/// A port as given: a PCI address, or a device string (`pci:..`, `vhost:..`).
fn device(s: &str) -> Result<DeviceSpec, String> {
    if s.starts_with("pci:") || s.starts_with("vhost:") {
        return s.parse().map_err(|e: virtio_pmd::setup::SpecError| e.to_string());
    }
    DeviceSpec::pci(s).map_err(|_| {
        format!("'{s}' is not a PCI address: expected DDDD:BB:DD.F (e.g. 0000:00:03.0), or pci:.. / vhost:..")
    })
}

/// The options of port `port` of `specs`, or an error naming `what` was given for a port that
/// does not exist.
fn slot<'a>(specs: &'a mut [DeviceSpec], port: usize, what: &str, from: &str) -> Result<&'a mut PortOptions, String> {
    let n = specs.len();
    let missing = || format!("{what} for port {port}: there are only {n} ports{from}");
    specs.get_mut(port).map(|s| &mut s.options).ok_or_else(missing)
}

impl Settings {
    /// Layers `cli` over the file at `file` (if any) and checks the result.
    pub fn resolve(cli: &Options, file: Option<&Path>) -> Result<Settings, String> {
        let o = layered(cli, file)?;
        let source = file.map(Path::to_path_buf);
        let from = source.as_ref().map(|p| format!(" (config file {})", p.display())).unwrap_or_default();
        let check = |ok: bool, msg: &dyn Fn() -> String| if ok { Ok(()) } else { Err(format!("{}{from}", msg())) };
        let entries = o.ports.unwrap_or_default();
        check(!entries.is_empty(), &|| {
            "no ports given: name them by PCI address (`l2fwd 0000:00:03.0 0000:00:04.0`, `--port BDF`), as \
             device strings (`vhost:/tmp/vh0.sock`) or in a config file's [[ports]] entries"
                .into()
        })?;
        let queues = o.queues.unwrap_or(1);
        check((1..=MAX_QUEUES).contains(&queues), &|| {
            format!("queues {queues} is out of range: use 1..={MAX_QUEUES}")
        })?;
        let mut specs: Vec<DeviceSpec> = Vec::with_capacity(entries.len());
        for (id, entry) in entries.iter().enumerate() {
            let mut spec = device(&entry.pci).map_err(|e| format!("port {id}: {e}{from}"))?;
            spec.mac = entry.mac.or(spec.mac);
            spec.no_iommu |= o.no_iommu.unwrap_or(false);
            spec.options.promiscuous = o.promiscuous.or(spec.options.promiscuous);
            if let Some(prev) = specs.iter().position(|p| p.device == spec.device) {
                return Err(format!("ports {prev} and {id} are both {}{from}: give each device once", spec.target()));
            }
            specs.push(spec);
        }
        for t in o.rss_tables.unwrap_or_default() {
            let options = slot(&mut specs, t.port, "RSS table", &from)?;
            check(options.rss_table.is_empty(), &|| format!("two RSS tables for port {}: give one", t.port))?;
            options.rss_table = t.queues;
        }
        for t in o.mac_tables.unwrap_or_default() {
            slot(&mut specs, t.port, "mac_table", &from)?.mac_table.extend(t.macs);
        }
        for port in o.allmulti.unwrap_or_default() {
            slot(&mut specs, port, "allmulti", &from)?.all_multicast = true;
        }
        for v in o.vlans.unwrap_or_default() {
            slot(&mut specs, v.port, "vlan", &from)?.vlans.extend(v.ids);
        }
        for k in o.rss_keys.unwrap_or_default() {
            slot(&mut specs, k.port, "rss_key", &from)?.rss_key =
                Some(k.key.parse::<RssKey>().map_err(|e| format!("{e}{from}"))?);
        }
        for spec in &specs {
            spec.check(queues).map_err(|e| format!("{e}{from}"))?;
        }

        let burst = o.burst.unwrap_or(32);
        check((1..=MAX_BURST).contains(&burst), &|| format!("burst {burst} is out of range: use 1..={MAX_BURST}"))?;
        check(o.ring_size != Some(0), &|| "ring_size 0 is invalid: leave it out for the device's maximum".into())?;
        let ring_sizes = o.ring_sizes.unwrap_or_default();
        check(ring_sizes.len() <= usize::from(queues) && !ring_sizes.contains(&0), &|| {
            format!("ring_sizes {ring_sizes:?}: give at most one non-zero size per queue pair (queues = {queues})")
        })?;
        let (pool_size, pool_cache) = (o.pool_size.unwrap_or(8192), o.pool_cache.unwrap_or(256));
        check(pool_size > 0, &|| "pool_size 0 is invalid".into())?;
        check(pool_cache <= pool_size / 4, &|| {
            format!(
                "pool_cache {pool_cache} is too large for pool_size {pool_size}: keep it at most a quarter of the pool"
            )
        })?;
        let idle_sleep_us = o.idle_sleep_us.unwrap_or(0);
        check(idle_sleep_us <= MAX_IDLE_SLEEP_US, &|| {
            format!("idle_sleep_us {idle_sleep_us} is out of range: use 0 (never sleep) to {MAX_IDLE_SLEEP_US}")
        })?;
        let cores = o.cores.unwrap_or_default();
        if let Some((i, c)) = cores.iter().enumerate().find(|(i, c)| cores[..*i].contains(c)) {
            return Err(format!("core {c} is listed twice in cores (entry {i}){from}"));
        }
        let max_pkt_len = o.max_pkt_len.unwrap_or(1514);
        check((60..=MAX_PKT_LEN).contains(&max_pkt_len), &|| {
            format!("max_pkt_len {max_pkt_len} is out of range: use 60..={MAX_PKT_LEN} bytes")
        })?;
        let (offloads, huge) = (o.offloads.unwrap_or(false), o.huge_pages.unwrap_or(Huge::Preferred).into());
        // Jumbo frames and super-packets: bigger buffers (a jumbo frame in one, a super-packet in
        // eight); for_forwarding chains whatever may still span several.
        let jumbo = offloads || max_pkt_len > BUFFER_DATA_ROOM;
        let data_room = if jumbo { JUMBO_DATA_ROOM } else { BUFFER_DATA_ROOM };
        let port = PortConfig {
            queue_pairs: queues,
            ring_size: o.ring_size,
            pair_ring_sizes: ring_sizes,
            ring: o.ring.unwrap_or(Ring::Auto).into(),
            huge_pages: huge,
            rx_hash_report: o.hash_to_src_mac.unwrap_or(false),
            ..PortConfig::default()
        }
        .for_forwarding(max_pkt_len, data_room, offloads);
        let pool = MempoolConfig {
            name: "l2fwd-pool".into(),
            count: pool_size,
            cache_size: pool_cache,
            huge_pages: huge,
            data_room: data_room as u16,
            ..MempoolConfig::default()
        };
        let peers = match &o.portmap {
            Some(map) => PortMap::parse(map, specs.len()).map_err(|e| format!("--portmap '{map}': {e}{from}"))?,
            None => PortMap::pairs(specs.len()),
        };
        let queues_per_lcore = o.queues_per_lcore;
        check(queues_per_lcore != Some(0), &|| "queues per lcore (-q) 0 is invalid: give 1 or more".into())?;
        if let (Some(n), false) = (queues_per_lcore, cores.is_empty()) {
            let lanes = specs.len() * usize::from(queues);
            check(lanes <= n * cores.len(), &|| {
                format!(
                    "{lanes} lanes at {n} per lcore (-q) need {} cores; --cores lists {}",
                    lanes.div_ceil(n),
                    cores.len()
                )
            })?;
        }
        let stats = o.stats_interval.unwrap_or(1);
        Ok(Settings {
            peers,
            mac_updating: !o.no_mac_updating.unwrap_or(false),
            queues_per_lcore,
            dst_macs: entries
                .iter()
                .enumerate()
                .map(|(id, e)| e.dst_mac.unwrap_or(MacAddr::default_peer(id)))
                .collect(),
            specs,
            config: PortSetConfig { pool, port },
            burst,
            cores,
            idle_sleep: Some(idle_sleep_us).filter(|us| *us > 0).map(Duration::from_micros),
            stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
            json: o.json.unwrap_or(false),
            max_pkt_len,
            hash_to_src_mac: o.hash_to_src_mac.unwrap_or(false),
            source,
        })
    }

    /// The port that port `id` forwards to.
    pub fn peer_of(&self, id: usize) -> usize {
        self.peers.peer(id)
    }
}
