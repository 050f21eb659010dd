//! IOVA assignment: which device-side address a DMA region gets.
//!
//! With an IOMMU whose valid ranges cover user virtual addresses the IOVA is the VA, which keeps
//! address translation free. Otherwise IOVAs are handed out from the IOMMU's valid ranges, bump
//! style, aligned to the region's page size. Without an IOMMU the IOVA is the physical address
//! ([`IovaAllocator::physical`]): regions are then made physically contiguous
//! ([`DmaRegion::new`](super::DmaRegion::new)), and their IOVA is read, not assigned.

use std::sync::Mutex;

use crate::error::{Error, Result};

/// One inclusive range of valid IOVAs, as VFIO reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    /// First valid address.
    pub start: u64,
    /// Last valid address (inclusive).
    pub end: u64,
}

#[derive(Debug)]
enum Mode {
    /// IOVA = VA.
    Identity,
    /// Allocate from these ranges; `next` is the first unallocated address of `ranges[current]`.
    Ranges { ranges: Vec<IovaRange>, current: usize, next: u64 },
    /// IOVA = physical address (no IOMMU): nothing to assign.
    Physical,
}

/// Decides the IOVA of each new DMA region. Shared by every port of one address space (one VFIO
/// container, or the vhost-user ports, which use it as "guest physical" addresses).
#[derive(Debug)]
pub struct IovaAllocator {
    mode: Mutex<Mode>,
}

impl IovaAllocator {
    /// IOVA = virtual address.
    pub fn identity() -> Self {
        Self { mode: Mutex::new(Mode::Identity) }
    }

    /// IOVA = physical address, for devices that reach memory without an IOMMU (`uio_pci_generic`,
    /// VFIO no-IOMMU). Regions made with it are locked, physically contiguous 2 MiB huge pages,
    /// which needs root (the physical addresses come from `/proc/self/pagemap`).
    pub fn physical() -> Self {
        Self { mode: Mutex::new(Mode::Physical) }
    }

    /// Whether IOVAs are physical addresses ([`physical`](Self::physical)).
    pub fn is_physical(&self) -> bool {
        matches!(*self.mode.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), Mode::Physical)
    }

    /// IOVA = VA whenever the region's VA range lies inside one of `ranges`; otherwise the next
    /// free, aligned addresses of `ranges` (never address 0).
    pub fn identity_within(ranges: Vec<IovaRange>) -> Self {
        let next = ranges.first().map_or(0, |r| r.start);
        Self { mode: Mutex::new(Mode::Ranges { ranges, current: 0, next }) }
    }

    /// The IOVA for a region at `va` of `len` bytes aligned to `align` (a power of two). In
    /// physical mode there is none to assign: an error (the region's memory decides it).
    pub fn assign(&self, va: u64, len: u64, align: u64) -> Result<u64> {
        let mut mode = self.mode.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &mut *mode {
            Mode::Identity => Ok(va),
            Mode::Physical => Err(Error::InvalidConfig(
                "an IovaAllocator::physical() assigns no IOVAs: the IOVA is the physical address of the region's \
                 memory, which DmaRegion::new finds"
                    .into(),
            )),
            Mode::Ranges { ranges, current, next } => {
                // `[start, start + len)` inside `r`, every sum checked: ranges may end at the top
                // of the address space.
                let fits = |r: &IovaRange, start: u64| {
                    len.checked_sub(1)
                        .and_then(|last| start.checked_add(last))
                        .is_some_and(|last| start >= r.start && last <= r.end)
                };
                if ranges.iter().any(|r| fits(r, va)) {
                    return Ok(va);
                }
                while *current < ranges.len() {
                    let range = ranges[*current];
                    // Never IOVA 0: devices read a ring address of 0 as "not set up".
                    let start = (*next).max(range.start).max(1).checked_next_multiple_of(align);
                    if let Some(start) = start.filter(|&start| fits(&range, start)) {
                        // The range's end, when the region fills it to the top: nothing is left.
                        match start.checked_add(len) {
                            Some(end) => *next = end,
                            None => *current = ranges.len(),
                        }
                        return Ok(start);
                    }
                    *current += 1;
                    *next = ranges.get(*current).map_or(0, |r| r.start);
                }
                Err(Error::IovaExhausted { len })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_va_fits_else_allocated_aligned() {
        let a = IovaAllocator::identity_within(vec![
            IovaRange { start: 0, end: 0xfedf_ffff },
            IovaRange { start: 0xfef0_0000, end: 0xffff_ffff_ffff },
        ]);
        assert_eq!(a.assign(0x7f00_0000_0000, 0x20_0000, 0x20_0000).unwrap(), 0x7f00_0000_0000);
        let from_zero = IovaAllocator::identity_within(vec![IovaRange { start: 0, end: 0xff_ffff }]);
        assert_eq!(from_zero.assign(1 << 46, 0x1000, 0x1000).unwrap(), 0x1000, "never IOVA 0");
        let narrow = IovaAllocator::identity_within(vec![
            IovaRange { start: 0x1000, end: 0x3f_ffff },
            IovaRange { start: 0x100_0000, end: 0x1ff_ffff },
        ]);
        let va = 0x7f00_0000_0000;
        assert_eq!(narrow.assign(va, 0x20_0000, 0x20_0000).unwrap(), 0x20_0000);
        // The first range has no room for another 2 MiB at 2 MiB alignment: move on.
        assert_eq!(narrow.assign(va, 0x20_0000, 0x20_0000).unwrap(), 0x100_0000);
        assert_eq!(narrow.assign(va, 0x80_0000, 0x20_0000).unwrap(), 0x120_0000);
        assert!(matches!(narrow.assign(va, 0x80_0000, 0x20_0000), Err(Error::IovaExhausted { .. })));
    }

    #[test]
    fn ranges_at_the_top_of_the_address_space_do_not_overflow() {
        let top = IovaAllocator::identity_within(vec![IovaRange { start: u64::MAX - 0x3f_ffff, end: u64::MAX }]);
        let va = 0x7f00_0000_0000;
        assert_eq!(top.assign(va, 0x20_0000, 0x20_0000).unwrap(), u64::MAX - 0x3f_ffff);
        // This one ends at the last address: the range is then used up, without wrapping to 0.
        assert_eq!(top.assign(va, 0x20_0000, 0x20_0000).unwrap(), u64::MAX - 0x1f_ffff);
        assert!(matches!(top.assign(va, 0x1000, 0x1000), Err(Error::IovaExhausted { .. })));
        // Alignment past the top, and a VA whose end would wrap, are refused, not wrapped.
        let near = IovaAllocator::identity_within(vec![IovaRange { start: u64::MAX - 0xfff, end: u64::MAX }]);
        assert!(matches!(near.assign(u64::MAX - 0xff, 0x1000, 0x20_0000), Err(Error::IovaExhausted { .. })));
        assert!(matches!(near.assign(va, 0, 0x1000), Err(Error::IovaExhausted { .. })));
    }
}
