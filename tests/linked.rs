//! `Context::with_linked`: a child of one context that also ends when another ends.
//!
//! Time is a `ManualClock` everywhere it matters; real-time bounds (`BOUND`) only turn a
//! hang into a failure. The million-children memory test is in `tests/memory.rs` (it needs
//! its own global allocator).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use cancelctx::{CancelGuard, Context, Error, Instant, ManualClock};

mod common;
use common::Tag;

const BOUND: Duration = Duration::from_secs(10);

static_assertions::assert_impl_all!(cancelctx::TakeUntilDone<futures::stream::Empty<()>>: Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::Timeout<std::future::Ready<()>>: Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::TakeUntilDone<futures::stream::Empty<()>>: futures::Stream<Item = ()>, futures::stream::FusedStream, Unpin);
static_assertions::assert_impl_all!(cancelctx::Timeout<std::future::Ready<()>>: std::future::Future<Output = Result<(), Error>>, futures::future::FusedFuture, Unpin);

/// Asserts `ctx` is done with `err`, with cause `Tag(tag)` if given, else the error itself.
#[track_caller]
fn assert_done(ctx: &Context, err: Error, tag: Option<&'static str>) {
    assert_eq!(ctx.err(), Some(err), "{ctx:?}");
    let cause = ctx.cause().expect("a done context has a cause");
    match tag {
        Some(tag) => assert_eq!(cause.downcast_ref::<Tag>(), Some(&Tag(tag)), "{cause:?}"),
        None => assert_eq!(cause.downcast_ref::<Error>(), Some(&err), "{cause:?}"),
    }
}

/// Counts its drops: lets a test see that a whole chain was freed.
#[derive(Debug)]
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn two_parents() -> ((Context, CancelGuard), (Context, CancelGuard)) {
    (Context::unclocked().with_cancel(), Context::unclocked().with_cancel())
}

#[test]
fn ends_with_self_error_and_cause() {
    let ((a, ga), (b, _gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    assert!(!c.is_done());
    ga.cancel_with(Tag("a"));
    assert_done(&c, Error::Canceled, Some("a"));
    assert!(!b.is_done());
}

#[test]
fn ends_with_other_error_and_cause() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let (grandchild, _gg) = c.with_cancel();
    gb.cancel_with(Tag("b"));
    assert_done(&c, Error::Canceled, Some("b"));
    assert_done(&grandchild, Error::Canceled, Some("b"));
    assert!(!a.is_done());
}

#[test]
fn other_without_explicit_cause_reports_the_error_as_cause() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    drop(gb);
    assert_done(&c, Error::Canceled, None);
}

#[test]
fn own_guard_cancels_only_the_child() {
    let ((a, _ga), (b, _gb)) = two_parents();
    let (c, gc) = a.with_linked(&b);
    gc.cancel_with(Tag("own"));
    assert_done(&c, Error::Canceled, Some("own"));
    assert!(!a.is_done() && !b.is_done());
}

