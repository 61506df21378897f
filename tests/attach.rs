//! Attach on demand: a `with_cancel` child is not linked into its parent until something is
//! registered on it (a child, a waiter, a callback, a timer). These tests pin the protocol's
//! promises from the outside, on the edges where a detached node differs from a linked one:
//!
//! - the first completion wins, whichever of the node's own guard and its parent (or an
//!   ancestor) comes first, and `err()` / `cause()` never change once reported;
//! - `is_done()` is true as soon as any ancestor is done, without anyone settling the node;
//! - registering anything on a detached node links it, or makes it settle if the parent is
//!   already done: nothing registered is ever missed by the parent's cancel;
//! - dropping works in any order, and memory is returned (a million detached children).
//!
//! Time only moves through [`ManualClock`]; cross-thread tests only bound hangs.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context as TaskContext, Poll};
use std::thread;
use std::time::Duration;

use cancelctx::{Context, Error, ManualClock};

mod common;
use common::counting_waker;

#[derive(Debug)]
struct Named(&'static str);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Named {}

fn cause_name(ctx: &Context) -> Option<&'static str> {
    ctx.cause().and_then(|cause| cause.downcast_ref::<Named>().map(|named| named.0))
}

#[test]
fn a_leaf_cancelled_after_its_parent_reports_the_parent_completion() {
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (leaf, leaf_guard) = parent.with_cancel();
    parent_guard.cancel_with(Named("parent"));
    // Nobody read the leaf yet: its own cancel comes second and must lose.
    leaf_guard.cancel_with(Named("leaf"));
    assert_eq!(leaf.err(), Some(Error::Canceled));
    assert_eq!(cause_name(&leaf), Some("parent"));
}

#[test]
fn a_leaf_cancelled_before_its_parent_keeps_its_own_completion() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (parent, _parent_guard) =
        root.with_timeout_cause(Duration::from_secs(1), Named("deadline"));
    let (leaf, leaf_guard) = parent.with_cancel();
    leaf_guard.cancel_with(Named("leaf"));
    clock.advance(Duration::from_secs(1));
    assert_eq!(parent.err(), Some(Error::DeadlineExceeded));
    assert_eq!(leaf.err(), Some(Error::Canceled));
    assert_eq!(cause_name(&leaf), Some("leaf"));
}

