//! Why a context is done: [`Error`], the richer [`Cause`], and [`NoClockError`].

use alloc::sync::Arc;
use core::fmt;

/// Why a context is done: the value of [`Context::err`](crate::Context::err).
///
/// The `Display` texts are exactly Go's, so logs read the same across services.
///
/// # Examples
///
/// ```
/// use cancelctx::{Context, Error};
///
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// assert_eq!(ctx.err(), None);
/// guard.cancel();
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// assert_eq!(Error::Canceled.to_string(), "context canceled");
/// assert_eq!(Error::DeadlineExceeded.to_string(), "context deadline exceeded");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The context was cancelled: its [`CancelGuard`](crate::CancelGuard) (or an
    /// ancestor's) was cancelled or dropped.
    Canceled,
    /// The context's deadline (or an ancestor's) passed.
    DeadlineExceeded,
}

impl Error {
    /// Returns `true` for [`Error::DeadlineExceeded`], the error Go reports as a timeout.
    ///
    /// ```
    /// use cancelctx::Error;
    /// assert!(Error::DeadlineExceeded.is_timeout());
    /// assert!(!Error::Canceled.is_timeout());
    /// ```
    #[must_use]
    pub fn is_timeout(self) -> bool {
        matches!(self, Error::DeadlineExceeded)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Canceled => "context canceled",
            Error::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl core::error::Error for Error {}

/// The detailed reason a context is done: the value of [`Context::cause`](crate::Context::cause).
///
/// An explicit cause (from [`CancelGuard::cancel_with`](crate::CancelGuard::cancel_with) or
/// [`Context::with_deadline_cause`](crate::Context::with_deadline_cause)) is stored as given, so
/// `downcast_ref` finds the caller's own type. Without one, the cause is the [`Error`] itself.
///
/// ```
/// use cancelctx::{Context, Error};
///
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// drop(guard);
/// let cause = ctx.cause().unwrap();
/// assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
/// ```
pub type Cause = Arc<dyn core::error::Error + Send + Sync + 'static>;

/// Returned by the fallible deadline constructors when the context tree has no clock.
///
/// Trees rooted at [`Context::unclocked`](crate::Context::unclocked) have no way to read the
/// time, so they cannot have deadlines. Root the tree with
/// [`Context::with_clock`](crate::Context::with_clock) instead.
///
/// ```
/// use cancelctx::{Context, NoClockError};
/// use core::time::Duration;
///
/// let root = Context::unclocked();
/// assert_eq!(root.try_with_timeout(Duration::from_secs(1)).unwrap_err(), NoClockError);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoClockError;

impl fmt::Display for NoClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "this context tree has no clock: root it with Context::with_clock to use deadlines",
        )
    }
}

impl core::error::Error for NoClockError {}
