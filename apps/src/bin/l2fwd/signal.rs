//! Ctrl-C (SIGINT) and SIGTERM: the first sets [`STOP`], which every polling thread and the
//! statistics loop watch, so l2fwd shuts down cleanly (queues dropped, devices reset, mbufs
//! counted); a second one while that shutdown hangs exits at once with status 130.
//!
//! The handler does only async-signal-safe things: an atomic load and store, and `_exit`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a stop was asked for (by a signal, or by l2fwd itself).
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe and takes no pointers; a second signal means the
        // user gave up on the clean shutdown.
        #[allow(unsafe_code)]
        unsafe {
            libc::_exit(130)
        };
    }
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only touches an atomic and calls
        // `_exit`, both async-signal-safe; `signal` has no other preconditions.
        #[allow(unsafe_code)]
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
