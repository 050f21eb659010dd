//! The driver's error type: one variant per failing step, each message saying what to do.

use std::io;
use std::time::Duration;

use crate::net::{CtrlCommand, CtrlUnavailable};
use crate::spec::features::Features;

/// Errors from setting up or running a port. The fast path (rx/tx burst) never returns these:
/// it counts problems in the queue statistics instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `memfd_create` or `ftruncate` failed.
    #[error("cannot create a memfd for DMA memory: {0}")]
    Memfd(#[source] io::Error),
    /// `mmap` of a DMA region failed.
    #[error("cannot map {len} bytes of DMA memory: {source}")]
    Mmap {
        /// Bytes asked for.
        len: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Huge pages were required and none could be had.
    #[error(
        "cannot get {len} bytes of 2 MiB huge pages ({source}): reserve some with \
         `scripts/hugepages.sh` (or `echo 512 > /proc/sys/vm/nr_hugepages`)"
    )]
    HugePagesUnavailable {
        /// Bytes asked for.
        len: usize,
        /// Why the huge page mapping failed.
        #[source]
        source: Box<Error>,
    },
    /// Physical-address DMA memory (for a device without an IOMMU) cannot be had.
    #[error("cannot make physical-address DMA memory: {reason}")]
    PhysicalAddressesUnavailable {
        /// What is missing, and what to do.
        reason: String,
    },
    /// The IOMMU's valid IOVA ranges have no room left.
    #[error("no room for {len} more bytes in the IOMMU's valid IOVA ranges: use fewer or smaller pools")]
    IovaExhausted {
        /// Bytes asked for.
        len: u64,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The device refused a queue size.
    #[error("queue {queue}: the device refused ring size {requested} (its maximum is {max}){hint}")]
    QueueSizeRefused {
        /// The queue index.
        queue: u16,
        /// The size asked for.
        requested: u16,
        /// The device's maximum.
        max: u16,
        /// What to do about it.
        hint: &'static str,
    },
    /// A transport-level failure (VFIO, PCI, vhost-user), with what to do in the message.
    #[error("{0}")]
    Transport(String),
    /// An OS call failed while setting up the transport.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No PCI function at this address (or the address is malformed).
    #[error("PCI device {device} not found ({reason}): list virtio devices with `lspci -D -d 1af4:`")]
    PciDeviceNotFound {
        /// The PCI address asked for.
        device: String,
        /// What is missing.
        reason: String,
    },
    /// The PCI function is not a virtio-net device.
    #[error(
        "PCI device {device} is {vendor:04x}:{device_id:04x}, not a virtio-net device \
         (1af4:1041, or transitional 1af4:1000): check the address with `lspci -D -d 1af4:`"
    )]
    NotVirtioNet {
        /// The PCI address.
        device: String,
        /// Its vendor id.
        vendor: u16,
        /// Its device id.
        device_id: u16,
    },
    /// The PCI function is not bound to `vfio-pci`.
    #[error("PCI device {device} is not bound to vfio-pci ({driver}): run `scripts/bind-vfio.sh {device}`")]
    NotBoundToVfio {
        /// The PCI address.
        device: String,
        /// "bound to `driver`" or "no driver bound".
        driver: String,
    },
    /// The PCI function was opened through `uio_pci_generic` but is not bound to it.
    #[error(
        "PCI device {device} is not bound to uio_pci_generic ({driver}): run `scripts/bind-vfio.sh --uio {device}` \
         (loads uio_pci_generic and binds it); with an IOMMU, use vfio-pci instead (`scripts/bind-vfio.sh {device}`, \
         and open the port without physical-address mode: no l2fwd --no-iommu)"
    )]
    NotBoundToUio {
        /// The PCI address.
        device: String,
        /// "bound to `driver`" or "no driver bound".
        driver: String,
    },
    /// Another device of the function's IOMMU group is bound to a host driver.
    #[error(
        "IOMMU group {group} of PCI device {device} is not viable: every device in the group must \
         be bound to vfio-pci or to no driver, and these are not: {blockers}; bind them with \
         `scripts/bind-vfio.sh`, or put the device in a slot with its own IOMMU group"
    )]
    VfioGroupNotViable {
        /// The PCI address.
        device: String,
        /// The IOMMU group number.
        group: u32,
        /// The devices in the way, with their drivers.
        blockers: String,
    },
    /// The IOMMU group is already open (by another process, or another container of this one).
    #[error(
        "IOMMU group {group} of PCI device {device} is in use: /dev/vfio/{group} is held by another \
         process (or by another VFIO container in this one); stop it first \
         (`fuser -v /dev/vfio/{group}` names it)"
    )]
    VfioGroupBusy {
        /// The PCI address.
        device: String,
        /// The IOMMU group number.
        group: u32,
    },
    /// VFIO has no usable IOMMU.
    #[error("no usable IOMMU for VFIO: {reason}")]
    IommuUnavailable {
        /// What is missing, and what to do.
        reason: String,
    },
    /// The device has no virtio PCI capabilities: a legacy-only virtio device.
    #[error(
        "PCI device {device} has no virtio PCI capabilities: it is a legacy-only virtio device, which \
         this driver does not support; use a modern device (QEMU: `-device \
         virtio-net-pci,disable-legacy=on`, without `disable-modern=on`)"
    )]
    LegacyOnlyDevice {
        /// The PCI address.
        device: String,
    },
    /// The PCI capability list is malformed or lacks a required virtio structure.
    #[error("PCI device {device}: {problem}")]
    BadPciCapabilities {
        /// The PCI address.
        device: String,
        /// What is wrong.
        problem: String,
    },
    /// A VFIO operation failed.
    #[error("{device}: {what}: {source}")]
    Vfio {
        /// The PCI address (or "VFIO container").
        device: String,
        /// What was being done.
        what: String,
        /// The error from `vfio-ioctls`.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A device register did not read back what the driver wrote.
    #[error("{device}: the device did not accept {what}: wrote {wrote:#x}, read back {read:#x}")]
    RegisterReadBack {
        /// The device.
        device: String,
        /// Which register.
        what: String,
        /// The value written.
        wrote: u64,
        /// The value read back.
        read: u64,
    },
    /// Writing 0 to the device status did not reset the device in time.
    #[error(
        "{device}: the device did not finish its reset within {timeout_ms} ms (status still \
         {status:#x}): reset the function (`echo 1 > /sys/bus/pci/devices/{device}/reset`) or \
         restart the VM"
    )]
    ResetTimeout {
        /// The device.
        device: String,
        /// The status last read.
        status: u8,
        /// How long the driver waited.
        timeout_ms: u64,
    },
    /// Nothing listens at a vhost-user socket path (after the connect retry window).
    #[error(
        "no vhost-user backend at {path} ({source}): start one, e.g. \
         `scripts/dpdk/vhost-testpmd.sh start --socket {path}`"
    )]
    VhostUserNoBackend {
        /// The socket path.
        path: String,
        /// Why the last connect attempt failed.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed, or the backend refused it (with REPLY_ACK a refusal carries no
    /// reason: the backend's own log says why).
    #[error("vhost-user backend at {path}: {step} failed: {source}")]
    VhostUser {
        /// The socket path.
        path: String,
        /// The request that failed.
        step: &'static str,
        /// The frontend library's error.
        #[source]
        source: vhost::Error,
    },
    /// The vhost-user backend closed the connection (it exited or crashed).
    #[error(
        "vhost-user backend at {path} is gone ({step}: {source}): restart the backend, then \
         reset and set up the port again"
    )]
    VhostUserDisconnected {
        /// The socket path.
        path: String,
        /// The request that found the connection broken.
        step: &'static str,
        /// The frontend library's error.
        #[source]
        source: vhost::Error,
    },
    /// The vhost-user backend did not answer in time (stopped, hung, or overloaded); the
    /// connection was shut down so that no call can hang.
    #[error(
        "vhost-user backend at {path} did not answer {step} within {timeout:?} (is it stopped or \
         hung?); the connection was closed: restart the backend, then reset and set up the port again"
    )]
    VhostUserTimeout {
        /// The socket path.
        path: String,
        /// The request that timed out.
        step: &'static str,
        /// The per-request time limit.
        timeout: std::time::Duration,
    },
    /// More DMA regions than a vhost-user memory table can carry.
    #[error(
        "vhost-user passes at most {max} memory regions to the backend and {count} were mapped: \
         allocate DMA memory in fewer, larger regions (e.g. one mempool per process)"
    )]
    TooManyDmaRegions {
        /// Regions asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A control-queue command is not available on this port (no control queue, or the
    /// feature the command needs was not negotiated).
    #[error("{device}: cannot send {command}: {why}")]
    NoControlQueue {
        /// The device.
        device: String,
        /// The command asked for.
        command: CtrlCommand,
        /// What is missing, and what to do.
        why: CtrlUnavailable,
    },
    /// The device answered a control-queue command with an ack other than VIRTIO_NET_OK.
    #[error(
        "{device}: the device refused {command} (ack {ack:#x}, VIRTIO_NET_OK is 0): check the device's \
         log (QEMU prints why) and the values sent"
    )]
    CtrlCommandFailed {
        /// The device.
        device: String,
        /// The command refused.
        command: CtrlCommand,
        /// The ack byte the device wrote (0xff: none written).
        ack: u8,
    },
    /// The device did not complete a control-queue command in time; the control queue is
    /// unusable from then on.
    #[error(
        "{device}: the device did not complete {command} within {timeout:?}: the control queue is now \
         unusable (its buffers stay the device's until it is reset); restart the port"
    )]
    CtrlTimeout {
        /// The device.
        device: String,
        /// The command that did not complete.
        command: CtrlCommand,
        /// How long the driver waited ([`PortConfig::control_timeout`](crate::net::PortConfig)).
        timeout: Duration,
    },
    /// The control queue stopped being usable (an earlier command never completed, or the
    /// device broke the ring protocol).
    #[error(
        "{device}: cannot send {command}: the control queue is unusable after an earlier failure; restart the port"
    )]
    CtrlQueueUnusable {
        /// The device.
        device: String,
        /// The command asked for.
        command: CtrlCommand,
    },
    /// A control-queue command's argument is out of range; nothing was sent.
    #[error("{device}: cannot send {command}: {problem}")]
    CtrlBadArgument {
        /// The device.
        device: String,
        /// The command asked for.
        command: CtrlCommand,
        /// What is wrong with the argument.
        problem: String,
    },
    /// The device does not offer a feature the driver needs, or that the configuration asked for.
    #[error("{device}: the device does not offer {feature}: {why}")]
    FeatureNotOffered {
        /// The device.
        device: String,
        /// The feature, by its spec name (`VIRTIO_F_RING_PACKED`).
        feature: &'static str,
        /// Why it is needed, and what to do.
        why: &'static str,
    },
    /// The device did not accept the features the driver chose (FEATURES_OK did not read back).
    #[error(
        "{device}: the device refused the features {wanted:?} (offered {offered:?}; status read back {status:#x}): \
         it needs a feature this driver does not support"
    )]
    FeaturesRefused {
        /// The device.
        device: String,
        /// The features the driver wrote.
        wanted: Features,
        /// The features the device offered.
        offered: Features,
        /// The device status read back.
        status: u8,
    },
    /// More queue pairs asked for than the device supports (`max_virtqueue_pairs`) or than the
    /// port set up.
    #[error("{device}: {requested} queue pairs asked for, but {limit}: ask for at most {max} (and at least 1)")]
    TooManyQueuePairs {
        /// The device.
        device: String,
        /// Pairs asked for.
        requested: u16,
        /// The most that can be had.
        max: u16,
        /// Where the limit comes from.
        limit: &'static str,
    },
}

