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

/// What a call run by [`for_each_caught`] returns: nothing, or the first panic of user code
/// that the call caught itself (a notification returns its wakers' first panic), which counts
/// as the call's own panic.
pub(crate) trait Caught {
    fn into_panic(self) -> Option<Payload>;
}

impl Caught for () {
    fn into_panic(self) -> Option<Payload> {
        None
    }
}

impl Caught for Option<Payload> {
    fn into_panic(self) -> Option<Payload> {
        self
    }
}

/// Calls `f` on every item, even if some calls panic, and returns the first panic.
pub(crate) fn for_each_caught<I, F, R>(items: I, mut f: F) -> Option<Payload>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> R,
    R: Caught,
{
    #[cfg(feature = "std")]
    {
        let mut first_panic = None;
        for item in items {
            let result = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| f(item)));
            if let Some(payload) = result.map_or_else(Some, Caught::into_panic) {
                first_panic.get_or_insert(payload);
            }
        }
        first_panic
    }
    #[cfg(not(feature = "std"))]
    {
        // Without `std` no call can have caught a panic: its result is always `None`.
        let mut f = |item| {
            if let Some(never) = f(item).into_panic() {
                match never {}
            }
        };
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
