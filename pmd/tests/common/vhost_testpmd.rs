//! DPDK's vhost-user backend (`dpdk-testpmd` with `net_vhost`) for integration tests, through
//! `scripts/dpdk/vhost-testpmd.sh`. Include it with
//! `#[path = "common/vhost_testpmd.rs"] mod vhost_testpmd;`.
//!
//! Missing DPDK or huge pages fail the test with a message saying to run
//! `scripts/dpdk/install.sh`: these tests are never skipped silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One testpmd at a time per test process: the machine has two cores and shared huge pages.
static SERIAL: Mutex<()> = Mutex::new(());

/// Options for [`VhostTestpmd::start`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Queue pairs (`queues=` of the vdev).
    pub queues: u16,
    /// Forwarding mode (io, mac, macswap, txonly, rxonly, ...).
    pub fwd: &'static str,
    /// Frame size for txonly, or its segments' sizes, comma-separated (`--txpkts`).
    pub txpkts: Option<&'static str>,
    /// More testpmd arguments (after `--`).
    pub app_extra: &'static str,
    /// More `net_vhost` vdev arguments (`,tso=1`).
    pub vdev_extra: &'static str,
    /// More EAL arguments (a second port: `--vdev net_vhost1,iface=..`).
    pub eal_extra: String,
    /// Start forwarding once up (`start`).
    pub forward: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queues: 1,
            fwd: "io",
            txpkts: None,
            app_extra: "",
            vdev_extra: "",
            eal_extra: String::new(),
            forward: false,
        }
    }
}

/// A running vhost-user testpmd; stopped (and its huge page files removed) on drop.
pub struct VhostTestpmd {
    prefix: String,
    socket: PathBuf,
    pid: u32,
    stopped: bool,
    _serial: MutexGuard<'static, ()>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dpdk/vhost-testpmd.sh")
}

/// Panics with what to do when DPDK or huge pages are missing.
pub fn require_dpdk() {
    let testpmd = Command::new("sh").args(["-c", "command -v dpdk-testpmd"]).output();
    assert!(
        testpmd.is_ok_and(|o| o.status.success()),
        "dpdk-testpmd is not installed: run scripts/dpdk/install.sh (installs DPDK 22.11 and reserves huge pages)"
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        free >= 48,
        "only {free} free 2 MiB huge pages (testpmd and the test need about 48): run scripts/dpdk/install.sh"
    );
    let mounted = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        mounted.lines().any(|l| l.split_whitespace().nth(1) == Some("/dev/hugepages")),
        "hugetlbfs is not mounted at /dev/hugepages: run scripts/dpdk/install.sh"
    );
}

impl VhostTestpmd {
    /// Starts testpmd serving `name`'s socket; `name` makes the socket path and file prefix unique.
    pub fn start(name: &str, options: Options) -> Self {
        require_dpdk();
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("vpmd-{name}-{}", std::process::id());
        let socket = std::env::temp_dir().join(format!("{prefix}.sock"));
        let mut args = vec![
            "start".to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--prefix".into(),
            prefix.clone(),
            "--queues".into(),
            options.queues.to_string(),
            "--fwd".into(),
            options.fwd.into(),
        ];
        if let Some(sizes) = options.txpkts {
            args.extend(["--txpkt-size".into(), sizes.into()]);
        }
        if !options.vdev_extra.is_empty() {
            args.extend(["--vdev-extra".into(), options.vdev_extra.into()]);
        }
        if !options.eal_extra.is_empty() {
            args.extend(["--eal-extra".into(), options.eal_extra.clone()]);
        }
        if !options.app_extra.is_empty() {
            args.extend(["--app-extra".into(), options.app_extra.into()]);
        }
        if options.forward {
            args.push("--forward".into());
        }
        let out = Command::new(script()).args(&args).output().expect("run scripts/dpdk/vhost-testpmd.sh");
        assert!(
            out.status.success(),
            "vhost-testpmd.sh start failed:\n{}{}\n(run scripts/dpdk/install.sh if DPDK or huge pages are missing)",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("pid from vhost-testpmd.sh start");
        Self { prefix, socket, pid, stopped: false, _serial: serial }
    }

    /// The vhost-user socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// testpmd's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs one testpmd command, waiting at most 10 s for its prompt, and returns its output.
    pub fn cmd(&self, command: &str) -> String {
        let out = Command::new(script())
            .args(["cmd", "--prefix", &self.prefix, "--timeout", "10", command])
            .output()
            .expect("run vhost-testpmd.sh cmd");
        assert!(out.status.success(), "testpmd command {command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `command` without waiting for testpmd's prompt: for commands after which the
    /// forwarding lcores print frames (`set verbose 1`), whose lines can split the prompt that
    /// testpmd writes a character at a time. [`wait_quiet`](Self::wait_quiet) then waits for
    /// the output to settle.
    pub fn send(&self, command: &str) {
        let out = Command::new(script()).args(["send", "--prefix", &self.prefix, command]).output().expect("send");
        assert!(out.status.success(), "testpmd command {command:?} not sent: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Waits until testpmd has printed nothing for `quiet`, for at most `timeout`.
    pub fn wait_quiet(&self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut len = self.log().len();
        loop {
            std::thread::sleep(quiet);
            let now = self.log().len();
            if now == len {
                return;
            }
            assert!(Instant::now() < deadline, "testpmd still printing after {timeout:?}");
            len = now;
        }
    }

    /// Everything testpmd printed so far.
    pub fn log(&self) -> String {
        let out =
            Command::new(script()).args(["log", "--prefix", &self.prefix]).output().expect("vhost-testpmd.sh log");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `command` until its output contains `needle`, for at most `timeout`.
    pub fn wait_for(&self, command: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cmd(command);
            if out.contains(needle) {
                return out;
            }
            assert!(Instant::now() < deadline, "{needle:?} not in `{command}` after {timeout:?}:\n{out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until testpmd's log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "{needle:?} not in testpmd's log after {timeout:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to testpmd (by its pid).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// Whether testpmd is still alive.
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|s| s.contains(") Z "))
    }

    /// Quits testpmd and returns what it printed on the way out (forward statistics).
    pub fn stop(&mut self) -> String {
        self.stopped = true;
        let out = Command::new(script())
            .args(["stop", "--prefix", &self.prefix])
            .output()
            .expect("run vhost-testpmd.sh stop");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for VhostTestpmd {
    fn drop(&mut self) {
        if !self.stopped {
            // A stopped (SIGSTOP) process cannot quit: let it run again first.
            let _ = Command::new("kill").args(["-CONT", &self.pid.to_string()]).status();
            self.stop();
        }
    }
}
