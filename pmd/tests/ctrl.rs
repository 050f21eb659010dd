//! The control virtqueue ("Control Virtqueue", 5.1.6.5) through the port, against the fake
//! transport's control-queue device: each command's wire bytes, acks other than OK, a device
//! that never answers, features not negotiated, VQ_PAIRS_SET limits, and set-up order.

mod common;

use std::time::Duration;

use common::test_pool;
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{CtrlCommand, CtrlUnavailable, Port, PortConfig, RingChoice, RssConfig, RxFilter, DEFAULT_KEY};
use virtio_pmd::setup::DeviceSpec;
use virtio_pmd::spec::features::{self, Features};
use virtio_pmd::spec::net::{self as net_spec, ctrl};
use virtio_pmd::spec::status;
use virtio_pmd::testing::{CtrlAnswer, CtrlRecord, FakeCtrl, FakeDeviceConfig, FakeEvent, FakeTransport};
use virtio_pmd::Error;

/// Every control feature, MQ, and the usual modern bits.
const CTRL_ALL: &[u32] = &[
    features::VERSION_1,
    features::RING_PACKED,
    features::IN_ORDER,
    net_spec::F_MAC,
    net_spec::F_STATUS,
    net_spec::F_CTRL_VQ,
    net_spec::F_CTRL_RX,
    net_spec::F_CTRL_RX_EXTRA,
    net_spec::F_CTRL_VLAN,
    net_spec::F_GUEST_ANNOUNCE,
    net_spec::F_MQ,
    net_spec::F_CTRL_MAC_ADDR,
    net_spec::F_CTRL_GUEST_OFFLOADS,
];

/// `max_virtqueue_pairs` of the fake device with MQ: 4 pairs and the control queue (index 8).
const MAX_PAIRS: u16 = 4;

fn device(offered: &[u32]) -> FakeDeviceConfig {
    FakeDeviceConfig {
        offered: Features::from_bits(offered),
        num_queues: 2 * MAX_PAIRS + 1,
        ..FakeDeviceConfig::modern()
    }
}

fn port_config(ring: RingChoice) -> PortConfig {
    PortConfig { huge_pages: HugePages::Never, ring, ring_size: Some(64), ..Default::default() }
}

fn without(bits: &[u32], drop: &[u32]) -> Vec<u32> {
    bits.iter().copied().filter(|b| !drop.contains(b)).collect()
}

/// A port on a fake device offering `offered`, and the handles on its control queue, events
/// and announce bit.
struct Fixture {
    port: Port,
    ctrl: FakeCtrl,
    events: virtio_pmd::testing::FakeEvents,
    announce: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pool: virtio_pmd::mbuf::Mempool,
}

fn open_with(offered: &[u32], config: &PortConfig, answer: CtrlAnswer) -> Result<Fixture, (Error, FakeCtrl)> {
    let pool = test_pool(512);
    let transport = FakeTransport::new(device(offered));
    let (ctrl, events, announce) = (transport.ctrl.clone(), transport.events.clone(), transport.announce.clone());
    ctrl.lock().unwrap().answer = answer;
    match Port::open(Box::new(transport), &pool, config, &IovaAllocator::identity()) {
        Ok(port) => Ok(Fixture { port, ctrl, events, announce, pool }),
        Err(err) => Err((err, ctrl)),
    }
}

fn open(offered: &[u32], ring: RingChoice) -> Fixture {
    open_with(offered, &port_config(ring), CtrlAnswer::Ok).map_err(|(e, _)| e).expect("port")
}

fn commands(ctrl: &FakeCtrl) -> Vec<CtrlRecord> {
    std::mem::take(&mut ctrl.lock().unwrap().commands)
}

/// The one command the device got since the last look: class, command, data; and the chain is
/// the driver-readable header and data, then the one-byte ack.
fn one(ctrl: &FakeCtrl) -> (u8, u8, Vec<u8>) {
    let got = commands(ctrl);
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!((r.descs, r.writable), (2, 1), "header + data readable, ack writable: {r:?}");
    (r.class, r.command, r.data.clone())
}

