//! Cancelling trees: a parent with 1, 100 and 10,000 children, and chains 100,000 and
//! 1,000,000 deep created, cancelled and dropped on a thread with a 2 MiB stack.
//!
//! A stack overflow aborts the whole process, so before benchmarking a deep chain each
//! implementation runs it once in a child process (this executable re-run with
//! `CANCELCTX_BENCH_PROBE=<impl>:<depth>`). An implementation whose probe dies (or runs longer
//! than `PROBE_LIMIT`) is reported as such (in the output and in `target/criterion/probes/`)
//! and not benchmarked at that depth.
//!
//! Run with `cargo bench --bench cancel_tree`; `CANCELCTX_BENCH_QUICK=1` for a short run.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cancelctx::{CancelGuard, Context};
use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use tokio_util::sync::CancellationToken;

const PROBE_ENV: &str = "CANCELCTX_BENCH_PROBE";
const CHAIN_STACK: usize = 2 << 20;

fn batch_size(n: usize) -> BatchSize {
    if n <= 10 {
        BatchSize::SmallInput
    } else {
        BatchSize::PerIteration
    }
}

/// `cancel()` of a parent with `n` live children (each child a `with_cancel` context and its
/// guard, or a `child_token()`); the tree is built in the untimed set-up and dropped untimed.
fn cancel_children(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_children");
    for n in [1usize, 100, 10_000] {
        group.throughput(Throughput::Elements(n as u64));

        let build = || {
            let (parent, guard) = Context::background().with_cancel();
            let children: Vec<(Context, CancelGuard)> =
                (0..n).map(|_| parent.with_cancel()).collect();
            (parent, guard, children)
        };
        let (_, guard, children) = build();
        guard.cancel();
        assert!(children.iter().all(|(child, _)| child.is_done()));
        group.bench_function(BenchmarkId::new("cancelctx", n), |b| {
            b.iter_batched(
                build,
                |tree| {
                    tree.1.cancel();
                    tree
                },
                batch_size(n),
            )
        });

        // The children above are detached (attach on demand): the cancel is one CAS on the
        // parent, and each child settles when first read. These two rows put that deferred
        // work back in: every child's `err()` read after the cancel, and children that are
        // linked (each has a child of its own), which the cancel walks as before.
        group.bench_function(BenchmarkId::new("cancelctx (then err() on every child)", n), |b| {
            b.iter_batched(
                build,
                |tree| {
                    tree.1.cancel();
                    for (child, _) in &tree.2 {
                        black_box(child.err());
                    }
                    tree
                },
                batch_size(n),
            )
        });
        let build_linked = || {
            let (parent, guard) = Context::background().with_cancel();
            let children: Vec<_> = (0..n)
                .map(|_| {
                    let (child, child_guard) = parent.with_cancel();
                    let grandchild = child.with_cancel();
                    (child, child_guard, grandchild)
                })
                .collect();
            (parent, guard, children)
        };
        let (_, guard, children) = build_linked();
        guard.cancel();
        assert!(children
            .iter()
            .all(|(child, _, (grandchild, _))| { child.is_done() && grandchild.is_done() }));
        group.bench_function(BenchmarkId::new("cancelctx (linked children)", n), |b| {
            b.iter_batched(
                build_linked,
                |tree| {
                    tree.1.cancel();
                    tree
                },
                batch_size(n),
            )
        });

        let build = || {
            let parent = CancellationToken::new();
            let children: Vec<CancellationToken> = (0..n).map(|_| parent.child_token()).collect();
            (parent, children)
        };
        let (parent, children) = build();
        parent.cancel();
        assert!(children.iter().all(CancellationToken::is_cancelled));
        group.bench_function(BenchmarkId::new("tokio-util", n), |b| {
            b.iter_batched(
                build,
                |tree| {
                    tree.0.cancel();
                    tree
                },
                batch_size(n),
            )
        });

        group.bench_function(
            BenchmarkId::new("tokio-util (then is_cancelled() on every child)", n),
            |b| {
                b.iter_batched(
                    build,
                    |tree| {
                        tree.0.cancel();
                        for child in &tree.1 {
                            black_box(child.is_cancelled());
                        }
                        tree
                    },
                    batch_size(n),
                )
            },
        );

        group.bench_function(BenchmarkId::new("floor: store to N Arc<AtomicBool>", n), |b| {
            b.iter_batched(
                || (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect::<Vec<_>>(),
                |flags| {
                    for flag in &flags {
                        flag.store(true, Ordering::Release);
                    }
                    flags
                },
                batch_size(n),
            )
        });
    }
    group.finish();
}

/// Builds a chain `depth` deep below a cancellable root, cancels the root, drops everything.
fn chain_cancelctx(depth: usize) {
    let mut guards = Vec::with_capacity(depth);
    let (mut ctx, root_guard) = Context::background().with_cancel();
    guards.push(root_guard);
    for _ in 1..depth {
        let (child, guard) = ctx.with_cancel();
        guards.push(guard);
        ctx = child;
    }
    guards[0].cancel();
    assert!(black_box(&ctx).is_done());
    drop(guards);
    drop(ctx);
}

/// The same with tokio-util. Every token is kept: a dropped token's node is removed from the
/// tree and its children re-parented, which would flatten the chain.
fn chain_tokio(depth: usize) {
    let mut tokens = Vec::with_capacity(depth);
    tokens.push(CancellationToken::new());
    for i in 1..depth {
        let child = tokens[i - 1].child_token();
        tokens.push(child);
    }
    tokens[0].cancel();
    assert!(black_box(&tokens[depth - 1]).is_cancelled());
    drop(tokens);
}

/// What `depth` flags cost to allocate, set and free.
fn chain_floor(depth: usize) {
    let flags: Vec<Arc<AtomicBool>> =
        (0..depth).map(|_| Arc::new(AtomicBool::new(false))).collect();
    for flag in &flags {
        flag.store(true, Ordering::Release);
    }
    drop(black_box(flags));
}

/// An implementation's name and its chain routine.
type ChainImpl = (&'static str, fn(usize));

const CHAIN_IMPLS: [ChainImpl; 3] = [
    ("cancelctx", chain_cancelctx),
    ("tokio-util", chain_tokio),
    ("floor: N x Arc<AtomicBool> new+store+drop", chain_floor),
];

/// Runs `f(depth)` on a fresh thread with a 2 MiB stack and returns how long it took there.
fn on_small_stack(f: fn(usize), depth: usize) -> Duration {
    std::thread::Builder::new()
        .stack_size(CHAIN_STACK)
        .spawn(move || {
            let start = Instant::now();
            f(depth);
            start.elapsed()
        })
        .expect("spawn")
        .join()
        .expect("chain thread panicked")
}

/// A probe run longer than this is stopped and reported: benchmarking it (at least 11 runs)
/// would take too long, and it means the implementation is not linear in the depth.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Re-runs this executable to try `name` at `depth` once; `Err` describes how it died or
/// that it ran longer than `PROBE_LIMIT` (the probe process is then killed).
fn probe(name: &str, depth: usize) -> Result<(), String> {
    use std::io::Read;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .env(PROBE_ENV, format!("{name}:{depth}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > PROBE_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("too slow: one run took more than {PROBE_LIMIT:?} (stopped)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let reason =
        if stderr.contains("has overflowed its stack") { "stack overflow" } else { "crashed" };
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    Err(format!("{reason} ({status}; {})", last.trim()))
}

fn deep_chain(c: &mut Criterion) {
    let probes = common::criterion_dir().join("probes");
    let _ = std::fs::create_dir_all(&probes);
    let mut group = c.benchmark_group("deep_chain_create_cancel_drop");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    if !common::quick() {
        group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    }
    // Under `cargo test --benches` (unoptimized, each case run once) the chains are short.
    let depths: [usize; 2] =
        if common::bench_mode() { [100_000, 1_000_000] } else { [1_000, 10_000] };
    for depth in depths {
        group.throughput(Throughput::Elements(depth as u64));
        for (name, f) in CHAIN_IMPLS {
            let verdict = probe(name, depth);
            let file = probes.join(format!("deep_chain-{}-{depth}.txt", slug(name)));
            let line = match &verdict {
                Ok(()) => format!("{name}\t{depth}\tok\n"),
                Err(why) => format!("{name}\t{depth}\tFAILED: {why}\n"),
            };
            if common::bench_mode() {
                let _ = std::fs::write(&file, &line);
            }
            if let Err(why) = verdict {
                eprintln!("deep_chain/{name}/{depth}: NOT BENCHMARKED: {why}");
                continue;
            }
            group.bench_function(BenchmarkId::new(name, depth), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| on_small_stack(f, depth)).sum())
            });
        }
    }
    group.finish();
}

fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn main() {
    if let Ok(spec) = std::env::var(PROBE_ENV) {
        let (name, depth) = spec.rsplit_once(':').expect("probe spec is <impl>:<depth>");
        let depth: usize = depth.parse().expect("probe depth");
        let (_, f) = CHAIN_IMPLS.iter().find(|(n, _)| *n == name).expect("known impl");
        let took = on_small_stack(*f, depth);
        println!("{name} {depth}: ok in {took:?}");
        return;
    }
    let mut c = common::config();
    cancel_children(&mut c);
    deep_chain(&mut c);
    c.final_summary();
}
