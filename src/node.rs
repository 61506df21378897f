//! A cancellable node: its state word, waiter list, children, callbacks and timer, and the
//! reference count that keeps it alive.
//!
//! Every `with_cancel`/`with_deadline` context is one heap-allocated [`CancelNode`] shared by
//! its `Context` clones, its `CancelGuard` and its pending `after_func` registrations through
//! [`NodeRef`], a
//! reference-counted pointer written here rather than `Arc` for three reasons:
//!
//! - no weak count: the node stays at 64 bytes (see the size test at the bottom);
//! - the release path unlinks the node from its parent *before* the memory is freed, while
//!   the parent may still be reading the node under the parent's lock, and only ever through
//!   shared references (an `Arc`'s `Drop` would hold `&mut` to the node meanwhile);
//! - dropping the last handle of a long chain frees the chain in a loop, not by recursion.
//!
//! # How children are linked
//!
//! A child registers with its *scope*: the nearest cancellable ancestor (value nodes are
//! skipped; never-done ancestors end the search, and a child of a never-done context links to
//! nothing). The scope's `Inner::children` holds raw pointers, and each child remembers its
//! index in `slot`. Both are only touched under the scope's lock, which gives the key
//! invariant:
//!
//! > A pointer in `children` is valid while the scope's lock is held.
//!
//! because a child whose count drops to zero must take that same lock to remove itself
//! ([`free_node`]) before it is freed. Removal is a `swap_remove` that fixes the moved child's
//! `slot`: O(1), so a parent that lives forever with many short-lived children keeps
//! constant memory.
//!
//! # How completion spreads
//!
//! [`CancelNode::complete`] wins the one `live -> done` transition of the state word, then a
//! [`Walk`] goes through the subtree with an explicit work list (never recursion): under each
//! node's lock it takes the children, callbacks and timer, marks every child done
//! (`INHERITED`), and queues those that have waiters or links of their own, holding a counted
//! reference so they outlive the lock. Only once the whole subtree is done (FINISHED) does
//! user code run, with no lock held: timers are released on their clocks, waiters are woken
//! and callbacks run, each isolated from the others' panics. A completion that loses the race
//! waits for FINISHED, so every `cancel()` returns with the subtree done.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use crate::after_func::Callback;
use crate::context::{release_chain, Context};
use crate::error::{Cause, Error};
use crate::state::{self, CAUSE, FINISHED, INHERITED, LINKS, WAITERS};
use crate::sync::{Arc, AtomicU32, AtomicUsize, Mutex, MutexGuard, Ordering};
use crate::time::{ClockRef, Instant, TimerKey};
use crate::timer::TimerWaker;
use crate::waiters::WaitList;

/// `slot` of a node that is not in its scope's `children`.
pub(crate) const NOT_LINKED: u32 = u32::MAX;

/// Counts past this abort, like `Arc` does: they can only come from leaked handles.
const MAX_REFS: usize = usize::MAX / 2;

pub(crate) struct CancelNode {
    /// Handles: `Context`s, the `CancelGuard`, one per pending `after_func` registration, and
    /// references a completion walk holds while it works.
    refs: AtomicUsize,
    /// The state word; see `state.rs`.
    pub(crate) state: AtomicU32,
    /// Index in the scope's `children`, or `NOT_LINKED`. Guarded by the *scope's* lock; an
    /// atomic only so that no `unsafe` is needed to share it (all accesses are `Relaxed`).
    slot: AtomicU32,
    /// Everything that is registered on the node, allocated on first use.
    inner: Mutex<Option<Box<Inner>>>,
    /// Waiters (`done()`, `wait()`), woken once on completion; one word, see `waiters.rs`.
    pub(crate) waiters: WaitList,
    /// The context this one was made from: values, the clock and the scope are found
    /// through it, and it keeps them alive.
    pub(crate) parent: Context,
    /// Deadline data, immutable after construction; `None` for `with_cancel` nodes.
    pub(crate) meta: Option<Box<Meta>>,
}

#[derive(Default)]
pub(crate) struct Inner {
    children: Vec<NodePtr>,
    callbacks: Vec<Arc<Callback>>,
    cause: Option<Cause>,
    timer: Option<TimerKey>,
}

/// What a deadline node knows about its deadline.
pub(crate) struct Meta {
    pub(crate) deadline: Instant,
    pub(crate) clock: ClockRef,
    pub(crate) cause: Option<Cause>,
    pub(crate) waker: alloc::sync::Arc<TimerWaker>,
}

