//! The std clock's timer state returns to where it started after a million timeouts are
//! created and cancelled early (issue: "a million timeouts created and cancelled early leave
//! the timer thread's memory where it started").
//!
//! Allocations are counted per thread: `schedule` and `cancel` run on the calling thread, so
//! the timer map's nodes and the wakers are allocated and freed here, while other tests'
//! threads do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use cancelctx::Context;

struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
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

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn live() -> isize {
    LIVE.with(Cell::get)
}

#[test]
fn a_million_std_clock_timeouts_cancelled_early_leave_no_memory_behind() {
    let background = Context::background();
    // Warm up: starts the timer thread and initializes the clock's statics.
    drop(background.with_timeout(Duration::from_secs(3600)));
    let baseline = live();

    let mut peak = 0isize;
    for _ in 0..scaled(1_000) {
        // A thousand live timeouts at once, then all cancelled early (guards dropped).
        let batch: Vec<_> =
            (0..1_000).map(|_| background.with_timeout(Duration::from_secs(3600))).collect();
        peak = peak.max(live() - baseline);
        drop(batch);
    }
    let after = live() - baseline;
    println!("peak {peak} bytes live with 1000 timeouts; {after} bytes after 1,000,000");
    assert!(peak > 0, "the timeouts were really allocated");
    assert_eq!(after, 0, "timer memory left behind after cancelling a million timeouts");
}

/// `CANCELCTX_TEST_SCALE=small` (set by `scripts/sanitize.sh`) shrinks the million-element
/// tests tenfold, for slow instrumented runs; the default is the full size.
fn scaled(n: usize) -> usize {
    match std::env::var("CANCELCTX_TEST_SCALE").as_deref() {
        Ok("small") => n / 10,
        _ => n,
    }
}
