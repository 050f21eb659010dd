//! The port layer over a fake transport backed by the software device: initialisation and
//! feature negotiation, queue set-up, traffic, statistics, health, and teardown that returns
//! every mbuf.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{check_frame, frame_len, test_pool, write_frame, SeenSet};
use virtio_pmd::mbuf::{Mbuf, Mempool, MempoolConfig};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{Port, PortConfig, RingChoice, RxPath, TxPath};
use virtio_pmd::spec::features::{self, Features};
use virtio_pmd::spec::net as net_spec;
use virtio_pmd::spec::status;
use virtio_pmd::testing::{FakeDeviceConfig, FakeEvent, FakeTransport};
use virtio_pmd::transport::RingFormat;
use virtio_pmd::Error;

fn device(offered: &[u32]) -> FakeDeviceConfig {
    FakeDeviceConfig { offered: Features::from_bits(offered), ..FakeDeviceConfig::modern() }
}

const MODERN: &[u32] = &[
    features::VERSION_1,
    features::ACCESS_PLATFORM,
    features::RING_PACKED,
    features::IN_ORDER,
    features::EVENT_IDX,
    net_spec::F_MAC,
    net_spec::F_STATUS,
    net_spec::F_MTU,
];

fn config() -> PortConfig {
    PortConfig { huge_pages: HugePages::Never, port_id: 3, ..Default::default() }
}

fn open(offered: &[u32], config: &PortConfig, pool: &virtio_pmd::mbuf::Mempool) -> Result<Port, Error> {
    Port::open(Box::new(FakeTransport::new(device(offered))), pool, config, &IovaAllocator::identity())
}

/// Sends `total` frames (from `pool`, which the port mapped for its device) through the port's
/// loopback device from another thread and checks them.
fn loopback(port: &mut Port, pool: &Mempool, total: u64) {
    let pool = pool.clone();
    let in_order = port.features().has(features::IN_ORDER);
    let (mut rx, mut tx) = port.take_queues(0).expect("queue pair 0");
    assert!(port.take_queues(0).is_none(), "a queue pair is handed out once");
    let worker = std::thread::spawn(move || {
        let (mut pending, mut received): (Vec<Mbuf>, Vec<Mbuf>) = (Vec::with_capacity(32), Vec::with_capacity(32));
        let (mut seq, mut seen) = (0u64, SeenSet::new(total));
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.count < total {
            assert!(Instant::now() < deadline, "stalled at {} of {total}", seen.count);
            while pending.len() < 32 && seq < total {
                let Some(mut m) = pool.alloc() else { break };
                write_frame(seq, m.append(frame_len(seq)).unwrap());
                pending.push(m);
                seq += 1;
            }
            tx.tx_burst(&mut pending);
            rx.rx_burst(&mut received);
            for m in received.drain(..) {
                let got = check_frame(m.data()).expect("intact");
                if in_order {
                    assert_eq!(got, seen.count, "IN_ORDER: frames come back in order");
                }
                seen.insert(got).expect("each frame once");
                assert_eq!(m.port(), 3);
            }
        }
        (rx, tx)
    });
    let (rx, tx) = worker.join().expect("worker");
    let stats = port.stats();
    assert_eq!((stats.rx.packets, stats.tx.packets), (total, total));
    assert_eq!(stats.rx_queues.len(), 1);
    assert_eq!(stats.rx.errors + stats.tx.errors, 0);
    drop((rx, tx));
}

#[test]
fn packed_in_order_port_forwards_and_reports() {
    let pool = test_pool(2048);
    let mut port = open(MODERN, &config(), &pool).expect("port");
    assert_eq!(port.ring_format(), RingFormat::Packed);
    assert!(port.features().has(features::IN_ORDER) && port.features().has(features::ACCESS_PLATFORM));
    assert_eq!(port.ring_size(), 256);
    assert_eq!(port.mac(), Some([0x52, 0x54, 0, 0, 0, 1]));
    assert_eq!(port.mtu(), Some(1500));
    assert!(port.link_up().expect("healthy"));
    loopback(&mut port, &pool, 100_000);
    drop(port);
    assert_eq!(pool.stats().in_use, 0, "receive buffers are back once the port is gone");
}

