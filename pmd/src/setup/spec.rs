//! Device strings in DPDK's style: `pci:0000:00:03.0[,queues=N][,mac=MAC][,iommu=off]` for a
//! virtio-net PCI function bound to vfio-pci (with `iommu=off`: a machine without an IOMMU, the
//! function bound to vfio-pci in VFIO's no-IOMMU mode or to uio_pci_generic, physical addresses),
//! `vhost:/path.sock[,queues=N][,mac=MAC]` for a vhost-user backend. The `pci:` may be left out,
//! as in DPDK's `-a 0000:00:03.0,..`.
//!
//! Options follow the address, comma-separated, each `key=value` (a list in brackets:
//! `vlans=[100,200]`); which keys a kind takes is decided in one place
//! ([`DeviceSpec::set_option`]), so a new one (a transport mode, a per-port setting) is one match
//! arm and one field. Besides the transport's keys, every kind takes the receive filters and RSS
//! settings of [`PortOptions`] (`promisc=off,vlans=[100],rss_table=[3,2,1,0]`), which
//! [`PortSet::open`](super::PortSet::open) applies once the port runs. The printed form
//! ([`Display`](fmt::Display)) parses back to the same spec.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::options::{split_options, OptionError, PortOptions};
use crate::net::MacAddr;
use crate::transport::vfio::normalize_bdf;

/// How to reach one device.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// A virtio-net PCI function bound to vfio-pci.
    Pci {
        /// Its address, normalised (`0000:00:03.0`).
        address: String,
    },
    /// A vhost-user backend's unix socket.
    Vhost {
        /// The socket.
        path: PathBuf,
    },
}

/// One port: the device and its per-port options.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(try_from = "String", into = "String")
)]
pub struct DeviceSpec {
    /// The device.
    pub device: Device,
    /// Queue pairs of this port (`queues=N`; default: [`PortSetConfig`](super::PortSetConfig)'s).
    pub queues: Option<u16>,
    /// `mac=MAC`. vhost-user: the MAC the port reports (default
    /// [`MacAddr::default_vhost`]); PCI: the source MAC to use when the device reports none.
    pub mac: Option<MacAddr>,
    /// `iommu=off` (PCI only): no IOMMU between the device and memory; the port is opened with
    /// [`open_without_iommu`](crate::transport::open_without_iommu) and its DMA memory has
    /// physical addresses (root, huge pages). The device can then reach all memory.
    pub no_iommu: bool,
    /// Receive filters and RSS settings, applied through the control queue once the port runs.
    pub options: PortOptions,
}

/// Why a device string does not parse. Each variant carries the whole string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Neither `pci:`, `vhost:` nor a PCI address.
    #[error(
        "port '{spec}': expected [pci:]<address>[,queues=N][,mac=MAC] (e.g. 0000:00:03.0) or \
         vhost:<socket>[,queues=N][,mac=MAC]"
    )]
    UnknownKind {
        /// The string.
        spec: String,
    },
    /// The same device as an earlier port of the list ([`PortSetOptions::specs`](super::PortSetOptions::specs)).
    #[error("port '{spec}' is the same device as port {first}: give each device once")]
    SameDevice {
        /// The string.
        spec: String,
        /// The earlier port.
        first: usize,
    },
    /// The PCI address is malformed.
    #[error("port '{spec}': '{address}' is not a PCI address: expected DDDD:BB:DD.F, e.g. 0000:00:03.0")]
    BadPciAddress {
        /// The string.
        spec: String,
        /// The address part.
        address: String,
    },
    /// `vhost:` with nothing after it.
    #[error("port '{spec}': no socket path after vhost:")]
    NoSocketPath {
        /// The string.
        spec: String,
    },
    /// A key this kind of device does not take, or an option without `=`.
    #[error("port '{spec}': unknown option '{option}' (known: {known})")]
    UnknownOption {
        /// The string.
        spec: String,
        /// The option as written.
        option: String,
        /// The keys this kind takes.
        known: &'static str,
    },
    /// A known key with a value it cannot take.
    #[error("port '{spec}': {key}={value} is not {expected}")]
    BadValue {
        /// The string.
        spec: String,
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// An RSS table entry names a queue pair the port does not have.
    #[error("port '{spec}': rss_table entry {entry} is not a queue pair of the port's {queues} (0..{queues})")]
    RssTableEntry {
        /// The string (as printed).
        spec: String,
        /// The entry.
        entry: u16,
        /// The port's queue pairs.
        queues: u16,
    },
}

/// The keys every kind takes (with [`PORT_OPTION_KEYS`](super::PORT_OPTION_KEYS)).
const KNOWN_OPTIONS: &str = "queues=N, mac=MAC, iommu=on|off (pci only), promisc=on|off, allmulti=on|off, \
                             mac_table=[MAC,..], vlans=[VID,..], rss_table=[Q,..], rss_key=HEX, \
                             rx_offloads=on|off";

