//! One VFIO container (one IOMMU address space) shared by every port, and the DMA mappings in it.
//!
//! Order of use, which the kernel imposes: the container is opened empty; the IOMMU type
//! (type1v2) is set by `vfio-ioctls` when the first group attaches, that is, when the first port
//! is opened; only then can the IOMMU be asked for its valid IOVA ranges or given mappings. So:
//!
//! 1. [`Container::open`];
//! 2. open every port ([`VfioPciTransport::open`](super::VfioPciTransport::open)); each attach
//!    re-reads the IOMMU information, since a new group can narrow the valid ranges;
//! 3. [`Container::iova_allocator`] (fails before the first port is open), then create the DMA
//!    regions (mempool, rings) with it;
//! 4. [`Container::map_dma`] each region once (mapping it again is a no-op), directly or through
//!    any port's `Transport::map_dma`: one mapping serves every port of the container.
//!
//! Invariants: a mapped region is kept alive by the container (it holds an `Arc`) until it is
//! unmapped, so the IOMMU never points at memory that was given back. The kernel drops every
//! mapping when the last group leaves the container (the last port closes); the table is cleared
//! then too. On drop the container fd closes before the regions are released.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use vfio_ioctls::{VfioContainer, VfioError};

use super::iommu::{self, IommuInfo};
use super::sys;
use crate::error::{Error, Result};
use crate::mem::{DmaRegion, IovaAllocator, IovaRange};

const CONTAINER_NAME: &str = "VFIO container";

#[derive(Debug)]
struct Mapping {
    len: u64,
    va: u64,
    /// Keeps the memory alive while the IOMMU points at it.
    _region: Arc<DmaRegion>,
}

#[derive(Debug, Default)]
struct State {
    /// Open ports: PCI address -> IOMMU group.
    devices: BTreeMap<String, u32>,
    /// The IOMMU information as of the last attach.
    iommu: Option<IommuInfo>,
    /// IOVA -> mapping.
    maps: BTreeMap<u64, Mapping>,
}

/// A VFIO container shared by all ports (hold it in an `Arc`).
pub struct Container {
    // Field order is drop order: the container fd closes (dropping every IOMMU mapping) before
    // the regions the mappings pointed to are released with `state`.
    vfio: Arc<VfioContainer>,
    state: Mutex<State>,
    allocator: OnceLock<Arc<IovaAllocator>>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("state", &self.state).finish_non_exhaustive()
    }
}

