//! `vm-peer reflect`: a stand-in for QEMU + the guest's l2fwd, over the same UDP sockets.
//!
//! It binds the QEMU side of both ports; every datagram that arrives on port p from port p's
//! peer address leaves through the other port q = 1 - p, towards q's peer address, with the MAC
//! rewrite of DPDK's l2fwd: destination `out_dst[q]` (`02:00:00:00:00:<q>` by default), source
//! `out_src[q]` (port q's MAC). Nothing else is touched. It is the harness's self-test: run
//! `vm-peer reflect` and `vm-peer run` with the same ports to check the peer and the host's UDP
//! path without a VM. Datagrams from other addresses are ignored.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use virtio_pmd::net::MacAddr;

use crate::PeerError;

/// How the reflector rewrites frames and when it stops.
#[derive(Clone, Debug)]
pub struct ReflectConfig {
    /// Destination MAC written on frames leaving port q.
    pub out_dst: [MacAddr; 2],
    /// Source MAC written on frames leaving port q.
    pub out_src: [MacAddr; 2],
    /// Stop after this long without a frame (counted from the last frame, or from the start).
    pub idle_exit: Option<Duration>,
}

/// Forwards between the two ports until `stop` is set or the idle time passes; returns the
/// number of frames forwarded, indexed by input port (`[0->1, 1->0]`).
pub fn serve(
    cfg: &ReflectConfig,
    qemu: [UdpSocket; 2],
    peers: [SocketAddr; 2],
    stop: &AtomicBool,
    log: &mut dyn Write,
) -> Result<[u64; 2], PeerError> {
    let start = Instant::now();
    // ms since `start` of the last frame, for the idle exit.
    let last = Arc::new(AtomicU64::new(0));
    let forwarded: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
    let done = Arc::new(AtomicBool::new(false));
    let [q0, q1] = qemu;
    let outs = [
        q1.try_clone().map_err(|source| PeerError::Socket { what: "clone", source })?,
        q0.try_clone().map_err(|source| PeerError::Socket { what: "clone", source })?,
    ];
    let mut handles = Vec::new();
    for (p, (inp, out)) in [q0, q1].into_iter().zip(outs).enumerate() {
        inp.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|source| PeerError::Socket { what: "set the read timeout", source })?;
        let (cfg, last, forwarded, done) = (cfg.clone(), Arc::clone(&last), Arc::clone(&forwarded), Arc::clone(&done));
        let handle = thread::Builder::new()
            .name(format!("reflect-port{p}"))
            .spawn(move || -> Result<(), PeerError> {
                let q = 1 - p;
                let mut buf = vec![0u8; 65536];
                while !done.load(Ordering::Relaxed) {
                    let (n, from) = match inp.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => return Err(PeerError::Recv { source }),
                    };
                    if from != peers[p] || n < 12 {
                        continue;
                    }
                    buf[0..6].copy_from_slice(&cfg.out_dst[q].0);
                    buf[6..12].copy_from_slice(&cfg.out_src[q].0);
                    out.send_to(&buf[..n], peers[q])
                        .map_err(|source| PeerError::Send { to: peers[q].to_string(), source })?;
                    forwarded[p].fetch_add(1, Ordering::Relaxed);
                    last.store(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                }
                Ok(())
            })
            .map_err(|source| PeerError::Socket { what: "spawn a reflector thread", source })?;
        handles.push(handle);
    }
    while !stop.load(Ordering::Relaxed) && !handles.iter().any(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(50));
        if let Some(idle) = cfg.idle_exit {
            let since = start.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if since >= idle {
                writeln!(log, "reflect: idle for {} s, stopping", idle.as_secs()).ok();
                break;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| PeerError::Thread("a reflector thread panicked"))??;
    }
    Ok([forwarded[0].load(Ordering::Relaxed), forwarded[1].load(Ordering::Relaxed)])
}
