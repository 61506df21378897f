//! A context's waiter list: the `done()` futures and blocking waits of one `CancelNode`.
//!
//! Not event-listener (which the crate's other waiters use, see `crate::relay`), for two
//! reasons. Memory: event-listener allocates its list on the first listen and boxes every
//! listener, and its wakers run under its list lock, so each waiter also needed a relay
//! waker: three allocations for the first `done()` of a context. Here the list head is one
//! word inline in the node and each waiter owns one boxed [`Entry`]: one allocation. Wake-up:
//! the completer takes the wakers out under the list's lock, a batch at a time, and wakes
//! them after releasing it, so a woken thread or task never contends with the completer for
//! the lock, and a task waker that panics or re-enters (polls or drops another waiter of the
//! same list inline) finds the lock free.
//!
//! # The list
//!
//! [`WaitList`] is one word: the first entry's address, with bit 0 set while a thread holds
//! the list (a spin lock taken with `fetch_or`, held for a few pointer moves: never user
//! code, never a waker call or drop). Entries are doubly linked; every field of an entry is read and written only
//! under the lock of the list it is linked into (or was linked into), which is what makes
//! sharing them sound. An entry is linked by its [`Registration`] and unlinked either by it
//! (the future was dropped or resolved) or by the completer, which takes the waker; an entry
//! that is no longer linked tells its registration that it was woken.
//!
//! # No lost wake-up
//!
//! The state word's protocol (`crate::state`) is unchanged: a waiter links its entry (under
//! the lock, released with Release ordering), *then* `fetch_or(WAITERS)`. If the completing
//! compare-exchange comes first, the `fetch_or` sees the done status and the waiter resolves
//! (and unlinks). Otherwise the completer reads WAITERS, and its acquire of that value
//! makes the insertion visible to the lock it takes next: it finds the entry and wakes it.
//! Entries linked while the completer drains are drained too (their owners also see the
//! done status, so a wake there is merely redundant); the drain ends when the list is empty.
//!
//! # Lifetime
//!
//! A registration belongs to a future or a blocking wait that keeps the node alive (it holds
//! the context), and it unlinks its entry before the entry is freed; the futures declare the
//! registration before the context so that it is dropped first. A leaked registration
//! (`mem::forget` of a future) leaks its entry, which then stays valid.

use alloc::boxed::Box;
use core::cell::Cell;
use core::fmt;
use core::ptr::{self, NonNull};
use core::task::Waker;

#[cfg(not(loom))]
use crate::sync::{AtomicUsize, Ordering};

/// Bit 0 of the head word: the list is locked.
#[cfg(not(loom))]
const LOCKED: usize = 1;

/// Wakers taken out per lock hold while draining (the batch lives on the stack).
const BATCH: usize = 32;

/// The head of a node's waiter list; see the module docs.
pub(crate) struct WaitList {
    /// The first entry's address (0 when empty), `| LOCKED` while locked. An integer, not an
    /// `AtomicPtr`, for `fetch_or`; the entries' addresses are exposed (`as` casts).
    #[cfg(not(loom))]
    head: AtomicUsize,
    #[cfg(loom)]
    head: loom::sync::Mutex<usize>,
}

/// One waiter's node in the list. `Entry` is at least 8-aligned, so bit 0 of its address is
/// free for `LOCKED`.
#[repr(align(8))]
pub(crate) struct Entry {
    prev: Cell<*mut Entry>,
    next: Cell<*mut Entry>,
    /// `true` while in the list.
    linked: Cell<bool>,
    /// The waker to wake; taken by the drain.
    waker: Cell<Option<Waker>>,
}

// SAFETY: every field of an `Entry` is accessed only under the lock of the `WaitList` its
// `Registration` links it into (by that registration, and by the completer that drains the
// list); the lock's Acquire/Release orders those accesses between threads. The `Waker` it
// holds is `Send + Sync`.
unsafe impl Send for Entry {}
// SAFETY: as above.
unsafe impl Sync for Entry {}

/// The list while locked: the head as it will be stored back on unlock.
struct Locked<'a> {
    #[cfg_attr(loom, allow(dead_code))]
    list: &'a WaitList,
    head: *mut Entry,
    #[cfg(loom)]
    guard: loom::sync::MutexGuard<'a, usize>,
}

impl WaitList {
    pub(crate) fn new() -> Self {
        #[cfg(not(loom))]
        return WaitList { head: AtomicUsize::new(0) };
        #[cfg(loom)]
        return WaitList { head: loom::sync::Mutex::new(0) };
    }

