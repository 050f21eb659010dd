//! Decoding `VFIO_IOMMU_GET_INFO` (type1): page sizes, and the capability chain with the valid
//! IOVA ranges (`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`) and the number of DMA mappings left
//! (`VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`).
//!
//! The bytes come from the kernel but are parsed as untrusted input: every offset is checked
//! against the buffer, each capability must start after the previous one (so the chain cannot
//! loop), and ranges must be ordered and non-empty. Layouts are vfio-bindings' structures.

use core::mem::{offset_of, size_of};

use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range, vfio_iommu_type1_info_dma_avail,
    vfio_iova_range, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};

use crate::mem::IovaRange;

/// What the container's IOMMU allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IommuInfo {
    /// Bitmap of the supported IOMMU page sizes (bit n: 2^n bytes); 0 when not reported.
    pub page_sizes: u64,
    /// The valid IOVA ranges, ascending; empty when the kernel does not report them (before
    /// Linux 5.4), in which case any IOVA may be tried.
    pub iova_ranges: Vec<IovaRange>,
    /// How many more DMA mappings the container accepts, when reported.
    pub dma_mappings_available: Option<u32>,
}

impl IommuInfo {
    /// The smallest IOMMU page size (4 KiB when not reported).
    pub fn min_page_size(&self) -> u64 {
        if self.page_sizes == 0 {
            4096
        } else {
            1 << self.page_sizes.trailing_zeros()
        }
    }

    /// Whether `[iova, iova + len)` lies inside one valid range (always true when no ranges were
    /// reported).
    pub fn covers(&self, iova: u64, len: u64) -> bool {
        if self.iova_ranges.is_empty() {
            return true;
        }
        let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return false;
        };
        self.iova_ranges.iter().any(|r| iova >= r.start && last <= r.end)
    }
}

impl std::fmt::Display for IommuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self.iova_ranges.iter().map(|r| format!("{:#x}-{:#x}", r.start, r.end)).collect();
        let sizes: Vec<String> = (0..64)
            .filter(|b| self.page_sizes & (1u64 << b) != 0)
            .map(|b| match b {
                b if b >= 30 => format!("{}G", 1u64 << (b - 30)),
                b if b >= 20 => format!("{}M", 1u64 << (b - 20)),
                b => format!("{}K", (1u64 << b) / 1024),
            })
            .collect();
        write!(f, "IOVA ranges [{}], page sizes [{}]", ranges.join(", "), sizes.join(" "))?;
        if let Some(n) = self.dma_mappings_available {
            write!(f, ", {n} DMA mappings available")?;
        }
        Ok(())
    }
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// Most capabilities a chain may hold before it is considered corrupt.
const MAX_CAPS: usize = 64;

/// Decodes the bytes `VFIO_IOMMU_GET_INFO` filled in (the structure and its capability chain;
/// the kernel's byte order). `Err` says what is malformed.
pub fn parse_info(buf: &[u8]) -> Result<IommuInfo, String> {
    if buf.len() < size_of::<vfio_iommu_type1_info>() {
        return Err(format!("{} bytes is shorter than struct vfio_iommu_type1_info", buf.len()));
    }
    let flags = u32_at(buf, offset_of!(vfio_iommu_type1_info, flags)).unwrap_or(0);
    let mut info = IommuInfo::default();
    if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
        info.page_sizes = u64_at(buf, offset_of!(vfio_iommu_type1_info, iova_pgsizes)).unwrap_or(0);
    }
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(info);
    }
    let mut at = u32_at(buf, offset_of!(vfio_iommu_type1_info, cap_offset)).unwrap_or(0) as usize;
    let mut seen = 0;
    let mut floor = size_of::<vfio_iommu_type1_info>();
    while at != 0 {
        seen += 1;
        if seen > MAX_CAPS {
            return Err(format!("more than {MAX_CAPS} capabilities in the chain"));
        }
        if at < floor || at % 4 != 0 || at + size_of::<vfio_info_cap_header>() > buf.len() {
            return Err(format!(
                "capability offset {at:#x} is out of order, misaligned or past the {:#x}-byte buffer",
                buf.len()
            ));
        }
        let id = u16_at(buf, at + offset_of!(vfio_info_cap_header, id)).unwrap_or(0);
        let next = u32_at(buf, at + offset_of!(vfio_info_cap_header, next)).unwrap_or(0) as usize;
        match u32::from(id) {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => info.iova_ranges = parse_iova_ranges(buf, at)?,
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                info.dma_mappings_available = u32_at(buf, at + offset_of!(vfio_iommu_type1_info_dma_avail, avail));
            }
            _ => {}
        }
        floor = at + size_of::<vfio_info_cap_header>();
        at = next;
    }
    Ok(info)
}

