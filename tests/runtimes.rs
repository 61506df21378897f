//! The timeout scenario on real clocks: the std clock with threads, tokio with paused time
//! (`TokioClock`), and smol / async-std (`AsyncIoClock`).
//!
//! Run all of it with `cargo test --all-features --test runtimes` (or
//! `--features tokio,async-io`). With default features only the std-clock tests are
//! compiled and run; the `tokio_clock` module needs feature `tokio` and the `async_io_clock`
//! module feature `async-io`.
//!
//! No test asserts on elapsed wall-clock time. Bounds such as `wait_timeout(10 s)` only turn
//! a hang into a failure. Tokio's paused time is virtual and exact, so the tokio tests do
//! check when (in virtual time) a deadline fired.
//!
//! Timer release on real clocks is checked through [`Tracked`], a wrapper clock that
//! records the keys the library schedules and cancels, and hands the inner clock a probe
//! waker whose drop shows that the inner clock really let go of the wake-up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Wake, Waker};
use std::thread;
use std::time::Duration;

use cancelctx::{Clock, Context, Error, Instant, StdClock, TimerKey};

mod common;
use common::Tag;

/// Upper bound for real-time waits; only guards against hangs, never asserted on.
const BOUND: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(20);
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Asserts `ctx` is done with `err`, with cause `Tag(tag)` if given, else the error itself.
#[track_caller]
fn assert_done(ctx: &Context, err: Error, tag: Option<&'static str>) {
    assert_eq!(ctx.err(), Some(err), "{ctx:?}");
    assert_eq!(ctx.check(), Err(err));
    let cause = ctx.cause().expect("a done context has a cause");
    match tag {
        Some(tag) => assert_eq!(cause.downcast_ref::<Tag>(), Some(&Tag(tag)), "{cause:?}"),
        None => assert_eq!(cause.downcast_ref::<Error>(), Some(&err), "{cause:?}"),
    }
}

/// An `after_func` counter.
fn count_runs(ctx: &Context) -> (Arc<AtomicUsize>, cancelctx::AfterFunc) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handle = ctx.after_func(move || {
        r.fetch_add(1, SeqCst);
    });
    (runs, handle)
}

/// Polls `cond` (sleeping briefly between tries, to give other threads a chance) until it
/// holds or [`BOUND`] passes; returns whether it held. Only a hang guard.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > BOUND {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// A clock wrapper that tracks what the library does with the inner clock.
#[derive(Clone)]
struct Tracked<C> {
    inner: C,
    track: Arc<Track>,
}

#[derive(Default)]
struct Track {
    /// Keys scheduled and neither fired nor cancelled (the library never cancels a key whose
    /// wake-up it has seen).
    outstanding: Mutex<HashSet<TimerKey>>,
    schedules: AtomicUsize,
    /// Probe wakers the inner clock still holds (or has not dropped yet).
    live_wakers: AtomicUsize,
}

impl Track {
    fn outstanding(&self) -> usize {
        self.outstanding.lock().unwrap().len()
    }
    fn schedules(&self) -> usize {
        self.schedules.load(SeqCst)
    }
    fn live_wakers(&self) -> usize {
        self.live_wakers.load(SeqCst)
    }
}

/// The waker handed to the inner clock: forwards wake-ups, counts itself alive.
struct Probe {
    inner: Waker,
    track: Arc<Track>,
    /// The key, once `schedule` returned it; `fired` if woken before that.
    key: Mutex<(Option<TimerKey>, bool)>,
}

impl Wake for Probe {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let key = {
            let mut k = self.key.lock().unwrap();
            k.1 = true;
            k.0
        };
        if let Some(key) = key {
            self.track.outstanding.lock().unwrap().remove(&key);
        }
        self.inner.wake_by_ref();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.track.live_wakers.fetch_sub(1, SeqCst);
    }
}

impl<C: Clock> Tracked<C> {
    fn new(inner: C) -> Tracked<C> {
        Tracked { inner, track: Arc::default() }
    }
}

