//! The mempool: fixed-size buffers carved from one DMA region, their headers in a CPU-private
//! table, kept in a shared lock-free store with a cache per thread in front of it.
//!
//! Invariants:
//! - Each element is in exactly one of: the shared store, one thread's cache, an [`Mbuf`] (held
//!   by the application or a ring).
//! - Lifetime is exact, never a snapshot: the shared state ([`PoolShared`]: region, header table,
//!   store) is reference counted ([`PoolRef`]), and its holders are the [`Mempool`] handles, the
//!   thread caches, and, together, the elements out of the store. `outstanding` counts the
//!   elements out of the store; the taker that moves it from 0 takes one reference for all of
//!   them and the giver that brings it back to 0 releases it. So the region is unmapped only
//!   when no handle, no cache and no element outside the store is left: an mbuf always points to
//!   live memory. A leaked mbuf leaks its pool, never the other way round.
//! - No code outside this module runs while a thread's caches are borrowed.
//! - [`PoolStats`] are a snapshot for monitoring: exact while the pool is quiescent, and
//!   lifetime never depends on them.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
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

/// A snapshot of a pool's counters (exact while no thread is allocating or freeing).
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

/// An element in the store or a cache: the pointer to its header.
struct Elem(NonNull<MbufHeader>);
// SAFETY: elements in the store are owned by nobody; whoever pops one becomes its sole owner.
unsafe impl Send for Elem {}

/// The pool's metadata: one [`MbufHeader`] per element, in an anonymous private mapping that is
/// never given to a device (only [`DmaRegion`]s are mapped or shared).
///
/// Invariant: `ptr..ptr + len` headers are mapped read-write for the life of the value.
struct HeaderTable {
    ptr: NonNull<MbufHeader>,
    len: usize,
    bytes: usize,
}

impl HeaderTable {
    /// Maps room for `len` headers (zeroed; the caller writes every one before use).
    fn new(name: &str, len: usize) -> Result<HeaderTable> {
        let bytes = (len * std::mem::size_of::<MbufHeader>()).next_multiple_of(4096);
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Mmap { len: bytes, source: std::io::Error::last_os_error() });
        }
        // Transparent huge pages where the kernel gives them: a large pool's headers then take
        // few TLB entries, as they did when they shared the buffers' huge pages. Best effort.
        // SAFETY: advice on the mapping just made.
        if unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) } != 0 {
            tracing::debug!("mempool {name:?}: no transparent huge pages for the header table");
        }
        let ptr = NonNull::new(ptr.cast())
            .ok_or(Error::Mmap { len: bytes, source: std::io::ErrorKind::InvalidData.into() })?;
        Ok(HeaderTable { ptr, len, bytes })
    }

    /// The header of element `i`.
    fn header(&self, i: usize) -> NonNull<MbufHeader> {
        assert!(i < self.len);
        // SAFETY: `i < len`, inside the mapping (the type's invariant); page alignment and the
        // 128-byte header size keep every header 64-byte aligned.
        unsafe { self.ptr.add(i) }
    }
}

