//! A window of memory-mapped device registers, reached only through volatile loads and stores.
//!
//! Invariants: `base..base+len` stays mapped for as long as any clone of the [`Mmio`] lives (each
//! clone holds the owner of the mapping), and nothing in this crate ever makes a `&`/`&mut` to it.
//! Bounds and alignment are checked when a window is cut ([`Mmio::window`]) and when a typed view
//! is set up over it (the common configuration checks its length once); the per-register
//! accessors are `unsafe` and unchecked, and their callers say in a `// SAFETY:` comment which
//! set-up check covers them.
#![allow(unsafe_code)]

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;

/// Memory-mapped registers: `len` bytes at `base`, kept mapped by `owner`.
#[derive(Clone)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
    owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: `Mmio` is an address range plus an owner that is itself `Send + Sync`; every access
// through it is a single volatile load or store of device registers, which the device serialises.
// Nothing in it is tied to the thread that created it.
unsafe impl Send for Mmio {}
// SAFETY: as above: shared `&Mmio` only allows volatile register accesses.
unsafe impl Sync for Mmio {}

impl fmt::Debug for Mmio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mmio").field("base", &self.base).field("len", &format_args!("{:#x}", self.len)).finish()
    }
}

impl Mmio {
    /// A window over `len` bytes of registers at `base`, kept mapped by `owner`.
    ///
    /// # Safety
    ///
    /// `base..base+len` must be mapped readable and writable (device memory, or ordinary memory
    /// in tests) for as long as `owner` lives, and must not be reachable through any Rust
    /// reference. `base` must be at least 4-byte aligned (a BAR mapping is page aligned).
    pub unsafe fn new(base: NonNull<u8>, len: usize, owner: Arc<dyn Any + Send + Sync>) -> Self {
        debug_assert!(base.as_ptr() as usize % 4 == 0);
        Self { base, len, owner }
    }

    /// Length of the window in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the first byte (for diagnostics and alignment checks; never dereferenced
    /// outside this module).
    #[inline]
    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// The sub-window `offset..offset+len`, or `None` when it does not lie inside this one.
    pub fn window(&self, offset: usize, len: usize) -> Option<Mmio> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // `offset <= self.len`, so the pointer stays inside (or one past) the mapping.
        let base = NonNull::new(self.base.as_ptr().wrapping_add(offset))?;
        Some(Mmio { base, len, owner: self.owner.clone() })
    }

    /// Whether an access of `size` bytes at `offset` is inside the window and naturally aligned.
    #[inline]
    pub fn fits(&self, offset: usize, size: usize) -> bool {
        offset.checked_add(size).is_some_and(|end| end <= self.len) && (self.addr() + offset) % size == 0
    }

    /// Pointer to the register at `offset`, typed.
    #[inline(always)]
    fn at<T>(&self, offset: usize) -> *mut T {
        self.base.as_ptr().wrapping_add(offset).cast()
    }

    /// Reads the 8-bit register at `offset`.
    ///
    /// # Safety
    ///
    /// `self.fits(offset, 1)`.
    #[inline(always)]
    pub unsafe fn read_u8(&self, offset: usize) -> u8 {
        debug_assert!(self.fits(offset, 1));
        // SAFETY: in bounds per the caller's contract; the mapping is live while `self` holds
        // its owner (constructor contract).
        unsafe { self.at::<u8>(offset).read_volatile() }
    }

    /// Reads the little-endian 16-bit register at `offset`.
    ///
    /// # Safety
    ///
    /// `self.fits(offset, 2)`.
    #[inline(always)]
    pub unsafe fn read_u16(&self, offset: usize) -> u16 {
        debug_assert!(self.fits(offset, 2));
        // SAFETY: in bounds and aligned per the caller's contract; mapping live as above.
        u16::from_le(unsafe { self.at::<u16>(offset).read_volatile() })
    }

    /// Reads the little-endian 32-bit register at `offset`.
    ///
    /// # Safety
    ///
    /// `self.fits(offset, 4)`.
    #[inline(always)]
    pub unsafe fn read_u32(&self, offset: usize) -> u32 {
        debug_assert!(self.fits(offset, 4));
        // SAFETY: in bounds and aligned per the caller's contract; mapping live as above.
        u32::from_le(unsafe { self.at::<u32>(offset).read_volatile() })
    }

    /// Writes the 8-bit register at `offset`.
    ///
    /// # Safety
    ///
    /// `self.fits(offset, 1)`.
    #[inline(always)]
    pub unsafe fn write_u8(&self, offset: usize, value: u8) {
        debug_assert!(self.fits(offset, 1));
        // SAFETY: in bounds per the caller's contract; mapping live as above.
        unsafe { self.at::<u8>(offset).write_volatile(value) }
    }

    /// Writes the little-endian 16-bit register at `offset`.
    ///
    /// # Safety
    ///
    /// `self.fits(offset, 2)`.
    #[inline(always)]
    pub unsafe fn write_u16(&self, offset: usize, value: u16) {
        debug_assert!(self.fits(offset, 2));
        // SAFETY: in bounds and aligned per the caller's contract; mapping live as above.
        unsafe { self.at::<u16>(offset).write_volatile(value.to_le()) }
    }

    /// Writes the little-endian 32-bit register at `offset`.
    ///
    /// # Safety
    ///
    /// `self.fits(offset, 4)`.
    #[inline(always)]
    pub unsafe fn write_u32(&self, offset: usize, value: u32) {
        debug_assert!(self.fits(offset, 4));
        // SAFETY: in bounds and aligned per the caller's contract; mapping live as above.
        unsafe { self.at::<u32>(offset).write_volatile(value.to_le()) }
    }

    /// Checked 8-bit read: `None` when `offset` is outside the window.
    pub fn get_u8(&self, offset: usize) -> Option<u8> {
        // SAFETY: checked just now.
        self.fits(offset, 1).then(|| unsafe { self.read_u8(offset) })
    }

    /// Checked 16-bit read: `None` when outside the window or unaligned.
    pub fn get_u16(&self, offset: usize) -> Option<u16> {
        // SAFETY: checked just now.
        self.fits(offset, 2).then(|| unsafe { self.read_u16(offset) })
    }

    /// Checked 32-bit read: `None` when outside the window or unaligned.
    pub fn get_u32(&self, offset: usize) -> Option<u32> {
        // SAFETY: checked just now.
        self.fits(offset, 4).then(|| unsafe { self.read_u32(offset) })
    }
}

