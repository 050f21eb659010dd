//! Checksum and segmentation offload metadata over the software device, whose loopback hands
//! the transmitted virtio-net header back on receive (as a vhost-net pair of ports would): what
//! the transmit side asks for arrives as typed metadata on the receive side, a 64 KB TCP
//! super-packet crosses whole as a chain, requests a port cannot honour are refused, and a
//! header the receive side did not negotiate is counted and dropped. Every mbuf comes back.

use std::time::{Duration, Instant};

use virtio_pmd::mbuf::{Checksum, Gso, GsoKind, Mbuf, Mempool, MempoolConfig, Offload};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{Offloads, RxPath, TxPath};
use virtio_pmd::testing::{
    queue_pair_with_paths, DeviceConfig, DeviceCore, Mode, NotifyMode, QueuePair, RingSpec, SoftDevice,
};
use virtio_pmd::transport::RingFormat;

const ALL: Offloads = Offloads { tx_checksum: true, tso4: true, tso6: true, rx_checksum: true, lro4: true, lro6: true };

fn pool() -> Mempool {
    let config = MempoolConfig { count: 4096, huge_pages: HugePages::Never, ..Default::default() };
    Mempool::new(&config, &IovaAllocator::identity()).expect("pool")
}

struct Rig {
    pool: Mempool,
    pair: QueuePair,
    device: SoftDevice,
}

fn rig(format: RingFormat, mergeable: bool, rx: Offloads, tx: Offloads) -> Rig {
    let pool = pool();
    let spec = RingSpec { format, size: 256, in_order: true, event_idx: false };
    let rx_path = RxPath::Offloads { mergeable, offloads: rx };
    let pair = queue_pair_with_paths(spec, &pool, 0, rx_path, TxPath::Offloads(tx)).expect("queues");
    let config = DeviceConfig {
        mode: Mode::Loopback,
        in_order: true,
        notify: NotifyMode::Never,
        mergeable,
        ..Default::default()
    };
    let core = DeviceCore::new(config, pair.space.clone(), Some(pair.rx_spec), Some(pair.tx_spec)).unwrap();
    Rig { pool, pair, device: SoftDevice::spawn(core).unwrap() }
}

/// A TCP/IPv4 frame of `len` bytes (Ethernet, IPv4, TCP headers, then a pattern).
fn tcp_frame(len: usize, seq: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(3).wrapping_add(seq)).collect();
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = 6;
    f
}

