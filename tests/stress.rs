//! Multi-threaded stress tests: random trees built, cancelled, timed out and dropped by
//! several threads at once while other threads wait on them, blocking and async.
//!
//! What every test checks, whatever the interleaving:
//!
//! - **No lost wake-up.** Every waiter (blocking `wait`/`wait_timeout`, `done()` on
//!   `futures::executor`, `done_owned()` on a tokio runtime, `run`) returns once its context is
//!   done. Waits are bounded by a generous 30 s of wall time ([`WAIT_BOUND`]); a wait that runs
//!   out of it fails the test (it can only mean a lost wake-up or a deadlock).
//! - **One final error.** What a waiter gets is what `err()` reports then and forever, and
//!   `cause()` agrees with it (see [`assert_done_with`]).
//! - **`after_func` exactly once.** Every registration that `stop` did not stop has run exactly
//!   once when its context is done; a stopped one never runs; a callback always finds its
//!   context done.
//! - **Completion is complete when it returns.** When any `cancel()` of a context returns
//!   (whether it won or lost the race), every descendant is done; when a clock move returns,
//!   every context whose deadline is due is done.
//! - **Nothing leaks.** After everything is dropped, every tracked value and callback closure
//!   is freed and the clock holds no timer (`ManualClock::pending_timers() == 0`).
//! - No panic anywhere (a panic on any thread fails the test).
//!
//! Bounds: each test runs rounds until it has done its round count or used its time budget
//! (default 5 s), whichever comes first; the budget only limits the work, it is never a pass
//! or fail criterion. Knobs (environment variables):
//!
//! - `CANCELCTX_TEST_SCALE=small`: fewer operations per thread, smaller trees and a 1 s budget
//!   (for valgrind and the sanitizers).
//! - `CANCELCTX_STRESS_SECS=<f64>`: the time budget per test.
//! - `CANCELCTX_STRESS_SEED=<u64>`: the base seed (printed by every test; it replays each
//!   thread's operation sequence, not the interleaving).
//!
//! The last tests are deterministic checks of documented completion and clock guarantees
//! that came out of this stress work (losing cancels, concurrent clock moves, passed parent
//! deadlines, clocks that never wake).
//!
//! Randomness comes from a small xorshift generator ([`Rng`]), so no new dependency is needed.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread;
use std::time::Duration;

use cancelctx::{
    AfterFunc, CancelGuard, Clock, Context, Error, Instant as CtxInstant, ManualClock, TimerKey,
};

/// How long any single wait may take before the test calls it a lost wake-up. Only ever
/// reached by a bug: it bounds hangs, it does not measure anything.
const WAIT_BOUND: Duration = Duration::from_secs(30);

/// How long a thread that does a fixed amount of work may take before the test calls it a
/// deadlock (generous for sanitizer and valgrind builds).
const WORK_BOUND: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Infrastructure: RNG, budgets, tracked values, causes, workers.
// ---------------------------------------------------------------------------------------

/// xorshift64* — tiny, seedable, good enough to pick operations.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `true` with probability `p` percent.
    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// A generator for sub-task `k` of this one.
    fn fork(&mut self, k: u64) -> Rng {
        Rng::new(self.next_u64() ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }
}

fn small_scale() -> bool {
    std::env::var("CANCELCTX_TEST_SCALE").is_ok_and(|s| s == "small")
}

/// Picks `full` normally and `small` under `CANCELCTX_TEST_SCALE=small`.
fn scaled(full: usize, small: usize) -> usize {
    if small_scale() {
        small
    } else {
        full
    }
}

fn base_seed(test: &str) -> u64 {
    let seed = match std::env::var("CANCELCTX_STRESS_SEED") {
        Ok(s) => s.parse().expect("CANCELCTX_STRESS_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    println!("{test}: seed = {seed} (CANCELCTX_STRESS_SEED={seed} replays the op sequences)");
    seed
}

/// Runs rounds until `rounds` are done or the time budget is used up (at least one round).
struct Budget {
    name: &'static str,
    start: std::time::Instant,
    time: Duration,
    rounds: usize,
    done: usize,
}

impl Budget {
    fn new(name: &'static str, full_rounds: usize) -> Budget {
        let secs = match std::env::var("CANCELCTX_STRESS_SECS") {
            Ok(s) => s.parse::<f64>().expect("CANCELCTX_STRESS_SECS must be a number"),
            Err(_) if small_scale() => 1.0,
            Err(_) => 5.0,
        };
        Budget {
            name,
            start: std::time::Instant::now(),
            time: Duration::from_secs_f64(secs),
            rounds: scaled(full_rounds, full_rounds.div_ceil(20).max(2)),
            done: 0,
        }
    }

    /// Whether to run another round. The time budget only limits how much work is done.
    fn next_round(&mut self) -> bool {
        let more = self.done == 0 || (self.done < self.rounds && self.start.elapsed() < self.time);
        if more {
            self.done += 1;
        } else {
            println!("{}: {} rounds in {:?}", self.name, self.done, self.start.elapsed());
        }
        more
    }
}

/// A value whose live instances are counted, to prove that nothing keeps it alive at the end.
struct Tracked {
    live: Arc<AtomicIsize>,
    id: u64,
}

impl Tracked {
    fn new(live: &Arc<AtomicIsize>, id: u64) -> Tracked {
        live.fetch_add(1, Ordering::SeqCst);
        Tracked { live: live.clone(), id }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The value type stored with `with_value`: `value::<Tag>()` must find the nearest one.
struct Tag(Tracked);

/// An explicit cause that records which error its completion used, so that "the cause agrees
/// with `err()`" can be checked for every context.
#[derive(Debug)]
struct Why {
    err: Error,
    id: u64,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stress cause #{} ({:?})", self.id, self.err)
    }
}

impl StdError for Why {}

/// Checks that a context someone saw done with `seen` reports exactly that, now and in
/// `cause()`: the cause is either the `Error` itself or a [`Why`] made for that error.
#[track_caller]
fn assert_done_with(ctx: &Context, seen: Error) {
    assert_eq!(ctx.err(), Some(seen), "err() disagrees with the error a waiter saw");
    assert!(ctx.is_done(), "is_done() disagrees with err()");
    assert_eq!(ctx.check(), Err(seen), "check() disagrees with err()");
    let cause = ctx.cause().expect("a done context has a cause");
    let from_cause = if let Some(err) = cause.downcast_ref::<Error>() {
        *err
    } else if let Some(why) = cause.downcast_ref::<Why>() {
        why.err
    } else {
        panic!("unexpected cause type: {cause}");
    };
    assert_eq!(from_cause, seen, "cause ({cause}) disagrees with err() ({seen:?})");
    assert_eq!(ctx.err(), Some(seen), "err() changed after the context was done");
}

/// A thread whose completion is awaited with a bound, so a hang fails the test instead of
/// hanging it (the stuck thread is left behind; the test process ends anyway).
struct Worker {
    name: String,
    finished: mpsc::Receiver<()>,
    handle: thread::JoinHandle<()>,
}

fn spawn_worker(name: impl Into<String>, f: impl FnOnce() + Send + 'static) -> Worker {
    let name = name.into();
    let (tx, finished) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            f();
            let _ = tx.send(());
        })
        .expect("spawn a stress thread");
    Worker { name, finished, handle }
}

impl Worker {
    /// Waits for the thread (at most `bound`), re-raising its panic if it had one.
    #[track_caller]
    fn finish(self, bound: Duration) {
        match self.finished.recv_timeout(bound) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(panic) = self.handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "thread `{}` did not finish within {bound:?}: lost wake-up or deadlock",
                self.name
            ),
        }
    }
}

