//! The worker pattern's calls on `Context`: `sleep` (driven by `ManualClock` and by a clock
//! that wakes early) and `block_on`; and the whole pattern with a `WaitGroup` on threads.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use cancelctx::{Clock, Context, Error, Instant, ManualClock, Sleep, TimerKey, WaitGroup};
use common::{counting_waker, Tag};
use futures::future::FusedFuture;
use static_assertions::assert_impl_all;

assert_impl_all!(Sleep<'static>: Send, Sync, Unpin, Future<Output = Result<(), Error>>, FusedFuture, std::fmt::Debug);

fn poll<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut TaskContext::from_waker(waker))
}

#[test]
fn sleep_is_ok_exactly_at_d() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (counter, waker) = counting_waker();
    let mut sleep = pin!(root.sleep(Duration::from_millis(10)));
    assert!(poll(sleep.as_mut(), &waker).is_pending());
    assert_eq!(clock.pending_timers(), 1);
    clock.advance(Duration::from_millis(10) - Duration::from_nanos(1));
    assert_eq!(counter.wakes(), 0);
    assert!(poll(sleep.as_mut(), &waker).is_pending());
    clock.advance(Duration::from_nanos(1));
    assert_eq!(counter.wakes(), 1, "the clock woke the sleeper at d");
    assert_eq!(poll(sleep.as_mut(), &waker), Poll::Ready(Ok(())));
    assert!(sleep.is_terminated());
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn sleep_measures_from_the_call() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let sleep = root.sleep(Duration::from_secs(2));
    clock.advance(Duration::from_secs(2)); // passes before the first poll
    assert_eq!(pollster::block_on(sleep), Ok(()));
    assert_eq!(pollster::block_on(root.sleep(Duration::ZERO)), Ok(()));
}

#[test]
fn sleep_is_err_when_cancelled_first_and_releases_its_timer() {
    let clock = ManualClock::new();
    let (ctx, cancel) = Context::with_clock(clock.clone()).with_cancel();
    let (counter, waker) = counting_waker();
    let mut sleep = pin!(ctx.sleep(Duration::from_secs(5)));
    assert!(poll(sleep.as_mut(), &waker).is_pending());
    cancel.cancel_with(Tag("stop"));
    assert_eq!(counter.wakes(), 1, "cancellation wakes the sleeper");
    assert_eq!(poll(sleep.as_mut(), &waker), Poll::Ready(Err(Error::Canceled)));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn sleep_is_deadline_exceeded_when_the_contexts_deadline_comes_first() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (ctx, _guard) = root.with_timeout(Duration::from_secs(1));
    let (_c, waker) = counting_waker();
    let mut sleep = pin!(ctx.sleep(Duration::from_secs(3)));
    assert!(poll(sleep.as_mut(), &waker).is_pending());
    clock.advance(Duration::from_secs(1));
    assert_eq!(poll(sleep.as_mut(), &waker), Poll::Ready(Err(Error::DeadlineExceeded)));
    // At the same instant, the context's deadline wins too.
    let (ctx, _guard) = root.with_timeout(Duration::from_secs(1));
    let mut sleep = pin!(ctx.sleep(Duration::from_secs(1)));
    assert!(poll(sleep.as_mut(), &waker).is_pending());
    clock.advance(Duration::from_secs(1));
    assert_eq!(poll(sleep.as_mut(), &waker), Poll::Ready(Err(Error::DeadlineExceeded)));
}

#[test]
fn sleep_on_a_done_context_is_err_at_once() {
    let (ctx, cancel) = Context::with_clock(ManualClock::new()).with_cancel();
    cancel.cancel();
    assert_eq!(pollster::block_on(ctx.sleep(Duration::ZERO)), Err(Error::Canceled));
}

#[test]
fn dropping_a_sleep_releases_its_timer() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (_c, waker) = counting_waker();
    let mut sleep = Box::pin(root.sleep(Duration::from_secs(1)));
    assert!(poll(sleep.as_mut(), &waker).is_pending());
    assert_eq!(clock.pending_timers(), 1);
    drop(sleep);
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
#[should_panic(expected = "no clock")]
fn sleep_on_an_unclocked_tree_panics_clearly() {
    drop(Context::unclocked().sleep(Duration::from_secs(1)));
}

