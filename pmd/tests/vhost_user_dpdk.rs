//! The vhost-user transport against a real, independent backend: DPDK 22.11's `net_vhost`
//! (dpdk-testpmd), started through `scripts/dpdk/vhost-testpmd.sh`.
//!
//! Needs DPDK and 2 MiB huge pages: without them every test here fails with a message saying to
//! run `scripts/dpdk/install.sh` (never skipped). Run with `--nocapture` to see set-up timings.

#[path = "common/tcp_frames.rs"]
mod tcp_frames;
#[path = "common/vhost_testpmd.rs"]
mod vhost_testpmd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tcp_frames::{complete_checksum, ones_sum, tcp_checksum_ok, tcp_frame, TcpChecksum};
use vhost_testpmd::{Options, VhostTestpmd};
use virtio_pmd::error::Error;
use virtio_pmd::mem::{DmaRegion, HugePages, IovaAllocator, HUGE_PAGE_SIZE};
use virtio_pmd::spec::features::{self, Features};
use virtio_pmd::spec::{net, split, status};
use virtio_pmd::transport::vhost_user::{VhostUserConfig, VhostUserTransport, MAX_REGIONS};
use virtio_pmd::transport::{Notify, QueueAddresses, RingFormat, Transport};

const RING: u16 = 1024;
/// Ring memory per queue inside the test region.
const QUEUE_STRIDE: u64 = 1 << 20;

fn hugepage_region(len: usize) -> Arc<DmaRegion> {
    Arc::new(
        DmaRegion::new("vhost-user-test", len, HugePages::Required, &IovaAllocator::identity())
            .unwrap_or_else(|e| panic!("{e} (run scripts/dpdk/install.sh)")),
    )
}

/// Addresses (IOVAs) of queue `queue`'s three areas inside `region`, zeroed (a fresh ring).
fn ring_addresses(region: &DmaRegion, queue: u16, size: u16, format: RingFormat) -> QueueAddresses {
    let round = |n: u64| n.next_multiple_of(4096);
    let desc = region.iova() + u64::from(queue) * QUEUE_STRIDE;
    let driver = desc + round(16 * u64::from(size));
    let device = driver
        + round(match format {
            RingFormat::Packed => 4,
            RingFormat::Split => split::avail::bytes(size) as u64,
        });
    assert!(device + round(split::used::bytes(size) as u64) <= region.iova() + region.len() as u64);
    QueueAddresses { desc, driver, device }
}

/// [`Transport::setup_queue`] for these tests' rings.
fn setup_queue(
    t: &mut VhostUserTransport,
    queue: u16,
    size: u16,
    format: RingFormat,
    addresses: QueueAddresses,
) -> Result<Box<dyn Notify>, Error> {
    // SAFETY: the areas are zeroed slots of a region these tests use for rings alone, or
    // addresses the transport must refuse; nothing here reads or writes those rings, and the
    // backend, another process, reaches this process's memory only through the mapped regions.
    unsafe { t.setup_queue(queue, size, format, addresses) }
}

fn config(testpmd: &VhostTestpmd) -> VhostUserConfig {
    let mut config = VhostUserConfig::new(testpmd.socket());
    config.connect_timeout = Duration::from_secs(5);
    config.request_timeout = Duration::from_secs(3);
    config
}

/// Runs "Device Initialization" (3.1.1) up to FEATURES_OK; returns the negotiated features.
fn negotiate(t: &mut VhostUserTransport, format: RingFormat) -> Features {
    t.reset().unwrap();
    t.set_status(status::ACKNOWLEDGE).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    let offered = t.device_features().unwrap();
    assert!(offered.has(features::VERSION_1), "DPDK offers VERSION_1: {offered:?}");
    assert!(offered.has(features::RING_PACKED), "DPDK 22.11 offers RING_PACKED: {offered:?}");
    assert!(!offered.has(features::VHOST_USER_PROTOCOL_FEATURES), "transport bit 30 is hidden: {offered:?}");
    assert!(offered.has(net::F_MAC) && offered.has(net::F_STATUS), "emulated MAC and STATUS: {offered:?}");
    let mut wanted = Features::from_bits(&[features::VERSION_1, net::F_MAC, net::F_STATUS]);
    if format == RingFormat::Packed {
        wanted = wanted.with(features::RING_PACKED);
    }
    t.set_driver_features(wanted).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).unwrap();
    let readback = t.status().unwrap();
    assert_ne!(readback & status::FEATURES_OK, 0, "DPDK accepted {wanted:?}: status {readback:#x}");
    assert_eq!(readback & status::DEVICE_NEEDS_RESET, 0);
    wanted
}

/// Full set-up of `queues` queues; returns the time from connect to DRIVER_OK.
fn bring_up(
    testpmd: &VhostTestpmd,
    format: RingFormat,
    queues: u16,
    region: &Arc<DmaRegion>,
) -> (VhostUserTransport, Duration, Duration) {
    let started = Instant::now();
    let mut t = VhostUserTransport::connect(config(testpmd)).unwrap();
    let connected = started.elapsed();
    negotiate(&mut t, format);
    t.map_dma(region).unwrap();
    t.map_dma(region).unwrap(); // a second map of the same region is a no-op
    let mut notifiers = Vec::new();
    for q in 0..queues {
        assert!(t.max_queue_size(q).unwrap() >= RING);
        notifiers.push(setup_queue(&mut t, q, RING, format, ring_addresses(region, q, RING, format)).unwrap());
    }
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK).unwrap();
    let ready = started.elapsed();
    // A kick is harmless (DPDK polls); make sure the fd path works.
    for n in &notifiers {
        n.notify();
    }
    (t, connected, ready)
}