fn noop_poll<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut TaskContext::from_waker(futures::task::noop_waker_ref()))
}

fn small_tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .thread_name("stress-tokio")
        .build()
        .expect("build a tokio runtime")
}

// ---------------------------------------------------------------------------------------
// 1. Random subtrees of a shared root: the main mixed stress.
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Entry {
    ctx: Context,
    /// Ids of the entries this one was derived from, root first, its own id last (clones
    /// share the id of the context they clone).
    path: Arc<[u64]>,
    /// What made it (for failure messages).
    kind: &'static str,
    guard: Option<Arc<CancelGuard>>,
    /// Id of the nearest `Tag` at or above this context.
    tag: Option<u64>,
    /// The deadline it had when created (a deadline never changes).
    deadline: Option<CtxInstant>,
}

struct Reg {
    handle: AfterFunc,
    count: Arc<AtomicUsize>,
    stopped: bool,
}

struct Round {
    clock: ManualClock,
    root: Context,
    /// Entry 0 is the round context; it has no guard here and is never removed.
    pool: Mutex<Vec<Entry>>,
    regs: Mutex<Vec<Reg>>,
    live: Arc<AtomicIsize>,
    next_id: AtomicU64,
    mutators_done: AtomicBool,
    max_pool: usize,
    /// Waits that found their context live when they started (so they really blocked or
    /// registered a listener), and all waits.
    waits_live: AtomicUsize,
    waits: AtomicUsize,
}

impl Round {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A random entry (a clone: its context and what is known about it).
    fn pick(&self, rng: &mut Rng) -> Entry {
        let pool = self.pool.lock().unwrap();
        pool[rng.below(pool.len())].clone()
    }

    /// Checks that every pool entry derived from entry `id` (or `id` itself) is done.
    #[track_caller]
    fn assert_subtree_done(&self, id: u64) {
        for e in self.pool.lock().unwrap().iter() {
            if e.path.contains(&id) {
                let err = e.ctx.err().expect("a descendant is live after cancel() returned");
                assert_done_with(&e.ctx, err);
            }
        }
    }

    /// Checks the clock-move guarantee: when a move to `now` has returned, every context in
    /// the pool whose deadline (its own or inherited) is at or before `now` is done.
    ///
    /// Why this holds whatever else runs, for an entry `e` whose deadline comes from its
    /// deadline owner `d` (`e` itself or the nearest ancestor with a timer):
    ///
    /// - `d`'s timer is on the clock when the move reaches it: the move fires it; the
    ///   completion either wins (its walk has marked `e` when the move returns) or loses and
    ///   waits for the winning walk's FINISHED.
    /// - `d`'s timer is off the clock because `d` is done: a walk completed `d`. Walks take
    ///   timer keys while marking but release them on the clock only after FINISHED, so a
    ///   timer is gone only once `d`'s whole subtree is marked. (Before #12 item 13 a walk
    ///   released `d`'s timer while still marking below it: the move found nothing due and
    ///   returned with `e` live, the flake seen with seed 1796080911586297199.)
    /// - `d`'s timer is not on the clock yet (`d` is being created): if the move's wake-up
    ///   comes while the creating thread is still inside `schedule`, the mover waits for it
    ///   and then fires (`timer.rs`); if the move came first, `schedule` finds the deadline
    ///   passed and the creating thread completes `d` before `with_deadline` returns, i.e.
    ///   before `e` is in the pool. Entries created after the move are born done.
    ///
    /// Moves are serialized, and this runs on the thread that moved.
    #[track_caller]
    fn assert_due_done(&self, now: CtxInstant) {
        let pool = self.pool.lock().unwrap();
        for e in pool.iter() {
            if e.deadline.is_some_and(|d| d <= now) {
                let Some(err) = e.ctx.err() else {
                    let ancestors: Vec<String> = e
                        .path
                        .iter()
                        .filter_map(|id| pool.iter().find(|a| a.path.last() == Some(id)))
                        .map(|a| format!("#{:?} {} {:?}", a.path.last(), a.kind, a.ctx))
                        .collect();
                    panic!(
                        "advance() returned before a due deadline fired: {} {:?} at {now:?}: \
                         {:?}, ancestors in pool: {ancestors:#?}, pending timers {}",
                        e.kind,
                        e.path,
                        e.ctx,
                        self.clock.pending_timers()
                    );
                };
                assert_done_with(&e.ctx, err);
            }
        }
    }

    /// A random context, preferring live ones (a few tries), for waiters: waits that start
    /// on a live context are the ones that can lose a wake-up.
    fn pick_for_wait(&self, rng: &mut Rng) -> Context {
        let mut ctx = self.pick(rng).ctx;
        for _ in 0..8 {
            if !ctx.is_done() {
                break;
            }
            ctx = self.pick(rng).ctx;
        }
        ctx
    }