impl<C: Clock> Clock for Tracked<C> {
    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        self.track.live_wakers.fetch_add(1, SeqCst);
        self.track.schedules.fetch_add(1, SeqCst);
        let probe = Arc::new(Probe {
            inner: waker,
            track: self.track.clone(),
            key: Mutex::new((None, false)),
        });
        let key = self.inner.schedule(deadline, Waker::from(probe.clone()));
        let mut k = probe.key.lock().unwrap();
        k.0 = Some(key);
        if !k.1 {
            self.track.outstanding.lock().unwrap().insert(key);
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        self.track.outstanding.lock().unwrap().remove(&key);
        self.inner.cancel(key);
    }
}

// ---------------------------------------------------------------------------------------
// The std clock (default features)
// ---------------------------------------------------------------------------------------

#[test]
fn std_clock_timeout_wakes_a_blocking_waiter_and_runs_after_func_on_the_timer_thread() {
    let (ctx, _guard) = Context::background().with_timeout(SHORT);
    assert!(ctx.deadline().is_some());
    let (tx, rx) = mpsc::channel();
    let c = ctx.clone();
    let _h = ctx.after_func(move || {
        let name = thread::current().name().map(str::to_owned);
        tx.send((name, c.err())).unwrap();
    });
    let (child, _cg) = ctx.with_cancel();
    let waiter = thread::spawn(move || child.wait_timeout(BOUND));

    assert_eq!(waiter.join().unwrap(), Some(Error::DeadlineExceeded), "the waiter timed out");
    assert_done(&ctx, Error::DeadlineExceeded, None);
    let (name, err) = rx.recv_timeout(BOUND).expect("after_func ran");
    assert_eq!(name.as_deref(), Some("cancelctx-timer"));
    assert_eq!(err, Some(Error::DeadlineExceeded));
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
}

#[test]
fn std_clock_timeout_cause_reaches_descendants() {
    let (ctx, _guard) = Context::background().with_timeout_cause(SHORT, Tag("slow"));
    let (child, _cg) = ctx.with_value(1u8).with_cancel();
    let (later, _lg) = child.with_timeout(HOUR); // shares the parent's deadline
    assert_eq!(later.deadline(), ctx.deadline());
    assert_eq!(later.wait_timeout(BOUND), Some(Error::DeadlineExceeded));
    for c in [&ctx, &child, &later] {
        assert_done(c, Error::DeadlineExceeded, Some("slow"));
    }
}

#[test]
fn std_clock_earlier_deadline_scheduled_later_fires_first() {
    // The timer thread sleeps towards the hour-long deadline; a shorter one added afterwards
    // must wake it.
    let (long, _lg) = Context::background().with_timeout(HOUR);
    thread::sleep(Duration::from_millis(5)); // let the timer thread start waiting
    let (short, _sg) = Context::background().with_timeout(SHORT);
    assert_eq!(short.wait_timeout(BOUND), Some(Error::DeadlineExceeded));
    assert_eq!(long.err(), None);
}

#[test]
fn std_clock_earlier_deadline_from_another_thread_wakes_the_timer_thread() {
    // Each thread schedules into its own shard of the std clock; the timer thread, asleep
    // towards an hour-long deadline of one shard, must still wake for a shorter deadline
    // scheduled into another shard.
    let (long, _lg) = Context::background().with_timeout(HOUR);
    thread::sleep(Duration::from_millis(5)); // let the timer thread start waiting
    let short = thread::spawn(|| {
        let (short, guard) = Context::background().with_timeout(SHORT);
        (short.wait_timeout(BOUND), guard)
    });
    assert_eq!(short.join().unwrap().0, Some(Error::DeadlineExceeded));
    assert_eq!(long.err(), None);
}

