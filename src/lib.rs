//! Go's `context` for Rust: cancellation trees with causes, deadlines on any clock,
//! request-scoped values, and `Done`/`Err`, for every runtime and for `no_std`.
//!
//! A [`Context`] says when work should stop. Contexts form a tree: each
//! [`with_cancel`](Context::with_cancel), [`with_timeout`](Context::with_timeout),
//! [`with_deadline`](Context::with_deadline) or [`with_value`](Context::with_value) makes a
//! child, and when a context is done every descendant is done with the same [`Error`] and
//! [`Cause`], while its ancestors and siblings carry on. Code that does the work asks
//! [`is_done`](Context::is_done) / [`check`](Context::check) in its loops, awaits
//! [`done`](Context::done) in `select!`, wraps futures with [`run`](Context::run), blocks in
//! [`wait`](Context::wait), or registers [`after_func`](Context::after_func) callbacks.
//!
//! # Examples
//!
#![cfg_attr(feature = "std", doc = "```")]
#![cfg_attr(not(feature = "std"), doc = "```ignore")]
//! use cancelctx::{Context, Error};
//! use std::time::Duration;
//!
//! #[derive(Debug)]
//! struct UserId(u64);
//!
//! // A request: a value, a time limit, and a guard that cancels when dropped.
//! let request = Context::background().with_value(UserId(42));
//! let (ctx, cancel) = request.with_timeout(Duration::from_secs(5));
//!
//! let worker = std::thread::spawn({
//!     let ctx = ctx.clone();
//!     move || {
//!         let mut rows = 0u64;
//!         while ctx.check().is_ok() {
//!             rows += 1; // one unit of work
//!             std::thread::yield_now();
//!         }
//!         (rows, ctx.value::<UserId>().map(|u| u.0))
//!     }
//! });
//!
//! cancel.cancel(); // or drop(cancel), or let the five seconds run out
//! let (_rows, user) = worker.join().unwrap();
//! assert_eq!(user, Some(42));
//! assert_eq!(ctx.err(), Some(Error::Canceled));
//! ```
//!
//! # The model
//!
//! - **Done is forever.** A context goes from live to done once. The first completion wins
//!   its [`Error`] ([`Canceled`](Error::Canceled) or
//!   [`DeadlineExceeded`](Error::DeadlineExceeded)) and its [`Cause`]; later cancels change
//!   nothing. `is_done`, `err` and `cause` agree from every thread at every instant.
//! - **Cancellation flows down.** A child is done when its parent is (taking the parent's
//!   error and cause), never the reverse. A child of a done parent is born done.
//! - **Guards cancel on drop.** [`CancelGuard`] is the right to cancel; dropping it cancels,
//!   which is Go's `defer cancel()` made automatic. [`CancelGuard::detach`] opts out.
//! - **Nothing leaks.** When the last handle to a context is dropped it is unlinked from its
//!   parent, cancelled or not, and its timer (if any) is released.
//! - **Time is pluggable.** Deadlines use the tree's [`Clock`]: the std clock for
//!   [`Context::background`], a [`ManualClock`] for deterministic tests, `tokio::time` or
//!   async-io behind features, or your own (see [`Clock`] for an embedded timer).
//!
//! # Coming from Go
//!
//! | Go | cancelctx |
//! |---|---|
//! | `context.Background()`, `TODO()` | [`Context::background()`], or [`Context::with_clock`] / [`Context::unclocked`] |
//! | `ctx, cancel := WithCancel(parent)` + `defer cancel()` | `let (ctx, guard) = parent.with_cancel();` (drop cancels) |
//! | `WithCancelCause` + `cancel(err)` | [`CancelGuard::cancel_with`]`(err)` |
//! | `WithDeadline`, `WithTimeout` | [`Context::with_deadline`], [`Context::with_timeout`] |
//! | `WithDeadlineCause`, `WithTimeoutCause` | [`Context::with_deadline_cause`], [`Context::with_timeout_cause`] |
//! | `WithValue(ctx, key, v)`, `ctx.Value(key)` | [`Context::with_value`]`(v)`, [`Context::value::<T>()`](Context::value) (types are keys) |
//! | `WithoutCancel` | [`Context::without_cancel`] |
//! | `AfterFunc(ctx, f)`, `stop()` | [`Context::after_func`]`(f)`, [`AfterFunc::stop`] |
//! | `<-ctx.Done()` | `ctx.done().await`, [`Context::wait`] (blocking), [`Context::wait_timeout`] |
//! | `ctx.Err()`, `Cause(ctx)`, `ctx.Deadline()` | [`Context::err`], [`Context::cause`], [`Context::deadline`] |
//! | `context.Canceled`, `DeadlineExceeded` | [`Error::Canceled`], [`Error::DeadlineExceeded`] |
//! | `select { case <-ctx.Done(): ... case v := <-work: ... }` | [`Context::run`]`(work)` |
//! | `select { case <-ctx.Done(): case <-time.After(d): }` | [`Context::sleep`]`(d).await` (`Err` if the context ends first) |
//! | `sync.WaitGroup`: `wg.Add(1)`, `defer wg.Done()`, `wg.Wait()` | [`WaitGroup`]: `let done = wg.add();` (drop = `Done`), [`wg.wait().await`](WaitGroup::wait), `wait_blocking()` |
//! | `g, ctx := errgroup.WithContext(ctx)`, `g.Go(f)`, `g.SetLimit(n)`, `g.Wait()` | [`Group::new`]`(&ctx)`, [`group.go(f)`](Group::go) (spawn it) / `go_thread(f)`, [`set_limit`](Group::set_limit), [`wait`](Group::wait) |
//! | `r.Context()` (net/http), grpc-go's deadline propagation | `ContextLayer` / `PropagateLayer` (feature `tower`; its module docs map the rest) |
//!
//! Where Rust does better than Go: a forgotten cancel cannot leak (the guard cancels on
//! drop, and dropped contexts unlink themselves); `err()` is one or two atomic loads; values are
//! typed; deadlines are testable with a manual clock; `after_func` runs inline on the
//! completing thread instead of a new goroutine.
//!
//! # Coming from tokio-util
//!
//! A `CancellationToken` is both the right to cancel and the way to observe; here those are
//! two values, so code that only observes cannot cancel by mistake.
//!
//! | tokio-util | cancelctx |
//! |---|---|
//! | `CancellationToken::new()` | `let (ctx, guard) = Context::background().with_cancel();` |
//! | `token.clone()` (to observe) | `ctx.clone()`; to cancel from several places, share the [`CancelGuard`] (`Arc`) |
//! | `token.child_token()` | [`Context::with_cancel`] (children of children, values, deadlines too) |
//! | `token.cancel()` | [`CancelGuard::cancel`], or [`cancel_with`](CancelGuard::cancel_with)`(cause)` |
//! | `token.is_cancelled()` | [`Context::is_done`], [`Context::err`] (which error), [`Context::cause`] (why) |
//! | `token.cancelled().await`, `cancelled_owned()` | `ctx.done().await`, [`Context::done_owned`]; blocking: [`Context::wait`] |
//! | `token.run_until_cancelled(fut)` (`Option`) | [`Context::run`]`(fut)` (`Result<_, Error>`); with a time limit: [`Context::timeout`] |
//! | `token.drop_guard()`, `DropGuard::disarm()` | a [`CancelGuard`] cancels on drop already; [`CancelGuard::detach`] disarms |
//! | no deadlines | [`Context::with_timeout`], [`Context::with_deadline`], [`Context::timeout`] |
//! | no linked tokens | [`Context::with_linked`] (two parents; dropping unlinks) |
//! | streams: `take_until(token.cancelled())` | [`Context::take_until_done`] |
//! | migrating one function at a time | feature `tokio-util`: `ctx.with_token(&token)`, `ctx.cancellation_token()` |
//!
//! # Groups of tasks
//!
//! A context says *when to stop*; something must also say *when everything has stopped*.
//! [`WaitGroup`] is Go's `sync.WaitGroup` with guards: [`add`](WaitGroup::add) returns a
//! [`WaitGuard`] whose drop is `Done()`, so a panic or early return cannot leave a waiter
//! hanging. [`Group`] is `errgroup.WithContext`: members get the group's context, the first
//! error cancels the others and is returned by [`wait`](Group::wait), limits bound how many
//! run, and member panics are resumed by `wait`. [`Context::sleep`] is the worker's
//! `select { case <-ctx.Done(): case <-time.After(d): }`, and [`Context::block_on`] lets a
//! plain thread wait for any future under a context. None of them picks an executor:
//! members and tracked futures are spawned by you (`examples/worker.rs` shows both patterns).
//!
//! # Time
//!
//! Each tree reads time from its root's [`Clock`]. [`Instant`]s are points on that clock.
//! A child's deadline is the earlier of its own and its parent's (no timer is made when the
//! parent's comes first); a deadline at or before `now` gives a context that is born done
//! with [`Error::DeadlineExceeded`]; cancelling before the deadline releases the timer at
//! once. Clocks:
//!
//! - [`StdClock`] (feature `std`): the clock of [`Context::background`]; one lazily started
//!   `cancelctx-timer` thread per process. Callbacks of contexts completed by a deadline run
//!   on that thread.
//! - [`ManualClock`]: moves only on [`advance`](ManualClock::advance) /
//!   [`set`](ManualClock::set), which fire every due deadline before returning.
//! - `TokioClock` (feature `tokio`): `tokio::time`, so paused time drives deadlines.
//! - `AsyncIoClock` (feature `async-io`): async-io timers, for smol and async-std.
//! - Your own: implement [`Clock`] (three methods; works without `std`).
//!
//! A tree rooted at [`Context::unclocked`] has no clock: deadline constructors panic with a
//! clear message there, and their `try_` forms return [`NoClockError`].
//!
//! # Runtime support
//!
//! The crate never spawns or sleeps by itself (deadlines use the tree's [`Clock`]), so it
//! runs wherever futures or threads run. What the test suite runs where:
//!
//! | runtime | waiting | deadlines (clock) | tested in |
//! |---|---|---|---|
//! | std threads | `wait()`, `wait_timeout()`, `check()` | [`StdClock`], [`ManualClock`] | `tests/waits.rs`, `runtimes.rs`, `linked.rs`, `stress.rs`, `examples/threads.rs` |
//! | tokio (multi-thread, current-thread) | `done()`, `run()`, `timeout()`, streams | `TokioClock` (paused time), std | `tests/waits.rs`, `runtimes.rs`, `linked.rs`, `streams.rs`, `tokio_util_bridge.rs` |
//! | smol | as tokio | `AsyncIoClock`, std | `tests/waits.rs`, `runtimes.rs`, `linked.rs`, `streams.rs` |
//! | async-std | as tokio | `AsyncIoClock`, std | `tests/waits.rs`, `runtimes.rs`, `linked.rs`, `streams.rs` |
//! | `futures::executor`, pollster | as tokio | std, manual | `tests/waits.rs`, `linked.rs`, `streams.rs`, doc tests |
//! | `no_std` + `alloc` | `is_done()`, `done()` on your executor | your [`Clock`] | `cargo build --no-default-features`, `examples/embedded.rs` |
//! | loom (model checking) | all of the above, blocking included | manual | `tests/loom.rs`, `tests/loom_linked.rs`, `tests/loom_groups.rs` |
//!
//! # Performance
//!
//! In short (medians on a 2-CPU machine, from [BENCHMARKS.md] (shipped with the crate),
//! which has every figure, the method and the misses): `is_done()` is about 1 ns, one
//! atomic load on a context something is registered on and two on a bare `with_cancel` leaf
//! (4x faster than tokio-util's `is_cancelled()`); creating and dropping a child is one
//! 64-byte allocation and takes no lock on the parent (1.6x faster than tokio-util's
//! `child_token()` + drop); cancelling a parent with 10,000 children and reading each is
//! about 6x faster per child than tokio-util; a million-deep chain is created, cancelled and
//! dropped in under half tokio-util's time; a `with_timeout` + cancel on the std clock costs
//! about 100-200 ns, less than half of Go's own; a blocking `wait()` woken from another
//! thread is within 10% of a bare `park`/`unpark`. The benches put tokio-util and physical
//! floors (a bare atomic, `Arc::new`, event-listener, `park`) in every group, so each figure
//! is a ratio.
//!
//! [BENCHMARKS.md]: https://docs.rs/crate/cancelctx/latest/source/BENCHMARKS.md
//!
//! # Pitfalls
//!
//! - **`let (ctx, _) = parent.with_timeout(d)` is already cancelled.** `_` is not a name: it
//!   drops the [`CancelGuard`] at once, and dropping the guard cancels. Keep the guard
//!   (`let (ctx, _guard) = ...`), or, when only the deadline matters, write
//!   [`parent.with_timeout_only(d)`](Context::with_timeout_only) /
//!   [`with_deadline_only`](Context::with_deadline_only), which return no guard (dropping the
//!   context releases its timer, so nothing leaks).
//! - **A dropped guard says only `Canceled`.** To tell "dropped mid-flight" from "finished
//!   normally", give the guard a cause: [`CancelGuard::with_drop_cause`].
//! - **`done()` resolves to the [`Error`].** APIs that want `Future<Output = ()>` (server
//!   shutdown signals) take [`Context::cancelled`] / [`Context::cancelled_owned`].
//! - **`after_func` on a context that can never be done drops `f` at once, unrun.**
//!   [`Context::background`], [`Context::with_clock`] roots and
//!   [`without_cancel`](Context::without_cancel) children are never done, so a channel sender
//!   captured in `f` disconnects at once. Check [`Context::can_be_done`] first, or wait with
//!   [`done()`](Context::done) / [`wait()`](Context::wait), which stay pending there.
//! - **Callbacks and deadlines run on other threads' stacks.** `after_func` callbacks run on
//!   the completing thread (the canceller, or the clock's timer thread): keep them short and
//!   never block in them on work that needs that thread.
//!
//! # Memory ordering
//!
//! Completing a context is a release operation and observing it done (`is_done`, `err`,
//! `cause`, `done()`, `wait()`) is an acquire: everything a thread did before cancelling is
//! visible to a thread that sees the context done.
//!
//! # Features
//!
//! - `std` *(enabled by default)*: [`Context::background`], [`StdClock`], blocking
//!   [`wait`](Context::wait) / [`wait_timeout`](Context::wait_timeout), and panic isolation
//!   for callbacks. Without it the crate is `#![no_std]` + `alloc`; its internal lock spins.
//!   Also the blocking and thread parts of the groups: [`WaitGroup::wait_blocking`] /
//!   [`wait_timeout`](WaitGroup::wait_timeout), [`Group::go_thread`] /
//!   [`wait_blocking`](Group::wait_blocking), member panic capture ([`MemberPanicked`]) and
//!   [`Context::block_on`]. [`WaitGroup`], [`Group`] and [`Context::sleep`] work without it.
//! - `tokio`: `TokioClock`.
//! - `async-io`: `AsyncIoClock`.
//! - `tokio-util`: bridges with `tokio_util::sync::CancellationToken` both ways
//!   (`Context::with_token`, `Context::cancellation_token`).
//! - `signal`: `Context::with_signals`, a context cancelled on Ctrl-C / SIGTERM (unix and
//!   windows, on `signal-hook`).
//! - `http`: module `http`: deadlines across processes as the `grpc-timeout` header
//!   (`encode_grpc_timeout`, `inject_deadline`, `extract_deadline`); what crosses the wire
//!   and what does not.
//! - `tower` (implies `http`): module `tower`: `ContextLayer`, a context per server request
//!   (hyper, axum, tonic), and `PropagateLayer` for outgoing calls; the mapping from Go's
//!   `r.Context()`.
//! - `axum` (implies `tower`): `Context` (and `Option<Context>`) is an axum extractor.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod after_func;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod context;
mod error;
mod group;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod identity;
mod linked;
mod node;
mod panic;
mod relay;
#[cfg(feature = "signal")]
mod signal;
mod sleep;
mod state;
mod stream;
mod sync;
mod time;
mod timer;
#[cfg(feature = "tokio-util")]
mod tokio_util;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
mod wait;
mod wait_group;
mod waiters;

pub use after_func::AfterFunc;
pub use context::{CancelGuard, Context};
pub use error::{Cause, Error, NoClockError};
#[cfg(feature = "std")]
pub use group::MemberPanicked;
pub use group::{Group, GroupWait, Member};
#[cfg(feature = "signal")]
pub use signal::{Signal, SignalGuard, SignalReceived};
pub use sleep::Sleep;
pub use stream::{TakeUntilDone, Timeout};
/// The std clock's wake-up protocol, for `tests/loom.rs` only.
#[cfg(all(loom, feature = "std"))]
#[doc(hidden)]
pub use time::std_clock_model as __std_clock_model;
#[cfg(feature = "async-io")]
pub use time::AsyncIoClock;
#[cfg(feature = "std")]
pub use time::StdClock;
#[cfg(feature = "tokio")]
pub use time::TokioClock;
pub use time::{Clock, Instant, ManualClock, TimerKey};
#[cfg(feature = "tokio-util")]
pub use tokio_util::{BoundToken, TokenCancelled};
pub use wait::{Cancelled, CancelledOwned, Done, DoneOwned, Run};
pub use wait_group::{Track, WaitGroup, WaitGroupWait, WaitGuard};

/// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
