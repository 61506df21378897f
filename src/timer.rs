//! The bridge between a deadline node and its clock: a `Waker` that completes the node.
//!
//! The clock holds the waker, not the node: the waker reaches the node through a pointer
//! that the node's release path clears (under the waker's lock) before the node is freed, so
//! a pending timer never keeps a context alive, and a timer that fires after the last handle
//! is gone does nothing.

use alloc::sync::Arc;
use alloc::task::Wake;
use core::task::Waker;

use crate::error::Error;
use crate::node::{NodePtr, NodeRef};
use crate::sync::Mutex;

#[derive(Default)]
pub(crate) struct TimerWaker {
    /// The node, while it is alive.
    pub(crate) node: Mutex<Option<NodePtr>>,
}

impl Wake for TimerWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
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
        // Even if the node is done already: a completion that loses waits for the winning
        // walk, so a clock move returns only once everything due is done.
        node.complete(Error::DeadlineExceeded, meta.cause.clone());
    } else if node.err().is_none() {
        arm(node, waker.clone());
    }
}

/// Points `waker` at a new deadline node and schedules it, or completes the node at once if
/// the deadline has already passed.
pub(crate) fn arm(node: &NodeRef, waker: Arc<TimerWaker>) {
    let meta = node.meta.as_ref().expect("a deadline node has meta");
    *waker.node.lock() = Some(node.ptr());
    let clock = meta.clock.get();
    if node.err().is_some() {
        return; // born done: the parent was done
    }
    if clock.now() >= meta.deadline {
        node.complete(Error::DeadlineExceeded, meta.cause.clone());
        return;
    }
    // No lock is held here: a clock may wake at once, even inside `schedule`.
    let key = clock.schedule(meta.deadline, Waker::from(waker));
    match node.set_timer(key) {
        Ok(None) => {}
        // Re-armed after an early wake-up: the old key has fired, release it anyway.
        Ok(Some(old)) => clock.cancel(old),
        // Completed meanwhile (cancelled, or the clock already fired): nothing to keep.
        Err(key) => clock.cancel(key),
    }
}
