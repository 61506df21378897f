//! A global allocator that counts the bytes live on each thread, for the memory tests
//! (`tests/memory.rs`, `tests/std_clock_memory.rs`). A test file includes it with
//! `#[path = "common/counting_alloc.rs"] mod counting_alloc;` and installs it itself:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;
//! ```
//!
//! Counting per thread keeps other tests' threads out of the figures: a test that allocates
//! and frees on its own thread reads exactly its own balance with [`live`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Defers to [`System`] and counts the bytes allocated minus freed on the calling thread.
pub struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: allocations during thread-local destruction are not counted.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

// SAFETY: defers to `System` and only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Bytes allocated and not yet freed by this thread since it started.
pub fn live() -> isize {
    LIVE.with(Cell::get)
}

/// `CANCELCTX_TEST_SCALE=small` (set by `scripts/sanitize.sh`) shrinks the million-element
/// tests tenfold, for slow instrumented runs; the default is the full size.
pub fn scaled(n: usize) -> usize {
    match std::env::var("CANCELCTX_TEST_SCALE").as_deref() {
        Ok("small") => n / 10,
        _ => n,
    }
}
