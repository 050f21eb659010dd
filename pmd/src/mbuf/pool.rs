//! The mempool: fixed-size elements carved from one DMA region, kept in a shared lock-free store
//! with a cache per thread in front of it.
//!
//! Invariants:
//! - Each element is in exactly one of: the shared store, one thread's cache, an [`Mbuf`].
//! - `available()` = store length + the sum of the published cache lengths. Caches publish their
//!   length after taking from the store and before giving to it, so a concurrent reader can only
//!   under-count what is free, never over-count.
//! - The shared state outlives every element handed out: when the last [`Mempool`] handle drops
//!   while buffers are still out, the state is leaked (with a warning) rather than freed.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;

use super::{Mbuf, MbufHeader, DEFAULT_DATA_ROOM, DEFAULT_HEADROOM};
use crate::error::{Error, Result};
use crate::mem::{DmaRegion, HugePages, IovaAllocator};
use crate::spec::net::NET_HDR_LEN;

/// How to build a [`Mempool`].
#[derive(Clone, Debug)]
pub struct MempoolConfig {
    /// Name (for logs and the memfd).
    pub name: String,
    /// Number of buffers.
    pub count: u32,
    /// Bytes after the headroom.
    pub data_room: u16,
    /// Bytes before the data: a multiple of 64, at least [`DEFAULT_HEADROOM`] (128).
    pub headroom: u16,
    /// Buffers each thread keeps in its cache (0: no cache).
    pub cache_size: u32,
    /// Huge page policy for the backing region.
    pub huge_pages: HugePages,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        Self {
            name: "mbuf-pool".into(),
            count: 8192,
            data_room: DEFAULT_DATA_ROOM,
            headroom: DEFAULT_HEADROOM,
            cache_size: 256,
            huge_pages: HugePages::Preferred,
        }
    }
}

/// A snapshot of a pool's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers in the pool in total.
    pub size: u32,
    /// Buffers free (shared store plus thread caches).
    pub available: u32,
    /// Buffers held by rings and the application.
    pub in_use: u32,
    /// Allocations that could not be served.
    pub alloc_failures: u64,
}

/// An element pointer in the shared store.
struct Elem(NonNull<MbufHeader>);
// SAFETY: elements in the store are owned by nobody; whoever pops one becomes its sole owner.
unsafe impl Send for Elem {}

pub(crate) struct PoolShared {
    name: String,
    region: Arc<DmaRegion>,
    store: ArrayQueue<Elem>,
    count: u32,
    headroom: u16,
    /// Headroom + data room of every element.
    buf_len: u32,
    cache_size: usize,
    alloc_failures: AtomicU64,
    cache_lens: Mutex<Vec<Arc<AtomicUsize>>>,
}

// SAFETY: the raw element pointers in `store` are only handed out by pop (unique), the counters
// are atomics, and the rest is immutable after construction.
unsafe impl Send for PoolShared {}
// SAFETY: as above.
unsafe impl Sync for PoolShared {}

/// A pool of DMA buffers. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct Mempool {
    handle: Arc<Handle>,
}

/// The last handle checks that every buffer came back before the pool may be freed.
struct Handle {
    shared: Arc<PoolShared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let stats = self.shared.stats();
        if stats.in_use > 0 {
            tracing::warn!(
                "mempool {:?} dropped with {} buffers still in use: leaking its memory so they stay valid",
                self.shared.name,
                stats.in_use
            );
            std::mem::forget(self.shared.clone());
        }
    }
}

