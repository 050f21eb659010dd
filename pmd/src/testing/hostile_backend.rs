//! A hostile vhost-user backend, as test equipment: it answers the frontend's control messages
//! correctly, then abuses everything it was given. For a bounded time ([`HostileConfig::attack`])
//! it writes random bytes over the memory the frontend shared with it ([`Target`]: every region
//! whole, only the ring areas, or everything but the ring areas) and posts bogus completions:
//! used entries with random or plausible ids and lengths, random `used.idx` (split rings), random
//! flags (packed rings), each round followed by a call-eventfd signal. What it does is decided by
//! a seeded [`Rng`], so a round sequence is reproducible (its interleaving with the driver is not).
//!
//! The attack opens with a warm-up ([`HostileConfig::warm_up`]) in which the completions are
//! valid (the buffers the driver made available, in order, with lengths that fit) and the
//! scribbles spare the rings: frames flow, so the driver hands the application buffers whose
//! bytes the backend overwrote, before the rings themselves turn to garbage.
//!
//! The control path stays honest, so that the driver's own teardown can be tested: the attack
//! starts at the first `SET_VRING_ENABLE(1)`; a `SET_VRING_ENABLE(0)` or `GET_VRING_BASE` (the
//! driver stopping the device) ends it before the answer goes out, so "stopped" means no more
//! writes; when the time is up it either hangs up ([`AfterAttack::HangUp`]: the device is gone)
//! or stays connected and quiet ([`AfterAttack::Stay`]).
//!
//! It serves one connection over a unix socket it creates, on threads of the process that starts
//! it (a test, beside the driver process it runs: a library type rather than a binary, so that
//! the test reads the backend's [`HostileReport`] directly), with the `vhost` crate's backend
//! request handler as the message layer. Offered: `VERSION_1`, `VHOST_USER_F_PROTOCOL_FEATURES`,
//! `IN_ORDER`, and `RING_PACKED` unless [`HostileConfig::offer_packed`] is false; protocol
//! features: `REPLY_ACK` only (so the frontend assumes one queue pair).
//!
//! Invariants: every byte written lies inside a mapping this backend made of a memory-table
//! region (ring addresses are translated through the table and bounds-checked; an address outside
//! it is skipped), and a mapping is unmapped only once the attack thread, which holds it through
//! an `Arc`, let go of it. All accesses to shared memory are volatile; nothing here makes a
//! reference to it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;

use super::Rng;
use crate::spec::features::{self, Features};
use crate::spec::{packed, split};

/// Most vrings the backend keeps track of (the frontend sets up one pair without MQ).
const MAX_VRINGS: usize = 8;
/// A full sweep over every target byte happens every this many rounds, first at round
/// `SWEEP_EVERY / 2` (so that some bogus completions land before the rings are garbage).
const SWEEP_EVERY: u64 = 16;
/// Longest run of bytes one partial scribble writes.
const CHUNK_MAX: u64 = 4096;
/// Most bogus completions one round posts on one queue.
const COMPLETIONS_MAX: u64 = 8;
/// Lengths a "plausible" completion reports: up to a default mbuf's data room and header.
const PLAUSIBLE_LEN_MAX: u64 = 2048 + 64;

/// Which of the shared memory the attack writes random bytes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every region of the memory table, whole: rings, headroom, packet data, and whatever
    /// else the frontend put there.
    Everything,
    /// Only the ring areas (descriptor area, driver area, device area of every vring).
    Rings,
    /// Everything but the ring areas.
    Buffers,
}

/// What the backend does when its attack time is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterAttack {
    /// Closes the connection: the device is gone.
    HangUp,
    /// Stays connected and answers the control path, touching nothing more.
    Stay,
}

/// How the hostile backend behaves.
#[derive(Clone, Debug)]
pub struct HostileConfig {
    /// Seed of the generator behind every random choice and byte.
    pub seed: u64,
    /// What the random bytes go over.
    pub target: Target,
    /// How long the attack lasts, from the first enabled vring, warm-up included.
    pub attack: Duration,
    /// How long the attack's opening completes validly and spares the rings.
    pub warm_up: Duration,
    /// What follows the attack.
    pub then: AfterAttack,
    /// Offer `RING_PACKED` (the frontend then prefers packed rings).
    pub offer_packed: bool,
    /// Pause between rounds (keeps a 2-core machine usable while the driver polls).
    pub pause: Duration,
    /// How long to wait for the frontend to connect.
    pub accept_timeout: Duration,
}

impl HostileConfig {
    /// `target` attacked for one second (a quarter of it warm-up) with `seed`, packed rings
    /// offered, then a hang-up.
    pub fn new(seed: u64, target: Target) -> Self {
        Self {
            seed,
            target,
            attack: Duration::from_secs(1),
            warm_up: Duration::from_millis(250),
            then: AfterAttack::HangUp,
            offer_packed: true,
            pause: Duration::from_micros(200),
            accept_timeout: Duration::from_secs(20),
        }
    }
}

/// How the attack ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackEnd {
    /// It ran its full time.
    TimeUp,
    /// The frontend stopped a vring (`SET_VRING_ENABLE(0)` or `GET_VRING_BASE`).
    StoppedByFrontend,
    /// The connection ended first (the frontend closed it, or [`HostileBackend::finish`]).
    Disconnected,
}

