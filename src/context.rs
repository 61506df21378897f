//! [`Context`], the handle users pass around, and [`CancelGuard`], the right to cancel it.

use alloc::boxed::Box;
use core::any::Any;
use core::fmt;
use core::time::Duration;

use crate::error::{Cause, Error, NoClockError};
use crate::node::{release_step, CancelNode, Meta, NodePtr, NodeRef};
use crate::sync::{arc_into_inner, Arc};
use crate::time::{Clock, ClockRef, Instant};
use crate::timer::TimerWaker;

/// A cancellation scope with an optional deadline and request-scoped values: Go's
/// `context.Context`, for any Rust runtime.
///
/// A `Context` is a cheap handle (cloning it is one atomic increment) to one node of a tree.
/// Each derived context — [`with_cancel`](Context::with_cancel),
/// [`with_deadline`](Context::with_deadline), [`with_timeout`](Context::with_timeout),
/// [`with_value`](Context::with_value), [`without_cancel`](Context::without_cancel) — is a
/// child: it is done when its parent is done (with the parent's error and cause), and never
/// the other way round. Once done, a context stays done with the same [`Error`] and
/// [`Cause`].
///
/// Clones are the same context: cancelling one (through its [`CancelGuard`]) is seen by all.
/// When the last handle to a context is dropped, it is unlinked from its parent, cancelled
/// or not, so nothing accumulates under a long-lived parent.
///
/// # Unwind safety
///
/// `Context`, [`CancelGuard`] and [`AfterFunc`](crate::AfterFunc) are `UnwindSafe` and
/// `RefUnwindSafe`, so `catch_unwind(|| work(&ctx))` compiles: a context is safe to observe
/// after a panic. Its state only changes through single atomic transitions (live to done,
/// once), its locks never run user code while held (and ignore poisoning), and a completion
/// interrupted by a panicking callback, waker or clock still finishes marking, waking and
/// running callbacks before the panic goes on. Values are shared immutably (`Sync`); a value
/// with its own interior mutability keeps its own unwind-safety story.
///
/// # Examples
///
/// ```
/// use cancelctx::{Context, Error};
///
/// let root = Context::unclocked();
/// let (request, cancel) = root.with_cancel();
/// let (step, _step_guard) = request.with_cancel();
///
/// assert!(!step.is_done());
/// cancel.cancel();
/// assert_eq!(step.err(), Some(Error::Canceled));
/// assert!(!root.is_done());
/// ```
#[derive(Clone)]
pub struct Context {
    pub(crate) repr: Repr,
}

#[derive(Clone)]
pub(crate) enum Repr {
    /// A process-wide root (`background()`, `unclocked()`): no allocation at all.
    Static(&'static Root),
    /// A root made with `with_clock`.
    Root(Arc<Root>),
    /// A cancellable node (`with_cancel`, `with_deadline`, ...).
    Cancel(NodeRef),
    /// A value node, or a `without_cancel` node.
    Value(Arc<ValueNode>),
}

// Unwind safety: see the type docs. Nothing a panic can interrupt leaves a context in a state
// that another observer could misread (the state word moves once, atomically; the completion
// walk finishes its bookkeeping before resuming a user panic; locks never hold user code).
impl core::panic::UnwindSafe for Context {}
impl core::panic::RefUnwindSafe for Context {}
impl core::panic::UnwindSafe for CancelGuard {}
impl core::panic::RefUnwindSafe for CancelGuard {}

pub(crate) struct Root {
    clock: Option<ClockRef>,
}

static UNCLOCKED: Root = Root { clock: None };
#[cfg(feature = "std")]
static BACKGROUND: Root = Root { clock: Some(ClockRef::Std) };

pub(crate) struct ValueNode {
    parent: Context,
    /// The nearest cancellable ancestor; `None` below `without_cancel` or a root. It is kept
    /// alive by `parent`, so a raw pointer suffices.
    scope: Option<NodePtr>,
    /// `true` for `without_cancel`: deadlines stop here.
    detached: bool,
    value: Option<Box<dyn Any + Send + Sync>>,
}

impl Drop for ValueNode {
    fn drop(&mut self) {
        // Release the parent chain in a loop rather than by recursive drops.
        let parent = core::mem::replace(&mut self.parent, Context::placeholder());
        release_chain(parent);
    }
}

/// Drops a context handle and, for each ancestor whose last handle that was, the ancestor,
/// iteratively: a million-deep chain is freed on a small stack.
pub(crate) fn release_chain(mut ctx: Context) {
    loop {
        let repr = core::mem::replace(&mut ctx.repr, Repr::Static(&UNCLOCKED));
        ctx = match repr {
            Repr::Static(_) | Repr::Root(_) => return,
            Repr::Cancel(node) => match release_step(node) {
                Some(parent) => parent,
                None => return,
            },
            Repr::Value(node) => match arc_into_inner(node) {
                Some(mut node) => core::mem::replace(&mut node.parent, Context::placeholder()),
                None => return,
            },
        };
    }
}

impl Context {
    const fn placeholder() -> Context {
        Context { repr: Repr::Static(&UNCLOCKED) }
    }

