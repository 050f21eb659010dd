//! [`VfioNoIommuTransport`]: a virtio-net PCI function through VFIO's no-IOMMU mode, for machines
//! without an IOMMU whose kernel has it (`CONFIG_VFIO_NOIOMMU`, the vfio module loaded with
//! `enable_unsafe_noiommu_mode=1`; Debian's kernel is built without it).
//!
//! Without an IOMMU the device can reach all memory and takes physical addresses. So, like the
//! `uio_pci_generic` transport, this one is used only when asked for by name, logs a warning
//! when it opens, and takes only physical-address DMA regions
//! ([`IovaAllocator::physical`](crate::mem::IovaAllocator::physical)).
//!
//! What differs from the IOMMU case, and why `vfio-ioctls` is not used for it: the group node
//! is `/dev/vfio/noiommu-<group>`, the container gets IOMMU type `VFIO_NOIOMMU_IOMMU` (8), and
//! there is no DMA mapping. Each port has its own container. From the device fd on (config
//! space, BAR mappings, the virtio structures) it is the IOMMU transport's code.
//!
//! Lifetimes: the device, group and container fds live in one `Arc`, closed in that order; every
//! BAR mapping holds it, so the BARs are unmapped before the device fd closes.

use std::fs::{self, File, OpenOptions};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_GROUP_FLAGS_VIABLE;

use super::device::{map_function, PciFunctionInfo};
use super::sys;
use super::sysfs::{self, HostPaths};
use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::transport::pci::{self, VirtioPci};
use crate::transport::{require_physical, Transport};

/// What to do when the kernel's VFIO has no no-IOMMU mode.
const ENABLE_HINT: &str = "load the vfio module with enable_unsafe_noiommu_mode=1, from a kernel built with \
                           CONFIG_VFIO_NOIOMMU (Debian's is not: scripts/vm/build-vfio-noiommu.sh builds the module \
                           for the harness guest), or bind the device to uio_pci_generic instead";

/// The fds, in drop order: device, group (leaving the container), container.
#[derive(Debug)]
struct NoIommuDevice {
    device: OwnedFd,
    _group: File,
    _container: File,
}

/// A virtio-net PCI function driven through VFIO without an IOMMU: implements [`Transport`],
/// with physical addresses for DMA.
pub struct VfioNoIommuTransport {
    /// First, so that it drops first: its reset stops the device's DMA while the device fd is
    /// still open.
    pci: VirtioPci,
    info: PciFunctionInfo,
    _device: Arc<NoIommuDevice>,
}

impl std::fmt::Debug for VfioNoIommuTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioNoIommuTransport").field("info", &self.info).finish_non_exhaustive()
    }
}

fn open_rw(path: &std::path::Path, hint: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}{hint}: {e}", path.display())))
}

impl VfioNoIommuTransport {
    /// Opens the function at `bdf`, bound to vfio-pci in no-IOMMU mode. Needs root
    /// (CAP_SYS_RAWIO opens a no-IOMMU group).
    pub fn open(bdf: &str) -> Result<Self> {
        Self::open_with(bdf, &HostPaths::default())
    }