/// A non-owning pointer to a node, valid only where an invariant says so (under the scope's
/// lock for `children`, under the timer waker's lock for timers).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodePtr(NonNull<CancelNode>);

// SAFETY: a `NodePtr` is only dereferenced under the locks documented above; the node itself
// is `Sync` (atomics, a mutex, an `Event` and `Send + Sync` fields).
unsafe impl Send for NodePtr {}
// SAFETY: as above.
unsafe impl Sync for NodePtr {}

impl NodePtr {
    /// # Safety
    ///
    /// The caller must guarantee the node is alive for `'a`: it holds a `NodeRef`, or the
    /// lock that the node's release path must take before freeing it.
    pub(crate) unsafe fn get<'a>(self) -> &'a CancelNode {
        // SAFETY: guaranteed by the caller.
        unsafe { self.0.as_ref() }
    }
}

/// A counted reference to a [`CancelNode`].
pub(crate) struct NodeRef(NonNull<CancelNode>);

// SAFETY: `NodeRef` is a shared, reference-counted pointer like `Arc<CancelNode>`, and
// `CancelNode` is `Send + Sync`.
unsafe impl Send for NodeRef {}
// SAFETY: as above.
unsafe impl Sync for NodeRef {}

impl NodeRef {
    /// Allocates `node` and returns two references to it (a context and its guard), without
    /// a read-modify-write for the second.
    pub(crate) fn new_pair(node: CancelNode) -> (NodeRef, NodeRef) {
        node.refs.store(2, Ordering::Relaxed);
        let ptr = NonNull::from(Box::leak(Box::new(node)));
        (NodeRef(ptr), NodeRef(ptr))
    }

    pub(crate) fn ptr(&self) -> NodePtr {
        NodePtr(self.0)
    }

    /// A new counted reference from a pointer, unless the count already reached zero (the
    /// node is being released).
    ///
    /// # Safety
    ///
    /// `ptr` must be alive for the duration of the call (see [`NodePtr::get`]).
    pub(crate) unsafe fn upgrade(ptr: NodePtr) -> Option<NodeRef> {
        // SAFETY: guaranteed by the caller.
        let node = unsafe { ptr.get() };
        let mut n = node.refs.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            if n > MAX_REFS {
                abort_on_overflow();
            }
            // memory ordering: Relaxed like `Arc::clone`; the caller's lock already orders
            // this with the release path, which re-checks nothing after reaching zero.
            match node.refs.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(NodeRef(ptr.0)),
                Err(actual) => n = actual,
            }
        }
    }
}

impl core::ops::Deref for NodeRef {
    type Target = CancelNode;

