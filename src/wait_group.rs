//! [`WaitGroup`]: Go's `sync.WaitGroup` with guards instead of `Done` calls.
//!
//! # The state word
//!
//! One `AtomicU64` holds everything the lock-free paths need:
//!
//! ```text
//! bit  0      WAITERS  a waiter may be listening on `event`: the last `done` must notify
//! bits 1-31   EPOCH    how many times the count reached zero (mod 2^31)
//! bits 32-63  COUNT    units in flight
//! ```
//!
//! `add` is a `fetch_add` of one COUNT. `done` is a compare-exchange that subtracts one
//! COUNT and, when that makes the count zero, also bumps EPOCH and clears WAITERS in the same
//! step; if WAITERS was set it then wakes every listener. A waiter records EPOCH when it first
//! finds the count non-zero, listens, then sets WAITERS with a `fetch_or`, and is released by
//! a count of zero *or* a different EPOCH. All of these are read-modify-writes of one word, so
//! they are totally ordered, which gives the two guarantees:
//!
//! - **No lost wake-up.** If the waiter's `fetch_or` comes before the zero-making `done`,
//!   that `done` reads WAITERS and notifies the (already inserted) listener. If it comes
//!   after, the `fetch_or` returns the new EPOCH (or a zero count) and the waiter returns.
//! - **No missed zero.** A waiter is released by every zero crossing after it started, even
//!   if the count is non-zero again by the time it runs (EPOCH moved on), as in Go.
//!
//! A notification can arrive late: a `done` that cleared WAITERS may notify after new work
//! was added and a new waiter registered. The new waiter then finds its own EPOCH unchanged
//! and a non-zero count, and listens again. `tests/loom_groups.rs` checks these races.
//!
//! EPOCH wraps after 2³¹ zero crossings: a waiter that is not polled at all while exactly a
//! multiple of 2³¹ crossings happen, and then finds the count non-zero, keeps waiting (for
//! the next zero).

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};

use event_listener::Event;
use futures_core::future::FusedFuture;

use crate::relay::{notify_all, Waiter};
use crate::sync::{Arc, AtomicU64, Ordering};

const WAITERS: u64 = 1;
const EPOCH_ONE: u64 = 1 << 1;
const EPOCH_MASK: u64 = 0xFFFF_FFFE;
const COUNT_SHIFT: u32 = 32;
const COUNT_ONE: u64 = 1 << COUNT_SHIFT;
/// `add` refuses to count past this (half the field, so that racing `add`s cannot overflow
/// it before one of them sees the limit).
const COUNT_LIMIT: u64 = (u32::MAX as u64) / 2;

fn count(state: u64) -> u64 {
    state >> COUNT_SHIFT
}

fn epoch(state: u64) -> u64 {
    state & EPOCH_MASK
}

struct Inner {
    state: AtomicU64,
    event: Event,
}

