//! A port of Go's own context benchmarks (`$GOROOT/src/context/benchmark_test.go`, plus
//! `ErrOK` / `ErrCanceled` from newer Go releases), same shapes and parameters, so that each
//! row compares directly with `go test -bench . context` on the same machine.
//! `scripts/go-side-by-side.sh` runs both and writes the table into BENCHMARKS.md.
//!
//! Every criterion group is `go/<Go benchmark name>`, the parameter is the rest of Go's
//! sub-benchmark path (`depth=10/Root=OpenCanceler`), and the function is the implementation:
//! `cancelctx` is the port, other rows are the closest tokio-util shape where it has one.
//!
//! How Go's constructs map:
//! - `b.RunParallel` with `GOMAXPROCS=2` becomes [`common::two_threads`]: two threads run
//!   the body, and the time per operation is wall time / all operations of both threads,
//!   Go's convention.
//! - `cancel()` is [`CancelGuard::cancel`]; a `CancelFunc` that Go discards without calling
//!   (`buildContextTree`) is a [`CancelGuard::detach`]ed guard.
//! - Go's garbage collector frees discarded contexts later, outside the loop body as far as
//!   the code reads (its cost still shows up in ns/op); here each iteration drops what it made,
//!   inside the measurement.
//! - Go's `ctx.Value(-1)` (a key no node holds, so the walk reaches the root) is
//!   `ctx.value::<Missing>()` over a chain of value nodes of another type: keys are types here.
//! - `go func() { ... }()` + `WaitGroup` (`DeepValueNewGoRoutine`): Rust has no goroutines.
//!   The `cancelctx` row spawns a task on a current-thread tokio runtime and blocks on its
//!   `JoinHandle`: the new task runs on the waiting thread, as Go's scheduler usually runs the
//!   new goroutine on the P its parent leaves when it blocks in `wg.Wait()`. Two more rows
//!   spawn the task on a two-worker tokio runtime (a cross-thread wake-up each way) and an OS
//!   thread per operation. All of them measure the spawn far more than the lookup, as Go's
//!   does.
//!
//! Run with `cargo bench --bench go_suite`; `CANCELCTX_BENCH_QUICK=1` for a short run.

mod common;

use std::hint::black_box;

use cancelctx::{CancelGuard, Context, Error};
use criterion::{BenchmarkId, Criterion};
use tokio_util::sync::CancellationToken;

/// Go's busy loop between create and cancel in `BenchmarkCommonParentCancel`
/// (`for i := 0; i < 100; i++ { x /= x + 1 }`): 100 dependent integer divisions. `x` starts
/// from `black_box` so the compiler cannot fold the loop.
#[inline(always)]
fn go_busy(x: i64) -> i64 {
    let mut x = x;
    for _ in 0..100 {
        x /= x + 1;
    }
    x
}

/// `BenchmarkCommonParentCancel`: under `RunParallel`, a child of one shared cancellable
/// parent (under a value node), a value lookup through it, busy work, cancel, busy work.
fn common_parent_cancel(c: &mut Criterion) {
    struct Key(&'static str);
    let mut group = c.benchmark_group("go/CommonParentCancel");

    let root = Context::background().with_value(Key("value"));
    let (shared, shared_guard) = root.with_cancel();
    group.bench_function("cancelctx", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || {
                let (ctx, cancel) = shared.with_cancel();
                if ctx.value::<Key>().map(|k| k.0) != Some("value") {
                    panic!("should not be reached");
                }
                let x = go_busy(black_box(0));
                cancel.cancel();
                black_box(go_busy(x));
            })
        })
    });
    drop(shared_guard);

    // What the 200 divisions alone cost in this shape, so that the context's share of the
    // figure can be read off (Go's figure includes the same loop).
    group.bench_function("floor: busy work only", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || {
                let x = go_busy(black_box(0));
                black_box(go_busy(x));
            })
        })
    });

    // tokio-util has no values: the same shape without the lookup.
    let shared = CancellationToken::new();
    group.bench_function("tokio-util (no value lookup)", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || {
                let child = shared.child_token();
                let x = go_busy(black_box(0));
                child.cancel();
                black_box(go_busy(x));
            })
        })
    });
    group.finish();
}

