//! rust-vmm's `virtio-queue` plays the DEVICE side of our split ring driver ([`SplitRing`]).
//!
//! `virtio-queue` is the device-side virtqueue of Firecracker, Cloud Hypervisor and the rust-vmm
//! vhost-user backends: an implementation of "Split Virtqueues" (virtio 1.2, 2.7) written
//! independently of ours. It reads our rings straight out of our DMA regions, wrapped without a
//! copy as vm-memory guest memory at their IOVAs, exactly as a VMM would see a guest's rings.
//! Against it, these tests prove that:
//!
//! - every chain our driver writes (1 to 4 segments of random lengths, device-readable and
//!   device-writable, free-list and IN_ORDER descriptor allocation, descriptor table and 16-bit
//!   index wrap-around) is parsed by `virtio-queue` as exactly the segments we added, in the order
//!   we published them, and the bytes we put in them are the bytes it reads;
//! - every completion `virtio-queue` writes comes back from our `pop_used` with the right token
//!   and the used length it wrote (`Some(len)`; `None` on a ring that reads no used entries, as
//!   the transmit queues' do), with the bytes it wrote in our buffers;
//! - our `publish()` kick decision is exactly what the spec's rule gives for the suppression state
//!   `virtio-queue` left in the used ring: `used.flags` & NO_NOTIFY without EVENT_IDX, and
//!   `vring_need_event(avail_event, new, old)` with it (2.7.7.1, 2.7.10). In particular a device
//!   that went to sleep (`enable_notification` found no more work) is always kicked by the next
//!   publish (no lost wakeup), and a device that suppressed notifications is never kicked;
//! - our poll mode (no used-buffer notifications) reaches `virtio-queue`: with EVENT_IDX it is
//!   asked for at most one interrupt per 2^16 completions; without, VIRTQ_AVAIL_F_NO_INTERRUPT is
//!   set (`virtio-queue` does not read that flag, which the spec allows);
//! - a loopback of more than 200k frames through a `virtio-queue` device thread, which sleeps
//!   until kicked, delivers every frame intact and in order, with the used length it wrote;
//! - with indirect descriptors (VIRTIO_F_INDIRECT_DESC, "Indirect Descriptors", 2.7.5.3), every
//!   chain of several segments takes one ring descriptor and `virtio-queue` finds exactly our
//!   segments in its table, readable and writable, in the lockstep runs and in the loopback;
//! - a used length larger than a chain's device-writable length is detected (`bad_len`), an
//!   indirect chain's too;
//! - after all that, draining our rings leaves nothing in flight.
//!
//! The kick checks run driver and device alternately in one thread, from a seeded generator, so
//! that they are deterministic; the loopback runs the device in its own thread.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{check_frame, frame_len, write_frame};
use virtio_pmd::mem::{DmaRegion, HugePages, IovaAllocator};
use virtio_pmd::testing::{indirect_tables, ring_memory, RingSpec, Rng};
use virtio_pmd::transport::{QueueAddresses, RingFormat};
use virtio_pmd::virtqueue::{Chains, RingErrors, Segment, SplitRing, Virtqueue};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// `VIRTQ_USED_F_NO_NOTIFY` (device to driver: do not kick).
const USED_F_NO_NOTIFY: u16 = 1;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (driver to device: do not interrupt).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Largest segment; each chain's buffers take a slot of four of them.
const SEG_MAX: u32 = 2048;
const SLOT_BYTES: usize = 4 * SEG_MAX as usize;
/// Largest segment of the lockstep runs: they are about ring protocol, not bulk data (the
/// loopback moves full frames), so they keep the bytes to check small.
const LOCKSTEP_SEG_MAX: u32 = 512;
/// Largest test frame (`common::frame_len`).
const MAX_FRAME: usize = 1514;

/// What the driver negotiated for one ring.
#[derive(Clone, Copy, Debug)]
struct Config {
    size: u16,
    event_idx: bool,
    in_order: bool,
    /// One descriptor per chain, through the bulk path the queues use (`add_each`), on a ring
    /// limited to such chains (`Chains::OneDescriptor`).
    one_descriptor: bool,
    /// With `one_descriptor`: the ring reads no used entries (`Chains::OneDescriptorNoLengths`), as the
    /// transmit queues' rings do; completions then carry no length.
    lengths_unread: bool,
    /// VIRTIO_F_INDIRECT_DESC: the ring has indirect tables, and every chain of more than one
    /// segment goes as one descriptor naming its table (`add_indirect`).
    indirect: bool,
}

impl Config {
    /// A seed of its own for every configuration, so that a failure names a reproducible run.
    fn seed(self, salt: u64) -> u64 {
        salt ^ (self.size as u64) << 8
            ^ (self.indirect as u64) << 4
            ^ (self.lengths_unread as u64) << 3
            ^ (self.one_descriptor as u64) << 2
            ^ (self.event_idx as u64) << 1
            ^ self.in_order as u64
    }
}

