//! [`StdClock`]: the clock of [`Context::background`](crate::Context::background).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::Waker;

use super::{Clock, Instant, TimerKey};

/// Real time (`std::time::Instant`) with timers on one lazily started thread per process.
///
/// - No thread exists until the first deadline is scheduled; then a single thread named
///   `cancelctx-timer` serves every deadline of every tree on this clock. It does not keep
///   the process alive (Rust never waits for spawned threads at exit).
/// - Timers are kept in a `BTreeMap` ordered by deadline: cancelling one removes it, so the
///   thread holds memory only for live deadlines.
/// - Deadlines fire within about a millisecond (the OS's condition-variable latency).
/// - `after_func` callbacks of contexts completed by a deadline run on that thread: a slow
///   callback delays later timers, so hand heavy work to another thread. A panicking waker or
///   callback is caught there (the panic hook prints it, nobody receives it) and the thread
///   goes on; should the thread ever end, it is started again.
///
/// Instants count from the first time the process read this clock.
///
/// ```
/// use cancelctx::{Clock, StdClock};
/// let t = StdClock.now();
/// let std_t = StdClock::to_std(t);
/// assert_eq!(StdClock::from_std(std_t), t);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StdClock;

struct Shared {
    timers: Mutex<Timers>,
    changed: Condvar,
}

#[derive(Default)]
struct Timers {
    next_id: u64,
    map: BTreeMap<TimerKey, Waker>,
    thread_started: bool,
    /// When the timer thread will wake up by itself: `None` while it waits for a first
    /// timer. A new timer wakes it (a futex syscall) only if it is due earlier than that.
    sleeping_until: Option<Instant>,
}

fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared { timers: Mutex::new(Timers::default()), changed: Condvar::new() })
}

impl StdClock {
    /// The `std::time::Instant` of an [`Instant`] on this clock.
    ///
    /// ```
    /// use cancelctx::{Instant, StdClock};
    /// assert!(StdClock::to_std(Instant::ZERO) <= std::time::Instant::now());
    /// ```
    #[must_use]
    pub fn to_std(instant: Instant) -> std::time::Instant {
        let since = core::time::Duration::from_nanos(instant.as_nanos());
        epoch()
            .checked_add(since)
            .unwrap_or_else(|| epoch() + core::time::Duration::from_secs(u32::MAX.into()))
    }

    /// The [`Instant`] on this clock of a `std::time::Instant` (clamped to the clock's range).
    ///
    /// ```
    /// use cancelctx::{Clock, StdClock};
    /// let now = std::time::Instant::now();
    /// assert!(StdClock::from_std(now) <= StdClock.now());
    /// ```
    #[must_use]
    pub fn from_std(instant: std::time::Instant) -> Instant {
        let nanos = instant.saturating_duration_since(epoch()).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl Clock for StdClock {
    fn now(&self) -> Instant {
        StdClock::from_std(std::time::Instant::now())
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let shared = shared();
        let mut timers = shared.timers.lock().unwrap_or_else(|e| e.into_inner());
        timers.next_id += 1;
        let key = TimerKey::new(deadline, timers.next_id);
        let wake_thread = timers.sleeping_until.is_none_or(|until| deadline < until);
        timers.map.insert(key, waker);
        if !timers.thread_started {
            start_thread(shared, &mut timers);
        } else if wake_thread {
            // It sleeps past this deadline: wake it to sleep less.
            timers.sleeping_until = Some(deadline);
            shared.changed.notify_one();
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        let removed = {
            let mut timers = shared().timers.lock().unwrap_or_else(|e| e.into_inner());
            let removed = timers.map.remove(&key);
            if timers.map.is_empty() {
                // Give back the tree's memory after a burst of timers.
                timers.map = BTreeMap::new();
            }
            removed
        };
        drop(removed); // the waker is dropped outside the lock
    }
}

/// Starts the timer thread. If the OS refuses a thread, the timers stay in the map and the
/// next `schedule` tries again (a panic here would surface in whatever code happened to make
/// a deadline, possibly inside another context's completion).
fn start_thread(shared: &'static Shared, timers: &mut Timers) {
    let spawned = std::thread::Builder::new().name("cancelctx-timer".into()).spawn(move || {
        let _restart = Restart(shared);
        run(shared);
    });
    timers.thread_started = spawned.is_ok();
}

/// Restarts the timer thread if it ever ends (it never returns; only a panic of this crate's
/// own code could end it, user panics are caught): pending deadlines must not stop firing
/// for the rest of the process.
struct Restart(&'static Shared);

impl Drop for Restart {
    fn drop(&mut self) {
        let mut timers = self.0.timers.lock().unwrap_or_else(|e| e.into_inner());
        timers.thread_started = false;
        timers.sleeping_until = None;
        if !timers.map.is_empty() {
            start_thread(self.0, &mut timers);
        }
    }
}

/// The timer thread: sleep until the earliest deadline, wake everything due, repeat.
///
/// Wakers run with no lock held, each under `catch_unwind`: a panicking `after_func` callback
/// or waker is reported by the panic hook and dropped here, and the thread goes on (nobody
/// could receive the panic, and every other deadline of the process depends on this thread).
fn run(shared: &'static Shared) {
    let mut timers = shared.timers.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = StdClock.now();
        let later = timers.map.split_off(&TimerKey::new(now, u64::MAX));
        let due = core::mem::replace(&mut timers.map, later);
        if !due.is_empty() {
            drop(timers);
            drop(crate::panic::for_each_caught(due.into_values(), Waker::wake));
            timers = shared.timers.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let first = timers.map.keys().next().map(TimerKey::deadline);
        timers.sleeping_until = first;
        timers = match first {
            None => shared.changed.wait(timers).unwrap_or_else(|e| e.into_inner()),
            Some(first) => {
                let wait = first.saturating_duration_since(now);
                shared.changed.wait_timeout(timers, wait).unwrap_or_else(|e| e.into_inner()).0
            }
        };
    }
}
