//! `pktgen` against DPDK 22.11's vhost-user backend (`dpdk-testpmd --vdev net_vhost0` in
//! `macswap` mode), over packed and split rings: at a paced rate, every frame sent comes back
//! (none lost, late or duplicated), testpmd's counters agree, the latency percentiles are
//! printed and ordered, the JSON summary parses back, and the plot file is a non-empty SVG (the
//! split run's with the packed run's curve overlaid from its JSON).
//!
//! Needs DPDK and 2 MiB huge pages: without them the test fails with a message saying to run
//! `scripts/dpdk/install.sh` (never skipped). Run with `--nocapture` to see the summaries.

#[path = "../../pmd/tests/common/vhost_testpmd.rs"]
mod vhost_testpmd;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vhost_testpmd::{Options, VhostTestpmd};

const PKTGEN: &str = env!("CARGO_BIN_EXE_pktgen");

/// testpmd's counter `name` (e.g. "RX-packets") of port 0.
fn counter(testpmd: &VhostTestpmd, name: &str) -> u64 {
    let out = testpmd.cmd("show port stats 0");
    let at = out.find(&format!("{name}:")).unwrap_or_else(|| panic!("no {name} in:\n{out}"));
    out[at + name.len() + 1..].split_whitespace().next().unwrap().parse().unwrap()
}

/// A count in the summary.
fn count(summary: &Value, key: &str) -> u64 {
    summary[key].as_u64().unwrap_or_else(|| panic!("no count {key} in {summary}"))
}

/// One pktgen run at 20 kpps for 1.5 s over 4 flows and three frame sizes, its plot overlaid
/// with the curves of `earlier` runs (files of their JSON output); returns its JSON output.
fn paced_run(testpmd: &VhostTestpmd, ring: &str, earlier: &[PathBuf]) -> String {
    testpmd.cmd("clear port stats all");
    let plot = std::env::temp_dir().join(format!("pktgen-test-{ring}-{}.svg", std::process::id()));
    let out = Command::new(PKTGEN)
        .args(["--port", &format!("vhost:{}", testpmd.socket().display())])
        .args(["--ring", ring, "--rate", "20k", "--duration", "1.5", "--flows", "4", "--sizes", "64,256,1514"])
        .args(["--huge-pages", "required", "--json", "--plot"])
        .arg(&plot)
        .args(earlier.iter().flat_map(|e| [Path::new("--overlay"), e]))
        .output()
        .expect("run pktgen");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{ring}: pktgen exited with {}:\n{stdout}\n{stderr}", out.status);
    eprintln!("{ring}:\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{ring}: not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["kind"] == "live"), "{ring}: a live line at least once a second:\n{stdout}");
    let summary = lines.last().filter(|l| l["kind"] == "summary").expect("the summary last");
    let sent = count(summary, "sent");
    assert!((25_000..=35_000).contains(&sent), "{ring}: about 30k frames in 1.5 s at 20 kpps, got {sent}");
    assert_eq!(summary["ring"], ring);
    assert_eq!(count(summary, "received"), sent, "{ring}: every frame came back");
    assert_eq!(count(summary, "unique"), sent, "{ring}: each once");
    for key in ["lost", "late", "duplicates", "foreign", "alloc_failures", "tx_inflight", "pool_in_use"] {
        assert_eq!(count(summary, key), 0, "{ring}: {key}");
    }
    assert_eq!(counter(testpmd, "RX-packets"), sent, "{ring}: testpmd received what pktgen sent");
    assert_eq!(counter(testpmd, "TX-packets"), sent, "{ring}: testpmd sent it all back");
    // 64, 256 and 1514 bytes in turn.
    let bytes = (sent / 3) * (64 + 256 + 1514) + [0, 64, 64 + 256][(sent % 3) as usize];
    assert_eq!(counter(testpmd, "RX-bytes"), bytes, "{ring}: the sizes in turn");
    let latency = &summary["latency"];
    assert_eq!(latency["count"].as_u64(), Some(sent), "{ring}: a latency for every frame");
    let us = |key: &str| latency[key].as_f64().unwrap_or_else(|| panic!("no {key} in {latency}"));
    let order = ["min_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"].map(us);
    assert!(order[0] > 0.0 && order.windows(2).all(|w| w[0] <= w[1]), "{ring}: percentiles in order: {order:?}");
    eprintln!(
        "RESULT pktgen {ring}: {sent} sent = received, latency us p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        order[1], order[2], order[3], order[4], order[5]
    );
    assert_eq!(summary["plot"].as_str(), Some(plot.to_str().unwrap()));
    let svg = std::fs::read_to_string(&plot).expect("the plot file");
    std::fs::remove_file(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.len() > 1000, "{ring}: an SVG file");
    let curve = summary["curve"].as_array().expect("the percentile curve in the summary");
    assert!(curve.len() > 10 && curve.last().unwrap()[0] == 1.0, "{ring}: the curve up to 100%");
    // Each curve is drawn 2 px wide, and again as its legend's sample line; the grid is 1 px.
    let wide = svg.lines().filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\"")).count();
    assert_eq!(wide, 2 * (1 + earlier.len()), "{ring}: its curve and the overlaid ones, with their legend");
    stdout.into_owned()
}

