//! Extended statistics: every counter of a port by name, DPDK's `rte_eth_xstats` names where DPDK
//! has one (`rx_good_packets`, `rx_q0_bytes`, `rx_q0_size_64_packets`, `rx_multicast_packets`,
//! `rx_mbuf_allocation_errors`), ours for the rest (`rx_kicks`, `tx_ring_bad_id`).
//!
//! Port-wide names come first, then each queue's (`rx_q<i>_...`, `tx_q<i>_...`); the list for a
//! port is the same at every snapshot, so two snapshots pair up by position ([`rates`]).

use std::time::Duration;

use super::port::PortStats;
use super::stats::{QueueStats, SIZE_BINS};

/// One named counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xstat {
    /// Its name (`rx_good_packets`).
    pub name: String,
    /// Its value.
    pub value: u64,
}

/// Pushes `direction`'s counters of `q` with names `{direction}_{infix}{name}`; `port_wide`
/// picks DPDK's port-level names for the traffic counters.
fn push_queue(out: &mut Vec<Xstat>, direction: &str, infix: &str, port_wide: bool, q: &QueueStats) {
    let mut push = |name: &str, value: u64| out.push(Xstat { name: format!("{direction}_{infix}{name}"), value });
    let (packets, bytes) = if port_wide { ("good_packets", "good_bytes") } else { ("packets", "bytes") };
    push(packets, q.packets);
    push(bytes, q.bytes);
    push("errors", q.errors);
    push("dropped", q.drops);
    if direction == "rx" {
        push("mbuf_allocation_errors", q.alloc_failures);
    }
    push("kicks", q.kicks);
    push("publishes", q.publishes);
    push("ring_bad_id", q.errors_by_kind.bad_id);
    push("ring_bad_len", q.errors_by_kind.bad_len);
    push("ring_bad_used_idx", q.errors_by_kind.bad_used_idx);
    push("bad_headers", q.bad_headers);
    if direction == "rx" {
        push("bad_hash_reports", q.bad_hash_reports);
    }
    if let Some(c) = &q.classes {
        push("multicast_packets", c.multicast);
        push("broadcast_packets", c.broadcast);
        for ((name, _), n) in SIZE_BINS.iter().zip(c.sizes) {
            push(name, n);
        }
    }
}

impl PortStats {
    /// Every counter by name: the port's sums, then each queue's.
    pub fn xstats(&self) -> Vec<Xstat> {
        let mut out = Vec::with_capacity(32 * (1 + self.rx_queues.len()));
        push_queue(&mut out, "rx", "", true, &self.rx);
        push_queue(&mut out, "tx", "", true, &self.tx);
        for (i, (rx, tx)) in self.rx_queues.iter().zip(&self.tx_queues).enumerate() {
            push_queue(&mut out, "rx", &format!("q{i}_"), false, rx);
            push_queue(&mut out, "tx", &format!("q{i}_"), false, tx);
        }
        out
    }
}

/// Per-second rates of the counters between two snapshots of the same port taken `over` apart
/// (`before` and `after` from [`PortStats::xstats`]), by name; a counter that went down (a
/// reset in between) reads 0.
pub fn rates(before: &[Xstat], after: &[Xstat], over: Duration) -> Vec<(String, f64)> {
    let secs = over.as_secs_f64();
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.name == a.name).map_or(0, |b| b.value);
            let rate = if secs > 0.0 { a.value.saturating_sub(b) as f64 / secs } else { 0.0 };
            (a.name.clone(), rate)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stats::PacketClasses;

    fn stats(packets: u64, classes: bool) -> PortStats {
        let q = QueueStats {
            packets,
            bytes: packets * 64,
            classes: classes.then(|| PacketClasses { sizes: [0, packets, 0, 0, 0, 0, 0, 0], ..Default::default() }),
            ..QueueStats::default()
        };
        PortStats { rx_queues: vec![q, q], tx_queues: vec![q, q], rx: q, tx: q }
    }

    #[test]
    fn names_follow_dpdk_and_pair_up_between_snapshots() {
        let x = stats(10, true).xstats();
        let get = |name: &str| x.iter().find(|s| s.name == name).map(|s| s.value);
        assert_eq!(get("rx_good_packets"), Some(10));
        assert_eq!(get("tx_good_bytes"), Some(640));
        assert_eq!(get("rx_q1_packets"), Some(10));
        assert_eq!(get("rx_q0_bytes"), Some(640));
        assert_eq!(get("rx_size_64_packets"), Some(10));
        assert_eq!(get("tx_q1_size_1519_max_packets"), Some(0));
        assert_eq!(get("rx_mbuf_allocation_errors"), Some(0));
        assert_eq!(get("tx_mbuf_allocation_errors"), None);
        assert_eq!(get("rx_ring_bad_id"), Some(0));
        let names: Vec<&str> = x.iter().map(|s| s.name.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "every name once");
        assert!(stats(1, false).xstats().iter().all(|s| !s.name.contains("size_")), "no classes: no bins");
    }

    #[test]
    fn rates_between_two_snapshots() {
        let r = rates(&stats(10, false).xstats(), &stats(110, false).xstats(), Duration::from_millis(500));
        let get = |name: &str| r.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(get("rx_good_packets"), Some(200.0));
        assert_eq!(get("tx_q0_bytes"), Some(12800.0));
        let back = rates(&stats(110, false).xstats(), &stats(10, false).xstats(), Duration::from_secs(1));
        assert!(back.iter().all(|(_, v)| *v == 0.0));
    }
}
