//! The worker pattern's two calls on [`Context`]: [`sleep`](Context::sleep) (Go's
//! `select { case <-ctx.Done(): case <-time.After(d): }`) and, with `std`,
//! [`block_on`](Context::block_on).

use alloc::sync::Arc as StdArc;
use alloc::task::Wake;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, Waker};
use core::time::Duration;

use futures_core::future::FusedFuture;

use crate::context::Context;
use crate::error::{Error, NoClockError};
use crate::sync::Mutex;
// Not modelled by loom (no model sleeps or blocks on a thread): plain atomics.
use crate::time::{Instant, TimerKey};
use crate::wait::Done;
use portable_atomic::{AtomicU8, Ordering};

impl Context {
    /// A future that resolves to `Ok(())` once `d` (from this call) has passed on the tree's
    /// clock, or to `Err(error)` as soon as the context is done first: Go's
    /// `select { case <-ctx.Done(): case <-time.After(d): }` in one call, on every runtime.
    ///
    /// Time is the tree's [`Clock`](crate::Clock), so a [`ManualClock`](crate::ManualClock)
    /// drives it in tests. If the context is done when the future is polled, `Err` wins even
    /// if `d` has passed too. Dropping the future releases its timer.
    ///
    /// # Panics
    ///
    /// If the tree has no clock (it is rooted at [`Context::unclocked`]), like
    /// [`with_timeout`](Context::with_timeout).
    ///
    /// # Examples
    ///
    /// A worker that ticks until its context is done:
    ///
    /// ```
    /// use cancelctx::{Context, Error, ManualClock};
    /// use std::future::Future;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let (ctx, stop) = Context::with_clock(clock.clone()).with_cancel();
    ///
    /// let mut tick = Box::pin(ctx.sleep(Duration::from_secs(1)));
    /// let waker = futures::task::noop_waker();
    /// let mut cx = std::task::Context::from_waker(&waker);
    /// assert!(tick.as_mut().poll(&mut cx).is_pending());
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(tick.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(())));
    ///
    /// stop.cancel();
    /// assert_eq!(pollster::block_on(ctx.sleep(Duration::from_secs(1))), Err(Error::Canceled));
    /// ```
    #[track_caller]
    pub fn sleep(&self, d: Duration) -> Sleep<'_> {
        match self.try_sleep(d) {
            Ok(sleep) => sleep,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`sleep`](Context::sleep), or [`NoClockError`] if the tree has no clock (for code
    /// that takes contexts from callers and must not panic).
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock, NoClockError};
    /// use std::time::Duration;
    /// assert_eq!(Context::unclocked().try_sleep(Duration::from_secs(1)).err(), Some(NoClockError));
    /// let ctx = Context::with_clock(ManualClock::new());
    /// assert_eq!(pollster::block_on(ctx.try_sleep(Duration::ZERO).unwrap()), Ok(()));
    /// ```
    pub fn try_sleep(&self, d: Duration) -> Result<Sleep<'_>, NoClockError> {
        let now = self.now().ok_or(NoClockError)?;
        Ok(Sleep {
            ctx: self,
            deadline: now.saturating_add(d),
            done: self.done(),
            timer: None,
            waker: None,
            finished: false,
        })
    }
}

/// Future returned by [`Context::sleep`]: `Ok(())` after the duration, `Err` if the context
/// is done first.
///
/// ```
/// use cancelctx::{Context, ManualClock};
/// let ctx = Context::with_clock(ManualClock::new());
/// let sleep = ctx.sleep(std::time::Duration::ZERO);
/// assert_eq!(pollster::block_on(sleep), Ok(()));
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Sleep<'a> {
    ctx: &'a Context,
    deadline: Instant,
    done: Done<'a>,
    /// The wake-up scheduled on the clock, if any.
    timer: Option<TimerKey>,
    waker: Option<StdArc<SleepWaker>>,
    finished: bool,
}