impl DeviceSpec {
    /// A PCI function by address (any form [`normalize_bdf`] takes), no options.
    pub fn pci(address: &str) -> Result<DeviceSpec, SpecError> {
        let bad = || SpecError::BadPciAddress { spec: format!("pci:{address}"), address: address.to_owned() };
        let address = normalize_bdf(address).map_err(|_| bad())?;
        Ok(DeviceSpec { device: Device::Pci { address }, ..DeviceSpec::vhost("") })
    }

    /// A vhost-user backend at `path`, no options.
    pub fn vhost(path: impl Into<PathBuf>) -> DeviceSpec {
        DeviceSpec {
            device: Device::Vhost { path: path.into() },
            queues: None,
            mac: None,
            no_iommu: false,
            options: PortOptions::default(),
        }
    }

    /// Checks a spec built or changed in code as its string form would be, and what only the
    /// whole spec can tell: every VLAN id is one (0..=4095), every `rss_table` entry a queue
    /// pair of the port, which has `queues=N` pairs, or `default_queues` without it.
    pub fn check(&self, default_queues: u16) -> Result<(), SpecError> {
        if let Some(vid) = self.options.vlans.iter().find(|v| **v > 4095) {
            let (spec, value) = (self.to_string(), vid.to_string());
            return Err(SpecError::BadValue { spec, key: "vlans", value, expected: "a VLAN id (0..=4095)" });
        }
        let queues = self.queues.unwrap_or(default_queues);
        match self.options.rss_table.iter().find(|q| **q >= queues) {
            Some(&entry) => Err(SpecError::RssTableEntry { spec: self.to_string(), entry, queues }),
            None => Ok(()),
        }
    }

    /// The PCI address or the socket path: what the port is called in messages
    /// ([`Port::name`](crate::net::Port::name)).
    pub fn target(&self) -> String {
        match &self.device {
            Device::Pci { address } => address.clone(),
            Device::Vhost { path } => path.display().to_string(),
        }
    }

    /// Applies one `key=value` option of the string `spec`.
    fn set_option(&mut self, spec: &str, option: &str) -> Result<(), SpecError> {
        let unknown =
            || SpecError::UnknownOption { spec: spec.to_owned(), option: option.to_owned(), known: KNOWN_OPTIONS };
        let (key, value) = option.split_once('=').ok_or_else(unknown)?;
        let bad = |key, expected| SpecError::BadValue { spec: spec.to_owned(), key, value: value.to_owned(), expected };
        match key {
            "queues" => {
                let n = value.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| bad("queues", "1..=65535"))?;
                self.queues = Some(n);
            }
            "mac" => self.mac = Some(value.parse().map_err(|_| bad("mac", "a MAC address (02:00:00:00:00:01)"))?),
            "iommu" if matches!(self.device, Device::Pci { .. }) => {
                self.no_iommu = match value {
                    "on" => false,
                    "off" => true,
                    _ => return Err(bad("iommu", "on or off")),
                }
            }
            _ => {
                return self.options.set(key, value).map_err(|e| match e {
                    OptionError::UnknownKey(_) => unknown(),
                    OptionError::BadValue { key, value, expected } => {
                        SpecError::BadValue { spec: spec.to_owned(), key, value, expected }
                    }
                })
            }
        }
        Ok(())
    }
}

impl FromStr for DeviceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A bare PCI address, as DPDK's `-a 0000:00:03.0,..`: its first part is hexadecimal.
        let bare = s.split(':').next().is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_hexdigit()));
        let (mut spec, options) = if let Some(rest) = s.strip_prefix("pci:").or(bare.then_some(s)) {
            let (address, options) = rest.split_once(',').unwrap_or((rest, ""));
            let spec = DeviceSpec::pci(address)
                .map_err(|_| SpecError::BadPciAddress { spec: s.to_owned(), address: address.to_owned() })?;
            (spec, options)
        } else if let Some(rest) = s.strip_prefix("vhost:") {
            let (path, options) = rest.split_once(',').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(SpecError::NoSocketPath { spec: s.to_owned() });
            }
            (DeviceSpec::vhost(path), options)
        } else {
            return Err(SpecError::UnknownKind { spec: s.to_owned() });
        };
        for option in split_options(options) {
            spec.set_option(s, option)?;
        }
        Ok(spec)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            Device::Pci { address } => write!(f, "pci:{address}")?,
            Device::Vhost { path } => write!(f, "vhost:{}", path.display())?,
        }
        if let Some(n) = self.queues {
            write!(f, ",queues={n}")?;
        }
        if let Some(mac) = self.mac {
            write!(f, ",mac={mac}")?;
        }
        if self.no_iommu {
            write!(f, ",iommu=off")?;
        }
        write!(f, "{}", self.options)
    }
}

