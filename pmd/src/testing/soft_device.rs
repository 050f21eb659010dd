//! The software device: plays the DEVICE side of a receive/transmit ring pair in shared memory,
//! in its own thread ([`SoftDevice`]) or stepped inline ([`DeviceCore::poll`], for benches).
//!
//! Modes: loopback (each transmitted frame comes back on receive), sink (transmitted frames are
//! consumed), source (frames are generated into receive buffers). Without IN_ORDER it completes
//! chains out of order (shuffled within a window); with IN_ORDER it may complete a whole batch
//! with one used entry. It can ask for notifications always, never or at an index, and inject
//! one fault (bad id, bad length, a buffer used twice, a wrong `num_buffers`). With mergeable
//! receive buffers ([`DeviceConfig::mergeable`]), loopback spreads a frame over as many receive
//! buffers as it takes and says how many in `num_buffers` ("Processing of Incoming Packets",
//! 5.1.6.4). With hash reports ([`DeviceConfig::hash_report`]) the header is 20 bytes both ways
//! and every received frame's `hash_value` and `hash_report` come from the configured function.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::device_ring::{AddressSpace, Chain, DeviceRing, NotifyMode, RingFault};
use super::rng::Rng;
use crate::spec::net::{HashFields, NET_HDR_HASH_LEN, NET_HDR_LEN};
use crate::transport::{QueueAddresses, RingFormat};

/// Where a ring is and how it is laid out, as the device learns it from the transport.
#[derive(Clone, Copy, Debug)]
pub struct QueueSpec {
    /// Ring format.
    pub format: RingFormat,
    /// Number of descriptors.
    pub size: u16,
    /// Device addresses of its areas.
    pub addresses: QueueAddresses,
}

/// A fault the device injects once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A used entry whose id the driver never handed out (out of range).
    BadId,
    /// A used length larger than the chain's device-writable length.
    BadLen,
    /// A chain completed twice ("used flag flipped twice").
    UsedTwice,
    /// The frame whose first receive buffer is completion `at` says it took this many buffers
    /// (`num_buffers`), whatever it took (mergeable loopback only).
    NumBuffers(u16),
}

/// Which ring of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The receive ring (device writes frames into it).
    Rx,
    /// The transmit ring (device reads frames from it).
    Tx,
}

/// Inject `fault` on the `role` ring at its `at`-th completion (counting from 0).
#[derive(Clone, Copy, Debug)]
pub struct FaultPlan {
    /// The fault.
    pub fault: Fault,
    /// On which ring.
    pub role: Role,
    /// At which completion.
    pub at: u64,
}

/// Generates one frame (after the virtio-net header) into `buf`, returning its length.
pub type FrameSource = Box<dyn FnMut(u64, &mut [u8]) -> usize + Send>;
/// Receives each transmitted frame (after the virtio-net header).
pub type FrameSink = Box<dyn FnMut(&[u8]) + Send>;
/// The `hash_value` and `hash_report` (any value, for a test of what the driver accepts) a
/// device with VIRTIO_NET_F_HASH_REPORT writes for a received frame (after the header).
pub type HashReporter = fn(&[u8]) -> (u32, u16);

/// What the device does with frames.
pub enum Mode {
    /// Transmitted frames come back on the receive ring (waiting for receive buffers).
    Loopback,
    /// Transmitted frames are consumed, each handed to the optional sink.
    Sink(Option<FrameSink>),
    /// `count` frames are generated into receive buffers. With `None` as the source, buffers
    /// are completed with a fixed 64-byte length without writing them (for benches).
    Source {
        /// Frames to generate (`u64::MAX`: no limit).
        count: u64,
        /// Frame generator.
        source: Option<FrameSource>,
    },
}

/// How the device behaves.
pub struct DeviceConfig {
    /// What to do with frames.
    pub mode: Mode,
    /// IN_ORDER negotiated: complete in order.
    pub in_order: bool,
    /// With `in_order`: complete transmit batches with a single used entry.
    pub batch_used: bool,
    /// EVENT_IDX negotiated (split rings).
    pub event_idx: bool,
    /// Available-buffer notification suppression the device asks for.
    pub notify: NotifyMode,
    /// Chains gathered (when available) before completing them, shuffled without IN_ORDER.
    pub window: usize,
    /// One fault to inject.
    pub fault: Option<FaultPlan>,
    /// Seed for shuffling.
    pub seed: u64,
    /// VIRTIO_NET_F_MRG_RXBUF negotiated: loopback spreads a frame over several receive
    /// buffers.
    pub mergeable: bool,
    /// VIRTIO_NET_F_HASH_REPORT negotiated: the header is 20 bytes both ways, and this gives
    /// each received frame's hash fields.
    pub hash_report: Option<HashReporter>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Loopback,
            in_order: false,
            batch_used: false,
            event_idx: false,
            notify: NotifyMode::Never,
            window: 16,
            fault: None,
            seed: 1,
            mergeable: false,
            hash_report: None,
        }
    }
}