#[test]
fn first_parent_to_end_wins() {
    let ((a, ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    gb.cancel_with(Tag("b"));
    ga.cancel_with(Tag("a"));
    assert_done(&c, Error::Canceled, Some("b"));

    let ((a, ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    ga.cancel_with(Tag("a"));
    gb.cancel_with(Tag("b"));
    assert_done(&c, Error::Canceled, Some("a"));
}

#[test]
fn born_done_when_either_parent_is_done() {
    let ((a, _ga), (b, gb)) = two_parents();
    gb.cancel_with(Tag("b"));
    let (c, _gc) = a.with_linked(&b);
    assert_done(&c, Error::Canceled, Some("b"));

    let ((a, ga), (b, _gb)) = two_parents();
    ga.cancel_with(Tag("a"));
    let (c, _gc) = a.with_linked(&b);
    assert_done(&c, Error::Canceled, Some("a"));

    // Both done: `self`'s error with `self`'s cause (documented).
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (a, _ga) = root.with_deadline_cause(Instant::from_nanos(5), Tag("a-deadline"));
    let (b, gb) = root.with_cancel();
    clock.set(Instant::from_nanos(5));
    gb.cancel_with(Tag("b"));
    let (c, _gc) = a.with_linked(&b);
    assert_done(&c, Error::DeadlineExceeded, Some("a-deadline"));
    let (c, _gc) = b.with_linked(&a);
    assert_done(&c, Error::Canceled, Some("b"));
}

#[test]
fn values_and_clock_come_from_self() {
    let clock = ManualClock::new();
    let a = Context::with_clock(clock.clone()).with_value("a");
    let (b, _gb) = Context::unclocked().with_value("b").with_value(7u32).with_cancel();
    let (c, _gc) = a.with_linked(&b);
    assert_eq!(c.value::<&str>(), Some(&"a"));
    assert_eq!(c.value::<u32>(), None);
    assert_eq!(c.now(), Some(clock.now()));
    // An unclocked `self` gives an unclocked child even if `other` has a clock.
    let (c, _gc) = b.with_linked(&a);
    assert_eq!(c.now(), None);
}

#[test]
fn other_ending_by_deadline_gives_deadline_exceeded_and_its_cause() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (a, _ga) = root.with_cancel();
    let (b, _gb) = root.with_deadline_cause(Instant::from_nanos(100), Tag("b-deadline"));
    let (c, _gc) = a.with_linked(&b);
    assert_eq!(c.deadline(), Some(Instant::from_nanos(100)));
    clock.set(Instant::from_nanos(99));
    assert!(!c.is_done());
    clock.set(Instant::from_nanos(100));
    assert_done(&b, Error::DeadlineExceeded, Some("b-deadline"));
    assert_done(&c, Error::DeadlineExceeded, Some("b-deadline"));

    // Without a deadline cause, the cause is the error, as on `other`.
    let (b, _gb) = root.with_timeout(Duration::from_nanos(10));
    let (c, _gc) = a.with_linked(&b);
    clock.advance(Duration::from_nanos(10));
    assert_done(&c, Error::DeadlineExceeded, None);

    // `other` inherits its deadline from an ancestor: the ancestor's cause comes through.
    let (top, _gt) = root.with_timeout_cause(Duration::from_nanos(10), Tag("top"));
    let (b, _gb) = top.with_value(1u8).with_cancel();
    let (c, _gc) = a.with_linked(&b);
    assert_eq!(c.deadline(), top.deadline());
    clock.advance(Duration::from_nanos(10));
    assert_done(&c, Error::DeadlineExceeded, Some("top"));
}

#[test]
fn other_cancelled_before_its_deadline_gives_canceled_and_releases_the_timer() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (b, gb) = root.with_deadline_cause(Instant::from_nanos(100), Tag("b-deadline"));
    let (c, _gc) = root.with_linked(&b);
    assert_eq!(clock.pending_timers(), 2, "b's timer and the child's copy of it");
    gb.cancel_with(Tag("b-cancel"));
    assert_done(&c, Error::Canceled, Some("b-cancel"));
    assert_eq!(clock.pending_timers(), 0);
    clock.set(Instant::from_nanos(100));
    assert_done(&c, Error::Canceled, Some("b-cancel"));

    // `other` cancelled after its deadline passed but before its timer fired, then linked:
    // the child reports the cancel, not the passed deadline.
    let (b, gb) = root.with_deadline(Instant::from_nanos(200));
    gb.cancel_with(Tag("late-cancel"));
    clock.set(Instant::from_nanos(300));
    let (c, _gc) = root.with_linked(&b);
    assert_done(&c, Error::Canceled, Some("late-cancel"));
}

#[test]
fn deadline_is_the_earlier_of_both_on_one_clock() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (a, _ga) = root.with_deadline(Instant::from_nanos(50));
    let (b, _gb) = root.with_deadline(Instant::from_nanos(80));
    let (c, _gc) = a.with_linked(&b);
    assert_eq!(c.deadline(), Some(Instant::from_nanos(50)));
    let (c2, _gc2) = b.with_linked(&a);
    assert_eq!(c2.deadline(), Some(Instant::from_nanos(50)));
    let (c3, _gc3) = root.with_linked(&b);
    assert_eq!(c3.deadline(), Some(Instant::from_nanos(80)));
    clock.set(Instant::from_nanos(50));
    assert_done(&c, Error::DeadlineExceeded, None);
    assert_done(&c2, Error::DeadlineExceeded, None);
    assert!(!c3.is_done());
}

#[test]
fn across_clocks_only_self_deadline_is_reported_but_other_still_ends_it() {
    let (clock_a, clock_b) = (ManualClock::new(), ManualClock::new());
    let (a, _ga) = Context::with_clock(clock_a.clone()).with_deadline(Instant::from_nanos(500));
    let (b, _gb) = Context::with_clock(clock_b.clone())
        .with_deadline_cause(Instant::from_nanos(10), Tag("b-deadline"));
    let (c, _gc) = a.with_linked(&b);
    assert_eq!(c.deadline(), Some(Instant::from_nanos(500)));
    clock_a.set(Instant::from_nanos(10));
    assert!(!c.is_done(), "b's instants are on b's clock");
    clock_b.set(Instant::from_nanos(10));
    assert_done(&c, Error::DeadlineExceeded, Some("b-deadline"));

    // Two roots over clones of one ManualClock are still different clocks to the crate.
    let clock = ManualClock::new();
    let (b, _gb) = Context::with_clock(clock.clone()).with_deadline(Instant::from_nanos(10));
    let (c, _gc) = Context::with_clock(clock.clone()).with_linked(&b);
    assert_eq!(c.deadline(), None);
    clock.set(Instant::from_nanos(10));
    assert_done(&c, Error::DeadlineExceeded, None);
}

#[test]
fn std_clock_trees_share_their_clock() {
    let (b, _gb) = Context::background().with_timeout(Duration::from_secs(3600));
    let (c, _gc) = Context::background().with_value(1u8).with_linked(&b);
    assert_eq!(c.deadline(), b.deadline());
}

#[test]
fn chaining_links_n_parents() {
    let parents: Vec<(Context, CancelGuard)> =
        (0..4).map(|_| Context::unclocked().with_cancel()).collect();
    let mut guards = Vec::new();
    let mut linked = parents[0].0.clone();
    for (p, _) in &parents[1..] {
        let (next, guard) = linked.with_linked(p);
        guards.push(guard);
        linked = next;
    }
    assert!(!linked.is_done());
    parents[2].1.cancel_with(Tag("p2"));
    assert_done(&linked, Error::Canceled, Some("p2"));
    assert!(!parents[3].0.is_done());
}

#[test]
fn dropping_the_child_unlinks_it_from_both_parents() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (b, gb) = Context::unclocked().with_cancel();
    {
        let (a, _ga) = Context::unclocked().with_value(DropCount(drops.clone())).with_cancel();
        let (c, gc) = a.with_linked(&b);
        let (_grandchild, _gg) = c.with_cancel();
        drop(gc);
    }
    // Nothing of `a`'s chain is left: `b` does not hold the link any more.
    assert_eq!(drops.load(SeqCst), 1);
    gb.cancel();
}

