//! Model checking of the lock-free protocol with loom.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release --test loom --target-dir target/loom
//! ```
//!
//! Under `--cfg loom`, `src/sync.rs` swaps the crate's atomics, `Arc`s and mutexes for loom's,
//! and event-listener (built with its `loom` feature, see Cargo.toml) does the same inside,
//! with `parking` parking on loom's condition variable: each model runs the real code,
//! blocking `wait()` included, under every interleaving loom explores up to the preemption
//! bound. A lost wake-up shows up as loom's "deadlock" (a `block_on` or `wait()` nobody will
//! wake), a spin that never ends as "exceeded maximum number of branches".
//!
//! Trees are rooted at `Context::with_clock(ManualClock)`: the root and the clock live in loom
//! `Arc`s, so a node that is never freed keeps them alive and loom fails the model with "Arc
//! leaked". Nodes themselves are plain `Box`es, so loom does not see a use after free of a
//! node; for that, run the same models under AddressSanitizer (nightly):
//!
//! ```text
//! RUSTFLAGS="--cfg loom -Zsanitizer=address" ASAN_OPTIONS=detect_leaks=0 cargo +nightly test \
//!     --release --test loom --target x86_64-unknown-linux-gnu --target-dir target/loom-asan
//! ```
//!
//! (ASan prints one warning about loom's stack switching, "False positive error reports may
//! follow"; none have.)
//!
//! The preemption bound is `PREEMPTIONS` unless `LOOM_MAX_PREEMPTIONS` is set. `--nocapture`
//! prints the number of executions explored per model. Cheap compile-only check:
//! `RUSTFLAGS="--cfg loom" cargo check --test loom --target-dir target/loom`. Only the default
//! features build under loom: async-io (feature `async-io`, and smol/async-std, which are
//! dev-dependencies only outside loom) needs `parking`'s timeouts, which loom does not have.
#![cfg(loom)]

use std::fmt;

use cancelctx::{AfterFunc, CancelGuard, Context, Error, Instant, ManualClock};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Preemptions explored per model unless `LOOM_MAX_PREEMPTIONS` says otherwise.
const PREEMPTIONS: usize = 3;

#[path = "common/loom_model.rs"]
mod loom_model;
use loom_model::model;

/// A root whose `Arc`s are loom's (leak-checked), and its clock.
fn root() -> (Context, ManualClock) {
    let clock = ManualClock::new();
    (Context::with_clock(clock.clone()), clock)
}

macro_rules! cause_type {
    ($name:ident) => {
        #[derive(Debug)]
        struct $name;
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }
        impl std::error::Error for $name {}
    };
}
cause_type!(CauseA);
cause_type!(CauseB);
cause_type!(DeadlineCause);

/// Which explicit cause a context reports (panics if it reports none or another one).
fn cause_name(ctx: &Context) -> &'static str {
    let cause = ctx.cause().expect("a done context has a cause");
    if cause.is::<CauseA>() {
        "A"
    } else if cause.is::<CauseB>() {
        "B"
    } else if cause.is::<DeadlineCause>() {
        "deadline"
    } else if let Some(err) = cause.downcast_ref::<Error>() {
        match err {
            Error::Canceled => "Canceled",
            Error::DeadlineExceeded => "DeadlineExceeded",
        }
    } else {
        panic!("unexpected cause {cause:?}")
    }
}

/// Model 1: A child made while its parent is being cancelled is either born done or cancelled by
/// the parent's completion: never live once both threads are finished. Either way it reports
/// the parent's error and explicit cause.
#[test]
fn cancel_vs_child_creation() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, guard) = root.with_cancel();
        let p = parent.clone();
        // The child's scope is found through a value node; the grandchild links to the child.
        let maker = thread::spawn(move || {
            let (child, child_guard) = p.with_value(1u8).with_cancel();
            let (grandchild, grandchild_guard) = child.with_cancel();
            (child, child_guard, grandchild, grandchild_guard)
        });
        guard.cancel_with(CauseA);
        let (child, child_guard, grandchild, grandchild_guard) = maker.join().unwrap();
        assert_eq!(child.err(), Some(Error::Canceled), "child left live after parent cancel");
        assert_eq!(grandchild.err(), Some(Error::Canceled), "grandchild left live");
        assert_eq!(cause_name(&child), "A");
        assert_eq!(cause_name(&grandchild), "A");
        // The child was done before its own guard could act: dropping it changes nothing.
        drop((child_guard, grandchild_guard));
        assert_eq!(cause_name(&child), "A");
        assert_eq!(parent.err(), Some(Error::Canceled));
        assert_eq!(root.err(), None);
    });
}