    /// Counts a wait; `live` is whether its context was live when the wait started.
    fn count_wait(&self, live: bool) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        if live {
            self.waits_live.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn push(&self, entry: Entry) {
        let evicted = {
            let mut pool = self.pool.lock().unwrap();
            pool.push(entry);
            if pool.len() > self.max_pool {
                let i = 1 + (self.id() as usize % (pool.len() - 1));
                Some(pool.swap_remove(i))
            } else {
                None
            }
        };
        drop(evicted); // outside the lock: dropping a guard cancels and runs callbacks
    }
}

fn child_path(parent: &[u64], id: u64) -> Arc<[u64]> {
    parent.iter().copied().chain([id]).collect()
}

fn check_entry(ctx: &Context, tag: Option<u64>, deadline: Option<CtxInstant>) {
    if let Some(err) = ctx.err() {
        assert_done_with(ctx, err);
    }
    assert_eq!(ctx.value::<Tag>().map(|t| t.0.id), tag, "value::<Tag>() found the wrong value");
    assert_eq!(ctx.deadline(), deadline, "a context's deadline changed");
}

fn mutator(round: &Round, rng: &mut Rng, ops: usize) {
    for _ in 0..ops {
        let op = rng.below(100);
        match op {
            // A cancellable child.
            0..=17 => {
                let Entry { ctx: parent, tag, deadline, path, .. } = round.pick(rng);
                let parent_done = parent.is_done();
                let (ctx, guard) = parent.with_cancel();
                if parent_done {
                    assert!(ctx.is_done(), "a child of a done parent must be born done");
                }
                assert_eq!(ctx.deadline(), deadline);
                round.push(Entry {
                    ctx,
                    path: child_path(&path, round.id()),
                    kind: "with_cancel",
                    guard: Some(Arc::new(guard)),
                    tag,
                    deadline,
                });
            }
            // A value child.
            18..=27 => {
                let Entry { ctx: parent, deadline, path, .. } = round.pick(rng);
                let id = round.id();
                let ctx = parent.with_value(Tag(Tracked::new(&round.live, id)));
                if ctx.err().is_some() {
                    assert!(ctx.is_done(), "done is forever");
                }
                round.push(Entry {
                    ctx,
                    path: child_path(&path, id),
                    kind: "with_value",
                    guard: None,
                    tag: Some(id),
                    deadline,
                });
            }
            // A timeout child (virtual time; the clock thread fires it).
            28..=41 => {
                let Entry { ctx: parent, tag, deadline: parent_deadline, path, .. } =
                    round.pick(rng);
                let d = Duration::from_micros(1 + rng.below(20_000) as u64);
                let (ctx, guard) = if rng.percent(30) {
                    parent.with_timeout_cause(d, Why { err: Error::DeadlineExceeded, id: 0 })
                } else {
                    parent.with_timeout(d)
                };
                let deadline = ctx.deadline();
                assert!(deadline.is_some(), "a timeout child has a deadline");
                if let Some(pd) = parent_deadline {
                    assert!(deadline <= Some(pd), "a child's deadline is never after its parent's");
                }
                round.push(Entry {
                    ctx,
                    path: child_path(&path, round.id()),
                    kind: "with_timeout",
                    guard: Some(Arc::new(guard)),
                    tag,
                    deadline,
                });
            }
            // An absolute deadline, sometimes already passed (born done).
            42..=46 => {
                let Entry { ctx: parent, tag, deadline: parent_deadline, path, .. } =
                    round.pick(rng);
                let now = round.clock.now();
                let at = if rng.percent(20) {
                    CtxInstant::from_nanos(now.as_nanos().saturating_sub(rng.below(1000) as u64))
                } else {
                    now + Duration::from_micros(rng.below(20_000) as u64)
                };
                let (ctx, guard) = parent.with_deadline(at);
                let deadline = Some(parent_deadline.map_or(at, |pd| pd.min(at)));
                assert_eq!(ctx.deadline(), deadline, "deadline is the earlier of parent's and own");
                // Also when the parent's earlier deadline has passed but the clock thread has
                // not fired it yet: the parent is then fired at once (as documented).
                if at <= now {
                    assert!(ctx.is_done(), "a deadline not after now gives a done context");
                }
                round.push(Entry {
                    ctx,
                    path: child_path(&path, round.id()),
                    kind: "with_deadline",
                    guard: Some(Arc::new(guard)),
                    tag,
                    deadline,
                });
            }
            // Cancel a guard (from outside any lock of this test).
            47..=56 => {
                let Entry { ctx, guard, path, .. } = round.pick(rng);
                if let Some(guard) = guard {
                    if rng.percent(50) {
                        guard.cancel();
                    } else {
                        guard.cancel_with(Why { err: Error::Canceled, id: round.id() });
                    }
                    assert!(guard.is_done());
                    let err = ctx.err().expect("done once cancel() returns");
                    assert_done_with(&ctx, err);
                    // Whether this cancel won or lost the race, every descendant is done.
                    round.assert_subtree_done(*path.last().expect("a path ends with its own id"));
                }
            }
            // Drop an entry (its guard, if this was the last handle, cancels).
            57..=66 => {
                let removed = {
                    let mut pool = round.pool.lock().unwrap();
                    if pool.len() > 1 {
                        let i = 1 + rng.below(pool.len() - 1);
                        Some(pool.swap_remove(i))
                    } else {
                        None
                    }
                };
                drop(removed);
            }
            // Detach a guard (the context then ends only through its parent or deadline).
            67..=70 => {
                let guard = {
                    let mut pool = round.pool.lock().unwrap();
                    let i = rng.below(pool.len());
                    pool[i].guard.take()
                };
                if let Some(guard) = guard {
                    match Arc::try_unwrap(guard) {
                        Ok(guard) => guard.detach(),
                        Err(shared) => drop(shared),
                    }
                }
            }
            // Register an after_func.
            71..=82 => {
                let Entry { ctx, .. } = round.pick(rng);
                let count = Arc::new(AtomicUsize::new(0));
                let extra = if rng.percent(25) { round.pick(rng).guard } else { None };
                let nested = rng.percent(10);
                let tracked = Tracked::new(&round.live, 0);
                let (target, counter) = (ctx.clone(), count.clone());
                let handle = ctx.after_func(move || {
                    let _keep = &tracked;
                    let previous = counter.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(previous, 0, "an after_func ran twice");
                    let err = target.err().expect("an after_func runs once its context is done");
                    assert_done_with(&target, err);
                    if let Some(guard) = extra {
                        guard.cancel(); // re-entrant cancellation from a callback
                    }
                    if nested {
                        let ran = Arc::new(AtomicBool::new(false));
                        let flag = ran.clone();
                        let _h = target.after_func(move || flag.store(true, Ordering::SeqCst));
                        assert!(
                            ran.load(Ordering::SeqCst),
                            "after_func on a done context runs inline"
                        );
                    }
                });
                round.regs.lock().unwrap().push(Reg { handle, count, stopped: false });
            }
            // Stop a registration.
            83..=88 => {
                let mut regs = round.regs.lock().unwrap();
                if !regs.is_empty() {
                    let i = rng.below(regs.len());
                    let reg = &mut regs[i];
                    if reg.handle.stop() {
                        assert!(!reg.stopped, "stop() returned true twice");
                        reg.stopped = true;
                        assert_eq!(reg.count.load(Ordering::SeqCst), 0, "stopped after running");
                    }
                }
            }
            // Another handle to an existing context.
            89..=92 => {
                let mut entry = round.pick(rng);
                entry.guard = None;
                round.push(entry);
            }
            // Look at a context.
            _ => {
                let Entry { ctx, tag, deadline, .. } = round.pick(rng);
                check_entry(&ctx, tag, deadline);
                let _ = ctx.remaining();
            }
        }
    }
}

fn blocking_waiter(round: &Round, rng: &mut Rng) {
    while !round.root.is_done() {
        let ctx = round.pick_for_wait(rng);
        round.count_wait(!ctx.is_done());
        match rng.below(10) {
            0..=3 => {
                let err = ctx
                    .wait_timeout(WAIT_BOUND)
                    .expect("lost wake-up: wait_timeout(30 s) returned None");
                assert_done_with(&ctx, err);
            }
            // Unbounded: the worker's bound catches a hang.
            4..=5 => assert_done_with(&ctx, ctx.wait()),
            // Short waits: register, time out, unregister.
            _ => {
                let d = Duration::from_micros(rng.below(300) as u64);
                match ctx.wait_timeout(d) {
                    Some(err) => assert_done_with(&ctx, err),
                    None => thread::yield_now(),
                }
            }
        }
    }
}

fn futures_waiter(round: &Round, rng: &mut Rng) {
    while !round.root.is_done() {
        match rng.below(10) {
            0..=3 => {
                let ctxs: Vec<Context> =
                    (0..1 + rng.below(6)).map(|_| round.pick_for_wait(rng)).collect();
                ctxs.iter().for_each(|ctx| round.count_wait(!ctx.is_done()));
                let errs = futures::executor::block_on(futures::future::join_all(
                    ctxs.iter().map(Context::done),
                ));
                for (ctx, err) in ctxs.iter().zip(errs) {
                    assert_done_with(ctx, err);
                }
            }
            4..=5 => {
                let ctx = round.pick_for_wait(rng);
                round.count_wait(!ctx.is_done());
                let result = futures::executor::block_on(ctx.run(std::future::pending::<()>()));
                assert_done_with(
                    &ctx,
                    result.expect_err("a pending future only ends by the context"),
                );
            }
            6 => {
                let ctx = round.pick_for_wait(rng);
                round.count_wait(!ctx.is_done());
                let err = futures::executor::block_on(ctx.done_owned());
                assert_done_with(&ctx, err);
            }
            // Poll once and drop: registers a listener and abandons it.
            _ => {
                let ctx = round.pick(rng).ctx;
                let mut done = pin!(ctx.done());
                if let Poll::Ready(err) = noop_poll(done.as_mut()) {
                    assert_done_with(&ctx, err);
                }
                thread::yield_now();
            }
        }
    }
}

async fn tokio_waiter(round: Arc<Round>, mut rng: Rng) {
    while !round.root.is_done() {
        let ctx = round.pick_for_wait(&mut rng);
        round.count_wait(!ctx.is_done());
        if rng.percent(70) {
            let err = tokio::time::timeout(WAIT_BOUND, ctx.done_owned())
                .await
                .expect("lost wake-up: done_owned() not resolved within 30 s");
            assert_done_with(&ctx, err);
        } else {
            let sleep = tokio::time::sleep(Duration::from_micros(rng.below(200) as u64));
            if let Err(err) = ctx.run(sleep).await {
                assert_done_with(&ctx, err);
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Several threads build, cancel, time out, detach and drop random subtrees of one shared
/// root (with `after_func` registrations and stops) while others wait on random contexts:
/// blocking, on `futures::executor` and on a tokio runtime. A clock thread advances the
/// `ManualClock` meanwhile.
#[test]
fn random_subtrees_with_waiters() {
    let mut seed_rng = Rng::new(base_seed("random_subtrees_with_waiters"));
    let mut budget = Budget::new("random_subtrees_with_waiters", 2000);
    let rt = small_tokio_runtime();
    let mutators = scaled(4, 3);
    let ops = scaled(400, 150);
    let (mut total_regs, mut total_ran, mut total_stopped) = (0usize, 0usize, 0usize);
    let (mut total_waits, mut total_live_waits) = (0usize, 0usize);
    while budget.next_round() {
        let mut rng = seed_rng.fork(budget.done as u64);
        let clock = ManualClock::new();
        let (root, root_guard) = Context::with_clock(clock.clone()).with_cancel();
        let live = Arc::new(AtomicIsize::new(0));
        let round = Arc::new(Round {
            clock: clock.clone(),
            root: root.clone(),
            pool: Mutex::new(vec![Entry {
                ctx: root,
                path: Arc::from([0]),
                kind: "root",
                guard: None,
                tag: None,
                deadline: None,
            }]),
            regs: Mutex::new(Vec::new()),
            live: live.clone(),
            next_id: AtomicU64::new(1),
            mutators_done: AtomicBool::new(false),
            max_pool: scaled(96, 32),
            waits_live: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
        });

        let mut workers = Vec::new();
        for m in 0..mutators {
            let (round, mut rng) = (round.clone(), rng.fork(m as u64));
            workers
                .push(spawn_worker(format!("mutator-{m}"), move || mutator(&round, &mut rng, ops)));
        }
        let clock_worker = {
            let (round, mut rng) = (round.clone(), rng.fork(100));
            spawn_worker("clock", move || {
                while !round.mutators_done.load(Ordering::Acquire) {
                    round.clock.advance(Duration::from_micros(rng.below(400) as u64));
                    // The only mover: every deadline due now has fired (contexts born since
                    // with a passed deadline are born done).
                    round.assert_due_done(round.clock.now());
                    thread::yield_now();
                }
            })
        };
        let mut waiters = Vec::new();
        for w in 0..2 {
            let (round, mut rng) = (round.clone(), rng.fork(200 + w));
            waiters.push(spawn_worker(format!("blocking-waiter-{w}"), move || {
                blocking_waiter(&round, &mut rng);
            }));
        }
        {
            let (round, mut rng) = (round.clone(), rng.fork(300));
            waiters.push(spawn_worker("futures-waiter", move || futures_waiter(&round, &mut rng)));
        }
        let tasks: Vec<_> =
            (0..3).map(|t| rt.spawn(tokio_waiter(round.clone(), rng.fork(400 + t)))).collect();

        for worker in workers {
            worker.finish(WORK_BOUND);
        }
        round.mutators_done.store(true, Ordering::Release);
        clock_worker.finish(WORK_BOUND);

        // End of round: cancel everything. This thread is the only canceller now, so when
        // cancel() returns every context of the round is done and holds no timer.
        root_guard.cancel_with(Why { err: Error::Canceled, id: u64::MAX });
        assert_eq!(clock.pending_timers(), 0, "done contexts must release their timers");
        for entry in round.pool.lock().unwrap().iter() {
            let err = entry.ctx.err().expect("every context of the round is done");
            assert_done_with(&entry.ctx, err);
            check_entry(&entry.ctx, entry.tag, entry.deadline);
        }

        for waiter in waiters {
            waiter.finish(WAIT_BOUND);
        }
        rt.block_on(async {
            for task in tasks {
                if let Err(e) = task.await {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        });

        // Every registration ran exactly once, unless stop() stopped it.
        for reg in round.regs.lock().unwrap().iter() {
            let count = reg.count.load(Ordering::SeqCst);
            if reg.stopped {
                assert_eq!(count, 0, "a stopped after_func ran");
                total_stopped += 1;
            } else {
                assert_eq!(count, 1, "after_func must run exactly once on a done context");
                assert!(!reg.handle.stop(), "stop() after the function ran must return false");
                total_ran += 1;
            }
            total_regs += 1;
        }

        total_waits += round.waits.load(Ordering::Relaxed);
        total_live_waits += round.waits_live.load(Ordering::Relaxed);
        let round = Arc::into_inner(round).expect("all threads have let go of the round");
        drop(round);
        assert_eq!(live.load(Ordering::SeqCst), 0, "values or callbacks leaked");
        assert_eq!(clock.pending_timers(), 0, "timers leaked");
    }
    println!(
        "after_func registrations: {total_regs} ({total_ran} ran once, {total_stopped} stopped)"
    );
    println!("waits: {total_waits} ({total_live_waits} started on a live context)");
    assert!(total_regs > 0, "the stress registered no after_func at all");
    assert!(total_live_waits > 0, "no wait ever started on a live context");
}

// ---------------------------------------------------------------------------------------
// 2. Many siblings created and dropped while their parent is cancelled.
// ---------------------------------------------------------------------------------------

/// Threads churn children (and grandchildren, some through a value layer) of one parent —
/// every drop is a swap-remove in the parent's child list — while another thread cancels the
/// parent. A child made from a parent already seen done is born done; once the single
/// canceller's `cancel()` has returned, every child anyone holds is done.
#[test]
fn sibling_churn_while_parent_cancels() {
    let mut seed_rng = Rng::new(base_seed("sibling_churn_while_parent_cancels"));
    let mut budget = Budget::new("sibling_churn_while_parent_cancels", 1000);
    let threads = scaled(4, 3);
    let ops = scaled(600, 200);
    while budget.next_round() {
        let mut rng = seed_rng.fork(budget.done as u64);
        let live = Arc::new(AtomicIsize::new(0));
        let (parent, parent_guard) = Context::unclocked().with_cancel();
        let valued = parent.with_value(Tag(Tracked::new(&live, 1)));
        let cancelled = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(threads + 1));

        let mut workers = Vec::new();
        for t in 0..threads {
            let (parent, valued, cancelled, start, live) =
                (parent.clone(), valued.clone(), cancelled.clone(), start.clone(), live.clone());
            let mut rng = rng.fork(t as u64);
            workers.push(spawn_worker(format!("churn-{t}"), move || {
                let mut held: Vec<(Context, Option<CancelGuard>)> = Vec::new();
                start.wait();
                for _ in 0..ops {
                    // Read the flag first: if the cancel had returned by then, everything
                    // below the parent must already be done.
                    let after_cancel = cancelled.load(Ordering::Acquire);
                    let parent_done = parent.is_done();
                    assert!(parent_done || !after_cancel);
                    // `direct`: the new child's scope is the parent itself. A held child may
                    // still be live while the canceller's walk has not reached it yet (as in
                    // Go), so only direct children must be born done when the parent is.
                    let (base, direct) = match rng.below(4) {
                        0 => (valued.clone(), true),
                        1 if !held.is_empty() => (held[rng.below(held.len())].0.clone(), false),
                        _ => (parent.clone(), true),
                    };
                    let (child, guard) = if rng.percent(20) {
                        (base.with_value(Tag(Tracked::new(&live, 2))), None)
                    } else {
                        let (c, g) = base.with_cancel();
                        (c, Some(g))
                    };
                    if (parent_done && direct) || after_cancel {
                        let err = child.err().expect("a child of a done parent is born done");
                        assert_done_with(&child, err);
                    }
                    held.push((child, guard));
                    if held.len() > 24 || rng.percent(40) {
                        let i = rng.below(held.len());
                        let (ctx, guard) = held.swap_remove(i);
                        match (rng.below(3), guard) {
                            (0, Some(g)) => g.detach(),
                            (_, g) => drop(g),
                        }
                        drop(ctx);
                    }
                    if after_cancel {
                        for (ctx, _) in &held {
                            let err =
                                ctx.err().expect("all done once the parent's cancel returned");
                            assert_done_with(ctx, err);
                        }
                    }
                    if !held.is_empty() && rng.percent(5) {
                        let (ctx, _) = &held[rng.below(held.len())];
                        if let Some(err) = ctx.wait_timeout(Duration::from_micros(50)) {
                            assert_done_with(ctx, err);
                        }
                    }
                }
            }));
        }
        let spins = rng.below(ops * 4);
        let canceller = {
            let cancelled = cancelled.clone();
            let start = start.clone();
            spawn_worker("canceller", move || {
                start.wait();
                for i in 0..spins {
                    std::hint::spin_loop();
                    if i % 64 == 0 {
                        thread::yield_now();
                    }
                }
                parent_guard.cancel();
                cancelled.store(true, Ordering::Release);
            })
        };
        canceller.finish(WORK_BOUND);
        for worker in workers {
            worker.finish(WORK_BOUND);
        }
        assert_eq!(parent.err(), Some(Error::Canceled));
        drop((parent, valued));
        assert_eq!(live.load(Ordering::SeqCst), 0, "values leaked");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Deadlines firing vs cancels vs drops vs registrations, on exact and sloppy clocks.
// ---------------------------------------------------------------------------------------

/// A clock that honours the contract loosely, as the `Clock` docs allow: it sometimes wakes
/// a timer at once (early), and keeps clones of some wakers to wake them again later (early,
/// late, twice, or after their context is gone).
struct SloppyClock {
    inner: ManualClock,
    strays: Mutex<Vec<Waker>>,
    dice: AtomicU64,
}

impl SloppyClock {
    fn roll(&self) -> u64 {
        Rng::new(self.dice.fetch_add(1, Ordering::Relaxed)).next_u64() % 100
    }

    /// Wakes some of the kept wakers (or all, with `all`).
    fn wake_strays(&self, rng: &mut Rng, all: bool) {
        let woken: Vec<Waker> = {
            let mut strays = self.strays.lock().unwrap();
            let mut woken = Vec::new();
            let mut i = 0;
            while i < strays.len() {
                if all || rng.percent(30) {
                    woken.push(strays.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            woken
        };
        woken.into_iter().for_each(Waker::wake); // no lock held
    }
}

impl Clock for SloppyClock {
    fn now(&self) -> CtxInstant {
        self.inner.now()
    }

    fn schedule(&self, deadline: CtxInstant, waker: Waker) -> TimerKey {
        let roll = self.roll();
        if roll < 25 {
            self.strays.lock().unwrap().push(waker.clone());
        }
        let key = Clock::schedule(&self.inner, deadline, waker.clone());
        if roll >= 90 {
            waker.wake(); // early (or on time), before returning
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        Clock::cancel(&self.inner, key);
    }
}

fn deadline_race(name: &'static str, sloppy: bool) {
    let mut seed_rng = Rng::new(base_seed(name));
    let mut budget = Budget::new(name, 2000);
    let n = scaled(64, 24);
    let horizon_ms = 32u64;
    while budget.next_round() {
        let mut rng = seed_rng.fork(budget.done as u64);
        let manual = ManualClock::new();
        let clock = Arc::new(SloppyClock {
            inner: manual.clone(),
            strays: Mutex::new(Vec::new()),
            dice: AtomicU64::new(rng.next_u64()),
        });
        let root = if sloppy {
            Context::with_clock(clock.clone())
        } else {
            Context::with_clock(manual.clone())
        };
        let live = Arc::new(AtomicIsize::new(0));

        // Every context has a deadline within the horizon, so all are done at the end
        // without any round-wide cancel.
        let mut ctxs: Vec<Context> = Vec::new();
        let mut guards: Vec<Mutex<Option<CancelGuard>>> = Vec::new();
        let mut regs: Vec<(AfterFunc, Arc<AtomicUsize>)> = Vec::new();
        for i in 0..n {
            let parent = if i > 0 && rng.percent(40) {
                ctxs[rng.below(ctxs.len())].clone()
            } else {
                root.clone()
            };
            let parent = if rng.percent(20) {
                parent.with_value(Tag(Tracked::new(&live, i as u64)))
            } else {
                parent
            };
            let d = Duration::from_micros(1 + rng.below(horizon_ms as usize * 1000) as u64);
            let (ctx, guard) = if rng.percent(30) {
                parent.with_timeout_cause(d, Why { err: Error::DeadlineExceeded, id: i as u64 })
            } else {
                parent.with_timeout(d)
            };
            let count = Arc::new(AtomicUsize::new(0));
            let (target, counter, tracked) = (ctx.clone(), count.clone(), Tracked::new(&live, 0));
            let handle = ctx.after_func(move || {
                let _keep = &tracked;
                assert_eq!(counter.fetch_add(1, Ordering::SeqCst), 0, "an after_func ran twice");
                let err = target.err().expect("an after_func runs once its context is done");
                assert_done_with(&target, err);
            });
            regs.push((handle, count));
            // Some guards are detached now: those contexts end by deadline or parent only.
            if rng.percent(30) {
                guard.detach();
                guards.push(Mutex::new(None));
            } else {
                guards.push(Mutex::new(Some(guard)));
            }
            ctxs.push(ctx);
        }
        let ctxs = Arc::new(ctxs);
        let guards = Arc::new(guards);
        let start = Arc::new(Barrier::new(4));

        let clock_worker = {
            let (clock, manual, start) = (clock.clone(), manual.clone(), start.clone());
            let mut rng = rng.fork(1);
            spawn_worker("clock", move || {
                start.wait();
                while manual.now() < CtxInstant::from_nanos(horizon_ms * 1_000_000) {
                    manual.advance(Duration::from_micros(1 + rng.below(800) as u64));
                    if sloppy {
                        clock.wake_strays(&mut rng, false);
                    }
                    thread::yield_now();
                }
            })
        };
        let canceller = {
            let (ctxs, guards, start) = (ctxs.clone(), guards.clone(), start.clone());
            let mut rng = rng.fork(2);
            spawn_worker("canceller", move || {
                start.wait();
                for _ in 0..n / 2 {
                    let i = rng.below(guards.len());
                    let guard = guards[i].lock().unwrap().take();
                    if let Some(guard) = guard {
                        match rng.below(3) {
                            0 => guard.cancel(),
                            1 => guard.cancel_with(Why { err: Error::Canceled, id: i as u64 }),
                            _ => drop(guard),
                        }
                        let err = ctxs[i].err().expect("done once its guard cancelled");
                        assert_done_with(&ctxs[i], err);
                    }
                    thread::yield_now();
                }
            })
        };
        let waiter = {
            let (ctxs, start) = (ctxs.clone(), start.clone());
            let mut rng = rng.fork(3);
            spawn_worker("waiter", move || {
                start.wait();
                for _ in 0..n / 2 {
                    let ctx = &ctxs[rng.below(ctxs.len())];
                    let err = if rng.percent(50) {
                        ctx.wait_timeout(WAIT_BOUND).expect("lost wake-up on a deadline")
                    } else {
                        futures::executor::block_on(ctx.done())
                    };
                    assert_done_with(ctx, err);
                }
            })
        };
        start.wait();
        // This thread adds late registrations (some on contexts that are done already).
        let mut late: Vec<(AfterFunc, Arc<AtomicUsize>, Context)> = Vec::new();
        for _ in 0..n / 4 {
            let ctx = ctxs[rng.below(n)].clone();
            let count = Arc::new(AtomicUsize::new(0));
            let counter = count.clone();
            let handle = ctx.after_func(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            });
            if rng.percent(30) && handle.stop() {
                assert_eq!(count.load(Ordering::SeqCst), 0);
            } else {
                late.push((handle, count, ctx));
            }
            thread::yield_now();
        }

        clock_worker.finish(WORK_BOUND);
        canceller.finish(WORK_BOUND);
        waiter.finish(WAIT_BOUND);
        if sloppy {
            // Late and double wake-ups after every context is done.
            clock.wake_strays(&mut rng, false);
        }

        for ctx in ctxs.iter() {
            let err = ctx.err().expect("every context is past its deadline");
            assert_done_with(ctx, err);
        }
        for (handle, count) in &regs {
            assert_eq!(count.load(Ordering::SeqCst), 1, "after_func must run exactly once");
            assert!(!handle.stop());
        }
        for (handle, count, _) in &late {
            assert_eq!(count.load(Ordering::SeqCst), 1, "late after_func must run exactly once");
            assert!(!handle.stop());
        }
        assert_eq!(manual.pending_timers(), 0, "done contexts must release their timers");

        drop((regs, late, root));
        let ctxs = Arc::into_inner(ctxs).expect("threads let go");
        let guards = Arc::into_inner(guards).expect("threads let go");
        // Drop contexts before their guards for some, after for others.
        drop(ctxs);
        drop(guards);
        if sloppy {
            // Wakers that outlive their contexts: waking them must do nothing (and be safe).
            clock.wake_strays(&mut rng, true);
        }
        assert_eq!(live.load(Ordering::SeqCst), 0, "values or callbacks leaked");
        assert_eq!(manual.pending_timers(), 0, "timers leaked");
    }
}

/// Timeouts fire (on a `ManualClock` advanced by one thread) while another thread cancels or
/// drops their guards, a third waits, and this one registers late `after_func`s.
#[test]
fn deadlines_race_cancels_and_drops() {
    deadline_race("deadlines_race_cancels_and_drops", false);
}

/// As above, on a clock that wakes early, late and twice (allowed by the `Clock` contract),
/// including after the context is gone.
#[test]
fn sloppy_clock_early_late_and_double_wakes() {
    deadline_race("sloppy_clock_early_late_and_double_wakes", true);
}

// ---------------------------------------------------------------------------------------
// 4. A deep chain released while it is cancelled.
// ---------------------------------------------------------------------------------------

/// A deep chain of mixed links (cancel, value, timeout) is cancelled at the top while the
/// threads holding its handles drop them (the last drop frees the chain iteratively) and a
/// waiter waits on the leaf; a clock thread fires some of the chain's timeouts.
#[test]
fn deep_chain_released_while_cancelled() {
    let mut seed_rng = Rng::new(base_seed("deep_chain_released_while_cancelled"));
    let mut budget = Budget::new("deep_chain_released_while_cancelled", 200);
    let depth = scaled(3000, 300);
    while budget.next_round() {
        let mut rng = seed_rng.fork(budget.done as u64);
        let clock = ManualClock::new();
        let live = Arc::new(AtomicIsize::new(0));
        let (top, top_guard) = Context::with_clock(clock.clone()).with_cancel();
        let mut ctx = top.clone();
        let mut samples = Vec::new();
        let mut kept_guards = Vec::new();
        for i in 0..depth {
            ctx = match rng.below(10) {
                0..=4 => {
                    let (c, g) = ctx.with_cancel();
                    if rng.percent(5) {
                        kept_guards.push(g);
                    } else {
                        g.detach();
                    }
                    c
                }
                5..=7 => ctx.with_value(Tag(Tracked::new(&live, i as u64))),
                _ => {
                    let (c, g) = ctx.with_timeout(Duration::from_millis(1 + rng.below(50) as u64));
                    g.detach();
                    c
                }
            };
            if rng.percent(2) {
                samples.push(ctx.clone());
            }
        }
        let leaf = ctx;
        let start = Arc::new(Barrier::new(4));

        let waiter = {
            let (leaf, start) = (leaf.clone(), start.clone());
            spawn_worker("leaf-waiter", move || {
                start.wait();
                let err = leaf.wait_timeout(WAIT_BOUND).expect("lost wake-up on a deep leaf");
                assert_done_with(&leaf, err);
            })
        };
        let dropper = {
            let start = start.clone();
            let mut rng = rng.fork(1);
            spawn_worker("dropper", move || {
                start.wait();
                while let Some(ctx) = samples.pop() {
                    if let Some(err) = ctx.err() {
                        assert_done_with(&ctx, err);
                    }
                    drop(ctx);
                    if rng.percent(20) {
                        thread::yield_now();
                    }
                }
                drop(kept_guards); // each cancels its part of the chain
                drop(leaf);
            })
        };
        let ticker = {
            let (clock, start) = (clock.clone(), start.clone());
            spawn_worker("clock", move || {
                start.wait();
                for _ in 0..20 {
                    clock.advance(Duration::from_millis(1));
                    thread::yield_now();
                }
            })
        };
        start.wait();
        for _ in 0..rng.below(200) {
            thread::yield_now();
        }
        top_guard.cancel();
        assert_eq!(top.err(), Some(Error::Canceled));
        waiter.finish(WAIT_BOUND);
        dropper.finish(WORK_BOUND);
        ticker.finish(WORK_BOUND);
        assert_eq!(clock.pending_timers(), 0, "a cancelled chain holds no timers");
        drop(top);
        assert_eq!(live.load(Ordering::SeqCst), 0, "chain values leaked");
        assert_eq!(clock.pending_timers(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Documented completion guarantees when two threads complete at once.
// ---------------------------------------------------------------------------------------

/// `CancelGuard::cancel` documents: "When this returns, the context and every descendant
/// report done", also when another completion won the race (it then waits until the winner
/// has marked every descendant done; waiters and callbacks are the winner's). Go's `cancel`
/// gives the same by serialising on the context's mutex. Thread B cancels as soon as it sees
/// the context done, while thread A is still walking a wide subtree, then looks at the last
/// child; the callback registered on that child must have run (exactly once) by the time
/// A's cancel returns.
#[test]
fn cancel_that_loses_the_race_still_returns_after_the_subtree_is_done() {
    let mut budget = Budget::new("cancel_that_loses_the_race", 40);
    let width = scaled(20_000, 2_000);
    while budget.next_round() {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let guard = Arc::new(guard);
        let children: Vec<(Context, CancelGuard)> = (0..width).map(|_| ctx.with_cancel()).collect();
        let last = children.last().expect("width > 0").0.clone();
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let _handle = last.after_func(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let seen = Arc::new(Mutex::new(None));
        let start = Arc::new(Barrier::new(2));
        let second = {
            let (ctx, guard, start, seen) =
                (ctx.clone(), guard.clone(), start.clone(), seen.clone());
            spawn_worker("second-canceller", move || {
                start.wait();
                while !ctx.is_done() {
                    std::hint::spin_loop();
                }
                guard.cancel(); // loses: the other thread already won the transition
                *seen.lock().unwrap() = Some(last.is_done());
            })
        };
        start.wait();
        guard.cancel();
        second.finish(WORK_BOUND);
        let last_done = seen.lock().unwrap().take().expect("B recorded");
        assert!(last_done, "a losing cancel() returned while a descendant was still live");
        // A won (B only cancelled after seeing the context done), so A ran the callbacks.
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the winner's cancel() runs the callbacks");
        drop(children);
    }
}

/// `ManualClock::advance` documents that it "fires every deadline that is due at the new time
/// before the call returns". With two threads moving the clock, the second `advance` must
/// not return while the timers due at its time are still being fired by the first.
#[test]
fn concurrent_advance_returns_after_due_timers_fired() {
    let mut budget = Budget::new("concurrent_advance", 40);
    let n = scaled(20_000, 2_000);
    while budget.next_round() {
        let clock = ManualClock::new();
        let root = Context::with_clock(clock.clone());
        let at = CtxInstant::from_nanos(1_000);
        let ctxs: Vec<(Context, CancelGuard)> = (0..n).map(|_| root.with_deadline(at)).collect();
        let last = ctxs.last().expect("n > 0").0.clone();
        let seen = Arc::new(Mutex::new(None));
        let start = Arc::new(Barrier::new(2));
        let second = {
            let (clock, start, seen) = (clock.clone(), start.clone(), seen.clone());
            spawn_worker("second-advancer", move || {
                start.wait();
                while clock.now() < at {
                    std::hint::spin_loop();
                }
                clock.set(at); // the first advancer has taken the due timers by now
                *seen.lock().unwrap() = Some(last.is_done());
            })
        };
        start.wait();
        clock.set(at);
        second.finish(WORK_BOUND);
        let last_done = seen.lock().unwrap().take().expect("B recorded");
        assert!(last_done, "advance/set returned while a due deadline had not fired");
        drop(ctxs);
        assert_eq!(clock.pending_timers(), 0);
    }
}

/// `ManualClock` documents that a move "fires every deadline that is due at the new time
/// before the call returns — contexts are done". When the deadline's context is already
/// being completed by another thread (a cancel, or `with_deadline` firing a passed parent
/// deadline eagerly) the timer finds it done; the move must still not return before that
/// completion has marked the subtree done (the loser of a `cancel` race waits the same way).
#[test]
fn advance_returns_after_due_subtree_done_when_another_completion_won() {
    let mut budget = Budget::new("advance_vs_winning_cancel", 40);
    let width = scaled(20_000, 2_000);
    while budget.next_round() {
        let clock = ManualClock::new();
        let root = Context::with_clock(clock.clone());
        let at = CtxInstant::from_nanos(1_000);
        let (ctx, guard) = root.with_deadline(at);
        let children: Vec<(Context, CancelGuard)> = (0..width).map(|_| ctx.with_cancel()).collect();
        let last = children.last().expect("width > 0").0.clone();
        let seen = Arc::new(Mutex::new(None));
        let start = Arc::new(Barrier::new(2));
        let mover = {
            let (clock, ctx, start, seen) =
                (clock.clone(), ctx.clone(), start.clone(), seen.clone());
            spawn_worker("mover", move || {
                start.wait();
                while !ctx.is_done() {
                    std::hint::spin_loop();
                }
                clock.set(at); // fires the deadline, whose context the cancel already won
                *seen.lock().unwrap() = Some(last.is_done());
            })
        };
        start.wait();
        guard.cancel();
        mover.finish(WORK_BOUND);
        let last_done = seen.lock().unwrap().take().expect("the mover recorded");
        assert!(last_done, "set() returned while a context with a due deadline was live");
        drop(children);
        assert_eq!(clock.pending_timers(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// 6. Deterministic contract checks that came out of the stress work.
// ---------------------------------------------------------------------------------------

/// A clock whose time is set by hand and that never wakes anything: allowed by the `Clock`
/// contract ("A clock that never wakes only delays deadlines").
#[derive(Default)]
struct StallClock {
    now: AtomicU64,
    next: AtomicU64,
}

impl Clock for StallClock {
    fn now(&self) -> CtxInstant {
        CtxInstant::from_nanos(self.now.load(Ordering::SeqCst))
    }

    fn schedule(&self, deadline: CtxInstant, waker: Waker) -> TimerKey {
        drop(waker);
        TimerKey::new(deadline, self.next.fetch_add(1, Ordering::SeqCst))
    }

    fn cancel(&self, _key: TimerKey) {}
}

/// `Context::with_deadline` documents: "If `deadline` is not after the clock's `now`, the
/// child is born done." That must hold even when the parent's (earlier) deadline has passed
/// but its timer has not fired yet — with the std clock that is the window between the
/// deadline and the timer thread getting to it.
#[test]
fn deadline_child_of_passed_but_unfired_parent_deadline() {
    let clock = Arc::new(StallClock::default());
    let root = Context::with_clock(clock.clone());
    let (parent, _parent_guard) = root.with_deadline(CtxInstant::from_nanos(10));
    clock.now.store(20, Ordering::SeqCst); // past the parent's deadline; no wake-up came
    let (child, _child_guard) = parent.with_deadline(CtxInstant::from_nanos(15));
    assert_eq!(child.deadline(), Some(CtxInstant::from_nanos(10)));
    assert_eq!(
        child.err(),
        Some(Error::DeadlineExceeded),
        "a deadline (15) not after now (20) must give a child that is born done"
    );
}

/// The `Clock` docs say: "a clock that never wakes never completes [a deadline] (`err()` is
/// a single load and does not read the clock, though `remaining` reports zero)". Check exactly
/// that: past the deadline nothing completes the context by itself, `remaining` is zero, and
/// a cancel still works (and releases nothing it should not).
#[test]
fn clock_that_never_wakes_never_completes_deadlines() {
    let clock = Arc::new(StallClock::default());
    let root = Context::with_clock(clock.clone());
    let (ctx, guard) = root.with_deadline(CtxInstant::from_nanos(10));
    assert_eq!(ctx.err(), None);
    clock.now.store(20, Ordering::SeqCst);
    assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    let polled = noop_poll(pin!(ctx.done()));
    let waited = ctx.wait_timeout(Duration::from_millis(1));
    assert_eq!((ctx.err(), polled, waited), (None, Poll::Pending, None));
    guard.cancel();
    assert_done_with(&ctx, Error::Canceled);
    assert_eq!(futures::executor::block_on(ctx.done()), Error::Canceled);
}