    /// The root of all contexts on the std clock: never done, no deadline, no values. It
    /// allocates nothing.
    ///
    /// ```
    /// let bg = cancelctx::Context::background();
    /// assert!(!bg.is_done() && bg.deadline().is_none());
    /// ```
    #[cfg(feature = "std")]
    #[must_use]
    pub fn background() -> Context {
        Context { repr: Repr::Static(&BACKGROUND) }
    }

    /// A root that reads time from `clock`: never done, no deadline, no values. Deadlines
    /// anywhere below it are scheduled on `clock`.
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// let clock = ManualClock::new();
    /// let root = Context::with_clock(clock.clone());
    /// assert_eq!(root.now(), Some(clock.now()));
    /// ```
    #[must_use]
    pub fn with_clock(clock: impl Clock) -> Context {
        let clock: alloc::sync::Arc<dyn Clock> = alloc::sync::Arc::new(clock);
        Context { repr: Repr::Root(Arc::new(Root { clock: Some(ClockRef::Custom(clock)) })) }
    }

    /// A root with no clock: never done, no deadline, no values, and no deadlines below it
    /// ([`with_timeout`](Context::with_timeout) panics, [`try_with_timeout`](Context::try_with_timeout)
    /// returns [`NoClockError`]). For `no_std` code that only cancels. It allocates nothing.
    ///
    /// ```
    /// let root = cancelctx::Context::unclocked();
    /// assert_eq!(root.now(), None);
    /// ```
    #[must_use]
    pub fn unclocked() -> Context {
        Context { repr: Repr::Static(&UNCLOCKED) }
    }

    /// The nearest cancellable node at or above this context, if any.
    #[inline]
    pub(crate) fn scope(&self) -> Option<&CancelNode> {
        match &self.repr {
            Repr::Cancel(node) => Some(node),
            // SAFETY: `node.parent` holds the chain that keeps the scope alive, and `node`
            // lives as long as `&self`.
            Repr::Value(node) => node.scope.map(|ptr| unsafe { ptr.get() }),
            Repr::Static(_) | Repr::Root(_) => None,
        }
    }

    fn scope_ptr(&self) -> Option<NodePtr> {
        match &self.repr {
            Repr::Cancel(node) => Some(node.ptr()),
            Repr::Value(node) => node.scope,
            Repr::Static(_) | Repr::Root(_) => None,
        }
    }

    /// A cancellable child. It is done when the returned [`CancelGuard`] is cancelled or
    /// dropped, or when this context is done, whichever comes first.
    ///
    /// If this context is already done, the child is born done with the same error and cause.
    ///
    /// **Keep the guard**: bind it to a name (`let (ctx, guard) = ...` or `_guard`), never to
    /// `_`, which drops it at once and returns an already cancelled context (see
    /// [Pitfalls](crate#pitfalls)).
    ///
    /// ```
    /// use cancelctx::Context;
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// assert!(!ctx.is_done());
    /// drop(guard); // like Go's `defer cancel()`
    /// assert!(ctx.is_done());
    /// ```
    #[must_use = "dropping the CancelGuard cancels the context at once"]
    pub fn with_cancel(&self) -> (Context, CancelGuard) {
        self.child(None)
    }

    pub(crate) fn child(&self, meta: Option<Box<Meta>>) -> (Context, CancelGuard) {
        let linked_at_birth = meta.is_some();
        let (node, guard) = NodeRef::new_pair(CancelNode::new(self.clone(), meta));
        if let Some(scope) = self.scope() {
            if linked_at_birth {
                scope.attach(&node);
            } else {
                scope.adopt(&node);
            }
        }
        (Context { repr: Repr::Cancel(node) }, CancelGuard { node: Some(guard), drop_cause: None })
    }