/// What the backend did, once its session is over.
#[derive(Clone, Debug, Default)]
pub struct HostileReport {
    /// A frontend connected.
    pub connected: bool,
    /// Regions in the last memory table.
    pub regions: usize,
    /// Bytes in the last memory table.
    pub bytes_mapped: u64,
    /// Vrings whose addresses were given.
    pub vrings: usize,
    /// Attack rounds run.
    pub rounds: u64,
    /// Full sweeps: passes that overwrote every target byte (after the warm-up).
    pub sweeps: u64,
    /// Random bytes written, sweeps and partial scribbles together.
    pub bytes_scribbled: u64,
    /// Valid completions posted in the warm-up.
    pub valid_completions: u64,
    /// Bogus used entries posted after it.
    pub completions: u64,
    /// Call eventfd signals.
    pub calls: u64,
    /// Requests the backend refused (answered with an error, connection kept).
    pub refused: u64,
    /// How the attack ended; `None` if it never started.
    pub ended: Option<AttackEnd>,
    /// How the connection ended (the message layer's last error), if it did.
    pub session_end: Option<String>,
}

/// A running hostile backend; [`HostileBackend::finish`] ends it and reports.
pub struct HostileBackend {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Set once the attack is over (or can no longer start: the session ended).
    attack_over: Arc<AtomicBool>,
    connection: Arc<Mutex<Option<UnixStream>>>,
    session: Option<JoinHandle<HostileReport>>,
}

impl HostileBackend {
    /// Creates the socket at `path` (replacing a stale one) and serves one frontend connection
    /// on a thread of its own.
    pub fn start(path: impl AsRef<Path>, config: HostileConfig) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let attack_over = Arc::new(AtomicBool::new(false));
        let connection = Arc::new(Mutex::new(None));
        let session = {
            let (stop, attack_over, connection) = (stop.clone(), attack_over.clone(), connection.clone());
            std::thread::Builder::new().name("hostile-vhost".into()).spawn(move || {
                let report = serve(listener, config, &stop, &attack_over, &connection);
                attack_over.store(true, Ordering::SeqCst);
                report
            })?
        };
        Ok(Self { path, stop, attack_over, connection, session: Some(session) })
    }

    /// The socket the backend listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for the attack to be over (its time up, the frontend stopped it, or
    /// the connection ended); true if it is.
    pub fn wait_for_attack(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.attack_over.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Ends the attack and the connection (if still open) and reports.
    pub fn finish(mut self) -> HostileReport {
        self.shut().unwrap_or_default()
    }

    fn shut(&mut self) -> Option<HostileReport> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(stream) = lock(&self.connection).as_ref() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let report = self.session.take().map(|s| s.join().unwrap_or_default());
        let _ = std::fs::remove_file(&self.path);
        report
    }
}

impl Drop for HostileBackend {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Locks `mutex`, whether or not a panicking holder poisoned it (the state stays usable).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The session thread: accept one frontend, serve its requests until the connection ends.
fn serve(
    listener: UnixListener,
    config: HostileConfig,
    stop: &AtomicBool,
    attack_over: &Arc<AtomicBool>,
    connection: &Mutex<Option<UnixStream>>,
) -> HostileReport {
    let deadline = Instant::now() + config.accept_timeout;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    return HostileReport { session_end: Some("no frontend connected".into()), ..Default::default() };
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return HostileReport { session_end: Some(format!("accept: {err}")), ..Default::default() },
        }
    };
    let clones = stream.set_nonblocking(false).and_then(|()| Ok((stream.try_clone()?, stream.try_clone()?)));
    let (ours, attackers) = match clones {
        Ok(pair) => pair,
        Err(err) => return HostileReport { session_end: Some(format!("socket set-up: {err}")), ..Default::default() },
    };
    *lock(connection) = Some(ours);
    let handler = Arc::new(Mutex::new(Handler::new(config, attackers, attack_over.clone())));
    let mut requests = BackendReqHandler::from_stream(stream, handler.clone());
    let mut refused = 0;
    let end = loop {
        match requests.handle_request() {
            Ok(()) => {}
            Err(err) if fatal(&err) => break err,
            Err(_) => refused += 1,
        }
    };
    let mut handler = lock(&handler);
    handler.stop_attack(AttackEnd::Disconnected);
    let mut report = handler.report();
    report.refused = refused;
    report.session_end = Some(end.to_string());
    report
}

/// Whether the message layer's `err` ends the connection (as opposed to one refused request).
fn fatal(err: &VuError) -> bool {
    matches!(
        err,
        VuError::Disconnected
            | VuError::PartialMessage
            | VuError::SocketBroken(_)
            | VuError::SocketError(_)
            | VuError::SocketRetry(_)
            | VuError::InvalidMessage
            | VuError::OversizedMsg
            | VuError::IncorrectFds
    )
}

/// One memory-table region, mapped into this process (shared with the frontend).
struct Mapping {
    /// What `mmap` returned, and its length (the region plus its `mmap_offset`).
    base: *mut u8,
    map_len: usize,
    /// The region's first byte (`base + mmap_offset`) and length.
    at: *mut u8,
    len: usize,
    /// The frontend's virtual address of the region's first byte.
    user_addr: u64,
}