/// Ring sizes 64, 256 and 1024, each with EVENT_IDX and IN_ORDER on and off, and in order also
/// with one-descriptor chains (the queues' rings), with and without used lengths read; and
/// sizes 64 and 256 with indirect tables, IN_ORDER and EVENT_IDX on and off.
/// `virtio-queue` always completes in order, which is valid with or without IN_ORDER.
fn configs() -> Vec<Config> {
    let mut all = Vec::new();
    for size in [64, 256, 1024] {
        for event_idx in [false, true] {
            for (in_order, one_descriptor, lengths_unread) in
                [(false, false, false), (true, false, false), (true, true, false), (true, true, true)]
            {
                all.push(Config { size, event_idx, in_order, one_descriptor, lengths_unread, indirect: false });
            }
            if size < 1024 {
                for in_order in [false, true] {
                    let indirect = true;
                    all.push(Config {
                        size,
                        event_idx,
                        in_order,
                        one_descriptor: false,
                        lengths_unread: false,
                        indirect,
                    });
                }
            }
        }
    }
    all
}

/// A fresh split ring of `config` in its own DMA region (and its indirect tables in another).
fn split_ring<T: Send>(config: Config) -> (SplitRing<T>, Vec<Arc<DmaRegion>>) {
    let spec = RingSpec {
        format: RingFormat::Split,
        size: config.size,
        in_order: config.in_order,
        event_idx: config.event_idx,
    };
    let (memory, region) = ring_memory(spec).expect("ring memory");
    let chains = match (config.one_descriptor, config.lengths_unread) {
        (false, _) => Chains::Any,
        (true, false) => Chains::OneDescriptor,
        (true, true) => Chains::OneDescriptorNoLengths,
    };
    let ring = SplitRing::new(memory, config.event_idx, config.in_order, chains).expect("split ring");
    if !config.indirect {
        return (ring, vec![region]);
    }
    let (tables, tables_region) = indirect_tables(spec).expect("indirect tables");
    (ring.with_indirect(tables).expect("a ring with indirect tables"), vec![region, tables_region])
}

/// A DMA region for buffers: `slots` slots of [`SLOT_BYTES`].
fn buffer_region(slots: usize) -> Arc<DmaRegion> {
    Arc::new(
        DmaRegion::new("vq-device-buffers", slots * SLOT_BYTES, HugePages::Never, &IovaAllocator::identity())
            .expect("buffer region"),
    )
}

/// Address of segment `seg` of buffer slot `slot` in `region`.
fn slot_addr(region: &DmaRegion, slot: usize, seg: usize) -> u64 {
    region.iova() + (slot * SLOT_BYTES + seg * SEG_MAX as usize) as u64
}

/// Our DMA regions as a device sees them: vm-memory guest memory whose guest physical addresses
/// are the regions' IOVAs, backed by the very same mappings (no copy).
struct DeviceMemory {
    mem: GuestMemoryMmap,
    /// Declared after `mem`, so dropped after it: every mapping `mem` refers to outlives it.
    _regions: Vec<Arc<DmaRegion>>,
}

impl DeviceMemory {
    fn new(mut regions: Vec<Arc<DmaRegion>>) -> DeviceMemory {
        regions.sort_by_key(|region| region.iova());
        let guest_regions = regions
            .iter()
            .map(|region| {
                // SAFETY: `as_ptr()..as_ptr() + len()` is a page-aligned, read-write, MAP_SHARED
                // mapping for the whole life of the DmaRegion (its invariant). A raw MmapRegion
                // does not own the mapping (it never unmaps it), and the DmaRegion is kept alive
                // by `_regions`, which is dropped after `mem` and every borrow of it, so the
                // mapping outlives all accesses made through the guest memory.
                let mapping = unsafe {
                    MmapRegion::<()>::build_raw(
                        region.as_ptr(),
                        region.len(),
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                    )
                }
                .expect("wrap a DMA region as an MmapRegion");
                GuestRegionMmap::new(mapping, GuestAddress(region.iova())).expect("guest region at the IOVA")
            })
            .collect();
        let mem = GuestMemoryMmap::from_regions(guest_regions).expect("guest memory over our DMA regions");
        DeviceMemory { mem, _regions: regions }
    }
}

/// A `virtio-queue` device queue on our ring, as a transport would configure it.
fn device_queue(addresses: QueueAddresses, config: Config, mem: &GuestMemoryMmap) -> Queue {
    let mut queue = Queue::new(config.size).expect("virtio-queue");
    queue.try_set_desc_table_address(GuestAddress(addresses.desc)).expect("descriptor table address");
    queue.try_set_avail_ring_address(GuestAddress(addresses.driver)).expect("available ring address");
    queue.try_set_used_ring_address(GuestAddress(addresses.device)).expect("used ring address");
    queue.set_event_idx(config.event_idx);
    queue.set_ready(true);
    assert!(queue.is_valid(mem), "{config:?}: virtio-queue rejects our ring at {addresses:?}");
    queue
}

/// A little-endian 16-bit ring field at `addr`, as the other side reads it.
fn ring_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    u16::from_le(mem.read_obj::<u16>(GuestAddress(addr)).expect("ring field"))
}

/// `used.flags`, written by the device.
fn used_flags(mem: &GuestMemoryMmap, addresses: QueueAddresses) -> u16 {
    ring_u16(mem, addresses.device)
}

/// `avail_event` (after the used ring's `size` elements), written by the device.
fn avail_event(mem: &GuestMemoryMmap, addresses: QueueAddresses, size: u16) -> u16 {
    ring_u16(mem, addresses.device + 4 + 8 * size as u64)
}

/// `avail.flags`, written by the driver.
fn avail_flags(mem: &GuestMemoryMmap, addresses: QueueAddresses) -> u16 {
    ring_u16(mem, addresses.driver)
}

