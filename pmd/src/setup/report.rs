//! One-line descriptions for logs and scripts: a [`PortSetConfig`] (what every port is opened
//! with) and a [`PortReport`] (what one port negotiated, in `key=value` form).

use std::fmt;

use super::{Device, DeviceSpec, LinkState, PortSetConfig};
use crate::mem::HugePages;
use crate::net::{MacAddr, Port, RingChoice, RssConfig};

impl fmt::Display for PortSetConfig {
    /// `1 queue pair(s) each, ring auto, ring size device max, pool 8192 mbufs (cache 256), huge
    /// pages preferred, offloads off`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (port, pool) = (&self.port, &self.pool);
        let ring = match port.ring {
            RingChoice::Auto => "auto",
            RingChoice::Packed => "packed",
            RingChoice::Split => "split",
        };
        write!(f, "{} queue pair(s) each, ring {ring}, ring size ", port.queue_pairs)?;
        match port.ring_size {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "device max")?,
        }
        if !port.pair_ring_sizes.is_empty() {
            write!(f, " (by pair {:?})", port.pair_ring_sizes)?;
        }
        let huge = |h| match h {
            HugePages::Required => "required",
            HugePages::Preferred => "preferred",
            HugePages::Never => "never",
        };
        write!(f, ", pool {} mbufs (cache {}), huge pages {}", pool.count, pool.cache_size, huge(pool.huge_pages))?;
        let o = &port.offloads;
        let all = [(o.tx_checksum, "tx_checksum"), (o.tso, "tso"), (o.rx_checksum, "rx_checksum"), (o.lro, "lro")];
        let offloads: Vec<&str> = all.into_iter().filter_map(|(on, name)| on.then_some(name)).collect();
        match offloads.is_empty() {
            true => write!(f, ", offloads off"),
            false => write!(f, ", offloads {}", offloads.join(",")),
        }
    }
}

/// What one port of a [`PortSet`](super::PortSet) runs with
/// ([`PortSet::report`](super::PortSet::report)): `pci=0000:00:03.0 mac=52:54:00:00:00:01
/// ring=packed ring_size=256 queues=1 mtu=1500 link=up rx_path=.. tx_path=.. offloads=..
/// features=..` (`vhost=PATH` for a vhost-user port). The link state is read when printed.
#[derive(Clone, Copy, Debug)]
pub struct PortReport<'a> {
    pub(super) port: &'a Port,
    pub(super) spec: &'a DeviceSpec,
    pub(super) mac: MacAddr,
}

impl fmt::Display for PortReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port;
        let kind = match self.spec.device {
            Device::Pci { .. } => "pci",
            Device::Vhost { .. } => "vhost",
        };
        let ring = port.ring_format().name();
        write!(f, "{kind}={} mac={} ring={ring} ring_size={}", self.spec.target(), self.mac, port.ring_size())?;
        write!(f, " queues={} mtu=", port.queue_pairs())?;
        match port.mtu() {
            Some(mtu) => write!(f, "{mtu}")?,
            None => write!(f, "-")?,
        }
        write!(f, " link={} rx_path={} tx_path={}", LinkState::of(port), port.rx_path(), port.tx_path())?;
        write!(f, " offloads={:?} features={:?}", port.offloads(), port.features())
    }
}

impl fmt::Display for RssConfig {
    /// `hash_types=0x1ff table_len=128 table=0,1,0,1,.. key=6d5a..` (the key in hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table: Vec<String> = self.table.iter().map(u16::to_string).collect();
        write!(f, "hash_types={:#x} table_len={} table={} key=", self.hash_types, self.table.len(), table.join(","))?;
        self.key.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbuf::MempoolConfig;
    use crate::net::{OffloadConfig, PortConfig};

    #[test]
    fn a_config_prints_in_one_line() {
        let config = PortSetConfig {
            pool: MempoolConfig { count: 4096, cache_size: 128, huge_pages: HugePages::Required, ..Default::default() },
            port: PortConfig {
                queue_pairs: 2,
                ring: RingChoice::Split,
                ring_size: Some(256),
                pair_ring_sizes: vec![256, 128],
                offloads: OffloadConfig { tx_checksum: true, lro: true, ..Default::default() },
                ..Default::default()
            },
        };
        assert_eq!(
            config.to_string(),
            "2 queue pair(s) each, ring split, ring size 256 (by pair [256, 128]), pool 4096 mbufs (cache 128), \
             huge pages required, offloads tx_checksum,lro"
        );
        assert_eq!(
            PortSetConfig::default().to_string(),
            "1 queue pair(s) each, ring auto, ring size device max, pool 8192 mbufs (cache 256), huge pages \
             preferred, offloads off"
        );
    }

    #[test]
    fn an_rss_config_prints_its_table_and_key() {
        let rss = RssConfig { hash_types: 0x1c, key: vec![0x6d, 0x5a], table: vec![1, 0], unclassified: 0 };
        assert_eq!(rss.to_string(), "hash_types=0x1c table_len=2 table=1,0 key=6d5a");
    }
}
