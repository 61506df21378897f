//! Waking waiters: one cancel waking 1, 100 and 10,000 async waiters, and a blocking
//! wake-up round trip (ping-pong) between two threads.
//!
//! Async waiters are registered in the untimed set-up by polling each future once with a
//! counting waker; the timed part is the one `cancel()` (or `notify`) that wakes them all.
//! The floor is event-listener (cancelctx's waiter list) notifying the same number of
//! listeners directly.
//!
//! Run with `cargo bench --bench wake`; `CANCELCTX_BENCH_QUICK=1` for a short run.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Condvar, Mutex, OnceLock};
use std::task::{Context as TaskContext, Waker};
use std::time::{Duration, Instant};

use cancelctx::{CancelGuard, Context, DoneOwned};
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use event_listener::{Event, Listener};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

fn poll_pending<F: Future + Unpin>(fut: &mut F, waker: &Waker) {
    let mut cx = TaskContext::from_waker(waker);
    assert!(Pin::new(fut).poll(&mut cx).is_pending(), "waiter resolved before the cancel");
}

type CtxSetup = (Context, CancelGuard, Vec<DoneOwned>);
type TokioSetup = (CancellationToken, Vec<Pin<Box<WaitForCancellationFutureOwned>>>);

fn setup_cancelctx(n: usize, waker: &Waker) -> CtxSetup {
    let (ctx, guard) = Context::background().with_cancel();
    let mut waiters: Vec<DoneOwned> = (0..n).map(|_| ctx.done_owned()).collect();
    for w in &mut waiters {
        poll_pending(w, waker);
    }
    (ctx, guard, waiters)
}

fn setup_tokio(n: usize, waker: &Waker) -> TokioSetup {
    let token = CancellationToken::new();
    // `WaitForCancellationFutureOwned` is `!Unpin` (an intrusive list entry): box it.
    let mut waiters: Vec<_> = (0..n).map(|_| Box::pin(token.clone().cancelled_owned())).collect();
    for w in &mut waiters {
        poll_pending(w, waker);
    }
    (token, waiters)
}

fn wake_async(c: &mut Criterion) {
    let mut group = c.benchmark_group("wake_async_waiters");
    for n in [1usize, 100, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        let size = if n <= 10 { BatchSize::SmallInput } else { BatchSize::PerIteration };
        let (waker, count) = common::count_waker();

        // Each implementation must wake every waiter exactly once.
        let before = count.count();
        let s = setup_cancelctx(n, &waker);
        s.1.cancel();
        assert_eq!(count.count() - before, n, "cancelctx woke the wrong number");
        let before = count.count();
        let s2 = setup_tokio(n, &waker);
        s2.0.cancel();
        assert_eq!(count.count() - before, n, "tokio-util woke the wrong number");
        let before = count.count();
        let s3 = common::listening_event(n, &waker);
        s3.0.notify(usize::MAX);
        assert_eq!(count.count() - before, n, "event-listener woke the wrong number");
        drop((s, s2, s3));

        group.bench_function(BenchmarkId::new("cancelctx", n), |b| {
            b.iter_batched(
                || setup_cancelctx(n, &waker),
                |s| {
                    s.1.cancel();
                    s
                },
                size,
            )
        });
        group.bench_function(BenchmarkId::new("tokio-util", n), |b| {
            b.iter_batched(
                || setup_tokio(n, &waker),
                |s| {
                    s.0.cancel();
                    s
                },
                size,
            )
        });
        common::bench_event_floor(&mut group, n, &waker, size);
    }
    group.finish();
}

/// A blocking one-shot signal per round `i`, fired on one thread and awaited on another.
trait Signal: Send + Sync {
    fn fire(&self, i: usize);
    fn wait(&self, i: usize);
}

struct CtxSignals {
    ctxs: Vec<Context>,
    guards: Vec<CancelGuard>,
}
impl CtxSignals {
    fn new(rounds: usize) -> Self {
        let (ctxs, guards) = (0..rounds).map(|_| Context::background().with_cancel()).unzip();
        CtxSignals { ctxs, guards }
    }
}
impl Signal for CtxSignals {
    fn fire(&self, i: usize) {
        self.guards[i].cancel();
    }
    fn wait(&self, i: usize) {
        self.ctxs[i].wait();
    }
}