impl Mempool {
    /// Creates a pool of `config.count` buffers in a new DMA region whose IOVA comes from `iova`.
    pub fn new(config: &MempoolConfig, iova: &IovaAllocator) -> Result<Mempool> {
        if config.count == 0 {
            return Err(Error::InvalidConfig(format!("mempool {:?}: count must be at least 1", config.name)));
        }
        if config.headroom < DEFAULT_HEADROOM || config.headroom % 64 != 0 {
            return Err(Error::InvalidConfig(format!(
                "mempool {:?}: headroom {} must be a multiple of 64 and at least {DEFAULT_HEADROOM} (room for the \
                 {NET_HDR_LEN}-byte virtio-net header and encapsulations)",
                config.name, config.headroom
            )));
        }
        let buf_len = config.headroom as u32 + config.data_room as u32;
        if config.data_room < 64 || buf_len > u16::MAX as u32 {
            return Err(Error::InvalidConfig(format!(
                "mempool {:?}: data room {} must be 64..{} bytes",
                config.name,
                config.data_room,
                u16::MAX - config.headroom
            )));
        }
        let elt_size = (std::mem::size_of::<MbufHeader>() + buf_len as usize).next_multiple_of(64);
        let region = Arc::new(DmaRegion::new(&config.name, elt_size * config.count as usize, config.huge_pages, iova)?);
        let shared = Arc::new(PoolShared {
            name: config.name.clone(),
            store: ArrayQueue::new(config.count as usize),
            count: config.count,
            headroom: config.headroom,
            buf_len,
            cache_size: config.cache_size as usize,
            alloc_failures: AtomicU64::new(0),
            cache_lens: Mutex::new(Vec::new()),
            region,
        });
        let pool_ptr = NonNull::from(&*shared);
        for i in 0..config.count as usize {
            let offset = i * elt_size;
            // SAFETY: `offset + elt_size <= region.len()`, the region is 64-byte aligned (page
            // aligned) and `elt_size` is a multiple of 64, so the header is aligned and in bounds;
            // nobody else references the fresh region.
            let hdr = unsafe {
                let hdr = shared.region.as_ptr().add(offset).cast::<MbufHeader>();
                hdr.write(MbufHeader {
                    buf_iova: shared.region.iova() + (offset + std::mem::size_of::<MbufHeader>()) as u64,
                    pool: pool_ptr,
                    buf_len,
                    data_len: 0,
                    data_off: config.headroom,
                    port: 0,
                    rss_hash: 0,
                    ol_flags: 0,
                    user_data: 0,
                });
                NonNull::new_unchecked(hdr)
            };
            // Cannot fail: the store holds exactly `count` elements.
            let _ = shared.store.push(Elem(hdr));
        }
        Ok(Mempool { handle: Arc::new(Handle { shared }) })
    }

    fn shared(&self) -> &Arc<PoolShared> {
        &self.handle.shared
    }

    /// The DMA region the buffers live in (to map it for a device).
    pub fn region(&self) -> &Arc<DmaRegion> {
        &self.shared().region
    }

    /// The configured headroom.
    pub fn headroom(&self) -> u16 {
        self.shared().headroom
    }

    /// Counters: size, free, in use, allocation failures.
    pub fn stats(&self) -> PoolStats {
        self.shared().stats()
    }

    /// One empty buffer, or `None` (counted as an allocation failure) when the pool is empty.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        let mut out = None;
        self.alloc_bulk_with(1, |m| out = Some(m));
        out
    }

    /// Hands `n` empty buffers to `sink`, or none at all (counted as one allocation failure)
    /// when fewer than `n` are free. Returns whether it did.
    #[inline]
    pub fn alloc_bulk_with(&self, n: usize, mut sink: impl FnMut(Mbuf)) -> bool {
        let headroom = self.shared().headroom;
        self.shared().take_bulk(n, |elems| {
            for elem in elems {
                // SAFETY: taken from this thread's cache or the store, so owned by nobody else.
                let mut mbuf = unsafe { Mbuf::from_raw(elem.0) };
                mbuf.reset(headroom);
                sink(mbuf);
            }
        })
    }

    /// Appends `n` empty buffers to `out`, or none; see [`Mempool::alloc_bulk_with`]. `out` should
    /// have the capacity reserved up front so that this does not allocate.
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        self.alloc_bulk_with(n, |m| out.push(m))
    }

    /// Appends `n` buffers to `out`, or none (counted as one allocation failure), without
    /// resetting them: their data window is whatever their last user left (still within the
    /// buffer). For receive rings, which set the whole window when a frame arrives.
    #[inline]
    pub(crate) fn alloc_bulk_unreset(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        self.shared().take_bulk(n, |elems| {
            // SAFETY: taken from this thread's cache or the store, so owned by nobody else.
            out.extend(elems.map(|elem| unsafe { Mbuf::from_raw(elem.0) }));
        })
    }

    /// Bytes after the headroom in every buffer.
    pub fn data_room(&self) -> u32 {
        self.shared().buf_len - self.shared().headroom as u32
    }
}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool").field("name", &self.shared().name).field("stats", &self.stats()).finish()
    }
}

