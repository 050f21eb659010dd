//! Typed views of the virtio PCI structures, and the transport operations built on them.
//!
//! - [`CommonConfig`]: "Common configuration structure layout" (4.1.4.3), one volatile accessor
//!   per field at the offset `offset_of!` gives for [`spec::pci::CommonCfg`](crate::spec::pci::CommonCfg).
//!   Its window is checked once, at construction, to hold the whole structure and to be 4-byte
//!   aligned; the accessors are then unchecked. 64-bit fields are written as two 32-bit halves,
//!   low first ("PCI Device Layout").
//! - [`DeviceConfig`]: "Device-specific configuration" (4.1.4.6), read with the access width the
//!   field needs and retried until `config_generation` is stable ("Device Configuration Space",
//!   2.5.1).
//! - [`NotifyArea`] / [`PciNotifier`]: "Notification structure layout" (4.1.4.4): a queue's
//!   notify address is `cap.offset + queue_notify_off * notify_off_multiplier`, bounds-checked
//!   against the capability's length when the queue is set up; a notification is then one 16-bit
//!   store of the queue index ("Available Buffer Notifications", 4.1.5.2).
//! - [`VirtioPci`]: reset (write 0, wait for 0), features, status, queue set-up with read-back.
//!   The status sequence itself is the net device's job.
#![allow(unsafe_code)]

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use super::caps::{VirtioCap, VirtioLayout};
use super::Mmio;
use crate::error::{Error, Result};
use crate::spec::features::Features;
use crate::spec::pci::{self, CommonCfg};
use crate::transport::{Notify, QueueAddresses, RingFormat};

/// How long [`VirtioPci::reset`] waits for the device status to read 0.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a device configuration read is retried while `config_generation` changes.
const GENERATION_RETRIES: usize = 64;

macro_rules! off {
    ($field:ident) => {
        core::mem::offset_of!(CommonCfg, $field)
    };
}

/// The common configuration structure, mapped.
///
/// Invariant: `mmio` is at least [`pci::COMMON_CFG_MIN_LEN`] bytes long and 4-byte aligned, so
/// every field up to `queue_device` is in bounds and naturally aligned.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    mmio: Mmio,
}

impl CommonConfig {
    /// A view over `mmio`, which must hold the whole structure and be 4-byte aligned.
    pub fn new(mmio: Mmio) -> Option<Self> {
        (mmio.len() >= pci::COMMON_CFG_MIN_LEN && mmio.addr() % 4 == 0).then_some(Self { mmio })
    }

    #[inline]
    fn r8(&self, offset: usize) -> u8 {
        // SAFETY: `offset` is a field offset below COMMON_CFG_MIN_LEN, which `new` checked the
        // window holds.
        unsafe { self.mmio.read_u8(offset) }
    }
    #[inline]
    fn r16(&self, offset: usize) -> u16 {
        // SAFETY: a 16-bit field below COMMON_CFG_MIN_LEN; the window is 4-aligned (`new`).
        unsafe { self.mmio.read_u16(offset) }
    }
    #[inline]
    fn r32(&self, offset: usize) -> u32 {
        // SAFETY: a 32-bit field below COMMON_CFG_MIN_LEN; the window is 4-aligned (`new`).
        unsafe { self.mmio.read_u32(offset) }
    }
    #[inline]
    fn w8(&self, offset: usize, value: u8) {
        // SAFETY: as `r8`.
        unsafe { self.mmio.write_u8(offset, value) }
    }
    #[inline]
    fn w16(&self, offset: usize, value: u16) {
        // SAFETY: as `r16`.
        unsafe { self.mmio.write_u16(offset, value) }
    }
    #[inline]
    fn w32(&self, offset: usize, value: u32) {
        // SAFETY: as `r32`.
        unsafe { self.mmio.write_u32(offset, value) }
    }
    /// 64-bit fields: two 32-bit accesses, low half first ("PCI Device Layout").
    fn w64(&self, offset: usize, value: u64) {
        self.w32(offset, value as u32);
        self.w32(offset + 4, (value >> 32) as u32);
    }
    fn r64(&self, offset: usize) -> u64 {
        u64::from(self.r32(offset)) | (u64::from(self.r32(offset + 4)) << 32)
    }

