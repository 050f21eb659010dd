//! [`VfioPciTransport`]: one virtio-net PCI function owned by this process through VFIO.
//!
//! Opening checks, in order, and stops at the first problem with an error that says what to do:
//! the address (sysfs), virtio-net ids, the vfio-pci binding, the IOMMU group, whether the group
//! is free (`/dev/vfio/<group>` busy means another process holds it) and viable; only then does
//! `vfio-ioctls` attach the group and hand out the device fd. Then: configuration space through
//! the device fd (`pread`/`pwrite`, errors reported), the capability walk, Memory Space and Bus
//! Master enabled and read back, and `mmap` of each BAR that holds a virtio structure.
//!
//! Lifetimes: the `VfioDevice` and our registration in the container live in one `Arc`
//! (`OpenDevice`); each BAR mapping holds that `Arc` and unmaps before releasing it; every
//! register window (the transport's views, each queue notifier) holds its BAR mapping. So the
//! BARs are always unmapped before the device fd closes (otherwise the kernel keeps the device
//! busy and the group cannot be detached), whatever is dropped first.
//!
//! `vfio-ioctls`' `VfioDevice::drop` re-reads `<sysfs path>/iommu_group` and `unwrap`s the
//! result: if the function was removed meanwhile (hot-unplug, `echo 1 > .../remove`, which waits
//! for us to close the device and then deletes its sysfs directory) that would panic. So the path
//! given to `vfio-ioctls` is a private directory named after the BDF holding only an
//! `iommu_group` link (`$TMPDIR/virtio-pmd-<pid>-<n>/<bdf>/iommu_group`), which stays valid until
//! the device has dropped, and is removed after it.
#![allow(unsafe_code)]

use std::any::Any;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_GROUP_FLAGS_VIABLE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioError, VfioOps};

use super::container::Container;
use super::sys;
use super::sysfs::{self, HostPaths, SysfsDevice};
use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::pci::config;
use crate::transport::pci::{self, caps, CapList, ConfigSpace, Mmio, RegionMapping, VirtioLayout, VirtioPci};
use crate::transport::Transport;

/// What opening found out about the function.
#[derive(Clone, Debug)]
pub struct PciFunctionInfo {
    /// PCI address, normalised.
    pub bdf: String,
    /// IOMMU group.
    pub group: u32,
    /// Vendor id (from configuration space).
    pub vendor: u16,
    /// Device id (from configuration space).
    pub device_id: u16,
    /// The command register after Memory Space and Bus Master were enabled.
    pub command: u16,
    /// Every capability found.
    pub caps: CapList,
    /// The virtio structures in use.
    pub layout: VirtioLayout,
    /// The mapped BARs: (index, size in bytes).
    pub bars: Vec<(u8, u64)>,
}

/// Removes this port from its container's list when dropped.
#[derive(Debug)]
struct Registration {
    container: Arc<Container>,
    bdf: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.container.unregister(&self.bdf);
    }
}

/// The private `<dir>/<bdf>/iommu_group` link handed to `vfio-ioctls` (see the module docs).
#[derive(Debug)]
struct ShadowSysfs {
    root: PathBuf,
}

impl ShadowSysfs {
    fn create(dev: &SysfsDevice) -> std::io::Result<(Self, PathBuf)> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "virtio-pmd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let shadow = Self { root };
        let device_dir = shadow.root.join(&dev.bdf);
        fs::create_dir_all(&device_dir)?;
        symlink(fs::read_link(dev.dir.join("iommu_group"))?, device_dir.join("iommu_group"))?;
        Ok((shadow, device_dir))
    }
}

impl Drop for ShadowSysfs {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.root) {
            tracing::debug!("removing {}: {e}", self.root.display());
        }
    }
}

/// The open device and what must outlive it, in drop order. Each BAR mapping holds an `Arc` of
/// it and unmaps before letting go, so the device fd closes only after every BAR is unmapped.
struct OpenDevice {
    /// The device fd; its drop detaches the group from the container when it is the last user.
    device: VfioDevice,
    /// The path `device` was opened with; removed after `device` has dropped.
    _shadow: Option<ShadowSysfs>,
    /// Last: this port's entry in the container, and the container itself.
    _registration: Registration,
}

/// The function's configuration space, through the VFIO config region of the device fd.
struct VfioConfig<'a, D: AsRawFd> {
    device: &'a D,
    region: vfio_region_info,
    bdf: &'a str,
}

impl<D: AsRawFd> VfioConfig<'_, D> {
    fn check(&self, offset: u16, len: usize) -> Result<u64> {
        if u64::from(offset) + len as u64 > self.region.size {
            return Err(Error::InvalidConfig(format!(
                "{}: PCI config access of {len} bytes at {offset:#x} is past its {:#x} bytes",
                self.bdf, self.region.size
            )));
        }
        Ok(self.region.offset + u64::from(offset))
    }
}