/// Byte `i` of the data a chain carries: `salt` tells the driver's (readable) data from the
/// device's (writable). Not periodic in `i`, so a misplaced segment shows.
fn pattern(seq: u64, i: usize, salt: u64) -> u8 {
    ((seq << 24 ^ i as u64 ^ salt << 60).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}
const DRIVER_DATA: u64 = 1;
const DEVICE_DATA: u64 = 2;

/// The first `len` bytes held by `segments` (in order), read from guest memory.
fn gather(mem: &GuestMemoryMmap, segments: &[Segment], len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    let mut at = 0;
    for segment in segments {
        let take = (len - at).min(segment.len as usize);
        mem.read_slice(&mut out[at..at + take], GuestAddress(segment.addr)).expect("read a buffer");
        at += take;
    }
    assert_eq!(at, len, "{len} bytes do not fit in segments {segments:?}");
    out
}

// ------------------------------------------------------------------------------------------
// Driver and device in lockstep: descriptor chains, used lengths and kick decisions.
// ------------------------------------------------------------------------------------------

/// A chain the driver added and the device has not taken yet.
struct Posted {
    seq: u64,
    segments: Vec<Segment>,
}

/// A chain the device used and the driver has not popped yet.
struct Used {
    seq: u64,
    len: u32,
    writable: Vec<Segment>,
}

/// Counters of one lockstep run.
#[derive(Debug, Default)]
struct LockstepStats {
    publishes: u64,
    kicks: u64,
    /// Kicks that woke a sleeping device.
    wakeups: u64,
    /// Publishes of new chains the device had asked not to be told about.
    suppressed: u64,
    /// Used-buffer notifications `virtio-queue` decided to send.
    interrupts: u64,
    used: u64,
}

/// One ring, our driver on one side and `virtio-queue` on the other, stepped alternately.
struct Lockstep<'m> {
    config: Config,
    rng: Rng,
    mem: &'m GuestMemoryMmap,
    ring: SplitRing<u64>,
    addresses: QueueAddresses,
    buffers: Arc<DmaRegion>,
    queue: Queue,
    /// Driver: the next chain's sequence number; chains added and not yet published; the
    /// free-running count of chains published (our `avail.idx`).
    next_seq: u64,
    unpublished: u16,
    published: u16,
    posted: VecDeque<Posted>,
    used: VecDeque<Used>,
    completed: u64,
    /// Device: waiting for a kick (it enabled notifications and found no more work).
    sleeping: bool,
    stats: LockstepStats,
}

impl<'m> Lockstep<'m> {
    /// Adds up to half a ring of random chains (but no more than `total` in all).
    fn driver_add(&mut self, total: u64) {
        let burst = self.rng.range(0, self.config.size as u64 / 2);
        for _ in 0..burst {
            if self.next_seq == total {
                return;
            }
            let seq = self.next_seq;
            let count = if self.config.one_descriptor { 1 } else { self.rng.range(1, 4) as usize };
            let readable = self.rng.range(0, count as u64) as usize;
            // Slot `seq % size` is free: chains complete in order, so if chain `seq - size` were
            // still in flight, so would be the `size` chains since, and `add` would refuse.
            let slot = (seq % self.config.size as u64) as usize;
            let segments: Vec<Segment> = (0..count)
                .map(|i| Segment {
                    addr: slot_addr(&self.buffers, slot, i),
                    len: self.rng.range(1, LOCKSTEP_SEG_MAX as u64) as u32,
                    writable: i >= readable,
                })
                .collect();
            let free = self.ring.free_descriptors();
            // SAFETY: slot `seq % size` of this run's buffers is free (see above); the test reads
            // it only when its chain comes back.
            if let Err(token) = unsafe { add(&mut self.ring, &segments, seq) } {
                assert_eq!(token, seq, "add gave back another token");
                assert!(
                    count > free as usize,
                    "{:?}: add of a {count}-segment chain refused with {free} free descriptors",
                    self.config
                );
                return;
            }
            let descriptors = if self.config.indirect && count > 1 { 1 } else { count as u16 };
            assert_eq!(
                free - self.ring.free_descriptors(),
                descriptors,
                "{:?}: ring descriptors a {count}-segment chain took",
                self.config
            );
            // The device sees the data only after publish.
            let mut offset = 0;
            for segment in segments.iter().filter(|s| !s.writable) {
                let data: Vec<u8> = (0..segment.len as usize).map(|i| pattern(seq, offset + i, DRIVER_DATA)).collect();
                self.mem.write_slice(&data, GuestAddress(segment.addr)).expect("write a readable buffer");
                offset += data.len();
            }
            self.posted.push_back(Posted { seq, segments });
            self.next_seq += 1;
            self.unpublished += 1;
        }
    }

    /// Publishes, and checks the kick decision against the suppression state `virtio-queue`
    /// left in the used ring.
    fn driver_publish(&mut self) {
        let (old, n) = (self.published, self.unpublished);
        let new = old.wrapping_add(n);
        let state;
        let expected = if self.config.event_idx {
            // vring_need_event(avail_event, new, old): the index the device asked about is one
            // of those this publish moves past. Written as a walk, not as the wrapping formula.
            let event = avail_event(self.mem, self.addresses, self.config.size);
            state = format!("avail_event {event}");
            (0..n).any(|i| old.wrapping_add(i) == event)
        } else {
            let flags = used_flags(self.mem, self.addresses);
            state = format!("used.flags {flags:#x}");
            n > 0 && flags & USED_F_NO_NOTIFY == 0
        };
        let kick = self.ring.publish();
        let config = self.config;
        if self.sleeping && n > 0 {
            assert!(kick, "{config:?}: LOST WAKEUP: published {n} chains (avail idx {old} -> {new}) to a sleeping device ({state}) without a kick");
        }
        assert_eq!(
            kick, expected,
            "{config:?}: publish of {n} chains (avail idx {old} -> {new}) returned kick={kick}; virtio-queue's {state} says {expected}"
        );
        self.published = new;
        self.unpublished = 0;
        self.stats.publishes += 1;
        self.stats.kicks += kick as u64;
        self.stats.suppressed += (n > 0 && !kick) as u64;
        if kick && self.sleeping {
            self.sleeping = false;
            self.stats.wakeups += 1;
        }
    }

