//! Integration tests for waiting on a context: `done()` / `done_owned()` on every executor
//! the crate is meant to work with, `FusedFuture` and `select!`, `run()`, blocking `wait` /
//! `wait_timeout`, wake-up accounting with a counting waker, and lost-wakeup stress.
//!
//! Deadlines only use [`ManualClock`]. Sleeps only give another thread a chance to block
//! first; bounds on waiting (`BOUND`) only guard against hangs and are never asserted on.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread;
use std::time::Duration;

use cancelctx::{CancelGuard, Context, Error, Instant, ManualClock};
use futures::future::FusedFuture;
use futures::StreamExt;

mod common;
use common::{counting_waker, WakeCounter};

/// Upper bound for cross-thread waits; only guards against hangs, never asserted on.
const BOUND: Duration = Duration::from_secs(30);
/// A pause that gives another thread the chance to start blocking; never decides pass/fail.
const CHANCE: Duration = Duration::from_millis(10);
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An explicit cause with an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Why(usize);

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "why #{}", self.0)
    }
}

impl std::error::Error for Why {}

#[derive(Debug)]
struct Key;

/// Waker clones held by someone other than the test (the counter and the test's waker are
/// the two references the test owns).
fn foreign_clones(counter: &Arc<WakeCounter>) -> usize {
    Arc::strong_count(counter) - 2
}

/// A future that records being polled and dropped; ready after `ready_after` polls (never if
/// `None`), waking itself in between.
struct Tracked {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    ready_after: Option<usize>,
}

#[derive(Clone, Default)]
struct Flags {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Flags {
    fn future(&self, ready_after: Option<usize>) -> Tracked {
        Tracked { polls: self.polls.clone(), dropped: self.dropped.clone(), ready_after }
    }

    fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Future for Tracked {
    type Output = u32;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<u32> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.ready_after {
            Some(k) if n > k => Poll::Ready(42),
            Some(_) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// A `done()`-like future of any kind.
type BoxedDone<'a> = Pin<Box<dyn Future<Output = Error> + 'a>>;

fn clocked() -> (ManualClock, Context) {
    let clock = ManualClock::new();
    clock.set(Instant::ZERO + HOUR);
    let root = Context::with_clock(clock.clone());
    (clock, root)
}

/// Cancels `guard` with `why` from a new thread, after giving the caller a chance to block.
fn cancel_later(guard: CancelGuard, why: Why) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(CHANCE);
        guard.cancel_with(why);
    })
}

fn cause_id(ctx: &Context) -> Option<usize> {
    ctx.cause()?.downcast_ref::<Why>().map(|w| w.0)
}

// ---------------------------------------------------------------------------------------
// done() on every executor
// ---------------------------------------------------------------------------------------

#[test]
fn done_on_futures_block_on() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let child = ctx.with_value(Key);
    let canceller = cancel_later(guard, Why(1));
    assert_eq!(futures::executor::block_on(child.done()), Error::Canceled);
    assert_eq!(cause_id(&child), Some(1));
    canceller.join().unwrap();

    // The right error for a deadline, moved from another thread.
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(Duration::from_secs(5));
    let mover = thread::spawn(move || {
        thread::sleep(CHANCE);
        clock.advance(Duration::from_secs(5));
    });
    assert_eq!(futures::executor::block_on(ctx.done()), Error::DeadlineExceeded);
    mover.join().unwrap();
}

#[test]
fn done_on_pollster() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_cancel();
    let canceller = cancel_later(guard, Why(2));
    assert_eq!(pollster::block_on(child.done()), Error::Canceled);
    assert_eq!(cause_id(&child), Some(2));
    canceller.join().unwrap();

    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(Duration::from_secs(5));
    let done = ctx.done_owned();
    let mover = thread::spawn(move || {
        thread::sleep(CHANCE);
        clock.advance(Duration::from_secs(5));
    });
    assert_eq!(pollster::block_on(done), Error::DeadlineExceeded);
    mover.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_on_tokio_multi_thread() {
    // Cancelled from another task.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let task = tokio::spawn(async move {
        tokio::task::yield_now().await;
        guard.cancel_with(Why(3));
    });
    assert_eq!(ctx.done().await, Error::Canceled);
    assert_eq!(cause_id(&ctx), Some(3));
    task.await.unwrap();

    // Cancelled from a blocking thread.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let blocking = tokio::task::spawn_blocking(move || {
        thread::sleep(CHANCE);
        drop(guard);
    });
    assert_eq!(ctx.done().await, Error::Canceled);
    blocking.await.unwrap();

    // A deadline moved from another thread.
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(Duration::from_secs(1));
    let mover = thread::spawn(move || {
        thread::sleep(CHANCE);
        clock.advance(Duration::from_secs(1));
    });
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    mover.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn done_on_tokio_current_thread() {
    // Cancelled from a task on the same (single) thread: the waiter must yield to it.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let task = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        guard.cancel_with(Why(4));
    });
    assert_eq!(ctx.done().await, Error::Canceled);
    assert_eq!(cause_id(&ctx), Some(4));
    task.await.unwrap();

    // Cancelled from a std thread.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_value(Key).with_cancel();
    let canceller = cancel_later(guard, Why(5));
    assert_eq!(child.done().await, Error::Canceled);
    assert_eq!(cause_id(&child), Some(5));
    canceller.join().unwrap();
}

