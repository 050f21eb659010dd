//! Property test: a hostile device that writes arbitrary bytes wherever a device may write (the
//! whole descriptor ring of a packed ring, the used ring of a split ring) can make the driver
//! count errors and stop the ring, but never panic, and every token added comes back exactly
//! once, through a completion or through `drain`.

use proptest::prelude::*;
use virtio_pmd::mem::DmaRegion;
use virtio_pmd::testing::{ring_memory, RingSpec};
use virtio_pmd::transport::RingFormat;
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