    /// `device_feature_select`.
    pub fn set_device_feature_select(&self, word: u32) {
        self.w32(off!(device_feature_select), word)
    }
    /// `device_feature`: the word selected by `device_feature_select`.
    pub fn device_feature(&self) -> u32 {
        self.r32(off!(device_feature))
    }
    /// `driver_feature_select`.
    pub fn set_driver_feature_select(&self, word: u32) {
        self.w32(off!(driver_feature_select), word)
    }
    /// `driver_feature`: the word selected by `driver_feature_select`.
    pub fn driver_feature(&self) -> u32 {
        self.r32(off!(driver_feature))
    }
    /// Writes `driver_feature` (the word selected by `driver_feature_select`).
    pub fn set_driver_feature(&self, value: u32) {
        self.w32(off!(driver_feature), value)
    }
    /// `config_msix_vector`.
    pub fn config_msix_vector(&self) -> u16 {
        self.r16(off!(config_msix_vector))
    }
    /// `num_queues`.
    pub fn num_queues(&self) -> u16 {
        self.r16(off!(num_queues))
    }
    /// `device_status`.
    pub fn device_status(&self) -> u8 {
        self.r8(off!(device_status))
    }
    /// Writes `device_status` (0 resets the device).
    pub fn set_device_status(&self, status: u8) {
        self.w8(off!(device_status), status)
    }
    /// `config_generation`.
    pub fn config_generation(&self) -> u8 {
        self.r8(off!(config_generation))
    }
    /// Writes `queue_select`; the `queue_*` accessors then refer to that queue.
    pub fn select_queue(&self, queue: u16) {
        self.w16(off!(queue_select), queue)
    }
    /// `queue_select`.
    pub fn queue_select(&self) -> u16 {
        self.r16(off!(queue_select))
    }
    /// `queue_size`: the maximum after reset, then what the driver wrote.
    pub fn queue_size(&self) -> u16 {
        self.r16(off!(queue_size))
    }
    /// Writes `queue_size`.
    pub fn set_queue_size(&self, size: u16) {
        self.w16(off!(queue_size), size)
    }
    /// `queue_msix_vector`.
    pub fn queue_msix_vector(&self) -> u16 {
        self.r16(off!(queue_msix_vector))
    }
    /// `queue_enable`.
    pub fn queue_enable(&self) -> u16 {
        self.r16(off!(queue_enable))
    }
    /// Writes `queue_enable` (the driver only ever writes 1).
    pub fn set_queue_enable(&self, value: u16) {
        self.w16(off!(queue_enable), value)
    }
    /// `queue_notify_off`.
    pub fn queue_notify_off(&self) -> u16 {
        self.r16(off!(queue_notify_off))
    }
    /// `queue_desc`.
    pub fn queue_desc(&self) -> u64 {
        self.r64(off!(queue_desc))
    }
    /// Writes `queue_desc`.
    ///
    /// # Safety
    /// The device accesses the selected queue's descriptor area at `addr` once the queue is
    /// enabled: see [`VirtioPci::setup_queue`] for what the three areas must be.
    pub unsafe fn set_queue_desc(&self, addr: u64) {
        self.w64(off!(queue_desc), addr)
    }
    /// `queue_driver`.
    pub fn queue_driver(&self) -> u64 {
        self.r64(off!(queue_driver))
    }
    /// Writes `queue_driver`.
    ///
    /// # Safety
    /// As [`set_queue_desc`](Self::set_queue_desc), for the driver area.
    pub unsafe fn set_queue_driver(&self, addr: u64) {
        self.w64(off!(queue_driver), addr)
    }
    /// `queue_device`.
    pub fn queue_device(&self) -> u64 {
        self.r64(off!(queue_device))
    }
    /// Writes `queue_device`.
    ///
    /// # Safety
    /// As [`set_queue_desc`](Self::set_queue_desc), for the device area.
    pub unsafe fn set_queue_device(&self, addr: u64) {
        self.w64(off!(queue_device), addr)
    }

    /// The 64 feature bits the device offers (words 0 and 1 through `device_feature_select`).
    pub fn device_features(&self) -> Features {
        self.set_device_feature_select(0);
        let low = self.device_feature();
        self.set_device_feature_select(1);
        let high = self.device_feature();
        Features(u64::from(low) | (u64::from(high) << 32))
    }

    /// Writes the 64 feature bits the driver accepts.
    pub fn set_driver_features(&self, features: Features) {
        for word in 0..2 {
            self.set_driver_feature_select(word);
            self.set_driver_feature(features.word(word));
        }
    }
}