/// Model 2: Children released while their parent is being cancelled: one whose guard was detached
/// (its last handle dropping only unlinks it) and one whose guard is dropped too (it cancels
/// itself, then unlinks). Both have had a grandchild, so the parent's completion tries to
/// queue them (`LINKS`) while their count may be reaching zero. Loom checks the lock/refcount
/// protocol (no deadlock, no panic, nothing leaked); a surviving sibling checks that the
/// parent's child list stayed consistent (`swap_remove` slot fix-ups). A node freed while
/// still listed is a use after free that only the ASan run sees (see the top).
#[test]
fn cancel_vs_child_drop() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, guard) = root.with_cancel();
        let make_child = || {
            let (child, child_guard) = parent.with_cancel();
            let (grandchild, grandchild_guard) = child.with_cancel();
            grandchild_guard.detach();
            drop(grandchild); // the child keeps LINKS set, with an empty list
            (child, child_guard)
        };
        // Slots 0, 1, 2: releasing `a` moves `b` into slot 0, so releasing `b` next relies on
        // the slot fix-up; the sibling must still be listed for the walk to cancel it.
        let (a, a_guard) = make_child();
        let (sibling, sibling_guard) = parent.with_cancel();
        let (b, b_guard) = make_child();
        a_guard.detach();
        let dropper = thread::spawn(move || {
            drop(a);
            drop(b);
            drop(b_guard);
        });
        guard.cancel();
        dropper.join().unwrap();
        assert_eq!(sibling.err(), Some(Error::Canceled));
        drop(sibling_guard);
        drop(sibling);
        // Everything below the root is released now (loom's leak check at the end of the
        // execution fails the model otherwise).
        drop(parent);
        drop(root);
    });
}

/// Model 3: Two cancels with different causes: exactly one wins, and the context, its child and
/// both cancelling threads (right after their own cancel returned) all report that one.
#[test]
fn two_cancels_with_different_causes() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let (child, _child_guard) = ctx.with_cancel();
        let guard = Arc::new(guard);
        let (g, c) = (guard.clone(), ctx.clone());
        let other = thread::spawn(move || {
            g.cancel_with(CauseB);
            cause_name(&c)
        });
        guard.cancel_with(CauseA);
        let seen_here = cause_name(&ctx);
        let seen_there = other.join().unwrap();
        let winner = cause_name(&ctx);
        assert!(winner == "A" || winner == "B", "{winner}");
        assert_eq!(seen_here, winner);
        assert_eq!(seen_there, winner);
        assert_eq!(child.err(), Some(Error::Canceled));
        assert_eq!(cause_name(&child), winner);
    });
}

/// Model 4 (4a): `done()` registering its listener while another thread cancels: the wake-up
/// is never lost (loom reports a deadlock if `block_on` is left pending with nobody to wake
/// it). 4a waits on the cancelled context itself (notified by the completer directly), 4b on
/// a grandchild (queued and notified through the completion's work list). They were one
/// model with both waiters until #8: each waiter now also links its node (attach on demand)
/// and the combined model grew to 1,957,099 executions (155 s at bound 3), for interleavings
/// of two waiters on different nodes that the walk notifies independently.
#[test]
fn cancel_vs_done_registration() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let (_child, _child_guard) = ctx.with_cancel();
        let c = ctx.clone();
        let on_ctx = thread::spawn(move || loom::future::block_on(c.done_owned()));
        guard.cancel();
        assert_eq!(on_ctx.join().unwrap(), Error::Canceled);
    });
}

/// Model 4b: see model 4; the waiter is on a grandchild (behind a value node), so its
/// registration links the grandchild into the child, and the walk reaches it through the
/// child it queued. (A waiter on a direct child is model 19.)
#[test]
fn cancel_vs_done_registration_on_a_grandchild() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let (child, _child_guard) = ctx.with_cancel();
        let (grandchild, _grandchild_guard) = child.with_value(1u8).with_cancel();
        let on_grandchild = thread::spawn(move || loom::future::block_on(grandchild.done()));
        guard.cancel();
        assert_eq!(on_grandchild.join().unwrap(), Error::Canceled);
    });
}

/// Model 5: Blocking `wait()` against a cancel. The blocking path registers a waker that
/// unparks the thread in the context's waiter list, then parks; under loom the park and
/// unpark are loom's, so the real blocking path is modelled (only `wait_timeout` is not:
/// loom has no timed park). A lost wake-up leaves the waiter parked forever, which loom
/// reports as a deadlock. Mutation: a registration that finds its entry drained keeps
/// waiting (fails with a deadlock).
#[test]
fn cancel_vs_blocking_wait() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let (child, _child_guard) = ctx.with_cancel();
        let c = ctx.clone();
        let on_ctx = thread::spawn(move || c.wait());
        let on_child = thread::spawn(move || child.wait());
        guard.cancel();
        assert_eq!(on_ctx.join().unwrap(), Error::Canceled);
        assert_eq!(on_child.join().unwrap(), Error::Canceled);
    });
}

