//! The vhost-user transport: the device is a backend process (DPDK's `net_vhost`, a
//! `vhost-user-net` daemon) reached over a unix socket, and it reads and writes our rings and
//! buffers directly in shared memory.
//!
//! The `vhost` crate's [`Frontend`] is the message layer; this module maps the virtio transport
//! operations onto it (the vhost-user protocol, "Front-end message types"):
//!
//! | [`Transport`] operation | vhost-user messages |
//! |---|---|
//! | `connect` | `SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES`, `SET_PROTOCOL_FEATURES` (REPLY_ACK, MQ, CONFIG when offered), `GET_QUEUE_NUM` (MQ; sent by hand, see `socket::get_queue_num`) |
//! | status FEATURES_OK | `SET_FEATURES` (driver features + `VHOST_USER_F_PROTOCOL_FEATURES`); a refusal (REPLY_ACK) reads back as FEATURES_OK cleared |
//! | `map_dma` | `SET_MEM_TABLE` with every region so far (sent before the first queue set-up, again when a region is added later) |
//! | `setup_queue` | `SET_VRING_CALL`, `SET_VRING_NUM`, `SET_VRING_BASE`, `SET_VRING_ADDR`, `SET_VRING_KICK` |
//! | status DRIVER_OK | `SET_VRING_ENABLE(1)` for every queue set up |
//! | `reset`, drop | `SET_VRING_ENABLE(0)`, `GET_VRING_BASE` for every queue set up |
//!
//! Without the `CONFIG` protocol feature (DPDK has none) the virtio-net configuration is
//! synthesised: the MAC of [`VhostUserConfig::mac`], link status up while the connection lives,
//! and `VIRTIO_NET_F_MAC` / `VIRTIO_NET_F_STATUS` are offered to the driver on the backend's
//! behalf (and left out of `SET_FEATURES`).
//!
//! There is no status register: the status state machine ("Device Status Field", 2.1) is
//! emulated here, and `VHOST_USER_PROTOCOL_F_STATUS` is never acked (DPDK would then wait for a
//! `SET_STATUS` the crate cannot send).
//!
//! Addresses: each DMA region goes into the memory table as guest physical address =
//! [`DmaRegion::iova`], user address = our virtual address, backed by the region's memfd.
//! Descriptors carry IOVAs; `SET_VRING_ADDR` carries our virtual addresses (vhost-user
//! translates ring addresses through the user addresses), so the ring addresses the net device
//! gives (IOVAs) are translated back through the regions mapped here.
//!
//! Liveness: every request runs under a watchdog that shuts the socket down when the
//! backend does not answer in time (a stopped backend would otherwise block set-up forever), and
//! [`VhostUserTransport::link_up`] checks the socket for a hang-up without sending anything. Once
//! the connection has failed it stays failed: status reads DEVICE_NEEDS_RESET and every request
//! returns the same error; recover by dropping the transport and connecting again.
//!
//! Kicks are `eventfd` writes ([`Notify`]); the call eventfds the backend signals are never read
//! (poll mode).
//!
//! Use: connect, then hand the transport to the port, which drives "Device Initialization":
//!
//! ```no_run
//! use virtio_pmd::mbuf::{Mempool, MempoolConfig};
//! use virtio_pmd::mem::IovaAllocator;
//! use virtio_pmd::net::{Port, PortConfig};
//! use virtio_pmd::transport::vhost_user::{VhostUserConfig, VhostUserTransport};
//! # fn main() -> virtio_pmd::Result<()> {
//! let iova = IovaAllocator::identity();
//! let pool = Mempool::new(&MempoolConfig::default(), &iova)?;
//! let transport = VhostUserTransport::connect(VhostUserConfig::new("/tmp/vh.sock"))?;
//! let port = Port::open(Box::new(transport), &pool, &PortConfig::default(), &iova)?;
//! # Ok(()) }
//! ```
#![allow(unsafe_code)]

