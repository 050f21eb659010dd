//! The hash a device reported for a received packet (VIRTIO_NET_F_HASH_REPORT; "Hash reporting
//! for incoming packets", 5.1.6.4.3.4), as typed Rust: the value and what it was computed over.
//!
//! The net layer turns the header's `hash_value` and `hash_report` into an [`RxHash`], checking
//! the report type: only the nine types of the spec become a hash, anything else is counted and
//! dropped from the packet's metadata (never the packet).

/// Which fields of the packet a reported hash covers (`VIRTIO_NET_HASH_REPORT_*` 1 to 9; the
/// enabled hash type it stems from is `VIRTIO_NET_HASH_TYPE_* = 1 << (report - 1)`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashKind {
    /// IPv4 source and destination addresses (`VIRTIO_NET_HASH_REPORT_IPv4`).
    Ipv4 = 1,
    /// IPv4 addresses and TCP ports (`VIRTIO_NET_HASH_REPORT_TCPv4`).
    Tcpv4 = 2,
    /// IPv4 addresses and UDP ports (`VIRTIO_NET_HASH_REPORT_UDPv4`).
    Udpv4 = 3,
    /// IPv6 addresses (`VIRTIO_NET_HASH_REPORT_IPv6`).
    Ipv6 = 4,
    /// IPv6 addresses and TCP ports (`VIRTIO_NET_HASH_REPORT_TCPv6`).
    Tcpv6 = 5,
    /// IPv6 addresses and UDP ports (`VIRTIO_NET_HASH_REPORT_UDPv6`).
    Udpv6 = 6,
    /// IPv6 addresses, from the extension headers where present (`VIRTIO_NET_HASH_REPORT_IPv6_EX`).
    Ipv6Ex = 7,
    /// As [`Ipv6Ex`](Self::Ipv6Ex), and TCP ports (`VIRTIO_NET_HASH_REPORT_TCPv6_EX`).
    Tcpv6Ex = 8,
    /// As [`Ipv6Ex`](Self::Ipv6Ex), and UDP ports (`VIRTIO_NET_HASH_REPORT_UDPv6_EX`).
    Udpv6Ex = 9,
}

impl HashKind {
    /// Every kind, in report-type order.
    pub const ALL: [HashKind; 9] = [
        HashKind::Ipv4,
        HashKind::Tcpv4,
        HashKind::Udpv4,
        HashKind::Ipv6,
        HashKind::Tcpv6,
        HashKind::Udpv6,
        HashKind::Ipv6Ex,
        HashKind::Tcpv6Ex,
        HashKind::Udpv6Ex,
    ];

    /// The kind of report type `report` (`None` for `VIRTIO_NET_HASH_REPORT_NONE` and for any
    /// value the spec does not define).
    #[inline(always)]
    pub fn from_report(report: u16) -> Option<HashKind> {
        Self::ALL.get(usize::from(report).checked_sub(1)?).copied()
    }

    /// The report type on the wire (1 to 9).
    #[inline(always)]
    pub fn report(self) -> u16 {
        self as u16
    }

    /// The `VIRTIO_NET_HASH_TYPE_*` bit this kind of hash is computed for.
    #[inline(always)]
    pub fn hash_type(self) -> u32 {
        1 << (self as u32 - 1)
    }
}

/// A hash the device computed for a received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RxHash {
    /// The hash value (`hash_value`): with RSS, the Toeplitz hash whose low bits index the
    /// indirection table.
    pub value: u32,
    /// What it was computed over (`hash_report`).
    pub kind: HashKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_types_round_trip_and_nothing_else_is_a_kind() {
        for (i, kind) in HashKind::ALL.iter().enumerate() {
            assert_eq!(HashKind::from_report(i as u16 + 1), Some(*kind));
            assert_eq!(kind.report(), i as u16 + 1);
            assert_eq!(kind.hash_type(), 1 << i);
        }
        assert_eq!(HashKind::from_report(0), None);
        for bogus in [10, 11, 0x100, u16::MAX] {
            assert_eq!(HashKind::from_report(bogus), None);
        }
    }
}
