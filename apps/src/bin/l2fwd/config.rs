//! l2fwd's settings: its own options and the library's [`PortSetOptions`], declared once for
//! the command line and the TOML file (`--config`; a misspelt key is an error naming it and the
//! file), the command line's values over the file's, checked into [`Settings`].
//!
//! ```toml
//! ring = "auto"             # the library's PortSetOptions: ring, ring_size, ring_sizes, queues,
//! queues = 1                #   pool_size, pool_cache, huge_pages, max_pkt_len, offloads, no_iommu
//! cores = [1]               # and LcoreOptions: cores (one polling thread each; none: one thread,
//! burst = 32                #   not pinned), burst, idle_sleep_us (0: pure polling)
//! stats_interval = 1        # seconds between statistics lines (0: none)
//! json = false              # also print JSON lines (statistics, summaries, the pool check)
//! promiscuous = true        # every port's promiscuous mode (left out: as the device starts)
//!
//! # The ports in port-id order: PCI addresses or device strings, whose options
//! # (setup::PortOptions) set receive filters, RSS, the queue pairs and the MAC of each.
//! ports = ["0000:00:03.0", "pci:0000:00:04.0,vlans=[7],rss_table=[1,0]", "vhost:/tmp/vh0.sock"]
//! ```
//!
//! Frames sent out of port p go to `02:00:00:00:00:<p>`, as DPDK's l2fwd sends them.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_pmd::lcore::LcoreOptions;
use virtio_pmd::setup::{DeviceSpec, PortMap, PortSetConfig, PortSetOptions};
use virtio_pmd_apps::options::layered;

/// Every option, on the command line or in the file (`-` there for `_` here), all optional.
#[derive(Clone, Debug, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The ports in port-id order: PCI addresses (`0000:00:03.0`) or device strings
    /// (`pci:0000:00:03.0,queues=2,vlans=[7]`, `vhost:/tmp/vh0.sock`).
    #[arg(value_name = "PORT")]
    pub ports: Option<Vec<String>>,
    #[command(flatten)]
    #[serde(flatten)]
    pub set: PortSetOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub lcores: LcoreOptions,
    /// Seconds between statistics lines, 0 for none (DPDK's -T) [default: 1].
    #[arg(short = 'T', long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Receive queues (lanes) each polling thread polls, DPDK's -q: the lanes go to the cores in
    /// order, N each [default: spread evenly over the cores].
    #[arg(short = 'q', long = "queues-per-lcore", value_name = "N")]
    pub queues_per_lcore: Option<usize>,
    /// Forwarding pairs, DPDK's "(0,1),(2,3)"; every port once [default: 0 <-> 1, 2 <-> 3, ..,
    /// an odd last port to itself].
    #[arg(long, value_name = "(A,B),..")]
    pub portmap: Option<String>,
    /// Forward frames unchanged (DPDK's --no-mac-updating) [default: the MACs are rewritten].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub no_mac_updating: Option<bool>,
    /// Also print statistics, summaries and the pool check as JSON lines.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub json: Option<bool>,
    /// Ask for the device's hash of each frame (VIRTIO_NET_F_HASH_REPORT) and write it over the
    /// forwarded frame's source MAC: the value, then the report type, big-endian (tests).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub hash_to_src_mac: Option<bool>,
    /// Promiscuous mode on (-P, --promisc) or off (--promisc=false) on every port at start.
    #[arg(short = 'P', long = "promisc", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub promiscuous: Option<bool>,
}

/// Everything l2fwd runs with, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The ports, each with its receive filters and RSS settings.
    pub specs: Vec<DeviceSpec>,
    /// The port each port forwards to.
    pub peers: PortMap,
    /// Rewrite the MACs of forwarded frames.
    pub mac_updating: bool,
    /// Lanes per polling thread (`None`: spread evenly over the cores).
    pub queues_per_lcore: Option<usize>,
    /// The pool and every port's configuration.
    pub config: PortSetConfig,
    /// The polling threads' cores, burst and idle sleep, checked.
    pub lcores: LcoreOptions,
    /// Time between statistics lines (`None`: none).
    pub stats_interval: Option<Duration>,
    /// Also print JSON lines.
    pub json: bool,
    /// Largest frame forwarded.
    pub max_pkt_len: u32,
    /// The reported hash of each frame over its source MAC.
    pub hash_to_src_mac: bool,
}

impl Settings {
    /// Layers `cli` over the file at `file` (if any) and checks the result.
    pub fn resolve(cli: &Options, file: Option<&Path>) -> Result<Settings, String> {
        let o = layered(cli, file)?;
        let from = file.map(|p| format!(" (config file {})", p.display())).unwrap_or_default();
        let check = |ok: bool, msg: &dyn Fn() -> String| if ok { Ok(()) } else { Err(format!("{}{from}", msg())) };
        let mut config = o.set.config("l2fwd-pool").map_err(|e| format!("{e}{from}"))?;
        config.port.rx_hash_report = o.hash_to_src_mac.unwrap_or(false);
        let mut specs = o.set.specs(o.ports.as_deref().unwrap_or_default()).map_err(|e| format!("{e}{from}"))?;
        specs.iter_mut().for_each(|spec| spec.options.promiscuous = o.promiscuous.or(spec.options.promiscuous));
        o.lcores.check().map_err(|e| format!("{e}{from}"))?;
        let cores = o.lcores.cores();
        let peers = match &o.portmap {
            Some(map) => PortMap::parse(map, specs.len()).map_err(|e| format!("--portmap '{map}': {e}{from}"))?,
            None => PortMap::pairs(specs.len()),
        };
        let queues_per_lcore = o.queues_per_lcore;
        check(queues_per_lcore != Some(0), &|| "queues per lcore (-q) 0 is invalid: give 1 or more".into())?;
        if let (Some(n), false) = (queues_per_lcore, cores.is_empty()) {
            let lanes = specs.len() * usize::from(o.set.queue_pairs());
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
            specs,
            config,
            lcores: o.lcores,
            stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
            json: o.json.unwrap_or(false),
            max_pkt_len: o.set.max_pkt_len(),
            hash_to_src_mac: o.hash_to_src_mac.unwrap_or(false),
        })
    }
}
