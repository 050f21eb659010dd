//! l2fwd's settings: the TOML file (`--config`), the command line on top of it, and the checks
//! that turn both into [`Settings`].
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
//! promiscuous = false       # turn promiscuous mode on at start (the device's control queue)
//! no_iommu = false          # no IOMMU: ports in VFIO no-IOMMU mode or on uio_pci_generic, physical addresses (root)
//!
//! [[ports]]
//! pci = "0000:00:03.0"
//! # dst_mac = "02:00:00:00:00:00"   destination MAC of frames sent out of this port
//! # mac = "52:54:00:00:00:01"       source MAC when the device reports none
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use virtio_pmd::transport::vfio::normalize_bdf;
use virtio_pmd_apps::mac::Mac;
use virtio_pmd_apps::options::{Huge, Ring};

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

/// One `[[ports]]` entry of the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePort {
    /// PCI address of the virtio-net function (bound to vfio-pci).
    pub pci: String,
    /// Destination MAC of frames sent out of this port (default 02:00:00:00:00:<port id>).
    pub dst_mac: Option<Mac>,
    /// Source MAC of frames sent out of this port when the device reports none.
    pub mac: Option<Mac>,
}

/// The file, as written: every key optional. The command line's settings come in the same
/// shape, and override the file's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The ports, in port-id order.
    pub ports: Option<Vec<FilePort>>,
    /// Ring layout.
    pub ring: Option<Ring>,
    /// Descriptors per ring.
    pub ring_size: Option<u16>,
    /// Frames per burst.
    pub burst: Option<usize>,
    /// Mbufs in the pool.
    pub pool_size: Option<u32>,
    /// Mbufs cached per thread.
    pub pool_cache: Option<u32>,
    /// Seconds between statistics lines (0: none).
    pub stats_interval: Option<u64>,
    /// Cores of the polling threads.
    pub cores: Option<Vec<usize>>,
    /// Huge page policy for the pool and the rings.
    pub huge_pages: Option<Huge>,
    /// Microseconds a polling thread sleeps once its queues stayed empty for a while (0: never).
    pub idle_sleep_us: Option<u64>,
    /// Turn promiscuous mode on at start (VIRTIO_NET_CTRL_RX_PROMISC over the control queue).
    pub promiscuous: Option<bool>,
    /// Open every port without an IOMMU (VFIO's no-IOMMU mode or uio_pci_generic, by binding)
    /// with physical-address DMA memory (a VM without a vIOMMU; the devices can reach all memory).
    pub no_iommu: Option<bool>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Command-line settings naming `pcis` as the ports (none: the file's ports).
    pub fn with_ports(pcis: &[String]) -> Self {
        let ports = pcis.iter().map(|pci| FilePort { pci: pci.clone(), dst_mac: None, mac: None }).collect();
        FileConfig { ports: (!pcis.is_empty()).then_some(ports), ..FileConfig::default() }
    }

    /// Parses `text` (read from `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        toml::from_str(text)
            .map_err(|e| format!("config file {}: {}", path.display(), e.to_string().trim_end().replace('\n', "\n  ")))
    }
}

/// One port, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSettings {
    /// Normalised PCI address (`0000:00:03.0`).
    pub pci: String,
    /// Destination MAC of frames sent out of this port.
    pub dst_mac: Mac,
    /// Source MAC to use when the device reports none.
    pub mac: Option<Mac>,
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
    /// Turn promiscuous mode on at start.
    pub promiscuous: bool,
    /// No IOMMU: ports through VFIO no-IOMMU or uio_pci_generic, DMA at physical addresses.
    pub no_iommu: bool,
    /// Where the file came from, if any.
    pub source: Option<PathBuf>,
}

