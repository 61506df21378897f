//! Shared set-up for the criterion benches: run-length configuration (full or quick), a
//! counting waker, and where results go.
//!
//! Every group puts `cancelctx` and its peers side by side so that `scripts/bench-table.py`
//! can print ratios: the row named exactly `cancelctx` is the subject, `tokio-util` the peer,
//! and rows starting with `floor:` are physical floors (what the hardware and allocator cost
//! without any cancellation logic).
#![allow(dead_code)] // each bench binary uses a different part of this module

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion};
use event_listener::{Event, EventListener};

/// `CANCELCTX_BENCH_QUICK=1` (or criterion's own `--quick`) makes the whole `cargo bench`
/// run take under two minutes: few samples, short warm-up, smaller trees where it matters.
pub fn quick() -> bool {
    let env = std::env::var("CANCELCTX_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    env || std::env::args().any(|a| a == "--quick")
}

/// `true` under `cargo bench` (which passes `--bench`); `false` when `cargo test --benches`
/// runs each case once as a smoke test, where the biggest inputs are scaled down.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The criterion configuration of every bench binary; command-line flags still override it.
pub fn config() -> Criterion {
    let c = Criterion::default().without_plots();
    let c = if quick() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(50))
            .measurement_time(Duration::from_millis(150))
    } else {
        c.sample_size(50)
            .warm_up_time(Duration::from_millis(1000))
            .measurement_time(Duration::from_millis(2500))
    };
    c.configure_from_args()
}

/// A waker that counts its wake-ups; every clone shares the count (one `Arc`, as a real
/// executor's task waker would be).
pub struct CountWaker(AtomicUsize);

impl Wake for CountWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A counting waker and its counter.
pub fn count_waker() -> (Waker, Arc<CountWaker>) {
    let count = Arc::new(CountWaker(AtomicUsize::new(0)));
    (Waker::from(count.clone()), count)
}

impl CountWaker {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `op` `iters` times on each of two threads released together by a barrier, and
/// returns the wall time divided by two: the reported time is wall time per operation over
/// all operations of both threads (Go's `RunParallel` convention with `GOMAXPROCS=2`; a
/// thread's own latency per operation is twice that).
pub fn two_threads(iters: u64, op: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let (a, b) = std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            (start, Instant::now())
        };
        let other = s.spawn(run);
        let mine = run();
        (mine, other.join().expect("bench thread panicked"))
    });
    let wall = a.1.max(b.1) - a.0.min(b.0);
    wall / 2
}

/// `target/criterion` (or `$CRITERION_HOME`), found from this bench executable's path
/// (`target/release/deps/<bench>-<hash>`), where non-criterion results are written too.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("criterion");
    }
    let exe = std::env::current_exe().expect("current_exe");
    match exe.ancestors().nth(3) {
        Some(target) => target.join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

/// `n` event-listener listeners, each polled once with `waker` (all pending): the set-up of
/// the floor in the "wake `n` waiters" groups.
pub fn listening_event(n: usize, waker: &Waker) -> (Event, Vec<EventListener>) {
    let event = Event::new();
    let mut listeners: Vec<EventListener> = (0..n).map(|_| event.listen()).collect();
    let mut cx = std::task::Context::from_waker(waker);
    for l in &mut listeners {
        let pending = std::future::Future::poll(std::pin::Pin::new(l), &mut cx).is_pending();
        assert!(pending, "listener resolved before the notify");
    }
    (event, listeners)
}

/// The floor row of a "wake `n` waiters" group: event-listener (the waiter list cancelctx
/// builds on) notifying `n` listeners directly.
pub fn bench_event_floor(
    group: &mut BenchmarkGroup<'_, WallTime>,
    n: usize,
    waker: &Waker,
    size: BatchSize,
) {
    group.bench_function(BenchmarkId::new("floor: event-listener notify(usize::MAX)", n), |b| {
        b.iter_batched(
            || listening_event(n, waker),
            |s| {
                s.0.notify(usize::MAX);
                s
            },
            size,
        )
    });
}