impl<D: AsRawFd> ConfigSpace for VfioConfig<'_, D> {
    fn read(&self, offset: u16, buf: &mut [u8]) -> Result<()> {
        let at = self.check(offset, buf.len())?;
        sys::pread_exact(self.device, buf, at).map_err(|source| Error::Io {
            what: format!("{}: reading PCI config space at {offset:#x}", self.bdf),
            source,
        })
    }

    fn write(&self, offset: u16, data: &[u8]) -> Result<()> {
        let at = self.check(offset, data.len())?;
        sys::pwrite_all(self.device, data, at).map_err(|source| Error::Io {
            what: format!("{}: writing PCI config space at {offset:#x}", self.bdf),
            source,
        })
    }
}

/// Opens `/dev/vfio/<group>` ourselves, before `vfio-ioctls` does, to tell "held by another
/// process" (EBUSY) and "not viable" apart from other failures. The file is closed again at once.
fn probe_group(paths: &HostPaths, dev: &SysfsDevice) -> Result<()> {
    let node = paths.group_node(dev.group);
    let file = fs::OpenOptions::new().read(true).write(true).open(&node).map_err(|source| {
        if source.raw_os_error() == Some(libc::EBUSY) {
            return Error::VfioGroupBusy { device: dev.bdf.clone(), group: dev.group };
        }
        let hint = match source.kind() {
            std::io::ErrorKind::PermissionDenied => ": run as root, or give this user the VFIO device nodes",
            std::io::ErrorKind::NotFound => {
                ": the device is bound to vfio-pci, so it should exist; is devtmpfs mounted on /dev?"
            }
            _ => "",
        };
        Error::Io { what: format!("{}: opening {}{hint}", dev.bdf, node.display()), source }
    })?;
    let flags = sys::group_status(&file).map_err(|source| Error::Io {
        what: format!("{}: VFIO_GROUP_GET_STATUS on {}", dev.bdf, node.display()),
        source,
    })?;
    if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(not_viable(paths, dev));
    }
    Ok(())
}

fn not_viable(paths: &HostPaths, dev: &SysfsDevice) -> Error {
    let blockers = sysfs::group_blockers(paths, dev.group);
    Error::VfioGroupNotViable {
        device: dev.bdf.clone(),
        group: dev.group,
        blockers: if blockers.is_empty() {
            format!("see {}", paths.sysfs.join(format!("kernel/iommu_groups/{}/devices", dev.group)).display())
        } else {
            blockers.join(", ")
        },
    }
}

/// Turns a `vfio-ioctls` error from opening the device into ours.
fn device_error(paths: &HostPaths, dev: &SysfsDevice, err: VfioError) -> Error {
    let group = dev.group;
    match err {
        VfioError::OpenGroup(e, _) if e.raw_os_error() == Some(libc::EBUSY) => {
            Error::VfioGroupBusy { device: dev.bdf.clone(), group }
        }
        VfioError::GroupViable => not_viable(paths, dev),
        VfioError::ContainerSetIOMMU(e) => Error::IommuUnavailable {
            reason: format!(
                "setting the type1v2 IOMMU on the container for group {group} failed ({e}): check that \
                 vfio_iommu_type1 is loaded and the IOMMU is on"
            ),
        },
        source => {
            let what = match &source {
                VfioError::GroupSetContainer => format!("attaching IOMMU group {group} to the container"),
                VfioError::GroupGetDeviceFD(_) => format!("getting the device fd from IOMMU group {group}"),
                _ => "opening the device through VFIO".to_owned(),
            };
            Error::Vfio { device: dev.bdf.clone(), what, source }
        }
    }
}

/// Whether a BAR's region can be memory-mapped read-write.
fn mappable(info: &vfio_region_info) -> bool {
    let wanted = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    info.flags & wanted == wanted && info.size > 0
}