    /// Pops a random number of completions and checks token order, used lengths and data.
    fn driver_pop(&mut self) {
        let max = self.rng.range(1, self.config.size as u64) as usize;
        let mut popped = Vec::new();
        let n = self.ring.pop_used(max, |seq, len| popped.push((seq, len)));
        assert_eq!(n, popped.len(), "pop_used count");
        let config = self.config;
        for (seq, len) in popped {
            let used = self
                .used
                .pop_front()
                .unwrap_or_else(|| panic!("{config:?}: our ring completed chain {seq}, which virtio-queue never used"));
            assert_eq!(seq, used.seq, "{config:?}: completions out of order");
            assert_eq!(
                len,
                (!config.lengths_unread).then_some(used.len),
                "{config:?}: chain {seq}: used length differs from what virtio-queue wrote"
            );
            let data = gather(self.mem, &used.writable, used.len as usize);
            if let Some(i) = data.iter().enumerate().position(|(i, &b)| b != pattern(seq, i, DEVICE_DATA)) {
                panic!("{config:?}: chain {seq}: byte {i} of {} the device wrote differs", used.len);
            }
            self.completed += 1;
        }
    }

    /// One device step: process a random number of chains, then maybe re-enable notifications
    /// (always when out of work; sometimes with work left, as a device pacing itself does).
    fn device_step(&mut self) {
        if self.sleeping {
            return;
        }
        let config = self.config;
        self.queue.disable_notification(self.mem).expect("disable_notification");
        let budget = self.rng.range(1, config.size as u64);
        let mut out_of_work = false;
        let mut done = 0;
        for _ in 0..budget {
            let Some(chain) = self.queue.pop_descriptor_chain(self.mem) else {
                out_of_work = true;
                break;
            };
            self.device_process(chain);
            done += 1;
        }
        if out_of_work {
            assert_eq!(
                self.queue.next_avail(),
                self.published,
                "{config:?}: virtio-queue found no chain before our published avail idx"
            );
        }
        if done > 0 {
            self.stats.interrupts += self.queue.needs_notification(self.mem).expect("needs_notification") as u64;
            self.stats.used += done;
        }
        if out_of_work || self.rng.range(0, 7) == 0 {
            let more = self.queue.enable_notification(self.mem).expect("enable_notification");
            assert_eq!(
                more,
                self.queue.next_avail() != self.published,
                "{config:?}: virtio-queue's view of our avail idx (next_avail {}, published {})",
                self.queue.next_avail(),
                self.published
            );
            self.sleeping = !more;
        }
    }

    /// The device's work on one chain: check it is the next one published with exactly our
    /// segments and data, write a random amount into its writable part, and use it.
    fn device_process(&mut self, chain: DescriptorChain<&GuestMemoryMmap>) {
        let config = self.config;
        let head = chain.head_index();
        let posted = self
            .posted
            .pop_front()
            .unwrap_or_else(|| panic!("{config:?}: virtio-queue took chain head {head} we never published"));
        let seq = posted.seq;
        let parsed: Vec<Segment> = chain
            .clone()
            .map(|desc| Segment { addr: desc.addr().0, len: desc.len(), writable: desc.is_write_only() })
            .collect();
        assert_eq!(parsed, posted.segments, "{config:?}: chain {seq} (head {head}) as virtio-queue parsed it");
        let mut data = Vec::new();
        chain.clone().reader(self.mem).expect("reader").read_to_end(&mut data).expect("read the readable buffers");
        if let Some(i) = data.iter().enumerate().position(|(i, &b)| b != pattern(seq, i, DRIVER_DATA)) {
            panic!("{config:?}: chain {seq}: byte {i} of the readable data differs");
        }
        let mut writer = chain.writer(self.mem).expect("writer");
        let capacity = writer.available_bytes() as u64;
        let len = if capacity == 0 { 0 } else { self.rng.range(0, capacity) as usize };
        let data: Vec<u8> = (0..len).map(|i| pattern(seq, i, DEVICE_DATA)).collect();
        writer.write_all(&data).expect("write the writable buffers");
        self.queue.add_used(self.mem, head, len as u32).expect("add_used");
        let writable = posted.segments.into_iter().filter(|s| s.writable).collect();
        self.used.push_back(Used { seq, len: len as u32, writable });
    }
}

