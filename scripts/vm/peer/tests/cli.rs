//! `vm-peer` as a program: `reflect` + `run` over loopback UDP (the harness self-test without a
//! VM), the RESULT line and the exit codes.

use std::net::UdpSocket;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_vm-peer");

/// Four free loopback UDP ports as `--ports Q0:P0,Q1:P1`.
fn free_ports() -> String {
    let socks: Vec<UdpSocket> = (0..4).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let p: Vec<u16> = socks.iter().map(|s| s.local_addr().unwrap().port()).collect();
    format!("{}:{},{}:{}", p[0], p[1], p[2], p[3])
}

fn result_line(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout).lines().find(|l| l.starts_with("RESULT ")).unwrap_or_default().to_string()
}

#[test]
fn reflect_and_run_give_a_clean_result() {
    let ports = free_ports();
    let reflector = Command::new(BIN)
        .args(["reflect", "--ports", &ports, "--idle-exit", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--ports", &ports, "--frames", "500", "--rate", "5000", "--ready-timeout", "10", "--quiet"])
        .output()
        .unwrap();
    let reflected = reflector.wait_with_output().unwrap();
    let line = result_line(&out.stdout);
    assert!(out.status.success(), "{line}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(line.starts_with("RESULT sent=1000 received=1000 lost=0 corrupted=0 p50_us="), "{line}");
    assert!(String::from_utf8_lossy(&reflected.stdout).contains("port0->port1="));
}

#[test]
fn loss_is_reported_and_fails_the_run() {
    // Nobody forwards, and no probing: every frame is lost.
    let out = Command::new(BIN)
        .args(["run", "--ports", &free_ports(), "--frames", "20", "--rate", "0", "--ready-timeout", "0"])
        .args(["--drain-ms", "100", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(result_line(&out.stdout), "RESULT sent=40 received=0 lost=40 corrupted=0 p50_us=0.0 p99_us=0.0");
}

#[test]
fn bad_options_are_explained() {
    let out = Command::new(BIN).args(["run", "--ports", "1:2", "--quiet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly 2"));
    let out = Command::new(BIN).args(["run", "--expect-dst-mac-0to1", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a MAC address"));
    let out = Command::new(BIN).args(["run", "--min-size", "20"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