/// `BenchmarkWithTimeout/concurrency=N`: with N one-hour timeouts already pending (made on
/// two threads, N/2 each, as Go makes them on `GOMAXPROCS` goroutines), each operation of the
/// `RunParallel` body creates ten `with_timeout(1h)` contexts on the std clock and cancels
/// them: the figure is per ten pairs, as Go's.
fn with_timeout(c: &mut Criterion) {
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    let mut group = c.benchmark_group("go/WithTimeout");
    let root = Context::background();
    // Start the std clock's timer thread outside any measurement.
    drop(root.with_timeout(HOUR));

    let mut concurrency = 40;
    while concurrency <= 400_000 {
        // `cargo test --benches` runs each case once, unoptimized: keep that smoke test small.
        if concurrency > 4_000 && !common::bench_mode() {
            break;
        }
        let per_thread = concurrency / 2;
        let pending: Vec<Vec<CancelGuard>> = std::thread::scope(|s| {
            let makers: Vec<_> = (0..2)
                .map(|_| s.spawn(|| (0..per_thread).map(|_| root.with_timeout(HOUR).1).collect()))
                .collect();
            makers.into_iter().map(|h| h.join().expect("setup thread panicked")).collect()
        });
        group.bench_function(
            BenchmarkId::new("cancelctx", format!("concurrency={concurrency}")),
            |b| {
                b.iter_custom(|iters| {
                    common::two_threads(iters, || {
                        let guards: [CancelGuard; 10] =
                            std::array::from_fn(|_| root.with_timeout(HOUR).1);
                        for guard in guards {
                            guard.cancel();
                        }
                    })
                })
            },
        );
        drop(pending); // cancels them all, as Go's cleanup calls every CancelFunc
        concurrency *= 100;
    }
    group.finish();
}

/// `BenchmarkCancelTree/depth=N/Root=...`: a chain of `depth` cancellable contexts whose
/// cancel functions are discarded (detached guards), on `Background`, under a live parent that
/// is then cancelled (`OpenCanceler`), or under an already cancelled parent (`ClosedCanceler`).
fn cancel_tree(c: &mut Criterion) {
    fn build_context_tree(root: &Context, depth: usize) -> Context {
        let mut ctx = root.clone();
        for _ in 0..depth {
            let (child, cancel) = ctx.with_cancel();
            cancel.detach();
            ctx = child;
        }
        ctx
    }
    // tokio-util drops a token's node from the tree when its last handle goes (its children
    // move up to its parent), so every token of the chain is kept until the end of the
    // iteration, in a vector allocated once outside the measurement.
    fn build_token_tree(root: &CancellationToken, depth: usize, keep: &mut Vec<CancellationToken>) {
        let mut token = root.clone();
        for _ in 0..depth {
            let child = token.child_token();
            keep.push(token);
            token = child;
        }
        keep.push(token);
    }

    let mut group = c.benchmark_group("go/CancelTree");
    for depth in [1usize, 10, 100, 1000] {
        let id = |impl_name: &str, root: &str| {
            BenchmarkId::new(impl_name, format!("depth={depth}/Root={root}"))
        };
        group.bench_function(id("cancelctx", "Background"), |b| {
            b.iter(|| drop(black_box(build_context_tree(&Context::background(), depth))))
        });
        group.bench_function(id("cancelctx", "OpenCanceler"), |b| {
            b.iter(|| {
                let (ctx, cancel) = Context::background().with_cancel();
                let leaf = black_box(build_context_tree(&ctx, depth));
                cancel.cancel();
                drop((leaf, ctx));
            })
        });
        group.bench_function(id("cancelctx", "ClosedCanceler"), |b| {
            b.iter(|| {
                let (ctx, cancel) = Context::background().with_cancel();
                cancel.cancel();
                drop(black_box(build_context_tree(&ctx, depth)));
            })
        });

        // tokio-util has no Background: a fresh root token takes the first `WithCancel`'s
        // place, so the chain below it is one shorter.
        let mut keep = Vec::with_capacity(depth + 1);
        group.bench_function(id("tokio-util", "Background"), |b| {
            b.iter(|| {
                build_token_tree(&CancellationToken::new(), depth - 1, &mut keep);
                black_box(&keep);
                keep.clear();
            })
        });
        group.bench_function(id("tokio-util", "OpenCanceler"), |b| {
            b.iter(|| {
                let root = CancellationToken::new();
                build_token_tree(&root, depth, &mut keep);
                root.cancel();
                keep.clear();
            })
        });
        group.bench_function(id("tokio-util", "ClosedCanceler"), |b| {
            b.iter(|| {
                let root = CancellationToken::new();
                root.cancel();
                build_token_tree(&root, depth, &mut keep);
                black_box(&keep);
                keep.clear();
            })
        });
    }
    group.finish();
}

/// `BenchmarkCheckCanceled/Err` and `/Done` (a non-blocking `select` on `Done()`) on a
/// cancelled context.
fn check_canceled(c: &mut Criterion) {
    let mut group = c.benchmark_group("go/CheckCanceled");
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    group
        .bench_function(BenchmarkId::new("cancelctx", "Err"), |b| b.iter(|| black_box(&ctx).err()));
    group.bench_function(BenchmarkId::new("cancelctx", "Done"), |b| {
        b.iter(|| black_box(&ctx).is_done())
    });
    let token = CancellationToken::new();
    token.cancel();
    group.bench_function(BenchmarkId::new("tokio-util (is_cancelled)", "Done"), |b| {
        b.iter(|| black_box(&token).is_cancelled())
    });
    group.finish();
}

