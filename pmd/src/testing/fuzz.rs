//! Fuzz entry points, one per cargo-fuzz target in `fuzz/fuzz_targets/`. Each takes the fuzzer's
//! bytes, plays with them the part a device (or a vhost-user backend) plays, and asserts the
//! driver's invariants, not only the absence of a crash:
//!
//! - [`packed_used`], [`split_used`]: a ring driven through `add`, `add_each`, `publish`,
//!   `pop_used` and `drain` while the input plays the device: honest completions (the testing
//!   device's own ring code, in order or not, batched or not), and lies written straight into
//!   the memory the device may write (packed: used descriptors' flags, ids and lengths; split:
//!   `used.idx` and used entries' ids and lengths; any bytes). Every token comes back exactly
//!   once, through a completion or `drain`; no length handed out exceeds what its chain could
//!   take; the driver's counts of chains and free descriptors match the harness's; `add`
//!   refuses only when it must; and as long as the device has told no lie, the chains it reads
//!   are the ones posted, completions come back in the device's order with the device's
//!   lengths, none is missed, and exactly the errors the harness provoked are counted.
//! - [`event_suppression`]: the same rings with an honest device that writes arbitrary event
//!   suppression state (packed: the device event structure; split: `used.flags` and
//!   `avail_event`) before publishes; every publish's answer (notify or not) is checked against
//!   the spec's rule ("Event Suppression Structure Format", 2.8.10; "Available Buffer
//!   Notification Suppression", 2.7.7.1).
//! - [`pci_caps`]: 256 bytes of configuration space through the capability walk and the choice
//!   of structures, both checked against a reference written from the spec's text.
//! - [`pci_device`]: BARs of plain memory whose registers hold what the input says, through the
//!   PCI views (device configuration reads, queue set-up, doorbells) and a whole `Port::open`
//!   on top, with a device model that answers per selected queue and feature word.
//! - [`vhost_user`]: a scripted vhost-user backend on a unix socket, every answer (and every
//!   malformed answer or hang-up) taken from the input, through `VhostUserTransport::connect`
//!   and `Port::open`.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::device_ring::{Chain, DeviceRing};
use super::{ring_memory, AddressSpace, RingSpec};
use crate::error::{Error, Result};
use crate::mbuf::{Mempool, MempoolConfig};
use crate::mem::{DmaRegion, HugePages, IovaAllocator};
use crate::net::{Port, PortConfig, RingChoice};
use crate::spec::features::{self, Features};
use crate::spec::net as net_spec;
use crate::spec::packed::{DESC_F_AVAIL, DESC_F_USED};
use crate::spec::pci::{self, CommonCfg};
use crate::spec::split::used;
use crate::spec::status;
use crate::transport::pci::{caps, CapList, ConfigSpace, Mmio, VirtioCap, VirtioLayout, VirtioPci};
use crate::transport::vhost_user::{VhostUserConfig, VhostUserTransport};
use crate::transport::{Notify, QueueAddresses, RingFormat, Transport};
use crate::virtqueue::{Chains, PackedRing, RingErrors, Segment, SplitRing, UsedLen, Virtqueue};

/// The fuzzer's bytes, read front to back; past the end every read is 0.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        first
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// Up to `n` bytes (fewer at the end).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// One of `choices`.
    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.u8()) % choices.len()]
    }
}

/// The address in this process of device address `iova` inside `region`.
fn ptr_of(region: &DmaRegion, iova: u64) -> *mut u8 {
    region.as_ptr().wrapping_add((iova - region.iova()) as usize)
}

// ---------------------------------------------------------------------------------------------
// Rings
// ---------------------------------------------------------------------------------------------

/// Each token's buffers sit in its own slot of the data region, so that a chain the device reads
/// tells which token it carries.
const DATA_SLOT: usize = 64;
const DATA_SLOTS: usize = 1024;

/// What the harness knows of a chain the driver holds.
struct Posted {
    writable_len: u32,
    descs: u16,
}

/// A chain the honest device took and has not completed yet.
struct Taken {
    token: u32,
    id: u16,
    descs: u16,
}

/// How a ring run's device behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Device {
    /// Honest completions and lies.
    Lying,
    /// Honest completions and arbitrary event suppression state.
    Suppressing,
}

/// One ring, the device side of it, and everything the harness expects of the driver.
struct RingRun<R> {
    ring: R,
    format: RingFormat,
    size: u16,
    in_order: bool,
    event_idx: bool,
    /// A split transmit ring that reads no used entry (`without_used_lengths`).
    lengths_unread: bool,
    max_segments: u8,
    device: DeviceRing,
    space: AddressSpace,
    data: Arc<DmaRegion>,
    /// What the device may write: packed, the descriptor ring; split, the used ring.
    writable: (*mut u8, usize),
    /// The device area: packed, the device event suppression structure; split, the used ring.
    device_area: *mut u8,
    posted: BTreeMap<u32, Posted>,
    taken: VecDeque<Taken>,
    /// While honest: what `pop_used` must hand out next, in order, and whether the driver must
    /// count a bad length for it.
    expected: VecDeque<(u32, UsedLen, bool)>,
    /// While honest: the errors the driver must have counted.
    errors: RingErrors,
    /// The device has told no lie yet.
    honest: bool,
    next_token: u32,
    /// Descriptors (packed) or chains (split) added, and as many at the last publish.
    added: u64,
    published: u64,
}

impl<R: Virtqueue<u32>> RingRun<R> {
    fn segment(&self, token: u32, len: u32, writable: bool) -> Segment {
        let slot = (token as usize % DATA_SLOTS) * DATA_SLOT;
        Segment { addr: self.data.iova() + slot as u64, len, writable }
    }

    /// The token whose data slot `ptr` is in.
    fn token_at(&self, ptr: *mut u8) -> Option<u32> {
        let slot = (ptr as usize).checked_sub(self.data.as_ptr() as usize)? / DATA_SLOT;
        self.posted.keys().copied().find(|t| *t as usize % DATA_SLOTS == slot)
    }

    fn units(&self, descs: u16) -> u64 {
        match self.format {
            RingFormat::Packed => u64::from(descs),
            RingFormat::Split => 1,
        }
    }

    /// The length the driver must hand out for a chain completed with `len` (`None`: implicitly,
    /// inside an in-order batch).
    fn handed_out(&self, writable_len: u32, len: Option<u32>) -> UsedLen {
        if self.lengths_unread {
            None
        } else if writable_len == 0 {
            Some(0)
        } else {
            len
        }
    }

    fn step(&mut self, input: &mut Input<'_>, device: Device) {
        let ops: &[u8] = match device {
            Device::Lying => &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            Device::Suppressing => &[0, 1, 2, 2, 3, 4, 5, 5, 10, 10],
        };
        match input.pick(ops) {
            0 => self.add(input),
            1 => self.add_each(input),
            2 => self.publish(),
            3 => self.pop(input),
            4 => self.fetch(input),
            5 => self.complete(input, false),
            6 => self.complete(input, true),
            7 => self.scribble(input),
            8 => {
                self.honest = false;
                self.device.push_used_raw(input.u32(), input.u32());
            }
            9 => self.raw_used(input),
            _ => self.suppress(input),
        }
        self.check_counts();
    }