/// Runs `total` chains through one ring of `config` in lockstep with `virtio-queue`.
fn lockstep(config: Config, total: u64) -> LockstepStats {
    let (ring, mut regions) = split_ring::<u64>(config);
    let buffers = buffer_region(config.size as usize);
    regions.push(buffers.clone());
    let device_memory = DeviceMemory::new(regions);
    let mem = &device_memory.mem;
    let addresses = ring.addresses();
    let mut run = Lockstep {
        config,
        rng: Rng::new(config.seed(0x010c_57e9)),
        mem,
        ring,
        addresses,
        buffers,
        queue: device_queue(addresses, config, mem),
        next_seq: 0,
        unpublished: 0,
        published: 0,
        posted: VecDeque::new(),
        used: VecDeque::new(),
        completed: 0,
        // A fresh used ring has flags 0 and avail_event 0: notifications enabled, nothing seen.
        sleeping: true,
        stats: LockstepStats::default(),
    };
    let mut steps = 0u64;
    while run.completed < total {
        steps += 1;
        assert!(steps < 100 * total + 10_000, "{config:?}: no progress after {steps} steps: {:?}", run.stats);
        match run.rng.range(0, 3) {
            0 => run.driver_add(total),
            1 => run.driver_publish(),
            2 => run.device_step(),
            _ => run.driver_pop(),
        }
    }
    assert!(run.posted.is_empty() && run.used.is_empty() && run.unpublished == 0, "{config:?}: chains left over");
    assert_eq!(run.ring.errors(), RingErrors::default(), "{config:?}: a correct device was reported faulty");
    assert!(!run.ring.is_broken(), "{config:?}: ring broken");
    // Poll mode: we asked for no used-buffer notifications. With EVENT_IDX `virtio-queue`
    // honours `used_event` (which our driver keeps out of the way); without, it ignores the
    // flag (allowed, 2.7.7.2), so check the flag is there.
    if config.event_idx {
        assert!(
            run.stats.interrupts <= run.stats.used / 65536 + 1,
            "{config:?}: virtio-queue was asked for {} interrupts in {} completions",
            run.stats.interrupts,
            run.stats.used
        );
    } else {
        assert_ne!(
            avail_flags(mem, addresses) & AVAIL_F_NO_INTERRUPT,
            0,
            "{config:?}: VIRTQ_AVAIL_F_NO_INTERRUPT not set"
        );
    }
    let mut left = 0;
    // SAFETY: the device (driven from this thread, in lockstep) no longer runs.
    unsafe { run.ring.drain(|_| left += 1) };
    assert_eq!(left, 0, "{config:?}: chains left in flight after every completion was popped");
    assert_eq!(run.ring.in_flight(), 0);
    run.stats
}

#[test]
fn chains_lengths_and_kick_decisions_match_virtio_queue() {
    for config in configs() {
        // Size 64 runs past 2^16 chains, so the 16-bit indices (and avail_event) wrap.
        let total = if config.size == 64 { 70_000 } else { 20_000 };
        let stats = lockstep(config, total);
        // Each run must have exercised both sides of the kick decision.
        assert!(stats.wakeups > 0 && stats.suppressed > 0, "{config:?}: kick paths not all exercised: {stats:?}");
        assert_eq!(stats.used, total);
    }
}

// ------------------------------------------------------------------------------------------
// Loopback through a virtio-queue device thread.
// ------------------------------------------------------------------------------------------

/// What the driver tells the device thread.
enum Doorbell {
    Tx,
    Rx,
    Stop,
}

/// Where the device thread is (for a stall's diagnosis).
const RUNNING: u8 = 0;
const ASLEEP_ON_TX: u8 = 1;
const ASLEEP_ON_RX: u8 = 2;

#[derive(Debug, Default)]
struct DeviceReport {
    frames: u64,
    sleeps: u64,
    /// Sleeps waiting for rx buffers (the others wait for tx frames).
    sleeps_on_rx: u64,
    wakeups: u64,
    tx_interrupts: u64,
    rx_interrupts: u64,
}

/// The device: copies each frame of the tx queue into the next chain of the rx queue. Out of
/// work, it enables notifications on the queue it waits for and sleeps until a doorbell.
fn loopback_device(
    mem: &GuestMemoryMmap,
    mut tx: Queue,
    mut rx: Queue,
    doorbell: mpsc::Receiver<Doorbell>,
    state: &AtomicU8,
) -> DeviceReport {
    let mut report = DeviceReport::default();
    let mut pending: Option<DescriptorChain<&GuestMemoryMmap>> = None;
    let mut frame = Vec::with_capacity(MAX_FRAME);
    loop {
        tx.disable_notification(mem).expect("tx disable_notification");
        rx.disable_notification(mem).expect("rx disable_notification");
        let mut batch = 0u64;
        while let Some(tx_chain) = pending.take().or_else(|| tx.pop_descriptor_chain(mem)) {
            let Some(rx_chain) = rx.pop_descriptor_chain(mem) else {
                pending = Some(tx_chain);
                break;
            };
            frame.clear();
            tx_chain.clone().reader(mem).expect("tx reader").read_to_end(&mut frame).expect("read a tx chain");
            assert!(tx_chain.clone().writable().next().is_none(), "tx chain with a device-writable buffer");
            let mut writer = rx_chain.clone().writer(mem).expect("rx writer");
            assert!(
                writer.available_bytes() >= frame.len(),
                "rx chain of {} bytes too small for a {}-byte frame",
                writer.available_bytes(),
                frame.len()
            );
            writer.write_all(&frame).expect("write an rx chain");
            rx.add_used(mem, rx_chain.head_index(), frame.len() as u32).expect("rx add_used");
            tx.add_used(mem, tx_chain.head_index(), 0).expect("tx add_used");
            batch += 1;
            if batch % 32 == 0 {
                report.tx_interrupts += tx.needs_notification(mem).expect("tx needs_notification") as u64;
                report.rx_interrupts += rx.needs_notification(mem).expect("rx needs_notification") as u64;
            }
        }
        if batch % 32 != 0 {
            report.tx_interrupts += tx.needs_notification(mem).expect("tx needs_notification") as u64;
            report.rx_interrupts += rx.needs_notification(mem).expect("rx needs_notification") as u64;
        }
        report.frames += batch;
        // Blocked on rx buffers when a frame is waiting for one, else on tx frames.
        let (queue, waiting) = if pending.is_some() { (&mut rx, ASLEEP_ON_RX) } else { (&mut tx, ASLEEP_ON_TX) };
        if queue.enable_notification(mem).expect("enable_notification") {
            continue;
        }
        state.store(waiting, Ordering::Relaxed);
        report.sleeps += 1;
        report.sleeps_on_rx += (waiting == ASLEEP_ON_RX) as u64;
        let bell = doorbell.recv();
        state.store(RUNNING, Ordering::Relaxed);
        match bell {
            Ok(Doorbell::Tx | Doorbell::Rx) => report.wakeups += 1,
            // Stopped, or the driver side panicked and dropped its sender.
            Ok(Doorbell::Stop) | Err(_) => return report,
        }
    }
}