/// Reads the function's identity and capabilities through the VFIO device fd `device`, enables
/// Memory Space and Bus Master, maps each BAR that holds a virtio structure (each mapping keeps
/// `keep`, the device's owner, alive) and sets up the virtio PCI views. Shared by the IOMMU and
/// the no-IOMMU transports: from the device fd on, VFIO is the same.
pub(super) fn map_function(
    device: &impl AsRawFd,
    keep: Arc<dyn Any + Send + Sync>,
    bdf: &str,
    group: u32,
    expected: (u16, u16),
) -> Result<(VirtioPci, PciFunctionInfo)> {
    let io_error = |what: String, source| Error::Io { what: format!("{bdf}: {what}"), source };
    let config_region = sys::region_info(device, VFIO_PCI_CONFIG_REGION_INDEX)
        .map_err(|e| io_error("VFIO_DEVICE_GET_REGION_INFO for the config space".into(), e))?;
    let cfg = VfioConfig { device, region: config_region, bdf };
    let vendor = cfg.read_u16(config::VENDOR_ID)?;
    let device_id = cfg.read_u16(config::DEVICE_ID)?;
    if (vendor, device_id) != expected {
        return Err(Error::Transport(format!(
            "{bdf}: configuration space says {vendor:04x}:{device_id:04x}, sysfs says {:04x}:{:04x}",
            expected.0, expected.1
        )));
    }
    let caps = caps::walk(&cfg, bdf)?;
    let bar_info: Vec<Option<vfio_region_info>> = (0..6).map(|i| sys::region_info(device, i).ok()).collect();
    let layout = caps.layout(bdf, |cap| {
        bar_info[usize::from(cap.bar)]
            .filter(mappable)
            .is_some_and(|info| u64::from(cap.offset) + cap.min_len() <= info.size)
    })?;
    let command = pci::enable_memory_and_bus_master(&cfg, bdf)?;

    let mut windows: Vec<(u8, Mmio)> = Vec::new();
    for bar in layout.bars() {
        // The layout only holds capabilities whose BAR passed `mappable`.
        let Some(info) = bar_info[usize::from(bar)] else {
            continue;
        };
        let len =
            usize::try_from(info.size).map_err(|_| Error::InvalidConfig(format!("{bdf}: BAR {bar} too large")))?;
        let mapping = RegionMapping::new(device, info.offset, len, keep.clone())
            .map_err(|e| io_error(format!("mmap of BAR {bar} ({len:#x} bytes) through the device fd"), e))?;
        windows.push((bar, mapping.window()));
    }
    let info = PciFunctionInfo {
        bdf: bdf.to_owned(),
        group,
        vendor,
        device_id,
        command,
        caps,
        layout,
        bars: windows.iter().map(|(n, w)| (*n, w.len() as u64)).collect(),
    };
    let pci = VirtioPci::new(bdf, &info.layout, |n| windows.iter().find(|(b, _)| *b == n).map(|(_, w)| w.clone()))?;
    Ok((pci, info))
}

/// A virtio-net PCI function driven through VFIO: implements [`Transport`].
///
/// ```no_run
/// use virtio_pmd::transport::vfio::{Container, VfioPciTransport};
/// # fn main() -> virtio_pmd::Result<()> {
/// let container = Container::open()?;
/// let port0 = VfioPciTransport::open(&container, "0000:00:03.0")?;
/// let port1 = VfioPciTransport::open(&container, "0000:00:04.0")?;
/// // Only now (every group attached) is the IOMMU's IOVA space known:
/// let iova = container.iova_allocator()?;
/// # Ok(()) }
/// ```
pub struct VfioPciTransport {
    /// First, so that it drops first: its reset stops the device's DMA while the container's
    /// mappings and the device fd are still there. Queue notifiers may outlive the transport;
    /// they keep the BAR mappings (not the device's state) alive.
    pci: VirtioPci,
    info: PciFunctionInfo,
    container: Arc<Container>,
    device: Arc<OpenDevice>,
}

impl std::fmt::Debug for VfioPciTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciTransport").field("info", &self.info).finish_non_exhaustive()
    }
}

impl VfioPciTransport {
    /// Opens the function at `bdf` (`0000:00:03.0` or `00:03.0`) in `container`.
    pub fn open(container: &Arc<Container>, bdf: &str) -> Result<Self> {
        Self::open_with(container, bdf, &HostPaths::default())
    }

