//! [`TokioClock`]: deadlines on `tokio::time`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Wake, Waker};

use super::{Clock, Instant, StdClock, TimerKey};

/// A clock on `tokio::time`: each deadline is a small task sleeping on the runtime's timer,
/// so `tokio::time::pause()` and auto-advance drive deadlines in tests.
///
/// Made with [`TokioClock::new`] inside a runtime; it keeps that runtime's handle, so
/// deadlines can be created from any thread. Cancelling a deadline aborts its task.
///
/// # When the runtime cannot run the timer
///
/// Deadlines still complete, within bounded time, when the runtime does not serve them:
///
/// - **Blocked runtime thread** (a blocking `wait_timeout` on a current-thread runtime's own
///   thread, a long synchronous section): every deadline also has a backup wake-up on the
///   [`StdClock`] thread, at `remaining × 1.25 + 5 ms` of real time. It fires only if the
///   runtime's task has not (the task releases it), and completes the context if the
///   deadline has passed on this clock.
/// - **Runtime shut down** (dropped, or its timer task dropped unfired during shutdown): the
///   clock notices, continues in real time from where the runtime's time stopped, and moves
///   every pending and future deadline to the std clock.
///
/// What remains: under paused time, a backup that fires while virtual time has not reached
/// the deadline only re-schedules it (virtual time decides). And a *future* polled by a dead
/// runtime is never polled again, so `done().await` on it never returns: nothing in this
/// crate can help it; blocking waits, `after_func` and other runtimes see the deadline.
///
/// ```
/// use cancelctx::{Context, Error, TokioClock};
/// use std::time::Duration;
///
/// #[tokio::main(flavor = "current_thread", start_paused = true)]
/// async fn main() {
///     let root = Context::with_clock(TokioClock::new());
///     let (ctx, _guard) = root.with_timeout(Duration::from_secs(3600));
///     assert_eq!(ctx.done().await, Error::DeadlineExceeded); // paused time auto-advances
/// }
/// ```
#[derive(Clone, Debug)]
pub struct TokioClock {
    handle: tokio::runtime::Handle,
    epoch: tokio::time::Instant,
    tasks: Arc<Mutex<Tasks>>,
}

/// Keys of timers moved to the std clock after the runtime died carry this bit in their id.
const ON_STD: u64 = 1 << 63;

#[derive(Debug, Default)]
struct Tasks {
    next_id: u64,
    running: HashMap<u64, Entry>,
    /// Set once the runtime dropped a timer task unfired: (this clock's time then, real time
    /// then). From then on the clock runs on real time and schedules on the std clock.
    dead: Option<(Instant, std::time::Instant)>,
}

#[derive(Debug, Default)]
struct Entry {
    /// The runtime's task (`None` until `spawn` returns).
    task: Option<tokio::task::AbortHandle>,
    /// The backup wake-up on the std clock.
    backup: Option<TimerKey>,
}

fn lock(tasks: &Mutex<Tasks>) -> std::sync::MutexGuard<'_, Tasks> {
    tasks.lock().unwrap_or_else(|e| e.into_inner())
}

impl TokioClock {
    /// A clock on the current runtime's timer.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime (as `tokio::runtime::Handle::current` does).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let clock = cancelctx::TokioClock::new();
    /// # let _ = clock; });
    /// ```
    #[must_use]
    #[track_caller]
    #[allow(clippy::new_without_default)] // needs a runtime: not a sensible Default
    pub fn new() -> TokioClock {
        TokioClock::with_handle(tokio::runtime::Handle::current())
    }

    /// A clock on the timer of the runtime behind `handle`.
    ///
    /// ```
    /// let rt = tokio::runtime::Runtime::new().unwrap();
    /// let clock = cancelctx::TokioClock::with_handle(rt.handle().clone());
    /// # let _ = clock;
    /// ```
    #[must_use]
    pub fn with_handle(handle: tokio::runtime::Handle) -> TokioClock {
        let epoch = handle.block_on_instant();
        TokioClock { handle, epoch, tasks: Arc::default() }
    }

    fn to_tokio(&self, instant: Instant) -> tokio::time::Instant {
        let since = std::time::Duration::from_nanos(instant.as_nanos());
        self.epoch
            .checked_add(since)
            .unwrap_or_else(|| self.epoch + std::time::Duration::from_secs(u32::MAX.into()))
    }

