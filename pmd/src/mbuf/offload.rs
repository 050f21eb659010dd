//! A packet's offload metadata, as typed Rust: what the device reported about a received
//! packet's checksum and segmentation, or what the application asks the device to do for a
//! packet it sends. One type for both directions, so that a forwarder passes a received
//! packet's metadata on unchanged (a 64 KB TCP segment crosses whole, its checksum still to
//! be completed by whoever sends it on the wire).
//!
//! Eight bytes in the first cache line of the CPU-private header; the net layer turns it into
//! and out of the virtio-net header ("Packet Transmission", 5.1.6.2; "Processing of Incoming
//! Packets", 5.1.6.4), checking every field a device wrote.

/// A packet's checksum state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checksum {
    /// Nothing known (receive) or nothing to do (transmit): the packet's checksums are as they are.
    #[default]
    None,
    /// The layer-4 checksum is partial: the checksum over the bytes from `start` to the end of
    /// the packet goes at `start + offset` (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). On receive, the
    /// packet is fine to deliver locally as is; on transmit, the device completes it.
    Partial {
        /// Where checksumming starts (from the first byte of the Ethernet frame).
        start: u16,
        /// Where the checksum goes, from `start` (16 for TCP, 6 for UDP).
        offset: u16,
    },
    /// The device validated the packet's checksums (`VIRTIO_NET_HDR_F_DATA_VALID`, receive only).
    Valid,
}

/// The kind of segmentation offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
    Tcpv4,
    /// TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
    Tcpv6,
}

/// A packet larger than the MTU that is (transmit) to be, or (receive) was, segmented: TSO or LRO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    /// Segment kind.
    pub kind: GsoKind,
    /// Payload bytes per segment (the MSS), never 0.
    pub size: u16,
    /// The TCP ECN bit (`VIRTIO_NET_HDR_GSO_ECN`): CWR set in the headers, copied to every segment.
    pub ecn: bool,
}

/// A packet's offload metadata: its checksum state and segmentation. A segmented packet has a
/// partial checksum (the device completes each segment's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// The checksum state.
    pub checksum: Checksum,
    /// Segmentation, when the packet is a TSO/LRO super-packet.
    pub gso: Option<Gso>,
}

impl Offload {
    /// No offload.
    pub const NONE: Offload = Offload { checksum: Checksum::None, gso: None };
}
