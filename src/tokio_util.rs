//! Bridges with `tokio_util::sync::CancellationToken`, both ways, so code can migrate one
//! function at a time (feature `tokio-util`).
//!
//! - [`Context::with_token`]: a child context that also ends when a token is cancelled.
//! - [`Context::cancellation_token`]: a token that is cancelled when a context ends.
//!
//! Neither spawns a task or a thread, and neither leaks: each link lives exactly as long as
//! the value that owns it.
//!
//! - Token → context: the child polls the token's `cancelled_owned()` future once, with a
//!   waker of its own. Cancelling the token wakes that waker, which completes the child on
//!   the cancelling thread (so the token's `cancel()` returns after the child is done, as
//!   for the token's own children). Dropping the child drops the future, which removes the
//!   waker from the token.
//! - Context → token: an [`after_func`](Context::after_func) registration cancels the
//!   token; the returned [`BoundToken`] stops it when dropped.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::task::Wake;
use core::fmt;
use core::future::Future;
use core::ops::Deref;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context as TaskContext, Waker};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use ::tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::after_func::AfterFunc;
use crate::context::{CancelGuard, Context};
use crate::error::{Cause, Error};

/// The [`cause`](Context::cause) of a context made by [`Context::with_token`] when the token
/// ended it (tokens carry no cause of their own).
///
/// ```
/// use cancelctx::{Context, TokenCancelled};
/// use tokio_util::sync::CancellationToken;
///
/// let token = CancellationToken::new();
/// let (ctx, _guard) = Context::unclocked().with_token(&token);
/// token.cancel();
/// assert!(ctx.cause().unwrap().is::<TokenCancelled>());
/// assert_eq!(TokenCancelled.to_string(), "the cancellation token was cancelled");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenCancelled;

impl fmt::Display for TokenCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the cancellation token was cancelled")
    }
}

impl core::error::Error for TokenCancelled {}

/// The waker registered with the token: it completes `child` once the token is cancelled.
struct TokenWaker {
    child: Context,
    /// `None` once the token was seen cancelled or the link was dropped.
    wait: Mutex<Option<Pin<Box<WaitForCancellationFutureOwned>>>>,
    /// A wake arrived while another thread (or our own poll) held `wait`.
    again: AtomicBool,
}

impl TokenWaker {
    fn lock(&self) -> MutexGuard<'_, Option<Pin<Box<WaitForCancellationFutureOwned>>>> {
        // Nothing here panics while holding the lock, but a poisoned lock still holds a
        // consistent `Option`.
        self.wait.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Polls the token's future (registering `self` as its waker); completes the child if
    /// the token is cancelled.
    ///
    /// Wakes may come from any thread at any time, including from inside our own poll of
    /// the future (a re-entrant wake): a wake that finds the lock taken never blocks on it.
    /// It sets `again` and tries the lock once more; the holder checks `again` after
    /// unlocking. Either that holder sees the flag, or the retry finds the lock free, so no
    /// wake is lost (all accesses to `again` are `SeqCst`: one total order decides it).
    fn poll(self: &Arc<Self>) {
        let mut wait = match self.wait.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.again.store(true, Ordering::SeqCst);
                match self.wait.try_lock() {
                    Ok(guard) => guard,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => return, // the holder re-polls
                }
            }
        };
        loop {
            self.again.store(false, Ordering::SeqCst);
            let Some(future) = wait.as_mut() else { return };
            let waker = Waker::from(self.clone());
            if future.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_ready() {
                break;
            }
            drop(wait);
            if !self.again.load(Ordering::SeqCst) {
                return; // registered again; no wake came in meanwhile
            }
            wait = match self.wait.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return, // its holder sees `again`
            };
        }
        // Drop the future (and the waker clone it holds) outside our lock.
        let future = wait.take();
        drop(wait);
        drop(future);
        if let Some(node) = self.child.scope() {
            let cause: Cause = Arc::new(TokenCancelled);
            // We run inside tokio-util's `cancel()`, which may hold a parent token's lock: a
            // panic of one of the child's `after_func` callbacks must not unwind through it
            // (that would poison the whole token tree). The completion itself has finished
            // when the panic is resumed, so dropping the panic loses nothing else.
            let complete = || node.complete(Error::Canceled, Some(cause));
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(complete));
        }
    }
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.poll();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.poll();
    }
}

/// Owned by the child's hidden value node: dropping the child drops the token's future,
/// which unregisters the waker (and breaks the waker → future → waker cycle).
struct TokenLink(Arc<TokenWaker>);

impl Drop for TokenLink {
    fn drop(&mut self) {
        let future = self.0.lock().take();
        drop(future);
    }
}

impl fmt::Debug for TokenLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLink").finish_non_exhaustive()
    }
}

