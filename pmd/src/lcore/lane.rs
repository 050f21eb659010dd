//! Lanes: the unit of DPDK l2fwd-style forwarding that an lcore polls. A [`Lane`] is one
//! receive queue, the transmit queue it forwards to, and the MAC rewrite (or none).
//!
//! A lane is owned by exactly one lcore: port A's receive queue with port B's transmit queue.
//! When every transmit queue is fed by one receive queue (a pairing of ports that is an
//! involution, as l2fwd's), no queue is ever shared. A burst allocates nothing: the burst vector
//! is the lcore's ([`Lcore::poll`](super::Lcore::poll)), reserved once before its loop, and the
//! lane's held frames get room for one burst the first time a transmit ring is full.
//!
//! Frames the transmit queue did not take are held, not dropped (DPDK's l2fwd drops them): they
//! go first in the lane's next round, and until they have gone the lane receives nothing more.
//! A full transmit ring so holds its receive ring back, and the device holds what it has not
//! delivered (a tap backend, the sender's socket): TCP slows down instead of losing a 64 KiB
//! super-packet, 45 segments to retransmit, whenever a ring was briefly full. Measured in the VM
//! with TCP through l2fwd (scripts/l2fwd-vm.sh --tcp, offloads on): dropping, 1565 Mbit/s and
//! 29795 retransmits in 5 s; holding, 2011 Mbit/s and none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::mbuf::Mbuf;
use crate::net::{RxQueue, TxQueue};

/// Counters a lane's thread publishes for the statistics thread.
#[derive(Debug, Default)]
pub struct LaneCounters {
    /// Frames too short to rewrite: dropped.
    pub dropped: AtomicU64,
}

/// Frames from one receive queue to one transmit queue, with the MAC rewrite.
pub struct Lane {
    /// Receiving port.
    pub rx_port: usize,
    /// Transmitting port.
    pub tx_port: usize,
    /// The queue pair number of both queues.
    pub queue: u16,
    rx: RxQueue,
    tx: TxQueue,
    /// Destination MAC then source MAC, written over the first 12 bytes of every frame (`None`:
    /// frames go out unchanged).
    macs: Option<[u8; 12]>,
    /// Frames the transmit queue has not taken yet, in order: at most one burst, and the lane
    /// receives nothing while there are any.
    held: Vec<Mbuf>,
    /// Write each frame's reported hash over its source MAC ([`Lane::with_hash_to_src_mac`]).
    hash_to_src_mac: bool,
    dropped: u64,
    counters: Arc<LaneCounters>,
}

impl Lane {
    /// A lane from `rx` (of port `rx_port`) to `tx` (of port `tx_port`), both of queue pair
    /// `queue`, that rewrites frames to `rewrite`'s destination and source MACs (`None`: sends
    /// them unchanged).
    pub fn new(
        (rx_port, rx): (usize, RxQueue),
        (tx_port, tx): (usize, TxQueue),
        queue: u16,
        rewrite: Option<([u8; 6], [u8; 6])>,
    ) -> Lane {
        let macs = rewrite.map(|(dst, src)| {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&dst);
            macs[6..].copy_from_slice(&src);
            macs
        });
        let (held, hash_to_src_mac) = (Vec::new(), false);
        Lane { rx_port, tx_port, queue, rx, tx, macs, held, hash_to_src_mac, dropped: 0, counters: Arc::default() }
    }

    /// Writes each frame's reported hash over its source MAC after the rewrite (its value, then
    /// its report type, big-endian; zero without one): for tests that check the hashes a device
    /// reports (a port with
    /// [`PortConfig::rx_hash_report`](crate::net::PortConfig::rx_hash_report)).
    pub fn with_hash_to_src_mac(mut self) -> Lane {
        self.hash_to_src_mac = true;
        self
    }

    /// `rx_port:queue->tx_port:queue`.
    pub fn name(&self) -> String {
        format!("{}:{q}->{}:{q}", self.rx_port, self.tx_port, q = self.queue)
    }

    /// The counters the lane publishes.
    pub fn counters(&self) -> Arc<LaneCounters> {
        self.counters.clone()
    }

    /// One round: first the frames held from an earlier round, if any (and nothing more while
    /// some are still not taken); then one burst: receive into `pkts` (empty, with the burst as
    /// spare capacity), rewrite, transmit, hold what was not taken. Returns the frames received;
    /// `pkts` is left empty.
    #[inline]
    pub fn forward(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        if !self.held.is_empty() {
            self.tx.tx_burst(&mut self.held);
            if !self.held.is_empty() {
                return 0;
            }
        }
        let received = self.rx.rx_burst(pkts);
        if received == 0 {
            return 0;
        }
        let before = pkts.len();
        if let Some(macs) = &self.macs {
            pkts.retain_mut(|m| rewrite(m.data_mut(), macs));
        }
        if self.hash_to_src_mac {
            pkts.iter_mut().for_each(stamp_hash);
        }
        let dropped = before - pkts.len();
        self.tx.tx_burst(pkts);
        if !pkts.is_empty() {
            self.hold(pkts);
        }
        if dropped > 0 {
            self.dropped += dropped as u64;
            // This thread is the only writer: a plain store publishes the running total.
            self.counters.dropped.store(self.dropped, Ordering::Relaxed);
        }
        received
    }

    /// Moves what the transmit queue left in `pkts` (at most a burst) to the empty `held`, which
    /// gets room for a whole burst the first time: out of line, off the common path.
    #[inline(never)]
    fn hold(&mut self, pkts: &mut Vec<Mbuf>) {
        debug_assert!(self.held.is_empty());
        if self.held.capacity() < pkts.capacity() {
            self.held.reserve_exact(pkts.capacity());
        }
        self.held.append(pkts);
    }
}

