//! Checks made through sysfs before any VFIO call, so that each common mistake gets its own
//! error that says what to do: no such PCI address, not a virtio-net function, not bound to
//! vfio-pci, no IOMMU group (the IOMMU is off), and, for a group that is not viable, which other
//! devices are in the way.
//!
//! The sysfs root and the `/dev/vfio` directory are injectable ([`HostPaths`]) so that tests run
//! against a fake tree and never look at this machine's devices.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::pci::{DEVICE_ID_NET_MODERN, DEVICE_ID_NET_TRANSITIONAL, VENDOR_ID};

/// Where sysfs and the VFIO device nodes are. Only tests change these: `vfio-ioctls` itself
/// always opens `/dev/vfio/vfio` and `/dev/vfio/<group>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// The sysfs mount (`/sys`).
    pub sysfs: PathBuf,
    /// The VFIO device directory (`/dev/vfio`).
    pub dev_vfio: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self { sysfs: PathBuf::from("/sys"), dev_vfio: PathBuf::from("/dev/vfio") }
    }
}

impl HostPaths {
    /// `root/sys` and `root/dev/vfio`: a fake tree for tests.
    pub fn under(root: &Path) -> Self {
        Self { sysfs: root.join("sys"), dev_vfio: root.join("dev/vfio") }
    }

    /// `/sys/bus/pci/devices/<bdf>`.
    pub fn device_dir(&self, bdf: &str) -> PathBuf {
        self.sysfs.join("bus/pci/devices").join(bdf)
    }

    /// `/dev/vfio/<group>`.
    pub fn group_node(&self, group: u32) -> PathBuf {
        self.dev_vfio.join(group.to_string())
    }
}

