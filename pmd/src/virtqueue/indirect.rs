//! Indirect descriptor tables (VIRTIO_F_INDIRECT_DESC): "Indirect Descriptors" (2.7.5.3) for
//! split rings, "Indirect Flag: Scatter-Gather Support" (2.8.7) for packed rings.
//!
//! A chain of several buffers takes one ring descriptor, flagged VIRTQ_DESC_F_INDIRECT, whose
//! address and length name a table of descriptors in driver memory, one per buffer. The tables
//! are laid out once, when the ring is built: one per chain the ring can hold (indexed by the
//! chain's head descriptor on a split ring, by its buffer id on a packed ring, both unique among
//! the chains in flight), each room for [`IndirectTables::max_segments`] descriptors. Nothing is
//! allocated per packet.
//!
//! Trust: the tables are in memory the device can reach, and a device could write them. The
//! driver only ever writes them, never reads a byte back: what the device does to a table can
//! change what it reads next time, never what the driver does.
#![allow(unsafe_code)]

use std::sync::Arc;

use super::layout::RING_ALIGN;
use super::Segment;
use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::split::{DESC_F_NEXT, DESC_F_WRITE};
use crate::transport::RingFormat;

/// Bytes of one descriptor, split or packed (`struct virtq_desc`, `struct pvirtq_desc`).
const DESC_BYTES: usize = 16;

/// The most descriptors a table holds: room for a 64 KiB segmentation offload packet in 2 KiB
/// buffers (33 of them) and its header, with margin. A ring smaller than that gets tables of
/// its own size ("A driver MUST NOT create a descriptor chain longer than the Queue Size of the
/// device", 2.7.5.3.1, indirect descriptors included).
pub const MAX_INDIRECT_SEGMENTS: u16 = 64;

/// Descriptors per table for a ring of `size` descriptors.
pub fn table_segments(size: u16) -> u16 {
    size.min(MAX_INDIRECT_SEGMENTS)
}

/// Bytes the tables of a ring of `size` descriptors take, a multiple of [`RING_ALIGN`].
pub fn indirect_bytes(size: u16) -> usize {
    (size as usize * table_segments(size) as usize * DESC_BYTES).next_multiple_of(RING_ALIGN)
}

/// One ring's indirect tables: a slice of a DMA region, checked once here.
///
/// Invariant: `offset + indirect_bytes(count) <= region.len()`, `offset` a multiple of
/// [`RING_ALIGN`]; table `i < count` holds `max` descriptors at `offset + i * max * 16`.
#[derive(Debug)]
pub struct IndirectTables {
    region: Arc<DmaRegion>,
    offset: usize,
    count: u16,
    max: u16,
    format: RingFormat,
}

impl IndirectTables {
    /// Claims `indirect_bytes(count)` bytes at `offset` of `region` for the tables of a ring of
    /// `count` descriptors in `format`.
    ///
    /// Crate-private, as [`RingMemory::new`](super::RingMemory): the caller claims bytes that
    /// nothing else uses (no buffer, no ring) and that the device reaches.
    pub(crate) fn new(region: Arc<DmaRegion>, offset: usize, format: RingFormat, count: u16) -> Result<Self> {
        let bytes = indirect_bytes(count);
        if count == 0 || offset % RING_ALIGN != 0 || offset.checked_add(bytes).is_none_or(|end| end > region.len()) {
            return Err(Error::InvalidConfig(format!(
                "indirect tables for a ring of {count} descriptors ({bytes} bytes) do not fit at offset {offset} of a \
                 {}-byte region",
                region.len()
            )));
        }
        Ok(IndirectTables { region, offset, count, max: table_segments(count), format })
    }

    /// Tables: one per descriptor of the ring they were made for.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Descriptors one table holds: the longest chain a ring puts in one.
    #[inline(always)]
    pub fn max_segments(&self) -> u16 {
        self.max
    }

    /// The ring format the tables were made for.
    pub fn format(&self) -> RingFormat {
        self.format
    }

    /// Whether the tables fit a ring of `format` and `size` descriptors that has published
    /// nothing yet (`fresh`); an `InvalidConfig` error naming both otherwise.
    pub(crate) fn check_fits(&self, format: RingFormat, size: u16, fresh: bool) -> Result<()> {
        if self.format == format && self.count == size && fresh {
            return Ok(());
        }
        Err(Error::InvalidConfig(format!(
            "indirect tables ({:?}, {}) do not fit a fresh {} ring of {size} descriptors",
            self.format,
            self.count,
            format.name()
        )))
    }

    /// Writes `segments` into table `table` in the ring's format and returns what the ring
    /// descriptor pointing at it carries: the table's device address and byte length, and the
    /// chain's device-writable bytes. Split: each descriptor but the last has NEXT, `next`
    /// counting 1, 2, ... (sequential, as IN_ORDER requires, 2.7.5.3.1); packed: consecutive,
    /// WRITE the only flag, the buffer id reserved (2.8.7).
    ///
    /// The caller passes `table < count()` not in use by a chain in flight, and at most
    /// [`max_segments`](Self::max_segments) segments (checked in debug builds).
    #[inline(always)]
    pub(super) fn write(&mut self, table: u16, segments: &[Segment]) -> (u64, u32, u32) {
        debug_assert!(table < self.count && !segments.is_empty() && segments.len() <= self.max as usize);
        let start = self.offset + table as usize * self.max as usize * DESC_BYTES;
        // SAFETY: `table < count`, so the table is inside the claimed bytes (the type's
        // invariant), 16-byte aligned; no chain in flight uses it (the caller's word), so the
        // device has no reason to read it now, and only this thread writes it.
        let base = unsafe { self.region.as_ptr().add(start) }.cast::<u64>();
        let mut writable = 0u32;
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            let mut flags = if segment.writable { DESC_F_WRITE } else { 0 };
            if segment.writable {
                writable = writable.saturating_add(segment.len);
            }
            // Split: `flags` then `next`; packed: `id` (reserved, 0) then `flags`.
            let tail = match self.format {
                RingFormat::Split => {
                    if i < last {
                        flags |= DESC_F_NEXT;
                    }
                    let next = if i < last { i as u64 + 1 } else { 0 };
                    segment.len as u64 | (flags as u64) << 32 | next << 48
                }
                RingFormat::Packed => segment.len as u64 | (flags as u64) << 48,
            };
            // SAFETY: `i < max`, inside the table (see above); two 8-byte stores per descriptor.
            unsafe {
                base.add(2 * i).write_volatile(segment.addr.to_le());
                base.add(2 * i + 1).write_volatile(tail.to_le());
            }
        }
        let iova = self.region.iova() + start as u64;
        (iova, (segments.len() * DESC_BYTES) as u32, writable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{HugePages, IovaAllocator};

    #[test]
    fn tables_fit_only_a_fresh_ring_of_their_format_and_size() {
        let region = DmaRegion::new("indirect-fit", indirect_bytes(8), HugePages::Never, &IovaAllocator::identity());
        let tables = IndirectTables::new(Arc::new(region.unwrap()), 0, RingFormat::Split, 8).unwrap();
        assert!(tables.check_fits(RingFormat::Split, 8, true).is_ok());
        for (format, size, fresh) in
            [(RingFormat::Packed, 8, true), (RingFormat::Split, 16, true), (RingFormat::Split, 8, false)]
        {
            let err = tables.check_fits(format, size, fresh).unwrap_err().to_string();
            assert!(
                err.contains("(Split, 8) do not fit a fresh") && err.contains(&format!("{size} descriptors")),
                "{err}"
            );
        }
    }
}