// SAFETY: a `Mapping` owns its mapping exclusively (unmapped only in its `Drop`) and every access
// through its pointers is volatile, so it may be sent and shared between threads; the memory is
// shared with another process anyway.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: no method hands out a reference into the mapping.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `region` of `file` read-write and shared. Refuses a region that does not lie
    /// inside the file (touching it would raise SIGBUS) or whose addresses overflow.
    fn new(region: &VhostUserMemoryRegion, file: &File) -> io::Result<Self> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let file_len = file.metadata()?.len();
        let map_len = region.mmap_offset.checked_add(region.memory_size).ok_or_else(|| invalid("offset overflow"))?;
        if region.memory_size == 0 || map_len > file_len {
            return Err(invalid("memory region outside its file"));
        }
        region.user_addr.checked_add(region.memory_size).ok_or_else(|| invalid("user address overflow"))?;
        let map_len = usize::try_from(map_len).map_err(|_| invalid("region too large"))?;
        // SAFETY: a fresh mapping chosen by the kernel (no address hint), of `map_len` bytes that
        // lie inside the file (checked above); `file` is open for the duration of the call.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        Ok(Self {
            base,
            map_len,
            at: base.wrapping_add(region.mmap_offset as usize),
            len: region.memory_size as usize,
            user_addr: region.user_addr,
        })
    }

    /// Where the frontend's `[va, va + len)` lies in this mapping, if wholly inside it.
    fn translate(&self, va: u64, len: usize) -> Option<*mut u8> {
        let offset = va.checked_sub(self.user_addr)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.len as u64).then(|| self.at.wrapping_add(offset as usize))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are exactly what `mmap` returned; this is the only unmap.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// What the frontend said about one vring.
#[derive(Default)]
struct Vring {
    size: u16,
    /// Frontend virtual addresses of the descriptor, driver (split: available ring) and device
    /// (split: used ring) areas, once `SET_VRING_ADDR` came.
    addresses: Option<(u64, u64, u64)>,
    call: Option<Arc<File>>,
    /// Held so that the frontend's kicks have somewhere to go; never read.
    _kick: Option<File>,
}

/// What the request handler learns and the attack thread reads.
#[derive(Default)]
struct Shared {
    mappings: Vec<Arc<Mapping>>,
    vrings: Vec<Vring>,
    packed: bool,
    /// Bumped on every change, so that the attack rebuilds its view.
    generation: u64,
}

/// The attack's counters, written by the attack thread alone.
#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    sweeps: AtomicU64,
    bytes: AtomicU64,
    valid_completions: AtomicU64,
    completions: AtomicU64,
    calls: AtomicU64,
}

/// The request handler (the control path).
struct Handler {
    config: HostileConfig,
    shared: Arc<Mutex<Shared>>,
    counters: Arc<Counters>,
    /// The connection, for the attack to hang up (taken when the attack starts).
    connection: Option<UnixStream>,
    stop: Arc<AtomicBool>,
    /// Set by the attack thread when it is done.
    attack_over: Arc<AtomicBool>,
    attack: Option<JoinHandle<AttackEnd>>,
    ended: Option<AttackEnd>,
}

impl Handler {
    fn new(config: HostileConfig, connection: UnixStream, attack_over: Arc<AtomicBool>) -> Self {
        let vrings = (0..MAX_VRINGS).map(|_| Vring::default()).collect();
        Self {
            config,
            shared: Arc::new(Mutex::new(Shared { vrings, ..Shared::default() })),
            counters: Arc::default(),
            connection: Some(connection),
            stop: Arc::default(),
            attack_over,
            attack: None,
            ended: None,
        }
    }

    /// Starts the attack thread, once per session.
    fn start_attack(&mut self) -> VuResult<()> {
        let Some(connection) = self.connection.take() else { return Ok(()) };
        let (config, shared, counters, stop, over) = (
            self.config.clone(),
            self.shared.clone(),
            self.counters.clone(),
            self.stop.clone(),
            self.attack_over.clone(),
        );
        let attack = std::thread::Builder::new()
            .name("hostile-attack".into())
            .spawn(move || {
                let end = attack(&config, &shared, &counters, &stop, &connection);
                over.store(true, Ordering::SeqCst);
                end
            })
            .map_err(VuError::ReqHandlerError)?;
        self.attack = Some(attack);
        Ok(())
    }