/// Model 6: The deadline firing (the clock moved to it) while the guard cancels: exactly one error
/// wins, each thread sees the final error right after its own action, `err` and `cause`
/// agree (the deadline's explicit cause goes with `DeadlineExceeded`), the `after_func`
/// callback runs once, and the timer is released.
#[test]
fn deadline_vs_cancel() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let (ctx, guard) = root.with_deadline_cause(Instant::from_nanos(10), DeadlineCause);
        assert_eq!(clock.pending_timers(), 1);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let _handle = ctx.after_func(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let (c, k) = (ctx.clone(), clock.clone());
        let ticker = thread::spawn(move || {
            k.set(Instant::from_nanos(10));
            c.err()
        });
        guard.cancel();
        let seen_here = ctx.err();
        let seen_there = ticker.join().unwrap();
        let err = ctx.err().expect("done");
        assert_eq!(seen_here, Some(err));
        assert_eq!(seen_there, Some(err));
        match err {
            Error::DeadlineExceeded => assert_eq!(cause_name(&ctx), "deadline"),
            Error::Canceled => assert_eq!(cause_name(&ctx), "Canceled"),
        }
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        assert_eq!(clock.pending_timers(), 0);
    });
}

/// Model 6b: A deadline child made while its parent is being cancelled: its timer is scheduled
/// and then stored, or handed back because the child is already done; either way nothing is
/// left on the clock (no clock movement releases it here).
#[test]
fn deadline_child_creation_vs_cancel() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let (parent, guard) = root.with_cancel();
        let p = parent.clone();
        let maker = thread::spawn(move || p.with_deadline(Instant::from_nanos(10)));
        guard.cancel();
        let (child, child_guard) = maker.join().unwrap();
        assert_eq!(child.err(), Some(Error::Canceled));
        assert_eq!(clock.pending_timers(), 0, "timer of a done context left on the clock");
        drop((child, child_guard));
    });
}

/// Model 7: `stop()` racing the completion that runs the callback: either stop wins (returns true,
/// `f` never runs) or the completion does (`f` runs exactly once, stop returns false).
#[test]
fn after_func_stop_vs_completion() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let handle: AfterFunc = ctx.after_func(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let canceller = thread::spawn(move || drop::<CancelGuard>(guard));
        let stopped = handle.stop();
        canceller.join().unwrap();
        let runs = runs.load(Ordering::Relaxed);
        if stopped {
            assert_eq!(runs, 0, "stop returned true but f ran");
        } else {
            assert_eq!(runs, 1, "stop returned false but f did not run exactly once");
        }
        assert!(!handle.stop());
        assert_eq!(ctx.err(), Some(Error::Canceled));
    });
}

/// Data that only the happens-before edges of the crate protect: loom's `UnsafeCell` reports a
/// causality violation if a read is not ordered after the write.
struct Published(UnsafeCell<u32>);

// SAFETY: accesses are ordered by the context's completion, which is what the model checks.
unsafe impl Sync for Published {}

/// Model 8: Completing is a release and observing done is an acquire, through inheritance too:
/// what the canceller wrote before cancelling is visible to a thread that sees a child done
/// (`is_done`), or that awaited the parent's `done()`.
#[test]
fn completion_publishes_prior_writes() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let (child, _child_guard) = ctx.with_cancel();
        let data = Arc::new(Published(UnsafeCell::new(0)));
        let d = data.clone();
        let canceller = thread::spawn(move || {
            // SAFETY: nobody reads before the cancel below (the model checks exactly that).
            d.0.with_mut(|p| unsafe { *p = 7 });
            guard.cancel();
        });
        if child.is_done() {
            // SAFETY: ordered after the write by the completion (checked by loom).
            assert_eq!(data.0.with(|p| unsafe { *p }), 7);
        }
        assert_eq!(loom::future::block_on(ctx.done()), Error::Canceled);
        // SAFETY: as above.
        assert_eq!(data.0.with(|p| unsafe { *p }), 7);
        canceller.join().unwrap();
    });
}

/// Model 9: `CancelGuard::cancel`: "when this returns, the context and every descendant report
/// done", for the losing call too (it waits for the winning walk's FINISHED, as Go's second
/// `cancel` waits on the mutex the first holds while cancelling the children). Checked right
/// after each of two racing cancels returns.
#[test]
fn losing_cancel_returns_after_descendants_are_done() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let (child, _child_guard) = ctx.with_cancel();
        let guard = Arc::new(guard);
        let g = guard.clone();
        let c = child.clone();
        let other = thread::spawn(move || {
            g.cancel();
            assert!(c.is_done(), "cancel() returned while a descendant is still live");
        });
        guard.cancel();
        assert!(child.is_done(), "cancel() returned while a descendant is still live");
        other.join().unwrap();
    });
}

/// Model 10: A deadline firing while the context's last handles are dropped: the timer waker
/// reaches the node only through a pointer the release path clears under the waker's lock, so
/// it either completes a live node or finds nothing; the timer is released either way and
/// nothing leaks. (A use after free here needs the ASan run to be seen; see the top.)
#[test]
fn deadline_fire_vs_last_handle_drop() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let (ctx, guard) = root.with_deadline(Instant::from_nanos(10));
        guard.detach();
        let k = clock.clone();
        let ticker = thread::spawn(move || k.set(Instant::from_nanos(10)));
        drop(ctx);
        ticker.join().unwrap();
        assert_eq!(clock.pending_timers(), 0);
        drop(root);
    });
}

