//! Robustness: hostile or careless user code (panicking callbacks, wakers and clocks, clocks
//! that wake early or inside `schedule`, re-entrant clock moves) and what new users trip on
//! (issue #12). Every test here failed (or did not compile) before the change it pins.
//!
//! Time is `ManualClock` or a scripted clock everywhere, except the std clock's own timer
//! thread (item 1), where a bounded wait only turns a hang into a failure.

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe, RefUnwindSafe, UnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use cancelctx::{
    AfterFunc, CancelGuard, Cancelled, CancelledOwned, Context, Error, Instant, ManualClock,
};
use common::{counting_waker, Tag};
use futures::future::FusedFuture;
use static_assertions::assert_impl_all;

fn at(nanos: u64) -> Instant {
    Instant::from_nanos(nanos)
}

// ---------------------------------------------------------------------------------------
// Item 7: deadline-only constructors need no guard.

#[test]
fn timeout_only_is_live_until_its_deadline() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let ctx = root.with_timeout_only(Duration::from_nanos(10));
    assert_eq!(ctx.err(), None, "no guard was dropped, so nothing cancelled it");
    assert_eq!(ctx.deadline(), Some(at(10)));
    clock.advance(Duration::from_nanos(9));
    assert_eq!(ctx.err(), None);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn deadline_only_follows_the_parent_and_releases_its_timer_on_drop() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (parent, guard) = root.with_cancel();
    let ctx = parent.with_deadline_only(at(100));
    assert_eq!(clock.pending_timers(), 1);
    drop(ctx);
    assert_eq!(clock.pending_timers(), 0, "dropping the only handle releases the timer");

    let ctx = parent.with_deadline_only(at(100));
    guard.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(clock.pending_timers(), 0);

    // A deadline that has passed gives a context born done, as with_deadline does.
    let ctx = root.with_deadline_only(clock.now());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

// ---------------------------------------------------------------------------------------
// Item 8: a guard carries the cause it cancels with on drop.

#[test]
fn dropped_guard_cancels_with_its_drop_cause() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (child, _child_guard) = ctx.with_cancel();
    let guard = guard.with_drop_cause(Tag("client disconnected"));
    assert!(format!("{guard:?}").contains("client disconnected"));
    drop(guard);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("client disconnected")));
    assert_eq!(child.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("client disconnected")));
}

#[test]
fn drop_cause_is_ignored_by_explicit_cancels_and_later_drops() {
    // An explicit cancel does not use the drop cause.
    let (ctx, mut guard) = Context::unclocked().with_cancel();
    guard.set_drop_cause(Arc::new(Tag("dropped")));
    guard.cancel();
    drop(guard);
    assert!(ctx.cause().unwrap().is::<Error>(), "{:?}", ctx.cause());

    // The first completion wins: a drop after the parent completed changes nothing.
    let (parent, parent_guard) = Context::unclocked().with_cancel();
    let (ctx, guard) = parent.with_cancel();
    let guard = guard.with_drop_cause(Tag("dropped"));
    parent_guard.cancel_with(Tag("parent"));
    drop(guard);
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("parent")));

    // set_drop_cause replaces; detach drops it unused.
    let (ctx, mut guard) = Context::unclocked().with_cancel();
    guard.set_drop_cause(Arc::new(Tag("first")));
    guard.set_drop_cause(Arc::new(Tag("second")));
    drop(guard);
    assert_eq!(ctx.cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("second")));
    let (ctx, guard) = Context::unclocked().with_cancel();
    guard.with_drop_cause(Tag("unused")).detach();
    assert!(!ctx.is_done());
}

// ---------------------------------------------------------------------------------------
// Item 9: `()`-output futures.

fn wants_unit_future<F: Future<Output = ()> + Send + 'static>(f: F) -> F {
    f
}

#[test]
fn cancelled_resolves_to_unit_when_done() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = pin!(ctx.cancelled());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(!fut.is_terminated());
    guard.cancel();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(()));
    assert!(fut.is_terminated());
    assert!(format!("{fut:?}").starts_with("Cancelled"));
}

#[test]
fn cancelled_owned_plugs_into_unit_future_apis() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    let signal = wants_unit_future(ctx.cancelled_owned());
    let waiter = std::thread::spawn(move || futures::executor::block_on(signal));
    guard.cancel();
    waiter.join().unwrap();

    // Never-done contexts stay pending, without registering anything.
    let (counter, waker) = counting_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = pin!(Context::unclocked().cancelled_owned());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(!fut.is_terminated());
    assert_eq!(Arc::strong_count(&counter), 2, "the waker was not stored anywhere");
}

#[test]
fn cancelled_in_select_on_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (ctx, guard) = Context::unclocked().with_cancel();
        tokio::spawn(async move { guard.cancel() });
        tokio::select! {
            () = ctx.cancelled() => {}
            () = std::future::pending::<()>() => unreachable!(),
        }
        assert!(ctx.is_done());
    });
}

// ---------------------------------------------------------------------------------------
// Item 10: unwind safety; and the rest of the public API's auto traits.

assert_impl_all!(Context: UnwindSafe, RefUnwindSafe, Send, Sync);
assert_impl_all!(CancelGuard: UnwindSafe, RefUnwindSafe, Send, Sync);
assert_impl_all!(AfterFunc: UnwindSafe, RefUnwindSafe, Send, Sync);
assert_impl_all!(Cancelled<'static>: Send, Sync, Unpin, std::fmt::Debug);
assert_impl_all!(CancelledOwned: Send, Sync, Unpin, std::fmt::Debug);

#[test]
fn catch_unwind_over_a_borrowed_context() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    // Compiles without AssertUnwindSafe: that is the point.
    let result = catch_unwind(|| {
        ctx.check().unwrap();
        guard.cancel();
        ctx.check().unwrap(); // panics: cancelled
    });
    assert!(result.is_err());
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

// ---------------------------------------------------------------------------------------
// Item 12: never-done contexts.

#[test]
fn can_be_done_tells_never_done_contexts_apart() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    assert!(!root.can_be_done());
    assert!(!root.with_value(1u8).can_be_done());
    let (ctx, _guard) = root.with_cancel();
    assert!(ctx.can_be_done());
    assert!(ctx.with_value(1u8).can_be_done());
    assert!(!ctx.without_cancel().can_be_done());
    assert!(root.with_timeout_only(Duration::from_secs(1)).can_be_done());

    // What the docs warn about: f is dropped at once, unrun, on a never-done context.
    let (tx, rx) = mpsc::channel::<()>();
    let handle = root.after_func(move || drop(tx));
    assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    assert!(handle.stop());
}

#[allow(dead_code)]
fn unused_imports_guard(_: Mutex<()>, _: AtomicUsize, _: Ordering, _: AssertUnwindSafe<()>) {}
