//! `l2fwd` on two vhost-user ports of DPDK 22.11's testpmd (`net_vhost0`, `net_vhost1`, two
//! queue pairs each), with DPDK l2fwd's
//! options: `--portmap "(0,1)"`, `-q 2` (two lanes per lcore: two threads for four lanes),
//! `--queues 2`, `--json`, with and without `--no-mac-updating` (`-P` needs a control queue,
//! which DPDK's vhost-user backend does not give: the VM job runs it).
//!
//! testpmd sends bursts on every queue of both ports (`start tx_first`) and then only receives
//! (`rxonly`): what it sent into l2fwd's port 0 must come back on its port 1, and the reverse.
//! With `set verbose 1` testpmd prints every frame it receives: on its port 1 each must carry
//! l2fwd's port 1 MAC as its source and `02:00:00:00:00:01` as its destination (MAC updating),
//! or testpmd's own port 0 MAC, as testpmd sent it (`--no-mac-updating`). The counts are exact:
//! l2fwd received what testpmd sent into each port and sent it all out of the other, which
//! testpmd received; l2fwd dropped nothing, every receive queue got frames, every mbuf came
//! back, and l2fwd's `--json` lines parse and agree with its summary.
//!
//! Needs DPDK and 2 MiB huge pages: without them the test fails with a message saying to run
//! `scripts/dpdk/install.sh` (never skipped).

#[path = "../../pmd/tests/common/vhost_testpmd.rs"]
mod vhost_testpmd;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost_testpmd::{Options, VhostTestpmd};

const L2FWD: &str = env!("CARGO_BIN_EXE_l2fwd");
/// The source MACs of l2fwd's ports (`mac=` of the vhost-user specs).
const MACS: [&str; 2] = ["02:11:11:11:11:00", "02:11:11:11:11:01"];

/// testpmd's counter `name` (e.g. "RX-packets") of `port`.
fn counter(testpmd: &VhostTestpmd, port: u16, name: &str) -> u64 {
    let out = testpmd.cmd(&format!("show port stats {port}"));
    let at = out.find(&format!("{name}:")).unwrap_or_else(|| panic!("no {name} in:\n{out}"));
    out[at + name.len() + 1..].split_whitespace().next().unwrap().parse().unwrap()
}

/// testpmd's port `port` MAC, lower case.
fn testpmd_mac(testpmd: &VhostTestpmd, port: u16) -> String {
    let out = testpmd.cmd(&format!("show port info {port}"));
    let line = out.lines().find(|l| l.contains("MAC address:")).unwrap_or_else(|| panic!("no MAC in:\n{out}"));
    line.rsplit(' ').next().unwrap().trim().to_lowercase()
}

/// The `key=value` fields of the first line starting with `prefix`.
fn fields(stdout: &str, prefix: &str) -> HashMap<String, String> {
    let line = stdout.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no {prefix}:\n{stdout}"));
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect()
}

fn count(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields[key].parse().unwrap_or_else(|_| panic!("{key}={} is not a count", fields[key]))
}

