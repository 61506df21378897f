//! The bridge between a deadline node and its clock: a `Waker` that completes the node.
//!
//! The clock holds the waker, not the node: the waker reaches the node through a pointer
//! that the node's release path clears (under the waker's lock) before the node is freed, so
//! a pending timer never keeps a context alive, and a timer that fires after the last handle
//! is gone does nothing.
//!
//! # Early wakes never nest
//!
//! A wake-up that comes before the deadline schedules a new one. Done naively (wake → fire →
//! schedule → the clock wakes at once → fire → ...), a clock that wakes a deadline it cannot
//! resolve (a 1 ms tick and a deadline between ticks) recurses until the stack overflows. So
//! scheduling is a loop guarded by `TimerWaker::arming`, one word:
//!
//! ```text
//!   0                    IDLE    nobody is scheduling this waker
//!   thread | ARMING      `thread` is inside `Clock::schedule` (or just after it)
//!   thread | WOKEN       ... and a wake-up arrived meanwhile
//! ```
//!
//! A wake-up that finds ARMING set by *its own thread* (the clock woke inside `schedule`)
//! turns it into WOKEN and returns; the armer sees WOKEN when `schedule` returns and checks
//! the deadline again, in its loop. A wake-up from *another* thread waits until the armer is
//! done (a few instructions after `schedule` returns), then fires as usual, so a clock move
//! that wakes a timer returns only once its context is done. Without `std` threads cannot be
//! told apart (`thread` is 0): every wake-up during ARMING is left to the armer.
//!
//! A clock that keeps waking at once without time moving is asked for exponentially later
//! instants after [`PATIENT_ROUNDS`] rounds, and given up (the deadline then never fires; the
//! clock is broken) after [`MAX_ROUNDS`]: depth and work stay bounded whatever it does.

use alloc::sync::Arc;
use alloc::task::Wake;
use core::task::Waker;
use core::time::Duration;

use crate::error::Error;
use crate::node::{NodePtr, NodeRef};
use crate::sync::{AtomicUsize, Mutex, Ordering};
use crate::time::Instant;

const ARMING: usize = 1;
const WOKEN: usize = 2;

/// Rounds of "woken before the deadline while scheduling" that ask for the deadline itself.
const PATIENT_ROUNDS: u32 = 16;
/// Rounds after which a clock that always wakes at once is given up.
const MAX_ROUNDS: u32 = PATIENT_ROUNDS + 64;

#[derive(Default)]
pub(crate) struct TimerWaker {
    /// The node, while it is alive.
    pub(crate) node: Mutex<Option<NodePtr>>,
    /// Who is scheduling this waker; see the module docs.
    arming: AtomicUsize,
}

/// An id for the current thread, with the two low bits clear (the address of an aligned
/// thread-local); 0 without `std` (and while this thread's thread-locals are destroyed).
fn this_thread() -> usize {
    #[cfg(feature = "std")]
    {
        #[cfg(loom)]
        use loom::thread_local;
        #[cfg(not(loom))]
        use std::thread_local;
        thread_local! {
            #[allow(clippy::missing_const_for_thread_local)] // loom's has no const form
            static ID: u64 = 0;
        }
        // During thread-local destruction there is no id: 0 then, which at worst leaves a
        // wake-up to the armer (as without `std`), never loses it.
        ID.try_with(|id| core::ptr::from_ref(id) as usize).unwrap_or(0)
    }
    #[cfg(not(feature = "std"))]
    {
        0
    }
}

impl Wake for TimerWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let me = this_thread();
        let mut spins = 0;
        loop {
            // memory ordering: Acquire pairs with the armer's Release when it leaves ARMING, so
            // the key it stored in the node is visible to the `fire` below.
            let s = self.arming.load(Ordering::Acquire);
            if s == 0 {
                break;
            }
            if s & !(ARMING | WOKEN) == me {
                // Woken inside `schedule` on this thread (or threads cannot be told apart):
                // the armer re-checks when `schedule` returns. Never nest.
                if s & WOKEN != 0
                    || self
                        .arming
                        .compare_exchange(s, me | WOKEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    return;
                }
                continue;
            }
            // Another thread is scheduling this waker: wait for it to finish.
            crate::sync::backoff(&mut spins);
        }
        let node = {
            let guard = self.node.lock();
            // SAFETY: the release path clears the pointer under this lock before freeing.
            guard.and_then(|ptr| unsafe { NodeRef::upgrade(ptr) })
        };
        if let Some(node) = node {
            fire(&node, self);
        }
    }
}