    fn add(&mut self, input: &mut Input<'_>) {
        let count = 1 + input.u8() % self.max_segments;
        let writable = input.u8();
        let token = self.next_token;
        let chain: Vec<Segment> =
            (0..count).map(|i| self.segment(token, u32::from(input.u8() % 65), writable >> i & 1 != 0)).collect();
        let writable_len = chain.iter().filter(|s| s.writable).map(|s| s.len).sum();
        let free = self.ring.free_descriptors();
        // SAFETY: the segments lie in this run's own data region, which nothing else uses; the
        // device side (the harness's DeviceRing) only translates their addresses, never touches
        // the bytes.
        match unsafe { self.ring.add(&chain, token) } {
            Ok(()) => {
                self.posted.insert(token, Posted { writable_len, descs: u16::from(count) });
                self.next_token += 1;
                self.added += self.units(u16::from(count));
            }
            Err(back) => {
                assert_eq!(back, token, "add gave back another token");
                assert!(
                    self.ring.is_broken() || usize::from(count) > usize::from(free),
                    "add refused a chain of {count} with {free} descriptors free"
                );
            }
        }
    }

    fn add_each(&mut self, input: &mut Input<'_>) {
        let wanted = u32::from(input.u8() % 9);
        let (len, writable) = (u32::from(input.u8() % 65), input.bool());
        let free = self.ring.free_descriptors();
        let first = self.next_token;
        let mut yielded = 0;
        let chains: Vec<(Segment, u32)> =
            (first..first + wanted).map(|token| (self.segment(token, len, writable), token)).collect();
        // SAFETY: as in `add`: the data region is this run's, and the device never touches it.
        let added = unsafe { self.ring.add_each(chains.into_iter().inspect(|_| yielded += 1)) };
        assert_eq!(added, yielded, "add_each took tokens it did not add");
        let fits = if self.ring.is_broken() { 0 } else { wanted.min(u32::from(free)) as usize };
        assert_eq!(added, fits, "add_each added {added} of {wanted} with {free} descriptors free");
        for token in first..first + added as u32 {
            self.posted.insert(token, Posted { writable_len: if writable { len } else { 0 }, descs: 1 });
        }
        self.next_token += added as u32;
        self.added += added as u64;
    }

    /// What the spec says `publish` must answer now, from the device's suppression state;
    /// `None` where it leaves the choice to the driver (reserved flags, an offset past the ring).
    fn expected_kick(&self) -> Option<bool> {
        if self.added == self.published {
            return Some(false);
        }
        let newly = self.published..self.added;
        let read = |offset: usize| {
            // SAFETY: `device_area` is the ring's device area (4 bytes packed, the used ring
            // split) and `offset + 2` is inside it; the harness is the only other user.
            u16::from_le(unsafe { self.device_area.add(offset).cast::<u16>().read_volatile() })
        };
        match self.format {
            RingFormat::Packed => {
                let (off_wrap, flags) = (read(0), read(2));
                let (offset, wrap) = (u64::from(off_wrap & 0x7fff), off_wrap & 0x8000 != 0);
                let size = u64::from(self.size);
                if self.added - self.published > size {
                    // Only a device that completed chains it was never given makes the driver
                    // add more than a ring between publishes; then nothing is defined.
                    return None;
                }
                match flags & 3 {
                    0 => Some(true),
                    1 => Some(false),
                    // The wrap counter is 1 in the first lap.
                    2 if offset < size => {
                        Some(newly.into_iter().any(|n| n % size == offset && ((n / size) % 2 == 0) == wrap))
                    }
                    _ => None,
                }
            }
            RingFormat::Split if self.event_idx => {
                let event = read(used::avail_event(self.size));
                Some(newly.into_iter().any(|n| n as u16 == event))
            }
            RingFormat::Split => Some(read(used::FLAGS) & crate::spec::split::USED_F_NO_NOTIFY == 0),
        }
    }

    fn publish(&mut self) {
        let expected = self.expected_kick();
        let kick = self.ring.publish();
        if let Some(expected) = expected {
            assert_eq!(kick, expected, "publish of units {}..{}", self.published, self.added);
        }
        self.published = self.added;
    }

    fn pop(&mut self, input: &mut Input<'_>) {
        let max = usize::from(input.u8() % 17);
        let ready = self.expected.len();
        let mut handed = 0;
        let done = self.ring.pop_used(max, |token, len| {
            handed += 1;
            let posted = self.posted.remove(&token).expect("a token handed out twice, or never added");
            if let Some(len) = len {
                assert!(len <= posted.writable_len, "length {len} beyond the chain's {}", posted.writable_len);
                assert!(posted.writable_len != 0 || len == 0, "a read-only chain with a length");
            }
            if self.honest {
                let (expected, expected_len, bad_len) =
                    self.expected.pop_front().expect("a completion the device did not make");
                assert_eq!(
                    (token, len),
                    (expected, expected_len),
                    "completion out of the device's order, or its length"
                );
                self.errors.bad_len += u64::from(bad_len);
            }
            self.taken.retain(|t| t.token != token);
        });
        assert_eq!(done, handed, "pop_used's count");
        assert!(done <= max);
        if self.honest {
            assert_eq!(done, max.min(ready), "pop_used missed completions the device made");
        }
    }

    /// The device takes up to a few available chains.
    fn fetch(&mut self, input: &mut Input<'_>) {
        let mut chain = Chain::default();
        for _ in 0..1 + input.u8() % 8 {
            match self.device.pop_avail(&self.space, &mut chain) {
                Ok(true) => {
                    let token = chain.segments.first().and_then(|s| self.token_at(s.ptr));
                    if self.honest {
                        let token = token.expect("the device read a chain the driver did not post");
                        let posted = &self.posted[&token];
                        assert_eq!(chain.descs, posted.descs, "the chain's descriptors");
                        assert_eq!(chain.writable_len(), posted.writable_len, "the chain's writable bytes");
                    }
                    if let Some(token) = token {
                        self.taken.push_back(Taken { token, id: chain.id, descs: chain.descs });
                    }
                }
                Ok(false) => break,
                Err(fault) => {
                    assert!(!self.honest, "the driver made a malformed chain available: {fault:?}");
                    break;
                }
            }
        }
    }

    /// The device completes chains it took: in order, a batch from the oldest (one used entry
    /// for all of them); otherwise any one. `lie`: with a length beyond the chain's.
    fn complete(&mut self, input: &mut Input<'_>, lie: bool) {
        if self.taken.is_empty() {
            return;
        }
        let pick = usize::from(input.u8());
        let len_choice = input.u32();
        let batch = if self.in_order && !lie { 1 + pick % self.taken.len().min(8) } else { 1 };
        let chains: Vec<Taken> = if self.in_order {
            self.taken.drain(..batch).collect()
        } else {
            self.taken.remove(pick % self.taken.len()).into_iter().collect()
        };
        let last = chains.last().expect("one chain at least");
        let writable_len = self.posted.get(&last.token).map_or(0, |p| p.writable_len);
        let len = if lie {
            if writable_len == 0 || writable_len == u32::MAX {
                // Nothing to lie about; a read-only chain's length is ignored.
                self.taken.push_front(chains.into_iter().next().expect("one chain"));
                return;
            }
            writable_len + 1 + len_choice % 1000
        } else if writable_len == 0 {
            len_choice
        } else {
            len_choice % (writable_len + 1)
        };
        let skip = chains.iter().map(|c| c.descs).sum();
        self.device.push_used(last.id, len, skip, batch as u16);
        for (i, chain) in chains.iter().enumerate() {
            let wl = self.posted.get(&chain.token).map_or(0, |p| p.writable_len);
            let reported = (i + 1 == chains.len()).then_some(len);
            let handed = if lie { None } else { self.handed_out(wl, reported) };
            self.expected.push_back((chain.token, handed, lie && !self.lengths_unread));
        }
    }

