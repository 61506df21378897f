//! Futures-core adapters: [`Context::take_until_done`] for streams, and
//! [`Context::timeout`] / [`Context::timeout_at`] to run a future under a deadline.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{ready, Context as TaskContext, Poll};
use core::time::Duration;

use futures_core::future::FusedFuture;
use futures_core::stream::{FusedStream, Stream};

use crate::context::{CancelGuard, Context};
use crate::error::{Error, NoClockError};
use crate::time::Instant;
use crate::wait::{poll_until_done, DoneOwned};

/// Stream returned by [`Context::take_until_done`]: the inner stream's items until the
/// context is done, then `None` forever.
///
/// The inner stream is dropped as soon as the end is seen (the context done, or the inner
/// stream ended), so the resources it holds are released then, not when this adapter is
/// dropped. If the context is done when polled, the stream ends even if an item is ready.
///
/// ```
/// use cancelctx::Context;
/// use futures::stream::{self, StreamExt};
///
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// let mut items = ctx.take_until_done(stream::iter(1..));
/// futures::executor::block_on(async {
///     assert_eq!(items.next().await, Some(1));
///     assert_eq!(items.next().await, Some(2));
///     guard.cancel();
///     assert_eq!(items.next().await, None);
/// });
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct TakeUntilDone<S> {
    ctx: Context,
    done: DoneOwned,
    stream: Option<S>,
}

impl<S: Stream> Stream for TakeUntilDone<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<S::Item>> {
        // SAFETY: `stream` is structurally pinned: it is never moved out of `self` and is
        // only dropped in place through `Pin::set`. `done` is `Unpin` and not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let mut stream = unsafe { Pin::new_unchecked(&mut this.stream) };
        let Some(inner) = stream.as_mut().as_pin_mut() else { return Poll::Ready(None) };
        // The context first: once it is done, no further item is taken.
        if Pin::new(&mut this.done).poll(cx).is_ready() {
            stream.set(None);
            return Poll::Ready(None);
        }
        match inner.poll_next(cx) {
            Poll::Ready(None) => {
                stream.set(None);
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.stream {
            // The context may end it at any time: no lower bound.
            Some(stream) => (0, stream.size_hint().1),
            None => (0, Some(0)),
        }
    }
}

impl<S: Stream> FusedStream for TakeUntilDone<S> {
    fn is_terminated(&self) -> bool {
        self.stream.is_none()
    }
}

impl<S> TakeUntilDone<S> {
    /// The context this stream is bound to.
    ///
    /// ```
    /// let ctx = cancelctx::Context::unclocked();
    /// let s = ctx.take_until_done(futures::stream::empty::<()>());
    /// assert_eq!(s.context(), &ctx);
    /// ```
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

impl<S> fmt::Debug for TakeUntilDone<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TakeUntilDone")
            .field("err", &self.context().err())
            .field("terminated", &self.stream.is_none())
            .finish_non_exhaustive()
    }
}