#[test]
fn a_descendant_keeps_the_link() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, gc) = a.with_linked(&b);
    let (grandchild, _gg) = c.with_cancel();
    gc.detach();
    drop(c);
    gb.cancel_with(Tag("b"));
    assert_done(&grandchild, Error::Canceled, Some("b"));
}

#[test]
fn other_that_can_never_end_links_nothing() {
    let (a, ga) = Context::unclocked().with_cancel();
    let (c, _gc) = a.with_linked(&Context::unclocked().without_cancel());
    let (c2, _gc2) = a.with_linked(&Context::background());
    ga.cancel();
    assert_done(&c, Error::Canceled, None);
    assert_done(&c2, Error::Canceled, None);
}

#[test]
fn callbacks_of_the_child_run_when_other_ends() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let _h = c.after_func(move || {
        r.fetch_add(1, SeqCst);
    });
    gb.cancel();
    // `cancel()` returns after the whole completion, the linked child's included.
    assert_eq!(runs.load(SeqCst), 1);
}

#[test]
fn a_panicking_callback_of_the_child_reaches_the_canceller_and_nothing_is_lost() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let (sibling, _gs) = b.with_cancel();
    let _h = c.after_func(|| panic!("hostile callback"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gb.cancel()));
    assert!(result.is_err(), "the panic is resumed on the cancelling thread");
    assert_done(&c, Error::Canceled, None);
    assert_done(&sibling, Error::Canceled, None);
}

#[test]
fn blocking_wait_on_a_thread_ends_when_other_is_cancelled_elsewhere() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let waiter = thread::spawn(move || c.wait_timeout(BOUND));
    thread::spawn(move || gb.cancel_with(Tag("b"))).join().unwrap();
    assert_eq!(waiter.join().unwrap(), Some(Error::Canceled));
}

