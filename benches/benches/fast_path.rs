//! Fast-path micro benchmarks, per packet (`Throughput::Elements`):
//! - mempool bulk get + bulk free of 32 buffers;
//! - receive burst + bulk refill, packed and split, against the software device stepped inline
//!   as a source that completes 64-byte frames without writing them;
//! - transmit burst + lazy reclaim, packed and split, against the software device as a sink.
//!
//! Figures include the inline software device's own work (reading the ring and writing used
//! entries), which is of the same order as a real backend's; compare packed against split and
//! before against after, on one machine, in one run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_pmd::mbuf::{free_bulk, Mbuf, Mempool, MempoolConfig};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::testing::{queue_pair, DeviceConfig, DeviceCore, Mode, NotifyMode, QueuePair, RingSpec};
use virtio_pmd::transport::RingFormat;

const BURST: usize = 32;
const RING_SIZE: u16 = 1024;

fn pool() -> Mempool {
    let config = MempoolConfig { count: 8192, huge_pages: HugePages::Preferred, ..Default::default() };
    Mempool::new(&config, &IovaAllocator::identity()).expect("mempool")
}

fn spec(format: RingFormat) -> RingSpec {
    RingSpec { format, size: RING_SIZE, in_order: true, event_idx: format == RingFormat::Split }
}

fn device(pair: &QueuePair, mode: Mode, rx: bool, tx: bool) -> DeviceCore {
    let config = DeviceConfig {
        mode,
        in_order: true,
        batch_used: false,
        event_idx: true,
        notify: NotifyMode::Never,
        window: BURST,
        fault: None,
        seed: 1,
        mergeable: false,
        hash_report: None,
    };
    let rx_spec = rx.then_some(pair.rx_spec);
    let tx_spec = tx.then_some(pair.tx_spec);
    DeviceCore::new(config, pair.space.clone(), rx_spec, tx_spec).expect("device")
}

fn mempool_bulk(c: &mut Criterion) {
    let pool = pool();
    let mut held: Vec<Mbuf> = Vec::with_capacity(BURST);
    let mut group = c.benchmark_group("mempool");
    group.throughput(Throughput::Elements(BURST as u64));
    group.bench_function("bulk_get_put_32", |b| {
        b.iter(|| {
            assert!(pool.alloc_bulk(&mut held, BURST));
            black_box(&held);
            free_bulk(&mut held);
        })
    });
    group.finish();
}

fn rx_burst(c: &mut Criterion) {
    let mut group = c.benchmark_group("rx_burst_refill");
    group.throughput(Throughput::Elements(BURST as u64));
    for format in [RingFormat::Packed, RingFormat::Split] {
        let pool = pool();
        let mut pair = queue_pair(spec(format), &pool, 0).expect("queues");
        let mut device = device(&pair, Mode::Source { count: u64::MAX, source: None }, true, false);
        let mut received: Vec<Mbuf> = Vec::with_capacity(BURST);
        let mut packets = 0u64;
        let mut iterations = 0u64;
        group.bench_function(format!("{format:?}").to_lowercase(), |b| {
            b.iter(|| {
                device.poll().expect("device");
                packets += pair.rx.rx_burst(&mut received) as u64;
                iterations += 1;
                free_bulk(&mut received);
            })
        });
        assert_eq!(packets, iterations * BURST as u64, "every burst was full");
        drop(device);
    }
    group.finish();
}

fn tx_burst(c: &mut Criterion) {
    let mut group = c.benchmark_group("tx_burst_reclaim");
    group.throughput(Throughput::Elements(BURST as u64));
    for format in [RingFormat::Packed, RingFormat::Split] {
        let pool = pool();
        let mut pair = queue_pair(spec(format), &pool, 0).expect("queues");
        let mut device = device(&pair, Mode::Sink(None), false, true);
        let mut pending: Vec<Mbuf> = Vec::with_capacity(BURST);
        let mut sent = 0u64;
        let mut iterations = 0u64;
        group.bench_function(format!("{format:?}").to_lowercase(), |b| {
            b.iter(|| {
                assert!(pool.alloc_bulk(&mut pending, BURST));
                pending.iter_mut().for_each(|m| {
                    m.append(64);
                });
                sent += pair.tx.tx_burst(&mut pending) as u64;
                iterations += 1;
                device.poll().expect("device");
            })
        });
        assert_eq!(sent, iterations * BURST as u64, "every burst was taken whole");
        drop(device);
    }
    group.finish();
}

criterion_group!(benches, mempool_bulk, rx_burst, tx_burst);
criterion_main!(benches);