    /// Arbitrary bytes anywhere the device may write.
    fn scribble(&mut self, input: &mut Input<'_>) {
        self.honest = false;
        let (base, len) = self.writable;
        let offset = usize::from(input.u16());
        let count = 1 + usize::from(input.u8() % 16);
        for (i, byte) in input.bytes(count).iter().enumerate() {
            // SAFETY: `(offset + i) % len < len`: inside the area the device may write, which only
            // the driver (through volatile and atomic accesses) and this harness touch.
            unsafe { base.add((offset + i) % len).write_volatile(*byte) };
        }
    }

    /// A lie with the right shape: a used descriptor's id, length and flags at any slot
    /// (packed), or a `used.idx` moved by any amount (split).
    fn raw_used(&mut self, input: &mut Input<'_>) {
        self.honest = false;
        let base = self.writable.0;
        match self.format {
            RingFormat::Packed => {
                let slot = usize::from(input.u16() % self.size);
                let (id, len) = (input.u16(), input.u32());
                let flags = match input.u8() % 4 {
                    0 => 0,
                    1 => DESC_F_AVAIL | DESC_F_USED,
                    2 => DESC_F_AVAIL,
                    _ => input.u16(),
                };
                // SAFETY: `slot < size`: a descriptor of the ring (16 bytes, 16-aligned), which
                // the device may write; its flags are stored last with release, as a device does.
                unsafe {
                    let desc = base.add(16 * slot);
                    desc.add(8).cast::<u32>().write_volatile(len.to_le());
                    desc.add(12).cast::<u16>().write_volatile(id.to_le());
                    AtomicU16::from_ptr(desc.add(14).cast()).store(flags.to_le(), Ordering::Release);
                }
            }
            RingFormat::Split => {
                // SAFETY: `used.idx` is inside the used ring, 2-aligned; the driver reads it
                // atomically.
                let idx = unsafe { AtomicU16::from_ptr(base.add(used::IDX).cast()) };
                let moved = u16::from_le(idx.load(Ordering::Relaxed)).wrapping_add(input.u16() % 8);
                idx.store(moved.wrapping_sub(input.u16() % 4).to_le(), Ordering::Release);
            }
        }
    }

    /// The device writes its event suppression state: near the driver's position, or anything.
    fn suppress(&mut self, input: &mut Input<'_>) {
        let near = self.published + u64::from(input.u8()) % (u64::from(self.size) + 1);
        let raw = input.bool();
        let write = |offset: usize, value: u16| {
            // SAFETY: `offset + 2` is inside the device area (4 bytes packed, the used ring
            // split), which the device may write and the driver reads atomically.
            unsafe { AtomicU16::from_ptr(self.device_area.add(offset).cast()).store(value.to_le(), Ordering::SeqCst) }
        };
        match self.format {
            RingFormat::Packed => {
                let size = u64::from(self.size);
                let wrap = if (near / size) % 2 == 0 { 0x8000 } else { 0 };
                let off_wrap = if raw { input.u16() } else { (near % size) as u16 | wrap };
                write(0, off_wrap);
                write(2, if raw { input.u16() } else { u16::from(input.u8() % 3) });
            }
            RingFormat::Split => {
                write(used::FLAGS, if raw { input.u16() } else { u16::from(input.u8() % 2) });
                write(used::avail_event(self.size), if raw { input.u16() } else { near as u16 });
            }
        }
    }

    fn check_counts(&self) {
        assert_eq!(usize::from(self.ring.in_flight()), self.posted.len(), "chains in flight");
        let descs: u32 = self.posted.values().map(|p| u32::from(p.descs)).sum();
        assert_eq!(u32::from(self.ring.free_descriptors()) + descs, u32::from(self.size), "free descriptors");
        if self.honest {
            assert!(!self.ring.is_broken(), "an honest device broke the ring");
            assert_eq!(self.ring.errors(), self.errors, "errors counted for an honest device");
        }
    }

    fn finish(mut self) {
        let mut posted = std::mem::take(&mut self.posted);
        // SAFETY: the device is the harness itself, which stopped with the input; the tokens are
        // plain numbers.
        unsafe {
            self.ring.drain(|token| {
                posted.remove(&token).expect("drain handed out a token twice, or one never added");
            })
        };
        assert!(posted.is_empty(), "tokens lost: {:?}", posted.keys().collect::<Vec<_>>());
    }
}

/// A region the rings' chains point into (the device translates, never touches, them).
fn data_region() -> Arc<DmaRegion> {
    Arc::new(
        DmaRegion::new("fuzz-data", DATA_SLOT * DATA_SLOTS, HugePages::Never, &IovaAllocator::identity())
            .expect("fuzz data region"),
    )
}

fn run_ring<R: Virtqueue<u32>>(mut run: RingRun<R>, input: &mut Input<'_>, device: Device) {
    while !input.is_empty() {
        run.step(input, device);
    }
    run.finish();
}

fn packed_run(input: &mut Input<'_>, device: Device) {
    let size = input.pick(&[1u16, 2, 3, 4, 5, 8, 16, 64]);
    let (in_order, one_descriptor) = (input.bool(), input.bool());
    let spec = RingSpec { format: RingFormat::Packed, size, in_order, event_idx: false };
    let (memory, region) = ring_memory(spec).expect("ring memory");
    let addresses = memory.addresses();
    let chains = if one_descriptor { Chains::OneDescriptor } else { Chains::Any };
    let ring = PackedRing::<u32>::new(memory, in_order, chains).expect("packed ring");
    let data = data_region();
    let space = AddressSpace::new(vec![region.clone(), data.clone()]);
    let run = RingRun {
        ring,
        format: RingFormat::Packed,
        size,
        in_order,
        event_idx: false,
        lengths_unread: false,
        max_segments: if one_descriptor { 1 } else { 4 },
        device: DeviceRing::new(RingFormat::Packed, size, addresses, &space, false).expect("device ring"),
        writable: (ptr_of(&region, addresses.desc), 16 * usize::from(size)),
        device_area: ptr_of(&region, addresses.device),
        space,
        data,
        posted: BTreeMap::new(),
        taken: VecDeque::new(),
        expected: VecDeque::new(),
        errors: RingErrors::default(),
        honest: true,
        next_token: 0,
        added: 0,
        published: 0,
    };
    run_ring(run, input, device);
}