    /// A child carrying `value`, found by [`value::<T>()`](Context::value) here and in every
    /// descendant. Types are the keys: an inner value of type `T` shadows an outer one. Define
    /// a newtype per key, as Go code defines an unexported key type.
    ///
    /// The child is done exactly when this context is.
    ///
    /// ```
    /// use cancelctx::Context;
    /// #[derive(Debug, PartialEq)]
    /// struct RequestId(u64);
    ///
    /// let ctx = Context::unclocked().with_value(RequestId(7));
    /// let (child, _guard) = ctx.with_cancel();
    /// assert_eq!(child.value::<RequestId>(), Some(&RequestId(7)));
    /// assert_eq!(child.value::<String>(), None);
    /// ```
    #[must_use]
    pub fn with_value<T: Send + Sync + 'static>(&self, value: T) -> Context {
        Context {
            repr: Repr::Value(Arc::new(ValueNode {
                parent: self.clone(),
                scope: self.scope_ptr(),
                detached: false,
                value: Some(Box::new(value)),
            })),
        }
    }

    /// The value of type `T` set by the nearest [`with_value`](Context::with_value) at or
    /// above this context.
    ///
    /// ```
    /// use cancelctx::Context;
    /// let ctx = Context::unclocked().with_value(1u32).with_value(2u32);
    /// assert_eq!(ctx.value::<u32>(), Some(&2));
    /// ```
    #[must_use]
    pub fn value<T: 'static>(&self) -> Option<&T> {
        let mut ctx = self;
        loop {
            ctx = match &ctx.repr {
                Repr::Static(_) | Repr::Root(_) => return None,
                Repr::Cancel(node) => &node.parent,
                Repr::Value(node) => {
                    if let Some(value) = node.value.as_ref().and_then(|v| v.downcast_ref::<T>()) {
                        return Some(value);
                    }
                    &node.parent
                }
            };
        }
    }

    /// A child that keeps this context's values and clock but is never done and has no
    /// deadline: for work that must outlive the request that started it (Go 1.21's
    /// `WithoutCancel`).
    ///
    /// ```
    /// use cancelctx::Context;
    /// let (ctx, guard) = Context::unclocked().with_value("trace-1").with_cancel();
    /// let detached = ctx.without_cancel();
    /// drop(guard);
    /// assert!(ctx.is_done() && !detached.is_done());
    /// assert_eq!(detached.value::<&str>(), Some(&"trace-1"));
    /// ```
    #[must_use]
    pub fn without_cancel(&self) -> Context {
        Context {
            repr: Repr::Value(Arc::new(ValueNode {
                parent: self.clone(),
                scope: None,
                detached: true,
                value: None,
            })),
        }
    }

    /// Whether the context is done. One atomic load, or two on a `with_cancel` leaf that
    /// nothing is registered on (its own state and its parent's); never blocks, never
    /// allocates.
    ///
    /// ```
    /// let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// guard.cancel();
    /// assert!(ctx.is_done());
    /// ```
    #[inline]
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.scope().is_some_and(CancelNode::is_done)
    }

    /// Whether this context can ever be done: `false` for roots ([`background`](Context::background),
    /// [`with_clock`](Context::with_clock), [`unclocked`](Context::unclocked)), for
    /// [`without_cancel`](Context::without_cancel) and for value children of those; `true`
    /// below any [`with_cancel`](Context::with_cancel) or deadline context. It never changes.
    ///
    /// On a context that cannot be done, [`after_func`](Context::after_func) drops its
    /// function at once, unrun, and [`done()`](Context::done) and [`wait()`](Context::wait)
    /// never return.
    ///
    /// ```
    /// use cancelctx::Context;
    /// let root = Context::unclocked();
    /// assert!(!root.can_be_done());
    /// let (ctx, _guard) = root.with_value(1u8).with_cancel();
    /// assert!(ctx.can_be_done() && ctx.with_value(2u8).can_be_done());
    /// assert!(!ctx.without_cancel().can_be_done());
    /// ```
    #[inline]
    #[must_use]
    pub fn can_be_done(&self) -> bool {
        self.scope().is_some()
    }

    /// Why the context is done, or `None` while it is live. One or two atomic loads (as
    /// [`is_done`](Context::is_done)); the first call on a leaf whose parent is done also
    /// records the parent's error in the leaf (one compare-exchange), so it never changes.
    ///
    /// Once this returns `Some`, it always returns the same value, and
    /// [`cause`](Context::cause) and [`is_done`](Context::is_done) agree with it.
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// assert_eq!(ctx.err(), None);
    /// drop(guard);
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// ```
    #[inline]
    #[must_use]
    pub fn err(&self) -> Option<Error> {
        self.scope().and_then(CancelNode::err)
    }

    /// `Err` once the context is done, for use with `?` in loops.
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// fn work(ctx: &Context) -> Result<u32, Error> {
    ///     let mut n = 0;
    ///     loop {
    ///         ctx.check()?;
    ///         n += 1;
    ///     }
    /// }
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// guard.cancel();
    /// assert_eq!(work(&ctx), Err(Error::Canceled));
    /// ```
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        match self.err() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The detailed reason the context is done, or `None` while it is live.
    ///
    /// The first completion decides it: an explicit cause given to
    /// [`CancelGuard::cancel_with`] or [`with_deadline_cause`](Context::with_deadline_cause)
    /// is returned as given (downcast it to your type); a context completed by an ancestor
    /// has the ancestor's cause; otherwise it is the [`Error`] itself. Without an explicit
    /// cause this allocates the returned `Arc`.
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// #[derive(Debug)]
    /// struct Shutdown;
    /// impl std::fmt::Display for Shutdown {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("server shutting down")
    ///     }
    /// }
    /// impl std::error::Error for Shutdown {}
    ///
    /// let (parent, guard) = Context::unclocked().with_cancel();
    /// let (child, _g) = parent.with_cancel();
    /// guard.cancel_with(Shutdown);
    /// assert_eq!(child.err(), Some(Error::Canceled));
    /// assert!(child.cause().unwrap().downcast_ref::<Shutdown>().is_some());
    /// ```
    #[must_use]
    pub fn cause(&self) -> Option<Cause> {
        self.scope().and_then(CancelNode::cause)
    }

    /// The deadline of this context: the earliest deadline on the way to the root (or to a
    /// [`without_cancel`](Context::without_cancel)), if any.
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock, Instant};
    /// let root = Context::with_clock(ManualClock::new());
    /// let (ctx, _g) = root.with_deadline(Instant::from_nanos(100));
    /// let (child, _g2) = ctx.with_deadline(Instant::from_nanos(500));
    /// assert_eq!(child.deadline(), Some(Instant::from_nanos(100)));
    /// assert_eq!(root.deadline(), None);
    /// ```
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        Some(self.deadline_node()?.deadline)
    }

    /// The nearest node with a deadline at or above this context (its deadline is the
    /// effective one: a node only gets its own deadline when it is earlier than its parent's).
    fn deadline_owner(&self) -> Option<&CancelNode> {
        let mut ctx = self;
        loop {
            ctx = match &ctx.repr {
                Repr::Static(_) | Repr::Root(_) => return None,
                Repr::Cancel(node) if node.meta.is_some() => return Some(node),
                Repr::Cancel(node) => &node.parent,
                Repr::Value(node) if node.detached => return None,
                Repr::Value(node) => &node.parent,
            };
        }
    }

    fn deadline_node(&self) -> Option<&Meta> {
        self.deadline_owner()?.meta.as_deref()
    }

    /// Time left until the deadline (zero once it has passed), or `None` without a deadline.
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// use core::time::Duration;
    /// let clock = ManualClock::new();
    /// let (ctx, _g) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(10));
    /// clock.advance(Duration::from_secs(4));
    /// assert_eq!(ctx.remaining(), Some(Duration::from_secs(6)));
    /// ```
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        let meta = self.deadline_node()?;
        Some(meta.deadline.saturating_duration_since(meta.clock.get().now()))
    }

    /// The tree's clock, or `None` for a tree rooted at [`unclocked`](Context::unclocked).
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// let clock = ManualClock::new();
    /// let ctx = Context::with_clock(clock.clone()).with_value(1u8);
    /// assert_eq!(ctx.clock().map(|c| c.now()), Some(clock.now()));
    /// ```
    #[must_use]
    pub fn clock(&self) -> Option<&dyn Clock> {
        self.clock_ref().map(ClockRef::get)
    }

    /// The current time on the tree's clock, or `None` without one.
    ///
    /// ```
    /// use cancelctx::{Context, Instant, ManualClock};
    /// let clock = ManualClock::new();
    /// clock.set(Instant::from_nanos(42));
    /// assert_eq!(Context::with_clock(clock).now(), Some(Instant::from_nanos(42)));
    /// ```
    #[must_use]
    pub fn now(&self) -> Option<Instant> {
        self.clock().map(Clock::now)
    }

    fn clock_ref(&self) -> Option<&ClockRef> {
        let mut ctx = self;
        loop {
            ctx = match &ctx.repr {
                Repr::Static(root) => return root.clock.as_ref(),
                Repr::Root(root) => return root.clock.as_ref(),
                Repr::Cancel(node) => match &node.meta {
                    Some(meta) => return Some(&meta.clock),
                    None => &node.parent,
                },
                Repr::Value(node) => &node.parent,
            };
        }
    }

    /// A child that is done at `deadline` with [`Error::DeadlineExceeded`], when its guard is
    /// cancelled or dropped, or when this context is done — whichever comes first.
    ///
    /// If this context's deadline is already earlier, the child simply shares it (no timer is
    /// created; if that earlier deadline has passed but its timer has not fired yet, it is
    /// fired now). If `deadline` is not after the clock's `now`, the child is born done.
    ///
    /// **Keep the guard**: `let (ctx, _guard) = ...`, not `let (ctx, _) = ...`, which drops it
    /// at once and returns an already cancelled context. For a deadline and no early cancel,
    /// use [`with_deadline_only`](Context::with_deadline_only), which needs no guard.
    ///
    /// # Panics
    ///
    /// If the tree has no clock (it is rooted at [`Context::unclocked`]); see
    /// [`try_with_deadline`](Context::try_with_deadline).
    ///
    /// ```
    /// use cancelctx::{Context, Error, Instant, ManualClock};
    /// let clock = ManualClock::new();
    /// let (ctx, _guard) = Context::with_clock(clock.clone()).with_deadline(Instant::from_nanos(10));
    /// clock.set(Instant::from_nanos(10));
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// ```
    #[must_use = "dropping the CancelGuard cancels the context at once"]
    #[track_caller]
    pub fn with_deadline(&self, deadline: Instant) -> (Context, CancelGuard) {
        self.try_with_deadline(deadline).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`with_deadline`](Context::with_deadline) after `timeout` from now on the tree's clock
    /// (a timeout past [`Instant::MAX`] saturates to it).
    ///
    /// **Keep the guard**: `let (ctx, _guard) = ...`, not `let (ctx, _) = ...`, which drops it
    /// at once and returns an already cancelled context. For a deadline and no early cancel,
    /// use [`with_timeout_only`](Context::with_timeout_only), which needs no guard.
    ///
    /// # Panics
    ///
    /// If the tree has no clock; see [`try_with_timeout`](Context::try_with_timeout).
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// use core::time::Duration;
    /// let clock = ManualClock::new();
    /// let (ctx, _guard) = Context::with_clock(clock.clone()).with_timeout(Duration::from_millis(5));
    /// clock.advance(Duration::from_millis(5));
    /// assert!(ctx.is_done());
    /// ```
    #[must_use = "dropping the CancelGuard cancels the context at once"]
    #[track_caller]
    pub fn with_timeout(&self, timeout: Duration) -> (Context, CancelGuard) {
        self.try_with_timeout(timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`with_deadline`](Context::with_deadline) whose [`cause`](Context::cause) is `cause`
    /// when the deadline (not a cancel, not the parent) completes it (Go 1.21's
    /// `WithDeadlineCause`). If the parent's deadline is earlier, `cause` is dropped, as in Go.
    ///
    /// **Keep the guard**: `let (ctx, _guard) = ...`, not `let (ctx, _) = ...`, which drops it
    /// at once and returns an already cancelled context. For a deadline and no early cancel,
    /// use [`with_deadline_only`](Context::with_deadline_only), which needs no guard.
    ///
    /// # Panics
    ///
    /// If the tree has no clock.
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock, Instant, NoClockError};
    /// let clock = ManualClock::new();
    /// let root = Context::with_clock(clock.clone());
    /// let (ctx, _g) = root.with_deadline_cause(Instant::from_nanos(5), NoClockError);
    /// clock.set(Instant::from_nanos(5));
    /// assert!(ctx.cause().unwrap().downcast_ref::<NoClockError>().is_some());
    /// ```
    #[must_use = "dropping the CancelGuard cancels the context at once"]
    #[track_caller]
    pub fn with_deadline_cause(
        &self,
        deadline: Instant,
        cause: impl core::error::Error + Send + Sync + 'static,
    ) -> (Context, CancelGuard) {
        let cause: Cause = alloc::sync::Arc::new(cause);
        self.deadline_child(deadline, Some(cause)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`with_timeout`](Context::with_timeout) with a cause, as
    /// [`with_deadline_cause`](Context::with_deadline_cause).
    ///
    /// **Keep the guard**: `let (ctx, _guard) = ...`, not `let (ctx, _) = ...`, which drops it
    /// at once and returns an already cancelled context. For a deadline and no early cancel,
    /// use [`with_timeout_only`](Context::with_timeout_only), which needs no guard.
    ///
    /// # Panics
    ///
    /// If the tree has no clock.
    ///
    /// ```
    /// use cancelctx::{Context, Error, ManualClock, NoClockError};
    /// use core::time::Duration;
    /// let clock = ManualClock::new();
    /// let root = Context::with_clock(clock.clone());
    /// let (ctx, _g) = root.with_timeout_cause(Duration::from_secs(1), NoClockError);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// assert!(ctx.cause().unwrap().is::<NoClockError>());
    /// ```
    #[must_use = "dropping the CancelGuard cancels the context at once"]
    #[track_caller]
    pub fn with_timeout_cause(
        &self,
        timeout: Duration,
        cause: impl core::error::Error + Send + Sync + 'static,
    ) -> (Context, CancelGuard) {
        let Some(clock) = self.clock_ref() else { panic!("{NoClockError}") };
        let deadline = clock.get().now().saturating_add(timeout);
        self.with_deadline_cause(deadline, cause)
    }

    /// [`with_deadline`](Context::with_deadline), or [`NoClockError`] if the tree has no
    /// clock. Keep the guard (see [`with_deadline`](Context::with_deadline)).
    ///
    /// ```
    /// use cancelctx::{Context, Instant};
    /// assert!(Context::unclocked().try_with_deadline(Instant::MAX).is_err());
    /// ```
    pub fn try_with_deadline(
        &self,
        deadline: Instant,
    ) -> Result<(Context, CancelGuard), NoClockError> {
        self.deadline_child(deadline, None)
    }

    /// [`with_timeout`](Context::with_timeout), or [`NoClockError`] if the tree has no clock.
    /// Keep the guard (see [`with_timeout`](Context::with_timeout)).
    ///
    /// ```
    /// use cancelctx::{Context, ManualClock};
    /// use core::time::Duration;
    /// let root = Context::with_clock(ManualClock::new());
    /// let (ctx, _guard) = root.try_with_timeout(Duration::from_secs(1)).unwrap();
    /// assert!(ctx.deadline().is_some());
    /// ```
    pub fn try_with_timeout(
        &self,
        timeout: Duration,
    ) -> Result<(Context, CancelGuard), NoClockError> {
        let clock = self.clock_ref().ok_or(NoClockError)?;
        let now = clock.get().now();
        // `now` is handed on: the timer's "already due?" check reuses it (one clock read less).
        self.deadline_child_at(now.saturating_add(timeout), None, Some(now))
    }

    /// A child that is done at `deadline` (or when this context is done), with no guard: for
    /// the common case of "this work has a time limit" with no early cancel.
    ///
    /// Nothing leaks without a guard: when the last handle to the returned context is
    /// dropped, it is unlinked from its parent and its timer is released, as for every
    /// context. The same rules as [`with_deadline`](Context::with_deadline) apply (an earlier
    /// parent deadline wins; a deadline not after `now` gives a context that is born done).
    ///
    /// # Panics
    ///
    /// If the tree has no clock; see [`try_with_deadline`](Context::try_with_deadline).
    ///
    /// ```
    /// use cancelctx::{Context, Error, Instant, ManualClock};
    /// let clock = ManualClock::new();
    /// let ctx = Context::with_clock(clock.clone()).with_deadline_only(Instant::from_nanos(10));
    /// assert!(!ctx.is_done()); // no guard was dropped
    /// clock.set(Instant::from_nanos(10));
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// drop(ctx); // releases the node (and, had it not fired, the timer)
    /// assert_eq!(clock.pending_timers(), 0);
    /// ```
    #[must_use]
    #[track_caller]
    pub fn with_deadline_only(&self, deadline: Instant) -> Context {
        let (ctx, guard) = self.with_deadline(deadline);
        guard.detach();
        ctx
    }

    /// A child that is done after `timeout` from now on the tree's clock (or when this context
    /// is done), with no guard; see [`with_deadline_only`](Context::with_deadline_only).
    ///
    /// This is what `let (ctx, _) = parent.with_timeout(d)` was meant to say: that line drops
    /// the guard at once and gives an already cancelled context.
    ///
    /// # Panics
    ///
    /// If the tree has no clock; see [`try_with_timeout`](Context::try_with_timeout).
    ///
    /// ```
    /// use cancelctx::{Context, Error, ManualClock};
    /// use core::time::Duration;
    /// let clock = ManualClock::new();
    /// let ctx = Context::with_clock(clock.clone()).with_timeout_only(Duration::from_secs(2));
    /// assert_eq!(ctx.err(), None);
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// ```
    #[must_use]
    #[track_caller]
    pub fn with_timeout_only(&self, timeout: Duration) -> Context {
        let (ctx, guard) = self.with_timeout(timeout);
        guard.detach();
        ctx
    }

    fn deadline_child(
        &self,
        deadline: Instant,
        cause: Option<Cause>,
    ) -> Result<(Context, CancelGuard), NoClockError> {
        self.deadline_child_at(deadline, cause, None)
    }

    /// [`deadline_child`](Context::deadline_child) given the clock's `now` if the caller just
    /// read it.
    fn deadline_child_at(
        &self,
        deadline: Instant,
        cause: Option<Cause>,
        now: Option<Instant>,
    ) -> Result<(Context, CancelGuard), NoClockError> {
        let clock = self.clock_ref().ok_or(NoClockError)?.clone();
        if let Some(owner) = self.deadline_owner() {
            let meta = owner.meta.as_deref().expect("a deadline owner has meta");
            if meta.deadline <= deadline {
                // The parent's deadline comes first: no timer needed (Go drops the cause too).
                // If it has passed but its timer has not fired yet, fire it now, so that a
                // deadline not after `now` always gives a child that is born done.
                if meta.clock.get().now() >= meta.deadline {
                    owner.complete(Error::DeadlineExceeded, meta.cause.clone());
                }
                return Ok(self.with_cancel());
            }
        }
        let waker = alloc::sync::Arc::new(TimerWaker::default());
        let meta = Box::new(Meta::new(deadline, clock, cause, waker.clone()));
        let (ctx, guard) = self.child(Some(meta));
        let Repr::Cancel(node) = &ctx.repr else { unreachable!("child() makes a cancel node") };
        crate::timer::arm(node, waker, now);
        Ok((ctx, guard))
    }
}

