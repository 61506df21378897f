//! A request handled by worker threads and an async task, all stopped by one context.
//!
//! Run with `cargo run --example quickstart`.

use std::fmt;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use cancelctx::{Context, Error};

/// Request-scoped value: types are the keys.
#[derive(Debug)]
struct RequestId(u64);

/// Why we stopped: an explicit cause, inherited by everything below the request.
#[derive(Debug)]
struct ClientWentAway;

impl fmt::Display for ClientWentAway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client closed the connection")
    }
}

impl std::error::Error for ClientWentAway {}

fn main() {
    // The request: a value, an overall time limit, and a guard that cancels when dropped.
    let request = Context::background().with_value(RequestId(7));
    let (ctx, cancel) = request.with_timeout(Duration::from_secs(30));
    let (report, reports) = mpsc::channel::<String>();

    // Cleanup that runs once, on whichever thread ends the request.
    let _cleanup = ctx.after_func({
        let report = report.clone();
        move || report.send("after_func: released the request's resources".into()).unwrap()
    });

    // Two blocking workers poll the context between units of work.
    let workers: Vec<_> = (0..2)
        .map(|n| {
            let (ctx, report) = (ctx.clone(), report.clone());
            thread::spawn(move || {
                let id = ctx.value::<RequestId>().map_or(0, |id| id.0);
                let mut units = 0u64;
                while ctx.check().is_ok() {
                    units += 1;
                    thread::sleep(Duration::from_millis(1));
                }
                let cause = ctx.cause().expect("done contexts have a cause");
                report
                    .send(format!(
                        "worker {n} (request {id}): stopped after {units} units: {cause}"
                    ))
                    .unwrap();
            })
        })
        .collect();

    // An async task on any executor: `run` drops the inner future when the context is done.
    let task = {
        let (ctx, report) = (ctx.clone(), report.clone());
        thread::spawn(move || {
            let outcome = futures::executor::block_on(ctx.run(std::future::pending::<()>()));
            let err: Error = outcome.expect_err("the pending future never finishes");
            report.send(format!("async task: stopped with err() = {err:?}")).unwrap();
        })
    };

    // A blocking waiter parks its thread until the request ends.
    let waiter = {
        let ctx = ctx.clone();
        thread::spawn(move || ctx.wait())
    };

    thread::sleep(Duration::from_millis(20));
    println!("cancelling request 7: {ClientWentAway}");
    cancel.cancel_with(ClientWentAway);

    for worker in workers {
        worker.join().unwrap();
    }
    task.join().unwrap();
    println!("blocking waiter woke with: {}", waiter.join().unwrap());
    drop(report);
    for line in reports {
        println!("{line}");
    }

    let cause = ctx.cause().unwrap();
    assert!(cause.downcast_ref::<ClientWentAway>().is_some());
    println!("request: err() = {:?}, cause() = {cause}", ctx.err().unwrap());
}
