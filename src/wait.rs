//! Waiting for a context: the [`Done`] and [`DoneOwned`] futures, [`Run`], and (with `std`)
//! blocking waits.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, Waker};

use futures_core::future::FusedFuture;

use crate::context::Context;
use crate::error::Error;
use crate::node::CancelNode;
use crate::state;
use crate::waiters::{Registered, Registration};

/// Registers `registration` on `node` (once) and reports the error when the node is done.
///
/// The protocol: link the entry, then `fetch_or(WAITERS)`, then give the entry the waker.
/// The `fetch_or` is ordered with the completing compare-exchange on the same word: if it
/// comes first, the completer sees WAITERS and drains our (already linked) entry, waking the
/// waker if we set it before, and otherwise we find the entry drained when we set it and
/// resolve; if it comes second, it returns the done state and we resolve at once. No wake-up
/// can be lost in between (see `crate::waiters`).
fn poll_node(node: &CancelNode, registration: &mut Registration, waker: &Waker) -> Poll<Error> {
    if let Some(err) = node.err() {
        return Poll::Ready(err);
    }
    let mut registered = registration.register(&node.waiters, waker);
    if registered == Registered::New {
        // Links a detached node first (its scope's completion must reach it), then sets
        // WAITERS with AcqRel; see above. Release makes the entry's insertion (the list
        // lock's release before it) visible to the completer that acquires this value.
        let old = node.add_waiters_flag();
        if let Some(err) = state::error_of(old) {
            return Poll::Ready(err);
        }
        // Live: now give the linked entry its waker.
        registered = registration.register(&node.waiters, waker);
    }
    match registered {
        Registered::Pending => Poll::Pending,
        // The completer drains only after the status is set.
        Registered::Woken => match node.err() {
            Some(err) => Poll::Ready(err),
            None => unreachable!("a waiter is drained only once its context is done"),
        },
        Registered::New => unreachable!("a registration links its entry once"),
    }
}

/// The state shared by [`Done`] and [`DoneOwned`]: the registration (one entry in the node's
/// waiter list, see `crate::waiters`) and whether the future resolved.
#[derive(Default)]
struct Waiter {
    registration: Registration,
    finished: bool,
}

impl Waiter {
    fn poll(&mut self, ctx: &Context, cx: &mut TaskContext<'_>) -> Poll<Error> {
        // Never done: nothing to register, nothing to allocate.
        let Some(node) = ctx.scope() else { return Poll::Pending };
        let result = poll_node(node, &mut self.registration, cx.waker());
        if result.is_ready() {
            // Nothing stays registered, and the task's waker is released.
            self.registration.release();
            self.finished = true;
        }
        result
    }
}

/// Polls `future` (`None` once finished) against the context being done, for [`Run`] and
/// `Timeout`: the context's error first, then the future, then `done` (which registers the
/// wake-up). The future is dropped as soon as either side ends.
pub(crate) fn poll_until_done<F: Future>(
    ctx: &Context,
    done: &mut (impl Future<Output = Error> + Unpin),
    mut future: Pin<&mut Option<F>>,
    cx: &mut TaskContext<'_>,
    name: &str,
) -> Poll<Result<F::Output, Error>> {
    if let Some(err) = ctx.err() {
        future.set(None);
        return Poll::Ready(Err(err));
    }
    let Some(inner) = future.as_mut().as_pin_mut() else {
        panic!("`{name}` polled after completion");
    };
    if let Poll::Ready(output) = inner.poll(cx) {
        future.set(None);
        return Poll::Ready(Ok(output));
    }
    match Pin::new(done).poll(cx) {
        Poll::Ready(err) => {
            future.set(None);
            Poll::Ready(Err(err))
        }
        Poll::Pending => Poll::Pending,
    }
}

/// Future returned by [`Context::done`]: resolves to the context's [`Error`] once it is done.
///
/// On a context that can never be done it stays pending forever, at no cost: nothing is
/// registered or allocated. Otherwise the first poll that finds the context live allocates
/// one entry in the context's waiter list (40 bytes on 64-bit targets), kept until the
/// future is dropped; a later poll with a different task waker only swaps the waker. Task
/// wakers run outside the list's lock, so a panicking or re-entrant task waker does not
/// disturb the other waiters (see [`CancelGuard::cancel`](crate::CancelGuard::cancel)).
/// Dropping the future unregisters it.
///
/// ```
/// use cancelctx::{Context, Error};
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// std::thread::spawn(move || guard.cancel());
/// assert_eq!(futures::executor::block_on(ctx.done()), Error::Canceled);
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Done<'a> {
    ctx: &'a Context,
    waiter: Waiter,
}