impl Drop for HeaderTable {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; the pool is being freed, so no element (and
        // no header pointer) is in use any more (module invariants).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

pub(crate) struct PoolShared {
    /// References: handles, caches, and one for all the elements out of the store.
    refs: AtomicUsize,
    name: String,
    /// The buffers (headroom and data room of each element, nothing else).
    region: Arc<DmaRegion>,
    /// The elements' metadata, out of the device's reach.
    headers: HeaderTable,
    store: ArrayQueue<Elem>,
    /// Elements out of the store (in caches, rings or the application's hands).
    outstanding: AtomicUsize,
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

/// A counted reference to a pool's shared state, freed with the last one. (An `Arc` of our own:
/// the references held by the elements are taken and released through the same raw pointer the
/// headers keep, and every decrement is one AcqRel RMW, an ordering ThreadSanitizer follows,
/// where `Arc` pairs a release with a fence it does not model.)
///
/// Invariant: `self.0` is a live `PoolShared` allocated by `PoolRef::new`, and this value owns
/// one of its `refs`.
pub(crate) struct PoolRef(NonNull<PoolShared>);

// SAFETY: a reference to `PoolShared`, which is `Send + Sync`; the count is atomic.
unsafe impl Send for PoolRef {}
// SAFETY: as above.
unsafe impl Sync for PoolRef {}

impl PoolRef {
    fn new(shared: PoolShared) -> PoolRef {
        shared.refs.store(1, Ordering::Relaxed);
        PoolRef(NonNull::from(Box::leak(Box::new(shared))))
    }

    /// Takes one more reference to the pool at `raw`.
    ///
    /// # Safety
    /// The pool must be alive for the duration of the call: the caller holds a reference, or
    /// an element out of the store.
    unsafe fn acquire(raw: NonNull<PoolShared>) -> PoolRef {
        // Relaxed, as in `Arc::clone`: the caller's own reference orders what matters.
        // SAFETY: alive, per the caller.
        unsafe { raw.as_ref() }.refs.fetch_add(1, Ordering::Relaxed);
        PoolRef(raw)
    }

    /// Gives up one reference to the pool at `raw`, freeing it with the last one.
    ///
    /// # Safety
    /// The caller owns one reference (given up here) and does not touch the pool afterwards
    /// unless it holds another.
    unsafe fn release(raw: NonNull<PoolShared>) {
        // AcqRel: this thread's uses of the pool happen before the free, and so do those of
        // every thread that released before it.
        // SAFETY: alive: the caller's reference counts.
        if unsafe { raw.as_ref() }.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SAFETY: the last reference: nothing else can reach the pool; it came from
            // `Box::leak` in `new`.
            drop(unsafe { Box::from_raw(raw.as_ptr()) });
        }
    }

    /// The pointer every header and cache keeps.
    #[inline(always)]
    fn raw(&self) -> NonNull<PoolShared> {
        self.0
    }
}

impl Clone for PoolRef {
    fn clone(&self) -> Self {
        // SAFETY: `self` is a reference, so the pool is alive.
        unsafe { PoolRef::acquire(self.0) }
    }
}

impl Drop for PoolRef {
    fn drop(&mut self) {
        // SAFETY: this value owns one reference (the type's invariant) and is gone after this.
        unsafe { PoolRef::release(self.0) }
    }
}

impl Deref for PoolRef {
    type Target = PoolShared;
    #[inline(always)]
    fn deref(&self) -> &PoolShared {
        // SAFETY: alive while this reference exists (the type's invariant).
        unsafe { self.0.as_ref() }
    }
}

/// A pool of DMA buffers. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct Mempool {
    shared: PoolRef,
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
        let count = config.count as usize;
        let elt_size = (buf_len as usize).next_multiple_of(64);
        let region = Arc::new(DmaRegion::new(&config.name, elt_size * count, config.huge_pages, iova)?);
        let shared = PoolRef::new(PoolShared {
            refs: AtomicUsize::new(0),
            name: config.name.clone(),
            headers: HeaderTable::new(&config.name, count)?,
            store: ArrayQueue::new(count),
            outstanding: AtomicUsize::new(0),
            count: config.count,
            headroom: config.headroom,
            buf_len,
            cache_size: config.cache_size as usize,
            alloc_failures: AtomicU64::new(0),
            cache_lens: Mutex::new(Vec::new()),
            region,
        });
        let raw = shared.raw();
        for i in 0..count {
            let offset = i * elt_size;
            let hdr = shared.headers.header(i);
            // SAFETY: the header is inside the table and aligned (`HeaderTable::header`), and
            // nothing else refers to the fresh table; `offset + buf_len <= region.len()`, so
            // the buffer is inside the region.
            unsafe {
                hdr.write(MbufHeader::new(
                    NonNull::new_unchecked(shared.region.as_ptr().add(offset)),
                    shared.region.iova() + offset as u64,
                    raw,
                    // Cannot truncate: checked above.
                    buf_len as u16,
                    config.headroom,
                ))
            };
            // Cannot fail: the store holds exactly `count` elements.
            let _ = shared.store.push(Elem(hdr));
        }
        Ok(Mempool { shared })
    }

    /// The DMA region the buffers live in (to map it for a device). Crate-private: a region is
    /// handed to a transport, never to code that could lay something else over live buffers.
    pub(crate) fn region(&self) -> &Arc<DmaRegion> {
        &self.shared.region
    }

