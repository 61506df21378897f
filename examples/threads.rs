//! Blocking threads and async tasks in one context tree.
//!
//! A "job" context is shared by:
//! - a std thread that blocks in `wait()` (a watchdog that cleans up when the job ends),
//! - two std threads that poll `check()` between units of blocking work,
//! - async tasks on a `futures` executor (any executor works the same) that await
//!   `done()`, or run their work under `ctx.run(..)`.
//!
//! Cancelling the job with a cause reaches all of them, each on its own terms, and every one
//! reports the same error and cause.
//!
//! Run with `cargo run --example threads`.

use std::fmt;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use cancelctx::{Context, Error};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;

#[derive(Debug)]
struct OperatorStop;

impl fmt::Display for OperatorStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stopped by the operator")
    }
}

impl std::error::Error for OperatorStop {}

fn report(ctx: &Context, who: &str) -> String {
    format!("{who}: {:?}, cause: {}", ctx.err().expect("done"), ctx.cause().expect("done"))
}

fn main() {
    let (job, stop) = Context::background().with_timeout(Duration::from_secs(60));
    let (log, lines) = mpsc::channel::<String>();
    let (progress, progressed) = mpsc::channel::<&'static str>();

    // A watchdog: blocks its thread until the job ends (no polling, no runtime).
    let watchdog = thread::spawn({
        let (job, log) = (job.clone(), log.clone());
        move || {
            let err = job.wait();
            log.send(format!("watchdog woke with {err:?}: releasing the job's files")).unwrap();
        }
    });

    // Blocking workers: each its own child, checked between units of work.
    let workers: Vec<_> = ["worker-1", "worker-2"]
        .into_iter()
        .map(|name| {
            let (ctx, _guard) = job.with_cancel();
            let (log, progress) = (log.clone(), progress.clone());
            thread::spawn(move || {
                let _guard = _guard; // the worker's own scope ends with the thread
                let mut units = 0u64;
                while ctx.check().is_ok() {
                    units += 1; // one unit of blocking work
                    if units == 1 {
                        progress.send(name).unwrap();
                    }
                    // Wait for more work, or for the end of the job, whichever is first.
                    let _ = ctx.wait_timeout(Duration::from_millis(1));
                }
                log.send(report(&ctx, name)).unwrap();
            })
        })
        .collect();

    // Async tasks on one executor thread, in the same tree.
    let tasks = thread::spawn({
        let (job, log, progress) = (job.clone(), log.clone(), progress.clone());
        move || {
            let mut pool = LocalPool::new();
            let spawner = pool.spawner();
            let ctx = job.clone();
            let log_a = log.clone();
            spawner
                .spawn_local(async move {
                    ctx.done().await;
                    log_a.send(report(&ctx, "task-a (awaited done)")).unwrap();
                })
                .unwrap();
            let (ctx, _guard) = job.with_cancel();
            spawner
                .spawn_local(async move {
                    progress.send("task-b").unwrap();
                    let work = std::future::pending::<()>(); // a long stream of I/O, say
                    let result = ctx.run(work).await;
                    assert_eq!(result, Err(Error::Canceled));
                    log.send(report(&ctx, "task-b (work under run)")).unwrap();
                    drop(_guard);
                })
                .unwrap();
            pool.run();
        }
    });

    // Everyone has started: stop the job with a cause.
    for _ in 0..3 {
        println!("started: {}", progressed.recv().unwrap());
    }
    stop.cancel_with(OperatorStop);

    drop(log);
    for handle in workers.into_iter().chain([watchdog, tasks]) {
        handle.join().unwrap();
    }
    let mut lines: Vec<String> = lines.iter().collect();
    lines.sort();
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 5);
    assert!(lines
        .iter()
        .filter(|l| l.contains("cause"))
        .all(|l| l.contains("stopped by the operator")));
}