#[test]
fn every_command_goes_out_as_the_spec_lays_it_out() {
    for ring in [RingChoice::Packed, RingChoice::Split] {
        let mut f = open(CTRL_ALL, ring);
        assert!(f.port.has_control_queue());
        let wanted = [net_spec::F_CTRL_VQ, net_spec::F_CTRL_RX, net_spec::F_MQ, net_spec::F_CTRL_GUEST_OFFLOADS];
        assert!(wanted.iter().all(|&b| f.port.features().has(b)), "{:?}", f.port.features());
        // One pair: no VQ_PAIRS_SET at open.
        assert!(commands(&f.ctrl).is_empty());

        f.port.set_promiscuous(true).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::RX, ctrl::RX_PROMISC, vec![1]));
        f.port.set_promiscuous(false).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::RX, ctrl::RX_PROMISC, vec![0]));
        f.port.set_all_multicast(true).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::RX, ctrl::RX_ALLMULTI, vec![1]));
        for (filter, command) in [
            (RxFilter::AllUnicast, ctrl::RX_ALLUNI),
            (RxFilter::NoMulticast, ctrl::RX_NOMULTI),
            (RxFilter::NoUnicast, ctrl::RX_NOUNI),
            (RxFilter::NoBroadcast, ctrl::RX_NOBCAST),
        ] {
            f.port.set_rx_filter(filter, true).unwrap();
            assert_eq!(one(&f.ctrl), (ctrl::RX, command, vec![1]));
        }

        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        f.port.set_mac_address(mac).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::MAC, ctrl::MAC_ADDR_SET, mac.to_vec()));
        assert_eq!(f.port.mac(), Some(mac));

        let (uni, multi) = ([[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]], [[0x01, 0, 0x5e, 0, 0, 1]]);
        f.port.set_mac_table(&uni, &multi).unwrap();
        let mut wire = 2u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
        wire.extend_from_slice(&1u32.to_le_bytes());
        wire.extend_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
        assert_eq!(one(&f.ctrl), (ctrl::MAC, ctrl::MAC_TABLE_SET, wire));
        f.port.set_mac_table(&[], &[]).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::MAC, ctrl::MAC_TABLE_SET, vec![0; 8]));

        f.port.vlan_filter(0x123, true).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::VLAN, ctrl::VLAN_ADD, vec![0x23, 0x01]));
        f.port.vlan_filter(4095, false).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::VLAN, ctrl::VLAN_DEL, vec![0xff, 0x0f]));

        f.port.set_guest_offloads(0).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::GUEST_OFFLOADS, ctrl::GUEST_OFFLOADS_SET, vec![0; 8]));

        f.port.set_queue_pairs(1).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::MQ, ctrl::MQ_VQ_PAIRS_SET, vec![1, 0]));

        // Announcements: nothing pending, then the device asks, the driver acks, the device
        // clears the bit.
        assert!(!f.port.announce_pending().unwrap());
        f.announce.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(f.port.announce_pending().unwrap());
        f.port.announce_ack().unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::ANNOUNCE, ctrl::ANNOUNCE_ACK, vec![]));
        assert!(!f.port.announce_pending().unwrap());

        assert_eq!(f.ctrl.lock().unwrap().early, 0, "nothing sent before DRIVER_OK");
        assert_eq!(f.ctrl.lock().unwrap().fault, None);
        drop(f.port);
        assert_eq!(f.pool.stats().in_use, 0);
    }
}

