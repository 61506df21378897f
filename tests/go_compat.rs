//! Ports of Go's own `context` package tests (`src/context/x_test.go` and
//! `src/context/afterfunc_test.go`) to `cancelctx`.
//!
//! Every Rust test is named after the Go test it ports (`TestWithCancel` -> `with_cancel`) and
//! carries a `// Go: TestName` comment. The Go tests wait on real timers (`shortDuration`,
//! `veryLongDuration`, `quiescent`); here every deadline runs on a [`ManualClock`], so timing
//! is driven by `clock.advance`/`clock.set` and no assertion depends on wall-clock time.
//! Cross-thread tests use std threads with generous (30 s) bounds that only guard against
//! hangs. Go compares errors by identity (`Cause(ctx) != cause`); here each test error
//! carries a unique id, so "the same cause" is checked by downcasting and comparing ids.
//!
//! Go's `otherContext{ctx}` wrapper (a Context type the package does not know) has no Rust
//! counterpart, since `Context` is one concrete type; where a Go test puts one in the middle
//! of a chain, the port puts a different kind of layer there (a `with_value` or
//! `without_cancel` node), so propagation is still checked across node kinds.
//!
//! | Go test | status | reason |
//! |---|---|---|
//! | **x_test.go** | | |
//! | TestParentFinishesChild | ported | Observable half ported; the `pc.children`/`parentCancelCtx` linkage checks become "the child's timer is released" (`ManualClock::pending_timers`). |
//! | TestChildFinishesFirst | ported | Internal linkage checks dropped (unexported Go types); done/err behaviour ported. |
//! | TestCancelRemoves | adapted | Go counts `cancelCtx.children`, which is private. Ported as: a canceled (or dropped-guard) timeout child releases its clock timer, and a stopped `after_func` releases its closure. |
//! | TestCustomContextGoroutines | n/a | Counts goroutines Go spawns to watch custom `Done` channels. `Context` is a concrete type (no custom implementations) and propagation never spawns threads. |
//! | TestBackground | ported | The `String() == "context.Background"` check is dropped (Rust has `Debug`, format unspecified). |
//! | TestTODO | adapted | No `TODO()` constructor; `Context::default()` (the placeholder root, equal to `background()`) takes its place. String check dropped. |
//! | TestWithCancel | ported | `otherContext` layer -> `with_value` layer. String check dropped. |
//! | TestDeadline | ported | On a `ManualClock`; also checks the boundary (live 1 ns before, done at the deadline). String check dropped. |
//! | TestTimeout | ported | As TestDeadline. |
//! | TestCanceledTimeout | ported | |
//! | TestValues | adapted | Types are keys: Go's `key1(1)`, `key2(1)`, `key2(3)` become types `K1`, `K2`, `K3` (two keys of one type with different values cannot exist). Go's `nil` value is modelled as `None` inside the key type, so shadowing is still tested. String checks dropped. |
//! | TestAllocs | n/a | Go allocation counts (`testing.AllocsPerRun`) have no meaning for this implementation. |
//! | TestSimultaneousCancels | ported | std threads, started together by a `Barrier`; deterministic shuffles. |
//! | TestInterlockedCancels | ported | The helper thread waits on `done_owned()`. |
//! | TestLayersCancel | ported | Fixed seeds instead of `time.Now()`; per-pointer keys become a handful of const-generic key types (types are keys). |
//! | TestLayersTimeout | ported | As TestLayersCancel, timers driven by `ManualClock`. |
//! | TestWithCancelCanceledParent | ported | |
//! | TestWithCancelSimultaneouslyCanceledParent | ported | |
//! | TestWithValueChecksKey | n/a | Keys are types: a non-comparable or `nil` key cannot be written, so the panics it checks are compile errors in Rust. |
//! | TestInvalidDerivedFail | adapted | A `nil` parent cannot exist (`Context` is a non-nullable value). The one invalid derivation this API has is a deadline on an unclocked tree: `with_deadline`/`with_timeout` panic, `try_*` return `NoClockError`. |
//! | TestDeadlineExceededSupportsTimeout | ported | Go's `Timeout() bool` interface is `Error::is_timeout`. |
//! | TestCause | ported | All 20 table rows; Go's `cancel(nil)` row uses guard drop / `cancel()`. Plus Rust-only rows where the timer actually fires and propagates the cause. |
//! | TestCauseRace | ported | |
//! | TestWithoutCancel | ported | String key -> type key. |
//! | TestCustomContextPropagation | n/a | Needs a user type overriding `Done()`; `Context` is concrete. |
//! | TestCustomContextCause | n/a | Needs a user-implemented Context. Its second part (a child canceled with a cause leaves the parent live) is covered by `cause` and `child_finishes_first`. |
//! | TestAfterFuncCalledAfterCancel | ported | Stronger than Go: `f` runs synchronously on the canceling thread (API contract), so no waiting is needed. |
//! | TestAfterFuncCalledAfterTimeout | ported | `ManualClock`; the handle is dropped, as Go discards `stop` (f must stay registered). |
//! | TestAfterFuncCalledImmediately | ported | `f` runs before `after_func` returns, on the calling thread. |
//! | TestAfterFuncNotCalledAfterStop | ported | |
//! | TestAfterFuncCalledAsynchronously | n/a | Moot by design: `f` runs synchronously on the thread that completes the context, so `cancel` does wait for it (the Go test's blocking `f` would deadlock). Use a thread or task inside `f` for asynchronous work. |
//! | **afterfunc_test.go** | | |
//! | TestCustomContextAfterFuncCancel | n/a | Needs a user Context implementing `AfterFunc`; `Context` is concrete. Parent-to-child propagation is covered by `parent_finishes_child`. |
//! | TestCustomContextAfterFuncTimeout | n/a | As above; covered by `canceled_timeout` / `deadline`. |
//! | TestCustomContextAfterFuncAfterFunc | n/a | As above; covered by `after_func_called_after_cancel`. |
//! | TestCustomContextAfterFuncUnregisterCancel | n/a | Inspects the custom parent's registration map. Rust analog is `cancel_removes`. |
//! | TestCustomContextAfterFuncUnregisterTimeout | n/a | As above; timer release is checked in `cancel_removes`. |
//! | TestCustomContextAfterFuncUnregisterAfterFunc | n/a | As above; `stop` releasing `f` is checked in `cancel_removes`. |
//!
//! Rust-specific design points that make parts of the Go tests moot: dropping a
//! `CancelGuard` cancels (so Go's `ctx, _ := WithCancel(..)` leak has no counterpart, and
//! the ports bind guards to named variables to keep contexts live); values are keyed by type
//! (no key collisions, no invalid keys); and `Context` is a concrete type (no custom
//! implementations, no goroutines spawned to watch foreign `Done` channels).

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use cancelctx::{CancelGuard, Context, Error, Instant, ManualClock, NoClockError};
use futures::FutureExt;

