//! Model checking of linked contexts (`Context::with_linked`) with loom.
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" cargo test --release --test loom_linked \
//!     --target-dir target/loom
//! ```
//!
//! A linked context is a child of `self`, completed also by an `after_func` registration on
//! `other` that a hidden value owns and stops on drop (src/linked.rs). These models run that
//! composition under every interleaving loom explores: trees are rooted at
//! `Context::with_clock(ManualClock)`, whose `Arc`s are loom's, so anything left registered
//! keeps a root alive and loom fails the model with "Arc leaked". See tests/loom.rs for the
//! set-up and the ASan variant.
//!
//! Models 1 and 2a were seen to fail on a deliberate mutation of src/linked.rs (the mutation
//! and loom's verdict are written above each model).
#![cfg(loom)]

use std::fmt;

use cancelctx::{Context, Error, ManualClock};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

const PREEMPTIONS: usize = 3;

#[path = "common/loom_model.rs"]
mod loom_model;
use loom_model::model;

#[derive(Debug)]
struct Cause(&'static str);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Cause {}

fn cause_name(ctx: &Context) -> &'static str {
    ctx.cause().expect("a done context has a cause").downcast_ref::<Cause>().expect("ours").0
}

/// Model 1: both parents cancel at once. Each canceller, right after its own `cancel`
/// returns, sees the linked child done (as for an ordinary child); the child reports one
/// parent's error with that same parent's cause, its callback runs exactly once, and
/// everything is freed.
///
/// Mutation seen to fail: `complete_from` skipping the child when `self` already reports
/// done ("its own walk will get it") — the thread cancelling `other` then returns while
/// `self`'s walk has not reached the child yet: "linked child live after other's cancel".
#[test]
fn both_parents_cancel_at_once() {
    model(PREEMPTIONS, || {
        let clock = ManualClock::new();
        let root = Context::with_clock(clock);
        let (a, guard_a) = root.with_cancel();
        let (b, guard_b) = root.with_cancel();
        let (c, _guard_c) = a.with_linked(&b);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let _handle = c.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });

        let c2 = c.clone();
        let other = thread::spawn(move || {
            guard_b.cancel_with(Cause("b"));
            assert!(c2.is_done(), "linked child live after other's cancel");
        });
        guard_a.cancel_with(Cause("a"));
        assert!(c.is_done(), "linked child live after self's cancel");
        other.join().unwrap();

        assert_eq!(c.err(), Some(Error::Canceled));
        let name = cause_name(&c);
        assert!(name == "a" || name == "b", "{name}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the child's callback runs once");
    });
}

/// A value whose drop is counted: shows that `self`'s chain was freed.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Model 2a: `self` cancels while the last handle to the linked child is dropped. Once both
/// are finished, nothing of the child is left on `other` (which stays live): `self`'s chain
/// is freed at once, and later cancelling and dropping `other` leaks nothing.
///
/// Mutation seen to fail: the link's drop skipping `stop()` when the child is already done
/// ("a done child needs no unlinking") — the registration stays on the live `other`:
/// "self's chain still held after the child was dropped".
#[test]
fn self_cancels_while_the_child_is_dropped() {
    model(PREEMPTIONS, || {
        let clock = ManualClock::new();
        let root = Context::with_clock(clock);
        let freed = Arc::new(AtomicUsize::new(0));
        let (a, guard_a) = root.with_value(Tracked(freed.clone())).with_cancel();
        let (b, guard_b) = root.with_cancel();
        let (c, guard_c) = a.with_linked(&b);
        guard_c.detach();
        drop(a);

        let dropper = thread::spawn(move || drop(c));
        guard_a.cancel_with(Cause("a"));
        dropper.join().unwrap();
        drop(guard_a);
        assert_eq!(
            freed.load(Ordering::SeqCst),
            1,
            "self's chain still held after the child was dropped"
        );
        assert!(!b.is_done());
        guard_b.cancel();
        drop(b);
    });
}

/// Model 2b: `other` cancels while the last handle to the linked child is dropped: the
/// link's callback either runs (completing a child that it then frees) or is stopped, never
/// both, never neither; nothing leaks (loom's "Arc leaked" check on the roots) and `self`'s
/// chain is freed by the time both threads are finished.
///
/// This handoff is `after_func`'s stop-versus-run protocol (tests/loom.rs, model 7), which
/// the link reuses unchanged. No mutation of src/linked.rs alone was found that fails this
/// model without failing model 2a first: with `other` cancelled in the model, even a link
/// that never stops its registration is cleaned up by the callback running. It stays as
/// coverage of the composition (the child freed from inside `other`'s walk).
#[test]
fn other_cancels_while_the_child_is_dropped() {
    model(PREEMPTIONS, || {
        let clock = ManualClock::new();
        let root = Context::with_clock(clock);
        let freed = Arc::new(AtomicUsize::new(0));
        let (a, guard_a) = root.with_value(Tracked(freed.clone())).with_cancel();
        let (b, guard_b) = Context::with_clock(ManualClock::new()).with_cancel();
        let (c, guard_c) = a.with_linked(&b);
        guard_c.detach();
        guard_a.detach(); // `self` stays live: only `other` and the drop race
        drop(a);

        let dropper = thread::spawn(move || drop(c));
        guard_b.cancel_with(Cause("b"));
        dropper.join().unwrap();
        assert_eq!(freed.load(Ordering::SeqCst), 1, "self's chain still held");
        drop(b);
    });
}