/// Model 11: `after_func` registering while another thread cancels: `f` runs exactly once, either
/// inline in `after_func` (already done) or on the cancelling thread.
#[test]
fn after_func_registration_vs_cancel() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let (c, r) = (ctx.clone(), runs.clone());
        let registrar = thread::spawn(move || {
            c.with_value(2u8).after_func(move || {
                r.fetch_add(1, Ordering::Relaxed);
            })
        });
        guard.cancel();
        let handle = registrar.join().unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 1, "f must run exactly once");
        assert!(!handle.stop(), "stop after f ran must return false");
        drop(ctx);
    });
}

/// Model 12: A context and its child cancelled at once from two threads, with different causes:
/// the parent's walk may find the child completed by the other thread and must wait for that
/// walk. After each cancel returns, everything below it is done; the child's subtree agrees
/// on the child's cause, and the parent keeps its own.
#[test]
fn parent_and_child_cancelled_concurrently() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (child, child_guard) = parent.with_cancel();
        let (grandchild, _grandchild_guard) = child.with_cancel();
        let g = grandchild.clone();
        let other = thread::spawn(move || {
            child_guard.cancel_with(CauseB);
            assert!(g.is_done(), "child's cancel returned with a live descendant");
        });
        parent_guard.cancel_with(CauseA);
        assert!(child.is_done() && grandchild.is_done(), "parent's cancel returned early");
        other.join().unwrap();
        let child_cause = cause_name(&child);
        assert!(child_cause == "A" || child_cause == "B", "{child_cause}");
        assert_eq!(cause_name(&grandchild), child_cause);
        assert_eq!(cause_name(&parent), "A");
    });
}

/// Model 13: Two threads move the clock to the same deadline: each move returns only after the
/// timers due at its time have fired (moves are serialized), so both see the context done
/// and its callback run; the timer fires once.
#[test]
fn concurrent_clock_moves() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let (ctx, _guard) = root.with_deadline(Instant::from_nanos(10));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let _handle = ctx.after_func(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let (c, k, r) = (ctx.clone(), clock.clone(), runs.clone());
        let other = thread::spawn(move || {
            k.set(Instant::from_nanos(10));
            assert_eq!(c.err(), Some(Error::DeadlineExceeded));
            assert_eq!(r.load(Ordering::Relaxed), 1, "set returned before the callback ran");
        });
        clock.advance(core::time::Duration::from_nanos(10));
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(runs.load(Ordering::Relaxed), 1, "advance returned before the callback ran");
        other.join().unwrap();
        assert_eq!(clock.pending_timers(), 0);
    });
}

/// Model 14: an `after_func` callback run by a clock move moves the same clock again. With
/// `std` this is allowed (`lock_mover` lets the firing thread through via a thread-local,
/// loom's `thread_local!` in the loom build), so it must not deadlock here either.
#[test]
fn reentrant_clock_move_from_callback() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let (ctx, _guard) = root.with_deadline(Instant::from_nanos(10));
        let (later, _later_guard) = root.with_deadline(Instant::from_nanos(20));
        let k = clock.clone();
        let _handle = ctx.after_func(move || k.set(Instant::from_nanos(20)));
        let mover = thread::spawn(move || clock.set(Instant::from_nanos(10)));
        mover.join().unwrap();
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(later.err(), Some(Error::DeadlineExceeded));
    });
}

/// Model 15: a cancel walk races a clock move to a deadline inside the cancelled subtree
/// (`a` → `d` (deadline 5) → `c` → `e`). When the move returns, `e` is done: either the move
/// fired `d`'s timer (its completion wins and walks, or loses and waits for the cancel walk),
/// or the cancel walk had already finished. That holds because the walk releases timers only
/// after FINISHED; releasing `d`'s timer while still marking (the old order) lets the move
/// find nothing due and return with `e` live (the stress flake of #12 item 13).
#[test]
fn cancel_walk_vs_clock_move_to_a_deadline_in_its_subtree() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let (a, a_guard) = root.with_cancel();
        let (d, _d_guard) = a.with_deadline(Instant::from_nanos(5));
        let (c, _c_guard) = d.with_cancel();
        let (e, _e_guard) = c.with_cancel();
        let canceller = thread::spawn(move || a_guard.cancel());
        clock.set(Instant::from_nanos(5));
        assert!(e.is_done(), "set() returned with a due deadline's descendant live");
        canceller.join().unwrap();
        assert_eq!(clock.pending_timers(), 0);
    });
}

