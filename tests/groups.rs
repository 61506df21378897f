//! `Group` (errgroup) on tokio (multi-thread), smol and std threads: completion, first error,
//! cancellation, panics, limits, dropped members.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use cancelctx::{Context, Error, Group, GroupWait, Member, MemberPanicked};
use common::{counting_waker, Tag};
use futures::future::FusedFuture;
use static_assertions::assert_impl_all;

type BoxFut = Pin<Box<dyn Future<Output = Result<(), Tag>> + Send>>;
type BoxFn = Box<dyn FnOnce(Context) -> BoxFut + Send>;

assert_impl_all!(Group<Tag>: Send, Sync, std::fmt::Debug);
assert_impl_all!(GroupWait<'static, Tag>: Send, Sync, Future<Output = Result<(), Arc<Tag>>>, FusedFuture, std::fmt::Debug);
assert_impl_all!(Member<Tag, BoxFn, BoxFut>: Send, Unpin, Future<Output = ()>, FusedFuture, std::fmt::Debug);
assert_impl_all!(MemberPanicked: Send, Sync, Clone, std::error::Error, std::fmt::Debug);

fn poll<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut TaskContext::from_waker(waker))
}

/// `go`'s future is `Send + 'static` when the closure and its future are.
#[test]
fn members_can_be_spawned() {
    fn spawnable<T: Send + 'static>(_: &T) {}
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let member = group.go(|ctx| async move { ctx.check().map_err(|_| Tag("done")) });
    spawnable(&member);
}

