//! PCI BARs holding arbitrary common and device configuration, through the PCI views and Port::open.
//! The invariants checked are in `virtio_pmd::testing::fuzz::pci_device`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_pmd::testing::fuzz::pci_device(data));