/// Model 16: a deadline is created (scheduled) while another thread moves the clock past it,
/// so the wake-up may come inside `schedule` (the clock already passed it) or from the mover
/// while the creator is still between `schedule` and storing the key (the ARMING/WOKEN
/// handoff in `timer.rs`). Either way the context ends up done, the mover returns only once
/// it is (if the timer was already on the clock), and no timer is left behind.
#[test]
fn deadline_armed_while_the_clock_moves_past_it() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let k = clock.clone();
        let mover = thread::spawn(move || k.set(Instant::from_nanos(5)));
        let (ctx, _guard) = root.with_deadline(Instant::from_nanos(5));
        mover.join().unwrap();
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "a wake-up was lost");
        assert_eq!(clock.pending_timers(), 0);
    });
}

/// Model 17: `after_func` on a context another thread is cancelling: whether `f` is run by
/// the walk or inline (the context was already done), it runs after the whole subtree is
/// marked done: inline registration waits for the walk, as a losing cancel does.
#[test]
fn after_func_on_a_context_being_cancelled_sees_the_subtree_done() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (a, a_guard) = root.with_cancel();
        let (b, _b_guard) = a.with_cancel();
        let (c, _c_guard) = b.with_cancel();
        let canceller = thread::spawn(move || a_guard.cancel());
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let _handle = a.after_func(move || {
            assert!(c.is_done(), "after_func ran before the subtree was marked done");
            s.fetch_add(1, Ordering::Relaxed);
        });
        canceller.join().unwrap();
        assert_eq!(seen.load(Ordering::Relaxed), 1);
    });
}

/// A waker for the std clock models: they look at the clock's bookkeeping, not at wake-ups.
struct NoWake;

impl std::task::Wake for NoWake {
    fn wake(self: std::sync::Arc<Self>) {}
}

fn no_wake() -> std::task::Waker {
    std::task::Waker::from(std::sync::Arc::new(NoWake))
}

/// Model S1: the std clock's timer thread falls asleep while another thread schedules an
/// earlier timer into another shard (the real `schedule` and timer-thread code, on loom's
/// primitives, with the thread's time standing still). The thread last slept until 1, it is
/// now 2 and nothing is pending: it must not sleep past the new timer at 5. Either its
/// second look after publishing its sleep finds the timer, or `schedule` sees that sleep and
/// kicks it; a kick lost between the two shows up as loom's deadlock (the thread waits for
/// ever). Fails (deadlock) if `round` skips its second look, if it clears `kicked` after it
/// instead of before its scan, or if `schedule` reads the sleep before inserting its timer.
#[test]
fn std_clock_schedule_vs_timer_thread_falling_asleep() {
    use cancelctx::__std_clock_model::Clock as Timers;
    model(PREEMPTIONS, || {
        let at = Instant::from_nanos;
        let timers = Arc::new(Timers::new(2, at(1)));
        let t = timers.clone();
        let timer_thread = thread::spawn(move || loop {
            match t.round(at(2)) {
                None => {}
                Some(earliest) if earliest == Instant::MAX => t.sleep(earliest, at(2)),
                Some(earliest) => {
                    assert_eq!(earliest, at(5));
                    break;
                }
            }
        });
        let key = timers.schedule(1, at(5), no_wake());
        timer_thread.join().unwrap();
        timers.cancel(key);
    });
}

/// Model S2: two threads schedule into two shards (5, then an earlier 3) while the timer
/// thread scans, sleeps until the earliest timer it saw and is kicked (under loom a timed
/// sleep ends only by a kick). Whatever the order, the thread ends up knowing about 3: it
/// never sleeps towards 5 (or for ever) while 3 is pending without a kick on its way, however
/// the two kicks and their lowering of the published sleep interleave. Fails (deadlock) if
/// `round` clears `kicked` after its second look instead of before its scan.
#[test]
fn std_clock_two_shards_schedule_while_the_timer_thread_sleeps() {
    use cancelctx::__std_clock_model::Clock as Timers;
    model(PREEMPTIONS, || {
        let at = Instant::from_nanos;
        let timers = Arc::new(Timers::new(2, Instant::MAX));
        let t = timers.clone();
        let timer_thread = thread::spawn(move || loop {
            match t.round(at(2)) {
                None => {}
                Some(earliest) if earliest == at(3) => break,
                Some(earliest) => t.sleep(earliest, at(2)),
            }
        });
        let s = timers.clone();
        let other = thread::spawn(move || s.schedule(0, at(5), no_wake()));
        let early = timers.schedule(1, at(3), no_wake());
        let late = other.join().unwrap();
        timer_thread.join().unwrap();
        timers.cancel(early);
        timers.cancel(late);
    });
}

// Models 18-25 (issue #8): attach on demand and the merged state/count word.
//
// A `with_cancel` child is born DETACHED (not in its scope's `children`); readers of a
// detached node also read its scope's word and the first that sees it done settles the node
// (one compare-exchange); anything registered on a node (a child, a waiter, a callback, a
// timer) links it first; and a guard dropped on a leaf with nothing registered cancels and
// releases in one compare-exchange (`complete_and_release`). Each model below was run
// against a deliberate mutation of that protocol and failed (TESTING.md lists them).

/// Which error a context reports and, once done, which cause.
fn outcome(ctx: &Context) -> Option<(Error, &'static str)> {
    ctx.err().map(|err| (err, cause_name(ctx)))
}