/// Counts running members and remembers the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
    finished: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokio_all_members_finish_before_wait_returns() {
    let group: Group<Tag> = Group::new(&Context::background());
    let gauge = Arc::new(Gauge::default());
    for i in 0..100 {
        let gauge = gauge.clone();
        tokio::spawn(group.go(move |_ctx| async move {
            gauge.enter();
            for _ in 0..i % 4 {
                tokio::task::yield_now().await;
            }
            gauge.leave();
            Ok(())
        }));
    }
    group.wait().await.unwrap();
    assert_eq!(gauge.finished.load(Ordering::SeqCst), 100);
    assert_eq!(group.context().err(), Some(Error::Canceled), "Go's rule: Wait cancels");
    assert!(group.context().cause().unwrap().downcast_ref::<Error>().is_some());
    assert_eq!(group.members(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokio_first_error_wins_cancels_the_others_and_is_the_cause() {
    let group: Group<Tag> = Group::new(&Context::background());
    let stopped = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let stopped = stopped.clone();
        tokio::spawn(group.go(move |ctx| async move {
            let err = ctx.done().await; // runs until the failure cancels the group
            assert_eq!(err, Error::Canceled);
            stopped.fetch_add(1, Ordering::SeqCst);
            Err(Tag("late")) // dropped: not the first
        }));
    }
    tokio::spawn(group.go(|_ctx| async { Err(Tag("first")) }));
    let err = group.wait().await.unwrap_err();
    assert_eq!(*err, Tag("first"));
    assert_eq!(stopped.load(Ordering::SeqCst), 10);
    let cause = group.context().cause().unwrap();
    assert_eq!(cause.downcast_ref::<Tag>(), Some(&Tag("first")));
    // The cause is the very error `wait` returned.
    let cause_ptr = Arc::as_ptr(&cause) as *const ();
    assert_eq!(cause_ptr, Arc::as_ptr(&err) as *const ());
    // Waiting again gives the same error.
    assert!(Arc::ptr_eq(&group.wait().await.unwrap_err(), &err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_parent_cancellation_reaches_members() {
    let (parent, cancel) = Context::background().with_cancel();
    let group: Group<Tag> = Group::new(&parent);
    let seen = Arc::new(AtomicUsize::new(0));
    for _ in 0..5 {
        let seen = seen.clone();
        tokio::spawn(group.go(move |ctx| async move {
            ctx.done().await;
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
    }
    cancel.cancel_with(Tag("parent"));
    group.wait().await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    assert_eq!(group.context().cause().unwrap().downcast_ref::<Tag>(), Some(&Tag("parent")));
}

#[test]
fn std_threads_first_error_and_wait_blocking() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let gauge = Arc::new(Gauge::default());
    for _ in 0..6 {
        let gauge = gauge.clone();
        group.go_thread(move |ctx| {
            gauge.enter();
            ctx.wait();
            gauge.leave();
            Ok(())
        });
    }
    group.go_thread(|_ctx| Err(Tag("thread failed")));
    let err = group.wait_blocking().unwrap_err();
    assert_eq!(*err, Tag("thread failed"));
    assert_eq!(gauge.finished.load(Ordering::SeqCst), 6);
}

/// `go_thread` at the limit blocks its caller until a slot is free; unparks meant for
/// something else (and spurious ones) must not start the member early.
#[test]
fn go_thread_at_the_limit_ignores_spurious_unparks() {
    let group: Arc<Group<Tag>> = Arc::new(Group::new(&Context::unclocked()));
    group.set_limit(Some(1));
    let (release, released) = std::sync::mpsc::channel::<()>();
    group.go_thread(move |_ctx| {
        let _ = released.recv();
        Ok(())
    });
    let started = Arc::new(AtomicUsize::new(0));
    let caller = std::thread::spawn({
        let (group, started) = (group.clone(), started.clone());
        move || {
            group.go_thread(move |_ctx| {
                started.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(10));
    for _ in 0..200 {
        caller.thread().unpark();
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    assert!(!caller.is_finished(), "an unpark let go_thread past the limit");
    assert_eq!(started.load(Ordering::SeqCst), 0);
    release.send(()).unwrap();
    caller.join().unwrap();
    group.wait_blocking().unwrap();
    assert_eq!(started.load(Ordering::SeqCst), 1);
}

#[test]
fn smol_members_and_first_error() {
    smol::block_on(async {
        let group: Group<Tag> = Group::new(&Context::unclocked());
        let finished = Arc::new(AtomicUsize::new(0));
        for i in 0..20 {
            let finished = finished.clone();
            smol::spawn(group.go(move |ctx| async move {
                smol::future::yield_now().await;
                if i == 7 {
                    return Err(Tag("seven"));
                }
                let _ = ctx.done().await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }))
            .detach();
        }
        assert_eq!(*group.wait().await.unwrap_err(), Tag("seven"));
        assert_eq!(finished.load(Ordering::SeqCst), 19);
    });
}

#[test]
fn members_count_from_the_go_call() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let member = group.go(|_ctx| async { Ok(()) });
    assert_eq!(group.members(), 1);
    let (counter, waker) = counting_waker();
    let mut wait = pin!(group.wait());
    assert!(poll(wait.as_mut(), &waker).is_pending(), "the member has not run yet");
    futures::executor::block_on(member);
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll(wait.as_mut(), &waker), Poll::Ready(Ok(())));
}

#[test]
fn a_dropped_member_stops_counting_and_is_not_an_error() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let (_c, waker) = counting_waker();
    let mut started = Box::pin(group.go(|_ctx| std::future::pending()));
    assert!(poll(started.as_mut(), &waker).is_pending());
    let unstarted = group.go(|_ctx| async { Err(Tag("never runs")) });
    assert_eq!(group.members(), 2);
    drop(started);
    drop(unstarted);
    assert_eq!(group.members(), 0);
    assert!(futures::executor::block_on(group.wait()).is_ok());
}

#[test]
fn wait_cancels_the_context_and_later_members_see_it() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    assert!(futures::executor::block_on(group.wait()).is_ok());
    assert!(group.context().is_done());
    // As in Go, a member started after `wait` still runs, with a done context.
    let saw_done = Arc::new(AtomicUsize::new(0));
    let seen = saw_done.clone();
    futures::executor::block_on(group.go(move |ctx| async move {
        if ctx.is_done() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }));
    assert_eq!(saw_done.load(Ordering::SeqCst), 1);
}

#[test]
fn dropping_the_group_cancels_its_context() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let ctx = group.context().clone();
    drop(group);
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

fn resumed_panic(f: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .expect_err("the member's panic is resumed");
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn panicked_cause(group: &Group<Tag>) -> MemberPanicked {
    let cause = group.context().cause().expect("the group is cancelled");
    cause.downcast_ref::<MemberPanicked>().expect("the cause is MemberPanicked").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_a_panicking_member_future_cancels_the_group_and_wait_resumes_it() {
    let group: Group<Tag> = Group::new(&Context::background());
    let others = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let others = others.clone();
        tokio::spawn(group.go(move |ctx| async move {
            ctx.done().await;
            others.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
    }
    let task = tokio::spawn(group.go(|_ctx| async {
        tokio::task::yield_now().await;
        panic!("member future panicked")
    }));
    task.await.expect("the panic does not unwind into the executor");
    // Wait on a plain thread (so the resumed panic is caught here, not by tokio).
    let group = Arc::new(group);
    let waiter = {
        let group = group.clone();
        std::thread::spawn(move || resumed_panic(|| drop(group.wait_blocking())))
    };
    assert_eq!(waiter.join().unwrap(), "member future panicked");
    assert_eq!(others.load(Ordering::SeqCst), 3, "every member finished first");
    let cause = panicked_cause(&group);
    assert_eq!(cause.message(), Some("member future panicked"));
    assert!(cause.to_string().contains("panicked"));
    // A second wait panics again rather than reporting success.
    assert!(resumed_panic(|| drop(group.wait_blocking())).contains("panicked"));
}

#[test]
fn a_panicking_thread_member_is_resumed_by_wait() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    group.go_thread(|_ctx| panic!("thread member panicked"));
    group.go_thread(|ctx| {
        ctx.wait();
        Err(Tag("after the panic")) // recorded, but the panic wins
    });
    let msg = resumed_panic(|| drop(group.wait_blocking()));
    assert_eq!(msg, "thread member panicked");
    assert_eq!(panicked_cause(&group).message(), Some("thread member panicked"));
}

#[test]
fn a_panicking_member_function_and_a_panicking_drop_are_member_panics() {
    // The function itself (before any future exists).
    let group: Group<Tag> = Group::new(&Context::unclocked());
    futures::executor::block_on(
        group.go(|_ctx| -> std::future::Ready<Result<(), Tag>> {
            panic!("member function panicked")
        }),
    );
    let msg = resumed_panic(|| drop(futures::executor::block_on(group.wait())));
    assert_eq!(msg, "member function panicked");

    // The future's `Drop`, when the member finishes.
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("member drop panicked");
        }
    }
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let bomb = PanicOnDrop;
    futures::executor::block_on(group.go(move |_ctx| async move {
        let _bomb = bomb;
        Ok(())
    }));
    assert_eq!(group.members(), 0);
    let msg = resumed_panic(|| drop(futures::executor::block_on(group.wait())));
    assert_eq!(msg, "member drop panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokio_never_more_than_the_limit_run() {
    let group: Group<Tag> = Group::new(&Context::background());
    group.set_limit(Some(3));
    let gauge = Arc::new(Gauge::default());
    for _ in 0..40 {
        let gauge = gauge.clone();
        tokio::spawn(group.go(move |_ctx| async move {
            gauge.enter();
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            gauge.leave();
            Ok(())
        }));
    }
    group.wait().await.unwrap();
    assert_eq!(gauge.finished.load(Ordering::SeqCst), 40);
    assert!(gauge.max.load(Ordering::SeqCst) <= 3, "max {}", gauge.max.load(Ordering::SeqCst));
}

#[test]
fn std_threads_never_more_than_the_limit_run_and_go_thread_blocks() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    group.set_limit(Some(2));
    let gauge = Arc::new(Gauge::default());
    for _ in 0..12 {
        let member_gauge = gauge.clone();
        group.go_thread(move |_ctx| {
            let gauge = member_gauge;
            gauge.enter();
            std::thread::yield_now();
            gauge.leave();
            Ok(())
        });
        // `go_thread` returned: a slot was free, so at most 2 are running.
        assert!(gauge.now.load(Ordering::SeqCst) <= 2);
    }
    group.wait_blocking().unwrap();
    assert_eq!(gauge.finished.load(Ordering::SeqCst), 12);
    assert!(gauge.max.load(Ordering::SeqCst) <= 2);
}

#[test]
fn try_go_at_the_limit() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    group.set_limit(Some(1));
    let (release, hold) = Context::unclocked().with_cancel();
    let holder = group
        .try_go(move |_ctx| async move {
            release.done().await;
            Ok(())
        })
        .expect("a slot is free");
    assert!(group.try_go(|_ctx| async { Ok(()) }).is_none());
    assert!(!group.try_go_thread(|_ctx| Ok(())));
    assert_eq!(group.members(), 1, "refused members do not count");
    let holder = std::thread::spawn(move || futures::executor::block_on(holder));
    hold.cancel();
    holder.join().unwrap();
    assert!(group.try_go_thread(|_ctx| Ok(())));
    group.wait_blocking().unwrap();
}

#[test]
fn a_dropped_member_frees_its_slot() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    group.set_limit(Some(1));
    let (_c, waker) = counting_waker();
    let mut running = Box::pin(group.go(|_ctx| std::future::pending()));
    assert!(poll(running.as_mut(), &waker).is_pending());
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = ran.clone();
    let (queued_counter, queued_waker) = counting_waker();
    let mut queued = Box::pin(group.go(move |_ctx| async move {
        ran2.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    assert!(poll(queued.as_mut(), &queued_waker).is_pending(), "over the limit");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    drop(running);
    assert_eq!(queued_counter.wakes(), 1, "the freed slot wakes the queued member");
    assert_eq!(poll(queued.as_mut(), &queued_waker), Poll::Ready(()));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(futures::executor::block_on(group.wait()).is_ok());
}

/// A queued member dropped after being woken for a slot passes the wake-up on.
#[test]
fn a_woken_queued_member_dropped_passes_the_slot_on() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    group.set_limit(Some(1));
    let (_c, waker) = counting_waker();
    let mut running = Box::pin(group.go(|_ctx| std::future::pending()));
    assert!(poll(running.as_mut(), &waker).is_pending());
    let mut first = Box::pin(group.go(|_ctx| async { Ok(()) }));
    let (second_counter, second_waker) = counting_waker();
    let mut second = Box::pin(group.go(|_ctx| async { Ok(()) }));
    assert!(poll(first.as_mut(), &waker).is_pending());
    assert!(poll(second.as_mut(), &second_waker).is_pending());
    drop(running); // wakes `first`
    drop(first); // never takes the slot
    assert_eq!(second_counter.wakes(), 1);
    assert_eq!(poll(second.as_mut(), &second_waker), Poll::Ready(()));
}

#[test]
fn raising_the_limit_admits_waiting_members_and_zero_admits_none() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    group.set_limit(Some(0));
    let (counter, waker) = counting_waker();
    let mut member = Box::pin(group.go(|_ctx| async { Ok(()) }));
    assert!(poll(member.as_mut(), &waker).is_pending());
    assert!(group.try_go(|_ctx| async { Ok(()) }).is_none());
    group.set_limit(None);
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll(member.as_mut(), &waker), Poll::Ready(()));
    assert!(format!("{group:?}").contains("limit: None"));
}

/// Lowering the limit while members run: running members keep their slots; new ones wait
/// until the running count is under the new limit.
#[test]
fn lowering_the_limit_applies_to_members_not_started() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let (_c, waker) = counting_waker();
    let mut running: Vec<_> =
        (0..3).map(|_| Box::pin(group.go(|_ctx| std::future::pending()))).collect();
    for member in &mut running {
        assert!(poll(member.as_mut(), &waker).is_pending());
    }
    group.set_limit(Some(2));
    let mut late = Box::pin(group.go(|_ctx| async { Ok(()) }));
    assert!(poll(late.as_mut(), &waker).is_pending());
    running.pop();
    assert!(poll(late.as_mut(), &waker).is_pending(), "2 running: at the new limit");
    running.pop();
    assert_eq!(poll(late.as_mut(), &waker), Poll::Ready(()));
}

/// A member's error cancels the group's context, which runs its `after_func` callbacks on
/// the member's thread: a panicking callback does not unwind into the member's executor; it
/// is kept and resumed by `wait`, like a member panic. (Before `Shared::contain`, the panic
/// unwound out of the member's `poll`.)
#[test]
fn a_panicking_callback_run_by_a_members_error_is_resumed_by_wait() {
    let group: Group<Tag> = Group::new(&Context::unclocked());
    let _callback = group.context().after_func(|| panic!("callback panicked"));
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures::executor::block_on(group.go(|_ctx| async { Err(Tag("failed")) }))
    }));
    assert!(polled.is_ok(), "the member's poll did not panic");
    assert_eq!(group.members(), 0);
    let msg = resumed_panic(|| drop(futures::executor::block_on(group.wait())));
    assert_eq!(msg, "callback panicked");
}

/// The same for a later error whose `Drop` panics (it is dropped, not recorded).
#[test]
fn a_dropped_later_error_whose_drop_panics_is_contained() {
    #[derive(Debug)]
    struct Loud(&'static str);
    impl std::fmt::Display for Loud {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Loud {}
    impl Drop for Loud {
        fn drop(&mut self) {
            if self.0 == "second" && !std::thread::panicking() {
                panic!("drop of a later error");
            }
        }
    }
    let group: Group<Loud> = Group::new(&Context::unclocked());
    futures::executor::block_on(group.go(|_ctx| async { Err(Loud("first")) }));
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures::executor::block_on(group.go(|_ctx| async { Err(Loud("second")) }))
    }));
    assert!(polled.is_ok());
    let msg = resumed_panic(|| drop(futures::executor::block_on(group.wait())));
    assert_eq!(msg, "drop of a later error");
}

assert_impl_all!(Group<Tag>: std::panic::UnwindSafe, std::panic::RefUnwindSafe);

/// Aborting a member's task on tokio drops its future: its slot goes to the queued member
/// and its count is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_an_aborted_member_frees_its_slot_and_count() {
    let group: Group<Tag> = Group::new(&Context::background());
    group.set_limit(Some(1));
    let (started_tx, started_rx) = futures::channel::oneshot::channel::<()>();
    let stuck = tokio::spawn(group.go(move |_ctx| async move {
        let _ = started_tx.send(());
        std::future::pending().await
    }));
    started_rx.await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = ran.clone();
    let queued = tokio::spawn(group.go(move |_ctx| async move {
        ran2.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    assert_eq!(group.members(), 2);
    stuck.abort();
    assert!(stuck.await.unwrap_err().is_cancelled());
    queued.await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    group.wait().await.unwrap();
    assert_eq!(group.members(), 0);
}
