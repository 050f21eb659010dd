//! pktgen's frames: Ethernet/IPv4/UDP over N flows, each carrying its flow, a per-flow sequence
//! number and the TSC at which it was written.
//!
//! Flow `f` differs from the others in its IPv4 source (198.18.0.0 + f, in 198.18.0.0/15) and its
//! UDP source port (1024 + f mod 64512), so that a receiver's RSS hash spreads the flows; the
//! destination is 198.19.0.1:9. IPv4 checksum set, UDP checksum 0 (none).
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 6 | destination MAC |
//! | 6 | 6 | source MAC |
//! | 12 | 2 | 0x0800 (IPv4) |
//! | 14 | 20 | IPv4 header, total length = frame length - 14 |
//! | 34 | 8 | UDP header, length = frame length - 34 |
//! | 42 | 4 | magic `VPKG` |
//! | 46 | 2 | flow (little endian) |
//! | 48 | 8 | sequence number in the flow, from 0 (little endian) |
//! | 56 | 8 | TSC when the frame was written (little endian) |
//!
//! Bytes after 64 are left as the buffer had them (nothing reads them).

/// Bytes of headers and stamps: the shortest frame.
pub const MIN_LEN: usize = 64;
/// The longest frame (a 1500-byte MTU frame without the FCS).
pub const MAX_LEN: usize = 1514;
/// Most flows (the flow field is 16 bits).
pub const MAX_FLOWS: usize = 1 << 16;

const MAGIC: [u8; 4] = *b"VPKG";
const MAGIC_AT: usize = 42;
const FLOW_AT: usize = 46;
const SEQ_AT: usize = 48;
const TSC_AT: usize = 56;
const IP_SRC_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const IP_DST: [u8; 4] = [198, 19, 0, 1];
const UDP_DST: u16 = 9;

/// The 42 header bytes of every flow, with the IPv4 and UDP lengths and the IPv4 checksum left
/// to fill per frame length.
pub struct Flows {
    headers: Vec<[u8; MAGIC_AT]>,
    /// One's complement sum of each flow's IPv4 header without its length and checksum.
    partial_sums: Vec<u32>,
}

impl Flows {
    /// `count` flows (1 ..= [`MAX_FLOWS`]) from `src` to `dst`.
    pub fn new(count: usize, dst: [u8; 6], src: [u8; 6]) -> Flows {
        let (headers, partial_sums) = (0..count)
            .map(|f| {
                let mut h = [0u8; MAGIC_AT];
                h[0..6].copy_from_slice(&dst);
                h[6..12].copy_from_slice(&src);
                h[12..14].copy_from_slice(&[0x08, 0x00]);
                let ip = &mut h[14..34];
                ip[0] = 0x45; // version 4, 5 words
                ip[8] = 64; // TTL
                ip[9] = 17; // UDP
                ip[12..16].copy_from_slice(&(IP_SRC_BASE + f as u32).to_be_bytes());
                ip[16..20].copy_from_slice(&IP_DST);
                let sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
                let udp = &mut h[34..42];
                udp[0..2].copy_from_slice(&(1024 + (f % 64512) as u16).to_be_bytes());
                udp[2..4].copy_from_slice(&UDP_DST.to_be_bytes());
                (h, sum)
            })
            .unzip();
        Flows { headers, partial_sums }
    }

    /// Number of flows.
    pub fn count(&self) -> usize {
        self.headers.len()
    }

    /// Writes frame `seq` of `flow`, stamped `tsc`, into `frame` (its length: [`MIN_LEN`] ..=
    /// [`MAX_LEN`]).
    #[inline(always)]
    pub fn write(&self, frame: &mut [u8], flow: usize, seq: u64, tsc: u64) {
        let len = frame.len();
        frame[..MAGIC_AT].copy_from_slice(&self.headers[flow]);
        let ip_len = (len - 14) as u16;
        frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
        let mut sum = self.partial_sums[flow] + u32::from(ip_len);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        frame[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
        frame[MAGIC_AT..FLOW_AT].copy_from_slice(&MAGIC);
        frame[FLOW_AT..SEQ_AT].copy_from_slice(&(flow as u16).to_le_bytes());
        frame[SEQ_AT..TSC_AT].copy_from_slice(&seq.to_le_bytes());
        frame[TSC_AT..MIN_LEN].copy_from_slice(&tsc.to_le_bytes());
    }
}

/// What a received frame carries, when it is one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Its flow.
    pub flow: u16,
    /// Its sequence number in the flow.
    pub seq: u64,
    /// The TSC when it was written.
    pub tsc: u64,
}

/// Reads the stamp of a received frame; `None` for a frame that is not pktgen's.
#[inline(always)]
pub fn read(frame: &[u8]) -> Option<Stamp> {
    let b = frame.get(..MIN_LEN)?;
    if b[MAGIC_AT..FLOW_AT] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    Some(Stamp { flow: u16::from_le_bytes([b[FLOW_AT], b[FLOW_AT + 1]]), seq: word(SEQ_AT), tsc: word(TSC_AT) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn frames_parse_as_udp_with_valid_checksums_and_distinct_flows() {
        let flows = Flows::new(300, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        let mut seen = std::collections::HashSet::new();
        for (flow, len) in [(0, 64), (1, 65), (299, 1514), (256, 128)] {
            let mut frame = vec![0xaau8; len];
            flows.write(&mut frame, flow, 77 + flow as u64, 0x1234_5678_9abc);
            let packet = SlicedPacket::from_ethernet(&frame).expect("a valid Ethernet frame");
            let Some(NetSlice::Ipv4(ip)) = packet.net else { panic!("not IPv4") };
            let header = ip.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum(), "flow {flow}, {len} bytes");
            assert_eq!(usize::from(header.total_len), len - 14);
            let Some(TransportSlice::Udp(udp)) = packet.transport else { panic!("not UDP") };
            assert_eq!(usize::from(udp.length()), len - 34);
            assert!(seen.insert((header.source, udp.source_port())), "flow {flow} has its own 5-tuple");
            let stamp = read(&frame).expect("our frame");
            assert_eq!(stamp, Stamp { flow: flow as u16, seq: 77 + flow as u64, tsc: 0x1234_5678_9abc });
        }
    }

    #[test]
    fn foreign_and_short_frames_are_not_read() {
        assert_eq!(read(&[0u8; 64]), None);
        let flows = Flows::new(1, [0; 6], [0; 6]);
        let mut frame = vec![0u8; 64];
        flows.write(&mut frame, 0, 1, 2);
        assert_eq!(read(&frame[..63]), None);
        assert!(read(&frame).is_some());
    }
}