#[test]
fn done_on_smol() {
    smol::block_on(async {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let task = smol::spawn(async move {
            smol::future::yield_now().await;
            guard.cancel_with(Why(6));
        });
        assert_eq!(ctx.done().await, Error::Canceled);
        assert_eq!(cause_id(&ctx), Some(6));
        task.await;

        let (ctx, guard) = Context::unclocked().with_cancel();
        let unblocked = smol::unblock(move || {
            thread::sleep(CHANCE);
            guard.cancel();
        });
        assert_eq!(ctx.done_owned().await, Error::Canceled);
        unblocked.await;

        // A local executor on this thread, cancelled from a local task.
        let local = smol::LocalExecutor::new();
        let (ctx, guard) = Context::unclocked().with_cancel();
        let waiter = local.spawn({
            let ctx = ctx.clone();
            async move { ctx.done().await }
        });
        let canceller = local.spawn(async move {
            smol::future::yield_now().await;
            guard.cancel();
        });
        let err = local.run(async { (waiter.await, canceller.await).0 }).await;
        assert_eq!(err, Error::Canceled);
    });
}

#[async_std::test]
async fn done_on_async_std() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let task = async_std::task::spawn(async move {
        async_std::task::yield_now().await;
        guard.cancel_with(Why(7));
    });
    assert_eq!(ctx.done().await, Error::Canceled);
    assert_eq!(cause_id(&ctx), Some(7));
    task.await;

    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_cancel();
    let blocking = async_std::task::spawn_blocking(move || {
        thread::sleep(CHANCE);
        guard.cancel();
    });
    assert_eq!(async_std::task::spawn(child.done_owned()).await, Error::Canceled);
    blocking.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_owned_is_static_and_spawnable() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_value(Key).with_cancel();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let done = if i % 2 == 0 { ctx.done_owned() } else { child.done_owned() };
            tokio::spawn(done)
        })
        .collect();
    // The futures own their context: the handles can go.
    drop(ctx);
    drop(child);
    tokio::task::yield_now().await;
    guard.cancel();
    for task in tasks {
        assert_eq!(tokio::time::timeout(BOUND, task).await.unwrap().unwrap(), Error::Canceled);
    }
}

// ---------------------------------------------------------------------------------------
// FusedFuture and select!
// ---------------------------------------------------------------------------------------

#[test]
fn is_terminated_semantics() {
    let (_counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);

    let (ctx, guard) = Context::unclocked().with_cancel();
    let mut done = ctx.done();
    let mut owned = ctx.done_owned();
    assert!(!done.is_terminated() && !owned.is_terminated());
    assert!(Pin::new(&mut done).poll(&mut cx).is_pending());
    assert!(Pin::new(&mut owned).poll(&mut cx).is_pending());
    assert!(!done.is_terminated() && !owned.is_terminated(), "pending is not terminated");
    guard.cancel();
    assert!(!done.is_terminated(), "terminated only once it has returned Ready");
    assert_eq!(Pin::new(&mut done).poll(&mut cx), Poll::Ready(Error::Canceled));
    assert_eq!(Pin::new(&mut owned).poll(&mut cx), Poll::Ready(Error::Canceled));
    assert!(done.is_terminated() && owned.is_terminated());
    drop((done, owned));

    // A done future on an already-done context: terminated after its first poll.
    let mut late = ctx.done();
    assert!(!late.is_terminated());
    assert_eq!(Pin::new(&mut late).poll(&mut cx), Poll::Ready(Error::Canceled));
    assert!(late.is_terminated());

    // Never-done contexts: never terminated.
    let bg = Context::background();
    let mut never = bg.done();
    assert!(Pin::new(&mut never).poll(&mut cx).is_pending());
    assert!(!never.is_terminated());

    // Run: terminated after Ok and after Err.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let mut ok = pin!(ctx.run(async { 1 }));
    assert!(!ok.is_terminated());
    assert_eq!(ok.as_mut().poll(&mut cx), Poll::Ready(Ok(1)));
    assert!(ok.is_terminated());
    let mut err = pin!(ctx.run(std::future::pending::<()>()));
    assert!(err.as_mut().poll(&mut cx).is_pending());
    assert!(!err.is_terminated());
    guard.cancel();
    assert_eq!(err.as_mut().poll(&mut cx), Poll::Ready(Err(Error::Canceled)));
    assert!(err.is_terminated());
}

