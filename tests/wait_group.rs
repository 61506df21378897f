//! `WaitGroup`: counting, waiting (async on tokio, smol and by hand; blocking on threads),
//! reuse, `track`, and hostile wakers.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

use cancelctx::{Track, WaitGroup, WaitGroupWait, WaitGuard};
use common::counting_waker;
use futures::future::FusedFuture;
use static_assertions::assert_impl_all;

assert_impl_all!(WaitGroup: Send, Sync, Clone, Default, std::fmt::Debug, Unpin);
assert_impl_all!(WaitGuard: Send, Sync, std::fmt::Debug);
assert_impl_all!(WaitGroupWait<'static>: Send, Sync, Unpin, Future<Output = ()>, FusedFuture, std::fmt::Debug);
assert_impl_all!(Track<std::future::Ready<u8>>: Send, Sync, Future<Output = u8>, FusedFuture, std::fmt::Debug);

fn poll<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut TaskContext::from_waker(waker))
}

#[test]
fn counts_units_and_clones_are_the_same_group() {
    let wg = WaitGroup::default();
    let a = wg.add();
    let b = wg.clone().add();
    assert_eq!(wg.count(), 2);
    assert_eq!(format!("{wg:?}"), "WaitGroup { count: 2 }");
    a.done();
    assert_eq!(wg.count(), 1);
    drop(b);
    assert_eq!(wg.count(), 0);
}

#[test]
fn wait_is_ready_at_once_when_empty() {
    let wg = WaitGroup::new();
    let (counter, waker) = counting_waker();
    let mut wait = pin!(wg.wait());
    assert_eq!(poll(wait.as_mut(), &waker), Poll::Ready(()));
    assert!(wait.is_terminated());
    assert_eq!(counter.wakes(), 0);
}

#[test]
fn wait_wakes_once_when_the_last_guard_drops() {
    let wg = WaitGroup::new();
    let a = wg.add();
    let b = wg.add();
    let (counter, waker) = counting_waker();
    let mut wait = pin!(wg.wait());
    assert!(poll(wait.as_mut(), &waker).is_pending());
    drop(a);
    assert_eq!(counter.wakes(), 0, "not zero yet");
    drop(b);
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll(wait.as_mut(), &waker), Poll::Ready(()));
}

#[test]
fn reusable_after_reaching_zero() {
    let wg = WaitGroup::new();
    for round in 0..3 {
        let guard = wg.add();
        let (counter, waker) = counting_waker();
        let mut wait = pin!(wg.wait());
        assert!(poll(wait.as_mut(), &waker).is_pending(), "round {round}");
        drop(guard);
        assert_eq!(counter.wakes(), 1, "round {round}");
        assert_eq!(poll(wait.as_mut(), &waker), Poll::Ready(()));
    }
}

/// Go: a zero crossing releases every waiter that was waiting, even if the count is back
/// above zero by the time the waiter runs.
#[test]
fn a_zero_crossing_releases_a_waiter_that_runs_after_new_work_was_added() {
    let wg = WaitGroup::new();
    let first = wg.add();
    let (counter, waker) = counting_waker();
    let mut wait = pin!(wg.wait());
    assert!(poll(wait.as_mut(), &waker).is_pending());
    drop(first);
    let _second = wg.add();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll(wait.as_mut(), &waker), Poll::Ready(()));
    // A waiter that starts now waits for the second unit.
    let mut later = pin!(wg.wait());
    assert!(poll(later.as_mut(), &waker).is_pending());
}

#[test]
fn a_waiter_that_never_polled_waits_for_the_current_count() {
    let wg = WaitGroup::new();
    let first = wg.add();
    let wait = wg.wait(); // created, not polled: it has not started waiting
    drop(first);
    let second = wg.add();
    let (_counter, waker) = counting_waker();
    let mut wait = pin!(wait);
    assert!(poll(wait.as_mut(), &waker).is_pending());
    drop(second);
    assert_eq!(poll(wait.as_mut(), &waker), Poll::Ready(()));
}

#[test]
fn a_dropped_waiter_unregisters() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    let (counter, waker) = counting_waker();
    {
        let mut wait = pin!(wg.wait());
        assert!(poll(wait.as_mut(), &waker).is_pending());
    }
    drop(guard);
    assert_eq!(counter.wakes(), 0);
}

#[test]
fn the_latest_waker_is_woken() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    let (first, first_waker) = counting_waker();
    let (second, second_waker) = counting_waker();
    let mut wait = pin!(wg.wait());
    assert!(poll(wait.as_mut(), &first_waker).is_pending());
    assert!(poll(wait.as_mut(), &second_waker).is_pending());
    drop(guard);
    assert_eq!((first.wakes(), second.wakes()), (0, 1));
}