fn handshake(format: RingFormat, name: &str) {
    let mut testpmd = VhostTestpmd::start(name, Options::default());
    let region = hugepage_region(4 * HUGE_PAGE_SIZE);
    let (mut t, connected, ready) = bring_up(&testpmd, format, 2, &region);
    eprintln!(
        "{format:?}: connect {connected:?}, connect..DRIVER_OK {ready:?}; backend features {:?}, protocol {:#x}",
        t.backend_features(),
        t.protocol_features()
    );
    assert!(t.link_up());
    assert_eq!(t.num_queues().unwrap(), 256, "DPDK 22.11 answers GET_QUEUE_NUM with 128 pairs");
    let mut mac = [0u8; 6];
    t.read_device_config(0, &mut mac).unwrap();
    assert_eq!(mac, [0x02, 0, 0, 0, 0, 1]);
    let mut link = [0u8; 2];
    t.read_device_config(6, &mut link).unwrap();
    assert_eq!(u16::from_le_bytes(link), 1, "synthesised config reports link up");

    let info = testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));
    assert!(info.contains("Link status: up"));
    let log = testpmd.log();
    let negotiated = log
        .lines()
        .find(|l| l.contains("negotiated Virtio features"))
        .unwrap_or_else(|| panic!("no feature line in testpmd's log:\n{log}"));
    eprintln!("testpmd: {negotiated}");
    let value = u64::from_str_radix(negotiated.rsplit("0x").next().unwrap().trim(), 16).unwrap();
    assert_eq!(value & (1 << features::RING_PACKED) != 0, format == RingFormat::Packed);
    assert_ne!(value & (1 << features::VERSION_1), 0);
    assert_ne!(value & (1 << features::VHOST_USER_PROTOCOL_FEATURES), 0);
    assert_eq!(value & (1 << net::F_MAC | 1 << net::F_STATUS), 0, "emulated bits are not sent");
    assert!(log.contains("new device"), "DPDK saw the device become ready:\n{log}");

    let bases = t.stop().unwrap();
    let fresh = if format == RingFormat::Packed { 0x8000 } else { 0 };
    assert_eq!(bases, vec![(0, fresh), (1, fresh)], "nothing was made available");
    testpmd.wait_for("show port info 0", "Link status: down", Duration::from_secs(5));
    drop(t);

    // A new connection replays everything from scratch; DPDK is warm now.
    let (t, connected, ready) = bring_up(&testpmd, format, 2, &region);
    eprintln!("{format:?} again: connect {connected:?}, connect..DRIVER_OK {ready:?}");
    testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));
    drop(t);
    testpmd.wait_for("show port info 0", "Link status: down", Duration::from_secs(5));
    let out = testpmd.stop();
    assert!(out.contains("Bye"), "testpmd quit cleanly:\n{out}");
}

#[test]
fn handshake_packed() {
    handshake(RingFormat::Packed, "hs-packed");
}

#[test]
fn handshake_split() {
    handshake(RingFormat::Split, "hs-split");
}

#[test]
fn multiqueue_and_reconfigure_on_one_connection() {
    let testpmd = VhostTestpmd::start("mq", Options { queues: 2, ..Options::default() });
    let region = hugepage_region(4 * HUGE_PAGE_SIZE);
    let (mut t, _, _) = bring_up(&testpmd, RingFormat::Packed, 4, &region);
    assert_eq!(t.num_queues().unwrap(), 256, "DPDK 22.11 answers GET_QUEUE_NUM with 128 pairs");
    testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));

    // Reset and set the device up again, split this time, on the same connection.
    t.reset().unwrap();
    testpmd.wait_for("show port info 0", "Link status: down", Duration::from_secs(5));
    negotiate(&mut t, RingFormat::Split);
    for q in 0..4 {
        setup_queue(&mut t, q, RING, RingFormat::Split, ring_addresses(&region, q, RING, RingFormat::Split)).unwrap();
    }
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK).unwrap();
    testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));
}

