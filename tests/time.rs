//! Time and deadlines, deterministically.
//!
//! Every deadline here runs on a [`ManualClock`] (`Context::with_clock(clock.clone())`) or on
//! [`ScriptedClock`], a clock written in this file that keeps the wakers it is given and
//! calls them only when a test says so (early, late, twice, after a cancel, inside
//! `schedule`). No assertion depends on wall-clock time; cross-thread waits have generous
//! bounds that only guard against hangs.
//!
//! Sections: `Instant` arithmetic; deadlines and causes; waiters and `after_func`; parent and
//! child deadlines; born-done deadlines; cancel before the deadline; dropping handles;
//! `remaining`/`deadline`/`now`/`clock`; unclocked trees; extreme deadlines; races between
//! cancel and expiry; misbehaving clocks; a million timeouts with a counting allocator
//! (measured in one test only, per thread, so parallel tests do not disturb it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use cancelctx::{AfterFunc, Clock, Context, Error, Instant, ManualClock, NoClockError, TimerKey};

mod common;
use common::Tag;

/// Upper bound for cross-thread waits; only guards against hangs, never asserted on.
const BOUND: Duration = Duration::from_secs(30);
const NS: Duration = Duration::from_nanos(1);
const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn clocked() -> (ManualClock, Context) {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    (clock, root)
}

fn at(nanos: u64) -> Instant {
    Instant::from_nanos(nanos)
}

/// Asserts the context is live: no error, no cause, `check` passes.
#[track_caller]
fn assert_live(ctx: &Context) {
    assert!(!ctx.is_done(), "expected live: {ctx:?}");
    assert_eq!(ctx.err(), None);
    assert_eq!(ctx.check(), Ok(()));
    assert!(ctx.cause().is_none(), "a live context has no cause");
}

/// Asserts the context is done with `err`, and that its cause is `Tag(tag)` if given,
/// otherwise the `Error` itself.
#[track_caller]
fn assert_done(ctx: &Context, err: Error, tag: Option<&'static str>) {
    assert!(ctx.is_done(), "expected done with {err:?}: {ctx:?}");
    assert_eq!(ctx.err(), Some(err));
    assert_eq!(ctx.check(), Err(err));
    let cause = ctx.cause().expect("a done context has a cause");
    match tag {
        Some(tag) => assert_eq!(
            cause.downcast_ref::<Tag>(),
            Some(&Tag(tag)),
            "cause should be Tag({tag:?}), got {cause:?}"
        ),
        None => assert_eq!(
            cause.downcast_ref::<Error>(),
            Some(&err),
            "cause should be the error itself, got {cause:?}"
        ),
    }
}

/// Registers an `after_func` that counts its runs.
fn count_runs(ctx: &Context) -> (Arc<AtomicUsize>, AfterFunc) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handle = ctx.after_func(move || {
        r.fetch_add(1, SeqCst);
    });
    (runs, handle)
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// Runs `f` on another thread and fails (instead of hanging) if it does not finish within
/// [`BOUND`]; a panic in `f` is resumed here.
fn within_bound<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(BOUND) {
        Ok(value) => {
            handle.join().unwrap();
            value
        }
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it returns"),
        },
        Err(RecvTimeoutError::Timeout) => panic!("hung: did not finish within {BOUND:?}"),
    }
}

/// A clock that only does what the test tells it: `now` is set by hand, `schedule` records
/// the waker and never calls it (unless `jump_on_schedule` is armed), and [`fire`] calls a
/// recorded waker whenever asked — early, late, twice, or after the wake-up was cancelled.
///
/// [`fire`]: ScriptedClock::fire
#[derive(Clone, Default)]
struct ScriptedClock(Arc<Mutex<Script>>);

#[derive(Default)]
struct Script {
    now: Instant,
    next_id: u64,
    /// Every wake-up ever scheduled, in order, with its waker (kept after it fired or was
    /// cancelled, so the test can misbehave with it).
    scheduled: Vec<(TimerKey, Waker)>,
    /// Scheduled, not fired, not cancelled.
    pending: BTreeSet<TimerKey>,
    cancels: Vec<TimerKey>,
    /// If set, the next `schedule` first moves `now` here (as if the scheduling thread were
    /// preempted) and wakes at once, inside `schedule`, if the deadline has then passed.
    jump_on_schedule: Option<Instant>,
}

impl ScriptedClock {
    fn set_now(&self, now: Instant) {
        self.0.lock().unwrap().now = now;
    }
    fn schedules(&self) -> usize {
        self.0.lock().unwrap().scheduled.len()
    }
    fn key(&self, i: usize) -> TimerKey {
        self.0.lock().unwrap().scheduled[i].0
    }
    fn pending(&self) -> Vec<TimerKey> {
        self.0.lock().unwrap().pending.iter().copied().collect()
    }
    fn cancels(&self) -> Vec<TimerKey> {
        self.0.lock().unwrap().cancels.clone()
    }
    /// Calls the waker of the `i`-th scheduled wake-up (no lock held), whatever its state.
    fn fire(&self, i: usize) {
        let waker = {
            let mut script = self.0.lock().unwrap();
            let (key, waker) = script.scheduled[i].clone();
            script.pending.remove(&key);
            waker
        };
        waker.wake();
    }
}

