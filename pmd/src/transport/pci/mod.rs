//! Virtio over PCI ("Virtio Over PCI Bus", 4.1), independent of how the function is reached.
//!
//! - [`ConfigSpace`]: reads and writes of PCI configuration space (VFIO implements it over the
//!   device fd; tests over a byte array).
//! - [`caps`]: the capability walk and the choice of virtio structures ("Virtio Structure PCI
//!   Capabilities"): offsets and lengths come only from the capabilities.
//! - [`Mmio`]: a window of mapped registers, volatile accesses only.
//! - [`CommonConfig`], [`DeviceConfig`], [`NotifyArea`]: typed views of the common
//!   configuration, the device-specific configuration (read under `config_generation`) and the
//!   notification area, each checked against its capability's length once, at set-up.
//! - [`VirtioPci`]: the [`Transport`](super::Transport) operations on top of those views; a
//!   concrete transport (VFIO) adds the name, DMA mapping and the lifetime of the mappings.

pub mod caps;
mod common;
mod mmio;

pub use caps::{CapList, OtherCap, VirtioCap, VirtioLayout};
pub use common::{CommonConfig, DeviceConfig, NotifyArea, PciNotifier, VirtioPci, RESET_TIMEOUT};
pub use mmio::Mmio;
pub(crate) use mmio::RegionMapping;

use crate::error::{Error, Result};
use crate::spec::pci::config;

/// Access to a function's PCI configuration space.
pub trait ConfigSpace {
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u16, buf: &mut [u8]) -> Result<()>;
    /// Writes `data` at `offset`.
    fn write(&self, offset: u16, data: &[u8]) -> Result<()>;

    /// Reads a byte.
    fn read_u8(&self, offset: u16) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read(offset, &mut b)?;
        Ok(b[0])
    }
    /// Reads a little-endian 16-bit value.
    fn read_u16(&self, offset: u16) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// Reads a little-endian 32-bit value.
    fn read_u32(&self, offset: u16) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Writes a little-endian 16-bit value.
    fn write_u16(&self, offset: u16, value: u16) -> Result<()> {
        self.write(offset, &value.to_le_bytes())
    }
}

/// The [`Transport`](crate::transport::Transport) methods that a PCI transport answers from its
/// [`VirtioPci`] (a field `pci`), the same however the function is reached. Expands inside an
/// `impl Transport for ...` block, which adds `name`, `map_dma` and what else differs.
macro_rules! delegate_to_virtio_pci {
    () => {
        fn reset(&mut self) -> $crate::error::Result<()> {
            self.pci.reset()
        }

        fn status(&mut self) -> $crate::error::Result<u8> {
            Ok(self.pci.status())
        }

        fn set_status(&mut self, status: u8) -> $crate::error::Result<()> {
            self.pci.set_status(status);
            Ok(())
        }

        fn device_features(&mut self) -> $crate::error::Result<$crate::spec::features::Features> {
            Ok(self.pci.device_features())
        }

        fn set_driver_features(&mut self, features: $crate::spec::features::Features) -> $crate::error::Result<()> {
            self.pci.set_driver_features(features);
            Ok(())
        }

        fn num_queues(&mut self) -> $crate::error::Result<u16> {
            Ok(self.pci.num_queues())
        }

        fn max_queue_size(&mut self, queue: u16) -> $crate::error::Result<u16> {
            Ok(self.pci.max_queue_size(queue))
        }

        fn read_device_config(&mut self, offset: usize, buf: &mut [u8]) -> $crate::error::Result<()> {
            self.pci.read_device_config(offset, buf)
        }

        unsafe fn setup_queue(
            &mut self,
            queue: u16,
            size: u16,
            format: $crate::transport::RingFormat,
            addresses: $crate::transport::QueueAddresses,
        ) -> $crate::error::Result<Box<dyn $crate::transport::Notify>> {
            // SAFETY: the caller vouches for the areas (`Transport::setup_queue`'s contract, the
            // same as `VirtioPci::setup_queue`'s).
            Ok(Box::new(unsafe { self.pci.setup_queue(queue, size, format, addresses) }?))
        }
    };
}
pub(crate) use delegate_to_virtio_pci;

/// Sets Memory Space and Bus Master in the command register and reads it back.
///
/// Without Bus Master the device cannot DMA: transmits never complete and nothing reports an
/// error, so a write that did not stick is an error here. Returns the command register's value.
pub fn enable_memory_and_bus_master(cfg: &dyn ConfigSpace, device: &str) -> Result<u16> {
    let wanted = config::COMMAND_MEMORY | config::COMMAND_BUS_MASTER;
    let before = cfg.read_u16(config::COMMAND)?;
    if before & wanted != wanted {
        cfg.write_u16(config::COMMAND, before | wanted)?;
    }
    let after = cfg.read_u16(config::COMMAND)?;
    if after & wanted != wanted {
        return Err(Error::RegisterReadBack {
            device: device.to_owned(),
            what: "Memory Space and Bus Master in the PCI command register".into(),
            wrote: u64::from(before | wanted),
            read: u64::from(after),
        });
    }
    Ok(after)
}

/// Synthetic configuration spaces for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::RefCell;

    use super::ConfigSpace;
    use crate::error::{Error, Result};

    /// 256 bytes of configuration space in memory; writes to the command register can be made to
    /// drop bits, to test the read-back check.
    pub(crate) struct SyntheticConfig {
        bytes: RefCell<Vec<u8>>,
        pub(crate) command_sticky_mask: u16,
    }

    impl SyntheticConfig {
        pub(crate) fn new(vendor: u16, device: u16) -> Self {
            let mut bytes = vec![0u8; 256];
            bytes[0..2].copy_from_slice(&vendor.to_le_bytes());
            bytes[2..4].copy_from_slice(&device.to_le_bytes());
            Self { bytes: RefCell::new(bytes), command_sticky_mask: 0xffff }
        }

        pub(crate) fn bytes_mut(&mut self) -> &mut Vec<u8> {
            self.bytes.get_mut()
        }
    }

    impl ConfigSpace for SyntheticConfig {
        fn read(&self, offset: u16, buf: &mut [u8]) -> Result<()> {
            let bytes = self.bytes.borrow();
            let start = usize::from(offset);
            let src = bytes
                .get(start..start + buf.len())
                .ok_or_else(|| Error::InvalidConfig(format!("config read past the end at {offset:#x}")))?;
            buf.copy_from_slice(src);
            Ok(())
        }

        fn write(&self, offset: u16, data: &[u8]) -> Result<()> {
            let mut bytes = self.bytes.borrow_mut();
            let start = usize::from(offset);
            let dst = bytes
                .get_mut(start..start + data.len())
                .ok_or_else(|| Error::InvalidConfig(format!("config write past the end at {offset:#x}")))?;
            dst.copy_from_slice(data);
            if offset == 4 && data.len() == 2 {
                let v = u16::from_le_bytes([data[0], data[1]]) & self.command_sticky_mask;
                dst.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::SyntheticConfig;
    use super::*;

    #[test]
    fn command_register_is_verified_after_the_write() {
        let cfg = SyntheticConfig::new(0x1af4, 0x1041);
        assert_eq!(enable_memory_and_bus_master(&cfg, "t").unwrap(), 0x6);
        let mut stuck = SyntheticConfig::new(0x1af4, 0x1041);
        stuck.command_sticky_mask = !config::COMMAND_BUS_MASTER;
        let err = enable_memory_and_bus_master(&stuck, "0000:00:03.0").unwrap_err();
        assert!(matches!(err, Error::RegisterReadBack { wrote: 6, read: 2, .. }), "{err}");
    }
}
