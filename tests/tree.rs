//! Integration tests for the context tree: propagation, causes, values, `without_cancel`,
//! never-done roots, `CancelGuard`, `after_func` (including panicking callbacks), memory
//! (a counting global allocator), million-deep chains, and the auto traits / `Debug` of every
//! public type.
//!
//! Time only moves through [`ManualClock`]. Cross-thread tests use std threads started
//! together by a `Barrier`; any bound on waiting (`BOUND`) only guards against hangs and is
//! never asserted on.
//!
//! Allocation counting: the global allocator below counts live allocations and bytes *per
//! thread* (a const-initialised thread local, so the allocator itself never allocates). Each
//! libtest test runs on its own thread, so measurements are not disturbed by tests running
//! in parallel; the measuring tests also take `MEASURE` so that they never overlap each other.
//! Everything allocated and freed inside a measured region happens on the measuring thread
//! (unclocked or `ManualClock` trees, no blocking waits), so per-thread counts are exact.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::thread;
use std::time::Duration;

use cancelctx::{
    AfterFunc, CancelGuard, Cause, Clock, Context, Done, DoneOwned, Error, Instant, ManualClock,
    NoClockError, Run, StdClock, TimerKey,
};
use futures::future::FusedFuture;
use static_assertions::assert_impl_all;

mod common;
use common::counting_waker;

/// Upper bound for cross-thread waits; only guards against hangs, never asserted on.
const BOUND: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------

struct CountingAlloc;

thread_local! {
    static LIVE_ALLOCS: Cell<isize> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static TOTAL_ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn track(allocs: isize, bytes: isize) {
    let _ = LIVE_ALLOCS.try_with(|c| c.set(c.get() + allocs));
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + bytes));
    if allocs > 0 {
        let _ = TOTAL_ALLOCS.try_with(|c| c.set(c.get() + 1));
    }
}

fn signed(n: usize) -> isize {
    isize::try_from(n).expect("allocation size fits in isize")
}

// SAFETY: every method forwards to `System` unchanged; the bookkeeping only touches
// const-initialised thread locals without destructors, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(1, signed(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            track(1, signed(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        track(-1, -signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            track(0, signed(new_size) - signed(layout.size()));
        }
        new
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Live heap usage of the current thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    allocs: isize,
    bytes: isize,
}

fn live() -> Live {
    Live { allocs: LIVE_ALLOCS.with(Cell::get), bytes: LIVE_BYTES.with(Cell::get) }
}

fn total_allocs() -> usize {
    TOTAL_ALLOCS.with(Cell::get)
}

/// Serialises the measuring tests.
static MEASURE: Mutex<()> = Mutex::new(());

fn measuring() -> MutexGuard<'static, ()> {
    MEASURE.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An explicit cause with an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Why(usize);

impl Why {
    fn new() -> Why {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        Why(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "why #{}", self.0)
    }
}

impl StdError for Why {}

/// A value type used as a key.
#[derive(Debug, PartialEq, Eq)]
struct K(u32);

/// Another key type holding the same payload type.
#[derive(Debug, PartialEq, Eq)]
struct K2(u32);

/// Counts drops of whatever captures it.
#[derive(Clone, Default)]
struct DropCount(Arc<AtomicUsize>);

impl DropCount {
    fn token(&self) -> DropToken {
        DropToken(self.0.clone())
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct DropToken(Arc<AtomicUsize>);

impl Drop for DropToken {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts calls of a callback.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn callback(&self) -> impl FnOnce() + Send + 'static {
        let calls = self.0.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn clocked() -> (ManualClock, Context) {
    let clock = ManualClock::new();
    clock.set(Instant::ZERO + HOUR);
    let root = Context::with_clock(clock.clone());
    (clock, root)
}

fn cause_id(ctx: &Context) -> Option<usize> {
    ctx.cause()?.downcast_ref::<Why>().map(|w| w.0)
}

fn default_cause(ctx: &Context) -> Option<Error> {
    ctx.cause()?.downcast_ref::<Error>().copied()
}

/// Polls `done()` once with a no-op waker.
fn poll_done_once(ctx: &Context) -> Poll<Error> {
    let mut cx = TaskContext::from_waker(futures::task::noop_waker_ref());
    pin!(ctx.done()).poll(&mut cx)
}

#[track_caller]
fn assert_live(ctx: &Context, what: &str) {
    assert!(!ctx.is_done(), "{what}: is_done()");
    assert_eq!(ctx.err(), None, "{what}: err()");
    assert_eq!(ctx.check(), Ok(()), "{what}: check()");
    assert!(ctx.cause().is_none(), "{what}: cause() = {:?}", ctx.cause());
    assert_eq!(poll_done_once(ctx), Poll::Pending, "{what}: done()");
}

/// Done with `err` and an explicit cause `why`.
#[track_caller]
fn assert_done_why(ctx: &Context, err: Error, why: &Why, what: &str) {
    assert!(ctx.is_done(), "{what}: is_done()");
    assert_eq!(ctx.err(), Some(err), "{what}: err()");
    assert_eq!(ctx.check(), Err(err), "{what}: check()");
    assert_eq!(cause_id(ctx), Some(why.0), "{what}: cause() = {:?}", ctx.cause());
    assert_eq!(poll_done_once(ctx), Poll::Ready(err), "{what}: done()");
}

/// Done with `err` and no explicit cause (the cause is the error).
#[track_caller]
fn assert_done_default(ctx: &Context, err: Error, what: &str) {
    assert!(ctx.is_done(), "{what}: is_done()");
    assert_eq!(ctx.err(), Some(err), "{what}: err()");
    assert_eq!(ctx.check(), Err(err), "{what}: check()");
    assert_eq!(default_cause(ctx), Some(err), "{what}: cause() = {:?}", ctx.cause());
    assert_eq!(poll_done_once(ctx), Poll::Ready(err), "{what}: done()");
}

/// Runs `f` on a thread with a 2 MiB stack and returns its result.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::Builder::new()
        .name("small-stack".into())
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

// ---------------------------------------------------------------------------------------
// Auto traits and Debug
// ---------------------------------------------------------------------------------------

assert_impl_all!(Context: Send, Sync, Clone, fmt::Debug, Default);
assert_impl_all!(CancelGuard: Send, Sync, fmt::Debug);
assert_impl_all!(AfterFunc: Send, Sync, fmt::Debug);
assert_impl_all!(
    Error: Send,
    Sync,
    Copy,
    Eq,
    std::hash::Hash,
    fmt::Debug,
    fmt::Display,
    StdError
);
assert_impl_all!(Cause: Send, Sync, Clone, fmt::Debug, fmt::Display);
assert_impl_all!(Done<'static>: Send, Sync, Unpin, Future<Output = Error>, FusedFuture, fmt::Debug);
assert_impl_all!(DoneOwned: Send, Sync, Unpin, Future<Output = Error>, FusedFuture, fmt::Debug);
assert_impl_all!(
    Run<'static, std::future::Ready<u8>>: Send,
    Sync,
    Future<Output = Result<u8, Error>>,
    FusedFuture,
    fmt::Debug
);
assert_impl_all!(
    Instant: Send,
    Sync,
    Copy,
    Ord,
    std::hash::Hash,
    fmt::Debug
);
assert_impl_all!(TimerKey: Send, Sync, Copy, Ord, std::hash::Hash, fmt::Debug);
assert_impl_all!(ManualClock: Send, Sync, Clone, Clock, fmt::Debug);
assert_impl_all!(StdClock: Send, Sync, Clock, fmt::Debug);
assert_impl_all!(NoClockError: Send, Sync, Copy, Eq, fmt::Debug, fmt::Display, StdError);

fn is_static<T: 'static>() {}

#[test]
fn public_types_are_static() {
    is_static::<Context>();
    is_static::<CancelGuard>();
    is_static::<AfterFunc>();
    is_static::<Error>();
    is_static::<Cause>();
    is_static::<DoneOwned>();
    is_static::<Done<'static>>();
    is_static::<Run<'static, std::future::Ready<u8>>>();
    is_static::<Instant>();
    is_static::<TimerKey>();
    is_static::<ManualClock>();
    is_static::<StdClock>();
    is_static::<NoClockError>();
    // A `DoneOwned` made from a short-lived borrow outlives it.
    let owned: DoneOwned = {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let done = ctx.done_owned();
        guard.cancel();
        done
    };
    assert_eq!(futures::executor::block_on(owned), Error::Canceled);
}

/// Formats every public type, including from inside callbacks that run while a context is
/// being completed (no lock of the crate is held then) and from another thread while the
/// first keeps formatting: none of it may block.
#[test]
fn debug_impls_exist_and_do_not_block() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout(HOUR);
    let guard = Arc::new(guard);
    let handle = ctx.after_func(|| {});
    let done = ctx.done();
    let owned = ctx.done_owned();
    let run = ctx.run(async { 1 });
    let texts = [
        format!("{root:?}"),
        format!("{ctx:?}"),
        format!("{guard:?}"),
        format!("{handle:?}"),
        format!("{done:?}"),
        format!("{owned:?}"),
        format!("{run:?}"),
        format!("{clock:?}"),
        format!("{:?}", Error::Canceled),
        format!("{:?}", Error::DeadlineExceeded),
        format!("{:?}", Instant::from_nanos(5)),
        format!("{:?}", TimerKey::new(Instant::from_nanos(5), 1)),
        format!("{NoClockError:?}"),
        format!("{:?}", StdClock),
        format!("{:?}", Context::background()),
        format!("{:?}", Context::unclocked()),
        format!("{:?}", root.without_cancel()),
        format!("{:?}", root.with_value(K(1))),
        format!("{:?}", Context::background().after_func(|| {})),
    ];
    for text in &texts {
        assert!(!text.is_empty());
    }
    drop((done, owned, run));

    // From inside callbacks: one run by a cancel, one by the clock firing a deadline.
    let formatted = Arc::new(Mutex::new(Vec::new()));
    let (child, child_guard) = ctx.with_cancel();
    let cb = {
        let formatted = formatted.clone();
        let (ctx, guard, clock) = (ctx.clone(), guard.clone(), clock.clone());
        let child = child.clone();
        move || {
            let mut out = formatted.lock().unwrap();
            out.push(format!("{ctx:?}"));
            out.push(format!("{guard:?}"));
            out.push(format!("{child:?}"));
            out.push(format!("{clock:?}"));
            out.push(format!("{:?}", child.done()));
        }
    };
    let _h = child.after_func(cb);
    let timer_cb = {
        let formatted = formatted.clone();
        let (ctx, clock) = (ctx.clone(), clock.clone());
        move || {
            let mut out = formatted.lock().unwrap();
            out.push(format!("{ctx:?}"));
            out.push(format!("{clock:?}"));
        }
    };
    let _h2 = ctx.after_func(timer_cb);

    // Another thread formats in a loop while this one cancels and fires the deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let formatter = thread::spawn({
        let (ctx, child, guard, clock, stop) =
            (ctx.clone(), child.clone(), guard.clone(), clock.clone(), stop.clone());
        move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) || n == 0 {
                n += format!("{ctx:?}{child:?}{guard:?}{clock:?}").len();
            }
            n
        }
    });
    child_guard.cancel();
    clock.advance(HOUR);
    stop.store(true, Ordering::SeqCst);
    assert!(formatter.join().unwrap() > 0);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(formatted.lock().unwrap().len(), 7);
    // Debug reflects the state.
    assert!(format!("{ctx:?}").contains("DeadlineExceeded"), "{ctx:?}");
}

