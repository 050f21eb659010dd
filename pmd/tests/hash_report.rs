//! Hash reports (VIRTIO_NET_F_HASH_REPORT) over the software device: with the 20-byte header
//! both ways, every received frame carries exactly the hash value and report type the device
//! wrote, as an `RxHash`; `VIRTIO_NET_HASH_REPORT_NONE` gives no hash; a report type the spec
//! does not define is counted (`bad_hash_reports`) and ignored, the frame itself delivered
//! intact. On both ring formats, in order and not, with and without mergeable buffers; and a
//! port on the fake transport negotiates hash reports only when asked, enabling the hash types
//! through the control queue. Every mbuf must be back in its pool at the end.

use std::time::{Duration, Instant};

use virtio_pmd::mbuf::{HashKind, Mbuf, Mempool, MempoolConfig, RxHash};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{Port, PortConfig, RxPath, TxPath};
use virtio_pmd::spec::features::{self, Features};
use virtio_pmd::spec::net as net_spec;
use virtio_pmd::testing::{
    queue_pair_with_paths, CtrlRecord, DeviceConfig, DeviceCore, FakeCtrl, FakeDeviceConfig, FakeTransport, Mode,
    NotifyMode, QueuePair, RingSpec, Rng, SoftDevice,
};
use virtio_pmd::transport::RingFormat;
use virtio_pmd::Error;

/// What the device reports for a frame: an FNV-1a hash of its bytes, and a report type from
/// its first byte, covering NONE (0), the nine types, and values no spec defines.
fn reporter(frame: &[u8]) -> (u32, u16) {
    let hash = frame.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    let report = match frame.first().map_or(0, |b| b % 13) {
        10 => 10,
        11 => 0x100,
        12 => u16::MAX,
        r => u16::from(r),
    };
    (hash, report)
}

/// The hash the driver must put on the mbuf of `frame`: `None` for NONE and for bogus types.
fn expected(frame: &[u8]) -> Option<RxHash> {
    let (value, report) = reporter(frame);
    HashKind::from_report(report).map(|kind| RxHash { value, kind })
}

fn is_bogus(frame: &[u8]) -> bool {
    let report = reporter(frame).1;
    report != net_spec::HASH_REPORT_NONE && HashKind::from_report(report).is_none()
}

fn pool() -> Mempool {
    let config = MempoolConfig { count: 2048, huge_pages: HugePages::Never, ..Default::default() };
    Mempool::new(&config, &IovaAllocator::identity()).expect("pool")
}

struct Rig {
    pool: Mempool,
    pair: QueuePair,
    device: SoftDevice,
}

fn rig(spec: RingSpec, mergeable: bool) -> Rig {
    let pool = pool();
    let rx_path = RxPath::HashReport { mergeable, offloads: None };
    let tx_path = if mergeable { TxPath::Chains } else { TxPath::Simple };
    let pair = queue_pair_with_paths(spec, &pool, 0, rx_path, tx_path).expect("queues");
    let config = DeviceConfig {
        mode: Mode::Loopback,
        in_order: spec.in_order,
        notify: NotifyMode::Never,
        mergeable,
        hash_report: Some(reporter),
        ..Default::default()
    };
    let core = DeviceCore::new(config, pair.space.clone(), Some(pair.rx_spec), Some(pair.tx_spec)).unwrap();
    Rig { pool, pair, device: SoftDevice::spawn(core).unwrap() }
}

/// `bytes` as a packet: one segment when it fits, a chain of 2048-byte segments otherwise.
fn packet(pool: &Mempool, bytes: &[u8]) -> Mbuf {
    let mut pieces = bytes.chunks(2048);
    let mut m = pool.alloc().unwrap();
    let first = pieces.next().unwrap_or_default();
    m.append(first.len()).unwrap().copy_from_slice(first);
    for piece in pieces {
        let mut seg = pool.alloc().unwrap();
        seg.append(piece.len()).unwrap().copy_from_slice(piece);
        m.chain(seg).unwrap();
    }
    m
}

