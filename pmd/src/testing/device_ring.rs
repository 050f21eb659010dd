//! The DEVICE side of packed and split rings, for the software device: it reads what the driver
//! made available and writes used entries, in shared memory, exactly as a device would.
//!
//! The device validates what it reads (addresses inside known regions, chain lengths, indices)
//! and reports a malformed ring as an error rather than touching memory it does not know.
//!
//! It follows indirect descriptors (VIRTIO_F_INDIRECT_DESC): a descriptor flagged
//! VIRTQ_DESC_F_INDIRECT, last of its chain, names a table of descriptors holding the chain's
//! buffers ("Indirect Descriptors", 2.7.5.3; "Indirect Flag: Scatter-Gather Support", 2.8.7).
#![allow(unsafe_code)]

use std::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;

use crate::mem::DmaRegion;
use crate::spec::packed::{
    PackedDesc, DESC_F_AVAIL, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_USED, DESC_F_WRITE, EVENT_FLAGS_DESC,
    EVENT_FLAGS_DISABLE, EVENT_FLAGS_ENABLE,
};
use crate::spec::split::{self, avail, used, SplitDesc, UsedElem, USED_F_NO_NOTIFY};
use crate::spec::{Le16, Le32};
use crate::transport::{QueueAddresses, RingFormat};
use crate::virtqueue::position::RingPos;

/// When the device asks the driver for available-buffer notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyMode {
    /// After every publish (packed ENABLE; split without NO_NOTIFY, or EVENT_IDX at the next index).
    Always,
    /// Never (packed DISABLE; split NO_NOTIFY, or EVENT_IDX kept half the index space away).
    Never,
    /// EVENT_IDX / RING_EVENT_FLAGS_DESC: when the driver makes the descriptor this many entries
    /// past the device's position available.
    AtIndex(u16),
}

/// One buffer of an available chain, translated to this process's addresses.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSegment {
    /// Where the buffer is in this process.
    pub ptr: *mut u8,
    /// Its length.
    pub len: u32,
    /// Whether the device may write it.
    pub writable: bool,
}

/// A chain the driver made available.
#[derive(Debug, Default)]
pub struct Chain {
    /// Buffer id (packed) or head index (split).
    pub id: u16,
    /// Ring descriptors the chain took (an indirect table's descriptors not counted).
    pub descs: u16,
    /// Its buffers.
    pub segments: Vec<DeviceSegment>,
    /// Its buffers came from an indirect table.
    pub indirect: bool,
}

impl Chain {
    /// Bytes the device may write.
    pub fn writable_len(&self) -> u32 {
        self.segments.iter().filter(|s| s.writable).map(|s| s.len).sum()
    }

    /// Copies the device-readable buffers into `out`; returns the bytes copied.
    pub fn gather(&self, out: &mut [u8]) -> usize {
        let mut at = 0;
        for segment in self.segments.iter().filter(|s| !s.writable) {
            let n = (segment.len as usize).min(out.len() - at);
            // SAFETY: the segment was translated and bounds-checked against its DMA region, and
            // the driver does not touch a buffer while it is available to the device.
            unsafe { std::ptr::copy_nonoverlapping(segment.ptr, out[at..].as_mut_ptr(), n) };
            at += n;
        }
        at
    }

    /// Copies `data` into the device-writable buffers, as much as they hold.
    pub fn scatter(&self, data: &[u8]) {
        let mut at = 0;
        for segment in self.segments.iter().filter(|s| s.writable) {
            let n = (segment.len as usize).min(data.len() - at);
            // SAFETY: as in `gather`, for a device-writable buffer.
            unsafe { std::ptr::copy_nonoverlapping(data[at..].as_ptr(), segment.ptr, n) };
            at += n;
        }
    }
}

/// What makes a ring unusable for the device.
#[derive(Debug, PartialEq, Eq)]
pub enum RingFault {
    /// An address outside every known region.
    BadAddress(u64),
    /// A chain longer than the ring or looping.
    BadChain,
}