#[test]
fn memory_table_limits() {
    let testpmd = VhostTestpmd::start("regions", Options::default());
    let mut t = VhostUserTransport::connect(config(&testpmd)).unwrap();
    negotiate(&mut t, RingFormat::Packed);
    let rings = hugepage_region(4 * HUGE_PAGE_SIZE);
    t.map_dma(&rings).unwrap();
    let extra: Vec<_> = (1..=MAX_REGIONS)
        .map(|_| Arc::new(DmaRegion::new("extra", 4096, HugePages::Never, &IovaAllocator::identity()).unwrap()))
        .collect();
    for region in &extra[..MAX_REGIONS - 2] {
        t.map_dma(region).unwrap();
    }

    // DPDK accepts a table of seven regions, huge and small pages mixed.
    for q in 0..2 {
        setup_queue(&mut t, q, RING, RingFormat::Packed, ring_addresses(&rings, q, RING, RingFormat::Packed)).unwrap();
    }
    // Ring addresses outside every region are refused before anything is sent.
    let outside = QueueAddresses { desc: 0x1000, driver: 0x2000, device: 0x3000 };
    t.reset().unwrap();
    negotiate(&mut t, RingFormat::Packed);
    let err = setup_queue(&mut t, 0, RING, RingFormat::Packed, outside).err().unwrap();
    assert!(err.to_string().contains("outside every mapped DMA region"), "{err}");
    let err = setup_queue(&mut t, 0, 1000, RingFormat::Split, ring_addresses(&rings, 0, 1000, RingFormat::Split))
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidConfig(_)), "split on a packed negotiation: {err}");
    t.reset().unwrap();
    negotiate(&mut t, RingFormat::Split);
    let err = setup_queue(&mut t, 0, 1000, RingFormat::Split, ring_addresses(&rings, 0, 1000, RingFormat::Split))
        .err()
        .unwrap();
    assert!(matches!(err, Error::QueueSizeRefused { requested: 1000, .. }), "{err}");
    for q in 0..2 {
        setup_queue(&mut t, q, RING, RingFormat::Split, ring_addresses(&rings, q, RING, RingFormat::Split)).unwrap();
    }
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK).unwrap();
    testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));

    // A region added while running goes out at once (SET_MEM_TABLE on a live device).
    let tables_before = testpmd.log().matches("guest memory region size").count();
    t.map_dma(&extra[MAX_REGIONS - 2]).unwrap();
    let log = testpmd.log();
    assert!(log.matches("guest memory region size").count() > tables_before, "DPDK got a new table");
    assert!(t.link_up());
    testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));

    let err = t.map_dma(&extra[MAX_REGIONS - 1]).unwrap_err();
    assert!(matches!(err, Error::TooManyDmaRegions { max: 8, .. }), "{err}");
    eprintln!("ninth region: {err}");
}

#[test]
fn unknown_features_are_not_accepted() {
    let testpmd = VhostTestpmd::start("feat", Options::default());
    let mut t = VhostUserTransport::connect(config(&testpmd)).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    // NOTIFICATION_DATA is not offered by DPDK 22.11: FEATURES_OK must not stick.
    let offered = t.device_features().unwrap();
    assert!(!offered.has(features::NOTIFICATION_DATA));
    t.set_driver_features(Features::from_bits(&[features::VERSION_1, features::NOTIFICATION_DATA])).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).unwrap();
    assert_eq!(t.status().unwrap() & status::FEATURES_OK, 0);
    assert!(t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK).is_err());
    // A fresh negotiation works on the same connection.
    negotiate(&mut t, RingFormat::Split);
}

#[test]
fn backend_killed_is_a_clear_error_without_hanging() {
    let mut testpmd = VhostTestpmd::start("killed", Options::default());
    let region = hugepage_region(4 * HUGE_PAGE_SIZE);
    let (mut t, _, _) = bring_up(&testpmd, RingFormat::Packed, 2, &region);
    testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));
    assert!(t.link_up());

    testpmd.signal("KILL");
    let killed = Instant::now();
    while t.link_up() {
        assert!(killed.elapsed() < Duration::from_secs(5), "link still up 5 s after the backend was killed");
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!("link down seen {:?} after SIGKILL", killed.elapsed());
    assert_ne!(t.status().unwrap() & status::DEVICE_NEEDS_RESET, 0);

    let started = Instant::now();
    let err = t.reset().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "reset took {:?}", started.elapsed());
    assert!(matches!(err, Error::VhostUserDisconnected { .. }), "{err}");
    eprintln!("after SIGKILL: {err}");
    // Every later request fails the same way, at once.
    let err = setup_queue(&mut t, 0, RING, RingFormat::Packed, ring_addresses(&region, 0, RING, RingFormat::Packed));
    assert!(err.is_err());
    let started = Instant::now();
    drop(t);
    assert!(started.elapsed() < Duration::from_secs(1));
    testpmd.stop();
}