/// Sends `frames` and returns what came back (bytes and hash) until all did or `timeout` passed.
fn exchange(rig: &mut Rig, frames: &[Vec<u8>], timeout: Duration) -> Vec<(Vec<u8>, Option<RxHash>)> {
    let mut received = Vec::new();
    let mut out: Vec<Mbuf> = Vec::with_capacity(32);
    let mut pending: Vec<Mbuf> = Vec::with_capacity(32);
    let mut next = 0;
    let deadline = Instant::now() + timeout;
    while received.len() < frames.len() && Instant::now() < deadline {
        while pending.len() < 16 && next < frames.len() {
            pending.push(packet(&rig.pool, &frames[next]));
            next += 1;
        }
        rig.pair.tx.tx_burst(&mut pending);
        rig.pair.tx.reclaim();
        rig.pair.rx.rx_burst(&mut out);
        received.extend(out.drain(..).map(|m| (m.to_vec(), m.rx_hash())));
    }
    received
}

/// Random frames, each unique (its index in bytes 1..9), its first byte (the report type)
/// random; up to `max_len` bytes.
fn frames(rng: &mut Rng, count: usize, max_len: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let len = rng.range(60, max_len) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            f[1..9].copy_from_slice(&(i as u64).to_le_bytes());
            f
        })
        .collect()
}

#[test]
fn every_frame_carries_the_hash_the_device_reported_and_bogus_types_are_counted() {
    let mut rng = Rng::new(11);
    for format in [RingFormat::Packed, RingFormat::Split] {
        for in_order in [false, true] {
            for mergeable in [false, true] {
                let spec = RingSpec { format, size: 256, in_order, event_idx: false };
                let mut rig = rig(spec, mergeable);
                // Mergeable: frames beyond one buffer (2048 + 20 bytes) come back chained.
                let sent = frames(&mut rng, 600, if mergeable { 5000 } else { 1515 });
                let got = exchange(&mut rig, &sent, Duration::from_secs(30));
                let case = format!("{format:?} in_order {in_order} mergeable {mergeable}");
                assert_eq!(got.len(), sent.len(), "{case}: every frame came back");
                for (bytes, hash) in &got {
                    let i = u64::from_le_bytes(bytes[1..9].try_into().unwrap()) as usize;
                    assert_eq!(bytes, &sent[i], "{case}: frame {i} intact, the 20-byte header off both ways");
                    assert_eq!(*hash, expected(bytes), "{case}: frame {i}'s hash as the device reported it");
                }
                let bogus = sent.iter().filter(|f| is_bogus(f)).count() as u64;
                let hashed = got.iter().filter(|(_, h)| h.is_some()).count();
                assert!(bogus > 0 && hashed > 0, "{case}: the frames cover bogus types and hashes");
                let rx = rig.pair.rx.stats();
                assert_eq!(rx.bad_hash_reports, bogus, "{case}: each bogus report type counted once");
                assert_eq!((rx.packets, rx.drops, rx.bad_headers, rx.errors), (sent.len() as u64, 0, 0, 0), "{case}");
                assert_eq!(rx.bytes, sent.iter().map(|f| f.len() as u64).sum::<u64>(), "{case}: bytes without headers");
                let Rig { pool, pair, device } = rig;
                device.stop().expect("rings stayed well-formed");
                drop(pair);
                assert_eq!(pool.stats().in_use, 0, "{case}: every mbuf is back");
            }
        }
    }
}

#[test]
fn a_received_hash_is_cleared_when_the_buffer_is_received_again_without_one() {
    let spec = RingSpec { format: RingFormat::Split, size: 64, in_order: true, event_idx: false };
    let mut rig = rig(spec, false);
    // Report type from the first byte: 2 (TCPv4), then 0 (NONE) on the same recycled buffers.
    let with = vec![2u8; 64];
    let without = vec![0u8; 64];
    for round in 0..4 {
        let got = exchange(&mut rig, std::slice::from_ref(&with), Duration::from_secs(10));
        assert_eq!(got[0].1.map(|h| h.kind), Some(HashKind::Tcpv4), "round {round}");
        let got = exchange(&mut rig, std::slice::from_ref(&without), Duration::from_secs(10));
        assert_eq!(got[0].1, None, "round {round}: no stale hash");
    }
    let Rig { pool, pair, device } = rig;
    device.stop().unwrap();
    drop(pair);
    assert_eq!(pool.stats().in_use, 0);
}

