//! Per-operation costs: `is_done()`, `err()`, creating and dropping a child (one thread and
//! two threads on one parent), `with_timeout` create + cancel, and `value()` lookups.
//!
//! Each group runs `cancelctx`, tokio-util's `CancellationToken` where it has the operation,
//! and a physical floor (`floor: ...`). Run with `cargo bench --bench ops`; set
//! `CANCELCTX_BENCH_QUICK=1` for a short run.

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Context as TaskContext;
use std::time::Duration;

use cancelctx::{Context, Error, ManualClock};
use criterion::{BenchmarkId, Criterion, Throughput};
use tokio_util::sync::CancellationToken;

/// `is_done()` on a live and on a done context, against tokio-util's `is_cancelled()` (a
/// mutex) and an `Acquire` load of an `AtomicBool` (inline, and behind an `Arc` as a context
/// handle is).
fn is_done(c: &mut Criterion) {
    for state in ["live", "done"] {
        let mut group = c.benchmark_group(format!("is_done_{state}"));
        let done = state == "done";

        let (parent, parent_guard) = Context::background().with_cancel();
        let (ctx, guard) = parent.with_cancel();
        if done {
            guard.cancel();
        }
        assert_eq!(ctx.is_done(), done);
        group.bench_function("cancelctx", |b| b.iter(|| black_box(&ctx).is_done()));

        let token = CancellationToken::new().child_token();
        if done {
            token.cancel();
        }
        group.bench_function("tokio-util", |b| b.iter(|| black_box(&token).is_cancelled()));

        let flag = AtomicBool::new(done);
        group.bench_function("floor: AtomicBool Acquire load", |b| {
            b.iter(|| black_box(&flag).load(Ordering::Acquire))
        });
        let arc_flag = Arc::new(AtomicBool::new(done));
        group.bench_function("floor: Arc<AtomicBool> Acquire load", |b| {
            b.iter(|| black_box(&arc_flag).load(Ordering::Acquire))
        });
        group.finish();
        drop((ctx, guard, parent, parent_guard));
    }
}

/// The same check in a polling loop: 64 `is_done()` calls on one handle per iteration
/// (reported per call). The `Acquire` loads keep the compiler from hoisting the handle's
/// loads out of the loop, so this is the per-check cost a `while !ctx.is_done()` loop pays.
fn is_done_loop(c: &mut Criterion) {
    const CALLS: u32 = 64;
    let mut group = c.benchmark_group("is_done_live_loop");
    group.throughput(Throughput::Elements(u64::from(CALLS)));

    let (parent, _parent_guard) = Context::background().with_cancel();
    let (ctx, _guard) = parent.with_cancel();
    group.bench_function("cancelctx", |b| {
        b.iter(|| {
            let ctx = black_box(&ctx);
            (0..CALLS).map(|_| u32::from(ctx.is_done())).sum::<u32>()
        })
    });
    let token = CancellationToken::new().child_token();
    group.bench_function("tokio-util", |b| {
        b.iter(|| {
            let token = black_box(&token);
            (0..CALLS).map(|_| u32::from(token.is_cancelled())).sum::<u32>()
        })
    });
    let flag = AtomicBool::new(false);
    group.bench_function("floor: AtomicBool Acquire load", |b| {
        b.iter(|| {
            let flag = black_box(&flag);
            (0..CALLS).map(|_| u32::from(flag.load(Ordering::Acquire))).sum::<u32>()
        })
    });
    let arc_flag = Arc::new(AtomicBool::new(false));
    group.bench_function("floor: Arc<AtomicBool> Acquire load", |b| {
        b.iter(|| {
            let flag = black_box(&arc_flag);
            (0..CALLS).map(|_| u32::from(flag.load(Ordering::Acquire))).sum::<u32>()
        })
    });
    group.finish();
}

