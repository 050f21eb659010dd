//! Lcores: one polling thread per core, each owning the queues it polls (run to completion, as
//! DPDK's lcores), until a stop flag is set.
//!
//! [`launch`] starts one thread per [`LcoreWork`], pinned to its core when it names one
//! (`core_affinity`), and hands it its work (queues, streams: whatever the program's loop
//! needs, moved in, so no queue is ever shared). The thread's body gets an [`Lcore`]: its index,
//! the stop flag, [`Lcore::poll`] (the run-to-completion loop, with its burst buffer allocated
//! before the loop) and [`Lcore::wait_for_all`] (a meeting point of every lcore, e.g. so that no
//! device is reset while another lcore still drains it; an lcore that panics or returns counts
//! as arrived, so the others never wait forever).
//!
//! [`Lcores`] is what the main thread holds: it waits for every lcore to be polling, notices one
//! that stopped early, supervises them ([`Lcores::supervise`]: a callback once per period until
//! a stop, a duration, an lcore's end or the callback's failure), and joins them (setting the
//! stop flag first), getting back what each body returned (its queues, its totals).
//!
//! [`spread`] and [`spread_at_most`] plan which lcore owns which items, and [`distribute`] hands
//! them out along that plan; a [`Lane`] (one receive
//! queue into one transmit queue, with DPDK l2fwd's MAC rewrite) is the usual item.
//!
//! [`STOP`] with [`install_stop_handler`] is the flag SIGINT and SIGTERM set. [`LcoreOptions`]
//! is what a program takes for its lcores (cores, burst, idle sleep) on its command line and in
//! its configuration file.

mod lane;
mod options;
mod signal;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use lane::{Lane, LaneCounters};
pub use options::{LcoreOptions, MAX_BURST, MAX_IDLE_SLEEP_US};
pub use signal::{install_stop_handler, STOP};

use crate::error::{Error, Result};
use crate::mbuf::Mbuf;

/// Consecutive empty rounds before an lcore with an idle sleep may sleep ([`Lcore::poll`]).
pub const IDLE_ROUNDS: u32 = 128;

/// What one lcore runs: its core (none: not pinned) and its work.
#[derive(Debug)]
pub struct LcoreWork<W> {
    /// The core to pin the thread to.
    pub core: Option<usize>,
    /// What the thread owns (its queues and their state).
    pub work: W,
}

/// What every lcore shares.
#[derive(Debug)]
struct Shared {
    stop: &'static AtomicBool,
    started: AtomicUsize,
    arrived: AtomicUsize,
    count: usize,
}

/// An lcore's view of itself, passed to its body.
#[derive(Debug)]
pub struct Lcore {
    index: usize,
    core: Option<usize>,
    shared: Arc<Shared>,
    arrived: bool,
}

