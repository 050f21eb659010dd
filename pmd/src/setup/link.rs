//! Link state of the ports of a [`PortSet`]: waiting for every link at start (as DPDK's l2fwd
//! does), and the changes seen since (VIRTIO_NET_S_LINK_UP of the device configuration's
//! `status`, "Device configuration layout"; a device without VIRTIO_NET_F_STATUS is always up).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::PortSet;
use crate::net::Port;

/// How often [`PortSet::wait_for_link`] reads the link states.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// A port's link state as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// The link is up.
    Up,
    /// The device reports the link down.
    Down,
    /// The state could not be read (the device stopped, or needs a reset): why.
    Unknown(String),
}

impl LinkState {
    /// `port`'s state now.
    pub fn of(port: &Port) -> LinkState {
        match port.link_up() {
            Ok(true) => LinkState::Up,
            Ok(false) => LinkState::Down,
            Err(e) => LinkState::Unknown(e.to_string()),
        }
    }
}

impl fmt::Display for LinkState {
    /// `up`, `down` or `unknown (why)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Up => write!(f, "up"),
            LinkState::Down => write!(f, "down"),
            LinkState::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

impl PortSet {
    /// Every port's link state, by index.
    pub fn link_states(&self) -> Vec<LinkState> {
        self.ports().iter().map(LinkState::of).collect()
    }

    /// Waits until no port reports its link down, at most `timeout` (DPDK's l2fwd waits 9 s),
    /// or until `stop` is set; returns the states last read (some may still be down).
    pub fn wait_for_link(&self, timeout: Duration, stop: &AtomicBool) -> Vec<LinkState> {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.link_states();
            if !states.contains(&LinkState::Down) || Instant::now() >= deadline || stop.load(Ordering::SeqCst) {
                return states;
            }
            std::thread::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// The ports whose state changed since `last` (by index, as [`link_states`](Self::link_states)
    /// gives them), with their new state; `last` is updated.
    pub fn link_changes(&self, last: &mut [LinkState]) -> Vec<(usize, LinkState)> {
        let mut changes = Vec::new();
        for (id, (now, was)) in self.link_states().into_iter().zip(last.iter_mut()).enumerate() {
            if now != *was {
                *was = now.clone();
                changes.push((id, now));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_print_as_l2fwd_reports_them() {
        assert_eq!(LinkState::Up.to_string(), "up");
        assert_eq!(LinkState::Down.to_string(), "down");
        assert_eq!(LinkState::Unknown("stopped".into()).to_string(), "unknown (stopped)");
    }
}
