//! Test frames: what `txonly` and `echo` generate, and what `rxonly --verify` and `echo` check.
//!
//! Every generated frame is an Ethernet/IPv4/UDP frame with exactly the headers DPDK testpmd's
//! `txonly` writes (198.18.0.1:9 -> 198.18.0.2:9, TTL 64, IPv4 checksum set, UDP checksum 0),
//! followed by our own 14 bytes and a payload derived from the sequence number:
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 6 | destination MAC |
//! | 6 | 6 | source MAC |
//! | 12 | 2 | 0x0800 (IPv4) |
//! | 14 | 20 | IPv4 header, total length = frame length - 14 |
//! | 34 | 8 | UDP header, length = frame length - 34 |
//! | 42 | 4 | magic `VPMD` |
//! | 46 | 2 | stream id (little endian) |
//! | 48 | 8 | sequence number (little endian), per stream, from 0 |
//! | 56 | .. | byte `i` = `base(seq) + i` (mod 256) |
//!
//! DPDK 22.11's `txonly` writes the same 42 header bytes and leaves the payload untouched: its
//! mbufs come from fresh (zeroed) huge pages, so the payload arrives as zeros as long as that
//! testpmd has not received frames into its mbufs since it started (in another mode).
//! [`Verifier::check_dpdk_txonly`] relies on that observed behaviour.

use std::fmt;

/// Bytes before the payload pattern.
pub const HEADER_LEN: usize = 56;
/// Shortest frame generated (the Ethernet minimum without the FCS).
pub const MIN_LEN: usize = 60;
/// Longest frame generated or accepted as `--max-pkt-len` (IPv4's total length is 16 bits).
pub const MAX_LEN: usize = 65_535;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IP_SRC: [u8; 4] = [198, 18, 0, 1];
const IP_DST: [u8; 4] = [198, 18, 0, 2];
const UDP_PORT: u16 = 9;
const MAGIC: [u8; 4] = *b"VPMD";
/// Offset of the L3 header (the EtherType) and of the magic.
const L3: usize = 12;
const MAGIC_AT: usize = 42;

/// What is wrong with a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Shorter than the headers.
    Short(usize),
    /// Not the length the receiver was told to expect.
    Length { got: usize, expected: usize },
    /// EtherType, IPv4 or UDP header differ from what the generator writes for this length.
    L3Header,
    /// Not one of our frames (no magic).
    Magic,
    /// A stream id this receiver does not know.
    Stream(u16),
    /// Payload byte `at` differs from the pattern of its sequence number.
    Payload { seq: u64, at: usize },
    /// The MAC addresses are not the expected ones.
    Mac { seq: u64 },
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Defect::Short(len) => write!(f, "runt frame of {len} bytes"),
            Defect::Length { got, expected } => write!(f, "frame of {got} bytes, expected {expected}"),
            Defect::L3Header => write!(f, "IPv4/UDP headers differ from the generator's"),
            Defect::Magic => write!(f, "no VPMD magic: not a frame of ours"),
            Defect::Stream(id) => write!(f, "unknown stream id {id}"),
            Defect::Payload { seq, at } => write!(f, "frame seq {seq}: payload byte {at} differs"),
            Defect::Mac { seq } => write!(f, "frame seq {seq}: unexpected MAC addresses"),
        }
    }
}

/// The 30 header bytes from the EtherType to the end of UDP for a frame of `len` bytes, as
/// testpmd's `txonly` builds them.
fn l3_header(len: usize) -> [u8; 30] {
    let mut h = [0u8; 30];
    h[0..2].copy_from_slice(&ETHERTYPE_IPV4);
    let ip = &mut h[2..22];
    ip[0] = 0x45; // version 4, 5 words
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&IP_SRC);
    ip[16..20].copy_from_slice(&IP_DST);
    let sum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut h[22..30];
    udp[0..2].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    h
}

