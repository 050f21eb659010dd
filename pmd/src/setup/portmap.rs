//! Which port forwards to which: DPDK l2fwd's `--portmap "(0,1),(2,3)"` (each pair forwards both
//! ways), or its default pairing 0 <-> 1, 2 <-> 3, ... with an odd last port answering on itself.

use std::fmt;

/// The port each port forwards to; an involution (port `peer(i)` forwards back to `i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMap(Vec<usize>);

/// Why a port map does not parse, or does not cover the ports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortMapError {
    /// Text that is not `(A,B)`.
    #[error("'{0}' is not a pair (A,B)")]
    NotAPair(String),
    /// A pair whose members are not port numbers.
    #[error("({0}) is not a pair of port numbers (A,B)")]
    NotPortNumbers(String),
    /// `(A,A)`.
    #[error("({0},{0}) pairs port {0} with itself: pair it with another port")]
    SelfPair(usize),
    /// A port beyond the ports opened.
    #[error("port {port} does not exist: there are {ports} ports (0..{ports})")]
    NoSuchPort {
        /// The port.
        port: usize,
        /// The ports opened.
        ports: usize,
    },
    /// A port in two pairs.
    #[error("port {0} is in two pairs: give each port once")]
    Twice(usize),
    /// A port in no pair.
    #[error("port {0} is in no pair: give every port once")]
    Missing(usize),
}

impl PortMap {
    /// The default pairing of `ports` ports: 0 <-> 1, 2 <-> 3, ...; the last of an odd number
    /// forwards to itself.
    pub fn pairs(ports: usize) -> PortMap {
        PortMap((0..ports).map(|id| Some(id ^ 1).filter(|p| *p < ports).unwrap_or(id)).collect())
    }

    /// DPDK's syntax, `(A,B),(C,D),..` (spaces allowed), over `ports` ports: every port in
    /// exactly one pair.
    pub fn parse(map: &str, ports: usize) -> Result<PortMap, PortMapError> {
        let mut peers: Vec<Option<usize>> = vec![None; ports];
        let mut rest = map.trim();
        while !rest.is_empty() {
            let inner = rest.strip_prefix('(').and_then(|r| r.split_once(')'));
            let (pair, after) = inner.ok_or_else(|| PortMapError::NotAPair(rest.to_owned()))?;
            let (a, b) = pair
                .split_once(',')
                .and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?)))
                .ok_or_else(|| PortMapError::NotPortNumbers(pair.to_owned()))?;
            if a == b {
                return Err(PortMapError::SelfPair(a));
            }
            for port in [a, b] {
                match peers.get(port) {
                    None => return Err(PortMapError::NoSuchPort { port, ports }),
                    Some(Some(_)) => return Err(PortMapError::Twice(port)),
                    Some(None) => {}
                }
            }
            (peers[a], peers[b]) = (Some(b), Some(a));
            rest = after.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        match peers.iter().position(Option::is_none) {
            Some(port) => Err(PortMapError::Missing(port)),
            None => Ok(PortMap(peers.into_iter().flatten().collect())),
        }
    }

    /// The port that port `id` forwards to.
    pub fn peer(&self, id: usize) -> usize {
        self.0[id]
    }
}

impl fmt::Display for PortMap {
    /// `0->1 1->0 2->2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.0.iter().enumerate().map(|(id, peer)| format!("{id}->{peer}")).collect();
        write!(f, "{}", pairs.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pairs_neighbours_and_an_odd_last_port_answers_itself() {
        assert_eq!(PortMap::pairs(4).to_string(), "0->1 1->0 2->3 3->2");
        assert_eq!(PortMap::pairs(3).to_string(), "0->1 1->0 2->2");
        assert_eq!(PortMap::pairs(1).peer(0), 0);
    }

    #[test]
    fn dpdk_portmaps_parse() {
        assert_eq!(PortMap::parse("(0,2),(1,3)", 4).unwrap().to_string(), "0->2 1->3 2->0 3->1");
        assert_eq!(PortMap::parse(" (1, 0) , ", 2).unwrap(), PortMap::pairs(2));
    }

    #[test]
    fn bad_portmaps_say_what_is_wrong() {
        let err = |map: &str| PortMap::parse(map, 3).unwrap_err();
        assert_eq!(err("(0,1)"), PortMapError::Missing(2));
        assert_eq!(err("(0,1),(1,2)"), PortMapError::Twice(1));
        assert_eq!(err("(0,0),(1,2)"), PortMapError::SelfPair(0));
        assert_eq!(err("(0,5),(1,2)"), PortMapError::NoSuchPort { port: 5, ports: 3 });
        assert_eq!(err("0,1"), PortMapError::NotAPair("0,1".into()));
        assert_eq!(err("(0,x)"), PortMapError::NotPortNumbers("0,x".into()));
        assert_eq!(err("(0,1)(2"), PortMapError::NotAPair("(2".into()));
        assert_eq!(err("(0,1),(1,2)").to_string(), "port 1 is in two pairs: give each port once");
    }
}