#[cfg(feature = "std")]
impl Default for Context {
    /// [`Context::background()`].
    fn default() -> Context {
        Context::background()
    }
}

#[cfg(not(feature = "std"))]
impl Default for Context {
    /// [`Context::unclocked()`] (without `std` there is no background clock).
    fn default() -> Context {
        Context::unclocked()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("err", &self.err())
            .field("deadline", &self.deadline())
            .finish_non_exhaustive()
    }
}

/// The right to cancel a context made by [`Context::with_cancel`] or a deadline constructor.
///
/// **Dropping the guard cancels the context** (with [`Error::Canceled`]): Rust's answer to
/// Go's `defer cancel()`, so a forgotten cancel cannot leak a context. Call
/// [`detach`](CancelGuard::detach) to let go without cancelling, and
/// [`with_drop_cause`](CancelGuard::with_drop_cause) to say why a drop cancels (for example
/// "client disconnected" when a request future is dropped). The guard is `Send + Sync`:
/// share it in an `Arc` to cancel from several places.
///
/// A guard bound to `_` is dropped at once: `let (ctx, _) = parent.with_cancel()` gives a
/// context that is already cancelled. Name it (`_guard`), or use
/// [`Context::with_timeout_only`] when only a deadline is wanted.
///
/// ```
/// use cancelctx::{Context, Error};
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// std::thread::spawn(move || guard.cancel()).join().unwrap();
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// ```
#[must_use = "dropping the CancelGuard cancels the context at once"]
#[clippy::has_significant_drop]
pub struct CancelGuard {
    node: Option<NodeRef>,
    /// The cause a drop without an explicit cancel completes the context with.
    drop_cause: Option<Cause>,
}