/// A spawned l2fwd, killed when a failing test unwinds past it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One run of l2fwd between the two ports of `testpmd` (the second at `second`);
/// `mac_updating` false adds --no-mac-updating.
fn run(testpmd: &VhostTestpmd, second: &Path, mac_updating: bool) {
    let what = if mac_updating { "MACs rewritten" } else { "--no-mac-updating" };
    testpmd.cmd("clear port stats all");
    let log_from = testpmd.log().len();
    let ports = [testpmd.socket().to_path_buf(), second.to_path_buf()];
    let mut args: Vec<String> =
        ports.iter().zip(MACS).map(|(socket, mac)| format!("vhost:{},mac={mac}", socket.display())).collect();
    let flags = ["--portmap", "(0,1)", "-q", "2", "--queues", "2", "--json", "--huge-pages", "required"];
    args.extend(flags.iter().map(|s| s.to_string()));
    // The traffic is a few bursts: l2fwd's two threads sleep while idle, leaving the two cores to
    // testpmd (busy polling, and answering commands).
    args.extend(["--stats-interval", "1", "--ring-size", "256", "--idle-sleep-us", "100"].map(String::from));
    if !mac_updating {
        args.push("--no-mac-updating".into());
    }
    let mut l2fwd =
        Running(Command::new(L2FWD).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let l2fwd = &mut l2fwd.0;
    let mut stderr = l2fwd.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text).unwrap_or_default()
    });
    // L2FWD-READY: both connections made, every lane polled. Read stdout until then.
    let mut stdout = l2fwd.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !seen.contains("L2FWD-READY") {
        assert!(Instant::now() < deadline, "{what}: l2fwd never got ready:\n{seen}");
        match stdout.read(&mut buf).unwrap() {
            0 => panic!("{what}: l2fwd exited before L2FWD-READY:\n{seen}\n{}", stderr.join().unwrap()),
            n => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(seen.contains("L2FWD-READY ports=2 threads=2"), "{what}: -q 2 puts four lanes on two threads:\n{seen}");
    let tx_mac = testpmd_mac(testpmd, 0);
    testpmd.cmd("set verbose 1");
    // Sent without waiting for the prompt, which the frame dumps can split (see `send`); the
    // bursts are done once testpmd's output settles.
    testpmd.send("start tx_first 2");
    testpmd.wait_quiet(Duration::from_millis(500), Duration::from_secs(30));
    // At least one statistics period (--stats-interval 1) for the JSON stats lines.
    std::thread::sleep(Duration::from_millis(1000));
    testpmd.cmd("stop");
    testpmd.cmd("set verbose 0");
    let sent = [counter(testpmd, 0, "TX-packets"), counter(testpmd, 1, "TX-packets")];
    let back = [counter(testpmd, 0, "RX-packets"), counter(testpmd, 1, "RX-packets")];
    let status = Command::new("kill").args(["-TERM", &l2fwd.id().to_string()]).status().unwrap();
    assert!(status.success());
    stdout.read_to_string(&mut seen).unwrap();
    let stderr = stderr.join().unwrap();
    let exit = l2fwd.wait().unwrap();
    let log = testpmd.log().split_off(log_from);
    assert!(exit.success() && seen.contains("L2FWD-DONE clean"), "{what}: l2fwd exited {exit}:\n{seen}\n{stderr}");

    // Counts: l2fwd received exactly what testpmd sent into each port, and forwarded it all.
    let port = |p: u16| fields(&seen, &format!("L2FWD-SUMMARY port={p} "));
    let (p0, p1) = (port(0), port(1));
    assert!(sent[0] >= 64 && sent[1] >= 64, "{what}: testpmd sent bursts on both ports: {sent:?}");
    assert_eq!((count(&p0, "rx"), count(&p1, "rx")), (sent[0], sent[1]), "{what}: l2fwd received what testpmd sent");
    assert_eq!((count(&p0, "dropped"), count(&p1, "dropped")), (0, 0), "{what}: nothing dropped");
    assert_eq!((count(&p1, "tx"), count(&p0, "tx")), (sent[0], sent[1]), "{what}: every frame forwarded to the peer");
    assert_eq!(back, [sent[1], sent[0]], "{what}: testpmd received every frame back on the other port");
    let rxq: Vec<&str> = seen.lines().filter(|l| l.starts_with("L2FWD-RXQ ")).collect();
    assert_eq!(rxq.len(), 4, "{what}: {rxq:?}");
    assert!(rxq.iter().all(|l| !l.contains(" rx=0 ")), "{what}: every receive queue got frames: {rxq:?}");
    assert!(seen.contains("L2FWD-POOL ") && seen.contains(" in_use=0 "), "{what}: every mbuf back:\n{seen}");

    // MACs: every frame testpmd received on its port 1 came out of l2fwd's port 1. Its log has a
    // `port P/queue Q: received N packets` line per burst, then one `src=.. - dst=..` per frame.
    let mut port = None;
    let mut port1 = Vec::new();
    // testpmd writes its prompt a character at a time, between the forwarding lcore's lines: a
    // header or a frame's line may follow a prompt, or a piece of one, on its line.
    for line in log.lines() {
        if let Some(at) = line.find("/queue ") {
            let number = line[..at].rsplit(' ').next().unwrap_or_default();
            port = line.contains(": received").then(|| number.to_string());
        } else if let Some(at) = line.find("src=") {
            if port.as_deref() == Some("1") {
                port1.push(line[at..].to_lowercase());
            }
        }
    }
    let want = if mac_updating { MACS[1].to_string() } else { tx_mac.clone() };
    for line in &port1 {
        assert!(line.starts_with(&format!("src={want} ")), "{what}: frame on port 1 not from {want}: {line}");
        if mac_updating {
            assert!(line.contains("dst=02:00:00:00:00:01 "), "{what}: l2fwd's dst MAC: {line}");
        }
    }

    // --json: every line parses; the summary says what L2FWD-SUMMARY says; the pool check.
    let json: Vec<serde_json::Value> = seen
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}")))
        .collect();
    assert!(json.iter().all(|j| j["app"] == "l2fwd"), "{what}");
    for (p, fields) in [(0, &p0), (1, &p1)] {
        let summary = json.iter().find(|j| j["event"] == "summary" && j["port"] == p).expect("a JSON summary per port");
        for key in ["rx", "tx", "dropped"] {
            assert_eq!(summary[key].as_u64(), Some(count(fields, key)), "{what}: JSON {key} of port {p}");
        }
        assert_eq!(summary["xstats"]["rx_good_packets"].as_u64(), Some(count(fields, "rx")), "{what}: xstats");
        assert!(summary["xstats"]["rx_q1_packets"].as_u64().is_some_and(|n| n > 0), "{what}: per-queue xstats");
    }
    let pool = json.iter().find(|j| j["event"] == "pool").expect("a JSON pool line");
    assert_eq!(pool["in_use"].as_u64(), Some(0), "{what}: JSON pool check");
    assert!(json.iter().any(|j| j["event"] == "stats" && j["rates"].is_object()), "{what}: JSON stats lines");
    assert_eq!(port1.len() as u64, sent[0], "{what}: testpmd printed every frame of its port 1");
    eprintln!("{what}: testpmd sent {sent:?}, l2fwd forwarded them all; {} frames' MACs checked", port1.len());
}

/// Both runs against one testpmd, each a new l2fwd (new vhost-user connections).
#[test]
fn l2fwd_between_dpdk_vhost_ports_with_and_without_mac_updating() {
    let second = std::env::temp_dir().join(format!("vpmd-l2fwd-{}-1.sock", std::process::id()));
    let options = Options {
        queues: 2,
        fwd: "rxonly",
        eal_extra: format!("--vdev net_vhost1,iface={},queues=2", second.display()),
        ..Options::default()
    };
    let mut testpmd = VhostTestpmd::start("l2fwd", options);
    run(&testpmd, &second, false);
    run(&testpmd, &second, true);
    testpmd.stop();
}
