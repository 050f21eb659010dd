//! Both ring formats against a device with arbitrary event suppression state (packed device event structure; split used flags and avail_event): every publish's answer is checked.
//! The invariants checked are in `virtio_pmd::testing::fuzz::event_suppression`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_pmd::testing::fuzz::event_suppression(data));
