//! Virtio over PCI layouts ("Virtio Over PCI Bus", 4.1): the vendor capability, the common
//! configuration structure's field offsets, and the PCI ids of a modern virtio-net function.

use super::{Le16, Le32, Le64};

/// PCI vendor id of virtio devices.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) virtio-net: 0x1040 + device type 1.
pub const DEVICE_ID_NET_MODERN: u16 = 0x1041;
/// Transitional virtio-net, which also exposes the legacy interface.
pub const DEVICE_ID_NET_TRANSITIONAL: u16 = 0x1000;

/// Generic PCI capability id of a vendor-specific capability.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// `VIRTIO_PCI_CAP_COMMON_CFG`.
pub const CAP_COMMON_CFG: u8 = 1;
/// `VIRTIO_PCI_CAP_NOTIFY_CFG`.
pub const CAP_NOTIFY_CFG: u8 = 2;
/// `VIRTIO_PCI_CAP_ISR_CFG`.
pub const CAP_ISR_CFG: u8 = 3;
/// `VIRTIO_PCI_CAP_DEVICE_CFG`.
pub const CAP_DEVICE_CFG: u8 = 4;
/// `VIRTIO_PCI_CAP_PCI_CFG`.
pub const CAP_PCI_CFG: u8 = 5;

/// `struct virtio_pci_cap`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PciCap {
    /// `PCI_CAP_ID_VNDR`.
    pub cap_vndr: u8,
    /// Next capability pointer.
    pub cap_next: u8,
    /// Length of this capability.
    pub cap_len: u8,
    /// `CAP_*`: which structure this describes.
    pub cfg_type: u8,
    /// BAR holding the structure.
    pub bar: u8,
    /// Distinguishes several capabilities of one type.
    pub id: u8,
    /// Padding.
    pub padding: [u8; 2],
    /// Offset of the structure within the BAR.
    pub offset: Le32,
    /// Length of the structure.
    pub length: Le32,
}
const _: () = assert!(core::mem::size_of::<PciCap>() == 16);

/// `struct virtio_pci_notify_cap`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct NotifyCap {
    /// The generic part.
    pub cap: PciCap,
    /// Multiplier for `queue_notify_off`.
    pub notify_off_multiplier: Le32,
}
const _: () = assert!(core::mem::size_of::<NotifyCap>() == 20);

/// `struct virtio_pci_common_cfg` (up to `queue_reset`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct CommonCfg {
    /// Selects the 32-bit word `device_feature` shows.
    pub device_feature_select: Le32,
    /// Offered feature word.
    pub device_feature: Le32,
    /// Selects the 32-bit word `driver_feature` takes.
    pub driver_feature_select: Le32,
    /// Accepted feature word.
    pub driver_feature: Le32,
    /// MSI-X vector for configuration changes.
    pub config_msix_vector: Le16,
    /// Number of virtqueues.
    pub num_queues: Le16,
    /// Device status.
    pub device_status: u8,
    /// Configuration atomicity generation.
    pub config_generation: u8,
    /// Selects the queue the following fields refer to.
    pub queue_select: Le16,
    /// Queue size (the device's maximum on reset; the driver may lower it).
    pub queue_size: Le16,
    /// MSI-X vector for the queue.
    pub queue_msix_vector: Le16,
    /// 1 to enable the queue.
    pub queue_enable: Le16,
    /// Notification offset of the queue.
    pub queue_notify_off: Le16,
    /// Descriptor area address.
    pub queue_desc: Le64,
    /// Driver area address.
    pub queue_driver: Le64,
    /// Device area address.
    pub queue_device: Le64,
    /// Notification data (NOTIF_CONFIG_DATA).
    pub queue_notif_config_data: Le16,
    /// Queue reset (RING_RESET).
    pub queue_reset: Le16,
}
const _: () = assert!(core::mem::offset_of!(CommonCfg, queue_desc) == 0x20);
const _: () = assert!(core::mem::offset_of!(CommonCfg, queue_reset) == 0x3a);

/// Minimum length of the common configuration structure this driver needs: every field up to
/// and including `queue_device`. The fields after it exist only with features this driver does
/// not negotiate (NOTIF_CONFIG_DATA, RING_RESET, ADMIN_VQ).
pub const COMMON_CFG_MIN_LEN: usize = core::mem::offset_of!(CommonCfg, queue_notif_config_data);
const _: () = assert!(COMMON_CFG_MIN_LEN == 0x38);

/// Generic PCI configuration header offsets and bits (PCI Local Bus Specification, type 0 header).
pub mod config {
    /// Vendor id (16 bits).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device id (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Pointer to the first capability (8 bits; the bottom two bits are reserved).
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Command: respond to Memory Space accesses.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command: Bus Master, i.e. the function may issue DMA.
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Status: the function has a capability list at `CAPABILITIES_POINTER`.
    pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
    /// First offset past the standard header, where capabilities may start.
    pub const FIRST_CAPABILITY: u16 = 0x40;
    /// Size of the conventional configuration space, where the capability list lives.
    pub const CONVENTIONAL_SIZE: u16 = 0x100;
    /// Capability id of MSI-X.
    pub const CAP_ID_MSIX: u8 = 0x11;
}
