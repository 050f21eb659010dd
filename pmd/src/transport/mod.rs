//! How a virtio device is reached: the [`Transport`] trait, and its implementations over VFIO
//! (a PCI function owned by this process), `uio_pci_generic` (the same, without an IOMMU: physical
//! addresses) and vhost-user (a backend process over a socket).
//!
//! Only the transport knows which one it is. The net device, the rings and the mempool see
//! features, status, device configuration, queue set-up, a [`Notify`] per queue, and DMA regions
//! the device can reach at their IOVA.
//!
//! Aiming the device at memory is `unsafe`: [`Transport::setup_queue`] (and the PCI
//! `CommonConfig` address setters below it) take raw device addresses whose memory the caller
//! vouches for. The safe surface is the port and its queues (`crate::net`).
#![allow(unsafe_code)]

pub mod pci;
pub mod uio;
pub mod vfio;
pub mod vhost_user;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::features::Features;

/// Device addresses of the three areas of a virtqueue ("Virtqueues", 2.6): descriptor area,
/// driver area (split: available ring; packed: driver event suppression) and device area
/// (split: used ring; packed: device event suppression).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAddresses {
    /// Descriptor area.
    pub desc: u64,
    /// Driver area.
    pub driver: u64,
    /// Device area.
    pub device: u64,
}

/// Which ring layout a queue uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingFormat {
    /// "Packed Virtqueues" (VIRTIO_F_RING_PACKED).
    Packed,
    /// "Split Virtqueues".
    Split,
}

impl RingFormat {
    /// `packed` or `split`, as the logs, reports and statistics lines write it.
    pub fn name(self) -> &'static str {
        match self {
            RingFormat::Packed => "packed",
            RingFormat::Split => "split",
        }
    }
}

/// Opens the virtio-net PCI function `bdf` of a machine without an IOMMU, giving its device
/// physical addresses: through VFIO's no-IOMMU mode when it is bound to vfio-pci, through
/// `uio_pci_generic` otherwise (whose error says how to bind it when it is bound to neither).
/// Each logs a warning that the device can reach all memory. DMA memory for it must come from
/// [`IovaAllocator::physical`](crate::mem::IovaAllocator::physical).
pub fn open_without_iommu(bdf: &str) -> Result<Box<dyn Transport>> {
    open_without_iommu_with(bdf, &vfio::HostPaths::default())
}

/// [`open_without_iommu`], looking in `paths` for sysfs and the VFIO nodes (tests).
pub fn open_without_iommu_with(bdf: &str, paths: &vfio::HostPaths) -> Result<Box<dyn Transport>> {
    let function = vfio::sysfs::identify(paths, bdf)?;
    if vfio::sysfs::driver_of(&function.dir).is_some_and(|driver| driver.contains("vfio")) {
        return Ok(Box::new(vfio::VfioNoIommuTransport::open_with(bdf, paths)?));
    }
    Ok(Box::new(uio::UioPciTransport::open_with(bdf, paths)?))
}

/// `Transport::map_dma` of a transport without an IOMMU (its device `name` is `how`): there is
/// nothing to map, and only a physical-address region can be given, since the device takes
/// every address for a physical one.
pub(crate) fn require_physical(name: &str, how: &str, region: &DmaRegion) -> Result<()> {
    if region.is_physical() {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "{name} {how}, without an IOMMU: it takes DMA addresses for physical ones, but this DMA region's IOVA \
         ({:#x}) is not its physical address: create the mempool and the ports with IovaAllocator::physical()",
        region.iova()
    )))
}

/// Sends an available-buffer notification ("kick") for one queue. Called at most once per burst,
/// and only when the device's event suppression asks for it, so an indirect call is cheap here.
pub trait Notify: Send {
    /// Notifies the device that `queue` has new available buffers.
    fn notify(&self);
}

