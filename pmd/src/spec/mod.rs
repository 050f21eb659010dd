//! Wire layouts and constants from the VIRTIO 1.2 specification.
//!
//! Everything here is plain data: `#[repr(C)]` structures whose size is asserted at compile time,
//! with explicitly little-endian fields ([`Le16`], [`Le32`], [`Le64`]), and the bit constants the
//! spec names. Nothing here touches memory shared with a device; the ring and transport modules
//! do that through volatile or atomic accesses.

pub mod features;
pub mod net;
pub mod packed;
pub mod pci;
pub mod split;
pub mod status;

macro_rules! le_type {
    ($name:ident, $inner:ty) => {
        #[doc = concat!("A little-endian `", stringify!($inner), "` as the spec lays it out in memory.")]
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name($inner);

        impl $name {
            /// Encodes a native value.
            #[inline(always)]
            pub const fn new(value: $inner) -> Self {
                Self(value.to_le())
            }
            /// Decodes to a native value.
            #[inline(always)]
            pub const fn get(self) -> $inner {
                <$inner>::from_le(self.0)
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{:#x}", self.get())
            }
        }
    };
}

le_type!(Le16, u16);
le_type!(Le32, u32);
le_type!(Le64, u64);