impl PoolShared {
    fn stats(&self) -> PoolStats {
        let cached: usize = self
            .cache_lens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|len| len.load(Ordering::Relaxed))
            .sum();
        let available = (self.store.len() + cached).min(self.count as usize) as u32;
        PoolStats {
            size: self.count,
            available,
            in_use: self.count - available,
            alloc_failures: self.alloc_failures.load(Ordering::Relaxed),
        }
    }

    /// Moves up to `n` elements from the store into `cache`.
    #[inline]
    fn refill(&self, cache: &mut LocalCache, n: usize) {
        for _ in 0..n {
            match self.store.pop() {
                Some(elem) => cache.objs.push(elem),
                None => break,
            }
        }
        cache.publish();
    }

    /// Moves elements from `cache` to the store until it holds `keep`.
    #[inline]
    fn flush(&self, cache: &mut LocalCache, keep: usize) {
        let drained = cache.objs.len().saturating_sub(keep);
        let start = cache.objs.len() - drained;
        // Publish the shorter length first: readers may under-count, never over-count.
        cache.len.store(start, Ordering::Relaxed);
        for elem in cache.objs.drain(start..) {
            self.give_back(elem);
        }
    }

    fn give_back(&self, elem: Elem) {
        if self.store.push(elem).is_err() {
            // Only a double free could overflow the store, and `Mbuf` ownership rules that out.
            tracing::error!("mempool {:?}: store overflow, an element was returned twice", self.name);
        }
    }

    /// Hands `n` elements to `take`, from this thread's cache (refilled from the store when it
    /// holds fewer), or none at all, counted as one allocation failure, when fewer than `n` are
    /// free. Returns whether it did.
    #[inline(always)]
    fn take_bulk(&self, n: usize, mut take: impl FnMut(std::vec::Drain<'_, Elem>)) -> bool {
        let ok = with_cache(self, |cache| {
            if cache.objs.len() < n {
                self.refill(cache, n + self.cache_size - cache.objs.len());
                if cache.objs.len() < n {
                    return false;
                }
            }
            let start = cache.objs.len() - n;
            take(cache.objs.drain(start..));
            cache.publish();
            true
        })
        .unwrap_or_else(|| self.take_uncached(n, &mut take));
        if !ok {
            self.alloc_failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// The path for a thread whose caches are gone (it is exiting) or for pools without a cache.
    #[cold]
    #[inline(never)]
    fn take_uncached(&self, n: usize, take: &mut impl FnMut(std::vec::Drain<'_, Elem>)) -> bool {
        let mut taken = Vec::with_capacity(n);
        while taken.len() < n {
            match self.store.pop() {
                Some(elem) => taken.push(elem),
                None => {
                    taken.into_iter().for_each(|e| self.give_back(e));
                    return false;
                }
            }
        }
        take(taken.drain(..));
        true
    }

    /// Returns one element (the `Drop` of [`Mbuf`]).
    #[inline]
    pub(crate) fn put_one(hdr: NonNull<MbufHeader>) {
        recycle(|recycler| recycler.put_raw(hdr));
    }
}

/// Returns every mbuf in `mbufs` to its pool, looking this thread's caches up once for the whole
/// batch (`rte_pktmbuf_free_bulk`). Leaves `mbufs` empty, its capacity kept.
pub fn free_bulk(mbufs: &mut Vec<Mbuf>) {
    recycle(|recycler| mbufs.drain(..).for_each(|m| recycler.put(m)));
}

/// Where [`Recycler`] put the last buffer.
#[derive(Clone, Copy)]
struct LastPool {
    pool: *const PoolShared,
    index: usize,
    limit: usize,
}

/// Returns mbufs to their pools' caches on this thread, remembering the last pool's cache so
/// that a run of buffers from one pool costs one look-up.
pub(crate) struct Recycler<'a> {
    caches: Option<&'a mut Vec<LocalCache>>,
    /// The last buffer's pool, the index of its cache in `caches` and the length the cache may
    /// grow to before it flushes.
    last: Option<LastPool>,
}

impl Recycler<'_> {
    /// Takes `mbuf` back into its pool.
    #[inline(always)]
    pub fn put(&mut self, mbuf: Mbuf) {
        self.put_raw(mbuf.into_raw());
    }

    #[inline(always)]
    fn put_raw(&mut self, hdr: NonNull<MbufHeader>) {
        // SAFETY: every header's `pool` points to the live shared state of its pool (it outlives
        // its elements, see the module invariants).
        let shared = unsafe { hdr.as_ref().pool.as_ref() };
        // The common case: the same pool as the last buffer, whose cache has room (`last` is
        // only set while `caches` is there).
        if let (Some(last), Some(caches)) = (self.last, self.caches.as_deref_mut()) {
            if std::ptr::eq(last.pool, shared) {
                let cache = &mut caches[last.index];
                if cache.objs.len() < last.limit {
                    cache.objs.push(Elem(hdr));
                    return;
                }
            }
        }
        self.put_slow(shared, hdr);
    }

    /// Another pool than the last buffer's, a full cache, or no cache.
    #[inline(never)]
    fn put_slow(&mut self, shared: &PoolShared, hdr: NonNull<MbufHeader>) {
        let Some(caches) = self.caches.as_deref_mut().filter(|_| shared.cache_size > 0) else {
            shared.give_back(Elem(hdr));
            return;
        };
        let index = match self.last {
            Some(last) if std::ptr::eq(last.pool, shared) => last.index,
            _ => {
                let index = cache_index(caches, shared);
                self.last = Some(LastPool { pool: shared, index, limit: 2 * shared.cache_size });
                index
            }
        };
        let cache = &mut caches[index];
        if cache.objs.len() >= 2 * shared.cache_size {
            shared.flush(cache, shared.cache_size);
        }
        cache.objs.push(Elem(hdr));
    }
}

impl Drop for Recycler<'_> {
    /// Publishes the cache lengths once for the whole batch (until then the pool statistics
    /// under-count what is free, which is the safe direction).
    fn drop(&mut self) {
        if let Some(caches) = self.caches.as_deref() {
            caches.iter().for_each(LocalCache::publish);
        }
    }
}

