//! `take_until_done`, `timeout` / `timeout_at`, and identity (`PartialEq`/`Eq`/`Hash`).
//! Time is a `ManualClock` (or tokio's paused clock); no assertion depends on real time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use cancelctx::{Context, Error, Instant, ManualClock};
use futures::stream::{self, FusedStream, Stream, StreamExt};
use futures::FutureExt;

mod common;
use common::{counting_waker, Tag};

/// A stream that records when it is dropped.
struct Tracked<S> {
    inner: S,
    dropped: Arc<AtomicBool>,
}

impl<S: Stream + Unpin> Stream for Tracked<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<S::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

#[test]
fn take_until_done_ends_and_drops_the_inner_stream_at_once() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let dropped = Arc::new(AtomicBool::new(false));
    let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
    let mut s = ctx.take_until_done(Tracked { inner: rx, dropped: dropped.clone() });
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);

    tx.unbounded_send(1).unwrap();
    assert_eq!(s.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
    assert_eq!(s.poll_next_unpin(&mut cx), Poll::Pending);
    assert!(!s.is_terminated());
    guard.cancel();
    assert!(counter.wakes() >= 1, "cancelling wakes the task waiting on the stream");
    tx.unbounded_send(2).unwrap();
    // The context wins over a ready item, and the inner stream is gone right away.
    assert_eq!(s.poll_next_unpin(&mut cx), Poll::Ready(None));
    assert!(dropped.load(SeqCst));
    assert!(s.is_terminated());
    assert_eq!(s.poll_next_unpin(&mut cx), Poll::Ready(None), "fused");
    assert_eq!(s.size_hint(), (0, Some(0)));
}

#[test]
fn take_until_done_passes_through_and_ends_with_the_inner_stream() {
    let ctx = Context::background();
    let s = ctx.take_until_done(stream::iter(1..=3));
    assert_eq!(s.size_hint(), (0, Some(3)));
    let items: Vec<u32> = futures::executor::block_on(s.collect());
    assert_eq!(items, [1, 2, 3]);

    let mut s = ctx.take_until_done(stream::iter([1]));
    assert_eq!(futures::executor::block_on(s.next()), Some(1));
    assert_eq!(futures::executor::block_on(s.next()), None);
    assert!(s.is_terminated());
}

#[test]
fn take_until_done_with_a_not_unpin_stream_and_a_deadline() {
    let clock = ManualClock::new();
    let (ctx, _g) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(1));
    let ticks = stream::unfold(0u32, |n| async move {
        let _not_unpin = std::marker::PhantomPinned;
        std::future::ready(()).await;
        Some((n, n + 1))
    });
    let mut s = pin!(ctx.take_until_done(ticks));
    futures::executor::block_on(async {
        assert_eq!(s.next().await, Some(0));
        assert_eq!(s.next().await, Some(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.next().await, None);
    });
    assert_eq!(s.context().err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_until_done_on_tokio_cancelled_from_a_thread() {
    let (ctx, guard) = Context::background().with_cancel();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let s = ctx.take_until_done(tokio_stream_from(rx));
    let reader = tokio::spawn(s.collect::<Vec<u32>>());
    tx.send(1).unwrap();
    std::thread::spawn(move || guard.cancel()).join().unwrap();
    let items = tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
    assert!(items.len() <= 1);
    drop(tx);
}

fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::UnboundedReceiver<T>) -> impl Stream<Item = T> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn timeout_returns_deadline_exceeded_when_time_runs_out() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let mut t = pin!(root.timeout(Duration::from_secs(2), std::future::pending::<u8>()));
    assert_eq!(t.context().deadline(), Some(Instant::from_nanos(2_000_000_000)));
    assert_eq!(t.as_mut().now_or_never(), None);
    clock.advance(Duration::from_secs(1));
    assert_eq!(t.as_mut().now_or_never(), None);
    clock.advance(Duration::from_secs(1));
    assert_eq!(t.as_mut().now_or_never(), Some(Err(Error::DeadlineExceeded)));
    assert!(futures::future::FusedFuture::is_terminated(&*t));
}

#[test]
fn timeout_returns_the_parent_error_if_the_parent_ends_first() {
    let clock = ManualClock::new();
    let (parent, guard) = Context::with_clock(clock.clone()).with_cancel();
    let t = parent.timeout(Duration::from_secs(2), std::future::pending::<()>());
    guard.cancel_with(Tag("parent"));
    assert_eq!(futures::executor::block_on(t), Err(Error::Canceled));
}

#[test]
fn timeout_output_and_released_timer() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let t = root.timeout(Duration::from_secs(2), async { 5 });
    assert_eq!(clock.pending_timers(), 1);
    assert_eq!(futures::executor::block_on(t), Ok(5));
    assert_eq!(clock.pending_timers(), 0, "finishing releases the deadline");

    let t = root.timeout_at(Instant::from_nanos(10), std::future::pending::<()>());
    assert_eq!(clock.pending_timers(), 1);
    drop(t);
    assert_eq!(clock.pending_timers(), 0, "dropping releases the deadline");
}