// ---------------------------------------------------------------------------------------
// Propagation
// ---------------------------------------------------------------------------------------

#[test]
fn cancel_reaches_every_descendant_but_no_ancestor_or_sibling() {
    let (clock, root) = clocked();
    let (a, guard_a) = root.with_cancel();
    let (sibling_of_a, _gs) = root.with_cancel();
    let a_val = a.with_value(K(1));
    let (b, guard_b) = a_val.with_cancel();
    let (b_sibling, _gbs) = a_val.with_cancel();
    let (b_deadline, _gbd) = b.with_deadline(clock.now() + HOUR);
    let (b_timeout, _gbt) = b_deadline.with_timeout(HOUR / 2);
    let b_val = b_timeout.with_value(K2(2));
    let (c, _gc) = b_val.with_cancel();
    let c_val = c.with_value(3u8);
    let (d, _gd) = c_val.with_cancel();
    let (a_deadline, _gad) = a.with_timeout(HOUR * 2);
    assert_eq!(clock.pending_timers(), 3);

    let below_b = [&b, &b_deadline, &b_timeout, &b_val, &c, &c_val, &d];
    let rest = [&root, &a, &sibling_of_a, &a_val, &b_sibling, &a_deadline];
    for (i, ctx) in below_b.iter().chain(&rest).enumerate() {
        assert_live(ctx, &format!("before: ctx #{i}"));
    }

    // Cancel the middle of the tree.
    let why_b = Why::new();
    guard_b.cancel_with(why_b.clone());
    for (i, ctx) in below_b.iter().enumerate() {
        assert_done_why(ctx, Error::Canceled, &why_b, &format!("below b #{i}"));
    }
    for (i, ctx) in rest.iter().enumerate() {
        assert_live(ctx, &format!("outside b #{i}"));
    }
    // The two timers under b were released at once; a's is still there.
    assert_eq!(clock.pending_timers(), 1);

    // Cancel a: everything under it, b's subtree keeps its first cause.
    guard_a.cancel();
    for (i, ctx) in below_b.iter().enumerate() {
        assert_done_why(ctx, Error::Canceled, &why_b, &format!("below b after a #{i}"));
    }
    for (i, ctx) in [&a, &a_val, &b_sibling, &a_deadline].iter().enumerate() {
        assert_done_default(ctx, Error::Canceled, &format!("below a #{i}"));
    }
    assert_live(&root, "root");
    assert_live(&sibling_of_a, "sibling of a");
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn deadline_reaches_descendants_but_not_ancestors() {
    let (clock, root) = clocked();
    let (parent, _gp) = root.with_cancel();
    let (dl, _gdl) = parent.with_timeout(Duration::from_secs(10));
    let (sibling, _gs) = parent.with_timeout(Duration::from_secs(20));
    let dl_val = dl.with_value(K(1));
    let (grandchild, _gg) = dl_val.with_cancel();
    let (later, _gl) = grandchild.with_timeout(Duration::from_secs(100));
    assert_eq!(later.deadline(), dl.deadline(), "a later deadline below is capped");

    clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert_live(&dl, "1ns before");
    clock.advance(Duration::from_nanos(1));
    for (i, ctx) in [&dl, &dl_val, &grandchild, &later].iter().enumerate() {
        assert_done_default(ctx, Error::DeadlineExceeded, &format!("below deadline #{i}"));
        assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    }
    assert_live(&parent, "parent");
    assert_live(&root, "root");
    assert_live(&sibling, "sibling");
    assert_eq!(sibling.remaining(), Some(Duration::from_secs(10)));
    clock.advance(Duration::from_secs(10));
    assert_done_default(&sibling, Error::DeadlineExceeded, "sibling");
    assert_live(&parent, "parent after both");
}

#[test]
fn child_of_done_parent_is_born_done_with_parents_error_and_explicit_cause() {
    let (clock, root) = clocked();
    let (parent, guard) = root.with_cancel();
    let why = Why::new();
    guard.cancel_with(why.clone());

    let (c1, g1) = parent.with_cancel();
    let v = parent.with_value(K(1));
    let (c2, g2) = v.with_cancel();
    let (c3, g3) = parent.with_deadline(clock.now() + HOUR);
    let (c4, g4) = v.with_timeout(HOUR);
    let (c5, g5) = parent.with_deadline_cause(clock.now() + HOUR, Why::new());
    let (c6, _g6) = c1.with_cancel(); // child of a born-done child
    let (c7, _g7) = c6.with_value(K2(2)).with_timeout(HOUR);
    assert_eq!(clock.pending_timers(), 0, "born-done children schedule no timer");

    for (i, ctx) in [&c1, &v, &c2, &c3, &c4, &c5, &c6, &c7].iter().enumerate() {
        assert_done_why(ctx, Error::Canceled, &why, &format!("born-done #{i}"));
    }
    for g in [&g1, &g2, &g3, &g4, &g5] {
        assert!(g.is_done());
    }
    // Their own later cancels change nothing.
    g1.cancel_with(Why::new());
    g5.cancel();
    drop((g2, g3, g4));
    assert_done_why(&c1, Error::Canceled, &why, "c1 after own cancel");
    assert_done_why(&c5, Error::Canceled, &why, "c5 after own cancel");
    assert_done_why(&c6, Error::Canceled, &why, "c6 after c1's own cancel");
    // An after_func on a born-done child runs at once.
    let calls = Calls::default();
    let h = c2.after_func(calls.callback());
    assert_eq!(calls.get(), 1);
    assert!(!h.stop());
}

#[test]
fn child_of_done_parent_is_born_done_with_default_cause() {
    let (clock, root) = clocked();
    let (parent, guard) = root.with_cancel();
    drop(guard);
    let (c1, _g1) = parent.with_cancel();
    let (c2, _g2) = parent.with_value(K(1)).with_timeout(HOUR);
    let (c3, _g3) = parent.with_deadline_cause(clock.now() + HOUR, Why::new());
    for (i, ctx) in [&c1, &c2, &c3].iter().enumerate() {
        assert_done_default(ctx, Error::Canceled, &format!("born-done #{i}"));
        assert!(!ctx.cause().unwrap().is::<Why>());
    }
    assert_eq!(c1.cause().unwrap().to_string(), "context canceled");
}

#[test]
fn child_of_expired_parent_is_born_done_with_deadline_error_and_cause() {
    let (clock, root) = clocked();
    let (plain, _gp) = root.with_timeout(Duration::from_secs(1));
    let why = Why::new();
    let (with_cause, _gc) = root.with_timeout_cause(Duration::from_secs(1), why.clone());
    clock.advance(Duration::from_secs(1));

    let (c1, g1) = plain.with_cancel();
    let (c2, _g2) = plain.with_value(K(1)).with_timeout(HOUR);
    assert_done_default(&c1, Error::DeadlineExceeded, "child of expired");
    assert_done_default(&c2, Error::DeadlineExceeded, "timeout child of expired");
    g1.cancel_with(Why::new());
    assert_done_default(&c1, Error::DeadlineExceeded, "after own cancel");

    let (c3, _g3) = with_cause.with_cancel();
    let (c4, _g4) = with_cause.with_deadline_cause(clock.now() + HOUR, Why::new());
    assert_done_why(&c3, Error::DeadlineExceeded, &why, "child of expired with cause");
    assert_done_why(&c4, Error::DeadlineExceeded, &why, "cause child of expired with cause");

    // A deadline that is not after now gives a child born done by its own deadline.
    let (past, _gpast) = root.with_deadline_cause(clock.now(), why.clone());
    assert_done_why(&past, Error::DeadlineExceeded, &why, "deadline at now");
    assert_live(&root, "root");
}

// ---------------------------------------------------------------------------------------
// First completion wins
// ---------------------------------------------------------------------------------------

#[test]
fn first_cancel_wins_and_later_cancels_change_nothing() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout(HOUR);
    let (child, _gc) = ctx.with_value(K(1)).with_cancel();
    let (grandchild, _gg) = child.with_timeout(HOUR * 2);
    let first = Why::new();
    guard.cancel_with(first.clone());
    let first_cause = ctx.cause().unwrap();
    guard.cancel_with(Why::new());
    guard.cancel_with_cause(Arc::new(Why::new()));
    guard.cancel();
    clock.advance(HOUR * 3);
    for (i, c) in [&ctx, &child, &grandchild].iter().enumerate() {
        assert_done_why(c, Error::Canceled, &first, &format!("#{i}"));
        let cause = c.cause().unwrap();
        assert!(Arc::ptr_eq(&cause, &first_cause), "#{i}: the very same cause object");
    }
    drop(guard);
    assert_done_why(&ctx, Error::Canceled, &first, "after drop");
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn plain_cancel_first_then_cause_is_ignored() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_cancel();
    guard.cancel();
    guard.cancel_with(Why::new());
    assert_done_default(&ctx, Error::Canceled, "ctx");
    assert_done_default(&child, Error::Canceled, "child");
}