/// What the clock wakes: it notes that the timer fired (so an early wake-up gets a new
/// timer) and wakes the task's latest waker.
#[derive(Default)]
struct SleepWaker {
    fired: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Wake for SleepWaker {
    fn wake(self: StdArc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &StdArc<Self>) {
        // memory ordering: Release/Acquire with the `swap` in `poll`; the flag is set before
        // the task is woken, so the poll that follows sees it.
        self.fired.store(1, Ordering::Release);
        // Taken, not cloned: no user code (a waker's `clone`) runs under the lock. The poll
        // this wake-up causes registers the task's waker again.
        let task = self.task.lock().take();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl Sleep<'_> {
    fn finish(&mut self, result: Result<(), Error>) -> Poll<Result<(), Error>> {
        self.finished = true;
        self.release_timer();
        Poll::Ready(result)
    }

    fn release_timer(&mut self) {
        if let Some(key) = self.timer.take() {
            if let Some(clock) = self.ctx.clock() {
                clock.cancel(key);
            }
        }
    }
}

impl Future for Sleep<'_> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.finished {
            panic!("`Sleep` polled after completion");
        }
        if let Some(err) = this.ctx.err() {
            return this.finish(Err(err));
        }
        let clock = this.ctx.clock().expect("checked by `Context::sleep`");
        if clock.now() >= this.deadline {
            return this.finish(Ok(()));
        }
        if let Poll::Ready(err) = Pin::new(&mut this.done).poll(cx) {
            return this.finish(Err(err));
        }
        let waker = this.waker.get_or_insert_with(Default::default);
        // The task's waker is cloned, and the one it replaces dropped, outside the lock: both
        // are user code, and such a drop may fire this sleep's timer, whose wake-up takes the
        // lock.
        let registered = waker.task.lock().as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if !registered {
            let fresh = cx.waker().clone();
            let replaced = waker.task.lock().replace(fresh);
            drop(replaced);
        }
        // A timer that fired while the deadline had not passed yet (clocks may wake early):
        // schedule another. memory ordering: see `SleepWaker::wake_by_ref`.
        let fired = waker.fired.swap(0, Ordering::AcqRel) != 0;
        if this.timer.is_none() || fired {
            let waker = Waker::from(waker.clone());
            if let Some(old) = this.timer.take() {
                clock.cancel(old);
            }
            // The clock wakes at once if the deadline passed since `now()` above.
            this.timer = Some(clock.schedule(this.deadline, waker));
        }
        Poll::Pending
    }
}

impl FusedFuture for Sleep<'_> {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl Drop for Sleep<'_> {
    fn drop(&mut self) {
        self.release_timer();
    }
}

impl fmt::Debug for Sleep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "std")]
mod blocking {
    use std::thread::{self, Thread};

    use super::*;

    /// Unparks the blocked thread; `notified` makes a wake before the park count.
    struct Unparker {
        thread: Thread,
        notified: AtomicU8,
    }

    impl Wake for Unparker {
        fn wake(self: StdArc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &StdArc<Self>) {
            // memory ordering: Release/Acquire with the `swap` before parking.
            self.notified.store(1, Ordering::Release);
            self.thread.unpark();
        }
    }

    impl Context {
        /// Drives `future` on the calling thread until it completes (`Ok(output)`) or the
        /// context is done (`Err(error)`, and the future is dropped): the blocking twin of
        /// [`run`](Context::run). This is how a std thread waits for anything with a context
        /// bound, e.g. `ctx.block_on(wg.wait())`.
        ///
        /// The future is polled here and nowhere else; futures that need a particular
        /// runtime (tokio's I/O, say) must be inside that runtime's context.
        ///
        /// ```
        /// use cancelctx::{Context, Error, WaitGroup};
        /// let (ctx, cancel) = Context::unclocked().with_cancel();
        /// let wg = WaitGroup::new();
        /// let _stuck = wg.add(); // never finishes
        /// std::thread::spawn(move || cancel.cancel());
        /// assert_eq!(ctx.block_on(wg.wait()), Err(Error::Canceled));
        /// assert_eq!(ctx.block_on(async { 5 }), Err(Error::Canceled));
        /// ```
        pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, Error> {
            let mut run = core::pin::pin!(self.run(future));
            let unparker =
                StdArc::new(Unparker { thread: thread::current(), notified: AtomicU8::new(0) });
            let waker = Waker::from(unparker.clone());
            let mut cx = TaskContext::from_waker(&waker);
            loop {
                if let Poll::Ready(result) = run.as_mut().poll(&mut cx) {
                    return result;
                }
                while unparker.notified.swap(0, Ordering::Acquire) == 0 {
                    thread::park();
                }
            }
        }
    }
}