/// What kind of failure an [`Error`] is, for callers that act on it (a missing device is worth
/// a retry or another address; a refused feature, another configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device is not there: no PCI function at the address, not a virtio-net function, no
    /// backend at the socket.
    NotFound,
    /// The device is there but cannot be had now: bound to another driver, its IOMMU group in
    /// use or not viable, no IOMMU, no huge pages or DMA memory.
    Unavailable,
    /// The device does not offer or refused what was asked for: a feature, a ring size, queue
    /// pairs, a control command.
    Refused,
    /// A configuration value is out of range, before the device was asked.
    Config,
    /// The device or its transport failed while being set up or run.
    Device,
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            PciDeviceNotFound { .. } | NotVirtioNet { .. } | VhostUserNoBackend { .. } => ErrorKind::NotFound,
            NotBoundToVfio { .. }
            | NotBoundToUio { .. }
            | PhysicalAddressesUnavailable { .. }
            | VfioGroupNotViable { .. }
            | VfioGroupBusy { .. }
            | IommuUnavailable { .. }
            | HugePagesUnavailable { .. }
            | IovaExhausted { .. }
            | TooManyDmaRegions { .. }
            | Memfd(_)
            | Mmap { .. } => ErrorKind::Unavailable,
            FeatureNotOffered { .. }
            | FeaturesRefused { .. }
            | LegacyOnlyDevice { .. }
            | QueueSizeRefused { .. }
            | TooManyQueuePairs { .. }
            | NoControlQueue { .. }
            | CtrlCommandFailed { .. } => ErrorKind::Refused,
            InvalidConfig(_) | CtrlBadArgument { .. } => ErrorKind::Config,
            Transport(_)
            | Io { .. }
            | BadPciCapabilities { .. }
            | Vfio { .. }
            | RegisterReadBack { .. }
            | ResetTimeout { .. }
            | VhostUser { .. }
            | VhostUserDisconnected { .. }
            | VhostUserTimeout { .. }
            | CtrlTimeout { .. }
            | CtrlQueueUnusable { .. } => ErrorKind::Device,
        }
    }
}

/// `Result` with the driver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
