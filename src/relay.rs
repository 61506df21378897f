//! The one way the crate's waiters on an `event_listener::Event` (`WaitGroup` and `Group`
//! waiters, async and blocking; a context's waiters have their own list, `crate::waiters`)
//! wait on it without handing it the task's waker.
//!
//! event-listener calls a listener's waker while it holds the event's list lock. A user waker
//! that panics there unwinds through event-listener mid-notification (the remaining listeners
//! are not woken, its notified count is left wrong), and a waker that re-enters the same
//! event (polls or drops another listener inline, as a run-inline executor does) deadlocks on
//! that lock. So a [`Waiter`] registers a [`Relay`] with the event instead: one immutable
//! relay per task waker (a poll with another waker makes a new one; the relay needs no lock
//! and a pending poll costs one `will_wake`). The relay's `wake` never runs user code while a
//! crate call into an event is in progress: it only parks the relay on this thread's deferred
//! list, and [`deferred_wakes`] (wrapped around every such call: notifications, listener
//! drops) wakes the tasks once event-listener has released its lock, each under
//! `catch_unwind`. [`deferred_wakes`] then resumes the first panic.
//!
//! A wake outside every crate call (event-listener never wakes on its own, so this is only a
//! safety net) wakes the task at once and drops a panic of its waker (the hook printed it).
//!
//! Blocking waits (`wait_blocking`, `wait_timeout` of wait groups, groups at their limit) use the same
//! path with a relay that unparks the waiting thread ([`Waiter::wait`]): deferred like a
//! task's wake, the unpark comes after event-listener has released its lock, so the woken
//! thread does not contend with the notifier for it (event-listener's own blocking wait is
//! unparked under the lock and costs about 5x a bare `park`/`unpark` round trip).
//!
//! Without `std` there are no thread-locals and no `catch_unwind`: the relay wakes the task
//! directly, under event-listener's lock, so a re-entrant waker deadlocks there and a panic
//! unwinds through event-listener (which cannot be helped without `catch_unwind`). Under
//! loom, whose threads share one OS thread (and so its thread-locals), the relay wakes
//! directly as well; the models' wakers neither panic nor re-enter.

use alloc::sync::Arc;
use alloc::task::Wake;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, Waker};

use event_listener::{Event, EventListener};

/// The waker event-listener holds: it forwards to one task waker, or (a blocking wait) unparks
/// one thread. A task that polls with a different waker gets a new relay (task wakers rarely
/// change), so the relay needs no lock.
pub(crate) struct Relay {
    target: Target,
}

enum Target {
    Task(Waker),
    /// A thread blocked in [`Waiter::wait`] / [`Waiter::wait_deadline`].
    #[cfg(feature = "std")]
    Thread(crate::sync::thread::Thread),
}

impl Relay {
    fn wake_task(&self) {
        match &self.target {
            Target::Task(task) => task.wake_by_ref(),
            #[cfg(feature = "std")]
            Target::Thread(thread) => thread.unpark(),
        }
    }
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
    use crate::panic::Payload;

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
            drop(crate::panic::for_each_caught([task], |task| task.wake_task()));
        }
    }

    /// Runs `f` (a call into an event) with this thread's wakes deferred, then wakes them;
    /// returns `f`'s result and the first panic of those wakers. Inside another such call
    /// (a nested one) the wakes are left to that outer call, which also gets their panics.
    pub(crate) fn deferred_wakes_caught<R>(f: impl FnOnce() -> R) -> (R, Option<Payload>) {
        let outermost = DEFERRED.try_with(|d| !d.active.replace(true)).unwrap_or(false);
        if !outermost {
            return (f(), None);
        }
        /// Wakes what was deferred if `f` unwinds (event-listener does not panic, but the
        /// wakes must never be lost); the panics of those wakers are dropped then (the hook
        /// printed them, and one panic is already unwinding).
        struct OnUnwind;
        impl Drop for OnUnwind {
            fn drop(&mut self) {
                drop(flush());
            }
        }
        let on_unwind = OnUnwind;
        let result = f();
        core::mem::forget(on_unwind);
        (result, flush())
    }

    /// Ends this thread's deferring and wakes the deferred tasks, each under `catch_unwind`.
    fn flush() -> Option<Payload> {
        // A waker run below may call into an event again: that call is then the outermost
        // one and flushes (what it deferred) itself.
        let mut tasks = DEFERRED
            .try_with(|d| {
                d.active.set(false);
                core::mem::take(&mut *d.list.borrow_mut())
            })
            .unwrap_or_default();
        let first_panic = crate::panic::for_each_caught(tasks.drain(..), |task| task.wake_task());
        // Keep the buffer for the next wake (re-growing it for every wake of thousands of
        // waiters costs page faults), unless it is past 1 MiB.
        if tasks.capacity() <= 65_536 {
            let _ = DEFERRED.try_with(|d| {
                let mut list = d.list.borrow_mut();
                if list.capacity() < tasks.capacity() {
                    list.append(&mut tasks);
                    core::mem::swap(&mut *list, &mut tasks);
                }
            });
        }
        first_panic
    }
}