/// Waits for a collection of work to finish: Go's `sync.WaitGroup`, for any executor and for
/// threads.
///
/// [`add`](WaitGroup::add) counts one unit of work and returns a [`WaitGuard`]; dropping the
/// guard finishes it (Go's `wg.Done()`), so an early return or a panic can never leave the
/// group waiting forever, and the count can never go negative. [`track`](WaitGroup::track)
/// counts a future until it completes or is dropped. [`wait`](WaitGroup::wait) (a future),
/// [`wait_blocking`](WaitGroup::wait_blocking) and [`wait_timeout`](WaitGroup::wait_timeout)
/// return once the count is zero.
///
/// A `WaitGroup` waits; a [`Context`](crate::Context) cancels. Pass both to a worker, as in
/// Go: the worker stops when its context is done, and holds its guard until it has stopped.
///
/// Clones are the same group. A group is reusable: once the count has reached zero it can
/// count again, and a waiter is released by any zero crossing after it started waiting, even
/// if new work was added before it ran.
///
/// # Examples
///
/// Go's worker pattern (`worker(ctx, wg)` with `defer wg.Done()`):
///
/// ```
/// use cancelctx::{Context, WaitGroup, WaitGuard};
/// use std::time::Duration;
///
/// async fn worker(ctx: Context, _done: WaitGuard, id: usize) {
///     // `_done` is dropped when the worker returns: Go's `defer wg.Done()`.
///     while ctx.sleep(Duration::from_millis(1)).await.is_ok() {
///         let _ = id; // one tick of work
///     }
/// }
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// let (ctx, stop) = Context::background().with_cancel();
/// let wg = WaitGroup::new();
/// for id in 0..4 {
///     tokio::spawn(worker(ctx.clone(), wg.add(), id));
/// }
/// stop.cancel(); // ask every worker to stop...
/// wg.wait().await; // ...and wait until all of them have
/// assert_eq!(wg.count(), 0);
/// # }
/// ```
///
/// On threads, without an executor:
///
/// ```
/// let wg = cancelctx::WaitGroup::new();
/// for _ in 0..4 {
///     let done = wg.add();
///     std::thread::spawn(move || {
///         // ... work ...
///         drop(done);
///     });
/// }
/// wg.wait_blocking();
/// ```
///
/// # Memory ordering
///
/// Finishing a unit (dropping its guard) is a release operation and a wait that returns is an
/// acquire: everything the workers did before finishing is visible to the waiter.
#[derive(Clone)]
pub struct WaitGroup {
    inner: Arc<Inner>,
}

impl WaitGroup {
    /// An empty group (count zero).
    ///
    /// ```
    /// assert_eq!(cancelctx::WaitGroup::new().count(), 0);
    /// ```
    #[must_use]
    pub fn new() -> WaitGroup {
        WaitGroup { inner: Arc::new(Inner { state: AtomicU64::new(0), event: Event::new() }) }
    }

    /// Counts one unit of work until the returned guard is dropped.
    ///
    /// # Panics
    ///
    /// If more than 2³¹ - 1 units are in flight.
    ///
    /// ```
    /// let wg = cancelctx::WaitGroup::new();
    /// let guard = wg.add();
    /// assert_eq!(wg.count(), 1);
    /// drop(guard);
    /// assert_eq!(wg.count(), 0);
    /// ```
    pub fn add(&self) -> WaitGuard {
        // memory ordering: Relaxed, as `Arc::clone`: adding publishes nothing, and a waiter
        // only acts on the count reaching zero, which `done`'s release/acquire orders.
        let old = self.inner.state.fetch_add(COUNT_ONE, Ordering::Relaxed);
        // Built first, so that the panic below undoes the increment.
        let guard = WaitGuard { inner: self.inner.clone() };
        if count(old) >= COUNT_LIMIT {
            panic!("WaitGroup::add: more than {COUNT_LIMIT} units in flight");
        }
        guard
    }

    /// Wraps `future` so that it counts in this group from this call until it completes or
    /// is dropped. Spawn the result on any executor.
    ///
    /// ```
    /// use cancelctx::WaitGroup;
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() {
    /// let wg = WaitGroup::new();
    /// for i in 0..10u64 {
    ///     tokio::spawn(wg.track(async move { i * 2 }));
    /// }
    /// wg.wait().await;
    /// assert_eq!(wg.count(), 0);
    /// # }
    /// ```
    pub fn track<F: Future>(&self, future: F) -> Track<F> {
        Track { future: Some(future), guard: Some(self.add()) }
    }

    /// The number of units in flight. With other threads adding and finishing, it may be
    /// stale by the time it is read.
    ///
    /// ```
    /// let wg = cancelctx::WaitGroup::new();
    /// let _a = wg.add();
    /// let _b = wg.clone().add();
    /// assert_eq!(wg.count(), 2);
    /// ```
    #[must_use]
    pub fn count(&self) -> usize {
        // memory ordering: Acquire, so that a zero seen here orders like a returned wait.
        let c = count(self.inner.state.load(Ordering::Acquire));
        // The count fits 31 bits, hence every `usize` of 32 bits or more.
        usize::try_from(c).unwrap_or(usize::MAX)
    }

    /// A future that resolves once the count is zero (at once if it is now). It is released
    /// by the first zero crossing after its first poll, even if work has been added again
    /// before it runs.
    ///
    /// ```
    /// let wg = cancelctx::WaitGroup::new();
    /// let guard = wg.add();
    /// std::thread::spawn(move || drop(guard));
    /// futures::executor::block_on(wg.wait());
    /// ```
    pub fn wait(&self) -> WaitGroupWait<'_> {
        WaitGroupWait { inner: &self.inner, state: WaitState::default(), finished: false }
    }
}

