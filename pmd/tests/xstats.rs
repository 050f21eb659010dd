//! Extended statistics over the software device in loopback: DPDK's names with the values the
//! traffic gives them, packet classes (size bins, multicast, broadcast) only when configured,
//! reset, and rates between two snapshots.

use std::time::{Duration, Instant};

use virtio_pmd::mbuf::{Mempool, MempoolConfig};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{rates, Port, PortConfig, Xstat};
use virtio_pmd::testing::{FakeDeviceConfig, FakeTransport};

fn get(x: &[Xstat], name: &str) -> Option<u64> {
    x.iter().find(|s| s.name == name).map(|s| s.value)
}

/// Sends `frames` (destination MAC, length) through the loopback and receives them all.
fn loop_back(port: &mut Port, pool: &Mempool, frames: &[([u8; 6], usize)]) {
    let (mut rx, mut tx) = port.take_queues(0).expect("queue pair 0");
    let mut burst = Vec::with_capacity(32);
    for (dst, len) in frames {
        let mut m = pool.alloc().expect("mbuf");
        let data = m.append(*len).expect("room");
        data.fill(0x5a);
        data[..6].copy_from_slice(dst);
        burst.push(m);
        while !burst.is_empty() {
            tx.tx_burst(&mut burst);
        }
    }
    let (mut got, deadline) = (0, Instant::now() + Duration::from_secs(10));
    while got < frames.len() && Instant::now() < deadline {
        got += rx.rx_burst(&mut burst);
        burst.clear();
        tx.reclaim();
    }
    assert_eq!(got, frames.len(), "every frame looped back");
    // The port keeps the queues' counters: they outlive the queues.
    drop((rx, tx));
}

fn open(packet_classes: bool) -> (Port, Mempool) {
    let iova = IovaAllocator::identity();
    let pool = Mempool::new(&MempoolConfig { count: 1024, huge_pages: HugePages::Never, ..Default::default() }, &iova)
        .unwrap();
    let config = PortConfig { huge_pages: HugePages::Never, packet_classes, ..Default::default() };
    let port = Port::open(Box::new(FakeTransport::new(FakeDeviceConfig::modern())), &pool, &config, &iova).unwrap();
    (port, pool)
}

const BROADCAST: [u8; 6] = [0xff; 6];
const MULTICAST: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];
const UNICAST: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

#[test]
fn xstats_count_the_traffic_under_dpdks_names_with_classes_when_configured() {
    let (mut port, pool) = open(true);
    let frames = [(BROADCAST, 60), (MULTICAST, 64), (UNICAST, 64), (UNICAST, 200), (UNICAST, 1514)];
    loop_back(&mut port, &pool, &frames);
    let x = port.xstats();
    assert_eq!(get(&x, "rx_good_packets"), Some(5));
    assert_eq!(get(&x, "tx_good_packets"), Some(5));
    assert_eq!(get(&x, "rx_good_bytes"), Some(60 + 64 + 64 + 200 + 1514));
    assert_eq!(get(&x, "rx_q0_packets"), Some(5));
    assert_eq!(get(&x, "tx_q0_bytes"), Some(60 + 64 + 64 + 200 + 1514));
    for dir in ["rx", "tx"] {
        assert_eq!(get(&x, &format!("{dir}_undersize_packets")), Some(1), "{dir}");
        assert_eq!(get(&x, &format!("{dir}_size_64_packets")), Some(2), "{dir}");
        assert_eq!(get(&x, &format!("{dir}_size_128_255_packets")), Some(1), "{dir}");
        assert_eq!(get(&x, &format!("{dir}_q0_size_1024_1518_packets")), Some(1), "{dir}");
        assert_eq!(get(&x, &format!("{dir}_multicast_packets")), Some(2), "{dir}: broadcast counts as multicast");
        assert_eq!(get(&x, &format!("{dir}_broadcast_packets")), Some(1), "{dir}");
    }
    assert_eq!(get(&x, "rx_ring_bad_id"), Some(0));
    assert!(get(&x, "rx_kicks").is_some() && get(&x, "tx_publishes").is_some_and(|n| n > 0));

    let before = port.xstats();
    port.reset_stats();
    assert!(port.xstats().iter().all(|s| s.value == 0), "reset: every counter from zero");
    let r = rates(&before, &x, Duration::from_secs(1));
    assert!(r.iter().all(|(_, v)| *v == 0.0), "no change between two equal snapshots");
    drop(port);
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn without_packet_classes_there_are_no_class_counters() {
    let (mut port, pool) = open(false);
    loop_back(&mut port, &pool, &[(BROADCAST, 64)]);
    let x = port.xstats();
    assert_eq!(get(&x, "rx_good_packets"), Some(1));
    assert_eq!(get(&x, "rx_size_64_packets"), None);
    assert_eq!(get(&x, "rx_broadcast_packets"), None);
    port.reset_stats();
    assert_eq!(get(&port.xstats(), "rx_good_packets"), Some(0));
    drop(port);
    assert_eq!(pool.stats().in_use, 0);
}
