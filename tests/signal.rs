//! `Context::with_signals` (feature `signal`): the test raises real signals at its own
//! process. Everything that raises one runs in a single test function (a signal nobody
//! listens for would terminate the whole test binary), and the "default action restored"
//! check runs in a child process.
#![cfg(all(feature = "signal", unix))]

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use cancelctx::{Context, Error, Signal, SignalGuard, SignalReceived};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::low_level::raise;

/// Only turns a hang into a failure; never asserted on.
const BOUND: Duration = Duration::from_secs(30);

static_assertions::assert_impl_all!(SignalGuard: Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(SignalReceived: Send, Sync, std::error::Error);
static_assertions::assert_impl_all!(Signal: Send, Sync, Copy, Eq, std::hash::Hash, std::fmt::Debug, std::fmt::Display);

#[track_caller]
fn assert_ended_by(ctx: &Context, signal: Signal) {
    assert_eq!(ctx.wait_timeout(BOUND), Some(Error::Canceled), "not ended by {signal}");
    let cause = ctx.cause().unwrap();
    let received = cause.downcast_ref::<SignalReceived>().expect("a SignalReceived cause");
    assert_eq!(received.signal(), signal);
    assert_eq!(cause.to_string(), format!("received {}", signal.name()));
}

#[test]
fn signals_cancel_listening_contexts_and_dropping_the_guard_unregisters() {
    let (parent, _gp) = Context::background().with_value("app").with_cancel();
    let (ctx, guard) = parent.with_signals().unwrap();
    let (other, other_guard) = Context::background().with_signals().unwrap();
    assert_eq!(ctx.value::<&str>(), Some(&"app"));
    assert!(!ctx.is_done());

    raise(SIGTERM).unwrap();
    assert_ended_by(&ctx, Signal::Terminate);
    assert_ended_by(&other, Signal::Terminate);
    assert!(!parent.is_done());

    // A second signal while guards live is still captured (Go's NotifyContext too), and
    // reaches contexts registered since.
    let (late, late_guard) = Context::background().with_signals().unwrap();
    raise(SIGINT).unwrap();
    assert_ended_by(&late, Signal::Interrupt);
    assert_ended_by(&ctx, Signal::Terminate); // done is forever

    // A panicking callback on a listener does not kill the watcher.
    let (hostile, hostile_guard) = Context::background().with_signals().unwrap();
    let _h = hostile.after_func(|| panic!("hostile callback"));
    let (after, after_guard) = Context::background().with_signals().unwrap();
    raise(SIGTERM).unwrap();
    assert_ended_by(&hostile, Signal::Terminate);
    assert_ended_by(&after, Signal::Terminate);
    let (again, again_guard) = Context::background().with_signals().unwrap();
    raise(SIGINT).unwrap();
    assert_ended_by(&again, Signal::Interrupt);

    // Dropping a guard cancels its context (like Go's stop()) and unregisters it.
    let (stopped, stopped_guard) = Context::background().with_signals().unwrap();
    drop(stopped_guard);
    assert_eq!(stopped.err(), Some(Error::Canceled));
    assert_eq!(stopped.cause().unwrap().downcast_ref::<Error>(), Some(&Error::Canceled));

    drop((guard, other_guard, late_guard, hostile_guard, after_guard, again_guard));
}

/// Run by `dropping_the_last_guard_restores_the_default_action` in a child process.
#[test]
#[ignore = "a helper: run in a child process by dropping_the_last_guard_restores_the_default_action"]
fn child_raises_sigterm_after_dropping_its_guard() {
    let (ctx, guard) = Context::background().with_signals().unwrap();
    drop(guard);
    assert!(ctx.is_done());
    raise(SIGTERM).unwrap();
    // Still alive: the default action was not restored.
    std::process::exit(3);
}

#[test]
fn dropping_the_last_guard_restores_the_default_action() {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_raises_sigterm_after_dropping_its_guard", "--ignored", "--quiet"])
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(SIGTERM), "the child should die of SIGTERM: {status:?}");
}