impl Clock for ScriptedClock {
    fn now(&self) -> Instant {
        self.0.lock().unwrap().now
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let mut script = self.0.lock().unwrap();
        let mut wake_now = false;
        if let Some(jump) = script.jump_on_schedule.take() {
            script.now = script.now.max(jump);
            wake_now = deadline <= script.now;
        }
        script.next_id += 1;
        let key = TimerKey::new(deadline, script.next_id);
        script.scheduled.push((key, waker.clone()));
        if !wake_now {
            script.pending.insert(key);
        }
        drop(script);
        if wake_now {
            waker.wake();
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        let mut script = self.0.lock().unwrap();
        script.cancels.push(key);
        script.pending.remove(&key);
    }
}

// ---------------------------------------------------------------------------------------
// Instant arithmetic
// ---------------------------------------------------------------------------------------

#[test]
fn instant_add_and_sub() {
    let t = Instant::ZERO + Duration::from_millis(1);
    assert_eq!(t, at(1_000_000));
    assert_eq!(t.as_nanos(), 1_000_000);
    assert_eq!(t + Duration::from_micros(1), at(1_001_000));
    assert_eq!(t - Duration::from_micros(1), at(999_000));
    assert_eq!(t - Duration::from_millis(1), Instant::ZERO);
    assert_eq!(t + Duration::ZERO, t);
    assert_eq!(t - Duration::ZERO, t);
    assert_eq!(Instant::ZERO + Duration::from_nanos(u64::MAX), Instant::MAX);
    assert_eq!(Instant::MAX - Duration::from_nanos(u64::MAX), Instant::ZERO);
    assert_eq!(Instant::MAX - NS, at(u64::MAX - 1));

    let mut m = Instant::ZERO;
    m += SEC;
    assert_eq!(m, at(1_000_000_000));
    m -= Duration::from_millis(500);
    assert_eq!(m, at(500_000_000));
    m -= Duration::from_millis(500);
    assert_eq!(m, Instant::ZERO);
}

#[test]
fn instant_checked_add_and_sub() {
    assert_eq!(Instant::ZERO.checked_add(NS), Some(at(1)));
    assert_eq!(Instant::ZERO.checked_add(Duration::from_nanos(u64::MAX)), Some(Instant::MAX));
    assert_eq!(at(1).checked_add(Duration::from_nanos(u64::MAX)), None);
    assert_eq!(Instant::MAX.checked_add(Duration::ZERO), Some(Instant::MAX));
    assert_eq!(Instant::MAX.checked_add(NS), None);
    // A duration longer than u64::MAX nanoseconds never fits, from any instant.
    assert_eq!(Instant::ZERO.checked_add(Duration::MAX), None);
    assert_eq!(Instant::ZERO.checked_add(Duration::from_nanos(u64::MAX) + NS), None);

    assert_eq!(at(5).checked_sub(Duration::from_nanos(5)), Some(Instant::ZERO));
    assert_eq!(at(5).checked_sub(Duration::from_nanos(6)), None);
    assert_eq!(Instant::ZERO.checked_sub(Duration::ZERO), Some(Instant::ZERO));
    assert_eq!(Instant::ZERO.checked_sub(NS), None);
    assert_eq!(Instant::MAX.checked_sub(Duration::from_nanos(u64::MAX)), Some(Instant::ZERO));
    assert_eq!(Instant::MAX.checked_sub(Duration::MAX), None);
}

#[test]
fn instant_saturating_ops() {
    let (a, b) = (at(10), at(25));
    assert_eq!(b.saturating_duration_since(a), Duration::from_nanos(15));
    assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
    assert_eq!(a.saturating_duration_since(a), Duration::ZERO);
    assert_eq!(
        Instant::MAX.saturating_duration_since(Instant::ZERO),
        Duration::from_nanos(u64::MAX)
    );
    assert_eq!(Instant::ZERO.saturating_duration_since(Instant::MAX), Duration::ZERO);
    assert_eq!(Instant::ZERO.saturating_add(Duration::MAX), Instant::MAX);
    assert_eq!(at(7).saturating_add(Duration::from_nanos(u64::MAX)), Instant::MAX);
    assert_eq!(at(7).saturating_add(NS), at(8));
}

#[test]
#[should_panic(expected = "overflow when adding a duration to a cancelctx::Instant")]
fn instant_add_past_max_panics() {
    let _ = Instant::MAX + NS;
}

#[test]
#[should_panic(expected = "overflow when adding a duration to a cancelctx::Instant")]
fn instant_add_duration_max_panics() {
    let _ = Instant::ZERO + Duration::MAX;
}

#[test]
#[should_panic(expected = "overflow when adding a duration to a cancelctx::Instant")]
fn instant_add_assign_past_max_panics() {
    let mut t = at(u64::MAX - 1);
    t += Duration::from_nanos(2);
}

#[test]
#[should_panic(expected = "overflow when subtracting a duration from a cancelctx::Instant")]
fn instant_sub_before_zero_panics() {
    let _ = Instant::ZERO - NS;
}

#[test]
#[should_panic(expected = "overflow when subtracting a duration from a cancelctx::Instant")]
fn instant_sub_assign_before_zero_panics() {
    let mut t = at(3);
    t -= Duration::from_nanos(4);
}

#[test]
fn instant_constants_order_and_hash() {
    assert_eq!(Instant::ZERO.as_nanos(), 0);
    assert_eq!(Instant::MAX.as_nanos(), u64::MAX);
    assert_eq!(Instant::default(), Instant::ZERO);
    assert_eq!(at(42).as_nanos(), 42);

    assert!(Instant::ZERO < at(1));
    assert!(at(1) < at(2));
    assert!(at(u64::MAX - 1) < Instant::MAX);
    assert_eq!(at(3).cmp(&at(3)), std::cmp::Ordering::Equal);
    let mut v = vec![Instant::MAX, at(5), Instant::ZERO, at(2), at(5)];
    v.sort();
    assert_eq!(v, [Instant::ZERO, at(2), at(5), at(5), Instant::MAX]);
    assert_eq!(v.iter().max(), Some(&Instant::MAX));
    assert_eq!(v.iter().min(), Some(&Instant::ZERO));
    assert_eq!(at(9).max(at(4)), at(9));

    let s = RandomState::new();
    assert_eq!(s.hash_one(at(77)), s.hash_one(Instant::ZERO + Duration::from_nanos(77)));
    let set: HashSet<Instant> = v.into_iter().collect();
    assert_eq!(set.len(), 4);
    assert!(set.contains(&at(5)) && set.contains(&Instant::MAX) && !set.contains(&at(6)));

    // Copy: still usable after being added to.
    let t = at(1);
    let u = t + NS;
    assert_eq!((t, u), (at(1), at(2)));
}

// ---------------------------------------------------------------------------------------
// Deadlines and causes
// ---------------------------------------------------------------------------------------

#[test]
fn deadline_fires_exactly_at_the_deadline_on_advance() {
    let (clock, root) = clocked();
    let (ctx, _guard) = root.with_deadline(at(100));
    assert_eq!(ctx.deadline(), Some(at(100)));
    assert_eq!(clock.pending_timers(), 1);
    assert_live(&ctx);

    clock.advance(Duration::from_nanos(99));
    assert_live(&ctx);
    assert_eq!(clock.pending_timers(), 1);

    clock.advance(NS);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert!(ctx.err().unwrap().is_timeout());
    assert_eq!(clock.pending_timers(), 0);
    assert!(!root.is_done());
}

#[test]
fn deadline_fires_exactly_at_the_deadline_on_set() {
    let (clock, root) = clocked();
    let (ctx, _guard) = root.with_deadline(at(100));
    clock.set(at(99));
    assert_live(&ctx);
    clock.set(at(100));
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn deadline_fires_when_the_clock_jumps_far_past_it() {
    let (clock, root) = clocked();
    let (ctx, _guard) = root.with_deadline(at(100));
    clock.set(at(1_000_000_000_000));
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
}

#[test]
fn timeout_counts_from_the_clocks_now() {
    let (clock, root) = clocked();
    clock.advance(Duration::from_secs(5));
    let (ctx, _guard) = root.with_timeout(Duration::from_secs(10));
    assert_eq!(ctx.deadline(), Some(Instant::ZERO + Duration::from_secs(15)));
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(10)));
    clock.advance(Duration::from_secs(10) - NS);
    assert_live(&ctx);
    clock.advance(NS);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);

    let (t, _g) = root.try_with_timeout(SEC).unwrap();
    assert_eq!(t.deadline(), Some(clock.now() + SEC));
    let (d, _g) = root.try_with_deadline(clock.now() + SEC).unwrap();
    assert_eq!(d.deadline(), t.deadline());
    assert_eq!(clock.pending_timers(), 2);
    clock.advance(SEC);
    assert_done(&t, Error::DeadlineExceeded, None);
    assert_done(&d, Error::DeadlineExceeded, None);
}

