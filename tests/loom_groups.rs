//! Model checking of `WaitGroup`'s count/wake protocol and `Group`'s slots with loom.
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test --release --test loom_groups \
//!     --target-dir target/loom
//! ```
//!
//! As in `tests/loom.rs`, `src/sync.rs` and event-listener switch to loom's primitives under
//! `--cfg loom`, so these run the real code. A lost wake-up shows up as loom's "deadlock"; a
//! waiter released when it must not be, as a failed assertion.
//!
//! Each model was seen to fail on a deliberate mutation of `src/wait_group.rs` /
//! `src/group.rs` (see each model's doc comment), and to pass on the real code.
#![cfg(loom)]

use cancelctx::{Context, Group, ManualClock, WaitGroup};
use loom::future::block_on;
use loom::thread;
use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll};

/// Preemptions explored per model unless `LOOM_MAX_PREEMPTIONS` says otherwise.
const PREEMPTIONS: usize = 3;

#[path = "common/loom_model.rs"]
mod loom_model;
use loom_model::model;

/// The last `done` races a waiter that registers at the same time: the waiter returns.
///
/// Fails (loom: deadlock) when the waiter sets WAITERS before it listens: `done` then sees
/// WAITERS and notifies an empty list, and the waiter listens for a zero that has passed.
#[test]
fn last_done_vs_new_waiter() {
    model(PREEMPTIONS, || {
        let wg = WaitGroup::new();
        let unit = wg.add();
        let worker = thread::spawn(move || drop(unit));
        block_on(wg.wait());
        assert_eq!(wg.count(), 0);
        worker.join().unwrap();
    });
}

/// The same race with a blocking waiter (event-listener parks on loom's primitives).
///
/// Fails on the same mutation as `last_done_vs_new_waiter`.
#[test]
fn last_done_vs_blocking_waiter() {
    model(PREEMPTIONS, || {
        let wg = WaitGroup::new();
        let unit = wg.add();
        let worker = thread::spawn(move || drop(unit));
        wg.wait_blocking();
        worker.join().unwrap();
    });
}

/// `add` races `wait` and the last `done`: the count may go 1→0→1→0 or 1→2→1→0; the waiter
/// returns in every interleaving.
///
/// Fails (deadlock) on the mutation of `last_done_vs_new_waiter`.
#[test]
fn add_racing_wait() {
    model(PREEMPTIONS, || {
        let wg = WaitGroup::new();
        let first = wg.add();
        let finisher = thread::spawn(move || drop(first));
        let adder = {
            let wg = wg.clone();
            thread::spawn(move || drop(wg.add()))
        };
        block_on(wg.wait());
        finisher.join().unwrap();
        adder.join().unwrap();
        assert_eq!(wg.count(), 0);
    });
}

/// A waiter is released by a zero crossing even if new work is added before it runs (Go's
/// semantics): here the new unit is only finished after the waiter has returned.
///
/// Fails (deadlock) when the waiter ignores EPOCH and only looks at the count.
#[test]
fn zero_crossing_releases_a_waiter_after_new_work() {
    model(PREEMPTIONS, || {
        let wg = WaitGroup::new();
        let first = wg.add();
        let waker = futures::task::noop_waker();
        let mut wait = pin!(wg.wait());
        // The waiter starts (count 1) before the crossing.
        assert!(wait.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
        let again = {
            let wg = wg.clone();
            thread::spawn(move || {
                drop(first);
                wg.add() // held until the waiter has returned
            })
        };
        block_on(wait.as_mut());
        drop(again.join().unwrap());
    });
}

/// A late notification (from a `done` that cleared WAITERS before new work and a new waiter
/// came) does not release the new waiter while its unit is in flight.
///
/// Fails (assertion) when a notified waiter returns without checking EPOCH and count again.
#[test]
fn late_notify_does_not_release_a_newer_waiter() {
    model(PREEMPTIONS, || {
        let wg = WaitGroup::new();
        let first = wg.add();
        let old_waiter = {
            let wg = wg.clone();
            thread::spawn(move || block_on(wg.wait()))
        };
        let finisher = thread::spawn(move || drop(first));
        let second = wg.add();
        let waker = futures::task::noop_waker();
        let mut cx = TaskContext::from_waker(&waker);
        let mut wait = pin!(wg.wait());
        let first_poll = wait.as_mut().poll(&mut cx);
        finisher.join().unwrap();
        // `second` is held: no zero crossing can have happened since this waiter started
        // unless it started before `second` was added (then the first poll saw it).
        if first_poll.is_pending() {
            assert!(wait.as_mut().poll(&mut cx).is_pending(), "released by a stale notify");
        }
        drop(second);
        block_on(wait);
        old_waiter.join().unwrap();
    });
}

/// A member waiting for a slot is woken when the running member is dropped on another
/// thread (and the group's count reaches zero after both).
///
/// Fails (deadlock) when a member waiting for a slot listens without trying again after
/// `listen` (a slot freed in between is never announced to it).
#[test]
fn freed_slot_vs_waiting_member() {
    model(PREEMPTIONS, || {
        let group: Group<std::fmt::Error> = Group::new(&Context::with_clock(ManualClock::new()));
        group.set_limit(Some(1));
        let waker = futures::task::noop_waker();
        let mut cx = TaskContext::from_waker(&waker);
        let mut running = Box::pin(group.go(|_ctx| std::future::pending()));
        assert_eq!(running.as_mut().poll(&mut cx), Poll::Pending);
        let queued = group.go(|_ctx| async { Ok(()) });
        let dropper = thread::spawn(move || drop(running));
        block_on(queued);
        dropper.join().unwrap();
        assert!(block_on(group.wait()).is_ok());
    });
}
