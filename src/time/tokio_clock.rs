//! [`TokioClock`]: deadlines on `tokio::time`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Waker;

use super::{Clock, Instant, TimerKey};

/// A clock on `tokio::time`: each deadline is a small task sleeping on the runtime's timer,
/// so `tokio::time::pause()` and auto-advance drive deadlines in tests.
///
/// Made with [`TokioClock::new`] inside a runtime; it keeps that runtime's handle, so
/// deadlines can be created from any thread. Cancelling a deadline aborts its task.
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

#[derive(Debug, Default)]
struct Tasks {
    next_id: u64,
    running: HashMap<u64, tokio::task::AbortHandle>,
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
        let _enter = self.handle.enter();
        let since = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        Instant::from_nanos(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.next_id += 1;
        let id = tasks.next_id;
        let at = self.to_tokio(deadline);
        let registry = Arc::downgrade(&self.tasks);
        let task = self.handle.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(registry) = registry.upgrade() {
                registry.lock().unwrap_or_else(|e| e.into_inner()).running.remove(&id);
            }
            waker.wake();
        });
        tasks.running.insert(id, task.abort_handle());
        TimerKey::new(deadline, id)
    }

    fn cancel(&self, key: TimerKey) {
        let task = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).running.remove(&key.id());
        if let Some(task) = task {
            task.abort();
        }
    }
}
