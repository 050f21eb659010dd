//! The two UDP endpoints of each forwarded port, as QEMU's `-netdev dgram` wires them.
//!
//! For NIC `i`, QEMU listens on `host:qemu_port` (its `local.port`) and sends what the guest
//! transmits to `host:peer_port` (its `remote.port`). The peer binds the peer port and sends to the
//! QEMU port; `vm-peer reflect` stands in for QEMU and does the opposite. The defaults match
//! `scripts/vm/run-vm.sh`: port base 40001 gives 40001/40002 for NIC 0 and 40011/40012 for NIC 1.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// The addresses of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortAddrs {
    /// Where QEMU (or the reflector) listens; the peer sends frames here.
    pub qemu: SocketAddr,
    /// Where the peer listens; QEMU sends the guest's frames here.
    pub peer: SocketAddr,
}

/// Default first port: NIC i uses `DEFAULT_PORT_BASE + 10 * i` (QEMU) and one more (peer).
pub const DEFAULT_PORT_BASE: u16 = 40001;

/// The loopback address, the only one this harness sends to by default.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Socket buffer size asked for (the kernel caps it at net.core.rmem_max / wmem_max).
///
/// The default (about 200 KiB, some 90 full-size frames) lasts only a few ms at 10k+ frames/s,
/// less than one scheduling slice on a busy machine; 4 MiB rides out such pauses.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a UDP socket with large receive and send buffers.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Addresses of ports 0 and 1 from `--ports Q0:P0,Q1:P1` or, without it, `--port-base`.
pub fn resolve(host: IpAddr, port_base: u16, ports: Option<&str>) -> Result<[PortAddrs; 2], String> {
    let pairs: Vec<(u16, u16)> = match ports {
        Some(list) => list.split(',').map(parse_pair).collect::<Result<_, _>>()?,
        None => (0..2u16)
            .map(|i| {
                let q = port_base
                    .checked_add(10 * i + 1)
                    .map(|_| port_base + 10 * i)
                    .ok_or_else(|| format!("--port-base {port_base} is too high: ports must stay below 65536"))?;
                Ok((q, q + 1))
            })
            .collect::<Result<_, String>>()?,
    };
    if pairs.len() != 2 {
        return Err(format!("--ports lists {} ports; l2fwd forwards between exactly 2", pairs.len()));
    }
    let addr = |port| SocketAddr::new(host, port);
    Ok([
        PortAddrs { qemu: addr(pairs[0].0), peer: addr(pairs[0].1) },
        PortAddrs { qemu: addr(pairs[1].0), peer: addr(pairs[1].1) },
    ])
}

fn parse_pair(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("--ports entry '{s}' is not QEMU_PORT:PEER_PORT (e.g. 40001:40002)");
    let (q, p) = s.trim().split_once(':').ok_or_else(bad)?;
    let q: u16 = q.parse().map_err(|_| bad())?;
    let p: u16 = p.parse().map_err(|_| bad())?;
    if q == 0 || p == 0 {
        return Err(bad());
    }
    Ok((q, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_run_vm() {
        let p = resolve(LOOPBACK, DEFAULT_PORT_BASE, None).unwrap();
        assert_eq!(p[0].qemu.port(), 40001);
        assert_eq!(p[0].peer.port(), 40002);
        assert_eq!(p[1].qemu.port(), 40011);
        assert_eq!(p[1].peer.port(), 40012);
        assert!(p[0].qemu.ip().is_loopback());
    }

    #[test]
    fn explicit_ports() {
        let p = resolve(LOOPBACK, 1, Some("5000:5001, 6000:6001")).unwrap();
        assert_eq!((p[1].qemu.port(), p[1].peer.port()), (6000, 6001));
        assert!(resolve(LOOPBACK, 1, Some("5000:5001")).is_err());
        assert!(resolve(LOOPBACK, 1, Some("5000-5001,1:2")).is_err());
        assert!(resolve(LOOPBACK, 1, Some("0:1,1:2")).is_err());
        assert!(resolve(LOOPBACK, 65530, None).is_err());
    }
}