const CTRL_DEVICE: &[u32] = &[
    features::VERSION_1,
    features::RING_PACKED,
    features::IN_ORDER,
    net_spec::F_MAC,
    net_spec::F_CTRL_VQ,
    net_spec::F_MQ,
    net_spec::F_HASH_REPORT,
];

fn device(offered: &[u32]) -> FakeDeviceConfig {
    FakeDeviceConfig {
        offered: Features::from_bits(offered),
        num_queues: 3,
        hash_reporter: Some(reporter),
        ..FakeDeviceConfig::modern()
    }
}

fn open(device: FakeDeviceConfig, config: &PortConfig, pool: &Mempool) -> (virtio_pmd::Result<Port>, FakeCtrl) {
    let transport = FakeTransport::new(device);
    let ctrl = transport.ctrl.clone();
    (Port::open(Box::new(transport), pool, config, &IovaAllocator::identity()), ctrl)
}

fn commands(ctrl: &FakeCtrl) -> Vec<CtrlRecord> {
    std::mem::take(&mut ctrl.lock().unwrap().commands)
}

#[test]
fn a_port_negotiates_hash_reports_only_when_asked_and_enables_the_hash_types() {
    let pool = pool();
    let base = PortConfig { huge_pages: HugePages::Never, ..Default::default() };
    let asked = PortConfig { rx_hash_report: true, ..base.clone() };

    // Not asked: the simple paths, the feature left alone.
    let (port, _) = open(device(CTRL_DEVICE), &base, &pool);
    let port = port.expect("port");
    assert_eq!((port.rx_path(), port.tx_path()), (RxPath::Simple, TxPath::Simple));
    assert!(!port.features().has(net_spec::F_HASH_REPORT));
    drop(port);

    // Asked, without RSS: VIRTIO_NET_CTRL_MQ_HASH_CONFIG with the default types and key.
    let (port, fake) = open(device(CTRL_DEVICE), &asked, &pool);
    let mut port = port.expect("port");
    assert_eq!(port.rx_path(), RxPath::HashReport { mergeable: false, offloads: None });
    let records = commands(&fake);
    let config = records.iter().find(|r| (r.class, r.command) == (4, 2)).expect("a HASH_CONFIG command");
    let mut data = virtio_pmd::net::DEFAULT_HASH_TYPES.to_le_bytes().to_vec();
    data.extend_from_slice(&[0; 8]);
    data.push(40);
    data.extend_from_slice(&virtio_pmd::net::DEFAULT_KEY);
    assert_eq!(config.data, data, "struct virtio_net_hash_config");
    // Frames looped back through the port carry their hashes.
    let (mut rx, mut tx) = port.take_queues(0).expect("queue pair 0");
    let sent = frames(&mut Rng::new(3), 200, 1515);
    let mut pending: Vec<Mbuf> = Vec::with_capacity(16);
    let mut out: Vec<Mbuf> = Vec::with_capacity(32);
    let (mut next, mut got) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < sent.len() && Instant::now() < deadline {
        while pending.len() < 16 && next < sent.len() {
            let mut m = pool.alloc().unwrap();
            m.append(sent[next].len()).unwrap().copy_from_slice(&sent[next]);
            pending.push(m);
            next += 1;
        }
        tx.tx_burst(&mut pending);
        tx.reclaim();
        rx.rx_burst(&mut out);
        for m in out.drain(..) {
            assert_eq!(m.rx_hash(), expected(m.data()), "the port's frame {got}");
            got += 1;
        }
    }
    assert_eq!(got, sent.len(), "every frame came back");
    drop((rx, tx, port));

    // Asked, with RSS: the RSS configuration carries the hash types, for one pair too.
    let with_rss: Vec<u32> = CTRL_DEVICE.iter().copied().chain([net_spec::F_RSS]).collect();
    let (port, fake) = open(device(&with_rss), &asked, &pool);
    let port = port.expect("port");
    assert!(port.rss_config().is_some_and(|rss| rss.hash_types == virtio_pmd::net::DEFAULT_HASH_TYPES));
    assert!(commands(&fake).iter().any(|r| (r.class, r.command) == (4, 1)), "an RSS_CONFIG command");
    drop(port);

    // Asked of a device without the feature, or without a control queue: clear errors.
    let without: Vec<u32> = CTRL_DEVICE.iter().copied().filter(|f| *f != net_spec::F_HASH_REPORT).collect();
    let Err(err) = open(device(&without), &asked, &pool).0 else { panic!("opened without VIRTIO_NET_F_HASH_REPORT") };
    assert!(matches!(err, Error::FeatureNotOffered { feature: "VIRTIO_NET_F_HASH_REPORT", .. }), "{err}");
    assert!(err.to_string().contains("hash=on"), "{err}");
    let no_ctrl = PortConfig { control_queue: false, ..asked.clone() };
    let Err(err) = open(device(CTRL_DEVICE), &no_ctrl, &pool).0 else { panic!("opened without a control queue") };
    assert!(err.to_string().contains("needs the control queue"), "{err}");
    assert_eq!(pool.stats().in_use, 0, "every mbuf is back");
}