    /// Ends the attack (if running) and waits until it wrote its last byte. `why` is recorded
    /// unless the attack had ended by itself.
    fn stop_attack(&mut self, why: AttackEnd) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(attack) = self.attack.take() {
            let ended = attack.join().unwrap_or(why);
            self.ended = Some(if ended == AttackEnd::TimeUp { ended } else { why });
        }
    }

    fn vring(&self, index: u32) -> VuResult<usize> {
        let index = index as usize;
        if index < MAX_VRINGS {
            Ok(index)
        } else {
            Err(VuError::InvalidParam)
        }
    }

    /// Changes the shared state and tells the attack to look again.
    fn update(&self, change: impl FnOnce(&mut Shared)) {
        let mut shared = lock(&self.shared);
        change(&mut shared);
        shared.generation += 1;
    }

    fn report(&self) -> HostileReport {
        let shared = lock(&self.shared);
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        HostileReport {
            connected: true,
            regions: shared.mappings.len(),
            bytes_mapped: shared.mappings.iter().map(|m| m.len as u64).sum(),
            vrings: shared.vrings.iter().filter(|v| v.addresses.is_some()).count(),
            rounds: get(&self.counters.rounds),
            sweeps: get(&self.counters.sweeps),
            bytes_scribbled: get(&self.counters.bytes),
            valid_completions: get(&self.counters.valid_completions),
            completions: get(&self.counters.completions),
            calls: get(&self.counters.calls),
            refused: 0,
            ended: self.ended,
            session_end: None,
        }
    }
}

/// What a request this backend does not implement gets.
fn unsupported<T>() -> VuResult<T> {
    Err(VuError::InvalidOperation("not supported by the hostile test backend"))
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        unsupported()
    }

    fn get_features(&mut self) -> VuResult<u64> {
        let mut offered =
            Features::from_bits(&[features::VERSION_1, features::VHOST_USER_PROTOCOL_FEATURES, features::IN_ORDER]);
        if self.config.offer_packed {
            offered = offered.with(features::RING_PACKED);
        }
        Ok(offered.0)
    }

    fn set_features(&mut self, acked: u64) -> VuResult<()> {
        self.update(|s| s.packed = Features(acked).has(features::RING_PACKED));
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if regions.len() != files.len() {
            return Err(VuError::IncorrectFds);
        }
        let mappings = regions
            .iter()
            .zip(&files)
            .map(|(region, file)| Mapping::new(region, file).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()
            .map_err(VuError::ReqHandlerError)?;
        self.update(|s| s.mappings = mappings);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let index = self.vring(index)?;
        let size = u16::try_from(num).ok().filter(|&n| n > 0 && n <= split::MAX_QUEUE_SIZE);
        let size = size.ok_or(VuError::InvalidParam)?;
        self.update(|s| s.vrings[index].size = size);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let index = self.vring(index)?;
        self.update(|s| s.vrings[index].addresses = Some((descriptor, available, used)));
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, _base: u32) -> VuResult<()> {
        self.vring(index).map(drop)
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.vring(index)?;
        self.stop_attack(AttackEnd::StoppedByFrontend);
        Ok(VhostUserVringState::new(index, 0))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let index = self.vring(index.into())?;
        self.update(|s| s.vrings[index]._kick = fd);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let index = self.vring(index.into())?;
        self.update(|s| s.vrings[index].call = fd.map(Arc::new));
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.vring(index.into()).map(drop)
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::REPLY_ACK)
    }

    fn set_protocol_features(&mut self, _features: u64) -> VuResult<()> {
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(1)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.vring(index)?;
        if enable {
            self.start_attack()
        } else {
            self.stop_attack(AttackEnd::StoppedByFrontend);
            Ok(())
        }
    }

    fn get_config(&mut self, _offset: u32, _size: u32, _flags: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        unsupported()
    }

    fn set_config(&mut self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> VuResult<()> {
        unsupported()
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        unsupported()
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        unsupported()
    }

    fn get_inflight_fd(&mut self, _inflight: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        unsupported()
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        unsupported()
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        unsupported()
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        unsupported()
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        unsupported()
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        unsupported()
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        unsupported()
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        unsupported()
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        unsupported()
    }
}

/// A run of shared bytes the attack may overwrite (inside a mapping the view holds).
#[derive(Clone, Copy)]
struct Area {
    at: *mut u8,
    len: usize,
}

/// One vring as the attack sees it: its areas translated into this process.
struct Queue {
    size: u16,
    desc: *mut u8,
    driver: *mut u8,
    device: *mut u8,
    call: Option<Arc<File>>,
}

/// The attack's own idea of where the next completion goes.
#[derive(Clone, Copy)]
struct Cursor {
    /// Split: the next `used.idx`; packed: the next slot (below the ring size).
    next: u16,
    /// Packed: the used wrap counter.
    wrap: bool,
}

impl Cursor {
    /// Packed: the next slot of a ring of `size`, flipping the wrap counter at the end.
    fn advance(&mut self, size: u16) {
        self.next += 1;
        if self.next >= size {
            self.next = 0;
            self.wrap = !self.wrap;
        }
    }
}

/// A snapshot of [`Shared`], rebuilt when it changes. The pointers in `areas`, `warm_areas`
/// and `queues` point into `mappings`, which this view keeps alive.
struct View {
    generation: u64,
    _mappings: Vec<Arc<Mapping>>,
    packed: bool,
    /// The target.
    areas: Vec<Area>,
    /// The target without the rings: what the warm-up scribbles over.
    warm_areas: Vec<Area>,
    queues: Vec<Queue>,
}

