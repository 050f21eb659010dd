//! virtio-pmd: a userspace, poll-mode virtio-net driver.
//!
//! Layers, bottom up (see `docs/ARCHITECTURE.md`): [`spec`] (wire layouts), [`mem`] (DMA regions and IOVAs),
//! [`mbuf`] (zero-copy packet buffers and their pools), [`virtqueue`] (the driver side of packed and
//! split rings), [`transport`] (how a device is reached: VFIO PCI or vhost-user), and the
//! virtio-net port on top; above them, [`setup`] (device strings, and a set of ports opened and
//! closed in the one order that works) and [`lcore`] (pinned polling threads, the stop signal).
//! The `testing` feature adds a software device that plays the device side
//! of both ring formats.
//!
//! Unsafe code is confined to the modules that touch DMA memory, MMIO and ioctls; each of them
//! opts in with `#![allow(unsafe_code)]` and documents every block.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod lcore;
pub mod mbuf;
pub mod mem;
pub mod net;
pub mod setup;
pub mod spec;
pub mod transport;
pub mod virtqueue;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, ErrorKind, Result};

/// The README's code, compiled and checked by `cargo test --doc`.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
