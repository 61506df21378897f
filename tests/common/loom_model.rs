//! The loom runner shared by `tests/loom*.rs` (included with `#[path]`; loom builds only).

/// Runs `f` under loom with the given preemption bound and prints how many executions were
/// explored (visible with `--nocapture`).
pub fn model<F>(preemptions: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    let executions = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counter = executions.clone();
    let start = std::time::Instant::now();
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    println!(
        "{}: {} executions, preemption bound {:?}, {:.2?}",
        std::thread::current().name().unwrap_or("?"),
        executions.load(StdOrdering::Relaxed),
        builder.preemption_bound,
        start.elapsed()
    );
}
