//! Property tests of a hostile device.
//!
//! - On a bare ring: a device that writes arbitrary bytes wherever a device may write (the whole
//!   descriptor ring of a packed ring, the used ring of a split ring) can make the driver count
//!   errors and stop the ring, but never panic, and every token added comes back exactly once,
//!   through a completion or through `drain`.
//! - On a queue pair with mbufs in flight: a device that writes arbitrary bytes anywhere in the
//!   memory it can reach (both rings, and the whole mempool region: headroom and data of the
//!   buffers it holds and of those it does not), and writes bogus completions, while a software
//!   device moves frames: no crash, no panic, and every mbuf is back in the pool once the queues
//!   are gone (frames may be dropped, and are counted).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use common::test_pool;
use proptest::prelude::*;
use virtio_pmd::mbuf::Mbuf;
use virtio_pmd::mem::DmaRegion;
use virtio_pmd::net::{Offloads, RxPath, TxPath};
use virtio_pmd::testing::{queue_pair_with_paths, ring_memory, DeviceConfig, DeviceCore, Mode, QueuePair, RingSpec};
use virtio_pmd::transport::{QueueAddresses, RingFormat};
use virtio_pmd::virtqueue::{Chains, PackedRing, Segment, SplitRing, Virtqueue};

/// One step of the scenario.
#[derive(Clone, Debug)]
enum Step {
    /// The driver adds a chain of this many segments (writable or not) and publishes.
    Add { segments: u8, writable: bool },
    /// The device writes these bytes at this offset of the area it may write.
    Scribble { offset: u16, bytes: Vec<u8> },
    /// The driver collects up to this many completions.
    Pop { max: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u8..4, any::<bool>()).prop_map(|(segments, writable)| Step::Add { segments, writable }),
        (any::<u16>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(offset, bytes)| Step::Scribble { offset, bytes }),
        (1u8..32).prop_map(|max| Step::Pop { max }),
    ]
}

/// The address in this process of the ring area at device address `iova`.
fn area_at(region: &DmaRegion, iova: u64) -> *mut u8 {
    region.as_ptr().wrapping_add((iova - region.iova()) as usize)
}

fn run<R: Virtqueue<u32>>(mut ring: R, device_area: (*mut u8, usize), steps: &[Step]) {
    let mut next_token = 0u32;
    let mut returned = Vec::new();
    for step in steps {
        match step {
            Step::Add { segments, writable } => {
                let chain: Vec<Segment> = (0..*segments)
                    .map(|i| Segment { addr: 0x1000 * (i as u64 + 1), len: 64, writable: *writable })
                    .collect();
                // One-segment chains go through the bulk path the queues use.
                // SAFETY: nothing ever dereferences these addresses: the "device" is this test,
                // which writes ring areas only.
                let added = unsafe {
                    match chain.as_slice() {
                        [one] => ring.add_each(std::iter::once((*one, next_token))) == 1,
                        _ => ring.add(&chain, next_token).is_ok(),
                    }
                };
                if added {
                    next_token += 1;
                }
                ring.publish();
            }
            Step::Scribble { offset, bytes } => {
                let (base, len) = device_area;
                for (i, b) in bytes.iter().enumerate() {
                    let at = (*offset as usize + i) % len;
                    // SAFETY: `at < len`, inside the ring's device-writable area, which this
                    // single-threaded test owns; the driver reads it only with volatile loads.
                    unsafe { base.add(at).write_volatile(*b) };
                }
            }
            Step::Pop { max } => {
                ring.pop_used(*max as usize, |token, len| {
                    if let Some(len) = len {
                        assert!(len <= 3 * 64, "a length beyond the chain was handed out");
                    }
                    returned.push(token);
                });
            }
        }
        assert!(ring.in_flight() as usize <= ring.size() as usize);
    }
    // SAFETY: no device runs (the test played it, and is done).
    unsafe { ring.drain(|token| returned.push(token)) };
    returned.sort_unstable();
    let expected: Vec<u32> = (0..next_token).collect();
    assert_eq!(returned, expected, "every token back exactly once");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn packed_ring_survives_a_hostile_device(size in prop::sample::select(vec![4u16, 7, 16, 64]),
                                             in_order: bool,
                                             one_descriptor_chains: bool,
                                             steps in prop::collection::vec(step(), 1..200)) {
        let spec = RingSpec { format: RingFormat::Packed, size, in_order, event_idx: false };
        let (memory, region) = ring_memory(spec).unwrap();
        // The device may write the whole descriptor ring (used descriptors).
        let area = (area_at(&region, memory.addresses().desc), 16 * size as usize);
        // The queues' rings: one descriptor per chain, followed slot by slot when in order.
        let chains = if one_descriptor_chains { Chains::OneDescriptor } else { Chains::Any };
        run(PackedRing::<u32>::new(memory, in_order, chains).unwrap(), area, &steps);
    }

    #[test]
    fn split_ring_survives_a_hostile_device(size in prop::sample::select(vec![4u16, 16, 64]),
                                            in_order: bool,
                                            event_idx: bool,
                                            one_descriptor_chains: bool,
                                            used_lengths_unread: bool,
                                            steps in prop::collection::vec(step(), 1..200)) {
        let spec = RingSpec { format: RingFormat::Split, size, in_order, event_idx };
        let (memory, region) = ring_memory(spec).unwrap();
        // The device may write the used ring (flags, idx, elements, avail_event).
        let area = (area_at(&region, memory.addresses().device), 6 + 8 * size as usize);
        // The transmit queues' rings: completions counted from `used.idx` alone.
        let chains = match (one_descriptor_chains, used_lengths_unread) {
            (false, _) => Chains::Any,
            (true, false) => Chains::OneDescriptor,
            (true, true) => Chains::OneDescriptorNoLengths,
        };
        run(SplitRing::<u32>::new(memory, event_idx, in_order, chains).unwrap(), area, &steps);
    }
}