#[test]
fn an_err_ack_is_an_error_naming_the_command() {
    let mut f = open_with(CTRL_ALL, &port_config(RingChoice::Auto), CtrlAnswer::ErrOn(ctrl::RX, ctrl::RX_PROMISC))
        .map_err(|(e, _)| e)
        .expect("port");
    let err = f.port.set_promiscuous(true).unwrap_err();
    match &err {
        Error::CtrlCommandFailed { command, ack, .. } => {
            assert_eq!((*command, *ack), (CtrlCommand::Rx(RxFilter::Promiscuous), ctrl::ERR));
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("VIRTIO_NET_CTRL_RX_PROMISC") && text.contains("class 0, command 0"), "{text}");
    // The queue goes on: the next command is answered OK.
    f.port.set_all_multicast(true).unwrap();
    assert_eq!(commands(&f.ctrl).len(), 2);
    // Every command refused.
    f.ctrl.lock().unwrap().answer = CtrlAnswer::Err;
    let err = f.port.vlan_filter(7, true).unwrap_err();
    assert!(matches!(err, Error::CtrlCommandFailed { command: CtrlCommand::VlanAdd, .. }), "{err:?}");
}

#[test]
fn a_device_that_never_answers_times_out_and_the_queue_stops_without_losing_anything() {
    for ring in [RingChoice::Packed, RingChoice::Split] {
        let config = PortConfig { control_timeout: Duration::from_millis(50), ..port_config(ring) };
        let mut f = open_with(CTRL_ALL, &config, CtrlAnswer::Never).map_err(|(e, _)| e).expect("port");
        let start = std::time::Instant::now();
        let err = f.port.set_mac_address([2, 0, 0, 0, 0, 9]).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(50));
        match &err {
            Error::CtrlTimeout { command, timeout, .. } => {
                assert_eq!((*command, *timeout), (CtrlCommand::MacAddrSet, Duration::from_millis(50)));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("VIRTIO_NET_CTRL_MAC_ADDR_SET"), "{err}");
        assert_eq!(f.port.mac(), Some([0x52, 0x54, 0, 0, 0, 1]), "the MAC did not change");
        // The device holds the buffer: the queue is unusable, and sends nothing more.
        let err = f.port.set_promiscuous(true).unwrap_err();
        assert!(matches!(err, Error::CtrlQueueUnusable { command: CtrlCommand::Rx(RxFilter::Promiscuous), .. }));
        assert_eq!(commands(&f.ctrl).len(), 1);
        // Teardown resets the device before anything is freed; every mbuf comes back.
        drop(f.port);
        assert!(f.events.lock().unwrap().contains(&FakeEvent::Reset));
        assert_eq!(f.pool.stats().in_use, 0);
    }
}

#[test]
fn a_command_whose_feature_was_not_negotiated_says_what_is_missing() {
    // No control queue offered at all.
    let plain = without(CTRL_ALL, &CTRL_ALL[5..]);
    let mut f = open(&plain, RingChoice::Auto);
    assert!(!f.port.has_control_queue() && !f.port.features().has(net_spec::F_CTRL_VQ));
    let err = f.port.set_promiscuous(true).unwrap_err();
    assert!(matches!(err, Error::NoControlQueue { why: CtrlUnavailable::NotOffered, .. }), "{err:?}");
    assert!(err.to_string().contains("offers no control queue") && err.to_string().contains("ctrl_vq=on"), "{err}");

    // Offered, but the port asked not to use it.
    let config = PortConfig { control_queue: false, ..port_config(RingChoice::Auto) };
    let mut f = open_with(CTRL_ALL, &config, CtrlAnswer::Ok).map_err(|(e, _)| e).expect("port");
    assert!(!f.port.features().has(net_spec::F_CTRL_VQ) && !f.port.features().has(net_spec::F_MQ));
    let err = f.port.set_queue_pairs(1).unwrap_err();
    assert!(matches!(err, Error::NoControlQueue { why: CtrlUnavailable::Disabled, .. }), "{err:?}");
    assert!(f.events.lock().unwrap().iter().all(|e| !matches!(e, FakeEvent::SetupQueue(q) if *q > 1)));

    // A control queue, without the command's own feature.
    for (missing, name) in [
        (net_spec::F_CTRL_RX, "VIRTIO_NET_F_CTRL_RX"),
        (net_spec::F_CTRL_RX_EXTRA, "VIRTIO_NET_F_CTRL_RX_EXTRA"),
        (net_spec::F_CTRL_VLAN, "VIRTIO_NET_F_CTRL_VLAN"),
        (net_spec::F_CTRL_MAC_ADDR, "VIRTIO_NET_F_CTRL_MAC_ADDR"),
        (net_spec::F_GUEST_ANNOUNCE, "VIRTIO_NET_F_GUEST_ANNOUNCE"),
        (net_spec::F_CTRL_GUEST_OFFLOADS, "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS"),
        (net_spec::F_MQ, "VIRTIO_NET_F_MQ"),
    ] {
        let mut f = open(&without(CTRL_ALL, &[missing]), RingChoice::Auto);
        assert!(f.port.has_control_queue());
        let err = match missing {
            net_spec::F_CTRL_RX => f.port.set_mac_table(&[], &[]).unwrap_err(),
            net_spec::F_CTRL_RX_EXTRA => f.port.set_rx_filter(RxFilter::NoBroadcast, true).unwrap_err(),
            net_spec::F_CTRL_VLAN => f.port.vlan_filter(1, true).unwrap_err(),
            net_spec::F_CTRL_MAC_ADDR => f.port.set_mac_address([2, 0, 0, 0, 0, 3]).unwrap_err(),
            net_spec::F_GUEST_ANNOUNCE => f.port.announce_ack().unwrap_err(),
            net_spec::F_CTRL_GUEST_OFFLOADS => f.port.set_guest_offloads(0).unwrap_err(),
            _ => f.port.set_queue_pairs(1).unwrap_err(),
        };
        assert!(
            matches!(err, Error::NoControlQueue { why: CtrlUnavailable::FeatureNotOffered(n), .. } if n == name),
            "{name}: {err:?}"
        );
        assert!(commands(&f.ctrl).is_empty(), "{name}: nothing sent");
    }
}

#[test]
fn arguments_out_of_range_are_refused_before_anything_is_sent() {
    let mut f = open(CTRL_ALL, RingChoice::Auto);
    let err = f.port.vlan_filter(4096, true).unwrap_err();
    assert!(matches!(err, Error::CtrlBadArgument { command: CtrlCommand::VlanAdd, .. }), "{err:?}");
    // GUEST_CSUM was not negotiated.
    let err = f.port.set_guest_offloads(1 << net_spec::F_GUEST_CSUM).unwrap_err();
    assert!(matches!(err, Error::CtrlBadArgument { command: CtrlCommand::GuestOffloadsSet, .. }), "{err:?}");
    let many = vec![[2u8, 0, 0, 0, 0, 1]; 400];
    let err = f.port.set_mac_table(&many, &[]).unwrap_err();
    assert!(matches!(err, Error::CtrlBadArgument { command: CtrlCommand::MacTableSet, .. }), "{err:?}");
    assert!(commands(&f.ctrl).is_empty());
}

#[test]
fn queue_pairs_are_set_through_the_control_queue_within_max_virtqueue_pairs() {
    for ring in [RingChoice::Packed, RingChoice::Split] {
        let config = PortConfig { queue_pairs: 3, ..port_config(ring) };
        let mut f = open_with(CTRL_ALL, &config, CtrlAnswer::Ok).map_err(|(e, _)| e).expect("port");
        assert_eq!(f.port.queue_pairs(), 3);
        // VQ_PAIRS_SET went right after DRIVER_OK.
        assert_eq!(one(&f.ctrl), (ctrl::MQ, ctrl::MQ_VQ_PAIRS_SET, vec![3, 0]));
        f.port.set_queue_pairs(2).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::MQ, ctrl::MQ_VQ_PAIRS_SET, vec![2, 0]));
        // More than the port set up, or none: refused, nothing sent.
        for pairs in [0, 4] {
            let err = f.port.set_queue_pairs(pairs).unwrap_err();
            assert!(matches!(err, Error::TooManyQueuePairs { requested, max: 3, .. } if requested == pairs), "{err:?}");
        }
        assert!(commands(&f.ctrl).is_empty());
        drop(f.port);
        assert_eq!(f.pool.stats().in_use, 0);
    }

    // More than max_virtqueue_pairs at open.
    let config = PortConfig { queue_pairs: MAX_PAIRS + 1, ..port_config(RingChoice::Auto) };
    let (err, ctrl) = open_with(CTRL_ALL, &config, CtrlAnswer::Ok).err().expect("refused");
    assert!(matches!(err, Error::TooManyQueuePairs { requested: 5, max: MAX_PAIRS, .. }), "{err:?}");
    assert!(err.to_string().contains("max_virtqueue_pairs"), "{err}");
    assert!(ctrl.lock().unwrap().commands.is_empty());

    // Without MQ (or without the control queue), more than one pair is refused as before.
    for offered in [without(CTRL_ALL, &[net_spec::F_MQ]), without(CTRL_ALL, &CTRL_ALL[5..])] {
        let config = PortConfig { queue_pairs: 2, ..port_config(RingChoice::Auto) };
        let (err, _) = open_with(&offered, &config, CtrlAnswer::Ok).err().expect("refused");
        let text = err.to_string();
        assert!(text.contains("control queue") && text.contains("VIRTIO_NET_F_MQ") && text.contains("one queue pair"));
    }

    // A device that refuses the pairs fails the open, which resets and returns everything.
    let config = PortConfig { queue_pairs: 2, ..port_config(RingChoice::Auto) };
    let (err, _) = open_with(CTRL_ALL, &config, CtrlAnswer::Err).err().expect("refused");
    assert!(matches!(err, Error::CtrlCommandFailed { command: CtrlCommand::MqVqPairsSet, .. }), "{err:?}");
}

