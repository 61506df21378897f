//! Heap allocations per context node, per waiter and per tokio-util token, counted by a
//! global allocator wrapper. Not a criterion bench: it prints a markdown table (and writes it
//! to `target/criterion/alloc_counts.md` and `.jsonl` for `scripts/bench-table.py`).
//!
//! Run with `cargo bench --bench alloc_counts`.
//!
//! Columns:
//! - *one op*: the allocations a typical operation makes in steady state (the most frequent
//!   pattern over 64 consecutive operations after warm-up), with their requested sizes. Requested bytes exclude the allocator's own
//!   header and rounding (glibc adds 8 bytes and rounds to 16, minimum 32).
//! - *kept, per op*: allocation calls and live bytes per operation when 10,000 results are
//!   kept alive at once, so shared structures (a parent's `children` vector, a clock's timer
//!   map) are included, amortized.
//! - *op + drop*: allocation calls per operation whose result is dropped at once, in a loop.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::Context as TaskContext;
use std::time::Duration;

use cancelctx::{Context, ManualClock};
use event_listener::Event;
use tokio_util::sync::CancellationToken;

struct Counting;

const LOG_CAP: usize = 16;

#[derive(Clone, Copy, Default)]
struct Counts {
    allocs: u64,
    frees: u64,
    live_bytes: i64,
}

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNTS: Cell<Counts> = const { Cell::new(Counts { allocs: 0, frees: 0, live_bytes: 0 }) };
    static LOG: RefCell<([usize; LOG_CAP], usize)> = const { RefCell::new(([0; LOG_CAP], 0)) };
}

fn record_alloc(size: usize, old: Option<usize>) {
    // `try_with`: thread-local storage may be gone while a thread exits.
    let _ = ON.try_with(|on| {
        if !on.get() {
            return;
        }
        let _ = COUNTS.try_with(|c| {
            let mut v = c.get();
            v.allocs += 1;
            v.live_bytes += size as i64 - old.unwrap_or(0) as i64;
            c.set(v);
        });
        let _ = LOG.try_with(|log| {
            if let Ok(mut log) = log.try_borrow_mut() {
                let n = log.1;
                if n < LOG_CAP {
                    log.0[n] = size;
                }
                log.1 = n + 1;
            }
        });
    });
}

fn record_free(size: usize) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = COUNTS.try_with(|c| {
                let mut v = c.get();
                v.frees += 1;
                v.live_bytes -= size as i64;
                c.set(v);
            });
        }
    });
}

// SAFETY: forwards every call to `System` unchanged; the bookkeeping only touches
// const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_alloc(layout.size(), None);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_alloc(layout.size(), None);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record_free(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as one allocation (it may move the block) of the size difference.
        record_alloc(new_size, Some(layout.size()));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts allocations made by `f` on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, Counts, Vec<usize>) {
    LOG.with(|log| *log.borrow_mut() = ([0; LOG_CAP], 0));
    COUNTS.with(|c| c.set(Counts::default()));
    ON.with(|on| on.set(true));
    let out = f();
    ON.with(|on| on.set(false));
    let counts = COUNTS.with(Cell::get);
    let (sizes, n) = LOG.with(|log| *log.borrow());
    let mut logged = sizes[..n.min(LOG_CAP)].to_vec();
    if n > LOG_CAP {
        logged.push(usize::MAX); // marks a truncated log
    }
    (out, counts, logged)
}

const KEPT: usize = 10_000;

struct Row {
    name: String,
    one_allocs: u64,
    one_sizes: Vec<usize>,
    kept_allocs: f64,
    kept_bytes: f64,
    cycle_allocs: f64,
}

/// Measures `op` (given the value `setup` made for it, uncounted).
fn measure<S, T>(name: &str, mut setup: impl FnMut() -> S, mut op: impl FnMut(&S) -> T) -> Row {
    // Warm up, and keep a few results alive so that "one op" is a steady state.
    let mut warm: Vec<(S, T)> = Vec::new();
    for _ in 0..8 {
        let s = setup();
        let t = op(&s);
        warm.push((s, t));
    }
    // The typical single op: the most frequent (allocations, sizes) over 64 consecutive ops
    // (an occasional op also grows a shared vector or map; the "kept" columns amortize that).
    let mut seen: Vec<((u64, Vec<usize>), usize)> = Vec::new();
    for _ in 0..64 {
        let s = setup();
        let (t, counts, sizes) = counted(|| op(&s));
        let key = (counts.allocs, sizes);
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => seen.push((key, 1)),
        }
        warm.push((s, t));
    }
    let ((one_allocs, one_sizes), _) =
        seen.into_iter().max_by_key(|(_, n)| *n).expect("64 samples");

    let states: Vec<S> = (0..KEPT).map(|_| setup()).collect();
    let mut kept: Vec<T> = Vec::with_capacity(KEPT);
    let ((), many, _) = counted(|| {
        for s in &states {
            kept.push(op(s));
        }
    });
    drop(kept);
    drop(states);

    let states: Vec<S> = (0..KEPT).map(|_| setup()).collect();
    let ((), cycle, _) = counted(|| {
        for s in &states {
            drop(op(s));
        }
    });
    drop(states);
    drop(warm);

    Row {
        name: name.to_string(),
        one_allocs,
        one_sizes,
        kept_allocs: many.allocs as f64 / KEPT as f64,
        kept_bytes: many.live_bytes as f64 / KEPT as f64,
        cycle_allocs: cycle.allocs as f64 / KEPT as f64,
    }
}

