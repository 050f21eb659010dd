//! `fwd` against a hostile vhost-user backend ([`HostileBackend`]): a backend that answers the
//! handshake, then for a second writes random bytes over the memory it was given and posts bogus
//! completions, must not make `fwd` crash, panic or hang.
//!
//! Each case starts the backend in this process (seeded, so that its choices repeat; set
//! `VIRTIO_PMD_HOSTILE_SEED` to try others), runs the real `fwd` binary in io mode on one port
//! against it (packed or split rings), waits for the attack to end (a quarter-second warm-up of
//! valid completions, so that frames flow and fwd handles buffers the backend scribbled on, then
//! the attack proper), gives fwd a moment to exit by itself, then asks it to stop with SIGINT, as
//! a user would. Asserted: no signal killed it, nothing panicked, it exited within a few seconds,
//! with status 0 and its summary; it received frames; its report counts the ring errors the
//! attack caused; every mbuf came back to the pool (the backend either answers the driver's stop,
//! so the device is confirmed stopped, or hangs up, so the device is gone: neither case leaks
//! buffers).
//!
//! Targets: everything (every region whole: rings, mbuf headroom and data, and whatever else the
//! pool keeps there), only the rings, everything but the rings. Needs no DPDK and no huge pages.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use virtio_pmd::testing::{AfterAttack, HostileBackend, HostileConfig, HostileReport, Target};

const FWD: &str = env!("CARGO_BIN_EXE_fwd");
/// How long the backend attacks.
const ATTACK: Duration = Duration::from_secs(1);
/// How long fwd may take to connect and start forwarding.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// After the attack: how long fwd may keep running before it is asked to stop.
const GRACE: Duration = Duration::from_millis(300);
/// How long fwd may take to exit once asked to.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend's seed for a case: `VIRTIO_PMD_HOSTILE_SEED` (plus the case's own number) when
/// set, else the case's number.
fn seed(case: u64) -> u64 {
    let base = std::env::var("VIRTIO_PMD_HOSTILE_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    base.wrapping_add(case)
}

/// What a run of fwd left behind.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Value of `key` in the `FWD-SUMMARY` line.
    fn summary(&self, key: &str) -> Option<u64> {
        let line = self.stdout.lines().find_map(|l| l.strip_prefix("FWD-SUMMARY "))?;
        let value = line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
        value.parse().ok()
    }

    /// The `errors` count (ring protocol errors) of port 0's total line.
    fn port_errors(&self) -> Option<u64> {
        let line = self.stdout.lines().find(|l| l.starts_with("port 0 total:"))?;
        let at = line.find(" errors ")? + " errors ".len();
        line[at..].split_whitespace().next()?.parse().ok()
    }
}

/// A running fwd, killed (SIGKILL) and reaped if dropped before it exited, so that a failing
/// test leaves no process behind.
struct Child(std::process::Child);

impl Child {
    /// Its status, if it has exited (reaped).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("wait for fwd")
    }

    /// Its status once it exits, if within `limit`.
    fn exits_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs one case: the backend attacks `target` of a `ring` port; returns what fwd did and what
/// the backend did. Panics if fwd does not exit within [`EXIT_TIMEOUT`] of SIGINT.
fn run(name: &str, ring: &str, target: Target, then: AfterAttack, seed: u64) -> (Outcome, HostileReport) {
    let socket = std::env::temp_dir().join(format!("virtio-pmd-hostile-{}-{name}.sock", std::process::id()));
    let config =
        HostileConfig { attack: ATTACK, then, offer_packed: ring == "packed", ..HostileConfig::new(seed, target) };
    eprintln!("{name}: seed {seed}");
    let backend = HostileBackend::start(&socket, config).expect("start the hostile backend");
    let port = format!("vhost:{}", socket.display());
    let mut child = Child(
        Command::new(FWD)
            .args(["--port", &port, "--forward-mode", "io", "--ring", ring, "--rxd", "256", "--huge-pages", "never"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the fwd binary"),
    );
    let (lines, stdout_lines) = mpsc::channel();
    let stdout = child.0.stdout.take().expect("fwd's stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line.clone());
            all.push(line);
        }
        all.join("\n")
    });
    let stderr = child.0.stderr.take().expect("fwd's stderr");
    let stderr_reader =
        std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n"));

    // Ready (or already gone, which the checks explain), then the attack, then a grace period.
    let deadline = Instant::now() + READY_TIMEOUT;
    while let Ok(line) = stdout_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.starts_with("FWD-READY") {
            break;
        }
    }
    let attack_over = backend.wait_for_attack(ATTACK + READY_TIMEOUT);
    std::thread::sleep(GRACE);
    let mut status = child.exited();
    let exited_by_itself = status.is_some();
    if status.is_none() {
        let sent = Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().expect("kill");
        assert!(sent.success(), "{name}: kill -INT {}", child.0.id());
        status = child.exits_within(EXIT_TIMEOUT);
    }
    let hung = status.is_none();
    drop(child);
    let outcome = Outcome {
        status: status.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
    };
    let report = backend.finish();
    eprintln!(
        "{name}: fwd {} ({}); backend {report:?}",
        outcome.status,
        if exited_by_itself { "by itself" } else { "on SIGINT" }
    );
    assert!(attack_over, "{name}: the backend's attack did not end\n{report:?}");
    assert!(
        !hung,
        "{name}: fwd did not exit within {EXIT_TIMEOUT:?} of SIGINT:\n{}\n{}",
        outcome.stdout, outcome.stderr
    );
    (outcome, report)
}

