//! Checksum and segmentation offloads: which ones a port asks for ([`OffloadConfig`]), which it
//! negotiated ([`Offloads`]), and the mbuf's typed metadata ([`Offload`]) to and from the
//! virtio-net header.
//!
//! Transmit ("Packet Transmission", 5.1.6.2): a partial checksum becomes NEEDS_CSUM with
//! `csum_start`/`csum_offset` (needs VIRTIO_NET_F_CSUM), a segmentation `gso_type`/`gso_size`
//! (needs HOST_TSO4/HOST_TSO6, and a partial checksum), `hdr_len` the headers up to the end of
//! the checksum field (the bound Linux itself uses when none is given). A request the port did
//! not negotiate, or whose offsets lie beyond the packet, is refused: sending it would put a
//! wrong checksum on the wire.
//!
//! Receive ("Processing of Incoming Packets", 5.1.6.4): NEEDS_CSUM becomes a partial checksum,
//! DATA_VALID a valid one, `gso_type`/`gso_size` a segmentation. Every field is checked: flags
//! or segment kinds not negotiated, a `gso_size` of 0 with a segment kind, checksum offsets
//! beyond the frame: the header is refused, the frame dropped and counted.

use crate::mbuf::{Checksum, Gso, GsoKind, Offload};
use crate::spec::features::Features;
use crate::spec::net::{self as net_spec, NetHeader};
use crate::spec::Le16;

/// The offloads an application asks a port for; each is negotiated only when asked for and
/// offered ([`Port::offloads`](super::Port::offloads) says which were).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadConfig {
    /// The device completes partial checksums of sent packets (VIRTIO_NET_F_CSUM).
    pub tx_checksum: bool,
    /// The device segments sent TCP super-packets (HOST_TSO4/HOST_TSO6; with CSUM).
    pub tso: bool,
    /// The device reports received packets' checksum state (VIRTIO_NET_F_GUEST_CSUM).
    pub rx_checksum: bool,
    /// The device may hand over TCP super-packets (GUEST_TSO4/GUEST_TSO6; with GUEST_CSUM, and
    /// mergeable receive buffers unless every buffer holds 64 KiB).
    pub lro: bool,
}

/// The offloads a port negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// VIRTIO_NET_F_CSUM.
    pub tx_checksum: bool,
    /// VIRTIO_NET_F_HOST_TSO4.
    pub tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6.
    pub tso6: bool,
    /// VIRTIO_NET_F_GUEST_CSUM.
    pub rx_checksum: bool,
    /// VIRTIO_NET_F_GUEST_TSO4.
    pub lro4: bool,
    /// VIRTIO_NET_F_GUEST_TSO6.
    pub lro6: bool,
}

impl OffloadConfig {
    /// Every offload: transmit and receive checksums, TSO and LRO.
    pub const ALL: OffloadConfig = OffloadConfig { tx_checksum: true, tso: true, rx_checksum: true, lro: true };

    /// The feature bits to ask for, given what the device offers ("Feature bit requirements",
    /// 5.1.3.1: HOST_TSO needs CSUM, GUEST_TSO needs GUEST_CSUM).
    pub(crate) fn wanted(&self, offered: Features) -> Vec<u32> {
        let mut bits = Vec::new();
        let mut want = |bit: u32, needs: Option<u32>, yes: bool| {
            if yes && offered.has(bit) && needs.is_none_or(|n| bits.contains(&n)) {
                bits.push(bit);
            }
        };
        want(net_spec::F_CSUM, None, self.tx_checksum || self.tso);
        want(net_spec::F_HOST_TSO4, Some(net_spec::F_CSUM), self.tso);
        want(net_spec::F_HOST_TSO6, Some(net_spec::F_CSUM), self.tso);
        want(net_spec::F_GUEST_CSUM, None, self.rx_checksum || self.lro);
        want(net_spec::F_GUEST_TSO4, Some(net_spec::F_GUEST_CSUM), self.lro);
        want(net_spec::F_GUEST_TSO6, Some(net_spec::F_GUEST_CSUM), self.lro);
        bits
    }
}

