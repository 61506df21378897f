//! `WaitGroup`: counting one unit (`add` + drop) and waking 1, 100 and 10,000 async
//! `wait()`ers, side by side with tokio-util's `TaskTracker` and physical floors.
//!
//! - `wait_group_add_drop`: `wg.add()` + drop of the guard, and `wg.track(ready)` + drop;
//!   tokio-util `TaskTracker::track_future(ready)` + drop (and `token()` + drop); the floor
//!   is a plain atomic counter (`fetch_add` + `fetch_sub`).
//! - `wait_group_wake_waiters`: `n` waiters are registered in the untimed set-up (each polled
//!   once with a counting waker); the timed part is dropping the last unit (cancelctx) or
//!   token (tokio-util, on a closed tracker), which wakes them all. The floor is
//!   event-listener notifying `n` listeners directly.
//!
//! Run with `cargo bench --bench groups`; `CANCELCTX_BENCH_QUICK=1` for a short run.

mod common;

use std::future::{ready, Future};
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Waker};

use cancelctx::{WaitGroup, WaitGuard};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

fn add_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group("wait_group_add_drop");
    let wg = WaitGroup::new();
    group.bench_function("cancelctx", |b| b.iter(|| drop(black_box(wg.add()))));
    group.bench_function("cancelctx track(ready)", |b| {
        b.iter(|| drop(black_box(wg.track(ready(())))))
    });
    let tracker = TaskTracker::new();
    group.bench_function("tokio-util", |b| {
        b.iter(|| drop(black_box(tracker.track_future(ready(())))))
    });
    group.bench_function("tokio-util token()", |b| b.iter(|| drop(black_box(tracker.token()))));
    let counter = AtomicUsize::new(0);
    group.bench_function("floor: atomic fetch_add + fetch_sub", |b| {
        b.iter(|| {
            black_box(&counter).fetch_add(1, Ordering::Relaxed);
            black_box(&counter).fetch_sub(1, Ordering::Release);
        })
    });
    group.finish();
}

type Waiter = Pin<Box<dyn Future<Output = ()> + Send>>;

fn poll_pending(fut: &mut Waiter, waker: &Waker) {
    let mut cx = TaskContext::from_waker(waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending(), "waiter resolved before the wake");
}

fn setup_cancelctx(n: usize, waker: &Waker) -> (WaitGuard, Vec<Waiter>) {
    let wg = WaitGroup::new();
    let unit = wg.add();
    let mut waiters: Vec<Waiter> = (0..n)
        .map(|_| {
            let wg = wg.clone();
            Box::pin(async move { wg.wait().await }) as Waiter
        })
        .collect();
    for w in &mut waiters {
        poll_pending(w, waker);
    }
    (unit, waiters)
}

fn setup_tokio(n: usize, waker: &Waker) -> (TaskTrackerToken, Vec<Waiter>) {
    let tracker = TaskTracker::new();
    let token = tracker.token();
    tracker.close(); // `wait` resolves once the tracker is closed and empty
    let mut waiters: Vec<Waiter> = (0..n)
        .map(|_| {
            let tracker = tracker.clone();
            Box::pin(async move { tracker.wait().await }) as Waiter
        })
        .collect();
    for w in &mut waiters {
        poll_pending(w, waker);
    }
    (token, waiters)
}

fn wake_waiters(c: &mut Criterion) {
    let mut group = c.benchmark_group("wait_group_wake_waiters");
    let sizes: &[usize] = if common::bench_mode() { &[1, 100, 10_000] } else { &[1, 100] };
    for &n in sizes {
        group.throughput(Throughput::Elements(n as u64));
        let size = if n <= 10 { BatchSize::SmallInput } else { BatchSize::PerIteration };
        let (waker, count) = common::count_waker();

        // Each implementation must wake every waiter exactly once.
        let before = count.count();
        let s = setup_cancelctx(n, &waker);
        drop(s.0);
        assert_eq!(count.count() - before, n, "cancelctx woke the wrong number");
        let before = count.count();
        let s2 = setup_tokio(n, &waker);
        drop(s2.0);
        assert_eq!(count.count() - before, n, "tokio-util woke the wrong number");
        let before = count.count();
        let s3 = common::listening_event(n, &waker);
        s3.0.notify(usize::MAX);
        assert_eq!(count.count() - before, n, "event-listener woke the wrong number");
        drop((s.1, s2.1, s3));

        group.bench_function(BenchmarkId::new("cancelctx", n), |b| {
            b.iter_batched(
                || setup_cancelctx(n, &waker),
                |(unit, waiters)| {
                    drop(unit);
                    waiters
                },
                size,
            )
        });
        group.bench_function(BenchmarkId::new("tokio-util", n), |b| {
            b.iter_batched(
                || setup_tokio(n, &waker),
                |(token, waiters)| {
                    drop(token);
                    waiters
                },
                size,
            )
        });
        common::bench_event_floor(&mut group, n, &waker, size);
    }
    group.finish();
}

fn main() {
    let mut c = common::config();
    add_drop(&mut c);
    wake_waiters(&mut c);
    c.final_summary();
}
