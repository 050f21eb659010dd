//! Receive-side scaling (VIRTIO_NET_F_RSS; "Receive-side scaling (RSS)", "Setting RSS
//! parameters" and "Hash calculation for incoming packets" in "Network Device", 5.1.6.5.7 and
//! 5.1.6.4.3): the device hashes each received packet with the Toeplitz function over the fields
//! the enabled hash types name, keyed by the driver's key, masks the hash to an index into the
//! driver's indirection table, and puts the packet on the receive queue found there.
//!
//! [`RssConfig`] is what the driver chooses; [`RssCapabilities`] what the device reports in its
//! configuration space. [`RssConfig::encode`] checks one against the other (every rule of the
//! spec's driver requirements, each a clear error) and lays out `struct virtio_net_rss_config`.

use crate::spec::net::hash_type;

/// The default key: the 40-byte key of Microsoft's RSS specification ("Verifying the RSS Hash
/// Calculation"), also DPDK's and most NICs' default, so that hashes can be checked against its
/// published test vectors.
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// The hash types asked for by default: addresses and TCP/UDP ports of IPv4 and IPv6 (no IPv6
/// extension headers), as Linux's virtio-net driver does.
pub const DEFAULT_HASH_TYPES: u32 =
    hash_type::IPV4 | hash_type::TCPV4 | hash_type::UDPV4 | hash_type::IPV6 | hash_type::TCPV6 | hash_type::UDPV6;

/// Entries of the default indirection table: the least every RSS device supports ("Device
/// configuration layout": `rss_max_indirection_table_length` is at least 128).
pub const DEFAULT_TABLE_LEN: usize = 128;

/// What the device supports, from its configuration space (valid with VIRTIO_NET_F_RSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssCapabilities {
    /// `rss_max_key_size`: the longest key, in bytes.
    pub max_key_size: u8,
    /// `rss_max_indirection_table_length`: the most indirection table entries.
    pub max_table_len: u16,
    /// `supported_hash_types`: `VIRTIO_NET_RSS_HASH_TYPE_*` bits.
    pub hash_types: u32,
}

/// An RSS configuration: which packet fields are hashed, the key, and where each masked hash
/// goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssConfig {
    /// Enabled `VIRTIO_NET_RSS_HASH_TYPE_*` bits (a subset of the supported ones).
    pub hash_types: u32,
    /// The Toeplitz key.
    pub key: Vec<u8>,
    /// The indirection table: entry `hash & (len - 1)` is the queue pair whose receive queue
    /// gets the packet. Its length is a power of two.
    pub table: Vec<u16>,
    /// The queue pair of packets the device computed no hash for (not IP, or no enabled type).
    pub unclassified: u16,
}

impl RssConfig {
    /// The default configuration over `pairs` queue pairs: [`DEFAULT_KEY`], the default hash types
    /// the device supports, a [`DEFAULT_TABLE_LEN`]-entry table with entry `i` = `i % pairs`,
    /// unclassified packets on pair 0.
    pub fn spread(pairs: u16, caps: &RssCapabilities) -> RssConfig {
        let pairs = pairs.max(1);
        RssConfig {
            hash_types: DEFAULT_HASH_TYPES & caps.hash_types,
            key: DEFAULT_KEY.to_vec(),
            table: (0..DEFAULT_TABLE_LEN).map(|i| (i % usize::from(pairs)) as u16).collect(),
            unclassified: 0,
        }
    }

