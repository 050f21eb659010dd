//! A split ring against a device that writes used.idx and used entries (ids, lengths), honestly or not.
//! The invariants checked are in `virtio_pmd::testing::fuzz::split_used`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_pmd::testing::fuzz::split_used(data));
