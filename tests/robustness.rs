//! Robustness: hostile or careless user code (panicking callbacks, wakers and clocks, clocks
//! that wake early or inside `schedule`, re-entrant clock moves) and what new users trip on
//! (issue #12). Every test here failed (or did not compile) before the change it pins.
//!
//! Time is `ManualClock` or a scripted clock everywhere, except the std clock's own timer
//! thread (item 1), where a bounded wait only turns a hang into a failure.

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe, RefUnwindSafe, UnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::task::{Wake, Waker};
use std::thread;

use cancelctx::{
    AfterFunc, CancelGuard, Cancelled, CancelledOwned, Clock, Context, Error, Instant, ManualClock,
    TimerKey,
};
use common::{counting_waker, Tag};
use futures::future::FusedFuture;
use static_assertions::assert_impl_all;

fn at(nanos: u64) -> Instant {
    Instant::from_nanos(nanos)
}

// ---------------------------------------------------------------------------------------
// Item 7: deadline-only constructors need no guard.

#[test]
fn timeout_only_is_live_until_its_deadline() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let ctx = root.with_timeout_only(Duration::from_nanos(10));
    assert_eq!(ctx.err(), None, "no guard was dropped, so nothing cancelled it");
    assert_eq!(ctx.deadline(), Some(at(10)));
    clock.advance(Duration::from_nanos(9));
    assert_eq!(ctx.err(), None);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn deadline_only_follows_the_parent_and_releases_its_timer_on_drop() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (parent, guard) = root.with_cancel();
    let ctx = parent.with_deadline_only(at(100));
    assert_eq!(clock.pending_timers(), 1);
    drop(ctx);
    assert_eq!(clock.pending_timers(), 0, "dropping the only handle releases the timer");

    let ctx = parent.with_deadline_only(at(100));
    guard.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(clock.pending_timers(), 0);

    // A deadline that has passed gives a context born done, as with_deadline does.
    let ctx = root.with_deadline_only(clock.now());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

// ---------------------------------------------------------------------------------------
// Item 8: a guard carries the cause it cancels with on drop.

#[test]
fn dropped_guard_cancels_with_its_drop_cause() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _child_guard) = ctx.with_cancel();
    let guard = guard.with_drop_cause(Tag("client disconnected"));
    assert!(format!("{guard:?}").contains("client disconnected"));
    drop(guard);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("client disconnected")));
    assert_eq!(child.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("client disconnected")));
}

#[test]
fn drop_cause_is_ignored_by_explicit_cancels_and_later_drops() {
    // An explicit cancel does not use the drop cause.
    let (ctx, mut guard) = Context::unclocked().with_cancel();
    guard.set_drop_cause(Arc::new(Tag("dropped")));
    guard.cancel();
    drop(guard);
    assert!(ctx.cause().unwrap().is::<Error>(), "{:?}", ctx.cause());

    // The first completion wins: a drop after the parent completed changes nothing.
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (ctx, guard) = parent.with_cancel();
    let guard = guard.with_drop_cause(Tag("dropped"));
    parent_guard.cancel_with(Tag("parent"));
    drop(guard);
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("parent")));

    // set_drop_cause replaces; detach drops it unused.
    let (ctx, mut guard) = Context::unclocked().with_cancel();
    guard.set_drop_cause(Arc::new(Tag("first")));
    guard.set_drop_cause(Arc::new(Tag("second")));
    drop(guard);
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("second")));
    let (ctx, guard) = Context::unclocked().with_cancel();
    guard.with_drop_cause(Tag("unused")).detach();
    assert!(!ctx.is_done());
}

// ---------------------------------------------------------------------------------------
// Item 9: `()`-output futures.

fn wants_unit_future<F: Future<Output = ()> + Send + 'static>(f: F) -> F {
    f
}

#[test]
fn cancelled_resolves_to_unit_when_done() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = pin!(ctx.cancelled());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(!fut.is_terminated());
    guard.cancel();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(()));
    assert!(fut.is_terminated());
    assert!(format!("{fut:?}").starts_with("Cancelled"));
}

#[test]
fn cancelled_owned_plugs_into_unit_future_apis() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let signal = wants_unit_future(ctx.cancelled_owned());
    let waiter = std::thread::spawn(move || futures::executor::block_on(signal));
    guard.cancel();
    waiter.join().unwrap();

    // Never-done contexts stay pending, without registering anything.
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = pin!(Context::unclocked().cancelled_owned());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(!fut.is_terminated());
    assert_eq!(Arc::strong_count(&counter), 2, "the waker was not stored anywhere");
}