mod socket;
mod watchdog;

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VHOST_USER_MAX_VRINGS,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::watchdog::Watchdog;
use super::{Notify, QueueAddresses, RingFormat, Transport};
use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::features::{self, Features};
use crate::spec::{net, packed, split, status};

/// Most memory regions a vhost-user memory table carries (`VHOST_MEMORY_BASELINE_NREGIONS`;
/// DPDK 22.11 offers no `CONFIGURE_MEM_SLOTS` to raise it).
pub const MAX_REGIONS: usize = 8;

/// Largest ring size a vhost-user backend accepts (DPDK: 32768; split rings must also be a power
/// of two). The protocol has no way to ask: a refused size shows up only when set.
pub const MAX_QUEUE_SIZE: u16 = 1 << 15;

/// Queues assumed when the backend does not offer the MQ protocol feature: one rx/tx pair.
const DEFAULT_NUM_QUEUES: u16 = 2;

/// `VHOST_F_LOG_ALL` (26): dirty logging for live migration, a vhost-level bit.
const VHOST_F_LOG_ALL: u32 = 26;

/// Feature bits that belong to the vhost-user transport, not to the virtio device: hidden from
/// [`Transport::device_features`] and handled here.
const TRANSPORT_FEATURES: Features = Features::from_bits(&[features::VHOST_USER_PROTOCOL_FEATURES, VHOST_F_LOG_ALL]);

/// virtio-net features this transport provides itself when the backend cannot serve the device
/// configuration (no `CONFIG` protocol feature, as with DPDK): the synthesised configuration holds
/// the configured MAC and a link status that follows the connection. Never sent to the backend.
const EMULATED_FEATURES: Features = Features::from_bits(&[net::F_MAC, net::F_STATUS]);

/// `SET_VRING_BASE` value for a fresh packed ring: next avail index 0, avail wrap counter 1 in
/// bit 15 (vhost-user "Ring states"; DPDK silently ignores the ring with 0).
const PACKED_FRESH_BASE: u16 = 1 << 15;

/// Options for [`VhostUserTransport::connect`].
#[derive(Clone, Debug)]
pub struct VhostUserConfig {
    /// The backend's unix socket.
    pub path: PathBuf,
    /// How long to keep retrying while the socket is missing or refuses connections (a backend
    /// that is still starting).
    pub connect_timeout: Duration,
    /// Longest any one request may wait for the backend; past it the connection is closed. The
    /// first answer of a freshly started DPDK takes about 0.5 s.
    pub request_timeout: Duration,
    /// MAC address reported in the device configuration when the backend has no `CONFIG`
    /// protocol feature (DPDK has not; it does not offer `VIRTIO_NET_F_MAC` either).
    pub mac: [u8; 6],
    /// MTU reported in the synthesised device configuration.
    pub mtu: u16,
}

impl VhostUserConfig {
    /// Defaults for `path`: 2 s connect window, 5 s per request, MAC 02:00:00:00:00:01, MTU 1500.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            mac: [0x02, 0, 0, 0, 0, 0x01],
            mtu: 1500,
        }
    }
}

/// Why a connection is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dead {
    /// The backend closed it, or the socket failed.
    Closed,
    /// The watchdog closed it after a request ran out of time.
    TimedOut,
    /// The conversation went out of step (an unexpected reply).
    Desync,
}

/// One queue handed to the backend.
#[derive(Debug)]
struct QueueState {
    format: RingFormat,
    /// Signalled by the backend on used buffers (when not suppressed); never read.
    _call: EventFd,
    /// Enabled with `SET_VRING_ENABLE` (at DRIVER_OK).
    enabled: bool,
}

/// The kick of one queue: an eventfd the backend waits on.
#[derive(Debug)]
struct Kick(EventFd);