/// Runs `f` with a [`Recycler`] over this thread's caches (or, while they are borrowed or torn
/// down, one that gives buffers straight back to their pools' stores).
#[inline]
pub(crate) fn recycle<R>(mut f: impl FnMut(&mut Recycler<'_>) -> R) -> R {
    let result = CACHES.try_with(|caches| {
        let mut borrowed = caches.try_borrow_mut().ok();
        let mut recycler = Recycler { caches: borrowed.as_deref_mut(), last: None };
        let result = f(&mut recycler);
        drop(recycler);
        result
    });
    // `try_with` fails only before calling its closure, so `f` runs exactly once.
    result.unwrap_or_else(|_| f(&mut Recycler { caches: None, last: None }))
}

/// The index of this thread's cache for `shared` in `caches`, creating it on first use.
#[inline]
fn cache_index(caches: &mut Vec<LocalCache>, shared: &PoolShared) -> usize {
    match caches.iter().position(|c| std::ptr::eq(Arc::as_ptr(&c.pool), shared)) {
        Some(index) => index,
        None => {
            caches.push(LocalCache::new(shared));
            caches.len() - 1
        }
    }
}

/// A thread's cache for one pool.
struct LocalCache {
    pool: Arc<PoolShared>,
    objs: Vec<Elem>,
    /// `objs.len()` as other threads see it, for [`PoolStats`].
    len: Arc<AtomicUsize>,
}

impl LocalCache {
    #[inline(always)]
    fn publish(&self) {
        self.len.store(self.objs.len(), Ordering::Relaxed);
    }
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        pool.flush(self, 0);
        let mut lens = self.pool.cache_lens.lock().unwrap_or_else(|p| p.into_inner());
        lens.retain(|len| !Arc::ptr_eq(len, &self.len));
    }
}