struct TokioSignals(Vec<CancellationToken>);
impl Signal for TokioSignals {
    fn fire(&self, i: usize) {
        self.0[i].cancel();
    }
    fn wait(&self, i: usize) {
        // tokio-util has no blocking wait: park the thread on the future.
        futures::executor::block_on(self.0[i].cancelled());
    }
}

/// Floor: a `Mutex<usize>` round counter + `Condvar` per direction.
struct CondvarSignals {
    round: Mutex<usize>,
    cv: Condvar,
}
impl Signal for CondvarSignals {
    fn fire(&self, i: usize) {
        *self.round.lock().unwrap() = i + 1;
        self.cv.notify_one();
    }
    fn wait(&self, i: usize) {
        let mut round = self.round.lock().unwrap();
        while *round <= i {
            round = self.cv.wait(round).unwrap();
        }
    }
}

/// Floor: event-listener directly, with the check / listen / check / wait pattern.
struct EventSignals {
    round: AtomicU64,
    event: Event,
}
impl Signal for EventSignals {
    fn fire(&self, i: usize) {
        self.round.store(i as u64 + 1, Ordering::Release);
        self.event.notify(usize::MAX);
    }
    fn wait(&self, i: usize) {
        let i = i as u64;
        while self.round.load(Ordering::Acquire) <= i {
            let listener = self.event.listen();
            if self.round.load(Ordering::Acquire) > i {
                break;
            }
            listener.wait();
        }
    }
}

/// Floor: event-listener's listener awaited with `futures::executor::block_on` (a waker that
/// unparks the thread with `std::thread`'s futex parker) instead of `Listener::wait` (which
/// parks on the `parking` crate's `Mutex` + `Condvar`).
struct EventBlockOnSignals(EventSignals);
impl Signal for EventBlockOnSignals {
    fn fire(&self, i: usize) {
        self.0.fire(i);
    }
    fn wait(&self, i: usize) {
        let i = i as u64;
        while self.0.round.load(Ordering::Acquire) <= i {
            let listener = self.0.event.listen();
            if self.0.round.load(Ordering::Acquire) > i {
                break;
            }
            futures::executor::block_on(listener);
        }
    }
}

/// Floor: `thread::park` / `unpark` on a round counter.
struct ParkSignals {
    round: AtomicU64,
    waiter: OnceLock<std::thread::Thread>,
}
impl Signal for ParkSignals {
    fn fire(&self, i: usize) {
        self.round.store(i as u64 + 1, Ordering::Release);
        if let Some(t) = self.waiter.get() {
            t.unpark();
        }
    }
    fn wait(&self, i: usize) {
        self.waiter.get_or_init(std::thread::current);
        while self.round.load(Ordering::Acquire) <= i as u64 {
            std::thread::park();
        }
    }
}

/// `iters` round trips: this thread fires `ping[i]` and waits for `pong[i]`; the other thread
/// waits for `ping[i]` and fires `pong[i]`. Returns the time of all round trips.
fn ping_pong<S: Signal>(iters: u64, ping: S, pong: S) -> Duration {
    ping_pong_on(None, iters, ping, pong)
}

/// `ping_pong`, with both threads pinned to `cpu` if given.
fn ping_pong_on<S: Signal>(cpu: Option<usize>, iters: u64, ping: S, pong: S) -> Duration {
    let pinned = |f: &mut dyn FnMut() -> Duration| match cpu {
        None => f(),
        Some(cpu) => on_one_cpu(cpu, f).expect("pinning works here (checked before the rows)"),
    };
    let rounds = iters as usize;
    let barrier = Barrier::new(2);
    pinned(&mut || {
        std::thread::scope(|s| {
            s.spawn(|| {
                pinned(&mut || {
                    barrier.wait();
                    for i in 0..rounds {
                        ping.wait(i);
                        pong.fire(i);
                    }
                    Duration::ZERO
                })
            });
            barrier.wait();
            let start = Instant::now();
            for i in 0..rounds {
                ping.fire(i);
                pong.wait(i);
            }
            start.elapsed()
        })
    })
}

