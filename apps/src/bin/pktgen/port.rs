//! Opening pktgen's one port from its spec (`pci:<address>` or `vhost:<socket>[,mac=MAC]`), in
//! the order the library needs: the VFIO container before any DMA memory, the transport, the
//! IOVA allocator, the pool, then the port.

use std::path::PathBuf;
use std::sync::Arc;

use virtio_pmd::mbuf::{Mempool, MempoolConfig};
use virtio_pmd::mem::IovaAllocator;
use virtio_pmd::net::{Port, PortConfig};
use virtio_pmd::transport::vfio::{Container, VfioPciTransport};
use virtio_pmd::transport::vhost_user::{VhostUserConfig, VhostUserTransport};
use virtio_pmd::transport::Transport;
use virtio_pmd_apps::mac::Mac;
use virtio_pmd_apps::options::{Huge, Ring};

/// Where the port is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// A virtio-net PCI function bound to vfio-pci.
    Pci(String),
    /// A vhost-user backend's socket, and the MAC the port reports.
    Vhost(PathBuf, Mac),
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Spec, String> {
        if let Some(address) = s.strip_prefix("pci:") {
            return Ok(Spec::Pci(address.to_string()));
        }
        let rest = s.strip_prefix("vhost:").ok_or_else(|| {
            format!("port '{s}': expected pci:<address> (e.g. pci:0000:00:03.0) or vhost:<socket>[,mac=MAC]")
        })?;
        let mut parts = rest.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| format!("port '{s}': no socket path"))?;
        let mut mac = Mac::default_vhost(0);
        for part in parts {
            match part.split_once('=') {
                Some(("mac", m)) => mac = m.parse().map_err(|e| format!("port '{s}': {e}"))?,
                _ => return Err(format!("port '{s}': unknown option '{part}' (known: mac=MAC)")),
            }
        }
        Ok(Spec::Vhost(PathBuf::from(path), mac))
    }
}

/// How to open the port.
pub struct Options {
    /// Queue pairs.
    pub queues: u16,
    /// Descriptors per ring.
    pub ring_size: u16,
    /// Ring layout.
    pub ring: Ring,
    /// Mbufs in the pool.
    pub mbufs: u32,
    /// Huge page policy of the pool and rings.
    pub huge_pages: Huge,
}

/// Opens the port and its pool; returns them with the port's MAC.
pub fn open(spec: &Spec, o: &Options) -> Result<(Port, Mempool, Mac), String> {
    // Held until the port is open: the pool's DMA mappings go through it.
    let container;
    let (transport, iova, configured): (Box<dyn Transport>, Arc<IovaAllocator>, Option<Mac>) = match spec {
        Spec::Pci(address) => {
            container = Container::open().map_err(|e| format!("opening the VFIO container: {e}"))?;
            let transport = VfioPciTransport::open(&container, address).map_err(|e| format!("pci:{address}: {e}"))?;
            let iova = container.iova_allocator().map_err(|e| format!("VFIO IOVA allocator: {e}"))?;
            (Box::new(transport), iova, None)
        }
        Spec::Vhost(path, mac) => {
            let mut config = VhostUserConfig::new(path);
            config.mac = mac.0;
            let transport =
                VhostUserTransport::connect(config).map_err(|e| format!("vhost:{}: {e}", path.display()))?;
            // A vhost-user backend maps our memory at its virtual addresses.
            (Box::new(transport), Arc::new(IovaAllocator::identity()), Some(*mac))
        }
    };
    let pool = Mempool::new(
        &MempoolConfig {
            name: "pktgen".into(),
            count: o.mbufs,
            huge_pages: o.huge_pages.into(),
            ..MempoolConfig::default()
        },
        &iova,
    )
    .map_err(|e| format!("mempool of {} mbufs: {e}", o.mbufs))?;
    let config = PortConfig {
        queue_pairs: o.queues,
        ring_size: Some(o.ring_size),
        ring: o.ring.into(),
        huge_pages: o.huge_pages.into(),
        ..PortConfig::default()
    };
    let port = Port::open(transport, &pool, &config, &iova).map_err(|e| format!("opening the port: {e}"))?;
    let mac = port.mac().map(Mac).or(configured).unwrap_or(Mac::fallback(0));
    Ok((port, pool, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!("pci:0000:00:03.0".parse(), Ok(Spec::Pci("0000:00:03.0".into())));
        assert_eq!("vhost:/tmp/a.sock".parse(), Ok(Spec::Vhost("/tmp/a.sock".into(), Mac::default_vhost(0))));
        assert_eq!(
            "vhost:/tmp/a.sock,mac=02:00:00:00:00:09".parse(),
            Ok(Spec::Vhost("/tmp/a.sock".into(), Mac([2, 0, 0, 0, 0, 9])))
        );
        for bad in ["eth0", "vhost:", "vhost:/a,queues=2", "vhost:/a,mac=zz"] {
            assert!(bad.parse::<Spec>().is_err(), "{bad}");
        }
    }
}
