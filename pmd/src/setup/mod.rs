//! Bring-up: a set of ports opened in the one order that works, and torn down in reverse with
//! every mbuf accounted for.
//!
//! [`PortSet::open`] takes [`DeviceSpec`]s (`pci:0000:00:03.0`, `vhost:/tmp/vh.sock,queues=2`)
//! and does, in this order:
//!
//! 1. one VFIO [`Container`] for every PCI port, before any DMA memory exists: the IOMMU's valid
//!    IOVA ranges are known only once the groups are attached, and every region is mapped into
//!    that one container;
//! 2. the transports (VFIO PCI functions, vhost-user connections; with `iommu=off`, PCI
//!    functions through [`open_without_iommu`]);
//! 3. the IOVA allocator: the container's when a PCI port is present, physical addresses with
//!    `iommu=off` (every port then has it: one pool holds one kind of address), identity
//!    otherwise (a vhost-user backend maps our memory by its virtual address);
//! 4. one [`Mempool`] for every port, so a frame received on one port is sent on another
//!    without a copy;
//! 5. [`Port::open`] on each transport (each logs the data path it chose, once), then the
//!    spec's [`PortOptions`] through the port's control queue (receive filters, RSS).
//!
//! Once open, [`PortSet::wait_for_link`] waits for the links as DPDK's l2fwd does, and
//! [`PortSet::link_changes`] reports what changed since; [`PortSet::report`] describes a port
//! in one line. [`PortMap`] says which port forwards to which (DPDK l2fwd's `--portmap`), and
//! [`PortSet::lanes`] takes every queue out of the ports as lanes along it.
//! [`PortSetOptions`] is the options a program takes for all this, on its command line and in
//! its configuration file.
//!
//! [`PortSet::close`] drops the ports (each device is reset before its buffers return), then the
//! container, and checks that the pool has every mbuf back. Queues taken out of the ports
//! ([`Port::take_queues`]) must be dropped first.
//!
//! Errors say which step and which port failed ([`SetupError`]), with the library [`Error`]
//! underneath, whose [`kind`](Error::kind) tells a missing device from a refused feature.

mod lanes;
mod link;
mod options;
mod portmap;
mod report;
mod set_options;
mod spec;

use std::sync::Arc;

pub use link::LinkState;
pub use options::{BadRssKey, OptionError, OptionRefused, PortOptions, RssKey, PORT_OPTION_KEYS};
pub use portmap::{PortMap, PortMapError};
pub use report::PortReport;
pub use set_options::{PortSetOptions, JUMBO_DATA_ROOM, MAX_PKT_LEN, MAX_QUEUES};
pub use spec::{Device, DeviceSpec, SpecError};

use crate::error::Error;
use crate::mbuf::{Mempool, MempoolConfig, PoolStats};
use crate::mem::IovaAllocator;
use crate::net::{MacAddr, Port, PortConfig};
use crate::transport::vfio::{Container, VfioPciTransport};
use crate::transport::vhost_user::{VhostUserConfig, VhostUserTransport};
use crate::transport::{open_without_iommu, Transport};

/// How to open a [`PortSet`].
#[derive(Clone, Debug, Default)]
pub struct PortSetConfig {
    /// The one pool every port receives into.
    pub pool: MempoolConfig,
    /// Every port's configuration; `port_id` is set to the port's index, and `queue_pairs` to
    /// the spec's `queues=N` where given.
    pub port: PortConfig,
}