#[test]
fn cancelled_in_select_on_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (ctx, guard) = Context::unclocked().with_cancel();
        tokio::spawn(async move { guard.cancel() });
        tokio::select! {
            () = ctx.cancelled() => {}
            () = std::future::pending::<()>() => unreachable!(),
        }
        assert!(ctx.is_done());
    });
}

// ---------------------------------------------------------------------------------------
// Item 10: unwind safety; and the rest of the public API's auto traits.

assert_impl_all!(Context: UnwindSafe, RefUnwindSafe, Send, Sync);
assert_impl_all!(CancelGuard: UnwindSafe, RefUnwindSafe, Send, Sync);
assert_impl_all!(AfterFunc: UnwindSafe, RefUnwindSafe, Send, Sync);
assert_impl_all!(Cancelled<'static>: Send, Sync, Unpin, std::fmt::Debug);
assert_impl_all!(CancelledOwned: Send, Sync, Unpin, std::fmt::Debug);

#[test]
fn catch_unwind_over_a_borrowed_context() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    // Compiles without AssertUnwindSafe: that is the point.
    let result = catch_unwind(|| {
        ctx.check().unwrap();
        guard.cancel();
        ctx.check().unwrap(); // panics: cancelled
    });
    assert!(result.is_err());
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

// ---------------------------------------------------------------------------------------
// Item 12: never-done contexts.

#[test]
fn can_be_done_tells_never_done_contexts_apart() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    assert!(!root.can_be_done());
    assert!(!root.with_value(1u8).can_be_done());
    let (ctx, _guard) = root.with_cancel();
    assert!(ctx.can_be_done());
    assert!(ctx.with_value(1u8).can_be_done());
    assert!(!ctx.without_cancel().can_be_done());
    assert!(root.with_timeout_only(Duration::from_secs(1)).can_be_done());

    // What the docs warn about: f is dropped at once, unrun, on a never-done context.
    let (tx, rx) = mpsc::channel::<()>();
    let handle = root.after_func(move || drop(tx));
    assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    assert!(handle.stop());
}

// ---------------------------------------------------------------------------------------
// Shared test clocks.

/// Bounds waits that only a bug can make long (a hang becomes a failure); never a measurement.
const HANG: Duration = Duration::from_secs(20);

/// A `ManualClock` whose `cancel` runs a hook after releasing the timer (to panic, block or
/// count).
struct HookedClock {
    inner: ManualClock,
    on_cancel: Box<dyn Fn(TimerKey) + Send + Sync>,
}

impl Clock for HookedClock {
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        Clock::schedule(&self.inner, deadline, waker)
    }
    fn cancel(&self, key: TimerKey) {
        Clock::cancel(&self.inner, key);
        (self.on_cancel)(key);
    }
}

fn hooked(on_cancel: impl Fn(TimerKey) + Send + Sync + 'static) -> (Context, ManualClock) {
    let inner = ManualClock::new();
    let clock = HookedClock { inner: inner.clone(), on_cancel: Box::new(on_cancel) };
    (Context::with_clock(clock), inner)
}

/// A waker whose `wake` panics.
struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("task waker panics");
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Bug 1: a panicking callback must not kill the std clock's timer thread.

#[test]
fn std_timer_thread_survives_a_panicking_callback() {
    let (ctx, _guard) = Context::background().with_timeout(Duration::from_millis(5));
    let _handle = ctx.after_func(|| panic!("after_func panics on the timer thread"));
    assert_eq!(ctx.wait_timeout(HANG), Some(Error::DeadlineExceeded));

    // A panicking task waker woken by the timer thread, too.
    let (ctx, _guard) = Context::background().with_timeout(Duration::from_millis(5));
    let waker = Waker::from(Arc::new(PanickingWaker));
    let mut done = Box::pin(ctx.done());
    assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
    assert_eq!(ctx.wait_timeout(HANG), Some(Error::DeadlineExceeded));

    // The thread still serves deadlines.
    let (ctx, _guard) = Context::background().with_timeout(Duration::from_millis(5));
    assert_eq!(ctx.wait_timeout(HANG), Some(Error::DeadlineExceeded), "timer thread is gone");
}