    /// [`open`](Self::open), with the checks made before any VFIO call (sysfs, the group node)
    /// looking in `paths`. `vfio-ioctls` itself always opens `/dev/vfio/<group>`, so anything but
    /// [`HostPaths::default`] is only good for tests of those checks.
    pub fn open_with(container: &Arc<Container>, bdf: &str, paths: &HostPaths) -> Result<Self> {
        let dev = sysfs::inspect(paths, bdf)?;
        let bdf = dev.bdf.clone();
        let group_shared = container.register(&bdf, dev.group)?;
        let registration = Registration { container: container.clone(), bdf: bdf.clone() };
        if !group_shared {
            probe_group(paths, &dev)?;
        }
        let (shadow, sysfs_path) = match ShadowSysfs::create(&dev) {
            Ok((shadow, path)) => (Some(shadow), path),
            Err(e) => {
                tracing::warn!(
                    "{bdf}: cannot create a private sysfs link in {} ({e}); using {} (vfio-ioctls may panic on \
                     close if the device is removed meanwhile)",
                    std::env::temp_dir().display(),
                    dev.dir.display()
                );
                (None, dev.dir.clone())
            }
        };
        let ops: Arc<dyn VfioOps> = container.vfio().clone();
        let device = VfioDevice::new(&sysfs_path, ops, false).map_err(|e| device_error(paths, &dev, e))?;
        let open = Arc::new(OpenDevice { device, _shadow: shadow, _registration: registration });
        container.refresh_iommu_info()?;

        let expected = (dev.vendor, dev.device);
        let (pci, info) = map_function(&open.device, open.clone(), &bdf, dev.group, expected)?;
        tracing::debug!("{bdf}: open, group {}, {:?}", info.group, info.layout);
        Ok(Self { pci, info, container: container.clone(), device: open })
    }

    /// What opening found: ids, group, capabilities, mapped BARs.
    pub fn info(&self) -> &PciFunctionInfo {
        &self.info
    }

    /// The container this port's DMA goes through.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// The virtio PCI structures (common configuration view, ISR window, ...).
    pub fn pci(&self) -> &VirtioPci {
        &self.pci
    }

    /// Reads the PCI command register again (e.g. to check Bus Master is still set).
    pub fn command_register(&self) -> Result<u16> {
        let region = sys::region_info(&self.device.device, VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|source| Error::Io { what: format!("{}: config region info", self.info.bdf), source })?;
        VfioConfig { device: &self.device.device, region, bdf: &self.info.bdf }.read_u16(config::COMMAND)
    }
}

impl Transport for VfioPciTransport {
    fn name(&self) -> &str {
        &self.info.bdf
    }

    fn requires_access_platform(&self) -> bool {
        true
    }

    pci::delegate_to_virtio_pci!();

    fn map_dma(&mut self, region: &Arc<DmaRegion>) -> Result<()> {
        self.container.map_dma(region)
    }
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::tests::{fake_device, Scratch};
    use super::*;

    #[test]
    fn sysfs_errors_come_before_any_vfio_call() {
        // Opening a container needs /dev/vfio/vfio, which the host has not: the sysfs checks are
        // exercised through `sysfs::inspect`, which `open_with` calls first, on a fake tree.
        let scratch = Scratch::new("open");
        let paths = HostPaths::under(&scratch.0);
        fake_device(&scratch.0, "0000:00:04.0", 0x1af4, 0x1041, Some("virtio-pci"), Some(4));
        let err = sysfs::inspect(&paths, "0000:00:03.0").unwrap_err();
        assert!(err.to_string().starts_with("PCI device 0000:00:03.0 not found"), "{err}");
        let err = sysfs::inspect(&paths, "00:04.0").unwrap_err();
        assert!(matches!(err, Error::NotBoundToVfio { .. }), "{err}");
    }

    #[test]
    fn group_probe_reports_missing_nodes_with_a_hint() {
        let scratch = Scratch::new("probe");
        let paths = HostPaths::under(&scratch.0);
        fake_device(&scratch.0, "0000:00:03.0", 0x1af4, 0x1041, Some("vfio-pci"), Some(5));
        let dev = sysfs::inspect(&paths, "0000:00:03.0").unwrap();
        let err = probe_group(&paths, &dev).unwrap_err().to_string();
        assert!(err.contains("dev/vfio/5") && err.contains("devtmpfs"), "{err}");
        // A node that is not a VFIO group: the status ioctl fails with a clear context.
        fs::create_dir_all(&paths.dev_vfio).unwrap();
        fs::write(paths.group_node(5), b"").unwrap();
        let err = probe_group(&paths, &dev).unwrap_err().to_string();
        assert!(err.contains("VFIO_GROUP_GET_STATUS"), "{err}");
    }

    #[test]
    fn shadow_sysfs_link_names_the_group_and_is_removed() {
        let scratch = Scratch::new("shadow");
        let paths = HostPaths::under(&scratch.0);
        fake_device(&scratch.0, "0000:00:03.0", 0x1af4, 0x1041, Some("vfio-pci"), Some(12));
        let dev = sysfs::inspect(&paths, "0000:00:03.0").unwrap();
        let (shadow, path) = ShadowSysfs::create(&dev).unwrap();
        assert_eq!(path.file_name().unwrap(), "0000:00:03.0");
        let target = fs::read_link(path.join("iommu_group")).unwrap();
        assert_eq!(target.file_name().unwrap(), "12");
        let root = shadow.root.clone();
        drop(shadow);
        assert!(!root.exists());
    }
}
