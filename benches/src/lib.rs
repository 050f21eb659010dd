//! Criterion micro benchmarks of virtio-pmd's fast path live in `benches/fast_path.rs`; run
//! them with `cargo bench -p virtio-pmd-benches`. The transmit chains comparison (direct
//! descriptor chains against indirect tables, `benches/tx_chains.rs`) shares its set-up
//! ([`TxChainsRig`]) with the `tx-chains-instr` binary, which counts its instructions under
//! callgrind (`scripts/bench/tx-chains-instr.sh`).

use virtio_pmd::mbuf::{Mbuf, Mempool, MempoolConfig};
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{RxPath, TxPath};
use virtio_pmd::testing::{
    queue_pair_with_tx_indirect, DeviceConfig, DeviceCore, Mode, NotifyMode, QueuePair, RingSpec,
};
use virtio_pmd::transport::RingFormat;

/// Packets per transmit burst.
pub const BURST: usize = 32;
/// Descriptors per ring.
pub const RING_SIZE: u16 = 1024;
/// Bytes per segment of the multi-segment packets.
pub const SEGMENT_BYTES: usize = 64;

/// A transmit queue on the chains path and the software device as its sink, stepped inline:
/// each [`burst`](Self::burst) builds [`BURST`] packets of `segments` segments, sends them and
/// lets the device take them (it reads every descriptor and table, copies nothing).
pub struct TxChainsRig {
    pool: Mempool,
    pair: QueuePair,
    device: DeviceCore,
    pending: Vec<Mbuf>,
    segments: usize,
}

impl TxChainsRig {
    /// A rig for `format` rings (in order), packets of `segments` segments, as direct chains or
    /// through indirect tables.
    pub fn new(format: RingFormat, indirect: bool, segments: usize) -> TxChainsRig {
        let config = MempoolConfig { count: 16384, huge_pages: HugePages::Never, ..Default::default() };
        let pool = Mempool::new(&config, &IovaAllocator::identity()).expect("mempool");
        let spec = RingSpec { format, size: RING_SIZE, in_order: true, event_idx: false };
        let pair =
            queue_pair_with_tx_indirect(spec, &pool, 0, RxPath::Simple, TxPath::Chains, indirect).expect("queues");
        assert_eq!(pair.tx.indirect_segments() > 0, indirect);
        let device_config = DeviceConfig {
            mode: Mode::Sink(None),
            in_order: true,
            notify: NotifyMode::Never,
            window: BURST,
            ..Default::default()
        };
        let device = DeviceCore::new(device_config, pair.space.clone(), None, Some(pair.tx_spec)).expect("device");
        TxChainsRig { pool, pair, device, pending: Vec::with_capacity(BURST), segments }
    }

    /// One burst: builds, sends and completes [`BURST`] packets; returns how many were sent.
    #[inline(never)]
    pub fn burst(&mut self) -> usize {
        for _ in 0..BURST {
            let mut packet = self.pool.alloc().expect("buffer");
            packet.append(SEGMENT_BYTES).expect("room");
            for _ in 1..self.segments {
                let mut segment = self.pool.alloc().expect("buffer");
                segment.append(SEGMENT_BYTES).expect("room");
                packet.chain(segment).expect("chain");
            }
            self.pending.push(packet);
        }
        let sent = self.pair.tx.tx_burst(&mut self.pending);
        self.device.poll().expect("device");
        sent
    }

    /// Every mbuf back in the pool, once the queue is gone.
    pub fn finish(self) {
        let TxChainsRig { pool, pair, device, pending, .. } = self;
        assert!(pending.is_empty(), "every packet was sent");
        drop(device);
        drop(pair);
        assert_eq!(pool.stats().in_use, 0, "every segment back");
    }
}