impl Notify for Kick {
    #[inline]
    fn notify(&self) {
        // Non-blocking eventfd: the write only fails (EAGAIN) once the counter is near 2^64,
        // and then the backend has a pending kick anyway.
        let _ = self.0.write(1);
    }
}

/// A virtio device behind a vhost-user socket. See the [module docs](self).
pub struct VhostUserTransport {
    name: String,
    config: VhostUserConfig,
    frontend: Frontend,
    watchdog: Watchdog,
    /// A duplicate of the connection's socket, for [`Self::link_up`].
    socket: UnixStream,
    dead: Option<Dead>,
    /// What `GET_FEATURES` returned, transport bits included.
    offered: Features,
    protocol: VhostUserProtocolFeatures,
    num_queues: u16,
    status: u8,
    driver_features: Features,
    features_accepted: bool,
    regions: Vec<Arc<DmaRegion>>,
    /// The backend's memory table lags behind `regions`.
    mem_table_stale: bool,
    queues: Vec<Option<QueueState>>,
}

impl std::fmt::Debug for VhostUserTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserTransport")
            .field("path", &self.name)
            .field("dead", &self.dead)
            .field("offered", &self.offered)
            .field("protocol", &self.protocol)
            .field("num_queues", &self.num_queues)
            .field("status", &self.status)
            .field("regions", &self.regions.len())
            .finish_non_exhaustive()
    }
}

impl VhostUserTransport {
    /// Connects to the backend at `config.path` and negotiates the protocol features. Fails with
    /// [`Error::VhostUserNoBackend`] when nothing listens there within `config.connect_timeout`.
    pub fn connect(config: VhostUserConfig) -> Result<Self> {
        let started = Instant::now();
        let name = config.path.display().to_string();
        let stream = socket::connect(&config.path, config.connect_timeout)
            .map_err(|source| Error::VhostUserNoBackend { path: name.clone(), source })?;
        let io_err = |what: &str, source: io::Error| Error::Io { what: format!("{name}: {what}"), source };
        let watchdog_socket = stream.try_clone().map_err(|e| io_err("dup of the socket", e))?;
        let socket = stream.try_clone().map_err(|e| io_err("dup of the socket", e))?;
        let watchdog = Watchdog::start(watchdog_socket).map_err(|e| io_err("watchdog thread", e))?;
        let mut transport = Self {
            name,
            frontend: Frontend::from_stream(stream, VHOST_USER_MAX_VRINGS),
            config,
            watchdog,
            socket,
            dead: None,
            offered: Features::EMPTY,
            protocol: VhostUserProtocolFeatures::empty(),
            num_queues: DEFAULT_NUM_QUEUES,
            status: 0,
            driver_features: Features::EMPTY,
            features_accepted: false,
            regions: Vec::new(),
            mem_table_stale: false,
            queues: Vec::new(),
        };
        transport.handshake()?;
        tracing::debug!(
            path = %transport.name,
            features = ?transport.offered,
            protocol = ?transport.protocol,
            queues = transport.num_queues,
            elapsed = ?started.elapsed(),
            "vhost-user backend connected"
        );
        Ok(transport)
    }