#[test]
fn futures_select_with_done() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let mut guard = Some(guard);
    let mut done = ctx.done();
    let mut ticks = futures::stream::iter(0..5).fuse();
    let mut seen = Vec::new();
    let mut got = Vec::new();
    let mut rounds = 0;
    futures::executor::block_on(async {
        loop {
            rounds += 1;
            assert!(rounds < 100, "select! kept polling a terminated future");
            futures::select! {
                tick = ticks.next() => {
                    if let Some(tick) = tick {
                        seen.push(tick);
                        if tick == 2 {
                            guard.take().unwrap().cancel();
                        }
                    }
                }
                err = done => got.push(err),
                complete => break,
            }
        }
    });
    // The done branch fires exactly once (it is fused), the stream runs to its end.
    assert_eq!(got, vec![Error::Canceled]);
    assert_eq!(seen.first(), Some(&0));
    assert!(seen.contains(&2));
    assert!(done.is_terminated());

    // select! between work and done_owned where the work finishes first.
    let (ctx, _guard) = Context::unclocked().with_cancel();
    let out = futures::executor::block_on(async {
        let mut done = ctx.done_owned();
        let mut work = Box::pin(futures::FutureExt::fuse(async { 9 }));
        futures::select! {
            _ = done => None,
            v = work => Some(v),
        }
    });
    assert_eq!(out, Some(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_select_with_done() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let canceller = tokio::spawn(async move {
        tokio::task::yield_now().await;
        guard.cancel();
    });
    let out = tokio::select! {
        err = ctx.done() => Err(err),
        v = rx => Ok(v),
    };
    assert_eq!(out, Err(Error::Canceled));
    canceller.await.unwrap();
    drop(tx);

    // Work ready first wins a biased select while the context is live.
    let (ctx, _guard) = Context::unclocked().with_cancel();
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    tx.send(5).unwrap();
    let out = tokio::select! {
        biased;
        v = rx => Ok(v.unwrap()),
        err = ctx.done() => Err(err),
    };
    assert_eq!(out, Ok(5));

    // done() in a select! loop with a deadline on a ManualClock moved by another task.
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(Duration::from_secs(2));
    let (tick_tx, mut tick_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let mover = tokio::spawn(async move {
        for i in 0..4 {
            tick_tx.send(i).unwrap();
            clock.advance(Duration::from_secs(1));
            tokio::task::yield_now().await;
        }
    });
    let mut ticks = Vec::new();
    let err = loop {
        tokio::select! {
            err = ctx.done() => break err,
            Some(t) = tick_rx.recv() => ticks.push(t),
        }
    };
    assert_eq!(err, Error::DeadlineExceeded);
    assert!(ticks.iter().all(|&t| t < 4), "{ticks:?}");
    mover.await.unwrap();
}

// ---------------------------------------------------------------------------------------
// run()
// ---------------------------------------------------------------------------------------

#[test]
fn run_ok_when_the_future_finishes_first() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let flags = Flags::default();
    let out = futures::executor::block_on(ctx.run(flags.future(Some(3))));
    assert_eq!(out, Ok(42));
    assert_eq!(flags.polls(), 4);
    assert!(flags.dropped());
    assert!(!ctx.is_done());
    assert_eq!(pollster::block_on(Context::background().run(async { "bg" })), Ok("bg"));
    drop(guard);
}

#[test]
fn run_err_as_soon_as_done_and_inner_future_is_dropped() {
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_value(Key).with_cancel();
    let flags = Flags::default();
    let mut run = pin!(child.run(flags.future(None)));
    for _ in 0..3 {
        assert!(run.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(flags.polls(), 3);
    guard.cancel();
    assert_eq!(counter.wakes(), 1, "the cancel wakes the Run's task");
    assert_eq!(run.as_mut().poll(&mut cx), Poll::Ready(Err(Error::Canceled)));
    // The inner future is dropped by the poll that returns Err, while `run` still exists.
    assert!(flags.dropped(), "inner future dropped on Err");
    assert_eq!(flags.polls(), 3, "not polled again after the context was done");
    assert!(run.is_terminated());
}

#[test]
fn run_err_wins_if_done_before_the_first_poll() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    guard.cancel();
    let flags = Flags::default();
    let out = futures::executor::block_on(ctx.run(flags.future(Some(0))));
    assert_eq!(out, Err(Error::Canceled));
    assert_eq!(flags.polls(), 0, "a ready inner future is not even polled");
    assert!(flags.dropped());

    // Err also wins at a later poll even if the inner future would now be ready.
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let (ctx, guard) = Context::unclocked().with_cancel();
    let flags = Flags::default();
    let mut run = pin!(ctx.run(flags.future(Some(1))));
    assert!(run.as_mut().poll(&mut cx).is_pending());
    guard.cancel();
    assert_eq!(run.as_mut().poll(&mut cx), Poll::Ready(Err(Error::Canceled)));
    assert_eq!(flags.polls(), 1);
    assert!(flags.dropped());
    assert!(counter.wakes() >= 1);
}

/// The context is completed *while* the inner future is being polled (the inner future
/// cancels it and returns `Pending`): the same poll returns `Err` and drops the inner future.
#[test]
fn run_err_when_done_during_the_inner_poll() {
    struct CancelsWhilePolled {
        guard: Option<CancelGuard>,
        dropped: Arc<AtomicBool>,
    }
    impl Future for CancelsWhilePolled {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<u32> {
            if let Some(guard) = self.guard.take() {
                guard.cancel_with(Why(12));
            }
            Poll::Pending
        }
    }
    impl Drop for CancelsWhilePolled {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let (ctx, guard) = Context::unclocked().with_cancel();
    let dropped = Arc::new(AtomicBool::new(false));
    let inner = CancelsWhilePolled { guard: Some(guard), dropped: dropped.clone() };
    let mut run = pin!(ctx.run(inner));
    assert_eq!(run.as_mut().poll(&mut cx), Poll::Ready(Err(Error::Canceled)));
    assert!(dropped.load(Ordering::SeqCst), "inner future dropped by the poll that returned Err");
    assert!(run.is_terminated());
    assert_eq!(cause_id(&ctx), Some(12));
    assert_eq!(foreign_clones(&counter), 0, "no waker left registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_tokio_drops_the_inner_future_on_cancel() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let task = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.run(rx).await }
    });
    tokio::task::yield_now().await;
    let canceller = thread::spawn(move || {
        thread::sleep(CHANCE);
        guard.cancel();
    });
    let out = tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
    assert_eq!(out, Err(Error::Canceled));
    assert!(tx.is_closed(), "the receiver (inner future) was dropped");
    canceller.join().unwrap();

    // And Ok when the work completes first.
    let (ctx, _guard) = Context::unclocked().with_cancel();
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let task = tokio::spawn(async move { ctx.run(rx).await });
    tx.send(11).unwrap();
    assert_eq!(task.await.unwrap(), Ok(Ok(11)));
}

// ---------------------------------------------------------------------------------------
// Wake-up accounting
// ---------------------------------------------------------------------------------------

#[test]
fn done_polled_repeatedly_is_woken_exactly_once() {
    for kind in ["with_cancel", "value child", "done_owned", "deadline"] {
        let (counter, waker) = counting_waker();
        let mut cx = TaskContext::from_waker(&waker);
        let (clock, root) = clocked();
        let (ctx, guard) = root.with_timeout(Duration::from_secs(1));
        let value_child = ctx.with_value(Key);
        let mut fut: BoxedDone<'_> = match kind {
            "value child" => Box::pin(value_child.done()),
            "done_owned" => Box::pin(ctx.done_owned()),
            _ => Box::pin(ctx.done()),
        };
        for _ in 0..20 {
            assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending, "{kind}");
        }
        assert_eq!(counter.wakes(), 0, "{kind}: no wake while live");
        assert!(foreign_clones(&counter) <= 1, "{kind}: at most one registered waker");
        if kind == "deadline" {
            clock.advance(Duration::from_secs(1));
        } else {
            guard.cancel();
        }
        assert_eq!(counter.wakes(), 1, "{kind}: woken exactly once");
        let want = if kind == "deadline" { Error::DeadlineExceeded } else { Error::Canceled };
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(want), "{kind}");
        drop(guard);
        assert_eq!(counter.wakes(), 1, "{kind}: no further wakes");
        drop(fut);
        assert_eq!(foreign_clones(&counter), 0, "{kind}: registered waker released");
    }
}