#[test]
fn deadline_cause_is_the_given_cause() {
    let (clock, root) = clocked();
    let (d, _g1) = root.with_deadline_cause(at(10), Tag("deadline"));
    let (t, _g2) = root.with_timeout_cause(Duration::from_nanos(10), Tag("timeout"));
    assert_eq!(d.deadline(), Some(at(10)));
    assert_eq!(t.deadline(), Some(at(10)));
    assert_eq!(clock.pending_timers(), 2);
    assert!(d.cause().is_none() && t.cause().is_none());

    clock.set(at(10));
    assert_done(&d, Error::DeadlineExceeded, Some("deadline"));
    assert_done(&t, Error::DeadlineExceeded, Some("timeout"));
    // The same cause every time it is asked.
    assert!(Arc::ptr_eq(&d.cause().unwrap(), &d.cause().unwrap()));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn descendants_complete_with_the_deadlines_error_and_cause() {
    #[derive(Debug, PartialEq)]
    struct Key(u32);

    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout_cause(Duration::from_secs(10), Tag("parent"));
    let value = ctx.with_value(Key(1));
    let (cancel_child, _g1) = value.with_cancel();
    let (grandchild, _g2) = cancel_child.with_cancel();
    let deep = grandchild.with_value(Key(2)).with_value("x");
    let (later, _g3) = deep.with_timeout_cause(Duration::from_secs(20), Tag("later"));
    let everyone = [&ctx, &value, &cancel_child, &grandchild, &deep, &later];
    let runs: Vec<_> = everyone.iter().map(|c| count_runs(c)).collect();
    // `later` shares the parent's timer: only one is pending.
    assert_eq!(clock.pending_timers(), 1);
    for c in everyone {
        assert_live(c);
        assert_eq!(c.deadline(), Some(at(10_000_000_000)));
    }

    clock.advance(Duration::from_secs(10));
    for c in everyone {
        assert_done(c, Error::DeadlineExceeded, Some("parent"));
    }
    for (ran, _handle) in &runs {
        assert_eq!(ran.load(SeqCst), 1);
    }
    assert_eq!(deep.value::<Key>(), Some(&Key(2)));
    assert_eq!(clock.pending_timers(), 0);
    assert!(!root.is_done());
}

// ---------------------------------------------------------------------------------------
// Waiters and after_func
// ---------------------------------------------------------------------------------------

#[test]
fn blocking_waiters_wake_on_the_deadline() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout_cause(SEC, Tag("t"));
    let (child, _cg) = ctx.with_cancel();
    let waiters: Vec<_> = [ctx.clone(), child.clone(), ctx.with_value(3u8)]
        .into_iter()
        .map(|c| thread::spawn(move || (c.wait_timeout(BOUND), c.wait())))
        .collect();
    // Give the waiters a chance to block (correctness does not depend on it).
    thread::sleep(Duration::from_millis(50));
    assert_live(&ctx);
    clock.advance(SEC);
    for waiter in waiters {
        let (first, second) = waiter.join().unwrap();
        assert_eq!(first, Some(Error::DeadlineExceeded), "the waiter timed out instead");
        assert_eq!(second, Error::DeadlineExceeded);
    }
    assert_done(&child, Error::DeadlineExceeded, Some("t"));
}

#[test]
fn async_waiters_wake_on_the_deadline() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(SEC);
    let (child, _cg) = ctx.with_cancel();

    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let mut done = pin!(ctx.done());
    let mut child_done = pin!(child.done_owned());
    let mut run = pin!(child.run(std::future::pending::<()>()));
    assert!(done.as_mut().poll(&mut cx).is_pending());
    assert!(child_done.as_mut().poll(&mut cx).is_pending());
    assert!(run.as_mut().poll(&mut cx).is_pending());

    // A waiter on another thread, on an executor.
    let owned = ctx.done_owned();
    let remote = thread::spawn(move || futures::executor::block_on(owned));

    clock.advance(SEC - NS);
    assert_eq!(counter.0.load(SeqCst), 0, "woken before the deadline");
    clock.advance(NS);
    assert!(counter.0.load(SeqCst) >= 3, "advance must wake every registered waiter");
    assert_eq!(done.as_mut().poll(&mut cx), Poll::Ready(Error::DeadlineExceeded));
    assert_eq!(child_done.as_mut().poll(&mut cx), Poll::Ready(Error::DeadlineExceeded));
    assert_eq!(run.as_mut().poll(&mut cx), Poll::Ready(Err(Error::DeadlineExceeded)));
    assert_eq!(remote.join().unwrap(), Error::DeadlineExceeded);
}

#[test]
fn after_func_runs_inside_advance_on_the_advancing_thread() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(SEC);
    let (child, _cg) = ctx.with_cancel();
    let (tx, rx) = mpsc::channel();
    let handles: Vec<AfterFunc> = [&ctx, &child]
        .into_iter()
        .map(|c| {
            let tx = tx.clone();
            let c2 = c.clone();
            c.after_func(move || {
                // The context is already done when its callbacks run.
                tx.send((thread::current().id(), c2.err())).unwrap();
            })
        })
        .collect();
    drop(tx);

    clock.advance(SEC - NS);
    assert!(rx.try_recv().is_err(), "ran before the deadline");
    clock.advance(NS);
    // Both ran before advance returned, on this thread.
    let ran: Vec<_> = rx.try_iter().collect();
    assert_eq!(ran, vec![(thread::current().id(), Some(Error::DeadlineExceeded)); 2]);
    for handle in &handles {
        assert!(!handle.stop(), "already ran");
    }
}

#[test]
fn after_func_stopped_before_the_deadline_never_runs() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(SEC);
    let (runs, handle) = count_runs(&ctx);
    assert!(handle.stop());
    clock.advance(SEC);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(runs.load(SeqCst), 0);
}

#[test]
fn timers_fire_in_deadline_order() {
    let (clock, root) = clocked();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut keep = Vec::new();
    for secs in [30, 10, 20, 40, 5] {
        let (ctx, guard) = root.with_timeout(Duration::from_secs(secs));
        let order = order.clone();
        let handle = ctx.after_func(move || order.lock().unwrap().push(secs));
        keep.push((ctx, guard, handle));
    }
    clock.advance(Duration::from_secs(35));
    assert_eq!(*order.lock().unwrap(), [5, 10, 20, 30]);
    assert_eq!(clock.pending_timers(), 1);
    clock.advance(Duration::from_secs(5));
    assert_eq!(*order.lock().unwrap(), [5, 10, 20, 30, 40]);
}

#[test]
fn after_func_may_use_the_clock_reentrantly() {
    // A callback run by `advance` may create deadlines on, and advance, the same clock.
    within_bound(|| {
        let (clock, root) = clocked();
        let (ctx, _g) = root.with_timeout(SEC);
        let (tx, rx) = mpsc::channel();
        let (c, r) = (clock.clone(), root.clone());
        let _h = ctx.after_func(move || {
            let (inner, guard) = r.with_timeout(SEC);
            assert_eq!(c.pending_timers(), 1);
            c.advance(SEC);
            tx.send((inner, guard)).unwrap();
        });
        clock.advance(SEC);
        let (inner, _guard) = rx.try_recv().expect("the callback ran inside advance");
        assert_done(&inner, Error::DeadlineExceeded, None);
        assert_eq!(clock.now(), Instant::ZERO + 2 * SEC);
        assert_eq!(clock.pending_timers(), 0);
    });
}

// ---------------------------------------------------------------------------------------
// Parent and child deadlines
// ---------------------------------------------------------------------------------------

