//! Test frames of the VM peer: layout, builder and byte-exact checker.
//!
//! Every frame is a complete Ethernet frame without FCS (one per UDP datagram, as QEMU's
//! `-netdev dgram` carries them), `MIN_LEN..=MAX_LEN` bytes long:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 6 | destination MAC |
//! | 6  | 6 | source MAC |
//! | 12 | 2 | ethertype [`ETHERTYPE`] (0x88b5, IEEE "local experimental") |
//! | 14 | 4 | magic [`MAGIC`] |
//! | 18 | 1 | kind: [`Kind::Data`] or [`Kind::Probe`] |
//! | 19 | 1 | direction: 0 = sent into port 0 (comes out of port 1), 1 = the reverse |
//! | 20 | 2 | frame length in bytes |
//! | 22 | 8 | sequence number, per direction and kind, from 0 |
//! | 30 | 8 | send time, ns since the sender's epoch (a monotonic clock) |
//! | 38 | 4 | FNV-1a of bytes 14..38 (covers the timestamp, which cannot be predicted) |
//! | 42 | .. | fill: a xorshift stream seeded from (kind, direction, sequence number) |
//!
//! All multi-byte fields are big-endian (network order). The length of a data frame is a
//! function of its sequence number ([`SizePlan`]), so the checker knows every byte of a frame from
//! its direction, sequence number and timestamp: it rebuilds the frame and compares it whole.
//!
//! Flow frames (`flows` > 0, for RSS: the device hashes their IPv4 addresses and UDP ports) put
//! an IPv4 header (20 bytes, ethertype 0x0800, DF, TTL 64, checksum) and a UDP header (8 bytes,
//! checksum 0) between the Ethernet header and the test header, which moves 28 bytes on. The
//! flow of frame (kind, direction, sequence number) is one of `flows`, picked by a hash of the
//! three ([`flow_of`]): each flow has its own source address and port, so RSS spreads them.

use std::fmt;
use std::str::FromStr;

use virtio_pmd::net::{MacAddr, MacError};

/// Ethertype of test frames: IEEE 802 "local experimental ethertype 1".
pub const ETHERTYPE: u16 = 0x88b5;
/// Magic at the start of the payload ("vPMD").
pub const MAGIC: [u8; 4] = *b"vPMD";
/// Shortest Ethernet frame without FCS.
pub const MIN_LEN: usize = 60;
/// Longest standard Ethernet frame without FCS (1500-byte MTU).
pub const MAX_LEN: usize = 1514;
/// The IPv4 and UDP headers of flow frames.
pub const FLOW_HEADERS: usize = 28;
/// Most flows (distinct source ports).
pub const MAX_FLOWS: u32 = 50_000;
/// Ethertype of flow frames: IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;

// Offsets of the test header's fields from its start (14, or 42 in flow frames).
const OFF_MAGIC: usize = 0;
const OFF_KIND: usize = 4;
const OFF_DIR: usize = 5;
const OFF_LEN: usize = 6;
const OFF_SEQ: usize = 8;
const OFF_TS: usize = 16;
const OFF_CHECK: usize = 24;
const TEST_HEADER: usize = 28;

/// Bytes of an 802.1Q tag (TPID 0x8100, then the TCI with the VLAN id).
const VLAN_TAG: usize = 4;
/// The 802.1Q tag protocol identifier.
const TPID_8021Q: u16 = 0x8100;

/// Where the test header starts in a frame of `flows` flows (0: no IPv4/UDP headers), with or
/// without an 802.1Q tag.
pub fn test_header_at(flows: u32, tagged: bool) -> usize {
    let l2 = if tagged { 14 + VLAN_TAG } else { 14 };
    if flows == 0 {
        l2
    } else {
        l2 + FLOW_HEADERS
    }
}

/// The shortest frame that holds every header, for `flows`, with room for a VLAN tag.
pub fn min_len(flows: u32) -> usize {
    (test_header_at(flows, true) + TEST_HEADER).max(MIN_LEN)
}

/// The VLAN id of an 802.1Q-tagged frame.
fn vlan_of(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 16 && frame[12..14] == TPID_8021Q.to_be_bytes())
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// The IPv4 addresses and UDP ports of a flow frame: what RSS hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Source address: `198.18.<direction>.<1 + flow % 250>`.
    pub src: std::net::Ipv4Addr,
    /// Destination address: `198.19.<direction>.1`.
    pub dst: std::net::Ipv4Addr,
    /// Source port: 10000 + flow.
    pub sport: u16,
    /// Destination port: 9 (discard).
    pub dport: u16,
}