/// Sends `packets` (bytes, offload request) one at a time and returns what came back for each:
/// `Some((bytes, offload, segments))`, or `None` when it was dropped on either side.
fn exchange(rig: &mut Rig, packets: &[(Vec<u8>, Offload)]) -> Vec<Option<(Vec<u8>, Offload, u16)>> {
    let mut results = Vec::new();
    let mut out: Vec<Mbuf> = Vec::with_capacity(8);
    for (bytes, offload) in packets {
        let mut m = rig.pool.alloc().unwrap();
        m.extend_from_slice(&rig.pool, bytes).unwrap();
        m.set_offload(*offload);
        let before = (rig.pair.tx.stats().bad_headers, rig.pair.rx.stats().drops);
        let mut pkts = vec![m];
        assert_eq!(rig.pair.tx.tx_burst(&mut pkts), 1);
        if rig.pair.tx.stats().bad_headers > before.0 {
            results.push(None);
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let got = loop {
            assert!(Instant::now() < deadline, "packet neither arrived nor was dropped");
            rig.pair.tx.reclaim();
            rig.pair.rx.rx_burst(&mut out);
            if let Some(m) = out.pop() {
                break Some((m.to_vec(), m.offload(), m.nb_segs()));
            }
            if rig.pair.rx.stats().drops > before.1 {
                break None;
            }
        };
        results.push(got);
    }
    results
}

fn finish(rig: Rig) {
    let Rig { pool, pair, device } = rig;
    device.stop().expect("rings stayed well-formed");
    drop(pair);
    assert_eq!(pool.stats().in_use, 0, "every segment of every mbuf is back");
}

const CSUM: Checksum = Checksum::Partial { start: 34, offset: 16 };

#[test]
fn requests_arrive_as_metadata_and_super_packets_cross_whole() {
    for format in [RingFormat::Packed, RingFormat::Split] {
        let mut rig = rig(format, true, ALL, ALL);
        let tso = |kind, size| Offload { checksum: CSUM, gso: Some(Gso { kind, size, ecn: false }) };
        let packets = vec![
            (tcp_frame(60, 1), Offload::NONE),
            (tcp_frame(1514, 2), Offload { checksum: CSUM, gso: None }),
            (tcp_frame(65_000, 3), tso(GsoKind::Tcpv4, 1448)),
            (tcp_frame(9000, 4), tso(GsoKind::Tcpv6, 8948)),
            // Nothing to do for the device: sent as no offload.
            (tcp_frame(100, 5), Offload { checksum: Checksum::Valid, gso: None }),
        ];
        let got = exchange(&mut rig, &packets);
        for (i, ((bytes, offload), got)) in packets.iter().zip(&got).enumerate() {
            let (rx_bytes, rx_offload, segs) = got.as_ref().unwrap_or_else(|| panic!("{format:?}: packet {i} dropped"));
            assert_eq!(rx_bytes, bytes, "{format:?}: packet {i} intact");
            let expected = if offload.checksum == Checksum::Valid { Offload::NONE } else { *offload };
            assert_eq!(*rx_offload, expected, "{format:?}: packet {i}'s metadata");
            assert_eq!(*segs as usize, (bytes.len() + 12).div_ceil(2048 + 12), "{format:?}: packet {i}");
        }
        assert_eq!(rig.pair.rx.stats().bad_headers + rig.pair.tx.stats().bad_headers, 0);
        finish(rig);
    }
}

#[test]
fn requests_the_port_cannot_honour_are_refused_and_counted() {
    let csum_only = Offloads { tx_checksum: true, ..Offloads::default() };
    let mut rig = rig(RingFormat::Split, true, ALL, csum_only);
    let tso = Offload { checksum: CSUM, gso: Some(Gso { kind: GsoKind::Tcpv4, size: 1448, ecn: false }) };
    let packets = vec![
        (tcp_frame(9000, 1), tso),
        (tcp_frame(60, 2), Offload { checksum: Checksum::Partial { start: 34, offset: 40 }, gso: None }),
        (tcp_frame(60, 3), Offload { checksum: CSUM, gso: None }),
    ];
    let got = exchange(&mut rig, &packets);
    assert!(got[0].is_none() && got[1].is_none(), "TSO not negotiated; checksum field beyond the frame");
    assert_eq!(got[2].as_ref().map(|g| g.1), Some(Offload { checksum: CSUM, gso: None }));
    assert_eq!(rig.pair.tx.stats().bad_headers, 2);
    finish(rig);
}

#[test]
fn a_header_the_receive_side_did_not_negotiate_is_counted_and_dropped() {
    for mergeable in [true, false] {
        // The receive side reports checksums but never asked for LRO: a super-packet's header
        // (GSO TCPv4) is one the device must not write.
        let rx = Offloads { rx_checksum: true, ..Offloads::default() };
        let mut rig = rig(RingFormat::Packed, mergeable, rx, ALL);
        let tso = Offload { checksum: CSUM, gso: Some(Gso { kind: GsoKind::Tcpv4, size: 1448, ecn: false }) };
        let len = if mergeable { 20_000 } else { 2000 };
        let packets = vec![(tcp_frame(len, 1), tso), (tcp_frame(200, 2), Offload { checksum: CSUM, gso: None })];
        let got = exchange(&mut rig, &packets);
        assert!(got[0].is_none(), "mergeable {mergeable}: dropped");
        assert_eq!(got[1].as_ref().map(|g| g.1), Some(Offload { checksum: CSUM, gso: None }));
        assert_eq!((rig.pair.rx.stats().bad_headers, rig.pair.rx.stats().drops), (1, 1));
        finish(rig);
    }
}