#[test]
fn deadline_first_then_cancel_is_ignored_and_vice_versa() {
    let (clock, root) = clocked();
    let (expired, g1) = root.with_timeout(Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    g1.cancel_with(Why::new());
    drop(g1);
    assert_done_default(&expired, Error::DeadlineExceeded, "expired then cancelled");

    let why = Why::new();
    let (cancelled, g2) = root.with_timeout_cause(Duration::from_secs(1), Why::new());
    g2.cancel_with(why.clone());
    assert_eq!(clock.pending_timers(), 0, "cancel releases the timer");
    clock.advance(Duration::from_secs(5));
    assert_done_why(&cancelled, Error::Canceled, &why, "cancelled then expired");
}

#[test]
fn child_completed_by_parent_keeps_parents_error_and_cause() {
    let (clock, root) = clocked();
    let (parent, guard) = root.with_cancel();
    let (child, child_guard) = parent.with_value(K(1)).with_timeout(HOUR);
    let (grandchild, grandchild_guard) = child.with_cancel();
    let why = Why::new();
    guard.cancel_with(why.clone());
    child_guard.cancel_with(Why::new());
    grandchild_guard.cancel_with(Why::new());
    clock.advance(HOUR * 2);
    assert_done_why(&child, Error::Canceled, &why, "child");
    assert_done_why(&grandchild, Error::Canceled, &why, "grandchild");

    // Same when the parent's completion is a deadline with its own cause.
    let deadline_why = Why::new();
    let (parent, _g) = root.with_timeout_cause(Duration::from_secs(1), deadline_why.clone());
    let (child, child_guard) = parent.with_cancel();
    clock.advance(Duration::from_secs(1));
    child_guard.cancel_with(Why::new());
    assert_done_why(&child, Error::DeadlineExceeded, &deadline_why, "child of deadline");
}

/// Two threads cancel the same context (through a shared guard) and a middle context with
/// different causes at the same time: there is exactly one cause per completion, and every
/// descendant agrees with the context that completed it.
#[test]
fn concurrent_cancels_agree_on_one_cause() {
    for iteration in 0..300 {
        let (root, root_guard) = Context::unclocked().with_cancel();
        let root_guard = Arc::new(root_guard);
        let (mid, mid_guard) = root.with_value(K(1)).with_cancel();
        let (leaf, _gl) = mid.with_cancel();
        let leaf_val = leaf.with_value(K2(1));
        let (a, b, c) = (Why::new(), Why::new(), Why::new());
        let barrier = Arc::new(Barrier::new(3));
        let t1 = thread::spawn({
            let (g, barrier, a) = (root_guard.clone(), barrier.clone(), a.clone());
            move || {
                barrier.wait();
                g.cancel_with(a);
            }
        });
        let t2 = thread::spawn({
            let (g, barrier, b) = (root_guard.clone(), barrier.clone(), b.clone());
            move || {
                barrier.wait();
                g.cancel_with(b);
            }
        });
        let t3 = thread::spawn({
            let barrier = barrier.clone();
            let c = c.clone();
            move || {
                barrier.wait();
                mid_guard.cancel_with(c);
            }
        });
        for t in [t1, t2, t3] {
            t.join().unwrap();
        }
        let root_cause = cause_id(&root).unwrap();
        assert!(root_cause == a.0 || root_cause == b.0, "iteration {iteration}");
        let mid_cause = cause_id(&mid).unwrap();
        assert!(mid_cause == root_cause || mid_cause == c.0, "iteration {iteration}");
        assert_eq!(cause_id(&leaf), Some(mid_cause), "iteration {iteration}");
        assert_eq!(cause_id(&leaf_val), Some(mid_cause), "iteration {iteration}");
        for ctx in [&root, &mid, &leaf, &leaf_val] {
            assert_eq!(ctx.err(), Some(Error::Canceled), "iteration {iteration}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Causes
// ---------------------------------------------------------------------------------------

#[test]
fn cause_is_none_while_live_on_every_kind_of_context() {
    let (clock, root) = clocked();
    let (c, _g) = root.with_cancel();
    let (d, _gd) = root.with_deadline(clock.now() + HOUR);
    let (dc, _gdc) = root.with_deadline_cause(clock.now() + HOUR, Why::new());
    for (i, ctx) in [
        Context::background(),
        Context::unclocked(),
        Context::default(),
        root.clone(),
        c.clone(),
        d,
        dc,
        c.with_value(K(1)),
        c.without_cancel(),
    ]
    .iter()
    .enumerate()
    {
        assert!(ctx.cause().is_none(), "#{i}");
        assert!(ctx.err().is_none(), "#{i}");
    }
}

#[test]
fn default_cause_is_the_error_and_explicit_cause_is_the_callers_type() {
    let (clock, root) = clocked();
    let (cancelled, g) = root.with_cancel();
    g.cancel();
    let cause = cancelled.cause().unwrap();
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert!(!cause.is::<Why>());
    assert_eq!(cause.to_string(), "context canceled");

    let (expired, _g) = root.with_timeout(Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    let cause = expired.cause().unwrap();
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::DeadlineExceeded));
    assert_eq!(cause.to_string(), "context deadline exceeded");

    let why = Why::new();
    let (explicit, g) = root.with_cancel();
    g.cancel_with(why.clone());
    let cause = explicit.cause().unwrap();
    assert_eq!(cause.downcast_ref::<Why>(), Some(&why));
    assert!(!cause.is::<Error>(), "an explicit cause is not wrapped in Error");
    assert_eq!(cause.to_string(), why.to_string());
    assert!(cause.source().is_none());
    // Stable: every call returns the same object.
    assert!(Arc::ptr_eq(&cause, &explicit.cause().unwrap()));
    // A context error can itself be an explicit cause.
    let (odd, g) = root.with_cancel();
    g.cancel_with(Error::DeadlineExceeded);
    assert_eq!(odd.err(), Some(Error::Canceled));
    assert_eq!(default_cause(&odd), Some(Error::DeadlineExceeded));
}

#[test]
fn cancel_with_cause_does_not_wrap_again() {
    let why = Why::new();
    let (a, guard_a) = Context::unclocked().with_cancel();
    guard_a.cancel_with(why.clone());
    let a_cause = a.cause().unwrap();

    let (b, guard_b) = Context::unclocked().with_cancel();
    let (b_child, _g) = b.with_cancel();
    guard_b.cancel_with_cause(a_cause.clone());
    let b_cause = b.cause().unwrap();
    assert!(Arc::ptr_eq(&a_cause, &b_cause), "the same Arc, not a wrapper");
    assert_eq!(b_cause.downcast_ref::<Why>(), Some(&why));
    assert!(Arc::ptr_eq(&a_cause, &b_child.cause().unwrap()));

    // Passing on a default cause keeps it an Error.
    let (c, guard_c) = Context::unclocked().with_cancel();
    guard_c.cancel();
    let (d, guard_d) = Context::unclocked().with_cancel();
    guard_d.cancel_with_cause(c.cause().unwrap());
    assert_eq!(default_cause(&d), Some(Error::Canceled));

    // Wrapping by `cancel_with` on an existing Arc is the caller's choice: it wraps once.
    let (e, guard_e) = Context::unclocked().with_cancel();
    guard_e.cancel_with(Why(7));
    assert!(e.cause().unwrap().is::<Why>());
}

/// Canceller against spinning readers, started together: whenever a reader sees a context
/// done, every query on it and on every context above it (the one that completed it) says
/// done, the cause is there and is the one cause, and it never goes back.
#[test]
fn err_cause_and_is_done_agree_across_threads() {
    const READERS: usize = 3;
    for iteration in 0..200 {
        let (root, guard) = Context::unclocked().with_cancel();
        let (mid, _gm) = root.with_value(K(1)).with_cancel();
        let (leaf, _gl) = mid.with_cancel();
        let why = Why::new();
        let barrier = Arc::new(Barrier::new(READERS + 1));
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (root, mid, leaf, barrier) =
                    (root.clone(), mid.clone(), leaf.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    let chain = [&leaf, &mid, &root];
                    let mut spins = 0u64;
                    loop {
                        spins += 1;
                        // Rotate which context and which query goes first.
                        let start = (spins as usize + r) % 3;
                        let ctx = chain[start];
                        let done = match spins % 3 {
                            0 => ctx.is_done(),
                            1 => ctx.err().is_some(),
                            _ => ctx.cause().is_some(),
                        };
                        if !done {
                            assert!(spins < 1 << 40);
                            continue;
                        }
                        // Everything at and above `ctx` must now report done, consistently.
                        let mut ids = Vec::new();
                        for c in &chain[start..] {
                            assert!(c.is_done());
                            assert_eq!(c.err(), Some(Error::Canceled));
                            assert_eq!(c.check(), Err(Error::Canceled));
                            ids.push(cause_id(c).expect("cause() is Some once done"));
                        }
                        for c in &chain {
                            // Below `ctx` too, once the canceller is done — but at least
                            // the leaf must not be done while the root is live.
                            if c.is_done() {
                                assert!(root.is_done());
                            }
                        }
                        return ids;
                    }
                })
            })
            .collect();
        barrier.wait();
        guard.cancel_with(why.clone());
        for r in readers {
            let ids = r.join().unwrap();
            assert!(ids.iter().all(|&id| id == why.0), "iteration {iteration}: {ids:?}");
        }
        for c in [&root, &mid, &leaf] {
            assert_eq!(cause_id(c), Some(why.0));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

#[test]
fn values_nearest_ancestor_wins_and_types_are_keys() {
    let (clock, root) = clocked();
    let outer = root.with_value(K(1)).with_value(7u32);
    let (mid, _g) = outer.with_cancel();
    let inner = mid.with_value(K(2));
    let (leaf, _gl) = inner.with_timeout(HOUR);

    assert_eq!(outer.value::<K>(), Some(&K(1)));
    assert_eq!(mid.value::<K>(), Some(&K(1)));
    assert_eq!(inner.value::<K>(), Some(&K(2)), "inner shadows outer");
    assert_eq!(leaf.value::<K>(), Some(&K(2)));
    // Other types are other keys, even with the same payload.
    assert_eq!(leaf.value::<u32>(), Some(&7));
    assert_eq!(leaf.value::<K2>(), None);
    assert_eq!(leaf.value::<u64>(), None);
    assert_eq!(leaf.value::<i32>(), None);
    assert_eq!(root.value::<K>(), None);
    assert_eq!(Context::background().value::<K>(), None);
    assert_eq!(Context::unclocked().value::<u32>(), None);
    // Shadowing a type does not hide the others.
    let shadow = leaf.with_value(8u32);
    assert_eq!(shadow.value::<u32>(), Some(&8));
    assert_eq!(shadow.value::<K>(), Some(&K(2)));
    assert_eq!(leaf.value::<u32>(), Some(&7), "the parent still sees its own");
    let _ = clock;
}

#[test]
fn values_are_visible_through_every_kind_of_child_and_after_cancel() {
    let (clock, root) = clocked();
    let base = root.with_value(K(5)).with_value(String::from("trace"));
    let (c, gc) = base.with_cancel();
    let (d, _gd) = c.with_deadline(clock.now() + HOUR);
    let (t, _gt) = d.with_timeout_cause(HOUR, Why::new());
    let w = t.without_cancel();
    let (wc, _gwc) = w.with_cancel();
    let (wt, _gwt) = w.with_timeout(HOUR);
    for (i, ctx) in [&base, &c, &d, &t, &w, &wc, &wt].iter().enumerate() {
        assert_eq!(ctx.value::<K>(), Some(&K(5)), "#{i}");
        assert_eq!(ctx.value::<String>().map(String::as_str), Some("trace"), "#{i}");
    }
    gc.cancel();
    clock.advance(HOUR * 2);
    for (i, ctx) in [&c, &d, &t, &w, &wc, &wt].iter().enumerate() {
        assert_eq!(ctx.value::<K>(), Some(&K(5)), "after completion #{i}");
    }
    // A value child of a done context is done and has its value.
    let v = c.with_value(K2(1));
    assert!(v.is_done());
    assert_eq!(v.value::<K2>(), Some(&K2(1)));
}

#[test]
fn value_lifetime_is_tied_to_the_context_and_the_value_is_dropped_with_the_last_handle() {
    let drops = DropCount::default();
    struct Payload {
        text: String,
        _token: DropToken,
    }
    let leaf = {
        let root = Context::unclocked()
            .with_value(Payload { text: "payload".into(), _token: drops.token() });
        let (child, guard) = root.with_cancel();
        guard.detach();
        child.with_value(K(1))
        // `root` and `child` handles dropped here; the leaf keeps the chain alive.
    };
    let text: &str = &leaf.value::<Payload>().unwrap().text;
    // The borrow lives as long as `leaf`; making more children does not disturb it.
    let (grandchild, _g) = leaf.with_cancel();
    let more = grandchild.with_value(K2(2));
    assert_eq!(text, "payload");
    assert_eq!(more.value::<Payload>().unwrap().text, "payload");
    // Interior mutability through a shared value.
    let counter = Context::unclocked().with_value(Mutex::new(Vec::<u8>::new()));
    counter.value::<Mutex<Vec<u8>>>().unwrap().lock().unwrap().push(1);
    assert_eq!(*counter.value::<Mutex<Vec<u8>>>().unwrap().lock().unwrap(), vec![1]);

    assert_eq!(drops.get(), 0);
    drop(more);
    drop(grandchild);
    drop(_g);
    assert_eq!(drops.get(), 0, "the leaf still holds the value");
    drop(leaf);
    assert_eq!(drops.get(), 1, "dropped with the last handle");
}

// ---------------------------------------------------------------------------------------
// without_cancel
// ---------------------------------------------------------------------------------------

#[test]
fn without_cancel_keeps_values_and_clock_but_is_never_done() {
    let (clock, root) = clocked();
    let (parent, guard) = root.with_value(K(1)).with_timeout(HOUR);
    assert!(parent.deadline().is_some());
    let detached = parent.without_cancel();
    assert_eq!(detached.value::<K>(), Some(&K(1)));
    assert_eq!(detached.now(), Some(clock.now()));
    assert!(detached.clock().is_some());
    assert_eq!(detached.deadline(), None);
    assert_eq!(detached.remaining(), None);
    assert_live(&detached, "detached");

    // done() never resolves: pending with a no-op waker and registers no waker.
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut done = pin!(detached.done());
    for _ in 0..3 {
        assert_eq!(done.as_mut().poll(&mut cx), Poll::Pending);
    }
    assert_eq!(Arc::strong_count(&counter), 2, "no waker clone was kept");

    // Neither the parent's cancel nor its deadline reaches it.
    let calls = Calls::default();
    let h = detached.after_func(calls.callback());
    let with_value = detached.with_value(K2(2));
    guard.cancel_with(Why::new());
    clock.advance(HOUR * 2);
    assert!(parent.is_done());
    assert_live(&detached, "detached after parent cancel");
    assert_live(&with_value, "value child of detached");
    assert_eq!(done.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(counter.wakes.load(Ordering::SeqCst), 0);
    assert_eq!(calls.get(), 0);
    assert!(h.stop(), "never-done: the first stop() prevents f");
    assert!(!h.stop());
    assert_eq!(detached.wait_timeout(Duration::ZERO), None);

    // without_cancel of an already-done context is live.
    let late = parent.without_cancel();
    assert_live(&late, "without_cancel of done");
    assert_eq!(late.value::<K>(), Some(&K(1)));
}

#[test]
fn children_of_without_cancel_are_cancellable_on_their_own() {
    let (clock, root) = clocked();
    let (parent, guard) = root.with_value(K(1)).with_timeout(HOUR);
    let detached = parent.without_cancel();
    let (child_a, guard_a) = detached.with_cancel();
    let (child_b, _guard_b) = detached.with_value(K2(3)).with_cancel();
    let (timed, _gt) = detached.with_timeout(HOUR * 3);
    assert_eq!(timed.deadline(), Some(clock.now() + HOUR * 3), "not capped by the parent");

    guard.cancel();
    for (i, ctx) in [&detached, &child_a, &child_b, &timed].iter().enumerate() {
        assert_live(ctx, &format!("after the original parent's cancel #{i}"));
    }
    let why = Why::new();
    guard_a.cancel_with(why.clone());
    assert_done_why(&child_a, Error::Canceled, &why, "child_a");
    assert_live(&child_b, "child_b");
    assert_live(&detached, "detached");
    assert_eq!(child_a.value::<K>(), Some(&K(1)));

    clock.advance(HOUR * 3);
    assert_done_default(&timed, Error::DeadlineExceeded, "its own deadline fires");
    assert_live(&child_b, "child_b after");
}

// ---------------------------------------------------------------------------------------
// Never-done roots
// ---------------------------------------------------------------------------------------

#[test]
fn background_and_unclocked_are_never_done_and_done_registers_nothing() {
    let _m = measuring();
    let (counter, waker) = counting_waker();
    let roots = [
        Context::background(),
        Context::unclocked(),
        Context::default(),
        Context::background().with_value(K(1)),
    ];
    for (i, root) in roots.iter().enumerate() {
        assert_live(root, &format!("root #{i}"));
        assert_eq!(root.deadline(), None);
        assert_eq!(root.remaining(), None);
        assert_eq!(root.wait_timeout(Duration::ZERO), None);

        // Noop waker: pending.
        let mut noop_cx = TaskContext::from_waker(futures::task::noop_waker_ref());
        assert_eq!(pin!(root.done()).poll(&mut noop_cx), Poll::Pending);

        // Counting waker: pending, no clone kept, nothing allocated at all.
        let mut cx = TaskContext::from_waker(&waker);
        let before = (live(), total_allocs());
        {
            let mut done = pin!(root.done());
            let mut owned = pin!(root.done_owned());
            for _ in 0..5 {
                assert!(done.as_mut().poll(&mut cx).is_pending());
                assert!(owned.as_mut().poll(&mut cx).is_pending());
            }
            assert!(!done.is_terminated());
            assert!(!owned.is_terminated());
        }
        assert_eq!((live(), total_allocs()), before, "root #{i}: polling allocated");
        assert_eq!(Arc::strong_count(&counter), 2, "root #{i}: a waker clone was kept");
    }
    assert_eq!(counter.wakes.load(Ordering::SeqCst), 0);

    // The static roots themselves allocate nothing.
    let before = (live(), total_allocs());
    let bg = Context::background();
    let un = Context::unclocked();
    let df = Context::default();
    let clones = (bg.clone(), un.clone(), df.clone());
    drop((bg, un, df, clones));
    assert_eq!((live(), total_allocs()), before);
}

#[test]
fn default_is_background() {
    let default = Context::default();
    let background = Context::background();
    assert!(default.clock().is_some(), "default has the std clock");
    assert!(Context::unclocked().clock().is_none());
    assert_eq!(format!("{default:?}"), format!("{background:?}"));
    assert_eq!(default.deadline(), None);
    assert!(!default.is_done());
    // Deadlines work on it (std clock), unlike on unclocked.
    let (ctx, _g) = default.try_with_timeout(HOUR).expect("default has a clock");
    assert!(ctx.deadline().is_some());
    assert_eq!(Context::unclocked().try_with_timeout(HOUR).unwrap_err(), NoClockError);
    // Both report times on the same clock.
    let (d, b) = (default.now().unwrap(), background.now().unwrap());
    let (d2, b2) = (default.now().unwrap(), background.now().unwrap());
    assert!(d <= b && b <= d2 && d2 <= b2, "one monotonic clock");
}

// ---------------------------------------------------------------------------------------
// CancelGuard
// ---------------------------------------------------------------------------------------

#[test]
fn guard_drop_cancels_and_detach_does_not() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, child_guard) = ctx.with_cancel();
    assert!(!guard.is_done());
    child_guard.detach();
    assert_live(&child, "detached child");
    drop(guard);
    assert_done_default(&ctx, Error::Canceled, "dropped guard");
    assert_done_default(&child, Error::Canceled, "detached child follows its parent");

    let (ctx, guard) = Context::unclocked().with_cancel();
    guard.detach();
    assert_live(&ctx, "detached");

    let (clock, root) = clocked();
    let (timed, guard) = root.with_timeout(HOUR);
    guard.detach();
    assert_eq!(clock.pending_timers(), 1, "detach keeps the deadline");
    clock.advance(HOUR);
    assert_done_default(&timed, Error::DeadlineExceeded, "detached timeout");
}

#[test]
fn guard_cancel_from_another_thread_and_shared_in_arc() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let why = Why::new();
    thread::spawn({
        let why = why.clone();
        move || guard.cancel_with(why)
    })
    .join()
    .unwrap();
    assert_done_why(&ctx, Error::Canceled, &why, "cancelled from a thread");

    let (ctx, guard) = Context::unclocked().with_cancel();
    let guard = Arc::new(guard);
    let barrier = Arc::new(Barrier::new(4));
    let ids: Vec<usize> = (0..4).map(|_| Why::new().0).collect();
    let threads: Vec<_> = ids
        .iter()
        .map(|&id| {
            let (guard, barrier) = (guard.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                guard.cancel_with(Why(id));
                assert!(guard.is_done());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = cause_id(&ctx).unwrap();
    assert!(ids.contains(&got));
    assert_eq!(Arc::strong_count(&guard), 1);
    drop(guard);
    assert_eq!(cause_id(&ctx), Some(got), "dropping the last Arc changes nothing");
}

#[test]
fn guard_is_done_tracks_its_context_including_inherited_completion() {
    let (clock, root) = clocked();
    let (parent, parent_guard) = root.with_cancel();
    let (_child, child_guard) = parent.with_timeout(HOUR);
    let (_timed, timed_guard) = root.with_timeout(Duration::from_secs(1));
    assert!(!child_guard.is_done() && !timed_guard.is_done());
    parent_guard.cancel();
    assert!(child_guard.is_done(), "completed by the parent");
    clock.advance(Duration::from_secs(1));
    assert!(timed_guard.is_done(), "completed by the deadline");
    assert!(parent_guard.is_done());
}

// ---------------------------------------------------------------------------------------
// after_func
// ---------------------------------------------------------------------------------------

#[test]
fn after_func_runs_once_on_the_completing_thread() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _gc) = ctx.with_value(K(1)).with_cancel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |name: &'static str| {
        let seen = seen.clone();
        move || seen.lock().unwrap().push((name, thread::current().id()))
    };
    let _h1 = ctx.after_func(record("ctx"));
    let _h2 = child.after_func(record("child"));
    let _h3 = ctx.with_value(K2(1)).after_func(record("value child"));
    let canceller = thread::spawn(move || {
        guard.cancel();
        guard.cancel();
        thread::current().id()
    });
    let canceller_id = canceller.join().unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|&(name, _)| name);
    assert_eq!(
        seen,
        vec![("child", canceller_id), ("ctx", canceller_id), ("value child", canceller_id)]
    );
}

#[test]
fn after_func_runs_on_the_thread_that_moves_the_clock() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(Duration::from_secs(1));
    let (tx, rx) = mpsc::channel();
    let _h = ctx.after_func(move || tx.send(thread::current().id()).unwrap());
    let mover = thread::spawn(move || {
        clock.advance(Duration::from_secs(1));
        thread::current().id()
    });
    let mover_id = mover.join().unwrap();
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), mover_id);
    assert!(rx.try_recv().is_err(), "ran exactly once");
}