impl CancelGuard {
    fn node(&self) -> &NodeRef {
        self.node.as_ref().expect("a CancelGuard holds its node until dropped")
    }

    /// Cancels the context and its descendants with [`Error::Canceled`]. Does nothing if it
    /// is already done.
    ///
    /// When this returns, the context and every descendant report done. If this call is the
    /// one that completed the context, their waiters have also been woken and their
    /// `after_func` callbacks have run, on this thread. If another completion won the race
    /// (another thread's cancel, an ancestor, the deadline), this waits until that one has
    /// marked every descendant done; its waiters and callbacks are the winner's to run.
    ///
    /// # Panics
    ///
    /// If user code run by the cancellation panics (an `after_func` callback, a task's waker,
    /// the clock's `cancel`), the cancellation still completes (every descendant is marked
    /// done, every other callback runs, every waiter is woken), then the first panic resumes
    /// here.
    ///
    /// ```
    /// let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// guard.cancel();
    /// guard.cancel(); // no effect
    /// assert!(ctx.is_done());
    /// ```
    pub fn cancel(&self) {
        self.node().complete(Error::Canceled, None);
    }

    /// Cancels with an explicit cause, reported by [`Context::cause`] here and in every
    /// descendant (Go's `WithCancelCause`). Only the first completion's cause counts.
    ///
    /// # Panics
    ///
    /// As [`cancel`](CancelGuard::cancel).
    ///
    /// ```
    /// use cancelctx::{Context, NoClockError};
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// guard.cancel_with(NoClockError);
    /// assert!(ctx.cause().unwrap().is::<NoClockError>());
    /// ```
    pub fn cancel_with(&self, cause: impl core::error::Error + Send + Sync + 'static) {
        self.cancel_with_cause(alloc::sync::Arc::new(cause));
    }

