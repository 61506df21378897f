//! Time: the [`Clock`] trait, [`Instant`], and the clocks this crate ships.
//!
//! A context tree reads time from the clock of its root. Deadlines ask that clock for one
//! wake-up each ([`Clock::schedule`]) and release it ([`Clock::cancel`]) as soon as the
//! context is done or dropped, so the clock only ever holds timers of live contexts.

#[cfg(feature = "async-io")]
mod async_io_clock;
mod instant;
mod manual;
#[cfg(feature = "std")]
mod std_clock;
#[cfg(feature = "tokio")]
mod tokio_clock;

#[cfg(feature = "async-io")]
pub use async_io_clock::AsyncIoClock;
pub use instant::Instant;
pub use manual::ManualClock;
#[cfg(all(loom, feature = "std"))]
pub use std_clock::model as std_clock_model;
#[cfg(feature = "std")]
pub use std_clock::StdClock;
#[cfg(feature = "tokio")]
pub use tokio_clock::TokioClock;

use core::task::Waker;

/// Names one wake-up scheduled with [`Clock::schedule`], so it can be released with
/// [`Clock::cancel`].
///
/// The clock chooses the values; the crate only hands the key back. It carries the deadline
/// as well as an id, so a clock that keeps its timers ordered by deadline (a `BTreeMap`, a
/// hardware comparator queue) can find the entry without a second index.
///
/// ```
/// use cancelctx::{Instant, TimerKey};
/// let key = TimerKey::new(Instant::from_nanos(10), 7);
/// assert_eq!((key.deadline(), key.id()), (Instant::from_nanos(10), 7));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerKey {
    deadline: Instant,
    id: u64,
}

impl TimerKey {
    /// A key for the wake-up `id` at `deadline`.
    ///
    /// ```
    /// let key = cancelctx::TimerKey::new(cancelctx::Instant::ZERO, 1);
    /// assert_eq!(key.id(), 1);
    /// ```
    #[must_use]
    pub const fn new(deadline: Instant, id: u64) -> TimerKey {
        TimerKey { deadline, id }
    }

    /// The deadline the wake-up was scheduled for.
    ///
    /// ```
    /// let t = cancelctx::Instant::from_nanos(3);
    /// assert_eq!(cancelctx::TimerKey::new(t, 0).deadline(), t);
    /// ```
    #[must_use]
    pub const fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The clock's id for the wake-up.
    ///
    /// ```
    /// assert_eq!(cancelctx::TimerKey::new(cancelctx::Instant::ZERO, 9).id(), 9);
    /// ```
    #[must_use]
    pub const fn id(&self) -> u64 {
        self.id
    }
}

