//! Indirect descriptors on the transmit chains path (VIRTIO_F_INDIRECT_DESC: "Indirect
//! Descriptors", 2.7.5.3; "Indirect Flag: Scatter-Gather Support", 2.8.7) over the software
//! device, which follows the tables as a device does and rejects a malformed one:
//!
//! - multi-segment frames go out as one ring descriptor each, naming a table that holds the
//!   chain (the device counts the chains it found in tables), on both ring formats, in order
//!   and not, and come back byte for byte over mergeable receive buffers; frames with more
//!   segments than a table holds go as direct chains, one-segment frames as one descriptor;
//! - the ring then holds as many multi-segment packets as it has descriptors;
//! - a port negotiates the feature only on the chains paths, when asked and offered, lays the
//!   tables with its rings, and forwards through them;
//! - every mbuf is back in its pool at the end.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_pmd::mbuf::{Mbuf, Mempool, MempoolConfig};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{Port, PortConfig, RxPath, TxPath};
use virtio_pmd::spec::features::{self, Features};
use virtio_pmd::spec::net as net_spec;
use virtio_pmd::testing::{
    queue_pair_with_tx_indirect, DeviceConfig, DeviceCore, FakeDeviceConfig, FakeTransport, Mode, NotifyMode,
    QueuePair, RingSpec, SoftDevice,
};
use virtio_pmd::transport::RingFormat;
use virtio_pmd::virtqueue::MAX_INDIRECT_SEGMENTS;

fn pool(count: u32) -> Mempool {
    let config = MempoolConfig { count, huge_pages: HugePages::Never, ..Default::default() };
    Mempool::new(&config, &IovaAllocator::identity()).expect("pool")
}

/// Frame `seq`'s bytes: `len` bytes that depend on both.
fn frame_bytes(seq: u64, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|i| (seq as usize * 131 + i * 7) as u8).collect();
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes
}

/// A packet of `bytes` in segments of `segment` bytes.
fn chained(pool: &Mempool, bytes: &[u8], segment: usize) -> Mbuf {
    let mut pieces = bytes.chunks(segment);
    let mut m = pool.alloc().expect("buffer");
    let first = pieces.next().unwrap_or_default();
    m.append(first.len()).expect("room").copy_from_slice(first);
    for piece in pieces {
        let mut seg = pool.alloc().expect("buffer");
        seg.append(piece.len()).expect("room").copy_from_slice(piece);
        m.chain(seg).expect("chain");
    }
    m
}

fn specs(size: u16) -> Vec<RingSpec> {
    let mut out = Vec::new();
    for format in [RingFormat::Packed, RingFormat::Split] {
        for in_order in [false, true] {
            out.push(RingSpec { format, size, in_order, event_idx: false });
        }
    }
    out
}

/// Frames of (length, segment size): 2 to 10 segments, one segment, and 90 segments (more
/// than a table holds: a direct chain).
const SHAPES: [(usize, usize); 6] = [(3000, 1000), (1514, 757), (9000, 1000), (60, 2048), (9000, 100), (4000, 1024)];

#[test]
fn multi_segment_frames_go_through_indirect_tables_and_come_back_intact() {
    for spec in specs(256) {
        let pool = pool(4096);
        let QueuePair { mut rx, mut tx, rx_spec, tx_spec, space, .. } =
            queue_pair_with_tx_indirect(spec, &pool, 0, RxPath::Mergeable, TxPath::Chains, true).expect("queues");
        assert_eq!(tx.indirect_segments(), MAX_INDIRECT_SEGMENTS);
        let config = DeviceConfig {
            mode: Mode::Loopback,
            in_order: spec.in_order,
            notify: NotifyMode::Never,
            window: 8,
            mergeable: true,
            ..Default::default()
        };
        let device = SoftDevice::spawn(DeviceCore::new(config, space, Some(rx_spec), Some(tx_spec)).unwrap()).unwrap();
        let total = 600u64;
        let shape = |seq: u64| SHAPES[seq as usize % SHAPES.len()];
        let (mut pending, mut out) = (Vec::with_capacity(8), Vec::with_capacity(32));
        let (mut next, mut received) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(60);
        while received < total {
            assert!(Instant::now() < deadline, "{spec:?}: stalled at {received} of {total}");
            while pending.len() < 8 && next < total {
                let (len, segment) = shape(next);
                pending.push(chained(&pool, &frame_bytes(next, len), segment));
                next += 1;
            }
            tx.tx_burst(&mut pending);
            tx.reclaim();
            rx.rx_burst(&mut out);
            for m in out.drain(..) {
                let bytes = m.to_vec();
                let seq = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                assert!(seq < total, "{spec:?}: frame {seq}");
                if spec.in_order {
                    assert_eq!(seq, received, "{spec:?}: in order");
                }
                assert_eq!(bytes, frame_bytes(seq, shape(seq).0), "{spec:?}: frame {seq} intact");
                received += 1;
            }
        }
        let in_tables = (0..total)
            .filter(|&seq| (2..=MAX_INDIRECT_SEGMENTS as usize).contains(&shape(seq).0.div_ceil(shape(seq).1)))
            .count() as u64;
        let stats = device.stats();
        assert_eq!(stats.tx_indirect.load(Ordering::Relaxed), in_tables, "{spec:?}: chains the device found in tables");
        assert_eq!(stats.tx_chains.load(Ordering::Relaxed), total, "{spec:?}");
        device.stop().expect("rings and tables stayed well-formed");
        let (rx_stats, tx_stats) = (rx.stats(), tx.stats());
        assert_eq!((rx_stats.packets, tx_stats.packets), (total, total), "{spec:?}");
        assert_eq!(
            (rx_stats.bad_headers, rx_stats.drops, rx_stats.errors, tx_stats.drops, tx_stats.errors),
            (0, 0, 0, 0, 0)
        );
        drop((rx, tx));
        assert_eq!(pool.stats().in_use, 0, "{spec:?}: every segment of every mbuf is back");
    }
}

