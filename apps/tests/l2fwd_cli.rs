//! `l2fwd` as a program, on the paths that need no device: `--check-config` on the shipped VM
//! config and on files and options of every kind (what it prints is what l2fwd would open:
//! the settings line and each port's device string), and configuration and usage errors
//! (exit 2, with a message naming the problem). The device paths run against DPDK's vhost-user
//! backend (`l2fwd_dpdk.rs`) and in the VM (`scripts/l2fwd-vm.sh`, `scripts/vm/l2fwd-errors.sh`).

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

/// `l2fwd --check-config ARGS`: what it printed, which must be a success.
fn checked(args: &[&str]) -> String {
    let out = l2fwd(&[&["--check-config"], args].concat());
    let all = text(&out);
    assert!(out.status.success() && all.contains("L2FWD-CONFIG-OK"), "{args:?}: {all}");
    all
}

const VM_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/l2fwd-vm.toml");

#[test]
fn the_shipped_vm_config_checks_out() {
    let all = checked(&["--config", VM_CONFIG]);
    assert!(all.contains("ports 0000:00:03.0 0000:00:04.0 (pairs 0->1 1->0)"), "{all}");
    assert!(all.contains("l2fwd: port 0: pci:0000:00:03.0,promisc=on\n"), "{all}");
    assert!(all.contains("l2fwd: port 1: pci:0000:00:04.0,promisc=on\n"), "{all}");
}

#[test]
fn a_full_file_resolves() {
    let path = temp_config(
        "full",
        r#"
        ring = "split"
        ring_size = 512
        burst = 64
        pool_size = 4096
        pool_cache = 128
        stats_interval = 2
        cores = [1, 0]
        huge_pages = "required"
        idle_sleep_us = 20
        max_pkt_len = 9014
        offloads = true
        queues = 2
        ring_sizes = [256, 128]
        ports = [
            "00:03.0,mac_table=[02:00:00:00:aa:01,01:00:5e:00:00:01],vlans=[100,200]",
            "pci:0000:00:04.0,mac=52:54:00:00:00:09,allmulti=on,rss_table=[1,0],rss_key=6d5a6d5a",
            "vhost:/tmp/l2fwd-cli.sock,queues=2",
        ]
        "#,
    );
    let all = checked(&["--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert!(
        all.contains(
            "(pairs 0->1 1->0 2->2), 2 queue pair(s) each, ring split, ring size 512 (by pair [256, 128]), pool 4096 \
             mbufs (cache 128), huge pages required, offloads tx_checksum,tso,rx_checksum,lro, burst 64, cores [1, 0], \
             queues per lcore spread, MACs rewritten, idle sleep 20 us, stats every 2 s, max frame 9014 bytes"
        ),
        "{all}"
    );
    for port in [
        "port 0: pci:0000:00:03.0,mac_table=[02:00:00:00:aa:01,01:00:5e:00:00:01],vlans=[100,200]\n",
        "port 1: pci:0000:00:04.0,mac=52:54:00:00:00:09,allmulti=on,rss_table=[1,0],rss_key=6d5a6d5a\n",
        "port 2: vhost:/tmp/l2fwd-cli.sock,queues=2\n",
    ] {
        assert!(all.contains(port), "{port}: {all}");
    }
}

#[test]
fn per_port_options_are_device_string_options() {
    let all = checked(&[
        "--queues=4",
        "--promisc=false",
        "00:03.0,allmulti=on,mac_table=[02:00:00:00:aa:01]",
        "pci:00:04.0,vlans=[9],vlans=[7,8],rss_table=[3,2,1,0],rss_key=6d5a",
    ]);
    assert!(all.contains("port 0: pci:0000:00:03.0,promisc=off,allmulti=on,mac_table=[02:00:00:00:aa:01]\n"), "{all}");
    assert!(
        all.contains("port 1: pci:0000:00:04.0,promisc=off,vlans=[9,7,8],rss_table=[3,2,1,0],rss_key=6d5a\n"),
        "{all}"
    );
}

#[test]
fn an_unknown_key_names_the_key_and_the_file_and_exits_2() {
    let path = temp_config("unknown", "ring = \"packed\"\nbrust = 32\nports = [\"0000:00:03.0\"]\n");
    let out = l2fwd(&["--config", path.to_str().unwrap()]);
    let all = text(&out);
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("l2fwd: error: config file") && all.contains(path.to_str().unwrap()), "{all}");
    assert!(all.contains("unknown field `brust`"), "{all}");
}