    /// Cancels with a cause that is already a [`Cause`] (for example another context's),
    /// without wrapping it again.
    ///
    /// # Panics
    ///
    /// As [`cancel`](CancelGuard::cancel).
    ///
    /// ```
    /// use cancelctx::{Context, NoClockError};
    /// let (a, guard_a) = Context::unclocked().with_cancel();
    /// let (b, guard_b) = Context::unclocked().with_cancel();
    /// guard_a.cancel_with(NoClockError);
    /// guard_b.cancel_with_cause(a.cause().unwrap());
    /// assert!(b.cause().unwrap().is::<NoClockError>());
    /// ```
    pub fn cancel_with_cause(&self, cause: Cause) {
        self.node().complete(Error::Canceled, Some(cause));
    }

    /// Lets go of the guard without cancelling. The context is then done only through its
    /// parent or its deadline, and is unlinked from its parent when its last handle drops.
    ///
    /// ```
    /// let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// guard.detach();
    /// assert!(!ctx.is_done());
    /// ```
    pub fn detach(mut self) {
        drop(self.node.take());
    }

    /// Sets the cause the context is cancelled with when this guard is dropped without an
    /// explicit [`cancel`](CancelGuard::cancel) (by default the cause is [`Error::Canceled`]
    /// itself), and returns the guard. Explicit cancels ignore it; only the first completion
    /// of a context decides its cause, so a drop after another completion changes nothing.
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    /// #[derive(Debug)]
    /// struct ClientDisconnected;
    /// impl std::fmt::Display for ClientDisconnected {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("client disconnected")
    ///     }
    /// }
    /// impl std::error::Error for ClientDisconnected {}
    ///
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// let guard = guard.with_drop_cause(ClientDisconnected);
    /// drop(guard); // e.g. the request future was dropped mid-flight
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// assert!(ctx.cause().unwrap().is::<ClientDisconnected>());
    /// ```
    pub fn with_drop_cause(
        mut self,
        cause: impl core::error::Error + Send + Sync + 'static,
    ) -> CancelGuard {
        self.set_drop_cause(alloc::sync::Arc::new(cause));
        self
    }