#[test]
fn done_wakes_the_latest_waker() {
    let (counter_a, waker_a) = counting_waker();
    let (counter_b, waker_b) = counting_waker();
    let (ctx, guard) = Context::unclocked().with_cancel();
    let mut done = pin!(ctx.done());
    assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker_a)).is_pending());
    assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker_b)).is_pending());
    guard.cancel();
    assert_eq!(counter_b.wakes(), 1, "the waker of the latest poll is woken");
    assert_eq!(
        done.as_mut().poll(&mut TaskContext::from_waker(&waker_b)),
        Poll::Ready(Error::Canceled)
    );
    assert_eq!(foreign_clones(&counter_a), 0);
    assert_eq!(foreign_clones(&counter_b), 0);
}

#[test]
fn dropped_done_future_is_not_woken_and_releases_its_waker() {
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let (ctx, guard) = Context::unclocked().with_cancel();
    {
        let mut done = pin!(ctx.done());
        assert!(done.as_mut().poll(&mut cx).is_pending());
        let mut owned = Box::pin(ctx.done_owned());
        assert!(owned.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(foreign_clones(&counter), 0, "dropping the futures unregisters them");
    guard.cancel();
    assert_eq!(counter.wakes(), 0);
}

#[test]
fn many_done_futures_are_each_woken_once() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_cancel();
    let mut entries: Vec<(Arc<WakeCounter>, Waker, BoxedDone<'_>)> = Vec::new();
    for i in 0..64 {
        let (counter, waker) = counting_waker();
        let fut: BoxedDone<'_> = match i % 3 {
            0 => Box::pin(ctx.done()),
            1 => Box::pin(child.done()),
            _ => Box::pin(child.done_owned()),
        };
        entries.push((counter, waker, fut));
    }
    for (_, waker, fut) in &mut entries {
        assert!(fut.as_mut().poll(&mut TaskContext::from_waker(waker)).is_pending());
    }
    guard.cancel();
    for (i, (counter, waker, fut)) in entries.iter_mut().enumerate() {
        assert_eq!(counter.wakes(), 1, "future #{i}");
        assert_eq!(
            fut.as_mut().poll(&mut TaskContext::from_waker(waker)),
            Poll::Ready(Error::Canceled)
        );
    }
}

#[test]
fn done_on_a_done_context_is_ready_without_registering() {
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let (ctx, guard) = Context::unclocked().with_cancel();
    drop(guard);
    let mut done = pin!(ctx.done());
    assert_eq!(done.as_mut().poll(&mut cx), Poll::Ready(Error::Canceled));
    assert_eq!(foreign_clones(&counter), 0);
    assert_eq!(counter.wakes(), 0);
}

#[test]
fn done_on_never_done_contexts_stays_pending_and_registers_nothing() {
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let (ctx, guard) = Context::unclocked().with_cancel();
    let contexts = [Context::background(), Context::unclocked(), ctx.without_cancel()];
    for (i, c) in contexts.iter().enumerate() {
        let mut noop = TaskContext::from_waker(futures::task::noop_waker_ref());
        assert!(pin!(c.done()).poll(&mut noop).is_pending(), "#{i}");
        let mut done = pin!(c.done());
        let mut owned = pin!(c.done_owned());
        assert!(done.as_mut().poll(&mut cx).is_pending(), "#{i}");
        assert!(owned.as_mut().poll(&mut cx).is_pending(), "#{i}");
        assert_eq!(foreign_clones(&counter), 0, "#{i}");
    }
    guard.cancel();
    assert_eq!(counter.wakes(), 0);
}

// ---------------------------------------------------------------------------------------
// Blocking waits
// ---------------------------------------------------------------------------------------

#[test]
fn wait_returns_the_error_when_cancelled_from_another_thread() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_value(Key).with_cancel();
    let waiter = thread::spawn(move || child.wait());
    let canceller = cancel_later(guard, Why(8));
    assert_eq!(waiter.join().unwrap(), Error::Canceled);
    canceller.join().unwrap();
    assert_eq!(cause_id(&ctx), Some(8));

    // This thread waits, another cancels.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let canceller = cancel_later(guard, Why(9));
    assert_eq!(ctx.wait(), Error::Canceled);
    canceller.join().unwrap();

    // Already done: returns at once.
    assert_eq!(ctx.wait(), Error::Canceled);

    // A deadline fired by a ManualClock on another thread.
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(Duration::from_secs(1));
    let mover = thread::spawn(move || {
        thread::sleep(CHANCE);
        clock.advance(Duration::from_secs(1));
    });
    assert_eq!(ctx.wait(), Error::DeadlineExceeded);
    mover.join().unwrap();
}

