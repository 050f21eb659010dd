//! Multi-segment transmit, per packet (`Throughput::Elements`): direct descriptor chains (one
//! descriptor per segment) against indirect tables (one descriptor per packet,
//! VIRTIO_F_INDIRECT_DESC), for packets of 2, 3 and 4 segments, packed and split, against the
//! software device as a sink stepped inline. Each iteration builds the packets (allocation and
//! chaining, the same for both), sends them and lets the device take them.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use virtio_pmd::transport::RingFormat;
use virtio_pmd_benches::{TxChainsRig, BURST};

fn tx_chains(c: &mut Criterion) {
    let mut group = c.benchmark_group("tx_chains");
    group.throughput(Throughput::Elements(BURST as u64));
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for format in [RingFormat::Packed, RingFormat::Split] {
        for segments in 2..=4 {
            for indirect in [false, true] {
                let mut rig = TxChainsRig::new(format, indirect, segments);
                let layout = if indirect { "indirect" } else { "chain" };
                let name = format!("{}/{segments}seg/{layout}", format!("{format:?}").to_lowercase());
                group.bench_function(name, |b| b.iter(|| assert_eq!(rig.burst(), BURST)));
                rig.finish();
            }
        }
    }
    group.finish();
}

criterion_group!(benches, tx_chains);
criterion_main!(benches);