#[test]
fn after_func_on_done_context_runs_at_once_on_the_calling_thread() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    guard.cancel();
    let me = thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let h = ctx.after_func({
        let ran_on = ran_on.clone();
        move || *ran_on.lock().unwrap() = Some(thread::current().id())
    });
    assert_eq!(*ran_on.lock().unwrap(), Some(me), "ran before after_func returned");
    assert!(!h.stop(), "already ran");
    assert!(!h.stop());
}

#[test]
fn after_func_stop_semantics() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let stopped = Calls::default();
    let kept = Calls::default();
    let h_stopped = ctx.after_func(stopped.callback());
    let h_kept = ctx.after_func(kept.callback());
    assert!(h_stopped.stop(), "stop before completion prevents f");
    assert!(!h_stopped.stop(), "double stop");
    guard.cancel();
    assert_eq!(stopped.get(), 0);
    assert_eq!(kept.get(), 1);
    assert!(!h_kept.stop(), "stop after run");
    assert!(!h_stopped.stop());
    guard.cancel();
    assert_eq!(kept.get(), 1, "exactly once");
}

#[test]
fn after_func_on_never_done_contexts_never_runs() {
    let (clock, root) = clocked();
    let (cancellable, guard) = root.with_cancel();
    let contexts = [
        Context::background(),
        Context::unclocked(),
        Context::default(),
        root.clone(),
        root.with_value(K(1)),
        cancellable.without_cancel(),
        cancellable.without_cancel().with_value(K(2)),
    ];
    for (i, ctx) in contexts.iter().enumerate() {
        let calls = Calls::default();
        let drops = DropCount::default();
        let h = ctx.after_func({
            let token = drops.token();
            let cb = calls.callback();
            move || {
                let _token = token;
                cb();
            }
        });
        guard.cancel();
        clock.advance(HOUR);
        assert_eq!(calls.get(), 0, "#{i}");
        assert!(h.stop(), "#{i}: first stop on a never-done context is true");
        assert!(!h.stop(), "#{i}: second stop is false");
        assert_eq!(drops.get(), 1, "#{i}: the closure is released");
        assert_eq!(calls.get(), 0, "#{i}");
    }
}