#[test]
fn each_queue_pair_can_have_its_own_ring_size() {
    for ring in [RingChoice::Packed, RingChoice::Split] {
        let config = PortConfig { queue_pairs: 3, pair_ring_sizes: vec![32, 128], ..port_config(ring) };
        let mut f = open_with(CTRL_ALL, &config, CtrlAnswer::Ok).map_err(|(e, _)| e).expect("port");
        assert_eq!((0..4).map(|p| f.port.pair_ring_size(p)).collect::<Vec<_>>(), [Some(32), Some(128), Some(64), None]);
        assert_eq!(f.port.ring_size(), 64);
        for (pair, size) in [(0, 32), (1, 128), (2, 64)] {
            let (rx, tx) = f.port.take_queues(pair).unwrap();
            assert_eq!((rx.ring_size(), tx.ring_size()), (size, size), "{ring:?} pair {pair}");
            drop((rx, tx));
        }
        drop(f.port);
        assert_eq!(f.pool.stats().in_use, 0);
    }
    // A size the device cannot take names the queue; more sizes than pairs is refused.
    let config = PortConfig { queue_pairs: 2, pair_ring_sizes: vec![64, 512], ..port_config(RingChoice::Split) };
    let (err, _) = open_with(CTRL_ALL, &config, CtrlAnswer::Ok).err().expect("refused");
    assert!(matches!(err, Error::QueueSizeRefused { queue: 2, requested: 512, max: 256, .. }), "{err:?}");
    let config = PortConfig { queue_pairs: 2, pair_ring_sizes: vec![64, 48], ..port_config(RingChoice::Split) };
    let (err, _) = open_with(CTRL_ALL, &config, CtrlAnswer::Ok).err().expect("refused");
    assert!(matches!(err, Error::QueueSizeRefused { queue: 2, requested: 48, .. }), "{err:?}");
    let config = PortConfig { queue_pairs: 1, pair_ring_sizes: vec![64, 64], ..port_config(RingChoice::Auto) };
    let (err, _) = open_with(CTRL_ALL, &config, CtrlAnswer::Ok).err().expect("refused");
    assert!(err.to_string().contains("at most one per pair"), "{err}");
}