    fn deref(&self) -> &CancelNode {
        // SAFETY: this reference is counted, so the node is alive.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for NodeRef {
    fn clone(&self) -> NodeRef {
        // memory ordering: Relaxed, as in `Arc::clone`: a new reference can only be made from
        // an existing one, which already keeps the node alive.
        let old = self.refs.fetch_add(1, Ordering::Relaxed);
        if old > MAX_REFS {
            abort_on_overflow();
        }
        NodeRef(self.0)
    }
}

impl Drop for NodeRef {
    fn drop(&mut self) {
        // memory ordering: Release so every use of the node through this reference happens
        // before the free; the Acquire load below (of the last value of that release
        // sequence) makes the freeing thread see them all. `Arc` uses a fence; a load is
        // equivalent here and ThreadSanitizer understands it.
        if self.refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        self.refs.load(Ordering::Acquire);
        // SAFETY: the count reached zero, so this was the last reference.
        let parent = unsafe { free_node(self.ptr()) };
        release_chain(parent);
    }
}

impl PartialEq for NodeRef {
    fn eq(&self, other: &NodeRef) -> bool {
        self.0 == other.0
    }
}

/// Drops one reference in the middle of a chain release: returns the node's parent if this
/// was the last reference, so the caller can continue without recursing.
pub(crate) fn release_step(node: NodeRef) -> Option<Context> {
    let node = ManuallyDrop::new(node);
    // memory ordering: as in `NodeRef::drop`.
    if node.refs.fetch_sub(1, Ordering::Release) != 1 {
        return None;
    }
    node.refs.load(Ordering::Acquire);
    // SAFETY: the count reached zero, so this was the last reference.
    Some(unsafe { free_node(node.ptr()) })
}

/// Unlinks a node whose count reached zero, releases its timer and frees it, returning its
/// parent for the caller to release.
///
/// # Safety
///
/// The node's count must have reached zero (no other handle exists), and this is called
/// once per node.
unsafe fn free_node(ptr: NodePtr) -> Context {
    // SAFETY: the node is alive until the `Box::from_raw` below; only shared references are
    // formed until the scope no longer lists it.
    let node = unsafe { ptr.get() };
    if let Some(scope) = node.parent.scope() {
        let mut guard = scope.inner.lock();
        let slot = node.slot.load(Ordering::Relaxed);
        if slot != NOT_LINKED {
            if let Some(inner) = guard.as_mut() {
                let slot = slot as usize;
                inner.children.swap_remove(slot);
                if let Some(moved) = inner.children.get(slot) {
                    // SAFETY: listed in `children` and the scope's lock is held.
                    unsafe { moved.get() }.slot.store(slot as u32, Ordering::Relaxed);
                }
            }
        }
    }
    // The timer can no longer reach this node once the waker's pointer is cleared; its key
    // is released on the clock (user code) only after the node is freed, so a panicking
    // `Clock::cancel` cannot leave a half-freed node behind.
    let timer = node.meta.as_ref().and_then(|meta| {
        *meta.waker.node.lock() = None;
        let key = node.inner.lock().as_mut().and_then(|inner| inner.timer.take())?;
        Some((meta.clock.clone(), key))
    });
    // SAFETY: allocated by `Box` in `new_pair`, unreachable from the scope and from the
    // timer now, and this is the last reference.
    let boxed = unsafe { Box::from_raw(ptr.0.as_ptr()) };
    let CancelNode { parent, .. } = *boxed;
    if let Some((clock, key)) = timer {
        clock.get().cancel(key);
    }
    parent
}

#[cold]
fn abort_on_overflow() -> ! {
    // A panic while panicking aborts, which works without `std`.
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            panic!("cancelctx: reference count overflow");
        }
    }
    let _abort = Abort;
    panic!("cancelctx: reference count overflow");
}

impl CancelNode {
    pub(crate) fn new(parent: Context, meta: Option<Box<Meta>>) -> CancelNode {
        CancelNode {
            refs: AtomicUsize::new(0),
            state: AtomicU32::new(state::LIVE),
            slot: AtomicU32::new(NOT_LINKED),
            inner: Mutex::new(None),
            waiters: WaitList::new(),
            parent,
            meta,
        }
    }

    pub(crate) fn ptr(&self) -> NodePtr {
        NodePtr(NonNull::from(self))
    }

    /// The error, with one atomic load.
    #[inline]
    pub(crate) fn err(&self) -> Option<Error> {
        // memory ordering: Acquire pairs with the Release of the completing compare-exchange,
        // so whoever sees the error also sees what the canceller did before cancelling (and
        // the stored cause).
        state::error_of(self.state.load(Ordering::Acquire))
    }