/// Go's `shortDuration`.
const SHORT: Duration = Duration::from_millis(1);
/// Go's `veryLongDuration`.
const VERY_LONG: Duration = Duration::from_secs(1000 * 60 * 60);
/// `forever` in Go's TestCause.
const FOREVER: Duration = Duration::from_secs(1_000_000);
/// Upper bound for cross-thread waits; only guards against hangs, never asserted on.
const BOUND: Duration = Duration::from_secs(30);
const ONE_NS: Duration = Duration::from_nanos(1);

static_assertions::assert_impl_all!(
    Context: Clone,
    Send,
    Sync,
    fmt::Debug,
    Default
);
static_assertions::assert_impl_all!(CancelGuard: Send, Sync, fmt::Debug);
static_assertions::assert_impl_all!(
    Error: Copy,
    Eq,
    std::hash::Hash,
    fmt::Debug,
    StdError,
    Send,
    Sync
);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A test error with an identity, standing in for Go's `errors.New`/`fmt.Errorf` values,
/// which the Go tests compare by pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TestErr {
    name: &'static str,
    id: usize,
}

impl TestErr {
    fn new(name: &'static str) -> TestErr {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        TestErr { name, id: NEXT.fetch_add(1, Ordering::Relaxed) }
    }
}

impl fmt::Display for TestErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.id)
    }
}

impl StdError for TestErr {}

/// Expected `cause()`.
#[derive(Debug)]
enum Want {
    /// `Cause(ctx) == nil`
    Nil,
    /// The context's own error (no explicit cause).
    Ctx(Error),
    /// An explicit cause.
    Custom(TestErr),
}

#[track_caller]
fn assert_cause(ctx: &Context, want: &Want, what: &str) {
    let got = ctx.cause();
    match want {
        Want::Nil => assert!(got.is_none(), "{what}: cause() = {got:?}, want None"),
        Want::Ctx(e) => {
            let got = got.unwrap_or_else(|| panic!("{what}: cause() = None, want {e:?}"));
            assert_eq!(
                got.downcast_ref::<Error>(),
                Some(e),
                "{what}: cause() = {got:?}, want {e:?}"
            );
        }
        Want::Custom(e) => {
            let got = got.unwrap_or_else(|| panic!("{what}: cause() = None, want {e:?}"));
            assert_eq!(
                got.downcast_ref::<TestErr>(),
                Some(e),
                "{what}: cause() = {got:?}, want {e:?}"
            );
        }
    }
}

/// The context is not done: Go's `select { case <-c.Done(): fail; default: }` plus
/// `c.Err() == nil`.
#[track_caller]
fn assert_live(ctx: &Context, what: &str) {
    assert!(!ctx.is_done(), "{what}: is_done() = true, want false");
    assert_eq!(ctx.err(), None, "{what}: err()");
    assert_eq!(ctx.check(), Ok(()), "{what}: check()");
    assert_cause(ctx, &Want::Nil, what);
    assert_eq!(
        ctx.done().now_or_never(),
        None,
        "{what}: done() resolved, want pending (it should block)"
    );
}

/// The context is done with `want`, observable without blocking.
#[track_caller]
fn assert_finished(ctx: &Context, want: Error, what: &str) {
    assert!(
        ctx.is_done(),
        "{what}: is_done() = false, want true (done() blocked, but shouldn't have)"
    );
    assert_eq!(ctx.err(), Some(want), "{what}: err()");
    assert_eq!(ctx.check(), Err(want), "{what}: check()");
    assert_eq!(ctx.done().now_or_never(), Some(want), "{what}: done()");
    assert!(ctx.cause().is_some(), "{what}: cause() = None on a done context");
}

/// A root on a fresh `ManualClock`, set well past `Instant::ZERO` so that deadlines in the
/// past are representable.
fn clocked() -> (ManualClock, Context) {
    let clock = ManualClock::new();
    clock.set(Instant::ZERO + Duration::from_secs(3600));
    let root = Context::with_clock(clock.clone());
    (clock, root)
}

/// Go's `testDeadline`: `ctx` must finish with `DeadlineExceeded` exactly when the clock
/// reaches `deadline` (immediately, if it already has).
#[track_caller]
fn assert_times_out_at(clock: &ManualClock, ctx: &Context, deadline: Instant, name: &str) {
    assert_eq!(ctx.deadline(), Some(deadline), "{name}: deadline()");
    if clock.now() < deadline {
        assert_live(ctx, &format!("{name}: before the deadline"));
        assert_eq!(
            ctx.remaining(),
            Some(deadline.saturating_duration_since(clock.now())),
            "{name}: remaining()"
        );
        clock.set(deadline - ONE_NS);
        assert_live(ctx, &format!("{name}: 1ns before the deadline"));
        clock.set(deadline);
    }
    assert_finished(ctx, Error::DeadlineExceeded, name);
    assert_eq!(ctx.remaining(), Some(Duration::ZERO), "{name}: remaining() after the deadline");
    assert_cause(ctx, &Want::Ctx(Error::DeadlineExceeded), name);
}