/// The explicit cause a context reports, `None` while it is live.
fn cause_if_done(ctx: &Context) -> Option<&'static str> {
    ctx.cause().map(|_| cause_name(ctx))
}

/// The body of models 18a and 18b: a detached leaf completed by its own guard (`own`) while
/// its parent is cancelled with cause A and a third thread reads the leaf's cause (which
/// settles the leaf if it sees the parent done first). The first completion of the leaf's
/// word wins: the parent's (copied by a reader, or by the guard's own scope check) or the
/// guard's. The reader reads twice: once `Some`, the cause never changes, and it is the one
/// every later reader sees. The leaf is done when the parent's cancel returns. If the guard's
/// thread had seen the parent done before completing the leaf, the parent came first and
/// the leaf reports A.
fn detached_leaf_completion_race(own: fn(CancelGuard), own_cause: &'static str) {
    model(PREEMPTIONS, move || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, leaf_guard) = parent.with_cancel();
        let p = parent.clone();
        let completer = thread::spawn(move || {
            let parent_was_done = p.is_done();
            own(leaf_guard);
            parent_was_done
        });
        let l = leaf.clone();
        let reader = thread::spawn(move || {
            let first = cause_if_done(&l);
            let second = cause_if_done(&l);
            if first.is_some() {
                assert_eq!(first, second, "cause() changed once Some");
            }
            second
        });
        parent_guard.cancel_with(CauseA);
        assert!(leaf.is_done(), "the leaf is live after its parent's cancel returned");
        let parent_was_done = completer.join().unwrap();
        let seen_by_reader = reader.join().unwrap();
        assert_eq!(leaf.err(), Some(Error::Canceled));
        let last = cause_name(&leaf);
        assert!(last == "A" || last == own_cause, "{last}");
        if parent_was_done {
            assert_eq!(last, "A", "the leaf's own completion won over an earlier parent's");
        }
        if let Some(seen) = seen_by_reader {
            assert_eq!(seen, last, "a reader saw another cause than the final one");
        }
    });
}

/// Model 18a: a detached leaf's guard dropped (`complete_and_release`: cancel and release in
/// one compare-exchange) while its parent is cancelled and a third thread reads the leaf.
#[test]
fn detached_leaf_guard_drop_vs_parent_cancel_vs_reader() {
    detached_leaf_completion_race(drop, "Canceled");
}

/// Model 18b: as 18a, with the leaf cancelled with an explicit cause B (`complete` with a
/// cause: written under the leaf's lock, published by the transition).
#[test]
fn detached_leaf_cancel_with_cause_vs_parent_cancel_vs_reader() {
    detached_leaf_completion_race(|guard| guard.cancel_with(CauseB), "B");
}

/// Model 19: a task waiting on a detached leaf (`done()`: listen, link, set WAITERS) while
/// the parent is cancelled: either the leaf is linked before the parent's walk takes the
/// parent's lock (the walk marks it and wakes the waiter), or linking finds the parent done
/// and settles the leaf (the waiter resolves at once). A lost wake-up is loom's deadlock.
#[test]
fn detached_leaf_done_vs_parent_cancel() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, _leaf_guard) = parent.with_cancel();
        let waiter = thread::spawn(move || loom::future::block_on(leaf.done()));
        parent_guard.cancel();
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
    });
}

/// Model 20: a blocking `wait()` on a detached leaf while the leaf's own guard is dropped:
/// the waiter links the leaf and sets WAITERS, so the guard's one-compare-exchange path
/// (`complete_and_release`) must see WAITERS and take the general path that notifies.
#[test]
fn detached_leaf_blocking_wait_vs_guard_drop() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, _parent_guard) = root.with_cancel();
        let (leaf, leaf_guard) = parent.with_cancel();
        let waiter = thread::spawn(move || leaf.wait());
        drop(leaf_guard);
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
    });
}

/// Model 20b: a blocking `wait()` on a detached leaf while the parent is cancelled (the
/// blocking twin of model 19: listen, link, set WAITERS, park on loom's condition variable).
#[test]
fn detached_leaf_blocking_wait_vs_parent_cancel() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, _leaf_guard) = parent.with_cancel();
        let waiter = thread::spawn(move || leaf.wait());
        parent_guard.cancel();
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
    });
}

/// Model 21: a grandchild created under a detached leaf (which links the leaf: a node with a
/// detached child must be linked itself, so that its word is authoritative for the child)
/// while the parent is cancelled with cause A. A child of a done parent is done: the leaf is
/// done when the cancel returns, the grandchild once both the cancel and its creation
/// returned, and both report A.
#[test]
fn grandchild_of_a_detached_leaf_vs_parent_cancel() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, _leaf_guard) = parent.with_cancel();
        let l = leaf.clone();
        let maker = thread::spawn(move || l.with_cancel());
        parent_guard.cancel_with(CauseA);
        assert!(leaf.is_done(), "the leaf is live after its parent's cancel returned");
        let (grandchild, _grandchild_guard) = maker.join().unwrap();
        assert_eq!(
            outcome(&grandchild),
            Some((Error::Canceled, "A")),
            "grandchild of a done parent"
        );
        assert_eq!(outcome(&leaf), Some((Error::Canceled, "A")));
    });
}

