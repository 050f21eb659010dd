//! A DMA region: a memfd (hugetlb when it can be had) mapped shared into this process; in
//! physical-address mode, locked and physically contiguous huge pages (`super::physical`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::{physical, IovaAllocator};
use crate::error::{Error, Result};

/// Size of the huge pages DMA regions are backed by.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;
const SMALL_PAGE_SIZE: usize = 4096;

/// Whether a region must, may, or must not be backed by 2 MiB huge pages (`required`,
/// `preferred`, `never` in a file or on a command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize), serde(rename_all = "lowercase"))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum HugePages {
    /// Fail when no huge pages are available (the error says how to reserve them).
    Required,
    /// Use huge pages, falling back to 4 KiB pages with a logged warning.
    #[default]
    Preferred,
    /// Use 4 KiB pages.
    Never,
}

/// A shared memory region devices can DMA to: `len` bytes at a fixed virtual address, with a
/// fixed IOVA, backed by a memfd another process (a vhost-user backend) can map too.
///
/// Invariants: `ptr..ptr+len` is mapped read-write and shared for the life of the value. When
/// `fd` is there, its offset 0 is the region's first byte. A physical region (no `fd`: it is
/// made of huge pages of one memfd each, in physical order) is locked, physically contiguous,
/// and its IOVA is the physical address of its first byte.
#[derive(Debug)]
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    iova: u64,
    fd: Option<OwnedFd>,
    huge: bool,
}

// SAFETY: the region is plain shared memory; every access to its contents goes through raw
// pointers whose users synchronise themselves (rings with atomics and fences, buffers by
// ownership of the mbuf that covers them).
unsafe impl Send for DmaRegion {}
// SAFETY: as above; `&DmaRegion` only exposes the address, length, IOVA and fd.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Maps a zeroed region of at least `len` bytes (rounded up to the page size) and gives it
    /// an IOVA from `iova`. With [`IovaAllocator::physical`] the region is 2 MiB huge pages
    /// whatever `huge_pages` says (without them, an error), locked, physically contiguous, its
    /// IOVA the physical address: that needs root and free huge pages.
    pub fn new(name: &str, len: usize, huge_pages: HugePages, iova: &IovaAllocator) -> Result<Self> {
        if iova.is_physical() {
            return Self::new_physical(name, len, huge_pages);
        }
        let (fd, len, huge) = match huge_pages {
            HugePages::Never => (create_memfd(name, false)?, round_up(len, SMALL_PAGE_SIZE), false),
            HugePages::Required | HugePages::Preferred => {
                let huge_len = round_up(len, HUGE_PAGE_SIZE);
                match create_memfd(name, true).and_then(|fd| map(&fd, huge_len).map(|m| (fd, m))) {
                    Ok((fd, ptr)) => return Self::finish(fd, ptr, huge_len, true, iova),
                    Err(err) if huge_pages == HugePages::Required => {
                        return Err(Error::HugePagesUnavailable { len: huge_len, source: Box::new(err) })
                    }
                    Err(err) => {
                        tracing::warn!(
                            "no 2 MiB huge pages for DMA region {name:?} ({err}); using 4 KiB pages \
                             (slower, and vhost-user backends may drop packets on IOTLB misses): \
                             run scripts/hugepages.sh to reserve huge pages"
                        );
                        (create_memfd(name, false)?, round_up(len, SMALL_PAGE_SIZE), false)
                    }
                }
            }
        };
        let ptr = map(&fd, len)?;
        Self::finish(fd, ptr, len, huge, iova)
    }

    fn finish(fd: OwnedFd, ptr: NonNull<u8>, len: usize, huge: bool, iova: &IovaAllocator) -> Result<Self> {
        let align = if huge { HUGE_PAGE_SIZE } else { SMALL_PAGE_SIZE } as u64;
        let mut region = Self { ptr, len, iova: 0, fd: Some(fd), huge };
        region.iova = iova.assign(ptr.as_ptr() as u64, len as u64, align)?;
        Ok(region)
    }

    fn new_physical(name: &str, len: usize, huge_pages: HugePages) -> Result<Self> {
        if huge_pages == HugePages::Never {
            tracing::debug!(
                "DMA region {name:?}: huge pages anyway (physical-address memory must be physically contiguous, \
                 which only a huge page guarantees beyond 4 KiB)"
            );
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::PhysicalAddressesUnavailable {
                reason: "physical addresses come from /proc/self/pagemap, which gives them only to root \
                         (CAP_SYS_ADMIN): run as root"
                    .into(),
            });
        }
        let len = round_up(len, HUGE_PAGE_SIZE);
        let mapping = physical::map_contiguous(name, len).map_err(|err| match err {
            Error::Mmap { .. } | Error::Memfd(_) => Error::HugePagesUnavailable { len, source: Box::new(err) },
            other => other,
        })?;
        tracing::debug!("DMA region {name:?}: {len:#x} bytes at physical address {:#x}", mapping.phys);
        // The mapping keeps the pages, one memfd each: none is kept for sharing.
        Ok(Self { ptr: mapping.ptr, len: mapping.len, iova: mapping.phys, fd: None, huge: true })
    }

    /// Start of the mapping in this process.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes (a multiple of the page size).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions have at least one page.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address the device knows the region's first byte by.
    #[inline]
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Whether the region is backed by 2 MiB huge pages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }

    /// Whether the IOVA is the physical address: locked, physically contiguous memory made with
    /// [`IovaAllocator::physical`], which a device without an IOMMU can be given.
    pub fn is_physical(&self) -> bool {
        self.fd.is_none()
    }

    /// The memfd backing the region (offset 0 is the region's first byte), to share the region
    /// with a vhost-user backend; `None` for a physical region. Crate-private: writing through
    /// it, or resizing it (which its seals refuse), would change memory under the references
    /// this crate hands out.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether `[va, va+len)` lies inside the region.
    #[inline]
    pub fn contains(&self, va: *const u8, len: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        let va = va as usize;
        va >= start && va.checked_add(len).is_some_and(|end| end <= start + self.len)
    }

    /// The IOVA of the byte at `va`, which must lie inside the region.
    #[inline]
    pub fn iova_of(&self, va: *const u8) -> u64 {
        debug_assert!(self.contains(va, 0));
        self.iova + (va as u64 - self.ptr.as_ptr() as u64)
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and nothing refers to the
        // region any more (owners keep the region alive while rings or buffers use it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn round_up(len: usize, page: usize) -> usize {
    len.max(1).next_multiple_of(page)
}