impl View {
    fn of(shared: &Shared, target: Target) -> View {
        let translate = |va: u64, len: usize| shared.mappings.iter().find_map(|m| Some((m, m.translate(va, len)?)));
        let mut queues = Vec::new();
        // Ring areas, per mapping they lie in: (mapping index, offset, length).
        let mut rings: Vec<(usize, usize, usize)> = Vec::new();
        for vring in &shared.vrings {
            let Some((desc, driver, device)) = vring.addresses else { continue };
            let size = vring.size;
            let (driver_len, device_len) =
                if shared.packed { (4, 4) } else { (split::avail::bytes(size), split::used::bytes(size)) };
            let areas = [(desc, packed::desc_ring_bytes(size)), (driver, driver_len), (device, device_len)];
            let mut at = [std::ptr::null_mut(); 3];
            for (slot, (va, len)) in at.iter_mut().zip(areas) {
                if let Some((mapping, ptr)) = translate(va, len) {
                    *slot = ptr;
                    let index = shared.mappings.iter().position(|m| Arc::ptr_eq(m, mapping)).unwrap_or(0);
                    rings.push((index, ptr as usize - mapping.at as usize, len));
                }
            }
            // Descriptors are 16-aligned, the other areas hold 2- and 4-byte fields.
            let aligned = at[0] as usize % 16 == 0 && at[1] as usize % 2 == 0 && at[2] as usize % 4 == 0;
            if size > 0 && aligned && at.iter().all(|p| !p.is_null()) {
                queues.push(Queue { size, desc: at[0], driver: at[1], device: at[2], call: vring.call.clone() });
            }
        }
        let (mut whole, mut ring_areas, mut buffers) = (Vec::new(), Vec::new(), Vec::new());
        for (index, mapping) in shared.mappings.iter().enumerate() {
            let area = |offset: usize, len: usize| Area { at: mapping.at.wrapping_add(offset), len };
            whole.push(area(0, mapping.len));
            let mut inside: Vec<(usize, usize)> =
                rings.iter().filter(|r| r.0 == index).map(|&(_, o, l)| (o, o + l)).collect();
            ring_areas.extend(inside.iter().map(|&(start, end)| area(start, end - start)));
            // The gaps between the rings.
            inside.sort_unstable();
            let mut from = 0;
            for (start, end) in inside {
                if start > from {
                    buffers.push(area(from, start - from));
                }
                from = from.max(end);
            }
            if mapping.len > from {
                buffers.push(area(from, mapping.len - from));
            }
        }
        let (areas, warm_areas) = match target {
            Target::Everything => (whole, buffers),
            Target::Rings => (ring_areas, Vec::new()),
            Target::Buffers => (buffers.clone(), buffers),
        };
        View {
            generation: shared.generation,
            _mappings: shared.mappings.clone(),
            packed: shared.packed,
            areas,
            warm_areas,
            queues,
        }
    }
}

/// The attack thread: rounds of scribbles and completions (valid in the warm-up, bogus after
/// it), each followed by a call signal, until the time is up or `stop`.
fn attack(
    config: &HostileConfig,
    shared: &Mutex<Shared>,
    counters: &Counters,
    stop: &AtomicBool,
    connection: &UnixStream,
) -> AttackEnd {
    let mut rng = Rng::new(config.seed);
    let started = Instant::now();
    let (warm_until, deadline) = (started + config.warm_up.min(config.attack), started + config.attack);
    let mut view: Option<View> = None;
    let mut cursors = [Cursor { next: 0, wrap: true }; MAX_VRINGS];
    // Rounds after the warm-up.
    let mut round = 0u64;
    let bump = |counter: &AtomicU64, n: u64| counter.fetch_add(n, Ordering::SeqCst);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            // Every target byte is overwritten at least once, however short the attack.
            if counters.sweeps.load(Ordering::SeqCst) == 0 {
                if let Some(view) = &view {
                    bump(&counters.bytes, sweep(&view.areas, &mut rng));
                    bump(&counters.sweeps, 1);
                }
            }
            if config.then == AfterAttack::HangUp {
                let _ = connection.shutdown(Shutdown::Both);
            }
            return AttackEnd::TimeUp;
        }
        {
            let shared = lock(shared);
            if view.as_ref().is_none_or(|v| v.generation != shared.generation) {
                view = Some(View::of(&shared, config.target));
            }
        }
        let Some(view) = &view else { continue };
        let warm = now < warm_until;
        if warm {
            bump(&counters.bytes, scribble(&view.warm_areas, &mut rng));
        } else if round % SWEEP_EVERY == SWEEP_EVERY / 2 {
            bump(&counters.bytes, sweep(&view.areas, &mut rng));
            bump(&counters.sweeps, 1);
        } else {
            bump(&counters.bytes, scribble(&view.areas, &mut rng));
        }
        if !view.queues.is_empty() {
            let q = rng.range(0, view.queues.len() as u64 - 1) as usize;
            let (queue, cursor) = (&view.queues[q], &mut cursors[q]);
            if view.packed && cursor.next >= queue.size {
                // The ring was set up again, smaller (a split cursor is a free-running index).
                *cursor = Cursor { next: 0, wrap: true };
            }
            match (warm, view.packed) {
                (true, true) => bump(&counters.valid_completions, valid_packed(queue, cursor, &mut rng)),
                (true, false) => bump(&counters.valid_completions, valid_split(queue, cursor, &mut rng)),
                (false, true) => bump(&counters.completions, bogus_packed(queue, cursor, &mut rng)),
                (false, false) => bump(&counters.completions, bogus_split(queue, cursor, &mut rng)),
            };
            if let Some(call) = &queue.call {
                if (&**call).write(&1u64.to_ne_bytes()).is_ok() {
                    bump(&counters.calls, 1);
                }
            }
        }
        bump(&counters.rounds, 1);
        if !warm {
            round += 1;
        }
        std::thread::sleep(config.pause);
    }
    AttackEnd::StoppedByFrontend
}