// ---------------------------------------------------------------------------------------
// Bug 2: a move made from a callback fires everything due.

#[test]
fn nested_manual_clock_move_fires_every_due_deadline() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (a, _ga) = root.with_deadline(at(5));
    let (b, _gb) = root.with_deadline(at(8));
    let seen = Arc::new(Mutex::new(None));
    let _h = a.after_func({
        let (clock, b, seen) = (clock.clone(), b.clone(), seen.clone());
        move || {
            clock.set(at(20));
            *seen.lock().unwrap() = Some(b.err());
        }
    });
    clock.set(at(10)); // both due: the callback of 5 runs first and moves the clock itself
    assert_eq!(*seen.lock().unwrap(), Some(Some(Error::DeadlineExceeded)));
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
    assert_eq!(clock.now(), at(20));
    assert_eq!(clock.pending_timers(), 0);
}

// ---------------------------------------------------------------------------------------
// Bug 3: a wake inside `schedule` must not nest.

/// A clock with a 1 ms tick: it rounds deadlines down to its tick and wakes at once (inside
/// `schedule`) for any deadline at or before the current tick. Counts the nesting depth of
/// `schedule` and panics past 100 (so the old recursion fails instead of overflowing).
#[derive(Default)]
struct TickClock {
    tick: AtomicU64,
    depth: AtomicUsize,
    max_depth: AtomicUsize,
    schedules: AtomicUsize,
    /// Wakes at once for every instant, whatever the tick (a broken clock).
    always_now: bool,
    timers: Mutex<(u64, BTreeMap<TimerKey, Waker>)>,
}

const TICK: u64 = 1_000_000;

impl Clock for TickClock {
    fn now(&self) -> Instant {
        at(self.tick.load(Ordering::SeqCst) * TICK)
    }
    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        self.schedules.fetch_add(1, Ordering::SeqCst);
        let mut t = self.timers.lock().unwrap();
        t.0 += 1;
        let key = TimerKey::new(deadline, t.0);
        if self.always_now || deadline.as_nanos() / TICK <= self.tick.load(Ordering::SeqCst) {
            drop(t);
            let depth = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_depth.fetch_max(depth, Ordering::SeqCst);
            assert!(depth <= 100, "schedule nested {depth} deep");
            waker.wake();
            self.depth.fetch_sub(1, Ordering::SeqCst);
        } else {
            t.1.insert(key, waker);
        }
        key
    }
    fn cancel(&self, key: TimerKey) {
        self.timers.lock().unwrap().1.remove(&key);
    }
}

impl TickClock {
    fn next_tick(&self) {
        let now = self.tick.fetch_add(1, Ordering::SeqCst) + 1;
        let due: Vec<Waker> = {
            let mut t = self.timers.lock().unwrap();
            let later = t.1.split_off(&TimerKey::new(at((now + 1) * TICK), 0));
            std::mem::replace(&mut t.1, later).into_values().collect()
        };
        due.into_iter().for_each(Waker::wake);
    }
}

#[test]
fn early_wake_inside_schedule_does_not_nest() {
    let clock = Arc::new(TickClock::default());
    let root = Context::with_clock(clock.clone());
    let (ctx, _guard) = root.with_timeout(Duration::from_micros(500));
    assert_eq!(ctx.err(), None, "the clock reads 0 ms: not due");
    assert!(clock.max_depth.load(Ordering::SeqCst) <= 1, "{:?}", clock.max_depth);
    assert!(clock.schedules.load(Ordering::SeqCst) < 100);
    clock.next_tick();
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "due at the next tick");
}