impl Future for Done<'_> {
    type Output = Error;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Error> {
        let this = &mut *self;
        this.waiter.poll(this.ctx, cx)
    }
}

impl FusedFuture for Done<'_> {
    fn is_terminated(&self) -> bool {
        self.waiter.finished
    }
}

impl fmt::Debug for Done<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done").field("err", &self.ctx.err()).finish_non_exhaustive()
    }
}

/// The `'static` form of [`Done`], returned by [`Context::done_owned`]: it holds a clone of
/// the context, so it can be stored in structs or moved into spawned tasks.
///
/// ```
/// use cancelctx::{Context, Error};
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// let done = ctx.done_owned();
/// let task = std::thread::spawn(move || futures::executor::block_on(done));
/// guard.cancel();
/// assert_eq!(task.join().unwrap(), Error::Canceled);
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct DoneOwned {
    // Before `ctx`: the registration must leave the node's list before the context (which
    // may be the last handle keeping the node alive) is dropped.
    waiter: Waiter,
    ctx: Context,
}

impl Future for DoneOwned {
    type Output = Error;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Error> {
        let this = &mut *self;
        this.waiter.poll(&this.ctx, cx)
    }
}

impl FusedFuture for DoneOwned {
    fn is_terminated(&self) -> bool {
        self.waiter.finished
    }
}

impl fmt::Debug for DoneOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneOwned").field("err", &self.ctx.err()).finish_non_exhaustive()
    }
}

/// Future returned by [`Context::cancelled`]: resolves to `()` once the context is done.
///
/// The same as [`Done`] without the error, for APIs that want a `Future<Output = ()>`
/// (graceful-shutdown signals in hyper and axum, `tokio-util`'s `cancelled()` shape). Read
/// [`Context::err`] afterwards if the reason matters.
///
/// ```
/// use cancelctx::Context;
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// std::thread::spawn(move || guard.cancel());
/// let (): () = futures::executor::block_on(ctx.cancelled());
/// assert!(ctx.is_done());
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Cancelled<'a> {
    done: Done<'a>,
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        Pin::new(&mut self.done).poll(cx).map(drop)
    }
}

impl FusedFuture for Cancelled<'_> {
    fn is_terminated(&self) -> bool {
        self.done.is_terminated()
    }
}

impl fmt::Debug for Cancelled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled").field("err", &self.done.ctx.err()).finish_non_exhaustive()
    }
}

/// The `'static` form of [`Cancelled`], returned by [`Context::cancelled_owned`]: it holds a
/// clone of the context, so it can be handed to an API that keeps it (a server's shutdown
/// signal) or moved into a spawned task.
///
/// ```
/// use cancelctx::{CancelledOwned, Context};
/// fn serve_until(shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
///     futures::executor::block_on(shutdown); // a server would run until this resolves
/// }
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// let signal: CancelledOwned = ctx.cancelled_owned();
/// guard.cancel();
/// serve_until(signal);
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct CancelledOwned {
    done: DoneOwned,
}

impl Future for CancelledOwned {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        Pin::new(&mut self.done).poll(cx).map(drop)
    }
}

impl FusedFuture for CancelledOwned {
    fn is_terminated(&self) -> bool {
        self.done.is_terminated()
    }
}

impl fmt::Debug for CancelledOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelledOwned").field("err", &self.done.ctx.err()).finish_non_exhaustive()
    }
}

/// Future returned by [`Context::run`]: the inner future's output, or the context's error as
/// soon as the context is done (the inner future is dropped then).
///
/// If the context is done when polled, `Err` wins even if the inner future would be ready.
///
/// ```
/// use cancelctx::{Context, Error};
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// assert_eq!(futures::executor::block_on(ctx.run(async { 5 })), Ok(5));
/// guard.cancel();
/// assert_eq!(futures::executor::block_on(ctx.run(async { 5 })), Err(Error::Canceled));
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Run<'a, F> {
    done: Done<'a>,
    future: Option<F>,
}

impl<F: Future> Future for Run<'_, F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self`, and it is
        // only dropped in place through `Pin::set`. `done` is `Unpin` and not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        poll_until_done(this.done.ctx, &mut this.done, future, cx, "Run")
    }
}

impl<F: Future> FusedFuture for Run<'_, F> {
    fn is_terminated(&self) -> bool {
        self.future.is_none()
    }
}