/// Random bytes over every one of `areas` (a [`View`]'s); returns the bytes written.
fn sweep(areas: &[Area], rng: &mut Rng) -> u64 {
    for area in areas {
        // SAFETY: every area of a view lies inside a mapping the view keeps alive (built by
        // `View::of` from translated, bounds-checked ranges).
        unsafe { fill(area.at, area.len, rng) };
    }
    areas.iter().map(|a| a.len as u64).sum()
}

/// Random bytes over a random run of one of `areas` (a [`View`]'s); returns the bytes written.
fn scribble(areas: &[Area], rng: &mut Rng) -> u64 {
    if areas.is_empty() {
        return 0;
    }
    let area = areas[rng.range(0, areas.len() as u64 - 1) as usize];
    if area.len == 0 {
        return 0;
    }
    let offset = rng.range(0, area.len as u64 - 1) as usize;
    let len = (rng.range(1, CHUNK_MAX) as usize).min(area.len - offset);
    // SAFETY: `offset + len <= area.len`, and the area lies inside a mapping its view keeps alive.
    unsafe { fill(area.at.add(offset), len, rng) };
    len as u64
}

/// Writes `len` random bytes at `at`, eight at a time where aligned.
///
/// # Safety
/// `[at, at + len)` must lie inside one live mapping.
unsafe fn fill(at: *mut u8, len: usize, rng: &mut Rng) {
    let mut i = 0;
    while i < len && (at as usize + i) % 8 != 0 {
        // SAFETY: `i < len`, inside the run the caller vouched for.
        unsafe { at.add(i).write_volatile(rng.next_u64() as u8) };
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: `i + 8 <= len`, and `at + i` is 8-aligned (the loop above).
        unsafe { at.add(i).cast::<u64>().write_volatile(rng.next_u64()) };
        i += 8;
    }
    while i < len {
        // SAFETY: `i < len`.
        unsafe { at.add(i).write_volatile(rng.next_u64() as u8) };
        i += 1;
    }
}

/// A random value, or (three times in four) `plausible`.
fn mostly(rng: &mut Rng, plausible: u64) -> u64 {
    if rng.range(0, 3) == 0 {
        rng.next_u64()
    } else {
        plausible
    }
}

/// Bogus completions on a split ring: used entries at the cursor with ids read from the
/// available ring (or random) and lengths that may fit (or not), then a `used.idx` that counts
/// them (or is random). Returns the entries written.
fn bogus_split(queue: &Queue, cursor: &mut Cursor, rng: &mut Rng) -> u64 {
    let count = rng.range(1, COMPLETIONS_MAX);
    for _ in 0..count {
        let slot = cursor.next % queue.size;
        // SAFETY: `slot < size`: the avail ring entry lies inside the driver area, translated
        // for `split::avail::bytes(size)` bytes; 2-byte aligned as the ring is.
        let head = unsafe { queue.driver.add(split::avail::ring(slot)).cast::<u16>().read_volatile() };
        let id = mostly(rng, u64::from(u16::from_le(head))) as u32;
        let len = {
            let plausible = rng.range(0, PLAUSIBLE_LEN_MAX);
            mostly(rng, plausible) as u32
        };
        // SAFETY: `slot < size`: the used element lies inside the device area, translated for
        // `split::used::bytes(size)` bytes; 4-byte aligned as the ring is.
        unsafe {
            let elem = queue.device.add(split::used::ring(slot)).cast::<u32>();
            elem.write_volatile(id.to_le());
            elem.add(1).write_volatile(len.to_le());
        }
        cursor.next = cursor.next.wrapping_add(1);
    }
    let idx = mostly(rng, u64::from(cursor.next)) as u16;
    // Entries before the index that publishes them (as a device would).
    fence(Ordering::Release);
    // SAFETY: `used.idx` lies inside the device area (checked as above).
    unsafe { queue.device.add(split::used::IDX).cast::<u16>().write_volatile(idx.to_le()) };
    count
}

