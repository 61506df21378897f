//! Running several pieces of user code so that one panic does not skip the others.

/// Calls `f` on every item, even if some calls panic.
///
/// With `std`, each call runs under `catch_unwind`; after the last one the first panic is
/// resumed on this thread (or dropped if this thread is already unwinding, which would
/// otherwise abort — the panic hook has printed it either way). Without `std` a drop guard
/// runs the remaining items while the first panic unwinds; a second panic then aborts, as
/// any panic during unwinding does.
pub(crate) fn for_each_isolated<I, F>(items: I, mut f: F)
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
        if let Some(payload) = first_panic {
            if !std::thread::panicking() {
                std::panic::resume_unwind(payload);
            }
        }
    }
    #[cfg(not(feature = "std"))]
    {
        struct Rest<I: Iterator, F: FnMut(I::Item)>(I, F);
        impl<I: Iterator, F: FnMut(I::Item)> Drop for Rest<I, F> {
            fn drop(&mut self) {
                while let Some(item) = self.0.next() {
                    (self.1)(item);
                }
            }
        }
        // Dropping `rest` at the end of scope runs nothing more on the normal path (the
        // iterator is exhausted) and the rest of the items while unwinding.
        let mut rest = Rest(items.into_iter(), &mut f);
        while let Some(item) = rest.0.next() {
            (rest.1)(item);
        }
    }
}