impl Offloads {
    /// What `features` negotiated.
    pub(crate) fn from_features(features: Features) -> Offloads {
        Offloads {
            tx_checksum: features.has(net_spec::F_CSUM),
            tso4: features.has(net_spec::F_HOST_TSO4),
            tso6: features.has(net_spec::F_HOST_TSO6),
            rx_checksum: features.has(net_spec::F_GUEST_CSUM),
            lro4: features.has(net_spec::F_GUEST_TSO4),
            lro6: features.has(net_spec::F_GUEST_TSO6),
        }
    }

    /// Whether any receive offload is on (the receive path must read the header).
    pub fn any_rx(&self) -> bool {
        self.rx_checksum || self.lro4 || self.lro6
    }

    /// The offload metadata of a received frame of `frame_len` bytes whose header is `header`;
    /// `None` when a field is not what the negotiated features allow.
    #[inline]
    pub(crate) fn received(&self, header: &NetHeader, frame_len: u32) -> Option<Offload> {
        let checksum = if header.flags & net_spec::HDR_F_NEEDS_CSUM != 0 {
            let (start, offset) = (header.csum_start.get(), header.csum_offset.get());
            if !self.rx_checksum || u32::from(start) + u32::from(offset) + 2 > frame_len {
                return None;
            }
            Checksum::Partial { start, offset }
        } else if header.flags & net_spec::HDR_F_DATA_VALID != 0 {
            if !self.rx_checksum {
                return None;
            }
            Checksum::Valid
        } else {
            Checksum::None
        };
        let ecn = header.gso_type & net_spec::HDR_GSO_ECN != 0;
        let gso = match header.gso_type & !net_spec::HDR_GSO_ECN {
            net_spec::HDR_GSO_NONE if !ecn => None,
            net_spec::HDR_GSO_TCPV4 if self.lro4 => Some(GsoKind::Tcpv4),
            net_spec::HDR_GSO_TCPV6 if self.lro6 => Some(GsoKind::Tcpv6),
            _ => return None,
        };
        let gso = match gso {
            Some(kind) => {
                let size = header.gso_size.get();
                if size == 0 {
                    return None;
                }
                Some(Gso { kind, size, ecn })
            }
            None => None,
        };
        Some(Offload { checksum, gso })
    }

