//! `fwd` against DPDK 22.11's vhost-user backend (`dpdk-testpmd --vdev net_vhost0`), in both
//! directions and as an echo, over packed and split rings, 1 and 2 queue pairs, 64- and
//! 1514-byte frames (2 x 2 x 2 x 3 = 24 cases).
//!
//! One testpmd per (ring, queue pairs) test serves its six cases, reconfigured between them
//! (`set fwd`, `set txpkts`, `clear port stats all`); each case runs a fresh `fwd` process (a new
//! vhost-user connection and negotiation) for about half a second of traffic:
//!
//! - DPDK `txonly` -> `fwd rxonly --verify dpdk-txonly`: fwd checks every frame's length, headers
//!   and payload (zeros: txonly writes only the headers into mbufs from fresh huge pages, so these
//!   cases run first, before testpmd's mbufs ever hold a received frame); the frames fwd received
//!   equal testpmd's TX-packets exactly (DPDK stops first, fwd drains).
//! - `fwd txonly` -> DPDK `rxonly`: testpmd's RX-packets (and RX-bytes = packets x length) equal
//!   what fwd sent, but for the frames fwd reports still in its transmit rings at stop
//!   (`tx_inflight`, normally 0: fwd waits for its rings to empty before it stops).
//! - `fwd echo` <-> DPDK `macswap`: fwd sends sequence-numbered frames (at most a window in flight
//!   per queue) and checks every frame that comes back: every byte, the swapped MACs, the order;
//!   nothing may be lost, and testpmd's RX/TX counts equal fwd's TX/RX.
//!
//! Needs DPDK and 2 MiB huge pages: without them the tests fail with a message saying to run
//! `scripts/dpdk/install.sh` (never skipped). Run with `--nocapture` to see each case's summary.

#[path = "../../pmd/tests/common/tcp_frames.rs"]
mod tcp_frames;
#[path = "../../pmd/tests/common/vhost_testpmd.rs"]
mod vhost_testpmd;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tcp_frames::{ones_sum, tcp_frame, TcpChecksum};
use vhost_testpmd::{Options, VhostTestpmd};

const FWD: &str = env!("CARGO_BIN_EXE_fwd");
/// Traffic time per case.
const TRAFFIC: Duration = Duration::from_millis(500);
/// Longest a fwd run may take from start to exit.
const FWD_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `fwd`, its stdout read line by line.
struct Fwd {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    what: String,
}

impl Drop for Fwd {
    /// A test that fails while fwd runs must not leave it running (holding its vhost-user
    /// connection, huge pages and the test's output pipes).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished `fwd` printed.
struct Finished {
    summary: HashMap<String, String>,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn get(&self, key: &str) -> u64 {
        let value = self.summary.get(key).unwrap_or_else(|| panic!("no {key} in FWD-SUMMARY:\n{}", self.stdout));
        value.parse().unwrap_or_else(|_| panic!("{key}={value} is not a count"))
    }

    /// The `per queue rx [a,b]` (or tx) counts of port 0.
    fn per_queue(&self, dir: &str) -> Vec<u64> {
        let line = self.stdout.lines().find(|l| l.starts_with("port 0 total:")).expect("port 0 total line");
        let at = line.find(&format!("{dir} [")).expect("per queue counts") + dir.len() + 2;
        let list = &line[at..at + line[at..].find(']').unwrap()];
        list.split(',').map(|n| n.parse().unwrap()).collect()
    }
}

impl Fwd {
    fn start(what: &str, args: &[String]) -> Fwd {
        let mut child = Command::new(FWD)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the fwd binary");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = Some(std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        }));
        Fwd { child, lines, seen: Vec::new(), stderr, what: what.to_string() }
    }

