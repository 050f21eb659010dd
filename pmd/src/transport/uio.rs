//! [`UioPciTransport`]: a virtio-net PCI function bound to `uio_pci_generic`, for machines (VMs
//! without a vIOMMU) where there is no IOMMU for VFIO and the kernel has no VFIO no-IOMMU mode.
//!
//! Without an IOMMU nothing limits the device: it can read and write all of memory, and it must
//! be given physical addresses. So this transport is used only when asked for by name (it is
//! never a fallback), logs a warning saying so when it opens, and takes only physical-address
//! DMA regions ([`IovaAllocator::physical`](crate::mem::IovaAllocator::physical)).
//!
//! Everything is reached through the function's sysfs directory, no ioctl involved:
//! configuration space through its `config` file (positioned reads and writes; Memory Space and
//! Bus Master are set in the command register and read back, since `uio_pci_generic` enables the
//! device but not bus mastering), each BAR holding a virtio structure by `mmap` of its
//! `resourceN` file, sized and typed from the `resource` table. The capability walk, the choice
//! of structures and every register access are the PCI module's, shared with VFIO. A device
//! offering VIRTIO_F_ACCESS_PLATFORM is fine: with no IOMMU, platform addresses are physical.
//!
//! Lifetimes: every register window holds the `Arc` of its BAR's mapping, so the BARs stay mapped
//! while the transport or any queue notifier lives; on drop the device is reset, so that it stops
//! all DMA before the memory it was given can go away.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mem::DmaRegion;
use crate::spec::pci::config;
use crate::transport::pci::{self, caps, CapList, ConfigSpace, Mmio, RegionMapping, VirtioLayout, VirtioPci};
use crate::transport::vfio::sysfs::{self, HostPaths};
use crate::transport::{require_physical, Transport};

/// The kernel driver this transport needs the function bound to.
pub const UIO_DRIVER: &str = "uio_pci_generic";

/// `IORESOURCE_MEM` in the flags column of sysfs' `resource` table.
const IORESOURCE_MEM: u64 = 0x200;

/// What opening found out about the function.
#[derive(Clone, Debug)]
pub struct UioFunctionInfo {
    /// PCI address, normalised.
    pub bdf: String,
    /// Vendor id (from configuration space).
    pub vendor: u16,
    /// Device id (from configuration space).
    pub device_id: u16,
    /// The command register after Memory Space and Bus Master were enabled.
    pub command: u16,
    /// Every capability found.
    pub caps: CapList,
    /// The virtio structures in use.
    pub layout: VirtioLayout,
    /// The mapped BARs: (index, size in bytes).
    pub bars: Vec<(u8, u64)>,
}

/// One BAR as sysfs' `resource` table describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BarResource {
    /// Size in bytes (0: the BAR is not implemented).
    pub(crate) size: u64,
    /// Whether it is memory space (mappable), not I/O ports.
    pub(crate) memory: bool,
}

/// Parses the first six lines of a `resource` file (`0x<start> 0x<end> 0x<flags>` each), the
/// six BARs. A line that does not parse is an unimplemented BAR.
pub(crate) fn parse_resources(text: &str) -> [BarResource; 6] {
    let mut bars = [BarResource { size: 0, memory: false }; 6];
    for (bar, line) in bars.iter_mut().zip(text.lines()) {
        let fields: Vec<u64> =
            line.split_whitespace().filter_map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok()).collect();
        if let [start, end, flags] = fields[..] {
            if end > start {
                *bar = BarResource { size: end - start + 1, memory: flags & IORESOURCE_MEM != 0 };
            }
        }
    }
    bars
}

/// The function's configuration space, through its sysfs `config` file.
struct SysfsConfig {
    file: File,
    len: u64,
    path: PathBuf,
}

