//! The PCI capability walk and the choice of virtio structures ("Virtio Structure PCI
//! Capabilities", 4.1.4, and "Virtio Device Configuration Layout Detection", 4.1.5.1.1).
//!
//! The walk trusts nothing it reads: it needs the status register's capability-list bit, follows
//! `cap_next` only to offsets inside the conventional configuration space past the header
//! (masking the two reserved low bits, as PCI requires), visits each offset at most once and at
//! most 48 capabilities in all, so a looping or wild list ends in an error, never a hang. Offsets
//! and lengths of the virtio structures come only from the capabilities; none is assumed.

use super::ConfigSpace;
use crate::error::{Error, Result};
use crate::spec::pci::{self, config};

/// The most capabilities the conventional configuration space can hold: (256 - 64) / 4.
pub const MAX_CAPABILITIES: usize = 48;

/// Size of `struct virtio_pci_cap`.
const VIRTIO_CAP_LEN: u8 = core::mem::size_of::<pci::PciCap>() as u8;
/// Size of `struct virtio_pci_notify_cap`.
const NOTIFY_CAP_LEN: u8 = core::mem::size_of::<pci::NotifyCap>() as u8;

/// One virtio vendor-specific capability (`struct virtio_pci_cap`, plus the notify multiplier for
/// `VIRTIO_PCI_CAP_NOTIFY_CFG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCap {
    /// Where the capability itself sits in configuration space.
    pub position: u8,
    /// `cfg_type`: which structure (`spec::pci::CAP_*`).
    pub cfg_type: u8,
    /// BAR holding the structure (0 to 5 are valid; others are reserved and ignored).
    pub bar: u8,
    /// `id`, meaningful only to some device types.
    pub id: u8,
    /// Offset of the structure in the BAR.
    pub offset: u32,
    /// Length of the structure in bytes.
    pub length: u32,
    /// `notify_off_multiplier` (notify capabilities only; 0 otherwise).
    pub notify_off_multiplier: u32,
}

impl VirtioCap {
    /// Whether `bar` names a Base Address Register (0 to 5).
    pub fn has_valid_bar(&self) -> bool {
        self.bar <= 5
    }

    /// The spec's name of the structure type.
    /// The least this capability's structure must hold for the driver to use it.
    pub(crate) fn min_len(&self) -> u64 {
        match self.cfg_type {
            pci::CAP_COMMON_CFG => pci::COMMON_CFG_MIN_LEN as u64,
            pci::CAP_NOTIFY_CFG => 2,
            pci::CAP_ISR_CFG => 1,
            _ => 0,
        }
    }

    /// Its structure's name.
    pub fn type_name(&self) -> &'static str {
        cfg_type_name(self.cfg_type)
    }
}

/// Name of a `cfg_type` value.
pub fn cfg_type_name(cfg_type: u8) -> &'static str {
    match cfg_type {
        pci::CAP_COMMON_CFG => "common",
        pci::CAP_NOTIFY_CFG => "notify",
        pci::CAP_ISR_CFG => "isr",
        pci::CAP_DEVICE_CFG => "device",
        pci::CAP_PCI_CFG => "pci-cfg",
        8 => "shared-memory",
        9 => "vendor",
        _ => "reserved",
    }
}

/// A capability that is not a virtio one (MSI-X, power management, PCIe, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtherCap {
    /// Where it sits in configuration space.
    pub position: u8,
    /// Its PCI capability id.
    pub cap_id: u8,
}

/// Every capability of a function, in list order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapList {
    /// The virtio vendor-specific capabilities, in the device's order of preference.
    pub virtio: Vec<VirtioCap>,
    /// Every other capability.
    pub other: Vec<OtherCap>,
}

