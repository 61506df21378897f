//! [`AsyncIoClock`]: deadlines on `async-io`'s timers (smol, async-std).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Wake, Waker};

use super::{Clock, Instant, StdClock, TimerKey};

/// A clock on `async-io` timers, the reactor behind smol and async-std. Its instants are the
/// std clock's ([`StdClock`]).
///
/// Each deadline registers one `async_io::Timer` with the reactor, which wakes the context
/// directly when it fires; cancelling a deadline deregisters it. The reactor is driven by
/// whichever thread runs `async_io::block_on` (smol and async-std do), or by async-io's own
/// fallback thread, which also takes over while a `block_on` thread is blocked (a blocking
/// `wait_timeout` inside `block_on` still sees its deadline). The reactor is process-wide
/// and never shuts down, so deadlines do not depend on any executor staying alive; a future
/// whose executor is gone is still never polled again.
///
/// ```
/// use cancelctx::{AsyncIoClock, Context, Error};
/// use std::time::Duration;
///
/// let root = Context::with_clock(AsyncIoClock::new());
/// let (ctx, _guard) = root.with_timeout(Duration::from_millis(10));
/// assert_eq!(smol::block_on(ctx.done()), Error::DeadlineExceeded);
/// ```
#[derive(Clone, Debug, Default)]
pub struct AsyncIoClock {
    timers: Arc<Mutex<Timers>>,
}

#[derive(Debug, Default)]
struct Timers {
    next_id: u64,
    armed: HashMap<u64, async_io::Timer>,
}

impl AsyncIoClock {
    /// A clock on the process's `async-io` reactor.
    ///
    /// ```
    /// let clock = cancelctx::AsyncIoClock::new();
    /// # let _ = clock;
    /// ```
    #[must_use]
    pub fn new() -> AsyncIoClock {
        AsyncIoClock::default()
    }
}

impl Clock for AsyncIoClock {
    fn now(&self) -> Instant {
        StdClock.now()
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let id = {
            let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
            timers.next_id += 1;
            timers.next_id
        };
        let key = TimerKey::new(deadline, id);
        let fired = Arc::new(Fired {
            timers: Arc::downgrade(&self.timers),
            id,
            fired: AtomicBool::new(false),
            task: waker,
        });
        let mut timer = async_io::Timer::at(StdClock::to_std(deadline));
        // Polling once registers the timer with the reactor, which keeps the waker and calls
        // it at the deadline; nothing needs to poll it again.
        let waker = Waker::from(fired.clone());
        if Pin::new(&mut timer).poll(&mut TaskContext::from_waker(&waker)).is_ready() {
            waker.wake();
            return key;
        }
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        // memory ordering: the lock orders this with `Fired::wake_by_ref`, which sets the flag
        // before taking it: either we see the flag, or its removal comes after our insertion.
        if !fired.fired.load(Ordering::Relaxed) {
            timers.armed.insert(id, timer);
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        let timer = self.timers.lock().unwrap_or_else(|e| e.into_inner()).armed.remove(&key.id());
        drop(timer); // deregisters from the reactor, outside the lock
    }
}

/// The waker the reactor holds: forgets the fired timer (the crate does not cancel fired
/// timers, so the clock must not keep them), then wakes the context.
struct Fired {
    timers: Weak<Mutex<Timers>>,
    id: u64,
    fired: AtomicBool,
    task: Waker,
}

impl Wake for Fired {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Relaxed);
        if let Some(timers) = self.timers.upgrade() {
            let timer = timers.lock().unwrap_or_else(|e| e.into_inner()).armed.remove(&self.id);
            drop(timer); // outside the lock
        }
        self.task.wake_by_ref();
    }
}