impl SysfsConfig {
    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("config");
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|source| Error::Io {
            what: format!("opening {} read-write (needs root)", path.display()),
            source,
        })?;
        let len =
            file.metadata().map_err(|source| Error::Io { what: format!("stat of {}", path.display()), source })?.len();
        Ok(Self { file, len, path })
    }

    fn check(&self, offset: u16, len: usize) -> Result<u64> {
        if u64::from(offset) + len as u64 > self.len {
            return Err(Error::InvalidConfig(format!(
                "{}: PCI config access of {len} bytes at {offset:#x} is past its {:#x} bytes",
                self.path.display(),
                self.len
            )));
        }
        Ok(u64::from(offset))
    }
}

impl ConfigSpace for SysfsConfig {
    fn read(&self, offset: u16, buf: &mut [u8]) -> Result<()> {
        let at = self.check(offset, buf.len())?;
        self.file
            .read_exact_at(buf, at)
            .map_err(|source| Error::Io { what: format!("reading {} at {offset:#x}", self.path.display()), source })
    }

    fn write(&self, offset: u16, data: &[u8]) -> Result<()> {
        let at = self.check(offset, data.len())?;
        self.file
            .write_all_at(data, at)
            .map_err(|source| Error::Io { what: format!("writing {} at {offset:#x}", self.path.display()), source })
    }
}

/// Maps BAR `bar` (`size` bytes) through `dir/resource<bar>`.
fn map_bar(dir: &Path, bar: u8, size: u64) -> Result<Mmio> {
    let path = dir.join(format!("resource{bar}"));
    let io_error = |what: String, source| Error::Io { what, source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(format!("opening {} read-write (needs root)", path.display()), e))?;
    let len = usize::try_from(size).map_err(|_| Error::InvalidConfig(format!("{}: BAR too large", path.display())))?;
    let file = Arc::new(file);
    let mapping = RegionMapping::new(file.as_ref(), 0, len, file.clone())
        .map_err(|e| io_error(format!("mmap of {} ({len:#x} bytes)", path.display()), e))?;
    Ok(mapping.window())
}

/// A virtio-net PCI function driven through `uio_pci_generic` and sysfs: implements
/// [`Transport`], with physical addresses for DMA.
///
/// ```no_run
/// use virtio_pmd::mem::IovaAllocator;
/// use virtio_pmd::transport::uio::UioPciTransport;
/// # fn main() -> virtio_pmd::Result<()> {
/// let port0 = UioPciTransport::open("0000:00:03.0")?; // warns: the device can reach all memory
/// let iova = IovaAllocator::physical();                // every DMA region: physical addresses
/// # Ok(()) }
/// ```
pub struct UioPciTransport {
    /// Its drop resets the device, which stops all DMA before the memory can go away.
    pci: VirtioPci,
    info: UioFunctionInfo,
}

impl std::fmt::Debug for UioPciTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UioPciTransport").field("info", &self.info).finish_non_exhaustive()
    }
}

impl UioPciTransport {
    /// Opens the function at `bdf` (`0000:00:03.0` or `00:03.0`), which must be bound to
    /// `uio_pci_generic`. Needs root (the `config` and `resourceN` files).
    pub fn open(bdf: &str) -> Result<Self> {
        Self::open_with(bdf, &HostPaths::default())
    }