fn parse_iova_ranges(buf: &[u8], cap: usize) -> Result<Vec<IovaRange>, String> {
    let count = u32_at(buf, cap + offset_of!(vfio_iommu_type1_info_cap_iova_range, nr_iovas))
        .ok_or("IOVA range capability is truncated")? as usize;
    let first = cap + offset_of!(vfio_iommu_type1_info_cap_iova_range, iova_ranges);
    let stride = size_of::<vfio_iova_range>();
    if count.checked_mul(stride).and_then(|n| n.checked_add(first)).is_none_or(|end| end > buf.len()) {
        return Err(format!("IOVA range capability claims {count} ranges, more than the buffer holds"));
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let at = first + i * stride;
        let start = u64_at(buf, at + offset_of!(vfio_iova_range, start)).unwrap_or(0);
        let end = u64_at(buf, at + offset_of!(vfio_iova_range, end)).unwrap_or(0);
        if end < start || ranges.last().is_some_and(|prev: &IovaRange| start <= prev.end) {
            return Err(format!("IOVA range {start:#x}-{end:#x} is empty or out of order"));
        }
        ranges.push(IovaRange { start, end });
    }
    Ok(ranges)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The bytes a kernel returns: header with flags, page sizes, then the given capabilities
    /// (each `(id, body)`), chained in order.
    pub(crate) fn synthetic(page_sizes: u64, caps: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut buf = vec![0u8; size_of::<vfio_iommu_type1_info>()];
        let mut flags = VFIO_IOMMU_INFO_PGSIZES;
        buf[8..16].copy_from_slice(&page_sizes.to_ne_bytes());
        let mut prev_next: Option<usize> = None;
        for (id, body) in caps {
            flags |= VFIO_IOMMU_INFO_CAPS;
            while buf.len() % 8 != 0 {
                buf.push(0);
            }
            let at = buf.len();
            match prev_next {
                None => buf[16..20].copy_from_slice(&(at as u32).to_ne_bytes()),
                Some(p) => buf[p..p + 4].copy_from_slice(&(at as u32).to_ne_bytes()),
            }
            buf.extend_from_slice(&id.to_ne_bytes());
            buf.extend_from_slice(&1u16.to_ne_bytes());
            prev_next = Some(buf.len());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(body);
        }
        buf[4..8].copy_from_slice(&flags.to_ne_bytes());
        let argsz = buf.len() as u32;
        buf[0..4].copy_from_slice(&argsz.to_ne_bytes());
        buf
    }

    pub(crate) fn ranges_body(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        for (s, e) in ranges {
            body.extend_from_slice(&s.to_ne_bytes());
            body.extend_from_slice(&e.to_ne_bytes());
        }
        body
    }

    #[test]
    fn qemu_guest_info_decodes() {
        // What the guest of the VM harness reports (vm-harness.md): two ranges around the
        // interrupt window, 4K/2M/1G pages, 65535 mappings.
        let buf = synthetic(
            0x4020_1000,
            &[
                (
                    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
                    ranges_body(&[(0, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff_ffff)]),
                ),
                (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16, 65535u32.to_ne_bytes().to_vec()),
                (2, vec![0u8; 24]), // migration capability: ignored
            ],
        );
        let info = parse_info(&buf).unwrap();
        assert_eq!(
            info.iova_ranges,
            vec![IovaRange { start: 0, end: 0xfedf_ffff }, IovaRange { start: 0xfef0_0000, end: 0xffff_ffff_ffff }]
        );
        assert_eq!(info.dma_mappings_available, Some(65535));
        assert_eq!(info.min_page_size(), 4096);
        assert!(info.covers(0x7f00_0000_0000, 0x20_0000));
        assert!(!info.covers(0xfee0_0000, 0x1000), "the interrupt window");
        assert!(!info.covers(0xffff_ffff_f000, 0x2000), "past the address width");
        assert_eq!(
            info.to_string(),
            "IOVA ranges [0x0-0xfedfffff, 0xfef00000-0xffffffffffff], page sizes [4K 2M 1G], 65535 DMA mappings available"
        );
    }

    #[test]
    fn no_caps_means_no_ranges() {
        let info = parse_info(&synthetic(0x1000, &[])).unwrap();
        assert!(info.iova_ranges.is_empty() && info.covers(u64::MAX - 4095, 4096));
    }

    #[test]
    fn malformed_chains_are_errors() {
        let ranges = ranges_body(&[(0, 0xffff)]);
        let mut looped = synthetic(0x1000, &[(1, ranges.clone())]);
        let first = u32::from_ne_bytes(looped[16..20].try_into().unwrap()) as usize;
        looped[first + 4..first + 8].copy_from_slice(&(first as u32).to_ne_bytes());
        assert!(parse_info(&looped).unwrap_err().contains("out of order"));

        let mut too_many = synthetic(0x1000, &[(1, ranges.clone())]);
        too_many[first + 8..first + 12].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_info(&too_many).unwrap_err().contains("1000 ranges"));

        let unordered = synthetic(0x1000, &[(1, ranges_body(&[(0x2000, 0x2fff), (0x1000, 0x1fff)]))]);
        assert!(parse_info(&unordered).unwrap_err().contains("out of order"));

        let mut past_end = synthetic(0x1000, &[]);
        past_end[4..8].copy_from_slice(&(VFIO_IOMMU_INFO_CAPS | VFIO_IOMMU_INFO_PGSIZES).to_ne_bytes());
        past_end[16..20].copy_from_slice(&0x100u32.to_ne_bytes());
        assert!(parse_info(&past_end).is_err());
        assert!(parse_info(&[0u8; 8]).is_err());
    }
}