/// One step of the queue-pair scenario.
#[derive(Clone, Debug)]
enum PairStep {
    /// The driver sends this many frames (fresh mbufs from the pool).
    Send(u8),
    /// The driver receives (and drops what it got).
    Receive,
    /// The driver reclaims transmit completions.
    Reclaim,
    /// The software device moves frames (loopback) and completes what it took.
    Device,
    /// The device writes `bytes` at `offset` (modulo the region's length) of the mempool's
    /// region: headroom, data, whatever lies there, held by the device or not.
    ScribblePool { offset: u32, bytes: Vec<u8> },
    /// The device writes `bytes` at `offset` of one ring's region (0: receive, 1: transmit).
    ScribbleRing { ring: u8, offset: u16, bytes: Vec<u8> },
    /// The device completes a chain that may not exist: a used entry (split) or used
    /// descriptor (packed) with this id and length, on ring 0 (receive) or 1 (transmit).
    BogusCompletion { ring: u8, id: u16, len: u32 },
}

fn pair_step() -> impl Strategy<Value = PairStep> {
    prop_oneof![
        3 => (1u8..16).prop_map(PairStep::Send),
        3 => Just(PairStep::Receive),
        1 => Just(PairStep::Reclaim),
        4 => Just(PairStep::Device),
        4 => (any::<u32>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(offset, bytes)| PairStep::ScribblePool { offset, bytes }),
        1 => (0u8..2, any::<u16>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(ring, offset, bytes)| PairStep::ScribbleRing { ring, offset, bytes }),
        1 => (0u8..2, any::<u16>(), any::<u32>()).prop_map(|(ring, id, len)| PairStep::BogusCompletion { ring, id, len }),
    ]
}

/// Writes `bytes` into `region` from `offset` on, wrapping at its end.
fn scribble(region: &DmaRegion, offset: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        let at = (offset + i) % region.len();
        // SAFETY: `at < len`: inside the region, which the device may write; this thread plays
        // the device and the driver in turn, and holds no reference into the region now (the
        // driver reads rings with volatile and atomic accesses only).
        unsafe { region.as_ptr().add(at).write_volatile(*b) };
    }
}

/// The region in `space` that holds `iova`.
fn region_of(regions: &[Arc<DmaRegion>], iova: u64) -> &Arc<DmaRegion> {
    regions
        .iter()
        .find(|r| (r.iova()..r.iova() + r.len() as u64).contains(&iova))
        .expect("every ring lies in a region of the address space")
}

/// Writes a used entry (split) or used descriptor (packed) naming `id`, with length `len`, into
/// the ring at `addresses` in `region`.
fn bogus_completion(region: &DmaRegion, addresses: QueueAddresses, spec: RingSpec, id: u16, len: u32) {
    let offset = |iova: u64| (iova - region.iova()) as usize;
    match spec.format {
        RingFormat::Split => {
            let used = offset(addresses.device);
            // SAFETY: `used` is the used ring's start, 2-byte aligned, inside the region.
            let idx = unsafe { region.as_ptr().add(used + 2).cast::<u16>().read_volatile() };
            let entry = used + 4 + 8 * (idx % spec.size) as usize;
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&u32::from(id).to_le_bytes());
            bytes[4..].copy_from_slice(&len.to_le_bytes());
            scribble(region, entry, &bytes);
            scribble(region, used + 2, &idx.wrapping_add(1).to_le_bytes());
        }
        RingFormat::Packed => {
            // A slot picked by the id, marked used in either lap.
            let slot = offset(addresses.desc) + 16 * (id % spec.size) as usize;
            let flags: u16 = if len & 1 == 0 { 0x8080 } else { 0 };
            scribble(region, slot + 8, &len.to_le_bytes());
            scribble(region, slot + 12, &id.to_le_bytes());
            scribble(region, slot + 14, &flags.to_le_bytes());
        }
    }
}