fn split_run(input: &mut Input<'_>, device: Device) {
    let size = input.pick(&[1u16, 2, 4, 8, 16, 64]);
    let (in_order, event_idx, one_descriptor, unread) = (input.bool(), input.bool(), input.bool(), input.bool());
    let spec = RingSpec { format: RingFormat::Split, size, in_order, event_idx };
    let (memory, region) = ring_memory(spec).expect("ring memory");
    let addresses = memory.addresses();
    let chains = match (one_descriptor, unread) {
        (true, true) => Chains::OneDescriptorNoLengths,
        (true, false) => Chains::OneDescriptor,
        (false, _) => Chains::Any,
    };
    let ring = SplitRing::<u32>::new(memory, event_idx, in_order, chains).expect("split ring");
    let data = data_region();
    let space = AddressSpace::new(vec![region.clone(), data.clone()]);
    let run = RingRun {
        ring,
        format: RingFormat::Split,
        size,
        in_order,
        event_idx,
        lengths_unread: unread && one_descriptor && in_order,
        max_segments: if one_descriptor { 1 } else { 4 },
        device: DeviceRing::new(RingFormat::Split, size, addresses, &space, event_idx).expect("device ring"),
        writable: (ptr_of(&region, addresses.device), used::bytes(size)),
        device_area: ptr_of(&region, addresses.device),
        space,
        data,
        posted: BTreeMap::new(),
        taken: VecDeque::new(),
        expected: VecDeque::new(),
        errors: RingErrors::default(),
        honest: true,
        next_token: 0,
        added: 0,
        published: 0,
    };
    run_ring(run, input, device);
}

/// A packed ring against a device that writes used descriptors (flags, ids, lengths) honestly
/// or not. See the [module docs](self).
pub fn packed_used(data: &[u8]) {
    packed_run(&mut Input(data), Device::Lying);
}

/// A split ring against a device that writes `used.idx` and used entries honestly or not. See
/// the [module docs](self).
pub fn split_used(data: &[u8]) {
    split_run(&mut Input(data), Device::Lying);
}

/// Either ring format against an honest device whose event suppression state is arbitrary;
/// every publish's answer is checked. See the [module docs](self).
pub fn event_suppression(data: &[u8]) {
    let mut input = Input(data);
    if input.bool() {
        packed_run(&mut input, Device::Suppressing);
    } else {
        split_run(&mut input, Device::Suppressing);
    }
}

// ---------------------------------------------------------------------------------------------
// PCI capabilities and structures
// ---------------------------------------------------------------------------------------------

/// 256 bytes of configuration space; the walk only reads, so writes are refused.
struct ConfigBytes([u8; 256]);

