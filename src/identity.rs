//! Contexts compare by identity ([`PartialEq`], [`Eq`], [`Hash`]), like tokio-util's
//! `CancellationToken`: clones are equal; a child, a sibling or an independent context is
//! not.

use core::hash::{Hash, Hasher};

use crate::context::{Context, Repr};

impl Context {
    /// The address of the node this handle points to: the identity of the context.
    fn identity(&self) -> *const () {
        match &self.repr {
            Repr::Static(root) => core::ptr::from_ref(*root).cast(),
            Repr::Root(root) => core::ptr::from_ref::<crate::context::Root>(root).cast(),
            Repr::Cancel(node) => core::ptr::from_ref::<crate::node::CancelNode>(node).cast(),
            Repr::Value(node) => core::ptr::from_ref::<crate::context::ValueNode>(node).cast(),
        }
    }
}

/// Two handles are equal when they are the same context: one is a clone of the other.
///
/// A child is never equal to its parent (not even a [`with_value`](Context::with_value)
/// child, which is done exactly when its parent is). Every [`Context::background()`] is the
/// same context, and so is every [`Context::unclocked()`]; each
/// [`with_clock`](Context::with_clock) root is its own. Equality is stable: it does not
/// change when a context is cancelled.
///
/// ```
/// use cancelctx::Context;
/// use std::collections::HashSet;
///
/// let (ctx, _guard) = Context::unclocked().with_cancel();
/// let (child, _child_guard) = ctx.with_cancel();
/// assert_eq!(ctx, ctx.clone());
/// assert_ne!(ctx, child);
///
/// let mut running = HashSet::new();
/// running.insert(ctx.clone());
/// assert!(running.contains(&ctx) && !running.contains(&child));
/// ```
impl PartialEq for Context {
    fn eq(&self, other: &Context) -> bool {
        core::ptr::eq(self.identity(), other.identity())
    }
}

impl Eq for Context {}

/// Hashes the identity, consistently with [`PartialEq`].
impl Hash for Context {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}