#[test]
fn paced_through_dpdk_macswap() {
    let mut testpmd = VhostTestpmd::start("pktgen", Options { fwd: "macswap", forward: true, ..Options::default() });
    let packed = std::env::temp_dir().join(format!("pktgen-test-packed-{}.json", std::process::id()));
    std::fs::write(&packed, paced_run(&testpmd, "packed", &[])).unwrap();
    paced_run(&testpmd, "split", std::slice::from_ref(&packed));
    std::fs::remove_file(&packed).unwrap();
    testpmd.stop();
}

/// The per-queue counts `key` of the summary.
fn per_queue(summary: &Value, key: &str) -> Vec<u64> {
    let list = summary[key].as_array().unwrap_or_else(|| panic!("no {key} in {summary}"));
    list.iter().map(|n| n.as_u64().expect("a count")).collect()
}

/// pktgen on two queue pairs against DPDK's vhost with two queues (macswap): eight flows
/// (distinct 5-tuples), each queue pair carrying half of them and half the frames, at a paced
/// 20 kpps for a second;
/// every frame comes back, on the queue it left from; the JSON summary's per-queue counts are
/// all non-zero and add up to the totals and to testpmd's.
#[test]
fn paced_over_two_queue_pairs_through_dpdk_macswap() {
    const QUEUES: usize = 2;
    let options = Options { queues: QUEUES as u16, fwd: "macswap", forward: true, ..Options::default() };
    let mut testpmd = VhostTestpmd::start("pktgen-mq", options);
    let out = Command::new(PKTGEN)
        .args(["--port", &format!("vhost:{}", testpmd.socket().display())])
        .args(["--queues", "2", "--flows", "8", "--rate", "20k", "--duration", "1", "--sizes", "64,512"])
        .args(["--huge-pages", "required", "--json"])
        .output()
        .expect("run pktgen");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pktgen exited with {}:\n{stdout}\n{stderr}", out.status);
    let summary: Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .next_back()
        .filter(|l| l["kind"] == "summary")
        .expect("the summary last");
    let sent = count(&summary, "sent");
    assert!((15_000..=25_000).contains(&sent), "about 20k frames in 1 s at 20 kpps, got {sent}");
    assert_eq!(count(&summary, "queues"), QUEUES as u64);
    assert_eq!(count(&summary, "received"), sent, "every frame came back");
    assert_eq!(count(&summary, "unique"), sent, "each once");
    for key in ["lost", "late", "duplicates", "foreign", "alloc_failures", "tx_inflight", "pool_in_use"] {
        assert_eq!(count(&summary, key), 0, "{key}");
    }
    let (queue_sent, queue_received) = (per_queue(&summary, "queue_sent"), per_queue(&summary, "queue_received"));
    assert_eq!((queue_sent.len(), queue_received.len()), (QUEUES, QUEUES), "a count per queue pair");
    assert!(queue_sent.iter().chain(&queue_received).all(|&n| n > 0), "every queue carried frames: {queue_sent:?}");
    assert_eq!(queue_sent, queue_received, "each frame came back on the queue pair it left from");
    assert_eq!(queue_sent.iter().sum::<u64>(), sent, "the per-queue counts add up");
    let share = sent / QUEUES as u64;
    assert!(
        queue_sent.iter().all(|&n| n.abs_diff(share) <= 32),
        "paced frames alternate over the pairs: {queue_sent:?}"
    );
    assert_eq!(counter(&testpmd, "RX-packets"), sent, "testpmd received what pktgen sent");
    assert_eq!(counter(&testpmd, "TX-packets"), sent, "testpmd sent it all back");
    eprintln!("RESULT pktgen x{QUEUES}: {sent} sent = received, per queue {queue_sent:?}");
    testpmd.stop();
}