/// The device-specific configuration, mapped.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    mmio: Mmio,
}

impl DeviceConfig {
    /// A view over `mmio` (4-byte aligned, per "Device-specific configuration").
    pub fn new(mmio: Mmio) -> Option<Self> {
        (mmio.addr() % 4 == 0).then_some(Self { mmio })
    }

    /// Length of the structure in bytes.
    pub fn len(&self) -> usize {
        self.mmio.len()
    }

    /// Whether the structure is empty.
    pub fn is_empty(&self) -> bool {
        self.mmio.is_empty()
    }

    /// Copies `buf.len()` bytes at `offset` (one pass, no generation check), choosing access
    /// widths as "PCI Device Layout" asks: a 1, 2 or 4-byte aligned buffer is one access of that
    /// width, an aligned 8-byte buffer two 32-bit accesses, and anything else (byte arrays such as
    /// a MAC address) byte by byte. Returns `false` when the range is outside the structure.
    fn read_once(&self, offset: usize, buf: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(buf.len()) else {
            return false;
        };
        if end > self.mmio.len() {
            return false;
        }
        match buf.len() {
            2 if self.mmio.fits(offset, 2) => {
                // SAFETY: `fits` checked bounds and alignment.
                buf.copy_from_slice(&unsafe { self.mmio.read_u16(offset) }.to_le_bytes())
            }
            4 | 8 if self.mmio.fits(offset, 4) => {
                for (i, chunk) in buf.chunks_exact_mut(4).enumerate() {
                    // SAFETY: `end <= len` and `offset` is 4-aligned, so each 4-byte chunk is in
                    // bounds and aligned.
                    chunk.copy_from_slice(&unsafe { self.mmio.read_u32(offset + 4 * i) }.to_le_bytes());
                }
            }
            _ => {
                for (i, byte) in buf.iter_mut().enumerate() {
                    // SAFETY: `offset + i < end <= len`.
                    *byte = unsafe { self.mmio.read_u8(offset + i) };
                }
            }
        }
        true
    }
}

/// The notification structure, mapped, with its multiplier.
#[derive(Clone, Debug)]
pub struct NotifyArea {
    mmio: Mmio,
    multiplier: u32,
}

impl NotifyArea {
    /// A view over `mmio` (the structure, as long as the capability says and the BAR holds).
    pub fn new(mmio: Mmio, multiplier: u32) -> Self {
        Self { mmio, multiplier }
    }

    /// Byte offset of the notify address for `queue_notify_off`, when it lies inside the
    /// structure with room for the 16-bit write, 2-byte aligned.
    pub fn offset_of(&self, queue_notify_off: u16) -> Option<usize> {
        let offset = u64::from(queue_notify_off).checked_mul(u64::from(self.multiplier))?;
        let offset = usize::try_from(offset).ok()?;
        self.mmio.fits(offset, 2).then_some(offset)
    }

    /// The notifier of `queue`, whose `queue_notify_off` is `queue_notify_off`.
    pub fn notifier(&self, queue: u16, queue_notify_off: u16) -> Option<PciNotifier> {
        let offset = self.offset_of(queue_notify_off)?;
        Some(PciNotifier { window: self.mmio.window(offset, 2)?, queue })
    }
}

/// Notifies one queue: a 16-bit store of the queue index at its notify address. Keeps the
/// mapping it writes to alive.
///
/// Invariant: `window` is 2 bytes long and 2-byte aligned (checked by [`NotifyArea::notifier`]).
#[derive(Debug)]
pub struct PciNotifier {
    window: Mmio,
    queue: u16,
}

impl PciNotifier {
    /// The queue this notifier kicks.
    pub fn queue(&self) -> u16 {
        self.queue
    }
}

impl Notify for PciNotifier {
    #[inline]
    fn notify(&self) {
        // The ring updates this notification announces must reach memory before the device sees
        // the doorbell: order them before the MMIO store. (On x86 a store is never reordered
        // with earlier stores, so this only stops the compiler.)
        fence(Ordering::Release);
        // SAFETY: the window is 2 bytes and 2-aligned (struct invariant).
        unsafe { self.window.write_u16(0, self.queue) }
    }
}

/// A virtio PCI function's structures, mapped: the transport operations that do not depend on
/// how the function is reached. Dropping it resets the device, so a transport that holds it
/// declares it as its first field: the reset then stops all DMA before anything else goes.
#[derive(Debug)]
pub struct VirtioPci {
    name: String,
    common: CommonConfig,
    notify: NotifyArea,
    device: Option<DeviceConfig>,
    isr: Option<Mmio>,
    reset_timeout: Duration,
}

