//! [`AfterFunc`]: run a function when a context is done (Go 1.21's `context.AfterFunc`).

use alloc::boxed::Box;
use core::fmt;

use crate::context::{Context, Repr};
use crate::node::NodeRef;
use crate::sync::{Arc, AtomicU32, AtomicU8, Mutex, Ordering};

const PENDING: u8 = 0;
const CLAIMED: u8 = 1;
const STOPPED: u8 = 2;

type Func = Box<dyn FnOnce() + Send>;

/// A registered function. Exactly one of "run it" and "stop it" wins the `PENDING` state.
pub(crate) struct Callback {
    state: AtomicU8,
    /// Index in the node's callback list, guarded by the node's lock.
    pub(crate) slot: AtomicU32,
    /// The reference that keeps the node alive while the callback is registered. Taken by
    /// the completion walk that claims the callback, or by `stop`.
    node: Mutex<Option<NodeRef>>,
    f: Mutex<Option<Func>>,
    /// A crate-internal link (`with_linked`): the walk runs it before user callbacks, so the
    /// linked child is completed as part of the completion, before any user callback can
    /// move a clock or cancel something that would reach the child first.
    pub(crate) link: bool,
}

impl Callback {
    fn new(f: Func, link: bool) -> Callback {
        Callback {
            state: AtomicU8::new(PENDING),
            slot: AtomicU32::new(0),
            node: Mutex::new(None),
            f: Mutex::new(Some(f)),
            link,
        }
    }

    pub(crate) fn hold(&self, node: NodeRef) {
        *self.node.lock() = Some(node);
    }

    /// Claims the callback for running (under the node's lock, in the completion walk) and
    /// hands back the node reference it held, for the walk to drop last. `None` if `stop`
    /// won; `Some(None)` if `stop` holds the reference but lost the claim.
    pub(crate) fn claim_for_run(&self) -> Option<Option<NodeRef>> {
        if self.claim(CLAIMED) {
            Some(self.node.lock().take())
        } else {
            None
        }
    }

    /// Runs the function of a claimed callback.
    pub(crate) fn run_claimed(&self) {
        let f = self.f.lock().take();
        if let Some(f) = f {
            f();
        }
    }

