//! [`ManualClock`]: time that moves only when a test says so.

use alloc::collections::BTreeMap;
use core::fmt;
use core::task::Waker;
use core::time::Duration;

use super::{Clock, Instant, TimerKey};
use crate::sync::{Arc, Mutex};

/// A clock that stands still until [`advance`](ManualClock::advance) or
/// [`set`](ManualClock::set) moves it: deterministic deadlines for tests and simulations.
///
/// Clones share one clock. Moving the clock fires every deadline that is due at the new time
/// before the call returns — contexts are done, their `after_func` callbacks have run and
/// their waiters are woken (an async waiter still needs its executor to poll it) — so tests
/// need no sleeps. Timers fire in deadline order, on the thread that moved the clock.
///
/// Moves are serialized: when two threads move the clock at once, each call returns only
/// after every timer due at its time has fired, whichever thread fired it. The same holds
/// while other threads cancel or create contexts: a context whose deadline is due is done
/// when the move returns, even if another thread's cancel is still walking its subtree
/// (the move then waits for that walk). A callback fired
/// by a move may itself move the same clock (with `std`; without `std` that deadlocks).
///
/// # Examples
///
/// ```
/// use cancelctx::{Context, Error, ManualClock};
/// use core::time::Duration;
///
/// let clock = ManualClock::new();
/// let root = Context::with_clock(clock.clone());
/// let (ctx, _guard) = root.with_timeout(Duration::from_secs(30));
///
/// clock.advance(Duration::from_secs(29));
/// assert_eq!(ctx.err(), None);
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Held across a whole move, wakes included, so that concurrent moves cannot return while
    /// another thread is still firing timers due at their time.
    mover: Mutex<()>,
}

#[derive(Default)]
struct State {
    now: Instant,
    next_id: u64,
    timers: BTreeMap<TimerKey, Waker>,
}

impl ManualClock {
    /// A clock at [`Instant::ZERO`] with no timers.
    ///
    /// ```
    /// let clock = cancelctx::ManualClock::new();
    /// assert_eq!(clock.now(), cancelctx::Instant::ZERO);
    /// ```
    #[must_use]
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// The current time.
    ///
    /// ```
    /// let clock = cancelctx::ManualClock::new();
    /// clock.advance(core::time::Duration::from_nanos(3));
    /// assert_eq!(clock.now().as_nanos(), 3);
    /// ```
    #[must_use]
    pub fn now(&self) -> Instant {
        self.inner.state.lock().now
    }

    /// Moves the clock forward by `d` (saturating at [`Instant::MAX`]) and fires every timer
    /// due at the new time before returning.
    ///
    /// # Panics
    ///
    /// If an `after_func` callback run by a due timer panics, every other due timer still
    /// fires; then the first panic resumes here.
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// use core::time::Duration;
    /// let clock = ManualClock::new();
    /// let (ctx, _g) = Context::with_clock(clock.clone()).with_timeout(Duration::from_millis(1));
    /// clock.advance(Duration::from_millis(1));
    /// assert!(ctx.is_done());
    /// ```
    pub fn advance(&self, d: Duration) {
        self.move_to(|now| now.saturating_add(d));
    }

    /// Sets the clock to `to` and fires every timer due then. Time never goes backwards: an
    /// earlier `to` leaves the clock where it is (and still fires what is due).
    ///
    /// # Panics
    ///
    /// As [`advance`](ManualClock::advance).
    ///
    /// ```
    /// use cancelctx::{Context, Instant, ManualClock};
    /// let clock = ManualClock::new();
    /// let (ctx, _g) = Context::with_clock(clock.clone()).with_deadline(Instant::from_nanos(50));
    /// clock.set(Instant::from_nanos(50));
    /// assert!(ctx.is_done());
    /// clock.set(Instant::ZERO); // ignored: clocks are monotonic
    /// assert_eq!(clock.now(), Instant::from_nanos(50));
    /// ```
    pub fn set(&self, to: Instant) {
        self.move_to(|_| to);
    }

    /// How many wake-ups are scheduled and not yet fired or cancelled: the timers of live
    /// contexts with deadlines. Useful to check that timers are released.
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// use core::time::Duration;
    /// let clock = ManualClock::new();
    /// let (_ctx, guard) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(1));
    /// assert_eq!(clock.pending_timers(), 1);
    /// guard.cancel();
    /// assert_eq!(clock.pending_timers(), 0);
    /// ```
    #[must_use]
    pub fn pending_timers(&self) -> usize {
        self.inner.state.lock().timers.len()
    }

    fn move_to(&self, to: impl FnOnce(Instant) -> Instant) {
        let _mover = self.lock_mover();
        {
            let mut state = self.inner.state.lock();
            let to = to(state.now);
            if to > state.now {
                state.now = to;
            }
        }
        // Take the due timers one at a time, each with the lock held only to take it, and
        // wake with no lock held: waking completes contexts and runs their callbacks, which
        // may schedule or cancel timers on this clock, or move it (a nested move then finds
        // the rest of the due timers still here and fires them before it returns). Due means
        // due at the current time, which a nested move may have pushed further. A panicking
        // callback does not keep the other due timers from firing; the first panic resumes
        // afterwards.
        let due = core::iter::from_fn(|| {
            let mut state = self.inner.state.lock();
            let now = state.now;
            let entry = state.timers.first_entry()?;
            (entry.key().deadline() <= now).then(|| entry.remove())
        });
        crate::panic::for_each_isolated(due, Waker::wake);
    }

    /// Serializes moves; a move made from a callback that this thread's move is firing
    /// proceeds without the lock (it would otherwise wait for itself).
    #[cfg(feature = "std")]
    #[allow(clippy::missing_const_for_thread_local)] // loom's `thread_local!` has no const form
    fn lock_mover(&self) -> Option<impl Drop + '_> {
        use core::cell::Cell;
        #[cfg(loom)]
        use loom::thread_local;
        #[cfg(not(loom))]
        use std::thread_local;
        thread_local! {
            /// The clock whose timers this thread is firing, if any.
            static FIRING: Cell<*const Shared> = Cell::new(core::ptr::null());
        }
        struct Firing<'a> {
            _lock: crate::sync::MutexGuard<'a, ()>,
            previous: *const Shared,
        }
        impl Drop for Firing<'_> {
            fn drop(&mut self) {
                FIRING.with(|f| f.set(self.previous));
            }
        }
        let me: *const Shared = &*self.inner;
        if FIRING.with(Cell::get) == me {
            return None;
        }
        let lock = self.inner.mover.lock();
        Some(Firing { _lock: lock, previous: FIRING.with(|f| f.replace(me)) })
    }

    #[cfg(not(feature = "std"))]
    fn lock_mover(&self) -> Option<impl Drop + '_> {
        Some(self.inner.mover.lock())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        ManualClock::now(self)
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let mut state = self.inner.state.lock();
        state.next_id += 1;
        let key = TimerKey::new(deadline, state.next_id);
        if deadline <= state.now {
            drop(state);
            waker.wake();
        } else {
            state.timers.insert(key, waker);
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        let removed = self.inner.state.lock().timers.remove(&key);
        drop(removed); // drop the waker outside the lock
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("ManualClock")
            .field("now", &state.now)
            .field("pending_timers", &state.timers.len())
            .finish()
    }
}
