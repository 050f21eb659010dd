//! Where a ring's three areas sit inside a DMA region ("Virtqueues", 2.6; alignment per
//! "Virtqueue Configuration" 4.1.4.3.2 and 2.7/2.8). Every area is placed on a cache line of its
//! own, so the driver-written and device-written parts do not share lines.
#![allow(unsafe_code)]

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::split::{avail, used};
use crate::transport::{QueueAddresses, RingFormat};

/// Alignment of each ring in its region, and of each area inside a ring.
pub const RING_ALIGN: usize = 64;

/// Byte offsets of the descriptor, driver and device areas, and the total.
fn offsets(format: RingFormat, size: u16) -> (usize, usize, usize, usize) {
    let desc_bytes = 16 * size as usize;
    let driver = desc_bytes.next_multiple_of(RING_ALIGN);
    match format {
        RingFormat::Packed => (0, driver, driver + RING_ALIGN, driver + 2 * RING_ALIGN),
        RingFormat::Split => {
            let device = (driver + avail::bytes(size)).next_multiple_of(RING_ALIGN);
            (0, driver, device, (device + used::bytes(size)).next_multiple_of(RING_ALIGN))
        }
    }
}

/// Bytes a ring of `size` descriptors in `format` takes, a multiple of [`RING_ALIGN`].
pub fn ring_bytes(format: RingFormat, size: u16) -> usize {
    offsets(format, size).3
}

/// A ring's memory: a slice of a DMA region, checked once here so that the rings can use
/// unchecked accessors afterwards.
///
/// Invariant: `offset + ring_bytes(format, size) <= region.len()` and `offset` is a multiple of
/// [`RING_ALIGN`], so every area is in bounds and aligned for its fields.
#[derive(Debug)]
pub struct RingMemory {
    region: Arc<DmaRegion>,
    offset: usize,
    format: RingFormat,
    size: u16,
}

impl RingMemory {
    /// Claims `ring_bytes(format, size)` bytes at `offset` of `region` and zeroes them.
    ///
    /// Crate-private: the caller claims bytes that nothing else uses (no buffer, no other ring)
    /// and that no device uses yet, i.e. a slice of a region made for rings alone. The port
    /// lays its rings in a region of their own; `testing::ring_memory` makes one per ring.
    pub(crate) fn new(region: Arc<DmaRegion>, offset: usize, format: RingFormat, size: u16) -> Result<RingMemory> {
        let bytes = ring_bytes(format, size);
        if offset % RING_ALIGN != 0 || offset.checked_add(bytes).is_none_or(|end| end > region.len()) {
            return Err(Error::InvalidConfig(format!(
                "ring of {size} descriptors ({bytes} bytes) does not fit at offset {offset} of a {}-byte region",
                region.len()
            )));
        }
        let memory = RingMemory { region, offset, format, size };
        for i in 0..bytes {
            // SAFETY: in bounds per the check above; nothing else uses these bytes (the caller's
            // claim, see above) and the device does not use the ring before the transport is
            // told its addresses, which happens after this.
            unsafe { memory.area(0).add(i).write_volatile(0) };
        }
        Ok(memory)
    }

    /// Start of the area at byte `offset` of the ring.
    #[inline(always)]
    fn area(&self, offset: usize) -> *mut u8 {
        // SAFETY: callers pass offsets from `offsets()`, in bounds per the type's invariant.
        unsafe { self.region.as_ptr().add(self.offset + offset) }
    }

    /// The descriptor area.
    #[inline(always)]
    pub(crate) fn desc(&self) -> *mut u8 {
        self.area(0)
    }

    /// The driver area.
    #[inline(always)]
    pub(crate) fn driver(&self) -> *mut u8 {
        self.area(offsets(self.format, self.size).1)
    }

    /// The device area.
    #[inline(always)]
    pub(crate) fn device(&self) -> *mut u8 {
        self.area(offsets(self.format, self.size).2)
    }

    /// The ring's format.
    pub fn format(&self) -> RingFormat {
        self.format
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Device addresses of the three areas.
    pub fn addresses(&self) -> QueueAddresses {
        let (desc, driver, device, _) = offsets(self.format, self.size);
        let base = self.region.iova() + self.offset as u64;
        QueueAddresses { desc: base + desc as u64, driver: base + driver as u64, device: base + device as u64 }
    }
}