    /// Waits for `FWD-READY` (the ports are open and the threads polling).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let ready = line.starts_with("FWD-READY");
                    self.seen.push(line);
                    if ready {
                        return;
                    }
                }
                Err(err) => {
                    let _ = self.child.kill();
                    let finished = self.finish_output();
                    panic!(
                        "{}: fwd never printed FWD-READY ({err:?}):\n{}\n{}",
                        self.what, finished.stdout, finished.stderr
                    );
                }
            }
        }
    }

    /// Asks fwd to stop (SIGTERM), as a user's Ctrl-C would.
    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    fn finish_output(&mut self) -> Finished {
        let deadline = Instant::now() + FWD_TIMEOUT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        let stdout = self.seen.join("\n");
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let summary = stdout
            .lines()
            .find_map(|l| l.strip_prefix("FWD-SUMMARY "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Finished { summary, stdout, stderr }
    }

    /// Waits for fwd to exit; panics unless it exited 0 with a summary.
    fn finish(mut self) -> Finished {
        let finished = self.finish_output();
        let status = self.child.wait().expect("wait for fwd");
        assert!(
            status.success() && !finished.summary.is_empty(),
            "{}: fwd exited with {status}:\n{}\n{}",
            self.what,
            finished.stdout,
            finished.stderr
        );
        assert_eq!(finished.get("pool_in_use"), 0, "{}: every mbuf back in the pool", self.what);
        eprintln!("{}: {}", self.what, finished.stdout.lines().last().unwrap_or_default());
        finished
    }
}

/// testpmd's counter `name` (e.g. "RX-packets") of port 0.
fn counter(testpmd: &VhostTestpmd, name: &str) -> u64 {
    let out = testpmd.cmd("show port stats 0");
    let at = out.find(&format!("{name}:")).unwrap_or_else(|| panic!("no {name} in:\n{out}"));
    out[at + name.len() + 1..].split_whitespace().next().unwrap().parse().unwrap()
}

/// Sets testpmd up for the next case: forwarding stopped, mode and frame size set, counters 0.
fn prepare(testpmd: &VhostTestpmd, fwd_mode: &str, len: usize) {
    testpmd.cmd("stop");
    testpmd.cmd(&format!("set fwd {fwd_mode}"));
    testpmd.cmd(&format!("set txpkts {len}"));
    testpmd.cmd("clear port stats all");
}

fn fwd_args(testpmd: &VhostTestpmd, ring: &str, queues: u16, mode: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &format!("vhost:{}", testpmd.socket().display()),
        "--forward-mode",
        mode,
        "--ring",
        ring,
        "--queues",
        &queues.to_string(),
        "--nb-cores",
        &queues.to_string(),
        "--rxd",
        "1024",
        "--huge-pages",
        "required",
        "--mbufs",
        "8192",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Once `fwd` is ready, testpmd forwards (its current mode) into it for [`TRAFFIC`] and stops,
/// then fwd stops: what testpmd sent, and what fwd printed.
fn dpdk_into(testpmd: &VhostTestpmd, mut fwd: Fwd) -> (u64, Finished) {
    fwd.wait_ready();
    testpmd.cmd("start");
    std::thread::sleep(TRAFFIC);
    testpmd.cmd("stop");
    let sent = counter(testpmd, "TX-packets");
    // The frames still in fwd's receive rings.
    std::thread::sleep(Duration::from_millis(100));
    fwd.terminate();
    (sent, fwd.finish())
}

/// fwd in echo mode (`args`, the duration added) against testpmd in macswap (prepared with
/// `len`-byte txpkts): testpmd starts, fwd runs its duration and exits, testpmd stops. What fwd
/// printed.
fn dpdk_echo(testpmd: &VhostTestpmd, what: &str, len: usize, mut args: Vec<String>) -> Finished {
    prepare(testpmd, "macswap", len);
    testpmd.cmd("start");
    args.extend(["--duration".to_string(), TRAFFIC.as_secs_f64().to_string()]);
    let out = Fwd::start(what, &args).finish();
    testpmd.cmd("stop");
    out
}

/// DPDK txonly -> fwd rxonly, every frame checked.
fn dpdk_to_fwd(testpmd: &VhostTestpmd, ring: &str, queues: u16, len: usize) {
    let what = format!("{ring} x{queues} {len} B: DPDK txonly -> fwd rxonly");
    prepare(testpmd, "txonly", len);
    let len_arg = len.to_string();
    let fwd = Fwd::start(
        &what,
        &fwd_args(testpmd, ring, queues, "rxonly", &["--verify", "dpdk-txonly", "--verify-len", &len_arg]),
    );
    let (sent, out) = dpdk_into(testpmd, fwd);
    let received = out.get("rx_pkts");
    assert!(received > 1000, "{what}: traffic flowed ({received} frames)");
    assert_eq!(received, sent, "{what}: fwd received every frame testpmd sent");
    assert_eq!(out.get("verified"), received, "{what}: every frame checked");
    assert_eq!(out.get("bad"), 0, "{what}: no damaged frame\n{}", out.stderr);
    let per_queue = out.per_queue("rx");
    assert_eq!(per_queue.len(), queues as usize);
    assert!(per_queue.iter().all(|&n| n > 0), "{what}: every queue received: {per_queue:?}");
}

/// fwd txonly -> DPDK rxonly; counts and bytes compared.
fn fwd_to_dpdk(testpmd: &VhostTestpmd, ring: &str, queues: u16, len: usize) {
    let what = format!("{ring} x{queues} {len} B: fwd txonly -> DPDK rxonly");
    prepare(testpmd, "rxonly", len);
    testpmd.cmd("start");
    let len_arg = len.to_string();
    let secs = format!("{}", TRAFFIC.as_secs_f64());
    let fwd =
        Fwd::start(&what, &fwd_args(testpmd, ring, queues, "txonly", &["--txpkts", &len_arg, "--duration", &secs]));
    let out = fwd.finish();
    testpmd.cmd("stop");
    let (sent, inflight) = (out.get("tx_pkts"), out.get("tx_inflight"));
    let (received, bytes) = (counter(testpmd, "RX-packets"), counter(testpmd, "RX-bytes"));
    assert!(sent > 1000, "{what}: traffic flowed ({sent} frames)");
    // Frames still in the ring when fwd gave up waiting (normally none) may or may not have been
    // taken before the device was reset.
    assert!(
        received <= sent && received + inflight >= sent,
        "{what}: testpmd received {received} of the {sent} frames fwd sent ({inflight} in flight at stop)"
    );
    assert!(inflight <= 1024, "{what}: at most a ring in flight");
    assert_eq!(bytes, received * len as u64, "{what}: every frame {len} bytes long");
    let per_queue = out.per_queue("tx");
    assert!(per_queue.len() == queues as usize && per_queue.iter().all(|&n| n > 0), "{what}: {per_queue:?}");
}

/// fwd echo <-> DPDK macswap; every returned frame checked, nothing lost.
fn echo(testpmd: &VhostTestpmd, ring: &str, queues: u16, len: usize) {
    let what = format!("{ring} x{queues} {len} B: fwd echo <-> DPDK macswap");
    let len_arg = len.to_string();
    let args = fwd_args(
        testpmd,
        ring,
        queues,
        "echo",
        &["--txpkts", &len_arg, "--verify-len", &len_arg, "--echo-expect", "swapped", "--json", "--packet-classes"],
    );
    let out = dpdk_echo(testpmd, &what, len, args);
    check_json(&what, &out, len);
    let (sent, received) = (out.get("tx_pkts"), out.get("rx_pkts"));
    assert!(received > 1000, "{what}: traffic flowed ({received} frames back)");
    assert_eq!(out.get("bad"), 0, "{what}: no damaged frame\n{}", out.stderr);
    assert_eq!(out.get("lost"), 0, "{what}: no frame lost");
    assert_eq!(out.get("reorders"), 0, "{what}: frames came back in order");
    assert_eq!(received, sent, "{what}: every frame came back");
    assert_eq!(out.get("verified"), received, "{what}: every frame checked");
    assert_eq!(counter(testpmd, "RX-packets"), sent, "{what}: testpmd received what fwd sent");
    assert_eq!(counter(testpmd, "TX-packets"), received, "{what}: testpmd sent what fwd received");
    let per_queue = out.per_queue("rx");
    assert!(per_queue.len() == queues as usize && per_queue.iter().all(|&n| n > 0), "{what}: {per_queue:?}");
}

/// `--json` (with `--packet-classes`): the JSON lines parse, the summary says what FWD-SUMMARY
/// says, and port 0's extended statistics count what it received, every frame in the size bin
/// of `len`.
fn check_json(what: &str, out: &Finished, len: usize) {
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}")))
        .collect();
    let summary = lines.iter().find(|l| l["event"] == "summary").expect("a JSON summary");
    for key in ["rx_pkts", "tx_pkts", "lost", "bad"] {
        assert_eq!(summary[key].as_u64(), Some(out.get(key)), "{what}: JSON {key}");
    }
    let port = lines.iter().find(|l| l["event"] == "port_total" && l["port"] == 0).expect("port 0's JSON total");
    let x = &port["xstats"];
    assert_eq!(x["rx_good_packets"].as_u64(), Some(out.get("rx_pkts")), "{what}: rx_good_packets");
    assert_eq!(x["tx_good_packets"].as_u64(), Some(out.get("tx_pkts")), "{what}: tx_good_packets");
    assert_eq!(x["rx_good_bytes"].as_u64(), Some(out.get("rx_pkts") * len as u64), "{what}: rx_good_bytes");
    let bin = if len == 64 { "rx_size_64_packets" } else { "rx_size_1024_1518_packets" };
    assert_eq!(x[bin].as_u64(), Some(out.get("rx_pkts")), "{what}: {bin}");
    assert_eq!(x["rx_broadcast_packets"].as_u64(), Some(0), "{what}: no broadcast");
    assert_eq!(x["rx_ring_bad_id"].as_u64(), Some(0), "{what}: no ring errors");
    assert!(x["rx_q0_packets"].as_u64().is_some_and(|n| n > 0), "{what}: per-queue counters");
}

/// All six cases of one ring layout and queue pair count against one testpmd.
fn cases(ring: &'static str, queues: u16) {
    let mut testpmd = VhostTestpmd::start(&format!("fwd-{ring}-q{queues}"), Options { queues, ..Options::default() });
    let started = Instant::now();
    // DPDK's txonly first: its payload is zero only while testpmd's mbufs never held a received
    // frame (txonly writes the headers alone).
    for len in [64, 1514] {
        dpdk_to_fwd(&testpmd, ring, queues, len);
    }
    for len in [64, 1514] {
        fwd_to_dpdk(&testpmd, ring, queues, len);
        echo(&testpmd, ring, queues, len);
    }
    let log = testpmd.log();
    let negotiated = log.lines().rfind(|l| l.contains("negotiated Virtio features")).unwrap_or_default();
    let value = u64::from_str_radix(negotiated.rsplit("0x").next().unwrap_or("0").trim(), 16).unwrap_or(0);
    assert_eq!(value & (1 << 34) != 0, ring == "packed", "testpmd negotiated the {ring} ring: {negotiated}");
    testpmd.stop();
    eprintln!("{ring} x{queues}: six cases in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn packed_one_queue_pair() {
    cases("packed", 1);
}

#[test]
fn packed_two_queue_pairs() {
    cases("packed", 2);
}

#[test]
fn split_one_queue_pair() {
    cases("split", 1);
}

#[test]
fn split_two_queue_pairs() {
    cases("split", 2);
}

/// The `queue_total` JSON lines of port 0, by queue: (rx_packets, rx_dropped, tx_packets,
/// tx_dropped).
fn queue_totals(what: &str, out: &Finished) -> Vec<[u64; 4]> {
    let mut totals = Vec::new();
    for line in out.stdout.lines().filter(|l| l.contains("\"queue_total\"")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line}"));
        assert_eq!(v["port"], 0);
        assert_eq!(v["queue"].as_u64(), Some(totals.len() as u64), "{what}: queues in order");
        let get = |key: &str| v[key].as_u64().unwrap_or_else(|| panic!("{what}: no {key} in {line}"));
        totals.push([get("rx_packets"), get("rx_dropped"), get("tx_packets"), get("tx_dropped")]);
    }
    totals
}

/// testpmd's `--rxq 4 --txq 4` against DPDK's vhost with four queue pairs, two threads owning
/// two queue sets each: DPDK txonly -> fwd rxonly (every frame checked) and fwd echo <-> DPDK
/// macswap; every queue carries traffic, the per-queue counters (text and JSON) add up to the
/// port's totals and to testpmd's, nothing dropped. `--rss-ip` on a vhost-user port (no control
/// queue, no RSS) is a clear error, and `--rxq` differing from `--txq` is refused.
#[test]
fn four_queue_pairs_from_rxq_and_txq_with_per_queue_counters() {
    const QUEUES: usize = 4;
    let mut testpmd = VhostTestpmd::start("fwd-rxq4", Options { queues: QUEUES as u16, ..Options::default() });
    let socket = format!("vhost:{}", testpmd.socket().display());
    let args = |mode: &str, extra: &[&str]| -> Vec<String> {
        let base = ["--port", &socket, "--forward-mode", mode, "--rxq", "4", "--txq", "4", "--nb-cores", "2"];
        let pool = ["--huge-pages", "required", "--mbufs", "16384", "--json"];
        base.iter().chain(&pool).chain(extra).map(|s| s.to_string()).collect()
    };
    let check_queues = |what: &str, out: &Finished, rx_total: u64, tx_total: u64| {
        let totals = queue_totals(what, out);
        assert_eq!(totals.len(), QUEUES, "{what}: a line per queue:\n{}", out.stdout);
        for (q, t) in totals.iter().enumerate() {
            let carried = if rx_total > 0 { t[0] } else { t[2] };
            assert!(carried > 0, "{what}: queue {q} carried traffic: {totals:?}");
            assert_eq!((t[1], t[3]), (0, 0), "{what}: queue {q} dropped nothing");
        }
        assert_eq!(totals.iter().map(|t| t[0]).sum::<u64>(), rx_total, "{what}: per-queue rx adds up");
        assert_eq!(totals.iter().map(|t| t[2]).sum::<u64>(), tx_total, "{what}: per-queue tx adds up");
        assert_eq!(out.per_queue("rx"), totals.iter().map(|t| t[0]).collect::<Vec<_>>(), "{what}: text = JSON");
        eprintln!("{what}: per queue {totals:?}");
    };

    let what = "x4 DPDK txonly -> fwd rxonly --rxq 4 --txq 4";
    prepare(&testpmd, "txonly", 64);
    let fwd = Fwd::start(what, &args("rxonly", &["--verify", "dpdk-txonly", "--verify-len", "64"]));
    let (sent, out) = dpdk_into(&testpmd, fwd);
    assert_eq!(out.get("rx_pkts"), sent, "{what}: fwd received every frame testpmd sent");
    assert_eq!((out.get("verified"), out.get("bad")), (sent, 0), "{what}: every frame checked");
    check_queues(what, &out, sent, 0);

    let what = "x4 fwd echo <-> DPDK macswap --rxq 4 --txq 4";
    let out = dpdk_echo(&testpmd, what, 64, args("echo", &["--txpkts", "64"]));
    let (sent, received) = (out.get("tx_pkts"), out.get("rx_pkts"));
    assert!(received > 1000 && received == sent, "{what}: every frame came back ({received} of {sent})");
    assert_eq!((out.get("bad"), out.get("lost"), out.get("drops")), (0, 0, 0), "{what}");
    assert_eq!(counter(&testpmd, "RX-packets"), sent, "{what}: testpmd received what fwd sent");
    check_queues(what, &out, received, sent);

    let what = "--rss-ip on a vhost-user port";
    let mut fwd = Fwd::start(what, &args("io", &["--rss-ip", "--duration", "0.1"]));
    let failed = fwd.finish_output();
    let status = fwd.child.wait().expect("wait for fwd");
    assert_eq!(status.code(), Some(2), "{what}: refused at set-up:\n{}\n{}", failed.stdout, failed.stderr);
    assert!(
        failed.stderr.contains("--rss-ip") && failed.stderr.contains("no control queue"),
        "{what}: says why: {}",
        failed.stderr
    );
    testpmd.stop();

    let out = Command::new(FWD).args(["--port", &socket, "--rxq", "4", "--txq", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--rxq 4 and --txq 2 differ") && stderr.contains("pairs"), "{stderr}");
}

/// 9000-byte frames both ways through fwd over mergeable receive buffers and transmit chains in
/// 2 KiB mbufs (`--max-pkt-len 9000`): DPDK's multi-segment txonly (five segments) -> fwd
/// rxonly, every frame arriving whole (its payload is not checkable: testpmd reuses mbufs that
/// held headers as later segments); fwd echo (each frame a five-segment chain) <-> DPDK
/// macswap, every byte of every frame checked; testpmd's byte counts agree; every mbuf back.
#[test]
fn jumbo_frames_both_ways_over_mergeable_buffers() {
    const LEN: u64 = 9000;
    let options = Options { app_extra: "--max-pkt-len=9018", ..Options::default() };
    let mut testpmd = VhostTestpmd::start("fwd-jumbo", options);
    let socket = format!("vhost:{}", testpmd.socket().display());
    let args = |mode: &str, extra: &[&str]| -> Vec<String> {
        let base = ["--port", &socket, "--forward-mode", mode, "--max-pkt-len", "9000", "--verify-len", "9000"];
        let rest = ["--huge-pages", "required", "--mbufs", "8192", "--json"];
        base.iter().chain(&rest).chain(extra).map(|s| s.to_string()).collect()
    };
    let check_port = |what: &str, out: &Finished| {
        assert!(
            out.stdout.contains("rx path mergeable") && out.stdout.contains("tx path chains"),
            "{what}: mergeable receive buffers and transmit chains:\n{}",
            out.stdout
        );
        let port = out
            .stdout
            .lines()
            .filter(|l| l.contains("\"port_total\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .next()
            .expect("port 0's JSON total");
        let x = &port["xstats"];
        assert_eq!(x["rx_good_bytes"].as_u64(), Some(out.get("rx_pkts") * LEN), "{what}: whole frames received");
        assert_eq!(x["tx_good_bytes"].as_u64(), Some(out.get("tx_pkts") * LEN), "{what}: whole frames sent");
        assert_eq!((x["rx_bad_headers"].as_u64(), x["rx_dropped"].as_u64()), (Some(0), Some(0)), "{what}");
    };

    let what = "9000 B: DPDK multi-segment txonly -> fwd rxonly";
    for command in ["set fwd txonly", "set txpkts 2000,2000,2000,2000,1000", "clear port stats all"] {
        testpmd.cmd(command);
    }
    let (sent, out) = dpdk_into(&testpmd, Fwd::start(what, &args("rxonly", &[])));
    assert!(sent > 1000, "{what}: traffic flowed ({sent} frames)");
    assert_eq!(out.get("rx_pkts"), sent, "{what}: fwd received every frame testpmd sent");
    check_port(what, &out);

    let what = "9000 B: fwd echo <-> DPDK macswap";
    let out = dpdk_echo(&testpmd, what, 64, args("echo", &["--txpkts", "9000"]));
    let (sent, received) = (out.get("tx_pkts"), out.get("rx_pkts"));
    assert!(received > 1000 && received == sent, "{what}: every frame came back ({received} of {sent})");
    assert_eq!((out.get("verified"), out.get("bad"), out.get("lost")), (sent, 0, 0), "{what}\n{}", out.stderr);
    assert_eq!(counter(&testpmd, "RX-bytes"), sent * LEN, "{what}: testpmd received whole frames");
    assert_eq!(counter(&testpmd, "TX-bytes"), sent * LEN, "{what}: and sent them back whole");
    check_port(what, &out);
    testpmd.stop();
}

// ---- Offload metadata through fwd ----

/// Offload metadata crossing fwd: DPDK's csum engine between two vhost ports (TCP checksum in
/// hardware, TSO with MSS 1448 on both) hands 30000-byte TCP super-packets to `fwd io
/// --offloads` as LRO packets (a GSO header and a partial checksum); fwd sends each on with its
/// metadata, and DPDK's vhost reports every one of them as a received LRO packet
/// (`RTE_MBUF_F_RX_LRO`, which it sets only from the virtio-net header's GSO type): without the
/// pass-through they would arrive as plain 30000-byte frames. The test's own port on the other
/// vhost port sends them (TSO requests) and gets them back whole, partial checksums as DPDK
/// asked; DPDK's csum engine counts no bad checksum; every mbuf back on both sides.
#[test]
fn offload_metadata_crosses_fwd_through_dpdk_csum_engine() {
    use virtio_pmd::mbuf::{Checksum, Gso, GsoKind, Mbuf, Mempool, MempoolConfig, Offload};
    use virtio_pmd::mem::{HugePages, IovaAllocator};
    use virtio_pmd::net::{OffloadConfig, Port, PortConfig};
    use virtio_pmd::transport::vhost_user::{VhostUserConfig, VhostUserTransport};

    const FRAMES: u64 = 100;
    const LEN: usize = 30_000;
    const MSS: u16 = 1448;
    let fwd_socket = std::env::temp_dir().join(format!("vpmd-fwd-offload-b-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&fwd_socket);
    let options = Options {
        fwd: "csum",
        vdev_extra: ",tso=1",
        eal_extra: format!("--vdev net_vhost1,iface={},queues=1,tso=1", fwd_socket.display()),
        ..Options::default()
    };
    let mut testpmd = VhostTestpmd::start("fwd-offload", options);
    for command in ["port stop all", "csum set ip sw 0", "csum set tcp hw 0", "csum set ip sw 1", "csum set tcp hw 1"] {
        testpmd.cmd(command);
    }
    for command in
        [&format!("tso set {MSS} 0"), &format!("tso set {MSS} 1"), "port start all", "set verbose 1", "start"]
    {
        testpmd.cmd(command);
    }
    let what = "fwd io --offloads between DPDK csum engine ports";
    let fwd_args: Vec<String> = ["--port", &format!("vhost:{}", fwd_socket.display()), "--forward-mode", "io"]
        .iter()
        .chain(&["--offloads", "--huge-pages", "required", "--mbufs", "8192"])
        .map(|s| s.to_string())
        .collect();
    let mut fwd = Fwd::start(what, &fwd_args);
    fwd.wait_ready();

    let pool_config = MempoolConfig { count: 4096, huge_pages: HugePages::Required, ..MempoolConfig::default() };
    let pool = Mempool::new(&pool_config, &IovaAllocator::identity()).expect("the test's pool");
    let mut transport_config = VhostUserConfig::new(testpmd.socket());
    transport_config.connect_timeout = Duration::from_secs(5);
    let transport = VhostUserTransport::connect(transport_config).expect("connect to testpmd's port 0");
    let port_config = PortConfig { huge_pages: HugePages::Required, ..PortConfig::default() }.for_forwarding(
        LEN as u32,
        pool.data_room(),
        true,
    );
    assert_eq!(port_config.offloads, OffloadConfig::ALL);
    let mut port = Port::open(Box::new(transport), &pool, &port_config, &IovaAllocator::identity()).unwrap();
    let (mut rx, mut tx) = port.take_queues(0).unwrap();
    let gso = Some(Gso { kind: GsoKind::Tcpv4, size: MSS, ecn: false });
    let (mut sent, mut received) = (0u64, 0u64);
    let mut out: Vec<Mbuf> = Vec::with_capacity(32);
    let deadline = Instant::now() + Duration::from_secs(20);
    while received < FRAMES && Instant::now() < deadline {
        if sent < FRAMES && sent - received < 8 {
            let mut m = pool.alloc().unwrap();
            m.extend_from_slice(&pool, &tcp_frame(LEN, sent, TcpChecksum::ForSegmentation)).unwrap();
            m.set_offload(Offload { checksum: Checksum::Partial { start: 34, offset: 16 }, gso });
            sent += tx.tx_burst(&mut vec![m]) as u64;
        }
        tx.reclaim();
        rx.rx_burst(&mut out);
        for m in out.drain(..) {
            let frame = m.to_vec();
            assert_eq!(frame.len(), LEN, "frame {received} whole");
            assert_eq!(m.offload().gso, gso, "frame {received}: segmentation as DPDK asked");
            assert_eq!(m.offload().checksum, Checksum::Partial { start: 34, offset: 16 }, "frame {received}");
            assert_eq!(u16::from_be_bytes([frame[50], frame[51]]), ones_sum(&frame[26..34], 6), "pseudo-header sum");
            assert_eq!(!ones_sum(&frame[14..34], 0), 0, "frame {received}: IPv4 checksum");
            received += 1;
        }
    }
    let stats = testpmd.cmd("stop");
    assert_eq!(received, FRAMES, "every frame came back through DPDK, fwd and DPDK:\n{stats}");
    for counter in ["Bad-ipcsum:", "Bad-l4csum:"] {
        let values: Vec<&str> =
            stats.split(counter).skip(1).filter_map(|rest| rest.split_whitespace().next()).collect();
        assert!(!values.is_empty() && values.iter().all(|v| *v == "0"), "DPDK's {counter} {values:?}:\n{stats}");
    }
    // testpmd's verbose log: a "port P/queue Q: received N packets" line, then a line of
    // flags per packet.
    let log = testpmd.log();
    let (mut lro_from_fwd, mut from_fwd, mut section) = (0u64, 0u64, None);
    for line in log.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("port ") {
            if rest.contains(": received") {
                section = rest.split('/').next().map(str::to_owned);
            }
        }
        if line.trim_start().starts_with("ol_flags:") && section.as_deref() == Some("1") {
            from_fwd += 1;
            lro_from_fwd += u64::from(line.contains("RTE_MBUF_F_RX_LRO"));
        }
    }
    eprintln!("{what}: {received} frames back; DPDK got {from_fwd} from fwd, {lro_from_fwd} of them LRO packets");
    assert_eq!((from_fwd, lro_from_fwd), (FRAMES, FRAMES), "fwd passed every frame's GSO header on");
    drop((rx, tx, port));
    assert_eq!(pool.stats().in_use, 0, "every mbuf of the test's port is back");
    fwd.terminate();
    let out = fwd.finish();
    assert_eq!((out.get("rx_pkts"), out.get("tx_pkts"), out.get("drops")), (FRAMES, FRAMES, 0), "{what}");
    assert!(out.stdout.contains("tx path chains with offloads"), "{what}: offloads negotiated:\n{}", out.stdout);
    testpmd.stop();
    let _ = std::fs::remove_file(&fwd_socket);
}