/// The assertions every case makes.
fn check(name: &str, outcome: &Outcome, report: &HostileReport) {
    let shown = format!("--- stdout\n{}\n--- stderr\n{}", outcome.stdout, outcome.stderr);
    assert_eq!(outcome.status.signal(), None, "{name}: fwd was killed by a signal (it crashed)\n{shown}");
    assert!(!outcome.stderr.contains("panicked"), "{name}: fwd panicked\n{shown}");
    assert!(outcome.status.success(), "{name}: fwd exited with {}\n{shown}", outcome.status);

    // The backend really attacked.
    assert!(report.connected && report.vrings == 2 && report.regions >= 2, "{name}: backend set up: {report:?}");
    assert!(report.valid_completions > 0, "{name}: backend warmed up: {report:?}");
    assert!(report.sweeps >= 1 && report.completions > 0 && report.calls > 0, "{name}: backend attacked: {report:?}");
    assert!(report.ended.is_some(), "{name}: the attack ended: {report:?}");

    // Frames flowed (in the warm-up), then fwd noticed the attack and counted it, and lost no
    // buffer.
    let received = outcome.summary("rx_pkts").unwrap_or_else(|| panic!("{name}: fwd printed its summary\n{shown}"));
    assert!(received > 0, "{name}: fwd received frames\n{shown}");
    let errors = outcome.port_errors().unwrap_or_else(|| panic!("{name}: port 0 totals\n{shown}"));
    assert!(errors > 0, "{name}: fwd counted the attack's ring errors\n{shown}");
    assert_eq!(outcome.summary("pool_in_use"), Some(0), "{name}: every mbuf back in the pool\n{shown}");
    for line in outcome.stdout.lines().filter(|l| l.starts_with("port 0 total:") || l.starts_with("pool:")) {
        eprintln!("{name}: {line}");
    }
}

#[test]
fn hostile_backend_scribbling_everything_packed() {
    let (outcome, report) = run("all-packed", "packed", Target::Everything, AfterAttack::HangUp, seed(1));
    check("all-packed", &outcome, &report);
}

#[test]
fn hostile_backend_scribbling_everything_split() {
    let (outcome, report) = run("all-split", "split", Target::Everything, AfterAttack::HangUp, seed(2));
    check("all-split", &outcome, &report);
}

#[test]
fn hostile_backend_scribbling_rings_packed() {
    let (outcome, report) = run("rings-packed", "packed", Target::Rings, AfterAttack::Stay, seed(3));
    check("rings-packed", &outcome, &report);
}

#[test]
fn hostile_backend_scribbling_rings_split() {
    let (outcome, report) = run("rings-split", "split", Target::Rings, AfterAttack::Stay, seed(4));
    check("rings-split", &outcome, &report);
}

#[test]
fn hostile_backend_scribbling_buffers_packed() {
    let (outcome, report) = run("buffers-packed", "packed", Target::Buffers, AfterAttack::HangUp, seed(5));
    check("buffers-packed", &outcome, &report);
}

#[test]
fn hostile_backend_scribbling_buffers_split() {
    let (outcome, report) = run("buffers-split", "split", Target::Buffers, AfterAttack::Stay, seed(6));
    check("buffers-split", &outcome, &report);
}