/// Writes `macs` (destination, source) over the start of `frame`; false when the frame is too
/// short to have both addresses.
#[inline(always)]
fn rewrite(frame: &mut [u8], macs: &[u8; 12]) -> bool {
    match frame.get_mut(..12) {
        Some(head) => {
            head.copy_from_slice(macs);
            true
        }
        None => false,
    }
}

/// Writes the frame's reported hash (value, then report type, big-endian; zero without one)
/// over its source MAC.
fn stamp_hash(frame: &mut Mbuf) {
    let hash = frame.rx_hash();
    let value = hash.map_or(0, |h| h.value);
    let report = hash.map_or(0, |h| h.kind.report());
    if let Some(src) = frame.data_mut().get_mut(6..12) {
        src[..4].copy_from_slice(&value.to_be_bytes());
        src[4..].copy_from_slice(&report.to_be_bytes());
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::mbuf::{Mempool, MempoolConfig};
    use crate::mem::{HugePages, IovaAllocator};
    use crate::testing::{queue_pair, DeviceConfig, DeviceCore, Mode, RingSpec, SoftDevice};
    use crate::transport::RingFormat;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    const DST: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SRC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn pool() -> Mempool {
        let config = MempoolConfig { count: 2048, cache_size: 32, huge_pages: HugePages::Never, ..Default::default() };
        Mempool::new(&config, &IovaAllocator::identity()).unwrap()
    }

    /// Frame `seq`: 60..1514 bytes, MACs 0xee, the sequence number, a pattern.
    fn frame(seq: u64, buf: &mut [u8]) -> usize {
        let len = (60 + (seq as usize * 97) % 1455).min(buf.len());
        buf[..12].fill(0xee);
        buf[12..20].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in buf[20..len].iter_mut().enumerate() {
            *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
        }
        len
    }

    /// A device generating `count` frames into port 0's receive ring, and one consuming port 1's
    /// transmit ring (or none: nothing ever completes there), and the lane between them for at
    /// most `rounds` rounds. Returns the frames the sink got, the frames received and dropped.
    fn run_lane(format: RingFormat, count: u64, sink: bool, update: bool, rounds: u64) -> (Vec<Vec<u8>>, u64, u64) {
        let pool = pool();
        let spec = RingSpec { format, size: 64, in_order: false, event_idx: false };
        let a = queue_pair(spec, &pool, 0).unwrap();
        let b = queue_pair(spec, &pool, 1).unwrap();
        let source = Mode::Source { count, source: Some(Box::new(frame)) };
        let source =
            DeviceCore::new(DeviceConfig { mode: source, ..Default::default() }, a.space, Some(a.rx_spec), None);
        let source = SoftDevice::spawn(source.unwrap()).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = sink.then(|| {
            let got = got.clone();
            let mode = Mode::Sink(Some(Box::new(move |f: &[u8]| got.lock().unwrap().push(f.to_vec()))));
            let core = DeviceCore::new(DeviceConfig { mode, ..Default::default() }, b.space, None, Some(b.tx_spec));
            SoftDevice::spawn(core.unwrap()).unwrap()
        });
        let mut lane = Lane::new((0, a.rx), (1, b.tx), 0, update.then_some((DST, SRC)));
        let counters = lane.counters();
        let mut pkts = Vec::with_capacity(32);
        let (mut received, start) = (0u64, Instant::now());
        for _ in 0..rounds {
            if received == count || start.elapsed() > Duration::from_secs(20) {
                break;
            }
            received += lane.forward(&mut pkts) as u64;
            assert!(pkts.is_empty());
            if sink.is_none() {
                // Let the source fill the receive ring.
                std::thread::yield_now();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let delivered = || got.lock().unwrap().len() as u64 + counters.dropped.load(Ordering::Relaxed);
        while sink.is_some() && delivered() < received && Instant::now() < deadline {
            // Held frames go, and completions are reclaimed, inside later rounds.
            lane.forward(&mut pkts);
            std::thread::yield_now();
        }
        source.stop().unwrap();
        if let Some(sink) = sink {
            sink.stop().unwrap();
        }
        drop((lane, a.tx, b.rx));
        assert_eq!(pool.stats().in_use, 0, "every mbuf back in the pool");
        let frames = std::mem::take(&mut *got.lock().unwrap());
        (frames, received, counters.dropped.load(Ordering::Relaxed))
    }

    #[test]
    fn a_lane_forwards_frames_intact_with_the_macs_rewritten_or_unchanged() {
        for (format, update) in [(RingFormat::Packed, true), (RingFormat::Split, true), (RingFormat::Packed, false)] {
            let (frames, received, dropped) = run_lane(format, 5000, true, update, u64::MAX);
            // Frames the transmit ring had no room for (the sink thread fell behind) are held and
            // sent later: every frame arrives intact, once (the software device completes out of
            // order: no order check), none dropped.
            assert_eq!((received, dropped), (5000, 0), "{format:?}");
            assert_eq!(frames.len() as u64, received, "{format:?}: every frame received was sent");
            let mut seen = vec![false; 5000];
            for got in &frames {
                let seq = u64::from_be_bytes(got[12..20].try_into().unwrap());
                assert!(seq < 5000 && !std::mem::replace(&mut seen[seq as usize], true), "{format:?}: frame {seq}");
                let mut want = vec![0u8; 1514];
                let len = frame(seq, &mut want);
                want.truncate(len);
                if update {
                    want[..6].copy_from_slice(&DST);
                    want[6..12].copy_from_slice(&SRC);
                }
                assert_eq!(got, &want, "{format:?} frame {seq}");
            }
        }
    }

    #[test]
    fn a_full_transmit_ring_holds_the_receive_side_back() {
        // Nothing completes transmissions: the 64-entry ring fills, the lane holds the rest of
        // the burst that did not fit and receives nothing more, however long it runs; nothing
        // is dropped, and the held frames go back to the pool with the lane.
        let (_, received, dropped) = run_lane(RingFormat::Packed, 500, false, true, 20_000);
        assert_eq!(dropped, 0);
        assert!((65..=64 + 32).contains(&received), "received {received}: the ring's 64 and at most one held burst");
    }

    #[test]
    fn rewrite_sets_both_macs_and_refuses_runts() {
        let macs: [u8; 12] = [2, 0, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
        let mut frame = [0xffu8; 60];
        assert!(rewrite(&mut frame, &macs));
        assert_eq!(&frame[..12], &macs);
        assert!(frame[12..].iter().all(|b| *b == 0xff));
        let mut runt = [0u8; 11];
        assert!(!rewrite(&mut runt, &macs));
        assert_eq!(runt, [0u8; 11]);
    }

    #[test]
    fn stamp_hash_writes_value_and_report_type_over_the_source_mac() {
        use crate::mbuf::{HashKind, RxHash};
        let pool = pool();
        let mut m = pool.alloc().unwrap();
        m.append(60).unwrap().fill(0xee);
        m.set_rx_hash(Some(RxHash { value: 0x1234_5678, kind: HashKind::Udpv4 }));
        stamp_hash(&mut m);
        assert_eq!(&m.data()[6..12], &[0x12, 0x34, 0x56, 0x78, 0, 3]);
        assert!(m.data()[..6].iter().chain(&m.data()[12..]).all(|b| *b == 0xee), "only the source MAC");
        m.set_rx_hash(None);
        stamp_hash(&mut m);
        assert_eq!(&m.data()[6..12], &[0; 6], "no hash: zero");
    }
}
