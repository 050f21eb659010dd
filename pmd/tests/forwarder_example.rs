//! The minimal forwarder of `pmd/examples/forwarder.rs` forwards traffic: DPDK's vhost-user
//! testpmd (io mode, one port) sends a first burst with `start tx_first`; the example sends every
//! frame back out of the same port, testpmd forwards it back again, and the frames circulate
//! until the example's time is up. Asserted: frames went round many times (far more than the
//! first bursts), testpmd received what the example sent back, and the example's port set closed
//! with every mbuf in its pool (`PortSet::close` fails otherwise).
//!
//! Needs DPDK and huge pages (`scripts/dpdk/install.sh`); fails with that message otherwise.

#[path = "common/vhost_testpmd.rs"]
mod vhost_testpmd;

#[path = "../examples/forwarder.rs"]
#[allow(dead_code)]
mod forwarder;

use std::time::Duration;

use vhost_testpmd::{Options, VhostTestpmd};
use virtio_pmd::setup::DeviceSpec;

/// testpmd's RX-packets of port 0.
fn rx_packets(stats: &str) -> u64 {
    let line =
        stats.lines().find(|l| l.contains("RX-packets:")).unwrap_or_else(|| panic!("no RX-packets in:\n{stats}"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {line}"))
}

#[test]
fn the_minimal_forwarder_forwards_dpdk_traffic_and_returns_every_mbuf() {
    let mut testpmd = VhostTestpmd::start("forwarder", Options::default());
    let spec = DeviceSpec::vhost(testpmd.socket());
    let run =
        std::thread::spawn(move || forwarder::run(&[spec], Some(Duration::from_secs(4))).map_err(|e| e.to_string()));
    // Once the example's port is up (it connects within its first second), start the traffic.
    std::thread::sleep(Duration::from_millis(1500));
    testpmd.cmd("start tx_first");
    let received = run.join().expect("the forwarder panicked").expect("the forwarder failed");
    testpmd.cmd("stop");
    let back = rx_packets(&testpmd.cmd("show port stats 0"));
    testpmd.stop();
    eprintln!("the example received {received} frames; testpmd received {back} back");
    assert!(received > 10_000, "frames circulate: {received} received, tx_first sends 32");
    assert!(back > 10_000, "testpmd got the example's frames back: {back}");
}