/// `struct virtio_net_rss_config` as the spec lays it out, for `pairs` pairs.
fn rss_bytes(rss: &RssConfig, pairs: u16) -> Vec<u8> {
    let mut b = rss.hash_types.to_le_bytes().to_vec();
    b.extend_from_slice(&(rss.table.len() as u16 - 1).to_le_bytes());
    b.extend_from_slice(&rss.unclassified.to_le_bytes());
    rss.table.iter().for_each(|q| b.extend_from_slice(&q.to_le_bytes()));
    b.extend_from_slice(&pairs.to_le_bytes());
    b.push(rss.key.len() as u8);
    b.extend_from_slice(&rss.key);
    b
}

#[test]
fn rss_is_configured_at_open_and_changed_at_run_time() {
    let offered = [CTRL_ALL, &[net_spec::F_RSS]].concat();
    for ring in [RingChoice::Packed, RingChoice::Split] {
        let config = PortConfig { queue_pairs: 4, ..port_config(ring) };
        let mut f = open_with(&offered, &config, CtrlAnswer::Ok).map_err(|(e, _)| e).expect("port");
        let caps = f.port.rss_capabilities().expect("RSS negotiated");
        assert_eq!((caps.max_key_size, caps.max_table_len, caps.hash_types), (40, 128, 0x1ff));
        // VQ_PAIRS_SET, then the default RSS configuration: the Microsoft key, i % 4.
        let got = commands(&f.ctrl);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].class, got[0].command), (ctrl::MQ, ctrl::MQ_VQ_PAIRS_SET));
        let default = f.port.rss_config().expect("default RSS").clone();
        assert_eq!(default.key, DEFAULT_KEY);
        assert_eq!(default.table, (0..128).map(|i| i % 4).collect::<Vec<u16>>());
        assert_eq!(default.hash_types, 0x3f);
        assert_eq!(
            (got[1].class, got[1].command, got[1].data.clone()),
            (ctrl::MQ, ctrl::MQ_RSS_CONFIG, rss_bytes(&default, 4))
        );

        // A new table and key at run time.
        let changed = RssConfig { table: vec![3, 2, 1, 0], key: vec![0x5a; 40], ..default.clone() };
        f.port.set_rss(&changed).unwrap();
        assert_eq!(one(&f.ctrl), (ctrl::MQ, ctrl::MQ_RSS_CONFIG, rss_bytes(&changed, 4)));
        assert_eq!(f.port.rss_config(), Some(&changed));

        // What the device cannot take is refused before anything is sent, and says why.
        for (bad, why) in [
            (RssConfig { table: vec![0, 4], ..default.clone() }, "names queue pair 4"),
            (RssConfig { table: vec![0; 3], ..default.clone() }, "power of two"),
            (RssConfig { key: vec![1; 41], ..default.clone() }, "rss_max_key_size"),
            (RssConfig { hash_types: 1 << 12, ..default.clone() }, "not supported"),
        ] {
            let err = f.port.set_rss(&bad).unwrap_err();
            assert!(matches!(err, Error::CtrlBadArgument { command: CtrlCommand::MqRssConfig, .. }), "{err:?}");
            assert!(err.to_string().contains(why), "{err}");
        }
        assert!(commands(&f.ctrl).is_empty());
        assert_eq!(f.port.rss_config(), Some(&changed), "a refused configuration changes nothing");

        // A device that refuses it: an error naming the command; nothing lost.
        f.ctrl.lock().unwrap().answer = CtrlAnswer::Err;
        let err = f.port.set_rss(&default).unwrap_err();
        assert!(matches!(err, Error::CtrlCommandFailed { command: CtrlCommand::MqRssConfig, .. }), "{err:?}");
        assert!(err.to_string().contains("VIRTIO_NET_CTRL_MQ_RSS_CONFIG"), "{err}");
        drop(f.port);
        assert_eq!(f.pool.stats().in_use, 0);
    }

    // Without VIRTIO_NET_F_RSS: no capabilities, and the command says what is missing.
    let mut f = open(CTRL_ALL, RingChoice::Auto);
    assert!(f.port.rss_capabilities().is_none() && f.port.rss_config().is_none());
    let caps = virtio_pmd::net::RssCapabilities { max_key_size: 40, max_table_len: 128, hash_types: 0x1ff };
    let err = f.port.set_rss(&RssConfig::spread(1, &caps)).unwrap_err();
    assert!(
        matches!(err, Error::NoControlQueue { why: CtrlUnavailable::FeatureNotOffered("VIRTIO_NET_F_RSS"), .. }),
        "{err:?}"
    );
    assert!(commands(&f.ctrl).is_empty());
}