/// `BenchmarkContextCancelDone`: a non-blocking `select` on a live context's `Done()` under
/// `RunParallel`.
fn context_cancel_done(c: &mut Criterion) {
    let mut group = c.benchmark_group("go/ContextCancelDone");
    let (ctx, _cancel) = Context::background().with_cancel();
    group.bench_function("cancelctx", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || {
                black_box(black_box(&ctx).is_done());
            })
        })
    });
    let token = CancellationToken::new();
    group.bench_function("tokio-util (is_cancelled)", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || {
                black_box(black_box(&token).is_cancelled());
            })
        })
    });
    group.finish();
}

/// Keys are types here: Go's chain of `WithValue(ctx, i, i)` is a chain of `Present` values,
/// and its `ctx.Value(-1)` (absent, so the walk reaches the root) is `value::<Missing>()`.
struct Present(#[allow(dead_code)] usize);
struct Missing;

const VALUE_DEPTHS: [usize; 5] = [10, 20, 30, 50, 100];

fn value_chain(depth: usize) -> Context {
    let mut ctx = Context::background();
    for i in 0..depth {
        ctx = ctx.with_value(Present(i));
    }
    ctx
}

/// `BenchmarkDeepValueNewGoRoutine/depth=N`: the missing-key lookup on a new goroutine,
/// waited for. See the module docs for the Rust forms.
fn deep_value_new_goroutine(c: &mut Criterion) {
    let mut group = c.benchmark_group("go/DeepValueNewGoRoutine");
    let local = tokio::runtime::Builder::new_current_thread().build().expect("tokio runtime");
    let pool = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    for depth in VALUE_DEPTHS {
        let ctx = value_chain(depth);
        let param = format!("depth={depth}");
        let spawn_and_wait = |rt: &tokio::runtime::Runtime| {
            let ctx = ctx.clone();
            rt.block_on(rt.spawn(async move {
                black_box(ctx.value::<Missing>().is_some());
            }))
            .expect("lookup task panicked")
        };
        group.bench_function(BenchmarkId::new("cancelctx", &param), |b| {
            b.iter(|| spawn_and_wait(&local))
        });
        group.bench_function(
            BenchmarkId::new("cancelctx (task on a 2-worker tokio runtime)", &param),
            |b| b.iter(|| spawn_and_wait(&pool)),
        );
        group.bench_function(BenchmarkId::new("cancelctx (OS thread per op)", &param), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    s.spawn(|| black_box(ctx.value::<Missing>().is_some()));
                })
            })
        });
    }
    group.finish();
}

/// `BenchmarkDeepValueSameGoRoutine/depth=N`: the missing-key lookup in place.
fn deep_value_same_goroutine(c: &mut Criterion) {
    let mut group = c.benchmark_group("go/DeepValueSameGoRoutine");
    for depth in VALUE_DEPTHS {
        let ctx = value_chain(depth);
        assert!(ctx.value::<Missing>().is_none() && ctx.value::<Present>().is_some());
        group.bench_function(BenchmarkId::new("cancelctx", format!("depth={depth}")), |b| {
            b.iter(|| black_box(&ctx).value::<Missing>().is_some())
        });
    }
    group.finish();
}

/// `BenchmarkErrOK` and `BenchmarkErrCanceled` (newer Go releases; Debian's Go 1.19 lacks
/// them): `ctx.Err()` on a live and on a cancelled context, checked.
fn err(c: &mut Criterion) {
    let (live, _live_cancel) = Context::background().with_cancel();
    let mut group = c.benchmark_group("go/ErrOK");
    group.bench_function("cancelctx", |b| {
        b.iter(|| {
            if let Some(e) = black_box(&live).err() {
                panic!("ctx.err() = {e:?}");
            }
        })
    });
    group.finish();
    let (done, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let mut group = c.benchmark_group("go/ErrCanceled");
    group.bench_function("cancelctx", |b| {
        b.iter(|| {
            if black_box(&done).err() != Some(Error::Canceled) {
                panic!("ctx.err() = {:?}", done.err());
            }
        })
    });
    group.finish();
}

fn main() {
    let mut c = common::config();
    common_parent_cancel(&mut c);
    with_timeout(&mut c);
    cancel_tree(&mut c);
    check_canceled(&mut c);
    context_cancel_done(&mut c);
    deep_value_new_goroutine(&mut c);
    deep_value_same_goroutine(&mut c);
    err(&mut c);
    c.final_summary();
}
