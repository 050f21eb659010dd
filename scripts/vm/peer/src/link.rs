//! How the peer reaches one guest NIC: a UDP socket wired to QEMU's `-netdev dgram` (one raw
//! frame per datagram), or an AF_PACKET socket on the host end of QEMU's `-netdev tap` (the
//! multi-queue backend: scripts/l2fwd-vm.sh --queues, in a network namespace of its own).
//!
//! On a tap, a frame the peer writes is one the tap transmits, which QEMU reads and hands to the
//! guest; a frame QEMU writes (the guest transmitted it) is one the tap receives, which the
//! socket sees. The socket is bound to the tap's interface index and ignores the frames it sent
//! itself (`PACKET_IGNORE_OUTGOING`), so it receives only what came from QEMU.
#![allow(unsafe_code)]

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::ports::SOCKET_BUFFER;

/// `ETH_P_ALL`: every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): do not see frames sent on the interface.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// One port's way in and out.
#[derive(Debug)]
pub enum Link {
    /// QEMU's `-netdev dgram`: the peer's socket, and QEMU's address, the only one frames may
    /// come from.
    Udp {
        /// Bound to the peer's port.
        socket: UdpSocket,
        /// QEMU's socket.
        qemu: SocketAddr,
    },
    /// The host end of QEMU's `-netdev tap`.
    Tap {
        /// AF_PACKET, bound to the tap.
        socket: Socket,
        /// The tap's name.
        name: String,
    },
}

/// What one receive call got.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A frame of this many bytes from QEMU.
    Frame(usize),
    /// A datagram of this many bytes from somewhere else (UDP only), described.
    Stranger(usize, String),
    /// Nothing within the read timeout.
    Nothing,
}

impl Link {
    /// An AF_PACKET socket on the interface `name` (a tap QEMU holds), with large buffers.
    pub fn tap(name: &str) -> io::Result<Link> {
        let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .map_err(|e| io::Error::new(e.kind(), format!("no interface {name} here ({e})")))?
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("ifindex of {name}: {e}")))?;
        let protocol = ETH_P_ALL.to_be();
        let socket = Socket::new(
            Domain::from(libc::AF_PACKET),
            Type::from(libc::SOCK_RAW),
            Some(Protocol::from(libc::c_int::from(protocol))),
        )?;
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
        let one: libc::c_int = 1;
        // SAFETY: a plain setsockopt on a socket this function owns, with a pointer to an int and
        // its size, as PACKET_IGNORE_OUTGOING takes.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data (all-zero is valid); every field set is in range.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Link::Tap { socket, name: name.to_owned() })
    }

    /// A second handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Link> {
        Ok(match self {
            Link::Udp { socket, qemu } => Link::Udp { socket: socket.try_clone()?, qemu: *qemu },
            Link::Tap { socket, name } => Link::Tap { socket: socket.try_clone()?, name: name.clone() },
        })
    }

    /// How long [`recv`](Self::recv) waits.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Link::Udp { socket, .. } => socket.set_read_timeout(Some(timeout)),
            Link::Tap { socket, .. } => socket.set_read_timeout(Some(timeout)),
        }
    }

    /// Sends one frame towards the guest.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        match self {
            Link::Udp { socket, qemu } => socket.send_to(frame, qemu).map(drop),
            Link::Tap { socket, .. } => socket.send(frame).map(drop),
        }
    }

    /// Receives one frame into `buf`, waiting at most the read timeout.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let got = match self {
            Link::Udp { socket, qemu } => socket.recv_from(buf).map(|(n, from)| {
                if from == *qemu {
                    Received::Frame(n)
                } else {
                    Received::Stranger(n, format!("{n}-byte datagram from {from}, not from {qemu}"))
                }
            }),
            Link::Tap { socket, .. } => {
                let mut reader: &Socket = socket;
                reader.read(buf).map(Received::Frame)
            }
        };
        match got {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Received::Nothing)
            }
            other => other,
        }
    }

    /// The receive buffer the kernel granted (Linux reports twice the usable size).
    pub fn recv_buffer(&self) -> usize {
        match self {
            Link::Udp { socket, .. } => SockRef::from(socket).recv_buffer_size().unwrap_or(0),
            Link::Tap { socket, .. } => socket.recv_buffer_size().unwrap_or(0),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Udp { socket, qemu } => match socket.local_addr() {
                Ok(local) => write!(f, "{local} -> {qemu}"),
                Err(_) => write!(f, "-> {qemu}"),
            },
            Link::Tap { name, .. } => write!(f, "tap {name}"),
        }
    }
}