impl Default for WaitGroup {
    /// [`WaitGroup::new()`].
    fn default() -> WaitGroup {
        WaitGroup::new()
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup").field("count", &self.count()).finish()
    }
}

impl Inner {
    /// Finishes one unit; see the module docs for the protocol.
    fn done(&self) {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            debug_assert!(count(state) > 0, "a WaitGuard outlived its count");
            let mut new = state - COUNT_ONE;
            if count(new) == 0 {
                // Zero crossing: a new epoch, and the waiters of the old one are ours to wake.
                new = (new & !(WAITERS | EPOCH_MASK)) | (epoch(state + EPOCH_ONE));
            }
            // memory ordering: Release publishes the worker's writes to the waiter that sees
            // the zero (it acquires); Acquire pairs with a waiter's `fetch_or(WAITERS)`, so
            // its listener (inserted before) is visible to the notification below.
            match self.state.compare_exchange_weak(state, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        if count(state) == 1 && state & WAITERS != 0 {
            notify_all(&self.event);
        }
    }
}

/// One unit of work counted in a [`WaitGroup`]: dropping it finishes the unit (Go's
/// `wg.Done()`).
///
/// A guard finishes its unit exactly once, so the count can never go negative. It is
/// `Send + Sync + 'static`: move it into the thread or task doing the work.
///
/// ```
/// let wg = cancelctx::WaitGroup::new();
/// let guard: cancelctx::WaitGuard = wg.add();
/// guard.done(); // same as drop(guard)
/// assert_eq!(wg.count(), 0);
/// ```
#[must_use = "dropping a WaitGuard finishes its unit of work at once"]
#[clippy::has_significant_drop]
pub struct WaitGuard {
    inner: Arc<Inner>,
}

impl WaitGuard {
    /// Finishes the unit of work now; the same as dropping the guard.
    ///
    /// ```
    /// let wg = cancelctx::WaitGroup::new();
    /// wg.add().done();
    /// assert_eq!(wg.count(), 0);
    /// ```
    pub fn done(self) {
        drop(self);
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.inner.done();
    }
}

impl fmt::Debug for WaitGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGuard")
            .field("count", &count(self.inner.state.load(Ordering::Relaxed)))
            .finish()
    }
}

/// A waiter's progress: the epoch it started in, and its listener.
#[derive(Debug, Default)]
struct WaitState {
    epoch: Option<u64>,
    waiter: Waiter,
}

impl WaitState {
    /// `true` once the count is zero or has been zero since this waiter started.
    fn released(&mut self, state: u64) -> bool {
        if count(state) == 0 {
            return true;
        }
        let started = *self.epoch.get_or_insert(epoch(state));
        started != epoch(state)
    }

    /// Checks the state; if not released, listens and sets WAITERS. `true` when released.
    fn register(&mut self, inner: &Inner) -> bool {
        // memory ordering: Acquire pairs with the zero-making `done`'s release.
        if self.released(inner.state.load(Ordering::Acquire)) {
            return true;
        }
        self.waiter.listen(&inner.event);
        // memory ordering: Release publishes the listener to the `done` that reads WAITERS;
        // Acquire as above. See the module docs for why no wake-up is lost.
        let state = inner.state.fetch_or(WAITERS, Ordering::AcqRel);
        if self.released(state) {
            self.waiter.clear();
            return true;
        }
        false
    }