/// The IPv4 header checksum of `ip` (its checksum field taken as zero).
fn ipv4_checksum(ip: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, pair) in ip.chunks(2).enumerate() {
        if i != 5 {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// First payload byte of frame `seq`.
#[inline(always)]
fn base(seq: u64) -> u8 {
    (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Fills `payload` with the pattern of `seq` (a loop the compiler vectorises).
#[inline(always)]
fn fill(seq: u64, payload: &mut [u8]) {
    let b = base(seq);
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte = b.wrapping_add(i as u8);
    }
}

/// Whether `payload` holds the pattern of `seq`; branch-free over the bytes, so it vectorises.
#[inline(always)]
fn pattern_ok(seq: u64, payload: &[u8]) -> bool {
    let b = base(seq);
    payload.iter().enumerate().fold(0u8, |acc, (i, &byte)| acc | (byte ^ b.wrapping_add(i as u8))) == 0
}

/// The fixed part of one stream's frames, written with one copy per frame.
#[derive(Clone, Debug)]
pub struct Template {
    head: [u8; HEADER_LEN],
    len: usize,
}

impl Template {
    /// Frames of `len` bytes (`MIN_LEN..=MAX_LEN`) from `src` to `dst` for stream `stream`.
    pub fn new(dst: [u8; 6], src: [u8; 6], len: usize, stream: u16) -> Template {
        assert!((MIN_LEN..=MAX_LEN).contains(&len), "frame length {len} out of range");
        let mut head = [0u8; HEADER_LEN];
        head[0..6].copy_from_slice(&dst);
        head[6..12].copy_from_slice(&src);
        head[L3..MAGIC_AT].copy_from_slice(&l3_header(len));
        head[MAGIC_AT..46].copy_from_slice(&MAGIC);
        head[46..48].copy_from_slice(&stream.to_le_bytes());
        Template { head, len }
    }

    /// The destination and source MAC the frames carry.
    pub fn l2(&self) -> [u8; 12] {
        let mut l2 = [0u8; 12];
        l2.copy_from_slice(&self.head[..12]);
        l2
    }

    /// Frame length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes frame `seq` into `frame`, which is `self.len()` bytes long.
    #[inline(always)]
    pub fn write(&self, frame: &mut [u8], seq: u64) {
        let (head, payload) = frame.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&self.head);
        head[48..56].copy_from_slice(&seq.to_le_bytes());
        fill(seq, payload);
    }
}

/// Checks received frames; remembers the headers of the last length seen, so that a run of
/// frames of one length costs one header comparison each.
#[derive(Clone, Debug)]
pub struct Verifier {
    expect_len: Option<usize>,
    last_len: usize,
    last_l3: [u8; 30],
}

impl Verifier {
    /// A verifier that also insists on frames of `expect_len` bytes when given.
    pub fn new(expect_len: Option<usize>) -> Verifier {
        Verifier { expect_len, last_len: MIN_LEN, last_l3: l3_header(MIN_LEN) }
    }

    #[inline(always)]
    fn check_l3(&mut self, frame: &[u8]) -> Result<(), Defect> {
        let len = frame.len();
        if len < HEADER_LEN.max(MIN_LEN) {
            return Err(Defect::Short(len));
        }
        if let Some(expected) = self.expect_len {
            if len != expected {
                return Err(Defect::Length { got: len, expected });
            }
        }
        if len != self.last_len {
            self.last_len = len;
            self.last_l3 = l3_header(len);
        }
        if frame[L3..MAGIC_AT] != self.last_l3 {
            return Err(Defect::L3Header);
        }
        Ok(())
    }

    /// Checks one of our frames; returns its (stream id, sequence number).
    #[inline]
    pub fn check_ours(&mut self, frame: &[u8]) -> Result<(u16, u64), Defect> {
        self.check_l3(frame)?;
        if frame[MAGIC_AT..46] != MAGIC {
            return Err(Defect::Magic);
        }
        let stream = u16::from_le_bytes([frame[46], frame[47]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&frame[48..56]);
        let seq = u64::from_le_bytes(seq);
        let payload = &frame[HEADER_LEN..];
        if !pattern_ok(seq, payload) {
            let b = base(seq);
            let at = payload.iter().enumerate().position(|(i, &x)| x != b.wrapping_add(i as u8)).unwrap_or(0);
            return Err(Defect::Payload { seq, at: HEADER_LEN + at });
        }
        Ok((stream, seq))
    }

    /// Checks a frame of DPDK testpmd's `txonly`: its headers, and a zero payload.
    #[inline]
    pub fn check_dpdk_txonly(&mut self, frame: &[u8]) -> Result<(), Defect> {
        self.check_l3(frame)?;
        let payload = &frame[MAGIC_AT..];
        if payload.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            let at = payload.iter().position(|&b| b != 0).unwrap_or(0);
            return Err(Defect::Payload { seq: 0, at: MAGIC_AT + at });
        }
        Ok(())
    }
}

/// Where a sequence number falls relative to what its stream sent before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The next one expected.
    Next,
    /// Later than expected: this many frames in between are missing (so far).
    Gap(u64),
    /// Earlier than expected: reordered or duplicated.
    Old,
}

/// The next expected sequence number of every stream id, preallocated.
#[derive(Clone, Debug)]
pub struct Sequences {
    next: Vec<u64>,
}

impl Sequences {
    /// Room for stream ids `0..streams`.
    pub fn new(streams: usize) -> Sequences {
        Sequences { next: vec![0; streams] }
    }

    /// Records `seq` of `stream`; `None` for an unknown stream id.
    #[inline(always)]
    pub fn observe(&mut self, stream: u16, seq: u64) -> Option<Order> {
        let next = self.next.get_mut(stream as usize)?;
        let order = match seq.cmp(next) {
            std::cmp::Ordering::Equal => Order::Next,
            std::cmp::Ordering::Greater => Order::Gap(seq - *next),
            std::cmp::Ordering::Less => return Some(Order::Old),
        };
        *next = seq + 1;
        Some(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_frames_pass_and_damage_is_found() {
        let mut verifier = Verifier::new(None);
        for len in [MIN_LEN, 64, 128, 1514] {
            let template = Template::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], len, 7);
            let mut frame = vec![0u8; len];
            for seq in [0u64, 1, 255, 1 << 40] {
                template.write(&mut frame, seq);
                assert_eq!(verifier.check_ours(&frame), Ok((7, seq)));
                for at in [20, 44, 50, len - 1] {
                    frame[at] ^= 0x10;
                    assert!(verifier.check_ours(&frame).is_err(), "len {len} seq {seq} byte {at}");
                    frame[at] ^= 0x10;
                }
            }
        }
        let mut strict = Verifier::new(Some(64));
        let mut frame = vec![0u8; 128];
        Template::new([0; 6], [0; 6], 128, 0).write(&mut frame, 3);
        assert_eq!(strict.check_ours(&frame), Err(Defect::Length { got: 128, expected: 64 }));
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // 198.18.0.1 -> 198.18.0.2, UDP, TTL 64, total length 50 (a 64-byte frame).
        let h = l3_header(64);
        assert_eq!(u16::from_be_bytes([h[12], h[13]]), 0xee93);
        assert_eq!(h[26..28], 30u16.to_be_bytes(), "UDP length");
    }

    #[test]
    fn sequences() {
        let mut s = Sequences::new(2);
        assert_eq!(s.observe(0, 0), Some(Order::Next));
        assert_eq!(s.observe(0, 3), Some(Order::Gap(2)));
        assert_eq!(s.observe(0, 2), Some(Order::Old));
        assert_eq!(s.observe(0, 4), Some(Order::Next));
        assert_eq!(s.observe(2, 0), None);
    }
}
