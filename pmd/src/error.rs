//! The driver's error type: one variant per failing step, each message saying what to do.

use std::io;

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
}

/// `Result` with the driver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
