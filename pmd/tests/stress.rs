//! Multi-threaded stress: the driver's rx/tx bursts against the software device in loopback, on
//! packed and split rings of many sizes, with random burst sizes, in-order and out-of-order
//! completion, and every notification mode. Every payload byte and sequence number is checked,
//! the kick count is bounded by the bursts (zero when the device says never), and the pool is
//! full again at the end.

mod common;

use std::time::{Duration, Instant};

use common::{check_frame, frame_len, test_pool, write_frame, SeenSet};
use virtio_pmd::mbuf::Mbuf;
use virtio_pmd::testing::{
    queue_pair, DeviceConfig, DeviceCore, Mode, NotifyMode, QueuePair, RingSpec, Rng, SoftDevice,
};
use virtio_pmd::transport::RingFormat;

#[derive(Clone, Copy, Debug)]
struct Case {
    spec: RingSpec,
    notify: NotifyMode,
    batch_used: bool,
    packets: u64,
}

/// Runs one loopback case; returns the packets moved.
fn run(case: Case, seed: u64) -> u64 {
    let pool = test_pool(case.spec.size as u32 * 3 + 1024);
    let QueuePair { mut rx, mut tx, rx_kicks, tx_kicks, rx_spec, tx_spec, space } =
        queue_pair(case.spec, &pool, 7).expect("queues");
    let device_config = DeviceConfig {
        mode: Mode::Loopback,
        in_order: case.spec.in_order,
        batch_used: case.batch_used,
        event_idx: case.spec.event_idx,
        notify: case.notify,
        window: 32,
        fault: None,
        seed,
        mergeable: false,
        hash_report: None,
    };
    // The receive ring was filled (and the still-silent device notified) before the device
    // started and stated its notification preference: that first kick is not counted below.
    let initial_rx_kicks = rx.stats().kicks;
    let core = DeviceCore::new(device_config, space, Some(rx_spec), Some(tx_spec)).expect("device");
    let device = SoftDevice::spawn(core).expect("device thread");

    let total = case.packets;
    let driver_pool = pool.clone();
    let driver = std::thread::spawn(move || {
        let pool = driver_pool;
        let mut rng = Rng::new(seed ^ 0x5eed);
        let mut seen = SeenSet::new(total);
        let mut next_seq = 0u64;
        let mut expected_in_order = 0u64;
        let mut pending: Vec<Mbuf> = Vec::with_capacity(256);
        let mut received: Vec<Mbuf> = Vec::with_capacity(256);
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut bursts = 0u64;
        while seen.count < total {
            assert!(Instant::now() < deadline, "{case:?}: stalled at {} of {total} packets", seen.count);
            let burst = rng.range(1, 64) as usize;
            while pending.len() < burst && next_seq < total {
                let Some(mut m) = pool.alloc() else { break };
                write_frame(next_seq, m.append(frame_len(next_seq)).expect("room"));
                pending.push(m);
                next_seq += 1;
            }
            if !pending.is_empty() {
                tx.tx_burst(&mut pending);
                bursts += 1;
            }
            received.clear();
            received.reserve(rng.range(1, 64) as usize);
            let room = received.capacity();
            received.truncate(0);
            let got = rx.rx_burst(&mut received);
            assert!(got <= room);
            for m in received.drain(..) {
                let seq = check_frame(m.data()).unwrap_or_else(|e| panic!("{case:?}: {e}"));
                assert_eq!(m.port(), 7);
                if case.spec.in_order {
                    assert_eq!(seq, expected_in_order, "{case:?}: out of order with IN_ORDER");
                    expected_in_order += 1;
                }
                seen.insert(seq).unwrap_or_else(|e| panic!("{case:?}: {e}"));
            }
            if got == 0 && pending.is_empty() {
                std::thread::yield_now();
            }
        }
        tx.reclaim();
        (rx, tx, bursts)
    });
    let (rx, tx, _bursts) = driver.join().expect("driver thread");
    device.stop().expect("device saw a well-formed ring");

    let (rx_stats, tx_stats) = (rx.stats(), tx.stats());
    assert_eq!(rx_stats.packets, total);
    assert_eq!(tx_stats.packets, total);
    assert_eq!(rx_stats.errors + tx_stats.errors, 0, "{case:?}");
    assert_eq!((rx_stats.drops, tx_stats.drops), (0, 0));
    // At most one notification per burst that published, and exactly the notifier's count.
    for (stats, kicks, initial) in [(rx_stats, &rx_kicks, initial_rx_kicks), (tx_stats, &tx_kicks, 0)] {
        let sent = kicks.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(stats.kicks, sent);
        assert!(stats.kicks <= stats.publishes, "{case:?}: {} kicks for {} bursts", stats.kicks, stats.publishes);
        let (kicks, publishes) = (stats.kicks - initial, stats.publishes - initial);
        match case.notify {
            NotifyMode::Never => assert_eq!(kicks, 0, "{case:?}: kicked a device that said never"),
            NotifyMode::Always if !case.spec.event_idx => assert_eq!(kicks, publishes, "{case:?}"),
            _ => {}
        }
    }
    drop((rx, tx));
    let stats = pool.stats();
    assert_eq!(stats.in_use, 0, "{case:?}: {stats:?}");
    total
}

fn cases(format: RingFormat, sizes: &[u16], packets: u64) -> Vec<Case> {
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        for in_order in [false, true] {
            let notify = match (i + in_order as usize) % 3 {
                0 => NotifyMode::Never,
                1 => NotifyMode::Always,
                _ => NotifyMode::AtIndex(size / 4),
            };
            // Event-index notifications need EVENT_IDX; split rings also run without it.
            let event_idx = matches!(notify, NotifyMode::AtIndex(_)) || (format == RingFormat::Split && i % 2 == 0);
            out.push(Case {
                spec: RingSpec { format, size, in_order, event_idx },
                notify,
                batch_used: in_order && i % 2 == 1,
                packets,
            });
        }
    }
    out
}

/// 5.2 million packets on packed rings (sizes 64 to 4096, odd sizes included).
#[test]
fn packed_loopback_stress() {
    let total: u64 = cases(RingFormat::Packed, &[64, 256, 1000, 1024, 4096], 520_000)
        .into_iter()
        .enumerate()
        .map(|(i, case)| run(case, i as u64 + 1))
        .sum();
    assert!(total >= 5_000_000);
}

/// 5.2 million packets on split rings (power-of-two sizes 64 to 4096).
#[test]
fn split_loopback_stress() {
    let total: u64 = cases(RingFormat::Split, &[64, 128, 512, 1024, 4096], 520_000)
        .into_iter()
        .enumerate()
        .map(|(i, case)| run(case, i as u64 + 100))
        .sum();
    assert!(total >= 5_000_000);
}
