//! The VFIO transport: virtio-net PCI functions owned by this process, through `vfio-pci`, with
//! one IOMMU container shared by every port.
//!
//! Use, in this order (the kernel sets the IOMMU type only when the first group attaches, so the
//! valid IOVA ranges are known only after the first port is open):
//!
//! ```no_run
//! use std::sync::Arc;
//! use virtio_pmd::mem::{DmaRegion, HugePages};
//! use virtio_pmd::transport::vfio::{Container, VfioPciTransport};
//! use virtio_pmd::transport::Transport;
//! # fn main() -> virtio_pmd::Result<()> {
//! let container = Container::open()?;                                   // 1. /dev/vfio/vfio
//! let mut p0 = VfioPciTransport::open(&container, "0000:00:03.0")?;    // 2. every port
//! let mut p1 = VfioPciTransport::open(&container, "0000:00:04.0")?;
//! let iova = container.iova_allocator()?;                               // 3. IOVAs: = VA when valid
//! let pool = Arc::new(DmaRegion::new("pool", 64 << 20, HugePages::Preferred, &iova)?);
//! container.map_dma(&pool)?;                                            // 4. once, for all ports
//! p0.map_dma(&pool)?;                                                   //    (again: a no-op)
//! // then per port: reset, ACKNOWLEDGE | DRIVER, features, FEATURES_OK, setup_queue, DRIVER_OK
//! # Ok(()) }
//! ```
//!
//! Errors name the problem and the fix: a missing PCI address, a function that is not virtio-net,
//! one not bound to vfio-pci (with the driver it has), a group held by another process or not
//! viable (with the devices in the way), no IOMMU, a legacy-only device.
//!
//! Without an IOMMU, [`VfioNoIommuTransport`] drives a function through VFIO's no-IOMMU mode
//! (physical addresses; only on request).
//!
//! What `vfio-ioctls` 0.10 does not do is done here: `VFIO_IOMMU_GET_INFO` with its capability
//! chain, group status, region info and checked config-space access (`sys`, `iommu`).

mod container;
mod device;
mod iommu;
mod noiommu;
mod sys;
pub(crate) mod sysfs;

pub use container::Container;
pub use device::{PciFunctionInfo, VfioPciTransport};
pub use iommu::{parse_info as parse_iommu_info, IommuInfo};
pub use noiommu::VfioNoIommuTransport;
pub use sysfs::{inspect as inspect_sysfs, normalize_bdf, HostPaths, SysfsDevice};