/// Translates device addresses to pointers, bounds-checked against the known regions.
#[derive(Clone)]
pub struct AddressSpace {
    regions: Vec<Arc<DmaRegion>>,
}

impl AddressSpace {
    /// The regions the driver mapped for the device.
    pub fn new(regions: Vec<Arc<DmaRegion>>) -> Self {
        Self { regions }
    }

    /// The regions, in the order given to [`AddressSpace::new`] (for a test's hostile device:
    /// everything a device can reach).
    pub fn regions(&self) -> &[Arc<DmaRegion>] {
        &self.regions
    }

    /// The pointer for `[iova, iova+len)`, if it lies inside one region.
    pub fn translate(&self, iova: u64, len: u64) -> Result<*mut u8, RingFault> {
        self.regions
            .iter()
            .find(|r| iova >= r.iova() && iova.checked_add(len).is_some_and(|end| end <= r.iova() + r.len() as u64))
            // SAFETY: the offset is inside the region, as just checked.
            .map(|r| unsafe { r.as_ptr().add((iova - r.iova()) as usize) })
            .ok_or(RingFault::BadAddress(iova))
    }
}

/// Reads the indirect table at `addr` (`len` bytes) of a ring of `size` descriptors into
/// `chain`, after the buffers of the ring descriptors before it. Split tables are followed by
/// `next` inside the table, packed ones read in order; a table of no descriptor, a length that
/// is not a multiple of 16, more descriptors than the ring has, a `next` out of the table or a
/// loop, and an INDIRECT flag inside a table (2.7.5.3.1) are malformed.
fn read_indirect(
    space: &AddressSpace,
    (addr, len): (u64, u32),
    size: u16,
    format: RingFormat,
    chain: &mut Chain,
) -> Result<(), RingFault> {
    let count = len as usize / 16;
    if len % 16 != 0 || count == 0 || count > size as usize || chain.indirect {
        return Err(RingFault::BadChain);
    }
    let table = space.translate(addr, len as u64)?;
    chain.indirect = true;
    let mut at = 0usize;
    for walked in 0..count {
        // SAFETY: `at < count`: inside the table just translated, which the driver does not
        // touch while the chain is available; read unaligned (the driver may place it anywhere).
        let raw = unsafe { table.add(16 * at).cast::<[u8; 16]>().read_volatile() };
        let addr = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let (flags, next) = match format {
            RingFormat::Split => (u16::from_le_bytes([raw[12], raw[13]]), u16::from_le_bytes([raw[14], raw[15]])),
            // Buffer id reserved; WRITE the only flag that counts.
            RingFormat::Packed => (u16::from_le_bytes([raw[14], raw[15]]) & DESC_F_WRITE, 0),
        };
        if flags & split::DESC_F_INDIRECT != 0 {
            return Err(RingFault::BadChain);
        }
        chain.segments.push(DeviceSegment {
            ptr: space.translate(addr, len as u64)?,
            len,
            writable: flags & split::DESC_F_WRITE != 0,
        });
        match format {
            RingFormat::Packed if walked + 1 == count => return Ok(()),
            RingFormat::Packed => at += 1,
            RingFormat::Split if flags & split::DESC_F_NEXT == 0 => return Ok(()),
            RingFormat::Split => at = next as usize,
        }
        if at >= count {
            return Err(RingFault::BadChain);
        }
    }
    // A split table whose `next` links loop.
    Err(RingFault::BadChain)
}

/// The device side of one ring.
pub enum DeviceRing {
    /// Packed.
    Packed(PackedDevice),
    /// Split.
    Split(SplitDevice),
}

