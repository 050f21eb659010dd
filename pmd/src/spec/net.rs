//! virtio-net layouts and feature bits ("Network Device", 5.1).

use super::Le16;

/// `VIRTIO_NET_F_CSUM` (0).
pub const F_CSUM: u32 = 0;
/// `VIRTIO_NET_F_GUEST_CSUM` (1).
pub const F_GUEST_CSUM: u32 = 1;
/// `VIRTIO_NET_F_GUEST_TSO4` (7): the driver can receive TSOv4 super-packets.
pub const F_GUEST_TSO4: u32 = 7;
/// `VIRTIO_NET_F_GUEST_TSO6` (8): the driver can receive TSOv6 super-packets.
pub const F_GUEST_TSO6: u32 = 8;
/// `VIRTIO_NET_F_HOST_TSO4` (11): the device can segment TSOv4.
pub const F_HOST_TSO4: u32 = 11;
/// `VIRTIO_NET_F_HOST_TSO6` (12): the device can segment TSOv6.
pub const F_HOST_TSO6: u32 = 12;
/// `VIRTIO_NET_F_MTU` (3): `mtu` in the config is valid.
pub const F_MTU: u32 = 3;
/// `VIRTIO_NET_F_MAC` (5): `mac` in the config is valid.
pub const F_MAC: u32 = 5;
/// `VIRTIO_NET_F_MRG_RXBUF` (15).
pub const F_MRG_RXBUF: u32 = 15;
/// `VIRTIO_NET_F_STATUS` (16): `status` in the config is valid.
pub const F_STATUS: u32 = 16;
/// `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS` (2): control channel offloads reconfiguration.
pub const F_CTRL_GUEST_OFFLOADS: u32 = 2;
/// `VIRTIO_NET_F_CTRL_VQ` (17): the control virtqueue is available.
pub const F_CTRL_VQ: u32 = 17;
/// `VIRTIO_NET_F_CTRL_RX` (18): control channel RX mode (PROMISC, ALLMULTI).
pub const F_CTRL_RX: u32 = 18;
/// `VIRTIO_NET_F_CTRL_VLAN` (19): control channel VLAN filtering.
pub const F_CTRL_VLAN: u32 = 19;
/// `VIRTIO_NET_F_CTRL_RX_EXTRA` (20): control channel RX extra modes (ALLUNI, NOMULTI, NOUNI,
/// NOBCAST).
pub const F_CTRL_RX_EXTRA: u32 = 20;
/// `VIRTIO_NET_F_GUEST_ANNOUNCE` (21): the driver can send gratuitous packets.
pub const F_GUEST_ANNOUNCE: u32 = 21;
/// `VIRTIO_NET_F_MQ` (22): multiqueue with automatic receive steering.
pub const F_MQ: u32 = 22;
/// `VIRTIO_NET_F_CTRL_MAC_ADDR` (23): set the MAC address through the control channel.
pub const F_CTRL_MAC_ADDR: u32 = 23;

/// `VIRTIO_NET_F_HASH_REPORT` (57): the device can report a per-packet hash value and type.
pub const F_HASH_REPORT: u32 = 57;
/// `VIRTIO_NET_F_RSS` (60): receive-side scaling with a Toeplitz hash, a key and an
/// indirection table the driver sets (VIRTIO_NET_CTRL_MQ_RSS_CONFIG).
pub const F_RSS: u32 = 60;

/// The hash types of "Supported/enabled hash types" (`VIRTIO_NET_RSS_HASH_TYPE_*`): which
/// fields of a packet feed the hash, by protocol.
pub mod hash_type {
    /// `VIRTIO_NET_RSS_HASH_TYPE_IPv4`: source and destination IPv4 addresses.
    pub const IPV4: u32 = 1 << 0;
    /// `VIRTIO_NET_RSS_HASH_TYPE_TCPv4`: IPv4 addresses and TCP ports.
    pub const TCPV4: u32 = 1 << 1;
    /// `VIRTIO_NET_RSS_HASH_TYPE_UDPv4`: IPv4 addresses and UDP ports.
    pub const UDPV4: u32 = 1 << 2;
    /// `VIRTIO_NET_RSS_HASH_TYPE_IPv6`: source and destination IPv6 addresses.
    pub const IPV6: u32 = 1 << 3;
    /// `VIRTIO_NET_RSS_HASH_TYPE_TCPv6`: IPv6 addresses and TCP ports.
    pub const TCPV6: u32 = 1 << 4;
    /// `VIRTIO_NET_RSS_HASH_TYPE_UDPv6`: IPv6 addresses and UDP ports.
    pub const UDPV6: u32 = 1 << 5;
    /// `VIRTIO_NET_RSS_HASH_TYPE_IP_EX`: IPv6 with extension-header addresses.
    pub const IP_EX: u32 = 1 << 6;
    /// `VIRTIO_NET_RSS_HASH_TYPE_TCP_EX`.
    pub const TCP_EX: u32 = 1 << 7;
    /// `VIRTIO_NET_RSS_HASH_TYPE_UDP_EX`.
    pub const UDP_EX: u32 = 1 << 8;
}