impl<F> fmt::Debug for Run<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("err", &self.done.ctx.err())
            .field("finished", &self.future.is_none())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A future that resolves to the context's [`Error`] once it is done; usable in any
    /// executor and in `select!` (it is a `FusedFuture`).
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// drop(guard);
    /// assert_eq!(pollster::block_on(ctx.done()), Error::Canceled);
    /// ```
    pub fn done(&self) -> Done<'_> {
        Done { ctx: self, waiter: Waiter::default() }
    }

    /// The `'static` form of [`done`](Context::done); see [`DoneOwned`].
    ///
    /// ```
    /// let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// let done: cancelctx::DoneOwned = ctx.done_owned();
    /// guard.cancel();
    /// assert!(pollster::block_on(done) == cancelctx::Error::Canceled);
    /// ```
    pub fn done_owned(&self) -> DoneOwned {
        DoneOwned { waiter: Waiter::default(), ctx: self.clone() }
    }

    /// A future that resolves to `()` once the context is done; see [`Cancelled`]. Use it
    /// where an API wants a `Future<Output = ()>`; use [`done`](Context::done) to get the
    /// error.
    ///
    /// ```
    /// let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// drop(guard);
    /// pollster::block_on(ctx.cancelled());
    /// ```
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled { done: self.done() }
    }

    /// The `'static` form of [`cancelled`](Context::cancelled); see [`CancelledOwned`].
    ///
    /// ```
    /// let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// let shutdown = ctx.cancelled_owned();
    /// guard.cancel();
    /// pollster::block_on(shutdown);
    /// ```
    pub fn cancelled_owned(&self) -> CancelledOwned {
        CancelledOwned { done: self.done_owned() }
    }

    /// Runs `future` until it completes or the context is done, whichever is first; see
    /// [`Run`].
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// guard.cancel();
    /// let never = std::future::pending::<()>();
    /// assert_eq!(pollster::block_on(ctx.run(never)), Err(Error::Canceled));
    /// ```
    pub fn run<F: Future>(&self, future: F) -> Run<'_, F> {
        Run { done: self.done(), future: Some(future) }
    }
}

#[cfg(feature = "std")]
mod blocking {
    use core::time::Duration;

    use super::*;

    impl Context {
        /// Blocks the thread until the context is done and returns its error.
        ///
        /// On a context that can never be done this blocks forever, like receiving from Go's
        /// `Background().Done()`.
        ///
        /// The thread waits in [`std::thread::park`]; the completing thread unparks it. Unparks
        /// meant for something else do not end the wait, and the unpark of a wait may reach a
        /// later `park` of the same thread (a spurious wake-up, which `park`'s contract allows).
        ///
        /// ```
        /// use cancelctx::{Context, Error};
        /// let (ctx, guard) = Context::unclocked().with_cancel();
        /// let worker = std::thread::spawn(move || ctx.wait());
        /// guard.cancel();
        /// assert_eq!(worker.join().unwrap(), Error::Canceled);
        /// ```
        pub fn wait(&self) -> Error {
            match self.wait_until(None) {
                Some(err) => err,
                None => unreachable!("an unbounded wait returns only when done"),
            }
        }

        /// Blocks until the context is done or `timeout` of wall-clock time has passed;
        /// returns the error, or `None` on timeout. `Duration::ZERO` only checks; a timeout
        /// too large to represent waits without limit.
        ///
        /// The timeout is real time on this thread, not the tree's clock.
        ///
        /// ```
        /// use core::time::Duration;
        /// let (ctx, _guard) = cancelctx::Context::unclocked().with_cancel();
        /// assert_eq!(ctx.wait_timeout(Duration::from_millis(1)), None);
        /// ```
        pub fn wait_timeout(&self, timeout: Duration) -> Option<Error> {
            if timeout.is_zero() {
                return self.err();
            }
            self.wait_until(std::time::Instant::now().checked_add(timeout))
        }

        fn wait_until(&self, deadline: Option<std::time::Instant>) -> Option<Error> {
            let Some(node) = self.scope() else {
                // Never done: sleep out the timeout (or forever).
                loop {
                    match deadline {
                        None => std::thread::park(),
                        Some(deadline) => {
                            let now = std::time::Instant::now();
                            if now >= deadline {
                                return None;
                            }
                            std::thread::park_timeout(deadline - now);
                        }
                    }
                }
            };
            // The thread parks; the completer unparks it after releasing the list's lock.
            let waker = crate::relay::thread_waker();
            let mut registration = Registration::default();
            loop {
                if let Poll::Ready(err) = poll_node(node, &mut registration, &waker) {
                    return Some(err);
                }
                // `park` also returns spuriously and for unparks meant for something else
                // (or for an earlier wait of this thread): the next poll tells.
                match deadline {
                    None => crate::sync::thread::park(),
                    Some(deadline) => {
                        let now = std::time::Instant::now();
                        if now >= deadline {
                            return node.err();
                        }
                        crate::sync::thread::park_timeout(deadline - now);
                    }
                }
            }
        }
    }
}