#[test]
fn after_func_handle_drop_leaves_it_registered() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let calls = Calls::default();
    drop(ctx.after_func(calls.callback()));
    assert_eq!(calls.get(), 0);
    drop(guard);
    assert_eq!(calls.get(), 1);
}

#[test]
fn after_func_on_value_child_runs_when_ancestor_cancels() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let value_child = ctx.with_value(K(1)).with_value(K2(2));
    let calls = Calls::default();
    let h = value_child.after_func(calls.callback());
    drop(value_child);
    guard.cancel();
    assert_eq!(calls.get(), 1);
    assert!(!h.stop());
}

#[test]
fn after_func_on_abandoned_detached_child_still_runs_when_parent_cancels() {
    let (clock, root) = clocked();
    let (parent, guard) = root.with_cancel();
    let calls = Calls::default();
    {
        let (child, child_guard) = parent.with_value(K(1)).with_cancel();
        child_guard.detach();
        drop(child.after_func(calls.callback()));
        let (timed, timed_guard) = child.with_timeout(HOUR);
        timed_guard.detach();
        drop(timed.with_value(K2(1)).after_func(calls.callback()));
        // Every handle of `child` and `timed` is dropped here.
    }
    assert_eq!(calls.get(), 0);
    assert_eq!(clock.pending_timers(), 1, "the registered callback keeps the timer");
    guard.cancel();
    assert_eq!(calls.get(), 2);
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn after_func_runs_after_the_subtree_is_done_and_may_use_the_tree() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _gc) = ctx.with_cancel();
    let (deep, _gd) = child.with_value(K(1)).with_cancel();
    let (other, other_guard) = Context::unclocked().with_cancel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let _h = ctx.after_func({
        let (deep, ctx, log, other) = (deep.clone(), ctx.clone(), log.clone(), other.clone());
        move || {
            // The whole subtree is done before any callback runs.
            log.lock().unwrap().push(format!("deep done: {}", deep.is_done()));
            // No lock is held: the callback may register, derive and cancel.
            let inner_calls = Calls::default();
            let _inner = ctx.after_func(inner_calls.callback());
            log.lock().unwrap().push(format!("nested ran: {}", inner_calls.get()));
            let (born, _g) = ctx.with_cancel();
            log.lock().unwrap().push(format!("born done: {}", born.is_done()));
            other_guard.cancel();
            log.lock().unwrap().push(format!("other done: {}", other.is_done()));
        }
    });
    guard.cancel();
    assert_eq!(
        *log.lock().unwrap(),
        ["deep done: true", "nested ran: 1", "born done: true", "other done: true"]
    );
    assert!(other.is_done());
}

