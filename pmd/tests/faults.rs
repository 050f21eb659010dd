//! Fault injection: a software device that returns a bad id, a bad length, or uses a buffer
//! twice. Every injected fault must be detected and counted, nothing may panic, and after the
//! device is stopped every mbuf is back in its pool.

mod common;

use std::time::{Duration, Instant};

use common::{check_frame, frame_len, test_pool, write_frame};
use virtio_pmd::mbuf::Mbuf;
use virtio_pmd::testing::{
    queue_pair, DeviceConfig, DeviceCore, Fault, FaultPlan, Mode, NotifyMode, QueuePair, RingFault, RingSpec, Role,
    SoftDevice,
};
use virtio_pmd::transport::RingFormat;

/// What a faulty run left behind.
struct Outcome {
    rx_errors: u64,
    tx_errors: u64,
    rx_broken: bool,
    tx_broken: bool,
    rx_drops: u64,
    /// Delivered frames whose content was not what was sent.
    corrupted: u64,
    /// What the device found wrong in the rings when it stopped (none: well-formed).
    device_verdict: Result<(), RingFault>,
}

/// Runs loopback traffic until the device has injected its fault and the driver has seen it
/// (or 2000 packets went through), then lets the device finish what it holds; checks that
/// every mbuf is back in the pool.
fn run(spec: RingSpec, plan: FaultPlan) -> Outcome {
    let pool = test_pool(spec.size as u32 * 3 + 512);
    let QueuePair { mut rx, mut tx, rx_spec, tx_spec, space, .. } = queue_pair(spec, &pool, 0).expect("queues");
    let config = DeviceConfig {
        mode: Mode::Loopback,
        in_order: spec.in_order,
        event_idx: spec.event_idx,
        notify: NotifyMode::Never,
        window: 8,
        fault: Some(plan),
        ..Default::default()
    };
    let device = SoftDevice::spawn(DeviceCore::new(config, space, Some(rx_spec), Some(tx_spec)).unwrap()).unwrap();
    let mut pending: Vec<Mbuf> = Vec::with_capacity(32);
    let mut received: Vec<Mbuf> = Vec::with_capacity(32);
    let mut seq = 0u64;
    let mut corrupted = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let detected = rx.stats().errors + tx.stats().errors + rx.stats().drops > 0;
        let injected = device.stats().faults_injected.load(std::sync::atomic::Ordering::Relaxed) > 0;
        let stopped = rx.is_broken() || tx.is_broken();
        if (injected && detected && (stopped || seq > plan.at + 64)) || seq > 2000 || Instant::now() > deadline {
            break;
        }
        while pending.len() < 16 {
            let Some(mut m) = pool.alloc() else { break };
            write_frame(seq, m.append(frame_len(seq)).unwrap());
            pending.push(m);
            seq += 1;
        }
        tx.tx_burst(&mut pending);
        tx.reclaim();
        rx.rx_burst(&mut received);
        corrupted += received.drain(..).filter(|m| check_frame(m.data()).is_err()).count() as u64;
    }
    drop(pending);
    // Let the device finish what it holds, and, if nothing was detected yet, go on polling a
    // while: a split in-order transmit ring reads only `used.idx`
    // (`Chains::OneDescriptorNoLengths`), so an entry used twice shows only once the device has
    // completed everything and `used.idx` runs past what was ever in flight, which can be after
    // the driver saw nothing in flight any more.
    let detected = |rx: &virtio_pmd::net::RxQueue, tx: &virtio_pmd::net::TxQueue| {
        rx.stats().errors + tx.stats().errors + rx.stats().drops > 0
    };
    let drain_deadline = Instant::now() + Duration::from_secs(2);
    while (tx.in_flight() > 0 || !detected(&rx, &tx))
        && !(rx.is_broken() || tx.is_broken())
        && Instant::now() < drain_deadline
    {
        tx.reclaim();
        rx.rx_burst(&mut received);
        corrupted += received.drain(..).filter(|m| check_frame(m.data()).is_err()).count() as u64;
    }
    let device_verdict = device.stop();
    let outcome = Outcome {
        rx_errors: rx.stats().errors,
        tx_errors: tx.stats().errors,
        rx_broken: rx.is_broken(),
        tx_broken: tx.is_broken(),
        rx_drops: rx.stats().drops,
        corrupted,
        device_verdict,
    };
    drop((rx, tx));
    assert_eq!(pool.stats().in_use, 0, "every mbuf is back after the faulty run");
    outcome
}

fn specs() -> Vec<RingSpec> {
    let mut out = Vec::new();
    for format in [RingFormat::Packed, RingFormat::Split] {
        for in_order in [false, true] {
            out.push(RingSpec { format, size: 256, in_order, event_idx: format == RingFormat::Split });
        }
    }
    out
}

/// The ring that reads no used entry: split, in order, one descriptor per chain, no lengths
/// (`Chains::OneDescriptorNoLengths`, the transmit ring's choice): `used.idx` alone counts
/// its completions.
fn counts_only(spec: RingSpec, role: Role) -> bool {
    spec.format == RingFormat::Split && spec.in_order && role == Role::Tx
}

