//! Multi-segment packets over the software device: transmit chains (one descriptor per
//! segment) and mergeable receive buffers (a frame over `num_buffers` buffers comes back
//! chained), on both ring formats, in order and not; and a device that lies in `num_buffers`.
//! Every byte is compared and every mbuf must be back in its pool at the end.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_pmd::mbuf::{Mbuf, Mempool, MempoolConfig};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{RxPath, TxPath};
use virtio_pmd::testing::{
    queue_pair_with_paths, DeviceConfig, DeviceCore, Fault, FaultPlan, Mode, NotifyMode, QueuePair, RingSpec, Role,
    SoftDevice,
};
use virtio_pmd::transport::RingFormat;

fn pool(count: u32, data_room: u16) -> Mempool {
    let config = MempoolConfig { count, data_room, huge_pages: HugePages::Never, ..Default::default() };
    Mempool::new(&config, &IovaAllocator::identity()).expect("pool")
}

/// Frame `seq`'s bytes: `len` bytes that depend on both.
fn frame_bytes(seq: u64, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|i| (seq as usize * 131 + i * 7) as u8).collect();
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes
}

fn specs() -> Vec<RingSpec> {
    let mut out = Vec::new();
    for format in [RingFormat::Packed, RingFormat::Split] {
        for in_order in [false, true] {
            out.push(RingSpec { format, size: 256, in_order, event_idx: false });
        }
    }
    out
}

struct Rig {
    pool: Mempool,
    pair: QueuePair,
    device: SoftDevice,
}

fn rig(spec: RingSpec, data_room: u16, fault: Option<FaultPlan>) -> Rig {
    let pool = pool(2048, data_room);
    let pair = queue_pair_with_paths(spec, &pool, 0, RxPath::Mergeable, TxPath::Chains).expect("queues");
    let config = DeviceConfig {
        mode: Mode::Loopback,
        in_order: spec.in_order,
        notify: NotifyMode::Never,
        window: 8,
        mergeable: true,
        fault,
        ..Default::default()
    };
    let core = DeviceCore::new(config, pair.space.clone(), Some(pair.rx_spec), Some(pair.tx_spec)).unwrap();
    Rig { pool, pair, device: SoftDevice::spawn(core).unwrap() }
}

/// Sends `lens.len()` frames, each built as a chain of `segment`-byte pieces, and returns the
/// frames received until all came back or `timeout` passed (as contiguous bytes and segment
/// counts).
fn exchange(rig: &mut Rig, lens: &[usize], segment: usize, timeout: Duration) -> Vec<(Vec<u8>, u16)> {
    let mut received = Vec::new();
    let mut out: Vec<Mbuf> = Vec::with_capacity(32);
    let mut pending: Vec<Mbuf> = Vec::with_capacity(32);
    let mut next = 0;
    let deadline = Instant::now() + timeout;
    while received.len() < lens.len() && Instant::now() < deadline {
        while pending.len() < 8 && next < lens.len() {
            let bytes = frame_bytes(next as u64, lens[next]);
            let mut m = rig.pool.alloc().unwrap();
            let first = segment.min(bytes.len());
            m.append(first).unwrap().copy_from_slice(&bytes[..first]);
            for piece in bytes[first..].chunks(segment) {
                let mut seg = rig.pool.alloc().unwrap();
                seg.append(piece.len()).unwrap().copy_from_slice(piece);
                m.chain(seg).unwrap();
            }
            pending.push(m);
            next += 1;
        }
        rig.pair.tx.tx_burst(&mut pending);
        rig.pair.tx.reclaim();
        rig.pair.rx.rx_burst(&mut out);
        received.extend(out.drain(..).map(|m| (m.to_vec(), m.nb_segs())));
    }
    received
}

fn finish(rig: Rig) {
    let Rig { pool, pair, device } = rig;
    device.stop().expect("rings stayed well-formed");
    drop(pair);
    assert_eq!(pool.stats().in_use, 0, "every segment of every mbuf is back");
}