/// `VIRTIO_NET_S_LINK_UP` in the config `status`.
pub const S_LINK_UP: u16 = 1;
/// `VIRTIO_NET_S_ANNOUNCE` in the config `status`.
pub const S_ANNOUNCE: u16 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const HDR_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const HDR_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const HDR_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: the TCP ECN bit, or'ed into `gso_type`.
pub const HDR_GSO_ECN: u8 = 0x80;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the device validated the checksums (receive).
pub const HDR_F_DATA_VALID: u8 = 2;

/// `struct virtio_net_hdr` as used by a VERSION_1 device: 12 bytes, `num_buffers` always
/// present ("Device Operation", 5.1.6). With VIRTIO_NET_F_HASH_REPORT the header grows by the
/// [`HashFields`] to [`NET_HDR_HASH_LEN`] bytes, on receive and transmit alike ("Packet
/// Transmission": the transmit header has the receive header's size).
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
impl NetHeader {
    /// The header's wire bytes.
    #[inline(always)]
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in
            [self.hdr_len, self.gso_size, self.csum_start, self.csum_offset, self.num_buffers].iter().enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.get().to_le_bytes());
        }
        b
    }

    /// The header laid out in `bytes` (as a device wrote it).
    #[inline(always)]
    pub fn from_bytes(bytes: [u8; NET_HDR_LEN]) -> NetHeader {
        let le16 = |i: usize| Le16::new(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
        NetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
            num_buffers: le16(10),
        }
    }
}

/// Size of [`NetHeader`] on the wire.
pub const NET_HDR_LEN: usize = 12;
const _: () = assert!(core::mem::size_of::<NetHeader>() == NET_HDR_LEN);

/// Size of the header with VIRTIO_NET_F_HASH_REPORT (`struct virtio_net_hdr_v1_hash`): the
/// [`NetHeader`], then the [`HashFields`].
pub const NET_HDR_HASH_LEN: usize = NET_HDR_LEN + HASH_FIELDS_LEN;

/// Bytes of the [`HashFields`]: le32 `hash_value`, le16 `hash_report`, le16 `padding_reserved`.
pub const HASH_FIELDS_LEN: usize = 8;

/// `VIRTIO_NET_HASH_REPORT_NONE`: the device computed no hash for the packet.
pub const HASH_REPORT_NONE: u16 = 0;

/// The fields VIRTIO_NET_F_HASH_REPORT adds after `num_buffers` ("Hash reporting for incoming
/// packets"); `padding_reserved` is not read.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct HashFields {
    /// `hash_value`.
    pub hash_value: u32,
    /// `hash_report`: `VIRTIO_NET_HASH_REPORT_*`, untrusted (any value may come).
    pub hash_report: u16,
}

impl HashFields {
    /// The fields laid out in `bytes` (as a device wrote them after the [`NetHeader`]).
    #[inline(always)]
    pub fn from_bytes(bytes: [u8; HASH_FIELDS_LEN]) -> HashFields {
        HashFields {
            hash_value: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            hash_report: u16::from_le_bytes([bytes[4], bytes[5]]),
        }
    }

    /// The fields' wire bytes (`padding_reserved` zero).
    pub fn to_bytes(&self) -> [u8; HASH_FIELDS_LEN] {
        let mut b = [0u8; HASH_FIELDS_LEN];
        b[..4].copy_from_slice(&self.hash_value.to_le_bytes());
        b[4..6].copy_from_slice(&self.hash_report.to_le_bytes());
        b
    }
}

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
    /// `rss_max_key_size` (u8; with VIRTIO_NET_F_RSS or VIRTIO_NET_F_HASH_REPORT).
    pub const RSS_MAX_KEY_SIZE: usize = 17;
    /// `rss_max_indirection_table_length` (le16; with VIRTIO_NET_F_RSS).
    pub const RSS_MAX_INDIRECTION_TABLE_LENGTH: usize = 18;
    /// `supported_hash_types` (le32; with VIRTIO_NET_F_RSS or VIRTIO_NET_F_HASH_REPORT).
    pub const SUPPORTED_HASH_TYPES: usize = 20;
}

