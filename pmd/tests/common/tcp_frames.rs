//! TCP/IPv4 test frames for the checksum and TSO tests, and their checksums (RFC 1071's
//! one's complement sum). Shared by the library's and the apps' DPDK tests (`#[path]`).

// Each test crate that includes the module uses part of it.
#![allow(dead_code)]

/// Which TCP checksum field a frame carries, as a driver hands it to a device.
#[derive(Clone, Copy, Debug)]
pub enum TcpChecksum {
    /// The pseudo-header sum with the TCP length: a checksum left to the device (Linux's
    /// CHECKSUM_PARTIAL).
    Partial,
    /// The pseudo-header sum without the length, as Linux and DPDK leave it for segmentation.
    ForSegmentation,
}

/// One's complement sum of `bytes` (16-bit big-endian words) over `sum`, folded.
pub fn ones_sum(bytes: &[u8], mut sum: u32) -> u16 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A TCP/IPv4 frame of `len` bytes (10.0.0.1 -> 10.0.0.2, payload from `seq`), the IPv4
/// checksum complete and the TCP checksum field as `checksum` says.
pub fn tcp_frame(len: usize, seq: u64, checksum: TcpChecksum) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + seq) as u8).collect();
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14..34].copy_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    let ip_sum = !ones_sum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    f[46] = 0x50; // data offset: 5 words
    let pseudo = match checksum {
        TcpChecksum::Partial => {
            f[47] = 0x18; // PSH, ACK
            ones_sum(&f[26..34], 6 + u32::from(ip_len) - 20)
        }
        TcpChecksum::ForSegmentation => {
            f[47] = 0x10; // ACK
            ones_sum(&f[26..34], 6)
        }
    };
    f[50..52].copy_from_slice(&pseudo.to_be_bytes());
    f
}

/// Whether the TCP checksum of `frame` is right (a valid segment sums to 0xffff).
pub fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let tcp_len = frame.len() as u32 - 34;
    ones_sum(&frame[34..], u32::from(ones_sum(&frame[26..34], 6 + tcp_len))) == 0xffff
}

/// Completes the partial TCP checksum of `frame` as a device would.
pub fn complete_checksum(frame: &mut [u8]) {
    let sum = !ones_sum(&frame[34..], 0);
    frame[50..52].copy_from_slice(&sum.to_be_bytes());
}