#[test]
fn track_counts_until_completion() {
    let wg = WaitGroup::new();
    let (tx, rx) = futures::channel::oneshot::channel::<u8>();
    let mut tracked = pin!(wg.track(rx));
    assert_eq!(wg.count(), 1);
    let (_c, waker) = counting_waker();
    assert!(poll(tracked.as_mut(), &waker).is_pending());
    assert_eq!(wg.count(), 1);
    tx.send(4).unwrap();
    assert_eq!(poll(tracked.as_mut(), &waker), Poll::Ready(Ok(4)));
    assert!(tracked.is_terminated());
    assert_eq!(wg.count(), 0);
}

#[test]
fn track_stops_counting_when_dropped() {
    let wg = WaitGroup::new();
    let tracked = wg.track(std::future::pending::<()>());
    assert_eq!(wg.count(), 1);
    drop(tracked);
    assert_eq!(wg.count(), 0);
}

/// A future whose `Drop` panics: the tracked unit is still finished.
#[test]
fn track_finishes_the_unit_even_if_the_futures_drop_panics() {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("drop of the tracked future");
        }
    }
    let wg = WaitGroup::new();
    let bomb = PanicOnDrop;
    let tracked = wg.track(async move {
        let _bomb = &bomb;
        std::future::pending::<()>().await
    });
    let mut tracked = Box::pin(tracked);
    let (_c, waker) = counting_waker();
    assert!(poll(tracked.as_mut(), &waker).is_pending());
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(tracked)));
    assert!(dropped.is_err());
    assert_eq!(wg.count(), 0);
}

#[test]
fn blocking_wait_on_threads() {
    let wg = WaitGroup::new();
    let finished = Arc::new(AtomicUsize::new(0));
    for _ in 0..8 {
        let guard = wg.add();
        let finished = finished.clone();
        std::thread::spawn(move || {
            std::thread::yield_now();
            finished.fetch_add(1, Ordering::SeqCst);
            drop(guard);
        });
    }
    wg.wait_blocking();
    assert_eq!(finished.load(Ordering::SeqCst), 8);
    assert_eq!(wg.count(), 0);
}

#[test]
fn a_panicking_thread_still_finishes_its_unit() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    let worker = std::thread::spawn(move || {
        let _guard = guard;
        panic!("worker failed");
    });
    wg.wait_blocking();
    assert!(worker.join().is_err());
}

#[test]
fn wait_timeout_reports_whether_the_count_reached_zero() {
    let wg = WaitGroup::new();
    assert!(wg.wait_timeout(Duration::ZERO));
    let guard = wg.add();
    assert!(!wg.wait_timeout(Duration::ZERO));
    assert!(!wg.wait_timeout(Duration::from_millis(5)), "the unit never finishes");
    let worker = std::thread::spawn(move || drop(guard));
    // Generous: the result does not depend on how long the worker takes, within a minute.
    assert!(wg.wait_timeout(Duration::from_secs(60)));
    worker.join().unwrap();
    assert!(wg.wait_timeout(Duration::MAX), "a huge timeout waits without limit");
}

/// A blocking wait parks its thread; unparks meant for something else (and spurious ones)
/// must not end it.
#[test]
fn blocking_waits_ignore_spurious_unparks() {
    let wg = WaitGroup::new();
    let unit = wg.add();
    let waiters = [
        std::thread::spawn({
            let wg = wg.clone();
            move || {
                wg.wait_blocking();
                true
            }
        }),
        std::thread::spawn({
            let wg = wg.clone();
            move || wg.wait_timeout(Duration::from_secs(3600))
        }),
    ];
    std::thread::sleep(Duration::from_millis(10));
    for waiter in &waiters {
        for _ in 0..200 {
            waiter.thread().unpark();
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    for (i, waiter) in waiters.iter().enumerate() {
        assert!(!waiter.is_finished(), "an unpark ended wait #{i} early");
    }
    drop(unit);
    for waiter in waiters {
        assert!(waiter.join().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokio_tasks_all_finish_before_wait_returns() {
    let wg = WaitGroup::new();
    let finished = Arc::new(AtomicUsize::new(0));
    for i in 0..200 {
        let finished = finished.clone();
        tokio::spawn(wg.track(async move {
            for _ in 0..i % 5 {
                tokio::task::yield_now().await;
            }
            finished.fetch_add(1, Ordering::SeqCst);
        }));
    }
    // Many concurrent waiters too.
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let wg = wg.clone();
            let finished = finished.clone();
            tokio::spawn(async move {
                wg.wait().await;
                finished.load(Ordering::SeqCst)
            })
        })
        .collect();
    wg.wait().await;
    assert_eq!(finished.load(Ordering::SeqCst), 200);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), 200);
    }
}