/// The operations the virtio-net device needs from a transport.
///
/// Telling a device where its rings are takes `unsafe`, as do the PCI address setters below it:
///
/// ```compile_fail,E0133
/// use virtio_pmd::transport::{QueueAddresses, RingFormat, Transport};
/// fn aim(t: &mut dyn Transport) {
///     let _ = t.setup_queue(0, 256, RingFormat::Split, QueueAddresses { desc: 0, driver: 0, device: 0 });
/// }
/// ```
///
/// ```compile_fail,E0133
/// use virtio_pmd::transport::vfio::VfioPciTransport;
/// fn aim(t: &VfioPciTransport) {
///     t.pci().common().set_queue_desc(0xdead_0000);
/// }
/// ```
///
/// Order of use follows "Device Initialization" (3.1.1): `reset`, status ACKNOWLEDGE | DRIVER,
/// `device_features` / `set_driver_features`, FEATURES_OK (read back), `map_dma` for every region
/// the device will see, `setup_queue` for each queue, then DRIVER_OK.
pub trait Transport: Send {
    /// What the user calls this device: a PCI address or a socket path.
    fn name(&self) -> &str;
    /// Resets the device and waits until the reset is complete.
    fn reset(&mut self) -> Result<()>;
    /// Reads the device status.
    fn status(&mut self) -> Result<u8>;
    /// Writes the device status.
    fn set_status(&mut self, status: u8) -> Result<()>;
    /// The features the device offers.
    fn device_features(&mut self) -> Result<Features>;
    /// Writes the features the driver accepts.
    fn set_driver_features(&mut self, features: Features) -> Result<()>;
    /// Number of virtqueues the device has (for vhost-user: the most the backend supports).
    fn num_queues(&mut self) -> Result<u16>;
    /// Largest ring size the device allows for `queue`.
    fn max_queue_size(&mut self, queue: u16) -> Result<u16>;
    /// Reads `buf.len()` bytes of the device-specific configuration at `offset`.
    fn read_device_config(&mut self, offset: usize, buf: &mut [u8]) -> Result<()>;
    /// Makes `region` reachable by the device at `region.iova()`. Mapping a region twice is a no-op.
    fn map_dma(&mut self, region: &Arc<DmaRegion>) -> Result<()>;
    /// Whether the device is gone for good, so that it can no longer touch the rings or buffers
    /// even though a reset could not be confirmed: a vhost-user backend whose connection closed
    /// (it exited, or dropped us) stops serving that connection's rings. A backend that stopped
    /// answering is not gone: it may still resume and write.
    fn device_gone(&self) -> bool {
        false
    }

    /// Whether the device must reach memory through the platform's IOMMU (VIRTIO_F_ACCESS_PLATFORM):
    /// true behind VFIO, where a device that bypasses the IOMMU would take IOVAs for physical
    /// addresses.
    fn requires_access_platform(&self) -> bool {
        false
    }

    /// Whether several queue pairs work without the virtio-net control queue: true where the
    /// transport itself activates every queue it sets up (vhost-user backends serve every enabled
    /// vring, the way DPDK's virtio-user relies on); false where the device, per the spec, starts
    /// with one pair until told otherwise through the control queue (PCI).
    fn queue_pairs_without_control_queue(&self) -> bool {
        false
    }

    /// Whether the transport can give the virtio-net control queue (VIRTIO_NET_F_CTRL_VQ) when
    /// the device offers it: true for PCI; false for vhost-user, where backends serve the data
    /// queues only (DPDK's virtio-user emulates the control queue in the frontend instead).
    fn control_queue(&self) -> bool {
        true
    }

    /// Configures and enables `queue` with `size` entries of `format` at `addresses`, and returns
    /// its notifier.
    ///
    /// # Safety
    /// Once the queue is enabled (here, or at DRIVER_OK), the device reads and writes the three
    /// areas at `addresses` (device addresses). They must be the areas of a `size`-entry
    /// `format` ring that the caller owns, in a region mapped for this device
    /// ([`map_dma`](Self::map_dma)), that nothing but the driver side of that ring (and the
    /// device) uses, and that stays so until the device is reset ([`reset`](Self::reset)).
    unsafe fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        format: RingFormat,
        addresses: QueueAddresses,
    ) -> Result<Box<dyn Notify>>;
}