/// A `Timeout` that has finished (but is not dropped yet, as in a `select!` loop over fused
/// futures) has released its deadline: no timer stays armed. (Regression: the timer stayed
/// until the future was dropped.)
#[test]
fn a_finished_timeout_releases_its_timer_before_it_is_dropped() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (_, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);

    let mut t = pin!(root.timeout(Duration::from_secs(2), async { 5 }));
    assert_eq!(t.as_mut().poll(&mut cx), Poll::Ready(Ok(5)));
    assert!(futures::future::FusedFuture::is_terminated(&*t));
    assert_eq!(clock.pending_timers(), 0, "finishing releases the deadline");
    assert_eq!(t.context().err(), Some(Error::Canceled), "its context ended with it");

    let (parent, stop) = root.with_cancel();
    let mut t = pin!(parent.timeout(Duration::from_secs(2), std::future::pending::<()>()));
    assert!(t.as_mut().poll(&mut cx).is_pending());
    stop.cancel();
    assert_eq!(t.as_mut().poll(&mut cx), Poll::Ready(Err(Error::Canceled)));
    assert_eq!(clock.pending_timers(), 0, "ending with an error releases it too");
}

#[test]
fn timeout_drops_the_inner_future_when_time_runs_out() {
    struct DropFlag(Arc<AtomicUsize>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let drops = Arc::new(AtomicUsize::new(0));
    let flag = DropFlag(drops.clone());
    let mut t = pin!(root.timeout(Duration::from_secs(1), async move {
        let _flag = flag;
        std::future::pending::<()>().await;
    }));
    assert_eq!(t.as_mut().now_or_never(), None);
    clock.advance(Duration::from_secs(1));
    assert_eq!(t.as_mut().now_or_never(), Some(Err(Error::DeadlineExceeded)));
    assert_eq!(drops.load(SeqCst), 1, "dropped when the time ran out, not with the Timeout");
}

#[test]
fn try_timeout_without_a_clock() {
    let ctx = Context::unclocked();
    assert!(ctx.try_timeout(Duration::from_secs(1), async {}).is_err());
    assert!(ctx.try_timeout_at(Instant::MAX, async {}).is_err());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(ctx.timeout(Duration::from_secs(1), async {}));
    }));
    assert!(r.is_err(), "the panicking form panics without a clock");
}

#[tokio::test(start_paused = true)]
async fn timeout_on_tokio_paused_time() {
    let root = Context::with_clock(cancelctx::TokioClock::new());
    let start = tokio::time::Instant::now();
    let out = root.timeout(Duration::from_secs(5), std::future::pending::<()>()).await;
    assert_eq!(out, Err(Error::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_secs(5), "virtual time");
}

#[test]
fn timeout_on_smol_and_async_std_with_the_async_io_clock() {
    let clock = cancelctx::AsyncIoClock::new();
    let root = Context::with_clock(clock);
    let out = smol::block_on(root.timeout(Duration::from_millis(1), std::future::pending::<()>()));
    assert_eq!(out, Err(Error::DeadlineExceeded));
    let out = async_std::task::block_on(root.timeout(Duration::from_secs(60), async { 3 }));
    assert_eq!(out, Ok(3));
}

#[test]
fn timeout_on_futures_executor_with_the_std_clock() {
    let root = Context::background();
    let out = futures::executor::block_on(
        root.timeout(Duration::from_millis(1), std::future::pending::<()>()),
    );
    assert_eq!(out, Err(Error::DeadlineExceeded));
}

// -------------------------------------------------------------------------------------------
// Identity
// -------------------------------------------------------------------------------------------

#[test]
fn clones_are_equal_children_and_independent_contexts_are_not() {
    let (a, _ga) = Context::unclocked().with_cancel();
    let (b, _gb) = Context::unclocked().with_cancel();
    let v = a.with_value(1u8);
    let (linked, _gl) = a.with_linked(&b);
    assert_eq!(a, a.clone());
    assert_eq!(v, v.clone());
    assert_eq!(linked, linked.clone());
    assert_ne!(a, b);
    assert_ne!(a, v, "a value child is a different context");
    assert_ne!(a, linked);
    assert_ne!(a.without_cancel(), a.without_cancel());
    assert_eq!(Context::background(), Context::background());
    assert_eq!(Context::unclocked(), Context::unclocked());
    assert_ne!(Context::background(), Context::unclocked());
    let clock = ManualClock::new();
    assert_ne!(Context::with_clock(clock.clone()), Context::with_clock(clock));
}

#[test]
fn equality_is_stable_across_cancellation_and_usable_as_keys() {
    let (a, ga) = Context::unclocked().with_cancel();
    let (b, _gb) = a.with_cancel();
    let mut names = HashMap::new();
    names.insert(a.clone(), "a");
    names.insert(b.clone(), "b");
    names.insert(a.clone(), "a again");
    assert_eq!(names.len(), 2);
    ga.cancel();
    assert_eq!(names.get(&a), Some(&"a again"));
    assert_eq!(names.get(&b), Some(&"b"));
    let set: HashSet<Context> = [a.clone(), a.clone(), b.clone()].into_iter().collect();
    assert_eq!(set.len(), 2);
}