/// Every offload negotiated: the richest receive and transmit paths.
const ALL: Offloads = Offloads { tx_checksum: true, tso4: true, tso6: true, rx_checksum: true, lro4: true, lro6: true };

/// `rich`: mergeable receive buffers with every offload (the header is read, `num_buffers`
/// followed), and transmit chains of multi-segment packets.
fn run_pair(spec: RingSpec, rich: bool, steps: &[PairStep]) {
    let pool = test_pool(spec.size as u32 * 6 + 64);
    let (rx_path, tx_path) = if rich {
        (RxPath::Offloads { mergeable: true, offloads: ALL }, TxPath::Offloads(ALL))
    } else {
        (RxPath::Simple, TxPath::Simple)
    };
    let QueuePair { mut rx, mut tx, rx_spec, tx_spec, space, .. } =
        queue_pair_with_paths(spec, &pool, 0, rx_path, tx_path).expect("queues");
    let regions: Vec<Arc<DmaRegion>> = space.regions().to_vec();
    let ring_regions =
        [region_of(&regions, rx_spec.addresses.desc).clone(), region_of(&regions, tx_spec.addresses.desc).clone()];
    // Exactly the pool's bytes: the region of the address space that holds neither ring.
    let pool_region = regions
        .iter()
        .find(|r| !ring_regions.iter().any(|ring| Arc::ptr_eq(r, ring)))
        .expect("the pool's region is in the address space")
        .clone();
    let config = DeviceConfig {
        mode: Mode::Loopback,
        in_order: spec.in_order,
        event_idx: spec.event_idx,
        mergeable: rich,
        ..Default::default()
    };
    // The software device validates what it reads, but a ring written at random is not a ring:
    // once it finds one malformed (or trips over one), it stops, as a device would.
    let mut device = Some(DeviceCore::new(config, space, Some(rx_spec), Some(tx_spec)).expect("device"));
    let mut pending: Vec<Mbuf> = Vec::with_capacity(64);
    let mut received: Vec<Mbuf> = Vec::with_capacity(64);
    for step in steps {
        match step {
            PairStep::Send(n) => {
                while pending.len() < *n as usize {
                    let Some(mut m) = pool.alloc() else { break };
                    let len = if rich { 60 + 1000 * pending.len() % 5000 } else { 60 };
                    if m.extend_from_slice(&pool, &vec![0x5a; len]).is_err() {
                        break;
                    }
                    pending.push(m);
                }
                tx.tx_burst(&mut pending);
            }
            PairStep::Receive => {
                rx.rx_burst(&mut received);
                for m in received.drain(..) {
                    assert_eq!(m.segments().map(<[u8]>::len).sum::<usize>(), m.len(), "the length is the segments'");
                    assert_eq!(m.segments().count(), m.nb_segs() as usize);
                    assert!(m.data_len() <= m.capacity(), "a received frame fits its buffer");
                }
            }
            PairStep::Reclaim => tx.reclaim(),
            PairStep::Device => {
                if let Some(core) = device.as_mut() {
                    let polled = catch_unwind(AssertUnwindSafe(|| core.poll()));
                    if !matches!(polled, Ok(Ok(_))) {
                        device = None;
                    }
                }
            }
            PairStep::ScribblePool { offset, bytes } => scribble(&pool_region, *offset as usize, bytes),
            PairStep::ScribbleRing { ring, offset, bytes } => {
                scribble(&ring_regions[*ring as usize], *offset as usize, bytes)
            }
            PairStep::BogusCompletion { ring, id, len } => {
                let addresses = if *ring == 0 { rx_spec.addresses } else { tx_spec.addresses };
                bogus_completion(&ring_regions[*ring as usize], addresses, spec, *id, *len);
            }
        }
    }
    // The device stops (a reset), then the queues hand every in-flight mbuf back.
    drop(device);
    drop((pending, received));
    let stats = (rx.stats(), tx.stats());
    drop((rx, tx));
    assert_eq!(pool.stats().in_use, 0, "every mbuf is back in the pool ({stats:?})");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn queues_survive_a_device_that_writes_anywhere_it_can_reach(
        packed: bool,
        size in prop::sample::select(vec![8u16, 32]),
        in_order: bool,
        event_idx: bool,
        rich: bool,
        steps in prop::collection::vec(pair_step(), 1..300),
    ) {
        let format = if packed { RingFormat::Packed } else { RingFormat::Split };
        run_pair(RingSpec { format, size, in_order, event_idx: event_idx && !packed }, rich, &steps);
    }
}