/// A value-layer marker standing in for Go's `otherContext` wrapper.
#[derive(Debug)]
struct Other;

/// A call counter for `after_func` callbacks.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn callback(&self) -> impl FnOnce() + Send + 'static {
        let counter = self.0.clone();
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Tiny deterministic PRNG (xorshift64) for the shuffles and random layerings.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------
// x_test.go
// ---------------------------------------------------------------------------------------

// Go: TestBackground
#[test]
fn background() {
    let c = Context::background();
    assert_live(&c, "Background");
    assert_eq!(c.deadline(), None);
    assert_eq!(c.remaining(), None);
    assert!(c.value::<Other>().is_none());
    assert!(c.now().is_some(), "background() runs on the std clock");
    assert_eq!(c.wait_timeout(Duration::ZERO), None);
    // Deriving from it (and canceling the child) never affects it.
    let (child, guard) = c.with_cancel();
    guard.cancel();
    assert_finished(&child, Error::Canceled, "child of Background");
    assert_live(&c, "Background after child canceled");
}

// Go: TestTODO
#[test]
fn todo() {
    let c = Context::default();
    assert_live(&c, "Default");
    assert_eq!(c.deadline(), None);
    assert_eq!(c.remaining(), None);
    assert!(c.value::<Other>().is_none());
    assert!(c.now().is_some(), "Default is background(): on the std clock");
}

// Go: TestWithCancel
#[test]
fn with_cancel() {
    let (c1, cancel) = Context::background().with_cancel();
    let o = c1.with_value(Other);
    let (c2, _c2_guard) = o.with_cancel();
    let contexts = [&c1, &o, &c2];

    for (i, c) in contexts.iter().enumerate() {
        assert_live(c, &format!("c[{i}]"));
    }
    let mut pending_run = Box::pin(c2.run(futures::future::pending::<()>()));
    assert!(pending_run.as_mut().now_or_never().is_none(), "run() finished before cancel");

    cancel.cancel(); // Should propagate synchronously.
    for (i, c) in contexts.iter().enumerate() {
        assert_finished(c, Error::Canceled, &format!("c[{i}]"));
        assert_cause(c, &Want::Ctx(Error::Canceled), &format!("c[{i}]"));
    }
    assert_eq!(pending_run.now_or_never(), Some(Err(Error::Canceled)));
    assert_eq!(futures::executor::block_on(c2.done()), Error::Canceled);
}