    fn handshake(&mut self) -> Result<()> {
        self.request("SET_OWNER", |f| f.set_owner())?;
        self.offered = Features(self.request("GET_FEATURES", |f| f.get_features())?);
        if !self.offered.has(features::VHOST_USER_PROTOCOL_FEATURES) {
            return Ok(());
        }
        let offered = self.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
        // Never STATUS: DPDK would then wait for SET_STATUS(DRIVER_OK), which the crate cannot
        // send. Everything else is optional.
        let wanted =
            VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG;
        let acked = offered & wanted;
        self.request("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(acked))?;
        self.protocol = acked;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Only now: before REPLY_ACK is negotiated DPDK would ack SET_OWNER anyway, and the
            // crate, not expecting that ack, would read it as the next reply.
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            // Not the crate's get_queue_num: see `socket::get_queue_num`.
            let socket = &self.socket;
            let (answer, fired) = self.watchdog.guard(self.config.request_timeout, || socket::get_queue_num(socket));
            let pairs = match answer {
                Ok(pairs) if !fired => pairs,
                Ok(_) => return Err(self.mark_dead(Dead::TimedOut, "GET_QUEUE_NUM", None)),
                Err(_) if fired => return Err(self.mark_dead(Dead::TimedOut, "GET_QUEUE_NUM", None)),
                Err(err) => {
                    let dead = if err.kind() == io::ErrorKind::InvalidData { Dead::Desync } else { Dead::Closed };
                    let source = vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketError(err));
                    return Err(self.mark_dead(dead, "GET_QUEUE_NUM", Some(source)));
                }
            };
            self.num_queues = queues_from_queue_num(pairs);
        }
        Ok(())
    }

    /// The socket path this transport is connected to.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The protocol features negotiated with the backend.
    pub fn protocol_features(&self) -> u64 {
        self.protocol.bits()
    }

    /// Everything the backend offered in `GET_FEATURES`, vhost-level bits included.
    pub fn backend_features(&self) -> Features {
        self.offered
    }

    /// Whether the backend is still there: the connection has not failed and the socket shows no
    /// hang-up. Sends nothing and never blocks; for the control path (a link-state poll), not the
    /// fast path (it is a `poll` system call).
    pub fn link_up(&self) -> bool {
        self.dead.is_none() && !self.watchdog.fired() && !socket::hung_up(self.socket.as_fd())
    }

    /// Stops every queue set up (`SET_VRING_ENABLE(0)`, then `GET_VRING_BASE`) and returns, per
    /// queue, the backend's next available index (packed: with the wrap counter in bit 15).
    /// Once this succeeds the backend no longer touches the rings or the buffers in them. When it
    /// fails (backend gone or hung) nothing can be promised about a backend that might still run:
    /// it keeps the memory mapped until it notices the closed socket. Drop does this too.
    pub fn stop(&mut self) -> Result<Vec<(u16, u32)>> {
        let mut bases = Vec::new();
        let mut first_error = None;
        let queues = std::mem::take(&mut self.queues);
        for (index, queue) in queues.into_iter().enumerate() {
            let Some(queue) = queue else { continue };
            let q = index as u16;
            let result = (|| {
                // `enabled` implies protocol features (see `enable_queues`).
                if queue.enabled {
                    self.request("SET_VRING_ENABLE(0)", |f| f.set_vring_enable(index, false))?;
                }
                self.request("GET_VRING_BASE", |f| f.get_vring_base(index))
            })();
            match result {
                Ok(base) => {
                    tracing::debug!(path = %self.name, queue = q, base, format = ?queue.format, "queue stopped");
                    bases.push((q, base));
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        self.status &= !status::DRIVER_OK;
        first_error.map_or(Ok(bases), Err)
    }

    /// The features emulated here rather than offered by the backend.
    fn emulated_features(&self) -> Features {
        if self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            Features::EMPTY
        } else {
            EMULATED_FEATURES.minus(self.offered)
        }
    }

    /// What the device offers, as the driver sees it.
    fn offered_to_driver(&self) -> Features {
        Features(self.offered.minus(TRANSPORT_FEATURES).0 | self.emulated_features().0)
    }

    /// The feature word `SET_FEATURES` carries for the driver's choice.
    fn driver_features_sent(&self) -> Features {
        let mut sent = self.driver_features.minus(TRANSPORT_FEATURES).minus(self.emulated_features());
        if self.offered.has(features::VHOST_USER_PROTOCOL_FEATURES) {
            sent = sent.with(features::VHOST_USER_PROTOCOL_FEATURES);
        }
        sent
    }

    /// Runs one request under the watchdog, mapping failures to errors that say what to do.
    fn request<T>(&mut self, step: &'static str, request: impl FnOnce(&mut Frontend) -> vhost::Result<T>) -> Result<T> {
        if let Some(dead) = self.dead {
            return Err(self.dead_error(dead, step, None));
        }
        let frontend = &mut self.frontend;
        let (result, fired) = self.watchdog.guard(self.config.request_timeout, || request(frontend));
        if fired {
            return Err(self.mark_dead(Dead::TimedOut, step, None));
        }
        result.map_err(|source| {
            use vhost::vhost_user::Error as VuError;
            let dead = match &source {
                vhost::Error::VhostUserProtocol(
                    VuError::SocketBroken(_)
                    | VuError::SocketError(_)
                    | VuError::Disconnected
                    | VuError::PartialMessage,
                ) => Some(Dead::Closed),
                vhost::Error::VhostUserProtocol(VuError::InvalidMessage) => Some(Dead::Desync),
                _ => None,
            };
            match dead {
                Some(dead) => self.mark_dead(dead, step, Some(source)),
                None => Error::VhostUser { path: self.name.clone(), step, source },
            }
        })
    }

    /// Records that the connection is unusable and returns the error saying so.
    fn mark_dead(&mut self, dead: Dead, step: &'static str, source: Option<vhost::Error>) -> Error {
        let err = self.dead_error(dead, step, source);
        tracing::warn!(path = %self.name, %err, "vhost-user connection failed");
        self.dead = Some(dead);
        err
    }

    fn dead_error(&self, dead: Dead, step: &'static str, source: Option<vhost::Error>) -> Error {
        let path = self.name.clone();
        match dead {
            Dead::TimedOut => Error::VhostUserTimeout { path, step, timeout: self.config.request_timeout },
            Dead::Closed => Error::VhostUserDisconnected {
                path,
                step,
                source: source.unwrap_or_else(|| {
                    vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketBroken(
                        io::Error::from_raw_os_error(libc::EPIPE),
                    ))
                }),
            },
            Dead::Desync => Error::VhostUser {
                path,
                step,
                source: source.unwrap_or(vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::InvalidMessage)),
            },
        }
    }

    /// Sends the memory table if it lags behind the regions mapped.
    fn sync_mem_table(&mut self) -> Result<()> {
        if !self.mem_table_stale {
            return Ok(());
        }
        // Every region has a memfd: `map_dma` takes no other.
        let table: Vec<VhostUserMemoryRegionInfo> = self
            .regions
            .iter()
            .filter_map(|region| {
                Some(VhostUserMemoryRegionInfo {
                    guest_phys_addr: region.iova(),
                    memory_size: region.len() as u64,
                    userspace_addr: region.as_ptr() as u64,
                    mmap_offset: 0,
                    mmap_handle: region.fd()?.as_raw_fd(),
                })
            })
            .collect();
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&table))?;
        self.mem_table_stale = false;
        Ok(())
    }

    /// Our virtual address of `[iova, iova+len)`, which must lie inside one mapped region.
    fn va_of(&self, iova: u64, len: usize) -> Option<u64> {
        self.regions.iter().find_map(|region| {
            let offset = iova.checked_sub(region.iova())?;
            let end = offset.checked_add(len as u64)?;
            (end <= region.len() as u64).then(|| region.as_ptr() as u64 + offset)
        })
    }

    fn negotiate_features(&mut self) -> Result<bool> {
        let unknown = self.driver_features.minus(self.offered_to_driver());
        if unknown != Features::EMPTY {
            tracing::warn!(path = %self.name, ?unknown, "driver accepted features the device does not offer");
            return Ok(false);
        }
        let sent = self.driver_features_sent();
        match self.request("SET_FEATURES", |f| f.set_features(sent.0)) {
            Ok(()) => Ok(true),
            Err(err) if refused(&err) => {
                tracing::warn!(path = %self.name, features = ?sent, "the backend refused the features");
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    fn enable_queues(&mut self) -> Result<()> {
        if !self.driver_features_sent().has(features::VHOST_USER_PROTOCOL_FEATURES) {
            // Without protocol features a ring starts when its kick fd is set.
            return Ok(());
        }
        for index in 0..self.queues.len() {
            if self.queues[index].as_ref().is_some_and(|q| !q.enabled) {
                self.request("SET_VRING_ENABLE(1)", |f| f.set_vring_enable(index, true))?;
                if let Some(queue) = self.queues[index].as_mut() {
                    queue.enabled = true;
                }
            }
        }
        Ok(())
    }
}

/// Whether `err` is the backend saying no (a non-zero REPLY_ACK), as opposed to a broken
/// connection.
fn refused(err: &Error) -> bool {
    matches!(
        err,
        Error::VhostUser {
            source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::BackendInternalError),
            ..
        }
    )
}

/// The number of virtqueues behind a `GET_QUEUE_NUM` answer. Backends answer in queue pairs for
/// virtio-net (QEMU compares the answer with its queue-pair count). DPDK 22.11 answers its
/// compiled-in maximum, 128, whatever its `queues=` devarg says: the queues a DPDK port really
/// serves cannot be asked for, so the port configuration must match the backend's.
fn queues_from_queue_num(pairs: u64) -> u16 {
    pairs.clamp(1, u64::from(u16::MAX / 2)) as u16 * 2
}

impl Transport for VhostUserTransport {
    fn queue_pairs_without_control_queue(&self) -> bool {
        true
    }

    /// A vhost-user backend serves no control queue: the port never negotiates
    /// VIRTIO_NET_F_CTRL_VQ here, and its control commands say so.
    fn control_queue(&self) -> bool {
        false
    }

    fn device_gone(&self) -> bool {
        self.dead == Some(Dead::Closed)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn reset(&mut self) -> Result<()> {
        // A failed stop names the request that failed; the local state is reset regardless.
        let stopped = self.stop();
        self.status = 0;
        self.driver_features = Features::EMPTY;
        self.features_accepted = false;
        stopped?;
        match self.dead {
            Some(dead) => Err(self.dead_error(dead, "reset", None)),
            None => Ok(()),
        }
    }

    fn status(&mut self) -> Result<u8> {
        let mut value = self.status;
        if !self.features_accepted {
            value &= !status::FEATURES_OK;
        }
        if !self.link_up() {
            value |= status::DEVICE_NEEDS_RESET;
        }
        Ok(value)
    }

    fn set_status(&mut self, value: u8) -> Result<()> {
        if value == 0 {
            return self.reset();
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 {
            self.features_accepted = self.negotiate_features()?;
        }
        if added & status::DRIVER_OK != 0 {
            if !self.features_accepted {
                return Err(Error::InvalidConfig(format!(
                    "{}: DRIVER_OK before the features were accepted (FEATURES_OK)",
                    self.name
                )));
            }
            self.sync_mem_table()?;
            self.enable_queues()?;
        }
        self.status = value;
        Ok(())
    }

    fn device_features(&mut self) -> Result<Features> {
        Ok(self.offered_to_driver())
    }

    fn set_driver_features(&mut self, features: Features) -> Result<()> {
        self.driver_features = features.minus(TRANSPORT_FEATURES);
        Ok(())
    }

    fn num_queues(&mut self) -> Result<u16> {
        Ok(self.num_queues)
    }

    fn max_queue_size(&mut self, _queue: u16) -> Result<u16> {
        Ok(MAX_QUEUE_SIZE)
    }

    fn read_device_config(&mut self, offset: usize, buf: &mut [u8]) -> Result<()> {
        if self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            let len = buf.len();
            let (offset32, len32) = match (u32::try_from(offset), u32::try_from(len)) {
                (Ok(o), Ok(l)) => (o, l),
                _ => return Err(Error::InvalidConfig(format!("device config read of {len} bytes at {offset}"))),
            };
            let zeros = vec![0u8; len];
            let (_, payload) =
                self.request("GET_CONFIG", |f| f.get_config(offset32, len32, VhostUserConfigFlags::empty(), &zeros))?;
            buf.copy_from_slice(&payload[..len]);
            return Ok(());
        }
        // No CONFIG: synthesise `struct virtio_net_config` (5.1.4).
        let mut config = [0u8; 12];
        config[net::config::MAC..net::config::MAC + 6].copy_from_slice(&self.config.mac);
        let link = if self.link_up() { net::S_LINK_UP } else { 0 };
        config[net::config::STATUS..net::config::STATUS + 2].copy_from_slice(&link.to_le_bytes());
        config[net::config::MAX_VIRTQUEUE_PAIRS..net::config::MAX_VIRTQUEUE_PAIRS + 2]
            .copy_from_slice(&(self.num_queues / 2).to_le_bytes());
        config[net::config::MTU..net::config::MTU + 2].copy_from_slice(&self.config.mtu.to_le_bytes());
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = offset.checked_add(i).and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
        Ok(())
    }

    fn map_dma(&mut self, region: &Arc<DmaRegion>) -> Result<()> {
        if self.regions.iter().any(|known| Arc::ptr_eq(known, region)) {
            return Ok(());
        }
        if self.regions.len() == MAX_REGIONS {
            return Err(Error::TooManyDmaRegions { count: MAX_REGIONS + 1, max: MAX_REGIONS });
        }
        if region.fd().is_none() {
            return Err(Error::InvalidConfig(format!(
                "{}: a physical-address DMA region has no memfd to share with a vhost-user backend: create the \
                 regions of vhost-user ports with IovaAllocator::identity()",
                self.name
            )));
        }
        if !region.is_huge() {
            tracing::warn!(
                path = %self.name,
                "DMA region of {} bytes is not on huge pages: the backend maps it with 4 KiB pages",
                region.len()
            );
        }
        self.regions.push(Arc::clone(region));
        self.mem_table_stale = true;
        // Queues already handed over must see the new region at once; otherwise the table
        // goes out with the next queue set-up or DRIVER_OK, whichever comes first.
        if self.status & status::DRIVER_OK != 0 || self.queues.iter().any(Option::is_some) {
            self.sync_mem_table()?;
        }
        Ok(())
    }

    unsafe fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        format: RingFormat,
        addresses: QueueAddresses,
    ) -> Result<Box<dyn Notify>> {
        let index = usize::from(queue);
        if queue >= self.num_queues {
            return Err(Error::InvalidConfig(format!(
                "{}: queue {queue} does not exist (the backend has {} queues)",
                self.name, self.num_queues
            )));
        }
        if self.queues.get(index).is_some_and(Option::is_some) {
            return Err(Error::InvalidConfig(format!("{}: queue {queue} is already set up: reset first", self.name)));
        }
        if !self.features_accepted {
            return Err(Error::InvalidConfig(format!(
                "{}: queue {queue} set up before the features were accepted (FEATURES_OK)",
                self.name
            )));
        }
        let packed_negotiated = self.driver_features.has(features::RING_PACKED);
        if packed_negotiated != (format == RingFormat::Packed) {
            return Err(Error::InvalidConfig(format!(
                "{}: queue {queue} is {format:?} but RING_PACKED was {}negotiated",
                self.name,
                if packed_negotiated { "" } else { "not " }
            )));
        }
        if size == 0 || size > MAX_QUEUE_SIZE || (format == RingFormat::Split && !size.is_power_of_two()) {
            return Err(Error::QueueSizeRefused {
                queue,
                requested: size,
                max: MAX_QUEUE_SIZE,
                hint: ": vhost-user rings hold 1 to 32768 entries, split rings a power of two",
            });
        }
        if self.regions.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "{}: queue {queue} set up before any DMA region was mapped (map_dma first)",
                self.name
            )));
        }
        let (driver_len, device_len) = match format {
            RingFormat::Packed => (4, 4),
            RingFormat::Split => (split::avail::bytes(size), split::used::bytes(size)),
        };
        let translate = |what: &str, iova: u64, len: usize| {
            self.va_of(iova, len).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "{}: queue {queue} {what} at IOVA {iova:#x} (+{len}) is outside every mapped DMA region",
                    self.name
                ))
            })
        };
        let desc = translate("descriptor area", addresses.desc, packed::desc_ring_bytes(size))?;
        let driver = translate("driver area", addresses.driver, driver_len)?;
        let device = translate("device area", addresses.device, device_len)?;
        self.sync_mem_table()?;

        let eventfd = |what: &str| {
            EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
                what: format!("{}: {what} eventfd for queue {queue}", self.name),
                source,
            })
        };
        let call = eventfd("call")?;
        let kick = eventfd("kick")?;
        let notifier = kick.try_clone().map_err(|source| Error::Io {
            what: format!("{}: dup of the kick eventfd for queue {queue}", self.name),
            source,
        })?;

        self.request("SET_VRING_CALL", |f| f.set_vring_call(index, &call))?;
        match self.request("SET_VRING_NUM", |f| f.set_vring_num(index, size)) {
            Err(err) if refused(&err) => {
                return Err(Error::QueueSizeRefused {
                    queue,
                    requested: size,
                    max: MAX_QUEUE_SIZE,
                    hint: ": the vhost-user backend refused it (its log says why); try 256, 512 or 1024",
                })
            }
            other => other?,
        }
        let base = match format {
            RingFormat::Packed => PACKED_FRESH_BASE,
            RingFormat::Split => 0,
        };
        self.request("SET_VRING_BASE", |f| f.set_vring_base(index, base))?;
        let ring = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: desc,
            // Split: used ring; packed: device event suppression.
            used_ring_addr: device,
            // Split: available ring; packed: driver event suppression.
            avail_ring_addr: driver,
            log_addr: None,
        };
        self.request("SET_VRING_ADDR", |f| f.set_vring_addr(index, &ring))?;
        self.request("SET_VRING_KICK", |f| f.set_vring_kick(index, &kick))?;

        if self.queues.len() <= index {
            self.queues.resize_with(index + 1, || None);
        }
        self.queues[index] = Some(QueueState { format, _call: call, enabled: false });
        if self.status & status::DRIVER_OK != 0 {
            self.enable_queues()?;
        }
        tracing::debug!(path = %self.name, queue, size, ?format, desc = format_args!("{desc:#x}"), "queue set up");
        // The transport's copy of the kick fd closes with `kick` here; the backend holds its own.
        drop(kick);
        Ok(Box::new(Kick(notifier)))
    }
}

impl Drop for VhostUserTransport {
    fn drop(&mut self) {
        if self.dead.is_none() && self.queues.iter().any(Option::is_some) {
            // Bound the teardown tighter than set-up: nobody waits for its answer.
            self.config.request_timeout = self.config.request_timeout.min(Duration::from_secs(1));
            if let Err(err) = self.stop() {
                tracing::warn!(path = %self.name, %err, "vhost-user teardown failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_num_is_in_pairs() {
        assert_eq!(queues_from_queue_num(1), 2);
        assert_eq!(queues_from_queue_num(4), 8);
        assert_eq!(queues_from_queue_num(0), 2);
    }

    #[test]
    fn no_backend_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("virtio-pmd-no-backend-{}.sock", std::process::id()));
        let mut config = VhostUserConfig::new(&path);
        config.connect_timeout = Duration::from_millis(50);
        let err = VhostUserTransport::connect(config).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::VhostUserNoBackend { .. }), "{message}");
        assert!(message.contains("no vhost-user backend at") && message.contains("vhost-testpmd.sh"), "{message}");
    }
}