    /// Locks the node for registering a child, callback or timer. Returns `None` if the node
    /// is done (nothing may be registered then); otherwise LINKS is set, so the completer will
    /// take this lock and see what is registered.
    fn lock_links(&self) -> Result<MutexGuard<'_, Option<Box<Inner>>>, u32> {
        let guard = self.inner.lock();
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if state::is_done(s) {
                return Err(s);
            }
            if s & LINKS != 0 {
                return Ok(guard);
            }
            // memory ordering: AcqRel/Acquire keeps this RMW in the total order of the state
            // word with the completing compare-exchange; the lock orders the data.
            match self.state.compare_exchange_weak(
                s,
                s | LINKS,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(guard),
                Err(actual) => s = actual,
            }
        }
    }

    /// Links a new child into this scope, or marks it done at birth if this scope is done.
    ///
    /// `child` is not shared with any other thread yet.
    pub(crate) fn attach(&self, child: &NodeRef) {
        match self.lock_links() {
            Ok(mut guard) => {
                let inner = guard.get_or_insert_with(Box::default);
                let slot = u32::try_from(inner.children.len())
                    .ok()
                    .filter(|&slot| slot != NOT_LINKED)
                    .expect("cancelctx: more than 4 billion live children of one context");
                child.slot.store(slot, Ordering::Relaxed);
                inner.children.push(child.ptr());
            }
            Err(s) => {
                // Born done: the parent's error, and its cause through INHERITED; FINISHED as
                // it has no subtree (its own children will be born done too).
                child.state.store((s & state::STATUS) | INHERITED | FINISHED, Ordering::Release);
            }
        }
    }

    /// Registers a callback, which takes `me` (a reference keeping this node alive while the
    /// callback is pending). Returns `false` and registers nothing if the node is done.
    pub(crate) fn add_callback(&self, me: NodeRef, callback: &Arc<Callback>) -> bool {
        let Ok(mut guard) = self.lock_links() else { return false };
        let inner = guard.get_or_insert_with(Box::default);
        callback.slot.store(inner.callbacks.len() as u32, Ordering::Relaxed);
        callback.hold(me);
        inner.callbacks.push(callback.clone());
        true
    }

    /// Removes a stopped callback from the list if the node is still live.
    pub(crate) fn remove_callback(&self, callback: &Arc<Callback>) {
        let mut guard = self.inner.lock();
        // If the node is done, the completer has taken (or will take) the list and skips
        // stopped callbacks. Otherwise the list is intact and `slot` is current.
        if state::is_done(self.state.load(Ordering::Acquire)) {
            return;
        }
        if let Some(inner) = guard.as_mut() {
            let slot = callback.slot.load(Ordering::Relaxed) as usize;
            if inner.callbacks.get(slot).is_some_and(|c| Arc::ptr_eq(c, callback)) {
                let removed = inner.callbacks.swap_remove(slot);
                if let Some(moved) = inner.callbacks.get(slot) {
                    moved.slot.store(slot as u32, Ordering::Relaxed);
                }
                drop(guard);
                drop(removed);
            }
        }
    }

    /// Stores a timer key, or returns it if the node is already done (the caller cancels it).
    pub(crate) fn set_timer(&self, key: TimerKey) -> Result<Option<TimerKey>, TimerKey> {
        match self.lock_links() {
            Ok(mut guard) => Ok(guard.get_or_insert_with(Box::default).timer.replace(key)),
            Err(_) => Err(key),
        }
    }

    /// Takes the timer key out of the node: its wake-up has fired, so nobody must cancel it.
    pub(crate) fn take_timer(&self) -> Option<TimerKey> {
        self.inner.lock().as_mut().and_then(|inner| inner.timer.take())
    }

    /// The explicit cause stored by the completer (valid once CAUSE is seen with Acquire).
    fn stored_cause(&self) -> Option<Cause> {
        self.inner.lock().as_ref().and_then(|inner| inner.cause.clone())
    }

    /// The cause: explicit, inherited from the scope that completed this node, or the error.
    pub(crate) fn cause(&self) -> Option<Cause> {
        let mut node = self;
        loop {
            let s = node.state.load(Ordering::Acquire);
            let err = state::error_of(s)?;
            if s & INHERITED != 0 {
                // The scope completed this node after completing itself, so it is done too.
                node = node.parent.scope().expect("an inherited completion has a scope");
                continue;
            }
            if s & CAUSE != 0 {
                return node.stored_cause();
            }
            return Some(alloc::sync::Arc::new(err));
        }
    }

    /// Tries the one `live -> done` transition, adding `bits` (status and flags), and
    /// FINISHED too if the node has no links (no subtree to walk). Returns the previous state
    /// if this call won.
    #[inline]
    fn transition(&self, bits: u32) -> Option<u32> {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if state::is_done(s) {
                return None;
            }
            let finished = if s & LINKS == 0 { FINISHED } else { 0 };
            // memory ordering: Release publishes the cause and everything the canceller did
            // before; Acquire makes the registrations behind WAITERS/LINKS visible.
            match self.state.compare_exchange_weak(
                s,
                s | bits | finished,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(s),
                Err(actual) => s = actual,
            }
        }
    }

    /// Completes this node with `err` (and an explicit cause), then its whole subtree.
    /// Returns `false` if it was already done: the first completion wins.
    ///
    /// Either way, when this returns the node and all its descendants report done: a losing
    /// call waits for the winning walk to mark them (Go's second `cancel` blocks on the
    /// mutex the first holds for the same reason).
    pub(crate) fn complete(&self, err: Error, cause: Option<Cause>) -> bool {
        let status = state::status_of(err);
        let old = match cause {
            None => self.transition(status),
            Some(cause) => {
                // The cause is written before the transition that publishes it, under the
                // lock so that two explicit causes cannot overwrite each other.
                let mut guard = self.inner.lock();
                if state::is_done(self.state.load(Ordering::Relaxed)) {
                    None
                } else {
                    guard.get_or_insert_with(Box::default).cause = Some(cause);
                    let old = self.transition(status | CAUSE);
                    if old.is_none() {
                        // Lost to a lock-free completer: the cause was never published.
                        let unpublished = guard.as_mut().and_then(|inner| inner.cause.take());
                        drop(guard);
                        drop(unpublished);
                    }
                    old
                }
            }
        };
        match old {
            // No waiters and no links: nothing to wake or walk, and the transition already
            // set FINISHED. The common case (a guard dropped on a leaf) ends here.
            Some(old) if old & (WAITERS | LINKS) == 0 => true,
            Some(old) => {
                Walk::new(status).run(self, old);
                true
            }
            None => {
                self.wait_finished();
                false
            }
        }
    }

    /// Waits until the walk that completed this node has marked its whole subtree done.
    ///
    /// Walks up INHERITED completions until a node that is FINISHED (its subtree, which
    /// includes this node's, is done) or the node the walk started from (completed directly),
    /// waits for that one, then marks the nodes it passed FINISHED too (path compression), so
    /// later losers below them return after one load: amortized O(1) per losing cancel.
    pub(crate) fn wait_finished(&self) {
        let mut node = self;
        loop {
            // memory ordering: Acquire pairs with the Release that sets FINISHED (by the walk,
            // by a transition without links, or by an earlier loser), so every transition of
            // the walk is visible once FINISHED is seen.
            let s = node.state.load(Ordering::Acquire);
            if s & FINISHED != 0 {
                break;
            }
            if s & INHERITED == 0 {
                let mut spins = 0;
                while node.state.load(Ordering::Acquire) & FINISHED == 0 {
                    crate::sync::backoff(&mut spins);
                }
                break;
            }
            node = node.parent.scope().expect("an inherited completion has a scope");
        }
        let top = node;
        let mut node = self;
        while !core::ptr::eq(node, top) {
            // memory ordering: Release passes on what this thread acquired from `top`.
            if node.state.fetch_or(FINISHED, Ordering::Release) & FINISHED != 0 {
                break; // another loser compressed the rest of the path
            }
            node = node.parent.scope().expect("an inherited completion has a scope");
        }
    }
}