/// A random rx chain in buffer slot `slot`: 1 to `max_segments` (at most 4) segments that can
/// hold any frame.
fn rx_segments(rng: &mut Rng, buffers: &DmaRegion, slot: usize, max_segments: u64) -> Vec<Segment> {
    let count = rng.range(1, max_segments) as usize;
    let min = MAX_FRAME.div_ceil(count) as u64;
    (0..count)
        .map(|i| Segment {
            addr: slot_addr(buffers, slot, i),
            len: rng.range(min, SEG_MAX as u64) as u32,
            writable: true,
        })
        .collect()
}

/// Frame `frame` cut into 1 to `max_segments` (at most 4) random pieces in buffer slot `slot`.
fn tx_segments(rng: &mut Rng, buffers: &DmaRegion, slot: usize, frame: &[u8], max_segments: u64) -> Vec<Segment> {
    let cut_count = rng.range(0, max_segments - 1);
    let mut cuts: Vec<usize> = (0..cut_count).map(|_| rng.range(1, frame.len() as u64 - 1) as usize).collect();
    cuts.push(0);
    cuts.push(frame.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .enumerate()
        .map(|(i, w)| Segment { addr: slot_addr(buffers, slot, i), len: (w[1] - w[0]) as u32, writable: false })
        .collect()
}

/// Adds a chain: one segment through the bulk path the queues use, longer ones with `add`, or
/// through an indirect table on a ring that has them.
///
/// # Safety
/// [`Virtqueue::add`]'s contract: every test here passes slots of a buffer region of its own,
/// one slot per chain in flight, and touches a slot's bytes only once its chain came back.
unsafe fn add<T: Copy + Send>(ring: &mut SplitRing<T>, segments: &[Segment], token: T) -> Result<(), T> {
    // SAFETY: the caller's contract is the rings'.
    unsafe {
        match segments {
            [one] if ring.add_each(std::iter::once((*one, token))) == 1 => Ok(()),
            [_] => Err(token),
            _ if ring.indirect_segments() > 0 => ring.add_indirect(segments, token),
            _ => ring.add(segments, token),
        }
    }
}

/// Sends `frames` frames on a tx ring of `config` and receives them on an rx ring of `config`,
/// through a `virtio-queue` loopback device thread.
fn loopback(config: Config, frames: u64) -> DeviceReport {
    // Like the queues: only the transmit ring may leave its used lengths unread.
    let (mut tx, mut regions) = split_ring::<u32>(config);
    let (mut rx, rx_ring_regions) = split_ring::<u32>(Config { lengths_unread: false, ..config });
    let tx_len = (!config.lengths_unread).then_some(0);
    let slots = config.size as usize;
    let tx_buffers = buffer_region(slots);
    let rx_buffers = buffer_region(slots);
    regions.extend(rx_ring_regions);
    regions.extend([tx_buffers.clone(), rx_buffers.clone()]);
    let device_memory = DeviceMemory::new(regions);
    let mem = &device_memory.mem;
    let tx_queue = device_queue(tx.addresses(), config, mem);
    let rx_queue = device_queue(rx.addresses(), config, mem);
    let state = AtomicU8::new(RUNNING);
    let mut rng = Rng::new(config.seed(0x0100_bbac));
    let max_segments = if config.one_descriptor { 1 } else { 4 };

    let report = thread::scope(|scope| {
        // Created in here: if the driver side panics, unwinding drops the sender and the device
        // thread, woken with an error, returns, so the scope can join it.
        let (bell, doorbell) = mpsc::channel();
        let state = &state;
        let device = scope.spawn(move || loopback_device(mem, tx_queue, rx_queue, doorbell, state));
        let mut tx_free: Vec<u32> = (0..slots as u32).rev().collect();
        let mut rx_free: Vec<u32> = (0..slots as u32).rev().collect();
        let mut rx_layout: Vec<Vec<Segment>> = vec![Vec::new(); slots];
        let mut frame = [0u8; MAX_FRAME];
        let mut done = Vec::with_capacity(64);
        let (mut sent, mut received) = (0u64, 0u64);
        let mut last_progress = Instant::now();
        while received < frames {
            let mut progress = false;

            // Refill the rx ring, at random a little slower than frames are sent on average, so
            // that it also runs dry and the device has to sleep until rx buffers come.
            for _ in 0..rng.range(0, 24) {
                let Some(&slot) = rx_free.last() else { break };
                let segments = rx_segments(&mut rng, &rx_buffers, slot as usize, max_segments);
                let free = rx.free_descriptors();
                // SAFETY: `slot` was free (off `rx_free`) and is touched again only when its
                // chain comes back.
                if unsafe { add(&mut rx, &segments, slot) }.is_err() {
                    assert!(segments.len() > free as usize, "{config:?}: rx add refused with {free} free descriptors");
                    break;
                }
                rx_free.pop();
                rx_layout[slot as usize] = segments;
            }
            if rx.publish() {
                bell.send(Doorbell::Rx).expect("device thread gone");
            }

            // A burst of frames.
            for _ in 0..rng.range(1, 32) {
                let Some(&slot) = tx_free.last() else { break };
                if sent == frames {
                    break;
                }
                let len = frame_len(sent);
                write_frame(sent, &mut frame[..len]);
                let segments = tx_segments(&mut rng, &tx_buffers, slot as usize, &frame[..len], max_segments);
                let free = tx.free_descriptors();
                // SAFETY: as for the receive ring, with `tx_free`; the frame was written before.
                if unsafe { add(&mut tx, &segments, slot) }.is_err() {
                    assert!(segments.len() > free as usize, "{config:?}: tx add refused with {free} free descriptors");
                    break;
                }
                let mut at = 0;
                for segment in &segments {
                    let piece = &frame[at..at + segment.len as usize];
                    mem.write_slice(piece, GuestAddress(segment.addr)).expect("write a tx buffer");
                    at += piece.len();
                }
                tx_free.pop();
                sent += 1;
            }
            if tx.publish() {
                bell.send(Doorbell::Tx).expect("device thread gone");
            }

            // Completions.
            tx.pop_used(64, |slot, len| done.push((slot, len)));
            for (slot, len) in done.drain(..) {
                assert_eq!(len, tx_len, "{config:?}: tx used length (virtio-queue writes 0)");
                tx_free.push(slot);
                progress = true;
            }
            rx.pop_used(64, |slot, len| done.push((slot, len)));
            for (slot, len) in done.drain(..) {
                let expected = frame_len(received);
                assert_eq!(
                    len,
                    Some(expected as u32),
                    "{config:?}: rx used length of frame {received} differs from what virtio-queue wrote"
                );
                let data = gather(mem, &rx_layout[slot as usize], expected);
                let seq = check_frame(&data).unwrap_or_else(|err| panic!("{config:?}: frame {received}: {err}"));
                assert_eq!(seq, received, "{config:?}: frames out of order");
                received += 1;
                rx_free.push(slot);
                progress = true;
            }

            if progress {
                last_progress = Instant::now();
            } else {
                if device.is_finished() {
                    break; // it panicked: the join below reports it
                }
                let stalled = last_progress.elapsed();
                assert!(
                    stalled < Duration::from_secs(30),
                    "{config:?}: no progress for {stalled:?} at frame {received} of {frames} (sent {sent}, device {}, \
                     tx in flight {}, rx in flight {}): a lost wakeup?",
                    match state.load(Ordering::Relaxed) {
                        ASLEEP_ON_TX => "asleep waiting for tx frames",
                        ASLEEP_ON_RX => "asleep waiting for rx buffers",
                        _ => "running",
                    },
                    tx.in_flight(),
                    rx.in_flight()
                );
                thread::yield_now();
            }
        }
        // Stop the device (it may already have returned if it panicked).
        let _ = bell.send(Doorbell::Stop);
        let report = match device.join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        assert_eq!(received, frames, "{config:?}: frames lost");

        // The device uses each rx chain before its tx chain, so the last tx completions may have
        // landed after the last frame arrived: collect them now that the device has stopped.
        tx.pop_used(usize::MAX, |slot, len| done.push((slot, len)));
        for (slot, len) in done.drain(..) {
            assert_eq!(len, tx_len, "{config:?}: tx used length (virtio-queue writes 0)");
            tx_free.push(slot);
        }
        assert_eq!(rx.pop_used(usize::MAX, |_, _| ()), 0, "{config:?}: rx completions beyond the frames sent");

        // Every tx chain came back; the rx chains still in flight are the buffers posted and not
        // used. Draining accounts for every slot, and leaves nothing in flight.
        for (name, ring, free) in [("tx", &mut tx, &tx_free), ("rx", &mut rx, &rx_free)] {
            assert_eq!(
                ring.errors(),
                RingErrors::default(),
                "{config:?}: {name}: a correct device was reported faulty"
            );
            assert!(!ring.is_broken(), "{config:?}: {name} ring broken");
            let in_flight = ring.in_flight() as usize;
            let mut drained = 0;
            // SAFETY: the device thread was joined above.
            unsafe { ring.drain(|_| drained += 1) };
            assert_eq!(drained, in_flight, "{config:?}: {name}: drain");
            assert_eq!(drained + free.len(), slots, "{config:?}: {name}: buffer slots lost");
            assert_eq!(ring.in_flight(), 0, "{config:?}: {name}: chains in flight after drain");
        }
        assert_eq!(tx_free.len(), slots, "{config:?}: tx chains never completed");
        report
    });
    assert_eq!(report.frames, frames, "{config:?}: device frame count");
    for (name, interrupts, addresses) in
        [("tx", report.tx_interrupts, tx.addresses()), ("rx", report.rx_interrupts, rx.addresses())]
    {
        if config.event_idx {
            assert!(interrupts <= frames / 65536 + 1, "{config:?}: {name}: {interrupts} interrupts in poll mode");
        } else {
            assert_ne!(
                avail_flags(mem, addresses) & AVAIL_F_NO_INTERRUPT,
                0,
                "{config:?}: {name}: NO_INTERRUPT not set"
            );
        }
    }
    report
}

#[test]
fn loopback_through_a_virtio_queue_device_thread() {
    let (mut total, mut sleeps_on_rx) = (0, 0);
    for config in configs() {
        // Size 64 runs past 2^16 frames, so the 16-bit indices wrap.
        let frames = if config.size == 64 { 70_000 } else { 20_000 };
        let report = loopback(config, frames);
        assert!(
            report.sleeps > 0 && report.wakeups > 0,
            "{config:?}: the device never slept and was woken: {report:?}"
        );
        total += frames;
        sleeps_on_rx += report.sleeps_on_rx;
    }
    assert!(total >= 200_000);
    // Both wakeup paths were taken: for tx frames, and for rx buffers.
    assert!(sleeps_on_rx > 0, "the device never had to wait for rx buffers");
}

// ------------------------------------------------------------------------------------------
// A device that reports more bytes than the buffers hold.
// ------------------------------------------------------------------------------------------

#[test]
fn used_length_beyond_the_writable_length_is_detected() {
    for (in_order, indirect) in [(false, false), (true, false), (false, true), (true, true)] {
        for event_idx in [false, true] {
            let config =
                Config { size: 64, event_idx, in_order, one_descriptor: false, lengths_unread: false, indirect };
            let (mut ring, mut regions) = split_ring::<u32>(config);
            let buffers = buffer_region(16);
            regions.push(buffers.clone());
            let device_memory = DeviceMemory::new(regions);
            let mem = &device_memory.mem;
            let mut queue = device_queue(ring.addresses(), config, mem);
            let seg = |slot: usize, i: usize, len: u32, writable: bool| Segment {
                addr: slot_addr(&buffers, slot, i),
                len,
                writable,
            };
            // (segments, the used length the device reports, what our driver must hand back)
            let cases: Vec<(Vec<Segment>, u32, Option<u32>)> = vec![
                (vec![seg(0, 0, 100, true)], 100, Some(100)),
                (vec![seg(1, 0, 100, true)], 101, None),
                // A read-only chain's used length is reserved and ignored (2.8.4): taken as 0.
                (vec![seg(2, 0, 50, false)], 1, Some(0)),
                (vec![seg(3, 0, 50, false), seg(3, 1, 60, true), seg(3, 2, 40, true)], 100, Some(100)),
                (vec![seg(4, 0, 60, true), seg(4, 1, 40, true)], 101, None),
                (vec![seg(5, 0, 100, true)], u32::MAX, None),
                (vec![seg(6, 0, 10, false)], 0, Some(0)),
                (
                    vec![seg(7, 0, 10, true), seg(7, 1, 10, true), seg(7, 2, 10, true), seg(7, 3, 10, true)],
                    40,
                    Some(40),
                ),
            ];
            for round in 0..2u32 {
                for (token, (segments, _, _)) in cases.iter().enumerate() {
                    // SAFETY: slot `token` of `buffers` belongs to this chain alone until it is
                    // popped below.
                    unsafe { add(&mut ring, segments, token as u32) }
                        .unwrap_or_else(|_| panic!("{config:?}: add chain {token}"));
                }
                ring.publish();
                for (token, (segments, len, _)) in cases.iter().enumerate() {
                    let chain = queue
                        .pop_descriptor_chain(mem)
                        .unwrap_or_else(|| panic!("{config:?}: chain {token} not found"));
                    let parsed: Vec<Segment> = chain
                        .clone()
                        .map(|d| Segment { addr: d.addr().0, len: d.len(), writable: d.is_write_only() })
                        .collect();
                    assert_eq!(&parsed, segments, "{config:?}: chain {token} as virtio-queue parsed it");
                    queue.add_used(mem, chain.head_index(), *len).expect("add_used");
                }
                let mut completions = Vec::new();
                ring.pop_used(usize::MAX, |token, len| completions.push((token, len)));
                let expected: Vec<(u32, Option<u32>)> =
                    cases.iter().enumerate().map(|(token, (_, _, ok))| (token as u32, *ok)).collect();
                assert_eq!(completions, expected, "{config:?}: round {round}: completions");
                let bad = cases.iter().filter(|(_, _, ok)| ok.is_none()).count() as u64 * (round as u64 + 1);
                assert_eq!(
                    ring.errors(),
                    RingErrors { bad_len: bad, ..RingErrors::default() },
                    "{config:?}: round {round}: every over-long used length counted, nothing else"
                );
                // A bad length is the device's fault for that chain only: the ring carries on.
                assert!(!ring.is_broken(), "{config:?}: a bad used length broke the ring");
                assert_eq!(ring.in_flight(), 0, "{config:?}: chains still in flight");
            }
            let mut left = 0;
            // SAFETY: the device (`queue`, driven from this thread) no longer runs.
            unsafe { ring.drain(|_| left += 1) };
            assert_eq!((left, ring.in_flight()), (0, 0), "{config:?}: nothing may be left after drain");
        }
    }
}