/// A step of the bring-up or teardown that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// No device was given.
    #[error("no ports given: name at least one device (pci:<address> or vhost:<socket>)")]
    NoDevices,
    /// The VFIO container (step 1) or its IOVA allocator (step 3).
    #[error("{what}: {source}")]
    Container {
        /// "opening the VFIO container" or "VFIO IOVA allocator".
        what: &'static str,
        /// Why.
        #[source]
        source: Error,
    },
    /// A port's device could not be reached (step 2): not found, not bound to vfio-pci, its
    /// group busy, no backend at the socket; or it failed while running ([`PortSet::check`]).
    #[error("port {port}: {source}")]
    Device {
        /// The port's index.
        port: usize,
        /// Why.
        #[source]
        source: Error,
    },
    /// The pool (step 4).
    #[error("mbuf pool of {count} mbufs: {source}")]
    Pool {
        /// Mbufs asked for.
        count: u32,
        /// Why.
        #[source]
        source: Error,
    },
    /// A port's device refused its set-up (step 5): a feature, a ring size, queue pairs.
    #[error("port {port} ({name}): {source}")]
    Port {
        /// The port's index.
        port: usize,
        /// Its PCI address or socket path.
        name: String,
        /// Why.
        #[source]
        source: Error,
        /// The pool's counters once the ports opened before this one were dropped: every mbuf
        /// should be back (`in_use == 0`). Boxed: the error stays small.
        pool: Box<PoolStats>,
    },
    /// A port's spec does not parse, or does not fit the configuration (an RSS table entry
    /// beyond its queue pairs). The message is the spec error's, which names the port's string.
    #[error("{source}")]
    Spec {
        /// The port's index.
        port: usize,
        /// Why.
        #[source]
        source: SpecError,
    },
    /// A port opened, but one of its [`PortOptions`] could not be applied: the device refused
    /// the command, or lacks the feature or the control queue it needs.
    #[error("port {port} ({name}): {source}")]
    Options {
        /// The port's index.
        port: usize,
        /// Its PCI address or socket path.
        name: String,
        /// The setting and why. Boxed, as `pool`: the error stays small.
        #[source]
        source: Box<OptionRefused>,
        /// The pool's counters once every port opened so far was dropped.
        pool: Box<PoolStats>,
    },
    /// Some ports have `iommu=off` and others not: the one pool's DMA memory has either physical
    /// addresses or IOVAs of an IOMMU (or a vhost-user backend's virtual addresses), not both.
    #[error(
        "port {without} has iommu=off but port {with} does not: give iommu=off to every port or to none \
         (one mbuf pool serves them all, with one kind of DMA address)"
    )]
    MixedIommu {
        /// A port with `iommu=off`.
        without: usize,
        /// A port without it.
        with: usize,
    },
    /// At teardown, mbufs had not come back to the pool (a queue still alive, or a leak).
    #[error("{} of {} mbufs did not come back to the pool: drop every queue before closing the ports", .stats.in_use, .stats.size)]
    MbufsMissing {
        /// The pool's counters after the ports were dropped.
        stats: PoolStats,
    },
}

impl SetupError {
    /// The library error underneath, if any.
    pub fn error(&self) -> Option<&Error> {
        match self {
            SetupError::Container { source, .. }
            | SetupError::Device { source, .. }
            | SetupError::Pool { source, .. }
            | SetupError::Port { source, .. } => Some(source),
            SetupError::Options { source, .. } => Some(&source.source),
            SetupError::NoDevices
            | SetupError::Spec { .. }
            | SetupError::MixedIommu { .. }
            | SetupError::MbufsMissing { .. } => None,
        }
    }

    /// The pool's counters, for the errors raised once the pool existed (every mbuf should be
    /// back: `in_use == 0`).
    pub fn pool(&self) -> Option<&PoolStats> {
        match self {
            SetupError::Port { pool, .. } | SetupError::Options { pool, .. } => Some(pool),
            SetupError::MbufsMissing { stats } => Some(stats),
            _ => None,
        }
    }
}

/// Ports opened together over one pool (and, for PCI ports, one VFIO container).
pub struct PortSet {
    // Field order is drop order: ports (each resets its device and returns its buffers), then
    // the pool handle, the allocator and the container (its mappings go last).
    ports: Vec<Port>,
    pool: Mempool,
    specs: Vec<DeviceSpec>,
    macs: Vec<MacAddr>,
    _iova: Arc<IovaAllocator>,
    container: Option<Arc<Container>>,
}