#[test]
fn with_tables_the_ring_holds_a_multi_segment_packet_per_descriptor() {
    for spec in specs(16) {
        for indirect in [false, true] {
            let pool = pool(512);
            let QueuePair { mut tx, .. } =
                queue_pair_with_tx_indirect(spec, &pool, 0, RxPath::Simple, TxPath::Chains, indirect).expect("queues");
            // No device: nothing completes, so the ring fills.
            let mut pkts: Vec<Mbuf> = (0..32).map(|seq| chained(&pool, &frame_bytes(seq, 400), 100)).collect();
            let taken = tx.tx_burst(&mut pkts);
            assert_eq!(taken, if indirect { 16 } else { 4 }, "{spec:?} indirect {indirect}: 4-segment packets taken");
            assert_eq!(tx.in_flight() as usize, taken);
            drop(pkts);
            // The queue's creator stopped the device (there is none): in-flight mbufs go back.
            drop(tx);
            assert_eq!(pool.stats().in_use, 0, "{spec:?}: every mbuf back");
        }
    }
}

fn fake_device(offered: &[u32]) -> FakeDeviceConfig {
    FakeDeviceConfig { offered: Features::from_bits(offered), max_queue_size: 256, ..FakeDeviceConfig::modern() }
}

const OFFERED: &[u32] = &[
    features::VERSION_1,
    features::RING_PACKED,
    features::IN_ORDER,
    features::INDIRECT_DESC,
    net_spec::F_MAC,
    net_spec::F_MRG_RXBUF,
];

#[test]
fn a_port_negotiates_indirect_descriptors_only_on_the_chains_paths_when_asked() {
    let pool = pool(2048);
    let iova = IovaAllocator::identity();
    let base = PortConfig { huge_pages: HugePages::Never, rx_mergeable: true, ..Default::default() };
    let open = |offered: &[u32], config: &PortConfig| {
        Port::open(Box::new(FakeTransport::new(fake_device(offered))), &pool, config, &iova).expect("open")
    };
    // The one-descriptor path has no use for it, even when asked.
    let port = open(OFFERED, &PortConfig { tx_indirect: true, ..base.clone() });
    assert!(!port.features().has(features::INDIRECT_DESC));
    assert_eq!((port.tx_path(), port.tx_indirect_segments()), (TxPath::Simple, 0));
    drop(port);
    // Chains, not asked for (the default).
    let port = open(OFFERED, &PortConfig { tx_multi_segment: true, ..base.clone() });
    assert!(!port.features().has(features::INDIRECT_DESC));
    assert_eq!((port.tx_path(), port.tx_indirect_segments()), (TxPath::Chains, 0));
    drop(port);
    // Chains, not offered.
    let port = open(
        &OFFERED[..3],
        &PortConfig { tx_multi_segment: true, tx_indirect: true, rx_mergeable: false, ..base.clone() },
    );
    assert!(!port.features().has(features::INDIRECT_DESC));
    assert_eq!(port.tx_indirect_segments(), 0);
    drop(port);
    // Chains, asked for and offered: negotiated, and frames cross through tables.
    for ring in [virtio_pmd::net::RingChoice::Packed, virtio_pmd::net::RingChoice::Split] {
        let mut port = open(OFFERED, &PortConfig { tx_multi_segment: true, tx_indirect: true, ring, ..base.clone() });
        assert!(port.features().has(features::INDIRECT_DESC));
        assert_eq!((port.tx_path(), port.tx_indirect_segments()), (TxPath::Chains, MAX_INDIRECT_SEGMENTS));
        let (mut rx, mut tx) = port.take_queues(0).expect("queue pair 0");
        assert_eq!(tx.indirect_segments(), MAX_INDIRECT_SEGMENTS);
        let frame = frame_bytes(7, 5000);
        let (mut out, mut received, mut sent) = (Vec::with_capacity(32), 0, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while received < 200 && Instant::now() < deadline {
            if sent < 200 && tx.in_flight() < 64 {
                let mut pkts = vec![chained(&pool, &frame, 700)];
                sent += tx.tx_burst(&mut pkts);
            }
            tx.reclaim();
            rx.rx_burst(&mut out);
            for m in out.drain(..) {
                assert_eq!(m.to_vec(), frame);
                received += 1;
            }
        }
        assert_eq!(received, 200, "{ring:?}");
        assert_eq!((tx.stats().drops, tx.stats().errors, rx.stats().bad_headers), (0, 0, 0));
        drop((rx, tx, port));
        assert_eq!(pool.stats().in_use, 0, "{ring:?}: every mbuf back");
    }
}