#[test]
fn split_is_used_when_packed_is_not_offered() {
    let pool = test_pool(2048);
    let offered: Vec<u32> = MODERN.iter().copied().filter(|&f| f != features::RING_PACKED).collect();
    let config = PortConfig { ring_size: Some(128), ..config() };
    let mut port = open(&offered, &config, &pool).expect("port");
    assert_eq!((port.ring_format(), port.ring_size()), (RingFormat::Split, 128));
    loopback(&mut port, &pool, 50_000);
    drop(port);
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn forced_split_on_a_packed_device_and_no_in_order() {
    let pool = test_pool(2048);
    let config = PortConfig { ring: RingChoice::Split, in_order: false, ..config() };
    let mut port = open(MODERN, &config, &pool).expect("port");
    assert_eq!(port.ring_format(), RingFormat::Split);
    assert!(!port.features().has(features::IN_ORDER));
    loopback(&mut port, &pool, 20_000);
    drop(port);
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn dropping_a_queue_first_resets_the_device_and_returns_everything() {
    let pool = test_pool(1024);
    let mut port = open(MODERN, &config(), &pool).expect("port");
    let (rx, tx) = port.take_queues(0).unwrap();
    assert!(pool.stats().in_use > 0, "receive ring is filled");
    drop(rx);
    assert!(port.check().is_err(), "the device was reset before the receive buffers came back");
    drop(tx);
    drop(port);
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn legacy_only_device_is_refused_with_advice() {
    let pool = test_pool(512);
    let err = open(&[features::RING_PACKED, net_spec::F_MAC], &config(), &pool).unwrap_err().to_string();
    assert!(err.contains("legacy-only") && err.contains("disable-legacy=on"), "{err}");
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn ring_size_the_device_refuses_is_an_error_with_the_maximum() {
    let pool = test_pool(512);
    let err = open(MODERN, &PortConfig { ring_size: Some(4096), ..config() }, &pool).unwrap_err();
    assert!(matches!(err, Error::QueueSizeRefused { requested: 4096, max: 256, .. }), "{err}");
    assert!(err.to_string().contains("maximum is 256"), "{err}");
    let split: Vec<u32> = MODERN.iter().copied().filter(|&f| f != features::RING_PACKED).collect();
    let err = open(&split, &PortConfig { ring_size: Some(100), ..config() }, &pool).unwrap_err();
    assert!(err.to_string().contains("power of two"), "{err}");
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn packed_asked_for_but_not_offered() {
    let pool = test_pool(512);
    let split: Vec<u32> = MODERN.iter().copied().filter(|&f| f != features::RING_PACKED).collect();
    let err = open(&split, &PortConfig { ring: RingChoice::Packed, ..config() }, &pool).unwrap_err().to_string();
    assert!(err.contains("RING_PACKED") && err.contains("split"), "{err}");
}

#[test]
fn needs_reset_is_reported() {
    let pool = test_pool(1024);
    let transport = FakeTransport::new(device(MODERN));
    let needs_reset = transport.needs_reset.clone();
    let port = Port::open(Box::new(transport), &pool, &config(), &IovaAllocator::identity()).expect("port");
    assert!(port.check().is_ok());
    needs_reset.store(true, Ordering::Relaxed);
    let err = port.check().unwrap_err().to_string();
    assert!(err.contains("DEVICE_NEEDS_RESET"), "{err}");
    assert!(port.link_up().is_err());
}

#[test]
fn several_queue_pairs_need_a_transport_that_activates_them() {
    let pool = test_pool(512);
    let err = open(MODERN, &PortConfig { queue_pairs: 2, ..config() }, &pool).unwrap_err().to_string();
    assert!(err.contains("control queue") && err.contains("one queue pair"), "{err}");
    let err = open(MODERN, &PortConfig { queue_pairs: 0, ..config() }, &pool).unwrap_err().to_string();
    assert!(err.contains("at least one queue pair"), "{err}");
}

#[test]
fn behind_an_iommu_the_device_must_offer_access_platform() {
    let pool = test_pool(1024);
    let without: Vec<u32> = MODERN.iter().copied().filter(|&f| f != features::ACCESS_PLATFORM).collect();
    let open_behind_iommu = |offered: &[u32]| {
        let fake = FakeDeviceConfig { behind_iommu: true, ..device(offered) };
        Port::open(Box::new(FakeTransport::new(fake)), &pool, &config(), &IovaAllocator::identity())
    };
    let err = open_behind_iommu(&without).unwrap_err().to_string();
    assert!(err.contains("ACCESS_PLATFORM") && err.contains("iommu_platform=on"), "{err}");
    let port = open_behind_iommu(MODERN).expect("offered: accepted");
    assert!(port.features().has(features::ACCESS_PLATFORM));
}

#[test]
fn the_device_is_notified_only_after_driver_ok() {
    for ring in [RingChoice::Packed, RingChoice::Split] {
        let pool = test_pool(1024);
        let transport = FakeTransport::new(device(MODERN));
        let events = transport.events.clone();
        let port = Port::open(Box::new(transport), &pool, &PortConfig { ring, ..config() }, &IovaAllocator::identity())
            .expect("port");
        let events = events.lock().unwrap().clone();
        let driver_ok = events
            .iter()
            .position(|e| matches!(e, FakeEvent::Status(s) if s & status::DRIVER_OK != 0))
            .expect("DRIVER_OK was set");
        let first_kick = events.iter().position(|e| matches!(e, FakeEvent::Notify(_)));
        // 3.1.1: "The driver MUST NOT send any buffer available notifications to the device
        // before setting DRIVER_OK." The receive ring was filled before; its kick comes after.
        assert!(first_kick.is_some_and(|k| k > driver_ok), "{ring:?}: {events:?}");
        assert_eq!(events.iter().filter(|e| **e == FakeEvent::Notify(0)).count(), 1, "{ring:?}: one kick: {events:?}");
        assert_eq!(port.stats().rx.kicks, 1);
        drop(port);
        assert_eq!(pool.stats().in_use, 0);
    }
}

#[test]
fn a_failed_initialisation_resets_the_device_before_the_buffers_return() {
    let pool = test_pool(1024);
    let mut transport = FakeTransport::new(FakeDeviceConfig { refuse_driver_ok: true, ..device(MODERN) });
    // What the pool held out at each reset.
    let in_use_at_reset = Arc::new(Mutex::new(Vec::new()));
    let (probe_pool, seen) = (pool.clone(), in_use_at_reset.clone());
    transport.on_reset = Some(Box::new(move || seen.lock().unwrap().push(probe_pool.stats().in_use)));
    let err = Port::open(Box::new(transport), &pool, &config(), &IovaAllocator::identity()).unwrap_err();
    assert!(err.to_string().contains("DRIVER_OK"), "{err}");
    let seen = in_use_at_reset.lock().unwrap().clone();
    // The receive ring was filled when DRIVER_OK failed: a reset must come while its buffers
    // are still out, i.e. before they go back to the pool.
    assert!(seen.iter().any(|&n| n > 0), "no reset before the receive buffers returned: {seen:?}");
    assert_eq!(pool.stats().in_use, 0, "and they all came back");
}

#[test]
fn a_pool_whose_data_room_cannot_hold_a_frame_is_refused() {
    let small = Mempool::new(
        &MempoolConfig { count: 512, data_room: 1024, huge_pages: HugePages::Never, ..Default::default() },
        &IovaAllocator::identity(),
    )
    .expect("pool");
    // Without VIRTIO_NET_F_MTU: 1500 + 14 bytes.
    let without_mtu: Vec<u32> = MODERN.iter().copied().filter(|&f| f != net_spec::F_MTU).collect();
    let err = open(&without_mtu, &config(), &small).unwrap_err().to_string();
    assert!(err.contains("1514") && err.contains("data room"), "{err}");
    assert_eq!(small.stats().in_use, 0);
    // With it, the device's MTU counts: 9000 + 14 bytes do not fit the default data room.
    let pool = test_pool(512);
    let jumbo = FakeDeviceConfig { mtu: 9000, ..device(MODERN) };
    let err = Port::open(Box::new(FakeTransport::new(jumbo)), &pool, &config(), &IovaAllocator::identity())
        .unwrap_err()
        .to_string();
    assert!(err.contains("9014") && err.contains("MempoolConfig::data_room"), "{err}");
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn a_jumbo_mtu_with_small_buffers_needs_mergeable_receive_buffers() {
    let pool = test_pool(512);
    let mut offered = MODERN.to_vec();
    offered.push(net_spec::F_MRG_RXBUF);
    let jumbo = || Box::new(FakeTransport::new(FakeDeviceConfig { mtu: 9000, ..device(&offered) }));
    let iova = IovaAllocator::identity();
    // Offered but not asked for: the error says what to set.
    let err = Port::open(jumbo(), &pool, &config(), &iova).unwrap_err().to_string();
    assert!(err.contains("9014") && err.contains("PortConfig::rx_mergeable"), "{err}");
    // Asked for: negotiated, the mergeable receive path; the paths are the port's to report.
    let mergeable = PortConfig { rx_mergeable: true, tx_multi_segment: true, ..config() };
    let port = Port::open(jumbo(), &pool, &mergeable, &iova).expect("open");
    assert!(port.features().has(net_spec::F_MRG_RXBUF));
    assert_eq!((port.rx_path(), port.tx_path()), (RxPath::Mergeable, TxPath::Chains));
    assert_eq!(port.mtu(), Some(9000));
    jumbo_loopback(port, &pool);
    // Asked for but not offered: the one-buffer path, and the pool must hold a whole frame.
    let plain = Box::new(FakeTransport::new(FakeDeviceConfig { mtu: 9000, ..device(MODERN) }));
    let err = Port::open(plain, &pool, &mergeable, &iova).unwrap_err().to_string();
    assert!(err.contains("9014") && !err.contains("rx_mergeable"), "{err}");
    // The default: neither asked for nor negotiated.
    let port = open(&offered, &config(), &pool).expect("open");
    assert!(!port.features().has(net_spec::F_MRG_RXBUF));
    assert_eq!((port.rx_path(), port.tx_path()), (RxPath::Simple, TxPath::Simple));
    drop(port);
    assert_eq!(pool.stats().in_use, 0);
}

/// 9000-byte frames through the port's loopback device, as chains both ways.
fn jumbo_loopback(mut port: Port, pool: &Mempool) {
    let (mut rx, mut tx) = port.take_queues(0).expect("queue pair 0");
    let frame: Vec<u8> = (0..9014u32).map(|i| (i * 13) as u8).collect();
    let mut out = Vec::with_capacity(32);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = 0;
    let mut sent = 0;
    while received < 100 && Instant::now() < deadline {
        if sent < 100 && tx.in_flight() < 16 {
            let mut m = pool.alloc().expect("buffer");
            m.extend_from_slice(pool, &frame).expect("segments");
            let mut pkts = vec![m];
            sent += tx.tx_burst(&mut pkts);
        }
        tx.reclaim();
        rx.rx_burst(&mut out);
        for m in out.drain(..) {
            assert_eq!(m.nb_segs(), 5, "9014 + 12 header bytes in 2060-byte buffers");
            assert_eq!(m.to_vec(), frame);
            received += 1;
        }
    }
    assert_eq!(received, 100);
    assert_eq!((rx.stats().bad_headers, rx.stats().drops), (0, 0));
    drop((rx, tx, port));
}

#[test]
fn offloads_are_negotiated_only_when_asked_and_pick_the_paths() {
    use virtio_pmd::net::OffloadConfig;
    let pool = test_pool(512);
    let mut offered = MODERN.to_vec();
    offered.extend([
        net_spec::F_MRG_RXBUF,
        net_spec::F_CSUM,
        net_spec::F_GUEST_CSUM,
        net_spec::F_HOST_TSO4,
        net_spec::F_HOST_TSO6,
        net_spec::F_GUEST_TSO4,
        net_spec::F_GUEST_TSO6,
    ]);
    // Not asked for: none negotiated, the simple paths.
    let port = open(&offered, &config(), &pool).expect("open");
    assert_eq!(port.offloads(), Default::default());
    assert_eq!((port.rx_path(), port.tx_path()), (RxPath::Simple, TxPath::Simple));
    drop(port);
    // Transmit checksum only.
    let tx_csum = PortConfig { offloads: OffloadConfig { tx_checksum: true, ..Default::default() }, ..config() };
    let port = open(&offered, &tx_csum, &pool).expect("open");
    let offloads = port.offloads();
    assert!(offloads.tx_checksum && !offloads.tso4 && !offloads.rx_checksum && !offloads.lro4);
    assert_eq!((port.rx_path(), port.tx_path()), (RxPath::Simple, TxPath::Offloads(offloads)));
    drop(port);
    // LRO needs 64 KiB per frame: refused with 2 KiB buffers, unless mergeable.
    let all = OffloadConfig { tx_checksum: true, tso: true, rx_checksum: true, lro: true };
    let lro = PortConfig { offloads: all, ..config() };
    let err = open(&offered, &lro, &pool).unwrap_err().to_string();
    assert!(err.contains("65550") && err.contains("LRO") && err.contains("rx_mergeable"), "{err}");
    let port = open(&offered, &PortConfig { rx_mergeable: true, ..lro.clone() }, &pool).expect("open");
    let offloads = port.offloads();
    assert!(offloads.tx_checksum && offloads.tso4 && offloads.tso6 && offloads.rx_checksum && offloads.lro6);
    assert_eq!(port.rx_path(), RxPath::Offloads { mergeable: true, offloads });
    drop(port);
    // Asked for, not offered: not negotiated.
    let port = open(MODERN, &PortConfig { rx_mergeable: true, ..lro }, &pool).expect("open");
    assert_eq!(port.offloads(), Default::default());
    drop(port);
    assert_eq!(pool.stats().in_use, 0);
}
