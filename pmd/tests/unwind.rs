//! Unwinding through the rings' bulk loops. A caller's iterator that panics in the middle of
//! `add_each`, or a completion sink that panics in the middle of `pop_used`, must leave the ring
//! exactly as far as the loop got: the chains added before the panic are in flight (counted, and
//! their tokens come back), the chains handed to the sink are complete, and the ring goes on
//! working. Every ring shape the driver builds is checked, packed and split, against the
//! software device.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use virtio_pmd::mem::{DmaRegion, HugePages, IovaAllocator};
use virtio_pmd::testing::{ring_memory, AddressSpace, DeviceConfig, DeviceCore, Mode, QueueSpec, RingSpec};
use virtio_pmd::transport::RingFormat;
use virtio_pmd::virtqueue::{Chains, PackedRing, Segment, SplitRing, Virtqueue};

const SIZE: u16 = 16;
/// Bytes of each test buffer.
const BUF: u32 = 256;

/// A ring of one shape with a software device (a sink: it completes every chain it finds
/// available) on its buffers.
struct Rig<R> {
    ring: R,
    device: DeviceCore,
    buffers: Arc<DmaRegion>,
}

impl<R: Virtqueue<u32>> Rig<R> {
    /// A device-readable buffer of the rig's region for token `token`.
    fn segment(&self, token: u32) -> Segment {
        Segment { addr: self.buffers.iova() + (token % SIZE as u32 * BUF) as u64, len: BUF, writable: false }
    }

    /// Lets the device complete everything available.
    fn complete(&mut self) {
        while self.device.poll().expect("well-formed ring") > 0 {}
    }

    /// Completes and collects everything in flight, then checks the ring's accounting.
    fn finish(&mut self, returned: &mut Vec<u32>) {
        self.ring.publish();
        self.complete();
        self.ring.pop_used(usize::MAX, |token, _| returned.push(token));
        assert_eq!(self.ring.in_flight(), 0, "every chain completed");
        assert_eq!(self.ring.free_descriptors(), SIZE, "every descriptor free again");
        assert!(!self.ring.is_broken());
    }
}

/// A test run on every ring shape.
trait RingTest {
    fn run<R: Virtqueue<u32>>(&self, shape: &str, rig: Rig<R>);
}

/// The rings the driver builds: packed and split, in order or not, with chains of any length or
/// one descriptor each (the queues' rings), and a split ring that reads no used entries (the
/// transmit queues' ring).
fn for_each_ring(test: &impl RingTest) {
    for format in [RingFormat::Packed, RingFormat::Split] {
        for in_order in [false, true] {
            for chains in [Chains::Any, Chains::OneDescriptor, Chains::OneDescriptorNoLengths] {
                if chains == Chains::OneDescriptorNoLengths && format == RingFormat::Packed {
                    continue;
                }
                let spec = RingSpec { format, size: SIZE, in_order, event_idx: false };
                let (memory, ring_region) = ring_memory(spec).expect("ring memory");
                let bytes = SIZE as usize * BUF as usize;
                let iova = IovaAllocator::identity();
                let buffers = Arc::new(DmaRegion::new("unwind", bytes, HugePages::Never, &iova).expect("buffers"));
                let queue = QueueSpec { format, size: SIZE, addresses: memory.addresses() };
                let space = AddressSpace::new(vec![ring_region, buffers.clone()]);
                let config = DeviceConfig { mode: Mode::Sink(None), in_order, ..Default::default() };
                let device = DeviceCore::new(config, space, None, Some(queue)).expect("device");
                let shape = format!("{format:?} in_order={in_order} {chains:?}");
                match format {
                    RingFormat::Packed => {
                        let ring = PackedRing::new(memory, in_order, chains).expect("packed ring");
                        test.run(&shape, Rig { ring, device, buffers });
                    }
                    RingFormat::Split => {
                        let ring = SplitRing::new(memory, false, in_order, chains).expect("split ring");
                        test.run(&shape, Rig { ring, device, buffers });
                    }
                }
            }
        }
    }
}

