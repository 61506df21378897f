//! The `tokio-util` bridges: `Context::with_token` and `Context::cancellation_token`.
//! The million-link memory checks are in `tests/memory.rs`.
#![cfg(feature = "tokio-util")]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use cancelctx::{BoundToken, Context, Error, ManualClock, TokenCancelled};
use tokio_util::sync::CancellationToken;

mod common;
use common::Tag;

const BOUND: Duration = Duration::from_secs(10);

static_assertions::assert_impl_all!(BoundToken: Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(TokenCancelled: Send, Sync, std::fmt::Debug, std::error::Error);

#[track_caller]
fn assert_token_cancelled(ctx: &Context) {
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(ctx.cause().unwrap().is::<TokenCancelled>(), "{:?}", ctx.cause());
}

#[test]
fn token_cancel_ends_the_child_before_cancel_returns() {
    let token = CancellationToken::new();
    let (parent, _gp) = Context::unclocked().with_value(1u8).with_cancel();
    let (ctx, _g) = parent.with_token(&token);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let _h = ctx.after_func(move || {
        r.fetch_add(1, SeqCst);
    });
    assert!(!ctx.is_done());
    token.cancel();
    assert_token_cancelled(&ctx);
    assert_eq!(runs.load(SeqCst), 1);
    assert!(!parent.is_done());
    assert_eq!(ctx.value::<u8>(), Some(&1));
}

#[test]
fn parent_token_cancel_reaches_a_child_token_link() {
    let parent = CancellationToken::new();
    let child = parent.child_token();
    let (ctx, _g) = Context::unclocked().with_token(&child);
    parent.cancel();
    assert_token_cancelled(&ctx);
}

#[test]
fn the_context_side_still_works() {
    let token = CancellationToken::new();
    let (parent, gp) = Context::unclocked().with_cancel();
    let (ctx, _g) = parent.with_token(&token);
    gp.cancel_with(Tag("parent"));
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("parent")));
    assert!(!token.is_cancelled(), "the bridge never cancels the token");
    token.cancel();
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("parent")));
}

#[test]
fn born_done() {
    let token = CancellationToken::new();
    token.cancel();
    let (ctx, _g) = Context::unclocked().with_token(&token);
    assert_token_cancelled(&ctx);

    let (parent, gp) = Context::unclocked().with_cancel();
    drop(gp);
    let (ctx, _g) = parent.with_token(&CancellationToken::new());
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Error>(), Some(&Error::Canceled));
}

#[test]
fn dropping_the_child_unregisters_from_the_token() {
    let token = CancellationToken::new();
    let (ctx, g) = Context::unclocked().with_token(&token);
    let (grandchild, _gg) = ctx.with_cancel();
    g.detach();
    drop(ctx);
    // A descendant keeps the link alive.
    token.cancel();
    assert_token_cancelled(&grandchild);
}

#[test]
fn token_cancelled_from_another_thread_wakes_a_blocking_wait() {
    let token = CancellationToken::new();
    let (ctx, _g) = Context::background().with_token(&token);
    let waiter = thread::spawn(move || ctx.wait_timeout(BOUND));
    let t = token.clone();
    thread::spawn(move || t.cancel()).join().unwrap();
    assert_eq!(waiter.join().unwrap(), Some(Error::Canceled));
}

#[test]
fn race_token_cancel_against_creation_and_drop() {
    // What a concurrent creation can rely on: a token seen cancelled *before* `with_token`
    // gives a child born done, and once `cancel()` has returned every child made before is
    // done. (Seeing the token cancelled *after* creating a child says nothing yet: tokio-util
    // sets the flag before it calls the wakers that complete our children, so the old
    // assertion here failed about 6% of the runs.)
    let token = CancellationToken::new();
    let makers: Vec<_> = (0..2)
        .map(|_| {
            let token = token.clone();
            thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..2_000 {
                    let cancelled_before = token.is_cancelled();
                    let (ctx, guard) = Context::unclocked().with_token(&token);
                    if cancelled_before {
                        assert_token_cancelled(&ctx);
                    }
                    if i % 100 == 0 {
                        kept.push((ctx, guard));
                    }
                }
                kept
            })
        })
        .collect();
    thread::yield_now();
    token.cancel();
    for m in makers {
        for (ctx, _guard) in m.join().unwrap() {
            assert_token_cancelled(&ctx);
        }
    }
}

#[test]
fn bound_token_is_cancelled_when_the_context_ends() {
    let clock = ManualClock::new();
    let (ctx, _g) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(1));
    let token = ctx.cancellation_token();
    let child = token.child_token();
    assert!(!token.is_cancelled());
    clock.advance(Duration::from_secs(1));
    assert!(token.is_cancelled() && child.is_cancelled());
}

#[test]
fn bound_token_of_a_done_or_never_done_context() {
    let (ctx, g) = Context::unclocked().with_cancel();
    drop(g);
    assert!(ctx.cancellation_token().is_cancelled());
    let never = Context::background().cancellation_token();
    assert!(!never.is_cancelled());
}

#[test]
fn dropping_the_bound_token_unbinds_without_cancelling() {
    let (ctx, g) = Context::unclocked().with_cancel();
    let bound = ctx.cancellation_token();
    let kept = bound.token().clone();
    drop(bound);
    g.cancel();
    assert!(!kept.is_cancelled(), "unbound: the context no longer reaches it");
}

#[test]
fn into_token_keeps_the_binding() {
    let (ctx, g) = Context::unclocked().with_cancel();
    let token = ctx.cancellation_token().into_token();
    g.cancel();
    assert!(token.is_cancelled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tasks_both_directions() {
    // A token-based task and a context-based task, each stopped by the other side.
    let token = CancellationToken::new();
    let (ctx, _g) = Context::background().with_token(&token);
    let ctx_task = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.done_owned().await }
    });
    let (ctx2, g2) = Context::background().with_cancel();
    let bound = ctx2.cancellation_token();
    let token_task = tokio::spawn({
        let token = bound.token().clone();
        async move { token.run_until_cancelled(std::future::pending::<()>()).await }
    });
    token.cancel();
    g2.cancel();
    assert_eq!(tokio::time::timeout(BOUND, ctx_task).await.unwrap().unwrap(), Error::Canceled);
    assert_eq!(tokio::time::timeout(BOUND, token_task).await.unwrap().unwrap(), None);
    drop(bound);
}

#[test]
fn a_panicking_callback_does_not_poison_the_token_tree() {
    // The child is completed inside tokio-util's `cancel()`, which holds the parent token's
    // lock while it wakes a child token's waiters: a panic escaping there would poison it.
    let parent = CancellationToken::new();
    let token = parent.child_token();
    let (ctx, _g) = Context::unclocked().with_token(&token);
    let (sibling, _gs) = ctx.with_cancel();
    let _h = ctx.after_func(|| panic!("hostile callback"));
    parent.cancel(); // does not panic: the callback's panic is contained
    assert_token_cancelled(&ctx);
    assert_token_cancelled(&sibling);
    assert!(parent.is_cancelled() && token.is_cancelled());
    assert!(parent.child_token().is_cancelled(), "the token tree still works");
}
