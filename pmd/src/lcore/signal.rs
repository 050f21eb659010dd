//! SIGINT (Ctrl-C) and SIGTERM: the first sets [`STOP`], which the lcores ([`launch`](super::launch))
//! and the program's main loop watch, so that the program stops cleanly (polling stops, queues and ports are
//! dropped, the pool is checked); a second one, while that shutdown hangs, exits at once with
//! status 130.
//!
//! The handler does only async-signal-safe things: an atomic swap and `_exit`.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a stop was asked for (by a signal, or by the program itself, e.g. when its duration
/// is over).
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe and takes no pointers; a second signal means the
        // user gave up on the clean shutdown.
        unsafe { libc::_exit(130) };
    }
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install_stop_handler() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only touches an atomic and calls
        // `_exit`, both async-signal-safe; `signal` has no other preconditions.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