#[test]
fn hashes_and_offload_metadata_share_the_20_byte_header() {
    use virtio_pmd::mbuf::{Checksum, Gso, GsoKind, Offload};
    use virtio_pmd::net::Offloads;
    const ALL: Offloads =
        Offloads { tx_checksum: true, tso4: true, tso6: true, rx_checksum: true, lro4: true, lro6: true };
    for format in [RingFormat::Packed, RingFormat::Split] {
        let pool = pool();
        let spec = RingSpec { format, size: 256, in_order: true, event_idx: false };
        let rx_path = RxPath::HashReport { mergeable: true, offloads: Some(ALL) };
        let mut pair = queue_pair_with_paths(spec, &pool, 0, rx_path, TxPath::Offloads(ALL)).expect("queues");
        let config =
            DeviceConfig { in_order: true, mergeable: true, hash_report: Some(reporter), ..Default::default() };
        let core = DeviceCore::new(config, pair.space.clone(), Some(pair.rx_spec), Some(pair.tx_spec)).unwrap();
        let device = SoftDevice::spawn(core).unwrap();
        let csum = Checksum::Partial { start: 34, offset: 16 };
        let tso = Offload { checksum: csum, gso: Some(Gso { kind: GsoKind::Tcpv4, size: 1448, ecn: false }) };
        // The first byte picks the report type: 2 (TCPv4), 0 (NONE), 11 (bogus, 0x100).
        for (i, (len, first, offload)) in
            [(1514, 2u8, Offload { checksum: csum, gso: None }), (30_000, 0, tso), (600, 11, Offload::NONE)]
                .into_iter()
                .enumerate()
        {
            let mut bytes: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            bytes[0] = first;
            bytes[12..14].copy_from_slice(&[0x08, 0x00]);
            (bytes[14], bytes[23]) = (0x45, 6);
            let mut m = pool.alloc().unwrap();
            m.extend_from_slice(&pool, &bytes).unwrap();
            m.set_offload(offload);
            let mut pkts = vec![m];
            assert_eq!(pair.tx.tx_burst(&mut pkts), 1, "{format:?}: packet {i} taken");
            let mut out: Vec<Mbuf> = Vec::with_capacity(4);
            let deadline = Instant::now() + Duration::from_secs(5);
            while out.is_empty() && Instant::now() < deadline {
                pair.tx.reclaim();
                pair.rx.rx_burst(&mut out);
            }
            let m = out.pop().unwrap_or_else(|| panic!("{format:?}: packet {i} came back"));
            assert_eq!(m.to_vec(), bytes, "{format:?}: packet {i} intact");
            assert_eq!(m.offload(), offload, "{format:?}: packet {i}'s offload metadata");
            assert_eq!(m.rx_hash(), expected(&bytes), "{format:?}: packet {i}'s hash");
        }
        let rx = pair.rx.stats();
        assert_eq!((rx.bad_headers, rx.bad_hash_reports, pair.tx.stats().bad_headers), (0, 1, 0), "{format:?}");
        device.stop().expect("rings stayed well-formed");
        drop(pair);
        assert_eq!(pool.stats().in_use, 0, "{format:?}: every segment back");
    }
}