#[test]
fn an_unknown_option_in_a_port_string_is_an_error_too() {
    let path = temp_config("port-key", "ports = [\"0000:00:03.0,speed=100\"]\n");
    let out = l2fwd(&["--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown option 'speed=100'") && text(&out).contains(path.to_str().unwrap()));
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for (args, expect) in [
        (&["00:99.0"][..], "'00:99.0' is not a PCI address"),
        (&[][..], "no ports given"),
        (&["--burst", "0", "0000:00:03.0"][..], "burst 0 is out of range"),
        (&["0000:00:03.0", "00:03.0"][..], "'00:03.0' is the same device as port 0"),
        (&["--ring", "ringy", "0000:00:03.0"][..], "invalid value 'ringy'"),
        (&["--config", "/nonexistent/l2fwd.toml"][..], "cannot read the config file /nonexistent/l2fwd.toml"),
        (&["--duration", "-1", "0000:00:03.0"][..], ""),
        (&["--pool-size", "100", "--pool-cache", "50", "00:03.0"][..], "pool_cache 50 is too large"),
        (&["--max-pkt-len", "70000", "00:03.0"][..], "max_pkt_len 70000 is out of range"),
        (&["--queues", "0", "00:03.0"][..], "queues 0 is out of range"),
        (&["--cores", "1,1", "00:03.0"][..], "core 1 is listed twice"),
        (&["--queues", "2", "00:03.0,rss_table=[0,2]"][..], "rss_table entry 2 is not a queue pair"),
        (&["00:03.0,vlans=[4096]"][..], "vlans=[4096] is not a list of VLAN ids"),
        (&["00:03.0,rss_key=6d5"][..], "rss_key=6d5 is not an even number of hex digits"),
        (&["00:03.0,mac_table=[02:00]"][..], "mac_table=[02:00] is not"),
        (&["pci:00:03.0,speed=1"][..], "unknown option 'speed=1'"),
        (&["tap:x"][..], "'tap:x': expected [pci:]<address>"),
    ] {
        let out = l2fwd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expect), "{args:?}: {}", text(&out));
    }
}

#[test]
fn bad_values_in_a_file_name_the_key_and_the_file() {
    for (body, want) in [
        ("ring = \"ring\"\n", "ring"),
        ("huge_pages = \"maybe\"\n", "huge_pages"),
        ("ports = [\"00:03.0,mac=02:00\"]\n", "MAC"),
        ("ports = [\"00:03.0,vlans=[4096]\"]\n", "vlans"),
        ("ports = [\"00:03.0,rss_key=xyz\"]\n", "rss_key"),
        ("ports = \"00:03.0\"\n", "ports"),
    ] {
        let path = temp_config("bad-value", body);
        let out = l2fwd(&["--config", path.to_str().unwrap()]);
        std::fs::remove_file(&path).ok();
        assert_eq!(out.status.code(), Some(2), "{body}: {}", text(&out));
        assert!(text(&out).contains(path.to_str().unwrap()) && text(&out).contains(want), "{body}: {}", text(&out));
    }
}

#[test]
fn the_command_line_overrides_the_file() {
    let all = checked(&["--config", VM_CONFIG, "--ring", "split", "--burst", "8", "0000:00:05.0"]);
    assert!(
        all.contains("ports 0000:00:05.0 (pairs 0->0), 1 queue pair(s) each, ring split") && all.contains("burst 8"),
        "{all}"
    );
    assert!(all.contains("cores [1]") && all.contains("port 0: pci:0000:00:05.0,promisc=on\n"), "{all}");
}

#[test]
fn dpdk_l2fwd_options_queues_per_lcore_portmap_no_mac_updating_and_short_promisc() {
    let ports = ["00:03.0", "00:04.0", "vhost:/tmp/l2fwd-cli.sock,mac=02:11:11:11:11:01", "00:05.0"];
    let all = checked(
        &[&["-P", "--portmap", "(0,2), (1,3)", "-q", "2", "--cores", "0,1", "--no-mac-updating"], &ports[..]].concat(),
    );
    assert!(all.contains("(pairs 0->2 1->3 2->0 3->1)"), "{all}");
    assert!(all.contains("cores [0, 1], queues per lcore 2, MACs unchanged"), "{all}");
    assert!(all.contains("port 2: vhost:/tmp/l2fwd-cli.sock,mac=02:11:11:11:11:01,promisc=on\n"), "{all}");
    let defaults = checked(&ports);
    assert!(
        defaults.contains("(pairs 0->1 1->0 2->3 3->2)")
            && defaults.contains("queues per lcore spread, MACs rewritten")
    );
    assert!(!defaults.contains("promisc=on"), "{defaults}");
    // The file takes the same keys.
    let path = temp_config(
        "portmap",
        "portmap = \"(0,1)\"\nno_mac_updating = true\nqueues_per_lcore = 1\nports = [\"00:03.0\", \"00:04.0\"]\n",
    );
    let all = checked(&["--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert!(all.contains("(pairs 0->1 1->0)") && all.contains("queues per lcore 1, MACs unchanged"), "{all}");

    for (args, expect) in [
        (&["--portmap", "(0,1)"][..], "port 2 is in no pair: give every port once"),
        (&["--portmap", "(0,1),(1,2)"][..], "port 1 is in two pairs"),
        (&["--portmap", "(0,0),(1,2)"][..], "pairs port 0 with itself"),
        (&["--portmap", "(0,5),(1,2)"][..], "port 5 does not exist: there are 3 ports"),
        (&["--portmap", "0,1"][..], "'0,1' is not a pair (A,B)"),
        (&["--portmap", "(0,x)"][..], "(0,x) is not a pair of port numbers"),
        (&["-q", "0"][..], "queues per lcore (-q) 0 is invalid"),
        (
            &["-q", "1", "--cores", "0", "--queues", "2"][..],
            "6 lanes at 1 per lcore (-q) need 6 cores; --cores lists 1",
        ),
    ] {
        let out = l2fwd(&[&["--check-config", "00:03.0", "00:04.0", "00:05.0"], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expect), "{args:?}: {}", text(&out));
    }
}