/// A shared read-write mapping of `len` bytes of a device region (a BAR, through a VFIO device fd
/// or a sysfs `resourceN` file); unmapped on drop, and only then does it let go of `keep` (the
/// open device), so a BAR is always unmapped before the device fd can close.
pub(crate) struct RegionMapping {
    ptr: NonNull<u8>,
    len: usize,
    _keep: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the mapping is an address range; accesses to it go through `Mmio`'s volatile accessors,
// which are safe from any thread. `_keep` is `Send + Sync`.
unsafe impl Send for RegionMapping {}
// SAFETY: as above; `&RegionMapping` exposes only the address and length.
unsafe impl Sync for RegionMapping {}

impl std::fmt::Debug for RegionMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionMapping").field("ptr", &self.ptr).field("len", &self.len).finish_non_exhaustive()
    }
}

impl RegionMapping {
    /// Maps `len` bytes of `fd` at `offset` (a VFIO region's offset, or 0 in a `resourceN` file),
    /// shared, read-write;
    /// `keep` (the owner of `fd`) stays alive until the mapping is gone.
    pub(crate) fn new(
        fd: &impl AsRawFd,
        offset: u64,
        len: usize,
        keep: Arc<dyn Any + Send + Sync>,
    ) -> io::Result<Arc<Self>> {
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED): it cannot overlap memory
        // Rust already uses. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(Arc::new(Self { ptr, len, _keep: keep }))
    }

    /// The whole mapping as an [`Mmio`] window, which keeps the mapping alive.
    pub(crate) fn window(self: &Arc<Self>) -> Mmio {
        // SAFETY: `ptr..ptr+len` is a live shared read-write mapping made by `new`, page aligned,
        // and stays mapped while the `Arc` passed as owner lives; this crate never makes
        // references into device memory.
        unsafe { Mmio::new(self.ptr, self.len, self.clone()) }
    }
}

impl Drop for RegionMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; every `Mmio` window into it holds an `Arc`
        // of this value, so none is left when it drops.
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            tracing::warn!("munmap of a device region failed: {}", io::Error::last_os_error());
        }
    }
}

/// Ordinary heap memory posing as registers, for tests of the views built on [`Mmio`].
#[cfg(test)]
pub(crate) fn heap(len: usize) -> Mmio {
    use std::sync::atomic::AtomicU64;
    let words: Arc<Vec<AtomicU64>> = Arc::new((0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect());
    let base = NonNull::new(words.as_ptr().cast_mut().cast::<u8>()).unwrap();
    // SAFETY: the words are 8-aligned, at least `len` bytes, live as long as the owner, and are
    // interior-mutable (atomics), so writing through a pointer derived from a shared reference
    // is allowed; nothing else refers to them.
    unsafe { Mmio::new(base, len, words) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_bounds_checked_and_share_memory() {
        let m = heap(64);
        assert!(m.window(60, 4).is_some());
        assert!(m.window(61, 4).is_none());
        assert!(m.window(usize::MAX, 2).is_none());
        let w = m.window(16, 16).unwrap();
        assert_eq!(w.len(), 16);
        // SAFETY: offsets checked by `fits`.
        unsafe {
            assert!(w.fits(4, 4));
            w.write_u32(4, 0x1234_5678);
        }
        assert_eq!(m.get_u32(20), Some(0x1234_5678));
        assert_eq!(m.get_u16(22), Some(0x1234));
        assert_eq!(m.get_u8(20), Some(0x78));
        assert_eq!(m.get_u16(21), None, "unaligned");
        assert_eq!(m.get_u32(64), None, "out of bounds");
    }
}
