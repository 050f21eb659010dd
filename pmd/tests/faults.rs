//! Fault injection: a software device that returns a bad id, a bad length, or uses a buffer
//! twice. Every injected fault must be detected and counted, nothing may panic, and after the
//! device is stopped every mbuf is back in its pool.

mod common;

use std::time::{Duration, Instant};

use common::{check_frame, frame_len, test_pool, write_frame};
use virtio_pmd::mbuf::Mbuf;
use virtio_pmd::testing::{
    queue_pair, DeviceConfig, DeviceCore, Fault, FaultPlan, Mode, NotifyMode, QueuePair, RingSpec, Role, SoftDevice,
};
use virtio_pmd::transport::RingFormat;

/// Runs loopback traffic until the device has injected its fault and the driver has seen it
/// (or 2000 packets went through); any frame that is delivered is intact; returns (rx errors, tx errors, rx broken, tx broken, rx drops).
fn run(spec: RingSpec, plan: FaultPlan) -> (u64, u64, bool, bool, u64) {
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
        for m in received.drain(..) {
            check_frame(m.data()).expect("frames that are delivered are intact");
        }
    }
    drop(pending);
    device.stop().expect("rings stayed well-formed on the driver's side");
    assert_eq!(device_faults(&rx, &tx), (rx.stats().errors, tx.stats().errors));
    let result = (rx.stats().errors, tx.stats().errors, rx.is_broken(), tx.is_broken(), rx.stats().drops);
    drop((rx, tx));
    assert_eq!(pool.stats().in_use, 0, "every mbuf is back after the faulty run");
    result
}

fn device_faults(rx: &virtio_pmd::net::RxQueue, tx: &virtio_pmd::net::TxQueue) -> (u64, u64) {
    (rx.stats().errors, tx.stats().errors)
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

#[test]
fn bad_id_is_detected_on_both_rings() {
    for spec in specs() {
        for role in [Role::Rx, Role::Tx] {
            let (rx_err, tx_err, rx_broken, tx_broken, _) = run(spec, FaultPlan { fault: Fault::BadId, role, at: 100 });
            let (errors, broken) = if role == Role::Rx { (rx_err, rx_broken) } else { (tx_err, tx_broken) };
            if spec.format == RingFormat::Split && spec.in_order && role == Role::Tx {
                // This ring reads no used entry (`Chains::OneDescriptorNoLengths`): `used.idx`
                // alone counts the completions, so the bad id goes unread and loses nothing.
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
            let (rx_err, tx_err, rx_broken, tx_broken, rx_drops) =
                run(spec, FaultPlan { fault: Fault::BadLen, role, at: 100 });
            assert!(!rx_broken && !tx_broken, "{spec:?} {role:?}: a bad length leaves the queue usable");
            if role == Role::Rx {
                assert_eq!(rx_err, 1, "{spec:?}: the bad length is counted once");
                assert_eq!(rx_drops, 1, "{spec:?}: the frame with a bad length is dropped, not delivered");
            } else {
                // The length of a device-readable chain is reserved and ignored (2.8.4).
                assert_eq!(tx_err, 0, "{spec:?}: a transmit length is not checked");
            }
        }
    }
}

#[test]
fn a_buffer_used_twice_is_detected() {
    for spec in specs() {
        for role in [Role::Rx, Role::Tx] {
            let (rx_err, tx_err, _, _, _) = run(spec, FaultPlan { fault: Fault::UsedTwice, role, at: 100 });
            let errors = if role == Role::Rx { rx_err } else { tx_err };
            assert!(errors >= 1, "{spec:?} {role:?}: the second completion is counted");
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
