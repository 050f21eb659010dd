//! Bring-up through the library ([`virtio_pmd::setup`]) on the paths that need no device of this
//! machine: typed errors that tell a missing device from a refused feature, the step each
//! failure comes from, and every mbuf back after a failed open. `fwd`'s DPDK tests
//! (apps/tests/fwd_dpdk.rs) and the VM job open real ports through the same call.

use std::time::Instant;

use virtio_pmd::mbuf::MempoolConfig;
use virtio_pmd::mem::{HugePages, IovaAllocator};
use virtio_pmd::net::{Port, PortConfig, RingChoice};
use virtio_pmd::setup::{DeviceSpec, PortSet, PortSetConfig, SetupError};
use virtio_pmd::spec::features::{self, Features};
use virtio_pmd::spec::net as net_spec;
use virtio_pmd::testing::{FakeDeviceConfig, FakeTransport};
use virtio_pmd::{Error, ErrorKind};

fn config() -> PortSetConfig {
    PortSetConfig {
        pool: MempoolConfig { count: 1024, cache_size: 32, huge_pages: HugePages::Never, ..MempoolConfig::default() },
        port: PortConfig { huge_pages: HugePages::Never, ..PortConfig::default() },
    }
}

#[test]
fn no_devices_is_its_own_error() {
    assert!(matches!(PortSet::open(&[], &config()), Err(SetupError::NoDevices)));
}

#[test]
fn a_missing_vhost_backend_is_a_missing_device_of_its_port() {
    let dir = std::env::temp_dir().join(format!("setup-missing-{}", std::process::id()));
    let specs: Vec<DeviceSpec> = vec![format!("vhost:{}/none.sock,queues=1", dir.display()).parse().unwrap()];
    let started = Instant::now();
    let err = PortSet::open(&specs, &config()).unwrap_err();
    assert!(matches!(&err, SetupError::Device { port: 0, source: Error::VhostUserNoBackend { .. } }), "{err}");
    assert_eq!(err.error().map(Error::kind), Some(ErrorKind::NotFound));
    assert!(err.to_string().starts_with("port 0: no vhost-user backend at"), "{err}");
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn a_pci_port_needs_the_vfio_container_first() {
    // This machine has no VFIO for us (and its own PCI devices are never touched): the container
    // step fails before any device or memory is opened, with the IOMMU advice.
    let specs = vec![DeviceSpec::pci("0000:00:1f.7").unwrap()];
    match PortSet::open(&specs, &config()) {
        Err(SetupError::Container { source, .. }) => assert_eq!(source.kind(), ErrorKind::Unavailable, "{source}"),
        Err(SetupError::Device { source, .. }) => assert_eq!(source.kind(), ErrorKind::NotFound, "{source}"),
        other => panic!("expected a container or device error, got {other:?}"),
    }
}

#[test]
fn a_refused_feature_is_typed_apart_from_a_missing_device() {
    let pool = virtio_pmd::mbuf::Mempool::new(&config().pool, &IovaAllocator::identity()).unwrap();
    let device = FakeDeviceConfig {
        offered: Features::from_bits(&[features::VERSION_1, net_spec::F_MAC]),
        ..FakeDeviceConfig::modern()
    };
    let packed = PortConfig { ring: RingChoice::Packed, ..config().port };
    let err = Port::open(Box::new(FakeTransport::new(device)), &pool, &packed, &IovaAllocator::identity()).unwrap_err();
    assert!(matches!(err, Error::FeatureNotOffered { feature: "VIRTIO_F_RING_PACKED", .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("packed=on"), "{err}");
    assert_eq!(pool.stats().in_use, 0);
}