#[test]
fn std_clock_timers_scheduled_on_many_threads_fire_or_are_cancelled_from_others() {
    // More threads than shards: timers of every shard fire, and a guard dropped on another
    // thread than the one that scheduled its timer releases it in the right shard.
    let clock = Tracked::new(StdClock);
    let track = clock.track.clone();
    let root = Context::with_clock(clock);
    let threads = 4 * thread::available_parallelism().map_or(1, usize::from) + 1;
    let made: Vec<_> = (0..threads)
        .map(|i| {
            let root = root.clone();
            thread::spawn(move || {
                let short = root.with_timeout(Duration::from_millis(1 + (i % 5) as u64));
                let long = root.with_timeout(HOUR);
                (short, long)
            })
        })
        .collect();
    let made: Vec<_> = made.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(track.schedules(), 2 * threads);
    let mut shorts = Vec::new();
    for ((short, short_guard), (long, long_guard)) in made {
        drop(long_guard); // cancelled here, on another thread than its shard's
        assert_done(&long, Error::Canceled, None);
        shorts.push((short, short_guard));
    }
    for (short, _guard) in &shorts {
        assert_eq!(short.wait_timeout(BOUND), Some(Error::DeadlineExceeded));
    }
    drop(shorts);
    assert_eq!(track.outstanding(), 0);
    assert!(eventually(|| track.live_wakers() == 0), "the std clock kept wakers");
}

