//! Feature bits: the reserved ones of "Reserved Feature Bits" (6) and a small bit-set type.
//! Device-specific bits live with their device (`spec::net`).

/// `VIRTIO_F_INDIRECT_DESC` (28): indirect descriptor tables.
pub const INDIRECT_DESC: u32 = 28;
/// `VIRTIO_F_EVENT_IDX` (29): `used_event` / `avail_event` notification suppression.
pub const EVENT_IDX: u32 = 29;
/// `VIRTIO_F_VERSION_1` (32): a modern, non-legacy device. Required by this driver.
pub const VERSION_1: u32 = 32;
/// `VIRTIO_F_ACCESS_PLATFORM` (33): the device reaches memory through an IOMMU.
pub const ACCESS_PLATFORM: u32 = 33;
/// `VIRTIO_F_RING_PACKED` (34): the packed virtqueue layout.
pub const RING_PACKED: u32 = 34;
/// `VIRTIO_F_IN_ORDER` (35): buffers are used in the order they were made available.
pub const IN_ORDER: u32 = 35;
/// `VIRTIO_F_ORDER_PLATFORM` (36): memory accesses are ordered as the platform orders DMA.
pub const ORDER_PLATFORM: u32 = 36;
/// `VIRTIO_F_NOTIFICATION_DATA` (38): the driver passes extra data in notifications.
pub const NOTIFICATION_DATA: u32 = 38;
/// vhost-user's `VHOST_USER_F_PROTOCOL_FEATURES` (30), a transport-level bit.
pub const VHOST_USER_PROTOCOL_FEATURES: u32 = 30;

/// A set of feature bits (up to 64, which covers every bit this driver uses).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Features(pub u64);

impl Features {
    /// The empty set.
    pub const EMPTY: Features = Features(0);

    /// A set holding the given bits.
    pub const fn from_bits(bits: &[u32]) -> Features {
        let mut value = 0u64;
        let mut i = 0;
        while i < bits.len() {
            value |= 1 << bits[i];
            i += 1;
        }
        Features(value)
    }

    /// Whether `bit` is in the set.
    #[inline]
    pub const fn has(self, bit: u32) -> bool {
        bit < 64 && self.0 & (1 << bit) != 0
    }

    /// The set with `bit` added.
    #[inline]
    pub const fn with(self, bit: u32) -> Features {
        Features(self.0 | (1 << bit))
    }

    /// The set with `bit` removed.
    #[inline]
    pub const fn without(self, bit: u32) -> Features {
        Features(self.0 & !(1 << bit))
    }

    /// Bits in both sets.
    #[inline]
    pub const fn intersect(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    /// Bits in `self` that are not in `other`.
    #[inline]
    pub const fn minus(self, other: Features) -> Features {
        Features(self.0 & !other.0)
    }

    /// The 32-bit word `index` (0: bits 0..31, 1: bits 32..63), as the PCI common configuration
    /// exposes it through `device_feature_select`.
    #[inline]
    pub const fn word(self, index: u32) -> u32 {
        (self.0 >> (32 * index)) as u32
    }
}

impl core::fmt::Debug for Features {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Features({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_words() {
        let f = Features::from_bits(&[VERSION_1, EVENT_IDX]);
        assert!(f.has(VERSION_1) && f.has(EVENT_IDX) && !f.has(RING_PACKED));
        assert_eq!(f.word(0), 1 << EVENT_IDX);
        assert_eq!(f.word(1), 1);
        assert_eq!(f.without(EVENT_IDX).with(RING_PACKED), Features::from_bits(&[VERSION_1, RING_PACKED]));
        assert!(!f.has(64));
    }
}
