//! [`PortSetOptions`]: the options a program takes for its port set, DPDK's EAL-like part of a
//! command line (rings, queues, the pool, huge pages, the largest frame, offloads, no-IOMMU),
//! declared once for a configuration file (feature `serde`: the field names) and a command line
//! (feature `clap`: `--ring-size` for `ring_size`, to flatten into a program's own parser), and
//! checked into a [`PortSetConfig`] with messages that say what to use instead.

use crate::error::Error;
use crate::mbuf::{MempoolConfig, DEFAULT_DATA_ROOM};
use crate::mem::HugePages;
use crate::net::{PortConfig, RingChoice};

use super::{Device, DeviceSpec, PortSetConfig, SetupError, SpecError};

/// Most queue pairs per port the options ask for.
pub const MAX_QUEUES: u16 = 64;
/// The largest frame: a 64 KiB super-packet (65550 bytes of buffer less the header).
pub const MAX_PKT_LEN: u32 = 65_550;
/// Data room of the pool's buffers for jumbo frames and super-packets (`max_pkt_len` beyond
/// [`DEFAULT_DATA_ROOM`], or offloads): a frame of a 9000-byte MTU fits one buffer, a 64 KiB
/// super-packet takes 8 rather than 33. Every buffer is a descriptor on the receive ring and
/// another on the transmit ring, and the device works per descriptor: TCP through l2fwd in the
/// VM (scripts/l2fwd-vm.sh --tcp, iperf3 -t 5) went from 2011 to 3534 Mbit/s with offloads and
/// from 1610 to 2505 at MTU 9000 with these buffers instead of 2 KiB ones.
pub const JUMBO_DATA_ROOM: u16 = 9216;

/// The options of a port set, each optional: [`config`](PortSetOptions::config) fills in the
/// defaults and checks them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct PortSetOptions {
    /// Ring layout [default: auto].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub ring: Option<RingChoice>,
    /// Descriptors per ring [default: the device's maximum, at most 1024].
    #[cfg_attr(feature = "clap", arg(long))]
    pub ring_size: Option<u16>,
    /// Descriptors per ring of queue pairs 0, 1, .. of every port (the others get ring_size),
    /// e.g. 256,128,64,256.
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', value_name = "N,N,.."))]
    pub ring_sizes: Option<Vec<u16>>,
    /// Queue pairs per port (more than one: set through the device's control queue; with RSS
    /// the device spreads flows over them) [default: 1].
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub queues: Option<u16>,
    /// Mbufs in the pool [default: 8192].
    #[cfg_attr(feature = "clap", arg(long))]
    pub pool_size: Option<u32>,
    /// Mbufs each polling thread caches [default: 256].
    #[cfg_attr(feature = "clap", arg(long))]
    pub pool_cache: Option<u32>,
    /// Huge pages for the pool and the rings [default: preferred].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub huge_pages: Option<HugePages>,
    /// Largest frame, in bytes without the virtio-net header (up to the device's MTU plus 14);
    /// beyond 2048 bytes: buffers of 9216 bytes instead, and beyond those mergeable receive
    /// buffers and descriptor chains [default: 1514].
    #[cfg_attr(feature = "clap", arg(long, value_name = "BYTES"))]
    pub max_pkt_len: Option<u32>,
    /// Checksum, TSO and LRO offloads on every port (with mergeable buffers of 9216 bytes and
    /// transmit chains): a received super-packet and its checksum state go out as received
    /// [default: off].
    #[cfg_attr(feature = "clap", arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true))]
    pub offloads: Option<bool>,
    /// No IOMMU (a VM without a vIOMMU): every PCI port through VFIO's no-IOMMU mode or
    /// uio_pci_generic, physical-address DMA memory (root, huge pages). The devices can then
    /// reach ALL memory [default: off].
    #[cfg_attr(
        feature = "clap",
        arg(long = "no-iommu", num_args = 0..=1, default_missing_value = "true", require_equals = true)
    )]
    pub no_iommu: Option<bool>,
}

impl PortSetOptions {
    /// Queue pairs per port.
    pub fn queue_pairs(&self) -> u16 {
        self.queues.unwrap_or(1)
    }

    /// The largest frame.
    pub fn max_pkt_len(&self) -> u32 {
        self.max_pkt_len.unwrap_or(1514)
    }

    /// The ports of `ports` (device strings, or bare PCI addresses with options, as DPDK's
    /// `-a 0000:00:03.0,..`), each with these options' part (`no_iommu`) and checked against the
    /// queue pairs; each device once, at least one. `no_iommu` is for PCI ports: a vhost-user port
    /// with it makes [`PortSet::open`](super::PortSet::open) fail with `MixedIommu`.
    pub fn specs<S: AsRef<str>>(&self, ports: &[S]) -> Result<Vec<DeviceSpec>, SetupError> {
        let mut specs: Vec<DeviceSpec> = Vec::with_capacity(ports.len());
        for (port, text) in ports.iter().enumerate() {
            let invalid = |source| SetupError::Spec { port, source };
            let mut spec: DeviceSpec = text.as_ref().parse().map_err(invalid)?;
            spec.no_iommu |= self.no_iommu.unwrap_or(false) && matches!(spec.device, Device::Pci { .. });
            spec.check(self.queue_pairs()).map_err(invalid)?;
            if let Some(first) = specs.iter().position(|p| p.device == spec.device) {
                return Err(invalid(SpecError::SameDevice { spec: text.as_ref().to_owned(), first }));
            }
            specs.push(spec);
        }
        if specs.is_empty() {
            return Err(SetupError::NoDevices);
        }
        Ok(specs)
    }