    fn claim(&self, to: u8) -> bool {
        // memory ordering: AcqRel so the winner sees the function stored at registration and
        // the loser's view is ordered after the winner's decision.
        self.state.compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// The handle of a function registered with [`Context::after_func`].
///
/// Dropping the handle leaves the function registered. The registration (not the handle)
/// keeps its context alive until the function runs or is stopped; after that the handle
/// holds nothing but the function's state.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use cancelctx::Context;
///
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// let ran = Arc::new(AtomicBool::new(false));
/// let flag = ran.clone();
/// let _handle = ctx.after_func(move || flag.store(true, Ordering::SeqCst));
/// guard.cancel(); // runs the function on this thread before returning
/// assert!(ran.load(Ordering::SeqCst));
/// ```
#[derive(Debug)]
pub struct AfterFunc {
    inner: Registration,
}

// Unwind safety: as for `Context` (see its docs); the callback state is one atomic claimed
// once, and a stopped or run function is never observed again.
impl core::panic::UnwindSafe for AfterFunc {}
impl core::panic::RefUnwindSafe for AfterFunc {}

enum Registration {
    /// The context can never be done; the function was dropped unrun.
    Never { stopped: core::sync::atomic::AtomicBool },
    /// The context was done already; the function ran inside `after_func`.
    Ran,
    /// Registered on a live context.
    Pending { callback: Arc<Callback> },
}

impl AfterFunc {
    /// Prevents the function from running. Returns `true` iff this call stopped it: `false`
    /// if it has already started (or run), or was already stopped.
    ///
    /// On a context that can never be done the function never runs, and the first `stop`
    /// returns `true`, as in Go.
    ///
    /// ```
    /// use cancelctx::Context;
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// let handle = ctx.after_func(|| unreachable!("stopped before cancel"));
    /// assert!(handle.stop());
    /// assert!(!handle.stop());
    /// guard.cancel();
    /// ```
    pub fn stop(&self) -> bool {
        match &self.inner {
            Registration::Never { stopped } => {
                !stopped.swap(true, core::sync::atomic::Ordering::AcqRel)
            }
            Registration::Ran => false,
            Registration::Pending { callback } => {
                // Take the registration's node reference first: if it is gone, the completion
                // walk claimed the callback (or another `stop` won).
                let Some(node) = callback.node.lock().take() else { return false };
                if !callback.claim(STOPPED) {
                    return false; // claimed by a completion that found the reference taken
                }
                let f = callback.f.lock().take();
                drop(f); // release what the function captured, outside the lock
                node.remove_callback(callback);
                true
            }
        }
    }
}

impl Context {
    /// Arranges for `f` to run once the context is done, on the thread that completes it
    /// (the canceller, or the clock's timer thread for a deadline), with no lock of this crate
    /// held. If the context is already done, `f` runs at once on this thread, after the
    /// completion that made it done has marked the whole subtree done.
    ///
    /// **If the context can never be done** ([`Context::background`], a
    /// [`with_clock`](Context::with_clock) root, [`Context::without_cancel`]; see
    /// [`can_be_done`](Context::can_be_done)), **`f` is dropped at once, unrun**, and
    /// everything it captured with it: a channel sender captured to turn "done" into a
    /// message disconnects immediately. On such contexts wait with
    /// [`done()`](Context::done) or [`wait()`](Context::wait) instead, which stay pending.
    ///
    /// `f` runs at most once; [`AfterFunc::stop`] prevents it. Callbacks run after the whole
    /// cancelled subtree is marked done and its waiters are woken. A panicking `f` does not
    /// prevent the others from running: the completion finishes, then the first panic is
    /// resumed on the completing thread (or dropped if that thread is already unwinding).
    /// Keep `f` short on the std clock: it runs on the shared timer thread.
    ///
    /// ```
    /// use cancelctx::Context;
    /// use std::sync::mpsc;
    ///
    /// let (ctx, guard) = Context::unclocked().with_cancel();
    /// let (tx, rx) = mpsc::channel();
    /// let _h = ctx.after_func(move || tx.send("closed the connection").unwrap());
    /// drop(guard);
    /// assert_eq!(rx.recv().unwrap(), "closed the connection");
    /// ```
    pub fn after_func(&self, f: impl FnOnce() + Send + 'static) -> AfterFunc {
        self.register_after_func(Box::new(f), false)
    }

    /// [`after_func`](Context::after_func) for the crate's own links: the completion walk
    /// runs these before the user callbacks it claimed (see [`Callback::link`]).
    pub(crate) fn after_func_link(&self, f: impl FnOnce() + Send + 'static) -> AfterFunc {
        self.register_after_func(Box::new(f), true)
    }

    fn register_after_func(&self, f: Func, link: bool) -> AfterFunc {
        let Some(scope) = self.scope() else {
            return AfterFunc { inner: Registration::Never { stopped: Default::default() } };
        };
        // Registration needs a counted reference to the scope node.
        let node = match &self.repr {
            Repr::Cancel(node) => node.clone(),
            // SAFETY: the scope is kept alive by `self` during this call.
            _ => unsafe { NodeRef::upgrade(scope.ptr()) }.expect("the scope is alive"),
        };
        let callback = Arc::new(Callback::new(f, link));
        if scope.add_callback(node, &callback) {
            AfterFunc { inner: Registration::Pending { callback } }
        } else {
            // Done already: run at once, on this thread, but only once the completion that made
            // it done has marked the whole subtree (as a losing cancel waits), so `f` never
            // sees a live descendant. Callbacks run after FINISHED, so `after_func` called
            // from one never waits for its own walk.
            scope.wait_finished();
            if callback.claim_for_run().is_some() {
                callback.run_claimed();
            }
            AfterFunc { inner: Registration::Ran }
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registration::Never { .. } => f.write_str("Never"),
            Registration::Ran => f.write_str("Ran"),
            Registration::Pending { callback, .. } => {
                let state = match callback.state.load(Ordering::Acquire) {
                    PENDING => "Pending",
                    CLAIMED => "Claimed",
                    _ => "Stopped",
                };
                f.write_str(state)
            }
        }
    }
}
