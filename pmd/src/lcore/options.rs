//! [`LcoreOptions`]: the options of the polling threads (DPDK's `-l` core list, the burst, an
//! idle sleep), declared once for a configuration file (feature `serde`) and a command line
//! (feature `clap`), as [`PortSetOptions`](crate::setup::PortSetOptions) is for the ports.

use std::time::Duration;

use crate::error::Error;

/// Most frames in one burst.
pub const MAX_BURST: usize = 1024;
/// Longest idle sleep, in microseconds.
pub const MAX_IDLE_SLEEP_US: u64 = 100_000;

/// The polling threads' options, each optional; [`check`](LcoreOptions::check) says whether
/// they are in range, and the accessors give the values with their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct LcoreOptions {
    /// Cores of the polling threads, one thread each (e.g. 0,1) [default: one unpinned thread].
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ','))]
    pub cores: Option<Vec<usize>>,
    /// Frames per burst [default: 32].
    #[cfg_attr(feature = "clap", arg(long))]
    pub burst: Option<usize>,
    /// Microseconds a polling thread sleeps once its queues stayed empty a while, 0 for never
    /// [default: 0].
    #[cfg_attr(feature = "clap", arg(long, value_name = "US"))]
    pub idle_sleep_us: Option<u64>,
}

impl LcoreOptions {
    /// The cores (empty: one unpinned thread).
    pub fn cores(&self) -> &[usize] {
        self.cores.as_deref().unwrap_or_default()
    }

    /// Frames per burst.
    pub fn burst(&self) -> usize {
        self.burst.unwrap_or(32)
    }

    /// How long an idle polling thread sleeps (`None`: never, pure polling).
    pub fn idle_sleep(&self) -> Option<Duration> {
        self.idle_sleep_us.filter(|us| *us > 0).map(Duration::from_micros)
    }

    /// `Error::InvalidConfig` for a burst or an idle sleep out of range, or a core listed twice.
    pub fn check(&self) -> Result<(), Error> {
        let burst = self.burst();
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(Error::InvalidConfig(format!("burst {burst} is out of range: use 1..={MAX_BURST}")));
        }
        if let Some(us) = self.idle_sleep_us.filter(|us| *us > MAX_IDLE_SLEEP_US) {
            let msg = format!("idle_sleep_us {us} is out of range: use 0 (never sleep) to {MAX_IDLE_SLEEP_US}");
            return Err(Error::InvalidConfig(msg));
        }
        let cores = self.cores();
        match cores.iter().enumerate().find(|(i, c)| cores[..*i].contains(c)) {
            Some((i, c)) => Err(Error::InvalidConfig(format!("core {c} is listed twice in cores (entry {i})"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_range_checks() {
        let o = LcoreOptions::default();
        assert_eq!((o.cores(), o.burst(), o.idle_sleep()), (&[][..], 32, None));
        assert!(o.check().is_ok());
        let sleepy = LcoreOptions { idle_sleep_us: Some(20), cores: Some(vec![1, 0]), ..o.clone() };
        assert_eq!((sleepy.idle_sleep(), sleepy.check().is_ok()), (Some(Duration::from_micros(20)), true));
        let bad = |o: LcoreOptions| o.check().unwrap_err().to_string();
        assert!(bad(LcoreOptions { burst: Some(0), ..o.clone() }).contains("burst 0 is out of range"));
        assert!(bad(LcoreOptions { idle_sleep_us: Some(200_000), ..o.clone() }).contains("idle_sleep_us 200000"));
        assert!(bad(LcoreOptions { cores: Some(vec![1, 2, 1]), ..o }).contains("core 1 is listed twice"));
    }
}