#[test]
fn std_clock_churn_on_many_threads_fires_every_due_timer_and_keeps_no_waker() {
    // Threads of every shard at once create short timeouts (which must fire) and hour-long
    // ones (cancelled at once or after the short ones fired), so that schedules, cancels,
    // kicks and the timer thread's rounds interleave across shards.
    let clock = Tracked::new(StdClock);
    let track = clock.track.clone();
    let root = Context::with_clock(clock);
    let threads = 2 * thread::available_parallelism().map_or(1, usize::from) + 2;
    let workers: Vec<_> = (0..threads as u64)
        .map(|t| {
            let root = root.clone();
            thread::spawn(move || {
                let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1; // xorshift state
                let mut kept = Vec::new();
                for _ in 0..200 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    match rng % 4 {
                        0 => {
                            let (ctx, guard) = root.with_timeout(HOUR);
                            drop(guard);
                            assert_eq!(ctx.err(), Some(Error::Canceled));
                        }
                        1 => kept.push((root.with_timeout(HOUR), false)),
                        _ => {
                            kept.push((root.with_timeout(Duration::from_micros(rng % 2_000)), true))
                        }
                    }
                }
                for ((ctx, guard), fires) in kept {
                    if fires {
                        assert_eq!(ctx.wait_timeout(BOUND), Some(Error::DeadlineExceeded));
                    } else {
                        drop(guard);
                        assert_eq!(ctx.err(), Some(Error::Canceled));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(track.outstanding(), 0);
    assert!(eventually(|| track.live_wakers() == 0), "the std clock kept wakers");
}

#[test]
fn std_clock_extreme_deadlines_do_not_block_other_timers() {
    let clock = Tracked::new(StdClock);
    let track = clock.track.clone();
    let root = Context::with_clock(clock);
    let (max, mg) = root.with_deadline(Instant::MAX);
    let (saturated, sg) = root.with_timeout(Duration::MAX);
    assert_eq!(saturated.deadline(), Some(Instant::MAX));
    thread::sleep(Duration::from_millis(5)); // let the timer thread wait on them
    let (short, _g) = root.with_timeout(SHORT);
    assert_eq!(short.wait_timeout(BOUND), Some(Error::DeadlineExceeded));
    assert_eq!((max.err(), saturated.err()), (None, None));
    drop((mg, sg));
    assert_eq!(track.outstanding(), 0);
    assert!(eventually(|| track.live_wakers() == 0));
}

#[test]
fn std_clock_many_timeouts_all_fire_and_release_their_wakers() {
    let clock = Tracked::new(StdClock);
    let track = clock.track.clone();
    let root = Context::with_clock(clock);
    let contexts: Vec<_> = (1..=50u64)
        .map(|ms| {
            let (ctx, guard) = root.with_timeout(Duration::from_millis(ms));
            let runs = count_runs(&ctx);
            (ctx, guard, runs)
        })
        .collect();
    assert_eq!(track.schedules(), 50);
    for (ctx, _guard, _) in &contexts {
        assert_eq!(ctx.wait_timeout(BOUND), Some(Error::DeadlineExceeded));
    }
    assert!(eventually(|| contexts.iter().all(|(_, _, (runs, _))| runs.load(SeqCst) == 1)));
    assert!(eventually(|| track.live_wakers() == 0), "the std clock kept fired wakers");
    for (_, _, (runs, _)) in &contexts {
        assert_eq!(runs.load(SeqCst), 1);
    }
}

#[test]
fn std_clock_cancel_before_deadline_releases_the_timer() {
    let clock = Tracked::new(StdClock);
    let track = clock.track.clone();
    let root = Context::with_clock(clock);
    let (ctx, guard) = root.with_timeout(HOUR);
    let (child, _cg) = ctx.with_timeout(HOUR / 2);
    assert_eq!((track.schedules(), track.outstanding(), track.live_wakers()), (2, 2, 2));
    guard.cancel();
    assert_done(&ctx, Error::Canceled, None);
    assert_done(&child, Error::Canceled, None);
    assert_eq!(track.outstanding(), 0, "cancel must release both timers");
    assert_eq!(track.live_wakers(), 0, "the std clock must drop the wakers on cancel");
}

#[test]
fn std_clock_dropping_every_handle_releases_the_timer() {
    let clock = Tracked::new(StdClock);
    let track = clock.track.clone();
    let root = Context::with_clock(clock);
    let (ctx, guard) = root.with_timeout(HOUR);
    guard.detach();
    assert_eq!(track.outstanding(), 1);
    drop(ctx);
    assert_eq!(track.outstanding(), 0);
    assert_eq!(track.live_wakers(), 0);
}

#[test]
fn std_clock_race_cancel_vs_expiry() {
    let clock = Tracked::new(StdClock);
    let track = clock.track.clone();
    let root = Context::with_clock(clock);
    let mut outcomes = [0usize; 2];
    for i in 0..200u32 {
        let (ctx, guard) = root.with_timeout_cause(Duration::from_micros(500), Tag("deadline"));
        let (runs, _h) = count_runs(&ctx);
        let canceller = thread::spawn(move || {
            // Somewhere around the deadline.
            thread::sleep(Duration::from_micros(u64::from(i % 10) * 100));
            guard.cancel_with(Tag("cancel"));
            guard
        });
        let _guard = canceller.join().unwrap();
        let err = ctx.wait_timeout(BOUND).expect("done");
        let tag = if err == Error::Canceled { "cancel" } else { "deadline" };
        assert_done(&ctx, err, Some(tag));
        // The deadline's callbacks run on the timer thread: wait for them, then check once.
        assert!(eventually(|| runs.load(SeqCst) >= 1));
        assert_eq!(runs.load(SeqCst), 1, "iteration {i}");
        outcomes[usize::from(err == Error::DeadlineExceeded)] += 1;
    }
    assert!(eventually(|| track.live_wakers() == 0), "wakers left behind");
    eprintln!(
        "std_clock_race_cancel_vs_expiry: canceled {} / deadline {}",
        outcomes[0], outcomes[1]
    );
}

// ---------------------------------------------------------------------------------------
// tokio (feature "tokio")
// ---------------------------------------------------------------------------------------

#[cfg(feature = "tokio")]
mod tokio_clock {
    use super::*;
    use cancelctx::TokioClock;

    fn alive_tasks() -> usize {
        tokio::runtime::Handle::current().metrics().num_alive_tasks()
    }

    /// Yields to the runtime until `cond` holds (at most a bounded number of times).
    async fn yield_until(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..10_000 {
            if cond() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        cond()
    }

    #[tokio::test(start_paused = true)]
    async fn paused_hour_timeout_resolves_by_auto_advance() {
        let start = tokio::time::Instant::now();
        let root = Context::with_clock(TokioClock::new());
        let (ctx, _guard) = root.with_timeout_cause(HOUR, Tag("hour"));
        let (child, _cg) = ctx.with_cancel();
        let (runs, _h) = count_runs(&ctx);
        assert_eq!(ctx.remaining(), Some(HOUR));

        // Virtual time: the bound is a second virtual hour, so a lost wake-up fails here.
        let err = tokio::time::timeout(2 * HOUR, child.done()).await;
        assert_eq!(err, Ok(Error::DeadlineExceeded));
        assert!(start.elapsed() >= HOUR, "fired early: {:?} of virtual time", start.elapsed());
        assert!(start.elapsed() < 2 * HOUR);
        assert_done(&ctx, Error::DeadlineExceeded, Some("hour"));
        assert_done(&child, Error::DeadlineExceeded, Some("hour"));
        assert_eq!(runs.load(SeqCst), 1);
        assert_eq!(ctx.remaining(), Some(Duration::ZERO));
        assert!(root.now().unwrap() >= ctx.deadline().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn paused_cancel_before_deadline_releases_the_timer() {
        let clock = Tracked::new(TokioClock::new());
        let track = clock.track.clone();
        let root = Context::with_clock(clock);
        let (ctx, guard) = root.with_timeout(HOUR);
        let (runs, _h) = count_runs(&ctx);
        assert_eq!(track.outstanding(), 1);
        assert_eq!(alive_tasks(), 1, "one timer task per deadline");

        tokio::time::advance(HOUR / 2).await;
        assert_eq!(ctx.err(), None);
        guard.cancel();
        assert_done(&ctx, Error::Canceled, None);
        assert_eq!(track.outstanding(), 0, "cancel must release the timer");
        assert!(
            yield_until(|| track.live_wakers() == 0 && alive_tasks() == 0).await,
            "the timer task was not aborted: {} tasks, {} wakers",
            alive_tasks(),
            track.live_wakers()
        );

        tokio::time::advance(2 * HOUR).await;
        tokio::task::yield_now().await;
        assert_done(&ctx, Error::Canceled, None);
        assert_eq!(runs.load(SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_dropping_every_handle_releases_the_timer() {
        let clock = Tracked::new(TokioClock::new());
        let track = clock.track.clone();
        let root = Context::with_clock(clock);
        let (ctx, guard) = root.with_timeout(HOUR);
        guard.detach();
        drop(ctx);
        assert_eq!(track.outstanding(), 0);
        assert!(yield_until(|| track.live_wakers() == 0 && alive_tasks() == 0).await);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_child_deadlines_fire_in_order() {
        let start = tokio::time::Instant::now();
        let root = Context::with_clock(TokioClock::new());
        let (parent, _pg) = root.with_timeout(2 * HOUR);
        let (child, _cg) = parent.with_timeout_cause(HOUR, Tag("child"));
        let (shared, _sg) = child.with_timeout(3 * HOUR); // shares the child's deadline

        assert_eq!(shared.done().await, Error::DeadlineExceeded);
        let first = start.elapsed();
        assert!(first >= HOUR && first < 2 * HOUR, "child fired at {first:?}");
        assert_done(&child, Error::DeadlineExceeded, Some("child"));
        assert_done(&shared, Error::DeadlineExceeded, Some("child"));
        assert_eq!(parent.err(), None);

        assert_eq!(parent.done().await, Error::DeadlineExceeded);
        // `start` is a tokio Instant under paused time: virtual, deterministic, like ManualClock.
        assert!(start.elapsed() >= 2 * HOUR, "parent fired at {:?}", start.elapsed());
        assert_done(&parent, Error::DeadlineExceeded, None);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_manual_advance_fires_at_the_deadline() {
        let root = Context::with_clock(TokioClock::new());
        let (ctx, _guard) = root.with_timeout(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(ctx.err(), None, "fired before its deadline");
        tokio::time::advance(Duration::from_secs(1)).await;
        let err = tokio::time::timeout(Duration::from_secs(1), ctx.done()).await;
        assert_eq!(err, Ok(Error::DeadlineExceeded));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_born_done_and_saturated_deadlines() {
        let clock = Tracked::new(TokioClock::new());
        let track = clock.track.clone();
        let root = Context::with_clock(clock);
        let (zero, _zg) = root.with_timeout(Duration::ZERO);
        assert_done(&zero, Error::DeadlineExceeded, None);
        assert_eq!(track.schedules(), 0, "a born-done deadline schedules nothing");
        assert_eq!(alive_tasks(), 0);

        let (max, mg) = root.with_timeout(Duration::MAX);
        assert_eq!(max.deadline(), Some(Instant::MAX));
        // Ten virtual years pass; a deadline at the end of time does not fire.
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!(start.elapsed() >= Duration::from_secs(10 * 365 * 24 * 3600));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(max.err(), None);
        mg.cancel();
        assert_done(&max, Error::Canceled, None);
        assert_eq!(track.outstanding(), 0);
        assert!(yield_until(|| track.live_wakers() == 0 && alive_tasks() == 0).await);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_multi_year_timeout_fires_at_its_deadline() {
        // Beyond the range of tokio's timer wheel (about 2.2 years).
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        let start = tokio::time::Instant::now();
        let root = Context::with_clock(TokioClock::new());
        let (ctx, _guard) = root.with_timeout(5 * YEAR);
        let err = tokio::time::timeout(6 * YEAR, ctx.done()).await;
        assert_eq!(err, Ok(Error::DeadlineExceeded));
        assert!(start.elapsed() >= 5 * YEAR, "fired early, at {:?}", start.elapsed());
        assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_thread_real_time_timeout() {
        let root = Context::with_clock(TokioClock::new());
        let (ctx, _guard) = root.with_timeout(SHORT);
        let (runs, _h) = count_runs(&ctx);
        let task = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.run(std::future::pending::<()>()).await }
        });
        let err = tokio::time::timeout(BOUND, ctx.done()).await;
        assert_eq!(err, Ok(Error::DeadlineExceeded));
        let run = tokio::time::timeout(BOUND, task).await.expect("hang").unwrap();
        assert_eq!(run, Err(Error::DeadlineExceeded));
        assert_done(&ctx, Error::DeadlineExceeded, None);
        assert!(eventually(|| runs.load(SeqCst) == 1));
    }

    #[test]
    fn with_handle_serves_deadlines_created_on_plain_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let root = Context::with_clock(TokioClock::with_handle(rt.handle().clone()));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let root = root.clone();
                thread::spawn(move || {
                    let (ctx, _guard) = root.with_timeout(SHORT);
                    ctx.wait_timeout(BOUND)
                })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Some(Error::DeadlineExceeded));
        }
        drop(root);
        drop(rt);
    }
}

// ---------------------------------------------------------------------------------------
// smol and async-std (feature "async-io")
// ---------------------------------------------------------------------------------------

#[cfg(feature = "async-io")]
mod async_io_clock {
    use super::*;
    use cancelctx::AsyncIoClock;
    use futures::FutureExt;

    /// Drives async-io's reactor (which processes timer removals lazily) until `cond`
    /// holds, within a bounded number of short sleeps.
    async fn drive_until(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if cond() {
                return true;
            }
            smol::Timer::after(Duration::from_millis(1)).await;
        }
        cond()
    }

    /// `ctx.done()`, or `None` after [`BOUND`].
    async fn done_within_bound(ctx: &Context) -> Option<Error> {
        futures::select! {
            err = ctx.done() => Some(err),
            _ = smol::Timer::after(BOUND).fuse() => None,
        }
    }

    #[test]
    fn smol_timeout_resolves() {
        smol::block_on(async {
            let root = Context::with_clock(AsyncIoClock::new());
            let (ctx, _guard) = root.with_timeout_cause(SHORT, Tag("smol"));
            let (child, _cg) = ctx.with_cancel();
            let (runs, _h) = count_runs(&ctx);
            assert_eq!(done_within_bound(&child).await, Some(Error::DeadlineExceeded));
            assert_done(&ctx, Error::DeadlineExceeded, Some("smol"));
            assert_done(&child, Error::DeadlineExceeded, Some("smol"));
            assert!(drive_until(|| runs.load(SeqCst) == 1).await);
        });
    }

    #[test]
    fn smol_executor_many_tasks_time_out() {
        let ex = smol::Executor::new();
        let root = Context::with_clock(AsyncIoClock::new());
        let tasks: Vec<_> = (1..=50u64)
            .map(|ms| {
                let root = root.clone();
                ex.spawn(async move {
                    let (ctx, _guard) = root.with_timeout(Duration::from_millis(ms));
                    ctx.run(std::future::pending::<()>()).await
                })
            })
            .collect();
        smol::block_on(ex.run(async {
            for task in tasks {
                let result = futures::select! {
                    r = task.fuse() => r,
                    _ = smol::Timer::after(BOUND).fuse() => panic!("hang"),
                };
                assert_eq!(result, Err(Error::DeadlineExceeded));
            }
        }));
    }

    #[test]
    fn smol_cancel_before_deadline_releases_the_timer() {
        smol::block_on(async {
            let clock = Tracked::new(AsyncIoClock::new());
            let track = clock.track.clone();
            let root = Context::with_clock(clock);
            let (ctx, guard) = root.with_timeout(HOUR);
            let (detached, dg) = root.with_timeout(HOUR);
            assert_eq!(track.outstanding(), 2);
            guard.cancel();
            dg.detach();
            drop(detached);
            assert_done(&ctx, Error::Canceled, None);
            assert_eq!(track.outstanding(), 0, "cancel and drop must release the timers");
            assert!(
                drive_until(|| track.live_wakers() == 0).await,
                "the reactor still holds {} wakers",
                track.live_wakers()
            );
        });
    }

    #[async_std::test]
    async fn async_std_timeout_resolves() {
        let root = Context::with_clock(AsyncIoClock::new());
        let (ctx, _guard) = root.with_timeout(SHORT);
        let (child, _cg) = ctx.with_value("v").with_cancel();
        let err = async_std::future::timeout(BOUND, child.done()).await;
        assert_eq!(err, Ok(Error::DeadlineExceeded));
        assert_done(&ctx, Error::DeadlineExceeded, None);
        let task = async_std::task::spawn({
            let ctx = ctx.clone();
            async move { ctx.run(async { 1 }).await }
        });
        assert_eq!(task.await, Err(Error::DeadlineExceeded));
    }

    #[async_std::test]
    async fn async_std_cancel_before_deadline_releases_the_timer() {
        let clock = Tracked::new(AsyncIoClock::new());
        let track = clock.track.clone();
        let root = Context::with_clock(clock);
        let (ctx, guard) = root.with_timeout(HOUR);
        drop(guard);
        assert_done(&ctx, Error::Canceled, None);
        assert_eq!(track.outstanding(), 0);
        assert!(drive_until(|| track.live_wakers() == 0).await);
    }

    #[test]
    fn smol_extreme_deadline_does_not_block_other_timers() {
        smol::block_on(async {
            let clock = Tracked::new(AsyncIoClock::new());
            let track = clock.track.clone();
            let root = Context::with_clock(clock);
            let (max, mg) = root.with_timeout(Duration::MAX);
            assert_eq!(max.deadline(), Some(Instant::MAX));
            let (short, _g) = root.with_timeout(SHORT);
            assert_eq!(done_within_bound(&short).await, Some(Error::DeadlineExceeded));
            assert_eq!(max.err(), None);
            drop(mg);
            assert_done(&max, Error::Canceled, None);
            assert_eq!(track.outstanding(), 0);
            assert!(drive_until(|| track.live_wakers() == 0).await);
        });
    }

    #[test]
    fn async_io_clock_serves_blocking_waiters_without_an_executor() {
        // Nobody runs `block_on`: async-io's own driver thread fires the timer.
        let root = Context::with_clock(AsyncIoClock::new());
        let (ctx, _guard) = root.with_timeout(SHORT);
        let waiter = thread::spawn(move || ctx.wait_timeout(BOUND));
        assert_eq!(waiter.join().unwrap(), Some(Error::DeadlineExceeded));
    }
}