    /// The runtime's time, read in its context (paused time included).
    fn runtime_now(&self) -> Instant {
        let _enter = self.handle.enter();
        let since = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        Instant::from_nanos(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Real time continued from where the dead runtime's time stopped.
fn dead_now((at, since): (Instant, std::time::Instant)) -> Instant {
    at.saturating_add(since.elapsed())
}

/// Reads `tokio::time::Instant::now()` in the runtime's context (paused time included).
trait InstantInRuntime {
    fn block_on_instant(&self) -> tokio::time::Instant;
}

impl InstantInRuntime for tokio::runtime::Handle {
    fn block_on_instant(&self) -> tokio::time::Instant {
        let _enter = self.enter();
        tokio::time::Instant::now()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        if let Some(dead) = lock(&self.tasks).dead {
            return dead_now(dead);
        }
        self.runtime_now()
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let id = {
            let mut tasks = lock(&self.tasks);
            if let Some(dead) = tasks.dead {
                drop(tasks);
                return schedule_on_std(dead, deadline, waker);
            }
            tasks.next_id += 1;
            let id = tasks.next_id;
            // Registered before the task exists: a runtime that is shutting down may drop the
            // task inside `spawn`, and the task's guard must find its entry to notice.
            tasks.running.insert(id, Entry::default());
            id
        };
        let remaining = deadline.saturating_duration_since(self.runtime_now());
        let backup_after = remaining
            .saturating_add(remaining / 4)
            .saturating_add(std::time::Duration::from_millis(5));
        let backup_at = StdClock.now().saturating_add(backup_after);
        let registry = Arc::downgrade(&self.tasks);
        let backup = StdClock.schedule(
            backup_at,
            Waker::from(Arc::new(Backup { registry: registry.clone(), id, waker: waker.clone() })),
        );
        let guard = TaskGuard { registry, id, waker: Some(waker), clock: self.clone_for_guard() };
        let at = self.to_tokio(deadline);
        let task = self.handle.spawn(async move {
            tokio::time::sleep_until(at).await;
            guard.fire();
        });
        let mut tasks = lock(&self.tasks);
        match tasks.running.get_mut(&id) {
            Some(entry) => {
                entry.task = Some(task.abort_handle());
                entry.backup = Some(backup);
            }
            None => {
                // Fired or dropped (runtime shut down) already: no backup needed.
                drop(tasks);
                StdClock.cancel(backup);
            }
        }
        TimerKey::new(deadline, id)
    }

    fn cancel(&self, key: TimerKey) {
        if key.id() & ON_STD != 0 {
            StdClock.cancel(TimerKey::new(key.deadline(), key.id() & !ON_STD));
            return;
        }
        let entry = lock(&self.tasks).running.remove(&key.id());
        if let Some(entry) = entry {
            release(entry);
        }
    }
}

impl TokioClock {
    /// What a task's guard needs to tell a dead runtime: the handle and epoch (to read the
    /// time the runtime stopped at).
    fn clone_for_guard(&self) -> (tokio::runtime::Handle, tokio::time::Instant) {
        (self.handle.clone(), self.epoch)
    }
}

/// Aborts the task and releases the backup of an entry taken out of the registry.
fn release(entry: Entry) {
    if let Some(task) = entry.task {
        task.abort();
    }
    if let Some(backup) = entry.backup {
        StdClock.cancel(backup);
    }
}

/// Schedules on the std clock for a clock whose runtime died: `deadline` is on this clock,
/// which now runs in real time from `dead`.
fn schedule_on_std(
    dead: (Instant, std::time::Instant),
    deadline: Instant,
    waker: Waker,
) -> TimerKey {
    let remaining = deadline.saturating_duration_since(dead_now(dead));
    let key = StdClock.schedule(StdClock.now().saturating_add(remaining), waker);
    TimerKey::new(deadline, key.id() | ON_STD)
}

/// Lives in the runtime's timer task: fires the wake-up, or, if the runtime drops the task
/// unfired (it is shutting down) while it is still registered, declares the runtime dead
/// and wakes the context so that it re-schedules on real time.
struct TaskGuard {
    registry: Weak<Mutex<Tasks>>,
    id: u64,
    waker: Option<Waker>,
    clock: (tokio::runtime::Handle, tokio::time::Instant),
}

impl TaskGuard {
    fn fire(mut self) {
        let entry = self.registry.upgrade().and_then(|r| lock(&r).running.remove(&self.id));
        if let Some(Entry { backup: Some(backup), .. }) = entry {
            StdClock.cancel(backup);
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let Some(waker) = self.waker.take() else { return }; // fired
        let Some(registry) = self.registry.upgrade() else { return };
        let mut tasks = lock(&registry);
        let Some(entry) = tasks.running.remove(&self.id) else { return }; // cancelled
                                                                          // Dropped unfired while still wanted: the runtime is shutting down.
        if tasks.dead.is_none() {
            let (handle, epoch) = &self.clock;
            let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _enter = handle.enter();
                tokio::time::Instant::now().saturating_duration_since(*epoch)
            }))
            .unwrap_or_else(|_| epoch.into_std().elapsed());
            let stopped =
                Instant::from_nanos(u64::try_from(stopped.as_nanos()).unwrap_or(u64::MAX));
            tasks.dead = Some((stopped, std::time::Instant::now()));
        }
        drop(tasks);
        if let Some(backup) = entry.backup {
            StdClock.cancel(backup);
        }
        // The context re-checks its deadline on the clock's real time and re-schedules.
        waker.wake();
    }
}

/// The backup wake-up on the std clock: fires if the runtime has not (blocked thread).
struct Backup {
    registry: Weak<Mutex<Tasks>>,
    id: u64,
    waker: Waker,
}

impl Wake for Backup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let entry = self.registry.upgrade().and_then(|r| lock(&r).running.remove(&self.id));
        let Some(entry) = entry else { return }; // fired, cancelled or dropped already
        if let Some(task) = entry.task {
            task.abort(); // its guard finds no entry: not taken for a shutdown
        }
        self.waker.wake_by_ref();
    }
}