/// Future returned by [`Context::timeout`] and [`Context::timeout_at`]: the inner future's
/// output, or the error of the deadline's context — [`Error::DeadlineExceeded`] when the time
/// runs out first, [`Error::Canceled`] if the parent context is cancelled first.
///
/// The deadline is a child context made when the future is created (not when it is first
/// polled), so the time limit counts from the call, as with `tokio::time::timeout`. The
/// tree's clock drives it, so this works on every runtime (and with a
/// [`ManualClock`](crate::ManualClock) in tests). Finishing or dropping the future cancels
/// that child and releases its timer at once. As with [`Context::run`], the inner future is dropped when
/// the context ends, and a context found done wins over a ready inner future.
///
/// ```
/// use cancelctx::{Context, Error, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let root = Context::with_clock(clock.clone());
/// let mut slow = Box::pin(root.timeout(Duration::from_secs(1), std::future::pending::<()>()));
/// assert!(futures::FutureExt::now_or_never(&mut slow).is_none());
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(futures::executor::block_on(slow), Err(Error::DeadlineExceeded));
///
/// let fast = root.timeout(Duration::from_secs(1), async { 7 });
/// assert_eq!(futures::executor::block_on(fast), Ok(7));
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Timeout<F> {
    ctx: Context,
    done: DoneOwned,
    future: Option<F>,
    /// Taken when the future finishes, and dropped with it: either ends the deadline's
    /// context and releases its timer at once.
    guard: Option<CancelGuard>,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self` and is
        // only dropped in place through `Pin::set`. `done` and `guard` are not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        let result = ready!(poll_until_done(&this.ctx, &mut this.done, future, cx, "Timeout"));
        // Finished: end the deadline's context and release its timer now, not when this
        // future is dropped (it may stay around, fused, in a `select!` loop).
        drop(this.guard.take());
        Poll::Ready(result)
    }
}

impl<F: Future> FusedFuture for Timeout<F> {
    fn is_terminated(&self) -> bool {
        self.future.is_none()
    }
}

impl<F> Timeout<F> {
    /// The deadline's context (a child of the context `timeout` was called on), for
    /// inspecting [`deadline`](Context::deadline) or [`remaining`](Context::remaining). It is
    /// done once the future has finished.
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// use std::time::Duration;
    /// let root = Context::with_clock(ManualClock::new());
    /// let t = root.timeout(Duration::from_secs(3), async {});
    /// assert_eq!(t.context().remaining(), Some(Duration::from_secs(3)));
    /// ```
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("err", &self.context().err())
            .field("deadline", &self.context().deadline())
            .field("finished", &self.future.is_none())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A stream of `stream`'s items that ends (yields `None`) once this context is done;
    /// see [`TakeUntilDone`]. The adapter holds a clone of the context, so it is `'static`
    /// when `stream` is.
    ///
    /// ```
    /// use cancelctx::Context;
    /// use futures::stream::{self, StreamExt};
    ///
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// guard.cancel();
    /// let items: Vec<u32> = futures::executor::block_on(
    ///     ctx.take_until_done(stream::iter([1, 2, 3])).collect(),
    /// );
    /// assert!(items.is_empty());
    /// ```
    pub fn take_until_done<S: Stream>(&self, stream: S) -> TakeUntilDone<S> {
        TakeUntilDone { ctx: self.clone(), done: self.done_owned(), stream: Some(stream) }
    }

    /// Runs `future` with a time limit of `timeout` from now on the tree's clock; see
    /// [`Timeout`]. Also ends, with this context's error, if this context ends first.
    ///
    /// # Panics
    ///
    /// If the tree has no clock; see [`try_timeout`](Context::try_timeout).
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// use std::time::Duration;
    /// let ctx = Context::background();
    /// let out = futures::executor::block_on(ctx.timeout(Duration::from_secs(5), async { 1 }));
    /// assert_eq!(out, Ok(1));
    /// ```
    #[track_caller]
    pub fn timeout<F: Future>(&self, timeout: Duration, future: F) -> Timeout<F> {
        let (ctx, guard) = self.with_timeout(timeout);
        Timeout { done: ctx.done_owned(), ctx, future: Some(future), guard: Some(guard) }
    }

    /// Runs `future` until `deadline` on the tree's clock; see [`Timeout`].
    ///
    /// # Panics
    ///
    /// If the tree has no clock; see [`try_timeout_at`](Context::try_timeout_at).
    ///
    /// ```
    /// use cancelctx::{Context, Error, Instant, ManualClock};
    /// let clock = ManualClock::new();
    /// let root = Context::with_clock(clock.clone());
    /// clock.set(Instant::from_nanos(100));
    /// // A deadline in the past: the inner future is never polled.
    /// let late = root.timeout_at(Instant::from_nanos(50), async { unreachable!() });
    /// assert_eq!(futures::executor::block_on(late), Err(Error::DeadlineExceeded));
    /// ```
    #[track_caller]
    pub fn timeout_at<F: Future>(&self, deadline: Instant, future: F) -> Timeout<F> {
        let (ctx, guard) = self.with_deadline(deadline);
        Timeout { done: ctx.done_owned(), ctx, future: Some(future), guard: Some(guard) }
    }

    /// [`timeout`](Context::timeout), or [`NoClockError`] if the tree has no clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = cancelctx::Context::unclocked();
    /// assert!(ctx.try_timeout(Duration::from_secs(1), async {}).is_err());
    /// ```
    pub fn try_timeout<F: Future>(
        &self,
        timeout: Duration,
        future: F,
    ) -> Result<Timeout<F>, NoClockError> {
        let (ctx, guard) = self.try_with_timeout(timeout)?;
        Ok(Timeout { done: ctx.done_owned(), ctx, future: Some(future), guard: Some(guard) })
    }

    /// [`timeout_at`](Context::timeout_at), or [`NoClockError`] if the tree has no clock.
    ///
    /// ```
    /// use cancelctx::{Context, Instant};
    /// let ctx = cancelctx::Context::unclocked();
    /// assert!(ctx.try_timeout_at(Instant::MAX, async {}).is_err());
    /// ```
    pub fn try_timeout_at<F: Future>(
        &self,
        deadline: Instant,
        future: F,
    ) -> Result<Timeout<F>, NoClockError> {
        let (ctx, guard) = self.try_with_deadline(deadline)?;
        Ok(Timeout { done: ctx.done_owned(), ctx, future: Some(future), guard: Some(guard) })
    }
}