/// The flow of frame (kind, direction, sequence number) among `flows` (> 0).
pub fn flow_of(kind: Kind, dir: u8, seq: u64, flows: u32) -> Flow {
    let flow = (splitmix64(seq ^ (u64::from(dir) << 56) ^ ((kind as u64) << 48) ^ 0xf10e) % u64::from(flows)) as u32;
    Flow {
        src: std::net::Ipv4Addr::new(198, 18, dir, 1 + (flow % 250) as u8),
        dst: std::net::Ipv4Addr::new(198, 19, dir, 1),
        sport: 10_000 + flow as u16,
        dport: 9,
    }
}

/// The sequence number a frame carries in its header (meaningful only if the header is intact).
pub fn seq_field(frame: &[u8], flows: u32) -> Option<u64> {
    let at = test_header_at(flows, vlan_of(frame).is_some()) + OFF_SEQ;
    frame.get(at..at + 8).map(be_u64)
}

/// A MAC address on the command line, with vm-peer's explanations of a bad one.
pub fn parse_mac(s: &str) -> Result<MacAddr, String> {
    MacAddr::parse_strict(s).map_err(|e| match e {
        MacError::Count => format!("'{s}' is not a MAC address (expected six hex bytes, e.g. 02:00:00:00:00:01)"),
        MacError::Byte(part) => format!("'{s}' is not a MAC address: '{part}' is not a hex byte"),
    })
}

/// What the checker expects in one MAC field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacExpect {
    /// Accept any address (the forwarder under test does not rewrite it predictably).
    Any,
    /// Exactly this address.
    Exact(MacAddr),
    /// The hash the forwarder's device reported for the frame, written over the source MAC
    /// (l2fwd `--hash-to-src-mac`): the Toeplitz hash of the flow's IPv4 addresses and UDP ports
    /// under this key (zero-padded), then `VIRTIO_NET_HASH_REPORT_UDPv4`, both big-endian.
    /// Flow frames only.
    ReportedHash([u8; 40]),
}

/// `VIRTIO_NET_HASH_REPORT_UDPv4`: the report type of a hash over IPv4 addresses and UDP ports.
pub const HASH_REPORT_UDPV4: u16 = 3;

/// The source MAC l2fwd `--hash-to-src-mac` writes for `flow` when the device hashed it under `key`.
pub fn reported_hash_mac(key: &[u8], flow: &Flow) -> MacAddr {
    let input = crate::toeplitz::ipv4_ports_input(flow.src, flow.dst, flow.sport, flow.dport);
    let hash = crate::toeplitz::hash(key, &input).to_be_bytes();
    let report = HASH_REPORT_UDPV4.to_be_bytes();
    MacAddr([hash[0], hash[1], hash[2], hash[3], report[0], report[1]])
}

impl FromStr for MacExpect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("any") {
            Ok(MacExpect::Any)
        } else {
            parse_mac(s).map(MacExpect::Exact)
        }
    }
}

impl fmt::Display for MacExpect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacExpect::Any => f.write_str("any"),
            MacExpect::Exact(mac) => mac.fmt(f),
            MacExpect::ReportedHash(_) => f.write_str("the reported hash"),
        }
    }
}

/// What a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A counted test frame.
    Data = 1,
    /// A readiness probe: sent until one comes back, never counted.
    Probe = 2,
}

/// Frame lengths by sequence number: mostly pseudo-random in `min..=max`, with the two extremes
/// every 8 frames so that both are always covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizePlan {
    /// Shortest frame.
    pub min: usize,
    /// Longest frame.
    pub max: usize,
}

impl SizePlan {
    /// A plan for `min..=max`; both must be within `MIN_LEN..=MAX_LEN`, `min <= max`.
    pub fn new(min: usize, max: usize) -> Result<SizePlan, String> {
        if !(MIN_LEN..=MAX_LEN).contains(&min) || !(MIN_LEN..=MAX_LEN).contains(&max) || min > max {
            return Err(format!(
                "frame sizes {min}..{max} are invalid: both must be in {MIN_LEN}..={MAX_LEN} and min <= max"
            ));
        }
        Ok(SizePlan { min, max })
    }