/// A [`CancellationToken`] that is cancelled when a context ends, for as long as this value
/// lives; made by [`Context::cancellation_token`]. It dereferences to the token.
///
/// Dropping it unbinds the token from the context (and does not cancel the token), so a
/// long-lived context with millions of short-lived bound tokens keeps constant memory.
/// Clones of the token taken with `.clone()` are the same token: they are cancelled when
/// the context ends only while this value lives. [`into_token`](BoundToken::into_token)
/// keeps the binding until the context ends instead.
///
/// ```
/// use cancelctx::Context;
///
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// let token = ctx.cancellation_token();
/// assert!(!token.is_cancelled());
/// drop(guard);
/// assert!(token.is_cancelled());
/// ```
#[must_use = "dropping the BoundToken unbinds the token from the context at once"]
pub struct BoundToken {
    token: CancellationToken,
    /// `None` when the context was already done or can never be done.
    registration: Option<AfterFunc>,
}

impl BoundToken {
    /// The token.
    ///
    /// ```
    /// let bound = cancelctx::Context::unclocked().cancellation_token();
    /// let token: &tokio_util::sync::CancellationToken = bound.token();
    /// assert!(!token.is_cancelled());
    /// ```
    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The token, bound until the context ends: its registration on the context then stays
    /// until the context is done (about a hundred bytes per call on a context that lives
    /// long), like an `after_func` whose handle is dropped.
    ///
    /// ```
    /// let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// let token = ctx.cancellation_token().into_token();
    /// guard.cancel();
    /// assert!(token.is_cancelled());
    /// ```
    #[must_use]
    pub fn into_token(mut self) -> CancellationToken {
        // Dropping the handle (rather than stopping it) leaves the function registered.
        drop(self.registration.take());
        self.token.clone()
    }
}

impl Deref for BoundToken {
    type Target = CancellationToken;

    fn deref(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for BoundToken {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.stop();
        }
    }
}

impl fmt::Debug for BoundToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundToken").field("token", &self.token).finish()
    }
}

impl Context {
    /// A child of this context that also ends when `token` is cancelled, with
    /// [`Error::Canceled`] and cause [`TokenCancelled`]; born done if either is already
    /// done. Everything else is as for [`with_cancel`](Context::with_cancel).
    ///
    /// No task is spawned: the token wakes a waker of the child's, which completes the
    /// child on the thread that cancels the token, before that `cancel()` returns.
    /// Dropping the last handle to the child unregisters it from the token.
    ///
    /// Because the child is completed inside the token's `cancel()`, and tokio-util holds
    /// the lock of a cancelled token's *parent* while it wakes a child token's waiters,
    /// `after_func` callbacks of this child must not call into the token's ancestors (for
    /// example `parent.is_cancelled()`): that would deadlock. Waking tasks is always fine.
    /// For the same reason a panic of such a callback is contained and dropped there
    /// (unwinding through tokio-util would poison its locks), unlike elsewhere in this crate
    /// where it resumes on the cancelling thread.
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// // Code still on tokio-util hands us a token; new code takes a Context.
    /// let shutdown = CancellationToken::new();
    /// let (ctx, _guard) = Context::background().with_token(&shutdown);
    /// shutdown.cancel();
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// ```
    #[must_use = "dropping the CancelGuard cancels the context at once"]
    pub fn with_token(&self, token: &CancellationToken) -> (Context, CancelGuard) {
        let (child, guard) = self.with_cancel();
        if child.is_done() {
            return (child, guard);
        }
        let waker = Arc::new(TokenWaker {
            child: child.clone(),
            wait: Mutex::new(Some(Box::pin(token.clone().cancelled_owned()))),
            again: AtomicBool::new(false),
        });
        waker.poll();
        if child.is_done() {
            // Cancelled already (or by a racing cancel): the future is gone or will be.
            drop(TokenLink(waker));
            return (child, guard);
        }
        (child.with_value(TokenLink(waker)), guard)
    }

    /// A [`CancellationToken`] that is cancelled when this context ends, bound for as long as
    /// the returned [`BoundToken`] lives (see there). Already cancelled if the context is
    /// done; never cancelled by a context that can never be done.
    ///
    /// The token is cancelled inside the context's completion: on the cancelling thread (or
    /// the clock's timer thread for a deadline), before that cancel returns.
    ///
    /// ```
    /// use cancelctx::Context;
    ///
    /// // New code has a Context; a library still takes a token.
    /// async fn library_call(token: tokio_util::sync::CancellationToken) -> bool {
    ///     token.cancelled().await;
    ///     true
    /// }
    ///
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// let token = ctx.cancellation_token();
    /// let call = library_call(token.clone());
    /// drop(guard);
    /// assert!(futures::executor::block_on(call));
    /// ```
    pub fn cancellation_token(&self) -> BoundToken {
        let token = CancellationToken::new();
        if self.is_done() {
            token.cancel();
            return BoundToken { token, registration: None };
        }
        if self.scope().is_none() {
            return BoundToken { token, registration: None };
        }
        let target = token.clone();
        let registration = self.after_func(move || target.cancel());
        BoundToken { token, registration: Some(registration) }
    }
}