    fn poll(&mut self, inner: &Inner, cx: &mut TaskContext<'_>) -> Poll<()> {
        loop {
            if !self.waiter.is_listening() && self.register(inner) {
                return Poll::Ready(());
            }
            match self.waiter.poll(cx) {
                // Notified: a zero crossing happened, or a late one of an older epoch; the
                // next round tells them apart.
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Future returned by [`WaitGroup::wait`]: resolves once the group's count is zero.
///
/// Dropping it stops waiting. While pending it holds one listener on the group.
///
/// ```
/// let wg = cancelctx::WaitGroup::new();
/// pollster::block_on(wg.wait()); // empty: ready at once
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct WaitGroupWait<'a> {
    inner: &'a Inner,
    state: WaitState,
    finished: bool,
}

impl Future for WaitGroupWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(());
        }
        let result = this.state.poll(this.inner, cx);
        this.finished = result.is_ready();
        result
    }
}

impl FusedFuture for WaitGroupWait<'_> {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl fmt::Debug for WaitGroupWait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroupWait")
            .field("count", &count(self.inner.state.load(Ordering::Relaxed)))
            .field("finished", &self.finished)
            .finish()
    }
}

/// Future returned by [`WaitGroup::track`]: the inner future, counted in the group until it
/// completes or is dropped.
///
/// ```
/// let wg = cancelctx::WaitGroup::new();
/// let tracked = wg.track(async { 7 });
/// assert_eq!(wg.count(), 1);
/// assert_eq!(pollster::block_on(tracked), 7);
/// assert_eq!(wg.count(), 0);
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Track<F> {
    // Declared first: dropped before the guard, so the unit finishes after the future is
    // gone (also when the future's `Drop` panics: the guard is still dropped).
    future: Option<F>,
    guard: Option<WaitGuard>,
}

impl<F: Future> Future for Track<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self` and only
        // dropped in place through `Pin::set`. `guard` is never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let mut future = unsafe { Pin::new_unchecked(&mut this.future) };
        let Some(inner) = future.as_mut().as_pin_mut() else {
            panic!("`Track` polled after completion");
        };
        let output = match inner.poll(cx) {
            Poll::Ready(output) => output,
            Poll::Pending => return Poll::Pending,
        };
        future.set(None);
        this.guard = None;
        Poll::Ready(output)
    }
}

impl<F: Future> FusedFuture for Track<F> {
    fn is_terminated(&self) -> bool {
        self.future.is_none()
    }
}

impl<F> fmt::Debug for Track<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Track").field("finished", &self.future.is_none()).finish()
    }
}

#[cfg(feature = "std")]
mod blocking {
    use core::time::Duration;

    use super::*;

    impl WaitGroup {
        /// Blocks the thread until the count is zero (at once if it is now).
        ///
        /// ```
        /// let wg = cancelctx::WaitGroup::new();
        /// let guard = wg.add();
        /// std::thread::spawn(move || drop(guard));
        /// wg.wait_blocking();
        /// assert_eq!(wg.count(), 0);
        /// ```
        pub fn wait_blocking(&self) {
            let reached = self.wait_until(None);
            debug_assert!(reached);
        }

        /// Blocks until the count is zero or `timeout` of wall-clock time has passed;
        /// `true` if the count reached zero. `Duration::ZERO` only checks; a timeout too
        /// large to represent waits without limit.
        ///
        /// ```
        /// use std::time::Duration;
        /// let wg = cancelctx::WaitGroup::new();
        /// let guard = wg.add();
        /// assert!(!wg.wait_timeout(Duration::ZERO));
        /// drop(guard);
        /// assert!(wg.wait_timeout(Duration::ZERO));
        /// ```
        #[must_use = "`false` means the work has not finished"]
        pub fn wait_timeout(&self, timeout: Duration) -> bool {
            if timeout.is_zero() {
                return count(self.inner.state.load(Ordering::Acquire)) == 0;
            }
            self.wait_until(std::time::Instant::now().checked_add(timeout))
        }

        fn wait_until(&self, deadline: Option<std::time::Instant>) -> bool {
            let mut state = WaitState::default();
            loop {
                if state.register(&self.inner) {
                    return true;
                }
                match deadline {
                    None => state.waiter.wait(),
                    Some(deadline) => {
                        if !state.waiter.wait_deadline(deadline) {
                            // One last look: the zero may have come with the timeout.
                            return state.released(self.inner.state.load(Ordering::Acquire));
                        }
                    }
                }
            }
        }
    }
}