#[test]
fn is_done_sees_the_parent_and_err_never_changes_afterwards() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (parent, _parent_guard) =
        root.with_timeout_cause(Duration::from_secs(1), Named("deadline"));
    let (leaf, leaf_guard) = parent.with_cancel();
    assert!(!leaf.is_done());
    clock.advance(Duration::from_secs(1));
    // `is_done` reads the parent's word; it does not settle the leaf.
    assert!(leaf.is_done());
    assert!(leaf_guard.is_done());
    // Cancelling the leaf now loses: the deadline came first.
    leaf_guard.cancel_with(Named("leaf"));
    for _ in 0..2 {
        assert_eq!(leaf.err(), Some(Error::DeadlineExceeded));
        assert_eq!(cause_name(&leaf), Some("deadline"));
    }
    drop(leaf_guard);
    assert_eq!(leaf.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn an_ancestor_two_levels_up_reaches_a_detached_leaf() {
    let (top, top_guard) = Context::unclocked().with_cancel();
    let (middle, _middle_guard) = top.with_cancel();
    // The middle node gets a child, so it is linked into `top`; the leaf is detached.
    let (leaf, _leaf_guard) = middle.with_value(7u8).with_cancel();
    top_guard.cancel_with(Named("top"));
    assert!(middle.is_done() && leaf.is_done());
    assert_eq!(cause_name(&leaf), Some("top"));
    assert_eq!(leaf.value::<u8>(), Some(&7));
}

#[test]
fn a_child_of_a_detached_leaf_links_it_and_sees_the_parent_cancel() {
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (leaf, _leaf_guard) = parent.with_cancel();
    let (grandchild, _grandchild_guard) = leaf.with_cancel();
    let (great, _great_guard) = grandchild.with_value(1u8).with_cancel();
    parent_guard.cancel();
    assert_eq!(grandchild.err(), Some(Error::Canceled));
    assert_eq!(great.err(), Some(Error::Canceled));
}

#[test]
fn a_child_of_a_leaf_whose_parent_is_done_is_born_done() {
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (leaf, _leaf_guard) = parent.with_cancel();
    parent_guard.cancel_with(Named("parent"));
    let (grandchild, _grandchild_guard) = leaf.with_cancel();
    assert_eq!(grandchild.err(), Some(Error::Canceled));
    assert_eq!(cause_name(&grandchild), Some("parent"));
    let clock = ManualClock::new();
    let (clocked_parent, clocked_guard) = Context::with_clock(clock).with_cancel();
    let (clocked_leaf, _g) = clocked_parent.with_cancel();
    clocked_guard.cancel();
    let (timed, _timed_guard) = clocked_leaf.with_timeout(Duration::from_secs(1));
    assert_eq!(timed.err(), Some(Error::Canceled));
}

#[test]
fn a_waiter_on_a_detached_leaf_is_woken_by_the_parent_cancel() {
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (leaf, _leaf_guard) = parent.with_cancel();
    let (counter, waker) = counting_waker();
    let mut done = pin!(leaf.done());
    assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
    parent_guard.cancel();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(
        done.as_mut().poll(&mut TaskContext::from_waker(&waker)),
        Poll::Ready(Error::Canceled)
    );
}

#[test]
fn a_blocking_wait_on_a_detached_leaf_returns_on_the_parent_cancel() {
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (leaf, _leaf_guard) = parent.with_cancel();
    let barrier = Arc::new(Barrier::new(2));
    let waiter = {
        let barrier = barrier.clone();
        thread::spawn(move || {
            barrier.wait();
            leaf.wait()
        })
    };
    barrier.wait();
    parent_guard.cancel();
    assert_eq!(waiter.join().unwrap(), Error::Canceled);
}

#[test]
fn after_func_on_a_detached_leaf_runs_once_on_the_parent_cancel() {
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (leaf, leaf_guard) = parent.with_cancel();
    let runs = Arc::new(AtomicUsize::new(0));
    let _stop = leaf.after_func({
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
        }
    });
    parent_guard.cancel();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    drop(leaf_guard);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn after_func_on_a_leaf_whose_parent_is_done_runs_at_once() {
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (leaf, _leaf_guard) = parent.with_cancel();
    parent_guard.cancel();
    let runs = Arc::new(AtomicUsize::new(0));
    let _stop = leaf.after_func({
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
        }
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn handles_dropped_in_any_order_around_a_parent_cancel() {
    for order in 0..6 {
        let (parent, parent_guard) = Context::unclocked().with_cancel();
        let (leaf, leaf_guard) = parent.with_cancel();
        let clone = leaf.clone();
        let mut drops: Vec<Box<dyn FnOnce()>> = vec![
            Box::new(move || drop(parent_guard)),
            Box::new(move || drop(leaf_guard)),
            Box::new(move || drop(leaf)),
        ];
        // Every permutation of three drops, then the last handle and the parent.
        let first = drops.remove(order % 3);
        first();
        let second = drops.remove((order / 3) % drops.len());
        second();
        assert!(clone.is_done() || clone.err().is_none());
        drops.pop().unwrap()();
        assert!(clone.is_done());
        drop(parent);
        assert_eq!(clone.err(), Some(Error::Canceled));
    }
}

#[test]
fn leaf_and_parent_cancelled_concurrently_agree_on_one_error() {
    let clock = ManualClock::new();
    for _ in 0..200 {
        let root = Context::with_clock(clock.clone());
        let (parent, parent_guard) =
            root.with_deadline_cause(clock.now() + Duration::from_secs(1), Named("dl"));
        let (leaf, leaf_guard) = parent.with_cancel();
        let barrier = Arc::new(Barrier::new(3));
        let reader = {
            let (leaf, barrier) = (leaf.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                loop {
                    if let Some(first) = leaf.err() {
                        return (first, cause_name(&leaf));
                    }
                    std::hint::spin_loop();
                }
            })
        };
        let canceller = {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                leaf_guard.cancel_with(Named("leaf"));
            })
        };
        barrier.wait();
        clock.advance(Duration::from_secs(1));
        drop(parent_guard);
        canceller.join().unwrap();
        let (seen, seen_cause) = reader.join().unwrap();
        // Whatever the reader saw first is what everybody sees from then on.
        assert_eq!(leaf.err(), Some(seen));
        assert_eq!(cause_name(&leaf), seen_cause);
        match seen {
            Error::Canceled => assert_eq!(seen_cause, Some("leaf")),
            Error::DeadlineExceeded => assert_eq!(seen_cause, Some("dl")),
        }
    }
}

#[test]
fn concurrent_links_of_one_leaf_link_it_once() {
    for _ in 0..200 {
        let (parent, parent_guard) = Context::unclocked().with_cancel();
        let (leaf, _leaf_guard) = parent.with_cancel();
        let barrier = Arc::new(Barrier::new(2));
        let children: Vec<_> = (0..2)
            .map(|_| {
                let (leaf, barrier) = (leaf.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    leaf.with_cancel()
                })
            })
            .collect();
        let children: Vec<_> = children.into_iter().map(|t| t.join().unwrap()).collect();
        parent_guard.cancel();
        for (child, _guard) in &children {
            assert_eq!(child.err(), Some(Error::Canceled));
        }
        // Dropping everything unlinks the leaf exactly once (a double unlink would corrupt
        // the parent's list and crash or leak under the sanitizers).
        drop(children);
    }
}

#[test]
fn linked_children_unlinked_in_any_order_leave_the_rest_reachable() {
    // Each child has a child of its own, so each is linked into the parent's list (the first
    // inline, the rest in a vector); dropping some in a scrambled order must keep every other
    // one reachable by the parent's cancel.
    for seed in 0..20u64 {
        let (parent, parent_guard) = Context::unclocked().with_cancel();
        let mut children: Vec<_> = (0..9)
            .map(|_| {
                let (child, guard) = parent.with_cancel();
                let grandchild = child.with_cancel();
                Some((child, guard, grandchild))
            })
            .collect();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..5 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let index = (x % children.len() as u64) as usize;
            children[index] = None;
        }
        parent_guard.cancel();
        for (child, _, (grandchild, _)) in children.iter().flatten() {
            assert_eq!(child.err(), Some(Error::Canceled));
            assert_eq!(grandchild.err(), Some(Error::Canceled));
        }
    }
}