impl From<DeviceSpec> for String {
    fn from(spec: DeviceSpec) -> String {
        spec.to_string()
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = SpecError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_and_vhost_strings_parse_with_their_options_and_print_back() {
        let pci: DeviceSpec = "pci:00:03.0".parse().unwrap();
        assert_eq!(pci, DeviceSpec::pci("0000:00:03.0").unwrap());
        assert_eq!(pci.to_string(), "pci:0000:00:03.0");
        let vhost: DeviceSpec = "vhost:/tmp/a.sock,queues=2,mac=02:00:00:00:00:09".parse().unwrap();
        assert_eq!(vhost.device, Device::Vhost { path: "/tmp/a.sock".into() });
        assert_eq!((vhost.queues, vhost.mac), (Some(2), Some(MacAddr([2, 0, 0, 0, 0, 9]))));
        assert_eq!(vhost.target(), "/tmp/a.sock");
        for s in [
            "pci:0000:00:04.0,queues=4",
            "vhost:/x,queues=1,mac=52:54:00:00:00:01",
            "pci:0000:00:05.1,mac=02:00:00:00:00:02",
            "pci:0000:00:03.0,queues=2,iommu=off",
            "pci:0000:00:03.0,queues=4,promisc=off,allmulti=on,mac_table=[02:00:00:00:aa:01],vlans=[100,200],\
             rss_table=[3,2,1,0],rss_key=6d5a",
            "vhost:/x,vlans=[7]",
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_strings_are_typed_errors_that_name_the_string() {
        let err = |s: &str| s.parse::<DeviceSpec>().unwrap_err();
        assert!(matches!(err("tap:x"), SpecError::UnknownKind { .. }));
        assert!(err("tap:x").to_string().contains("expected [pci:]<address>"));
        // A bare PCI address, as DPDK's -a: the same as with pci:, and its errors.
        assert_eq!("00:03.0,queues=2".parse::<DeviceSpec>(), "pci:0000:00:03.0,queues=2".parse());
        assert!(matches!(err("00:99.0"), SpecError::BadPciAddress { .. }));
        assert!(matches!(err("pci:00:99.0"), SpecError::BadPciAddress { address, .. } if address == "00:99.0"));
        assert!(matches!(err("vhost:"), SpecError::NoSocketPath { .. }));
        assert!(matches!(err("vhost:,queues=2"), SpecError::NoSocketPath { .. }));
        let unknown = err("vhost:/a,foo=1");
        assert!(matches!(&unknown, SpecError::UnknownOption { option, .. } if option == "foo=1"), "{unknown}");
        assert!(unknown.to_string().contains("unknown option 'foo=1'") && unknown.to_string().contains("vhost:/a"));
        assert!(matches!(err("pci:00:03.0,queues"), SpecError::UnknownOption { .. }));
        assert!(matches!(err("pci:00:03.0,queues=0"), SpecError::BadValue { key: "queues", .. }));
        assert!(matches!(err("vhost:/a,mac=02:00"), SpecError::BadValue { key: "mac", .. }));
        assert!(matches!(err("pci:00:03.0,iommu=maybe"), SpecError::BadValue { key: "iommu", .. }));
        assert!(matches!(err("vhost:/a,iommu=off"), SpecError::UnknownOption { .. }), "vhost-user has no IOMMU");
        assert!("pci:00:03.0,iommu=off".parse::<DeviceSpec>().unwrap().no_iommu);
        assert!(!"pci:00:03.0,iommu=on".parse::<DeviceSpec>().unwrap().no_iommu);
        assert!(matches!(err("vhost:/a,vlans=[1,x]"), SpecError::BadValue { key: "vlans", .. }));
        assert!(KNOWN_OPTIONS.ends_with(super::super::PORT_OPTION_KEYS));
    }

    #[test]
    fn rss_table_entries_are_checked_against_the_queue_pairs() {
        let spec: DeviceSpec = "vhost:/a,rss_table=[0,3]".parse().unwrap();
        assert_eq!(spec.check(4), Ok(()));
        let err = spec.check(2).unwrap_err();
        assert!(matches!(err, SpecError::RssTableEntry { entry: 3, queues: 2, .. }), "{err}");
        let spec: DeviceSpec = "vhost:/a,queues=4,rss_table=[3]".parse().unwrap();
        assert_eq!(spec.check(1), Ok(()));
        let mut spec = DeviceSpec::vhost("/a");
        spec.options.vlans.push(4096);
        assert!(matches!(spec.check(1), Err(SpecError::BadValue { key: "vlans", .. })));
    }
}