#[cfg(not(all(feature = "std", not(loom))))]
mod deferred {
    use alloc::sync::Arc;

    use super::Relay;
    use crate::panic::Payload;

    pub(super) fn defer_or_wake(task: Arc<Relay>) {
        task.wake_task();
    }

    pub(crate) fn deferred_wakes_caught<R>(f: impl FnOnce() -> R) -> (R, Option<Payload>) {
        (f(), None)
    }
}

use deferred::defer_or_wake;
use deferred::deferred_wakes_caught;

/// Runs `f` (a call into an event) with this thread's wakes deferred, then wakes them, each
/// under `catch_unwind`; then resumes the first panic of those wakers.
pub(crate) fn deferred_wakes<R>(f: impl FnOnce() -> R) -> R {
    let (result, panic) = deferred_wakes_caught(f);
    crate::panic::resume(panic);
    result
}

/// Wakes every listener of `event` (wakers run after the notification, panics contained and
/// the first one resumed).
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
        if self.listener.is_none() {
            return Poll::Ready(());
        }
        let current = matches!(
            &self.relay,
            Some((relay, _)) if matches!(&relay.target, Target::Task(task) if task.will_wake(cx.waker()))
        );
        if !current {
            self.set_relay(Target::Task(cx.waker().clone()));
        }
        self.poll_listener()
    }

    fn set_relay(&mut self, target: Target) {
        let relay = Arc::new(Relay { target });
        let waker = Waker::from(relay.clone());
        self.relay = Some((relay, waker));
    }

    /// Polls the listener with the current relay.
    fn poll_listener(&mut self) -> Poll<()> {
        let (Some(listener), Some((_, waker))) = (self.listener.as_mut(), &self.relay) else {
            return Poll::Ready(());
        };
        let mut relay_cx = TaskContext::from_waker(waker);
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
        let notified = self.block(None);
        debug_assert!(notified);
    }

    /// Blocks the thread until notified or `deadline`; `false` on timeout, and the listener
    /// is dropped then (std).
    #[cfg(feature = "std")]
    pub(crate) fn wait_deadline(&mut self, deadline: std::time::Instant) -> bool {
        self.block(Some(deadline))
    }

    /// The blocking wait: the listener is polled with a relay that unparks this thread, and
    /// the thread parks until a poll finds it notified.
    ///
    /// Not event-listener's own `Listener::wait`: that one is unparked by the notifier while
    /// the notifier holds the event's list lock, so the woken thread, which must take that
    /// lock to remove its entry, contends with the notifier at once (a round trip costs
    /// about 5x a bare `park`/`unpark`). A relay's wake is deferred like a task's (see the
    /// module docs): the thread is unparked after event-listener has released its lock.
    ///
    /// `park` may return without an unpark, or because of an unpark meant for something
    /// else this thread waited for earlier; the poll tells (it takes the list lock, which is
    /// free by then). An unpark after the notification is consumed by a later park of this
    /// thread, which the same loop (of whoever parks next) absorbs.
    #[cfg(feature = "std")]
    fn block(&mut self, deadline: Option<std::time::Instant>) -> bool {
        use crate::sync::thread;
        if self.listener.is_none() {
            return true;
        }
        self.relay = Some(thread_relay());
        loop {
            if self.poll_listener().is_ready() {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        self.clear();
                        return false;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

/// The relay that unparks the current thread (and a waker for it): one per thread, made on
/// its first blocking wait and shared by all of them (a thread blocks in one wait at a time;
/// an unpark a later wait did not ask for is a spurious one, which `block` absorbs).
#[cfg(all(feature = "std", not(loom)))]
fn thread_relay() -> (Arc<Relay>, Waker) {
    fn new() -> (Arc<Relay>, Waker) {
        let relay = Arc::new(Relay { target: Target::Thread(crate::sync::thread::current()) });
        let waker = Waker::from(relay.clone());
        (relay, waker)
    }
    std::thread_local! {
        static THREAD_RELAY: (Arc<Relay>, Waker) = new();
    }
    // While this thread's locals are being destroyed: a relay of its own.
    THREAD_RELAY.try_with(Clone::clone).unwrap_or_else(|_| new())
}

/// A waker that unparks the current thread (after event-listener released its lock, if it
/// is woken by a notification): for the blocking waits on a context's own waiter list.
#[cfg(feature = "std")]
pub(crate) fn thread_waker() -> Waker {
    thread_relay().1
}

/// Under loom the model's threads share the OS thread's thread-locals: a relay per wait.
#[cfg(all(feature = "std", loom))]
fn thread_relay() -> (Arc<Relay>, Waker) {
    let relay = Arc::new(Relay { target: Target::Thread(crate::sync::thread::current()) });
    let waker = Waker::from(relay.clone());
    (relay, waker)
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