#[test]
fn clock_that_always_wakes_at_once_is_given_up_in_bounded_work() {
    let clock = Arc::new(TickClock { always_now: true, ..TickClock::default() });
    let root = Context::with_clock(clock.clone());
    let (ctx, guard) = root.with_timeout(Duration::from_secs(1));
    assert_eq!(ctx.err(), None);
    assert!(clock.max_depth.load(Ordering::SeqCst) <= 1);
    let schedules = clock.schedules.load(Ordering::SeqCst);
    assert!((2..=100).contains(&schedules), "{schedules} schedules");
    guard.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

// ---------------------------------------------------------------------------------------
// Bug 4: after_func on a done context waits for the walk.

#[test]
fn after_func_on_a_done_context_runs_after_the_subtree_is_marked() {
    const DEPTH: usize = 200_000;
    for _ in 0..3 {
        let (top, top_guard) = Context::unclocked().with_cancel();
        let mut guards = Vec::with_capacity(DEPTH);
        let mut leaf = top.clone();
        for _ in 0..DEPTH {
            let (ctx, guard) = leaf.with_cancel();
            guards.push(guard);
            leaf = ctx;
        }
        let canceller = thread::spawn(move || top_guard.cancel());
        while !top.is_done() {
            std::hint::spin_loop();
        }
        let seen = Arc::new(Mutex::new(None));
        let _h = top.after_func({
            let (leaf, seen) = (leaf.clone(), seen.clone());
            move || *seen.lock().unwrap() = Some(leaf.err())
        });
        assert_eq!(*seen.lock().unwrap(), Some(Some(Error::Canceled)), "ran before the walk");
        canceller.join().unwrap();
        drop(guards);
    }
}

// ---------------------------------------------------------------------------------------
// Bug 5: a panic inside a completion walk still finishes it.

/// root → p → d (deadline) → c → e, with a blocking waiter on e and callbacks on p and e.
struct PanicTree {
    p_guard: CancelGuard,
    c_guard: CancelGuard,
    e: Context,
    ran: Arc<AtomicUsize>,
    _handles: (AfterFunc, AfterFunc),
    _other_guards: Vec<CancelGuard>,
}

fn panic_tree(root: &Context) -> PanicTree {
    let (p, p_guard) = root.with_cancel();
    let (d, d_guard) = p.with_deadline(at(100));
    let (c, c_guard) = d.with_cancel();
    let (e, e_guard) = c.with_cancel();
    let ran = Arc::new(AtomicUsize::new(0));
    let on_done = |ctx: &Context| {
        let (ran, ctx2) = (ran.clone(), ctx.clone());
        ctx.after_func(move || {
            assert!(ctx2.is_done());
            ran.fetch_add(1, Ordering::SeqCst);
        })
    };
    let handles = (on_done(&p), on_done(&e));
    PanicTree { p_guard, c_guard, e, ran, _handles: handles, _other_guards: vec![d_guard, e_guard] }
}

/// After a panicking walk: everything below is done, waiters woken, callbacks run, and a
/// losing cancel below returns (the node is FINISHED).
fn assert_walk_finished(tree: PanicTree, waiter: thread::JoinHandle<Error>) {
    let (e_err, ran) = (tree.e.err(), tree.ran.load(Ordering::SeqCst));
    if e_err.is_none() || ran != 2 {
        // Dropping the guards of an unfinished tree would spin forever (losing cancels).
        std::mem::forget(tree);
        panic!("walk left unfinished: descendant {e_err:?}, {ran} of 2 callbacks ran");
    }
    let (tx, rx) = mpsc::channel();
    let c_guard = tree.c_guard;
    thread::spawn(move || {
        c_guard.cancel(); // loses: must not spin forever
        tx.send(()).unwrap();
    });
    assert!(rx.recv_timeout(HANG).is_ok(), "a losing cancel below never returned");
    assert_eq!(waiter.join().unwrap(), Error::Canceled);
    drop(tree.p_guard);
}

fn blocking_waiter(ctx: &Context) -> thread::JoinHandle<Error> {
    let ctx = ctx.clone();
    let waiter = thread::spawn(move || ctx.wait_timeout(HANG).expect("waiter never woken"));
    // Give the waiter a chance to register; the test holds either way.
    thread::sleep(Duration::from_millis(20));
    waiter
}

#[test]
fn panicking_clock_cancel_mid_walk_still_finishes_the_walk() {
    let armed = Arc::new(AtomicBool::new(true));
    let (root, _clock) = hooked({
        let armed = armed.clone();
        move |_| {
            if armed.swap(false, Ordering::SeqCst) {
                panic!("Clock::cancel panics");
            }
        }
    });
    let tree = panic_tree(&root);
    let waiter = blocking_waiter(&tree.e);
    let result = catch_unwind(AssertUnwindSafe(|| tree.p_guard.cancel()));
    let payload = result.expect_err("the clock's panic is resumed on the canceller");
    assert_eq!(panic_message(&*payload), "Clock::cancel panics");
    assert_walk_finished(tree, waiter);
}

#[test]
fn panicking_task_waker_mid_walk_still_finishes_the_walk() {
    let (root, _clock) = hooked(|_| {});
    let tree = panic_tree(&root);
    // The panicking waker registers first, so that it is notified before the others.
    let waker = Waker::from(Arc::new(PanickingWaker));
    let mut panicking = Box::pin(tree.e.done());
    assert!(panicking.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
    let (counter, counting) = counting_waker();
    let mut counted = Box::pin(tree.e.done_owned());
    assert!(counted.as_mut().poll(&mut TaskContext::from_waker(&counting)).is_pending());
    let waiter = blocking_waiter(&tree.e);

    let result = catch_unwind(AssertUnwindSafe(|| tree.p_guard.cancel()));
    let payload = result.expect_err("the waker's panic is resumed on the canceller");
    assert_eq!(panic_message(&*payload), "task waker panics");
    assert_eq!(counter.wakes(), 1, "the waiter after the panicking one was not woken");
    assert_eq!(
        counted.as_mut().poll(&mut TaskContext::from_waker(&counting)),
        Poll::Ready(Error::Canceled)
    );
    // Dropping the listeners afterwards must not trip event-listener's bookkeeping.
    drop(panicking);
    drop(counted);
    assert_walk_finished(tree, waiter);
}

/// The walk wakes waiters before it runs callbacks: a waker's panic is the walk's first panic
/// (collected like a callback's, not unwound mid-walk), every callback still runs, and a
/// waiter on a second node of the walk is still woken. A design pin: it passed before the
/// walk collected wakers' panics itself (a resumed panic was caught again by the walk).
#[test]
fn a_wakers_panic_is_the_walks_first_and_the_walk_goes_on() {
    let (root, guard) = Context::unclocked().with_cancel();
    let (child, _child_guard) = root.with_cancel();
    let waker = Waker::from(Arc::new(PanickingWaker));
    let mut panicking = Box::pin(root.done());
    assert!(panicking.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
    let (counter, counting) = counting_waker();
    let mut counted = Box::pin(child.done());
    assert!(counted.as_mut().poll(&mut TaskContext::from_waker(&counting)).is_pending());
    let ran = Arc::new(AtomicUsize::new(0));
    let _handles = [&root, &child].map(|ctx| {
        let ran = ran.clone();
        ctx.after_func(move || {
            ran.fetch_add(1, Ordering::SeqCst);
            panic!("callback panics");
        })
    });

    let payload = catch_unwind(AssertUnwindSafe(|| guard.cancel())).expect_err("resumed");
    assert_eq!(panic_message(&*payload), "task waker panics");
    assert_eq!(ran.load(Ordering::SeqCst), 2, "every callback ran after the waker's panic");
    assert_eq!(counter.wakes(), 1, "the other node's waiter was woken");
    assert_eq!(
        counted.as_mut().poll(&mut TaskContext::from_waker(&counting)),
        Poll::Ready(Error::Canceled)
    );
}

// ---------------------------------------------------------------------------------------
// Item 11: fired timers are not cancelled.

#[test]
fn fired_timers_are_never_cancelled() {
    let cancels = Arc::new(Mutex::new(Vec::new()));
    let (root, clock) = hooked({
        let cancels = cancels.clone();
        move |key| cancels.lock().unwrap().push(key)
    });
    let (a, _ga) = root.with_deadline(at(10));
    let (_child, _gc) = a.with_cancel(); // a has links: its completion walks
    let (b, gb) = root.with_deadline(at(20));
    clock.set(at(10));
    assert_eq!(a.err(), Some(Error::DeadlineExceeded));
    assert!(cancels.lock().unwrap().is_empty(), "cancelled a fired timer: {cancels:?}");
    drop((_child, _gc, _ga, a));
    assert!(cancels.lock().unwrap().is_empty(), "released a fired timer: {cancels:?}");
    // A timer that has not fired is still released at once.
    gb.cancel();
    assert_eq!(cancels.lock().unwrap().len(), 1);
    assert_eq!(b.err(), Some(Error::Canceled));
    assert_eq!(clock.pending_timers(), 0);
}

// ---------------------------------------------------------------------------------------
// Item 13: a cancel walk must not release a deadline's timer while it is still marking the
// subtree, or a concurrent clock move finds nothing due and returns with live descendants.

#[test]
fn clock_move_during_a_cancel_walk_completes_the_due_subtree() {
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let (root, clock) = hooked(move |_| {
        // Park the walk inside its timer release until the test has moved the clock.
        if entered_tx.send(()).is_ok() {
            let _ = go_rx.lock().unwrap().recv_timeout(HANG);
        }
    });
    let (a, a_guard) = root.with_cancel();
    let (d, _d_guard) = a.with_deadline(at(5));
    let (c, _c_guard) = d.with_cancel();
    let (e, _e_guard) = c.with_cancel();
    let canceller = thread::spawn(move || a_guard.cancel());
    entered_rx.recv_timeout(HANG).expect("the walk never released the timer");
    clock.set(at(5));
    let e_err = e.err();
    drop(go_tx);
    canceller.join().unwrap();
    assert!(e_err.is_some(), "set() returned while a context with a due deadline was live");
    assert!(d.is_done() && c.is_done());
}

// ---------------------------------------------------------------------------------------
// Item 6: time does not stop because an executor did. Real time here (these are real
// runtimes); the deadlines are short and the bound only turns a hang into a failure.

#[cfg(feature = "tokio")]
mod executor_stopped {
    use super::*;
    use cancelctx::TokioClock;

    const SHORT: Duration = Duration::from_millis(20);

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn tokio_runtime_dropped_while_a_deadline_is_pending() {
        let rt = current_thread();
        let root = Context::with_clock(TokioClock::with_handle(rt.handle().clone()));
        let (ctx, _guard) = root.with_timeout(SHORT);
        let (tx, rx) = mpsc::channel();
        let _h = ctx.after_func(move || tx.send(()).unwrap());
        drop(rt); // drops the timer task unfired
        assert_eq!(ctx.wait_timeout(HANG), Some(Error::DeadlineExceeded));
        assert!(rx.recv_timeout(HANG).is_ok(), "after_func never ran");
        assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    }

    #[test]
    fn tokio_runtime_dropped_before_the_deadline_is_made() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let root = Context::with_clock(TokioClock::with_handle(rt.handle().clone()));
        let (early, _g) = root.with_timeout(Duration::from_secs(3600));
        rt.shutdown_background();
        let (ctx, _guard) = root.with_timeout(SHORT);
        assert_eq!(ctx.wait_timeout(HANG), Some(Error::DeadlineExceeded));
        assert_eq!(early.err(), None, "a far deadline is not fired early by the shutdown");
        // Cancelling a deadline moved to the std clock releases it.
        let (late, late_guard) = root.with_timeout(Duration::from_secs(3600));
        late_guard.cancel();
        assert_eq!(late.err(), Some(Error::Canceled));
    }

    #[test]
    fn blocking_wait_on_a_current_thread_runtimes_own_thread() {
        let rt = current_thread();
        let err = rt.block_on(async {
            let root = Context::with_clock(TokioClock::new());
            let (ctx, _guard) = root.with_timeout(SHORT);
            // Blocks the only thread that could run the runtime's timer.
            ctx.wait_timeout(HANG)
        });
        assert_eq!(err, Some(Error::DeadlineExceeded));
    }

    /// A design pin, not a regression test (it passed before the backup existed): the std
    /// clock backup must not complete a deadline that virtual time has not reached.
    #[test]
    fn paused_time_still_decides_tokio_deadlines() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let root = Context::with_clock(TokioClock::new());
            let (ctx, _guard) = root.with_timeout(Duration::from_millis(1));
            let (far, _far_guard) = root.with_timeout(Duration::from_secs(3600));
            // Real time passes (the backup wake-up fires), virtual time does not.
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(ctx.err(), None, "a backup must not beat virtual time");
            assert_eq!(ctx.done().await, Error::DeadlineExceeded);
            assert_eq!(far.err(), None);
        });
    }
}

/// A pin, not a regression test (it passed before #12): async-io's fallback driver thread
/// serves timers while the `block_on` thread is blocked, so `AsyncIoClock` needs no backup.
#[cfg(feature = "async-io")]
#[test]
fn async_io_deadline_with_the_block_on_thread_blocked() {
    let root = Context::with_clock(cancelctx::AsyncIoClock::new());
    let err = async_io::block_on(async {
        let (ctx, _guard) = root.with_timeout(Duration::from_millis(20));
        // Blocks the thread that drives async-io's reactor from `block_on`.
        ctx.wait_timeout(HANG)
    });
    assert_eq!(err, Some(Error::DeadlineExceeded));
}