    #[cfg(not(loom))]
    fn lock(&self) -> Locked<'_> {
        let mut spins = 0;
        loop {
            // memory ordering: Acquire pairs with the Release in `Locked::drop`: the previous
            // holder's writes to the list and its entries are visible.
            let old = self.head.fetch_or(LOCKED, Ordering::Acquire);
            if old & LOCKED == 0 {
                return Locked { list: self, head: old as *mut Entry };
            }
            // Test before setting again: spin on a load, not on writes to the shared line.
            while self.head.load(Ordering::Relaxed) & LOCKED != 0 {
                crate::sync::backoff(&mut spins);
            }
        }
    }

    /// Under loom the spin lock is a loom mutex (as `crate::sync::Mutex` is for the spin lock
    /// it uses without `std`): loom cannot model spin locks (its model lets a spinning load
    /// read an old value forever, and every spinning read-modify-write adds to the atomic's
    /// history), so the models check the list and the wake-up protocol, not the lock.
    #[cfg(loom)]
    fn lock(&self) -> Locked<'_> {
        let guard = self.head.lock().unwrap();
        let head = *guard as *mut Entry;
        Locked { list: self, head, guard }
    }

    /// Wakes every waiter in the list, each after the lock is released and under
    /// `catch_unwind` (std); returns the first panic of those wakers (for the completion
    /// walk to resume once it is done).
    pub(crate) fn wake_all_caught(&self) -> Option<crate::panic::Payload> {
        let mut first_panic = None;
        loop {
            let mut batch: [Option<Waker>; BATCH] = Default::default();
            let mut filled = 0;
            let more = {
                let mut list = self.lock();
                while filled < BATCH {
                    let Some(entry) = NonNull::new(list.head) else { break };
                    // SAFETY: a linked entry is valid while the list is locked: its owner must
                    // take this lock to unlink it before freeing it (module docs).
                    let entry = unsafe { entry.as_ref() };
                    list.unlink(entry);
                    // An entry drained before its waiter set a waker has none: its waiter
                    // finds it drained and resolves by itself.
                    if let Some(waker) = entry.waker.take() {
                        batch[filled] = Some(waker);
                        filled += 1;
                    }
                }
                !list.head.is_null()
            };
            // By reference, and only the filled part: moving the array into an iterator
            // would copy all of it (a third of a one-waiter cancel's instructions).
            let wakers = batch[..filled].iter_mut().filter_map(Option::take);
            let panic = crate::panic::for_each_caught(wakers, Waker::wake);
            if first_panic.is_none() {
                first_panic = panic;
            }
            if !more {
                return first_panic;
            }
        }
    }
}

impl Default for WaitList {
    fn default() -> Self {
        WaitList::new()
    }
}

impl Drop for WaitList {
    fn drop(&mut self) {
        // Registrations keep the node alive and unlink before they end, so only a leaked one
        // (its entry leaked with it) can still be here: nothing to free.
        #[cfg(not(loom))]
        debug_assert!(
            self.head.load(Ordering::Relaxed) & LOCKED == 0,
            "a waiter list dropped while locked"
        );
    }
}

impl Locked<'_> {
    /// Links `entry` at the head.
    fn push(&mut self, entry: &Entry) {
        let ptr = ptr::from_ref(entry).cast_mut();
        entry.prev.set(ptr::null_mut());
        entry.next.set(self.head);
        if let Some(next) = NonNull::new(self.head) {
            // SAFETY: a linked entry, valid under the lock (module docs).
            unsafe { next.as_ref() }.prev.set(ptr);
        }
        entry.linked.set(true);
        self.head = ptr;
    }

    /// Unlinks `entry`, which must be linked into this list.
    fn unlink(&mut self, entry: &Entry) {
        debug_assert!(entry.linked.get());
        let (prev, next) = (entry.prev.get(), entry.next.get());
        match NonNull::new(prev) {
            // SAFETY: a linked entry, valid under the lock (module docs).
            Some(prev) => unsafe { prev.as_ref() }.next.set(next),
            None => self.head = next,
        }
        if let Some(next) = NonNull::new(next) {
            // SAFETY: as above.
            unsafe { next.as_ref() }.prev.set(prev);
        }
        entry.prev.set(ptr::null_mut());
        entry.next.set(ptr::null_mut());
        entry.linked.set(false);
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // memory ordering: Release publishes this holder's writes to the next holder (it
        // acquires in `lock`). Storing the head also clears LOCKED.
        #[cfg(not(loom))]
        self.list.head.store(self.head as usize, Ordering::Release);
        #[cfg(loom)]
        {
            *self.guard = self.head as usize;
        }
    }
}