#[test]
fn the_control_queue_is_set_up_before_driver_ok_and_used_only_after() {
    for (offered, index) in [(CTRL_ALL.to_vec(), 2 * MAX_PAIRS), (without(CTRL_ALL, &[net_spec::F_MQ]), 2)] {
        let config = PortConfig { queue_pairs: if index == 2 { 1 } else { 2 }, ..port_config(RingChoice::Auto) };
        let mut f = open_with(&offered, &config, CtrlAnswer::Ok).map_err(|(e, _)| e).expect("port");
        f.port.set_promiscuous(true).unwrap();
        let events = f.events.lock().unwrap().clone();
        let at = |pred: &dyn Fn(&FakeEvent) -> bool| events.iter().position(pred);
        let setup = at(&|e| *e == FakeEvent::SetupQueue(index)).expect("control queue set up");
        let driver_ok = at(&|e| matches!(e, FakeEvent::Status(s) if s & status::DRIVER_OK != 0)).expect("DRIVER_OK");
        let first_command = at(&|e| matches!(e, FakeEvent::Ctrl(..))).expect("a command");
        assert!(setup < driver_ok && driver_ok < first_command, "index {index}: {events:?}");
        assert!(at(&|e| matches!(e, FakeEvent::SetupQueue(q) if *q > index)).is_none(), "{events:?}");
        assert_eq!(f.ctrl.lock().unwrap().early, 0);
    }
}

