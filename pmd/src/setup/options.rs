//! Per-port settings that a [`PortSet`](super::PortSet) applies through each port's control
//! queue once the port runs ("Control Virtqueue", virtio 5.1.6.5): promiscuous and
//! all-multicast mode ("Packet Receive Filtering"), the MAC filtering table ("Setting MAC Address
//! Filtering"), the VLAN filter ("VLAN Filtering"), and the RSS indirection table and key
//! ("Setting RSS parameters").
//!
//! They are written as options of a device string (`pci:0000:00:03.0,promisc=off,allmulti=on,
//! mac_table=[02:00:00:00:aa:01,01:00:5e:00:00:01],vlans=[100],rss_table=[3,2,1,0],
//! rss_key=6d5a..`), a list in brackets as DPDK's devargs write them (or one value without).
//! [`PortOptions::set`] takes one key and its value, [`Display`](fmt::Display) prints them back.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::net::{CtrlCommand, CtrlUnavailable, MacAddr, Port, DEFAULT_TABLE_LEN};

/// The keys [`PortOptions::set`] takes.
pub const PORT_OPTION_KEYS: &str =
    "promisc=on|off, allmulti=on|off, mac_table=[MAC,..], vlans=[VID,..], rss_table=[Q,..], rss_key=HEX, \
     rx_offloads=on|off";

/// A port's receive filters and RSS settings, each left as the device starts when not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortOptions {
    /// `promisc=on|off`: promiscuous mode (VIRTIO_NET_CTRL_RX_PROMISC).
    pub promiscuous: Option<bool>,
    /// `allmulti=on`: all-multicast mode (VIRTIO_NET_CTRL_RX_ALLMULTI).
    pub all_multicast: bool,
    /// `mac_table=[..]`: the MAC filtering table, unicast and multicast addresses told apart by
    /// their I/G bit (VIRTIO_NET_CTRL_MAC_TABLE_SET). Empty: left as it is.
    pub mac_table: Vec<MacAddr>,
    /// `vlans=[..]`: VLAN ids (0..=4095) added to the VLAN filter (VIRTIO_NET_CTRL_VLAN_ADD).
    pub vlans: Vec<u16>,
    /// `rss_table=[..]`: the RSS indirection table's entries, queue pairs of the port, repeated
    /// to the table's length. Empty: the default (0, 1, .., pairs - 1, repeated).
    pub rss_table: Vec<u16>,
    /// `rss_key=HEX`: the RSS key. `None`: the default ([`DEFAULT_KEY`](crate::net::DEFAULT_KEY)).
    pub rss_key: Option<RssKey>,
    /// `rx_offloads=on|off`: the negotiated receive offloads (checksum, LRO) on or off
    /// (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET). `None`: as negotiated.
    pub rx_offloads: Option<bool>,
}

/// Why a port option's value does not parse: what it must be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionError {
    /// A key [`PortOptions::set`] does not take.
    #[error("unknown option '{0}' (known: {PORT_OPTION_KEYS})")]
    UnknownKey(String),
    /// A known key with a value it cannot take.
    #[error("{key}={value} is not {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
}

impl PortOptions {
    /// Whether nothing is asked for: the port stays as the device starts.
    pub fn is_empty(&self) -> bool {
        *self == PortOptions::default()
    }

    /// Whether a receive filter (MAC table, all-multicast, VLANs) is asked for.
    pub fn has_filters(&self) -> bool {
        !self.mac_table.is_empty() || self.all_multicast || !self.vlans.is_empty()
    }