/// `err()` (the error, not just a flag) on a live and a done context. tokio-util has no error,
/// so its row is `is_cancelled()`; the floor decodes an `AtomicU8` into `Option<Error>`.
fn err(c: &mut Criterion) {
    let mut group = c.benchmark_group("err");
    for state in ["live", "done"] {
        let done = state == "done";
        let (parent, _parent_guard) = Context::background().with_cancel();
        let (ctx, guard) = parent.with_cancel();
        if done {
            guard.cancel();
        }
        assert_eq!(ctx.err(), done.then_some(Error::Canceled));
        group.bench_function(BenchmarkId::new("cancelctx", state), |b| {
            b.iter(|| black_box(&ctx).err())
        });

        let token = CancellationToken::new();
        if done {
            token.cancel();
        }
        group.bench_function(BenchmarkId::new("tokio-util", state), |b| {
            b.iter(|| black_box(&token).is_cancelled())
        });

        let word = Arc::new(AtomicU8::new(u8::from(done)));
        group.bench_function(BenchmarkId::new("floor: Arc<AtomicU8> load + decode", state), |b| {
            b.iter(|| match black_box(&word).load(Ordering::Acquire) {
                0 => None,
                1 => Some(Error::Canceled),
                _ => Some(Error::DeadlineExceeded),
            })
        });
        drop(guard);
    }
    group.finish();
}

/// The operation a request handler does: make a cancellable child of a long-lived,
/// cancellable parent and drop it at the end (for `cancelctx` dropping the guard cancels).
fn child_create_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group("child_create_drop");

    let (parent, _parent_guard) = Context::background().with_cancel();
    group.bench_function("cancelctx", |b| {
        b.iter(|| {
            let (ctx, guard) = parent.with_cancel();
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });
    let bg = Context::background();
    group.bench_function("cancelctx (child of background: no link)", |b| {
        b.iter(|| {
            let (ctx, guard) = bg.with_cancel();
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });

    let token = CancellationToken::new();
    group.bench_function("tokio-util", |b| b.iter(|| drop(black_box(token.child_token()))));
    group.bench_function("tokio-util (drop_guard: cancel + drop)", |b| {
        b.iter(|| drop(black_box(token.child_token().drop_guard())))
    });

    group.bench_function("floor: Arc::new(AtomicBool)+drop", |b| {
        b.iter(|| drop(black_box(Arc::new(AtomicBool::new(false)))))
    });
    group.finish();
}

fn child_create_drop_2threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("child_create_drop_2threads");

    let (parent, _parent_guard) = Context::background().with_cancel();
    group.bench_function("cancelctx", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || {
                let (ctx, guard) = parent.with_cancel();
                black_box(&ctx);
                drop(guard);
                drop(ctx);
            })
        })
    });

    let token = CancellationToken::new();
    group.bench_function("tokio-util", |b| {
        b.iter_custom(|iters| common::two_threads(iters, || drop(black_box(token.child_token()))))
    });
    group.bench_function("tokio-util (drop_guard: cancel + drop)", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || drop(black_box(token.child_token().drop_guard())))
        })
    });

    group.bench_function("floor: Arc::new(AtomicBool)+drop", |b| {
        b.iter_custom(|iters| {
            common::two_threads(iters, || drop(black_box(Arc::new(AtomicBool::new(false)))))
        })
    });
    let shared = Arc::new(AtomicBool::new(false));
    group.bench_function("floor: shared Arc clone+drop", |b| {
        b.iter_custom(|iters| common::two_threads(iters, || drop(black_box(shared.clone()))))
    });
    group.finish();
}