#[test]
fn port_options_go_out_in_order_and_a_refusal_names_the_setting() {
    let offered = [CTRL_ALL, &[net_spec::F_RSS]].concat();
    let config = PortConfig { queue_pairs: 4, ..port_config(RingChoice::Auto) };
    let mut f = open_with(&offered, &config, CtrlAnswer::Ok).map_err(|(e, _)| e).expect("port");
    commands(&f.ctrl);
    let spec: DeviceSpec = "vhost:/x,promisc=off,allmulti=on,mac_table=[02:00:00:00:aa:01,01:00:5e:00:00:01],\
                            vlans=[100],rss_table=[3,2],rss_key=6d5a6d5a"
        .parse()
        .unwrap();
    spec.options.apply(&mut f.port).unwrap();
    let got: Vec<(u8, u8)> = commands(&f.ctrl).iter().map(|r| (r.class, r.command)).collect();
    assert_eq!(
        got,
        [
            (ctrl::RX, ctrl::RX_PROMISC),
            (ctrl::MAC, ctrl::MAC_TABLE_SET),
            (ctrl::RX, ctrl::RX_ALLMULTI),
            (ctrl::VLAN, ctrl::VLAN_ADD),
            (ctrl::MQ, ctrl::MQ_RSS_CONFIG)
        ]
    );
    let rss = f.port.rss_config().unwrap();
    assert_eq!(
        (rss.table.len(), &rss.table[..4], rss.key.as_slice()),
        (128, &[3, 2, 3, 2][..], &[0x6d, 0x5a, 0x6d, 0x5a][..])
    );

    // An entry beyond the pairs is refused before anything is sent, naming the setting.
    let beyond: DeviceSpec = "vhost:/x,rss_table=[7]".parse().unwrap();
    let err = beyond.options.apply(&mut f.port).unwrap_err();
    assert_eq!(err.setting, "RSS table and key");
    assert!(matches!(err.source, Error::CtrlBadArgument { command: CtrlCommand::MqRssConfig, .. }), "{err}");
    f.ctrl.lock().unwrap().answer = CtrlAnswer::ErrOn(ctrl::VLAN, ctrl::VLAN_ADD);
    let err = spec.options.apply(&mut f.port).unwrap_err();
    assert_eq!(err.setting, "VLAN filter");
    assert!(err.to_string().starts_with("VLAN filter: ") && err.to_string().contains("VLAN_ADD"), "{err}");
    drop(f.port);
    assert_eq!(f.pool.stats().in_use, 0);

    // Without RSS: the RSS setting says the feature is missing.
    let mut f = open(CTRL_ALL, RingChoice::Auto);
    let err = "vhost:/x,rss_key=6d5a".parse::<DeviceSpec>().unwrap().options.apply(&mut f.port).unwrap_err();
    assert!(matches!(err.source, Error::NoControlQueue { why: CtrlUnavailable::FeatureNotOffered(_), .. }), "{err}");
}
