//! A scripted vhost-user backend whose every answer comes from the input, through connect and Port::open.
//! The invariants checked are in `virtio_pmd::testing::fuzz::vhost_user`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_pmd::testing::fuzz::vhost_user(data));