/// One completion spreading through a subtree: an explicit work list instead of recursion.
///
/// Order of effects: (1) every descendant is marked done, under each node's lock, and the
/// timer keys, callbacks and references to keep are collected; (2) the walk waits for
/// subtrees that another thread completed first and is still walking; (3) FINISHED is set on
/// the first node (nodes without links got it in their transition; losers mark the paths they
/// walk up). Only then does user code run: (4) the timers are released on their clocks, (5)
/// waiters are woken, (6) callbacks run, (7) the references taken for the walk are dropped
/// (which may free nodes and drop user values).
///
/// No user code runs before (3), so user code that cancels or waits on anything in this
/// subtree sees it finished instead of waiting on this walk, and a panic of user code cannot
/// leave the subtree unfinished. Steps (4)-(6) each run isolated: a panicking
/// `Clock::cancel`, task waker or callback skips nothing; the first panic resumes at the end.
///
/// Releasing timers after FINISHED (not while marking) is what makes a concurrent clock move
/// reliable: while the walk marks, every timer of the subtree is still on its clock, so a
/// move to a due deadline fires it, and that losing completion waits for this walk.
struct Walk {
    status: u32,
    /// Nodes completed by this walk that still need a visit, with their previous state.
    work: Vec<(NodeRef, u32)>,
    /// Nodes visited, kept (with their previous state) until the waiters are woken, and their
    /// references until the end: releasing one may drop user values, which must not happen
    /// before FINISHED (user code that cancels in this subtree would wait for this walk).
    visited: Vec<(NodeRef, u32)>,
    /// Children that another thread completed directly and may still be walking.
    foreign: Vec<NodeRef>,
    /// Callbacks this walk claimed, to run after FINISHED.
    callbacks: Vec<Arc<Callback>>,
    /// References that claimed callbacks held on their nodes, dropped last.
    held: Vec<NodeRef>,
    /// Timer keys taken from completed deadline nodes, released after FINISHED. The first
    /// one is kept inline: cancelling a single deadline context then allocates nothing.
    timer: Option<(ClockRef, TimerKey)>,
    timers: Vec<(ClockRef, TimerKey)>,
}

/// One piece of user code a walk runs after FINISHED.
enum Effect<'a> {
    ReleaseTimer(ClockRef, TimerKey),
    Wake(&'a CancelNode),
    Call(Arc<Callback>),
}

impl Walk {
    fn new(status: u32) -> Walk {
        Walk {
            status,
            work: Vec::new(),
            visited: Vec::new(),
            foreign: Vec::new(),
            callbacks: Vec::new(),
            held: Vec::new(),
            timer: None,
            timers: Vec::new(),
        }
    }

