//! Physical-address DMA memory, for devices that reach memory without an IOMMU (`uio_pci_generic`,
//! VFIO no-IOMMU): the device is given physical addresses, so a region must be physically
//! contiguous for the driver's `IOVA = base + offset` arithmetic to hold.
//!
//! How: huge pages are taken one at a time (a hugetlb memfd each, mapped and faulted in), and
//! `/proc/self/pagemap` gives each 4 KiB page's frame number (root only: without CAP_SYS_ADMIN the
//! kernel reports frame 0). Every huge page is checked to be present and physically contiguous
//! over its 2 MiB. Pages are taken until some of them form one physically contiguous run as long
//! as the region (the kernel hands free huge pages out in no particular order: last freed first,
//! often descending, with gaps where others were taken); those are mapped again at consecutive
//! virtual addresses in physical order, checked again, and locked (`mlock`; hugetlb pages are never
//! swapped, migrated or reclaimed while mapped anyway, and the kernel does not account their lock
//! in VmLck). The pages not used go back to the kernel. When no run can be found within a bounded
//! number of pages, the error says how to get contiguous ones.
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

/// Whether huge pages at physical addresses `phys`, in this order, follow each other.
pub(crate) fn is_run(phys: &[u64]) -> bool {
    !phys.is_empty() && phys.windows(2).all(|w| w[0].checked_add(HUGE_PAGE_SIZE as u64) == Some(w[1]))
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

/// How many huge pages the search for a contiguous run of `pages` may hold at once.
fn search_limit(pages: usize) -> usize {
    4 * pages + 16
}

/// `want` of the huge pages at physical addresses `phys` that follow each other: their indices
/// into `phys`, in physical order (the lowest such run).
pub(crate) fn find_run(phys: &[u64], want: usize) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..phys.len()).collect();
    order.sort_by_key(|&i| phys[i]);
    order.windows(want.max(1)).find(|w| is_run(&w.iter().map(|&i| phys[i]).collect::<Vec<_>>())).map(<[usize]>::to_vec)
}