/// Runs `f` on the calling thread pinned to one CPU (the first it may run on), then restores
/// its affinity: the one-CPU rows run both threads of the round trip on the same CPU, so
/// every wake-up is a context switch. `None` where pinning is unavailable (not Linux).
#[cfg(target_os = "linux")]
fn on_one_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> Option<T> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `cpu_set_t` is plain data (all-zero is the empty set); the libc calls get a
    // valid pointer and its size, and act on the calling thread (pid 0).
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut old) != 0 {
            return None;
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            return None;
        }
        let result = f();
        libc::sched_setaffinity(0, size, &old);
        Some(result)
    }
}

#[cfg(not(target_os = "linux"))]
fn on_one_cpu<T>(_cpu: usize, _f: impl FnOnce() -> T) -> Option<T> {
    None
}

/// The first CPU this thread may run on.
#[cfg(target_os = "linux")]
fn first_cpu() -> usize {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: as in `on_one_cpu`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut set) != 0 {
            return 0;
        }
        (0..libc::CPU_SETSIZE as usize).find(|&cpu| libc::CPU_ISSET(cpu, &set)).unwrap_or(0)
    }
}

#[cfg(not(target_os = "linux"))]
fn first_cpu() -> usize {
    0
}

/// The one-CPU rows: cancelctx, tokio-util and the park/unpark floor.
fn blocking_ping_pong_one_cpu(group: &mut criterion::BenchmarkGroup<'_, WallTime>) {
    let cpu = first_cpu();
    if on_one_cpu(cpu, || ()).is_none() {
        return; // no pinning here: the rows are left out
    }
    group.bench_function("cancelctx (one CPU)", |b| {
        b.iter_custom(|iters| {
            let n = iters as usize;
            ping_pong_on(Some(cpu), iters, CtxSignals::new(n), CtxSignals::new(n))
        })
    });
    group.bench_function("tokio-util (block_on(cancelled())) (one CPU)", |b| {
        b.iter_custom(|iters| {
            let make = || TokioSignals((0..iters).map(|_| CancellationToken::new()).collect());
            ping_pong_on(Some(cpu), iters, make(), make())
        })
    });
    group.bench_function("floor: park/unpark (one CPU)", |b| {
        b.iter_custom(|iters| {
            let make = || ParkSignals { round: AtomicU64::new(0), waiter: OnceLock::new() };
            ping_pong_on(Some(cpu), iters, make(), make())
        })
    });
}

fn blocking_ping_pong(c: &mut Criterion) {
    let mut group = c.benchmark_group("blocking_wake_round_trip");
    group.bench_function("cancelctx", |b| {
        b.iter_custom(|iters| {
            let n = iters as usize;
            ping_pong(iters, CtxSignals::new(n), CtxSignals::new(n))
        })
    });
    group.bench_function("tokio-util (block_on(cancelled()))", |b| {
        b.iter_custom(|iters| {
            let make = || TokioSignals((0..iters).map(|_| CancellationToken::new()).collect());
            ping_pong(iters, make(), make())
        })
    });
    group.bench_function("floor: event-listener wait/notify", |b| {
        b.iter_custom(|iters| {
            let make = || EventSignals { round: AtomicU64::new(0), event: Event::new() };
            ping_pong(iters, make(), make())
        })
    });
    group.bench_function("floor: event-listener via block_on (std park)", |b| {
        b.iter_custom(|iters| {
            let make = || {
                EventBlockOnSignals(EventSignals { round: AtomicU64::new(0), event: Event::new() })
            };
            ping_pong(iters, make(), make())
        })
    });
    group.bench_function("floor: Mutex+Condvar", |b| {
        b.iter_custom(|iters| {
            let make = || CondvarSignals { round: Mutex::new(0), cv: Condvar::new() };
            ping_pong(iters, make(), make())
        })
    });
    group.bench_function("floor: park/unpark", |b| {
        b.iter_custom(|iters| {
            let make = || ParkSignals { round: AtomicU64::new(0), waiter: OnceLock::new() };
            ping_pong(iters, make(), make())
        })
    });
    blocking_ping_pong_one_cpu(&mut group);
    group.finish();
}

fn main() {
    let mut c = common::config();
    wake_async(&mut c);
    blocking_ping_pong(&mut c);
    c.final_summary();
}