impl DeviceRing {
    /// The device side of the ring at `addresses`.
    pub fn new(
        format: RingFormat,
        size: u16,
        addresses: QueueAddresses,
        space: &AddressSpace,
        event_idx: bool,
    ) -> Result<Self, RingFault> {
        Ok(match format {
            RingFormat::Packed => DeviceRing::Packed(PackedDevice {
                desc: space.translate(addresses.desc, 16 * size as u64)?.cast(),
                device_event: {
                    // Written as one atomic word, as the driver reads it: 4-byte aligned.
                    let at = space.translate(addresses.device, 4)?;
                    if at.align_offset(4) != 0 {
                        return Err(RingFault::BadAddress(addresses.device));
                    }
                    at.cast()
                },
                size,
                avail: RingPos::START,
                used: RingPos::START,
            }),
            RingFormat::Split => DeviceRing::Split(SplitDevice {
                desc: space.translate(addresses.desc, 16 * size as u64)?.cast(),
                avail: space.translate(addresses.driver, avail::bytes(size) as u64)?,
                used: space.translate(addresses.device, used::bytes(size) as u64)?,
                size,
                event_idx,
                last_avail: 0,
                used_idx: 0,
            }),
        })
    }

    /// Reads the next available chain, if any, into `chain`.
    pub fn pop_avail(&mut self, space: &AddressSpace, chain: &mut Chain) -> Result<bool, RingFault> {
        match self {
            DeviceRing::Packed(r) => r.pop_avail(space, chain),
            DeviceRing::Split(r) => r.pop_avail(space, chain),
        }
    }

    /// Writes a used entry for chain `id` of `descs` descriptors (`skip` descriptors in all for
    /// an in-order batch), with `len` bytes written. Visible to the driver at once.
    pub fn push_used(&mut self, id: u16, len: u32, skip: u16, batch: u16) {
        match self {
            DeviceRing::Packed(r) => r.push_used(id, len, skip),
            DeviceRing::Split(r) => r.push_used(id as u32, len, batch),
        }
    }

    /// Writes one used entry per `(id, len, descs)` of `entries`, made visible to the driver all
    /// at once (split: one `used.idx` store; packed: the first entry's flags last), as devices
    /// publish the buffers of one merged frame.
    pub fn push_used_together(&mut self, entries: &[(u16, u32, u16)]) {
        match self {
            DeviceRing::Packed(r) => r.push_used_together(entries),
            DeviceRing::Split(r) => r.push_used_together(entries),
        }
    }

    /// Writes a used entry with a raw id (fault injection: ids the driver never gave out).
    pub fn push_used_raw(&mut self, id: u32, len: u32) {
        match self {
            DeviceRing::Packed(r) => r.push_used(id as u16, len, 1),
            DeviceRing::Split(r) => r.push_used(id, len, 1),
        }
    }

    /// Sets the device's available-buffer notification suppression.
    pub fn set_notify(&mut self, mode: NotifyMode) {
        match self {
            DeviceRing::Packed(r) => r.set_notify(mode),
            DeviceRing::Split(r) => r.set_notify(mode),
        }
    }
}

/// Packed ring, device side.
pub struct PackedDevice {
    desc: *mut PackedDesc,
    /// The device event suppression structure (4 bytes, 4-byte aligned: checked in `new`).
    device_event: *mut u32,
    size: u16,
    avail: RingPos,
    used: RingPos,
}

