//! Physical-address DMA memory, for devices that reach memory without an IOMMU (`uio_pci_generic`,
//! VFIO no-IOMMU): the device is given physical addresses, so a region must be physically
//! contiguous for the driver's `IOVA = base + offset` arithmetic to hold.
//!
//! How: a hugetlb memfd of the region's 2 MiB pages is mapped and faulted in; `/proc/self/pagemap`
//! gives each 4 KiB page's frame number (root only: without CAP_SYS_ADMIN the kernel reports
//! frame 0). Every huge page is checked to be present and physically contiguous over its 2 MiB;
//! then the pages are put in physical order: when the kernel handed them out in another order
//! (its free list is last-in first-out, so often descending), they are mapped again, page by
//! page, at consecutive virtual addresses in physical order, and checked again. The region is
//! locked (`mlock`); hugetlb pages are never swapped, migrated or reclaimed while mapped anyway
//! (and the kernel does not account their lock in VmLck), the lock states the intent. Pages that are not one
//! physically contiguous run are an error that says how to get contiguous ones.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use super::region::HUGE_PAGE_SIZE;
use crate::error::{Error, Result};

const SMALL_PAGE_SIZE: u64 = 4096;
/// 4 KiB pagemap entries per huge page.
const ENTRIES_PER_HUGE_PAGE: usize = HUGE_PAGE_SIZE / SMALL_PAGE_SIZE as usize;
const PAGEMAP: &str = "/proc/self/pagemap";
/// Pagemap entry: page present ("Documentation/admin-guide/mm/pagemap.rst").
const PM_PRESENT: u64 = 1 << 63;
/// Pagemap entry: page frame number, bits 0-54.
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// A locked mapping of physically contiguous huge pages: `len` bytes at `ptr`, the first at
/// physical address `phys`.
#[derive(Debug)]
pub(crate) struct PhysicalMapping {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
    pub(crate) phys: u64,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::PhysicalAddressesUnavailable { reason: reason.into() }
}

/// The physical address of the huge page whose 512 pagemap entries are `entries`, when every
/// 4 KiB page is present and they follow each other from a 2 MiB-aligned frame.
pub(crate) fn huge_page_address(entries: &[u64]) -> std::result::Result<u64, String> {
    let first = *entries.first().ok_or("no pagemap entries")?;
    for (i, &entry) in entries.iter().enumerate() {
        if entry & PM_PRESENT == 0 {
            return Err(format!("4 KiB page {i} is not present"));
        }
        let pfn = entry & PM_PFN_MASK;
        if pfn == 0 {
            return Err("the kernel reports frame 0: reading physical addresses from /proc/self/pagemap needs \
                        root (CAP_SYS_ADMIN)"
                .into());
        }
        if pfn != (first & PM_PFN_MASK) + i as u64 {
            return Err(format!("4 KiB page {i} is at frame {pfn:#x}, not right after the page before it"));
        }
    }
    let phys = (first & PM_PFN_MASK) * SMALL_PAGE_SIZE;
    if phys % HUGE_PAGE_SIZE as u64 != 0 {
        return Err(format!("the huge page starts at {phys:#x}, which is not 2 MiB aligned"));
    }
    Ok(phys)
}

/// The order that puts pages at physical addresses `phys` into one contiguous run (`order[k]`
/// is the page that goes `k`-th), or `None` when they are not one run.
pub(crate) fn contiguous_order(phys: &[u64]) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..phys.len()).collect();
    order.sort_by_key(|&i| phys[i]);
    let base = phys[*order.first()?];
    order
        .iter()
        .enumerate()
        .all(|(k, &i)| Some(phys[i]) == base.checked_add(k as u64 * HUGE_PAGE_SIZE as u64))
        .then_some(order)
}

/// The physical address of each huge page of `[ptr, ptr + pages * 2 MiB)`, from pagemap.
fn physical_addresses(pagemap: &File, ptr: *const u8, pages: usize) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; ENTRIES_PER_HUGE_PAGE * 8];
    (0..pages)
        .map(|page| {
            let va = ptr as u64 + (page * HUGE_PAGE_SIZE) as u64;
            pagemap
                .read_exact_at(&mut raw, va / SMALL_PAGE_SIZE * 8)
                .map_err(|source| Error::Io { what: format!("reading {PAGEMAP} at the entry of {va:#x}"), source })?;
            let entries: Vec<u64> =
                raw.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().expect("8-byte chunk"))).collect();
            huge_page_address(&entries)
                .map_err(|problem| unavailable(format!("huge page {page} (VA {va:#x}): {problem}")))
        })
        .collect()
}

/// Maps `len` bytes of `fd` at `offset` at the kernel's choice, or exactly at `at` (`MAP_FIXED`).
///
/// # Safety
/// With `at`, the range must be a reservation of ours that nothing else uses.
unsafe fn map_shared(fd: &OwnedFd, offset: usize, len: usize, at: Option<*mut u8>) -> Result<NonNull<u8>> {
    let (addr, fixed) = match at {
        Some(addr) => (addr.cast(), libc::MAP_FIXED),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: a shared mapping of our own memfd; without MAP_FIXED the kernel picks a free range,
    // with it the caller vouches for the range. MAP_POPULATE faults the pages in now.
    let ptr = unsafe {
        libc::mmap(
            addr,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE | fixed,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::Mmap { len, source: std::io::Error::last_os_error() });
    }
    NonNull::new(ptr.cast()).ok_or(Error::Mmap { len, source: std::io::ErrorKind::InvalidData.into() })
}

/// A 2 MiB-aligned, inaccessible reservation of `len` bytes of address space.
fn reserve_aligned(len: usize) -> Result<NonNull<u8>> {
    let padded = len + HUGE_PAGE_SIZE;
    // SAFETY: a fresh anonymous PROT_NONE mapping at the kernel's choice.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::Mmap { len: padded, source: std::io::Error::last_os_error() });
    }
    let start = ptr as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE_SIZE);
    // SAFETY: giving back the unaligned head and the tail of our own reservation.
    unsafe {
        if aligned > start {
            libc::munmap(ptr, aligned - start);
        }
        let tail = start + padded - (aligned + len);
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    NonNull::new(aligned as *mut u8).ok_or(Error::Mmap { len, source: std::io::ErrorKind::InvalidData.into() })
}

