//! PCI configuration space through the capability walk and the choice of virtio structures.
//! The invariants checked are in `virtio_pmd::testing::fuzz::pci_caps`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_pmd::testing::fuzz::pci_caps(data));
