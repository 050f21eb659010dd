//! A port set's lanes, DPDK l2fwd's forwarding plan: receive queue q of every port into transmit
//! queue q of its peer ([`PortMap`]), and how many mbufs such a plan can hold at once.

use super::{PortMap, PortSet};
use crate::error::Error;
use crate::lcore::Lane;
use crate::net::MacAddr;

impl PortSet {
    /// Takes every queue pair out of every port and pairs them into lanes: receive queue q of
    /// port i into transmit queue q of `peers.peer(i)`, in port then queue order. With
    /// `dst_macs`, a lane rewrites its frames to destination `dst_macs[peer]` and the peer's own
    /// source MAC (DPDK l2fwd's MAC updating); without, frames go out unchanged.
    ///
    /// `peers` must be an involution ([`PortMap`] is), so that each transmit queue is fed by one
    /// lane; a peer with fewer queue pairs is an `InvalidConfig` error, and the queues taken go
    /// back into nothing (they are dropped, their buffers returning to the pool).
    pub fn lanes(&mut self, peers: &PortMap, dst_macs: Option<&[MacAddr]>) -> Result<Vec<Lane>, Error> {
        let macs: Vec<MacAddr> = (0..self.ports().len()).map(|id| self.mac(id)).collect();
        let mut taken: Vec<(Vec<_>, Vec<_>)> = Vec::with_capacity(macs.len());
        for port in self.ports_mut() {
            let pairs = (0..port.queue_pairs()).filter_map(|q| port.take_queues(q));
            taken.push(pairs.map(|(rx, tx)| (rx, Some(tx))).unzip());
        }
        let mut lanes = Vec::new();
        for id in 0..taken.len() {
            let peer = peers.peer(id);
            for (q, rx) in std::mem::take(&mut taken[id].0).into_iter().enumerate() {
                let tx = taken[peer].1.get_mut(q).and_then(Option::take).ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "port {id}'s receive queue {q} forwards to port {peer}, whose transmit queue {q} is missing or \
                         already fed: give the two ports the same number of queue pairs"
                    ))
                })?;
                let rewrite = dst_macs.map(|dst| (dst[peer].0, macs[peer].0));
                lanes.push(Lane::new((id, rx), (peer, tx), q as u16, rewrite));
            }
        }
        Ok(lanes)
    }

    /// Mbufs the rings and `lcores` polling threads (a burst and a pool cache each, which may
    /// hold up to three caches' worth while it refills and flushes) can hold at once: a pool
    /// smaller than this can run dry, and receive refills then fail.
    pub fn mbufs_held(&self, lcores: usize, burst: usize) -> u32 {
        let rings: u32 = self
            .ports()
            .iter()
            .flat_map(|p| (0..p.queue_pairs()).map(|q| 2 * u32::from(p.pair_ring_size(q).unwrap_or(0))))
            .sum();
        rings + lcores as u32 * (burst as u32 + 3 * self.pool().cache_size())
    }
}