#[test]
fn child_deadline_is_the_earlier_of_its_own_and_its_parents() {
    let (clock, root) = clocked();
    let (parent, _pg) = root.with_deadline(at(100));
    assert_eq!(clock.pending_timers(), 1);

    // Parent's is earlier: no new timer.
    let (later, _g1) = parent.with_deadline(at(500));
    assert_eq!(later.deadline(), Some(at(100)));
    assert_eq!(clock.pending_timers(), 1);
    // Equal: no new timer either.
    let (equal, _g2) = parent.with_deadline(at(100));
    assert_eq!(equal.deadline(), Some(at(100)));
    assert_eq!(clock.pending_timers(), 1);
    // Through a value node and a cancel node, still the parent's.
    let (between, _bg) = parent.with_value(1u8).with_cancel();
    let (via, _g3) = between.with_timeout(SEC);
    assert_eq!(via.deadline(), Some(at(100)));
    assert_eq!(clock.pending_timers(), 1);
    // Own is earlier: a timer of its own.
    let (earlier, _g4) = parent.with_deadline(at(40));
    assert_eq!(earlier.deadline(), Some(at(40)));
    assert_eq!(clock.pending_timers(), 2);

    clock.set(at(40));
    assert_done(&earlier, Error::DeadlineExceeded, None);
    assert_live(&parent);
    assert_live(&later);
    assert_eq!(clock.pending_timers(), 1);

    clock.set(at(99));
    assert_live(&later);
    clock.set(at(100));
    for c in [&parent, &later, &equal, &via] {
        assert_done(c, Error::DeadlineExceeded, None);
    }
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn child_cause_is_dropped_when_the_parents_deadline_comes_first() {
    let (clock, root) = clocked();
    // Parent without a cause: the child reports DeadlineExceeded, not its own cause.
    let (p1, _g1) = root.with_deadline(at(10));
    let (c1, _g2) = p1.with_deadline_cause(at(20), Tag("child"));
    let (c1t, _g3) = p1.with_timeout_cause(Duration::from_nanos(20), Tag("child-t"));
    // Parent with a cause: the child reports the parent's.
    let (p2, _g4) = root.with_deadline_cause(at(10), Tag("parent"));
    let (c2, _g5) = p2.with_deadline_cause(at(20), Tag("child"));
    assert_eq!(clock.pending_timers(), 2, "the children share their parents' timers");

    clock.set(at(10));
    assert_done(&c1, Error::DeadlineExceeded, None);
    assert_done(&c1t, Error::DeadlineExceeded, None);
    assert_done(&c2, Error::DeadlineExceeded, Some("parent"));
    // Later times change nothing.
    clock.set(at(20));
    assert_done(&c1, Error::DeadlineExceeded, None);
    assert_done(&c2, Error::DeadlineExceeded, Some("parent"));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn child_with_an_earlier_deadline_fires_alone_with_its_cause() {
    let (clock, root) = clocked();
    let (parent, _pg) = root.with_deadline_cause(at(10), Tag("parent"));
    let (child, _cg) = parent.with_deadline_cause(at(5), Tag("child"));
    let (grandchild, _gg) = child.with_cancel();
    clock.set(at(5));
    assert_done(&child, Error::DeadlineExceeded, Some("child"));
    assert_done(&grandchild, Error::DeadlineExceeded, Some("child"));
    assert_live(&parent);
    assert_eq!(clock.pending_timers(), 1);
    clock.set(at(10));
    assert_done(&parent, Error::DeadlineExceeded, Some("parent"));
    // The child keeps its first completion.
    assert_done(&child, Error::DeadlineExceeded, Some("child"));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn cancelling_the_parent_releases_the_childs_timer() {
    let (clock, root) = clocked();
    let (parent, pg) = root.with_cancel();
    let (child, _cg) = parent.with_timeout_cause(SEC, Tag("child"));
    let (grandchild, _gg) = child.with_timeout(Duration::from_millis(500));
    let (runs, _h) = count_runs(&child);
    assert_eq!(clock.pending_timers(), 2);

    pg.cancel_with(Tag("parent"));
    assert_done(&child, Error::Canceled, Some("parent"));
    assert_done(&grandchild, Error::Canceled, Some("parent"));
    assert_eq!(clock.pending_timers(), 0, "the descendants' timers are released at once");
    assert_eq!(runs.load(SeqCst), 1);

    clock.advance(2 * SEC);
    assert_done(&child, Error::Canceled, Some("parent"));
    assert_done(&grandchild, Error::Canceled, Some("parent"));
    assert_eq!(runs.load(SeqCst), 1);
}

#[test]
fn deadlines_do_not_cross_without_cancel() {
    let (clock, root) = clocked();
    let (parent, _pg) = root.with_timeout(Duration::from_secs(10));
    let detached = parent.with_value(7u32).without_cancel();
    assert_eq!(detached.deadline(), None);
    assert_eq!(detached.remaining(), None);
    assert_eq!(detached.now(), Some(clock.now()), "the clock is kept");
    assert_eq!(detached.value::<u32>(), Some(&7));

    let (child, _cg) = detached.with_timeout(Duration::from_secs(20));
    assert_eq!(child.deadline(), Some(Instant::ZERO + Duration::from_secs(20)));
    assert_eq!(clock.pending_timers(), 2, "no earlier deadline above: a timer of its own");

    clock.advance(Duration::from_secs(10));
    assert_done(&parent, Error::DeadlineExceeded, None);
    assert_live(&detached);
    assert_live(&child);
    clock.advance(Duration::from_secs(10));
    assert_done(&child, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);
}

// ---------------------------------------------------------------------------------------
// Born done
// ---------------------------------------------------------------------------------------

#[test]
fn deadline_at_now_is_born_done() {
    let (clock, root) = clocked();
    clock.advance(SEC);
    let (ctx, _g) = root.with_deadline(clock.now());
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);
    assert_eq!(ctx.deadline(), Some(clock.now()));
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    assert_eq!(ctx.wait_timeout(Duration::ZERO), Some(Error::DeadlineExceeded));
    assert_eq!(futures::executor::block_on(ctx.done()), Error::DeadlineExceeded);

    // after_func on a born-done context runs at once, on this thread.
    let (runs, handle) = count_runs(&ctx);
    assert_eq!(runs.load(SeqCst), 1);
    assert!(!handle.stop());

    // Its children are born done with its error and cause.
    let (child, _cg) = ctx.with_cancel();
    assert_done(&child, Error::DeadlineExceeded, None);
}

#[test]
fn deadline_before_now_is_born_done_with_its_cause() {
    let (clock, root) = clocked();
    clock.advance(Duration::from_secs(10));
    let (past, _g1) = root.with_deadline_cause(Instant::ZERO + Duration::from_secs(5), Tag("past"));
    assert_done(&past, Error::DeadlineExceeded, Some("past"));
    let (zero, _g2) = root.with_timeout(Duration::ZERO);
    assert_done(&zero, Error::DeadlineExceeded, None);
    let (zero_cause, _g3) = root.with_timeout_cause(Duration::ZERO, Tag("zero"));
    assert_done(&zero_cause, Error::DeadlineExceeded, Some("zero"));
    let (try_past, _g4) = root.try_with_deadline(at(1)).unwrap();
    assert_done(&try_past, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);

    // Cancelling afterwards changes nothing.
    _g1.cancel_with(Tag("late cancel"));
    assert_done(&past, Error::DeadlineExceeded, Some("past"));
}

#[test]
fn deadline_child_of_a_done_parent_is_born_with_the_parents_error() {
    let (clock, root) = clocked();
    let (cancelled, cg) = root.with_cancel();
    cg.cancel_with(Tag("cancelled"));
    let (c1, _g1) = cancelled.with_timeout_cause(SEC, Tag("own"));
    assert_done(&c1, Error::Canceled, Some("cancelled"));
    // Even a deadline that has passed loses to the parent's earlier completion.
    let (c2, _g2) = cancelled.with_timeout_cause(Duration::ZERO, Tag("own"));
    assert_done(&c2, Error::Canceled, Some("cancelled"));

    let (expired, _eg) = root.with_deadline_cause(at(10), Tag("expired"));
    clock.set(at(10));
    let (c3, _g3) = expired.with_deadline_cause(at(5), Tag("own"));
    assert_done(&c3, Error::DeadlineExceeded, Some("expired"));
    let (c4, _g4) = expired.with_deadline_cause(at(50), Tag("own"));
    assert_done(&c4, Error::DeadlineExceeded, Some("expired"));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn deadline_child_of_a_passed_but_unfired_parent_deadline_is_born_done() {
    // The parent's deadline has passed but its clock has not woken it yet; a child whose own
    // deadline has passed too must still be born done (the parent's deadline comes first, so
    // it is the parent's error and cause).
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (parent, _pg) = root.with_deadline_cause(at(10), Tag("parent"));
    clock.set_now(at(20)); // never fired
    let (child, _cg) = parent.with_deadline_cause(at(15), Tag("child"));
    assert_done(&child, Error::DeadlineExceeded, Some("parent"));
    assert_done(&parent, Error::DeadlineExceeded, Some("parent"));
    assert_eq!(clock.pending(), [], "the parent's timer is released once it is done");
    assert_eq!(clock.schedules(), 1, "the child schedules nothing");
}

// ---------------------------------------------------------------------------------------
// Cancel before the deadline
// ---------------------------------------------------------------------------------------

#[test]
fn cancel_before_the_deadline_wins_and_releases_the_timer() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout_cause(Duration::from_secs(10), Tag("deadline"));
    let (child, _cg) = ctx.with_cancel();
    let (runs, _h) = count_runs(&ctx);
    clock.advance(Duration::from_secs(9));
    assert_eq!(clock.pending_timers(), 1);

    guard.cancel();
    assert_done(&ctx, Error::Canceled, None);
    assert_done(&child, Error::Canceled, None);
    assert_eq!(clock.pending_timers(), 0, "released by the cancel itself");
    assert_eq!(runs.load(SeqCst), 1);

    clock.advance(Duration::from_secs(100));
    assert_done(&ctx, Error::Canceled, None);
    assert_done(&child, Error::Canceled, None);
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
}

#[test]
fn cancel_with_cause_before_the_deadline() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_deadline_cause(at(10), Tag("deadline"));
    guard.cancel_with(Tag("cancel"));
    assert_done(&ctx, Error::Canceled, Some("cancel"));
    assert_eq!(clock.pending_timers(), 0);
    clock.set(at(10));
    assert_done(&ctx, Error::Canceled, Some("cancel"));
}

#[test]
fn cancel_after_the_deadline_changes_nothing() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_deadline_cause(at(10), Tag("deadline"));
    let (runs, _h) = count_runs(&ctx);
    clock.set(at(10));
    guard.cancel_with(Tag("cancel"));
    guard.cancel();
    assert!(guard.is_done());
    drop(guard);
    assert_done(&ctx, Error::DeadlineExceeded, Some("deadline"));
    assert_eq!(runs.load(SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// Dropping handles
// ---------------------------------------------------------------------------------------

#[test]
fn dropping_the_guard_cancels_and_releases_the_timer() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout(SEC);
    assert_eq!(clock.pending_timers(), 1);
    drop(guard);
    assert_done(&ctx, Error::Canceled, None);
    assert_eq!(clock.pending_timers(), 0);
    clock.advance(SEC);
    assert_done(&ctx, Error::Canceled, None);
}

#[test]
fn dropping_every_handle_after_detach_releases_the_timer() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout(SEC);
    let clone = ctx.clone();
    guard.detach();
    assert_live(&ctx);
    assert_eq!(clock.pending_timers(), 1);
    drop(ctx);
    assert_eq!(clock.pending_timers(), 1, "a clone is still alive");
    assert_live(&clone);
    drop(clone);
    assert_eq!(clock.pending_timers(), 0);
    clock.advance(SEC); // fires nothing, touches nothing

    // Dropping the context first, then the guard: also released.
    let (ctx, guard) = root.with_timeout(SEC);
    drop(ctx);
    assert_eq!(clock.pending_timers(), 1);
    drop(guard);
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn detached_deadline_still_fires() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout_cause(SEC, Tag("t"));
    guard.detach();
    clock.advance(SEC);
    assert_done(&ctx, Error::DeadlineExceeded, Some("t"));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn a_pending_after_func_keeps_a_dropped_deadline_alive() {
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout(SEC);
    let (runs, handle) = count_runs(&ctx);
    guard.detach();
    drop(ctx);
    assert_eq!(clock.pending_timers(), 1);
    clock.advance(SEC);
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(clock.pending_timers(), 0);
    assert!(!handle.stop());
}

#[test]
fn a_stopped_after_func_handle_does_not_keep_the_timer() {
    // `AfterFunc` docs: "A pending registration keeps its context alive (it is a handle too)
    // until the function runs or is stopped."
    let (clock, root) = clocked();
    let (ctx, guard) = root.with_timeout(SEC);
    let (runs, handle) = count_runs(&ctx);
    assert!(handle.stop());
    guard.detach();
    drop(ctx);
    // Only a stopped handle is left: nothing should keep the context or its timer alive.
    assert_eq!(clock.pending_timers(), 0, "the stopped handle keeps the timer pending");
    drop(handle);
    assert_eq!(clock.pending_timers(), 0);
    assert_eq!(runs.load(SeqCst), 0);
}

#[test]
fn a_child_keeps_its_detached_parents_timer_alive() {
    let (clock, root) = clocked();
    let (parent, guard) = root.with_timeout_cause(SEC, Tag("parent"));
    let (child, _cg) = parent.with_cancel();
    guard.detach();
    drop(parent);
    assert_eq!(clock.pending_timers(), 1);
    assert_eq!(child.deadline(), Some(Instant::ZERO + SEC));
    clock.advance(SEC);
    assert_done(&child, Error::DeadlineExceeded, Some("parent"));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn dropping_a_deadline_child_leaves_the_parent_alone() {
    let (clock, root) = clocked();
    let (parent, _pg) = root.with_timeout(Duration::from_secs(10));
    for _ in 0..3 {
        let (child, cg) = parent.with_timeout(SEC);
        assert_eq!(clock.pending_timers(), 2);
        drop(cg);
        drop(child);
        assert_eq!(clock.pending_timers(), 1);
    }
    assert_live(&parent);
    clock.advance(Duration::from_secs(10));
    assert_done(&parent, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);
}

// ---------------------------------------------------------------------------------------
// remaining, deadline, now, clock
// ---------------------------------------------------------------------------------------

#[test]
fn remaining_decreases_with_the_clock_and_is_zero_once_passed() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(Duration::from_secs(10));
    let value = ctx.with_value("v");
    let (child, _cg) = value.with_cancel();
    for c in [&ctx, &value, &child] {
        assert_eq!(c.remaining(), Some(Duration::from_secs(10)));
    }
    clock.advance(Duration::from_secs(4));
    for c in [&ctx, &value, &child] {
        assert_eq!(c.remaining(), Some(Duration::from_secs(6)));
    }
    clock.advance(Duration::from_secs(6) - NS);
    assert_eq!(child.remaining(), Some(NS));
    clock.advance(NS);
    assert_eq!(child.remaining(), Some(Duration::ZERO));
    clock.advance(Duration::from_secs(1000));
    for c in [&ctx, &value, &child] {
        assert_eq!(c.remaining(), Some(Duration::ZERO));
    }
    assert_eq!(root.remaining(), None);
    let (no_deadline, _ng) = root.with_cancel();
    assert_eq!(no_deadline.remaining(), None);
}

#[test]
fn deadline_is_visible_through_value_and_cancel_children_only() {
    let (_clock, root) = clocked();
    assert_eq!(root.deadline(), None);
    assert_eq!(root.with_value(1u8).deadline(), None);
    let (ctx, _g) = root.with_deadline(at(1234));
    let value = ctx.with_value(1u8);
    let (cancel, _cg) = value.with_cancel();
    let nested = cancel.with_value(2u16).with_value(3u32);
    for c in [&ctx, &value, &cancel, &nested] {
        assert_eq!(c.deadline(), Some(at(1234)));
    }
    let detached = nested.without_cancel();
    assert_eq!(detached.deadline(), None);
    assert_eq!(detached.with_value(4u64).deadline(), None);
    let (below, _bg) = detached.with_cancel();
    assert_eq!(below.deadline(), None);
    assert_eq!(below.remaining(), None);
}

#[test]
fn now_and_clock_read_the_trees_clock() {
    let (clock, root) = clocked();
    clock.set(at(42));
    let (deadline, _g) = root.with_timeout(SEC);
    let (cancel, _cg) = deadline.with_cancel();
    let all = [
        root.clone(),
        root.with_value(1u8),
        deadline.clone(),
        cancel.clone(),
        cancel.with_value(2u8),
        cancel.without_cancel(),
    ];
    for c in &all {
        assert_eq!(c.now(), Some(at(42)));
        assert_eq!(c.clock().map(|k| k.now()), Some(at(42)));
    }
    clock.advance(Duration::from_nanos(8));
    for c in &all {
        assert_eq!(c.now(), Some(at(50)));
    }

    // `clock()` is the very clock: a wake-up scheduled through it is pending on `clock`.
    let counter = Arc::new(CountingWaker::default());
    let key = all[5].clock().unwrap().schedule(at(60), Waker::from(counter.clone()));
    assert_eq!(key.deadline(), at(60));
    assert_eq!(clock.pending_timers(), 2);
    clock.set(at(60));
    assert_eq!(counter.0.load(SeqCst), 1);
    assert_eq!(clock.pending_timers(), 1);
    all[0].clock().unwrap().cancel(key); // no-op: it has fired
    assert_eq!(clock.pending_timers(), 1);
}

// ---------------------------------------------------------------------------------------
// Unclocked trees
// ---------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "no clock")]
fn unclocked_with_timeout_panics() {
    let _ = Context::unclocked().with_timeout(SEC);
}

#[test]
#[should_panic(expected = "no clock")]
fn unclocked_with_deadline_panics() {
    let (ctx, _g) = Context::unclocked().with_cancel();
    let _ = ctx.with_deadline(at(1));
}

#[test]
#[should_panic(expected = "no clock")]
fn unclocked_with_deadline_cause_panics() {
    let _ = Context::unclocked().with_value(1u8).with_deadline_cause(at(1), Tag("x"));
}

#[test]
#[should_panic(expected = "no clock")]
fn unclocked_with_timeout_cause_panics() {
    let _ = Context::unclocked().without_cancel().with_timeout_cause(SEC, Tag("x"));
}

#[test]
fn unclocked_try_deadlines_return_no_clock_error() {
    let root = Context::unclocked();
    let (child, _g) = root.with_value(1u8).with_cancel();
    for ctx in [&root, &child, &child.without_cancel()] {
        assert_eq!(ctx.try_with_timeout(SEC).unwrap_err(), NoClockError);
        assert_eq!(ctx.try_with_deadline(at(1)).unwrap_err(), NoClockError);
        assert_eq!(ctx.try_with_deadline(Instant::ZERO).unwrap_err(), NoClockError);
        assert_eq!(ctx.now(), None);
        assert!(ctx.clock().is_none());
        assert_eq!(ctx.deadline(), None);
        assert_eq!(ctx.remaining(), None);
    }
    assert!(NoClockError.to_string().contains("no clock"));
    assert_live(&child);
}

// ---------------------------------------------------------------------------------------
// Extreme deadlines
// ---------------------------------------------------------------------------------------

#[test]
fn deadline_at_instant_max_fires_only_at_max() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_deadline(Instant::MAX);
    assert_eq!(ctx.deadline(), Some(Instant::MAX));
    assert_eq!(ctx.remaining(), Some(Duration::from_nanos(u64::MAX)));
    assert_eq!(clock.pending_timers(), 1);
    clock.advance(Duration::from_secs(100 * 365 * 24 * 3600));
    assert_live(&ctx);
    clock.set(at(u64::MAX - 1));
    assert_live(&ctx);
    assert_eq!(ctx.remaining(), Some(NS));
    clock.set(Instant::MAX);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn timeout_of_duration_max_saturates_to_instant_max() {
    let (clock, root) = clocked();
    clock.advance(Duration::from_secs(5));
    let (ctx, _g) = root.with_timeout(Duration::MAX);
    let (with_cause, _g2) = root.with_timeout_cause(Duration::MAX, Tag("max"));
    let (tried, _g3) = root.try_with_timeout(Duration::MAX).unwrap();
    for c in [&ctx, &with_cause, &tried] {
        assert_eq!(c.deadline(), Some(Instant::MAX));
    }
    assert_eq!(clock.pending_timers(), 3);
    clock.advance(Duration::from_nanos(u64::MAX - 5_000_000_001));
    assert_eq!(clock.now(), at(u64::MAX - 1));
    assert_live(&ctx);
    // advance saturates at Instant::MAX.
    clock.advance(Duration::MAX);
    assert_eq!(clock.now(), Instant::MAX);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_done(&with_cause, Error::DeadlineExceeded, Some("max"));
    assert_done(&tried, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);

    // At the end of time every deadline is born done.
    let (late, _g4) = root.with_timeout(NS);
    assert_done(&late, Error::DeadlineExceeded, None);
    let (late_max, _g5) = root.with_deadline(Instant::MAX);
    assert_done(&late_max, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn deadline_at_instant_zero_is_born_done() {
    let (clock, root) = clocked();
    assert_eq!(clock.now(), Instant::ZERO);
    let (ctx, _g) = root.with_deadline(Instant::ZERO);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(ctx.deadline(), Some(Instant::ZERO));
    let (with_cause, _g2) = root.with_deadline_cause(Instant::ZERO, Tag("zero"));
    assert_done(&with_cause, Error::DeadlineExceeded, Some("zero"));
    assert_eq!(clock.pending_timers(), 0);
}

// ---------------------------------------------------------------------------------------
// Races between cancel and expiry
// ---------------------------------------------------------------------------------------

#[test]
fn race_cancel_vs_expiry() {
    let iterations = 2000;
    let mut outcomes = [0usize; 2];
    for i in 0..iterations {
        let (clock, root) = clocked();
        let with_causes = i % 2 == 1;
        let (ctx, guard) = if with_causes {
            root.with_timeout_cause(SEC, Tag("deadline"))
        } else {
            root.with_timeout(SEC)
        };
        let (child, _cg) = ctx.with_cancel();
        let (runs, _h) = count_runs(&ctx);
        let (child_runs, _ch) = count_runs(&child);
        let barrier = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                if with_causes {
                    guard.cancel_with(Tag("cancel"));
                } else {
                    guard.cancel();
                }
                // Whoever won, the context is done when cancel returns.
                assert!(ctx.is_done());
            });
            s.spawn(|| {
                barrier.wait();
                clock.advance(SEC);
                assert!(ctx.is_done());
            });
        });
        let err = ctx.err().expect("done");
        let tag = match (err, with_causes) {
            (_, false) => None,
            (Error::Canceled, true) => Some("cancel"),
            (Error::DeadlineExceeded, true) => Some("deadline"),
        };
        assert_done(&ctx, err, tag);
        assert_done(&child, err, tag);
        assert_eq!(runs.load(SeqCst), 1, "iteration {i}");
        assert_eq!(child_runs.load(SeqCst), 1, "iteration {i}");
        assert_eq!(clock.pending_timers(), 0, "iteration {i}");
        outcomes[usize::from(err == Error::DeadlineExceeded)] += 1;
    }
    eprintln!("race_cancel_vs_expiry: canceled {} / deadline {}", outcomes[0], outcomes[1]);
}

