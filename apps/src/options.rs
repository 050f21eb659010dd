//! Choices the programs take on the command line and in their TOML files (same spelling in
//! both), and their conversions into the library's types.

use serde::Deserialize;
use virtio_pmd::mem::HugePages;
use virtio_pmd::net::RingChoice;

/// The ring layout, as written in the file and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Ring {
    /// Packed when the device offers it, split otherwise.
    Auto,
    /// Packed (an error when the device does not offer it).
    Packed,
    /// Split.
    Split,
}

impl Ring {
    /// The name, as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Ring::Auto => "auto",
            Ring::Packed => "packed",
            Ring::Split => "split",
        }
    }
}

impl From<Ring> for RingChoice {
    fn from(r: Ring) -> Self {
        match r {
            Ring::Auto => RingChoice::Auto,
            Ring::Packed => RingChoice::Packed,
            Ring::Split => RingChoice::Split,
        }
    }
}

/// The huge page policy for the pool and the rings, as written in the file and on the command
/// line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Huge {
    /// Huge pages when there are some, 4 KiB pages (with a warning) otherwise.
    Preferred,
    /// Huge pages or an error.
    Required,
    /// 4 KiB pages.
    Never,
}

impl Huge {
    /// The name, as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Huge::Preferred => "preferred",
            Huge::Required => "required",
            Huge::Never => "never",
        }
    }
}

impl From<Huge> for HugePages {
    fn from(h: Huge) -> Self {
        match h {
            Huge::Preferred => HugePages::Preferred,
            Huge::Required => HugePages::Required,
            Huge::Never => HugePages::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn names_match_the_command_line_and_the_file() {
        #[derive(Debug, Deserialize)]
        struct T {
            ring: Ring,
            huge: Huge,
        }
        for ring in Ring::value_variants() {
            assert_eq!(ring.to_possible_value().unwrap().get_name(), ring.name());
            let t: T = toml::from_str(&format!("ring = \"{}\"\nhuge = \"never\"", ring.name())).unwrap();
            assert_eq!(t.ring, *ring);
        }
        for huge in Huge::value_variants() {
            assert_eq!(huge.to_possible_value().unwrap().get_name(), huge.name());
            let t: T = toml::from_str(&format!("ring = \"auto\"\nhuge = \"{}\"", huge.name())).unwrap();
            assert_eq!(t.huge, *huge);
        }
        assert!(toml::from_str::<T>("ring = \"ring\"\nhuge = \"never\"").is_err());
    }

    #[test]
    fn conversions() {
        assert!(matches!(RingChoice::from(Ring::Packed), RingChoice::Packed));
        assert!(matches!(RingChoice::from(Ring::Split), RingChoice::Split));
        assert!(matches!(RingChoice::from(Ring::Auto), RingChoice::Auto));
        assert!(matches!(HugePages::from(Huge::Preferred), HugePages::Preferred));
        assert!(matches!(HugePages::from(Huge::Required), HugePages::Required));
        assert!(matches!(HugePages::from(Huge::Never), HugePages::Never));
    }
}