/// Model 21b (found a bug, fixed: `is_done` settles like `err`): `is_done()` must not go
/// back to `false`, and `err()` must be `Some` once `is_done()` said true (as Go's `Err` is
/// non-nil once `Done` is closed). A third thread reads the leaf while the grandchild's
/// creation links it and the parent is cancelled. The interleaving loom finds:
///
/// 1. maker: `link` → `parent.lock_links()` takes the parent's lock and sees it live;
/// 2. main: the parent's transition (live → canceled) wins; its walk waits for the lock;
/// 3. reader: `leaf.is_done()` sees the leaf DETACHED and its scope done: `true`, without
///    settling the leaf (only `err`/`cause` settle);
/// 4. maker: the compare-exchange clearing DETACHED succeeds on the still-live leaf, which is
///    pushed into `children`;
/// 5. reader: `leaf.err()` reads a linked, live word: `None` (and `is_done()` is `false`)
///    until the walk, once the maker releases the lock, marks the leaf.
///
/// `is_done` settling like `err` does (e.g. `|| (s & DETACHED != 0 && self.err_detached()
/// .is_some())`) makes this model pass (23,878 executions, 1.4 s at bound 3): a reader that saw
/// the scope done has then completed the leaf's word, so the link's compare-exchange fails.
#[test]
fn is_done_of_a_detached_leaf_never_goes_back() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, _leaf_guard) = parent.with_cancel();
        let l = leaf.clone();
        let maker = thread::spawn(move || l.with_cancel());
        let l = leaf.clone();
        let reader = thread::spawn(move || {
            if l.is_done() {
                assert!(l.err().is_some(), "is_done() was true, then err() None");
                assert!(l.is_done(), "is_done() went back to false");
            }
        });
        parent_guard.cancel_with(CauseA);
        drop(maker.join().unwrap());
        reader.join().unwrap();
    });
}

/// Model 22: `after_func` registered on a detached leaf (which links it) while the parent is
/// cancelled: `f` runs exactly once, by the parent's walk or inline (the leaf was done).
#[test]
fn after_func_on_a_detached_leaf_vs_parent_cancel() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, _leaf_guard) = parent.with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let registrar = thread::spawn(move || {
            leaf.after_func(move || {
                r.fetch_add(1, Ordering::Relaxed);
            })
        });
        parent_guard.cancel();
        let handle = registrar.join().unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 1, "f must run exactly once");
        assert!(!handle.stop());
    });
}

/// Model 22b: a deadline child created under a detached leaf (its timer is registered on the
/// leaf's scope chain: `attach` links the leaf first) while the parent is cancelled: the
/// deadline child is done once both returned, with the parent's cause, and its timer is not
/// left on the clock (released by the walk, or handed back because it was born done).
#[test]
fn deadline_child_of_a_detached_leaf_vs_parent_cancel() {
    model(PREEMPTIONS, || {
        let (root, clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, _leaf_guard) = parent.with_cancel();
        let maker = thread::spawn(move || leaf.with_deadline(Instant::from_nanos(10)));
        parent_guard.cancel_with(CauseA);
        let (child, _child_guard) = maker.join().unwrap();
        assert_eq!(outcome(&child), Some((Error::Canceled, "A")), "deadline child left live");
        assert_eq!(clock.pending_timers(), 0, "timer of a done context left on the clock");
    });
}

/// Model 23: the merged count. Another thread clones and drops the leaf's handles while the
/// leaf's guard is dropped (`complete_and_release`: completion and release in one
/// compare-exchange on the word that holds the count) and the parent is cancelled (a reader
/// may settle the leaf: another compare-exchange on that word). Every count change must
/// survive: a lost increment frees the node under a live handle (a double free, or a use
/// after free only the ASan run sees), a lost decrement leaks it (loom's "Arc leaked": the
/// node holds the root's `Arc`). The last handle may be any of the three.
#[test]
fn merged_count_clone_drop_vs_guard_drop_vs_parent_cancel() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, leaf_guard) = parent.with_cancel();
        let handles = thread::spawn(move || {
            let clone = leaf.clone();
            drop(leaf);
            let err = clone.err();
            drop(clone);
            err
        });
        let dropper = thread::spawn(move || drop(leaf_guard));
        parent_guard.cancel();
        dropper.join().unwrap();
        let err = handles.join().unwrap();
        assert!(err.is_none() || err == Some(Error::Canceled));
        drop(parent);
        drop(root);
    });
}