thread_local! {
    /// This thread's caches, one per pool it has used (usually one or two).
    static CACHES: RefCell<Vec<LocalCache>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cache for `shared`, creating it on first use. `None` when the pool
/// has no cache or the thread's caches are being torn down.
#[inline]
fn with_cache<R>(shared: &PoolShared, f: impl FnOnce(&mut LocalCache) -> R) -> Option<R> {
    if shared.cache_size == 0 {
        return None;
    }
    CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let index = cache_index(&mut caches, shared);
            Some(f(&mut caches[index]))
        })
        .ok()
        .flatten()
}

impl LocalCache {
    #[cold]
    fn new(shared: &PoolShared) -> LocalCache {
        // SAFETY: `PoolShared` is only ever created inside an `Arc` (in `Mempool::new`), which
        // is alive because the caller holds an element or a handle of the pool; taking another
        // strong count and rebuilding an `Arc` from the same pointer is then sound.
        let pool = unsafe {
            let ptr: *const PoolShared = shared;
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        };
        let len = Arc::new(AtomicUsize::new(0));
        pool.cache_lens.lock().unwrap_or_else(|p| p.into_inner()).push(len.clone());
        LocalCache { objs: Vec::with_capacity(3 * pool.cache_size + 64), pool, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(count: u32, cache_size: u32) -> Mempool {
        let config = MempoolConfig { count, cache_size, huge_pages: HugePages::Never, ..Default::default() };
        Mempool::new(&config, &IovaAllocator::identity()).unwrap()
    }

    #[test]
    fn buffers_come_back_on_drop_and_exhaustion_is_counted() {
        for cache in [0, 8] {
            let pool = pool(64, cache);
            let mut held = Vec::with_capacity(64);
            assert!(pool.alloc_bulk(&mut held, 60));
            assert_eq!(pool.stats().in_use, 60);
            assert!(!pool.alloc_bulk(&mut held, 5), "only 4 left");
            assert_eq!(held.len(), 60, "all or nothing");
            assert_eq!(pool.stats().alloc_failures, 1);
            held.truncate(10);
            assert_eq!(pool.stats().in_use, 10);
            drop(held);
            assert_eq!(pool.stats(), PoolStats { size: 64, available: 64, in_use: 0, alloc_failures: 1 });
        }
    }

    #[test]
    fn data_window_and_iova() {
        let pool = pool(4, 0);
        let mut m = pool.alloc().unwrap();
        assert_eq!((m.len(), m.headroom(), m.tailroom()), (0, 128, 2048));
        m.append(100).unwrap().fill(0xab);
        m.prepend(12).unwrap().fill(0);
        assert_eq!(m.len(), 112);
        assert_eq!(m.data_iova(), m.buf_iova() + 116);
        assert!(pool.region().contains(m.buf_ptr(), m.capacity()));
        assert_eq!(pool.region().iova_of(m.buf_ptr()), m.buf_iova());
        assert!(m.adj(12));
        assert!(m.data().iter().all(|&b| b == 0xab));
        assert!(m.append(4000).is_none());
        assert!(m.prepend(4000).is_none());
        m.truncate(10);
        assert_eq!(m.len(), 10);
    }

    #[test]
    fn buffers_cross_threads_and_caches_flush_at_thread_exit() {
        let pool = pool(1024, 32);
        let (tx, rx) = std::sync::mpsc::channel::<Mbuf>();
        let producer = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    let mut m = loop {
                        if let Some(m) = pool.alloc() {
                            break m;
                        }
                        std::thread::yield_now();
                    };
                    m.append(1).unwrap()[0] = 7;
                    tx.send(m).unwrap();
                }
            })
        };
        let consumer = std::thread::spawn(move || rx.iter().map(|m| m.data()[0] as usize).sum::<usize>());
        producer.join().unwrap();
        assert_eq!(consumer.join().unwrap(), 70_000);
        assert_eq!(pool.stats().in_use, 0);
    }
}