    /// [`open`](Self::open), looking for the function under `paths.sysfs` (tests use a fake
    /// tree, whose `config` and `resourceN` files are plain files).
    pub fn open_with(bdf: &str, paths: &HostPaths) -> Result<Self> {
        let function = sysfs::identify(paths, bdf)?;
        let (bdf, dir) = (function.bdf, function.dir);
        match sysfs::driver_of(&dir) {
            Some(driver) if driver == UIO_DRIVER => {}
            other => {
                return Err(Error::NotBoundToUio {
                    device: bdf,
                    driver: other.map_or("no driver bound".into(), |d| format!("bound to {d}")),
                })
            }
        }
        if let Ok(group) = fs::read_link(dir.join("iommu_group")) {
            tracing::warn!(
                "{bdf} is in IOMMU group {}: an IOMMU is on, and unless it passes this device through, the \
                 physical addresses this transport gives the device will fault; prefer vfio-pci \
                 (`scripts/bind-vfio.sh {bdf}`)",
                group.file_name().map_or("?".into(), |g| g.to_string_lossy())
            );
        }
        let cfg = SysfsConfig::open(&dir)?;
        let vendor = cfg.read_u16(config::VENDOR_ID)?;
        let device_id = cfg.read_u16(config::DEVICE_ID)?;
        if (vendor, device_id) != (function.vendor, function.device) {
            return Err(Error::Transport(format!(
                "{bdf}: configuration space says {vendor:04x}:{device_id:04x}, sysfs says {:04x}:{:04x}",
                function.vendor, function.device
            )));
        }
        let caps = caps::walk(&cfg, &bdf)?;
        let resource = dir.join("resource");
        let text = fs::read_to_string(&resource)
            .map_err(|source| Error::Io { what: format!("reading {}", resource.display()), source })?;
        let resources = parse_resources(&text);
        let layout = caps.layout(&bdf, |cap| {
            let bar = resources[usize::from(cap.bar)];
            bar.memory && u64::from(cap.offset) + cap.min_len() <= bar.size
        })?;
        let command = pci::enable_memory_and_bus_master(&cfg, &bdf)?;
        let windows: Vec<(u8, Mmio)> = layout
            .bars()
            .into_iter()
            .map(|bar| Ok((bar, map_bar(&dir, bar, resources[usize::from(bar)].size)?)))
            .collect::<Result<_>>()?;
        let pci = VirtioPci::new(&bdf, &layout, |n| windows.iter().find(|(b, _)| *b == n).map(|(_, w)| w.clone()))?;
        tracing::warn!(
            "{bdf}: opened through {UIO_DRIVER} without an IOMMU: the device can read and write ALL of this \
             machine's memory, and is given physical addresses (use this only in a VM without a vIOMMU, on a \
             device you trust)"
        );
        let info = UioFunctionInfo {
            bdf,
            vendor,
            device_id,
            command,
            caps,
            layout,
            bars: windows.iter().map(|(n, w)| (*n, w.len() as u64)).collect(),
        };
        Ok(Self { pci, info })
    }

    /// What opening found: ids, capabilities, mapped BARs.
    pub fn info(&self) -> &UioFunctionInfo {
        &self.info
    }

    /// The virtio PCI structures (common configuration view, ISR window, ...).
    pub fn pci(&self) -> &VirtioPci {
        &self.pci
    }
}

impl Transport for UioPciTransport {
    fn name(&self) -> &str {
        &self.info.bdf
    }

    pci::delegate_to_virtio_pci!();