/// `stop` racing the completion: exactly one of them wins, every time.
#[test]
fn after_func_stop_races_cancel() {
    for iteration in 0..500 {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let calls = Calls::default();
        let drops = DropCount::default();
        let h = ctx.after_func({
            let cb = calls.callback();
            let token = drops.token();
            move || {
                let _token = token;
                cb();
            }
        });
        let barrier = Arc::new(Barrier::new(2));
        let canceller = thread::spawn({
            let barrier = barrier.clone();
            move || {
                barrier.wait();
                guard.cancel();
            }
        });
        barrier.wait();
        let stopped = h.stop();
        canceller.join().unwrap();
        let ran = calls.get();
        assert_eq!(ran + usize::from(stopped), 1, "iteration {iteration}: ran {ran}");
        assert!(!h.stop());
        assert_eq!(drops.get(), 1, "iteration {iteration}: closure released");
    }
}

// ---------------------------------------------------------------------------------------
// Panicking after_func
// ---------------------------------------------------------------------------------------

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[test]
fn panicking_after_func_does_not_stop_the_completion_and_resurfaces_from_cancel() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _gc) = ctx.with_value(K(1)).with_cancel();
    let (grandchild, _gg) = child.with_cancel();
    let before = Calls::default();
    let after = Calls::default();
    let in_child = Calls::default();
    let _h1 = ctx.after_func(before.callback());
    let _h2 = ctx.after_func(|| panic!("boom from after_func"));
    let _h3 = ctx.after_func(after.callback());
    let _h4 = grandchild.after_func(in_child.callback());

    // An async waiter on the grandchild and a blocking waiter on the child.
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut done = Box::pin(grandchild.done_owned());
    assert!(done.as_mut().poll(&mut cx).is_pending());
    let (started_tx, started_rx) = mpsc::channel();
    let blocking = thread::spawn({
        let child = child.clone();
        move || {
            started_tx.send(()).unwrap();
            child.wait()
        }
    });
    started_rx.recv().unwrap();
    thread::sleep(Duration::from_millis(10)); // give the waiter a chance to block

    let result = catch_unwind(AssertUnwindSafe(|| guard.cancel()));
    let payload = result.expect_err("the callback's panic resumes from cancel()");
    assert_eq!(panic_message(&*payload), "boom from after_func");

    assert_eq!(before.get(), 1);
    assert_eq!(after.get(), 1);
    assert_eq!(in_child.get(), 1);
    assert_done_default(&ctx, Error::Canceled, "ctx");
    assert_done_default(&child, Error::Canceled, "child");
    assert_done_default(&grandchild, Error::Canceled, "grandchild");
    assert_eq!(counter.wakes.load(Ordering::SeqCst), 1, "the async waiter was woken");
    assert_eq!(done.as_mut().poll(&mut cx), Poll::Ready(Error::Canceled));
    assert_eq!(blocking.join().unwrap(), Error::Canceled, "the blocking waiter was woken");
    // Completion is over: cancelling again neither panics nor runs anything.
    guard.cancel();
    drop(guard);
    assert_eq!(before.get(), 1);
}