    /// [`open`](Self::open), looking in `paths` for sysfs and the VFIO nodes (tests).
    pub fn open_with(bdf: &str, paths: &HostPaths) -> Result<Self> {
        let function = sysfs::identify(paths, bdf)?;
        let bdf = function.bdf.clone();
        match sysfs::driver_of(&function.dir) {
            Some(driver) if driver.contains("vfio") => {}
            other => {
                return Err(Error::NotBoundToVfio {
                    device: bdf,
                    driver: other.map_or("no driver bound".into(), |d| format!("bound to {d}")),
                })
            }
        }
        let group = fs::read_link(function.dir.join("iommu_group"))
            .ok()
            .and_then(|link| link.file_name()?.to_str()?.parse::<u32>().ok())
            .ok_or_else(|| Error::IommuUnavailable {
                reason: format!(
                    "{bdf} is bound to vfio-pci but has no IOMMU group: VFIO's no-IOMMU mode is off: {ENABLE_HINT}"
                ),
            })?;
        let node = paths.dev_vfio.join(format!("noiommu-{group}"));
        if !node.exists() {
            return Err(Error::IommuUnavailable {
                reason: format!(
                    "{bdf}: {} does not exist: IOMMU group {group} is a real one (then open the device with \
                     VfioPciTransport, not in no-IOMMU mode), or VFIO's no-IOMMU mode is off: {ENABLE_HINT}",
                    node.display()
                ),
            });
        }
        let io_error = |what: &str, source| Error::Io { what: format!("{bdf}: {what}"), source };
        let container = open_rw(&paths.dev_vfio.join("vfio"), "").map_err(|e| io_error("the VFIO container", e))?;
        let version = sys::api_version(&container).map_err(|e| io_error("VFIO_GET_API_VERSION", e))?;
        if version != sys::API_VERSION {
            return Err(Error::Transport(format!("{bdf}: VFIO API version {version}, not {}", sys::API_VERSION)));
        }
        if !sys::check_extension(&container, sys::NOIOMMU_IOMMU).map_err(|e| io_error("VFIO_CHECK_EXTENSION", e))? {
            return Err(Error::IommuUnavailable {
                reason: format!("{bdf}: the kernel's VFIO offers no VFIO_NOIOMMU_IOMMU: {ENABLE_HINT}"),
            });
        }
        let group_file = OpenOptions::new().read(true).write(true).open(&node).map_err(|source| {
            if source.raw_os_error() == Some(libc::EBUSY) {
                return Error::VfioGroupBusy { device: bdf.clone(), group };
            }
            io_error(&format!("opening {} (needs root: CAP_SYS_RAWIO)", node.display()), source)
        })?;
        let flags = sys::group_status(&group_file).map_err(|e| io_error("VFIO_GROUP_GET_STATUS", e))?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::VfioGroupNotViable {
                device: bdf.clone(),
                group,
                blockers: sysfs::group_blockers(paths, group).join(", "),
            });
        }
        sys::group_set_container(&group_file, &container).map_err(|e| io_error("VFIO_GROUP_SET_CONTAINER", e))?;
        sys::set_iommu(&container, sys::NOIOMMU_IOMMU).map_err(|e| io_error("VFIO_SET_IOMMU (no-IOMMU)", e))?;
        let device = sys::group_device_fd(&group_file, &bdf).map_err(|e| io_error("VFIO_GROUP_GET_DEVICE_FD", e))?;
        let open = Arc::new(NoIommuDevice { device, _group: group_file, _container: container });
        let (pci, info) = map_function(&open.device, open.clone(), &bdf, group, (function.vendor, function.device))?;
        tracing::warn!(
            "{bdf}: opened through VFIO's no-IOMMU mode (/dev/vfio/noiommu-{group}) without an IOMMU: the device can \
             read and write ALL of this machine's memory, and is given physical addresses (use this only in a VM \
             without a vIOMMU, on a device you trust)"
        );
        Ok(Self { pci, info, _device: open })
    }

    /// What opening found: ids, group, capabilities, mapped BARs.
    pub fn info(&self) -> &PciFunctionInfo {
        &self.info
    }

    /// The virtio PCI structures (common configuration view, ISR window, ...).
    pub fn pci(&self) -> &VirtioPci {
        &self.pci
    }
}

impl Transport for VfioNoIommuTransport {
    fn name(&self) -> &str {
        &self.info.bdf
    }

    pci::delegate_to_virtio_pci!();

    /// Nothing to map without an IOMMU; only a physical-address region can be given.
    fn map_dma(&mut self, region: &Arc<DmaRegion>) -> Result<()> {
        require_physical(&self.info.bdf, "is in VFIO's no-IOMMU mode", region)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::super::sysfs::tests::{fake_device, Scratch};
    use super::*;

    #[test]
    fn each_missing_piece_of_no_iommu_mode_is_named() {
        let scratch = Scratch::new("noiommu");
        let paths = HostPaths::under(&scratch.0);
        fake_device(&scratch.0, "0000:00:03.0", 0x1af4, 0x1041, Some("vfio-pci"), Some(0));
        fake_device(&scratch.0, "0000:00:04.0", 0x1af4, 0x1041, Some("uio_pci_generic"), None);
        fake_device(&scratch.0, "0000:00:05.0", 0x1af4, 0x1041, Some("vfio-pci"), None);
        let err = VfioNoIommuTransport::open_with("0000:00:04.0", &paths).unwrap_err();
        assert!(matches!(err, Error::NotBoundToVfio { .. }) && err.to_string().contains("uio_pci_generic"), "{err}");
        let msg = VfioNoIommuTransport::open_with("0000:00:05.0", &paths).unwrap_err().to_string();
        assert!(msg.contains("no IOMMU group") && msg.contains("enable_unsafe_noiommu_mode=1"), "{msg}");
        // Group 0 without a noiommu-0 node: a real group, or the mode is off.
        let msg = VfioNoIommuTransport::open_with("0000:00:03.0", &paths).unwrap_err().to_string();
        assert!(msg.contains("noiommu-0 does not exist") && msg.contains("CONFIG_VFIO_NOIOMMU"), "{msg}");
        // Nodes that are not VFIO's: the first ioctl fails, named.
        fs::create_dir_all(&paths.dev_vfio).unwrap();
        fs::write(paths.dev_vfio.join("noiommu-0"), b"").unwrap();
        symlink(paths.dev_vfio.join("noiommu-0"), paths.dev_vfio.join("vfio")).unwrap();
        let msg = VfioNoIommuTransport::open_with("0000:00:03.0", &paths).unwrap_err().to_string();
        assert!(msg.contains("VFIO_GET_API_VERSION"), "{msg}");
    }
}