    /// The length of data frame `seq`.
    pub fn len_of(&self, seq: u64) -> usize {
        match seq % 8 {
            0 => self.min,
            1 => self.max,
            _ => {
                let span = (self.max - self.min + 1) as u64;
                self.min + (splitmix64(seq ^ 0x5eed_5eed) % span) as usize
            }
        }
    }
}

/// The identity of a frame: everything needed to rebuild it except its MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameId {
    /// Data or probe.
    pub kind: Kind,
    /// 0: into port 0, out of port 1; 1: the reverse.
    pub dir: u8,
    /// Sequence number within (kind, dir).
    pub seq: u64,
    /// Send time, ns since the sender's epoch.
    pub ts_ns: u64,
    /// Whole frame length.
    pub len: usize,
    /// Flows of flow frames (0: no IPv4/UDP headers).
    pub flows: u32,
    /// The 802.1Q VLAN id the frame is tagged with, if any.
    pub vlan: Option<u16>,
}

/// Writes frame `id` with the given MACs into `buf` (cleared first).
pub fn build(buf: &mut Vec<u8>, dst: MacAddr, src: MacAddr, id: &FrameId) {
    let at = test_header_at(id.flows, id.vlan.is_some());
    debug_assert!((at + TEST_HEADER..=u16::MAX as usize).contains(&id.len));
    buf.clear();
    buf.extend_from_slice(&dst.0);
    buf.extend_from_slice(&src.0);
    if let Some(vid) = id.vlan {
        buf.extend_from_slice(&TPID_8021Q.to_be_bytes());
        buf.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    let l2 = buf.len() + 2;
    if id.flows == 0 {
        buf.extend_from_slice(&ETHERTYPE.to_be_bytes());
    } else {
        let flow = flow_of(id.kind, id.dir, id.seq, id.flows);
        buf.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_len = (id.len - l2) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[6] = 0x40; // DF: never a fragment, so the ports are always hashed.
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&flow.src.octets());
        ip[16..20].copy_from_slice(&flow.dst.octets());
        let sum = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        buf.extend_from_slice(&ip);
        buf.extend_from_slice(&flow.sport.to_be_bytes());
        buf.extend_from_slice(&flow.dport.to_be_bytes());
        buf.extend_from_slice(&(ip_len - 20).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
    }
    buf.extend_from_slice(&MAGIC);
    buf.push(id.kind as u8);
    buf.push(id.dir);
    buf.extend_from_slice(&(id.len as u16).to_be_bytes());
    buf.extend_from_slice(&id.seq.to_be_bytes());
    buf.extend_from_slice(&id.ts_ns.to_be_bytes());
    let check = fnv1a(&buf[at + OFF_MAGIC..at + OFF_CHECK]);
    buf.extend_from_slice(&check.to_be_bytes());
    buf.resize(id.len, 0);
    fill(&mut buf[at + TEST_HEADER..], id.kind, id.dir, id.seq);
}

/// Why a received frame is not the frame that was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Shorter than a header, or longer than `MAX_LEN`.
    BadLength(usize),
    /// Not one of ours: wrong ethertype or magic.
    Foreign {
        /// The frame's ethertype.
        ethertype: u16,
        /// The frame's destination MAC.
        dst: MacAddr,
    },
    /// Unknown kind byte.
    BadKind(u8),
    /// The header check word does not match (header bytes 14..42 corrupted).
    HeaderCheck,
    /// A direction that does not come out of this port.
    Misrouted {
        /// Direction in the frame.
        dir: u8,
    },
    /// The length field differs from the datagram length.
    LengthField {
        /// The length field.
        field: usize,
        /// Bytes received.
        actual: usize,
    },
    /// A data frame whose sequence number was never sent.
    SeqOutOfRange(u64),
    /// The length is not the one planned for this sequence number.
    SizePlan {
        /// Planned length.
        expected: usize,
        /// Bytes received.
        actual: usize,
    },
    /// The destination MAC is not the expected one.
    DstMac {
        /// What arrived.
        got: MacAddr,
        /// What the forwarder should have written.
        want: MacAddr,
    },
    /// The source MAC is not the expected one.
    SrcMac {
        /// What arrived.
        got: MacAddr,
        /// What the forwarder should have written.
        want: MacAddr,
    },
    /// A payload byte differs.
    Payload {
        /// Offset in the frame.
        offset: usize,
        /// The byte received.
        got: u8,
        /// The byte sent.
        want: u8,
    },
    /// A second copy of a data frame that already arrived intact.
    Duplicate(u64),
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::BadLength(n) => write!(f, "{n} bytes is not a valid frame length"),
            Defect::Foreign { ethertype, dst } => {
                write!(f, "not a test frame (ethertype {ethertype:#06x}, destination {dst})")
            }
            Defect::BadKind(k) => write!(f, "unknown kind byte {k:#04x}"),
            Defect::HeaderCheck => f.write_str("header check word mismatch (header corrupted)"),
            Defect::Misrouted { dir } => {
                write!(f, "direction {dir} frame came out of the wrong port")
            }
            Defect::LengthField { field, actual } => {
                write!(f, "length field says {field} bytes, datagram has {actual}")
            }
            Defect::SeqOutOfRange(s) => write!(f, "sequence number {s} was never sent"),
            Defect::SizePlan { expected, actual } => {
                write!(f, "frame is {actual} bytes, this sequence number was sent with {expected}")
            }
            Defect::DstMac { got, want } => write!(f, "destination MAC {got}, expected {want}"),
            Defect::SrcMac { got, want } => write!(f, "source MAC {got}, expected {want}"),
            Defect::Payload { offset, got, want } => {
                write!(f, "byte {offset} is {got:#04x}, expected {want:#04x}")
            }
            Defect::Duplicate(s) => write!(f, "sequence number {s} arrived twice"),
        }
    }
}