#[test]
fn race_dropping_every_handle_vs_expiry() {
    for i in 0..2000 {
        let (clock, root) = clocked();
        let (ctx, guard) = root.with_timeout(SEC);
        let (child, cg) = ctx.with_timeout(Duration::from_millis(500));
        let observer = ctx.with_value(1u8).without_cancel();
        let barrier = Barrier::new(2);
        thread::scope(|s| {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                guard.detach();
                cg.detach();
                drop(child);
                drop(ctx);
            });
            s.spawn(|| {
                barrier.wait();
                clock.advance(Duration::from_millis(500));
                clock.advance(Duration::from_millis(500));
            });
        });
        assert_eq!(clock.pending_timers(), 0, "iteration {i}");
        assert_live(&observer);
    }
}

#[test]
fn race_early_wake_vs_cancel() {
    for i in 0..2000 {
        let clock = ScriptedClock::default();
        let root = Context::with_clock(clock.clone());
        let (ctx, guard) = root.with_deadline(at(100));
        let (runs, _h) = count_runs(&ctx);
        clock.set_now(at(50));
        let barrier = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                clock.fire(0); // early: re-arms unless the cancel got there first
            });
            s.spawn(|| {
                barrier.wait();
                guard.cancel();
            });
        });
        assert_done(&ctx, Error::Canceled, None);
        assert_eq!(runs.load(SeqCst), 1);
        assert_eq!(clock.pending(), [], "iteration {i}: a re-armed timer was left behind");
        // Firing every wake-up now, late, does nothing.
        clock.set_now(at(200));
        for k in 0..clock.schedules() {
            clock.fire(k);
        }
        assert_done(&ctx, Error::Canceled, None);
    }
}