/// Model 24 (found a bug, fixed: `NOT_LINKED` is the walk's last access, Release/Acquire):
/// the last handle of a linked
/// leaf dropped while its parent's walk drains the parent's `children`. The release path
/// (`free_node`) reads the leaf's `slot` without the parent's lock and skips the lock when it
/// reads `NOT_LINKED`; but the walk stores `NOT_LINKED` first and then keeps using the leaf
/// under the lock (`transition`, `upgrade`, a state load):
///
/// 1. main: the parent's walk takes the parent's lock, stores `NOT_LINKED` in the leaf's slot;
/// 2. dropper: the leaf's last handle drops; `free_node` reads `NOT_LINKED`, skips the lock
///    and frees the leaf;
/// 3. main: the walk's `child.transition(..)` (a compare-exchange on the leaf's word) runs on
///    freed memory.
///
/// Loom alone cannot see a use after free of a plain `Box`, so the dropper allocates a node of
/// the same size right away: the allocator hands out the leaf's block again and the walk's
/// compare-exchange lands on the new node's word, which loom reports as "Causality violation:
/// Concurrent load and mut accesses" (in `Walk::visit`), and which in a release build would
/// cancel that unrelated context. The ASan run (see the top) reports the heap-use-after-free
/// in `Walk::visit` directly. Storing `NOT_LINKED` as the last access of each child in
/// `visit` (`Release`) and reading it with `Acquire` in `free_node` makes both pass (213
/// executions, 11 ms). Also checks the count and lock protocol: no deadlock, nothing leaked,
/// the sibling still cancelled by the walk.
#[test]
fn last_handle_drop_of_a_linked_leaf_vs_parent_walk() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, leaf_guard) = parent.with_cancel();
        leaf_guard.detach();
        // A child links the leaf into `parent.children` (slot 0); then the child goes.
        drop(leaf.with_cancel());
        let (sibling, _sibling_guard) = parent.with_cancel();
        drop(sibling.with_cancel()); // slot 1
        let (other_parent, _other_parent_guard) = root.with_cancel();
        let dropper = thread::spawn(move || {
            drop(leaf);
            // A node of the same size, allocated at once: the allocator may hand out the
            // leaf's block again (glibc's does), so a walk that still uses the freed leaf
            // would cancel this unrelated context.
            let (other, other_guard) = other_parent.with_cancel();
            assert!(!other.is_done(), "an unrelated context was cancelled by the parent's walk");
            drop((other, other_guard));
        });
        parent_guard.cancel();
        assert!(sibling.is_done());
        dropper.join().unwrap();
        drop(parent);
    });
}

/// Model 25: two threads link the same detached leaf at once (each creates a grandchild), so
/// one of them finds it linked already when it holds the parent's lock and must not push it
/// a second time. A leaf listed twice would leave a dangling pointer in the parent's
/// `children` once the leaf is freed (its release removes one entry), which the parent's walk
/// then follows. Loom alone cannot see that use after free, so the leaf's block is handed
/// out again at once (the same-sized node allocated right after it is freed, as glibc's
/// allocator does): a walk following the dangling pointer then cancels that unrelated
/// context, or loom reports the unsynchronized access. Under the ASan run the use after free
/// is reported directly.
#[test]
fn two_threads_link_the_same_detached_leaf() {
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (parent, parent_guard) = root.with_cancel();
        let (leaf, leaf_guard) = parent.with_cancel();
        let (a, b) = (leaf.clone(), leaf.clone());
        let first = thread::spawn(move || a.with_cancel());
        let second = b.with_cancel();
        let first = first.join().unwrap();
        drop((first, second, leaf_guard, b));
        drop(leaf); // the last handle: the leaf is freed and removed from `children`
        let (unrelated, _unrelated_guard) = root.with_cancel();
        parent_guard.cancel();
        assert!(!unrelated.is_done(), "the parent's walk reached a context it never had");
    });
}

/// Model W1: the context's own waiter list (`src/waiters.rs`): one waiter links, polls pending
/// and unlinks (drops its future) while a second one waits and a cancel drains the list. The
/// second waiter is always woken (loom reports a deadlock otherwise), and the drop racing the
/// drain is sound. Under loom the list's spin lock is a loom mutex (see `WaitList::lock`).
/// Mutations, each failing with a deadlock (here and in models 4/5): a registration that
/// finds its entry drained keeps waiting instead of resolving; the waiter sets WAITERS
/// before linking its entry.
#[test]
fn waiter_list_link_and_unlink_vs_drain() {
    use std::future::Future;
    model(PREEMPTIONS, || {
        let (root, _clock) = root();
        let (ctx, guard) = root.with_cancel();
        let c = ctx.clone();
        let dropper = thread::spawn(move || {
            let waker = futures::task::noop_waker();
            let mut done = c.done_owned();
            let polled =
                std::pin::Pin::new(&mut done).poll(&mut std::task::Context::from_waker(&waker));
            drop(done);
            polled
        });
        let waiter = thread::spawn(move || loom::future::block_on(ctx.done()));
        guard.cancel();
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
        let polled = dropper.join().unwrap();
        assert!(matches!(
            polled,
            std::task::Poll::Pending | std::task::Poll::Ready(Error::Canceled)
        ));
    });
}