/// Unmaps `len` bytes at `ptr` (a mapping of ours) when dropped, unless disarmed.
struct Unmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Unmap {
    fn drop(&mut self) {
        // SAFETY: a mapping made in this module that nothing refers to.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Maps the `len` bytes (a multiple of 2 MiB) of the hugetlb memfd `fd` physically contiguous
/// and locked. Without root, or without contiguous pages, the error says what to do.
pub(crate) fn map_contiguous(fd: &OwnedFd, len: usize) -> Result<PhysicalMapping> {
    debug_assert!(len > 0 && len % HUGE_PAGE_SIZE == 0);
    let pagemap = File::open(PAGEMAP).map_err(|source| Error::Io {
        what: format!("opening {PAGEMAP} (physical-address DMA memory needs it, and root)"),
        source,
    })?;
    // SAFETY: no fixed address: a fresh mapping.
    let first = Unmap { ptr: unsafe { map_shared(fd, 0, len, None) }?, len };
    let pages = len / HUGE_PAGE_SIZE;
    let phys = physical_addresses(&pagemap, first.ptr.as_ptr(), pages)?;
    let order = contiguous_order(&phys).ok_or_else(|| {
        unavailable(format!(
            "the {pages} huge pages of a {len:#x}-byte region are not physically contiguous (at {}): reserve huge \
             pages at boot (kernel command line `hugepagesz=2M hugepages=N`), or right after it, or use smaller \
             regions (a smaller mempool)",
            phys.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let mapping = if order.iter().enumerate().all(|(k, &i)| k == i) {
        first
    } else {
        // In physical order, one page at a time; the first mapping goes once the pages are in
        // their new places (the memfd holds them meanwhile).
        let reserved = Unmap { ptr: reserve_aligned(len)?, len };
        for (k, &page) in order.iter().enumerate() {
            let at = reserved.ptr.as_ptr().wrapping_add(k * HUGE_PAGE_SIZE);
            // SAFETY: `at` is page `k` of our own reservation, which nothing else uses.
            unsafe { map_shared(fd, page * HUGE_PAGE_SIZE, HUGE_PAGE_SIZE, Some(at)) }?;
        }
        drop(first);
        reserved
    };
    let phys = physical_addresses(&pagemap, mapping.ptr.as_ptr(), pages)?;
    if contiguous_order(&phys).is_none_or(|order| order.iter().enumerate().any(|(k, &i)| k != i)) {
        return Err(unavailable("the huge pages moved while they were put in physical order"));
    }
    // SAFETY: locking our own mapping.
    if unsafe { libc::mlock(mapping.ptr.as_ptr().cast(), len) } != 0 {
        return Err(Error::Io {
            what: format!(
                "mlock of {len:#x} bytes of physical-address DMA memory (raise RLIMIT_MEMLOCK, or run as root)"
            ),
            source: std::io::Error::last_os_error(),
        });
    }
    let mapping = std::mem::ManuallyDrop::new(mapping);
    Ok(PhysicalMapping { ptr: mapping.ptr, len, phys: phys[0] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(first_pfn: u64) -> Vec<u64> {
        (0..ENTRIES_PER_HUGE_PAGE as u64).map(|i| PM_PRESENT | (first_pfn + i)).collect()
    }

    #[test]
    fn a_huge_page_must_be_present_contiguous_and_aligned() {
        assert_eq!(huge_page_address(&entries(0x1_0000)), Ok(0x1000_0000));
        let mut absent = entries(0x1_0000);
        absent[7] &= !PM_PRESENT;
        assert!(huge_page_address(&absent).unwrap_err().contains("page 7 is not present"));
        let mut gap = entries(0x1_0000);
        gap[300] += 1;
        assert!(huge_page_address(&gap).unwrap_err().contains("page 300"));
        assert!(huge_page_address(&entries(0x1_0001)).unwrap_err().contains("not 2 MiB aligned"));
        // What a process without CAP_SYS_ADMIN reads: present, frame 0.
        let unprivileged = vec![PM_PRESENT; ENTRIES_PER_HUGE_PAGE];
        assert!(huge_page_address(&unprivileged).unwrap_err().contains("CAP_SYS_ADMIN"));
    }

    #[test]
    fn pages_are_put_in_physical_order_when_they_form_one_run() {
        let m = HUGE_PAGE_SIZE as u64;
        assert_eq!(contiguous_order(&[10 * m, 11 * m, 12 * m]), Some(vec![0, 1, 2]));
        assert_eq!(contiguous_order(&[12 * m, 11 * m, 10 * m]), Some(vec![2, 1, 0]), "LIFO free list");
        assert_eq!(contiguous_order(&[11 * m, 10 * m, 13 * m]), None);
        assert_eq!(contiguous_order(&[5 * m]), Some(vec![0]));
        assert_eq!(contiguous_order(&[]), None);
    }
}