#[test]
fn race_early_wake_vs_dropping_every_handle() {
    for i in 0..2000 {
        let clock = ScriptedClock::default();
        let root = Context::with_clock(clock.clone());
        let (ctx, guard) = root.with_deadline(at(100));
        guard.detach();
        clock.set_now(at(50));
        let barrier = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                clock.fire(0); // early: re-arms if the context is still alive
            });
            s.spawn(|| {
                barrier.wait();
                drop(ctx);
            });
        });
        assert_eq!(clock.pending(), [], "iteration {i}: the freed context left a wake-up");
    }
}

#[test]
fn race_two_wakes_at_the_deadline() {
    for i in 0..2000 {
        let clock = ScriptedClock::default();
        let root = Context::with_clock(clock.clone());
        let (ctx, _guard) = root.with_deadline_cause(at(100), Tag("d"));
        let (runs, _h) = count_runs(&ctx);
        clock.set_now(at(100));
        let barrier = Barrier::new(2);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    barrier.wait();
                    clock.fire(0);
                });
            }
        });
        assert_done(&ctx, Error::DeadlineExceeded, Some("d"));
        assert_eq!(runs.load(SeqCst), 1, "iteration {i}");
        assert_eq!(clock.schedules(), 1, "iteration {i}");
        assert_eq!(clock.pending(), []);
    }
}