/// Runs `f`, which must panic, with the panic message silenced.
fn expect_panic(f: impl FnOnce()) {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    assert!(result.is_err(), "the test body was meant to panic");
}

struct PanickingIterator;

impl RingTest for PanickingIterator {
    fn run<R: Virtqueue<u32>>(&self, shape: &str, mut rig: Rig<R>) {
        // Twice: on an empty ring, then with the first batch still pending (not published), so
        // that both the batch's first head and the descriptors after it are covered.
        for (start, before) in [(0u32, 0u16), (5, 5)] {
            let chains: Vec<_> = (start..SIZE as u32).map(|t| (rig.segment(t), t)).collect();
            expect_panic(|| {
                let mut chains = chains.into_iter();
                let panicking = std::iter::from_fn(|| match chains.next() {
                    Some((_, token)) if token == start + 5 => panic!("the caller's iterator panics"),
                    next => next,
                });
                // SAFETY: the buffers are slots of the rig's own region, one per token in flight
                // (tokens in flight at once are distinct modulo SIZE); only the device reads them.
                unsafe { rig.ring.add_each(panicking) };
            });
            assert_eq!(rig.ring.in_flight(), before + 5, "{shape}: the chains added before the panic are in flight");
            assert_eq!(rig.ring.free_descriptors(), SIZE - before - 5, "{shape}");
        }
        // Fill the ring: nothing overwrites the chains added before the panics.
        let rest: Vec<_> = (15..15 + SIZE as u32).map(|t| (rig.segment(t), t)).collect();
        // SAFETY: as above.
        let added = unsafe { rig.ring.add_each(rest.into_iter()) };
        assert_eq!(added, (SIZE - 10) as usize, "{shape}: the rest of the ring is free");
        let mut returned = Vec::new();
        rig.finish(&mut returned);
        returned.sort_unstable();
        let expected: Vec<u32> = (0..10).chain(15..15 + (SIZE - 10) as u32).collect();
        assert_eq!(returned, expected, "{shape}: every token added comes back, once");
    }
}

#[test]
fn a_panicking_iterator_leaves_add_each_accounted() {
    for_each_ring(&PanickingIterator);
}

struct PanickingSink;

impl RingTest for PanickingSink {
    fn run<R: Virtqueue<u32>>(&self, shape: &str, mut rig: Rig<R>) {
        for round in 0..3u32 {
            let base = round * SIZE as u32;
            let chains: Vec<_> = (base..base + 8).map(|t| (rig.segment(t), t)).collect();
            // SAFETY: as in `PanickingIterator`.
            assert_eq!(unsafe { rig.ring.add_each(chains.into_iter()) }, 8, "{shape}");
            rig.ring.publish();
            rig.complete();
            let mut handed = Vec::new();
            expect_panic(|| {
                rig.ring.pop_used(usize::MAX, |token, _| {
                    assert!(handed.len() < 3, "the sink panics at its fourth completion");
                    handed.push(token);
                });
            });
            assert_eq!(handed.len(), 3);
            // The completion the sink panicked on is gone with it; the rest come back.
            assert_eq!(rig.ring.in_flight(), 4, "{shape}: the four chains handed out are complete");
            rig.ring.pop_used(usize::MAX, |token, _| handed.push(token));
            assert_eq!(handed.len(), 7, "{shape}: round {round}: the ring goes on completing");
            assert_eq!((rig.ring.in_flight(), rig.ring.free_descriptors()), (0, SIZE), "{shape}");
        }
        // And the whole ring still turns over.
        let chains: Vec<_> = (100..100 + SIZE as u32).map(|t| (rig.segment(t), t)).collect();
        // SAFETY: as in `PanickingIterator`.
        assert_eq!(unsafe { rig.ring.add_each(chains.into_iter()) }, SIZE as usize, "{shape}");
        let mut returned = Vec::new();
        rig.finish(&mut returned);
        assert_eq!(returned.len(), SIZE as usize, "{shape}");
    }
}

#[test]
fn a_panicking_sink_leaves_pop_used_accounted() {
    for_each_ring(&PanickingSink);
}