#[test]
fn wait_timeout_zero_only_checks() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    assert_eq!(ctx.wait_timeout(Duration::ZERO), None);
    assert_eq!(Context::background().wait_timeout(Duration::ZERO), None);
    assert_eq!(ctx.without_cancel().wait_timeout(Duration::ZERO), None);
    guard.cancel();
    assert_eq!(ctx.wait_timeout(Duration::ZERO), Some(Error::Canceled));
    let (clock, root) = clocked();
    let (timed, _g) = root.with_timeout(Duration::from_secs(1));
    assert_eq!(timed.wait_timeout(Duration::ZERO), None);
    clock.advance(Duration::from_secs(1));
    assert_eq!(timed.wait_timeout(Duration::ZERO), Some(Error::DeadlineExceeded));
}

#[test]
fn wait_timeout_max_returns_when_cancelled() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let canceller = cancel_later(guard, Why(10));
    assert_eq!(ctx.wait_timeout(Duration::MAX), Some(Error::Canceled));
    canceller.join().unwrap();

    let (ctx, guard) = Context::unclocked().with_cancel();
    let waiter = thread::spawn(move || ctx.wait_timeout(Duration::MAX));
    thread::sleep(CHANCE);
    guard.cancel();
    assert_eq!(waiter.join().unwrap(), Some(Error::Canceled));

    // A bounded but long timeout also returns on cancel.
    let (ctx, guard) = Context::unclocked().with_cancel();
    let canceller = cancel_later(guard, Why(11));
    assert_eq!(ctx.wait_timeout(BOUND), Some(Error::Canceled));
    canceller.join().unwrap();
}