#[test]
fn two_panicking_callbacks_both_run_and_one_panic_resurfaces() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _gc) = ctx.with_cancel();
    let calls = Calls::default();
    let ran = Calls::default();
    let ran_count = ran.clone();
    let ran2 = ran.clone();
    let _a = ctx.after_func(move || {
        ran.callback()();
        panic!("first");
    });
    let _b = child.after_func(move || {
        ran2.callback()();
        panic!("second");
    });
    let _c = child.after_func(calls.callback());
    let payload = catch_unwind(AssertUnwindSafe(|| drop(guard))).expect_err("a panic resurfaces");
    let message = panic_message(&*payload);
    assert!(message == "first" || message == "second", "{message}");
    assert_eq!(ran_count.get(), 2, "both panicking callbacks ran");
    assert_eq!(calls.get(), 1);
    assert!(child.is_done());
}

#[test]
fn panicking_after_func_while_unwinding_does_not_abort() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let calls = Calls::default();
    let _a = ctx.after_func(|| panic!("inner"));
    let _b = ctx.after_func(calls.callback());
    let payload = catch_unwind(AssertUnwindSafe(move || {
        let _guard = guard; // dropped (cancelling) during unwinding
        panic!("outer");
    }))
    .expect_err("outer panic");
    assert_eq!(panic_message(&*payload), "outer");
    assert!(ctx.is_done());
    assert_eq!(calls.get(), 1);
}