    fn run(mut self, first: &CancelNode, old: u32) {
        self.visit(first, old);
        while let Some((node, old)) = self.work.pop() {
            self.visit(&node, old);
            self.visited.push((node, old));
        }
        for node in &self.foreign {
            node.wait_finished();
        }
        // Every node below is done now. Only the first node is marked: nodes without links
        // were marked in their transition, and a loser below marks the path it walked up.
        // memory ordering: Release; see `wait_finished`.
        if old & LINKS != 0 {
            first.state.fetch_or(FINISHED, Ordering::Release);
        }
        let Walk { visited, foreign, mut callbacks, held, timer, timers, .. } = self;
        // Links (`with_linked`) complete their children before any user callback runs, so a
        // linked child ends as part of this completion (as its docs say), whatever the user
        // callbacks do. A stable sort, and only when there is a link: user callbacks keep
        // their order.
        if callbacks.iter().any(|c| c.link) {
            callbacks.sort_by_key(|c| !c.link);
        }
        let first_wake = (old & WAITERS != 0).then_some(first);
        let wakes = first_wake
            .into_iter()
            .chain(visited.iter().filter(|(_, old)| old & WAITERS != 0).map(|(node, _)| &**node));
        let effects = timer
            .into_iter()
            .chain(timers)
            .map(|(clock, key)| Effect::ReleaseTimer(clock, key))
            .chain(wakes.map(Effect::Wake))
            .chain(callbacks.into_iter().map(Effect::Call));
        let panic = crate::panic::for_each_caught(effects, |effect| match effect {
            Effect::ReleaseTimer(clock, key) => {
                clock.get().cancel(key);
                None
            }
            // The wakers run outside the list's lock; their first panic is returned, not
            // resumed, and counts as this effect's panic.
            Effect::Wake(node) => node.waiters.wake_all_caught(),
            Effect::Call(callback) => {
                callback.run_claimed();
                None
            }
        });
        // Last, the references (whose release may drop user values), then the first panic.
        drop((visited, foreign, held));
        crate::panic::resume(panic);
    }

    fn visit(&mut self, node: &CancelNode, old: u32) {
        if old & LINKS == 0 {
            return;
        }
        let taken = node.inner.lock().as_mut().map(|inner| {
            let children = core::mem::take(&mut inner.children);
            for &child_ptr in &children {
                // SAFETY: listed in `children` and this node's lock is held.
                let child = unsafe { child_ptr.get() };
                child.slot.store(NOT_LINKED, Ordering::Relaxed);
                // Both `upgrade`s below are under this node's lock. `None` means the child is
                // being released: no handle is left, so it has no waiters or callbacks (they
                // hold references), nobody is walking it, and it releases its own timer.
                match child.transition(self.status | INHERITED) {
                    Some(child_old) if child_old & (WAITERS | LINKS) != 0 => {
                        // SAFETY: listed in `children`, under this node's lock.
                        if let Some(child) = unsafe { NodeRef::upgrade(child_ptr) } {
                            self.work.push((child, child_old));
                        }
                    }
                    Some(_) => {}
                    None => {
                        // Done already, by its own guard or timer: that walk may still be
                        // running below it.
                        let s = child.state.load(Ordering::Acquire);
                        if s & (INHERITED | FINISHED) == 0 {
                            // SAFETY: listed in `children`, under this node's lock.
                            if let Some(child) = unsafe { NodeRef::upgrade(child_ptr) } {
                                self.foreign.push(child);
                            }
                        }
                    }
                }
            }
            // Claim the callbacks under the lock: from here on `stop` returns false for them.
            for callback in core::mem::take(&mut inner.callbacks) {
                if let Some(held) = callback.claim_for_run() {
                    self.held.extend(held);
                    self.callbacks.push(callback);
                }
            }
            inner.timer.take()
        });
        if let (Some(Some(key)), Some(meta)) = (taken, &node.meta) {
            let taken = (meta.clock.clone(), key);
            match self.timer {
                None => self.timer = Some(taken),
                Some(_) => self.timers.push(taken),
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn cancel_only_node_is_64_bytes() {
        // Beyond the allocator's header, a `with_cancel` child costs exactly this much (plus
        // one pointer in its parent's `children`).
        assert!(core::mem::size_of::<CancelNode>() <= 64, "{}", core::mem::size_of::<CancelNode>());
    }
}