/// Normalises a PCI address to `dddd:bb:dd.f` (lowercase, with a domain); `BB:DD.F` gets domain
/// 0000.
pub fn normalize_bdf(bdf: &str) -> Result<String> {
    let bad = || Error::PciDeviceNotFound {
        device: bdf.to_owned(),
        reason: "not a PCI address: expected DDDD:BB:DD.F, e.g. 0000:00:03.0".into(),
    };
    let parts: Vec<&str> = bdf.trim().split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [bus, devfn] => ("0000", *bus, *devfn),
        [domain, bus, devfn] => (*domain, *bus, *devfn),
        _ => return Err(bad()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, digits: usize, max: u32| {
        (s.len() == digits && s.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    let (domain, bus, dev, func) = (
        hex(domain, 4, 0xffff).ok_or_else(bad)?,
        hex(bus, 2, 0xff).ok_or_else(bad)?,
        hex(dev, 2, 0x1f).ok_or_else(bad)?,
        hex(func, 1, 7).ok_or_else(bad)?,
    );
    Ok(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// What sysfs says about a function that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsDevice {
    /// Normalised PCI address.
    pub bdf: String,
    /// `/sys/bus/pci/devices/<bdf>`.
    pub dir: PathBuf,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// Its IOMMU group.
    pub group: u32,
}

fn read_id(dir: &Path, file: &str, bdf: &str) -> Result<u16> {
    let path = dir.join(file);
    let text = fs::read_to_string(&path)
        .map_err(|source| Error::Io { what: format!("reading {}", path.display()), source })?;
    let text = text.trim();
    u16::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|_| Error::Transport(format!("{bdf}: {} holds {text:?}, not a PCI id", path.display())))
}

/// The name of the driver bound to the device at `dir`, if any.
pub(crate) fn driver_of(dir: &Path) -> Option<String> {
    fs::read_link(dir.join("driver")).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Drivers that leave an IOMMU group viable for VFIO: vfio-pci and its vendor variants, and the
/// drivers the kernel lets coexist with VFIO (pci-stub, and pcieport for bridges).
fn keeps_group_viable(driver: &str) -> bool {
    driver.contains("vfio") || driver == "pci-stub" || driver == "pcieport"
}

/// A PCI function that sysfs says is virtio-net.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VirtioNetFunction {
    /// Normalised PCI address.
    pub(crate) bdf: String,
    /// `/sys/bus/pci/devices/<bdf>`.
    pub(crate) dir: PathBuf,
    /// PCI vendor id.
    pub(crate) vendor: u16,
    /// PCI device id.
    pub(crate) device: u16,
}

/// Checks that `bdf` is a well-formed address of a function that exists and is virtio-net.
pub(crate) fn identify(paths: &HostPaths, bdf: &str) -> Result<VirtioNetFunction> {
    let bdf = normalize_bdf(bdf)?;
    let dir = paths.device_dir(&bdf);
    if !dir.exists() {
        return Err(Error::PciDeviceNotFound { device: bdf, reason: format!("{} does not exist", dir.display()) });
    }
    let vendor = read_id(&dir, "vendor", &bdf)?;
    let device = read_id(&dir, "device", &bdf)?;
    if vendor != VENDOR_ID || (device != DEVICE_ID_NET_MODERN && device != DEVICE_ID_NET_TRANSITIONAL) {
        return Err(Error::NotVirtioNet { device: bdf, vendor, device_id: device });
    }
    Ok(VirtioNetFunction { bdf, dir, vendor, device })
}

/// Checks, through sysfs only, that `bdf` names a virtio-net function bound to vfio-pci and in an
/// IOMMU group. Each failure has its own error, in this order: address malformed or absent, not
/// virtio-net, no IOMMU group (then no binding can help), not bound to vfio-pci.
pub fn inspect(paths: &HostPaths, bdf: &str) -> Result<SysfsDevice> {
    let VirtioNetFunction { bdf, dir, vendor, device } = identify(paths, bdf)?;
    let link = dir.join("iommu_group");
    let group = fs::read_link(&link)
        .map_err(|_| Error::IommuUnavailable {
            reason: format!(
                "{bdf} has no IOMMU group ({} is missing): the IOMMU is off; boot with intel_iommu=on \
                 (or amd_iommu=on), and give a QEMU guest `-device intel-iommu`; or, in a VM without a \
                 vIOMMU, bind it to uio_pci_generic (`scripts/bind-vfio.sh --uio {bdf}`) and open it in \
                 physical-address mode (`UioPciTransport`, l2fwd --no-iommu), which lets the device reach all memory",
                link.display()
            ),
        })?
        .file_name()
        .and_then(|n| n.to_str()?.parse::<u32>().ok())
        .ok_or_else(|| Error::Transport(format!("{bdf}: {} does not name an IOMMU group", link.display())))?;
    match driver_of(&dir) {
        Some(driver) if driver.contains("vfio") => {}
        Some(driver) => return Err(Error::NotBoundToVfio { device: bdf, driver: format!("bound to {driver}") }),
        None => return Err(Error::NotBoundToVfio { device: bdf, driver: "no driver bound".into() }),
    }
    Ok(SysfsDevice { bdf, dir, vendor, device, group })
}

/// The members of IOMMU group `group` that keep it from being viable, as "BDF (bound to X)".
pub fn group_blockers(paths: &HostPaths, group: u32) -> Vec<String> {
    let dir = paths.sysfs.join("kernel/iommu_groups").join(group.to_string()).join("devices");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut blockers: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let driver = driver_of(&e.path())?;
            (!keeps_group_viable(&driver)).then(|| format!("{name} (bound to {driver})"))
        })
        .collect();
    blockers.sort();
    blockers
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A scratch directory removed on drop.
    pub(crate) struct Scratch(pub(crate) PathBuf);

    impl Scratch {
        pub(crate) fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "virtio-pmd-test-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Adds a PCI function to a fake sysfs: ids, optional driver, optional IOMMU group.
    pub(crate) fn fake_device(
        root: &Path,
        bdf: &str,
        vendor: u16,
        device: u16,
        driver: Option<&str>,
        group: Option<u32>,
    ) {
        let paths = HostPaths::under(root);
        let real = paths.sysfs.join("devices/pci0000:00").join(bdf);
        fs::create_dir_all(&real).unwrap();
        fs::write(real.join("vendor"), format!("{vendor:#06x}\n")).unwrap();
        fs::write(real.join("device"), format!("{device:#06x}\n")).unwrap();
        if let Some(driver) = driver {
            let d = paths.sysfs.join("bus/pci/drivers").join(driver);
            fs::create_dir_all(&d).unwrap();
            symlink(&d, real.join("driver")).unwrap();
        }
        if let Some(group) = group {
            let g = paths.sysfs.join("kernel/iommu_groups").join(group.to_string());
            fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&g, real.join("iommu_group")).unwrap();
            symlink(&real, g.join("devices").join(bdf)).unwrap();
        }
        let devices = paths.sysfs.join("bus/pci/devices");
        fs::create_dir_all(&devices).unwrap();
        symlink(&real, devices.join(bdf)).unwrap();
    }

    #[test]
    fn addresses_are_normalised_or_refused() {
        assert_eq!(normalize_bdf("00:03.0").unwrap(), "0000:00:03.0");
        assert_eq!(normalize_bdf("0000:AF:1f.7").unwrap(), "0000:af:1f.7");
        for bad in ["", "0000:00:03", "00:20.0", "00:03.8", "0:00:03.0", "eth0", "0000:00:03.0:1"] {
            let err = normalize_bdf(bad).unwrap_err();
            assert!(matches!(err, Error::PciDeviceNotFound { .. }), "{bad}");
            assert!(err.to_string().contains("expected DDDD:BB:DD.F"), "{err}");
        }
    }

    #[test]
    fn each_mistake_gets_its_own_error() {
        let scratch = Scratch::new("sysfs");
        let root = &scratch.0;
        let paths = HostPaths::under(root);
        fake_device(root, "0000:00:03.0", 0x1af4, 0x1041, Some("vfio-pci"), Some(7));
        fake_device(root, "0000:00:04.0", 0x1af4, 0x1041, Some("virtio-pci"), Some(8));
        fake_device(root, "0000:00:05.0", 0x1af4, 0x1041, None, Some(9));
        fake_device(root, "0000:00:06.0", 0x8086, 0x100e, Some("e1000"), Some(10));
        fake_device(root, "0000:00:07.0", 0x1af4, 0x1000, Some("vfio-pci"), None);
        fake_device(root, "0000:00:08.0", 0x1af4, 0x1042, Some("vfio-pci"), Some(11));

        let ok = inspect(&paths, "00:03.0").unwrap();
        assert_eq!((ok.bdf.as_str(), ok.vendor, ok.device, ok.group), ("0000:00:03.0", 0x1af4, 0x1041, 7));

        let err = inspect(&paths, "0000:00:09.0").unwrap_err();
        assert!(matches!(err, Error::PciDeviceNotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains("0000:00:09.0") && msg.contains("does not exist") && msg.contains("lspci"), "{msg}");

        let msg = inspect(&paths, "0000:00:04.0").unwrap_err().to_string();
        assert!(msg.contains("bound to virtio-pci") && msg.contains("scripts/bind-vfio.sh 0000:00:04.0"), "{msg}");
        let msg = inspect(&paths, "0000:00:05.0").unwrap_err().to_string();
        assert!(msg.contains("no driver bound") && msg.contains("scripts/bind-vfio.sh"), "{msg}");

        let err = inspect(&paths, "0000:00:06.0").unwrap_err();
        assert!(matches!(err, Error::NotVirtioNet { vendor: 0x8086, device_id: 0x100e, .. }), "{err}");
        let err = inspect(&paths, "0000:00:08.0").unwrap_err();
        assert!(err.to_string().contains("1af4:1042, not a virtio-net"), "{err}");

        let err = inspect(&paths, "0000:00:07.0").unwrap_err();
        assert!(matches!(err, Error::IommuUnavailable { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("intel_iommu=on") && msg.contains("uio_pci_generic") && msg.contains("--no-iommu"),
            "{msg}"
        );
    }

    #[test]
    fn group_blockers_name_devices_with_host_drivers() {
        let scratch = Scratch::new("group");
        let root = &scratch.0;
        let paths = HostPaths::under(root);
        fake_device(root, "0000:01:00.0", 0x1af4, 0x1041, Some("vfio-pci"), Some(3));
        // Another function of the same group, with a host driver, and a bridge.
        fake_device(root, "0000:01:00.1", 0x1af4, 0x1041, Some("virtio-pci"), None);
        fake_device(root, "0000:00:1c.0", 0x8086, 0x2918, Some("pcieport"), None);
        let g = paths.sysfs.join("kernel/iommu_groups/3/devices");
        symlink(paths.device_dir("0000:01:00.1"), g.join("0000:01:00.1")).unwrap();
        symlink(paths.device_dir("0000:00:1c.0"), g.join("0000:00:1c.0")).unwrap();
        assert_eq!(group_blockers(&paths, 3), vec!["0000:01:00.1 (bound to virtio-pci)".to_string()]);
        assert!(group_blockers(&paths, 4).is_empty());
    }
}
