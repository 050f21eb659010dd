//! MAC addresses: parsed from `02:00:00:00:00:01` (or `02-00-00-00-00-01`), printed in lower-case
//! hex with colons, and the default addresses DPDK's programs give ports (which the device
//! strings of [`crate::setup`] and the sample programs follow).

use std::fmt;
use std::str::FromStr;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(try_from = "String", into = "String")
)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacError {
    /// It does not split into six parts at `:` or `-`.
    Count,
    /// This part is not a hex byte.
    Byte(String),
}

impl MacAddr {
    /// DPDK's default destination of frames sent out of port `id`: `02:00:00:00:00:<id>` (DPDK
    /// l2fwd's rewrite, and testpmd's default `--eth-peer`).
    pub fn default_peer(id: usize) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, (id >> 8) as u8, id as u8])
    }

    /// The MAC a vhost-user port reports when none is configured: `02:00:00:00:00:<id + 1>`
    /// (port 0 gets the library's default, 02:00:00:00:00:01).
    pub fn default_vhost(id: usize) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, ((id + 1) >> 8) as u8, (id + 1) as u8])
    }

    /// A locally administered source MAC for port `id` when neither the device nor the
    /// configuration gives one: `02:00:00:00:ff:<id>`.
    pub fn fallback(id: usize) -> MacAddr {
        MacAddr([0x02, 0, 0, 0xff, (id >> 8) as u8, id as u8])
    }

    /// Parses six bytes separated by `:` or `-`, each one or two hex digits, and says which part
    /// is wrong. ([`FromStr`] also takes a byte written with a `+` sign, as `u8::from_str_radix`
    /// does, and explains every failure the same way.)
    pub fn parse_strict(s: &str) -> Result<MacAddr, MacError> {
        parse(s, true)
    }
}

/// The parser behind [`MacAddr::parse_strict`] (`digits_only`) and [`FromStr`].
fn parse(s: &str, digits_only: bool) -> Result<MacAddr, MacError> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(MacError::Count);
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        let shape = (1..=2).contains(&part.len()) && (!digits_only || part.chars().all(|c| c.is_ascii_hexdigit()));
        *byte = u8::from_str_radix(part, 16).ok().filter(|_| shape).ok_or_else(|| MacError::Byte(part.to_string()))?;
    }
    Ok(MacAddr(mac))
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s, false)
            .map_err(|_| format!("'{s}' is not a MAC address (expected six hex bytes, e.g. 02:00:00:00:00:01)"))
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let mac: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(format!("{mac:?}"), "52:54:00:ab:cd:01");
        assert_eq!("2-0-0-0-0-1".parse::<MacAddr>().unwrap(), MacAddr([2, 0, 0, 0, 0, 1]));
        for bad in ["52:54:00:ab:cd", "52:54:00:ab:cd:100", "52:54:00:ab:cd:zz", "52:54:00:ab:cd:01:02", ""] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.contains("is not a MAC address (expected six hex bytes"), "{err}");
        }
    }

    #[test]
    fn strict_parsing_names_the_bad_part() {
        assert_eq!(MacAddr::parse_strict("52:54:00:00:00:0f"), Ok(MacAddr([0x52, 0x54, 0, 0, 0, 0x0f])));
        assert_eq!(MacAddr::parse_strict("52:54:00:00:00"), Err(MacError::Count));
        assert_eq!(MacAddr::parse_strict("52:54:00:zz:00:01"), Err(MacError::Byte("zz".into())));
        assert_eq!(MacAddr::parse_strict("52:54:00:+f:00:01"), Err(MacError::Byte("+f".into())));
        assert_eq!("52:54:00:+f:00:01".parse::<MacAddr>(), Ok(MacAddr([0x52, 0x54, 0, 0x0f, 0, 1])));
    }

    #[test]
    fn default_addresses() {
        assert_eq!(MacAddr::default_peer(1).to_string(), "02:00:00:00:00:01");
        assert_eq!(MacAddr::default_peer(0x102).to_string(), "02:00:00:00:01:02");
        assert_eq!(MacAddr::default_vhost(0).to_string(), "02:00:00:00:00:01");
        assert_eq!(MacAddr::fallback(3).to_string(), "02:00:00:ff:00:03");
    }
}