/// The window of `cap`'s structure inside its BAR's mapping: as long as the capability says,
/// clipped to what the BAR holds; `None` when fewer than `min_len` bytes are there.
fn structure_window(bar: &Mmio, cap: &VirtioCap, min_len: usize) -> Option<Mmio> {
    let offset = usize::try_from(cap.offset).ok()?;
    let available = bar.len().checked_sub(offset)?;
    let len = usize::try_from(cap.length).unwrap_or(usize::MAX).min(available);
    if len < min_len {
        return None;
    }
    if len < cap.length as usize {
        tracing::warn!(
            "virtio {} structure: the capability says {:#x} bytes at BAR {} offset {:#x}, the BAR holds only {:#x}",
            cap.type_name(),
            cap.length,
            cap.bar,
            cap.offset,
            len
        );
    }
    bar.window(offset, len)
}

/// Polls `status` until it reads 0: spins first (QEMU resets synchronously), then sleeps in
/// 100 µs steps. `Err` carries the last status read when `timeout` passes.
fn wait_for_reset(status: impl Fn() -> u8, timeout: Duration) -> Result<(), u8> {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        let value = status();
        if value == 0 {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(value);
        }
        polls += 1;
        if polls < 1000 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

impl Drop for VirtioPci {
    /// Resets the device so that it stops all DMA before its memory can go away.
    fn drop(&mut self) {
        if let Err(e) = self.reset() {
            tracing::warn!("{e}");
        }
    }
}

impl VirtioPci {
    /// Maps the views of `layout`, given the mapping of each BAR it uses (`bar(n)`).
    pub fn new(name: &str, layout: &VirtioLayout, bar: impl Fn(u8) -> Option<Mmio>) -> Result<Self> {
        let window = |cap: &VirtioCap, min_len: usize| {
            bar(cap.bar).and_then(|b| structure_window(&b, cap, min_len)).ok_or_else(|| Error::BadPciCapabilities {
                device: name.to_owned(),
                problem: format!(
                    "the virtio {} structure (BAR {} offset {:#x} length {:#x}) is not inside the mapped BAR",
                    cap.type_name(),
                    cap.bar,
                    cap.offset,
                    cap.length
                ),
            })
        };
        let common = CommonConfig::new(window(&layout.common, pci::COMMON_CFG_MIN_LEN)?).ok_or_else(|| {
            Error::BadPciCapabilities { device: name.to_owned(), problem: "misaligned common configuration".into() }
        })?;
        let notify = NotifyArea::new(window(&layout.notify, 2)?, layout.notify.notify_off_multiplier);
        let device = match &layout.device {
            Some(cap) => Some(DeviceConfig::new(window(cap, 0)?).ok_or_else(|| Error::BadPciCapabilities {
                device: name.to_owned(),
                problem: "misaligned device configuration".into(),
            })?),
            None => None,
        };
        let isr = layout.isr.as_ref().and_then(|cap| bar(cap.bar).and_then(|b| structure_window(&b, cap, 1)));
        Ok(Self { name: name.to_owned(), common, notify, device, isr, reset_timeout: RESET_TIMEOUT })
    }

    /// The function's name (its PCI address).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The common configuration view.
    pub fn common(&self) -> &CommonConfig {
        &self.common
    }

    /// The ISR status byte's window, recorded for completeness: a poll-mode driver never reads it
    /// (reading it clears it).
    pub fn isr(&self) -> Option<&Mmio> {
        self.isr.as_ref()
    }

    /// Changes how long [`reset`](Self::reset) waits.
    pub fn set_reset_timeout(&mut self, timeout: Duration) {
        self.reset_timeout = timeout;
    }

    /// Resets the device: writes 0 to `device_status`, then waits until it reads 0 ("The driver
    /// MUST wait for a read of device_status to return 0 before reinitializing the device").
    pub fn reset(&self) -> Result<()> {
        self.common.set_device_status(0);
        wait_for_reset(|| self.common.device_status(), self.reset_timeout).map_err(|status| Error::ResetTimeout {
            device: self.name.clone(),
            status,
            timeout_ms: self.reset_timeout.as_millis() as u64,
        })
    }

    /// Reads `device_status`.
    pub fn status(&self) -> u8 {
        self.common.device_status()
    }

    /// Writes `device_status`.
    pub fn set_status(&self, status: u8) {
        self.common.set_device_status(status)
    }

    /// The features the device offers.
    pub fn device_features(&self) -> Features {
        self.common.device_features()
    }

    /// Writes the features the driver accepts.
    pub fn set_driver_features(&self, features: Features) {
        self.common.set_driver_features(features)
    }

    /// `num_queues`.
    pub fn num_queues(&self) -> u16 {
        self.common.num_queues()
    }

    /// The largest ring size the device allows for `queue` (0: no such queue). Valid before the
    /// queue is set up, since `queue_size` holds the maximum after reset.
    pub fn max_queue_size(&self, queue: u16) -> u16 {
        self.common.select_queue(queue);
        self.common.queue_size()
    }

    /// Reads `buf.len()` bytes of the device configuration at `offset`, retrying until
    /// `config_generation` reads the same before and after, so multi-field reads are consistent.
    pub fn read_device_config(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let device = self.device.as_ref().ok_or_else(|| Error::BadPciCapabilities {
            device: self.name.clone(),
            problem: "no device-specific configuration capability".into(),
        })?;
        for _ in 0..GENERATION_RETRIES {
            let before = self.common.config_generation();
            if !device.read_once(offset, buf) {
                return Err(Error::InvalidConfig(format!(
                    "{}: device configuration read of {} bytes at {offset:#x} is outside its {:#x} bytes",
                    self.name,
                    buf.len(),
                    device.len()
                )));
            }
            // Volatile accesses are not reordered with each other, so the second generation read
            // happens after the field reads.
            if self.common.config_generation() == before {
                return Ok(());
            }
        }
        Err(Error::Transport(format!(
            "{}: the device configuration kept changing (config_generation moved on each of {GENERATION_RETRIES} reads)",
            self.name
        )))
    }

    /// Configures and enables `queue` ("Virtqueue Configuration", 4.1.5.1.3): select it, check
    /// `size` against the maximum, write size and the three area addresses, read them back,
    /// compute and check the notify address, then write `queue_enable` = 1 and read it back.
    ///
    /// # Safety
    /// From then on the device reads and writes the three areas at `addresses` (device
    /// addresses): they must be the areas of a `size`-entry `format` ring that the caller owns,
    /// in memory mapped for this device, that nothing but the driver side of that ring (and the
    /// device) uses, and that stays so until the device is reset.
    pub unsafe fn setup_queue(
        &self,
        queue: u16,
        size: u16,
        format: RingFormat,
        addresses: QueueAddresses,
    ) -> Result<PciNotifier> {
        let common = &self.common;
        common.select_queue(queue);
        let max = common.queue_size();
        let refused = |hint| Error::QueueSizeRefused { queue, requested: size, max, hint };
        if max == 0 {
            return Err(refused("; the device has no such queue: check num_queues and the negotiated MQ feature"));
        }
        if size == 0 || size > max {
            return Err(refused(
                "; ask for at most the maximum, or raise it on the device (QEMU: -device \
                 virtio-net-pci,rx_queue_size=1024,tx_queue_size=1024; tx above 256 needs vhost-user)",
            ));
        }
        if format == RingFormat::Split && !size.is_power_of_two() {
            return Err(refused("; a split ring's size must be a power of two"));
        }
        if common.queue_enable() != 0 {
            return Err(Error::InvalidConfig(format!(
                "{}: queue {queue} is already enabled: reset the device before setting it up again",
                self.name
            )));
        }
        common.set_queue_size(size);
        // SAFETY: the caller vouches for the three areas (this function's contract).
        unsafe {
            common.set_queue_desc(addresses.desc);
            common.set_queue_driver(addresses.driver);
            common.set_queue_device(addresses.device);
        }
        let read_size = common.queue_size();
        if read_size != size {
            return Err(refused("; the device did not keep the size written to queue_size"));
        }
        let read_back =
            QueueAddresses { desc: common.queue_desc(), driver: common.queue_driver(), device: common.queue_device() };
        if read_back != addresses {
            let (what, wrote, read) = if read_back.desc != addresses.desc {
                ("queue_desc", addresses.desc, read_back.desc)
            } else if read_back.driver != addresses.driver {
                ("queue_driver", addresses.driver, read_back.driver)
            } else {
                ("queue_device", addresses.device, read_back.device)
            };
            return Err(self.read_back_error(format!("{what} of queue {queue}"), wrote, read));
        }
        let notify_off = common.queue_notify_off();
        let notifier = self.notify.notifier(queue, notify_off).ok_or_else(|| Error::BadPciCapabilities {
            device: self.name.clone(),
            problem: format!(
                "queue {queue}: notify address (queue_notify_off {notify_off} * multiplier {}) is outside the \
                 notification structure",
                self.notify.multiplier
            ),
        })?;
        common.set_queue_enable(1);
        let enabled = common.queue_enable();
        if enabled != 1 {
            return Err(self.read_back_error(format!("queue_enable of queue {queue}"), 1, u64::from(enabled)));
        }
        Ok(notifier)
    }

    fn read_back_error(&self, what: String, wrote: u64, read: u64) -> Error {
        Error::RegisterReadBack { device: self.name.clone(), what, wrote, read }
    }
}

#[cfg(test)]
mod tests {
    use super::super::caps::{tests::qemu_like, walk};
    use super::super::mmio::heap;
    use super::*;

    /// A BAR 4 of plain memory laid out like QEMU's, and the transport over it. Plain memory is
    /// not a device: it keeps what is written, which is what a well-behaved device shows for the
    /// read-write fields.
    fn fake() -> (Mmio, VirtioPci) {
        let bar4 = heap(0x4000);
        let layout = walk(&qemu_like(), "t").unwrap().layout("t", |_| true).unwrap();
        let bar = bar4.clone();
        let pci = VirtioPci::new("0000:00:03.0", &layout, move |n| (n == 4).then(|| bar.clone())).unwrap();
        (bar4, pci)
    }

    fn set_queue_max(bar4: &Mmio, queue_select_value: u16, max: u16) {
        // SAFETY: offsets inside the 16 KiB test memory, aligned.
        unsafe {
            bar4.write_u16(off!(queue_select), queue_select_value);
            bar4.write_u16(off!(queue_size), max);
        }
    }

    #[test]
    fn accessors_hit_the_spec_offsets() {
        let (bar4, pci) = fake();
        pci.set_status(0x3);
        assert_eq!(bar4.get_u8(0x14), Some(0x3));
        pci.set_driver_features(Features(0x1_0000_0020));
        // The last word written is word 1, at driver_feature (0x0c), selected at 0x08.
        assert_eq!((bar4.get_u32(0x08), bar4.get_u32(0x0c)), (Some(1), Some(1)));
        // SAFETY: in bounds.
        unsafe { bar4.write_u16(0x12, 3) };
        assert_eq!(pci.num_queues(), 3);
        // SAFETY: a synthetic device in memory: nothing uses the address.
        unsafe { pci.common().set_queue_desc(0x1122_3344_5566_7788) };
        assert_eq!((bar4.get_u32(0x20), bar4.get_u32(0x24)), (Some(0x5566_7788), Some(0x1122_3344)));
        assert!(pci.isr().is_some());
    }

    #[test]
    fn dropping_the_function_resets_the_device() {
        let (bar4, pci) = fake();
        pci.set_status(0xf);
        drop(pci);
        assert_eq!(bar4.get_u8(off!(device_status)), Some(0));
    }

    #[test]
    fn reset_waits_for_zero_and_times_out_clearly() {
        let (_bar4, pci) = fake();
        pci.set_status(0xf);
        pci.reset().unwrap();
        assert_eq!(pci.status(), 0);
        // A device that never clears its status (plain memory cannot model one).
        let start = Instant::now();
        assert_eq!(wait_for_reset(|| 0x40, Duration::from_millis(20)), Err(0x40));
        assert!(start.elapsed() >= Duration::from_millis(20));
        let reads = std::cell::Cell::new(3u8);
        assert_eq!(
            wait_for_reset(
                || {
                    reads.set(reads.get().saturating_sub(1));
                    reads.get()
                },
                RESET_TIMEOUT
            ),
            Ok(())
        );
        let err = Error::ResetTimeout { device: "0000:00:03.0".into(), status: 0x40, timeout_ms: 20 };
        assert!(err.to_string().contains("/sys/bus/pci/devices/0000:00:03.0/reset"), "{err}");
    }

    #[test]
    fn queue_setup_checks_size_and_reads_back() {
        let (bar4, pci) = fake();
        set_queue_max(&bar4, 1, 256);
        // Queue 1's notify_off is 1: multiplier 4 puts its doorbell at notify + 4.
        // SAFETY: in bounds.
        unsafe { bar4.write_u16(off!(queue_notify_off), 1) };
        let addrs = QueueAddresses { desc: 0x7f00_0000_0000, driver: 0x7f00_0000_1000, device: 0x7f00_0000_2000 };
        let setup_queue = |queue, size, format| {
            // SAFETY: a synthetic device in memory: nothing does DMA.
            unsafe { pci.setup_queue(queue, size, format, addrs) }
        };
        let err = setup_queue(1, 512, RingFormat::Packed).unwrap_err();
        assert!(matches!(err, Error::QueueSizeRefused { queue: 1, requested: 512, max: 256, .. }), "{err}");
        assert!(err.to_string().contains("rx_queue_size"));
        let err = setup_queue(1, 200, RingFormat::Split).unwrap_err();
        assert!(err.to_string().contains("power of two"), "{err}");
        let notifier = setup_queue(1, 128, RingFormat::Split).unwrap();
        assert_eq!(bar4.get_u16(off!(queue_size)), Some(128));
        assert_eq!(bar4.get_u16(off!(queue_enable)), Some(1));
        assert_eq!(pci.common().queue_driver(), 0x7f00_0000_1000);
        notifier.notify();
        assert_eq!(bar4.get_u16(0x3000 + 4), Some(1), "the queue index lands at notify + 1 * 4");
        // Already enabled: refused.
        assert!(setup_queue(1, 128, RingFormat::Split).is_err());
        // A queue whose maximum is 0 does not exist.
        set_queue_max(&bar4, 2, 0);
        let err = setup_queue(2, 64, RingFormat::Packed).unwrap_err();
        assert!(err.to_string().contains("no such queue"), "{err}");
    }

    #[test]
    fn notify_offsets_are_bounds_checked() {
        let area = NotifyArea::new(heap(0x1000), 4);
        assert_eq!(area.offset_of(0), Some(0));
        assert_eq!(area.offset_of(0x3ff), Some(0xffc));
        assert_eq!(area.offset_of(0x400), None, "past the structure");
        let zero = NotifyArea::new(heap(2), 0);
        assert_eq!(zero.offset_of(0xffff), Some(0), "multiplier 0: one address for all queues");
        let odd = NotifyArea::new(heap(0x100), 1);
        assert_eq!(odd.offset_of(3), None, "a 16-bit store must be aligned");
        let (bar4, pci) = fake();
        set_queue_max(&bar4, 0, 256);
        // SAFETY: in bounds.
        unsafe { bar4.write_u16(off!(queue_notify_off), 0x400) };
        let addrs = QueueAddresses { desc: 0x1000, driver: 0x2000, device: 0x3000 };
        // SAFETY: a synthetic device in memory: nothing does DMA.
        let err = unsafe { pci.setup_queue(0, 256, RingFormat::Packed, addrs) }.unwrap_err();
        assert!(err.to_string().contains("outside the notification structure"), "{err}");
        assert_eq!(bar4.get_u16(off!(queue_enable)), Some(0), "not enabled after a failed set-up");
    }

    #[test]
    fn device_config_reads_use_field_widths_and_bounds() {
        let (bar4, pci) = fake();
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        for (i, b) in mac.iter().enumerate() {
            // SAFETY: in bounds.
            unsafe { bar4.write_u8(0x2000 + i, *b) };
        }
        // SAFETY: in bounds.
        unsafe { bar4.write_u16(0x2000 + 6, 1) };
        let mut got = [0u8; 6];
        pci.read_device_config(0, &mut got).unwrap();
        assert_eq!(got, mac);
        let mut status = [0u8; 2];
        pci.read_device_config(6, &mut status).unwrap();
        assert_eq!(u16::from_le_bytes(status), 1);
        let mut eight = [0u8; 8];
        pci.read_device_config(0, &mut eight).unwrap();
        assert_eq!(&eight[..6], &mac);
        let err = pci.read_device_config(0xffe, &mut eight).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn structures_outside_the_bar_are_refused() {
        let layout = walk(&qemu_like(), "t").unwrap().layout("t", |_| true).unwrap();
        let small = heap(0x2000); // notify at 0x3000 does not fit
        let err = VirtioPci::new("t", &layout, move |_| Some(small.clone())).unwrap_err();
        assert!(err.to_string().contains("virtio notify structure"), "{err}");
    }
}