    /// Nothing to map without an IOMMU; only a physical-address region can be given.
    fn map_dma(&mut self, region: &Arc<DmaRegion>) -> Result<()> {
        require_physical(&self.info.bdf, &format!("is bound to {UIO_DRIVER}"), region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{HugePages, IovaAllocator};
    use crate::transport::pci::caps::tests::qemu_like;
    use crate::transport::vfio::sysfs::tests::{fake_device, Scratch};

    #[test]
    fn resource_table_gives_sizes_and_kinds() {
        let text = "0x000000000000c040 0x000000000000c05f 0x0000000000040101\n\
                    0x00000000febf1000 0x00000000febf1fff 0x0000000000040200\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x000000fe00000000 0x000000fe00003fff 0x000000000014220c\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x00000000feb80000 0x00000000febbffff 0x0000000000046200\n";
        let bars = parse_resources(text);
        assert_eq!(bars[0], BarResource { size: 0x20, memory: false });
        assert_eq!(bars[1], BarResource { size: 0x1000, memory: true });
        assert_eq!(bars[2].size, 0);
        assert_eq!(bars[4], BarResource { size: 0x4000, memory: true });
        assert_eq!(parse_resources("garbage\n")[0].size, 0);
    }

    /// A fake `uio_pci_generic` function: QEMU-like capabilities, BAR 4 of 16 KiB as a plain file.
    fn fake_uio(root: &Path, bdf: &str, driver: Option<&str>) -> PathBuf {
        fake_device(root, bdf, 0x1af4, 0x1041, driver, None);
        let dir = HostPaths::under(root).device_dir(bdf);
        fs::write(dir.join("config"), qemu_like().bytes_mut()).unwrap();
        let mut table = String::new();
        for bar in 0..6 {
            let line =
                if bar == 4 { "0x000000fe00000000 0x000000fe00003fff 0x000000000014220c" } else { "0x0 0x0 0x0" };
            table.push_str(line);
            table.push('\n');
        }
        fs::write(dir.join("resource"), table).unwrap();
        fs::write(dir.join("resource4"), vec![0u8; 0x4000]).unwrap();
        dir
    }

    #[test]
    fn opens_through_sysfs_files_and_sets_bus_master() {
        let scratch = Scratch::new("uio");
        let paths = HostPaths::under(&scratch.0);
        let dir = fake_uio(&scratch.0, "0000:00:03.0", Some(UIO_DRIVER));
        // The common configuration's num_queues (offset 0x12) as the "device" says.
        fs::File::options()
            .write(true)
            .open(dir.join("resource4"))
            .unwrap()
            .write_all_at(&3u16.to_le_bytes(), 0x12)
            .unwrap();
        let mut t = UioPciTransport::open_with("00:03.0", &paths).unwrap();
        assert_eq!(t.info().bdf, "0000:00:03.0");
        assert_eq!(t.info().bars, vec![(4, 0x4000)]);
        let wanted = config::COMMAND_MEMORY | config::COMMAND_BUS_MASTER;
        assert_eq!(t.info().command & wanted, wanted);
        let command = fs::read(dir.join("config")).unwrap();
        assert_eq!(u16::from_le_bytes([command[4], command[5]]) & wanted, wanted, "written to the config file");
        // Registers are the mapped resource file.
        assert_eq!(t.num_queues().unwrap(), 3);
        assert!(!t.requires_access_platform());
        // Only physical-address memory can be given to the device.
        let region = Arc::new(DmaRegion::new("t", 4096, HugePages::Never, &IovaAllocator::identity()).unwrap());
        let err = t.map_dma(&region).unwrap_err().to_string();
        assert!(err.contains("IovaAllocator::physical()"), "{err}");
    }

    #[test]
    fn a_device_not_bound_to_uio_is_refused_with_what_to_do() {
        let scratch = Scratch::new("uio-unbound");
        let paths = HostPaths::under(&scratch.0);
        fake_uio(&scratch.0, "0000:00:04.0", Some("virtio-pci"));
        fake_uio(&scratch.0, "0000:00:05.0", None);
        let err = UioPciTransport::open_with("0000:00:04.0", &paths).unwrap_err();
        assert!(matches!(err, Error::NotBoundToUio { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("bound to virtio-pci") && msg.contains("bind-vfio.sh --uio 0000:00:04.0"), "{msg}");
        let msg = UioPciTransport::open_with("0000:00:05.0", &paths).unwrap_err().to_string();
        assert!(msg.contains("no driver bound"), "{msg}");
        let msg = UioPciTransport::open_with("0000:00:06.0", &paths).unwrap_err().to_string();
        assert!(msg.contains("not found"), "{msg}");
    }

    #[test]
    fn without_an_iommu_the_binding_picks_the_transport() {
        let scratch = Scratch::new("uio-pick");
        let paths = HostPaths::under(&scratch.0);
        fake_uio(&scratch.0, "0000:00:03.0", Some(UIO_DRIVER));
        fake_uio(&scratch.0, "0000:00:04.0", Some("vfio-pci"));
        let t = crate::transport::open_without_iommu_with("0000:00:03.0", &paths).unwrap();
        assert_eq!(t.name(), "0000:00:03.0");
        // On vfio-pci: VFIO's no-IOMMU mode, whose missing group is named.
        let Err(err) = crate::transport::open_without_iommu_with("0000:00:04.0", &paths) else {
            panic!("a vfio-pci device without a no-IOMMU group opened");
        };
        let msg = err.to_string();
        assert!(msg.contains("enable_unsafe_noiommu_mode=1"), "{msg}");
    }
}
