//! Linked contexts and the tokio-util bridges: what a link costs to make and drop, next to a
//! one-parent child, the closest tokio-util construction, and the allocator floor.
//!
//! `cargo bench --features tokio-util --bench linked` (`CANCELCTX_BENCH_QUICK=1` for a short
//! run; without the feature only the linked group runs).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::Context as TaskContext;

use cancelctx::Context;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio_util::sync::CancellationToken;

mod common;

/// `with_linked` create + drop under two long-lived parents (`other` keeps its list of links
/// at its high-water mark, as a long-lived server context does).
fn linked_create_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group("linked_create_drop");
    let (parent, _pg) = Context::background().with_cancel();
    let (other, _og) = Context::background().with_cancel();
    group.bench_function("cancelctx", |b| {
        b.iter(|| {
            let (ctx, guard) = parent.with_linked(&other);
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });
    group.bench_function("cancelctx with_cancel (one parent, for scale)", |b| {
        b.iter(|| {
            let (ctx, guard) = parent.with_cancel();
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });
    // tokio-util has no linked tokens: the usual way is a child token of one parent plus a
    // registration on the other (its `cancelled_owned()` polled once, as a select would).
    let token = CancellationToken::new();
    let other_token = CancellationToken::new();
    let (waker, _count) = common::count_waker();
    group.bench_function("tokio-util", |b| {
        b.iter(|| {
            let child = token.child_token();
            let mut wait = pin!(other_token.clone().cancelled_owned());
            let _ = wait.as_mut().poll(&mut TaskContext::from_waker(&waker));
            black_box(&child);
        })
    });
    group.bench_function("floor: Arc::new(AtomicBool)+drop", |b| {
        b.iter(|| drop(black_box(Arc::new(AtomicBool::new(false)))))
    });
    group.finish();
}

/// The bridges: a context following a token, and a token following a context (feature
/// `tokio-util`; without it this group is empty).
#[cfg(feature = "tokio-util")]
fn bridge_create_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group("bridge_create_drop");
    let token = CancellationToken::new();
    let bg = Context::background();
    group.bench_function("cancelctx with_token", |b| {
        b.iter(|| {
            let (ctx, guard) = bg.with_token(&token);
            black_box(&ctx);
            drop(guard);
            drop(ctx);
        })
    });
    let (ctx, _g) = Context::background().with_cancel();
    group.bench_function("cancelctx cancellation_token", |b| {
        b.iter(|| drop(black_box(ctx.cancellation_token())))
    });
    group.bench_function("tokio-util child_token", |b| {
        b.iter(|| drop(black_box(token.child_token())))
    });
    group.finish();
}

#[cfg(not(feature = "tokio-util"))]
fn bridge_create_drop(_: &mut Criterion) {}

criterion_group! {
    name = benches;
    config = common::config();
    targets = linked_create_drop, bridge_create_drop
}
criterion_main!(benches);
