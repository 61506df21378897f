//! The std clock's timer state returns to where it started after a million timeouts are
//! created and cancelled early (issue: "a million timeouts created and cancelled early leave
//! the timer thread's memory where it started").
//!
//! Allocations are counted per thread: `schedule` and `cancel` run on the calling thread, so
//! the timer map's nodes and the wakers are allocated and freed here, while other tests'
//! threads do not disturb the count.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use std::sync::Mutex;
use std::time::Duration;

use cancelctx::Context;
use counting_alloc::{live, scaled, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The tests share the std clock's shards: one at a time, so that no test's thread grows or
/// shrinks a shard's memory while another counts its own.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_million_std_clock_timeouts_cancelled_early_leave_no_memory_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

#[test]
fn a_million_timeouts_cancelled_beside_a_pending_one_keep_constant_memory() {
    // With one timeout pending for the whole test, the thread's shard never empties, so the
    // cancelled timers' heap entries are removed by compaction instead: memory stays where it
    // was once the shard has grown to its working size.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let background = Context::background();
    let (_pending, _pending_guard) = background.with_timeout(Duration::from_secs(3600));
    let create_and_cancel = |n: usize| {
        for _ in 0..n {
            drop(background.with_timeout(Duration::from_secs(3600)));
        }
    };
    create_and_cancel(1_000); // the working size
    let warm = live();
    create_and_cancel(scaled(1_000_000));
    let after = live() - warm;
    println!("{after} bytes more after 1,000,000 more timeouts beside a pending one");
    assert_eq!(after, 0, "timer memory grew while a timeout stayed pending");
}