#[test]
fn wait_timeout_small_on_live_context_returns_none() {
    let (ctx, _guard) = Context::unclocked().with_cancel();
    let (clock, root) = clocked();
    let (timed, _g) = root.with_timeout(Duration::from_nanos(1));
    let contexts =
        [ctx.clone(), ctx.with_value(Key), Context::background(), ctx.without_cancel(), timed];
    for (i, c) in contexts.iter().enumerate() {
        assert_eq!(c.wait_timeout(Duration::from_millis(2)), None, "#{i}");
        assert_eq!(c.wait_timeout(Duration::from_nanos(1)), None, "#{i}");
    }
    // The ManualClock did not move: real time passing does not complete its deadlines.
    assert_eq!(clock.pending_timers(), 1);
}

/// Unparks `thread` many times, with pauses in which it can park again, while its blocking
/// wait must go on: a blocking wait parks the thread, and `park` also returns on unparks
/// meant for something else (and spuriously).
fn spam_unparks(thread: &thread::Thread) {
    for _ in 0..200 {
        thread.unpark();
        thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn blocking_waits_ignore_spurious_unparks() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _g) = ctx.with_value(Key).with_cancel();
    let waiters = [
        thread::spawn({
            let ctx = ctx.clone();
            move || Some(ctx.wait())
        }),
        thread::spawn({
            let child = child.clone();
            move || child.wait_timeout(HOUR)
        }),
        thread::spawn(move || ctx.wait_timeout(BOUND)),
    ];
    thread::sleep(CHANCE);
    for waiter in &waiters {
        spam_unparks(waiter.thread());
    }
    for (i, waiter) in waiters.iter().enumerate() {
        assert!(!waiter.is_finished(), "an unpark ended wait #{i} early");
    }
    guard.cancel();
    for waiter in waiters {
        assert_eq!(waiter.join().unwrap(), Some(Error::Canceled));
    }
}

#[test]
fn a_stale_unpark_token_does_not_end_a_blocking_wait() {
    // A token left by an earlier unpark makes the first park return at once.
    let (ctx, guard) = Context::unclocked().with_cancel();
    thread::current().unpark();
    let canceller = cancel_later(guard, Why(12));
    assert_eq!(ctx.wait_timeout(HOUR), Some(Error::Canceled));
    canceller.join().unwrap();

    // A timed wait ends at its timeout, not at an unpark (real time, as documented; the
    // bound asserted is the one the API promises).
    let (ctx, _guard) = Context::unclocked().with_cancel();
    let timeout = Duration::from_millis(20);
    thread::current().unpark();
    let start = std::time::Instant::now();
    assert_eq!(ctx.wait_timeout(timeout), None);
    assert!(start.elapsed() >= timeout, "returned before its timeout");
}

/// One thread's blocking waits share one unparking relay: waits in a row (contexts and a
/// wait group, some timing out) each end with their own event.
#[test]
fn one_thread_waits_many_times_in_a_row() {
    let (tx, rx) = mpsc::channel::<CancelGuard>();
    let canceller = thread::spawn(move || rx.into_iter().for_each(|guard| guard.cancel()));
    let wg = cancelctx::WaitGroup::new();
    for i in 0..200 {
        let (ctx, guard) = Context::unclocked().with_cancel();
        if i % 3 == 0 {
            assert_eq!(ctx.wait_timeout(Duration::from_micros(10)), None, "#{i}");
        }
        if i % 5 == 0 {
            let unit = wg.add();
            let finisher = thread::spawn(move || drop(unit));
            assert!(wg.wait_timeout(BOUND), "#{i}");
            finisher.join().unwrap();
        }
        tx.send(guard).unwrap();
        assert_eq!(ctx.wait(), Error::Canceled, "#{i}");
    }
    drop(tx);
    canceller.join().unwrap();
}

/// Blocking waiters on several nodes of one completion walk, together with async waiters on
/// the same nodes, are all woken (the blocking ones through the same deferred relay).
#[test]
fn blocking_and_async_waiters_of_one_walk_are_all_woken() {
    let (clock, root) = clocked();
    let (ctx, _guard) = root.with_timeout(Duration::from_secs(1));
    let (child, _g1) = ctx.with_cancel();
    let (grandchild, _g2) = child.with_value(Key).with_cancel();
    let (counter, waker) = counting_waker();
    let mut futures: Vec<_> = [&ctx, &child, &grandchild].map(|c| c.done_owned()).into();
    for f in &mut futures {
        assert!(Pin::new(f).poll(&mut TaskContext::from_waker(&waker)).is_pending());
    }
    let waiters: Vec<_> = [&ctx, &child, &grandchild, &ctx, &grandchild]
        .into_iter()
        .map(|c| {
            let c = c.clone();
            thread::spawn(move || c.wait_timeout(BOUND))
        })
        .collect();
    thread::sleep(CHANCE);
    clock.advance(Duration::from_secs(1));
    for waiter in waiters {
        assert_eq!(waiter.join().unwrap(), Some(Error::DeadlineExceeded));
    }
    assert_eq!(counter.wakes(), 3);
    for f in &mut futures {
        let polled = Pin::new(f).poll(&mut TaskContext::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(Error::DeadlineExceeded));
    }
}