    /// Sets (or replaces) the cause used when this guard is dropped; see
    /// [`with_drop_cause`](CancelGuard::with_drop_cause). Takes a [`Cause`], so another
    /// context's cause can be passed on as it is.
    ///
    /// ```
    /// use cancelctx::{Context, NoClockError};
    /// let (ctx, mut guard) = Context::unclocked().with_cancel();
    /// guard.set_drop_cause(std::sync::Arc::new(NoClockError));
    /// drop(guard);
    /// assert!(ctx.cause().unwrap().is::<NoClockError>());
    /// ```
    pub fn set_drop_cause(&mut self, cause: Cause) {
        self.drop_cause = Some(cause);
    }

    /// Whether the guarded context is done.
    ///
    /// ```
    /// let (_ctx, guard) = cancelctx::Context::unclocked().with_cancel();
    /// assert!(!guard.is_done());
    /// guard.cancel();
    /// assert!(guard.is_done());
    /// ```
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.node().is_done()
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            match self.drop_cause.take() {
                None => node.complete_and_release(Error::Canceled),
                cause => {
                    node.complete(Error::Canceled, cause);
                }
            }
        }
    }
}

impl fmt::Debug for CancelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelGuard")
            .field("is_done", &self.is_done())
            .field("drop_cause", &self.drop_cause)
            .finish()
    }
}

// Crate-internal access for the modules built on the public API (`linked.rs`): kept at the
// end of the file so it stays a separate hunk.
impl Context {
    pub(crate) fn deadline_meta(&self) -> Option<&Meta> {
        self.deadline_node()
    }

    pub(crate) fn tree_clock(&self) -> Option<&ClockRef> {
        self.clock_ref()
    }

    pub(crate) fn child_with_deadline(
        &self,
        deadline: Instant,
        cause: Option<Cause>,
    ) -> Result<(Context, CancelGuard), NoClockError> {
        self.deadline_child(deadline, cause)
    }
}