/// A callback panicking on a deadline fired by `ManualClock::advance`: the panic resurfaces
/// from `advance`, and every other deadline due at that time still completes (whichever
/// order the clock fires them in), so no context is left live past its deadline.
#[test]
fn panicking_after_func_fired_by_the_clock_loses_no_other_deadline() {
    for panicking_first in [true, false] {
        let (clock, root) = clocked();
        let mut contexts = Vec::new();
        let calls = Calls::default();
        for i in 0..3 {
            let (ctx, guard) = root.with_timeout(Duration::from_secs(1));
            let panics = if panicking_first { i == 0 } else { i == 2 };
            if panics {
                drop(ctx.after_func(|| panic!("timer boom")));
            }
            drop(ctx.after_func(calls.callback()));
            contexts.push((ctx, guard));
        }
        let result = catch_unwind(AssertUnwindSafe(|| clock.advance(Duration::from_secs(1))));
        assert!(result.is_err(), "panicking_first={panicking_first}: the panic resurfaces");
        // Give the clock another chance to fire whatever is due, without moving it.
        clock.advance(Duration::ZERO);
        for (i, (ctx, _)) in contexts.iter().enumerate() {
            assert_eq!(
                ctx.err(),
                Some(Error::DeadlineExceeded),
                "panicking_first={panicking_first}: context #{i} is past its deadline"
            );
        }
        assert_eq!(calls.get(), 3, "panicking_first={panicking_first}");
        assert_eq!(clock.pending_timers(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// One round of short-lived children of `parent`, in every flavour.
fn churn(parent: &Context, i: usize) {
    match i % 6 {
        0 => {
            let (c, g) = parent.with_cancel();
            drop(c);
            drop(g);
        }
        1 => {
            let (c, g) = parent.with_cancel();
            g.cancel_with(Why(i));
            let (gc, _gg) = c.with_value(K(1)).with_cancel();
            assert!(gc.is_done());
        }
        2 => {
            let (c, g) = parent.with_cancel();
            g.detach();
            let _v = c.with_value(K(2));
        }
        3 => {
            let (c, g) = parent.with_timeout(HOUR);
            let (gc, _gg) = c.with_cancel();
            drop(g);
            assert!(gc.is_done());
        }
        4 => {
            let (c, g) = parent.with_cancel();
            let calls = Calls::default();
            let _h = c.after_func(calls.callback());
            let h2 = c.after_func(calls.callback());
            assert!(h2.stop());
            g.cancel();
            assert_eq!(calls.get(), 1);
        }
        _ => {
            let (c, g) = parent.with_timeout(HOUR);
            g.detach();
            let (gc, g2) = c.with_value(K(3)).with_cancel();
            drop(g2);
            drop(gc);
        }
    }
}

#[test]
fn long_lived_parent_with_many_short_lived_children_does_not_grow() {
    let _m = measuring();
    let (clock, root) = clocked();
    let (parent, guard) = root.with_cancel();
    // Warm up: the parent's registration storage is allocated on first use.
    for i in 0..12 {
        churn(&parent, i);
    }
    let before = live();
    for i in 0..100_000 {
        churn(&parent, i);
    }
    assert_eq!(live(), before, "live allocations after 100k children");
    assert_eq!(clock.pending_timers(), 0);
    assert!(!parent.is_done());
    drop(guard);
}

#[test]
fn dropping_every_handle_of_a_detached_child_unlinks_it() {
    let _m = measuring();
    let (parent, guard) = Context::unclocked().with_cancel();
    churn(&parent, 0); // warm up
    let before = live();
    let (child, child_guard) = parent.with_cancel();
    child_guard.detach();
    let grandchild = child.with_value(K(1));
    assert!(live().allocs > before.allocs);
    drop(child);
    drop(grandchild);
    assert_eq!(live(), before, "the detached child is unlinked and freed");

    // Many at once: the count comes back (the parent's list may keep its capacity).
    let children: Vec<Context> = (0..1000)
        .map(|_| {
            let (c, g) = parent.with_cancel();
            g.detach();
            c
        })
        .collect();
    drop(children);
    assert_eq!(live().allocs, before.allocs);
    // And a parent cancel afterwards has nothing to visit; it still works.
    guard.cancel();
    assert!(parent.is_done());
}

#[test]
fn after_func_stop_releases_the_closure_and_its_registration() {
    let _m = measuring();
    let (ctx, guard) = Context::unclocked().with_cancel();
    let drops = DropCount::default();
    let calls = Calls::default();
    let h = ctx.after_func({
        let token = drops.token();
        let cb = calls.callback();
        move || {
            let _token = token;
            cb();
        }
    });
    assert_eq!(drops.get(), 0);
    assert!(h.stop());
    assert_eq!(drops.get(), 1, "stop() drops the closure at once, handle still alive");
    guard.cancel();
    assert_eq!(calls.get(), 0);
    drop(h);

    // A closure that ran is released too.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let drops = DropCount::default();
    let h = ctx.after_func({
        let token = drops.token();
        move || drop(token)
    });
    guard.cancel();
    assert_eq!(drops.get(), 1);
    drop(h);

    // Register/stop churn on a live context, then dropping it, returns to the same
    // allocation count: neither the callbacks nor the node are kept.
    let cycle = |n: usize| {
        let (ctx, guard) = Context::unclocked().with_cancel();
        for _ in 0..n {
            let h = ctx.after_func(|| {});
            assert!(h.stop());
        }
        let handles: Vec<AfterFunc> = (0..n / 100).map(|_| ctx.after_func(|| {})).collect();
        for h in &handles {
            assert!(h.stop());
        }
        drop(handles);
        guard.detach();
        drop(ctx);
    };
    cycle(100); // warm up
    let before = live();
    cycle(10_000);
    assert_eq!(live(), before);
}

#[test]
fn abandoned_child_with_callback_is_freed_after_parent_cancel() {
    let _m = measuring();
    // Warm up once (lazy storage, thread locals of the runtime).
    for _ in 0..2 {
        let before = live();
        {
            let (parent, guard) = Context::unclocked().with_cancel();
            let (child, child_guard) = parent.with_value(K(1)).with_cancel();
            child_guard.detach();
            let calls = Calls::default();
            drop(child.after_func(calls.callback()));
            drop(child);
            guard.cancel();
            assert_eq!(calls.get(), 1);
        }
        assert_eq!(live(), before);
    }
}

#[test]
fn deadline_children_release_timers_and_memory() {
    let _m = measuring();
    let (clock, root) = clocked();
    let (parent, _g) = root.with_cancel();
    churn(&parent, 3);
    churn(&parent, 5);
    let before = live();
    for i in 0..2000u64 {
        let (c, g) = parent.with_timeout(Duration::from_secs(1 + i % 7));
        if i % 3 == 0 {
            g.cancel();
        } else if i % 3 == 1 {
            g.detach();
        } else {
            drop(g);
        }
        drop(c);
    }
    assert_eq!(clock.pending_timers(), 0);
    assert_eq!(live().allocs, before.allocs);
}

// ---------------------------------------------------------------------------------------
// Deep chains
// ---------------------------------------------------------------------------------------

#[test]
fn million_deep_cancel_chain_on_a_small_stack() {
    on_small_stack(|| {
        let why = Why::new();
        let (root, root_guard) = Context::unclocked().with_cancel();
        let mut leaf = root.clone();
        for _ in 0..scaled(1_000_000) {
            let (child, guard) = leaf.with_cancel();
            guard.detach();
            leaf = child;
        }
        assert!(!leaf.is_done());
        root_guard.cancel_with(why.clone());
        assert_eq!(leaf.err(), Some(Error::Canceled));
        assert_eq!(cause_id(&leaf), Some(why.0));
        drop(root);
        drop(root_guard);
        drop(leaf);
    });
}

#[test]
fn million_deep_chain_dropped_live_on_a_small_stack() {
    on_small_stack(|| {
        let drops = DropCount::default();
        let (root, root_guard) = Context::unclocked().with_value(drops.token()).with_cancel();
        let mut leaf = root.clone();
        let mut guards = Vec::new();
        for _ in 0..scaled(1_000_000) {
            let (child, guard) = leaf.with_cancel();
            guards.push(guard);
            leaf = child;
        }
        let calls = Calls::default();
        let h = leaf.after_func(calls.callback());
        drop(root);
        // Dropping the guards in order cancels the top one, which completes the whole chain.
        drop(guards);
        assert_eq!(calls.get(), 1);
        assert_eq!(leaf.err(), Some(Error::Canceled));
        assert!(!root_guard.is_done());
        assert!(!h.stop());
        drop(h);
        drop(leaf); // frees a million nodes
        assert_eq!(drops.get(), 0, "root_guard still holds the root");
        root_guard.detach();
        assert_eq!(drops.get(), 1, "everything is freed");
    });
}

#[test]
fn hundred_thousand_deep_value_chain_on_a_small_stack() {
    on_small_stack(|| {
        let why = Why::new();
        let (root, guard) = Context::unclocked().with_value(K(0)).with_cancel();
        let mut leaf = root.clone();
        for i in 0..100_000u32 {
            leaf = leaf.with_value(i);
        }
        assert_eq!(leaf.value::<u32>(), Some(&99_999));
        assert_eq!(leaf.value::<K>(), Some(&K(0)), "found 100k levels up");
        assert_eq!(leaf.value::<K2>(), None);
        let calls = Calls::default();
        let _h = leaf.after_func(calls.callback());
        guard.cancel_with(why.clone());
        assert_eq!(calls.get(), 1);
        assert_eq!(leaf.err(), Some(Error::Canceled));
        assert_eq!(cause_id(&leaf), Some(why.0));
        drop(root);
        drop(leaf);
    });
}

#[test]
fn mixed_20k_deep_chain_on_a_small_stack() {
    on_small_stack(|| {
        let (clock, root) = clocked();
        let (top, _top_guard) = root.with_timeout(HOUR);
        let mut leaf = top.clone();
        for i in 0..20_000u64 {
            leaf = match i % 4 {
                0 => leaf.with_value(i),
                1 => {
                    let (c, g) = leaf.with_cancel();
                    g.detach();
                    c
                }
                2 => {
                    let (c, g) = leaf.with_timeout(HOUR * 2);
                    g.detach();
                    c
                }
                _ => leaf.with_value(K2(1)),
            };
        }
        assert_eq!(leaf.deadline(), top.deadline());
        assert_eq!(clock.pending_timers(), 1, "later deadlines below an earlier one add none");
        clock.advance(HOUR);
        assert_eq!(leaf.err(), Some(Error::DeadlineExceeded));
        assert_eq!(default_cause(&leaf), Some(Error::DeadlineExceeded));
        let w = leaf.without_cancel();
        assert!(!w.is_done());
        assert_eq!(w.value::<u64>(), Some(&19_996));
        drop(leaf);
        drop(w);
    });
}

/// `CANCELCTX_TEST_SCALE=small` (set by `scripts/sanitize.sh`) shrinks the million-element
/// tests tenfold, for slow instrumented runs; the default is the full size.
fn scaled(n: usize) -> usize {
    match std::env::var("CANCELCTX_TEST_SCALE").as_deref() {
        Ok("small") => n / 10,
        _ => n,
    }
}