// Go: TestParentFinishesChild
#[test]
fn parent_finishes_child() {
    // Context tree:
    // parent -> cancel_child
    // parent -> value_child -> timer_child
    #[derive(Debug, PartialEq)]
    struct Key(&'static str);

    let (clock, root) = clocked();
    let (parent, cancel) = root.with_cancel();
    let (cancel_child, _stop1) = parent.with_cancel();
    let value_child = parent.with_value(Key("value"));
    let (timer_child, _stop2) = value_child.with_timeout(VERY_LONG);

    assert_live(&parent, "parent");
    assert_live(&cancel_child, "cancel_child");
    assert_live(&value_child, "value_child");
    assert_live(&timer_child, "timer_child");
    assert_eq!(clock.pending_timers(), 1, "timer_child should hold one clock timer");

    cancel.cancel();

    // parent and children should all be finished.
    assert_finished(&parent, Error::Canceled, "parent");
    assert_finished(&cancel_child, Error::Canceled, "cancel_child");
    assert_finished(&value_child, Error::Canceled, "value_child");
    assert_finished(&timer_child, Error::Canceled, "timer_child");
    assert_eq!(timer_child.value::<Key>(), Some(&Key("value")));
    // Go: "pc.cancel didn't clear pc.children"; here: the canceled timer child released
    // its timer.
    assert_eq!(
        clock.pending_timers(),
        0,
        "canceling the parent did not release timer_child's clock timer"
    );

    // A context derived from a canceled parent is canceled at once.
    let precanceled_child = parent.with_value(Key("value"));
    assert_finished(&precanceled_child, Error::Canceled, "precanceled_child");
}

// Go: TestChildFinishesFirst
#[test]
fn child_finishes_first() {
    let (cancelable, _stop) = Context::background().with_cancel();
    for (name, parent) in
        [("Background", Context::background()), ("cancelable", cancelable.clone())]
    {
        let (child, cancel) = parent.with_cancel();
        assert_live(&parent, &format!("{name}: parent"));
        assert_live(&child, &format!("{name}: child"));

        cancel.cancel();

        // child should be finished.
        assert_finished(&child, Error::Canceled, &format!("{name}: child"));
        // parent should not be finished.
        assert_live(&parent, &format!("{name}: parent after child canceled"));
    }
}

// Go: TestDeadline
#[test]
fn deadline() {
    {
        let (clock, root) = clocked();
        let d = clock.now() + SHORT;
        let (c, _g) = root.with_deadline(d);
        assert_times_out_at(&clock, &c, d, "WithDeadline");
    }
    {
        let (clock, root) = clocked();
        let d = clock.now() + SHORT;
        let (c, _g) = root.with_deadline(d);
        let o = c.with_value(Other);
        assert_times_out_at(&clock, &o, d, "WithDeadline+otherContext");
    }
    {
        let (clock, root) = clocked();
        let d = clock.now() + SHORT;
        let (c, _g1) = root.with_deadline(d);
        let o = c.with_value(Other);
        // The later deadline is ignored: the parent's earlier one governs.
        let (c2, _g2) = o.with_deadline(clock.now() + VERY_LONG);
        assert_times_out_at(&clock, &c2, d, "WithDeadline+otherContext+WithDeadline");
    }
    {
        let (clock, root) = clocked();
        let d = clock.now() - SHORT;
        let (c, _g) = root.with_deadline(d);
        assert_times_out_at(&clock, &c, d, "WithDeadline+inthepast");
    }
    {
        let (clock, root) = clocked();
        let d = clock.now();
        let (c, _g) = root.with_deadline(d);
        assert_times_out_at(&clock, &c, d, "WithDeadline+now");
    }
}

// Go: TestTimeout
#[test]
fn timeout() {
    {
        let (clock, root) = clocked();
        let (c, _g) = root.with_timeout(SHORT);
        assert_times_out_at(&clock, &c, clock.now() + SHORT, "WithTimeout");
    }
    {
        let (clock, root) = clocked();
        let (c, _g) = root.with_timeout(SHORT);
        let o = c.with_value(Other);
        assert_times_out_at(&clock, &o, clock.now() + SHORT, "WithTimeout+otherContext");
    }
    {
        let (clock, root) = clocked();
        let d = clock.now() + SHORT;
        let (c, _g1) = root.with_timeout(SHORT);
        let o = c.with_value(Other);
        let (c2, _g2) = o.with_timeout(VERY_LONG);
        assert_times_out_at(&clock, &c2, d, "WithTimeout+otherContext+WithTimeout");
    }
}

// Go: TestCanceledTimeout
#[test]
fn canceled_timeout() {
    let (_clock, root) = clocked();
    let (c, _g) = root.with_timeout(Duration::from_secs(1));
    let o = c.with_value(Other);
    let (c2, cancel) = o.with_timeout(VERY_LONG);
    cancel.cancel(); // Should propagate synchronously.
    assert_finished(&c2, Error::Canceled, "c2");
    assert_cause(&c2, &Want::Ctx(Error::Canceled), "c2");
    assert_live(&c, "parent of the canceled child");
}

// Go: TestValues
#[test]
fn values() {
    // Go: key1(1), key2(1), key2(3). Types are keys here, so three types. The Option models
    // Go's nil value (WithValue(c, k1, nil) shadows k1 with nil).
    #[derive(Debug, PartialEq)]
    struct K1(Option<&'static str>);
    #[derive(Debug, PartialEq)]
    struct K2(Option<&'static str>);
    #[derive(Debug, PartialEq)]
    struct K3(Option<&'static str>);

    // Go's check: the string stored under each key, with nil and absent both reading as "".
    #[track_caller]
    fn check(c: &Context, nm: &str, v1: Option<&str>, v2: Option<&str>, v3: Option<&str>) {
        assert_eq!(c.value::<K1>().and_then(|k| k.0), v1, "{nm}.value::<K1>()");
        assert_eq!(c.value::<K2>().and_then(|k| k.0), v2, "{nm}.value::<K2>()");
        assert_eq!(c.value::<K3>().and_then(|k| k.0), v3, "{nm}.value::<K3>()");
    }

    let c0 = Context::background();
    check(&c0, "c0", None, None, None);

    let c1 = Context::background().with_value(K1(Some("c1k1")));
    check(&c1, "c1", Some("c1k1"), None, None);

    let c2 = c1.with_value(K2(Some("c2k2")));
    check(&c2, "c2", Some("c1k1"), Some("c2k2"), None);

    let c3 = c2.with_value(K3(Some("c3k3")));
    check(&c3, "c3", Some("c1k1"), Some("c2k2"), Some("c3k3"));

    let c4 = c3.with_value(K1(None));
    check(&c4, "c4", None, Some("c2k2"), Some("c3k3"));
    // Shadowed, not removed: the nearest value wins.
    assert_eq!(c4.value::<K1>(), Some(&K1(None)));
    // The ancestors are unchanged.
    check(&c3, "c3 after c4", Some("c1k1"), Some("c2k2"), Some("c3k3"));

    let (o0, _g0) = Context::background().with_cancel();
    check(&o0, "o0", None, None, None);

    let (o1, _g1) = Context::background().with_value(K1(Some("c1k1"))).with_cancel();
    check(&o1, "o1", Some("c1k1"), None, None);

    let o2 = o1.with_value(K2(Some("o2k2")));
    check(&o2, "o2", Some("c1k1"), Some("o2k2"), None);

    let o3 = c4.without_cancel();
    check(&o3, "o3", None, Some("c2k2"), Some("c3k3"));

    let o4 = o3.with_value(K3(None));
    check(&o4, "o4", None, Some("c2k2"), None);

    // A type that was never stored is absent everywhere.
    assert!(o4.value::<Other>().is_none());
    assert!(o4.value::<&'static str>().is_none());
}

// Go: TestSimultaneousCancels
#[test]
fn simultaneous_cancels() {
    let mut nodes: Vec<(Context, CancelGuard)> = vec![Context::background().with_cancel()];
    let mut q = VecDeque::from([0usize]);
    // Create a tree of contexts.
    while let Some(parent) = q.pop_front() {
        if nodes.len() >= 100 {
            break;
        }
        for _ in 0..4 {
            let child = nodes[parent].0.with_cancel();
            nodes.push(child);
            q.push_back(nodes.len() - 1);
        }
    }
    let (contexts, mut guards): (Vec<Context>, Vec<CancelGuard>) = nodes.into_iter().unzip();
    let n = guards.len();
    assert!(n >= 100);

    // Start all the cancels in a random order, as simultaneously as possible.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    rng.shuffle(&mut guards);
    let barrier = Arc::new(Barrier::new(n));
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = guards
        .into_iter()
        .map(|guard| {
            let barrier = barrier.clone();
            let tx = tx.clone();
            thread::spawn(move || {
                barrier.wait();
                guard.cancel();
                tx.send(()).unwrap();
            })
        })
        .collect();

    // Wait on all the contexts in a random order.
    let mut order: Vec<usize> = (0..contexts.len()).collect();
    rng.shuffle(&mut order);
    for i in order {
        assert_eq!(
            contexts[i].wait_timeout(BOUND),
            Some(Error::Canceled),
            "timed out waiting for contexts[{i}] to be done"
        );
    }
    // Wait for all the cancels to return.
    for _ in 0..n {
        rx.recv_timeout(BOUND).expect("timed out waiting for the cancel calls to return");
    }
    for h in handles {
        h.join().unwrap();
    }
}

// Go: TestInterlockedCancels
#[test]
fn interlocked_cancels() {
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (child, cancel_child) = parent.with_cancel();
    let parent_done = parent.done_owned();
    let helper = thread::spawn(move || {
        let err = futures::executor::block_on(parent_done);
        cancel_child.cancel();
        err
    });
    cancel_parent.cancel();
    assert_eq!(
        child.wait_timeout(BOUND),
        Some(Error::Canceled),
        "timed out waiting for child to be done"
    );
    assert_eq!(helper.join().unwrap(), Error::Canceled);
    assert_finished(&child, Error::Canceled, "child");
}

/// Value types for the random layerings: types are keys, so each index is its own type.
#[derive(Debug)]
struct LayerKey<const N: usize>(usize);
const NUM_LAYER_KEYS: usize = 4;

fn with_layer_key(ctx: &Context, key: usize, v: usize) -> Context {
    match key {
        0 => ctx.with_value(LayerKey::<0>(v)),
        1 => ctx.with_value(LayerKey::<1>(v)),
        2 => ctx.with_value(LayerKey::<2>(v)),
        _ => ctx.with_value(LayerKey::<3>(v)),
    }
}

fn layer_key(ctx: &Context, key: usize) -> Option<usize> {
    match key {
        0 => ctx.value::<LayerKey<0>>().map(|k| k.0),
        1 => ctx.value::<LayerKey<1>>().map(|k| k.0),
        2 => ctx.value::<LayerKey<2>>().map(|k| k.0),
        _ => ctx.value::<LayerKey<3>>().map(|k| k.0),
    }
}

/// Go's `testLayers`.
fn test_layers(seed: u64, test_timeout: bool) {
    const MIN_LAYERS: usize = 30;
    let mut rng = XorShift(seed);
    let (clock, mut ctx) = clocked();
    let mut expected = [None; NUM_LAYER_KEYS];
    let mut num_vals = 0;
    let mut guards = Vec::new();
    let mut num_timers = 0;
    let mut i = 0;
    while i < MIN_LAYERS || num_timers == 0 || guards.is_empty() || num_vals == 0 {
        match rng.below(3) {
            0 => {
                let key = rng.below(NUM_LAYER_KEYS);
                ctx = with_layer_key(&ctx, key, i);
                expected[key] = Some(i);
                num_vals += 1;
            }
            1 => {
                let (c, guard) = ctx.with_cancel();
                ctx = c;
                guards.push(guard);
            }
            _ => {
                let d = if test_timeout { SHORT } else { VERY_LONG };
                let (c, guard) = ctx.with_timeout(d);
                ctx = c;
                guards.push(guard);
                num_timers += 1;
            }
        }
        i += 1;
    }
    let check_values = |when: &str| {
        for (key, want) in expected.iter().enumerate() {
            assert_eq!(
                layer_key(&ctx, key),
                *want,
                "seed={seed}: {when}: value of LayerKey<{key}>"
            );
        }
    };
    assert_live(&ctx, &format!("seed={seed}: ctx should not be canceled yet"));
    check_values("before cancel");
    if test_timeout {
        clock.advance(SHORT);
        assert_finished(
            &ctx,
            Error::DeadlineExceeded,
            &format!("seed={seed}: ctx should have timed out"),
        );
        check_values("after timeout");
    } else {
        let which = rng.below(guards.len());
        guards[which].cancel();
        assert_finished(
            &ctx,
            Error::Canceled,
            &format!("seed={seed}: ctx should be canceled (guard {which})"),
        );
        check_values("after cancel");
    }
}

// Go: TestLayersCancel
#[test]
fn layers_cancel() {
    for seed in 1..=32u64 {
        test_layers(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), false);
    }
}

// Go: TestLayersTimeout
#[test]
fn layers_timeout() {
    for seed in 1..=32u64 {
        test_layers(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), true);
    }
}

// Go: TestCancelRemoves
#[test]
fn cancel_removes() {
    let (clock, root) = clocked();

    // A canceled timeout child releases its timer.
    let (ctx, _g) = root.with_cancel();
    assert_eq!(clock.pending_timers(), 0, "after creation");
    let (_child, cancel) = ctx.with_timeout(Duration::from_secs(60 * 60));
    assert_eq!(clock.pending_timers(), 1, "with WithTimeout child");
    cancel.cancel();
    assert_eq!(clock.pending_timers(), 0, "after canceling WithTimeout child");

    // Dropping the guard (Rust's implicit cancel) releases it too.
    let (_child, cancel) = ctx.with_timeout(Duration::from_secs(60 * 60));
    assert_eq!(clock.pending_timers(), 1, "with WithTimeout child");
    drop(cancel);
    assert_eq!(clock.pending_timers(), 0, "after dropping the WithTimeout child's guard");

    // A stopped AfterFunc releases its callback.
    let token = Arc::new(());
    let held = token.clone();
    let stop = ctx.after_func(move || drop(held));
    assert_eq!(Arc::strong_count(&token), 2, "with AfterFunc child");
    assert!(stop.stop(), "stop() = false, want true");
    assert_eq!(Arc::strong_count(&token), 1, "after stopping AfterFunc child: callback still held");
    assert_live(&ctx, "parent");
}

// Go: TestWithCancelCanceledParent
#[test]
fn with_cancel_canceled_parent() {
    let (parent, pcancel) = Context::background().with_cancel();
    let cause = TestErr::new("Because!");
    pcancel.cancel_with(cause.clone());

    let (c, _g) = parent.with_cancel();
    assert_finished(&c, Error::Canceled, "child not done immediately upon construction");
    assert_cause(&c, &Want::Custom(cause), "child");
}

// Go: TestWithCancelSimultaneouslyCanceledParent
#[test]
fn with_cancel_simultaneously_canceled_parent() {
    // Cancel the parent concurrently with creating a child.
    for i in 0..100 {
        let (parent, pcancel) = Context::background().with_cancel();
        let cause = TestErr::new("Because!");
        let sent = cause.clone();
        let canceler = thread::spawn(move || pcancel.cancel_with(sent));

        let (c, _g) = parent.with_cancel();
        assert_eq!(
            c.wait_timeout(BOUND),
            Some(Error::Canceled),
            "iteration {i}: child not canceled"
        );
        assert_cause(&c, &Want::Custom(cause), &format!("iteration {i}: child"));
        canceler.join().unwrap();
    }
}

// Go: TestInvalidDerivedFail
#[test]
fn invalid_derived_fail() {
    let root = Context::unclocked();
    assert_eq!(root.now(), None);
    // Cancel and value layers are fine without a clock...
    let (c, _g) = root.with_cancel();
    let v = c.with_value(Other);
    assert_live(&v, "unclocked child");
    // ...deadlines are not.
    assert_eq!(root.try_with_deadline(Instant::ZERO + SHORT).err(), Some(NoClockError));
    assert_eq!(root.try_with_timeout(SHORT).err(), Some(NoClockError));
    assert_eq!(v.try_with_timeout(SHORT).err(), Some(NoClockError));
    assert!(
        catch_unwind(AssertUnwindSafe(|| v.with_deadline(Instant::ZERO + SHORT))).is_err(),
        "expected panic from with_deadline on an unclocked tree"
    );
    assert!(
        catch_unwind(AssertUnwindSafe(|| v.with_timeout(SHORT))).is_err(),
        "expected panic from with_timeout on an unclocked tree"
    );
    assert!(
        catch_unwind(AssertUnwindSafe(|| { v.with_timeout_cause(SHORT, TestErr::new("tooSlow")) }))
            .is_err(),
        "expected panic from with_timeout_cause on an unclocked tree"
    );
    // The failed attempts left the tree untouched.
    assert_live(&v, "unclocked child after failed derivations");
}

// Go: TestDeadlineExceededSupportsTimeout
#[test]
fn deadline_exceeded_supports_timeout() {
    let (clock, root) = clocked();
    let (ctx, _g) = root.with_timeout(SHORT);
    clock.advance(SHORT);
    let err = ctx.err().expect("timed out context has no error");
    assert!(err.is_timeout(), "wrong value for timeout");
    assert_eq!(err, Error::DeadlineExceeded);
    assert_eq!(err.to_string(), "context deadline exceeded");
    assert!(!Error::Canceled.is_timeout());
    assert_eq!(Error::Canceled.to_string(), "context canceled");
}

// Go: TestCause
#[test]
fn cause() {
    let parent_cause = TestErr::new("parentCause");
    let child_cause = TestErr::new("childCause");
    let too_slow = TestErr::new("tooSlow");
    let finished_early = TestErr::new("finishedEarly");

    type MakeCtx = Box<dyn FnOnce() -> Context>;
    struct Case {
        name: &'static str,
        ctx: MakeCtx,
        err: Option<Error>,
        cause: Want,
    }
    let (pc, cc, ts, fe) = (&parent_cause, &child_cause, &too_slow, &finished_early);
    let cases: Vec<Case> = vec![
        Case {
            name: "Background",
            ctx: Box::new(Context::background),
            err: None,
            cause: Want::Nil,
        },
        Case { name: "TODO", ctx: Box::new(Context::default), err: None, cause: Want::Nil },
        Case {
            name: "WithCancel",
            ctx: Box::new(|| {
                let (ctx, cancel) = Context::background().with_cancel();
                cancel.cancel();
                ctx
            }),
            err: Some(Error::Canceled),
            cause: Want::Ctx(Error::Canceled),
        },
        Case {
            name: "WithCancelCause",
            ctx: Box::new({
                let pc = pc.clone();
                move || {
                    let (ctx, cancel) = Context::background().with_cancel();
                    cancel.cancel_with(pc);
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Custom(pc.clone()),
        },
        Case {
            // Go: cancel(nil). Rust: the guard is dropped without a cause.
            name: "WithCancelCause nil",
            ctx: Box::new(|| {
                let (ctx, cancel) = Context::background().with_cancel();
                drop(cancel);
                ctx
            }),
            err: Some(Error::Canceled),
            cause: Want::Ctx(Error::Canceled),
        },
        Case {
            name: "WithCancelCause: parent cause before child",
            ctx: Box::new({
                let (pc, cc) = (pc.clone(), cc.clone());
                move || {
                    let (ctx, cancel_parent) = Context::background().with_cancel();
                    let (ctx, cancel_child) = ctx.with_cancel();
                    cancel_parent.cancel_with(pc);
                    cancel_child.cancel_with(cc);
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Custom(pc.clone()),
        },
        Case {
            name: "WithCancelCause: parent cause after child",
            ctx: Box::new({
                let (pc, cc) = (pc.clone(), cc.clone());
                move || {
                    let (ctx, cancel_parent) = Context::background().with_cancel();
                    let (ctx, cancel_child) = ctx.with_cancel();
                    cancel_child.cancel_with(cc);
                    cancel_parent.cancel_with(pc);
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Custom(cc.clone()),
        },
        Case {
            name: "WithCancelCause: parent cause before nil",
            ctx: Box::new({
                let pc = pc.clone();
                move || {
                    let (ctx, cancel_parent) = Context::background().with_cancel();
                    let (ctx, cancel_child) = ctx.with_cancel();
                    cancel_parent.cancel_with(pc);
                    cancel_child.cancel();
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Custom(pc.clone()),
        },
        Case {
            name: "WithCancelCause: parent cause after nil",
            ctx: Box::new({
                let pc = pc.clone();
                move || {
                    let (ctx, cancel_parent) = Context::background().with_cancel();
                    let (ctx, cancel_child) = ctx.with_cancel();
                    cancel_child.cancel();
                    cancel_parent.cancel_with(pc);
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Ctx(Error::Canceled),
        },
        Case {
            name: "WithCancelCause: child cause after nil",
            ctx: Box::new({
                let cc = cc.clone();
                move || {
                    let (ctx, cancel_parent) = Context::background().with_cancel();
                    let (ctx, cancel_child) = ctx.with_cancel();
                    cancel_parent.cancel();
                    cancel_child.cancel_with(cc);
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Ctx(Error::Canceled),
        },
        Case {
            name: "WithCancelCause: child cause before nil",
            ctx: Box::new({
                let cc = cc.clone();
                move || {
                    let (ctx, cancel_parent) = Context::background().with_cancel();
                    let (ctx, cancel_child) = ctx.with_cancel();
                    cancel_child.cancel_with(cc);
                    cancel_parent.cancel();
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Custom(cc.clone()),
        },
        Case {
            name: "WithTimeout",
            ctx: Box::new(|| {
                let (_clock, root) = clocked();
                let (ctx, cancel) = root.with_timeout(Duration::ZERO);
                cancel.cancel();
                ctx
            }),
            err: Some(Error::DeadlineExceeded),
            cause: Want::Ctx(Error::DeadlineExceeded),
        },
        Case {
            name: "WithTimeout canceled",
            ctx: Box::new(|| {
                let (_clock, root) = clocked();
                let (ctx, cancel) = root.with_timeout(FOREVER);
                cancel.cancel();
                ctx
            }),
            err: Some(Error::Canceled),
            cause: Want::Ctx(Error::Canceled),
        },
        Case {
            name: "WithTimeoutCause",
            ctx: Box::new({
                let ts = ts.clone();
                move || {
                    let (_clock, root) = clocked();
                    let (ctx, cancel) = root.with_timeout_cause(Duration::ZERO, ts);
                    cancel.cancel();
                    ctx
                }
            }),
            err: Some(Error::DeadlineExceeded),
            cause: Want::Custom(ts.clone()),
        },
        Case {
            name: "WithTimeoutCause canceled",
            ctx: Box::new({
                let ts = ts.clone();
                move || {
                    let (_clock, root) = clocked();
                    let (ctx, cancel) = root.with_timeout_cause(FOREVER, ts);
                    cancel.cancel();
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Ctx(Error::Canceled),
        },
        Case {
            name: "WithTimeoutCause stacked",
            ctx: Box::new({
                let (ts, fe) = (ts.clone(), fe.clone());
                move || {
                    let (_clock, root) = clocked();
                    let (ctx, cancel) = root.with_cancel();
                    let (ctx, _child_guard) = ctx.with_timeout_cause(Duration::ZERO, ts);
                    cancel.cancel_with(fe);
                    ctx
                }
            }),
            err: Some(Error::DeadlineExceeded),
            cause: Want::Custom(ts.clone()),
        },
        Case {
            name: "WithTimeoutCause stacked canceled",
            ctx: Box::new({
                let (ts, fe) = (ts.clone(), fe.clone());
                move || {
                    let (_clock, root) = clocked();
                    let (ctx, cancel) = root.with_cancel();
                    // Bound so it stays live until the parent is canceled (Go leaks it).
                    let (ctx, _child_guard) = ctx.with_timeout_cause(FOREVER, ts);
                    cancel.cancel_with(fe);
                    ctx
                }
            }),
            err: Some(Error::Canceled),
            cause: Want::Custom(fe.clone()),
        },
        Case {
            name: "WithoutCancel",
            ctx: Box::new(|| Context::background().without_cancel()),
            err: None,
            cause: Want::Nil,
        },
        Case {
            name: "WithoutCancel canceled",
            ctx: Box::new({
                let fe = fe.clone();
                move || {
                    let (ctx, cancel) = Context::background().with_cancel();
                    let ctx = ctx.without_cancel();
                    cancel.cancel_with(fe);
                    ctx
                }
            }),
            err: None,
            cause: Want::Nil,
        },
        Case {
            name: "WithoutCancel timeout",
            ctx: Box::new({
                let ts = ts.clone();
                move || {
                    let (_clock, root) = clocked();
                    let (ctx, cancel) = root.with_timeout_cause(Duration::ZERO, ts);
                    let ctx = ctx.without_cancel();
                    cancel.cancel();
                    ctx
                }
            }),
            err: None,
            cause: Want::Nil,
        },
        // Rust-only rows: the deadline is reached by advancing the clock rather than being
        // past at construction, and the cause reaches descendants.
        Case {
            name: "WithTimeoutCause fired by the clock",
            ctx: Box::new({
                let ts = ts.clone();
                move || {
                    let (clock, root) = clocked();
                    let (ctx, cancel) = root.with_timeout_cause(SHORT, ts);
                    clock.advance(SHORT);
                    cancel.cancel();
                    ctx
                }
            }),
            err: Some(Error::DeadlineExceeded),
            cause: Want::Custom(ts.clone()),
        },
        Case {
            name: "WithDeadlineCause fired by the clock, seen by a grandchild",
            ctx: Box::new({
                let ts = ts.clone();
                move || {
                    let (clock, root) = clocked();
                    let (ctx, _g1) = root.with_deadline_cause(clock.now() + SHORT, ts);
                    let (ctx, _g2) = ctx.with_value(Other).with_cancel();
                    clock.advance(SHORT);
                    ctx
                }
            }),
            err: Some(Error::DeadlineExceeded),
            cause: Want::Custom(ts.clone()),
        },
    ];

    for case in cases {
        let ctx = (case.ctx)();
        assert_eq!(ctx.err(), case.err, "{}: err()", case.name);
        assert_eq!(ctx.is_done(), case.err.is_some(), "{}: is_done()", case.name);
        assert_eq!(ctx.check(), case.err.map_or(Ok(()), Err), "{}: check()", case.name);
        assert_cause(&ctx, &case.cause, case.name);
    }
}

// Go: TestCauseRace
#[test]
fn cause_race() {
    let cause = TestErr::new("TestCauseRace");
    let (ctx, cancel) = Context::background().with_cancel();
    let sent = cause.clone();
    let canceler = thread::spawn(move || cancel.cancel_with(sent));
    let started = std::time::Instant::now();
    loop {
        // Poll cause(), rather than waiting for done, to test that access to the
        // underlying cause is synchronized properly.
        if let Some(got) = ctx.cause() {
            assert_eq!(
                got.downcast_ref::<TestErr>(),
                Some(&cause),
                "cause() returned {got:?}, want {cause:?}"
            );
            assert_eq!(ctx.err(), Some(Error::Canceled), "cause set but err() not");
            break;
        }
        assert!(started.elapsed() < BOUND, "cause() never became Some");
        thread::yield_now();
    }
    canceler.join().unwrap();
}

// Go: TestWithoutCancel
#[test]
fn without_cancel() {
    #[derive(Debug, PartialEq)]
    struct Key(&'static str);

    let ctx = Context::background().with_value(Key("value"));
    let ctx = ctx.without_cancel();
    assert_eq!(ctx.deadline(), None);
    assert_eq!(ctx.remaining(), None);
    assert_live(&ctx, "WithoutCancel");
    assert_eq!(ctx.value::<Key>(), Some(&Key("value")));

    // Neither cancellation nor a deadline of the parent reaches it.
    let (clock, root) = clocked();
    let (parent, cancel) = root.with_value(Key("timed")).with_timeout(SHORT);
    let (parent, _g) = parent.with_cancel();
    let detached = parent.without_cancel();
    assert_eq!(detached.deadline(), None);
    clock.advance(SHORT);
    assert_finished(&parent, Error::DeadlineExceeded, "parent");
    assert_live(&detached, "WithoutCancel of a timed-out parent");
    cancel.cancel_with(TestErr::new("late"));
    assert_live(&detached, "WithoutCancel after parent guard canceled");
    assert_eq!(detached.value::<Key>(), Some(&Key("timed")));
}

// Go: TestAfterFuncCalledAfterCancel
#[test]
fn after_func_called_after_cancel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let calls = Calls::default();
    let ran_on = Arc::new(Mutex::new(None));
    let stop = ctx.after_func({
        let f = calls.callback();
        let ran_on = ran_on.clone();
        move || {
            *ran_on.lock().unwrap() = Some(thread::current().id());
            f();
        }
    });
    assert_eq!(calls.get(), 0, "AfterFunc called before context is done");

    cancel.cancel();
    assert_eq!(calls.get(), 1, "AfterFunc not called after context is canceled");
    assert_eq!(
        *ran_on.lock().unwrap(),
        Some(thread::current().id()),
        "AfterFunc did not run on the canceling thread"
    );
    assert!(!stop.stop(), "stop() = true, want false");

    cancel.cancel();
    drop(cancel);
    assert_eq!(calls.get(), 1, "AfterFunc called more than once");
}

// Go: TestAfterFuncCalledAfterTimeout
#[test]
fn after_func_called_after_timeout() {
    let (clock, root) = clocked();
    let (ctx, _cancel) = root.with_timeout(SHORT);
    let calls = Calls::default();
    // Like Go, which discards `stop`: dropping the handle leaves f registered.
    let _ = ctx.after_func(calls.callback());
    clock.advance(SHORT / 2);
    assert_eq!(calls.get(), 0, "AfterFunc called before the deadline");
    clock.advance(SHORT - SHORT / 2);
    assert_eq!(calls.get(), 1, "AfterFunc not called after context timed out");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

// Go: TestAfterFuncCalledImmediately
#[test]
fn after_func_called_immediately() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let calls = Calls::default();
    let ran_on = Arc::new(Mutex::new(None));
    let stop = ctx.after_func({
        let f = calls.callback();
        let ran_on = ran_on.clone();
        move || {
            *ran_on.lock().unwrap() = Some(thread::current().id());
            f();
        }
    });
    assert_eq!(calls.get(), 1, "AfterFunc not called for already-canceled context");
    assert_eq!(*ran_on.lock().unwrap(), Some(thread::current().id()));
    assert!(!stop.stop(), "stop() = true, want false");
}

// Go: TestAfterFuncNotCalledAfterStop
#[test]
fn after_func_not_called_after_stop() {
    let (ctx, cancel) = Context::background().with_cancel();
    let calls = Calls::default();
    let stop = ctx.after_func(calls.callback());
    assert!(stop.stop(), "stop() = false, want true");
    cancel.cancel();
    assert_eq!(calls.get(), 0, "AfterFunc called after stop");
    assert!(!stop.stop(), "stop() = true, want false");
    assert_eq!(calls.get(), 0);
}