impl ConfigSpace for ConfigBytes {
    fn read(&self, offset: u16, buf: &mut [u8]) -> Result<()> {
        let start = usize::from(offset);
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or_else(|| Error::InvalidConfig(format!("config read past the end at {offset:#x}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, offset: u16, _data: &[u8]) -> Result<()> {
        Err(Error::InvalidConfig(format!("config write at {offset:#x}")))
    }
}

/// The positions of the capabilities in `bytes`, in list order, from the spec's rules alone
/// ("Capabilities List" of PCI; the low two bits of a pointer are reserved); `None` when the list
/// cannot be followed (it points into the header, loops, or holds more than fit).
fn reference_walk(bytes: &[u8; 256]) -> Option<Vec<u8>> {
    let mut positions = Vec::new();
    if u16::from_le_bytes([bytes[6], bytes[7]]) & pci::config::STATUS_CAPABILITIES_LIST == 0 {
        return Some(positions);
    }
    let mut next = bytes[0x34] & !3;
    while next != 0 {
        if next < 0x40 || positions.contains(&next) || positions.len() == caps::MAX_CAPABILITIES {
            return None;
        }
        positions.push(next);
        next = bytes[usize::from(next) + 1] & !3;
    }
    Some(positions)
}

/// The capability list at `positions`: a vendor capability long enough for `struct
/// virtio_pci_cap` (`virtio_pci_notify_cap` for a notify one) and inside the space is a virtio
/// one; shorter ones are dropped; everything else is another capability.
fn reference_list(bytes: &[u8; 256], positions: &[u8]) -> CapList {
    let le32 = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut list = CapList::default();
    for &position in positions {
        let at = usize::from(position);
        if bytes[at] != pci::PCI_CAP_ID_VNDR {
            list.other.push(crate::transport::pci::OtherCap { position, cap_id: bytes[at] });
            continue;
        }
        let (cap_len, cfg_type) = (usize::from(bytes[at + 2]), bytes[at + 3]);
        let notify = cfg_type == pci::CAP_NOTIFY_CFG;
        if cap_len >= if notify { 20 } else { 16 } && at + cap_len <= 256 {
            list.virtio.push(VirtioCap {
                position,
                cfg_type,
                bar: bytes[at + 4],
                id: bytes[at + 5],
                offset: le32(at + 8),
                length: le32(at + 12),
                notify_off_multiplier: if notify { le32(at + 16) } else { 0 },
            });
        }
    }
    list
}

/// The structures a driver must choose from `list` ("Virtio Structure PCI Capabilities": the
/// first usable capability of each type; the alignment and sizes the structures must have).
fn reference_layout(list: &CapList, usable: impl Fn(&VirtioCap) -> bool) -> std::result::Result<VirtioLayout, &str> {
    if !list.virtio.iter().any(|c| (pci::CAP_COMMON_CFG..=pci::CAP_DEVICE_CFG).contains(&c.cfg_type)) {
        return Err("legacy");
    }
    let pick = |cfg_type| list.virtio.iter().find(|c| c.cfg_type == cfg_type && c.bar <= 5 && usable(c)).copied();
    let (Some(common), Some(notify)) = (pick(pci::CAP_COMMON_CFG), pick(pci::CAP_NOTIFY_CFG)) else {
        return Err("malformed");
    };
    let device = pick(pci::CAP_DEVICE_CFG);
    if common.offset % 4 != 0
        || notify.offset % 2 != 0
        || device.is_some_and(|d| d.offset % 4 != 0)
        || (common.length as usize) < pci::COMMON_CFG_MIN_LEN
        || notify.length < 2
    {
        return Err("malformed");
    }
    Ok(VirtioLayout { common, notify, isr: pick(pci::CAP_ISR_CFG), device })
}

/// 256 bytes of configuration space (then a byte saying which BARs can be mapped) through the
/// capability walk and the choice of structures, both checked against a reference. See the
/// [module docs](self).
pub fn pci_caps(data: &[u8]) {
    let mut input = Input(data);
    let mut bytes = [0u8; 256];
    let space = input.bytes(256);
    bytes[..space.len()].copy_from_slice(space);
    let mappable = input.u8();
    let list = match (caps::walk(&ConfigBytes(bytes), "fuzz"), reference_walk(&bytes)) {
        (Ok(list), Some(positions)) => {
            assert_eq!(list, reference_list(&bytes, &positions), "the capabilities walked");
            list
        }
        (Err(Error::BadPciCapabilities { .. }), None) => return,
        (walked, reference) => panic!("walk: {walked:?}; reference positions: {reference:?}"),
    };
    let usable = |c: &VirtioCap| c.bar < 8 && mappable >> c.bar & 1 != 0;
    match (list.layout("fuzz", usable), reference_layout(&list, usable)) {
        (Ok(layout), Ok(expected)) => {
            assert_eq!(layout, expected, "the structures chosen");
            let bars = layout.bars();
            assert!(bars.windows(2).all(|w| w[0] < w[1]) && bars.iter().all(|b| *b <= 5), "BARs {bars:?}");
        }
        (Err(Error::LegacyOnlyDevice { .. }), Err("legacy"))
        | (Err(Error::BadPciCapabilities { .. }), Err("malformed")) => {}
        (layout, expected) => panic!("layout: {layout:?}; reference: {expected:?}"),
    }
}

macro_rules! off {
    ($field:ident) => {
        core::mem::offset_of!(CommonCfg, $field)
    };
}

/// Plain memory posing as a BAR.
fn bar_memory(len: usize) -> Mmio {
    let words: Arc<Vec<AtomicU64>> = Arc::new((0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect());
    let base = NonNull::new(words.as_ptr().cast_mut().cast::<u8>()).expect("a vector's pointer is not null");
    // SAFETY: the words are 8-aligned, at least `len` bytes, live as long as the owner given
    // here, and are atomics (interior mutability), so writes through a pointer derived from a
    // shared reference are allowed; nothing makes a reference to them as bytes.
    unsafe { Mmio::new(base, len, words) }
}

/// Writes `bytes` at `offset` of `bar`, the part inside it.
fn poke(bar: &Mmio, offset: usize, bytes: &[u8]) {
    for (i, byte) in bytes.iter().enumerate() {
        if bar.fits(offset + i, 1) {
            // SAFETY: `fits` checked the byte is inside the window.
            unsafe { bar.write_u8(offset + i, *byte) };
        }
    }
}

/// The device behind plain-memory BARs: between the driver's calls it puts into the common
/// configuration what a device shows for the selected feature word or queue.
struct PciModel {
    /// The BAR holding the common configuration, and its offset there.
    common: (Mmio, usize),
    features: [u32; 2],
    max_size: [u16; 2],
    notify_off: [u16; 2],
    behind_iommu: bool,
    refuse_features: bool,
    needs_reset: bool,
}

impl PciModel {
    fn set(&self, field: usize, bytes: &[u8]) {
        poke(&self.common.0, self.common.1 + field, bytes);
    }

    /// What queue `queue` shows once selected: its maximum size, disabled, its notify offset.
    fn show_queue(&self, queue: u16) {
        let i = usize::from(queue);
        self.set(off!(queue_size), &self.max_size.get(i).copied().unwrap_or(0).to_le_bytes());
        self.set(off!(queue_enable), &0u16.to_le_bytes());
        self.set(off!(queue_notify_off), &self.notify_off.get(i).copied().unwrap_or(0).to_le_bytes());
    }

    fn offered(&self) -> Features {
        Features(u64::from(self.features[0]) | u64::from(self.features[1]) << 32)
    }
}

/// A [`Transport`] over [`VirtioPci`] and the model, for `Port::open`.
struct PciTransport {
    pci: VirtioPci,
    model: PciModel,
}

impl Transport for PciTransport {
    fn name(&self) -> &str {
        "fuzz-pci"
    }

    fn requires_access_platform(&self) -> bool {
        self.model.behind_iommu
    }

    fn reset(&mut self) -> Result<()> {
        self.pci.reset()
    }

    fn status(&mut self) -> Result<u8> {
        Ok(self.pci.status())
    }

    fn set_status(&mut self, value: u8) -> Result<()> {
        self.pci.set_status(value);
        let mut shown = value;
        if self.model.refuse_features {
            shown &= !status::FEATURES_OK;
        }
        if self.model.needs_reset && value & status::DRIVER_OK != 0 {
            shown |= status::DEVICE_NEEDS_RESET;
        }
        self.model.set(off!(device_status), &[shown]);
        Ok(())
    }

    fn device_features(&mut self) -> Result<Features> {
        let mut value = 0;
        for word in 0..2u32 {
            self.model.set(off!(device_feature), &self.model.features[word as usize].to_le_bytes());
            self.pci.common().set_device_feature_select(word);
            value |= u64::from(self.pci.common().device_feature()) << (32 * word);
        }
        Ok(Features(value))
    }

    fn set_driver_features(&mut self, features: Features) -> Result<()> {
        self.pci.set_driver_features(features);
        Ok(())
    }

    fn num_queues(&mut self) -> Result<u16> {
        Ok(self.pci.num_queues())
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16> {
        self.model.show_queue(queue);
        Ok(self.pci.max_queue_size(queue))
    }

    fn read_device_config(&mut self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.pci.read_device_config(offset, buf)
    }

    fn map_dma(&mut self, _region: &Arc<DmaRegion>) -> Result<()> {
        Ok(())
    }

    unsafe fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        format: RingFormat,
        addresses: QueueAddresses,
    ) -> Result<Box<dyn Notify>> {
        self.model.show_queue(queue);
        // SAFETY: the "device" is BARs of plain memory: nothing ever reads or writes the
        // addresses given, so any will do.
        Ok(Box::new(unsafe { self.pci.setup_queue(queue, size, format, addresses) }?))
    }
}

/// One capability of the fuzzed layout.
fn fuzz_cap(input: &mut Input<'_>, cfg_type: u8) -> VirtioCap {
    let bar = input.pick(&[4, 4, 0, 2, 7]);
    let offset = u32::from(input.u16()) & if input.bool() { !3 } else { !0 };
    let length = if input.bool() { u32::from(input.u16()) } else { input.u32() };
    let notify_off_multiplier = if cfg_type == pci::CAP_NOTIFY_CFG { input.pick(&[0, 2, 4, 1, 3]) } else { 0 };
    VirtioCap { position: 0, cfg_type, bar, id: 0, offset, length, notify_off_multiplier }
}

/// The window a structure gets: as long as its capability says, clipped to its BAR.
fn window_len(bar: &Mmio, cap: &VirtioCap) -> usize {
    (cap.length as usize).min(bar.len().saturating_sub(cap.offset as usize))
}

/// A pool shared by the PCI runs, which never leak: every buffer is back after each run.
fn pci_pool() -> &'static Mempool {
    static POOL: OnceLock<Mempool> = OnceLock::new();
    POOL.get_or_init(|| small_pool(256))
}

fn small_pool(count: u32) -> Mempool {
    let config = MempoolConfig {
        name: "fuzz-pool".into(),
        count,
        data_room: 64,
        cache_size: 0,
        huge_pages: HugePages::Never,
        ..Default::default()
    };
    Mempool::new(&config, &IovaAllocator::identity()).expect("fuzz pool")
}

/// What a port must show, whatever the device said: only features offered, VERSION_1, a ring
/// size the device allows, and the configuration fields the negotiated features make valid.
fn check_port(port: &Port, offered: Features, config: &PortConfig, max_size: u16) {
    let features = port.features();
    assert_eq!(features.minus(offered), Features::EMPTY, "features {features:?} not offered ({offered:?})");
    assert!(features.has(features::VERSION_1));
    let size = port.ring_size();
    assert!(size >= 1 && size <= max_size, "ring size {size} (device maximum {max_size})");
    assert!(config.ring_size.is_none_or(|wanted| wanted == size));
    match port.ring_format() {
        RingFormat::Packed => assert!(features.has(features::RING_PACKED) && config.ring != RingChoice::Split),
        RingFormat::Split => {
            assert!(size.is_power_of_two() && config.ring != RingChoice::Packed && !features.has(features::RING_PACKED))
        }
    }
    assert_eq!(port.mac().is_some(), features.has(net_spec::F_MAC));
    assert_eq!(port.mtu().is_some(), features.has(net_spec::F_MTU));
    assert_eq!(port.queue_pairs(), config.queue_pairs);
}

/// BARs of plain memory holding what the input says, a layout pointing anywhere in them, the
/// PCI views over both (device configuration reads, one queue set-up and its doorbell, each
/// checked against the spec's bounds), then `Port::open` on a device model answering from the
/// input. See the [module docs](self).
pub fn pci_device(data: &[u8]) {
    let mut input = Input(data);
    let bars = [bar_memory(0x1000 << (input.u8() % 3)), bar_memory(0x1000 << (input.u8() % 3))];
    let bar_of = |n: u8| match n {
        0 => Some(bars[0].clone()),
        4 => Some(bars[1].clone()),
        _ => None,
    };
    let layout = VirtioLayout {
        common: fuzz_cap(&mut input, pci::CAP_COMMON_CFG),
        notify: fuzz_cap(&mut input, pci::CAP_NOTIFY_CFG),
        isr: input.bool().then(|| fuzz_cap(&mut input, pci::CAP_ISR_CFG)),
        device: input.bool().then(|| fuzz_cap(&mut input, pci::CAP_DEVICE_CFG)),
    };
    let Ok(pci) = VirtioPci::new("fuzz", &layout, bar_of) else { return };
    // Every structure got a window inside a mapped BAR.
    let common_bar = bar_of(layout.common.bar).expect("the common configuration's BAR");
    poke(&common_bar, layout.common.offset as usize, input.bytes(pci::COMMON_CFG_MIN_LEN));
    let device_window = layout.device.map(|cap| {
        let bar = bar_of(cap.bar).expect("the device configuration's BAR");
        poke(&bar, cap.offset as usize, input.bytes(16));
        (window_len(&bar, &cap), bar, cap.offset as usize)
    });
    let model = PciModel {
        common: (common_bar, layout.common.offset as usize),
        features: [input.u32(), input.u32()],
        max_size: [input.u16(), input.u16()],
        notify_off: [input.u16() % 0x400, input.u16() % 0x400],
        behind_iommu: input.bool(),
        refuse_features: input.u8() % 8 == 0,
        needs_reset: input.u8() % 8 == 0,
    };

    // A device configuration read succeeds exactly when it is inside the structure, with the
    // structure's bytes.
    let (offset, len) = (usize::from(input.u8() % 24), input.pick(&[1usize, 2, 4, 6, 8, 3]));
    let mut buf = vec![0u8; len];
    let read = pci.read_device_config(offset, &mut buf);
    match &device_window {
        Some((window, bar, base)) if offset + len <= *window => {
            assert!(read.is_ok(), "read of {len} at {offset} inside a {window}-byte structure: {read:?}");
            let expected: Vec<u8> = (0..len).map(|i| bar.get_u8(base + offset + i).expect("inside")).collect();
            assert_eq!(buf, expected, "device configuration bytes");
        }
        _ => assert!(read.is_err(), "read of {len} at {offset} outside the device configuration"),
    }

    // Queue set-up succeeds exactly when the spec allows it, and the doorbell lands at
    // `queue_notify_off * notify_off_multiplier` in the notification structure.
    let queue = u16::from(input.u8() % 3);
    let (size, format) = (input.u16() % 0x1000, if input.bool() { RingFormat::Packed } else { RingFormat::Split });
    let addresses = QueueAddresses { desc: input.u64(), driver: input.u64(), device: input.u64() };
    model.show_queue(queue);
    let max = model.max_size.get(usize::from(queue)).copied().unwrap_or(0);
    let notify_bar = bar_of(layout.notify.bar).expect("the notification structure's BAR");
    let doorbell = u64::from(model.notify_off.get(usize::from(queue)).copied().unwrap_or(0))
        * u64::from(layout.notify.notify_off_multiplier);
    let allowed = max != 0
        && size != 0
        && size <= max
        && (format == RingFormat::Packed || size.is_power_of_two())
        && doorbell + 2 <= window_len(&notify_bar, &layout.notify) as u64
        && (u64::from(layout.notify.offset) + doorbell) % 2 == 0;
    // SAFETY: as in `PciTransport::setup_queue`: plain-memory BARs never use the addresses.
    match unsafe { pci.setup_queue(queue, size, format, addresses) } {
        Ok(notifier) => {
            assert!(allowed, "queue {queue} of {size} set up (maximum {max}, doorbell at {doorbell})");
            notifier.notify();
            let at = layout.notify.offset as usize + doorbell as usize;
            assert_eq!(notify_bar.get_u16(at), Some(queue), "the doorbell write");
        }
        Err(err) => assert!(!allowed, "queue {queue} of {size} refused: {err}"),
    }
    pci.reset().expect("plain memory resets at once");

    let config = PortConfig {
        ring: input.pick(&[RingChoice::Auto, RingChoice::Packed, RingChoice::Split]),
        ring_size: input.bool().then(|| input.pick(&[1, 2, 3, 4, 8, 16, 64])),
        in_order: input.bool(),
        event_idx: input.bool(),
        huge_pages: HugePages::Never,
        ..Default::default()
    };
    let (offered, max_size) = (model.offered(), model.max_size[0].min(model.max_size[1]));
    let behind_iommu = model.behind_iommu;
    let pool = pci_pool();
    let transport = Box::new(PciTransport { pci, model });
    if let Ok(port) = Port::open(transport, pool, &config, &IovaAllocator::identity()) {
        check_port(&port, offered, &config, max_size);
        assert!(!behind_iommu || port.features().has(features::ACCESS_PLATFORM));
        // The MAC the port read is the one in the BAR, unless a structure the driver writes
        // (common configuration, doorbells) overlaps it: then its bytes changed after the read.
        let written_over = |cap: &VirtioCap, at: u32| {
            cap.bar == layout.device.map_or(u8::MAX, |d| d.bar)
                && u64::from(at) < u64::from(cap.offset) + u64::from(cap.length)
                && u64::from(cap.offset) < u64::from(at) + 6
        };
        let mac_at = layout.device.map_or(0, |d| d.offset);
        let untouched = !written_over(&layout.common, mac_at) && !written_over(&layout.notify, mac_at);
        if let (Some(mac), Some((_, bar, base)), true) = (port.mac(), &device_window, untouched) {
            let expected: Vec<u8> = (0..6).map(|i| bar.get_u8(base + i).expect("read at open")).collect();
            assert_eq!(mac.as_slice(), expected, "the MAC address");
        }
    }
    assert_eq!(pool.stats().in_use, 0, "buffers not back in the pool after the port closed");
}

// ---------------------------------------------------------------------------------------------
// vhost-user
// ---------------------------------------------------------------------------------------------

/// Front-end request codes the scripted backend answers ("Front-end message types").
mod request {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const GET_VRING_BASE: u32 = 11;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const GET_CONFIG: u32 = 24;
}

/// Header flag: the front-end wants a REPLY_ACK.
const NEED_REPLY: u32 = 0x8;
/// Header flags of a reply: version 1, reply.
const REPLY_FLAGS: u32 = 0x5;
/// `VHOST_USER_PROTOCOL_F_*` bits.
const PROTOCOL_MQ: u64 = 0x1;
const PROTOCOL_REPLY_ACK: u64 = 0x8;
const PROTOCOL_CONFIG: u64 = 0x200;
const PROTOCOL_STATUS: u64 = 1 << 16;

/// What the scripted backend was told and answered.
#[derive(Debug, Default)]
struct BackendLog {
    features: Option<u64>,
    protocol: Option<u64>,
    features_set: Vec<u64>,
    protocol_set: Vec<u64>,
    /// It hung up, answered out of protocol, or refused a request.
    misbehaved: bool,
}

/// Serves one connection: every answer from `script`; each reply is well formed, or (as the
/// script says) a hang-up, a malformed reply followed by a hang-up, or a refusal. It never
/// leaves the front-end waiting.
fn serve(mut stream: UnixStream, script: &mut Input<'_>) -> BackendLog {
    let mut log = BackendLog::default();
    loop {
        let mut header = [0u8; 12];
        if stream.read_exact(&mut header).is_err() {
            break;
        }
        let word = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8) as usize);
        let mut body = vec![0u8; size.min(0x1000)];
        if size > 0x1000 || stream.read_exact(&mut body).is_err() {
            break;
        }
        let body_u64 = || body.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        match code {
            request::SET_FEATURES => log.features_set.push(body_u64()),
            request::SET_PROTOCOL_FEATURES => log.protocol_set.push(body_u64()),
            _ => {}
        }
        let (mut payload, ack) = match code {
            request::GET_FEATURES => {
                let value = script.u64();
                log.features = Some(value);
                (value.to_le_bytes().to_vec(), false)
            }
            request::GET_PROTOCOL_FEATURES => {
                let value = script.u64();
                log.protocol = Some(value);
                (value.to_le_bytes().to_vec(), false)
            }
            request::GET_QUEUE_NUM => (u64::from(script.u16()).to_le_bytes().to_vec(), false),
            request::GET_VRING_BASE => {
                let mut state = body.get(..4).unwrap_or(&[0; 4]).to_vec();
                state.extend_from_slice(&script.u32().to_le_bytes());
                (state, false)
            }
            request::GET_CONFIG => {
                // The request's offset, size and flags, then that many bytes of configuration.
                let mut config = body.get(..12).unwrap_or(&[0; 12]).to_vec();
                let len = body.len().saturating_sub(12);
                let bytes = script.bytes(len);
                config.extend_from_slice(bytes);
                config.resize(12 + len, 0);
                (config, false)
            }
            _ if flags & NEED_REPLY != 0 => (0u64.to_le_bytes().to_vec(), true),
            _ => continue,
        };
        match script.u8() % 16 {
            1 => {
                log.misbehaved = true;
                break;
            }
            2 => {
                log.misbehaved = true;
                let mut reply = Vec::new();
                for _ in 0..3 {
                    reply.extend_from_slice(&script.u32().to_le_bytes());
                }
                reply.extend_from_slice(script.bytes(24));
                let _ = stream.write_all(&reply);
                break;
            }
            3 if ack => {
                log.misbehaved = true;
                payload = (u64::from(script.u8()) | 1).to_le_bytes().to_vec();
            }
            _ => {}
        }
        let mut reply = Vec::with_capacity(12 + payload.len());
        reply.extend_from_slice(&code.to_le_bytes());
        reply.extend_from_slice(&REPLY_FLAGS.to_le_bytes());
        reply.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        reply.extend_from_slice(&payload);
        if stream.write_all(&reply).is_err() {
            break;
        }
    }
    log
}

/// What the front-end made of the backend's answers.
#[derive(Debug, Default)]
struct FrontendView {
    /// Connected: the features offered to the driver, the queues, the protocol features acked.
    connected: Option<(Features, u16, u64)>,
    /// The port opened: its features and MAC address.
    port: Option<(Features, Option<[u8; 6]>)>,
}

fn frontend(path: &std::path::Path, pool: &Mempool, config: &PortConfig) -> FrontendView {
    let mut view = FrontendView::default();
    let mut vhost = VhostUserConfig::new(path);
    // The backend never stalls; a long wait would be a bug in the script, not a finding.
    vhost.request_timeout = Duration::from_secs(2);
    let mut transport = match VhostUserTransport::connect(vhost) {
        Ok(transport) => transport,
        Err(err @ Error::VhostUserNoBackend { .. }) => {
            // Unblock the backend's accept before failing.
            let _ = UnixStream::connect(path);
            panic!("the scripted backend's socket: {err}");
        }
        Err(_) => return view,
    };
    let offered = transport.device_features().expect("features are known after connect");
    let queues = transport.num_queues().expect("queues are known after connect");
    view.connected = Some((offered, queues, transport.protocol_features()));
    if let Ok(port) = Port::open(Box::new(transport), pool, config, &IovaAllocator::identity()) {
        check_port(&port, offered, config, crate::transport::vhost_user::MAX_QUEUE_SIZE);
        view.port = Some((port.features(), port.mac()));
    }
    view
}

/// A scripted vhost-user backend whose every answer comes from the input, through
/// `VhostUserTransport::connect` and `Port::open`. See the [module docs](self).
pub fn vhost_user(data: &[u8]) {
    static SOCKETS: AtomicUsize = AtomicUsize::new(0);
    let mut input = Input(data);
    let config = PortConfig {
        queue_pairs: 1 + u16::from(input.u8() % 2),
        ring: input.pick(&[RingChoice::Auto, RingChoice::Packed, RingChoice::Split]),
        ring_size: Some(input.pick(&[1, 2, 4, 8, 16, 32])),
        in_order: input.bool(),
        event_idx: input.bool(),
        huge_pages: HugePages::Never,
        ..Default::default()
    };
    let path = std::env::temp_dir().join(format!(
        "virtio-pmd-fuzz-{}-{}.sock",
        std::process::id(),
        SOCKETS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("a socket for the scripted backend");
    // Its own pool: a backend that misbehaves can make the port leak its buffers on purpose.
    let pool = small_pool(128);
    let (view, log) = std::thread::scope(|s| {
        let backend = s.spawn(|| {
            let (stream, _) = listener.accept().expect("the front-end connects");
            serve(stream, &mut input)
        });
        let view = frontend(&path, &pool, &config);
        (view, backend.join().expect("the scripted backend"))
    });
    let _ = std::fs::remove_file(&path);

    let offered = log.features.unwrap_or(0);
    for sent in &log.features_set {
        assert_eq!(sent & !offered, 0, "SET_FEATURES {sent:#x} with bits not offered ({offered:#x})");
    }
    let wanted = log.protocol.unwrap_or(0) & (PROTOCOL_REPLY_ACK | PROTOCOL_MQ | PROTOCOL_CONFIG);
    for sent in &log.protocol_set {
        assert_eq!(sent & !wanted, 0, "SET_PROTOCOL_FEATURES {sent:#x} (offered {:?})", log.protocol);
        assert_eq!(sent & PROTOCOL_STATUS, 0, "the STATUS protocol feature must never be acked");
    }
    if let Some((to_driver, queues, protocol)) = view.connected {
        let transport_bits = Features::from_bits(&[features::VHOST_USER_PROTOCOL_FEATURES, 26]);
        assert_eq!(to_driver.intersect(transport_bits), Features::EMPTY, "transport bits offered to the driver");
        let emulated = Features::from_bits(&[net_spec::F_MAC, net_spec::F_STATUS]);
        assert_eq!(to_driver.minus(Features(offered)).minus(emulated), Features::EMPTY, "features from nowhere");
        assert_eq!(protocol & !wanted, 0, "protocol features acked but not offered or wanted");
        assert!(queues >= 2 && queues % 2 == 0, "{queues} queues");
        assert!(protocol & PROTOCOL_MQ != 0 || queues == 2, "{queues} queues without MQ");
        if let Some((features, mac)) = view.port {
            assert_eq!(features.minus(to_driver), Features::EMPTY);
            if protocol & PROTOCOL_CONFIG == 0 && features.has(net_spec::F_MAC) {
                assert_eq!(mac, Some(VhostUserConfig::new("").mac), "the synthesised MAC address");
            }
        }
    }
    if pool.stats().in_use != 0 {
        // The port leaks the buffers of a device it could not stop, on purpose: keep the pool
        // reachable (so that the leak checker does not report it), and only for such a backend.
        assert!(log.misbehaved, "buffers not back after the port closed ({log:?})");
        static LEAKED: Mutex<Vec<Mempool>> = Mutex::new(Vec::new());
        LEAKED.lock().unwrap_or_else(|p| p.into_inner()).push(pool);
    }
}

#[cfg(test)]
mod tests {
    //! Every input a fuzz run found failing, as a fixture, and the seeds in `fuzz/seeds/`, so
    //! that `cargo test` replays them through the same entry points.
    use super::*;

    /// A device reports a length beyond its chain (packed, size 4, out of order): the driver
    /// counts it when it pops the chain, not when the device writes it.
    const PACKED_LIE_COUNTED_AT_POP: &[u8] = &[0x69, 0x00, 0x00, 0x00, 0x69, 0x69, 0x02, 0x93, 0xff, 0x93, 0x01, 0x06];

    /// The same on a split ring.
    const SPLIT_LIE_COUNTED_AT_POP: &[u8] = &[
        0x8c, 0x04, 0x24, 0x2f, 0x30, 0x2f, 0x00, 0x2d, 0xff, 0x32, 0xff, 0xff, 0x31, 0x2f, 0xff, 0xff, 0xff, 0x0f,
        0x01, 0x5e,
    ];

    /// A one-descriptor packed ring whose device completes a chain it was never given: the
    /// driver then adds more than a ring's worth between publishes, and the notification rule
    /// no longer applies.
    const PACKED_COMPLETED_UNPUBLISHED: &[u8] = &[
        0x00, 0x00, 0x17, 0xf0, 0x7e, 0x15, 0xb2, 0x93, 0xff, 0xb2, 0x7a, 0xe7, 0xe7, 0xe7, 0xe7, 0xe7, 0xe7, 0xb3,
        0xb3, 0xb3, 0xe7, 0xb3, 0xe7, 0x8e, 0x83, 0x83, 0xfe, 0x83, 0xfe, 0x83, 0xfe, 0xff, 0xff, 0x07, 0x83, 0x83,
        0xfe, 0x83, 0xfe, 0xff, 0xe7, 0xe7, 0xff, 0xff, 0xff,
    ];

    /// The MAC bytes sit where the driver's common configuration writes land, so they change
    /// after the port read them (the harness then has nothing to compare against).
    const PCI_MAC_UNDER_COMMON_CONFIG: &[u8] = &[
        0x1f, 0x1f, 0xc4, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x2c, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x24, 0x1f, 0x1f,
        0x1f, 0x1f, 0x1f, 0x1e, 0x1f, 0x1f, 0x1f, 0x1f, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f,
        0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x0f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x3f, 0x1f,
        0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0xfe, 0x0e, 0x7b, 0x6d, 0xfe, 0x0e,
        0x7b, 0x6d, 0xf0, 0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x1f,
        0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x30, 0x01, 0x01, 0x00, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f,
        0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x1f, 0x0e, 0x0e, 0x0e, 0x0e, 0x0e, 0x0e, 0x0e, 0x0e, 0x0e,
        0xfe, 0x0e, 0x7b, 0x6d, 0xf0, 0x82, 0xff, 0xff, 0x0e, 0x0e, 0x0e, 0x0e, 0x0e, 0x1f, 0x1f, 0x80,
    ];

    /// The device reports max_virtqueue_pairs = 0x8000 (the spec's largest) with a control
    /// queue: its index, 2 * 0x8000, overflowed a u16 in `Port::open` (CI, after issue 13).
    const PCI_CTRL_INDEX_OF_MAX_PAIRS: &[u8] = &[
        0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x10, 0x00, 0x00, 0x30, 0x01, 0x01, 0x00, 0x10, 0x02, 0x01,
        0x00, 0x00, 0x10, 0x01, 0x01, 0x00, 0x10, 0x01, 0x00, 0x00, 0x20, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xcb, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x30, 0x01,
        0x00, 0x01, 0x10, 0x02, 0x01, 0x00, 0x00, 0x10, 0x01, 0x01, 0x00, 0x10, 0x01, 0x00, 0x20, 0x20, 0x01, 0x01,
        0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x10, 0x00, 0xff, 0x23, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x20, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x30, 0x01, 0x00, 0x01, 0x10, 0x02, 0x01, 0x00, 0x00, 0x10,
        0x01, 0x01, 0x00, 0x10, 0x01, 0x00, 0x20, 0x20, 0x01, 0x01, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x80, 0x10, 0x00, 0xff, 0x23, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x05, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00,
    ];

    #[test]
    fn fuzz_findings_replay() {
        packed_used(PACKED_LIE_COUNTED_AT_POP);
        split_used(SPLIT_LIE_COUNTED_AT_POP);
        packed_used(PACKED_COMPLETED_UNPUBLISHED);
        pci_device(PCI_MAC_UNDER_COMMON_CONFIG);
        pci_device(PCI_CTRL_INDEX_OF_MAX_PAIRS);
    }

    macro_rules! seed {
        ($target:ident, $name:literal) => {
            $target(include_bytes!(concat!("../../../fuzz/seeds/", stringify!($target), "/", $name)))
        };
    }

    #[test]
    fn seeds_replay() {
        seed!(packed_used, "in-order-4");
        seed!(packed_used, "out-of-order-8");
        seed!(split_used, "in-order-8");
        seed!(split_used, "event-idx-4");
        seed!(event_suppression, "packed");
        seed!(event_suppression, "split");
        seed!(pci_caps, "qemu-virtio-net");
        seed!(pci_device, "qemu-packed");
        seed!(pci_device, "qemu-split");
        seed!(vhost_user, "dpdk-like-packed");
        seed!(vhost_user, "dpdk-like-split");
        seed!(vhost_user, "with-config");
    }

    #[test]
    fn empty_and_short_inputs_are_harmless() {
        for data in [&[][..], &[0], &[0xff; 3]] {
            packed_used(data);
            split_used(data);
            event_suppression(data);
            pci_caps(data);
            pci_device(data);
            vhost_user(data);
        }
    }
}
