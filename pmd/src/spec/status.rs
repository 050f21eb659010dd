//! Device status field bits ("Device Status Field", 2.1) and the initialization order of
//! "Device Initialization" (3.1.1).

/// The guest OS has noticed the device.
pub const ACKNOWLEDGE: u8 = 1;
/// The guest OS knows how to drive the device.
pub const DRIVER: u8 = 2;
/// The driver is set up and ready to drive the device.
pub const DRIVER_OK: u8 = 4;
/// The driver has acknowledged the features it understands; negotiation is complete.
pub const FEATURES_OK: u8 = 8;
/// The device has had an error from which it cannot recover; it needs a reset.
pub const DEVICE_NEEDS_RESET: u8 = 64;
/// Something went wrong in the guest, and it has given up on the device.
pub const FAILED: u8 = 128;