// ---------------------------------------------------------------------------------------
// No lost wake-ups
// ---------------------------------------------------------------------------------------

/// Async (block_on) and blocking waiters race a canceller started at the same instant; every
/// waiter must finish with the error. A lost wake-up shows up as a waiter that never reports.
#[test]
fn no_lost_wakeup_threads() {
    const ASYNC: usize = 3;
    const BLOCKING: usize = 2;
    for iteration in 0..1000 {
        let (clock, root) = clocked();
        let (ctx, guard) = root.with_timeout(Duration::from_secs(1));
        let (child, _g) = ctx.with_value(Key).with_cancel();
        let by_deadline = iteration % 3 == 2;
        let barrier = Arc::new(Barrier::new(ASYNC + BLOCKING + 1));
        let (tx, rx) = mpsc::channel();
        for i in 0..ASYNC + BLOCKING {
            let target = if i % 2 == 0 { ctx.clone() } else { child.clone() };
            let (barrier, tx) = (barrier.clone(), tx.clone());
            thread::spawn(move || {
                barrier.wait();
                let err = if i < ASYNC {
                    if i % 2 == 0 {
                        futures::executor::block_on(target.done())
                    } else {
                        pollster::block_on(target.done_owned())
                    }
                } else {
                    target.wait()
                };
                let _ = tx.send(err);
            });
        }
        let canceller = thread::spawn(move || {
            barrier.wait();
            if by_deadline {
                clock.advance(Duration::from_secs(1));
            } else {
                guard.cancel();
            }
        });
        let want = if by_deadline { Error::DeadlineExceeded } else { Error::Canceled };
        for n in 0..ASYNC + BLOCKING {
            let got = rx.recv_timeout(BOUND).unwrap_or_else(|_| {
                panic!("iteration {iteration}: lost wake-up, {n} of the waiters finished")
            });
            assert_eq!(got, want, "iteration {iteration}");
        }
        canceller.join().unwrap();
    }
}

/// The same race with tasks on a multi-threaded tokio runtime plus blocking waiters.
#[test]
fn no_lost_wakeup_tokio() {
    const TASKS: usize = 6;
    const BLOCKING: usize = 2;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    for iteration in 0..500 {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let (child, _g) = ctx.with_cancel();
        let barrier = Arc::new(Barrier::new(BLOCKING + 2));
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let target = if i % 2 == 0 { ctx.clone() } else { child.clone() };
                rt.spawn(async move {
                    if i % 3 == 0 {
                        target.done_owned().await
                    } else {
                        target.done().await
                    }
                })
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        for i in 0..BLOCKING {
            let target = if i % 2 == 0 { ctx.clone() } else { child.clone() };
            let (barrier, tx) = (barrier.clone(), tx.clone());
            thread::spawn(move || {
                barrier.wait();
                let _ = tx.send(target.wait());
            });
        }
        let canceller = thread::spawn({
            let barrier = barrier.clone();
            move || {
                barrier.wait();
                guard.cancel();
            }
        });
        barrier.wait();
        rt.block_on(async {
            for task in tasks {
                let got = tokio::time::timeout(BOUND, task)
                    .await
                    .unwrap_or_else(|_| panic!("iteration {iteration}: lost wake-up (task)"))
                    .unwrap();
                assert_eq!(got, Error::Canceled, "iteration {iteration}");
            }
        });
        for _ in 0..BLOCKING {
            let got = rx
                .recv_timeout(BOUND)
                .unwrap_or_else(|_| panic!("iteration {iteration}: lost wake-up (blocking)"));
            assert_eq!(got, Error::Canceled);
        }
        canceller.join().unwrap();
    }
}

/// A dense version of the race: poller threads register fresh `done_owned()` futures as
/// fast as they can while the canceller completes the context. Every future that returned
/// `Pending` must be woken exactly once, so a registration that slips between "check the
/// state" and "announce a waiter" is caught.
#[test]
fn no_lost_wakeup_dense_registration() {
    const POLLERS: usize = 2;
    for iteration in 0..300 {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let (child, _g) = ctx.with_cancel();
        let barrier = Arc::new(Barrier::new(POLLERS + 1));
        let pollers: Vec<_> = (0..POLLERS)
            .map(|p| {
                let target = if p % 2 == 0 { ctx.clone() } else { child.clone() };
                let barrier = barrier.clone();
                thread::spawn(move || {
                    let (counter, waker) = counting_waker();
                    let mut cx = TaskContext::from_waker(&waker);
                    let mut pending = Vec::new();
                    barrier.wait();
                    loop {
                        let mut fut = Box::pin(target.done_owned());
                        match fut.as_mut().poll(&mut cx) {
                            Poll::Pending => pending.push(fut),
                            Poll::Ready(err) => {
                                assert_eq!(err, Error::Canceled);
                                break;
                            }
                        }
                    }
                    (counter, pending)
                })
            })
            .collect();
        barrier.wait();
        for _ in 0..(iteration % 50) * 20 {
            std::hint::spin_loop();
        }
        guard.cancel();
        for poller in pollers {
            let (counter, mut pending) = poller.join().unwrap();
            assert_eq!(
                counter.wakes(),
                pending.len(),
                "iteration {iteration}: a pending done() future was not woken"
            );
            let waker = futures::task::noop_waker();
            let mut cx = TaskContext::from_waker(&waker);
            for fut in &mut pending {
                assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Error::Canceled));
            }
        }
    }
}

