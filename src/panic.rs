//! Containing panics of user code (callbacks, wakers, clocks) so that one panic skips nothing.
//!
//! With `std`, each piece of user code runs under `catch_unwind`; the first panic is kept and
//! resumed by the caller once its bookkeeping is over (or dropped, where there is nobody to
//! resume it to: the std clock's timer thread). The panic hook has printed every panic
//! either way. Without `std` nothing can be caught: a drop guard runs the remaining items
//! while the first panic unwinds, and a second panic then aborts, as any panic during
//! unwinding does.

/// A caught panic, to resume later.
#[cfg(feature = "std")]
pub(crate) type Payload = std::boxed::Box<dyn core::any::Any + Send + 'static>;

/// Without `std` no panic is ever caught, so there is never a payload.
#[cfg(not(feature = "std"))]
pub(crate) type Payload = core::convert::Infallible;

/// Calls `f` on every item, even if some calls panic, and returns the first panic.
pub(crate) fn for_each_caught<I, F>(items: I, mut f: F) -> Option<Payload>
where
    I: IntoIterator,
    F: FnMut(I::Item),
{
    #[cfg(feature = "std")]
    {
        let mut first_panic = None;
        for item in items {
            let result = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| f(item)));
            if let Err(payload) = result {
                first_panic.get_or_insert(payload);
            }
        }
        first_panic
    }
    #[cfg(not(feature = "std"))]
    {
        struct Rest<I: Iterator, F: FnMut(I::Item)>(I, F);
        impl<I: Iterator, F: FnMut(I::Item)> Drop for Rest<I, F> {
            fn drop(&mut self) {
                for item in self.0.by_ref() {
                    (self.1)(item);
                }
            }
        }
        // Dropping `rest` at the end of scope runs nothing more on the normal path (the
        // iterator is exhausted) and the rest of the items while unwinding.
        let mut rest = Rest(items.into_iter(), &mut f);
        for item in rest.0.by_ref() {
            (rest.1)(item);
        }
        None
    }
}

/// Resumes a caught panic on this thread, unless it is already unwinding (resuming then
/// would abort; the panic hook has printed the payload's panic already).
pub(crate) fn resume(payload: Option<Payload>) {
    #[cfg(feature = "std")]
    if let Some(payload) = payload {
        if !std::thread::panicking() {
            std::panic::resume_unwind(payload);
        }
    }
    #[cfg(not(feature = "std"))]
    if let Some(never) = payload {
        match never {}
    }
}

/// Calls `f` on every item, even if some calls panic; then resumes the first panic.
pub(crate) fn for_each_isolated<I, F>(items: I, f: F)
where
    I: IntoIterator,
    F: FnMut(I::Item),
{
    resume(for_each_caught(items, f));
}

/// A panic of a task waker, caught by the relay waker of `wait.rs` while `event-listener`
/// was notifying (under its lock, where a panic would corrupt its count of notified
/// listeners), handed to the notifier of this thread to resume after its bookkeeping.
#[cfg(all(feature = "std", not(loom)))]
mod deferred {
    use super::Payload;
    use core::cell::RefCell;

    std::thread_local! {
        static DEFERRED: RefCell<Option<Payload>> = const { RefCell::new(None) };
    }

    /// Keeps the first panic a waker raised on this thread until the notifier takes it.
    pub(crate) fn defer(payload: Payload) {
        let _ = DEFERRED.try_with(|d| {
            d.borrow_mut().get_or_insert(payload);
        });
    }

    /// Takes the panic deferred on this thread, if any.
    pub(crate) fn take() -> Option<Payload> {
        DEFERRED.try_with(|d| d.borrow_mut().take()).ok().flatten()
    }
}
#[cfg(all(feature = "std", not(loom)))]
pub(crate) use deferred::{defer, take as take_deferred};

/// Without the relay waker (no `std`, or loom) nothing is ever deferred.
#[cfg(not(all(feature = "std", not(loom))))]
pub(crate) fn take_deferred() -> Option<Payload> {
    None
}

/// Notifies every listener of `event`; a panic of a task waker (caught and deferred by the
/// relay waker) is resumed after the notification is complete, so every other listener is
/// notified and `event-listener`'s state stays consistent.
pub(crate) fn notify_all(event: &event_listener::Event) {
    // A payload left over from a notification outside a completion walk (`event-listener`
    // passes a notification on when a notified listener is dropped) is not ours to resume.
    let _stale = take_deferred();
    event.notify(usize::MAX);
    #[cfg(feature = "std")]
    if let Some(payload) = take_deferred() {
        std::panic::resume_unwind(payload);
    }
}
