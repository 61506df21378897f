//! Linked contexts: a child of one context that also ends when another one ends
//! ([`Context::with_linked`]).
//!
//! Go declined this (`context` has one parent) and .NET's
//! `CancellationTokenSource.CreateLinkedTokenSource` leaks a registration on every parent
//! until the linked source is disposed. Here the link is built from parts that already clean
//! up after themselves, so it adds no new lock-free state:
//!
//! - the linked context is an ordinary child of `self` (values, clock and, through the tree,
//!   cancellation from `self`);
//! - an [`after_func`](Context::after_func) registration on `other` completes that child with
//!   `other`'s error and cause;
//! - the registration's handle is owned by a hidden value node on top of the child, the
//!   context actually returned. When the last handle to the linked context (or to any of
//!   its descendants) is dropped, that value is dropped and stops the registration, which
//!   removes it from `other` in O(1). A long-lived `other` with millions of short-lived
//!   linked children therefore keeps constant memory.
//!
//! "Whichever parent ends first wins" is the node's single completion CAS: `self`'s walk and
//! `other`'s callback both complete the same node, and the first completion decides the
//! error and the cause together.

use alloc::sync::Arc;
use core::fmt;

use crate::after_func::AfterFunc;
use crate::context::{CancelGuard, Context};
use crate::error::Error;
use crate::time::ClockRef;

/// Owns the registration on the other parent; dropping it unlinks the child from there.
struct Link {
    registration: AfterFunc,
}

impl Drop for Link {
    fn drop(&mut self) {
        // `false` means the callback already ran (or is running): nothing is left on `other`.
        self.registration.stop();
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// Whether two trees read the same clock object, so that their instants compare.
fn same_clock(a: &ClockRef, b: &ClockRef) -> bool {
    match (a, b) {
        #[cfg(feature = "std")]
        (ClockRef::Std, ClockRef::Std) => true,
        (ClockRef::Custom(a), ClockRef::Custom(b)) => Arc::ptr_eq(a, b),
        #[allow(unreachable_patterns)] // without `std`, `Custom` is the only variant
        _ => false,
    }
}

/// Completes `child` the way `other` completed: same error, same cause.
fn complete_from(child: &Context, other: &Context) {
    let (Some(err), Some(node)) = (other.err(), child.scope()) else { return };
    // `cause()` returns the error itself when there is no explicit cause; passing `None`
    // reports exactly that again without storing (and allocating) a copy.
    let cause = other.cause().filter(|cause| cause.downcast_ref::<Error>() != Some(&err));
    node.complete(err, cause);
}

impl Context {
    /// A child of this context that also ends when `other` ends, with `other`'s error and
    /// cause: whichever parent ends first wins.
    ///
    /// The child takes its values and its clock from `self` only; `other` contributes
    /// nothing but its end. The returned [`CancelGuard`] cancels the child (dropping it
    /// cancels, as everywhere in this crate).
    ///
    /// - **Born done** if either parent is done. If both are, the child reports `self`'s
    ///   error and cause.
    /// - **Deadline**: [`deadline`](Context::deadline) is the earlier of the two parents'
    ///   deadlines when both trees read the *same clock object* (contexts under one root, or
    ///   any two trees on [`Context::background`]'s std clock); the child then gets a timer
    ///   of its own at `other`'s deadline, reporting `other`'s deadline cause.
    ///   Across different clocks (two [`with_clock`](Context::with_clock) roots, even over
    ///   clones of one `ManualClock`) instants do not compare: the child reports only
    ///   `self`'s deadline, and `other`'s deadline still ends it (through `other`, with
    ///   [`Error::DeadlineExceeded`] and `other`'s cause) when `other`'s clock says so.
    /// - **No leak**: dropping the last handle to the child (and to its descendants)
    ///   unlinks it from both parents; nothing stays registered on a long-lived `other`.
    ///   While the child is alive its link to `other` stays registered even after `self`
    ///   ends it (at a cost of about a hundred bytes).
    /// - **N parents**: link again, `a.with_linked(&b).0.with_linked(&c)`; keep every guard
    ///   (dropping an inner one cancels what is built on it).
    ///
    /// When `other` ends, the child is completed inside `other`'s completion (on the
    /// thread that cancels it, or on its clock's timer thread), so the child's own
    /// `after_func` callbacks run there too. The link runs before any user callback of
    /// `other`'s completion, so no callback there (one that moves a `ManualClock` onto a
    /// deadline of `self`'s due at the same instant, say) can end the child first.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancelctx::{Context, Error};
    ///
    /// #[derive(Debug)]
    /// struct Shutdown;
    /// impl std::fmt::Display for Shutdown {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("server shutting down")
    ///     }
    /// }
    /// impl std::error::Error for Shutdown {}
    ///
    /// let (server, stop_server) = Context::unclocked().with_cancel();
    /// let (request, _end_request) = Context::unclocked().with_value("req-7").with_cancel();
    ///
    /// // Work for this request that must also stop when the server stops.
    /// let (work, _guard) = request.with_linked(&server);
    /// assert_eq!(work.value::<&str>(), Some(&"req-7")); // values come from `request`
    ///
    /// stop_server.cancel_with(Shutdown);
    /// assert_eq!(work.err(), Some(Error::Canceled));
    /// assert!(work.cause().unwrap().is::<Shutdown>());
    /// assert!(!request.is_done());
    /// ```
    #[must_use = "dropping the CancelGuard cancels the context at once"]
    pub fn with_linked(&self, other: &Context) -> (Context, CancelGuard) {
        // `other`'s deadline, when it is comparable with ours (`child_with_deadline` keeps
        // ours if it is earlier, and gives a child born done if `other`'s has passed).
        let comparable = match (other.deadline_meta(), self.tree_clock()) {
            (Some(meta), Some(clock)) if !other.is_done() && same_clock(&meta.clock, clock) => {
                Some(meta)
            }
            _ => None,
        };
        let (child, guard) = match comparable {
            Some(meta) => self
                .child_with_deadline(meta.deadline, meta.cause.clone())
                .expect("`self` has a clock: it was just compared"),
            None => self.with_cancel(),
        };
        if child.is_done() || other.scope().is_none() {
            // Born done from `self`, or `other` can never end: nothing to link.
            return (child, guard);
        }
        let (target, source) = (child.clone(), other.clone());
        let registration = other.after_func_link(move || complete_from(&target, &source));
        if other.is_done() {
            // The function ran already, or `other`'s completion has claimed it: the
            // registration ends by itself and there is nothing to stop.
            return (child, guard);
        }
        (child.with_value(Link { registration }), guard)
    }
}