/// The completer wakes a context's waiters in batches, each after releasing the list's lock.
/// A waker that drops every other waiter of the context inline (some already taken out with
/// it, most still linked) must neither deadlock nor touch a freed entry, and the waiters it
/// dropped before the drain reached them are not woken.
#[test]
fn a_waker_that_drops_the_other_waiters_mid_drain() {
    use std::task::Wake;

    struct Dropper(std::sync::Mutex<Vec<Pin<Box<cancelctx::DoneOwned>>>>);
    impl Wake for Dropper {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.lock().unwrap().clear();
        }
    }

    const OTHERS: usize = 200;
    let (finished, watch) = mpsc::channel();
    thread::spawn(move || {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let (counter, counting) = counting_waker();
        let mut others: Vec<_> = (0..OTHERS).map(|_| Box::pin(ctx.done_owned())).collect();
        for other in &mut others {
            let mut cx = TaskContext::from_waker(&counting);
            assert!(other.as_mut().poll(&mut cx).is_pending());
        }
        let dropper = Arc::new(Dropper(std::sync::Mutex::new(others)));
        let waker = Waker::from(dropper.clone());
        // Registered last, so it is among the first the drain takes out.
        let mut done = Box::pin(ctx.done_owned());
        assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
        guard.cancel();
        let polled = done.as_mut().poll(&mut TaskContext::from_waker(&waker));
        finished.send((dropper.0.lock().unwrap().len(), counter.wakes(), polled)).unwrap();
    });
    match watch.recv_timeout(BOUND) {
        Ok((left, wakes, polled)) => {
            assert_eq!(left, 0);
            assert!(wakes < OTHERS, "{wakes} of {OTHERS} dropped waiters were woken");
            assert_eq!(polled, Poll::Ready(Error::Canceled));
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("cancelling deadlocked"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario thread panicked"),
    }
}

/// A waker that polls another `done()` of the same context inline when woken (as a
/// run-inline executor would), and starts and drops a fresh one: waking it must not deadlock
/// on event-listener's lock, and both futures see the context done.
#[test]
fn a_reentrant_waker_on_done_does_not_deadlock() {
    use std::task::Wake;

    struct Reentrant {
        other: std::sync::Mutex<Option<Pin<Box<cancelctx::DoneOwned>>>>,
        fresh: Context,
        seen: AtomicUsize,
    }
    impl Wake for Reentrant {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let (_c, waker) = counting_waker();
            let mut cx = TaskContext::from_waker(&waker);
            if let Some(other) = self.other.lock().unwrap().as_mut() {
                if other.as_mut().poll(&mut cx).is_ready() {
                    self.seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            if pin!(self.fresh.done()).poll(&mut cx).is_ready() {
                self.seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    // The scenario runs on its own thread; this one only watches for a hang.
    let (finished, watch) = mpsc::channel();
    thread::spawn(move || {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let reentrant = Arc::new(Reentrant {
            other: std::sync::Mutex::new(Some(Box::pin(ctx.done_owned()))),
            fresh: ctx.clone(),
            seen: AtomicUsize::new(0),
        });
        let waker = Waker::from(reentrant.clone());
        let mut done = pin!(ctx.done());
        assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
        {
            let (_c, w) = counting_waker();
            let mut other = reentrant.other.lock().unwrap();
            let other = other.as_mut().unwrap().as_mut();
            assert!(other.poll(&mut TaskContext::from_waker(&w)).is_pending());
        }
        guard.cancel();
        let seen = reentrant.seen.load(Ordering::SeqCst);
        let polled = done.as_mut().poll(&mut TaskContext::from_waker(&waker));
        finished.send((seen, polled)).unwrap();
    });
    match watch.recv_timeout(BOUND) {
        Ok((seen, polled)) => {
            assert_eq!(seen, 2, "the waker saw both inline futures resolve");
            assert_eq!(polled, Poll::Ready(Error::Canceled));
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("cancelling deadlocked: a re-entrant waker ran under event-listener's lock")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario thread panicked"),
    }
}
