//! Choices the programs take on the command line and in their TOML files (same spelling in
//! both), their conversions into the library's types, and [`layered`]: one options struct,
//! declared once for both the command line (clap) and the file (serde), the command line's
//! values over the file's.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use virtio_pmd::mem::HugePages;
use virtio_pmd::net::RingChoice;

/// The ring layout, as written in the file and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
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

/// `cli` (options given on the command line; `None` fields were not given) over the TOML file
/// at `file`: a key of both takes the command line's value. The file alone must parse as `T`
/// first (so an unknown key or a bad value is reported with the file's name and line).
pub fn layered<T: Serialize + DeserializeOwned + Clone>(cli: &T, file: Option<&Path>) -> Result<T, String> {
    let Some(path) = file else { return Ok(cli.clone()) };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let bad = |e: toml::de::Error| {
        format!("config file {}: {}", path.display(), e.to_string().trim_end().replace('\n', "\n  "))
    };
    toml::from_str::<T>(&text).map_err(bad)?;
    let mut merged: toml::Table = toml::from_str(&text).map_err(bad)?;
    let given = toml::Table::try_from(cli).map_err(|e| format!("command-line options: {e}"))?;
    merged.extend(given);
    T::deserialize(merged).map_err(|e| format!("command line over config file {}: {e}", path.display()))
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

    #[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Layered {
        ring: Option<Ring>,
        burst: Option<usize>,
        cores: Option<Vec<usize>>,
    }

    #[test]
    fn the_command_line_overrides_the_file_key_by_key() {
        let path = std::env::temp_dir().join(format!("options-layered-{}.toml", std::process::id()));
        std::fs::write(&path, "ring = \"split\"\nburst = 8\n").unwrap();
        let cli = Layered { burst: Some(16), cores: Some(vec![1]), ..Layered::default() };
        let got = layered(&cli, Some(&path)).unwrap();
        assert_eq!(got, Layered { ring: Some(Ring::Split), burst: Some(16), cores: Some(vec![1]) });
        assert_eq!(layered(&cli, None).unwrap(), cli);
        std::fs::write(&path, "ring = \"split\"\nbrust = 8\n").unwrap();
        let err = layered(&cli, Some(&path)).unwrap_err();
        assert!(err.contains("config file") && err.contains("unknown field `brust`"), "{err}");
        std::fs::remove_file(&path).ok();
        assert!(layered(&cli, Some(&path)).unwrap_err().contains("cannot read the config file"));
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