/// Maps the huge page of the memfd `fd` at the kernel's choice, or exactly at `at` (`MAP_FIXED`).
///
/// # Safety
/// With `at`, the huge page there must be part of a reservation of ours that nothing else uses.
unsafe fn map_page(fd: &OwnedFd, at: Option<*mut u8>) -> Result<NonNull<u8>> {
    let (addr, fixed) = match at {
        Some(addr) => (addr.cast(), libc::MAP_FIXED),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: a shared mapping of our own memfd; without MAP_FIXED the kernel picks a free range,
    // with it the caller vouches for the range. MAP_POPULATE faults the page in now.
    let ptr = unsafe {
        libc::mmap(
            addr,
            HUGE_PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE | fixed,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::Mmap { len: HUGE_PAGE_SIZE, source: std::io::Error::last_os_error() });
    }
    NonNull::new(ptr.cast()).ok_or(Error::Mmap { len: HUGE_PAGE_SIZE, source: std::io::ErrorKind::InvalidData.into() })
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

/// One huge page taken for the search: its memfd and a mapping of it.
struct Page {
    fd: OwnedFd,
    _mapping: Unmap,
    phys: u64,
}

/// Takes one more huge page (`Ok(None)`: the kernel has no free one left).
fn take_page(name: &str, pagemap: &File) -> Result<Option<Page>> {
    let fd = super::region::create_memfd(name, true)?;
    // SAFETY: a plain syscall on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), HUGE_PAGE_SIZE as libc::off_t) } != 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: no fixed address: a fresh mapping.
    let ptr = match unsafe { map_page(&fd, None) } {
        Ok(ptr) => ptr,
        // MAP_POPULATE of hugetlb memory fails with ENOMEM when no page can be had.
        Err(Error::Mmap { source, .. }) if source.raw_os_error() == Some(libc::ENOMEM) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mapping = Unmap { ptr, len: HUGE_PAGE_SIZE };
    let phys = physical_addresses(pagemap, ptr.as_ptr(), 1)?[0];
    Ok(Some(Page { fd, _mapping: mapping, phys }))
}

/// Maps `len` bytes (a multiple of 2 MiB) of physically contiguous, locked huge pages. Without
/// root, without huge pages, or without contiguous ones, the error says what to do.
pub(crate) fn map_contiguous(name: &str, len: usize) -> Result<PhysicalMapping> {
    debug_assert!(len > 0 && len % HUGE_PAGE_SIZE == 0);
    let pagemap = File::open(PAGEMAP).map_err(|source| Error::Io {
        what: format!("opening {PAGEMAP} (physical-address DMA memory needs it, and root)"),
        source,
    })?;
    let want = len / HUGE_PAGE_SIZE;
    let mut pages: Vec<Page> = Vec::with_capacity(want);
    let run = loop {
        let phys: Vec<u64> = pages.iter().map(|p| p.phys).collect();
        if let Some(run) = (phys.len() >= want).then(|| find_run(&phys, want)).flatten() {
            break run;
        }
        let limit = search_limit(want);
        let taken = if pages.len() < limit { take_page(name, &pagemap)? } else { None };
        match taken {
            Some(page) => pages.push(page),
            None if pages.len() < want => {
                return Err(Error::Mmap { len, source: std::io::Error::from_raw_os_error(libc::ENOMEM) })
            }
            None => {
                return Err(unavailable(format!(
                    "no {want} physically contiguous huge pages for a {len:#x}-byte region among the {} taken (at {}): \
                     reserve huge pages at boot (kernel command line `hugepagesz=2M hugepages=N`) or right after it, \
                     or use smaller regions (a smaller mempool)",
                    pages.len(),
                    phys.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    };
    // The run's pages, in physical order, at consecutive addresses of one reservation; the
    // other pages (and the first mappings) go when `pages` drops.
    let reserved = Unmap { ptr: reserve_aligned(len)?, len };
    for (k, &page) in run.iter().enumerate() {
        let at = reserved.ptr.as_ptr().wrapping_add(k * HUGE_PAGE_SIZE);
        // SAFETY: `at` is page `k` of our own reservation, which nothing else uses.
        unsafe { map_page(&pages[page].fd, Some(at)) }?;
    }
    drop(pages);
    let phys = physical_addresses(&pagemap, reserved.ptr.as_ptr(), want)?;
    if !is_run(&phys) {
        return Err(unavailable("the huge pages moved while they were put in physical order"));
    }
    // SAFETY: locking our own mapping.
    if unsafe { libc::mlock(reserved.ptr.as_ptr().cast(), len) } != 0 {
        return Err(Error::Io {
            what: format!(
                "mlock of {len:#x} bytes of physical-address DMA memory (raise RLIMIT_MEMLOCK, or run as root)"
            ),
            source: std::io::Error::last_os_error(),
        });
    }
    let mapping = std::mem::ManuallyDrop::new(reserved);
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
    fn runs_follow_each_other_in_the_order_given() {
        let m = HUGE_PAGE_SIZE as u64;
        assert!(is_run(&[10 * m, 11 * m, 12 * m]));
        assert!(!is_run(&[12 * m, 11 * m, 10 * m]), "descending is not a run until sorted");
        assert!(!is_run(&[10 * m, 12 * m]));
        assert!(is_run(&[5 * m]));
        assert!(!is_run(&[]));
        assert!(!is_run(&[u64::MAX - m + 1, 0]), "no wrap past the top");
        assert_eq!(find_run(&[12 * m, 11 * m, 10 * m], 3), Some(vec![2, 1, 0]), "LIFO free list");
    }

    #[test]
    fn a_run_is_found_among_scattered_pages() {
        let m = HUGE_PAGE_SIZE as u64;
        // What a guest gave after its huge pages were freed and taken again: four in a row
        // (descending) and one elsewhere; three more taken, one of them closes the run.
        let phys = [0x77 * m, 0x76 * m, 0x75 * m, 0x74 * m, 0x35 * m];
        assert_eq!(find_run(&phys, 5), None);
        assert_eq!(find_run(&phys, 4), Some(vec![3, 2, 1, 0]));
        let more = [0x77 * m, 0x76 * m, 0x75 * m, 0x74 * m, 0x35 * m, 0x20 * m, 0x73 * m];
        assert_eq!(find_run(&more, 5), Some(vec![6, 3, 2, 1, 0]));
        assert_eq!(find_run(&[], 1), None);
    }
}