#[test]
fn jumbo_frames_cross_as_chains_both_ways() {
    for spec in specs() {
        let mut rig = rig(spec, 2048, None);
        let lens: Vec<usize> = (0..300).map(|i| [9000, 60, 2048 - 12, 2049, 4000, 1514][i % 6]).collect();
        let got = exchange(&mut rig, &lens, 1000, Duration::from_secs(30));
        assert_eq!(got.len(), lens.len(), "{spec:?}: every frame came back");
        for (i, (bytes, segs)) in got.iter().enumerate() {
            let seq = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            if !spec.in_order {
                assert!(seq < lens.len(), "{spec:?}: frame {i}");
            }
            assert_eq!(bytes, &frame_bytes(seq as u64, lens[seq]), "{spec:?}: frame {seq} intact");
            // The header takes 12 bytes of the first 2060-byte buffer.
            let expected_segs = (lens[seq] + 12).div_ceil(2048 + 12);
            assert_eq!(*segs as usize, expected_segs, "{spec:?}: frame {seq} of {} bytes", lens[seq]);
        }
        let (rx, tx) = (rig.pair.rx.stats(), rig.pair.tx.stats());
        assert_eq!((rx.packets, tx.packets), (lens.len() as u64, lens.len() as u64), "{spec:?}");
        assert_eq!((rx.bad_headers, rx.drops, rx.errors, tx.errors), (0, 0, 0, 0), "{spec:?}");
        assert_eq!(rx.bytes, lens.iter().sum::<usize>() as u64, "{spec:?}: bytes without headers");
        finish(rig);
    }
}

#[test]
fn a_multi_segment_packet_on_the_simple_transmit_path_is_dropped_and_counted() {
    let spec = RingSpec { format: RingFormat::Split, size: 64, in_order: true, event_idx: false };
    let pool = pool(512, 2048);
    let QueuePair { mut tx, .. } = queue_pair_with_paths(spec, &pool, 0, RxPath::Simple, TxPath::Simple).unwrap();
    let mut m = pool.alloc().unwrap();
    m.extend_from_slice(&pool, &[1; 3000]).unwrap();
    let mut pkts = vec![m];
    assert_eq!(tx.tx_burst(&mut pkts), 1, "taken off the caller's hands");
    assert_eq!((tx.stats().packets, tx.stats().drops), (0, 1));
    drop(tx);
    assert_eq!(pool.stats().in_use, 0);
}

/// A device that lies in `num_buffers`: the frame is dropped and counted, the frames around
/// it arrive intact, and nothing leaks. Frames go one at a time, so that the lie cannot
/// swallow the next frame's buffers.
fn lying_device(spec: RingSpec, num_buffers: u16, frame: usize) {
    // Frame 5's first buffer (the fault counts receive completions, one per buffer).
    let at = 5 * (frame as u64 + 12).div_ceil(2048 + 12);
    let mut rig = rig(spec, 2048, Some(FaultPlan { fault: Fault::NumBuffers(num_buffers), role: Role::Rx, at }));
    let mut delivered = Vec::new();
    for seq in 0..12u64 {
        let got = exchange_one(&mut rig, seq, frame);
        delivered.extend(got);
    }
    let injected = rig.device.stats().faults_injected.load(Ordering::Relaxed);
    let rx = rig.pair.rx.stats();
    assert_eq!(injected, 1, "{spec:?}");
    assert_eq!((rx.bad_headers, rx.drops), (1, 1), "{spec:?} num_buffers {num_buffers}: counted and dropped");
    assert_eq!(delivered.len(), 11, "{spec:?}: the others arrive");
    for (seq, bytes) in delivered {
        assert_eq!(bytes, frame_bytes(seq, frame), "{spec:?}: frame {seq} intact");
    }
    finish(rig);
}

/// Sends frame `seq` of `len` bytes and waits (up to a second) for its receive buffers to be
/// handled: the frame back, or counted as dropped.
fn exchange_one(rig: &mut Rig, seq: u64, len: usize) -> Option<(u64, Vec<u8>)> {
    let mut m = rig.pool.alloc().unwrap();
    m.extend_from_slice(&rig.pool, &frame_bytes(seq, len)).unwrap();
    let mut pkts = vec![m];
    assert_eq!(rig.pair.tx.tx_burst(&mut pkts), 1);
    let before = rig.pair.rx.stats().drops;
    let mut out = Vec::with_capacity(8);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        rig.pair.rx.rx_burst(&mut out);
        if let Some(m) = out.pop() {
            return Some((u64::from_le_bytes(m.data()[..8].try_into().unwrap()), m.to_vec()));
        }
        if rig.pair.rx.stats().drops > before {
            return None;
        }
    }
    panic!("frame {seq} neither arrived nor was dropped");
}

#[test]
fn num_buffers_larger_than_the_buffers_used_is_counted_and_dropped() {
    for spec in specs() {
        // One-buffer frames that claim three, and three-buffer frames that claim five.
        lying_device(spec, 3, 500);
        lying_device(spec, 5, 5000);
    }
}

#[test]
fn num_buffers_of_zero_or_beyond_the_ring_is_counted_and_dropped() {
    for spec in specs() {
        lying_device(spec, 0, 500);
        lying_device(spec, spec.size + 1, 500);
        lying_device(spec, u16::MAX, 500);
    }
}