impl Lcore {
    /// The lcore's number, from 0 in [`launch`] order.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The core it is pinned to (none: not pinned, also when pinning failed).
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// Whether a stop was asked for (a relaxed load: cheap enough for every round).
    #[inline]
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// The stop flag itself, for loops that want to load it directly.
    pub fn stop_flag(&self) -> &'static AtomicBool {
        self.shared.stop
    }

    /// Asks every lcore (and the main thread) to stop.
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Runs `round` until a stop is asked for. `round` gets the lcore's burst buffer (empty,
    /// with room for `burst` mbufs, allocated here once, before the loop) and returns the
    /// frames it moved; it must leave the buffer empty. With `idle_sleep`, after [`IDLE_ROUNDS`]
    /// rounds that moved nothing the lcore sleeps that long between rounds until one moves a
    /// frame (a system call, but only while there is no traffic: it leaves the CPU to others).
    pub fn poll(&self, burst: usize, idle_sleep: Option<Duration>, mut round: impl FnMut(&mut Vec<Mbuf>) -> usize) {
        let mut pkts: Vec<Mbuf> = Vec::with_capacity(burst);
        let mut empty_rounds = 0u32;
        while !self.stopping() {
            let moved = round(&mut pkts);
            debug_assert!(pkts.is_empty(), "a round must leave the burst buffer empty");
            if let Some(pause) = idle_sleep {
                if moved > 0 {
                    empty_rounds = 0;
                } else if empty_rounds < IDLE_ROUNDS {
                    empty_rounds += 1;
                } else {
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// Waits until every lcore has called this (or returned, or panicked). Once per lcore: a
    /// second call returns at once.
    pub fn wait_for_all(&mut self) {
        self.arrive();
        while self.shared.arrived.load(Ordering::Acquire) < self.shared.count {
            std::thread::yield_now();
        }
    }

    fn arrive(&mut self) {
        if !std::mem::replace(&mut self.arrived, true) {
            self.shared.arrived.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Lcore {
    fn drop(&mut self) {
        // Returned or unwinding: never keep the others waiting; a panic stops them all.
        if std::thread::panicking() {
            self.request_stop();
        }
        self.arrive();
    }
}

/// One running lcore, as the main thread sees it.
#[derive(Debug)]
struct Thread<R> {
    core: Option<usize>,
    handle: JoinHandle<R>,
}

/// The running lcores.
#[derive(Debug)]
pub struct Lcores<R> {
    threads: Vec<Thread<R>>,
    shared: Arc<Shared>,
}

/// Why [`Lcores::supervise`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Supervised<E> {
    /// The stop flag was set (a signal, or [`Lcore::request_stop`]).
    Stopped,
    /// The duration was reached.
    DurationReached,
    /// This lcore's body returned or panicked while no stop was asked for.
    LcoreEnded(usize),
    /// The period's callback failed.
    Failed(E),
}

/// How often [`Lcores::supervise`] looks at the stop flag, the clock and the lcores.
const SUPERVISE_TICK: Duration = Duration::from_millis(20);

/// An lcore that panicked; [`Lcores::join`] reports it in its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lcore {index} panicked")]
pub struct LcorePanicked {
    /// The lcore's number.
    pub index: usize,
}

/// Starts one thread per entry of `work`, named `{name}-{index}`, each running `body` on its
/// [`Lcore`] and its work until `body` returns; `stop` is the flag they watch (usually [`STOP`]).
/// A core that does not exist is logged and its lcore runs unpinned. If a thread cannot be
/// started, the ones already running are stopped and joined, and their work dropped.
pub fn launch<W, R, F>(name: &str, work: Vec<LcoreWork<W>>, stop: &'static AtomicBool, body: F) -> Result<Lcores<R>>
where
    W: Send + 'static,
    R: Send + 'static,
    F: Fn(&mut Lcore, W) -> R + Send + Sync + 'static,
{
    let available = available_cores();
    let shared =
        Arc::new(Shared { stop, started: AtomicUsize::new(0), arrived: AtomicUsize::new(0), count: work.len() });
    let body = Arc::new(body);
    let mut lcores = Lcores { threads: Vec::with_capacity(work.len()), shared: shared.clone() };
    for (index, LcoreWork { core, work }) in work.into_iter().enumerate() {
        let core = core.filter(|c| {
            let exists = available.contains(c);
            if !exists {
                tracing::warn!("core {c} does not exist (cores here: {available:?}); lcore {index} runs unpinned");
            }
            exists
        });
        let (mine, body) = (shared.clone(), body.clone());
        let spawned = std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
            let mut pinned = core;
            if let Some(id) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                    tracing::warn!("cannot pin lcore {index} to core {id}; it runs unpinned");
                    pinned = None;
                }
            }
            let mut lcore = Lcore { index, core: pinned, shared: mine, arrived: false };
            lcore.shared.started.fetch_add(1, Ordering::SeqCst);
            body(&mut lcore, work)
        });
        match spawned {
            Ok(handle) => lcores.threads.push(Thread { core, handle }),
            Err(source) => {
                // The other lcores count this one as arrived: it never will.
                shared.arrived.fetch_add(1, Ordering::AcqRel);
                drop(lcores.join());
                return Err(Error::Io { what: format!("starting lcore {index} ({name}-{index})"), source });
            }
        }
    }
    Ok(lcores)
}

impl<R> Lcores<R> {
    /// Number of lcores.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// The core of each lcore (none: not pinned).
    pub fn cores(&self) -> Vec<Option<usize>> {
        self.threads.iter().map(|t| t.core).collect()
    }

    /// Waits until every lcore runs its body, or a stop is asked for; returns whether all run.
    pub fn wait_started(&self) -> bool {
        while self.shared.started.load(Ordering::SeqCst) < self.threads.len() {
            if self.shared.stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The first lcore whose body returned (or panicked) while the others run: a failure unless
    /// a stop was asked for.
    pub fn finished_early(&self) -> Option<usize> {
        self.threads.iter().position(|t| t.handle.is_finished())
    }

    /// Watches the lcores from the main thread: calls `each_period` with the time since the start
    /// once every `period` (`Duration::MAX`: never), until the stop flag is set, `duration` (if
    /// any) has passed, an lcore ended without a stop, or `each_period` failed; says which. The
    /// lcores keep running: then [`join`](Self::join) them.
    pub fn supervise<E>(
        &self,
        period: Duration,
        duration: Option<Duration>,
        mut each_period: impl FnMut(Duration) -> std::result::Result<(), E>,
    ) -> Supervised<E> {
        let begin = std::time::Instant::now();
        let mut next = period;
        loop {
            std::thread::sleep(SUPERVISE_TICK.min(period));
            if self.shared.stop.load(Ordering::SeqCst) {
                return Supervised::Stopped;
            }
            let elapsed = begin.elapsed();
            if duration.is_some_and(|d| elapsed >= d) {
                return Supervised::DurationReached;
            }
            if let Some(index) = self.finished_early() {
                return Supervised::LcoreEnded(index);
            }
            if elapsed >= next {
                next = elapsed.saturating_add(period);
                if let Err(e) = each_period(elapsed) {
                    return Supervised::Failed(e);
                }
            }
        }
    }

    /// Asks every lcore to stop, waits for them, and returns what each body returned, in lcore
    /// order.
    pub fn join(self) -> Vec<std::result::Result<R, LcorePanicked>> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Waits for every lcore's body to return by itself (bodies that end on their own, e.g.
    /// after a duration; the stop flag still ends them early), and returns what each returned.
    pub fn wait(self) -> Vec<std::result::Result<R, LcorePanicked>> {
        self.threads
            .into_iter()
            .enumerate()
            .map(|(index, t)| t.handle.join().map_err(|_| LcorePanicked { index }))
            .collect()
    }
}

/// The cores this process may run on.
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
}

/// Spreads `items` items over the lcores of `cores` (one lcore per listed core, at most one per
/// item; none listed: one unpinned lcore), round-robin. Returns, per lcore, its core and its
/// item indices.
pub fn spread(items: usize, cores: &[usize]) -> Vec<(Option<usize>, Vec<usize>)> {
    let lcores: Vec<Option<usize>> =
        if cores.is_empty() { vec![None] } else { cores.iter().take(items.max(1)).map(|c| Some(*c)).collect() };
    let mut plan: Vec<(Option<usize>, Vec<usize>)> = lcores.into_iter().map(|c| (c, Vec::new())).collect();
    let n = plan.len();
    for item in 0..items {
        plan[item % n].1.push(item);
    }
    plan
}

/// Gives `items` items to lcores `per_lcore` at a time, in order (DPDK l2fwd's `-q`, queues per
/// lcore): lcore `i` gets items `i * per_lcore ..` and core `cores[i]` (not pinned beyond the
/// listed cores, or when none are listed). Returns, per lcore, its core and its item indices.
pub fn spread_at_most(items: usize, cores: &[usize], per_lcore: usize) -> Vec<(Option<usize>, Vec<usize>)> {
    let per_lcore = per_lcore.max(1);
    (0..items.div_ceil(per_lcore))
        .map(|i| (cores.get(i).copied(), (i * per_lcore..items.min((i + 1) * per_lcore)).collect()))
        .collect()
}

/// Hands `items` to lcores: `per_lcore` at a time in order ([`spread_at_most`], DPDK l2fwd's
/// `-q`), or without it spread evenly over `cores` ([`spread`]); each lcore's work is its items.
pub fn distribute<T>(items: Vec<T>, cores: &[usize], per_lcore: Option<usize>) -> Vec<LcoreWork<Vec<T>>> {
    let plan = match per_lcore {
        Some(n) => spread_at_most(items.len(), cores, n),
        None => spread(items.len(), cores),
    };
    let mut items: Vec<Option<T>> = items.into_iter().map(Some).collect();
    plan.into_iter()
        .map(|(core, indices)| LcoreWork { core, work: indices.into_iter().filter_map(|i| items[i].take()).collect() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static SUPERVISED_STOP: AtomicBool = AtomicBool::new(false);

    #[test]
    fn supervision_ends_on_the_duration_a_failure_an_lcore_ending_and_the_stop_flag() {
        let work = |n: u64| vec![LcoreWork { core: None, work: n }];
        // Runs until stopped; one lcore that ends by itself after 50 ms.
        let body = |lcore: &mut Lcore, ms: u64| {
            let begin = std::time::Instant::now();
            while !lcore.stopping() && (ms == 0 || begin.elapsed() < Duration::from_millis(ms)) {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let lcores = launch("supervised", work(0), &SUPERVISED_STOP, body).unwrap();
        let mut periods = Vec::new();
        let period = Duration::from_millis(30);
        let why = lcores.supervise(period, Some(Duration::from_millis(200)), |t| {
            periods.push(t);
            Ok::<(), ()>(())
        });
        assert_eq!(why, Supervised::DurationReached);
        assert!((4..=7).contains(&periods.len()), "{periods:?}");
        assert!(periods.windows(2).all(|w| w[1] - w[0] >= period), "{periods:?}");
        assert_eq!(lcores.supervise(period, None, |_| Err("port 0 failed")), Supervised::Failed("port 0 failed"));
        SUPERVISED_STOP.store(true, Ordering::SeqCst);
        assert_eq!(lcores.supervise(period, None, |_| Ok::<(), ()>(())), Supervised::Stopped);
        assert_eq!(lcores.join().len(), 1);
        SUPERVISED_STOP.store(false, Ordering::SeqCst);
        let lcores = launch("supervised", work(50), &SUPERVISED_STOP, body).unwrap();
        assert_eq!(lcores.supervise(Duration::from_secs(1), None, |_| Ok::<(), ()>(())), Supervised::LcoreEnded(0));
        assert!(lcores.join()[0].is_ok());
    }

    #[test]
    fn at_most_n_items_per_lcore_in_order() {
        assert_eq!(spread_at_most(5, &[3, 1], 2), [(Some(3), vec![0, 1]), (Some(1), vec![2, 3]), (None, vec![4])]);
        assert_eq!(spread_at_most(2, &[], 4), [(None, vec![0, 1])]);
        assert!(spread_at_most(0, &[1], 1).is_empty());
        let work = |w: Vec<LcoreWork<Vec<char>>>| w.into_iter().map(|l| (l.core, l.work)).collect::<Vec<_>>();
        let items = || vec!['a', 'b', 'c'];
        assert_eq!(work(distribute(items(), &[3, 1], Some(2))), [(Some(3), vec!['a', 'b']), (Some(1), vec!['c'])]);
        assert_eq!(work(distribute(items(), &[3, 1], None)), [(Some(3), vec!['a', 'c']), (Some(1), vec!['b'])]);
    }

    fn flag() -> &'static AtomicBool {
        Box::leak(Box::new(AtomicBool::new(false)))
    }

    #[test]
    fn every_lcore_runs_its_work_until_stopped_and_hands_it_back() {
        let stop = flag();
        let work = (0..3).map(|i| LcoreWork { core: None, work: vec![i; 4] }).collect();
        let lcores = launch("t", work, stop, |lcore, mut w: Vec<i32>| {
            let mut rounds = 0u64;
            lcore.poll(32, None, |pkts| {
                assert!(pkts.is_empty() && pkts.capacity() >= 32);
                rounds += 1;
                0
            });
            w.push(lcore.index() as i32);
            (w, rounds)
        })
        .unwrap();
        assert!(lcores.wait_started());
        assert_eq!(lcores.len(), 3);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(lcores.finished_early(), None);
        let back = lcores.join();
        for (i, r) in back.into_iter().enumerate() {
            let (w, rounds) = r.unwrap();
            assert_eq!(w, vec![i as i32, i as i32, i as i32, i as i32, i as i32]);
            assert!(rounds > 0);
        }
    }

    #[test]
    fn waiting_for_all_survives_a_panicking_lcore_and_the_panic_is_reported() {
        let stop = flag();
        let work = (0..3).map(|i| LcoreWork { core: None, work: i }).collect();
        let lcores = launch("p", work, stop, |lcore, i: usize| {
            if i == 1 {
                panic!("lcore 1 fails");
            }
            lcore.wait_for_all();
            i
        })
        .unwrap();
        let back = lcores.join();
        assert_eq!(back[0], Ok(0));
        assert_eq!(back[1], Err(LcorePanicked { index: 1 }));
        assert_eq!(back[2], Ok(2));
    }

    #[test]
    fn a_missing_core_runs_unpinned_and_an_early_return_is_seen() {
        let stop = flag();
        let lcores =
            launch("m", vec![LcoreWork { core: Some(100_000), work: () }], stop, |lcore, ()| lcore.core()).unwrap();
        assert_eq!(lcores.cores(), vec![None]);
        while lcores.finished_early().is_none() {
            std::thread::yield_now();
        }
        assert_eq!(lcores.join(), vec![Ok(None)]);
    }

    #[test]
    fn waiting_lets_bodies_end_by_themselves() {
        let stop = flag();
        let work = (0..2).map(|i| LcoreWork { core: None, work: i }).collect();
        let lcores = launch("w", work, stop, |_, i: u32| {
            std::thread::sleep(Duration::from_millis(10));
            i * 2
        })
        .unwrap();
        assert_eq!(lcores.wait(), vec![Ok(0), Ok(2)]);
        assert!(!stop.load(Ordering::SeqCst), "waiting does not ask for a stop");
    }

    #[test]
    fn items_spread_round_robin_over_the_cores() {
        assert_eq!(spread(2, &[]), vec![(None, vec![0, 1])]);
        assert_eq!(spread(2, &[1]), vec![(Some(1), vec![0, 1])]);
        assert_eq!(spread(2, &[0, 1]), vec![(Some(0), vec![0]), (Some(1), vec![1])]);
        assert_eq!(spread(2, &[3, 2, 1]), vec![(Some(3), vec![0]), (Some(2), vec![1])], "one lcore per item at most");
        assert_eq!(spread(5, &[0, 1]), vec![(Some(0), vec![0, 2, 4]), (Some(1), vec![1, 3])]);
    }
}