/// The virtio structures a driver uses: the first usable capability of each type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioLayout {
    /// `VIRTIO_PCI_CAP_COMMON_CFG`.
    pub common: VirtioCap,
    /// `VIRTIO_PCI_CAP_NOTIFY_CFG` (with its multiplier).
    pub notify: VirtioCap,
    /// `VIRTIO_PCI_CAP_ISR_CFG`, recorded only: a poll-mode driver never reads it.
    pub isr: Option<VirtioCap>,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`, absent for device types without device configuration.
    pub device: Option<VirtioCap>,
}

impl VirtioLayout {
    /// The BARs the layout's structures live in, without duplicates, ascending.
    pub fn bars(&self) -> Vec<u8> {
        let mut bars: Vec<u8> = [Some(self.common), Some(self.notify), self.isr, self.device]
            .into_iter()
            .flatten()
            .map(|c| c.bar)
            .collect();
        bars.sort_unstable();
        bars.dedup();
        bars
    }
}

fn malformed(device: &str, problem: String) -> Error {
    Error::BadPciCapabilities { device: device.to_owned(), problem }
}

/// Walks the capability list of `cfg`. `device` names the function in errors.
///
/// A function whose status register has no capability-list bit yields an empty list (a legacy
/// device, which [`CapList::layout`] then refuses).
pub fn walk(cfg: &dyn ConfigSpace, device: &str) -> Result<CapList> {
    let mut list = CapList::default();
    let status = cfg.read_u16(config::STATUS)?;
    if status & config::STATUS_CAPABILITIES_LIST == 0 {
        return Ok(list);
    }
    let mut visited = [false; config::CONVENTIONAL_SIZE as usize];
    let mut next = cfg.read_u8(config::CAPABILITIES_POINTER)? & !3;
    let mut from = config::CAPABILITIES_POINTER;
    let mut count = 0;
    while next != 0 {
        let pos = u16::from(next);
        if pos < config::FIRST_CAPABILITY {
            return Err(malformed(
                device,
                format!("capability pointer at {from:#04x} points to {pos:#04x}, inside the standard header"),
            ));
        }
        if visited[usize::from(pos)] {
            return Err(malformed(device, format!("capability list loops back to {pos:#04x} (from {from:#04x})")));
        }
        count += 1;
        if count > MAX_CAPABILITIES {
            return Err(malformed(device, format!("capability list has more than {MAX_CAPABILITIES} entries")));
        }
        visited[usize::from(pos)] = true;

        let cap_id = cfg.read_u8(pos)?;
        let cap_next = cfg.read_u8(pos + 1)? & !3;
        if cap_id == pci::PCI_CAP_ID_VNDR {
            if let Some(cap) = read_virtio_cap(cfg, device, next)? {
                list.virtio.push(cap);
            }
        } else {
            list.other.push(OtherCap { position: next, cap_id });
        }
        from = pos + 1;
        next = cap_next;
    }
    Ok(list)
}

/// Reads the vendor capability at `position`; `None` for one too short to be a virtio capability
/// (logged and skipped, like any capability this driver cannot use).
fn read_virtio_cap(cfg: &dyn ConfigSpace, device: &str, position: u8) -> Result<Option<VirtioCap>> {
    let pos = u16::from(position);
    let cap_len = cfg.read_u8(pos + 2)?;
    let cfg_type = cfg.read_u8(pos + 3)?;
    let needed = if cfg_type == pci::CAP_NOTIFY_CFG { NOTIFY_CAP_LEN } else { VIRTIO_CAP_LEN };
    if cap_len < needed || pos + u16::from(cap_len) > config::CONVENTIONAL_SIZE {
        tracing::warn!(
            "{device}: ignoring vendor capability at {pos:#04x} (cfg_type {cfg_type}): cap_len {cap_len} \
             is too short or runs past the configuration space"
        );
        return Ok(None);
    }
    let mut raw = [0u8; NOTIFY_CAP_LEN as usize];
    let raw = &mut raw[..usize::from(needed)];
    cfg.read(pos, raw)?;
    let le32 = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    Ok(Some(VirtioCap {
        position,
        cfg_type,
        bar: raw[core::mem::offset_of!(pci::PciCap, bar)],
        id: raw[core::mem::offset_of!(pci::PciCap, id)],
        offset: le32(core::mem::offset_of!(pci::PciCap, offset)),
        length: le32(core::mem::offset_of!(pci::PciCap, length)),
        notify_off_multiplier: if cfg_type == pci::CAP_NOTIFY_CFG {
            le32(core::mem::offset_of!(pci::NotifyCap, notify_off_multiplier))
        } else {
            0
        },
    }))
}

impl CapList {
    /// Chooses the structures to use: for each type, the first capability (the device's
    /// preferred one) whose BAR is valid and for which `usable` says yes (for VFIO: the BAR can be
    /// memory-mapped and holds the structure).
    ///
    /// Errors: no virtio capability at all means a legacy-only device ([`Error::LegacyOnlyDevice`]);
    /// a missing common or notify structure, or one misaligned against the spec's requirements,
    /// is [`Error::BadPciCapabilities`].
    pub fn layout(&self, device: &str, usable: impl Fn(&VirtioCap) -> bool) -> Result<VirtioLayout> {
        let is_virtio_structure = |c: &&VirtioCap| (pci::CAP_COMMON_CFG..=pci::CAP_DEVICE_CFG).contains(&c.cfg_type);
        if !self.virtio.iter().any(|c| is_virtio_structure(&c)) {
            return Err(Error::LegacyOnlyDevice { device: device.to_owned() });
        }
        let pick = |cfg_type: u8| self.virtio.iter().find(|c| c.cfg_type == cfg_type && c.has_valid_bar() && usable(c));
        let required = |cfg_type: u8| {
            pick(cfg_type).copied().ok_or_else(|| {
                let seen: Vec<String> = self
                    .virtio
                    .iter()
                    .filter(|c| c.cfg_type == cfg_type)
                    .map(|c| format!("BAR {} offset {:#x} length {:#x}", c.bar, c.offset, c.length))
                    .collect();
                let name = cfg_type_name(cfg_type);
                malformed(
                    device,
                    if seen.is_empty() {
                        format!("no virtio {name} configuration capability")
                    } else {
                        format!(
                            "no usable virtio {name} configuration capability (found {}, but the BAR is invalid, \
                             cannot be memory-mapped, or is too small)",
                            seen.join("; ")
                        )
                    },
                )
            })
        };
        let layout = VirtioLayout {
            common: required(pci::CAP_COMMON_CFG)?,
            notify: required(pci::CAP_NOTIFY_CFG)?,
            isr: pick(pci::CAP_ISR_CFG).copied(),
            device: pick(pci::CAP_DEVICE_CFG).copied(),
        };
        // "Common configuration structure layout", "Notification capability" and
        // "Device-specific configuration": the alignment the device must give each offset.
        let misaligned = [(Some(layout.common), 4), (Some(layout.notify), 2), (layout.device, 4)]
            .into_iter()
            .filter_map(|(cap, align)| cap.filter(|c| c.offset % align != 0).map(|c| (c, align)))
            .next();
        if let Some((cap, align)) = misaligned {
            return Err(malformed(
                device,
                format!(
                    "virtio {} structure at BAR {} offset {:#x} is not {align}-byte aligned",
                    cap.type_name(),
                    cap.bar,
                    cap.offset
                ),
            ));
        }
        if usize::try_from(layout.common.length).is_ok_and(|len| len < pci::COMMON_CFG_MIN_LEN) {
            return Err(malformed(
                device,
                format!(
                    "virtio common configuration is {:#x} bytes long, shorter than the {:#x} bytes of \
                     struct virtio_pci_common_cfg",
                    layout.common.length,
                    pci::COMMON_CFG_MIN_LEN
                ),
            ));
        }
        if layout.notify.length < 2 {
            return Err(malformed(device, format!("virtio notify structure is {} bytes long", layout.notify.length)));
        }
        Ok(layout)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transport::pci::testing::SyntheticConfig;

    /// Appends a virtio capability at `pos` (linking it after `prev`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn virtio_cap(
        cfg: &mut SyntheticConfig,
        pos: u8,
        next: u8,
        cfg_type: u8,
        bar: u8,
        offset: u32,
        length: u32,
        mult: Option<u32>,
    ) {
        let p = usize::from(pos);
        let len = if mult.is_some() { 20 } else { 16 };
        let b = cfg.bytes_mut();
        b[p] = pci::PCI_CAP_ID_VNDR;
        b[p + 1] = next;
        b[p + 2] = len;
        b[p + 3] = cfg_type;
        b[p + 4] = bar;
        b[p + 5] = 0;
        b[p + 8..p + 12].copy_from_slice(&offset.to_le_bytes());
        b[p + 12..p + 16].copy_from_slice(&length.to_le_bytes());
        if let Some(m) = mult {
            b[p + 16..p + 20].copy_from_slice(&m.to_le_bytes());
        }
    }

    /// A config space like QEMU's virtio-net-pci (modern): MSI-X at 0x98 (table in BAR 1), then
    /// the vendor capabilities: common at BAR4+0, ISR at +0x1000, device at +0x2000, notify at
    /// +0x3000 with multiplier 4, and a PCI_CFG capability.
    pub(crate) fn qemu_like() -> SyntheticConfig {
        let mut cfg = SyntheticConfig::new(0x1af4, 0x1041);
        let b = cfg.bytes_mut();
        b[0x06] = 0x10; // status: capability list
        b[0x34] = 0x98;
        // MSI-X capability (id 0x11), next 0x84.
        b[0x98] = config::CAP_ID_MSIX;
        b[0x99] = 0x84;
        virtio_cap(&mut cfg, 0x84, 0x70, pci::CAP_PCI_CFG, 0, 0, 0, None);
        cfg.bytes_mut()[0x86] = 20;
        virtio_cap(&mut cfg, 0x70, 0x60, pci::CAP_NOTIFY_CFG, 4, 0x3000, 0x1000, Some(4));
        virtio_cap(&mut cfg, 0x60, 0x50, pci::CAP_DEVICE_CFG, 4, 0x2000, 0x1000, None);
        virtio_cap(&mut cfg, 0x50, 0x40, pci::CAP_ISR_CFG, 4, 0x1000, 0x1000, None);
        virtio_cap(&mut cfg, 0x40, 0x00, pci::CAP_COMMON_CFG, 4, 0x0000, 0x1000, None);
        cfg
    }

    #[test]
    fn qemu_like_layout_is_read_from_the_caps() {
        let cfg = qemu_like();
        let list = walk(&cfg, "t").unwrap();
        assert_eq!(list.other, vec![OtherCap { position: 0x98, cap_id: config::CAP_ID_MSIX }]);
        assert_eq!(list.virtio.len(), 5);
        let layout = list.layout("t", |_| true).unwrap();
        assert_eq!((layout.common.bar, layout.common.offset, layout.common.length), (4, 0, 0x1000));
        assert_eq!((layout.notify.offset, layout.notify.notify_off_multiplier), (0x3000, 4));
        assert_eq!(layout.isr.unwrap().offset, 0x1000);
        assert_eq!(layout.device.unwrap().offset, 0x2000);
        assert_eq!(layout.bars(), vec![4]);
    }

    #[test]
    fn first_usable_capability_of_each_type_wins() {
        let mut cfg = qemu_like();
        // Put a second notify capability in front, in BAR 2 (say an I/O BAR we cannot map),
        // and a third with a reserved BAR number.
        cfg.bytes_mut()[0x34] = 0xb0;
        virtio_cap(&mut cfg, 0xb0, 0xc8, pci::CAP_NOTIFY_CFG, 2, 0, 0x100, Some(0));
        virtio_cap(&mut cfg, 0xc8, 0x98, pci::CAP_NOTIFY_CFG, 7, 0, 0x100, Some(0));
        let list = walk(&cfg, "t").unwrap();
        assert_eq!(list.layout("t", |_| true).unwrap().notify.bar, 2, "the device's first choice");
        let layout = list.layout("t", |c| c.bar != 2).unwrap();
        assert_eq!((layout.notify.bar, layout.notify.offset), (4, 0x3000), "BAR 7 is reserved: skipped");
    }

    #[test]
    fn looped_list_is_an_error() {
        let mut cfg = qemu_like();
        cfg.bytes_mut()[0x41] = 0x70; // common -> notify again
        let err = walk(&cfg, "0000:00:03.0").unwrap_err().to_string();
        assert!(err.contains("loops back to 0x70"), "{err}");
    }

    #[test]
    fn pointer_into_the_header_is_an_error() {
        let mut cfg = qemu_like();
        cfg.bytes_mut()[0x51] = 0x3c;
        let err = walk(&cfg, "t").unwrap_err().to_string();
        assert!(err.contains("points to 0x3c, inside the standard header"), "{err}");
    }

    #[test]
    fn low_pointer_bits_are_masked_and_long_chains_end() {
        let mut cfg = qemu_like();
        cfg.bytes_mut()[0x34] = 0x9b; // reserved low bits set
        assert_eq!(walk(&cfg, "t").unwrap().virtio.len(), 5);
        // 48 distinct capabilities in a chain is the most there is room for; a 49th cannot exist
        // without revisiting an offset, which the loop check catches.
        let mut chain = SyntheticConfig::new(0x1af4, 0x1041);
        let b = chain.bytes_mut();
        b[0x06] = 0x10;
        b[0x34] = 0x40;
        for i in 0..48u16 {
            let pos = 0x40 + 4 * i as usize;
            b[pos] = 0x01;
            b[pos + 1] = if i == 47 { 0x40 } else { (pos + 4) as u8 };
        }
        let err = walk(&chain, "t").unwrap_err().to_string();
        assert!(err.contains("loops back to 0x40"), "{err}");
    }

    #[test]
    fn legacy_device_without_virtio_caps_is_refused() {
        // A legacy virtio-net: transitional id, an MSI-X capability, no virtio structures.
        let mut cfg = SyntheticConfig::new(0x1af4, 0x1000);
        let b = cfg.bytes_mut();
        b[0x06] = 0x10;
        b[0x34] = 0x40;
        b[0x40] = config::CAP_ID_MSIX;
        let list = walk(&cfg, "0000:00:05.0").unwrap();
        assert!(list.virtio.is_empty());
        let err = list.layout("0000:00:05.0", |_| true).unwrap_err();
        assert!(matches!(err, Error::LegacyOnlyDevice { .. }));
        assert!(err.to_string().contains("legacy-only") && err.to_string().contains("disable-legacy=on"));
        // No capability list at all: the same.
        let bare = SyntheticConfig::new(0x1af4, 0x1000);
        assert!(matches!(walk(&bare, "t").unwrap().layout("t", |_| true), Err(Error::LegacyOnlyDevice { .. })));
    }

    #[test]
    fn missing_notify_cap_is_named() {
        let mut cfg = qemu_like();
        cfg.bytes_mut()[0x84 + 1] = 0x60; // skip the notify capability at 0x70
        let err = walk(&cfg, "t").unwrap().layout("t", |_| true).unwrap_err().to_string();
        assert!(err.contains("no virtio notify configuration capability"), "{err}");
        let err = walk(&qemu_like(), "t").unwrap().layout("t", |c| c.cfg_type != pci::CAP_NOTIFY_CFG).unwrap_err();
        assert!(err.to_string().contains("found BAR 4 offset 0x3000"), "{err}");
    }

    #[test]
    fn misaligned_or_short_structures_are_refused() {
        let mut cfg = qemu_like();
        virtio_cap(&mut cfg, 0x40, 0x00, pci::CAP_COMMON_CFG, 4, 0x2, 0x1000, None);
        let err = walk(&cfg, "t").unwrap().layout("t", |_| true).unwrap_err().to_string();
        assert!(err.contains("not 4-byte aligned"), "{err}");
        virtio_cap(&mut cfg, 0x40, 0x00, pci::CAP_COMMON_CFG, 4, 0x0, 0x30, None);
        let err = walk(&cfg, "t").unwrap().layout("t", |_| true).unwrap_err().to_string();
        assert!(err.contains("shorter than"), "{err}");
        // A vendor capability too short to be a virtio one is skipped, not trusted.
        let mut cfg = qemu_like();
        cfg.bytes_mut()[0x72] = 16; // notify cap_len without the multiplier
        assert!(walk(&cfg, "t").unwrap().virtio.iter().all(|c| c.cfg_type != pci::CAP_NOTIFY_CFG));
    }
}