/// The control virtqueue ("Control Virtqueue", 5.1.6.5): `struct virtio_net_ctrl` is `class`,
/// `command`, the command-specific data, then the `ack` byte the device writes.
pub mod ctrl {
    /// `VIRTIO_NET_OK`: the device applied the command.
    pub const OK: u8 = 0;
    /// `VIRTIO_NET_ERR`: the device refused the command.
    pub const ERR: u8 = 1;

    /// `VIRTIO_NET_CTRL_RX` ("Packet Receive Filtering"): data is one byte, 0 (off) or 1 (on).
    pub const RX: u8 = 0;
    /// `VIRTIO_NET_CTRL_RX_PROMISC`.
    pub const RX_PROMISC: u8 = 0;
    /// `VIRTIO_NET_CTRL_RX_ALLMULTI`.
    pub const RX_ALLMULTI: u8 = 1;
    /// `VIRTIO_NET_CTRL_RX_ALLUNI` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    pub const RX_ALLUNI: u8 = 2;
    /// `VIRTIO_NET_CTRL_RX_NOMULTI` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    pub const RX_NOMULTI: u8 = 3;
    /// `VIRTIO_NET_CTRL_RX_NOUNI` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    pub const RX_NOUNI: u8 = 4;
    /// `VIRTIO_NET_CTRL_RX_NOBCAST` (VIRTIO_NET_F_CTRL_RX_EXTRA).
    pub const RX_NOBCAST: u8 = 5;

    /// `VIRTIO_NET_CTRL_MAC` ("Setting MAC Address Filtering").
    pub const MAC: u8 = 1;
    /// `VIRTIO_NET_CTRL_MAC_TABLE_SET`: two `struct virtio_net_ctrl_mac` (le32 `entries`, then
    /// `entries` 6-byte addresses), unicast first, then multicast.
    pub const MAC_TABLE_SET: u8 = 0;
    /// `VIRTIO_NET_CTRL_MAC_ADDR_SET`: the 6-byte MAC address (VIRTIO_NET_F_CTRL_MAC_ADDR).
    pub const MAC_ADDR_SET: u8 = 1;

    /// `VIRTIO_NET_CTRL_VLAN` ("VLAN Filtering"): data is a le16 VLAN id.
    pub const VLAN: u8 = 2;
    /// `VIRTIO_NET_CTRL_VLAN_ADD`.
    pub const VLAN_ADD: u8 = 0;
    /// `VIRTIO_NET_CTRL_VLAN_DEL`.
    pub const VLAN_DEL: u8 = 1;

    /// `VIRTIO_NET_CTRL_ANNOUNCE` ("Gratuitous Packet Sending"): no data.
    pub const ANNOUNCE: u8 = 3;
    /// `VIRTIO_NET_CTRL_ANNOUNCE_ACK`.
    pub const ANNOUNCE_ACK: u8 = 0;

    /// `VIRTIO_NET_CTRL_MQ` ("Automatic receive steering in multiqueue mode"):
    /// `struct virtio_net_ctrl_mq` is a le16 `virtqueue_pairs`.
    pub const MQ: u8 = 4;
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// `VIRTIO_NET_CTRL_MQ_RSS_CONFIG` ("Setting RSS parameters"): `struct
    /// virtio_net_rss_config` (VIRTIO_NET_F_RSS).
    pub const MQ_RSS_CONFIG: u8 = 1;
    /// `VIRTIO_NET_CTRL_MQ_HASH_CONFIG` ("Hash calculation"): `struct virtio_net_hash_config`
    /// (VIRTIO_NET_F_HASH_REPORT without VIRTIO_NET_F_RSS).
    pub const MQ_HASH_CONFIG: u8 = 2;
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN`.
    pub const MQ_VQ_PAIRS_MIN: u16 = 1;
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX`.
    pub const MQ_VQ_PAIRS_MAX: u16 = 0x8000;

    /// `VIRTIO_NET_CTRL_GUEST_OFFLOADS` ("Setting Offloads State"): data is a le64 bit mask of guest offload
    /// feature bits (their feature-bit positions).
    pub const GUEST_OFFLOADS: u8 = 5;
    /// `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`.
    pub const GUEST_OFFLOADS_SET: u8 = 0;
}