impl Settings {
    /// Merges the file (if any) and the command line (`cli`, which wins), and checks the result.
    pub fn resolve(file: Option<(&Path, FileConfig)>, cli: FileConfig) -> Result<Settings, String> {
        let (source, file) = match file {
            Some((path, f)) => (Some(path.to_path_buf()), f),
            None => (None, FileConfig::default()),
        };
        let from = source.as_ref().map(|p| format!(" (config file {})", p.display())).unwrap_or_default();
        let entries = cli.ports.or(file.ports).unwrap_or_default();
        if entries.is_empty() {
            return Err(format!(
                "no ports given{from}: name them by PCI address (`l2fwd 0000:00:03.0 0000:00:04.0`, \
                 `--port BDF`) or in a config file's [[ports]] entries"
            ));
        }
        let mut ports: Vec<PortSettings> = Vec::with_capacity(entries.len());
        for (id, entry) in entries.into_iter().enumerate() {
            let pci = normalize_bdf(&entry.pci).map_err(|_| {
                format!(
                    "port {id}: '{}' is not a PCI address{from}: expected DDDD:BB:DD.F, e.g. 0000:00:03.0",
                    entry.pci
                )
            })?;
            if let Some(prev) = ports.iter().position(|p| p.pci == pci) {
                return Err(format!("ports {prev} and {id} are both {pci}{from}: give each device once"));
            }
            ports.push(PortSettings { pci, dst_mac: entry.dst_mac.unwrap_or(Mac::default_peer(id)), mac: entry.mac });
        }

        let burst = cli.burst.or(file.burst).unwrap_or(DEFAULT_BURST);
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(format!("burst {burst} is out of range{from}: use 1..={MAX_BURST}"));
        }
        let ring_size = cli.ring_size.or(file.ring_size);
        if ring_size == Some(0) {
            return Err(format!("ring_size 0 is invalid{from}: leave it out for the device's maximum"));
        }
        let pool_size = cli.pool_size.or(file.pool_size).unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size == 0 {
            return Err(format!("pool_size 0 is invalid{from}"));
        }
        let pool_cache = cli.pool_cache.or(file.pool_cache).unwrap_or(DEFAULT_POOL_CACHE);
        if pool_cache > pool_size / 4 {
            return Err(format!(
                "pool_cache {pool_cache} is too large for pool_size {pool_size}{from}: keep it at most a quarter \
                 of the pool"
            ));
        }
        let stats = cli.stats_interval.or(file.stats_interval).unwrap_or(DEFAULT_STATS_INTERVAL);
        let cores = cli.cores.or(file.cores).unwrap_or_default();
        let idle_sleep_us = cli.idle_sleep_us.or(file.idle_sleep_us).unwrap_or(0);
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
        Ok(Settings {
            ports,
            ring: cli.ring.or(file.ring).unwrap_or(Ring::Auto),
            ring_size,
            burst,
            pool_size,
            pool_cache,
            stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
            cores,
            huge_pages: cli.huge_pages.or(file.huge_pages).unwrap_or(Huge::Preferred),
            idle_sleep: Some(idle_sleep_us).filter(|us| *us > 0).map(Duration::from_micros),
            promiscuous: cli.promiscuous.or(file.promiscuous).unwrap_or(false),
            no_iommu: cli.no_iommu.or(file.no_iommu).unwrap_or(false),
            source,
        })
    }

    /// The port that port `id` forwards to: 0 <-> 1, 2 <-> 3, ...; the last of an odd number
    /// of ports forwards to itself.
    pub fn peer_of(&self, id: usize) -> usize {
        peer_of(id, self.ports.len())
    }
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

    fn parse(text: &str) -> Result<FileConfig, String> {
        FileConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn a_full_file_parses_and_resolves() {
        let file = parse(
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
        )
        .unwrap();
        let s = Settings::resolve(Some((Path::new("test.toml"), file)), FileConfig::default()).unwrap();
        assert_eq!(s.ports[0].pci, "0000:00:03.0");
        assert_eq!(s.ports[0].dst_mac, Mac([2, 0, 0, 0, 0, 0]));
        assert_eq!(s.ports[1].dst_mac, Mac([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        assert_eq!(s.ports[1].mac, Some(Mac([0x52, 0x54, 0, 0, 0, 9])));
        assert_eq!((s.ring, s.ring_size, s.burst, s.pool_size, s.pool_cache), (Ring::Split, Some(512), 64, 4096, 128));
        assert_eq!(s.stats_interval, Some(Duration::from_secs(2)));
        assert_eq!(s.cores, vec![1, 0]);
        assert_eq!(s.huge_pages, Huge::Required);
        assert_eq!(s.idle_sleep, Some(Duration::from_micros(20)));
    }

    #[test]
    fn unknown_keys_are_errors_naming_key_and_file() {
        let err = parse("ring = \"packed\"\nburts = 32\n").unwrap_err();
        assert!(err.contains("test.toml") && err.contains("burts"), "{err}");
        let err = parse("[[ports]]\npci = \"00:03.0\"\nsrc_mac = \"02:00:00:00:00:01\"\n").unwrap_err();
        assert!(err.contains("test.toml") && err.contains("src_mac"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(parse("ring = \"ring\"\n").unwrap_err().contains("ring"));
        assert!(parse("huge_pages = \"maybe\"\n").is_err());
        assert!(parse("[[ports]]\npci = \"00:03.0\"\ndst_mac = \"02:00\"\n").unwrap_err().contains("MAC"));
        let cli = |ports: &[&str]| FileConfig::with_ports(&ports.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(Settings::resolve(None, cli(&[])).unwrap_err().contains("no ports"));
        assert!(Settings::resolve(None, cli(&["00:99.0"])).unwrap_err().contains("not a PCI address"));
        assert!(Settings::resolve(None, cli(&["00:03.0", "0000:00:03.0"])).unwrap_err().contains("both"));
        let burst = FileConfig { burst: Some(0), ..cli(&["00:03.0"]) };
        assert!(Settings::resolve(None, burst).unwrap_err().contains("burst"));
        let cache = FileConfig { pool_size: Some(100), pool_cache: Some(50), ..cli(&["00:03.0"]) };
        assert!(Settings::resolve(None, cache).unwrap_err().contains("pool_cache"));
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file = parse("burst = 8\nring = \"split\"\n[[ports]]\npci = \"00:05.0\"\n").unwrap();
        let cli = FileConfig { burst: Some(16), ..FileConfig::with_ports(&["00:03.0".into(), "00:04.0".into()]) };
        let s = Settings::resolve(Some((Path::new("f.toml"), file)), cli).unwrap();
        assert_eq!(s.ports.iter().map(|p| p.pci.as_str()).collect::<Vec<_>>(), ["0000:00:03.0", "0000:00:04.0"]);
        assert_eq!((s.burst, s.ring), (16, Ring::Split));
        assert_eq!(s.ports[1].dst_mac, Mac::default_peer(1));
    }

    #[test]
    fn no_iommu_comes_from_the_file_or_the_command_line() {
        let ports = FileConfig::with_ports(&["00:03.0".into()]);
        assert!(!Settings::resolve(None, ports.clone()).unwrap().no_iommu);
        let file = parse("no_iommu = true\n").unwrap();
        assert!(Settings::resolve(Some((Path::new("f.toml"), file)), ports.clone()).unwrap().no_iommu);
        let cli = FileConfig { no_iommu: Some(true), ..ports };
        assert!(Settings::resolve(None, cli).unwrap().no_iommu);
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
        let file = FileConfig::load(path).unwrap();
        let s = Settings::resolve(Some((path, file)), FileConfig::default()).unwrap();
        assert_eq!(s.ports.iter().map(|p| p.pci.as_str()).collect::<Vec<_>>(), ["0000:00:03.0", "0000:00:04.0"]);
    }

    #[test]
    fn macs_parse_and_print() {
        let mac: Mac = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd:100".parse::<Mac>().is_err());
        assert_eq!(Mac::default_peer(1).to_string(), "02:00:00:00:00:01");
    }
}
