//! A watchdog that bounds every vhost-user control request in time.
//!
//! The `vhost` crate's frontend blocks in `sendmsg`/`recvmsg` until the backend answers, and it
//! retries `EAGAIN` in a loop, so socket timeouts (`SO_RCVTIMEO`) cannot bound a request: a
//! stopped backend (SIGSTOP) would hang set-up forever. Instead, a thread per connection waits
//! beside each request; when the deadline passes it shuts the socket down (`shutdown(2)` on a
//! duplicate of the same socket), which makes the blocked call return at once with an error.
//! After that the connection is dead for good: a shut-down socket is never reused.
//!
//! Invariant: at most one request is armed at a time (the transport is used through `&mut`).

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    /// Deadline of the request in flight, if any.
    deadline: Option<Instant>,
    /// Set when the watchdog shut the socket down.
    fired: bool,
    /// Set when the owner goes away.
    quit: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, valid after any panic: recover it from a poisoned lock.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Shuts a socket down when a request armed on it runs past its deadline.
#[derive(Debug)]
pub(super) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog thread for `socket` (a duplicate of the connection's socket).
    pub(super) fn start(socket: UnixStream) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread =
            std::thread::Builder::new().name("vhost-user-watchdog".into()).spawn(move || run(&theirs, &socket))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Runs `request` with the socket shut down if it takes longer than `timeout`. Returns its
    /// result and whether the watchdog fired (then the result is an error caused by the shutdown,
    /// or, if the answer raced the deadline, a success on a connection that is now closed).
    pub(super) fn guard<T>(&self, timeout: Duration, request: impl FnOnce() -> T) -> (T, bool) {
        {
            let mut state = self.shared.lock();
            if state.fired {
                drop(state);
                return (request(), true);
            }
            state.deadline = Some(Instant::now() + timeout);
        }
        self.shared.wake.notify_one();
        let result = request();
        let mut state = self.shared.lock();
        state.deadline = None;
        (result, state.fired)
    }

    /// Whether the watchdog has shut the socket down.
    pub(super) fn fired(&self) -> bool {
        self.shared.lock().fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread only waits on the condition variable: it exits promptly.
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, socket: &UnixStream) {
    let mut state = shared.lock();
    loop {
        if state.quit {
            return;
        }
        match state.deadline {
            None => {
                state = shared.wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    // Breaks the blocked sendmsg/recvmsg out (EPIPE or end of file) and every
                    // later one too.
                    let _ = socket.shutdown(Shutdown::Both);
                    state.fired = true;
                    state.deadline = None;
                    tracing::warn!("vhost-user request timed out: connection shut down");
                } else {
                    state = shared
                        .wake
                        .wait_timeout(state, deadline - now)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn fast_requests_pass_and_a_stuck_one_is_broken_out() {
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let dog = Watchdog::start(ours.try_clone().unwrap()).unwrap();
        let (value, fired) = dog.guard(Duration::from_secs(5), || 7);
        assert_eq!((value, fired), (7, false));

        // Nobody writes to `_theirs`: the read blocks until the watchdog shuts the socket down.
        let started = Instant::now();
        let (read, fired) = dog.guard(Duration::from_millis(100), || ours.read(&mut [0u8; 8]));
        assert!(fired && dog.fired());
        assert_eq!(read.unwrap(), 0, "a shut-down socket reads end of file");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
