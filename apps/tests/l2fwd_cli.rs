//! `l2fwd` as a program, on the paths that need no device: configuration and usage errors
//! (exit 2, with a message naming the problem), and `--check-config` on the shipped VM config.
//! The device paths run in the VM: `scripts/l2fwd-vm.sh`, `scripts/vm/l2fwd-errors.sh`.

use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_l2fwd");

fn l2fwd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn temp_config(name: &str, body: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("l2fwd-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn the_shipped_vm_config_checks_out() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/l2fwd-vm.toml");
    let out = l2fwd(&["--check-config", "--config", config]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("ports 0000:00:03.0 0000:00:04.0 (pairs 0->1 1->0)"), "{all}");
    assert!(all.contains("L2FWD-CONFIG-OK"), "{all}");
}

#[test]
fn an_unknown_key_names_the_key_and_the_file_and_exits_2() {
    let path = temp_config("unknown", "ring = \"packed\"\nbrust = 32\n[[ports]]\npci = \"0000:00:03.0\"\n");
    let out = l2fwd(&["--config", path.to_str().unwrap()]);
    let all = text(&out);
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("l2fwd: error: config file") && all.contains(path.to_str().unwrap()), "{all}");
    assert!(all.contains("unknown field `brust`"), "{all}");
}

#[test]
fn an_unknown_key_in_a_port_entry_is_an_error_too() {
    let path = temp_config("port-key", "[[ports]]\npci = \"0000:00:03.0\"\nspeed = 100\n");
    let out = l2fwd(&["--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown field `speed`"), "{}", text(&out));
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for (args, expect) in [
        (&["00:99.0"][..], "is not a PCI address"),
        (&[][..], "no ports given"),
        (&["--burst", "0", "0000:00:03.0"][..], "burst 0 is out of range"),
        (&["--port", "0000:00:03.0", "0000:00:04.0"][..], "not both"),
        (&["0000:00:03.0", "00:03.0"][..], "both 0000:00:03.0"),
        (&["--ring", "ringy", "0000:00:03.0"][..], "invalid value 'ringy'"),
        (&["--config", "/nonexistent/l2fwd.toml"][..], "cannot read the config file /nonexistent/l2fwd.toml"),
        (&["--duration", "-1", "0000:00:03.0"][..], ""),
    ] {
        let out = l2fwd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expect), "{args:?}: {}", text(&out));
    }
}

#[test]
fn the_command_line_overrides_the_file() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/l2fwd-vm.toml");
    let out = l2fwd(&["--check-config", "--config", config, "--ring", "split", "--burst", "8", "0000:00:05.0"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("ports 0000:00:05.0 (pairs 0->0), 1 queue pair(s) each, ring split") && all.contains("burst 8"),
        "{all}"
    );
}