/// A source of time and timers for a context tree.
///
/// A clock does two things: it reads the time ([`now`](Clock::now)) and it calls
/// `Waker::wake` at or after an instant ([`schedule`](Clock::schedule)), until told not to
/// ([`cancel`](Clock::cancel)). The crate never sleeps or spawns anything itself, which is
/// what makes deadlines work on any runtime, on bare threads and without `std`.
///
/// The trait is object safe; a tree stores its clock as `Arc<dyn Clock>`.
///
/// # Contract
///
/// - `now` never goes backwards.
/// - `schedule(deadline, waker)` wakes `waker` once, at or after `deadline` as `now` reports
///   it. If the deadline has already passed it may wake at once, even before returning.
///   Waking early, late or twice is harmless: the context checks `now() >= deadline` when
///   woken, re-schedules if early and ignores a second wake. A wake inside `schedule` never
///   nests (the context re-checks after `schedule` returns), and a clock that keeps waking
///   early without its time moving (a coarse tick rounding a deadline down) is asked for
///   later instants until it takes one. Waking late delays the deadline; a clock that never
///   wakes never completes it (`err()` is a single load and does not read the clock, though
///   [`remaining`](crate::Context::remaining) reports zero).
/// - `cancel(key)` releases the wake-up (and the `Waker`) if it has not fired yet, and is a
///   no-op otherwise. It must not call the waker. **Timers that fire when due are not
///   cancelled**: a clock must forget a timer when it fires it (as `on_interrupt` below
///   does); the crate calls `cancel` for wake-ups of contexts cancelled or dropped before
///   their deadline, and for a wake-up that came *early* when it schedules the next one.
///   Only those, and a wake-up racing with a cancel on another thread, can reach `cancel`
///   after firing, which is why `cancel` must accept keys it no longer knows.
/// - Neither method may block on, or call back into, a context; wakers are called with no
///   clock lock held, because waking a context runs its `after_func` callbacks.
///
/// # Writing a clock for an embedded timer
///
/// A `no_std` clock needs a counter to read and a way to get an interrupt at a given count.
/// Keep the pending wakers in a queue ordered by deadline and keep the comparator armed for
/// the earliest one: after `schedule` (a new earliest), after `cancel` (the earliest may be
/// gone) and after each interrupt (the next one). Wake the due ones from the interrupt (or,
/// better, from a task it signals), with no lock held:
///
/// ```
/// extern crate alloc;
/// use alloc::collections::BTreeMap;
/// use core::sync::atomic::{AtomicU64, Ordering};
/// use core::task::Waker;
/// use cancelctx::{Clock, Instant, TimerKey};
/// # use std::sync::Mutex; // on a microcontroller: critical_section::Mutex<RefCell<..>>
///
/// /// A 1 MHz hardware counter and its compare register, simulated here by atomics.
/// static TICKS: AtomicU64 = AtomicU64::new(0);
/// static COMPARE: AtomicU64 = AtomicU64::new(u64::MAX); // MAX: interrupt disabled
///
/// struct HwClock {
///     timers: Mutex<(u64, BTreeMap<TimerKey, Waker>)>,
/// }
///
/// impl HwClock {
///     /// Points the comparator at the earliest pending deadline (or disables it), rounding
///     /// up to the next tick so that it never fires early.
///     fn rearm(timers: &BTreeMap<TimerKey, Waker>) {
///         let at = timers.keys().next().map_or(u64::MAX, |k| k.deadline().as_nanos().div_ceil(1_000));
///         COMPARE.store(at, Ordering::Release);
///     }
///
///     /// The timer interrupt (or a task it wakes): forget and wake every due timer, then
///     /// re-arm for the next one.
///     fn on_interrupt(&self) {
///         let now = self.now();
///         let due: Vec<Waker> = {
///             let mut t = self.timers.lock().unwrap();
///             let later = t.1.split_off(&TimerKey::new(now, u64::MAX));
///             let due = core::mem::replace(&mut t.1, later);
///             Self::rearm(&t.1);
///             due.into_values().collect()
///         };
///         due.into_iter().for_each(Waker::wake); // no lock held
///     }
/// }
///
/// impl Clock for HwClock {
///     fn now(&self) -> Instant {
///         Instant::from_nanos(TICKS.load(Ordering::Acquire) * 1_000)
///     }
///     fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
///         let mut t = self.timers.lock().unwrap();
///         t.0 += 1;
///         let key = TimerKey::new(deadline, t.0);
///         t.1.insert(key, waker);
///         Self::rearm(&t.1);
///         key
///     }
///     fn cancel(&self, key: TimerKey) {
///         let mut t = self.timers.lock().unwrap();
///         let removed = t.1.remove(&key);
///         Self::rearm(&t.1);
///         drop(t);
///         drop(removed); // the waker is dropped with no lock held
///     }
/// }
///
/// let clock = std::sync::Arc::new(HwClock { timers: Mutex::new((0, BTreeMap::new())) });
/// let root = cancelctx::Context::with_clock(clock.clone());
/// let (ctx, _guard) = root.with_timeout(core::time::Duration::from_millis(5));
/// let (later, later_guard) = root.with_timeout(core::time::Duration::from_millis(9));
/// assert_eq!(COMPARE.load(Ordering::Acquire), 5_000);
/// TICKS.store(5_000, Ordering::Release);
/// clock.on_interrupt(); // the comparator matched
/// assert_eq!(ctx.err(), Some(cancelctx::Error::DeadlineExceeded));
/// assert_eq!(COMPARE.load(Ordering::Acquire), 9_000); // re-armed for the next deadline
/// drop(later_guard); // cancelled early: released, comparator disabled
/// assert_eq!(COMPARE.load(Ordering::Acquire), u64::MAX);
/// assert!(later.is_done());
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time on this clock.
    fn now(&self) -> Instant;

    /// Arranges for `waker.wake()` to be called at or after `deadline`; see the contract in
    /// the trait docs.
    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey;

    /// Releases the wake-up named by `key` if it is still pending.
    fn cancel(&self, key: TimerKey);
}

impl<C: Clock + ?Sized> Clock for alloc::sync::Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        (**self).schedule(deadline, waker)
    }
    fn cancel(&self, key: TimerKey) {
        (**self).cancel(key)
    }
}

/// How a tree holds its clock: the std clock is a process-wide static, so `background()`
/// allocates nothing.
#[derive(Clone)]
pub(crate) enum ClockRef {
    #[cfg(feature = "std")]
    Std,
    Custom(alloc::sync::Arc<dyn Clock>),
}

impl ClockRef {
    pub(crate) fn get(&self) -> &dyn Clock {
        match self {
            #[cfg(feature = "std")]
            ClockRef::Std => &StdClock,
            ClockRef::Custom(clock) => &**clock,
        }
    }
}