#[test]
fn try_sleep_reports_a_missing_clock_and_otherwise_sleeps() {
    let (ctx, _guard) = Context::unclocked().with_cancel();
    assert_eq!(ctx.try_sleep(Duration::from_secs(1)).err(), Some(cancelctx::NoClockError));

    let clock = ManualClock::new();
    let ctx = Context::with_clock(clock.clone());
    let mut sleep = Box::pin(ctx.try_sleep(Duration::from_secs(1)).expect("clocked"));
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(sleep.as_mut().poll(&mut cx).is_pending());
    clock.advance(Duration::from_secs(1));
    assert_eq!(sleep.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(())));
}

/// A clock that wakes every timer at once, however far its deadline (allowed by the
/// `Clock` contract): the sleeper must schedule again, not hang nor finish early.
#[derive(Default)]
struct EagerClock {
    now: Mutex<Instant>,
    schedules: AtomicUsize,
}

impl Clock for EagerClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap()
    }
    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let id = self.schedules.fetch_add(1, Ordering::SeqCst) as u64;
        waker.wake();
        TimerKey::new(deadline, id)
    }
    fn cancel(&self, _key: TimerKey) {}
}

#[test]
fn sleep_reschedules_after_an_early_wake_up() {
    let clock = Arc::new(EagerClock::default());
    let root = Context::with_clock(clock.clone());
    let (counter, waker) = counting_waker();
    let mut sleep = pin!(root.sleep(Duration::from_secs(1)));
    assert!(poll(sleep.as_mut(), &waker).is_pending());
    assert_eq!((clock.schedules.load(Ordering::SeqCst), counter.wakes()), (1, 1));
    assert!(poll(sleep.as_mut(), &waker).is_pending(), "early: not done");
    assert_eq!((clock.schedules.load(Ordering::SeqCst), counter.wakes()), (2, 2));
    *clock.now.lock().unwrap() = Instant::from_nanos(1_000_000_000);
    assert_eq!(poll(sleep.as_mut(), &waker), Poll::Ready(Ok(())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_under_tokio_with_a_manual_clock() {
    let clock = ManualClock::new();
    let (ctx, cancel) = Context::with_clock(clock.clone()).with_cancel();
    let ticks = Arc::new(AtomicUsize::new(0));
    let wg = WaitGroup::new();
    let worker = {
        let ctx = ctx.clone();
        let ticks = ticks.clone();
        wg.track(async move {
            while ctx.sleep(Duration::from_secs(1)).await.is_ok() {
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::spawn(worker);
    // Advance one second at a time once the worker is sleeping (it has scheduled a timer).
    for tick in 1..=3 {
        while clock.pending_timers() == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(Duration::from_secs(1));
        while ticks.load(Ordering::SeqCst) < tick {
            tokio::task::yield_now().await;
        }
    }
    cancel.cancel();
    wg.wait().await;
    assert_eq!(ticks.load(Ordering::SeqCst), 3);
}

#[test]
fn block_on_returns_the_output() {
    let (ctx, _cancel) = Context::unclocked().with_cancel();
    assert_eq!(ctx.block_on(async { 7 }), Ok(7));
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || tx.send(9).unwrap());
    assert_eq!(ctx.block_on(rx), Ok(Ok(9)));
}

#[test]
fn block_on_returns_early_when_the_context_ends_and_drops_the_future() {
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (ctx, cancel) = Context::unclocked().with_cancel();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let canceller = std::thread::spawn(move || cancel.cancel_with(Tag("shutdown")));
    let result = ctx.block_on(async move {
        let _flag = flag;
        std::future::pending::<()>().await
    });
    assert_eq!(result, Err(Error::Canceled));
    assert!(dropped.load(Ordering::SeqCst), "the future was dropped before returning");
    canceller.join().unwrap();
}

#[test]
fn block_on_with_a_deadline_and_the_manual_clock() {
    let clock = ManualClock::new();
    let (ctx, _guard) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(1));
    let mover = std::thread::spawn(move || {
        while clock.pending_timers() == 0 {
            std::thread::yield_now();
        }
        clock.advance(Duration::from_secs(1));
    });
    let wg = WaitGroup::new();
    let _stuck = wg.add();
    assert_eq!(ctx.block_on(wg.wait()), Err(Error::DeadlineExceeded));
    mover.join().unwrap();
}

/// The Go worker pattern on std threads: `worker(ctx, wg)` loops on `sleep` until cancelled.
#[test]
fn worker_pattern_on_threads() {
    let clock = ManualClock::new();
    let (ctx, cancel) = Context::with_clock(clock.clone()).with_cancel();
    let wg = WaitGroup::new();
    let ticks = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let (ctx, done, ticks) = (ctx.clone(), wg.add(), ticks.clone());
        std::thread::spawn(move || {
            let _done = done;
            while ctx.block_on(ctx.sleep(Duration::from_millis(100))).is_ok_and(|r| r.is_ok()) {
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while clock.pending_timers() < 3 {
        std::thread::yield_now();
    }
    clock.advance(Duration::from_millis(100));
    while ticks.load(Ordering::SeqCst) < 3 {
        std::thread::yield_now();
    }
    cancel.cancel();
    wg.wait_blocking();
    assert!(ticks.load(Ordering::SeqCst) >= 3);
}

/// `sleep` on the runtimes' own clocks (feature `tokio`: paused time auto-advances, so an
/// hour passes at once; feature `async-io`: smol's timers).
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn sleep_on_tokio_paused_time() {
    let root = Context::with_clock(cancelctx::TokioClock::new());
    let start = tokio::time::Instant::now();
    assert_eq!(root.sleep(Duration::from_secs(3600)).await, Ok(()));
    assert!(start.elapsed() >= Duration::from_secs(3600));
    let (ctx, _guard) = root.with_timeout(Duration::from_secs(10));
    assert_eq!(ctx.sleep(Duration::from_secs(3600)).await, Err(Error::DeadlineExceeded));
}

#[cfg(feature = "async-io")]
#[test]
fn sleep_on_smol() {
    smol::block_on(async {
        let root = Context::with_clock(cancelctx::AsyncIoClock::new());
        assert_eq!(root.sleep(Duration::from_millis(1)).await, Ok(()));
        let (ctx, cancel) = root.with_cancel();
        let sleeper = smol::spawn({
            let ctx = ctx.clone();
            async move { ctx.sleep(Duration::from_secs(3600)).await }
        });
        cancel.cancel();
        assert_eq!(sleeper.await, Err(Error::Canceled));
    });
}

/// A task waker whose drop advances the clock past the sleep's end: replacing it (a poll
/// with another waker) fires the sleep's timer from inside that drop. (Regression: the old
/// waker was dropped while the sleep held its waker lock, and the timer's wake-up took the
/// same lock again: a deadlock.)
#[test]
fn a_task_waker_whose_drop_fires_the_timer_does_not_deadlock() {
    struct AdvancesOnDrop(ManualClock);
    impl std::task::Wake for AdvancesOnDrop {
        fn wake(self: Arc<Self>) {}
    }
    impl Drop for AdvancesOnDrop {
        fn drop(&mut self) {
            self.0.advance(Duration::from_secs(1));
        }
    }

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // On its own thread, so that a deadlock fails the test instead of hanging it.
    std::thread::spawn(move || {
        let clock = ManualClock::new();
        let ctx = Context::with_clock(clock.clone());
        let mut sleep = pin!(ctx.sleep(Duration::from_secs(1)));
        let hostile = Waker::from(Arc::new(AdvancesOnDrop(clock.clone())));
        assert!(poll(sleep.as_mut(), &hostile).is_pending());
        drop(hostile); // the sleep holds the last clones
        let (wakes, plain) = counting_waker();
        let first = poll(sleep.as_mut(), &plain); // drops the hostile waker
        let result = match first {
            Poll::Ready(result) => result,
            Poll::Pending => {
                assert!(wakes.wakes() > 0, "the timer that fired woke the task");
                match poll(sleep.as_mut(), &plain) {
                    Poll::Ready(result) => result,
                    Poll::Pending => panic!("the sleep's time has passed"),
                }
            }
        };
        done_tx.send(result).unwrap();
    });
    let result = done_rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(result, Ok(Ok(())), "the poll deadlocked or failed");
}