    /// The configured headroom.
    pub fn headroom(&self) -> u16 {
        self.shared.headroom
    }

    /// Mbufs each thread's cache keeps (it holds up to three times as many while it refills
    /// and flushes).
    pub fn cache_size(&self) -> u32 {
        self.shared.cache_size as u32
    }

    /// Bytes after the headroom in every buffer.
    pub fn data_room(&self) -> u32 {
        self.shared.buf_len - self.shared.headroom as u32
    }

    /// Counters: size, free, in use, allocation failures.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// One empty buffer, or `None` (counted as an allocation failure) when the pool is empty.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        let mut out = None;
        let headroom = self.shared.headroom;
        self.shared.take_bulk(self.shared.raw(), 1, |mut elems| out = elems.next().map(|e| empty_mbuf(e, headroom)));
        out
    }

    /// Appends `n` empty buffers to `out`, or none at all (counted as one allocation failure)
    /// when fewer than `n` are free; returns whether it did (`rte_pktmbuf_alloc_bulk`). `out`
    /// should have the capacity reserved up front so that this does not allocate.
    #[inline]
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        let headroom = self.shared.headroom;
        out.reserve(n);
        self.shared.take_bulk(self.shared.raw(), n, |elems| out.extend(elems.map(|e| empty_mbuf(e, headroom))))
    }

    /// Appends `n` buffers to `out`, or none (counted as one allocation failure), without
    /// resetting them: their data window is whatever their last user left (still within the
    /// buffer). For receive rings, which set the whole window when a frame arrives.
    #[inline]
    pub(crate) fn alloc_bulk_unreset(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        out.reserve(n);
        self.shared.take_bulk(self.shared.raw(), n, |elems| {
            // SAFETY: taken from this thread's cache or the store, so owned by nobody else.
            out.extend(elems.map(|elem| unsafe { Mbuf::from_raw(elem.0) }));
        })
    }
}

