//! A cancellable node: its state word, waiter list, children, callbacks and timer, and the
//! reference count that keeps it alive.
//!
//! Every `with_cancel`/`with_deadline` context is one heap-allocated [`CancelNode`] shared by
//! its `Context` clones, its `CancelGuard` and its pending `after_func` registrations through
//! [`NodeRef`], a
//! reference-counted pointer written here rather than `Arc` for three reasons:
//!
//! - the count lives in the state word, so a guard's drop cancels and releases in one
//!   compare-exchange, and the node stays at 64 bytes (see the size test at the bottom);
//! - the release path unlinks the node from its parent *before* the memory is freed, while
//!   the parent may still be reading the node under the parent's lock, and only ever through
//!   shared references (an `Arc`'s `Drop` would hold `&mut` to the node meanwhile);
//! - dropping the last handle of a long chain frees the chain in a loop, not by recursion.
//!
//! # How children are linked: on demand
//!
//! A node's *scope* is its nearest cancellable ancestor (value nodes are skipped; never-done
//! ancestors end the search). A `with_cancel` child starts DETACHED: it is in no list, its
//! `link` word holds its scope's address, and its readers read the scope's word too
//! ([`CancelNode::is_done`], [`CancelNode::err`]); the first to see the scope done settles
//! the child (one compare-exchange copying the completion). This is sound because the scope
//! of a detached node is always linked itself (or has no scope): [`CancelNode::adopt`] links
//! the scope before giving it a child. A detached node is linked ([`CancelNode::ensure_linked`])
//! before anything is registered on it: a child, a waiter, a callback or a timer. Deadline
//! nodes are linked at birth.
//!
//! Linked children sit in the scope's `Inner::children` as raw pointers, and each remembers
//! its index in `link`. Both are only touched under the scope's lock, which gives the key
//! invariant:
//!
//! > A pointer in `children` is valid while the scope's lock is held.
//!
//! because a child whose count drops to zero must take that same lock to remove itself
//! ([`free_node`]) before it is freed. Removal is a `swap_remove` that fixes the moved child's
//! index: O(1), so a parent that lives forever with many short-lived children keeps
//! constant memory. A node in no list frees without the lock.
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
use crate::state::{self, CAUSE, DETACHED, FINISHED, INHERITED, LINKS, REF, WAITERS};
use crate::sync::{Arc, AtomicUsize, Mutex, MutexGuard, Ordering};
use crate::time::{ClockRef, Instant, TimerKey};
use crate::timer::TimerWaker;
use crate::waiters::WaitList;

/// `link` of a node that is in no `children` list and has no scope pointer to keep.
const NOT_LINKED: usize = usize::MAX;

/// What a node's `link` word holds (see the field).
enum Link {
    /// In its scope's `children`, at this index.
    Slot(usize),
    /// DETACHED: the scope stored at birth.
    Scope(NodePtr),
    /// In no list.
    None,
}

impl Link {
    #[inline]
    fn decode(word: usize) -> Link {
        match word {
            NOT_LINKED => Link::None,
            word if word & 1 == 1 => Link::Slot(word >> 1),
            // An even word is a node pointer (nodes are at least 8-aligned), never null. The
            // `as` casts expose the pointer's provenance when stored (`adopt`) and take it back
            // here (`expose_provenance` / `with_exposed_provenance`, which MSRV 1.82 lacks).
            word => match NonNull::new(word as *mut CancelNode) {
                Some(ptr) => Link::Scope(NodePtr(ptr)),
                None => Link::None,
            },
        }
    }

    fn slot(slot: usize) -> usize {
        (slot << 1) | 1
    }
}

/// Counts past this abort, like `Arc` does: they can only come from leaked handles.
const MAX_REFS: usize = state::count(usize::MAX) / 2;