#[test]
fn both_parents_cancelled_at_once_from_two_threads() {
    for round in 0..200 {
        let ((a, ga), (b, gb)) = two_parents();
        let (c, _gc) = a.with_linked(&b);
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [(ga, "a"), (gb, "b")]
            .into_iter()
            .map(|(guard, tag)| {
                let barrier = barrier.clone();
                let c = c.clone();
                thread::spawn(move || {
                    barrier.wait();
                    guard.cancel_with(Tag(tag));
                    // When a parent's cancel returns, the child reports done.
                    assert!(c.is_done());
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let tag = c.cause().unwrap().downcast_ref::<Tag>().cloned().expect("a tag");
        assert!(tag == Tag("a") || tag == Tag("b"), "round {round}: {tag:?}");
        assert_eq!(c.cause().unwrap().downcast_ref::<Tag>(), Some(&tag), "stable");
    }
}

#[test]
fn children_created_and_dropped_while_other_is_cancelled_concurrently() {
    let (b, gb) = Context::unclocked().with_cancel();
    let (a, _ga) = Context::unclocked().with_cancel();
    let makers: Vec<_> = (0..2)
        .map(|_| {
            let (a, b) = (a.clone(), b.clone());
            thread::spawn(move || {
                let mut done = 0;
                for _ in 0..2_000 {
                    let (c, _gc) = a.with_linked(&b);
                    if c.is_done() {
                        assert_done(&c, Error::Canceled, Some("b"));
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    thread::yield_now();
    gb.cancel_with(Tag("b"));
    for m in makers {
        m.join().unwrap();
    }
    let (c, _gc) = a.with_linked(&b);
    assert_done(&c, Error::Canceled, Some("b"));
}

// ------------------------------------------------------------------------------------------
// Runtimes: the child's `done()` is woken when `other` is cancelled from elsewhere.
// ------------------------------------------------------------------------------------------

fn cancel_soon(guard: CancelGuard) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::yield_now();
        guard.cancel_with(Tag("b"));
    })
}

#[test]
fn futures_executor() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let t = cancel_soon(gb);
    assert_eq!(futures::executor::block_on(c.done()), Error::Canceled);
    t.join().unwrap();
    assert_done(&c, Error::Canceled, Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_multi_thread() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let task = tokio::spawn({
        let c = c.clone();
        async move { c.done_owned().await }
    });
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        gb.cancel_with(Tag("b"));
    });
    assert_eq!(tokio::time::timeout(BOUND, task).await.unwrap().unwrap(), Error::Canceled);
    assert_done(&c, Error::Canceled, Some("b"));
}

#[tokio::test(start_paused = true)]
async fn tokio_paused_clock_deadline_of_other() {
    let clock = cancelctx::TokioClock::new();
    let root = Context::with_clock(clock);
    let (b, _gb) = root.with_timeout_cause(Duration::from_secs(30), Tag("b-deadline"));
    let (c, _gc) = root.with_linked(&b);
    let start = tokio::time::Instant::now();
    assert_eq!(c.done().await, Error::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_secs(30), "virtual time");
    assert_done(&c, Error::DeadlineExceeded, Some("b-deadline"));
}

#[test]
fn smol() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let err = smol::block_on(async {
        let task = smol::spawn(c.done_owned());
        smol::spawn(async move { gb.cancel_with(Tag("b")) }).detach();
        task.await
    });
    assert_eq!(err, Error::Canceled);
    assert_done(&c, Error::Canceled, Some("b"));
}

#[async_std::test]
async fn async_std() {
    let ((a, _ga), (b, gb)) = two_parents();
    let (c, _gc) = a.with_linked(&b);
    let task = async_std::task::spawn(c.done_owned());
    async_std::task::spawn(async move { gb.cancel_with(Tag("b")) });
    assert_eq!(async_std::future::timeout(BOUND, task).await, Ok(Error::Canceled));
    assert_done(&c, Error::Canceled, Some("b"));
}

#[test]
fn linking_to_an_ancestor_or_to_itself() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (server, stop) = Context::unclocked().with_cancel();
    {
        let (request, _gr) = server.with_value(DropCount(drops.clone())).with_cancel();
        // `other` above `self`: the tree reaches the child first, the link loses quietly.
        let (c, _gc) = request.with_linked(&server);
        let (same, _gs) = request.with_linked(&request);
        assert!(!c.is_done() && !same.is_done());
    }
    assert_eq!(drops.load(SeqCst), 1, "freed: no link keeps the request alive");

    let (request, _gr) = server.with_cancel();
    let (c, _gc) = request.with_linked(&server);
    let (same, _gs) = request.with_linked(&request);
    stop.cancel_with(Tag("server"));
    assert_done(&c, Error::Canceled, Some("server"));
    assert_done(&same, Error::Canceled, Some("server"));
}

/// Found by the fuzzer: `other` and `self`'s ancestor have deadlines at the same instant;
/// `other`'s fires first, and a user callback on `other` that was registered before the link
/// moves the clock (firing `self`'s deadline) before the link ran. The link runs before user
/// callbacks, so the child ends with `other`'s error and cause, inside `other`'s completion.
#[test]
fn the_link_runs_before_user_callbacks_that_move_the_clock() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let at = Instant::from_nanos(60);
    let (other, _other_guard) = root.with_deadline_cause(at, Tag("other's deadline"));
    let mover = clock.clone();
    let _moves = other.after_func(move || mover.advance(Duration::ZERO));
    let (own, _own_guard) = root.with_deadline(at); // scheduled after `other`'s timer
    let (parent, _parent_guard) = own.with_cancel();
    let (child, _guard) = parent.with_linked(&other);

    clock.set(at);
    assert_eq!(own.err(), Some(Error::DeadlineExceeded));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    let cause = child.cause().expect("done");
    assert_eq!(cause.downcast_ref::<Tag>(), Some(&Tag("other's deadline")));
}
