//! virtio-net layouts and feature bits ("Network Device", 5.1).

use super::Le16;

/// `VIRTIO_NET_F_CSUM` (0).
pub const F_CSUM: u32 = 0;
/// `VIRTIO_NET_F_GUEST_CSUM` (1).
pub const F_GUEST_CSUM: u32 = 1;
/// `VIRTIO_NET_F_MTU` (3): `mtu` in the config is valid.
pub const F_MTU: u32 = 3;
/// `VIRTIO_NET_F_MAC` (5): `mac` in the config is valid.
pub const F_MAC: u32 = 5;
/// `VIRTIO_NET_F_MRG_RXBUF` (15).
pub const F_MRG_RXBUF: u32 = 15;
/// `VIRTIO_NET_F_STATUS` (16): `status` in the config is valid.
pub const F_STATUS: u32 = 16;
/// `VIRTIO_NET_F_CTRL_VQ` (17).
pub const F_CTRL_VQ: u32 = 17;
/// `VIRTIO_NET_F_MQ` (22).
pub const F_MQ: u32 = 22;

/// `VIRTIO_NET_S_LINK_UP` in the config `status`.
pub const S_LINK_UP: u16 = 1;
/// `VIRTIO_NET_S_ANNOUNCE` in the config `status`.
pub const S_ANNOUNCE: u16 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const HDR_GSO_NONE: u8 = 0;

/// `struct virtio_net_hdr` as used by a VERSION_1 device: 12 bytes, `num_buffers` always
/// present ("Device Operation", 5.1.6). Only the fields up to `num_buffers` are used; the hash
/// report fields need a negotiated feature this driver does not ask for.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct NetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Header length (GSO).
    pub hdr_len: Le16,
    /// Segment size (GSO).
    pub gso_size: Le16,
    /// Checksum start (CSUM).
    pub csum_start: Le16,
    /// Checksum offset (CSUM).
    pub csum_offset: Le16,
    /// Number of merged receive buffers (1 without MRG_RXBUF).
    pub num_buffers: Le16,
}
/// Size of [`NetHeader`] on the wire.
pub const NET_HDR_LEN: usize = 12;
const _: () = assert!(core::mem::size_of::<NetHeader>() == NET_HDR_LEN);

/// Byte offsets in `struct virtio_net_config` (5.1.4).
pub mod config {
    /// `mac[6]`.
    pub const MAC: usize = 0;
    /// `status` (le16).
    pub const STATUS: usize = 6;
    /// `max_virtqueue_pairs` (le16).
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8;
    /// `mtu` (le16).
    pub const MTU: usize = 10;
}