pub(super) fn create_memfd(name: &str, huge: bool) -> Result<OwnedFd> {
    let cname = CString::new(name).unwrap_or_else(|_| c"virtio-pmd".to_owned());
    // Sealable: `map` seals the size, so that nobody who gets the fd (a vhost-user backend)
    // can shrink the file under the mapping (SIGBUS on the next access) or grow it.
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if huge {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: `cname` is a valid NUL-terminated string; the call has no other preconditions.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn map(fd: &OwnedFd, len: usize) -> Result<NonNull<u8>> {
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: plain fcntl on an fd we own; F_SEAL_SEAL too, so the seals cannot be lifted.
    if unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL)
    } != 0
    {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh shared mapping of our own memfd; MAP_POPULATE faults every page in now
    // (for hugetlb, mmap fails with ENOMEM if the pages cannot be reserved, never later).
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::Mmap { len, source: std::io::Error::last_os_error() });
    }
    NonNull::new(ptr.cast()).ok_or(Error::Mmap { len, source: std::io::ErrorKind::InvalidData.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_page_region_is_zeroed_shared_and_identity_mapped() {
        let region = DmaRegion::new("test", 10_000, HugePages::Never, &IovaAllocator::identity()).unwrap();
        assert_eq!(region.len(), 12_288);
        assert_eq!(region.iova(), region.as_ptr() as u64);
        assert!(!region.is_huge());
        let probe = region.as_ptr().wrapping_add(100);
        assert!(region.contains(probe, 8));
        assert!(!region.contains(probe, region.len()));
        assert_eq!(region.iova_of(probe), region.iova() + 100);
        // SAFETY: inside the region, which nobody else uses.
        unsafe {
            assert_eq!(probe.read_volatile(), 0);
            probe.write_volatile(7);
        }
        // The memfd sees the write: the mapping is shared.
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte from our own fd into a local buffer.
        let n = unsafe { libc::pread(region.fd().unwrap().as_raw_fd(), byte.as_mut_ptr().cast(), 1, 100) };
        assert_eq!((n, byte[0]), (1, 7));
    }

    #[test]
    fn the_memfd_cannot_be_resized() {
        for huge in [HugePages::Never, HugePages::Preferred] {
            let region = DmaRegion::new("test", 4096, huge, &IovaAllocator::identity()).unwrap();
            let fd = region.fd().unwrap().as_raw_fd();
            for len in [0, region.len() as libc::off_t * 2] {
                // SAFETY: a resize attempt on our own fd; the seals must refuse it.
                let rc = unsafe { libc::ftruncate(fd, len) };
                assert_eq!(rc, -1, "ftruncate({len}) must fail on a sealed region");
                assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
            }
            // SAFETY: reading the seals of our own fd.
            let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
            assert_eq!(seals, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL);
        }
    }

    #[test]
    fn preferred_huge_pages_always_yield_a_region() {
        let region = DmaRegion::new("test", 4096, HugePages::Preferred, &IovaAllocator::identity()).unwrap();
        assert!(region.len() >= 4096);
    }

    /// The physical address of the byte at `va`, read from pagemap independently of the region.
    fn pagemap_phys(va: *const u8) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut entry = [0u8; 8];
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        pagemap.read_exact_at(&mut entry, va as u64 / 4096 * 8).unwrap();
        let entry = u64::from_ne_bytes(entry);
        assert_ne!(entry & (1 << 63), 0, "page of {va:p} present");
        (entry & ((1 << 55) - 1)) * 4096 + va as u64 % 4096
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn assert_physical_needs_root() {
        let err = DmaRegion::new("phys", 4096, HugePages::Required, &IovaAllocator::physical()).unwrap_err();
        assert!(matches!(err, Error::PhysicalAddressesUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("run as root"), "{err}");
    }

    /// Without root, physical-address memory is refused with a typed error: checked in this test
    /// binary run again as `nobody` when the tests run as root.
    #[test]
    fn physical_regions_need_root() {
        use std::os::unix::process::CommandExt;
        const CHILD: &str = "VIRTIO_PMD_TEST_AS_NOBODY";
        if std::env::var_os(CHILD).is_some() || !is_root() {
            assert!(!is_root(), "the child must run without root");
            assert_physical_needs_root();
            return;
        }
        let name = "mem::region::tests::physical_regions_need_root";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1"])
            .env(CHILD, "1")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "the run as nobody failed: {text}");
    }

    /// Checks a physical region against pagemap, page by page, and that it is usable. (Its lock is
    /// not visible: the kernel does not account mlock of hugetlb memory in VmLck.)
    fn check_physical(region: &DmaRegion) {
        assert!(region.is_physical() && region.is_huge() && region.fd().is_none());
        assert_ne!(region.iova(), 0);
        assert_eq!(region.iova() % HUGE_PAGE_SIZE as u64, 0);
        for offset in (0..region.len()).step_by(4096) {
            let va = region.as_ptr().wrapping_add(offset);
            assert_eq!(pagemap_phys(va), region.iova_of(va), "offset {offset:#x}");
            // SAFETY: inside the region, which nobody else uses.
            unsafe {
                assert_eq!(va.read_volatile(), 0);
                va.write_volatile(0x5a);
            }
        }
    }

    #[test]
    fn physical_regions_are_contiguous_locked_huge_pages_at_their_physical_address() {
        if !is_root() {
            assert_physical_needs_root();
            return;
        }
        // One huge page is always contiguous.
        // (Asking for no huge pages changes nothing: physical memory is huge pages.)
        let one = DmaRegion::new("phys", 10_000, HugePages::Never, &IovaAllocator::physical()).unwrap();
        assert_eq!(one.len(), HUGE_PAGE_SIZE);
        check_physical(&one);
        // Several: contiguous when the kernel has such pages free (a freshly booted guest), else
        // the error lists the addresses of the pages it tried, which must then really hold no run.
        match DmaRegion::new("phys", 5 << 20, HugePages::Required, &IovaAllocator::physical()) {
            Ok(three) => {
                assert_eq!(three.len(), 6 << 20);
                check_physical(&three);
            }
            Err(Error::PhysicalAddressesUnavailable { reason }) => {
                let at = reason.split_once("(at ").and_then(|(_, r)| r.split_once(')')).unwrap().0;
                let phys: Vec<u64> =
                    at.split(", ").map(|p| u64::from_str_radix(p.trim_start_matches("0x"), 16).unwrap()).collect();
                assert!(phys.len() >= 3, "{reason}");
                assert_eq!(physical::find_run(&phys, 3), None, "{reason}");
                eprintln!("this machine's free huge pages are scattered: {reason}");
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn physical_mode_assigns_nothing() {
        let physical = IovaAllocator::physical();
        assert!(physical.is_physical() && !IovaAllocator::identity().is_physical());
        assert!(matches!(physical.assign(0x7f00_0000_0000, 4096, 4096), Err(Error::InvalidConfig(_))));
    }
}