    /// Sets option `key` (one of [`PORT_OPTION_KEYS`]) from `value`. Lists may be written
    /// `[a,b]` or, on their own, `a,b`; a list adds to what an earlier one gave.
    pub fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), OptionError> {
        let bad = |key, expected| OptionError::BadValue { key, value: value.to_owned(), expected };
        match key {
            "promisc" => self.promiscuous = Some(on_off(value).ok_or_else(|| bad("promisc", "on or off"))?),
            "allmulti" => self.all_multicast = on_off(value).ok_or_else(|| bad("allmulti", "on or off"))?,
            "mac_table" => self.mac_table.extend(
                list::<MacAddr>(value)
                    .ok_or_else(|| bad("mac_table", "a list of MAC addresses ([02:00:00:00:aa:01,..])"))?,
            ),
            "vlans" => {
                let ids = list::<u16>(value).filter(|ids| ids.iter().all(|id| *id <= 4095));
                self.vlans.extend(ids.ok_or_else(|| bad("vlans", "a list of VLAN ids 0..=4095 ([100,200])"))?);
            }
            "rss_table" => self
                .rss_table
                .extend(list::<u16>(value).ok_or_else(|| bad("rss_table", "a list of queue pairs ([3,2,1,0])"))?),
            "rss_key" => self.rss_key = Some(value.parse().map_err(|_| bad("rss_key", RssKey::EXPECTED))?),
            "rx_offloads" => self.rx_offloads = Some(on_off(value).ok_or_else(|| bad("rx_offloads", "on or off"))?),
            _ => return Err(OptionError::UnknownKey(key.to_owned())),
        }
        Ok(())
    }

    /// Applies the options to `port` through its control queue, in a fixed order: promiscuous
    /// mode, the MAC table, all-multicast mode, the VLANs, RSS, then the receive offloads. Stops
    /// at the first setting
    /// the device refuses (or lacks the feature or control queue for).
    pub fn apply(&self, port: &mut Port) -> std::result::Result<(), OptionRefused> {
        let refused = |setting| move |source| OptionRefused { setting, source };
        if let Some(on) = self.promiscuous {
            port.set_promiscuous(on).map_err(refused("promiscuous mode"))?;
        }
        if !self.mac_table.is_empty() {
            let (multicast, unicast): (Vec<[u8; 6]>, Vec<[u8; 6]>) =
                self.mac_table.iter().map(|m| m.0).partition(|m| m[0] & 1 != 0);
            port.set_mac_table(&unicast, &multicast).map_err(refused("MAC table"))?;
        }
        if self.all_multicast {
            port.set_all_multicast(true).map_err(refused("all-multicast mode"))?;
        }
        for vid in &self.vlans {
            port.vlan_filter(*vid, true).map_err(refused("VLAN filter"))?;
        }
        if !self.rss_table.is_empty() || self.rss_key.is_some() {
            self.apply_rss(port).map_err(refused("RSS table and key"))?;
        }
        if let Some(on) = self.rx_offloads {
            port.set_rx_offloads(on, on).map_err(refused("receive offloads"))?;
        }
        Ok(())
    }

    /// The port's RSS configuration with the table and key of these options (the table
    /// repeated to the length in use, at least [`DEFAULT_TABLE_LEN`]).
    fn apply_rss(&self, port: &mut Port) -> Result<()> {
        let mut rss = port.rss_config().cloned().ok_or_else(|| Error::NoControlQueue {
            device: port.name().to_owned(),
            command: CtrlCommand::MqRssConfig,
            why: CtrlUnavailable::FeatureNotOffered("VIRTIO_NET_F_RSS (QEMU: rss=on)"),
        })?;
        if !self.rss_table.is_empty() {
            let len = rss.table.len().max(DEFAULT_TABLE_LEN);
            rss.table = self.rss_table.iter().copied().cycle().take(len).collect();
        }
        if let Some(key) = &self.rss_key {
            rss.key = key.0.clone();
        }
        port.set_rss(&rss)
    }
}

/// A setting of [`PortOptions`] that a port did not take.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {source}")]
pub struct OptionRefused {
    /// The setting: "promiscuous mode", "MAC table", "all-multicast mode", "VLAN filter", "RSS
    /// table and key" or "receive offloads".
    pub setting: &'static str,
    /// The device's answer, or what it lacks.
    #[source]
    pub source: Error,
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" | "true" | "1" => Some(true),
        "off" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// `[a,b,..]` or `a,b,..`, each element parsed; `None` when one does not parse or none is given.
fn list<T: FromStr>(value: &str) -> Option<Vec<T>> {
    let inner = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
    let items: Vec<T> = inner.split(',').map(|v| v.trim().parse().ok()).collect::<Option<_>>()?;
    (!items.is_empty()).then_some(items)
}

/// Splits a device string's options at the commas outside brackets (`a=1,b=[2,3]` is `a=1`
/// and `b=[2,3]`).
pub(crate) fn split_options(options: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0u32;
    options
        .split(move |c| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ',' && depth == 0
        })
        .filter(|o| !o.is_empty())
}