/// Polls a future once (it must stay pending) and returns it, still registered.
fn polled<F: Future + Unpin>(mut fut: F) -> F {
    let mut cx = TaskContext::from_waker(futures::task::noop_waker_ref());
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    fut
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to configure here.
    let mut rows = Vec::new();

    rows.push(measure(
        "floor: Arc::new(AtomicBool)",
        || (),
        |_| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ));

    let (parent, _pg) = Context::background().with_cancel();
    rows.push(measure(
        "cancelctx with_cancel (child of a cancellable parent)",
        || (),
        |_| parent.with_cancel(),
    ));
    rows.push(measure(
        "cancelctx with_cancel (first child of a fresh cancellable parent)",
        || Context::background().with_cancel(),
        |(p, _)| p.with_cancel(),
    ));
    let bg = Context::background();
    rows.push(measure("cancelctx with_cancel (child of background)", || (), |_| bg.with_cancel()));
    rows.push(measure("cancelctx with_value(u64)", || (), |_| parent.with_value(7u64)));

    let manual = Context::with_clock(ManualClock::new());
    rows.push(measure(
        "cancelctx with_timeout (ManualClock)",
        || (),
        |_| manual.with_timeout(Duration::from_secs(3600)),
    ));
    drop(bg.with_timeout(Duration::from_secs(3600))); // start the std timer thread first
    rows.push(measure(
        "cancelctx with_timeout (std clock, background)",
        || (),
        |_| bg.with_timeout(Duration::from_secs(3600)),
    ));

    rows.push(measure(
        "cancelctx done_owned() polled, pending (first waiter of the context)",
        || Context::background().with_cancel(),
        |(ctx, _)| polled(ctx.done_owned()),
    ));
    rows.push(measure(
        "cancelctx done_owned() polled, pending (first waiter of a leaf of a fresh cancellable parent: links the leaf)",
        || {
            let (parent, parent_guard) = Context::background().with_cancel();
            let (leaf, leaf_guard) = parent.with_cancel();
            (parent, parent_guard, leaf, leaf_guard)
        },
        |(_, _, leaf, _)| polled(leaf.done_owned()),
    ));
    let (waited, _wg) = Context::background().with_cancel();
    let _first = polled(waited.done_owned());
    rows.push(measure(
        "cancelctx done_owned() polled, pending (context already has a waiter)",
        || (),
        |_| polled(waited.done_owned()),
    ));
    let (waited2, _wg2) = Context::background().with_cancel();
    let _first2 = polled(waited2.done_owned());
    rows.push(measure(
        "cancelctx done() polled, pending (context already has a waiter)",
        || (),
        // `Done` borrows the context, which outlives every result here.
        |_| polled(waited2.done()),
    ));

    let token = CancellationToken::new();
    rows.push(measure("tokio-util child_token()", || (), |_| token.child_token()));
    rows.push(measure(
        "tokio-util cancelled_owned() polled, pending (boxed: 1 alloc is the Box)",
        || (),
        |_| polled(Box::pin(token.clone().cancelled_owned())),
    ));

    let event = Event::new();
    let _l = event.listen();
    rows.push(measure("event-listener listen() (Event already in use)", || (), |_| event.listen()));
    rows.push(measure("event-listener listen() (fresh Event)", Event::new, |e| e.listen()));

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| case | one op: allocs | one op: requested sizes (B) | kept, per op: allocs | kept, per op: live bytes | op + drop: allocs |"
    );
    let _ = writeln!(table, "|---|---:|---|---:|---:|---:|");
    for r in &rows {
        let sizes = r
            .one_sizes
            .iter()
            .map(|&s| if s == usize::MAX { "...".to_string() } else { s.to_string() })
            .collect::<Vec<_>>()
            .join(" + ");
        let _ = writeln!(
            table,
            "| {} | {} | {} | {:.2} | {:.1} | {:.2} |",
            r.name,
            r.one_allocs,
            if sizes.is_empty() { "-".to_string() } else { sizes },
            r.kept_allocs,
            r.kept_bytes,
            r.cycle_allocs
        );
    }
    print!("{table}");
    let dir = common::criterion_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("alloc_counts.md"), &table);
    // The same rows as JSON lines, for `scripts/bench-table.py`'s targets.
    let mut json = String::new();
    for r in &rows {
        let sizes: Vec<String> = r.one_sizes.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(
            json,
            "{{\"name\":{:?},\"one_allocs\":{},\"one_sizes\":[{}],\"kept_allocs\":{},\"kept_bytes\":{},\"cycle_allocs\":{}}}",
            r.name,
            r.one_allocs,
            sizes.join(","),
            r.kept_allocs,
            r.kept_bytes,
            r.cycle_allocs
        );
    }
    let _ = std::fs::write(dir.join("alloc_counts.jsonl"), json);
}