/// What [`Registration::register`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registered {
    /// The entry was linked just now, without a waker: the caller must now
    /// `fetch_or(WAITERS)` and, if the context is still live, register again (which sets
    /// the waker, or finds the entry already drained).
    New,
    /// The entry is still linked (its waker updated if it changed).
    Pending,
    /// The completer took the entry out and woke it: the context is done.
    Woken,
}

/// A waiter's entry and the list it is linked into: one allocation, made on the first
/// registration and kept until the registration is dropped.
#[derive(Default)]
pub(crate) struct Registration {
    /// The entry, from `Box::leak` (freed in `drop`). A raw pointer, not a `Box`: the
    /// list holds pointers to it while the registration moves with its future, and moving
    /// a `Box` asserts unique access to what it points to.
    entry: Option<NonNull<Entry>>,
    /// The list the entry was linked into (the node outlives the registration).
    list: Option<NonNull<WaitList>>,
}

// SAFETY: `list` points into a node that the owner of this registration keeps alive, and a
// `WaitList` is `Sync`; the entry is owned (freed in `drop`) and `Send + Sync` (see `Entry`).
unsafe impl Send for Registration {}
// SAFETY: a shared `Registration` gives no access to anything (every method takes `&mut`).
unsafe impl Sync for Registration {}

impl Registration {
    /// Links the entry into `list` without a waker (the first call: `New`), or sets or
    /// updates the waker of the linked entry (`Pending`), or finds it drained (`Woken`).
    ///
    /// The first call links no waker so that a waiter that then finds the context done
    /// (its `fetch_or(WAITERS)` came after the completion) is never woken by a drain it did
    /// not need. Wakers are cloned before the lock is taken and a replaced one is dropped
    /// after it is released: user code (a waker's clone and drop) never runs under the lock.
    pub(crate) fn register(&mut self, list: &WaitList, waker: &Waker) -> Registered {
        debug_assert!(self.list.is_none_or(|l| ptr::eq(l.as_ptr(), list)));
        let entry = *self.entry.get_or_insert_with(|| {
            NonNull::from(Box::leak(Box::new(Entry {
                prev: Cell::new(ptr::null_mut()),
                next: Cell::new(ptr::null_mut()),
                linked: Cell::new(false),
                waker: Cell::new(None),
            })))
        });
        // SAFETY: the entry is ours until `drop` frees it; shared access to it is through
        // `Cell`s under the list's lock (see `Entry`).
        let entry = unsafe { entry.as_ref() };
        if self.list.is_none() {
            self.list = Some(NonNull::from(list));
            list.lock().push(entry);
            return Registered::New;
        }
        let mut new_waker = Some(waker.clone());
        let (registered, old_waker) = {
            let _locked = list.lock();
            if !entry.linked.get() {
                (Registered::Woken, None)
            } else {
                match entry.waker.take() {
                    Some(old) if old.will_wake(waker) => {
                        entry.waker.set(Some(old));
                        (Registered::Pending, None)
                    }
                    old => {
                        entry.waker.set(new_waker.take());
                        (Registered::Pending, old)
                    }
                }
            }
        };
        drop((new_waker, old_waker));
        registered
    }

    /// Unlinks the entry (if linked) and forgets the list; the entry's allocation is kept
    /// for a later registration. The task's waker is dropped after the lock is released.
    pub(crate) fn release(&mut self) {
        let (Some(list), Some(entry)) = (self.list.take(), self.entry) else {
            return;
        };
        // SAFETY: the list lives in a node that the owner of this registration keeps alive.
        let list = unsafe { list.as_ref() };
        // SAFETY: as in `register`.
        let entry = unsafe { entry.as_ref() };
        let waker = {
            let mut locked = list.lock();
            if entry.linked.get() {
                locked.unlink(entry);
            }
            entry.waker.take()
        };
        drop(waker);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.release();
        if let Some(entry) = self.entry.take() {
            // SAFETY: from `Box::leak` in `register`, and no longer linked (`release`), so no
            // list can reach it.
            drop(unsafe { Box::from_raw(entry.as_ptr()) });
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").field("registered", &self.list.is_some()).finish()
    }
}