impl fmt::Display for PortOptions {
    /// The options as a device string writes them, each preceded by a comma
    /// (`,promisc=off,vlans=[100]`); nothing when none is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn join<T: fmt::Display>(items: &[T]) -> String {
            items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
        }
        if let Some(on) = self.promiscuous {
            write!(f, ",promisc={}", if on { "on" } else { "off" })?;
        }
        if self.all_multicast {
            write!(f, ",allmulti=on")?;
        }
        if !self.mac_table.is_empty() {
            write!(f, ",mac_table=[{}]", join(&self.mac_table))?;
        }
        if !self.vlans.is_empty() {
            write!(f, ",vlans=[{}]", join(&self.vlans))?;
        }
        if !self.rss_table.is_empty() {
            write!(f, ",rss_table=[{}]", join(&self.rss_table))?;
        }
        if let Some(key) = &self.rss_key {
            write!(f, ",rss_key={key}")?;
        }
        if let Some(on) = self.rx_offloads {
            write!(f, ",rx_offloads={}", if on { "on" } else { "off" })?;
        }
        Ok(())
    }
}

/// An RSS key, written as hex digits (`6d5a56da255b0ec2...`; 40 bytes for the default hash
/// types of IPv4 and IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssKey(pub Vec<u8>);

/// A string that is not an [`RssKey`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an RSS key: {expected}", expected = RssKey::EXPECTED)]
pub struct BadRssKey(pub String);

impl RssKey {
    const EXPECTED: &'static str = "an even number of hex digits, e.g. 6d5a56da255b0ec2..";
}

impl FromStr for RssKey {
    type Err = BadRssKey;

    fn from_str(hex: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || BadRssKey(hex.to_owned());
        if hex.is_empty() || hex.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes = (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()));
        Ok(RssKey(bytes.collect::<Option<_>>().ok_or_else(bad)?))
    }
}

impl fmt::Display for RssKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_and_prints_back() {
        let mut o = PortOptions::default();
        assert!(o.is_empty() && o.to_string().is_empty());
        for (key, value) in [
            ("promisc", "off"),
            ("allmulti", "on"),
            ("mac_table", "[02:00:00:00:aa:01,01:00:5e:00:00:01]"),
            ("vlans", "100"),
            ("vlans", "[200,4095]"),
            ("rss_table", "3,2,1,0"),
            ("rss_key", "6d5a6d5a"),
        ] {
            o.set(key, value).unwrap();
        }
        assert_eq!(o.promiscuous, Some(false));
        assert!(o.all_multicast && o.has_filters());
        assert_eq!(o.mac_table[1], MacAddr([1, 0, 0x5e, 0, 0, 1]));
        assert_eq!((o.vlans.as_slice(), o.rss_table.as_slice()), (&[100, 200, 4095][..], &[3, 2, 1, 0][..]));
        assert_eq!(o.rss_key, Some(RssKey(vec![0x6d, 0x5a, 0x6d, 0x5a])));
        assert_eq!(
            o.to_string(),
            ",promisc=off,allmulti=on,mac_table=[02:00:00:00:aa:01,01:00:5e:00:00:01],vlans=[100,200,4095],\
             rss_table=[3,2,1,0],rss_key=6d5a6d5a"
        );
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_key() {
        let err = |key: &str, value: &str| PortOptions::default().set(key, value).unwrap_err();
        assert!(matches!(err("promisc", "maybe"), OptionError::BadValue { key: "promisc", .. }));
        assert!(matches!(err("mac_table", "[02:00]"), OptionError::BadValue { key: "mac_table", .. }));
        assert!(matches!(err("vlans", "4096"), OptionError::BadValue { key: "vlans", .. }));
        assert!(matches!(err("rss_table", "[]"), OptionError::BadValue { key: "rss_table", .. }));
        assert!(err("rss_key", "6d5").to_string().contains("rss_key=6d5 is not an even number of hex digits"));
        assert!(matches!(err("speed", "1"), OptionError::UnknownKey(k) if k == "speed"));
    }

    #[test]
    fn options_split_outside_brackets() {
        let parts: Vec<&str> = split_options("queues=2,vlans=[1,2],mac=02:00:00:00:00:01,,x=[a]").collect();
        assert_eq!(parts, ["queues=2", "vlans=[1,2]", "mac=02:00:00:00:00:01", "x=[a]"]);
    }

    #[test]
    fn rss_keys_are_hex() {
        let key: RssKey = "6d5a56da".parse().unwrap();
        assert_eq!((key.0.as_slice(), key.to_string()), (&[0x6d, 0x5a, 0x56, 0xda][..], "6d5a56da".to_string()));
        for bad in ["", "6", "6g", "6d5a5"] {
            assert_eq!(bad.parse::<RssKey>(), Err(BadRssKey(bad.to_owned())), "{bad}");
        }
    }
}
