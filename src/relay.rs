//! Waiting on an `event_listener::Event` without handing it the user's waker.
//!
//! event-listener calls a listener's waker while it holds the event's list lock. A user waker
//! that panics there unwinds through event-listener mid-notification (the remaining listeners
//! are not woken, its notified count is left wrong), and a waker that re-enters the same
//! event (polls another waiter inline) deadlocks on that lock. The group primitives therefore
//! register a [`Relay`] with the event instead. The relay's `wake` never runs user code while
//! a crate call into the event is in progress: it only parks the task's waker on this thread's
//! deferred list, and [`deferred_wakes`] (wrapped around every such call: `notify`, listener
//! drops) wakes them once the call has returned, each under `catch_unwind`, and then resumes
//! the first panic. So every waiter is woken even when some wakers panic.
//!
//! Without `std` (no thread-locals, no `catch_unwind`) and under loom (whose threads share an
//! OS thread) the relay wakes the task directly.

use alloc::sync::Arc;
use alloc::task::Wake;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, Waker};

use event_listener::{Event, EventListener};

/// The waker event-listener holds: it forwards to one task waker. A task that polls with a
/// different waker gets a new relay (task wakers rarely change), so the relay needs no lock.
pub(crate) struct Relay {
    task: Waker,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        // event-listener wakes by value: the relay itself goes on the deferred list, so
        // this costs no reference-count traffic.
        defer_or_wake(self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        defer_or_wake(self.clone());
    }
}

#[cfg(all(feature = "std", not(loom)))]
mod deferred {
    use alloc::sync::Arc;
    use core::cell::{Cell, RefCell};
    use std::vec::Vec;

    use super::Relay;

    /// This thread's deferred wakes.
    struct Deferred {
        /// `true` while a crate call into an event is in progress on this thread.
        active: Cell<bool>,
        /// The wakes deferred by that call. The buffer is kept between calls, so a steady
        /// state allocates nothing.
        list: RefCell<Vec<Arc<Relay>>>,
    }

    std::thread_local! {
        static DEFERRED: Deferred =
            const { Deferred { active: Cell::new(false), list: RefCell::new(Vec::new()) } };
    }

    pub(super) fn defer_or_wake(task: Arc<Relay>) {
        let mut task = Some(task);
        let _ = DEFERRED.try_with(|d| {
            if d.active.get() {
                d.list.borrow_mut().extend(task.take());
            }
        });
        if let Some(task) = task {
            // Outside every crate call (event-listener never wakes on its own): wake at once,
            // containing a panic so that it cannot unwind into event-listener.
            let result =
                std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| task.task.wake_by_ref()));
            drop(result);
        }
    }

    /// Runs `f` (a call into an event) with this thread's wakes deferred, then wakes them.
    pub(crate) fn deferred_wakes<R>(f: impl FnOnce() -> R) -> R {
        let outermost = DEFERRED.try_with(|d| !d.active.replace(true)).unwrap_or(false);
        if !outermost {
            return f();
        }
        /// Wakes what was deferred, also if `f` unwinds.
        struct Flush;
        impl Drop for Flush {
            fn drop(&mut self) {
                // A waker run below may call into an event again: that call is then the
                // outermost one and flushes (everything deferred so far) itself.
                let mut tasks = DEFERRED
                    .try_with(|d| {
                        d.active.set(false);
                        core::mem::take(&mut *d.list.borrow_mut())
                    })
                    .unwrap_or_default();
                let mut first_panic = None;
                for task in tasks.drain(..) {
                    let woken = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
                        task.task.wake_by_ref();
                    }));
                    if let Err(payload) = woken {
                        first_panic.get_or_insert(payload);
                    }
                }
                // Keep the buffer for the next wake (re-growing it for every wake of
                // thousands of waiters costs page faults), unless it is past 1 MiB.
                if tasks.capacity() <= 65_536 {
                    let _ = DEFERRED.try_with(|d| {
                        let mut list = d.list.borrow_mut();
                        if list.capacity() < tasks.capacity() {
                            list.append(&mut tasks);
                            core::mem::swap(&mut *list, &mut tasks);
                        }
                    });
                }
                if let Some(payload) = first_panic {
                    if !std::thread::panicking() {
                        std::panic::resume_unwind(payload);
                    }
                }
            }
        }
        let flush = Flush;
        let result = f();
        drop(flush);
        result
    }
}

#[cfg(not(all(feature = "std", not(loom))))]
mod deferred {
    use alloc::sync::Arc;

    use super::Relay;

    pub(super) fn defer_or_wake(task: Arc<Relay>) {
        task.task.wake_by_ref();
    }

    pub(crate) fn deferred_wakes<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

use deferred::defer_or_wake;
pub(crate) use deferred::deferred_wakes;

/// Wakes every listener of `event` (wakers run after the notification, panics contained).
pub(crate) fn notify_all(event: &Event) {
    deferred_wakes(|| event.notify(usize::MAX));
}

/// One waiter's registration on an event: the listener and the relay it is polled with.
#[derive(Default)]
pub(crate) struct Waiter {
    listener: Option<EventListener>,
    /// The relay, and a waker for it.
    relay: Option<(Arc<Relay>, Waker)>,
}

impl Waiter {
    pub(crate) fn is_listening(&self) -> bool {
        self.listener.is_some()
    }

    /// Starts listening to `event` (a new listener: an old one is dropped first).
    pub(crate) fn listen(&mut self, event: &Event) {
        self.clear();
        self.listener = Some(event.listen());
    }

    /// Stops listening. A notification this listener had received is passed on to another
    /// listener by event-listener; that wake-up is deferred like a notification's.
    pub(crate) fn clear(&mut self) {
        if let Some(listener) = self.listener.take() {
            deferred_wakes(|| drop(listener));
        }
    }

    /// Polls the listener: `Ready` once notified (the listener is then gone), `Pending` with
    /// the task's waker registered through the relay.
    pub(crate) fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let Some(listener) = self.listener.as_mut() else { return Poll::Ready(()) };
        let relay = match &mut self.relay {
            Some((relay, waker)) if relay.task.will_wake(cx.waker()) => waker,
            slot => {
                let relay = Arc::new(Relay { task: cx.waker().clone() });
                let waker = Waker::from(relay.clone());
                &mut slot.insert((relay, waker)).1
            }
        };
        let mut relay_cx = TaskContext::from_waker(relay);
        match Pin::new(listener).poll(&mut relay_cx) {
            Poll::Ready(()) => {
                self.listener = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Blocks the thread until notified (std).
    #[cfg(feature = "std")]
    pub(crate) fn wait(&mut self) {
        use event_listener::Listener;
        if let Some(listener) = self.listener.take() {
            listener.wait();
        }
    }

    /// Blocks the thread until notified or `deadline`; `false` on timeout (std).
    #[cfg(feature = "std")]
    pub(crate) fn wait_deadline(&mut self, deadline: std::time::Instant) -> bool {
        use event_listener::Listener;
        match self.listener.take() {
            Some(listener) => match listener.wait_deadline(deadline) {
                Some(()) => true,
                None => false,
            },
            None => true,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.clear();
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter").field("listening", &self.is_listening()).finish()
    }
}