#[test]
fn smol_tasks_all_finish_before_wait_returns() {
    smol::block_on(async {
        let wg = WaitGroup::new();
        let finished = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let finished = finished.clone();
                smol::spawn(wg.track(async move {
                    smol::future::yield_now().await;
                    finished.fetch_add(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for task in tasks {
            task.detach();
        }
        wg.wait().await;
        assert_eq!(finished.load(Ordering::SeqCst), 100);
    });
}

/// A waker that panics when woken.
struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("waker panicked");
    }
}

/// A panicking waker neither keeps the other waiters asleep nor breaks the group: its panic
/// surfaces on the thread that finished the work, after every waiter was woken.
#[test]
fn a_panicking_waker_loses_no_wake_up() {
    let wg = WaitGroup::new();
    let guard = wg.add();
    let bad = Waker::from(Arc::new(PanickingWaker));
    let (before, before_waker) = counting_waker();
    let (after, after_waker) = counting_waker();
    let mut w1 = pin!(wg.wait());
    let mut w2 = pin!(wg.wait());
    let mut w3 = pin!(wg.wait());
    assert!(poll(w1.as_mut(), &before_waker).is_pending());
    assert!(poll(w2.as_mut(), &bad).is_pending());
    assert!(poll(w3.as_mut(), &after_waker).is_pending());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
    let payload = result.expect_err("the waker's panic is resumed on the notifier");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"waker panicked"));
    assert_eq!((before.wakes(), after.wakes()), (1, 1));
    assert_eq!(wg.count(), 0);
    for w in [w1.as_mut(), w2.as_mut(), w3.as_mut()] {
        assert_eq!(poll(w, &before_waker), Poll::Ready(()));
    }
    // The group still works afterwards.
    let guard = wg.add();
    let (again, again_waker) = counting_waker();
    let mut w4 = pin!(wg.wait());
    assert!(poll(w4.as_mut(), &again_waker).is_pending());
    drop(guard);
    assert_eq!(again.wakes(), 1);
}

/// A waker that polls a waiter of the same group inline (as a run-inline executor would):
/// no deadlock on event-listener's lock.
#[test]
fn a_reentrant_waker_does_not_deadlock() {
    struct Reentrant {
        wg: WaitGroup,
        polled: AtomicBool,
        other: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    }
    impl Wake for Reentrant {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let mut other = self.other.lock().unwrap();
            if let Some(fut) = other.as_mut() {
                let (_c, waker) = counting_waker();
                let _ = poll(fut.as_mut(), &waker);
            }
            // Start and drop a fresh waiter inline as well.
            let (_c, waker) = counting_waker();
            let mut fresh = pin!(self.wg.wait());
            let _ = poll(fresh.as_mut(), &waker);
            self.polled.store(true, Ordering::SeqCst);
        }
    }
    let wg = WaitGroup::new();
    let guard = wg.add();
    let other = {
        let wg = wg.clone();
        Box::pin(async move { wg.wait().await }) as Pin<Box<dyn Future<Output = ()> + Send>>
    };
    let reentrant = Arc::new(Reentrant {
        wg: wg.clone(),
        polled: AtomicBool::new(false),
        other: Mutex::new(Some(other)),
    });
    let waker = Waker::from(reentrant.clone());
    let mut wait = pin!(wg.wait());
    assert!(poll(wait.as_mut(), &waker).is_pending());
    {
        let mut other = reentrant.other.lock().unwrap();
        let (_c, w) = counting_waker();
        assert!(poll(other.as_mut().unwrap().as_mut(), &w).is_pending());
    }
    drop(guard);
    assert!(reentrant.polled.load(Ordering::SeqCst));
    assert_eq!(poll(wait.as_mut(), &waker), Poll::Ready(()));
}

/// Repeated rounds of units finishing on several threads while blocking and async waiters
/// wait on the same (reused) group: every waiter returns every round.
#[test]
fn reuse_under_concurrent_finishers_and_waiters() {
    let wg = WaitGroup::new();
    for _round in 0..100 {
        let finishers: Vec<_> = (0..3)
            .map(|_| {
                let unit = wg.add();
                std::thread::spawn(move || drop(unit))
            })
            .collect();
        let blocking = {
            let wg = wg.clone();
            std::thread::spawn(move || wg.wait_blocking())
        };
        let polling = {
            let wg = wg.clone();
            std::thread::spawn(move || futures::executor::block_on(wg.wait()))
        };
        wg.wait_blocking();
        blocking.join().unwrap();
        polling.join().unwrap();
        for f in finishers {
            f.join().unwrap();
        }
        assert_eq!(wg.count(), 0);
    }
}
assert_impl_all!(WaitGroup: std::panic::UnwindSafe, std::panic::RefUnwindSafe);
assert_impl_all!(WaitGuard: std::panic::UnwindSafe, std::panic::RefUnwindSafe);

/// `track` on tokio: an aborted task's future is dropped, which finishes its unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_an_aborted_tracked_task_finishes_its_unit() {
    let wg = WaitGroup::new();
    let task = tokio::spawn(wg.track(std::future::pending::<()>()));
    assert_eq!(wg.count(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    wg.wait().await;
    assert_eq!(wg.count(), 0);
}