pub(crate) struct CancelNode {
    /// The state word (see `state.rs`), which also counts the handles: `Context`s, the
    /// `CancelGuard`, one per pending `after_func` registration, and references a completion
    /// walk holds while it works.
    pub(crate) state: AtomicUsize,
    /// Where the node is linked ([`Link`]): its index in the scope's `children` (odd:
    /// `index << 1 | 1`), or, while DETACHED, the scope's address (even), so that reading a
    /// detached node costs one extra load instead of a walk through the parent's handle, or
    /// `NOT_LINKED`. Indices are written under the *scope's* lock. A reader of a detached node
    /// may find an index instead of the address if the node was linked meanwhile; the
    /// address stays valid either way (the parent keeps the scope alive).
    link: AtomicUsize,
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

/// What is registered on a node, allocated on first use. Kept at 16 bytes (the allocator's
/// smallest chunk): the nodes of a chain, which only ever link one child, allocate no more.
#[derive(Default)]
pub(crate) struct Inner {
    /// The first linked child (index 0).
    first: Option<NodePtr>,
    /// Everything else, allocated on its own first use.
    extra: Option<Box<Extra>>,
}

#[derive(Default)]
struct Extra {
    /// Linked children after the first (index `i` is `more[i - 1]`). Empty while `first` is
    /// `None`: removal keeps the sequence dense.
    more: Vec<NodePtr>,
    callbacks: Vec<Arc<Callback>>,
    cause: Option<Cause>,
}

impl Inner {
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn more(&self) -> &[NodePtr] {
        self.extra.as_ref().map_or(&[], |extra| &extra.more)
    }

    /// Appends a linked child, recording its index for O(1) removal. Under the scope's lock.
    fn push_child(&mut self, child: &CancelNode) {
        let index = match self.first {
            None => {
                self.first = Some(child.ptr());
                0
            }
            Some(_) => {
                let more = &mut self.extra().more;
                more.push(child.ptr());
                more.len()
            }
        };
        // memory ordering: Release, so that a reader that finds the index (Acquire, in
        // `scope_is_done`) also finds DETACHED cleared, which happened before.
        child.link.store(Link::slot(index), Ordering::Release);
    }

    /// Removes the child at `index` by moving the last one there; returns the moved child
    /// (whose index the caller updates).
    fn swap_remove_child(&mut self, index: usize) -> Option<NodePtr> {
        let last = match self.extra.as_mut().and_then(|extra| extra.more.pop()) {
            Some(last) => last,
            None => {
                // Only `first` was left: it is the one removed.
                self.first = None;
                return None;
            }
        };
        let last_index = self.more().len() + 1;
        if index == last_index {
            return None;
        }
        match index {
            0 => self.first = Some(last),
            i => self.extra().more[i - 1] = last,
        }
        Some(last)
    }

    /// Takes every linked child out (the completion walk).
    fn take_children(&mut self) -> impl Iterator<Item = NodePtr> {
        let more = self.extra.as_mut().map(|extra| core::mem::take(&mut extra.more));
        self.first.take().into_iter().chain(more.into_iter().flatten())
    }
}

/// The state of a child born under a done scope: the scope's error, and its cause through
/// INHERITED; FINISHED as it has no subtree (its own children will be born done too).
fn born_done(scope_state: usize) -> usize {
    (scope_state & state::STATUS) | INHERITED | FINISHED
}

/// What a deadline node knows about its deadline.
pub(crate) struct Meta {
    pub(crate) deadline: Instant,
    pub(crate) clock: ClockRef,
    pub(crate) cause: Option<Cause>,
    pub(crate) waker: alloc::sync::Arc<TimerWaker>,
    /// The pending timer's key. Stored while holding the node's lock with LINKS set (so the
    /// completer finds it), here rather than in `Inner` so that a deadline node with nothing
    /// else registered allocates no `Inner`.
    pub(crate) timer: Mutex<Option<TimerKey>>,
}

impl Meta {
    pub(crate) fn new(
        deadline: Instant,
        clock: ClockRef,
        cause: Option<Cause>,
        waker: alloc::sync::Arc<TimerWaker>,
    ) -> Meta {
        Meta { deadline, clock, cause, waker, timer: Mutex::new(None) }
    }
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
        node.state.store(2 * REF, Ordering::Relaxed);
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
        let mut n = node.state.load(Ordering::Relaxed);
        loop {
            if state::count(n) == 0 {
                return None;
            }
            if state::count(n) > MAX_REFS {
                abort_on_overflow();
            }
            // memory ordering: Relaxed like `Arc::clone`; the caller's lock already orders
            // this with the release path, which re-checks nothing after reaching zero.
            match node.state.compare_exchange_weak(n, n + REF, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(NodeRef(ptr.0)),
                Err(actual) => n = actual,
            }
        }
    }
}