    /// Checks the configuration against the device's `caps` and the `pairs` queue pairs in use,
    /// and lays out `struct virtio_net_rss_config` ("Setting RSS parameters"): le32 `hash_types`,
    /// le16 `indirection_table_mask`, le16 `unclassified_queue`, le16 `indirection_table[]`,
    /// le16 `max_tx_vq`, u8 `hash_key_length`, the key. Queue ids are receive virtqueue indices
    /// shifted right by one (`vq_index_1_16`): the queue pair number. Errors say what to change.
    pub fn encode(&self, pairs: u16, caps: &RssCapabilities) -> Result<Vec<u8>, String> {
        let len = self.table.len();
        if len == 0 || !len.is_power_of_two() {
            return Err(format!("the indirection table has {len} entries: it needs a power of two (e.g. 128)"));
        }
        if len > usize::from(caps.max_table_len) {
            return Err(format!(
                "the indirection table has {len} entries, the device takes at most {} \
                 (rss_max_indirection_table_length)",
                caps.max_table_len
            ));
        }
        if let Some((i, q)) = self.table.iter().enumerate().find(|(_, q)| **q >= pairs) {
            return Err(format!(
                "indirection table entry {i} names queue pair {q}, but only pairs 0..{pairs} are enabled"
            ));
        }
        if self.unclassified >= pairs {
            return Err(format!("the unclassified queue pair {} is not enabled (pairs 0..{pairs})", self.unclassified));
        }
        if self.key.is_empty() || self.key.len() > usize::from(caps.max_key_size) {
            return Err(format!(
                "the key has {} bytes: give 1..={} (rss_max_key_size; the default key has 40)",
                self.key.len(),
                caps.max_key_size
            ));
        }
        let unsupported = self.hash_types & !caps.hash_types;
        if unsupported != 0 {
            return Err(format!(
                "hash types {unsupported:#x} are not supported by the device (supported_hash_types {:#x})",
                caps.hash_types
            ));
        }
        let mut data = Vec::with_capacity(4 + 2 + 2 + 2 * len + 2 + 1 + self.key.len());
        data.extend_from_slice(&self.hash_types.to_le_bytes());
        data.extend_from_slice(&((len - 1) as u16).to_le_bytes());
        data.extend_from_slice(&self.unclassified.to_le_bytes());
        self.table.iter().for_each(|q| data.extend_from_slice(&q.to_le_bytes()));
        data.extend_from_slice(&pairs.to_le_bytes());
        data.push(self.key.len() as u8);
        data.extend_from_slice(&self.key);
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: RssCapabilities = RssCapabilities { max_key_size: 40, max_table_len: 128, hash_types: 0x1ff };

    #[test]
    fn the_default_spreads_over_every_pair() {
        let rss = RssConfig::spread(4, &CAPS);
        assert_eq!(rss.table.len(), 128);
        assert_eq!(&rss.table[..6], &[0, 1, 2, 3, 0, 1]);
        assert_eq!(rss.hash_types, DEFAULT_HASH_TYPES);
        assert_eq!(RssConfig::spread(4, &RssCapabilities { hash_types: 0x7, ..CAPS }).hash_types, 0x7);
    }

    #[test]
    fn the_layout_follows_the_spec() {
        let rss = RssConfig { hash_types: 0x4, key: vec![0xaa; 3], table: vec![1, 0], unclassified: 1 };
        let data = rss.encode(2, &CAPS).unwrap();
        assert_eq!(data, [4, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 2, 0, 3, 0xaa, 0xaa, 0xaa]);
    }

    #[test]
    fn every_driver_rule_is_checked() {
        let ok = RssConfig::spread(2, &CAPS);
        let bad = |f: fn(&mut RssConfig)| {
            let mut rss = ok.clone();
            f(&mut rss);
            rss.encode(2, &CAPS).unwrap_err()
        };
        assert!(bad(|r| r.table.truncate(3)).contains("power of two"));
        assert!(bad(|r| r.table = vec![0; 256]).contains("at most 128"));
        assert!(bad(|r| r.table[5] = 2).contains("entry 5 names queue pair 2"));
        assert!(bad(|r| r.unclassified = 7).contains("unclassified"));
        assert!(bad(|r| r.key = vec![0; 41]).contains("1..=40"));
        assert!(bad(|r| r.key.clear()).contains("key"));
        let err = ok.encode(2, &RssCapabilities { hash_types: 0x1, ..CAPS }).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
    }
}
