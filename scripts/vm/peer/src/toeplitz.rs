//! The Toeplitz hash of RSS ("Hash calculation for incoming packets" in the virtio spec,
//! after Microsoft's "RSS hashing types" and "Verifying the RSS Hash Calculation"), written
//! here from the definition so that tests can predict, independently of the driver and the
//! device, which receive queue each packet lands on.
//!
//! For every bit of the input, most significant bit of the first byte first, the 32-bit window
//! of the key starting at that bit position is XORed into the result when the bit is set.

use std::net::Ipv4Addr;

/// The Toeplitz hash of `input` under `key`. The key must hold at least `input.len() + 4`
/// bytes (a 40-byte key covers 36 bytes of input, an IPv6 4-tuple); missing key bits count as 0.
pub fn hash(key: &[u8], input: &[u8]) -> u32 {
    let key_bit = |i: usize| key.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
    // The window: key bits 0..32, shifted left by one for every input bit.
    let mut window = (0..32).fold(0u32, |w, i| (w << 1) | u32::from(key_bit(i)));
    let mut result = 0u32;
    for (i, byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= window;
            }
            window = (window << 1) | u32::from(key_bit(32 + 8 * i + bit));
        }
    }
    result
}

/// The hash input of an IPv4 packet with its UDP or TCP ports (`VIRTIO_NET_RSS_HASH_TYPE_UDPv4`
/// and `_TCPv4`): source address, destination address, source port, destination port, each in
/// network byte order.
pub fn ipv4_ports_input(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> [u8; 12] {
    let mut input = [0u8; 12];
    input[..4].copy_from_slice(&src.octets());
    input[4..8].copy_from_slice(&dst.octets());
    input[8..10].copy_from_slice(&sport.to_be_bytes());
    input[10..].copy_from_slice(&dport.to_be_bytes());
    input
}

/// The receive queue (pair) RSS picks for `hash` from the indirection `table` (a power-of-two
/// length): entry `hash & (len - 1)`.
pub fn queue_of(hash: u32, table: &[u16]) -> u16 {
    table[hash as usize & (table.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_pmd::net::DEFAULT_KEY;

    /// (source, source port, destination, destination port, hash of the addresses only, hash
    /// with the ports).
    type Vector = ([u8; 4], u16, [u8; 4], u16, u32, u32);

    /// Microsoft's "Verifying the RSS Hash Calculation" IPv4 vectors with the default key.
    const VECTORS: [Vector; 5] = [
        ([66, 9, 149, 187], 2794, [161, 142, 100, 80], 1766, 0x323e8fc2, 0x51ccc178),
        ([199, 92, 111, 2], 14230, [65, 69, 140, 83], 4739, 0xd718262a, 0xc626b0ea),
        ([24, 19, 198, 95], 12898, [12, 22, 207, 184], 38024, 0xd2d0a5de, 0x5c2b394a),
        ([38, 27, 205, 30], 48228, [209, 142, 163, 6], 2217, 0x82989176, 0xafc7327f),
        ([153, 39, 163, 191], 44251, [202, 188, 127, 2], 1303, 0x5d1809c5, 0x10e828a2),
    ];

    #[test]
    fn microsoft_ipv4_vectors() {
        for (src, sport, dst, dport, addresses, with_ports) in VECTORS {
            let input = ipv4_ports_input(src.into(), dst.into(), sport, dport);
            assert_eq!(hash(&DEFAULT_KEY, &input[..8]), addresses, "{src:?} -> {dst:?}");
            assert_eq!(hash(&DEFAULT_KEY, &input), with_ports, "{src:?}:{sport} -> {dst:?}:{dport}");
        }
    }

    /// Microsoft's IPv6 vector: 3ffe:2501:200:1fff::7 port 2794 -> 3ffe:2501:200:3::1 port 1766.
    #[test]
    fn microsoft_ipv6_vector() {
        let src: std::net::Ipv6Addr = "3ffe:2501:200:1fff::7".parse().unwrap();
        let dst: std::net::Ipv6Addr = "3ffe:2501:200:3::1".parse().unwrap();
        let mut input = Vec::new();
        input.extend_from_slice(&src.octets());
        input.extend_from_slice(&dst.octets());
        assert_eq!(hash(&DEFAULT_KEY, &input), 0x2cc18cd5);
        input.extend_from_slice(&2794u16.to_be_bytes());
        input.extend_from_slice(&1766u16.to_be_bytes());
        assert_eq!(hash(&DEFAULT_KEY, &input), 0x40207d3d);
    }

    #[test]
    fn the_table_is_indexed_by_the_low_bits() {
        let table = [0, 1, 2, 3];
        assert_eq!(queue_of(0x51ccc178, &table), 0);
        assert_eq!(queue_of(0xc626b0ea, &table), 2);
        assert_eq!(queue_of(0xafc7327f, &table), 3);
    }
}
