//! The std clock's timer state returns to where it started after a million timeouts are
//! created and cancelled early (issue: "a million timeouts created and cancelled early leave
//! the timer thread's memory where it started").
//!
//! Allocations are counted per thread: `schedule` and `cancel` run on the calling thread, so
//! the timer map's nodes and the wakers are allocated and freed here, while other tests'
//! threads do not disturb the count.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use std::time::Duration;

use cancelctx::Context;
use counting_alloc::{live, scaled, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

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
