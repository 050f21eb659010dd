//! The system calls VFIO needs beyond what `vfio-ioctls` offers: three ioctls it keeps private
//! (`VFIO_GROUP_GET_STATUS`, `VFIO_DEVICE_GET_REGION_INFO`, `VFIO_IOMMU_GET_INFO`), positioned
//! reads and writes of the device fd with real error reporting (its `region_read`/`region_write`
//! only log failures), and the DMA map call. (Device regions are mapped with the PCI module's
//! `RegionMapping`.)
//!
//! Every function here is a safe wrapper: each checks what the kernel returned, and the buffers
//! it hands the kernel are sized by `argsz`, which it sets itself. Parsing of the returned bytes
//! lives in `iommu.rs`, in safe code.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vfio_bindings::bindings::vfio::{vfio_group_status, vfio_iommu_type1_info, vfio_region_info, VFIO_BASE, VFIO_TYPE};
use vfio_ioctls::{VfioContainer, VfioError};
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
};

use crate::mem::DmaRegion;

// "VFIO_GROUP_GET_STATUS - _IOR(VFIO_TYPE, VFIO_BASE + 3, struct vfio_group_status)": the kernel
// encodes these as _IO (no size, no direction) and passes the struct by pointer with argsz.
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE as u32, VFIO_BASE + 3);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags (`VFIO_GROUP_FLAGS_*`).
pub(crate) fn group_status(group: &impl AsRawFd) -> io::Result<u32> {
    let mut status = vfio_group_status { argsz: size_of::<vfio_group_status>() as u32, flags: 0 };
    // SAFETY: the kernel writes at most `argsz` bytes into `status`, which is that large and
    // lives across the call.
    check(unsafe { ioctl_with_mut_ref(group, VFIO_GROUP_GET_STATUS(), &mut status) })?;
    Ok(status.flags)
}

/// `VFIO_DEVICE_GET_REGION_INFO` for region `index` (without its capability chain).
pub(crate) fn region_info(device: &impl AsRawFd, index: u32) -> io::Result<vfio_region_info> {
    let mut info = vfio_region_info { argsz: size_of::<vfio_region_info>() as u32, index, ..Default::default() };
    // SAFETY: the kernel writes at most `argsz` bytes (it never writes a capability chain past
    // argsz; it only reports a larger argsz), into a struct that large, live across the call.
    check(unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_REGION_INFO(), &mut info) })?;
    Ok(info)
}

/// `VFIO_IOMMU_GET_INFO` with its capability chain: asks once with the bare structure to learn
/// `argsz`, then again with a buffer that large. Returns the raw bytes (the structure followed by
/// the chain), which `iommu::parse_info` decodes. Needs the IOMMU type to be set, i.e. a group
/// attached to the container.
pub(crate) fn iommu_info(container: &impl AsRawFd) -> io::Result<Vec<u8>> {
    let mut argsz = size_of::<vfio_iommu_type1_info>();
    for _ in 0..4 {
        // u64 words keep the buffer 8-byte aligned, as the structure needs.
        let mut words = vec![0u64; argsz.div_ceil(8)];
        let info = words.as_mut_ptr().cast::<vfio_iommu_type1_info>();
        // SAFETY: `words` is at least `size_of::<vfio_iommu_type1_info>()` bytes and 8-aligned.
        unsafe { info.write(vfio_iommu_type1_info { argsz: argsz as u32, ..Default::default() }) };
        // SAFETY: the kernel writes at most `argsz` bytes, the buffer's size, and the buffer
        // lives across the call.
        check(unsafe { ioctl_with_mut_ptr(container, VFIO_IOMMU_GET_INFO(), info) })?;
        // SAFETY: initialised above and updated by the kernel; read by value.
        let wanted = unsafe { info.read() }.argsz as usize;
        if wanted <= argsz {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).take(argsz).collect();
            return Ok(bytes);
        }
        argsz = wanted;
    }
    Err(io::Error::other("VFIO_IOMMU_GET_INFO kept asking for a larger buffer"))
}