/// Turns a `vfio-ioctls` error about the container into ours, with what to do.
fn container_error(what: &str, err: VfioError) -> Error {
    match err {
        VfioError::OpenContainer(e) if e.kind() == std::io::ErrorKind::NotFound => Error::IommuUnavailable {
            reason: "/dev/vfio/vfio does not exist: load the VFIO modules (`modprobe vfio-pci`) and boot with \
                     the IOMMU on (intel_iommu=on or amd_iommu=on)"
                .into(),
        },
        VfioError::OpenContainer(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Error::IommuUnavailable {
            reason: format!("cannot open /dev/vfio/vfio ({e}): run as root, or give this user the VFIO device nodes"),
        },
        VfioError::VfioExtension | VfioError::VfioType1V2 => Error::IommuUnavailable {
            reason: "the kernel's VFIO has no type1v2 IOMMU backend: `modprobe vfio_iommu_type1`, and check that \
                     the IOMMU is on (intel_iommu=on)"
                .into(),
        },
        source => Error::Vfio { device: CONTAINER_NAME.into(), what: what.into(), source },
    }
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks the API version and the type1v2 IOMMU extension.
    pub fn open() -> Result<Arc<Self>> {
        if !Path::new("/dev/vfio/vfio").exists() {
            return Err(Error::IommuUnavailable {
                reason: "/dev/vfio/vfio does not exist: load the VFIO modules (`modprobe vfio-pci`) and boot with \
                         the IOMMU on (intel_iommu=on or amd_iommu=on; in a QEMU guest add -device intel-iommu)"
                    .into(),
            });
        }
        let vfio = VfioContainer::new(None).map_err(|e| container_error("opening the VFIO container", e))?;
        Ok(Arc::new(Self { vfio: Arc::new(vfio), state: Mutex::default(), allocator: OnceLock::new() }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The `vfio-ioctls` container, for attaching devices.
    pub(crate) fn vfio(&self) -> &Arc<VfioContainer> {
        &self.vfio
    }

    /// Records that `bdf` (in `group`) is being opened. Errors if it is already open in this
    /// container. Returns whether another open port shares the group (then the group is already
    /// attached, and `/dev/vfio/<group>` is held by this process).
    pub(crate) fn register(&self, bdf: &str, group: u32) -> Result<bool> {
        let mut state = self.state();
        if state.devices.contains_key(bdf) {
            return Err(Error::InvalidConfig(format!("PCI device {bdf} is already open in this VFIO container")));
        }
        let shared = state.devices.values().any(|g| *g == group);
        state.devices.insert(bdf.to_owned(), group);
        Ok(shared)
    }

    /// Forgets `bdf` (its port was closed, or its opening failed). Called after the device has
    /// dropped, so when it was the last one its group has left the container, and the kernel has
    /// released the IOMMU with every mapping in it: the mapping table is cleared to match (a port
    /// opened later sets the IOMMU up afresh, and regions must be mapped again).
    pub(crate) fn unregister(&self, bdf: &str) {
        let mut state = self.state();
        state.devices.remove(bdf);
        if !state.devices.is_empty() {
            return;
        }
        if sys::iommu_info(self.vfio.as_ref()).is_ok() {
            // A group is still attached (its detach failed): the mappings are still there.
            tracing::warn!("VFIO: the last port closed but the container still has an IOMMU; keeping its mappings");
            return;
        }
        if !state.maps.is_empty() {
            tracing::debug!("VFIO: last port closed; the kernel dropped {} DMA mappings", state.maps.len());
        }
        state.maps.clear();
        state.iommu = None;
    }

    /// Re-reads the IOMMU information (after a group attached). Warns when the valid ranges
    /// changed after the allocator was handed out, and errors when an existing mapping fell out
    /// of them.
    pub(crate) fn refresh_iommu_info(&self) -> Result<IommuInfo> {
        let raw = sys::iommu_info(self.vfio.as_ref())
            .map_err(|source| Error::Io { what: "VFIO_IOMMU_GET_INFO on the VFIO container".into(), source })?;
        let info = iommu::parse_info(&raw).map_err(|problem| {
            Error::Transport(format!("VFIO_IOMMU_GET_INFO returned a malformed answer: {problem}"))
        })?;
        let mut state = self.state();
        if let Some(old) = &state.iommu {
            if old.iova_ranges != info.iova_ranges && self.allocator.get().is_some() {
                tracing::warn!(
                    "the IOMMU's valid IOVA ranges changed after DMA memory was allocated ({old} -> {info}): open \
                     every port before creating mempools"
                );
            }
        }
        if let Some((iova, m)) = state.maps.iter().find(|(iova, m)| !info.covers(**iova, m.len)) {
            return Err(Error::Transport(format!(
                "the DMA mapping at IOVA {iova:#x} ({:#x} bytes) is outside the IOMMU's valid ranges after the \
                 last device attached ({info})",
                m.len
            )));
        }
        tracing::debug!("VFIO IOMMU: {info}");
        state.iommu = Some(info.clone());
        Ok(info)
    }

    /// The IOMMU's valid IOVA ranges and page sizes, once a port is open (`None` before).
    pub fn iommu_info(&self) -> Option<IommuInfo> {
        self.state().iommu.clone()
    }

    /// PCI addresses of the ports open in this container.
    pub fn devices(&self) -> Vec<String> {
        self.state().devices.keys().cloned().collect()
    }

    /// The IOVA allocator for every DMA region of this container: IOVA = VA when the VA range
    /// lies inside the IOMMU's valid ranges, otherwise allocated from them, never in the first
    /// IOMMU page (a ring at address 0 reads as "no ring" to QEMU's virtio devices). Created on
    /// the first call, from the ranges known then: call it after opening every port.
    pub fn iova_allocator(&self) -> Result<Arc<IovaAllocator>> {
        if let Some(a) = self.allocator.get() {
            return Ok(a.clone());
        }
        let info = self.iommu_info().ok_or_else(|| {
            Error::InvalidConfig(
                "the IOVA allocator of a VFIO container exists only once a device is open in it (the IOMMU type \
                 is set when the first group attaches): open the ports first, then create the mempools"
                    .into(),
            )
        })?;
        Ok(self
            .allocator
            .get_or_init(|| {
                tracing::info!("VFIO IOMMU: {info}");
                Arc::new(if info.iova_ranges.is_empty() {
                    IovaAllocator::identity()
                } else {
                    IovaAllocator::identity_within(without_page_zero(&info))
                })
            })
            .clone())
    }

    /// Maps `region` for DMA by every device of the container, at `region.iova()`. Mapping the
    /// same region again is a no-op; a different region overlapping a mapped IOVA range is an
    /// error. The container keeps the region alive until [`unmap_dma`](Self::unmap_dma), until
    /// the last port closes (the kernel then drops all mappings), or until it drops.
    pub fn map_dma(&self, region: &Arc<DmaRegion>) -> Result<()> {
        let (iova, len, va) = (region.iova(), region.len() as u64, region.as_ptr() as u64);
        let mut state = self.state();
        let Some(info) = state.iommu.clone() else {
            return Err(Error::InvalidConfig(
                "DMA can be mapped in a VFIO container only once a device is open in it: open the ports first".into(),
            ));
        };
        if let Some(m) = state.maps.get(&iova) {
            if m.va == va && m.len == len {
                return Ok(());
            }
        }
        let end = iova
            .checked_add(len)
            .ok_or_else(|| Error::InvalidConfig(format!("IOVA {iova:#x} + {len:#x} overflows")))?;
        let overlap = state.maps.range(..end).next_back().filter(|(start, m)| **start + m.len > iova);
        if let Some((start, m)) = overlap {
            return Err(Error::InvalidConfig(format!(
                "DMA region at IOVA {iova:#x} ({len:#x} bytes) overlaps the mapping at IOVA {start:#x} ({:#x} bytes)",
                m.len
            )));
        }
        let page = info.min_page_size();
        if iova % page != 0 || len % page != 0 || va % page != 0 {
            return Err(Error::InvalidConfig(format!(
                "DMA region at IOVA {iova:#x}, VA {va:#x}, {len:#x} bytes is not aligned to the IOMMU page size {page:#x}"
            )));
        }
        if !info.covers(iova, len) {
            return Err(Error::InvalidConfig(format!(
                "DMA region at IOVA {iova:#x} ({len:#x} bytes) is outside the IOMMU's valid ranges ({info}): create \
                 regions with this container's iova_allocator()"
            )));
        }
        sys::map_dma(&self.vfio, region).map_err(|source| Error::Vfio {
            device: CONTAINER_NAME.into(),
            what: format!(
                "mapping {len:#x} bytes at IOVA {iova:#x} (VA {va:#x}); EINVAL here often means the IOVA is beyond \
                 the IOMMU's address width (QEMU: -device intel-iommu,aw-bits=48)"
            ),
            source,
        })?;
        tracing::debug!("VFIO: mapped {len:#x} bytes at IOVA {iova:#x} (VA {va:#x})");
        state.maps.insert(iova, Mapping { len, va, _region: region.clone() });
        Ok(())
    }

    /// Removes the mapping of `region` (no-op when it is not mapped) and lets go of it.
    pub fn unmap_dma(&self, region: &DmaRegion) -> Result<()> {
        let mut state = self.state();
        let iova = region.iova();
        let Some(m) = state.maps.get(&iova) else {
            return Ok(());
        };
        if m.va != region.as_ptr() as u64 {
            return Ok(());
        }
        self.vfio.vfio_dma_unmap(iova, m.len as usize).map_err(|source| Error::Vfio {
            device: CONTAINER_NAME.into(),
            what: format!("unmapping {:#x} bytes at IOVA {iova:#x}", m.len),
            source,
        })?;
        state.maps.remove(&iova);
        Ok(())
    }

    /// The IOVAs of the current mappings, ascending.
    pub fn mapped_iovas(&self) -> BTreeSet<u64> {
        self.state().maps.keys().copied().collect()
    }
}

/// The valid ranges without the first IOMMU page: IOVA 0 is a valid address to the IOMMU, but
/// QEMU's virtio devices take a ring address of 0 for "not set up" and ignore the queue.
fn without_page_zero(info: &IommuInfo) -> Vec<IovaRange> {
    let floor = info.min_page_size();
    info.iova_ranges
        .iter()
        .filter_map(|r| {
            let start = r.start.max(floor);
            (start <= r.end).then_some(IovaRange { start, end: r.end })
        })
        .collect()
}

// Ports on several threads share the container.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Container>();
};

impl Drop for Container {
    /// Every port holds the container, so none is left here: the last one's group detach
    /// already made the kernel drop the IOMMU and its mappings. Mappings that remain (a group
    /// whose detach failed) go when the container fd closes, before the regions are released.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !state.maps.is_empty() {
            tracing::debug!("VFIO: closing the container with {} DMA mappings", state.maps.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_zero_is_never_handed_out() {
        let info = IommuInfo {
            page_sizes: 0x4020_1000,
            iova_ranges: vec![
                IovaRange { start: 0, end: 0xfedf_ffff },
                IovaRange { start: 0xfef0_0000, end: 0x7f_ffff_ffff },
            ],
            dma_mappings_available: None,
        };
        let ranges = without_page_zero(&info);
        assert_eq!(ranges[0], IovaRange { start: 0x1000, end: 0xfedf_ffff });
        assert_eq!(ranges[1], info.iova_ranges[1]);
        // A narrow IOMMU (aw-bits=39): a user VA does not fit, so IOVAs are allocated, from 2 MiB
        // (the first 2 MiB-aligned address past page 0) for a huge page region.
        let alloc = IovaAllocator::identity_within(ranges);
        assert_eq!(alloc.assign(0x7f94_df00_0000, 0x20_0000, 0x20_0000).unwrap(), 0x20_0000);
        let tiny = IommuInfo { iova_ranges: vec![IovaRange { start: 0, end: 0xfff }], ..info };
        assert!(without_page_zero(&tiny).is_empty());
    }
}
