//! [`layered`]: one options struct, declared once for both the command line (clap) and the
//! TOML file (serde), the command line's values over the file's. The library's choices
//! ([`RingChoice`](virtio_pmd::net::RingChoice), [`HugePages`](virtio_pmd::mem::HugePages)) and
//! [`PortSetOptions`](virtio_pmd::setup::PortSetOptions) take the same spelling in both.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

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
    use serde::Deserialize;
    use virtio_pmd::net::RingChoice;

    #[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Layered {
        ring: Option<RingChoice>,
        burst: Option<usize>,
        cores: Option<Vec<usize>>,
    }

    #[test]
    fn the_command_line_overrides_the_file_key_by_key() {
        let path = std::env::temp_dir().join(format!("options-layered-{}.toml", std::process::id()));
        std::fs::write(&path, "ring = \"split\"\nburst = 8\n").unwrap();
        let cli = Layered { burst: Some(16), cores: Some(vec![1]), ..Layered::default() };
        let got = layered(&cli, Some(&path)).unwrap();
        assert_eq!(got, Layered { ring: Some(RingChoice::Split), burst: Some(16), cores: Some(vec![1]) });
        assert_eq!(layered(&cli, None).unwrap(), cli);
        std::fs::write(&path, "ring = \"split\"\nbrust = 8\n").unwrap();
        let err = layered(&cli, Some(&path)).unwrap_err();
        assert!(err.contains("config file") && err.contains("unknown field `brust`"), "{err}");
        std::fs::remove_file(&path).ok();
        assert!(layered(&cli, Some(&path)).unwrap_err().contains("cannot read the config file"));
    }
}
