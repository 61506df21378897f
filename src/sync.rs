//! The one place that picks the synchronization primitives.
//!
//! Normal builds use `portable-atomic` (a re-export of `core`'s atomics where the target has
//! them), `alloc`'s `Arc` and a mutex (`std`'s, or a small spin lock without `std`). Under
//! `--cfg loom` every primitive that takes part in the lock-free protocol is loom's, so
//! `tests/loom.rs` explores every interleaving of the real code.

#[cfg(not(loom))]
pub(crate) use alloc::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use portable_atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

pub(crate) use mutex::{Mutex, MutexGuard};

/// One step of a bounded-latency wait for another thread's short critical work: spin with
/// exponential backoff, then yield the thread (under loom: let the model switch threads).
pub(crate) fn backoff(spins: &mut u32) {
    #[cfg(loom)]
    {
        let _ = spins;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        if *spins < 7 {
            for _ in 0..(1u32 << *spins) {
                core::hint::spin_loop();
            }
            *spins += 1;
        } else {
            #[cfg(feature = "std")]
            std::thread::yield_now();
            #[cfg(not(feature = "std"))]
            core::hint::spin_loop();
        }
    }
}

/// Takes the value out of an `Arc` if this is the last strong reference.
#[cfg(not(loom))]
pub(crate) fn arc_into_inner<T>(arc: Arc<T>) -> Option<T> {
    Arc::into_inner(arc)
}

/// loom's `Arc` has no `into_inner`; `try_unwrap` is enough for the small models it runs.
#[cfg(loom)]
pub(crate) fn arc_into_inner<T>(arc: Arc<T>) -> Option<T> {
    Arc::try_unwrap(arc).ok()
}

#[cfg(all(feature = "std", not(loom)))]
mod mutex {
    /// `std`'s mutex, with poisoning ignored: no code of this crate panics while holding a
    /// lock (user callbacks and wakers always run after the guard is dropped).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }
}

#[cfg(all(not(feature = "std"), not(loom)))]
mod mutex {
    //! Without `std` there is no way to park a thread, so the lock spins. Critical sections in
    //! this crate are a handful of instructions (push/remove a pointer in a `Vec`, swap an
    //! `Option`), never user code.
    use core::cell::UnsafeCell;
    use core::ops::{Deref, DerefMut};
    use portable_atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    pub(crate) struct Mutex<T> {
        locked: AtomicBool,
        value: UnsafeCell<T>,
    }

    impl<T> core::fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("Mutex { .. }")
        }
    }

    // SAFETY: the lock hands out `&mut T` to one thread at a time, like `std::sync::Mutex`.
    unsafe impl<T: Send> Sync for Mutex<T> {}
    // SAFETY: moving the mutex moves the `T`.
    unsafe impl<T: Send> Send for Mutex<T> {}

    pub(crate) struct MutexGuard<'a, T>(&'a Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Mutex { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // memory ordering: Acquire pairs with the Release in `MutexGuard::drop`, so the
            // previous holder's writes to `value` are visible.
            while self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                while self.locked.load(Ordering::Relaxed) {
                    core::hint::spin_loop();
                }
            }
            MutexGuard(self)
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            // SAFETY: the guard exists only while `locked` is held by this thread.
            unsafe { &*self.0.value.get() }
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
            unsafe { &mut *self.0.value.get() }
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            self.0.locked.store(false, Ordering::Release);
        }
    }
}

#[cfg(loom)]
mod mutex {
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }
}

/// Parking a thread, for the blocking waits (`crate::relay::Waiter::wait`). Under loom the
/// model's threads park and unpark through loom, which has no timed park: a timed park is
/// an untimed one there (no model waits with a timeout).
#[cfg(feature = "std")]
pub(crate) mod thread {
    #[cfg(loom)]
    pub(crate) use loom::thread::{current, park, Thread};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{current, park, park_timeout, Thread};

    #[cfg(loom)]
    pub(crate) fn park_timeout(_timeout: core::time::Duration) {
        park();
    }
}