impl PortSet {
    /// Opens the ports of `specs`, port `i` from `specs[i]`, in the order the [module
    /// docs](self) give.
    pub fn open(specs: &[DeviceSpec], config: &PortSetConfig) -> Result<PortSet, SetupError> {
        if specs.is_empty() {
            return Err(SetupError::NoDevices);
        }
        let no_iommu = specs.iter().position(|s| s.no_iommu);
        if let (Some(without), Some(with)) = (no_iommu, specs.iter().position(|s| !s.no_iommu)) {
            return Err(SetupError::MixedIommu { without, with });
        }
        for (port, spec) in specs.iter().enumerate() {
            spec.check(config.port.queue_pairs).map_err(|source| SetupError::Spec { port, source })?;
        }
        let container = if no_iommu.is_none() && specs.iter().any(|s| matches!(s.device, Device::Pci { .. })) {
            let c = Container::open()
                .map_err(|source| SetupError::Container { what: "opening the VFIO container", source })?;
            Some(c)
        } else {
            None
        };
        let mut transports: Vec<Box<dyn Transport>> = Vec::with_capacity(specs.len());
        for (port, spec) in specs.iter().enumerate() {
            let device = |source| SetupError::Device { port, source };
            transports.push(match (&spec.device, &container) {
                (Device::Pci { address }, _) if spec.no_iommu => open_without_iommu(address).map_err(device)?,
                (Device::Pci { address }, Some(c)) => Box::new(VfioPciTransport::open(c, address).map_err(device)?),
                (Device::Vhost { path }, _) => {
                    let mut vhost = VhostUserConfig::new(path);
                    vhost.mac = spec.mac.unwrap_or(MacAddr::default_vhost(port)).0;
                    Box::new(VhostUserTransport::connect(vhost).map_err(device)?)
                }
                (Device::Pci { .. }, None) => {
                    unreachable!("a container is opened whenever a PCI port without iommu=off is given")
                }
            });
        }
        let iova = match &container {
            Some(c) => {
                c.iova_allocator().map_err(|source| SetupError::Container { what: "VFIO IOVA allocator", source })?
            }
            None if no_iommu.is_some() => Arc::new(IovaAllocator::physical()),
            None => Arc::new(IovaAllocator::identity()),
        };
        let pool = Mempool::new(&config.pool, &iova)
            .map_err(|source| SetupError::Pool { count: config.pool.count, source })?;
        let mut ports = Vec::with_capacity(specs.len());
        let mut macs = Vec::with_capacity(specs.len());
        for (id, (transport, spec)) in transports.into_iter().zip(specs).enumerate() {
            let port_config = PortConfig {
                port_id: id as u16,
                queue_pairs: spec.queues.unwrap_or(config.port.queue_pairs),
                ..config.port.clone()
            };
            let opened = Port::open(transport, &pool, &port_config, &iova).map_err(|e| (None, e));
            let applied = opened.and_then(|mut port| match spec.options.apply(&mut port) {
                Ok(()) => Ok(port),
                Err(refused) => Err((Some(refused.setting), refused.source)),
            });
            let port = match applied {
                Ok(port) => port,
                Err((setting, source)) => {
                    // The ports opened so far go first (each resets its device and returns its
                    // buffers): the error then shows whether every mbuf came back.
                    drop(ports);
                    let (port, name, pool) = (id, spec.target(), Box::new(pool.stats()));
                    return Err(match setting {
                        None => SetupError::Port { port, name, source, pool },
                        Some(setting) => {
                            let source = Box::new(OptionRefused { setting, source });
                            SetupError::Options { port, name, source, pool }
                        }
                    });
                }
            };
            let mac = source_mac(id, &port, spec);
            ports.push(port);
            macs.push(mac);
        }
        Ok(PortSet { ports, pool, specs: specs.to_vec(), macs, _iova: iova, container })
    }

    /// The ports, by index.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// The ports, to take their queues or send control commands.
    pub fn ports_mut(&mut self) -> &mut [Port] {
        &mut self.ports
    }

    /// The specs the ports were opened from.
    pub fn specs(&self) -> &[DeviceSpec] {
        &self.specs
    }

    /// The source MAC of port `id`: the device's (VIRTIO_NET_F_MAC), else the spec's `mac=`,
    /// else [`MacAddr::fallback`].
    pub fn mac(&self, id: usize) -> MacAddr {
        self.macs[id]
    }

    /// The pool every port receives into (also for frames the application builds).
    pub fn pool(&self) -> &Mempool {
        &self.pool
    }

    /// Port `id` described in one line ([`PortReport`]).
    pub fn report(&self, id: usize) -> PortReport<'_> {
        PortReport { port: &self.ports[id], spec: &self.specs[id], mac: self.macs[id] }
    }

    /// Each port's health ([`Port::check`]): the first port whose device failed (it needs a
    /// reset, or is gone), as [`SetupError::Device`].
    pub fn check(&self) -> Result<(), SetupError> {
        let failed = self.ports.iter().enumerate().find_map(|(port, p)| p.check().err().map(|e| (port, e)));
        failed.map_or(Ok(()), |(port, source)| Err(SetupError::Device { port, source }))
    }

    /// The VFIO container, when a PCI port is open.
    pub fn container(&self) -> Option<&Arc<Container>> {
        self.container.as_ref()
    }

    /// Drops the ports (each device reset before its buffers return), then the container, and
    /// checks the pool: every mbuf must be back. Returns the pool's final counters.
    pub fn close(self) -> Result<PoolStats, SetupError> {
        let PortSet { ports, pool, _iova, container, .. } = self;
        drop(ports);
        drop(container);
        drop(_iova);
        let stats = pool.stats();
        if stats.in_use == 0 {
            Ok(stats)
        } else {
            Err(SetupError::MbufsMissing { stats })
        }
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortSet").field("ports", &self.ports).field("specs", &self.specs).finish_non_exhaustive()
    }
}

/// Port `id`'s source MAC: the device's, the configured one, or a fallback (logged when the
/// configured one is overridden or missing).
fn source_mac(id: usize, port: &Port, spec: &DeviceSpec) -> MacAddr {
    match (port.mac().map(MacAddr), spec.mac) {
        (Some(device), Some(configured)) if device != configured && matches!(spec.device, Device::Pci { .. }) => {
            tracing::info!(
                "port {id}: the device's MAC {device} is used; mac={configured} is only for devices without one"
            );
            device
        }
        (Some(device), _) => device,
        (None, Some(configured)) => configured,
        (None, None) => {
            let mac = MacAddr::fallback(id);
            tracing::info!(
                "port {id}: the device reports no MAC (no VIRTIO_NET_F_MAC) and none is configured: using {mac}"
            );
            mac
        }
    }
}