#[test]
fn concurrent_advances_fire_every_deadline_once() {
    let (clock, root) = clocked();
    let contexts: Vec<_> = (1..=1000u64)
        .map(|n| {
            let (ctx, guard) = root.with_deadline(at(n));
            let runs = count_runs(&ctx);
            (ctx, guard, runs)
        })
        .collect();
    assert_eq!(clock.pending_timers(), 1000);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..300 {
                    clock.advance(NS);
                }
            });
        }
    });
    assert_eq!(clock.now(), at(1200));
    for (ctx, _guard, (runs, _h)) in &contexts {
        assert_done(ctx, Error::DeadlineExceeded, None);
        assert_eq!(runs.load(SeqCst), 1);
    }
    assert_eq!(clock.pending_timers(), 0);
}

// ---------------------------------------------------------------------------------------
// Clocks that wake early, late, twice, inside schedule
// ---------------------------------------------------------------------------------------

#[test]
fn early_wake_reschedules_and_does_not_complete() {
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (ctx, _g) = root.with_deadline_cause(at(100), Tag("d"));
    let (runs, _h) = count_runs(&ctx);
    assert_eq!(clock.schedules(), 1);
    let first = clock.key(0);
    assert_eq!(first.deadline(), at(100));
    assert_eq!(clock.pending(), [first]);

    clock.set_now(at(99));
    clock.fire(0);
    assert_live(&ctx);
    assert_eq!(runs.load(SeqCst), 0);
    assert_eq!(clock.schedules(), 2, "an early wake-up must schedule again");
    let second = clock.key(1);
    assert_eq!(second.deadline(), at(100));
    assert_ne!(second, first);
    assert_eq!(clock.pending(), [second]);

    clock.set_now(at(100));
    clock.fire(1);
    assert_done(&ctx, Error::DeadlineExceeded, Some("d"));
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(clock.schedules(), 2);
    assert_eq!(clock.pending(), []);
}

#[test]
fn repeated_early_wakes_keep_one_pending_wake_up() {
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (ctx, _g) = root.with_deadline(at(1000));
    for n in 0..10u64 {
        clock.set_now(at(n * 100));
        // Wake the latest one, and (misbehaving) every earlier one again.
        for k in (0..clock.schedules()).rev() {
            clock.fire(k);
        }
        assert_live(&ctx);
        assert_eq!(clock.pending().len(), 1, "exactly one wake-up is pending after round {n}");
    }
    // Every wake-up but the pending one was fired or cancelled: none leaks.
    let pending = clock.pending();
    let last = clock.key(clock.schedules() - 1);
    assert_eq!(pending, [last]);
    clock.set_now(at(1000));
    clock.fire(clock.schedules() - 1);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(clock.pending(), []);
}

#[test]
fn waking_twice_is_harmless() {
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (ctx, _g) = root.with_deadline_cause(at(10), Tag("d"));
    let (child, _cg) = ctx.with_cancel();
    let (runs, _h) = count_runs(&ctx);
    clock.set_now(at(10));
    clock.fire(0);
    clock.fire(0);
    assert_done(&ctx, Error::DeadlineExceeded, Some("d"));
    assert_done(&child, Error::DeadlineExceeded, Some("d"));
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(clock.schedules(), 1, "a second wake-up after completion schedules nothing");
    assert_eq!(clock.pending(), []);
}

