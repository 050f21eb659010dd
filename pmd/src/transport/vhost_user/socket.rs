//! The vhost-user control socket below the `vhost` crate: connecting with a retry window, and a
//! non-blocking liveness check.
//!
//! The backend (DPDK's `net_vhost`, QEMU's `vhost-user-*` daemons) is the socket's server; it may
//! still be starting when the driver connects, so a missing socket file or a refused connection is
//! retried until the window closes.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Pause between connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Connects to the unix socket at `path`, retrying "no such file" and "connection refused" for
/// up to `window`. Returns the last error when the window closes (or at once for other errors).
pub(super) fn connect(path: &Path, window: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + window;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(err)
                if matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
                    && Instant::now() + RETRY_PAUSE < deadline =>
            {
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(err) => return Err(err),
        }
    }
}

/// `VHOST_USER_GET_QUEUE_NUM`.
const GET_QUEUE_NUM: u32 = 17;
/// Header flags: protocol version 1.
const VERSION_1: u32 = 0x1;
/// Header flags: this is a reply.
const REPLY: u32 = 0x4;

/// Sends `GET_QUEUE_NUM` and reads the answer, on the raw socket.
///
/// The `vhost` crate's `get_queue_num` also caps the vring indexes it will send to the answer,
/// but backends answer in queue *pairs* for virtio-net (DPDK 22.11 always answers 128, its
/// compiled-in maximum), so with the crate's version a port could not set up its tx queue of the
/// last pair. Only call this between requests: nothing else may be in flight on the socket.
pub(super) fn get_queue_num(mut stream: &UnixStream) -> io::Result<u64> {
    let mut request = [0u8; 12];
    request[0..4].copy_from_slice(&GET_QUEUE_NUM.to_le_bytes());
    request[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
    stream.write_all(&request)?;
    let mut reply = [0u8; 20];
    stream.read_exact(&mut reply)?;
    let word = |at: usize| u32::from_le_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]]);
    if word(0) != GET_QUEUE_NUM || word(4) & REPLY == 0 || word(8) != 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer to GET_QUEUE_NUM: request {}, flags {:#x}, size {}", word(0), word(4), word(8)),
        ));
    }
    let mut value = [0u8; 8];
    value.copy_from_slice(&reply[12..20]);
    Ok(u64::from_le_bytes(value))
}

/// Whether the peer of the connected stream socket `fd` has hung up or the socket has failed,
/// without blocking and without reading anything.
pub(super) fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: `pfd` is one valid, initialised pollfd on our stack and `nfds` is 1; the fd is
    // borrowed, so it is open for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        // EINTR or ENOMEM: no news is not bad news; the next check will tell.
        return false;
    }
    pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn hang_up_is_seen_without_reading() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        assert!(!hung_up(ours.as_fd()));
        drop(theirs);
        assert!(hung_up(ours.as_fd()));
    }

    #[test]
    fn get_queue_num_round_trip() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let backend = std::thread::spawn(move || {
            let mut request = [0u8; 12];
            theirs.read_exact(&mut request).unwrap();
            assert_eq!(request, [17, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
            let mut reply = vec![17, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0];
            reply.extend_from_slice(&128u64.to_le_bytes());
            theirs.write_all(&reply).unwrap();
            theirs
        });
        assert_eq!(get_queue_num(&ours).unwrap(), 128);
        let mut theirs = backend.join().unwrap();
        theirs.write_all(&[1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        let mut request = [0u8; 12];
        let err = std::thread::scope(|s| {
            let answer = s.spawn(|| get_queue_num(&ours));
            theirs.read_exact(&mut request).unwrap();
            answer.join().unwrap()
        });
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn connect_gives_up_after_the_window() {
        let path = std::env::temp_dir().join(format!("virtio-pmd-nobody-{}.sock", std::process::id()));
        let started = Instant::now();
        let err = connect(&path, Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn connect_waits_for_a_late_listener() {
        let path = std::env::temp_dir().join(format!("virtio-pmd-late-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener_path = path.clone();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let listener = std::os::unix::net::UnixListener::bind(&listener_path).unwrap();
            listener.accept().unwrap();
        });
        connect(&path, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