/// An element just taken from a cache or the store, as an empty mbuf with `headroom`.
#[inline(always)]
fn empty_mbuf(elem: Elem, headroom: u16) -> Mbuf {
    // SAFETY: taken from this thread's cache or the store, so owned by nobody else.
    let mut mbuf = unsafe { Mbuf::from_raw(elem.0) };
    mbuf.reset(headroom);
    mbuf
}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool").field("name", &self.shared.name).field("stats", &self.stats()).finish()
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
        let in_use = self.outstanding.load(Ordering::Acquire).saturating_sub(cached).min(self.count as usize) as u32;
        PoolStats {
            size: self.count,
            available: self.count - in_use,
            in_use,
            alloc_failures: self.alloc_failures.load(Ordering::Relaxed),
        }
    }

    /// Accounts for `k` elements just popped from the store. The caller holds a reference (a
    /// handle or a cache), so the pool is alive while the elements' shared one is taken.
    #[inline]
    fn taken_from_store(&self, raw: NonNull<PoolShared>, k: usize) {
        if k > 0 && self.outstanding.fetch_add(k, Ordering::Relaxed) == 0 {
            // SAFETY: the caller holds a reference, so the pool is alive; the one taken here
            // belongs to the elements, and `returned_to_store` gives it up.
            std::mem::forget(unsafe { PoolRef::acquire(raw) });
        }
    }

    /// Accounts for `k` elements just pushed back to the store. The caller may hold no reference
    /// of its own (an mbuf dropped on a thread without a cache): the elements' shared reference
    /// keeps the pool alive until the `fetch_sub`, and `self` must not be touched after this
    /// returns unless the caller holds a reference.
    #[inline]
    fn returned_to_store(&self, raw: NonNull<PoolShared>, k: usize) {
        // Release: this thread's accesses to the pool (the push just made) happen before the
        // pool may be freed; Acquire: so do those of every earlier giver.
        if k > 0 && self.outstanding.fetch_sub(k, Ordering::AcqRel) == k {
            // SAFETY: the reference given up is the elements' one, taken in `taken_from_store`
            // when `outstanding` left 0 and released exactly once, when it comes back to 0.
            unsafe { PoolRef::release(raw) };
        }
    }

    /// Moves up to `n` elements from the store into `cache`; returns how many.
    #[inline]
    fn refill(&self, cache: &mut LocalCache, n: usize) -> usize {
        let before = cache.objs.len();
        for _ in 0..n {
            match self.store.pop() {
                Some(elem) => cache.objs.push(elem),
                None => break,
            }
        }
        let taken = cache.objs.len() - before;
        self.taken_from_store(cache.pool.raw(), taken);
        taken
    }

    /// Moves elements from `cache` to the store until it holds `keep`.
    #[inline]
    fn flush(&self, cache: &mut LocalCache, keep: usize) {
        let start = keep.min(cache.objs.len());
        let drained = cache.objs.len() - start;
        for elem in cache.objs.drain(start..) {
            self.push_store(elem);
        }
        // The cache holds a reference: the pool stays alive past this.
        self.returned_to_store(cache.pool.raw(), drained);
    }

    fn push_store(&self, elem: Elem) {
        if self.store.push(elem).is_err() {
            // Only a double free could overflow the store, and `Mbuf` ownership rules that out.
            tracing::error!("mempool {:?}: store overflow, an element was returned twice", self.name);
        }
    }

    /// Hands `n` elements to `take`, from this thread's cache (refilled from the store when it
    /// holds fewer), or none at all, counted as one allocation failure, when fewer than `n` are
    /// free. Returns whether it did. `take` is this module's own code: it must not panic nor
    /// call back into the pool.
    #[inline(always)]
    fn take_bulk(&self, raw: NonNull<PoolShared>, n: usize, mut take: impl FnMut(std::vec::Drain<'_, Elem>)) -> bool {
        let ok = with_cache(self, raw, |cache| {
            if cache.objs.len() < n {
                let before = cache.objs.len();
                self.refill(cache, n + self.cache_size - before);
                if cache.objs.len() < n {
                    // Not enough: what this refill took goes back, for other threads.
                    self.flush(cache, before);
                    return false;
                }
            }
            let start = cache.objs.len() - n;
            take(cache.objs.drain(start..));
            true
        })
        .unwrap_or_else(|| self.take_uncached(raw, n, &mut take));
        if !ok {
            self.alloc_failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// The path for a thread whose caches are gone (it is exiting) or for pools without a cache:
    /// `n` elements straight from the store, or none.
    #[cold]
    #[inline(never)]
    fn take_uncached(
        &self,
        raw: NonNull<PoolShared>,
        n: usize,
        take: &mut impl FnMut(std::vec::Drain<'_, Elem>),
    ) -> bool {
        let mut taken = Vec::with_capacity(n);
        while taken.len() < n {
            match self.store.pop() {
                Some(elem) => taken.push(elem),
                None => {
                    taken.into_iter().for_each(|e| self.push_store(e));
                    return false;
                }
            }
        }
        self.taken_from_store(raw, n);
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

    /// Takes back the packet whose first segment is `hdr`: every segment of it.
    #[inline(always)]
    fn put_raw(&mut self, hdr: NonNull<MbufHeader>) {
        // SAFETY: the header is CPU-private and owned by the caller.
        if unsafe { hdr.as_ref() }.next.is_some() {
            super::chain::unlink_chain(hdr, |seg| self.put_segment(seg));
        } else {
            self.put_segment(hdr);
        }
    }

    /// Takes back one element (`next == None`, `nb_segs == 1`: the free-element invariant).
    #[inline(always)]
    fn put_segment(&mut self, hdr: NonNull<MbufHeader>) {
        // SAFETY: the header is CPU-private and its `pool` never changes; the element is out of
        // the store, so the pool is alive (module invariants).
        let raw = unsafe { hdr.as_ref().pool };
        // The common case: the same pool as the last buffer, whose cache has room (`last` is
        // only set while `caches` is there).
        if let (Some(last), Some(caches)) = (self.last, self.caches.as_deref_mut()) {
            if std::ptr::eq(last.pool, raw.as_ptr()) {
                let cache = &mut caches[last.index];
                if cache.objs.len() < last.limit {
                    cache.objs.push(Elem(hdr));
                    return;
                }
            }
        }
        self.put_slow(raw, hdr);
    }

    /// Another pool than the last buffer's, a full cache, or no cache.
    #[inline(never)]
    fn put_slow(&mut self, raw: NonNull<PoolShared>, hdr: NonNull<MbufHeader>) {
        // SAFETY: as in `put_raw`: the element being returned keeps the pool alive.
        let shared = unsafe { raw.as_ref() };
        let Some(caches) = self.caches.as_deref_mut().filter(|_| shared.cache_size > 0) else {
            shared.push_store(Elem(hdr));
            // The last use of `shared`: this element's share of the count may be the last one.
            shared.returned_to_store(raw, 1);
            return;
        };
        let index = match self.last {
            Some(last) if std::ptr::eq(last.pool, shared) => last.index,
            _ => {
                let index = cache_index(caches, raw);
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
    /// Publishes the cache lengths once for the whole batch.
    fn drop(&mut self) {
        if let Some(caches) = self.caches.as_deref() {
            caches.iter().for_each(LocalCache::publish);
        }
    }
}

/// Runs `f` with a [`Recycler`] over this thread's caches (or, while they are borrowed or torn
/// down, one that gives buffers straight back to their pools' stores). `f` is this crate's own
/// code (dropping mbufs into the recycler), never the application's.
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

/// The index of this thread's cache for the pool at `raw` in `caches`, creating it on first use.
#[inline]
fn cache_index(caches: &mut Vec<LocalCache>, raw: NonNull<PoolShared>) -> usize {
    match caches.iter().position(|c| c.pool.raw() == raw) {
        Some(index) => index,
        None => {
            caches.push(LocalCache::new(raw));
            caches.len() - 1
        }
    }
}

/// A thread's cache for one pool. It holds a reference to the pool.
struct LocalCache {
    pool: PoolRef,
    objs: Vec<Elem>,
    /// `objs.len()` as other threads see it, for [`PoolStats`].
    len: Arc<AtomicUsize>,
}

impl LocalCache {
    #[cold]
    fn new(raw: NonNull<PoolShared>) -> LocalCache {
        // SAFETY: the pool is alive: the caller holds a handle, or an element out of the store.
        let pool = unsafe { PoolRef::acquire(raw) };
        let len = Arc::new(AtomicUsize::new(0));
        pool.cache_lens.lock().unwrap_or_else(|p| p.into_inner()).push(len.clone());
        LocalCache { objs: Vec::with_capacity(3 * pool.cache_size + 64), pool, len }
    }

    #[inline(always)]
    fn publish(&self) {
        self.len.store(self.objs.len(), Ordering::Relaxed);
    }
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        pool.flush(self, 0);
        self.publish();
        let mut lens = self.pool.cache_lens.lock().unwrap_or_else(|p| p.into_inner());
        lens.retain(|len| !Arc::ptr_eq(len, &self.len));
    }
}

thread_local! {
    /// This thread's caches, one per pool it has used (usually one or two).
    static CACHES: RefCell<Vec<LocalCache>> = const { RefCell::new(Vec::new()) };
}

/// A cache borrowed for one allocation: its length is published when the borrow ends, however
/// it ends.
struct Published<'a>(&'a mut LocalCache);

impl Deref for Published<'_> {
    type Target = LocalCache;
    fn deref(&self) -> &LocalCache {
        self.0
    }
}

impl DerefMut for Published<'_> {
    fn deref_mut(&mut self) -> &mut LocalCache {
        self.0
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.0.publish();
    }
}

/// Runs `f` on this thread's cache for `shared` (at `raw`), creating it on first use. `None`
/// when the pool has no cache or the thread's caches are being torn down.
#[inline]
fn with_cache<R>(shared: &PoolShared, raw: NonNull<PoolShared>, f: impl FnOnce(&mut LocalCache) -> R) -> Option<R> {
    if shared.cache_size == 0 {
        return None;
    }
    CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let index = cache_index(&mut caches, raw);
            let mut cache = Published(&mut caches[index]);
            Some(f(&mut cache))
        })
        .ok()
        .flatten()
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

    #[test]
    fn metadata_is_out_of_the_device_region_and_survives_it_being_scribbled_over() {
        let pool = pool(64, 8);
        let mut held = Vec::with_capacity(64);
        assert!(pool.alloc_bulk(&mut held, 32));
        for (i, m) in held.iter_mut().enumerate() {
            m.append(i + 1).unwrap().fill(i as u8);
            m.set_user_data(i as u64);
            assert!(!pool.region().contains(m.hdr.as_ptr().cast(), std::mem::size_of::<MbufHeader>()));
        }
        // A device (or a vhost-user backend) writes garbage over every byte it can reach.
        let region = pool.region();
        let mut rng = crate::testing::Rng::new(7);
        for offset in (0..region.len()).step_by(8) {
            // SAFETY: inside the region; every byte of it may be written by a device at any time.
            unsafe { region.as_ptr().add(offset).cast::<u64>().write_volatile(rng.next_u64()) };
        }
        for (i, m) in held.iter().enumerate() {
            assert_eq!((m.len(), m.headroom(), m.capacity(), m.user_data()), (i + 1, 128, 2176, i as u64));
            assert!(region.contains(m.data().as_ptr(), m.len()));
        }
        drop(held);
        assert_eq!(pool.stats().in_use, 0);
        let m = pool.alloc().unwrap();
        assert_eq!((m.len(), m.headroom()), (0, 128));
    }

    #[test]
    fn a_failed_bulk_allocation_leaves_the_store_to_other_threads() {
        let pool = pool(64, 8);
        let mut held = Vec::with_capacity(64);
        // 40 out, 8 more in this thread's cache: 16 left in the shared store.
        assert!(pool.alloc_bulk(&mut held, 40));
        let (failed_tx, failed_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let greedy = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::with_capacity(32);
                failed_tx.send(pool.alloc_bulk(&mut mine, 20)).unwrap();
                // Stay alive (with this thread's cache) until the other thread has tried.
                done_rx.recv().unwrap();
            })
        };
        assert!(!failed_rx.recv().unwrap(), "20 asked, 16 in the store");
        let other = pool.clone();
        let got = std::thread::spawn(move || other.alloc_bulk(&mut Vec::with_capacity(16), 16)).join().unwrap();
        done_tx.send(()).unwrap();
        greedy.join().unwrap();
        assert!(got, "the 16 stay in the shared store, not in the failed caller's cache");
    }

    /// Pools with and without caches, built and dropped on one thread while their buffers are
    /// freed on others: the region must outlive every buffer, whatever the order of the drops.
    /// (An mbuf used after its region was unmapped faults, or trips AddressSanitizer.)
    #[test]
    fn teardown_races_with_frees_on_other_threads() {
        for round in 0..200u32 {
            let cache = [0, 4, 32][round as usize % 3];
            let (tx, rx) = std::sync::mpsc::channel::<Vec<Mbuf>>();
            let owner = std::thread::spawn(move || {
                let pool = pool(64, cache);
                for _ in 0..4 {
                    let mut batch = Vec::with_capacity(16);
                    assert!(pool.alloc_bulk(&mut batch, 16));
                    tx.send(batch).unwrap();
                }
                // The handle, this thread's cache and the thread go; the buffers are still out.
            });
            let freers: Vec<_> = (0..2)
                .map(|_| {
                    let batches = (rx.recv().unwrap(), rx.recv().unwrap());
                    std::thread::spawn(move || {
                        for mut batch in [batches.0, batches.1] {
                            if round % 2 == 0 {
                                std::thread::yield_now();
                            }
                            for m in &mut batch {
                                m.append(8).unwrap().fill(0x5a);
                            }
                            free_bulk(&mut batch);
                        }
                    })
                })
                .collect();
            owner.join().unwrap();
            freers.into_iter().for_each(|t| t.join().unwrap());
        }
    }

    #[test]
    fn a_leaked_mbuf_keeps_its_pool_and_the_rest_is_exact() {
        let pool = pool(8, 0);
        let leaked = pool.alloc().unwrap();
        // The pool's state holds its region: the region goes when the pool is freed.
        let region = Arc::downgrade(pool.region());
        drop(pool);
        assert!(region.upgrade().is_some(), "an element out of the store keeps the pool alive");
        drop(leaked);
        assert!(region.upgrade().is_none(), "the last element back frees the pool");
    }
}