impl PackedDevice {
    fn flags(&self, slot: u16) -> &AtomicU16 {
        // SAFETY: `slot < size`, the descriptor ring was translated for `16 * size` bytes.
        unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.desc.add(slot as usize)).flags).cast()) }
    }

    fn pop_avail(&mut self, space: &AddressSpace, chain: &mut Chain) -> Result<bool, RingFault> {
        chain.segments.clear();
        chain.indirect = false;
        let mut pos = self.avail;
        let mut descs = 0u16;
        loop {
            let flags = u16::from_le(self.flags(pos.idx()).load(Ordering::Acquire));
            let available = (flags & DESC_F_AVAIL != 0) == pos.wrap() && (flags & DESC_F_USED != 0) != pos.wrap();
            if !available {
                if chain.segments.is_empty() {
                    return Ok(false);
                }
                // A chain whose tail is not available yet: the driver publishes whole chains.
                return Err(RingFault::BadChain);
            }
            // SAFETY: `idx < size`; acquire above orders the read after the driver's writes.
            let desc = unsafe { self.desc.add(pos.idx() as usize).read_volatile() };
            let len = desc.len.get();
            if flags & DESC_F_INDIRECT != 0 {
                // The chain's last descriptor (no NEXT with it), its buffers in the table.
                if flags & DESC_F_NEXT != 0 {
                    return Err(RingFault::BadChain);
                }
                read_indirect(space, (desc.addr.get(), len), self.size, RingFormat::Packed, chain)?;
            } else {
                chain.segments.push(DeviceSegment {
                    ptr: space.translate(desc.addr.get(), len as u64)?,
                    len,
                    writable: flags & DESC_F_WRITE != 0,
                });
            }
            chain.id = desc.id.get();
            pos.advance(1, self.size);
            descs += 1;
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            if descs >= self.size {
                return Err(RingFault::BadChain);
            }
        }
        chain.descs = descs;
        self.avail = pos;
        Ok(true)
    }

    fn push_used(&mut self, id: u16, len: u32, skip: u16) {
        let slot = self.used.idx();
        let wrap = self.used.wrap();
        // SAFETY: `slot < size`; the driver does not touch the slot until it sees the flags.
        unsafe {
            let desc = self.desc.add(slot as usize);
            std::ptr::addr_of_mut!((*desc).id).write_volatile(Le16::new(id));
            std::ptr::addr_of_mut!((*desc).len).write_volatile(Le32::new(len));
        }
        let flags = if wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
        // Release: id and len are visible before the flags mark the descriptor used.
        self.flags(slot).store(flags.to_le(), Ordering::Release);
        self.used.advance(skip.min(self.size), self.size);
    }

    fn push_used_together(&mut self, entries: &[(u16, u32, u16)]) {
        let Some((&(id, len, descs), rest)) = entries.split_first() else { return };
        let (first, first_wrap) = (self.used.idx(), self.used.wrap());
        // SAFETY: `first < size`; the driver does not touch the slot until it sees the flags.
        unsafe {
            let desc = self.desc.add(first as usize);
            std::ptr::addr_of_mut!((*desc).id).write_volatile(Le16::new(id));
            std::ptr::addr_of_mut!((*desc).len).write_volatile(Le32::new(len));
        }
        self.used.advance(descs.min(self.size), self.size);
        rest.iter().for_each(|&(id, len, descs)| self.push_used(id, len, descs));
        let flags = if first_wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
        // Release: every entry written above is visible before the first is marked used.
        self.flags(first).store(flags.to_le(), Ordering::Release);
    }

    fn set_notify(&mut self, mode: NotifyMode) {
        let (flags, off_wrap) = match mode {
            NotifyMode::Always => (EVENT_FLAGS_ENABLE, 0),
            NotifyMode::Never => (EVENT_FLAGS_DISABLE, 0),
            NotifyMode::AtIndex(ahead) => {
                let mut at = self.avail;
                at.advance(ahead % self.size, self.size);
                (EVENT_FLAGS_DESC, at.off_wrap())
            }
        };
        // The structure as one little-endian word, `desc` (off_wrap) then `flags` ("Event
        // Suppression Structure Format", 2.8.10): one atomic store, as the driver loads it with
        // one atomic load while this thread writes.
        let word = (u32::from(off_wrap) | u32::from(flags) << 16).to_le();
        // SAFETY: translated for 4 bytes and checked 4-byte aligned at set-up; the region lives
        // as long as the device's address space; accessed atomically by both sides.
        unsafe { AtomicU32::from_ptr(self.device_event) }.store(word, Ordering::SeqCst);
        // The driver reads this after its own full fence; pair with one here.
        fence(Ordering::SeqCst);
    }
}

/// Split ring, device side.
pub struct SplitDevice {
    desc: *mut SplitDesc,
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    event_idx: bool,
    last_avail: u16,
    used_idx: u16,
}

impl SplitDevice {
    fn avail_u16(&self, offset: usize) -> &AtomicU16 {
        // SAFETY: offsets from `spec::split::avail`, within the translated `avail::bytes(size)`.
        unsafe { AtomicU16::from_ptr(self.avail.add(offset).cast()) }
    }

    fn used_u16(&self, offset: usize) -> &AtomicU16 {
        // SAFETY: offsets from `spec::split::used`, within the translated `used::bytes(size)`.
        unsafe { AtomicU16::from_ptr(self.used.add(offset).cast()) }
    }