    /// The port set's configuration, its pool called `pool_name`; `Error::InvalidConfig` says
    /// which option is out of range and what to use.
    pub fn config(&self, pool_name: &str) -> Result<PortSetConfig, Error> {
        let check = |ok: bool, msg: &dyn Fn() -> String| if ok { Ok(()) } else { Err(Error::InvalidConfig(msg())) };
        let queues = self.queue_pairs();
        check((1..=MAX_QUEUES).contains(&queues), &|| {
            format!("queues {queues} is out of range: use 1..={MAX_QUEUES}")
        })?;
        check(self.ring_size != Some(0), &|| "ring_size 0 is invalid: leave it out for the device's maximum".into())?;
        let ring_sizes = self.ring_sizes.clone().unwrap_or_default();
        check(ring_sizes.len() <= usize::from(queues) && !ring_sizes.contains(&0), &|| {
            format!("ring_sizes {ring_sizes:?}: give at most one non-zero size per queue pair (queues = {queues})")
        })?;
        let (count, cache_size) = (self.pool_size.unwrap_or(8192), self.pool_cache.unwrap_or(256));
        check(count > 0, &|| "pool_size 0 is invalid".into())?;
        check(cache_size <= count / 4, &|| {
            format!("pool_cache {cache_size} is too large for pool_size {count}: keep it at most a quarter of the pool")
        })?;
        let max_pkt_len = self.max_pkt_len();
        check((60..=MAX_PKT_LEN).contains(&max_pkt_len), &|| {
            format!("max_pkt_len {max_pkt_len} is out of range: use 60..={MAX_PKT_LEN} bytes")
        })?;
        let (offloads, huge_pages) = (self.offloads.unwrap_or(false), self.huge_pages.unwrap_or_default());
        // Jumbo frames and super-packets: bigger buffers (a jumbo frame in one, a super-packet in
        // eight); for_forwarding chains whatever may still span several.
        let jumbo = offloads || max_pkt_len > u32::from(DEFAULT_DATA_ROOM);
        let data_room = if jumbo { JUMBO_DATA_ROOM } else { DEFAULT_DATA_ROOM };
        let port = PortConfig {
            queue_pairs: queues,
            ring_size: self.ring_size,
            pair_ring_sizes: ring_sizes,
            ring: self.ring.unwrap_or_default(),
            huge_pages,
            ..PortConfig::default()
        }
        .for_forwarding(max_pkt_len, u32::from(data_room), offloads);
        let pool = MempoolConfig {
            name: pool_name.into(),
            count,
            cache_size,
            huge_pages,
            data_room,
            ..MempoolConfig::default()
        };
        Ok(PortSetConfig { pool, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(options: PortSetOptions) -> String {
        match options.config("test") {
            Err(Error::InvalidConfig(msg)) => msg,
            other => panic!("{options:?} gave {other:?}"),
        }
    }

    #[test]
    fn defaults_are_dpdk_like_and_jumbo_frames_get_big_buffers() {
        let config = PortSetOptions::default().config("p").unwrap();
        assert_eq!((config.pool.count, config.pool.cache_size, config.pool.data_room), (8192, 256, DEFAULT_DATA_ROOM));
        assert_eq!((config.port.queue_pairs, config.port.ring_size, config.port.rx_mergeable), (1, None, false));
        let jumbo = PortSetOptions { max_pkt_len: Some(9014), ..PortSetOptions::default() }.config("p").unwrap();
        assert_eq!((jumbo.pool.data_room, jumbo.port.rx_mergeable), (JUMBO_DATA_ROOM, false));
        assert_eq!(jumbo.port.max_frame, Some(9014), "checked against the device's MTU at open");
        let tso = PortSetOptions { offloads: Some(true), ..PortSetOptions::default() }.config("p").unwrap();
        assert_eq!((tso.pool.data_room, tso.port.rx_mergeable, tso.port.offloads.tso), (JUMBO_DATA_ROOM, true, true));
    }

    #[test]
    fn each_bad_value_is_named_with_what_to_use() {
        let o = PortSetOptions::default;
        assert!(invalid(PortSetOptions { queues: Some(0), ..o() }).contains("use 1..=64"));
        assert!(invalid(PortSetOptions { ring_size: Some(0), ..o() }).contains("leave it out"));
        assert!(invalid(PortSetOptions { ring_sizes: Some(vec![256, 256]), ..o() }).contains("at most one"));
        assert!(invalid(PortSetOptions { pool_size: Some(100), pool_cache: Some(50), ..o() }).contains("a quarter"));
        assert!(invalid(PortSetOptions { max_pkt_len: Some(70_000), ..o() }).contains("60..=65550"));
        let table = ["0000:00:03.0,rss_table=[1,0]"];
        assert!(matches!(
            o().specs(&table),
            Err(SetupError::Spec { port: 0, source: SpecError::RssTableEntry { .. } })
        ));
        assert_eq!(PortSetOptions { queues: Some(2), ..o() }.specs(&table).unwrap()[0].options.rss_table, [1, 0]);
        let specs = PortSetOptions { no_iommu: Some(true), ..o() }.specs(&["00:03.0", "vhost:/x"]).unwrap();
        assert_eq!((specs[0].no_iommu, specs[1].no_iommu), (true, false));
        let same = o().specs(&["00:03.0", "pci:0000:00:03.0"]).unwrap_err().to_string();
        assert!(same.contains("same device as port 0"), "{same}");
        assert!(matches!(o().specs::<&str>(&[]), Err(SetupError::NoDevices)));
        assert!(matches!(o().specs(&["tap:x"]), Err(SetupError::Spec { source: SpecError::UnknownKind { .. }, .. })));
    }
}