#[test]
fn waking_late_completes() {
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (ctx, _g) = root.with_deadline(at(10));
    clock.set_now(at(10_000));
    assert_live(&ctx); // nothing happens until the clock wakes it
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    clock.fire(0);
    assert_done(&ctx, Error::DeadlineExceeded, None);
    assert_eq!(clock.schedules(), 1);
}

#[test]
fn waking_after_cancel_is_ignored() {
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (ctx, guard) = root.with_deadline(at(10));
    let key = clock.key(0);
    guard.cancel_with(Tag("c"));
    assert_eq!(clock.cancels(), [key], "cancel releases the wake-up");
    assert_eq!(clock.pending(), []);
    clock.set_now(at(10));
    clock.fire(0); // a clock that ignores cancel
    assert_done(&ctx, Error::Canceled, Some("c"));
    assert_eq!(clock.schedules(), 1);
}

#[test]
fn waking_after_the_context_is_gone_is_ignored() {
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (ctx, guard) = root.with_deadline(at(10));
    let (runs, handle) = count_runs(&ctx);
    assert!(handle.stop());
    drop(handle); // an `AfterFunc` handle keeps its context alive too
    guard.detach();
    drop(ctx);
    assert_eq!(clock.pending(), [], "dropping the last handle releases the wake-up");
    assert_eq!(clock.cancels(), [clock.key(0)]);
    clock.fire(0); // early, on a freed context
    clock.set_now(at(10));
    clock.fire(0); // due, on a freed context
    assert_eq!(clock.schedules(), 1);
    assert_eq!(runs.load(SeqCst), 0);
}

#[test]
fn clock_waking_inside_schedule_completes_the_context() {
    // The clock's time moves while the deadline is being scheduled (as if the thread were
    // preempted), and it wakes the waker at once, inside `schedule`: allowed by the contract.
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    clock.0.lock().unwrap().jump_on_schedule = Some(at(10));
    let (ctx, guard) = root.with_deadline_cause(at(10), Tag("d"));
    assert_done(&ctx, Error::DeadlineExceeded, Some("d"));
    assert_eq!(clock.schedules(), 1);
    assert_eq!(clock.pending(), []);
    let (runs, _h) = count_runs(&ctx);
    assert_eq!(runs.load(SeqCst), 1);
    guard.cancel();
    assert_done(&ctx, Error::DeadlineExceeded, Some("d"));
}

#[test]
fn never_waking_clock_never_completes_the_deadline() {
    // The `Clock` docs: "a clock that never wakes never completes it (`err()` is a single
    // load and does not read the clock, though `remaining` reports zero)".
    let clock = ScriptedClock::default();
    let root = Context::with_clock(clock.clone());
    let (ctx, guard) = root.with_deadline(at(10));
    clock.set_now(at(20)); // and never fire
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    assert_eq!(ctx.err(), None, "only the clock's wake-up completes a deadline");
    // Cancellation still works, and releases the never-fired timer.
    guard.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(clock.pending(), []);
}

// ---------------------------------------------------------------------------------------
// A million timeouts: timers and memory are released
// ---------------------------------------------------------------------------------------

/// Counts the bytes allocated minus freed by threads that opted in (see [`LiveBytes`]), so
/// tests running in parallel do not disturb the measurement.
struct CountingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = LIVE.try_with(|live| live.set(live.get() + delta));
        }
    });
}

// SAFETY: every method forwards to `System` with the same arguments.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Live bytes allocated by this thread since tracking started.
struct LiveBytes;

impl LiveBytes {
    fn start() -> LiveBytes {
        TRACKING.with(|on| on.set(true));
        LiveBytes
    }
    fn now(&self) -> isize {
        LIVE.with(Cell::get)
    }
}

impl Drop for LiveBytes {
    fn drop(&mut self) {
        TRACKING.with(|on| on.set(false));
    }
}

#[test]
fn a_million_timeouts_cancelled_early_release_timers_and_memory() {
    let total = scaled(1_000_000);
    const BATCH: usize = 1000;
    let live = LiveBytes::start();
    let before_everything = live.now();
    {
        let (clock, root) = clocked();
        let (parent, _pg) = root.with_cancel();
        let mut batch = Vec::with_capacity(BATCH);
        let mut peak = isize::MIN;
        let mut round = |batch: &mut Vec<(Context, cancelctx::CancelGuard)>, n: usize| {
            for i in 0..BATCH {
                let timeout = Duration::from_secs(1 + (i % 7) as u64);
                batch.push(if i % 2 == 0 {
                    parent.with_timeout(timeout)
                } else {
                    root.with_timeout_cause(timeout, Tag("t"))
                });
            }
            assert_eq!(clock.pending_timers(), BATCH, "round {n}");
            peak = peak.max(live.now());
            for (i, (ctx, guard)) in batch.drain(..).enumerate() {
                match i % 3 {
                    0 => guard.cancel(),
                    1 => drop(guard),
                    _ => guard.detach(),
                }
                drop(ctx);
            }
            assert_eq!(clock.pending_timers(), 0, "round {n}");
            clock.advance(Duration::from_millis(1));
        };
        // Warm up: the clock's timer map and the parent's child list reach their size.
        round(&mut batch, 0);
        let baseline = live.now();
        for n in 1..total / BATCH {
            round(&mut batch, n);
        }
        assert_eq!(clock.pending_timers(), 0);
        // The measurement sees the timeouts (each costs at least its node and timer).
        assert!(peak - baseline >= (BATCH * 64) as isize, "peak {peak}, baseline {baseline}");
        assert_eq!(
            live.now() - baseline,
            0,
            "live bytes grew over {total} cancelled timeouts (baseline after warm-up)"
        );
        assert_live(&parent);
    }
    assert_eq!(live.now() - before_everything, 0, "everything is freed with the tree");
}

// ---------------------------------------------------------------------------------------
// Panicking callbacks on the clock's thread
// ---------------------------------------------------------------------------------------

#[test]
fn a_panicking_after_func_does_not_stop_other_deadlines_in_advance() {
    let (clock, root) = clocked();
    let (first, _g1) = root.with_deadline(at(10));
    let (second, _g2) = root.with_deadline(at(10));
    let (third, _g3) = root.with_deadline(at(20));
    let _h = first.after_func(|| panic!("callback panic (expected by the test)"));
    let _h2 = second.after_func(|| panic!("callback panic (expected by the test)"));
    let (runs, _h3) = count_runs(&third);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| clock.set(at(20))));
    assert!(result.is_err(), "the callback's panic is resumed on the advancing thread");
    // Every due deadline fired anyway, and no timer was silently dropped.
    assert_done(&first, Error::DeadlineExceeded, None);
    assert_done(&second, Error::DeadlineExceeded, None);
    assert_done(&third, Error::DeadlineExceeded, None);
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(clock.pending_timers(), 0);
}

/// `CANCELCTX_TEST_SCALE=small` (set by `scripts/sanitize.sh`) shrinks the million-element
/// tests tenfold, for slow instrumented runs; the default is the full size.
fn scaled(n: usize) -> usize {
    match std::env::var("CANCELCTX_TEST_SCALE").as_deref() {
        Ok("small") => n / 10,
        _ => n,
    }
}
