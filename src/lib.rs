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
//!
//! Where Rust does better than Go: a forgotten cancel cannot leak (the guard cancels on
//! drop, and dropped contexts unlink themselves); `err()` is one atomic load; values are
//! typed; deadlines are testable with a manual clock; `after_func` runs inline on the
//! completing thread instead of a new goroutine.
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
//! - `tokio`: `TokioClock`.
//! - `async-io`: `AsyncIoClock`.
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
mod context;
mod error;
mod node;
mod panic;
mod state;
mod sync;
mod time;
mod timer;
mod wait;

pub use after_func::AfterFunc;
pub use context::{CancelGuard, Context};
pub use error::{Cause, Error, NoClockError};
#[cfg(feature = "async-io")]
pub use time::AsyncIoClock;
#[cfg(feature = "std")]
pub use time::StdClock;
#[cfg(feature = "tokio")]
pub use time::TokioClock;
pub use time::{Clock, Instant, ManualClock, TimerKey};
pub use wait::{Cancelled, CancelledOwned, Done, DoneOwned, Run};

/// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