/// Reads exactly `buf.len()` bytes at `offset` of `fd`.
pub(crate) fn pread_exact(fd: &impl AsRawFd, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes.
        let n = unsafe {
            libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), (offset + done as u64) as libc::off_t)
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// Writes all of `data` at `offset` of `fd`.
pub(crate) fn pwrite_all(fd: &impl AsRawFd, data: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: `rest` is a live buffer of `rest.len()` bytes.
        let n = unsafe {
            libc::pwrite(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), (offset + done as u64) as libc::off_t)
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

// The container and group ioctls the no-IOMMU transport makes itself (`vfio-ioctls` knows only
// type1 containers and `/dev/vfio/<group>` nodes): "VFIO_GET_API_VERSION - _IO(VFIO_TYPE,
// VFIO_BASE + 0)" and the others of uapi `linux/vfio.h`.
vmm_sys_util::ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE as u32, VFIO_BASE);
vmm_sys_util::ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE as u32, VFIO_BASE + 1);
vmm_sys_util::ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE as u32, VFIO_BASE + 2);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE as u32, VFIO_BASE + 4);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE as u32, VFIO_BASE + 6);

/// `VFIO_API_VERSION`: what `VFIO_GET_API_VERSION` answers.
pub(crate) const API_VERSION: libc::c_int = 0;
/// `VFIO_NOIOMMU_IOMMU`: the IOMMU "type" of VFIO's no-IOMMU mode.
pub(crate) const NOIOMMU_IOMMU: libc::c_ulong = 8;

/// `VFIO_GET_API_VERSION` on a container fd.
pub(crate) fn api_version(container: &impl AsRawFd) -> io::Result<libc::c_int> {
    // SAFETY: an ioctl without argument.
    check(unsafe { ioctl(container, VFIO_GET_API_VERSION()) })
}

/// `VFIO_CHECK_EXTENSION`: whether the container supports IOMMU type `kind`.
pub(crate) fn check_extension(container: &impl AsRawFd, kind: libc::c_ulong) -> io::Result<bool> {
    // SAFETY: the argument is a plain integer.
    check(unsafe { ioctl_with_val(container, VFIO_CHECK_EXTENSION(), kind) }).map(|supported| supported > 0)
}

/// `VFIO_SET_IOMMU`: gives the container (with a group attached) IOMMU type `kind`.
pub(crate) fn set_iommu(container: &impl AsRawFd, kind: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the argument is a plain integer.
    check(unsafe { ioctl_with_val(container, VFIO_SET_IOMMU(), kind) }).map(drop)
}

/// `VFIO_GROUP_SET_CONTAINER`: attaches the group to the container.
pub(crate) fn group_set_container(group: &impl AsRawFd, container: &impl AsRawFd) -> io::Result<()> {
    let fd: libc::c_int = container.as_raw_fd();
    // SAFETY: the kernel reads one int from `fd`, which lives across the call.
    check(unsafe { ioctl_with_ref(group, VFIO_GROUP_SET_CONTAINER(), &fd) }).map(drop)
}

/// `VFIO_GROUP_GET_DEVICE_FD`: the device fd of `bdf`, a member of the group.
pub(crate) fn group_device_fd(group: &impl AsRawFd, bdf: &str) -> io::Result<OwnedFd> {
    let name = CString::new(bdf).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the kernel reads the NUL-terminated string, which lives across the call.
    let fd = check(unsafe { ioctl_with_ptr(group, VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr()) })?;
    // SAFETY: a new fd the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `VFIO_IOMMU_MAP_DMA` of `region` at its IOVA, read-write, in `container`.
pub(crate) fn map_dma(container: &VfioContainer, region: &DmaRegion) -> Result<(), VfioError> {
    // SAFETY: `vfio_dma_map` lets the device write the range behind the compiler's back while
    // the mapping exists. Nothing whose validity matters to Rust lives there (`DmaRegion`'s
    // invariant): rings are reached only through raw pointers with volatile or atomic accesses,
    // mbuf metadata lives in CPU-private memory, and the slices of packet data an mbuf hands out
    // cover only a buffer its holder owns, which the device does not write (the mbuf module's
    // threat model). The mapping stays valid until the range is unmapped from the IOMMU or
    // munmapped, whichever comes first.
    unsafe { container.vfio_dma_map(region.iova(), region.len(), region.as_ptr()) }
}