/// What a receiving port expects of the frames that come out of it.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// The only direction that may come out of this port.
    pub dir: u8,
    /// Expected destination MAC (after the forwarder's rewrite).
    pub dst: MacExpect,
    /// Expected source MAC (after the forwarder's rewrite).
    pub src: MacExpect,
    /// Data frames sent in this direction (valid sequence numbers are below it).
    pub frames: u64,
    /// Lengths of data frames.
    pub sizes: SizePlan,
    /// Flows of flow frames (0: frames without IPv4/UDP headers).
    pub flows: u32,
}

/// Checks every byte of `frame` against what was sent; returns its identity when intact.
///
/// `scratch` is reused to rebuild the expected frame. Duplicates are not detected here (the
/// caller keeps the set of sequence numbers seen).
pub fn check(frame: &[u8], expect: &Expect, scratch: &mut Vec<u8>) -> Result<FrameId, Defect> {
    let vlan = vlan_of(frame);
    let at = test_header_at(expect.flows, vlan.is_some());
    if frame.len() < at + TEST_HEADER || frame.len() > MAX_LEN {
        return Err(Defect::BadLength(frame.len()));
    }
    let ethertype = if expect.flows == 0 { ETHERTYPE } else { ETHERTYPE_IPV4 };
    let et_at = if vlan.is_some() { 12 + VLAN_TAG } else { 12 };
    let header = &frame[at..at + TEST_HEADER];
    if frame[et_at..et_at + 2] != ethertype.to_be_bytes() || header[OFF_MAGIC..OFF_KIND] != MAGIC {
        return Err(Defect::Foreign {
            ethertype: u16::from_be_bytes([frame[et_at], frame[et_at + 1]]),
            dst: MacAddr(frame[0..6].try_into().unwrap_or([0; 6])),
        });
    }
    let check_word = u32::from_be_bytes(header[OFF_CHECK..TEST_HEADER].try_into().unwrap_or([0; 4]));
    if fnv1a(&header[OFF_MAGIC..OFF_CHECK]) != check_word {
        return Err(Defect::HeaderCheck);
    }
    let kind = match header[OFF_KIND] {
        1 => Kind::Data,
        2 => Kind::Probe,
        other => return Err(Defect::BadKind(other)),
    };
    let dir = header[OFF_DIR];
    if dir != expect.dir {
        return Err(Defect::Misrouted { dir });
    }
    let field = u16::from_be_bytes([header[OFF_LEN], header[OFF_LEN + 1]]) as usize;
    if field != frame.len() {
        return Err(Defect::LengthField { field, actual: frame.len() });
    }
    let seq = be_u64(&header[OFF_SEQ..OFF_TS]);
    let ts_ns = be_u64(&header[OFF_TS..OFF_CHECK]);
    if kind == Kind::Data {
        if seq >= expect.frames {
            return Err(Defect::SeqOutOfRange(seq));
        }
        let planned = expect.sizes.len_of(seq);
        if planned != frame.len() {
            return Err(Defect::SizePlan { expected: planned, actual: frame.len() });
        }
    }
    let got_dst = MacAddr(frame[0..6].try_into().unwrap_or([0; 6]));
    let got_src = MacAddr(frame[6..12].try_into().unwrap_or([0; 6]));
    if let MacExpect::Exact(want) = expect.dst {
        if got_dst != want {
            return Err(Defect::DstMac { got: got_dst, want });
        }
    }
    let want_src = match expect.src {
        MacExpect::Any => None,
        MacExpect::Exact(want) => Some(want),
        MacExpect::ReportedHash(key) if expect.flows > 0 => {
            Some(reported_hash_mac(&key, &flow_of(kind, dir, seq, expect.flows)))
        }
        MacExpect::ReportedHash(_) => return Err(Defect::SrcMac { got: got_src, want: MacAddr([0; 6]) }),
    };
    if let Some(want) = want_src.filter(|want| got_src != *want) {
        return Err(Defect::SrcMac { got: got_src, want });
    }
    let id = FrameId { kind, dir, seq, ts_ns, len: frame.len(), flows: expect.flows, vlan };
    build(scratch, got_dst, got_src, &id);
    if let Some(offset) = frame.iter().zip(scratch.iter()).position(|(a, b)| a != b) {
        return Err(Defect::Payload { offset, got: frame[offset], want: scratch[offset] });
    }
    Ok(id)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

/// SplitMix64: one well-mixed 64-bit value from any seed.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The deterministic fill of frame (kind, dir, seq): a xorshift64* stream.
fn fill(out: &mut [u8], kind: Kind, dir: u8, seq: u64) {
    let mut state = splitmix64(seq ^ (u64::from(dir) << 56) ^ ((kind as u64) << 48)) | 1;
    for chunk in out.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// 32-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
    const SRC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    fn expect() -> Expect {
        Expect {
            dir: 0,
            dst: MacExpect::Exact(DST),
            src: MacExpect::Exact(SRC),
            frames: 1000,
            sizes: SizePlan::new(MIN_LEN, MAX_LEN).unwrap(),
            flows: 0,
        }
    }

    fn frame(seq: u64) -> Vec<u8> {
        let len = expect().sizes.len_of(seq);
        let mut buf = Vec::new();
        build(
            &mut buf,
            DST,
            SRC,
            &FrameId { kind: Kind::Data, dir: 0, seq, ts_ns: 123_456_789, len, flows: 0, vlan: None },
        );
        buf
    }

    #[test]
    fn tagged_frames_carry_their_vlan_and_every_flip_is_caught() {
        let mut scratch = Vec::new();
        for flows in [0, 16] {
            let e = Expect { flows, sizes: SizePlan::new(min_len(flows), MAX_LEN).unwrap(), ..expect() };
            let mut f = Vec::new();
            let id =
                FrameId { kind: Kind::Data, dir: 0, seq: 2, ts_ns: 9, len: e.sizes.len_of(2), flows, vlan: Some(100) };
            build(&mut f, DST, SRC, &id);
            assert_eq!(&f[12..16], &[0x81, 0x00, 0, 100]);
            assert_eq!(check(&f, &e, &mut scratch), Ok(id));
            assert_eq!(seq_field(&f, flows), Some(2));
            for offset in 0..f.len() {
                let mut bad = f.clone();
                bad[offset] ^= 0x10;
                // A flipped VLAN id leaves a valid frame of another VLAN: the caller checks the id.
                assert_ne!(check(&bad, &e, &mut scratch), Ok(id), "flip at {offset} (flows {flows})");
            }
        }
    }

    #[test]
    fn flow_frames_carry_ipv4_and_udp_and_every_flip_is_caught() {
        let e = Expect { flows: 64, sizes: SizePlan::new(min_len(64), MAX_LEN).unwrap(), ..expect() };
        let mut scratch = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for seq in 0..200 {
            let mut f = Vec::new();
            let id =
                FrameId { kind: Kind::Data, dir: 0, seq, ts_ns: 5, len: e.sizes.len_of(seq), flows: 64, vlan: None };
            build(&mut f, DST, SRC, &id);
            let flow = flow_of(Kind::Data, 0, seq, 64);
            seen.insert(flow.sport);
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            assert_eq!((f[14], f[23]), (0x45, 17), "IPv4, UDP");
            assert_eq!(&f[26..30], &flow.src.octets());
            assert_eq!(&f[34..36], &flow.sport.to_be_bytes());
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, f.len() - 14);
            // The IPv4 header checksums to 0xffff.
            let sum = f[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
            assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
            assert_eq!(check(&f, &e, &mut scratch).unwrap().seq, seq);
            assert_eq!(seq_field(&f, 64), Some(seq));
            if seq < 3 {
                for offset in 0..f.len() {
                    let mut bad = f.clone();
                    bad[offset] ^= 0x10;
                    assert!(check(&bad, &e, &mut scratch).is_err(), "flip at {offset} of seq {seq}");
                }
            }
        }
        assert!(seen.len() > 50, "{} flows used of 64", seen.len());
    }

    #[test]
    fn layout_is_as_documented() {
        let f = frame(0);
        assert_eq!(f.len(), MIN_LEN);
        assert_eq!(&f[0..6], &DST.0);
        assert_eq!(&f[6..12], &SRC.0);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[14..18], b"vPMD");
        assert_eq!(f[18], 1);
        assert_eq!(f[19], 0);
        assert_eq!(&f[20..22], &60u16.to_be_bytes());
        assert_eq!(&f[22..30], &0u64.to_be_bytes());
        assert_eq!(&f[30..38], &123_456_789u64.to_be_bytes());
        assert_eq!(frame(1).len(), MAX_LEN);
    }

    #[test]
    fn sizes_cover_the_range_and_stay_inside_it() {
        let plan = SizePlan::new(MIN_LEN, MAX_LEN).unwrap();
        let lens: Vec<usize> = (0..4000).map(|s| plan.len_of(s)).collect();
        assert!(lens.iter().all(|l| (MIN_LEN..=MAX_LEN).contains(l)));
        assert!(lens.contains(&MIN_LEN) && lens.contains(&MAX_LEN));
        let distinct: std::collections::HashSet<_> = lens.iter().collect();
        assert!(distinct.len() > 500, "only {} distinct sizes", distinct.len());
        let fixed = SizePlan::new(64, 64).unwrap();
        assert!((0..100).all(|s| fixed.len_of(s) == 64));
        assert!(SizePlan::new(59, 100).is_err());
        assert!(SizePlan::new(100, 1515).is_err());
        assert!(SizePlan::new(200, 100).is_err());
    }

    #[test]
    fn intact_frames_pass() {
        let mut scratch = Vec::new();
        for seq in 0..200 {
            let id = check(&frame(seq), &expect(), &mut scratch).unwrap();
            assert_eq!((id.seq, id.dir, id.kind, id.ts_ns), (seq, 0, Kind::Data, 123_456_789));
        }
    }

    #[test]
    fn a_reported_hash_over_the_source_mac_is_checked_against_the_flow() {
        let key = "6d5a".repeat(20).parse::<virtio_pmd::setup::RssKey>().unwrap().0;
        let mut padded = [0u8; 40];
        padded.copy_from_slice(&key);
        let sizes = SizePlan::new(min_len(64), MAX_LEN).unwrap();
        let e = Expect { src: MacExpect::ReportedHash(padded), flows: 64, sizes, ..expect() };
        let mut scratch = Vec::new();
        for seq in 0..50u64 {
            let id =
                FrameId { kind: Kind::Data, dir: 0, seq, ts_ns: 7, len: e.sizes.len_of(seq), flows: 64, vlan: None };
            let flow = flow_of(Kind::Data, 0, seq, 64);
            let mut buf = Vec::new();
            build(&mut buf, DST, reported_hash_mac(&key, &flow), &id);
            assert_eq!(check(&buf, &e, &mut scratch).map(|got| got.seq), Ok(seq), "seq {seq}");
            assert_eq!(&buf[10..12], &[0, 3], "report type UDPv4");
            // Another flow's hash, or the plain source MAC, is caught.
            let other = flow_of(Kind::Data, 0, seq + 1, 64);
            for wrong in [reported_hash_mac(&key, &other), SRC] {
                if wrong != reported_hash_mac(&key, &flow) {
                    build(&mut buf, DST, wrong, &id);
                    assert!(matches!(check(&buf, &e, &mut scratch), Err(Defect::SrcMac { .. })), "seq {seq}");
                }
            }
        }
    }

    #[test]
    fn fills_differ_between_frames() {
        let a = frame(2);
        let b = frame(10);
        let n = a.len().min(b.len());
        let fill = test_header_at(0, false) + TEST_HEADER;
        assert_ne!(&a[fill..n], &b[fill..n]);
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        let mut scratch = Vec::new();
        for seq in [0u64, 1, 5] {
            let good = frame(seq);
            for offset in 0..good.len() {
                let mut bad = good.clone();
                bad[offset] ^= 0x10;
                assert!(
                    check(&bad, &expect(), &mut scratch).is_err(),
                    "flip at byte {offset} of seq {seq} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn defects_are_named() {
        let mut scratch = Vec::new();
        let e = expect();
        let mut f = frame(3);
        f[0] = 0xaa;
        assert!(matches!(check(&f, &e, &mut scratch), Err(Defect::DstMac { .. })));
        let mut f = frame(3);
        f[11] = 0xaa;
        assert!(matches!(check(&f, &e, &mut scratch), Err(Defect::SrcMac { .. })));
        let mut f = frame(3);
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(matches!(check(&f, &e, &mut scratch), Err(Defect::Payload { offset, .. }) if offset == last));
        let mut f = frame(3);
        f.pop();
        assert!(matches!(check(&f, &e, &mut scratch), Err(Defect::LengthField { .. })));
        let mut f = frame(3);
        f[12] = 0x08;
        assert!(matches!(check(&f, &e, &mut scratch), Err(Defect::Foreign { ethertype: 0x08b5, .. })));
        let mut f = frame(3);
        f[31] ^= 1;
        assert_eq!(check(&f, &e, &mut scratch), Err(Defect::HeaderCheck));
        assert_eq!(check(&[0u8; 20], &e, &mut scratch), Err(Defect::BadLength(20)));
        let back = Expect { dir: 1, ..e };
        assert_eq!(check(&frame(3), &back, &mut scratch), Err(Defect::Misrouted { dir: 0 }));
        let few = Expect { frames: 3, ..e };
        assert_eq!(check(&frame(3), &few, &mut scratch), Err(Defect::SeqOutOfRange(3)));
        let small = Expect { sizes: SizePlan::new(60, 60).unwrap(), ..e };
        assert!(matches!(check(&frame(1), &small, &mut scratch), Err(Defect::SizePlan { .. })));
    }

    #[test]
    fn any_mac_accepts_rewrites() {
        let mut scratch = Vec::new();
        let e = Expect { dst: MacExpect::Any, src: MacExpect::Any, ..expect() };
        let mut f = frame(4);
        f[0..12].copy_from_slice(&[9; 12]);
        assert!(check(&f, &e, &mut scratch).is_ok());
    }

    #[test]
    fn probes_are_recognised() {
        let mut buf = Vec::new();
        build(
            &mut buf,
            DST,
            SRC,
            &FrameId { kind: Kind::Probe, dir: 0, seq: 7, ts_ns: 1, len: MIN_LEN, flows: 0, vlan: None },
        );
        let id = check(&buf, &expect(), &mut Vec::new()).unwrap();
        assert_eq!((id.kind, id.seq), (Kind::Probe, 7));
    }

    #[test]
    fn macs_parse_and_print() {
        let m = parse_mac("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!(parse_mac("52:54:00:00:00").unwrap_err().contains("expected six hex bytes"));
        assert!(parse_mac("52:54:00:00:00:100").unwrap_err().contains("'100' is not a hex byte"));
        assert!(parse_mac("52:54:00:00:00:zz").unwrap_err().contains("'zz' is not a hex byte"));
        assert!(parse_mac("52:54:00:00:00:+f").is_err());
        assert!("52:54:00:00:00:+f".parse::<MacExpect>().is_err());
        assert_eq!("ANY".parse::<MacExpect>().unwrap(), MacExpect::Any);
        assert_eq!(MacAddr::default_peer(1).to_string(), "02:00:00:00:00:01");
    }
}