#[test]
fn backend_stopped_times_out_instead_of_hanging() {
    let testpmd = VhostTestpmd::start("sigstop", Options::default());
    let region = hugepage_region(4 * HUGE_PAGE_SIZE);
    let (mut t, _, _) = bring_up(&testpmd, RingFormat::Split, 2, &region);
    testpmd.wait_for("show port info 0", "Link status: up", Duration::from_secs(5));

    testpmd.signal("STOP");
    let mut config = config(&testpmd);
    config.request_timeout = Duration::from_millis(300);
    // Mid-session: the next request (teardown) hits the stopped backend.
    let started = Instant::now();
    let err = t.reset().unwrap_err();
    let took = started.elapsed();
    eprintln!("stopped backend, running session: {err} after {took:?}");
    assert!(matches!(err, Error::VhostUserTimeout { .. }), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!t.link_up());
    drop(t);

    // At connect time: the kernel accepts the connection, but no answer ever comes.
    let started = Instant::now();
    let err = VhostUserTransport::connect(config).unwrap_err();
    let took = started.elapsed();
    eprintln!("stopped backend, new connection: {err} after {took:?}");
    assert!(matches!(err, Error::VhostUserTimeout { .. }), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    testpmd.signal("CONT");
}

#[test]
fn no_listener_is_a_clear_error() {
    // A socket file nobody listens on (a backend that exited without removing it).
    let path = std::env::temp_dir().join(format!("vpmd-stale-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let mut config = VhostUserConfig::new(&path);
    config.connect_timeout = Duration::from_millis(200);
    let started = Instant::now();
    let err = VhostUserTransport::connect(config).unwrap_err();
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    let message = err.to_string();
    eprintln!("{message} (after {took:?})");
    assert!(matches!(err, Error::VhostUserNoBackend { .. }));
    assert!(message.contains("vhost-testpmd.sh"), "{message}");
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(2), "{took:?}");
}

// ---- Traffic through the port layer (pmd/src/net) over this transport ----

use virtio_pmd::mbuf::{Checksum, Gso, GsoKind, Offload};
use virtio_pmd::mbuf::{Mbuf, Mempool, MempoolConfig};
use virtio_pmd::net::{CtrlUnavailable, OffloadConfig, Port, PortConfig, RingChoice, RxPath, TxPath};

const POOL_SIZE: u32 = 4096;

fn pool() -> Mempool {
    let config = MempoolConfig {
        name: "vhost-user-test".into(),
        count: POOL_SIZE,
        huge_pages: HugePages::Required,
        ..MempoolConfig::default()
    };
    Mempool::new(&config, &IovaAllocator::identity()).unwrap_or_else(|e| panic!("{e} (run scripts/dpdk/install.sh)"))
}

fn open_port(testpmd: &VhostTestpmd, pool: &Mempool, ring: RingChoice) -> Port {
    let transport = VhostUserTransport::connect(config(testpmd)).unwrap();
    let config = PortConfig { ring, ring_size: Some(RING), huge_pages: HugePages::Required, ..PortConfig::default() };
    let mut port = Port::open(Box::new(transport), pool, &config, &IovaAllocator::identity()).unwrap();
    assert_eq!(port.mac(), Some([0x02, 0, 0, 0, 0, 1]), "MAC from the synthesised config");
    assert!(port.link_up().unwrap());
    // DPDK's vhost offers VIRTIO_NET_F_CTRL_VQ, but serves no control queue: never negotiated,
    // and control commands say so.
    assert!(!port.has_control_queue() && !port.features().has(net::F_CTRL_VQ));
    let err = port.set_promiscuous(true).unwrap_err();
    assert!(matches!(err, Error::NoControlQueue { why: CtrlUnavailable::Transport, .. }), "{err:?}");
    assert!(err.to_string().contains("vhost-user"), "{err}");
    port
}

/// testpmd's counter `name` (e.g. "RX-packets") for port 0 from `show port stats 0`.
fn port_counter(testpmd: &VhostTestpmd, name: &str) -> u64 {
    let out = testpmd.cmd("show port stats 0");
    let at = out.find(&format!("{name}:")).unwrap_or_else(|| panic!("no {name} in:\n{out}"));
    out[at + name.len() + 1..].split_whitespace().next().unwrap().parse().unwrap()
}

fn receive_from_txonly(ring: RingChoice, name: &str) {
    let mut testpmd =
        VhostTestpmd::start(name, Options { fwd: "txonly", txpkts: Some("64"), forward: true, ..Options::default() });
    let pool = pool();
    let mut port = open_port(&testpmd, &pool, ring);
    let format = port.ring_format();
    let (mut rx, tx) = port.take_queues(0).unwrap();
    let mut burst: Vec<Mbuf> = Vec::with_capacity(64);
    let (mut received, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        rx.rx_burst(&mut burst);
        for m in burst.drain(..) {
            // txonly: 64-byte IPv4/UDP frames.
            assert_eq!(&m.data()[12..14], &[0x08, 0x00], "IPv4 ethertype");
            assert_eq!(m.data()[23], 17, "UDP");
            received += 1;
            bytes += m.len() as u64;
        }
    }
    testpmd.cmd("stop");
    // Whatever DPDK sent before it stopped is in the ring now: drain it.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(200) {
        if rx.rx_burst(&mut burst) > 0 {
            received += burst.len() as u64;
            bytes += burst.iter().map(|m| m.len() as u64).sum::<u64>();
            burst.clear();
        }
    }
    let sent = port_counter(&testpmd, "TX-packets");
    let stats = rx.stats();
    eprintln!(
        "{format:?} rx from txonly: {received} frames ({:.2} Mpps, {bytes} bytes, debug build), testpmd sent {sent}; {stats:?}",
        received as f64 / 2e6
    );
    assert!(received > 10_000, "traffic flowed: {received}");
    assert_eq!(received, sent, "every frame DPDK sent arrived");
    assert_eq!(bytes, received * 64);
    drop((rx, tx));
    drop(port);
    assert_eq!(pool.stats().available, POOL_SIZE, "every mbuf is back in the pool after teardown");
    testpmd.stop();
}

fn transmit_to_rxonly(ring: RingChoice, name: &str) {
    let mut testpmd = VhostTestpmd::start(name, Options { fwd: "rxonly", forward: true, ..Options::default() });
    let pool = pool();
    let mut port = open_port(&testpmd, &pool, ring);
    let format = port.ring_format();
    let (rx, mut tx) = port.take_queues(0).unwrap();
    const FRAMES: u64 = 200_000;
    let mut burst: Vec<Mbuf> = Vec::with_capacity(32);
    let (mut sent, mut seq) = (0u64, 0u64);
    let started = Instant::now();
    while sent < FRAMES {
        while burst.len() < 32 && seq < FRAMES {
            let Some(mut m) = pool.alloc() else { break };
            let frame = m.append(60).unwrap();
            frame.fill(0);
            frame[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
            frame[14..22].copy_from_slice(&seq.to_le_bytes());
            burst.push(m);
            seq += 1;
        }
        sent += tx.tx_burst(&mut burst) as u64;
        assert!(started.elapsed() < Duration::from_secs(30), "tx stalled at {sent}");
    }
    let took = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = port_counter(&testpmd, "RX-packets");
        if seen == FRAMES {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tx.reclaim();
    eprintln!(
        "{format:?} tx into rxonly: {FRAMES} frames in {took:?} ({:.2} Mpps, debug build); testpmd received {seen}; {:?}",
        FRAMES as f64 / took.as_secs_f64() / 1e6,
        tx.stats()
    );
    assert_eq!(seen, FRAMES, "DPDK received every frame");
    drop((rx, tx));
    drop(port);
    assert_eq!(pool.stats().available, POOL_SIZE, "every mbuf is back in the pool after teardown");
    testpmd.stop();
}

#[test]
fn port_receives_from_dpdk_txonly_packed() {
    receive_from_txonly(RingChoice::Packed, "rx-packed");
}

#[test]
fn port_receives_from_dpdk_txonly_split() {
    receive_from_txonly(RingChoice::Split, "rx-split");
}

#[test]
fn port_transmits_to_dpdk_rxonly_packed() {
    transmit_to_rxonly(RingChoice::Packed, "tx-packed");
}

#[test]
fn port_transmits_to_dpdk_rxonly_split() {
    transmit_to_rxonly(RingChoice::Split, "tx-split");
}

/// A backend killed mid-traffic: the port reports link down, and every mbuf (the ones the
/// application holds and the ones that were in the rings) is back in the pool after teardown.
#[test]
fn port_over_a_killed_backend_reports_link_down_and_returns_every_mbuf() {
    let mut testpmd = VhostTestpmd::start(
        "killed-port",
        Options { fwd: "txonly", txpkts: Some("64"), forward: true, ..Options::default() },
    );
    let pool = pool();
    let mut port = open_port(&testpmd, &pool, RingChoice::Auto);
    let (mut rx, tx) = port.take_queues(0).unwrap();
    let mut burst: Vec<Mbuf> = Vec::with_capacity(64);
    let started = Instant::now();
    let mut received = 0;
    while received < 10_000 {
        assert!(started.elapsed() < Duration::from_secs(10), "no traffic from txonly");
        received += rx.rx_burst(&mut burst);
        burst.clear();
    }
    assert!(pool.stats().in_use > 0, "the receive ring holds buffers");
    testpmd.signal("KILL");
    let killed = Instant::now();
    while port.link_up().unwrap_or(false) {
        assert!(killed.elapsed() < Duration::from_secs(5), "link still up 5 s after the backend was killed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let err = port.check().unwrap_err().to_string();
    assert!(err.contains("DEVICE_NEEDS_RESET"), "{err}");
    drop((rx, tx));
    drop(port);
    assert_eq!(pool.stats().in_use, 0, "every mbuf is back once the backend is gone");
    testpmd.stop();
}

/// A backend that stops answering (SIGSTOP) may still resume and write into the buffers it
/// holds: the port's teardown gives up after the request timeout, and those buffers stay out of
/// the pool (leaked, never reused) instead of coming back.
#[test]
fn port_over_a_hung_backend_keeps_its_buffers_out_of_the_pool() {
    let testpmd = VhostTestpmd::start("hung-port", Options::default());
    let pool = pool();
    let mut transport_config = config(&testpmd);
    // Long enough for DPDK's slow first reply after start-up (up to about 1 s), short enough
    // for a quick test.
    transport_config.request_timeout = Duration::from_secs(2);
    let transport = VhostUserTransport::connect(transport_config).unwrap();
    let port_config = PortConfig { ring_size: Some(RING), huge_pages: HugePages::Required, ..PortConfig::default() };
    let port = Port::open(Box::new(transport), &pool, &port_config, &IovaAllocator::identity()).unwrap();
    let posted = pool.stats().in_use;
    assert!(posted > 0, "the receive ring holds buffers");
    testpmd.signal("STOP");
    let started = Instant::now();
    drop(port);
    assert!(started.elapsed() < Duration::from_secs(6), "teardown took {:?}", started.elapsed());
    assert_eq!(pool.stats().in_use, posted, "buffers a hung backend may still write are not reused");
    testpmd.signal("CONT");
}

// ---- Jumbo frames over mergeable receive buffers and transmit chains ----

/// DPDK's frame size in the jumbo tests: 9000 bytes, sent by txonly in five segments.
const JUMBO: u64 = 9000;

fn open_jumbo_port(testpmd: &VhostTestpmd, pool: &Mempool, ring: RingChoice, tx_indirect: bool) -> Port {
    let transport = VhostUserTransport::connect(config(testpmd)).unwrap();
    let config = PortConfig {
        ring,
        ring_size: Some(RING),
        huge_pages: HugePages::Required,
        rx_mergeable: true,
        tx_multi_segment: true,
        tx_indirect,
        ..PortConfig::default()
    };
    let port = Port::open(Box::new(transport), pool, &config, &IovaAllocator::identity()).unwrap();
    assert!(port.features().has(net::F_MRG_RXBUF), "DPDK's vhost offers mergeable buffers");
    assert_eq!((port.rx_path(), port.tx_path()), (RxPath::Mergeable, TxPath::Chains));
    port
}

/// DPDK's multi-segment txonly sends 9000-byte frames; each arrives as one chained mbuf of
/// five 2 KiB buffers, every frame DPDK sent, every mbuf back.
fn jumbo_from_txonly(ring: RingChoice, name: &str) {
    let options = Options {
        fwd: "txonly",
        txpkts: Some("2000,2000,2000,2000,1000"),
        app_extra: "--max-pkt-len=9018",
        forward: true,
        ..Options::default()
    };
    let mut testpmd = VhostTestpmd::start(name, options);
    let pool = pool();
    let mut port = open_jumbo_port(&testpmd, &pool, ring, false);
    let (mut rx, tx) = port.take_queues(0).unwrap();
    let mut burst: Vec<Mbuf> = Vec::with_capacity(64);
    let mut received = 0u64;
    let mut check = |burst: &mut Vec<Mbuf>| {
        for m in burst.drain(..) {
            assert_eq!(m.len() as u64, JUMBO, "the whole frame");
            assert_eq!(m.nb_segs(), 5, "9000 + 12 header bytes in 2060-byte buffers");
            let bytes = m.to_vec();
            assert_eq!(&bytes[12..14], &[0x08, 0x00], "IPv4 ethertype");
            assert_eq!(bytes[23], 17, "UDP");
            assert_eq!(u16::from_be_bytes([bytes[16], bytes[17]]) as u64, JUMBO - 14, "IPv4 total length");
            received += 1;
        }
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        rx.rx_burst(&mut burst);
        check(&mut burst);
    }
    testpmd.cmd("stop");
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(200) {
        rx.rx_burst(&mut burst);
        check(&mut burst);
    }
    let sent = port_counter(&testpmd, "TX-packets");
    let stats = rx.stats();
    eprintln!(
        "{ring:?} 9000-byte frames from multi-segment txonly: {received} received, testpmd sent {sent}; {stats:?}"
    );
    assert!(received > 1000, "traffic flowed: {received}");
    assert_eq!(received, sent, "every frame DPDK sent arrived");
    assert_eq!((stats.bad_headers, stats.drops, stats.errors), (0, 0, 0));
    assert_eq!(stats.bytes, received * JUMBO);
    drop((rx, tx, port));
    assert_eq!(pool.stats().in_use, 0, "every segment of every mbuf is back");
    testpmd.stop();
}

/// 9000-byte frames as five-segment chains into DPDK's rxonly: every one arrives whole.
fn jumbo_to_rxonly(ring: RingChoice, name: &str) {
    let options = Options { fwd: "rxonly", app_extra: "--max-pkt-len=9018", forward: true, ..Options::default() };
    let mut testpmd = VhostTestpmd::start(name, options);
    let pool = pool();
    let mut port = open_jumbo_port(&testpmd, &pool, ring, false);
    let (rx, mut tx) = port.take_queues(0).unwrap();
    const FRAMES: u64 = 20_000;
    let mut frame = vec![0u8; JUMBO as usize];
    frame[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut burst: Vec<Mbuf> = Vec::with_capacity(32);
    let (mut sent, mut seq) = (0u64, 0u64);
    let started = Instant::now();
    while sent < FRAMES {
        // With indirect descriptors the ring holds a five-segment frame per descriptor, more
        // than the pool: reclaim, and keep no more than 256 in flight.
        tx.reclaim();
        while burst.len() < 32 && seq < FRAMES && tx.in_flight() < 256 {
            let Some(mut m) = pool.alloc() else { break };
            frame[14..22].copy_from_slice(&seq.to_le_bytes());
            m.extend_from_slice(&pool, &frame).expect("segments");
            assert_eq!(m.nb_segs(), 5);
            burst.push(m);
            seq += 1;
        }
        sent += tx.tx_burst(&mut burst) as u64;
        assert!(started.elapsed() < Duration::from_secs(60), "tx stalled at {sent}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = port_counter(&testpmd, "RX-packets");
        if seen == FRAMES {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let bytes = port_counter(&testpmd, "RX-bytes");
    tx.reclaim();
    eprintln!("{ring:?} 9000-byte chains into rxonly: testpmd received {seen} frames, {bytes} bytes; {:?}", tx.stats());
    assert_eq!(seen, FRAMES, "DPDK received every frame");
    assert_eq!(bytes, FRAMES * JUMBO, "whole frames");
    assert_eq!(tx.stats().bad_headers + tx.stats().drops, 0);
    drop((rx, tx, port));
    assert_eq!(pool.stats().in_use, 0, "every segment of every mbuf is back");
    testpmd.stop();
}

#[test]
fn jumbo_frames_from_dpdk_multi_segment_txonly_packed() {
    jumbo_from_txonly(RingChoice::Packed, "jumbo-rx-packed");
}

#[test]
fn jumbo_frames_from_dpdk_multi_segment_txonly_split() {
    jumbo_from_txonly(RingChoice::Split, "jumbo-rx-split");
}

#[test]
fn jumbo_chains_to_dpdk_rxonly_packed() {
    jumbo_to_rxonly(RingChoice::Packed, "jumbo-tx-packed");
}

#[test]
fn jumbo_chains_to_dpdk_rxonly_split() {
    jumbo_to_rxonly(RingChoice::Split, "jumbo-tx-split");
}

/// Multi-segment frames (2 to 8 segments, 60 to 9000 bytes) through indirect descriptor tables
/// (VIRTIO_F_INDIRECT_DESC, which DPDK's vhost offers) into DPDK's io forwarding, which sends
/// them straight back: each comes back over mergeable receive buffers byte for byte, in order;
/// the ring holds a packet per descriptor; every mbuf back.
fn indirect_chains_through_io(ring: RingChoice, name: &str) {
    let options = Options { fwd: "io", app_extra: "--max-pkt-len=9018", forward: true, ..Options::default() };
    let mut testpmd = VhostTestpmd::start(name, options);
    let pool = pool();
    let mut port = open_jumbo_port(&testpmd, &pool, ring, true);
    assert!(port.features().has(features::INDIRECT_DESC), "DPDK's vhost offers indirect descriptors");
    assert!(port.tx_indirect_segments() >= 8, "{}", port.tx_indirect_segments());
    let (mut rx, mut tx) = port.take_queues(0).unwrap();
    // (frame length, segment size): 4, 2, 8, 1 (one descriptor), 5 and 3 segments.
    const SHAPES: [(usize, usize); 6] = [(3000, 750), (1514, 1000), (9000, 1125), (60, 2048), (9000, 2000), (700, 256)];
    const FRAMES: u64 = 20_000;
    let frame = |seq: u64| {
        let mut bytes: Vec<u8> =
            (0..SHAPES[seq as usize % SHAPES.len()].0).map(|i| (seq as usize * 31 + i) as u8).collect();
        bytes[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        bytes[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        bytes[12..14].copy_from_slice(&[0x88, 0xb5]);
        bytes[14..22].copy_from_slice(&seq.to_le_bytes());
        bytes
    };
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut pending, mut out): (Vec<Mbuf>, Vec<Mbuf>) = (Vec::with_capacity(32), Vec::with_capacity(64));
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < FRAMES {
        assert!(Instant::now() < deadline, "{ring:?}: stalled: sent {sent}, received {received}");
        // Few enough in flight that DPDK always finds receive buffers for them (a 9000-byte
        // frame takes five): it drops what it cannot deliver.
        while pending.len() < 32 && sent + (pending.len() as u64) < FRAMES && sent - received < 96 {
            let seq = sent + pending.len() as u64;
            let bytes = frame(seq);
            let segment = SHAPES[seq as usize % SHAPES.len()].1;
            let mut pieces = bytes.chunks(segment);
            let Some(mut m) = pool.alloc() else { break };
            let first = pieces.next().unwrap();
            m.append(first.len()).unwrap().copy_from_slice(first);
            for piece in pieces {
                let mut seg = pool.alloc().expect("pool");
                seg.append(piece.len()).unwrap().copy_from_slice(piece);
                m.chain(seg).unwrap();
            }
            pending.push(m);
        }
        sent += tx.tx_burst(&mut pending) as u64;
        rx.rx_burst(&mut out);
        for m in out.drain(..) {
            let bytes = m.to_vec();
            let seq = bytes.get(14..22).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
            assert!(
                bytes == frame(received),
                "{ring:?}: frame {received} intact and in order: got {} bytes, sequence {seq:?}",
                bytes.len()
            );
            received += 1;
        }
    }
    let stats = testpmd.cmd("stop");
    eprintln!(
        "{ring:?} indirect chains through io: {received} frames back; tx {:?}; rx {:?}\n{stats}",
        tx.stats(),
        rx.stats()
    );
    assert_eq!((tx.stats().drops, tx.stats().errors, rx.stats().bad_headers, rx.stats().drops), (0, 0, 0, 0));
    drop(pending);
    // The ring holds a multi-segment packet per descriptor: DPDK stopped, nothing completes.
    let mut full: Vec<Mbuf> = (0..RING as u64 + 32)
        .map(|seq| {
            let mut m = pool.alloc().expect("pool");
            m.extend_from_slice(&pool, &frame(seq)[..60]).unwrap();
            let mut tail = pool.alloc().expect("pool");
            tail.append(40).unwrap().fill(0);
            m.chain(tail).unwrap();
            m
        })
        .collect();
    tx.reclaim();
    let room = RING - tx.in_flight();
    assert_eq!(tx.tx_burst(&mut full), room as usize, "{ring:?}: two-segment packets the ring takes");
    drop(full);
    drop((rx, tx, port));
    assert_eq!(pool.stats().in_use, 0, "every segment of every mbuf is back");
    testpmd.stop();
}

#[test]
fn indirect_chains_through_dpdk_io_packed() {
    indirect_chains_through_io(RingChoice::Packed, "indirect-packed");
}

#[test]
fn indirect_chains_through_dpdk_io_split() {
    indirect_chains_through_io(RingChoice::Split, "indirect-split");
}

// ---- Checksum offload against DPDK's csum forwarding engine ----

/// TCP/IPv4 frames with partial checksums (our transmit checksum offload) go to DPDK's csum
/// engine on a vhost port with `tso=1`, which recomputes the IPv4 checksum in software, leaves
/// TCP to hardware (`csum set tcp hw`), and sends them back: they arrive as partial checksums
/// at the offsets DPDK asked for, and completed as a device would, they are right. DPDK counts no
/// bad checksum; every mbuf back. With `tso`, 65000-byte TSO packets (MSS 1448) go instead,
/// DPDK asks for TSO again on the way back (`tso set 1448`), and each arrives whole as one
/// chained LRO packet with its segment size.
fn csum_engine(ring: RingChoice, name: &str, tso: bool) {
    let options = Options { fwd: "csum", vdev_extra: ",tso=1", ..Options::default() };
    let mut testpmd = VhostTestpmd::start(name, options);
    let tso_command = if tso { "tso set 1448 0" } else { "tso set 0 0" };
    for command in ["port stop 0", "csum set ip sw 0", "csum set tcp hw 0", tso_command, "port start 0", "start"] {
        testpmd.cmd(command);
    }
    const MSS: u16 = 1448;
    let gso = tso.then_some(Gso { kind: GsoKind::Tcpv4, size: MSS, ecn: false });
    let pool = pool();
    let transport = VhostUserTransport::connect(config(&testpmd)).unwrap();
    let port_config = PortConfig {
        ring,
        ring_size: Some(RING),
        huge_pages: HugePages::Required,
        rx_mergeable: true,
        offloads: OffloadConfig { tx_checksum: true, tso: true, rx_checksum: true, lro: true },
        ..PortConfig::default()
    };
    let mut port = Port::open(Box::new(transport), &pool, &port_config, &IovaAllocator::identity()).unwrap();
    let offloads = port.offloads();
    eprintln!("{ring:?}: negotiated {offloads:?}, paths {} / {}", port.rx_path(), port.tx_path());
    assert!(offloads.tx_checksum && offloads.rx_checksum, "DPDK's vhost with tso=1 offers CSUM and GUEST_CSUM");
    let (mut rx, mut tx) = port.take_queues(0).unwrap();
    let frames: u64 = if tso { 200 } else { 2000 };
    let lens: &[usize] = if tso { &[65_000, 30_000] } else { &[60, 200, 1514] };
    let (mut sent, mut received, mut partial) = (0u64, 0u64, 0u64);
    let mut out: Vec<Mbuf> = Vec::with_capacity(32);
    let deadline = Instant::now() + Duration::from_secs(20);
    while received < frames && Instant::now() < deadline {
        // Few enough on their way that DPDK always finds receive buffers for what it sends back
        // (a 65000-byte packet takes 32): it drops what it cannot deliver. (With indirect
        // descriptors the transmit ring alone no longer bounds that: it holds a packet per
        // descriptor.)
        if sent < frames && sent - received < if tso { 8 } else { 64 } {
            let len = lens[sent as usize % lens.len()];
            let mut m = pool.alloc().unwrap();
            m.extend_from_slice(&pool, &tcp_frame(len, sent, TcpChecksum::Partial)).unwrap();
            m.set_offload(Offload { checksum: Checksum::Partial { start: 34, offset: 16 }, gso });
            let mut pkts = vec![m];
            sent += tx.tx_burst(&mut pkts) as u64;
        }
        tx.reclaim();
        rx.rx_burst(&mut out);
        for m in out.drain(..) {
            let mut frame = m.to_vec();
            assert_eq!(frame.len(), lens[received as usize % lens.len()], "frame {received} whole");
            assert_eq!(m.offload().gso, gso, "frame {received}: segmentation as DPDK asked");
            match m.offload().checksum {
                Checksum::Partial { start, offset } => {
                    assert_eq!((start, offset), (34, 16), "TCP after Ethernet and IPv4");
                    partial += 1;
                    if gso.is_some() {
                        // To be segmented: the field holds the pseudo-header sum without the
                        // length (each segment's differs), as DPDK and Linux leave it for TSO.
                        let field = u16::from_be_bytes([frame[50], frame[51]]);
                        assert_eq!(field, ones_sum(&frame[26..34], 6), "frame {received}: TSO pseudo-header sum");
                    } else {
                        complete_checksum(&mut frame);
                        assert!(tcp_checksum_ok(&frame), "frame {received}: TCP checksum");
                    }
                }
                other => {
                    assert_eq!(other, Checksum::None, "DPDK completed it");
                    assert!(tcp_checksum_ok(&frame), "frame {received}: TCP checksum");
                }
            }
            assert_eq!(!ones_sum(&frame[14..34], 0), 0, "frame {received}: IPv4 checksum (DPDK's software one)");
            received += 1;
        }
    }
    let stats = testpmd.cmd("stop");
    eprintln!(
        "{ring:?}: sent {sent}, received {received} ({partial} with partial checksums); rx {:?}\n{stats}",
        rx.stats()
    );
    assert_eq!(received, frames, "every frame came back");
    for counter in ["Bad-ipcsum:", "Bad-l4csum:"] {
        let values: Vec<&str> =
            stats.split(counter).skip(1).filter_map(|rest| rest.split_whitespace().next()).collect();
        assert!(!values.is_empty() && values.iter().all(|v| *v == "0"), "DPDK's {counter} {values:?}:\n{stats}");
    }
    assert_eq!(rx.stats().bad_headers + tx.stats().bad_headers, 0);
    drop((rx, tx, port));
    assert_eq!(pool.stats().in_use, 0, "every mbuf is back");
    testpmd.stop();
}

#[test]
fn checksum_offload_through_dpdk_csum_engine_packed() {
    csum_engine(RingChoice::Packed, "csum-packed", false);
}

#[test]
fn checksum_offload_through_dpdk_csum_engine_split() {
    csum_engine(RingChoice::Split, "csum-split", false);
}

#[test]
fn tso_packets_cross_dpdk_csum_engine_whole_packed() {
    csum_engine(RingChoice::Packed, "tso-packed", true);
}

#[test]
fn tso_packets_cross_dpdk_csum_engine_whole_split() {
    csum_engine(RingChoice::Split, "tso-split", true);
}
