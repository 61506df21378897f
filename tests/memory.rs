//! Links leave nothing behind: a million linked children (and bridged tokens) created and
//! dropped under long-lived parents return memory to where it started.
//!
//! Allocations are counted per thread (everything here allocates and frees on the test's
//! thread), so other tests' threads do not disturb the count. Prints the figures with
//! `--nocapture`.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use cancelctx::{Context, Instant, ManualClock};
use counting_alloc::{live, scaled, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `make` a million times in batches of 1,000 live links (all dropped per batch);
/// returns (peak bytes per live link, bytes left after).
///
/// The baseline is taken after one warm-up batch: the parents' link vectors keep the
/// capacity of their high-water mark (8 bytes per simultaneously live link), which is
/// constant, not growing with the number of links ever made.
fn measure<T>(name: &str, mut make: impl FnMut() -> T) -> (isize, isize) {
    let before = live();
    drop((0..1_000).map(|_| make()).collect::<Vec<T>>());
    let retained = live() - before;
    println!("{name}: {retained} bytes of vector capacity kept after the first 1,000");
    let baseline = live();
    let mut peak = 0;
    for _ in 0..scaled(1_000) {
        let batch: Vec<T> = (0..1_000).map(|_| make()).collect();
        peak = peak.max(live() - baseline);
        drop(batch);
    }
    let after = live() - baseline;
    println!(
        "{name}: peak {} bytes per live link; {after} bytes left after 1,000,000",
        peak / 1_000
    );
    assert!(peak > 0, "{name}: the links were really allocated");
    (peak / 1_000, after)
}

#[test]
fn a_million_linked_children_under_a_long_lived_parent() {
    let (other, _g) = Context::unclocked().with_cancel();
    let (parent, _gp) = Context::unclocked().with_cancel();
    let (_per_link, after) = measure("with_linked", || parent.with_linked(&other));
    assert_eq!(after, 0, "memory left behind by dropped linked children");
    // `other` is still live and still ends new links.
    let (c, _gc) = parent.with_linked(&other);
    drop(_g);
    assert!(c.is_done());
}

#[test]
fn a_million_linked_children_with_a_deadline_from_the_other_parent() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (other, _g) = root.with_deadline(Instant::from_nanos(1_000_000_000));
    let (_per_link, after) = measure("with_linked + deadline", || root.with_linked(&other));
    assert_eq!(after, 0);
    assert_eq!(clock.pending_timers(), 1, "only other's own timer is left");
}

#[cfg(feature = "tokio-util")]
#[test]
fn a_million_token_children_under_a_long_lived_token() {
    let token = tokio_util::sync::CancellationToken::new();
    let parent = Context::unclocked();
    let (_per_link, after) = measure("with_token", || parent.with_token(&token));
    assert_eq!(after, 0, "memory left behind by dropped token children");
}

#[cfg(feature = "tokio-util")]
#[test]
fn a_million_bound_tokens_under_a_long_lived_context() {
    let (ctx, _g) = Context::unclocked().with_cancel();
    let (_per_link, after) = measure("cancellation_token", || ctx.cancellation_token());
    assert_eq!(after, 0, "memory left behind by dropped bound tokens");
}

/// A context's waiter list: the first pending `done()` costs one small entry (before the
/// context's own list it was event-listener's list, a listener and a relay: 160 bytes), and
/// a million futures polled and dropped on a long-lived context (a `select!` loop) leave
/// nothing behind.
#[test]
fn done_futures_polled_and_dropped_leave_nothing_behind() {
    use std::future::Future;
    use std::task::{Context as TaskContext, Poll};

    let (ctx, guard) = Context::unclocked().with_cancel();
    let waker = futures::task::noop_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut first = Box::pin(ctx.done_owned());
    let before = live();
    assert!(first.as_mut().poll(&mut cx).is_pending());
    let entry = live() - before;
    println!("first pending done(): {entry} bytes");
    assert!(entry > 0 && entry <= 64, "the first pending done() allocated {entry} bytes");

    let (_per_waiter, after) = measure("done()", || {
        let mut done = Box::pin(ctx.done());
        assert!(done.as_mut().poll(&mut cx).is_pending());
        done
    });
    assert_eq!(after, 0, "memory left behind by dropped done() futures");
    guard.cancel();
    assert!(matches!(first.as_mut().poll(&mut cx), Poll::Ready(cancelctx::Error::Canceled)));
}