/// Bogus completions on a packed ring: descriptors at the cursor rewritten as used, with ids
/// read from the ring (or random), lengths that may fit (or not), and flags that mark them used
/// in the current wrap (or are random). Returns the descriptors written.
fn bogus_packed(queue: &Queue, cursor: &mut Cursor, rng: &mut Rng) -> u64 {
    let count = rng.range(1, COMPLETIONS_MAX);
    for _ in 0..count {
        let slot = if rng.range(0, 7) == 0 { rng.range(0, u64::from(queue.size) - 1) as u16 } else { cursor.next };
        // SAFETY: `slot < size`: the descriptor lies inside the descriptor area, translated for
        // `packed::desc_ring_bytes(size)` bytes; 16-byte aligned as the ring is.
        let desc = unsafe { queue.desc.add(16 * usize::from(slot)) };
        // SAFETY: `desc` is a descriptor of the ring (above); its id and flags are 2-aligned.
        let (id, flags) = unsafe {
            (
                u16::from_le(desc.add(packed::DESC_ID_OFFSET).cast::<u16>().read_volatile()),
                u16::from_le(desc.add(packed::DESC_FLAGS_OFFSET).cast::<u16>().read_volatile()),
            )
        };
        let id = mostly(rng, u64::from(id)) as u16;
        let len = {
            let plausible = rng.range(0, PLAUSIBLE_LEN_MAX);
            mostly(rng, plausible) as u32
        };
        let used = if cursor.wrap { packed::DESC_F_AVAIL | packed::DESC_F_USED } else { 0 };
        let flags = mostly(rng, u64::from(used | (flags & packed::DESC_F_WRITE))) as u16;
        // SAFETY: as above: len (4-aligned) and id inside the descriptor.
        unsafe {
            desc.add(packed::DESC_LEN_OFFSET).cast::<u32>().write_volatile(len.to_le());
            desc.add(packed::DESC_ID_OFFSET).cast::<u16>().write_volatile(id.to_le());
        }
        // Id and length before the flags that hand the descriptor back (as a device would).
        fence(Ordering::Release);
        // SAFETY: as above.
        unsafe { desc.add(packed::DESC_FLAGS_OFFSET).cast::<u16>().write_volatile(flags.to_le()) };
        cursor.advance(queue.size);
    }
    count
}

/// Valid completions on a split ring: up to a few of the chains the driver made available, in
/// order, each with a length that fits its (one-descriptor) buffer. Returns how many.
fn valid_split(queue: &Queue, cursor: &mut Cursor, rng: &mut Rng) -> u64 {
    // SAFETY: `avail.idx` lies inside the driver area (translated for
    // `split::avail::bytes(size)` bytes, 2-aligned).
    let avail = u16::from_le(unsafe { queue.driver.add(split::avail::IDX).cast::<u16>().read_volatile() });
    // The available entries after `avail.idx` was read.
    fence(Ordering::Acquire);
    let count = u64::from(avail.wrapping_sub(cursor.next)).min(rng.range(1, COMPLETIONS_MAX));
    for _ in 0..count {
        let slot = cursor.next % queue.size;
        // SAFETY: `slot < size`: inside the available ring, as in `bogus_split`.
        let head = u16::from_le(unsafe { queue.driver.add(split::avail::ring(slot)).cast::<u16>().read_volatile() });
        if head >= queue.size {
            break;
        }
        // SAFETY: `head < size`: descriptor `head` lies inside the descriptor area (translated
        // for 16 x size bytes, 16-aligned); its length is at offset 8.
        let len = u32::from_le(unsafe { queue.desc.add(16 * usize::from(head) + 8).cast::<u32>().read_volatile() });
        let len = rng.range(0, u64::from(len)) as u32;
        // SAFETY: `slot < size`: inside the used ring, as in `bogus_split`.
        unsafe {
            let elem = queue.device.add(split::used::ring(slot)).cast::<u32>();
            elem.write_volatile(u32::from(head).to_le());
            elem.add(1).write_volatile(len.to_le());
        }
        cursor.next = cursor.next.wrapping_add(1);
    }
    // Entries before the index that publishes them.
    fence(Ordering::Release);
    // SAFETY: `used.idx` lies inside the device area.
    unsafe { queue.device.add(split::used::IDX).cast::<u16>().write_volatile(cursor.next.to_le()) };
    count
}