#[test]
fn bad_id_is_detected_on_both_rings() {
    for spec in specs() {
        for role in [Role::Rx, Role::Tx] {
            let out = run(spec, FaultPlan { fault: Fault::BadId, role, at: 100 });
            assert_eq!(out.corrupted, 0, "{spec:?} {role:?}: frames that are delivered are intact");
            assert_eq!(out.device_verdict, Ok(()), "{spec:?} {role:?}: the rings stayed well-formed on our side");
            let (errors, broken) =
                if role == Role::Rx { (out.rx_errors, out.rx_broken) } else { (out.tx_errors, out.tx_broken) };
            if counts_only(spec, role) {
                // The bad id goes unread, and the completion it stands for is a real one: nothing lost.
                assert_eq!((errors, broken), (0, false), "{spec:?} {role:?}: an id that is never read");
                continue;
            }
            assert_eq!(errors, 1, "{spec:?} {role:?}: the bad id is counted once");
            // A packed ring cannot tell how far to skip after a bad id, and an in-order ring
            // cannot judge later entries: they stop. An out-of-order split ring skips the entry.
            let stops = spec.format == RingFormat::Packed || spec.in_order;
            assert_eq!(broken, stops, "{spec:?} {role:?}");
        }
    }
}

#[test]
fn bad_length_is_detected_and_the_queue_goes_on() {
    for spec in specs() {
        for role in [Role::Rx, Role::Tx] {
            let out = run(spec, FaultPlan { fault: Fault::BadLen, role, at: 100 });
            assert_eq!(out.corrupted, 0, "{spec:?} {role:?}: frames that are delivered are intact");
            assert_eq!(out.device_verdict, Ok(()), "{spec:?} {role:?}: the rings stayed well-formed on our side");
            assert!(!out.rx_broken && !out.tx_broken, "{spec:?} {role:?}: a bad length leaves the queue usable");
            if role == Role::Rx {
                assert_eq!(out.rx_errors, 1, "{spec:?}: the bad length is counted once");
                assert_eq!(out.rx_drops, 1, "{spec:?}: the frame with a bad length is dropped, not delivered");
            } else {
                // The length of a device-readable chain is reserved and ignored (2.8.4).
                assert_eq!(out.tx_errors, 0, "{spec:?}: a transmit length is not checked");
            }
        }
    }
}

#[test]
fn a_buffer_used_twice_is_detected() {
    for spec in specs() {
        for role in [Role::Rx, Role::Tx] {
            let out = run(spec, FaultPlan { fault: Fault::UsedTwice, role, at: 100 });
            let errors = if role == Role::Rx { out.rx_errors } else { out.tx_errors };
            if counts_only(spec, role) {
                // The extra entry reads as the completion of the newest chain in flight, whose
                // buffer goes back to the pool and whose descriptor is posted again while the
                // device still holds it. Then one of two things shows the fault: the device
                // completes everything and `used.idx` runs past what was ever in flight, which
                // stops our ring; or the device finds that descriptor in two chains
                // (`BadChain`), its own fault coming back to it. Frames sent from the recycled
                // buffer meanwhile can carry other data. The device sees only memory it was
                // given; our side stays sound and loses no mbuf (checked in `run`).
                let overrun = out.tx_broken && errors >= 1;
                assert!(
                    overrun || out.device_verdict == Err(RingFault::BadChain),
                    "{spec:?}: neither the ring nor the device saw the fault: {} errors, verdict {:?}",
                    errors,
                    out.device_verdict
                );
                continue;
            }
            assert!(errors >= 1, "{spec:?} {role:?}: the second completion is counted");
            assert_eq!(out.corrupted, 0, "{spec:?} {role:?}: frames that are delivered are intact");
            assert_eq!(out.device_verdict, Ok(()), "{spec:?} {role:?}: the rings stayed well-formed on our side");
        }
    }
}

#[test]
fn a_broken_receive_ring_takes_nothing_more_from_the_pool() {
    for format in [RingFormat::Packed, RingFormat::Split] {
        let spec = RingSpec { format, size: 64, in_order: true, event_idx: false };
        let pool = test_pool(256);
        let QueuePair { mut rx, rx_spec, space, .. } = queue_pair(spec, &pool, 0).expect("queues");
        // A source device whose 30th completion names an id the driver never gave out: an
        // in-order ring cannot follow anything after it, and stops.
        let config = DeviceConfig {
            mode: Mode::Source { count: u64::MAX, source: None },
            in_order: true,
            fault: Some(FaultPlan { fault: Fault::BadId, role: Role::Rx, at: 30 }),
            ..Default::default()
        };
        let mut device = DeviceCore::new(config, space, Some(rx_spec), None).expect("device");
        let mut received: Vec<Mbuf> = Vec::with_capacity(64);
        for _ in 0..100 {
            if rx.is_broken() {
                break;
            }
            device.poll().expect("device");
            rx.rx_burst(&mut received);
            received.clear();
        }
        assert!(rx.is_broken(), "{format:?}: the bad id stopped the ring");
        let (stats, pool_stats) = (rx.stats(), pool.stats());
        for _ in 0..10 {
            device.poll().expect("device");
            assert_eq!(rx.rx_burst(&mut received), 0);
        }
        // Nothing posted: no publish counted, no allocation tried (and none failed).
        assert_eq!(rx.stats(), stats, "{format:?}: a broken ring is refilled no more");
        assert_eq!(pool.stats(), pool_stats, "{format:?}: the pool is not asked for buffers");
        drop(device);
        drop(rx);
        assert_eq!(pool.stats().in_use, 0);
    }
}