/// `with_timeout` + cancel (drop the guard) on the std clock of `Context::background()`, as Go
/// measures `WithTimeout` + `cancel()`. tokio-util tokens have no timeouts; its row is a child
/// token plus a `tokio::time::sleep` registered on a current-thread runtime's timer wheel
/// (polled once, then dropped), which is how tokio code gets the same effect.
fn with_timeout(c: &mut Criterion) {
    let mut group = c.benchmark_group("with_timeout_create_cancel");
    let timeout = Duration::from_secs(3600);

    let bg = Context::background();
    // Start the std timer thread outside the measurement.
    drop(bg.with_timeout(timeout));
    group.bench_function("cancelctx", |b| {
        b.iter(|| {
            let (ctx, guard) = bg.with_timeout(timeout);
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });

    let (parent, _parent_guard) = bg.with_cancel();
    group.bench_function("cancelctx (child of a cancellable parent)", |b| {
        b.iter(|| {
            let (ctx, guard) = parent.with_timeout(timeout);
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });

    let manual = Context::with_clock(ManualClock::new());
    group.bench_function("cancelctx (ManualClock)", |b| {
        b.iter(|| {
            let (ctx, guard) = manual.with_timeout(timeout);
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });

    group.bench_function("cancelctx with_cancel (no timer)", |b| {
        b.iter(|| {
            let (ctx, guard) = bg.with_cancel();
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let token = CancellationToken::new();
    group.bench_function("tokio-util (child_token + tokio Sleep registered)", |b| {
        let _enter = rt.enter();
        let mut cx = TaskContext::from_waker(futures::task::noop_waker_ref());
        b.iter(|| {
            let child = token.child_token();
            let mut sleep = pin!(tokio::time::sleep(timeout));
            assert!(sleep.as_mut().poll(&mut cx).is_pending());
            black_box(&child);
            drop(child);
        })
    });
    group.finish();
}

/// `value::<T>()` where the value sits `depth` nodes up (depth 1: on the context itself). The
/// nodes in between alternate value nodes of another type and cancellable nodes. The floor is
/// the same walk over a minimal `Arc` linked list of `Option<Box<dyn Any>>` nodes.
fn value_lookup(c: &mut Criterion) {
    struct Target(u64);
    struct Other(#[allow(dead_code)] u64);

    struct ListNode {
        parent: Option<Arc<ListNode>>,
        value: Option<Box<dyn std::any::Any + Send + Sync>>,
    }

    fn lookup<T: 'static>(mut node: &ListNode) -> Option<&T> {
        loop {
            if let Some(v) = node.value.as_ref().and_then(|v| v.downcast_ref::<T>()) {
                return Some(v);
            }
            node = node.parent.as_deref()?;
        }
    }

    let mut group = c.benchmark_group("value_lookup");
    for depth in [1usize, 10, 100] {
        let mut guards = Vec::new();
        let mut ctx = Context::background().with_value(Target(7));
        for i in 1..depth {
            ctx = if i % 2 == 1 {
                ctx.with_value(Other(i as u64))
            } else {
                let (child, guard) = ctx.with_cancel();
                guards.push(guard);
                child
            };
        }
        assert_eq!(ctx.value::<Target>().map(|t| t.0), Some(7));
        group.bench_with_input(BenchmarkId::new("cancelctx", depth), &ctx, |b, ctx| {
            b.iter(|| black_box(ctx).value::<Target>().map(|t| t.0))
        });

        let mut node = Arc::new(ListNode { parent: None, value: Some(Box::new(Target(7))) });
        for i in 1..depth {
            let value: Option<Box<dyn std::any::Any + Send + Sync>> =
                if i % 2 == 1 { Some(Box::new(Other(i as u64))) } else { None };
            node = Arc::new(ListNode { parent: Some(node), value });
        }
        assert_eq!(lookup::<Target>(&node).map(|t| t.0), Some(7));
        group.bench_with_input(
            BenchmarkId::new("floor: Arc list walk + downcast", depth),
            &node,
            |b, node| b.iter(|| lookup::<Target>(black_box(node)).map(|t| t.0)),
        );
        // Long lists of plain `Arc`s drop recursively; these are at most 100 deep.
        drop(node);
        drop((ctx, guards));
    }
    group.finish();
}

fn main() {
    let mut c = common::config();
    is_done(&mut c);
    is_done_loop(&mut c);
    err(&mut c);
    child_create_drop(&mut c);
    child_create_drop_2threads(&mut c);
    with_timeout(&mut c);
    value_lookup(&mut c);
    c.final_summary();
}