/// Valid completions on a packed ring: up to a few of the descriptors the driver made available
/// at the cursor, in order, each with a length that fits it and the used flags of the current
/// wrap. Returns how many.
fn valid_packed(queue: &Queue, cursor: &mut Cursor, rng: &mut Rng) -> u64 {
    let want = rng.range(1, COMPLETIONS_MAX);
    let mut count = 0;
    while count < want {
        // SAFETY: `cursor.next < size` (kept by `Cursor::advance`): a descriptor of the ring, as
        // in `bogus_packed`.
        let desc = unsafe { queue.desc.add(16 * usize::from(cursor.next)) };
        // SAFETY: the descriptor's flags, 2-aligned.
        let flags = u16::from_le(unsafe { desc.add(packed::DESC_FLAGS_OFFSET).cast::<u16>().read_volatile() });
        let avail = flags & packed::DESC_F_AVAIL != 0;
        let used = flags & packed::DESC_F_USED != 0;
        if avail != cursor.wrap || used == cursor.wrap {
            break;
        }
        // The rest of the descriptor after the flags that made it available.
        fence(Ordering::Acquire);
        // SAFETY: the descriptor's length, 4-aligned.
        let len = u32::from_le(unsafe { desc.add(packed::DESC_LEN_OFFSET).cast::<u32>().read_volatile() });
        let len = rng.range(0, u64::from(len)) as u32;
        // SAFETY: as above (the id stays: the driver's own).
        unsafe { desc.add(packed::DESC_LEN_OFFSET).cast::<u32>().write_volatile(len.to_le()) };
        let used_flags = if cursor.wrap { packed::DESC_F_AVAIL | packed::DESC_F_USED } else { 0 };
        // The length before the flags that hand the descriptor back.
        fence(Ordering::Release);
        // SAFETY: as above.
        unsafe {
            desc.add(packed::DESC_FLAGS_OFFSET)
                .cast::<u16>()
                .write_volatile((used_flags | (flags & packed::DESC_F_WRITE)).to_le())
        };
        cursor.advance(queue.size);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memfd of `len` bytes.
    fn memfd(len: u64) -> File {
        // SAFETY: a NUL-terminated name and no flags; the result is checked before use.
        let fd = unsafe { libc::memfd_create(c"hostile-test".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        file
    }

    /// One 64 KiB region at user address 0x10_0000 with one split ring of 16 inside it.
    fn shared() -> Shared {
        let file = memfd(0x1_0000);
        let region = VhostUserMemoryRegion::new(0x10_0000, 0x1_0000, 0x10_0000, 0);
        let mapping = Arc::new(Mapping::new(&region, &file).unwrap());
        let mut vrings: Vec<Vring> = (0..MAX_VRINGS).map(|_| Vring::default()).collect();
        vrings[0].size = 16;
        vrings[0].addresses = Some((0x10_1000, 0x10_2000, 0x10_3000));
        Shared { mappings: vec![mapping], vrings, packed: false, generation: 1 }
    }

    fn spans(view: &View, areas: &[Area]) -> Vec<(usize, usize)> {
        let base = view._mappings[0].at as usize;
        areas.iter().map(|a| (a.at as usize - base, a.len)).collect()
    }

    #[test]
    fn targets_split_the_memory_into_rings_and_the_rest() {
        let shared = shared();
        let rings = [(0x1000, 16 * 16), (0x2000, split::avail::bytes(16)), (0x3000, split::used::bytes(16))];
        let buffers = [
            (0, 0x1000),
            (0x1100, 0x2000 - 0x1100),
            (0x2000 + rings[1].1, 0x3000 - 0x2000 - rings[1].1),
            (0x3000 + rings[2].1, 0x1_0000 - 0x3000 - rings[2].1),
        ];
        let view = View::of(&shared, Target::Rings);
        assert_eq!(spans(&view, &view.areas), rings);
        assert!(view.warm_areas.is_empty());
        assert_eq!(view.queues.len(), 1);
        let view = View::of(&shared, Target::Buffers);
        assert_eq!(spans(&view, &view.areas), buffers);
        assert_eq!(spans(&view, &view.warm_areas), buffers);
        let view = View::of(&shared, Target::Everything);
        assert_eq!(spans(&view, &view.areas), [(0, 0x1_0000)]);
        assert_eq!(spans(&view, &view.warm_areas), buffers);
    }

    #[test]
    fn a_ring_outside_the_table_is_left_alone() {
        let mut shared = shared();
        shared.vrings[0].addresses = Some((0x10_1000, 0x10_2000, 0x20_0000));
        let view = View::of(&shared, Target::Rings);
        assert!(view.queues.is_empty());
        assert_eq!(view.areas.len(), 2, "only the translated areas");
    }

    #[test]
    fn a_region_past_the_end_of_its_file_is_refused() {
        let file = memfd(0x1000);
        let region = VhostUserMemoryRegion::new(0, 0x2000, 0x10_0000, 0);
        assert!(Mapping::new(&region, &file).is_err());
    }

    #[test]
    fn valid_split_completions_follow_the_available_ring() {
        let shared = shared();
        let view = View::of(&shared, Target::Rings);
        let queue = &view.queues[0];
        // The driver's side: descriptors 0..4 of 100 bytes each, made available as heads 3, 1.
        // SAFETY: inside the ring areas of the test mapping (see `shared`), aligned.
        unsafe {
            for d in 0..4 {
                queue.desc.add(16 * d + 8).cast::<u32>().write_volatile(100);
            }
            queue.driver.add(split::avail::ring(0)).cast::<u16>().write_volatile(3);
            queue.driver.add(split::avail::ring(1)).cast::<u16>().write_volatile(1);
            queue.driver.add(split::avail::IDX).cast::<u16>().write_volatile(2);
        }
        let mut cursor = Cursor { next: 0, wrap: true };
        let mut rng = Rng::new(7);
        let mut posted = 0;
        while posted < 2 {
            posted += valid_split(queue, &mut cursor, &mut rng);
        }
        assert_eq!(valid_split(queue, &mut cursor, &mut rng), 0, "nothing more is available");
        // SAFETY: as above.
        let (idx, id0, len0, id1) = unsafe {
            (
                queue.device.add(split::used::IDX).cast::<u16>().read_volatile(),
                queue.device.add(split::used::ring(0)).cast::<u32>().read_volatile(),
                queue.device.add(split::used::ring(0) + 4).cast::<u32>().read_volatile(),
                queue.device.add(split::used::ring(1)).cast::<u32>().read_volatile(),
            )
        };
        assert_eq!((idx, id0, id1), (2, 3, 1));
        assert!(len0 <= 100);
    }
}
