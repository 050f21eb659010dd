//! A packed ring against a device that writes used descriptors (flags, ids, lengths), honestly or not.
//! The invariants checked are in `virtio_pmd::testing::fuzz::packed_used`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_pmd::testing::fuzz::packed_used(data));