    fn pop_avail(&mut self, space: &AddressSpace, chain: &mut Chain) -> Result<bool, RingFault> {
        chain.segments.clear();
        let avail_idx = u16::from_le(self.avail_u16(avail::IDX).load(Ordering::Acquire));
        if avail_idx == self.last_avail {
            return Ok(false);
        }
        if avail_idx.wrapping_sub(self.last_avail) > self.size {
            return Err(RingFault::BadChain);
        }
        let head = u16::from_le(self.avail_u16(avail::ring(self.last_avail % self.size)).load(Ordering::Relaxed));
        chain.indirect = false;
        let mut at = head;
        let mut descs = 0u16;
        loop {
            if at >= self.size || descs >= self.size {
                return Err(RingFault::BadChain);
            }
            // SAFETY: `at < size`; acquire on avail.idx ordered this after the driver's writes.
            let desc = unsafe { self.desc.add(at as usize).read_volatile() };
            let flags = desc.flags.get();
            let len = desc.len.get();
            descs += 1;
            if flags & split::DESC_F_INDIRECT != 0 {
                // "Zero or more normal chained descriptors followed by a single descriptor with
                // INDIRECT" (2.7.5.3.2), never INDIRECT with NEXT (2.7.5.3.1).
                if flags & split::DESC_F_NEXT != 0 {
                    return Err(RingFault::BadChain);
                }
                read_indirect(space, (desc.addr.get(), len), self.size, RingFormat::Split, chain)?;
                break;
            }
            chain.segments.push(DeviceSegment {
                ptr: space.translate(desc.addr.get(), len as u64)?,
                len,
                writable: flags & split::DESC_F_WRITE != 0,
            });
            if flags & split::DESC_F_NEXT == 0 {
                break;
            }
            at = desc.next.get();
        }
        chain.id = head;
        chain.descs = descs;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(true)
    }

    fn push_used(&mut self, id: u32, len: u32, batch: u16) {
        let offset = used::ring(self.used_idx % self.size);
        // SAFETY: the entry is inside the translated used ring.
        unsafe {
            self.used.add(offset).cast::<UsedElem>().write_volatile(UsedElem { id: Le32::new(id), len: Le32::new(len) })
        };
        self.used_idx = self.used_idx.wrapping_add(batch.max(1));
        // Release: the entry is visible before the index that publishes it.
        self.used_u16(used::IDX).store(self.used_idx.to_le(), Ordering::Release);
    }

    fn push_used_together(&mut self, entries: &[(u16, u32, u16)]) {
        for &(id, len, _) in entries {
            let offset = used::ring(self.used_idx % self.size);
            // SAFETY: the entry is inside the translated used ring.
            unsafe {
                self.used
                    .add(offset)
                    .cast::<UsedElem>()
                    .write_volatile(UsedElem { id: Le32::new(id as u32), len: Le32::new(len) })
            };
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        // Release: the entries are visible before the index that publishes them all.
        self.used_u16(used::IDX).store(self.used_idx.to_le(), Ordering::Release);
    }

    fn set_notify(&mut self, mode: NotifyMode) {
        let flags = if mode == NotifyMode::Never { USED_F_NO_NOTIFY } else { 0 };
        self.used_u16(used::FLAGS).store(flags.to_le(), Ordering::Relaxed);
        if self.event_idx {
            let event = match mode {
                NotifyMode::Always => self.last_avail,
                // Half the index space away from anything the driver can be publishing now.
                NotifyMode::Never => self.last_avail.wrapping_add(0x8000),
                NotifyMode::AtIndex(ahead) => self.last_avail.wrapping_add(ahead),
            };
            self.used_u16(used::avail_event(self.size)).store(event.to_le(), Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }
}

// SAFETY: the pointers target DMA regions kept alive by the `AddressSpace` the device holds.
unsafe impl Send for DeviceRing {}
// SAFETY: a segment is a plain address the device thread uses while the chain is its own.
unsafe impl Send for DeviceSegment {}