    /// The header that asks the device for `offload` on a packet of `pkt_len` bytes; `None`
    /// when the port did not negotiate what it asks, or its offsets lie beyond the packet.
    #[inline]
    pub(crate) fn transmit_header(&self, offload: Offload, pkt_len: usize) -> Option<NetHeader> {
        let mut header = NetHeader::default();
        let mut csum_end = 0u32;
        if let Checksum::Partial { start, offset } = offload.checksum {
            csum_end = u32::from(start) + u32::from(offset) + 2;
            if !self.tx_checksum || csum_end as usize > pkt_len {
                return None;
            }
            header.flags = net_spec::HDR_F_NEEDS_CSUM;
            header.csum_start = Le16::new(start);
            header.csum_offset = Le16::new(offset);
        }
        if let Some(gso) = offload.gso {
            let (negotiated, kind) = match gso.kind {
                GsoKind::Tcpv4 => (self.tso4, net_spec::HDR_GSO_TCPV4),
                GsoKind::Tcpv6 => (self.tso6, net_spec::HDR_GSO_TCPV6),
            };
            // HOST_ECN is never negotiated: a packet that needs it cannot be segmented here.
            if !negotiated || gso.size == 0 || gso.ecn || csum_end == 0 {
                return None;
            }
            header.gso_type = kind;
            header.gso_size = Le16::new(gso.size);
            header.hdr_len = Le16::new(csum_end as u16);
        }
        Some(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: Offloads =
        Offloads { tx_checksum: true, tso4: true, tso6: true, rx_checksum: true, lro4: true, lro6: true };

    fn header(flags: u8, gso_type: u8, gso_size: u16, start: u16, offset: u16) -> NetHeader {
        NetHeader {
            flags,
            gso_type,
            gso_size: Le16::new(gso_size),
            csum_start: Le16::new(start),
            csum_offset: Le16::new(offset),
            ..NetHeader::default()
        }
    }

    #[test]
    fn received_headers_become_typed_metadata() {
        let tcp = header(net_spec::HDR_F_NEEDS_CSUM, net_spec::HDR_GSO_TCPV4, 1448, 34, 16);
        let expected = Offload {
            checksum: Checksum::Partial { start: 34, offset: 16 },
            gso: Some(Gso { kind: GsoKind::Tcpv4, size: 1448, ecn: false }),
        };
        assert_eq!(ALL.received(&tcp, 65000), Some(expected));
        assert_eq!(
            ALL.received(&header(net_spec::HDR_F_DATA_VALID, 0, 0, 0, 0), 60).unwrap().checksum,
            Checksum::Valid
        );
        assert_eq!(ALL.received(&NetHeader::default(), 60), Some(Offload::NONE));
        // Refused: gso_size 0 with a kind, offsets beyond the frame, kinds or flags not negotiated.
        assert_eq!(ALL.received(&header(1, net_spec::HDR_GSO_TCPV6, 0, 54, 16), 9000), None);
        assert_eq!(ALL.received(&header(1, 0, 0, 50, 16), 67), None);
        assert_eq!(
            ALL.received(&header(1, 0, 0, 50, 16), 68).unwrap().checksum,
            Checksum::Partial { start: 50, offset: 16 }
        );
        assert_eq!(ALL.received(&header(1, 3, 1400, 34, 6), 9000), None, "UFO is never negotiated");
        assert_eq!(ALL.received(&header(0, net_spec::HDR_GSO_ECN, 0, 0, 0), 60), None);
        let csum_only = Offloads { rx_checksum: true, ..Offloads::default() };
        assert_eq!(csum_only.received(&tcp, 65000), None);
        assert_eq!(Offloads::default().received(&header(net_spec::HDR_F_DATA_VALID, 0, 0, 0, 0), 60), None);
    }

    #[test]
    fn transmit_requests_become_headers_or_are_refused() {
        let tso = Offload {
            checksum: Checksum::Partial { start: 34, offset: 16 },
            gso: Some(Gso { kind: GsoKind::Tcpv4, size: 1448, ecn: false }),
        };
        let h = ALL.transmit_header(tso, 65000).unwrap();
        assert_eq!((h.flags, h.gso_type, h.gso_size.get(), h.hdr_len.get()), (1, 1, 1448, 52));
        assert_eq!(Offloads { tso4: false, ..ALL }.transmit_header(tso, 65000), None);
        assert_eq!(
            ALL.transmit_header(Offload { checksum: Checksum::None, ..tso }, 65000),
            None,
            "TSO needs a partial checksum"
        );
        assert_eq!(ALL.transmit_header(tso, 51), None, "checksum field beyond the packet");
        assert_eq!(Offloads::default().transmit_header(Offload::NONE, 60), Some(NetHeader::default()));
        let valid = Offload { checksum: Checksum::Valid, gso: None };
        assert_eq!(Offloads::default().transmit_header(valid, 60), Some(NetHeader::default()), "nothing to do");
    }

    proptest! {
        /// Whatever the device writes, an accepted header's metadata is consistent with the
        /// frame: offsets inside it, a segment size, only negotiated kinds; and the metadata
        /// turned back into a header (a forwarder's transmit side) is accepted for the same
        /// length and says the same.
        #[test]
        fn any_header(flags in any::<u8>(), gso_type in any::<u8>(), gso_size in any::<u16>(),
                      start in any::<u16>(), offset in any::<u16>(), len in 0u32..70_000,
                      lro in any::<bool>(), csum in any::<bool>()) {
            let offloads = Offloads { rx_checksum: csum, lro4: lro, lro6: lro, ..ALL };
            let h = header(flags, gso_type, gso_size, start, offset);
            if let Some(offload) = offloads.received(&h, len) {
                if let Checksum::Partial { start, offset } = offload.checksum {
                    prop_assert!(u32::from(start) + u32::from(offset) + 2 <= len);
                }
                if let Some(gso) = offload.gso {
                    prop_assert!(gso.size > 0 && lro);
                }
                let sent = ALL.transmit_header(offload, len as usize);
                let forwardable = offload.gso.is_none_or(|g| !g.ecn && offload.checksum != Checksum::None
                    && offload.checksum != Checksum::Valid);
                prop_assert_eq!(sent.is_some(), forwardable);
                if let Some(sent) = sent {
                    let back = ALL.received(&sent, len).unwrap();
                    let expected_checksum = if offload.checksum == Checksum::Valid { Checksum::None } else { offload.checksum };
                    prop_assert_eq!(back, Offload { checksum: expected_checksum, gso: offload.gso });
                }
            }
        }
    }
}