/// Completes the node if its deadline has passed on its clock; a wake-up that came early is
/// scheduled again (clocks may fire early, late or twice).
fn fire(node: &NodeRef, waker: &Arc<TimerWaker>) {
    let Some(meta) = node.meta.as_ref() else { return };
    if meta.clock.get().now() >= meta.deadline {
        expire(node);
    } else if node.err().is_none() {
        schedule(node, waker, None);
    }
}

/// The deadline has passed: complete the node. Even if it is done already: a completion that
/// loses waits for the winning walk, so a clock move returns only once everything due is done.
fn expire(node: &NodeRef) {
    let Some(meta) = node.meta.as_ref() else { return };
    // The wake-up has fired: take its key so that the completion does not cancel it (clocks
    // need not make `cancel` fast for fired timers).
    let _fired = node.take_timer();
    node.complete(Error::DeadlineExceeded, meta.cause.clone());
}

/// Points `waker` at a new deadline node and schedules it, or completes the node at once if
/// the deadline has already passed. `now` is the clock's time if the caller has just read it
/// (`with_timeout`), so that the first check need not read the clock again.
pub(crate) fn arm(node: &NodeRef, waker: Arc<TimerWaker>, now: Option<Instant>) {
    *waker.node.lock() = Some(node.ptr());
    if node.err().is_some() {
        return; // born done: the parent was done
    }
    schedule(node, &waker, now);
}

/// Schedules the node's wake-up until the clock takes it without waking at once; see the
/// module docs. Returns at once if another thread is scheduling it already (its wake-up
/// covers the same deadline). `now`, if given, is a time just read from the clock: the first
/// round uses it instead of reading the clock.
fn schedule(node: &NodeRef, waker: &Arc<TimerWaker>, mut now: Option<Instant>) {
    let Some(meta) = node.meta.as_ref() else { return };
    let me = this_thread();
    // memory ordering: Acquire so this armer sees the key the previous one stored.
    if waker.arming.compare_exchange(0, me | ARMING, Ordering::Acquire, Ordering::Relaxed).is_err()
    {
        return;
    }
    let clock = meta.clock.get();
    let mut rounds = 0;
    loop {
        if node.err().is_some() {
            waker.arming.store(0, Ordering::Release);
            return;
        }
        if now.take().unwrap_or_else(|| clock.now()) >= meta.deadline {
            waker.arming.store(0, Ordering::Release);
            expire(node);
            return;
        }
        rounds += 1;
        if rounds > MAX_ROUNDS {
            // The clock wakes at once for every instant asked: it is broken.
            waker.arming.store(0, Ordering::Release);
            return;
        }
        let at = match rounds.checked_sub(PATIENT_ROUNDS + 1) {
            None => meta.deadline,
            // Still too early after many rounds (a coarse clock rounding a deadline between
            // its ticks down): ask for exponentially later instants until it takes one.
            Some(extra) => meta.deadline.saturating_add(Duration::from_nanos(1 << extra.min(63))),
        };
        // No lock is held here: a clock may wake at once, even inside `schedule`.
        let key = clock.schedule(at, Waker::from(waker.clone()));
        match node.set_timer(key) {
            Ok(None) => {}
            // Re-scheduled after an early wake-up. The replaced key is usually the one that
            // woke early (fired: `cancel` ignores it), but after a clock's double wake it may
            // still be pending: release it, so one wake-up at most stays on the clock. Only
            // clocks that wake early get here, never the firing of a due timer.
            Ok(Some(old)) => clock.cancel(old),
            // Completed meanwhile (cancelled, or the clock already fired): nothing to keep.
            Err(key) => {
                if waker.arming.load(Ordering::Acquire) & WOKEN == 0 {
                    clock.cancel(key);
                }
            }
        }
        // memory ordering: Release publishes the stored key to a waker waiting for IDLE.
        match waker.arming.compare_exchange(me | ARMING, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            // Woken during `schedule` on this thread: check again, in this loop.
            Err(_) => waker.arming.store(me | ARMING, Ordering::Relaxed),
        }
    }
}
