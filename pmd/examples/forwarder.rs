//! A minimal forwarder to start an appliance from: frames received on port 0 leave on port 1
//! and the reverse (a single port sends them back out), on one pinned polling thread, until
//! Ctrl-C. Every mbuf is checked back into the pool at the end.
//!
//! ```text
//! forwarder pci:0000:00:03.0 pci:0000:00:04.0     # two VFIO ports (bound to vfio-pci)
//! forwarder vhost:/tmp/vh.sock                    # one vhost-user port, answering on itself
//! ```
use std::error::Error;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_pmd::lcore::{self, LcoreWork, STOP};
use virtio_pmd::net::{RxQueue, TxQueue};
use virtio_pmd::setup::{DeviceSpec, PortSet, PortSetConfig};

/// Forwards between the ports of `specs` until a stop (SIGINT, SIGTERM) or `limit`; returns the
/// frames received.
pub fn run(specs: &[DeviceSpec], limit: Option<Duration>) -> Result<u64, Box<dyn Error>> {
    // The container, the pool and the ports, in the one order that works.
    let mut set = PortSet::open(specs, &PortSetConfig::default())?;
    let (rx, mut tx): (Vec<RxQueue>, Vec<Option<TxQueue>>) =
        set.ports_mut().iter_mut().filter_map(|port| port.take_queues(0)).map(|(r, t)| (r, Some(t))).unzip();
    // Port i's frames leave on port i ^ 1 (or on port i itself when it has no pair).
    let n = rx.len();
    let lanes: Vec<(RxQueue, TxQueue)> = rx
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| Some((r, tx[if i ^ 1 < n { i ^ 1 } else { i }].take()?)))
        .collect();

    let work = vec![LcoreWork { core: lcore::available_cores().last().copied(), work: lanes }];
    let lcores = lcore::launch("forwarder", work, &STOP, |lcore, mut lanes: Vec<(RxQueue, TxQueue)>| {
        let mut received = 0u64;
        // The burst buffer is allocated once, before the loop; bursts never allocate.
        lcore.poll(32, None, |burst| {
            let mut moved = 0;
            for (rx, tx) in lanes.iter_mut() {
                moved += rx.rx_burst(burst);
                tx.tx_burst(burst);
                burst.clear(); // what the ring had no room for is dropped: back to the pool
            }
            received += moved as u64;
            moved
        });
        received // the queues drop here: each device is reset before its buffers return
    })?;

    let started = Instant::now();
    while !STOP.load(Ordering::Relaxed) && limit.is_none_or(|l| started.elapsed() < l) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let received = lcores.join().into_iter().map(|r| r.unwrap_or(0)).sum();
    let pool = set.close()?; // an error if any mbuf did not come back
    println!("forwarded {received} frames; all {} mbufs back in the pool", pool.size);
    Ok(received)
}

#[allow(dead_code)] // the test includes this file for `run`
fn main() -> Result<(), Box<dyn Error>> {
    let specs = std::env::args().skip(1).map(|s| s.parse()).collect::<Result<Vec<DeviceSpec>, _>>()?;
    lcore::install_stop_handler()?;
    run(&specs, None).map(drop)
}