impl NodeRef {
    /// Drops this reference unless it is the last one, which is handed back.
    fn release_unless_last(self) -> Result<(), NodeRef> {
        let this = ManuallyDrop::new(self);
        let mut s = this.state.load(Ordering::Relaxed);
        while state::count(s) > 1 {
            // memory ordering: Release, as in `drop`; this is never the freeing thread.
            match this.state.compare_exchange_weak(s, s - REF, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => s = actual,
            }
        }
        Err(ManuallyDrop::into_inner(this))
    }

    /// Completes the node with `err` (no explicit cause) and drops this reference: what a
    /// guard's drop does. For a leaf with nothing registered (the common case: a scope that
    /// ends without anyone waiting on it) both are one compare-exchange on the state word.
    pub(crate) fn complete_and_release(self, err: Error) {
        let bits = state::status_of(err) | FINISHED;
        // memory ordering: Relaxed: the compare-exchange below re-reads the word.
        let mut s = self.state.load(Ordering::Relaxed);
        if state::is_done(s) && s & FINISHED != 0 {
            // Done, and its subtree too: cancelling is a no-op, only the release is left.
            return drop(self);
        }
        loop {
            if s & (state::STATUS | WAITERS | LINKS) != 0
                || (s & DETACHED != 0 && self.scope_is_done())
            {
                // Done already, something to wake or walk, or a scope that completed first:
                // the general path.
                self.complete(err, None);
                return drop(self);
            }
            // memory ordering: Release, as both a completion (publishes the canceller's
            // writes) and a reference release (every use of the node happens before the
            // free); the Acquire load below is the freeing thread's half, as in `drop`.
            match self.state.compare_exchange_weak(
                s,
                ((s & !DETACHED) | bits) - REF,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => s = actual,
            }
        }
        let this = ManuallyDrop::new(self);
        if state::count(s) == 1 {
            this.state.load(Ordering::Acquire);
            // SAFETY: the count reached zero, so this was the last reference.
            let parent = unsafe { free_node(this.ptr()) };
            release_chain(parent);
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
        let old = self.state.fetch_add(REF, Ordering::Relaxed);
        if state::count(old) > MAX_REFS {
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
        if state::count(self.state.fetch_sub(REF, Ordering::Release)) != 1 {
            return;
        }
        self.state.load(Ordering::Acquire);
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
    if state::count(node.state.fetch_sub(REF, Ordering::Release)) != 1 {
        return None;
    }
    node.state.load(Ordering::Acquire);
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
    // A node that was never linked (a leaf that stayed detached) or was drained by its
    // scope's walk is in no list: no lock to take. `NOT_LINKED` is final once read here: only
    // a handle holder links a node (and this was the last handle; the count's acquire makes
    // its write visible), and only the scope's walk, under the lock, unlinks one, as its
    // last access to the node.
    // memory ordering: Acquire pairs with the Release store of `NOT_LINKED` by the scope's
    // walk (its last access to this node), so the walk is done with the node before the free.
    let linked = matches!(Link::decode(node.link.load(Ordering::Acquire)), Link::Slot(_));
    if let Some(scope) = node.parent.scope().filter(|_| linked) {
        let mut guard = scope.inner.lock();
        if let (Link::Slot(slot), Some(inner)) =
            (Link::decode(node.link.load(Ordering::Relaxed)), guard.as_mut())
        {
            if let Some(moved) = inner.swap_remove_child(slot) {
                // SAFETY: listed in `children` and the scope's lock is held.
                unsafe { moved.get() }.link.store(Link::slot(slot), Ordering::Relaxed);
            }
        }
    }
    // The timer can no longer reach this node once the waker's pointer is cleared; its key
    // is released on the clock (user code) only after the node is freed, so a panicking
    // `Clock::cancel` cannot leave a half-freed node behind.
    let timer = node.meta.as_ref().and_then(|meta| {
        *meta.waker.node.lock() = None;
        let key = meta.timer.lock().take()?;
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
            state: AtomicUsize::new(state::LIVE),
            link: AtomicUsize::new(NOT_LINKED),
            inner: Mutex::new(None),
            waiters: WaitList::new(),
            parent,
            meta,
        }
    }

    pub(crate) fn ptr(&self) -> NodePtr {
        NodePtr(NonNull::from(self))
    }

    /// The error: one atomic load, two for a detached node (its own word and its scope's).
    #[inline]
    pub(crate) fn err(&self) -> Option<Error> {
        // memory ordering: Acquire pairs with the Release of the completing compare-exchange,
        // so whoever sees the error also sees what the canceller did before cancelling (and
        // the stored cause).
        let s = self.state.load(Ordering::Acquire);
        if s & DETACHED == 0 {
            return state::error_of(s);
        }
        self.err_detached()
    }

    /// Whether the node is done. A detached node whose scope is done is settled first (see
    /// [`Self::settled`]), so that `true` is final.
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        let s = self.state.load(Ordering::Acquire);
        if s & (state::STATUS | DETACHED) != DETACHED {
            return state::is_done(s);
        }
        // A `true` must settle the node as `err` does: otherwise a link racing the scope's
        // completion could make the node live (linked, not yet marked by the scope's walk)
        // after this returned `true` (loom model 21b).
        self.scope_is_done() && state::is_done(self.settled())
    }

    /// Whether the scope of a detached node is done: its word is authoritative (a node with
    /// a detached child is linked or has no scope, see [`Self::adopt`]).
    #[inline]
    fn scope_is_done(&self) -> bool {
        // memory ordering: Acquire pairs with the Release that stores an index after linking.
        match Link::decode(self.link.load(Ordering::Acquire)) {
            Link::Scope(scope) => {
                // SAFETY: the scope stored at birth; this node's `parent` keeps it alive.
                let scope = unsafe { scope.get() };
                // memory ordering: Acquire, as in `err`.
                state::is_done(scope.state.load(Ordering::Acquire))
            }
            // Linked since the state was read (and DETACHED is clear, see the Acquire above):
            // the node's own word is authoritative now.
            Link::Slot(_) | Link::None => state::is_done(self.state.load(Ordering::Acquire)),
        }
    }

    fn err_detached(&self) -> Option<Error> {
        if !self.scope_is_done() {
            return None;
        }
        state::error_of(self.settled())
    }

    /// The state, after copying the scope's completion into a live detached node whose scope
    /// is done. The copy is a compare-exchange: it and the node's own completion are ordered
    /// on this word, so whichever comes first is the error every reader reports from then on
    /// (first completion wins, and `err()` never changes once `Some`).
    fn settled(&self) -> usize {
        // memory ordering: Acquire, as in `err`.
        let mut s = self.state.load(Ordering::Acquire);
        while s & DETACHED != 0 {
            let Some(scope) = self.parent.scope() else { break };
            let scope_state = scope.state.load(Ordering::Acquire);
            if !state::is_done(scope_state) {
                break;
            }
            // A detached node has no children, waiters, callbacks or timer (registering any
            // of them links it first): nothing to walk, so FINISHED at once.
            let settled = (s & !DETACHED) | (scope_state & state::STATUS) | INHERITED | FINISHED;
            // memory ordering: AcqRel: Release passes on what this thread acquired from the
            // scope (its cause) to readers of this word; Acquire as in `err` on failure.
            match self.state.compare_exchange(s, settled, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return settled,
                // Completed by its own guard, or linked meanwhile: look again.
                Err(actual) => s = actual,
            }
        }
        s
    }

    /// Links a detached node into its scope's `children` before anything is registered on
    /// it (a child, a waiter, a callback, a timer), so that the scope's completion reaches
    /// it. If the scope is done instead, the node settles as completed by it.
    #[inline]
    pub(crate) fn ensure_linked(&self) {
        // memory ordering: Relaxed: DETACHED is only cleared under the scope's lock, which
        // `link` takes and which orders everything after it.
        if self.state.load(Ordering::Relaxed) & DETACHED != 0 {
            self.link();
        }
    }

    #[cold]
    fn link(&self) {
        let scope = self.parent.scope().expect("a detached node has a scope");
        let Ok(mut guard) = scope.lock_links() else {
            self.settled();
            return;
        };
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & DETACHED == 0 {
                // Done (it needs no link) or linked by another handle holder meanwhile.
                return;
            }
            // memory ordering: AcqRel/Acquire keeps this in the total order of the word with
            // the node's own completion; the scope's lock orders the list.
            match self.state.compare_exchange_weak(
                s,
                s & !DETACHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => s = actual,
            }
        }
        guard.get_or_insert_with(Box::default).push_child(self);
    }

    /// Sets WAITERS (after a listener was inserted) on a linked node, linking it first.
    /// Returns the previous state: if it is done, the completer will not notify.
    pub(crate) fn add_waiters_flag(&self) -> usize {
        self.ensure_linked();
        // memory ordering: AcqRel: Release makes the listener's insertion visible to the
        // completer that acquires this value; Acquire makes a done state's data visible.
        self.state.fetch_or(WAITERS, Ordering::AcqRel)
    }

    /// Locks the node for registering a child, callback or timer. Returns `None` if the node
    /// is done (nothing may be registered then); otherwise LINKS is set, so the completer will
    /// take this lock and see what is registered.
    fn lock_links(&self) -> Result<MutexGuard<'_, Option<Box<Inner>>>, usize> {
        self.ensure_linked();
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
    /// Deadline nodes are linked at birth, so that the scope's cancel releases their timers
    /// at once (as Go stops a child's timer).
    ///
    /// `child` is not shared with any other thread yet.
    pub(crate) fn attach(&self, child: &NodeRef) {
        match self.lock_links() {
            Ok(mut guard) => guard.get_or_insert_with(Box::default).push_child(child),
            Err(s) => child.set_birth_flags(born_done(s)),
        }
    }

    /// Makes this scope the scope of a new `with_cancel` child without linking it: the child
    /// starts DETACHED and is linked only when something is registered on it (attach on
    /// demand), so a leaf that is created, maybe cancelled, and dropped never takes this
    /// scope's lock. The invariant that makes a detached child's reads correct: its scope is
    /// linked (or has no scope), so the scope's own word is authoritative.
    ///
    /// `child` is not shared with any other thread yet.
    #[inline]
    pub(crate) fn adopt(&self, child: &NodeRef) {
        self.ensure_linked();
        // memory ordering: Acquire, as in `err`. Relaxed for the child's word: the child is
        // published to other threads only through synchronization of the caller's own.
        let s = self.state.load(Ordering::Acquire);
        if state::is_done(s) {
            child.set_birth_flags(born_done(s));
        } else {
            child.link.store(self.ptr().0.as_ptr() as usize, Ordering::Relaxed);
            child.set_birth_flags(DETACHED);
        }
    }

    /// Sets the flags of a node that no other thread can see yet (its count is kept).
    fn set_birth_flags(&self, flags: usize) {
        let count = self.state.load(Ordering::Relaxed) & !state::FLAGS;
        self.state.store(count | flags, Ordering::Relaxed);
    }

    /// Registers a callback, which takes `me` (a reference keeping this node alive while the
    /// callback is pending). Returns `false` and registers nothing if the node is done.
    pub(crate) fn add_callback(&self, me: NodeRef, callback: &Arc<Callback>) -> bool {
        let Ok(mut guard) = self.lock_links() else { return false };
        let extra = guard.get_or_insert_with(Box::default).extra();
        callback.slot.store(extra.callbacks.len() as u32, Ordering::Relaxed);
        callback.hold(me);
        extra.callbacks.push(callback.clone());
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
        if let Some(extra) = guard.as_mut().and_then(|inner| inner.extra.as_mut()) {
            let slot = callback.slot.load(Ordering::Relaxed) as usize;
            if extra.callbacks.get(slot).is_some_and(|c| Arc::ptr_eq(c, callback)) {
                let removed = extra.callbacks.swap_remove(slot);
                if let Some(moved) = extra.callbacks.get(slot) {
                    moved.slot.store(slot as u32, Ordering::Relaxed);
                }
                drop(guard);
                drop(removed);
            }
        }
    }

    /// Stores a timer key, or returns it if the node is already done (the caller cancels it).
    pub(crate) fn set_timer(&self, key: TimerKey) -> Result<Option<TimerKey>, TimerKey> {
        let Some(meta) = &self.meta else { return Err(key) };
        match self.lock_links() {
            // Under the node's lock (the completer takes it before the key), with LINKS set.
            Ok(_guard) => Ok(meta.timer.lock().replace(key)),
            Err(_) => Err(key),
        }
    }

    /// Takes the timer key out of the node: its wake-up has fired, so nobody must cancel it.
    pub(crate) fn take_timer(&self) -> Option<TimerKey> {
        self.meta.as_ref().and_then(|meta| meta.timer.lock().take())
    }

    /// The explicit cause stored by the completer (valid once CAUSE is seen with Acquire).
    fn stored_cause(&self) -> Option<Cause> {
        let guard = self.inner.lock();
        guard.as_ref().and_then(|inner| inner.extra.as_ref()).and_then(|extra| extra.cause.clone())
    }

    /// The cause: explicit, inherited from the scope that completed this node, or the error.
    pub(crate) fn cause(&self) -> Option<Cause> {
        let mut node = self;
        loop {
            let s = node.settled();
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
    fn transition(&self, bits: usize) -> Option<usize> {
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
                (s & !DETACHED) | bits | finished,
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
        // A detached node whose scope is already done takes the scope's completion first
        // (a child of a done parent is done: this cancel comes second and loses).
        if self.state.load(Ordering::Relaxed) & DETACHED != 0 {
            self.settled();
        }
        let old = match cause {
            None => self.transition(status),
            Some(cause) => {
                // The cause is written before the transition that publishes it, under the
                // lock so that two explicit causes cannot overwrite each other.
                let mut guard = self.inner.lock();
                if state::is_done(self.state.load(Ordering::Relaxed)) {
                    None
                } else {
                    guard.get_or_insert_with(Box::default).extra().cause = Some(cause);
                    let old = self.transition(status | CAUSE);
                    if old.is_none() {
                        // Lost to a lock-free completer: the cause was never published.
                        let unpublished = guard
                            .as_mut()
                            .and_then(|inner| inner.extra.as_mut())
                            .and_then(|extra| extra.cause.take());
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
    status: usize,
    /// Nodes completed by this walk that still need a visit, with their previous state.
    work: Vec<(NodeRef, usize)>,
    /// Nodes visited, kept (with their previous state) until the waiters are woken, and their
    /// references until the end: releasing one may drop user values, which must not happen
    /// before FINISHED (user code that cancels in this subtree would wait for this walk).
    visited: Vec<(NodeRef, usize)>,
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
    fn new(status: usize) -> Walk {
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

    fn run(mut self, first: &CancelNode, old: usize) {
        self.visit(first, old);
        while let Some((node, old)) = self.work.pop() {
            self.visit(&node, old);
            // Keep the reference if the node has waiters to wake, or if it is the last one
            // (its release would free the node and run user `Drop`s before FINISHED).
            // Otherwise release it now: a deep chain then needs no million-entry list.
            if old & WAITERS != 0 {
                self.visited.push((node, old));
            } else if let Err(node) = node.release_unless_last() {
                self.visited.push((node, old));
            }
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

    fn visit(&mut self, node: &CancelNode, old: usize) {
        if old & LINKS == 0 {
            return;
        }
        let mut guard = node.inner.lock();
        if let Some(inner) = guard.as_mut() {
            for child_ptr in inner.take_children() {
                // SAFETY: listed in `children` and this node's lock is held.
                let child = unsafe { child_ptr.get() };
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
                // Unlinked: the last access to the child under this lock. Its release path
                // may free it without the lock as soon as it reads this (loom model 24).
                // memory ordering: Release pairs with the Acquire load in `free_node`, so
                // every access above happens before the free.
                child.link.store(NOT_LINKED, Ordering::Release);
            }
            // Claim the callbacks under the lock: from here on `stop` returns false for them.
            if let Some(extra) = inner.extra.as_mut() {
                for callback in core::mem::take(&mut extra.callbacks) {
                    if let Some(held) = callback.claim_for_run() {
                        self.held.extend(held);
                        self.callbacks.push(callback);
                    }
                }
            }
        }
        // The timer key is taken under the node's lock too (see `set_timer`).
        let key = node.meta.as_ref().and_then(|meta| meta.timer.lock().take());
        drop(guard);
        if let (Some(key), Some(meta)) = (key, &node.meta) {
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
        // A chain's nodes each link one child: that costs this much more, once per node.
        assert!(core::mem::size_of::<Inner>() <= 16, "{}", core::mem::size_of::<Inner>());
    }
}