/// Counters the device keeps, readable while it runs.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Chains completed on the transmit ring.
    pub tx_chains: AtomicU64,
    /// Chains completed on the receive ring.
    pub rx_chains: AtomicU64,
    /// Frames the device could not deliver (receive buffer too small).
    pub dropped: AtomicU64,
    /// Faults injected.
    pub faults_injected: AtomicU64,
    /// Transmit chains whose buffers came in an indirect table.
    pub tx_indirect: AtomicU64,
}

/// A pending completion.
struct Done {
    id: u16,
    descs: u16,
    len: u32,
}

impl Done {
    /// Queues the completion of transmit chain `chain` (nothing written: length 0).
    fn transmitted(done: &mut Vec<Done>, chain: &Chain, stats: &DeviceStats) {
        done.push(Done { id: chain.id, descs: chain.descs, len: 0 });
        if chain.indirect {
            stats.tx_indirect.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The device's engine for one ring pair; single-threaded, stepped by [`DeviceCore::poll`].
pub struct DeviceCore {
    config: DeviceConfig,
    space: AddressSpace,
    rx: Option<DeviceRing>,
    tx: Option<DeviceRing>,
    rng: Rng,
    stats: Arc<DeviceStats>,
    scratch: Vec<u8>,
    rx_chain: Chain,
    tx_chain: Chain,
    rx_done: Vec<Done>,
    tx_done: Vec<Done>,
    rx_count: u64,
    tx_count: u64,
    generated: u64,
    /// The receive chain popped but not yet filled (loopback waits for a frame).
    rx_held: bool,
    /// Mergeable loopback: the transmitted frame (header included) waiting in `scratch` for
    /// receive buffers, and the receive chains gathered for it so far.
    pending: Option<usize>,
    merge_chains: Vec<Chain>,
}

impl DeviceCore {
    /// The device side of the rings in `rx` / `tx` (either may be absent), in `space`.
    pub fn new(
        config: DeviceConfig,
        space: AddressSpace,
        rx: Option<QueueSpec>,
        tx: Option<QueueSpec>,
    ) -> Result<Self, RingFault> {
        let ring = |q: QueueSpec| DeviceRing::new(q.format, q.size, q.addresses, &space, config.event_idx);
        let mut rx = rx.map(ring).transpose()?;
        let mut tx = tx.map(ring).transpose()?;
        for r in rx.iter_mut().chain(tx.iter_mut()) {
            r.set_notify(config.notify);
        }
        Ok(Self {
            rng: Rng::new(config.seed),
            config,
            space,
            rx,
            tx,
            stats: Arc::default(),
            scratch: vec![0; 64 * 1024],
            rx_chain: Chain::default(),
            tx_chain: Chain::default(),
            rx_done: Vec::new(),
            tx_done: Vec::new(),
            rx_count: 0,
            tx_count: 0,
            generated: 0,
            rx_held: false,
            pending: None,
            merge_chains: Vec::new(),
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<DeviceStats> {
        self.stats.clone()
    }

    /// One step: gathers up to a window of chains, moves frames, completes them. Returns how
    /// many chains it completed.
    pub fn poll(&mut self) -> Result<usize, RingFault> {
        for _ in 0..self.config.window.max(1) {
            if !self.step()? {
                break;
            }
        }
        let done = self.rx_done.len() + self.tx_done.len();
        self.complete(Role::Rx);
        self.complete(Role::Tx);
        if let NotifyMode::AtIndex(_) | NotifyMode::Always = self.config.notify {
            for r in self.rx.iter_mut().chain(self.tx.iter_mut()) {
                r.set_notify(self.config.notify);
            }
        } else if self.config.event_idx {
            // Keep the split ring's avail_event away from where the driver publishes.
            for r in self.rx.iter_mut().chain(self.tx.iter_mut()) {
                r.set_notify(NotifyMode::Never);
            }
        }
        Ok(done)
    }

    /// Moves one frame; false when nothing could move.
    fn step(&mut self) -> Result<bool, RingFault> {
        match &mut self.config.mode {
            Mode::Loopback if self.config.mergeable => self.step_mergeable_loopback(),
            Mode::Loopback => {
                let (Some(rx), Some(tx)) = (self.rx.as_mut(), self.tx.as_mut()) else {
                    return Ok(false);
                };
                if !self.rx_held {
                    if !rx.pop_avail(&self.space, &mut self.rx_chain)? {
                        return Ok(false);
                    }
                    self.rx_held = true;
                }
                if !tx.pop_avail(&self.space, &mut self.tx_chain)? {
                    return Ok(false);
                }
                let len = self.tx_chain.gather(&mut self.scratch);
                Done::transmitted(&mut self.tx_done, &self.tx_chain, &self.stats);
                if len <= self.rx_chain.writable_len() as usize && len >= self.header_len() {
                    // A device sets num_buffers to 1 without MRG_RXBUF; the rest of the
                    // transmitted header passes through.
                    self.scratch[10..12].copy_from_slice(&1u16.to_le_bytes());
                    Self::report_hash(self.config.hash_report, &mut self.scratch, len);
                    self.rx_chain.scatter(&self.scratch[..len]);
                    self.rx_done.push(Done { id: self.rx_chain.id, descs: self.rx_chain.descs, len: len as u32 });
                    self.rx_held = false;
                } else {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(true)
            }
            Mode::Sink(sink) => {
                let Some(tx) = self.tx.as_mut() else {
                    return Ok(false);
                };
                if !tx.pop_avail(&self.space, &mut self.tx_chain)? {
                    return Ok(false);
                }
                if let Some(sink) = sink {
                    let len = self.tx_chain.gather(&mut self.scratch);
                    let header = if self.config.hash_report.is_some() { NET_HDR_HASH_LEN } else { NET_HDR_LEN };
                    sink(&self.scratch[header.min(len)..len]);
                }
                Done::transmitted(&mut self.tx_done, &self.tx_chain, &self.stats);
                Ok(true)
            }
            Mode::Source { count, source } => {
                let Some(rx) = self.rx.as_mut() else {
                    return Ok(false);
                };
                if self.generated >= *count || !rx.pop_avail(&self.space, &mut self.rx_chain)? {
                    return Ok(false);
                }
                let header = if self.config.hash_report.is_some() { NET_HDR_HASH_LEN } else { NET_HDR_LEN };
                let len = match source {
                    Some(source) => {
                        self.scratch[..header].fill(0);
                        self.scratch[10..12].copy_from_slice(&1u16.to_le_bytes());
                        let room = (self.rx_chain.writable_len() as usize).min(self.scratch.len());
                        let frame = source(self.generated, &mut self.scratch[header..room]);
                        Self::report_hash(self.config.hash_report, &mut self.scratch, header + frame);
                        self.rx_chain.scatter(&self.scratch[..header + frame]);
                        (header + frame) as u32
                    }
                    None => (header + 64) as u32,
                };
                self.generated += 1;
                self.rx_done.push(Done { id: self.rx_chain.id, descs: self.rx_chain.descs, len });
                Ok(true)
            }
        }
    }

    /// Loopback with mergeable receive buffers: takes a transmitted frame, gathers receive
    /// chains until they hold it, and scatters it over them, `num_buffers` in the header.
    fn step_mergeable_loopback(&mut self) -> Result<bool, RingFault> {
        let header_len = self.header_len();
        let (Some(rx), Some(tx)) = (self.rx.as_mut(), self.tx.as_mut()) else {
            return Ok(false);
        };
        let len = match self.pending {
            Some(len) => len,
            None => {
                if !tx.pop_avail(&self.space, &mut self.tx_chain)? {
                    return Ok(false);
                }
                let len = self.tx_chain.gather(&mut self.scratch);
                Done::transmitted(&mut self.tx_done, &self.tx_chain, &self.stats);
                if len < header_len {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                Self::report_hash(self.config.hash_report, &mut self.scratch, len);
                self.pending = Some(len);
                len
            }
        };
        let room = |chains: &[Chain]| chains.iter().map(|c| c.writable_len() as usize).sum::<usize>();
        while room(&self.merge_chains) < len {
            let mut chain = Chain::default();
            if !rx.pop_avail(&self.space, &mut chain)? {
                return Ok(false);
            }
            self.merge_chains.push(chain);
        }
        let first = self.rx_count + self.rx_done.len() as u64;
        let mut num_buffers = self.merge_chains.len() as u16;
        if let Some(FaultPlan { fault: Fault::NumBuffers(n), role: Role::Rx, at }) = self.config.fault {
            if at == first {
                num_buffers = n;
                self.config.fault = None;
                self.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.scratch[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut at = 0;
        for chain in self.merge_chains.drain(..) {
            let part = (chain.writable_len() as usize).min(len - at);
            chain.scatter(&self.scratch[at..at + part]);
            self.rx_done.push(Done { id: chain.id, descs: chain.descs, len: part as u32 });
            at += part;
        }
        self.pending = None;
        Ok(true)
    }

    /// The virtio-net header's length.
    fn header_len(&self) -> usize {
        if self.config.hash_report.is_some() {
            NET_HDR_HASH_LEN
        } else {
            NET_HDR_LEN
        }
    }

    /// With hash reports (`reporter`), writes the hash fields of the frame (header included) of
    /// `len` bytes in `scratch` into its header.
    fn report_hash(reporter: Option<HashReporter>, scratch: &mut [u8], len: usize) {
        if let Some(reporter) = reporter {
            let (hash_value, hash_report) = reporter(&scratch[NET_HDR_HASH_LEN..len]);
            let fields = HashFields { hash_value, hash_report }.to_bytes();
            scratch[NET_HDR_LEN..NET_HDR_HASH_LEN].copy_from_slice(&fields);
        }
    }

    /// Writes the used entries of `role`'s pending completions, in order or shuffled, in one
    /// batch entry or one each, with the planned fault if it falls here.
    fn complete(&mut self, role: Role) {
        let (ring, done, count, stat) = match role {
            Role::Rx => (&mut self.rx, &mut self.rx_done, &mut self.rx_count, &self.stats.rx_chains),
            Role::Tx => (&mut self.tx, &mut self.tx_done, &mut self.tx_count, &self.stats.tx_chains),
        };
        let Some(ring) = ring.as_mut() else { return };
        if done.is_empty() {
            return;
        }
        // A merged frame's buffers stay together, and go to the driver all at once.
        let merged = self.config.mergeable && role == Role::Rx;
        if !self.config.in_order && !merged {
            self.rng.shuffle(done);
        }
        let fault = self.config.fault.filter(|f| {
            f.role == role
                && !matches!(f.fault, Fault::NumBuffers(_))
                && (*count..*count + done.len() as u64).contains(&f.at)
        });
        // Receive entries carry lengths the driver needs, so only transmit completions batch.
        if merged && fault.is_none() {
            let entries: Vec<_> = done.iter().map(|d| (d.id, d.len, d.descs)).collect();
            ring.push_used_together(&entries);
        } else if self.config.in_order && self.config.batch_used && role == Role::Tx && fault.is_none() {
            let skip = done.iter().map(|d| d.descs).sum();
            let last = done.last().map_or(0, |d| d.id);
            let len = done.last().map_or(0, |d| d.len);
            ring.push_used(last, len, skip, done.len() as u16);
        } else {
            for (i, d) in done.iter().enumerate() {
                match fault.filter(|f| f.at == *count + i as u64).map(|f| f.fault) {
                    Some(Fault::BadId) => ring.push_used_raw(0xffff, d.len),
                    Some(Fault::BadLen) => ring.push_used(d.id, d.len + 100_000, d.descs, 1),
                    Some(Fault::UsedTwice) => {
                        ring.push_used(d.id, d.len, d.descs, 1);
                        ring.push_used(d.id, d.len, d.descs, 1);
                    }
                    Some(Fault::NumBuffers(_)) | None => ring.push_used(d.id, d.len, d.descs, 1),
                }
            }
        }
        if fault.is_some() {
            self.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
            self.config.fault = None;
        }
        *count += done.len() as u64;
        stat.fetch_add(done.len() as u64, Ordering::Relaxed);
        done.clear();
    }
}

/// A [`DeviceCore`] running in its own thread until stopped.
pub struct SoftDevice {
    stop: Arc<AtomicBool>,
    stats: Arc<DeviceStats>,
    thread: Option<JoinHandle<Result<(), RingFault>>>,
}

impl SoftDevice {
    /// Starts the device thread.
    pub fn spawn(core: DeviceCore) -> std::io::Result<SoftDevice> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = core.stats();
        let thread = {
            let stop = stop.clone();
            let mut core = core;
            std::thread::Builder::new().name("soft-device".into()).spawn(move || {
                let mut idle = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if core.poll()? > 0 {
                        idle = 0;
                    } else {
                        idle += 1;
                        if idle > 64 {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
                Ok(())
            })?
        };
        Ok(SoftDevice { stop, stats, thread: Some(thread) })
    }

    /// The device's counters.
    pub fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    /// Stops the device (like a reset: it touches the rings no more) and reports whether it
    /// found the rings malformed.
    pub fn stop(mut self) -> Result<(), RingFault> {
        self.halt()
    }

    fn halt(&mut self) -> Result<(), RingFault> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(RingFault::BadChain),
            None => Ok(()),
        }
    }
}

impl Drop for SoftDevice {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
