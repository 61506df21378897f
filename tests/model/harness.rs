//! Model-based test harness for `cancelctx`, shared by `tests/model.rs` (proptest) and
//! `fuzz/fuzz_targets/tree_model.rs` (cargo-fuzz). It uses only the public API.
//!
//! A run is a sequence of [`Op`]s on one tree rooted at `Context::with_clock(ManualClock)`.
//! Every op is applied twice: to the real library and to [`Model`], a deliberately naive
//! reference (a plain `Vec` of nodes with parent indices, where every completion is pushed
//! eagerly to the whole subtree). After every op the harness compares what the library
//! reports with what the model predicts and panics with the op trace on the first divergence.
//!
//! The rules the model encodes (Go's `context` package, plus `/work/notes/API.md`):
//!
//! - A context goes from live to done once; the first completion wins its `Error` and cause.
//! - Completion flows down to every descendant that is still live, which takes the same error
//!   and cause; never up, never sideways, and never through `without_cancel`.
//! - A child of a done context is born done with the parent's error and cause.
//! - `with_value` children share their parent's state; `without_cancel` children (and their
//!   subtrees, until a new cancel scope) are never done and have no deadline; values are
//!   found through every kind of node, nearest first, types are keys.
//! - A deadline child's deadline is `min(own, parent's)`. If the parent's deadline comes first
//!   (`<=`, see below), the child is a plain `with_cancel` child: no timer, and its own cause
//!   is dropped, as in Go. Otherwise a deadline `<= now` gives a child born done with
//!   `DeadlineExceeded` and its own cause (if any); else it gets a timer that fires when the
//!   clock reaches the deadline. Timers fire in deadline order.
//!   (Go uses a strict `Before`; with equal deadlines Go has two timers racing for the same
//!   instant and either outcome is allowed, the library deterministically picks the parent's.)
//! - Dropping a guard cancels (`Canceled`); `detach` does not.
//! - `after_func`: on a context that can never be done `f` never runs and the first `stop`
//!   returns `true`; on a done context `f` runs at once; otherwise `f` runs exactly once, on
//!   the completing thread, before the completing call returns, and after the context is done.
//!   `stop` returns `true` iff it prevented `f` from running.
//!   A capturing `f` also uses the crate re-entrantly from inside (moves the clock by zero,
//!   reads `err`/`cause`, makes a born-done child, registers a nested `after_func`).
//! - Waiters (`done_owned` polled `Pending`) are woken by the completion, before any `f` of
//!   that completion runs.
//! - `with_linked(other)` (`Op::Linked`): a cancel child of `parent` that also ends when
//!   `other` ends, with `other`'s error and cause, first completion winning. Its deadline is
//!   the earlier of both (one clock here): if `other`'s comes first, the child is made like a
//!   deadline child at `other`'s deadline with the cause of `other`'s deadline owner. Born
//!   done from `parent`, else from `other`. While the child's handle-level context (its
//!   hidden value node) lives, a link registered on `other`'s scope holds the child's cancel
//!   node and a clone of `other`; it fires when that scope completes and is stopped (for
//!   good) when the child's handle-level context is released.
//! - Resources: `clock.pending_timers()` equals the number of live deadline contexts that
//!   still have a timer and are reachable (a handle, a guard, a waiter, a pending `after_func`
//!   registration (not its handle) or a reachable descendant keeps a context and its
//!   ancestors alive). At the end of a run everything is dropped (waiters, then guards, which
//!   cancels; then the clock runs out to `Instant::MAX`; registrations that nothing can
//!   complete any more are stopped; then handles), and no timer may be left.
//!
//! Byte format (for the fuzzer, see [`decode`]): each op is an opcode byte (`% 32`) followed
//! by a fixed number of argument bytes; a missing byte reads as 0. Node, guard, handle and
//! waiter arguments are selectors: `sel % (number of candidates)`, so every input is valid.
#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

use cancelctx::{AfterFunc, CancelGuard, Cause, Context, DoneOwned, Error, Instant, ManualClock};

/// Most ops one run executes (longer inputs are truncated).
pub const MAX_OPS: usize = 256;

/// A value key: types are keys, so `Key<0>`, `Key<1>`, `Key<2>` are three different keys.
/// `Key<3>` is never inserted (lookups must return `None`).
#[derive(Debug, PartialEq, Eq)]
pub struct Key<const K: u8>(pub u32);

/// Number of key types that ops insert.
pub const KEYS: u8 = 3;

/// An explicit cause, identified by its id.
#[derive(Debug)]
pub struct TestCause(pub u32);

impl fmt::Display for TestCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test cause #{}", self.0)
    }
}

impl std::error::Error for TestCause {}

/// One operation. Selector fields (`u8`) pick among the current candidates, modulo their
/// number; an op without candidates does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `parent.with_cancel()`.
    WithCancel { parent: u8 },
    /// `parent.with_value(Key::<key % 3>(value))`.
    WithValue { parent: u8, key: u8, value: u32 },
    /// `parent.without_cancel()`.
    WithoutCancel { parent: u8 },
    /// `parent.with_timeout(timeout)`.
    WithTimeout { parent: u8, timeout: Duration },
    /// `parent.with_deadline(Instant::from_nanos(at))`.
    WithDeadline { parent: u8, at: u64 },
    /// `parent.with_timeout_cause(timeout, TestCause(cause))`.
    WithTimeoutCause { parent: u8, timeout: Duration, cause: u32 },
    /// `parent.with_deadline_cause(Instant::from_nanos(at), TestCause(cause))`.
    WithDeadlineCause { parent: u8, at: u64, cause: u32 },
    /// Keep one more clone of a context handle.
    CloneHandle { node: u8 },
    /// Drop one handle (never the root's last one, which teardown drops).
    DropHandle { node: u8 },
    /// `guard.cancel()`.
    Cancel { guard: u8 },
    /// `guard.cancel_with(TestCause(cause))`.
    CancelWith { guard: u8, cause: u32 },
    /// `guard.cancel_with_cause(other.cause().unwrap())` for a done `other`.
    CancelWithCauseOf { guard: u8, from: u8 },
    /// `drop(guard)`: cancels.
    DropGuard { guard: u8 },
    /// `guard.detach()`.
    Detach { guard: u8 },
    /// `clock.advance(by)`.
    Advance { by: Duration },
    /// `clock.set(Instant::from_nanos(to))` (never goes backwards).
    Set { to: u64 },
    /// `node.after_func(f)`, `f` logging its id (and, with `capture`, the `err()` of a clone
    /// of the context it captured).
    AfterFunc { node: u8, capture: bool },
    /// `handle.stop()`.
    Stop { handle: u8 },
    /// Drop an `AfterFunc` handle (the function stays registered).
    DropAfterFunc { handle: u8 },
    /// Every observation on one context.
    Observe { node: u8 },
    /// Poll `node.done_owned()` once and keep it (with a waker that records wake-ups).
    Wait { node: u8 },
    /// Poll a kept `DoneOwned` again.
    PollWaiter { waiter: u8 },
    /// Drop a kept `DoneOwned`.
    DropWaiter { waiter: u8 },
    /// `parent.with_linked(&other)`.
    Linked { parent: u8, other: u8 },
}

// ---------------------------------------------------------------------------------------
// Byte encoding
// ---------------------------------------------------------------------------------------

const DUR_MAX: u8 = 255;
const DUR_U64_MAX: u8 = 254;
const AT_MAX: u8 = 255;

fn dur_from_byte(b: u8) -> Duration {
    match b {
        DUR_MAX => Duration::MAX,
        DUR_U64_MAX => Duration::from_nanos(u64::MAX),
        b => Duration::from_nanos(u64::from(b % 64)),
    }
}

fn dur_to_byte(d: Duration) -> u8 {
    if d == Duration::MAX {
        DUR_MAX
    } else if d == Duration::from_nanos(u64::MAX) {
        DUR_U64_MAX
    } else {
        let n = d.as_nanos();
        assert!(n < 64, "duration {d:?} has no byte encoding");
        n as u8
    }
}

fn at_from_byte(b: u8) -> u64 {
    if b == AT_MAX {
        u64::MAX
    } else {
        u64::from(b % 64)
    }
}

fn at_to_byte(at: u64) -> u8 {
    if at == u64::MAX {
        AT_MAX
    } else {
        assert!(at < 64, "instant {at} has no byte encoding");
        at as u8
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
}

/// Decodes fuzz bytes into ops (at most [`MAX_OPS`]). Every byte string is valid.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut r = Reader { data, pos: 0 };
    let mut ops = Vec::new();
    while r.pos < data.len() && ops.len() < MAX_OPS {
        let op = match r.byte() % 32 {
            0 | 1 => Op::WithCancel { parent: r.byte() },
            28 => Op::Linked { parent: r.byte(), other: r.byte() },
            2 => {
                Op::WithValue { parent: r.byte(), key: r.byte() % KEYS, value: u32::from(r.byte()) }
            }
            3 => Op::WithoutCancel { parent: r.byte() },
            4 | 5 => Op::WithTimeout { parent: r.byte(), timeout: dur_from_byte(r.byte()) },
            6 => Op::WithDeadline { parent: r.byte(), at: at_from_byte(r.byte()) },
            7 => Op::WithTimeoutCause {
                parent: r.byte(),
                timeout: dur_from_byte(r.byte()),
                cause: u32::from(r.byte()),
            },
            8 => Op::WithDeadlineCause {
                parent: r.byte(),
                at: at_from_byte(r.byte()),
                cause: u32::from(r.byte()),
            },
            9 => Op::CloneHandle { node: r.byte() },
            10 | 29 => Op::DropHandle { node: r.byte() },
            11 => Op::Cancel { guard: r.byte() },
            12 => Op::CancelWith { guard: r.byte(), cause: u32::from(r.byte()) },
            13 => Op::CancelWithCauseOf { guard: r.byte(), from: r.byte() },
            14 => Op::DropGuard { guard: r.byte() },
            15 => Op::Detach { guard: r.byte() },
            16 | 17 | 30 => Op::Advance { by: dur_from_byte(r.byte()) },
            18 => Op::Set { to: at_from_byte(r.byte()) },
            19 | 20 => Op::AfterFunc { node: r.byte(), capture: r.byte() & 1 == 1 },
            21 => Op::Stop { handle: r.byte() },
            22 => Op::DropAfterFunc { handle: r.byte() },
            23 | 24 | 31 => Op::Observe { node: r.byte() },
            25 => Op::Wait { node: r.byte() },
            26 => Op::PollWaiter { waiter: r.byte() },
            _ => Op::DropWaiter { waiter: r.byte() },
        };
        ops.push(op);
    }
    ops
}

/// Encodes ops as fuzz bytes; `decode(&encode(ops)) == ops` for ops whose durations are
/// below 64 ns (or `Duration::MAX` / `u64::MAX` ns), instants below 64 (or `u64::MAX`),
/// causes and values below 256 and keys below 3 (what the proptest strategy generates).
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        let b = |v: u32| -> u8 { u8::try_from(v).expect("cause/value has no byte encoding") };
        match *op {
            Op::WithCancel { parent } => out.extend([0, parent]),
            Op::WithValue { parent, key, value } => out.extend([2, parent, key, b(value)]),
            Op::WithoutCancel { parent } => out.extend([3, parent]),
            Op::WithTimeout { parent, timeout } => out.extend([4, parent, dur_to_byte(timeout)]),
            Op::WithDeadline { parent, at } => out.extend([6, parent, at_to_byte(at)]),
            Op::WithTimeoutCause { parent, timeout, cause } => {
                out.extend([7, parent, dur_to_byte(timeout), b(cause)]);
            }
            Op::WithDeadlineCause { parent, at, cause } => {
                out.extend([8, parent, at_to_byte(at), b(cause)]);
            }
            Op::CloneHandle { node } => out.extend([9, node]),
            Op::DropHandle { node } => out.extend([10, node]),
            Op::Cancel { guard } => out.extend([11, guard]),
            Op::CancelWith { guard, cause } => out.extend([12, guard, b(cause)]),
            Op::CancelWithCauseOf { guard, from } => out.extend([13, guard, from]),
            Op::DropGuard { guard } => out.extend([14, guard]),
            Op::Detach { guard } => out.extend([15, guard]),
            Op::Advance { by } => out.extend([16, dur_to_byte(by)]),
            Op::Set { to } => out.extend([18, at_to_byte(to)]),
            Op::AfterFunc { node, capture } => out.extend([19, node, u8::from(capture)]),
            Op::Stop { handle } => out.extend([21, handle]),
            Op::DropAfterFunc { handle } => out.extend([22, handle]),
            Op::Observe { node } => out.extend([23, node]),
            Op::Wait { node } => out.extend([25, node]),
            Op::PollWaiter { waiter } => out.extend([26, waiter]),
            Op::DropWaiter { waiter } => out.extend([27, waiter]),
            Op::Linked { parent, other } => out.extend([28, parent, other]),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------

/// A cause as the model sees it: the `Error` itself, or an explicit `TestCause` id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MCause {
    Err(Error),
    Id(u32),
}

/// One completion: the contexts it completed and the `after_func` ids it ran.
type Batch = (Vec<usize>, Vec<usize>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `Context::with_clock`: never done, no deadline.
    Root,
    /// `with_cancel`, or a deadline constructor whose parent's deadline comes first.
    Cancel,
    /// A deadline constructor that got its own deadline (and cause).
    Deadline { at: u64, cause: Option<u32> },
    /// `with_value`.
    Value { key: u8, value: u32 },
    /// `without_cancel`.
    WithoutCancel,
}

#[derive(Debug)]
struct MNode {
    parent: Option<usize>,
    children: Vec<usize>,
    kind: Kind,
    /// `Some` once done: the error and the cause, fixed forever.
    done: Option<(Error, MCause)>,
    /// A clock timer is scheduled (cleared when the node completes).
    timer: bool,
    /// Context handles the harness holds.
    handles: usize,
    /// The harness holds the guard.
    guard: bool,
    /// Made by `with_linked` with a link registered: its handles point at a hidden value
    /// node above the cancel node (which the guard and `after_func` registrations hold).
    split: bool,
}

/// A `with_linked` registration on `other`'s scope.
#[derive(Clone, Copy, Debug)]
struct MLink {
    child: usize,
    other: usize,
    /// Registered, neither fired nor stopped.
    active: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    /// Registered on a context that can never be done.
    Never { stopped: bool },
    /// The context was done already: `f` ran inside `after_func`.
    RanAtOnce,
    /// Waiting for the scope to complete.
    Pending,
    /// `f` ran when the scope completed.
    Fired,
    /// Stopped while pending.
    Stopped,
}

#[derive(Debug)]
struct MAf {
    node: usize,
    scope: Option<usize>,
    reg: Reg,
    capture: bool,
    /// The harness holds the `AfterFunc` handle.
    handle: bool,
}

#[derive(Debug)]
struct MWaiter {
    node: usize,
    held: bool,
}

/// [`Model::scope`] on a borrowed node list (for use while `links` is borrowed mutably).
fn self_scope(nodes: &[MNode], mut i: usize) -> Option<usize> {
    loop {
        match nodes[i].kind {
            Kind::Root | Kind::WithoutCancel => return None,
            Kind::Cancel | Kind::Deadline { .. } => return Some(i),
            Kind::Value { .. } => i = nodes[i].parent.expect("non-root"),
        }
    }
}

/// The reference model: a plain `Vec` of nodes; completions are pushed to the whole subtree
/// at once.
#[derive(Debug)]
pub struct Model {
    now: u64,
    nodes: Vec<MNode>,
    afs: Vec<MAf>,
    waiters: Vec<MWaiter>,
    /// For the sanity check that a released context never comes back.
    was_alive: Vec<bool>,
    /// Timers fired so far.
    fired: usize,
    links: Vec<MLink>,
    /// Links that fired so far.
    links_fired: usize,
}

impl Model {
    fn new() -> Model {
        let root = MNode {
            parent: None,
            children: Vec::new(),
            kind: Kind::Root,
            done: None,
            timer: false,
            handles: 1,
            guard: false,
            split: false,
        };
        Model {
            now: 0,
            nodes: vec![root],
            afs: Vec::new(),
            waiters: Vec::new(),
            was_alive: vec![true],
            fired: 0,
            links: Vec::new(),
            links_fired: 0,
        }
    }

    fn err(&self, i: usize) -> Option<Error> {
        self.nodes[i].done.map(|(err, _)| err)
    }

    /// Own deadline, or the parent's; none at a root or `without_cancel`.
    fn deadline(&self, i: usize) -> Option<u64> {
        let n = &self.nodes[i];
        match n.kind {
            Kind::Root | Kind::WithoutCancel => None,
            Kind::Deadline { at, .. } => Some(at),
            Kind::Cancel | Kind::Value { .. } => self.deadline(n.parent.expect("non-root")),
        }
    }

    /// The node whose deadline `i` has (its own, or its nearest ancestor's with one).
    fn deadline_owner(&self, i: usize) -> Option<usize> {
        let n = &self.nodes[i];
        match n.kind {
            Kind::Root | Kind::WithoutCancel => None,
            Kind::Deadline { .. } => Some(i),
            Kind::Cancel | Kind::Value { .. } => self.deadline_owner(n.parent.expect("non-root")),
        }
    }

    /// `parent.with_linked(&other)`; returns the new node and the completions it caused
    /// (born done from `other`).
    fn add_linked(&mut self, parent: usize, other: usize) -> (usize, Vec<Batch>) {
        let owner =
            if self.nodes[other].done.is_none() { self.deadline_owner(other) } else { None };
        let i = match owner.map(|o| self.nodes[o].kind) {
            Some(Kind::Deadline { at, cause }) => self.add_deadline(parent, at, cause),
            _ => self.add_cancel(parent),
        };
        let mut batches = Vec::new();
        let Some(scope) = self.scope(other) else { return (i, batches) };
        if self.nodes[i].done.is_some() {
            return (i, batches);
        }
        match self.nodes[other].done {
            Some((err, cause)) => batches = self.complete_all(i, err, cause),
            None => {
                debug_assert!(self.nodes[scope].done.is_none());
                self.nodes[i].split = true;
                self.links.push(MLink { child: i, other, active: true });
            }
        }
        (i, batches)
    }

    /// [`complete`](Model::complete), then the links it fires (each completing its child
    /// from inside this completion's callbacks), recursively.
    fn complete_all(&mut self, i: usize, err: Error, cause: MCause) -> Vec<Batch> {
        let batch = self.complete(i, err, cause);
        let fire: Vec<MLink> = self
            .links
            .iter_mut()
            .filter(|l| l.active)
            .filter(|l| batch.0.iter().any(|&c| Some(c) == self_scope(&self.nodes, l.other)))
            .map(|l| {
                l.active = false;
                *l
            })
            .collect();
        let mut out = vec![batch];
        self.links_fired += fire.len();
        for link in fire {
            let (err, cause) = self.nodes[link.other].done.expect("its scope completed");
            out.extend(self.complete_all(link.child, err, cause));
        }
        out
    }

    /// The nearest cancellable node at or above `i`, if the context can be done at all.
    fn scope(&self, i: usize) -> Option<usize> {
        let n = &self.nodes[i];
        match n.kind {
            Kind::Root | Kind::WithoutCancel => None,
            Kind::Cancel | Kind::Deadline { .. } => Some(i),
            Kind::Value { .. } => self.scope(n.parent.expect("non-root")),
        }
    }

    /// The nearest value of key type `key` at or above `i`, through every kind of node.
    fn value(&self, i: usize, key: u8) -> Option<u32> {
        let mut at = Some(i);
        while let Some(i) = at {
            if let Kind::Value { key: k, value } = self.nodes[i].kind {
                if k == key {
                    return Some(value);
                }
            }
            at = self.nodes[i].parent;
        }
        None
    }

    fn push(&mut self, parent: usize, kind: Kind, guard: bool) -> usize {
        let done = match kind {
            // Never done.
            Kind::WithoutCancel => None,
            // Born done with the parent's error and cause (if it is done).
            _ => self.nodes[parent].done,
        };
        let i = self.nodes.len();
        self.nodes.push(MNode {
            parent: Some(parent),
            children: Vec::new(),
            kind,
            done,
            timer: false,
            handles: 1,
            guard,
            split: false,
        });
        self.nodes[parent].children.push(i);
        self.was_alive.push(true);
        i
    }

    fn add_cancel(&mut self, parent: usize) -> usize {
        self.push(parent, Kind::Cancel, true)
    }

    fn add_value(&mut self, parent: usize, key: u8, value: u32) -> usize {
        self.push(parent, Kind::Value { key, value }, false)
    }

    fn add_without_cancel(&mut self, parent: usize) -> usize {
        self.push(parent, Kind::WithoutCancel, false)
    }

    fn add_deadline(&mut self, parent: usize, at: u64, cause: Option<u32>) -> usize {
        if self.deadline(parent).is_some_and(|current| current <= at) {
            // Go: the parent's deadline comes first, so this is WithCancel (cause dropped).
            return self.add_cancel(parent);
        }
        let i = self.push(parent, Kind::Deadline { at, cause }, true);
        if self.nodes[i].done.is_none() {
            if at <= self.now {
                let cause = cause.map_or(MCause::Err(Error::DeadlineExceeded), MCause::Id);
                self.nodes[i].done = Some((Error::DeadlineExceeded, cause));
            } else {
                self.nodes[i].timer = true;
            }
        }
        i
    }

    /// Completes `i` and every live descendant (not crossing `without_cancel`); returns the
    /// contexts this completed and the ids of the `after_func`s it runs. The first
    /// completion wins.
    fn complete(&mut self, i: usize, err: Error, cause: MCause) -> Batch {
        assert!(matches!(self.nodes[i].kind, Kind::Cancel | Kind::Deadline { .. }));
        if self.nodes[i].done.is_some() {
            return (Vec::new(), Vec::new());
        }
        let mut completed = Vec::new();
        let mut stack = vec![i];
        while let Some(x) = stack.pop() {
            let node = &mut self.nodes[x];
            if node.kind == Kind::WithoutCancel {
                continue;
            }
            if node.done.is_none() {
                node.done = Some((err, cause));
                node.timer = false;
                completed.push(x);
            }
            stack.extend(node.children.iter().copied());
        }
        let mut ran = Vec::new();
        for (id, af) in self.afs.iter_mut().enumerate() {
            if af.reg == Reg::Pending && af.scope.is_some_and(|s| completed.contains(&s)) {
                af.reg = Reg::Fired;
                ran.push(id);
            }
        }
        (completed, ran)
    }

    /// Moves the clock to `max(now, to)` and fires the due timers in deadline order.
    fn advance_to(&mut self, to: u64) -> Vec<Batch> {
        self.now = self.now.max(to);
        let mut due: Vec<(u64, usize)> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].timer)
            .filter_map(|i| match self.nodes[i].kind {
                Kind::Deadline { at, .. } if at <= self.now => Some((at, i)),
                _ => None,
            })
            .collect();
        due.sort_unstable();
        let mut ran = Vec::new();
        for (_, i) in due {
            self.fired += 1;
            let Kind::Deadline { cause, .. } = self.nodes[i].kind else { unreachable!() };
            let cause = cause.map_or(MCause::Err(Error::DeadlineExceeded), MCause::Id);
            ran.extend(self.complete_all(i, Error::DeadlineExceeded, cause));
        }
        ran
    }

    /// Registers an `after_func`; returns its id and whether `f` runs at once.
    fn after_func(&mut self, node: usize, capture: bool) -> (usize, bool) {
        let scope = self.scope(node);
        let reg = match scope {
            None => Reg::Never { stopped: false },
            Some(s) if self.nodes[s].done.is_some() => Reg::RanAtOnce,
            Some(_) => Reg::Pending,
        };
        self.afs.push(MAf { node, scope, reg, capture, handle: true });
        (self.afs.len() - 1, reg == Reg::RanAtOnce)
    }

    /// `stop()`: `true` iff it prevents `f` from running (or is the first stop on a context
    /// that can never be done).
    fn stop(&mut self, id: usize) -> bool {
        let af = &mut self.afs[id];
        match af.reg {
            Reg::Never { stopped } => {
                af.reg = Reg::Never { stopped: true };
                !stopped
            }
            Reg::Pending => {
                af.reg = Reg::Stopped;
                true
            }
            Reg::RanAtOnce | Reg::Fired | Reg::Stopped => false,
        }
    }

    /// Which contexts the library must still hold in memory, and which split (linked)
    /// nodes still have their handle-level context (the hidden value node).
    fn alive(&self) -> (Vec<bool>, Vec<bool>) {
        let n = self.nodes.len();
        // `direct`: something holds the context users see (for a split node: its value
        // node); `cancel`: something holds only the cancel node (guard, registrations).
        let mut direct: Vec<bool> = self.nodes.iter().map(|n| n.handles > 0).collect();
        let mut cancel: Vec<bool> = self.nodes.iter().map(|n| n.guard).collect();
        for w in &self.waiters {
            if w.held {
                direct[w.node] = true; // a `DoneOwned` holds a clone
            }
        }
        for af in &self.afs {
            // Documented (`AfterFunc`): the registration, not the handle, keeps the context
            // alive until `f` runs or is stopped; the closure keeps what it captured.
            if af.reg == Reg::Pending {
                cancel[af.scope.expect("pending has a scope")] = true;
                if af.capture {
                    direct[af.node] = true;
                }
            }
        }
        for link in self.links.iter().filter(|l| l.active) {
            // The registration's closure holds the child's cancel node and a clone of
            // `other`; the registration itself holds `other`'s scope.
            cancel[link.child] = true;
            direct[link.other] = true;
        }
        // Every context holds its parent; children come after their parents in the Vec (a
        // link's `other` too, so it is marked before it is visited).
        let mut alive = vec![false; n];
        for i in (0..n).rev() {
            alive[i] = direct[i] || cancel[i];
            if alive[i] && i > 0 {
                direct[self.nodes[i].parent.expect("non-root")] = true;
            }
        }
        (alive, direct)
    }

    fn pending_timers(&mut self) -> usize {
        // A link whose child's handle-level context was released has been stopped, for good.
        let alive = loop {
            let (alive, direct) = self.alive();
            let mut changed = false;
            for link in self.links.iter_mut().filter(|l| l.active) {
                if !direct[link.child] {
                    link.active = false;
                    changed = true;
                }
            }
            if !changed {
                break alive;
            }
        };
        for (i, (&now, was)) in alive.iter().zip(&mut self.was_alive).enumerate() {
            assert!(!now || *was, "model bug: context n{i} came back to life");
            *was = now;
        }
        alive.iter().zip(&self.nodes).filter(|(&a, n)| a && n.timer).count()
    }
}

// ---------------------------------------------------------------------------------------
// The real side
// ---------------------------------------------------------------------------------------

/// A waker that records that it was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct RealWaiter {
    future: DoneOwned,
    flag: Arc<Flag>,
    waker: Waker,
}

/// What an `after_func` callback logged: its id, if it captured its context, what it saw of
/// that context from inside `f`, and which waiters had been woken when `f` ran.
type Log = Arc<Mutex<Vec<Ran>>>;

#[derive(Debug)]
struct Ran {
    id: usize,
    seen: Option<Seen>,
    woken: Vec<bool>,
}

/// What a capturing `f` saw of its context, using the crate re-entrantly from inside `f`
/// (which runs with no lock of the crate held): `err`, `cause`, whether a `with_cancel`
/// child made there is born done with the same error and cause, and whether a nested
/// `after_func` on the (done) context ran at once (and its `stop` then returned `false`).
/// Before that, `f` moves the clock by zero (re-entrant clock move; never fires anything
/// because every due timer fired when the clock last moved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    err: Option<Error>,
    cause: Option<MCause>,
    child_born_done_alike: bool,
    nested_after_func_ran_at_once: bool,
}

fn look_from_inside(ctx: &Context, clock: &ManualClock) -> Seen {
    clock.advance(Duration::ZERO);
    let err = ctx.err();
    let cause = ctx.cause().as_ref().and_then(cause_of);
    let (child, guard) = ctx.with_cancel();
    let child_born_done_alike =
        child.err() == err && child.cause().as_ref().and_then(cause_of) == cause;
    drop(guard);
    drop(child);
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let handle = ctx.after_func(move || flag.store(true, Ordering::SeqCst));
    let nested_after_func_ran_at_once = ran.load(Ordering::SeqCst) && !handle.stop();
    Seen { err, cause, child_born_done_alike, nested_after_func_ran_at_once }
}

/// The wake flags of every waiter ever made, by waiter id (shared with the callbacks).
type Flags = Arc<Mutex<Vec<Arc<Flag>>>>;

fn log_run(log: &Log, flags: &Flags, id: usize, seen: Option<Seen>) {
    let woken = flags.lock().unwrap().iter().map(|f| f.0.load(Ordering::SeqCst)).collect();
    log.lock().unwrap().push(Ran { id, seen, woken });
}

/// Which argument of a trace entry refers to which node/guard/handle/waiter.
#[derive(Clone, Copy, Debug, Default)]
struct Resolved {
    a: Option<usize>,
    b: Option<usize>,
    new: Option<usize>,
}

fn cause_of(cause: &Cause) -> Option<MCause> {
    if let Some(c) = cause.downcast_ref::<TestCause>() {
        Some(MCause::Id(c.0))
    } else {
        cause.downcast_ref::<Error>().map(|e| MCause::Err(*e))
    }
}

fn value_of(ctx: &Context, key: u8) -> Option<u32> {
    match key {
        0 => ctx.value::<Key<0>>().map(|k| k.0),
        1 => ctx.value::<Key<1>>().map(|k| k.0),
        2 => ctx.value::<Key<2>>().map(|k| k.0),
        _ => ctx.value::<Key<3>>().map(|k| k.0),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn pick(candidates: impl Iterator<Item = usize>, sel: u8) -> Option<usize> {
    let candidates: Vec<usize> = candidates.collect();
    if candidates.is_empty() {
        None
    } else {
        Some(candidates[usize::from(sel) % candidates.len()])
    }
}

/// A deliberate bug to plant in the model, to check that the harness notices divergences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Descendants get their own error as cause instead of inheriting the explicit cause.
    ForgetInheritedCause,
    /// Children of done contexts are born live.
    NoBornDone,
    /// `stop` always returns `true`.
    StopAlwaysTrue,
    /// Deadline children ignore the parent's deadline.
    IgnoreParentDeadline,
    /// Dropping a guard does not cancel.
    GuardDropDoesNotCancel,
    /// `with_linked` children ignore their second parent.
    LinkIgnoresOther,
}

/// How to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// A bug to plant in the model (to check that the harness catches divergences).
    pub mutation: Option<Mutation>,
    /// Never leak by design: `DropAfterFunc` on a still-pending registration keeps the handle
    /// in a graveyard (it stays a reference in the model) so that teardown can `stop` the
    /// registrations nothing can complete any more. A pending registration keeps its context
    /// alive (documented), so really dropping its handle and detaching every guard above it
    /// leaks it on purpose, which the fuzzer's leak detector would report. Off for proptest
    /// (real drops, leaks of a few bytes per case), on for the fuzzer (leak detection stays
    /// meaningful).
    pub leak_free: bool,
}

/// What a run exercised (for judging the op mix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ops that did something.
    pub executed: usize,
    /// Ops that had no candidate (no guard to cancel, no waiter to poll...).
    pub skipped: usize,
    /// Contexts created (the root not counted).
    pub nodes: usize,
    /// Contexts done before teardown.
    pub done_before_teardown: usize,
    /// ... of which born done.
    pub born_done: usize,
    /// Deadline timers that fired (during ops).
    pub timers_fired: usize,
    /// `after_func` functions that ran (during ops and teardown).
    pub callbacks_run: usize,
    /// `stop()` calls that returned `true`.
    pub stops_won: usize,
    /// Deepest context (root = 0).
    pub max_depth: usize,
    /// (function, waiter) pairs of one completion checked for "woken before `f` ran".
    pub wake_order_checks: usize,
    /// `with_linked` links registered, and how many of them fired (`other` ended first).
    pub links: usize,
    pub links_fired: usize,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.executed += o.executed;
        self.skipped += o.skipped;
        self.nodes += o.nodes;
        self.done_before_teardown += o.done_before_teardown;
        self.born_done += o.born_done;
        self.timers_fired += o.timers_fired;
        self.callbacks_run += o.callbacks_run;
        self.stops_won += o.stops_won;
        self.max_depth = self.max_depth.max(o.max_depth);
        self.wake_order_checks += o.wake_order_checks;
        self.links += o.links;
        self.links_fired += o.links_fired;
    }
}

/// Runs `ops` against the library and the model; panics on the first divergence.
pub fn run(ops: &[Op]) -> Stats {
    run_with(ops, Config::default())
}

/// [`run`] with a [`Config`].
pub fn run_with(ops: &[Op], config: Config) -> Stats {
    let mut h = Harness::new(config);
    for op in ops.iter().take(MAX_OPS) {
        h.step(*op);
    }
    h.stats.nodes = h.model.nodes.len() - 1;
    h.stats.done_before_teardown = h.model.nodes.iter().filter(|n| n.done.is_some()).count();
    h.stats.max_depth = (0..h.model.nodes.len())
        .map(|i| std::iter::successors(Some(i), |&j| h.model.nodes[j].parent).count() - 1)
        .max()
        .unwrap_or(0);
    h.teardown()
}

enum AfSlot {
    Held(AfterFunc),
    /// "Dropped" in leak-free mode: ops no longer see it, the model counts it as held.
    Buried(AfterFunc),
    Gone,
}

struct Harness {
    clock: ManualClock,
    model: Model,
    handles: Vec<Vec<Context>>,
    guards: Vec<Option<CancelGuard>>,
    afs: Vec<AfSlot>,
    waiters: Vec<Option<RealWaiter>>,
    log: Log,
    flags: Flags,
    /// `after_func` ids the model expects to run during the current step.
    expected_runs: Vec<usize>,
    /// The completions of the current step: the contexts each completed, and the
    /// `after_func`s it ran (which must see every waiter on those contexts woken).
    batches: Vec<(Vec<usize>, Vec<usize>)>,
    /// Per `after_func` id: whether it has run (to catch a second run).
    ran: Vec<bool>,
    trace: Vec<(Op, Resolved)>,
    mutation: Option<Mutation>,
    leak_free: bool,
    stats: Stats,
}

impl Harness {
    fn new(config: Config) -> Harness {
        let clock = ManualClock::new();
        let root = Context::with_clock(clock.clone());
        Harness {
            clock,
            model: Model::new(),
            handles: vec![vec![root]],
            guards: vec![None],
            afs: Vec::new(),
            waiters: Vec::new(),
            log: Log::default(),
            flags: Flags::default(),
            expected_runs: Vec::new(),
            batches: Vec::new(),
            ran: Vec::new(),
            trace: Vec::new(),
            mutation: config.mutation,
            leak_free: config.leak_free,
            stats: Stats::default(),
        }
    }

    #[track_caller]
    fn fail(&self, what: fmt::Arguments<'_>) -> ! {
        use std::fmt::Write as _;
        let mut msg = format!("cancelctx diverges from the model: {what}\nops so far:\n");
        for (step, (op, r)) in self.trace.iter().enumerate() {
            // What the selector arguments resolved to: contexts (guards are named by their
            // context), after_func handles or waiters.
            let (a, new) = match op {
                Op::Stop { .. } | Op::DropAfterFunc { .. } => ("af", "af"),
                Op::PollWaiter { .. } | Op::DropWaiter { .. } => ("w", "w"),
                Op::AfterFunc { .. } => ("n", "af"),
                Op::Wait { .. } => ("n", "w"),
                _ => ("n", "n"),
            };
            let _ = write!(msg, "  #{step}: {op:?}");
            match (r.a, r.b) {
                (None, _) if matches!(op, Op::Advance { .. } | Op::Set { .. }) => {}
                (None, _) => msg.push_str(" (no candidate: nothing done)"),
                (Some(x), None) => {
                    let _ = write!(msg, " on {a}{x}");
                }
                (Some(x), Some(y)) if matches!(op, Op::Linked { .. }) => {
                    let _ = write!(msg, " on {a}{x} linked to n{y}");
                }
                (Some(x), Some(y)) => {
                    let _ = write!(msg, " on {a}{x} with the cause of n{y}");
                }
            }
            if let Some(n) = r.new {
                let _ = write!(msg, " -> {new}{n}");
            }
            msg.push('\n');
        }
        let _ = writeln!(msg, "model now={}, nodes:", self.model.now);
        for (i, n) in self.model.nodes.iter().enumerate() {
            let _ = writeln!(
                msg,
                "  n{i}: parent={:?} kind={:?} done={:?} timer={} handles={} guard={} split={}",
                n.parent, n.kind, n.done, n.timer, n.handles, n.guard, n.split
            );
        }
        for link in &self.model.links {
            let _ = writeln!(msg, "  {link:?}");
        }
        for (i, af) in self.model.afs.iter().enumerate() {
            let _ = writeln!(msg, "  af{i}: {af:?}");
        }
        panic!("{msg}");
    }

    fn mutated(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }

    // --- candidate selection ----------------------------------------------------------

    fn pick_node(&self, sel: u8) -> Option<usize> {
        pick((0..self.handles.len()).filter(|&i| !self.handles[i].is_empty()), sel)
    }

    fn pick_guard(&self, sel: u8) -> Option<usize> {
        pick((0..self.guards.len()).filter(|&i| self.guards[i].is_some()), sel)
    }

    fn pick_af(&self, sel: u8) -> Option<usize> {
        pick((0..self.afs.len()).filter(|&i| matches!(self.afs[i], AfSlot::Held(_))), sel)
    }

    fn pick_waiter(&self, sel: u8) -> Option<usize> {
        pick((0..self.waiters.len()).filter(|&i| self.waiters[i].is_some()), sel)
    }

    fn ctx(&self, i: usize) -> &Context {
        self.handles[i].last().expect("picked nodes have a handle")
    }

    // --- model wrappers (with planted bugs) --------------------------------------------

    fn model_complete(&mut self, i: usize, err: Error, cause: MCause) {
        if self.mutated(Mutation::ForgetInheritedCause) && self.model.nodes[i].done.is_none() {
            let batches = self.model.complete_all(i, err, MCause::Err(err));
            if let Some(done) = &mut self.model.nodes[i].done {
                done.1 = cause;
            }
            batches.into_iter().for_each(|b| self.expect(b));
            return;
        }
        for batch in self.model.complete_all(i, err, cause) {
            self.expect(batch);
        }
    }

    fn expect(&mut self, batch: Batch) {
        self.expected_runs.extend(batch.1.iter().copied());
        self.batches.push(batch);
    }

    fn model_advance_to(&mut self, to: u64) {
        for batch in self.model.advance_to(to) {
            self.expect(batch);
        }
    }

    fn clear_expected(&mut self) {
        self.expected_runs.clear();
        self.batches.clear();
    }

    fn adopt(&mut self, i: usize, ctx: Context, guard: Option<CancelGuard>) {
        assert_eq!(i, self.handles.len(), "model and harness indices agree");
        if self.mutated(Mutation::NoBornDone) {
            if let Kind::Cancel | Kind::Value { .. } = self.model.nodes[i].kind {
                self.model.nodes[i].done = None;
            }
        }
        self.handles.push(vec![ctx]);
        self.guards.push(guard);
        if self.model.nodes[i].done.is_some() {
            self.stats.born_done += 1;
        }
        self.observe(i);
    }

    // --- ops ---------------------------------------------------------------------------

    fn step(&mut self, op: Op) {
        self.clear_expected();
        let r = self.apply(op);
        let skipped = r.a.is_none() && !matches!(op, Op::Advance { .. } | Op::Set { .. });
        if skipped {
            self.stats.skipped += 1;
        } else {
            self.stats.executed += 1;
        }
        self.trace.push((op, r));
        self.check();
    }

    fn apply(&mut self, op: Op) -> Resolved {
        let mut r = Resolved::default();
        match op {
            Op::WithCancel { parent } => {
                let Some(p) = self.pick_node(parent) else { return r };
                r.a = Some(p);
                let (ctx, guard) = self.ctx(p).with_cancel();
                let i = self.model.add_cancel(p);
                r.new = Some(i);
                self.adopt(i, ctx, Some(guard));
            }
            Op::WithValue { parent, key, value } => {
                let Some(p) = self.pick_node(parent) else { return r };
                r.a = Some(p);
                let key = key % KEYS;
                let parent = self.ctx(p);
                let ctx = match key {
                    0 => parent.with_value(Key::<0>(value)),
                    1 => parent.with_value(Key::<1>(value)),
                    _ => parent.with_value(Key::<2>(value)),
                };
                let i = self.model.add_value(p, key, value);
                r.new = Some(i);
                self.adopt(i, ctx, None);
            }
            Op::Linked { parent, other } => {
                let Some(p) = self.pick_node(parent) else { return r };
                let Some(o) = self.pick_node(other) else { return r };
                r.a = Some(p);
                r.b = Some(o);
                let (ctx, guard) = self.ctx(p).with_linked(self.ctx(o));
                let (i, batches) = if self.mutated(Mutation::LinkIgnoresOther) {
                    (self.model.add_cancel(p), Vec::new())
                } else {
                    self.model.add_linked(p, o)
                };
                batches.into_iter().for_each(|b| self.expect(b));
                r.new = Some(i);
                self.adopt(i, ctx, Some(guard));
            }
            Op::WithoutCancel { parent } => {
                let Some(p) = self.pick_node(parent) else { return r };
                r.a = Some(p);
                let ctx = self.ctx(p).without_cancel();
                let i = self.model.add_without_cancel(p);
                r.new = Some(i);
                self.adopt(i, ctx, None);
            }
            Op::WithTimeout { parent, timeout } => {
                let Some(p) = self.pick_node(parent) else { return r };
                r.a = Some(p);
                let (ctx, guard) = self.ctx(p).with_timeout(timeout);
                let at = self.model.now.saturating_add(nanos(timeout));
                r.new = Some(self.add_deadline(p, at, None, ctx, guard));
            }
            Op::WithDeadline { parent, at } => {
                let Some(p) = self.pick_node(parent) else { return r };
                r.a = Some(p);
                let (ctx, guard) = self.ctx(p).with_deadline(Instant::from_nanos(at));
                r.new = Some(self.add_deadline(p, at, None, ctx, guard));
            }
            Op::WithTimeoutCause { parent, timeout, cause } => {
                let Some(p) = self.pick_node(parent) else { return r };
                r.a = Some(p);
                let (ctx, guard) = self.ctx(p).with_timeout_cause(timeout, TestCause(cause));
                let at = self.model.now.saturating_add(nanos(timeout));
                r.new = Some(self.add_deadline(p, at, Some(cause), ctx, guard));
            }
            Op::WithDeadlineCause { parent, at, cause } => {
                let Some(p) = self.pick_node(parent) else { return r };
                r.a = Some(p);
                let (ctx, guard) =
                    self.ctx(p).with_deadline_cause(Instant::from_nanos(at), TestCause(cause));
                r.new = Some(self.add_deadline(p, at, Some(cause), ctx, guard));
            }
            Op::CloneHandle { node } => {
                let Some(i) = self.pick_node(node) else { return r };
                r.a = Some(i);
                let ctx = self.ctx(i).clone();
                self.handles[i].push(ctx);
                self.model.nodes[i].handles += 1;
            }
            Op::DropHandle { node } => {
                let Some(i) = self.pick_node(node) else { return r };
                if i == 0 && self.handles[0].len() == 1 {
                    return r; // keep the root reachable for later ops; teardown drops it
                }
                r.a = Some(i);
                drop(self.handles[i].pop());
                self.model.nodes[i].handles -= 1;
            }
            Op::Cancel { guard } => {
                let Some(i) = self.pick_guard(guard) else { return r };
                r.a = Some(i);
                self.guards[i].as_ref().expect("picked").cancel();
                self.model_complete(i, Error::Canceled, MCause::Err(Error::Canceled));
            }
            Op::CancelWith { guard, cause } => {
                let Some(i) = self.pick_guard(guard) else { return r };
                r.a = Some(i);
                self.guards[i].as_ref().expect("picked").cancel_with(TestCause(cause));
                self.model_complete(i, Error::Canceled, MCause::Id(cause));
            }
            Op::CancelWithCauseOf { guard, from } => {
                let Some(i) = self.pick_guard(guard) else { return r };
                let done_nodes = (0..self.handles.len())
                    .filter(|&j| !self.handles[j].is_empty() && self.model.nodes[j].done.is_some());
                let Some(j) = pick(done_nodes, from) else { return r };
                r.a = Some(i);
                r.b = Some(j);
                let Some(cause) = self.ctx(j).cause() else {
                    self.fail(format_args!("n{j}.cause() is None but the model says it is done"))
                };
                let was_live = self.model.nodes[i].done.is_none();
                self.guards[i].as_ref().expect("picked").cancel_with_cause(cause.clone());
                let (_, model_cause) = self.model.nodes[j].done.expect("picked done");
                self.model_complete(i, Error::Canceled, model_cause);
                if was_live {
                    if let Some(ctx) = self.handles[i].last() {
                        let got = ctx.cause();
                        if !got.as_ref().is_some_and(|got| Arc::ptr_eq(got, &cause)) {
                            self.fail(format_args!(
                                "n{i}.cause() after cancel_with_cause is not the very Arc given"
                            ));
                        }
                    }
                }
            }
            Op::DropGuard { guard } => {
                let Some(i) = self.pick_guard(guard) else { return r };
                r.a = Some(i);
                drop(self.guards[i].take());
                self.model.nodes[i].guard = false;
                if !self.mutated(Mutation::GuardDropDoesNotCancel) {
                    self.model_complete(i, Error::Canceled, MCause::Err(Error::Canceled));
                }
            }
            Op::Detach { guard } => {
                let Some(i) = self.pick_guard(guard) else { return r };
                r.a = Some(i);
                self.guards[i].take().expect("picked").detach();
                self.model.nodes[i].guard = false;
            }
            Op::Advance { by } => {
                self.clock.advance(by);
                let to = self.model.now.saturating_add(nanos(by));
                self.model_advance_to(to);
            }
            Op::Set { to } => {
                self.clock.set(Instant::from_nanos(to));
                self.model_advance_to(to);
            }
            Op::AfterFunc { node, capture } => {
                let Some(i) = self.pick_node(node) else { return r };
                r.a = Some(i);
                let id = self.afs.len();
                let (log, flags) = (self.log.clone(), self.flags.clone());
                let handle = if capture {
                    let (ctx, clock) = (self.ctx(i).clone(), self.clock.clone());
                    self.ctx(i).after_func(move || {
                        log_run(&log, &flags, id, Some(look_from_inside(&ctx, &clock)));
                    })
                } else {
                    self.ctx(i).after_func(move || log_run(&log, &flags, id, None))
                };
                let (model_id, ran_now) = self.model.after_func(i, capture);
                assert_eq!(id, model_id, "model and harness ids agree");
                r.new = Some(id);
                self.afs.push(AfSlot::Held(handle));
                self.ran.push(false);
                if ran_now {
                    self.expected_runs.push(id);
                }
            }
            Op::Stop { handle } => {
                let Some(k) = self.pick_af(handle) else { return r };
                r.a = Some(k);
                let AfSlot::Held(handle) = &self.afs[k] else { unreachable!("picked") };
                let got = handle.stop();
                let mut want = self.model.stop(k);
                if self.mutated(Mutation::StopAlwaysTrue) {
                    want = true;
                }
                if got != want {
                    self.fail(format_args!("af{k}.stop() = {got}, model says {want}"));
                }
                self.stats.stops_won += usize::from(got);
            }
            Op::DropAfterFunc { handle } => {
                let Some(k) = self.pick_af(handle) else { return r };
                r.a = Some(k);
                let AfSlot::Held(handle) = std::mem::replace(&mut self.afs[k], AfSlot::Gone) else {
                    unreachable!("picked")
                };
                if self.leak_free && self.model.afs[k].reg == Reg::Pending {
                    self.afs[k] = AfSlot::Buried(handle);
                } else {
                    drop(handle);
                    self.model.afs[k].handle = false;
                }
            }
            Op::Observe { node } => {
                let Some(i) = self.pick_node(node) else { return r };
                r.a = Some(i);
                self.observe(i);
            }
            Op::Wait { node } => {
                let Some(i) = self.pick_node(node) else { return r };
                r.a = Some(i);
                let flag = Arc::new(Flag::default());
                self.flags.lock().unwrap().push(flag.clone());
                let waker = Waker::from(flag.clone());
                let mut waiter = RealWaiter { future: self.ctx(i).done_owned(), flag, waker };
                let got = poll_waiter(&mut waiter);
                let want = self.model.err(i);
                if got != want {
                    self.fail(format_args!("n{i}.done_owned() polled {got:?}, model err {want:?}"));
                }
                let w = self.waiters.len();
                r.new = Some(w);
                let held = got.is_none();
                self.waiters.push(if held { Some(waiter) } else { None });
                self.model.waiters.push(MWaiter { node: i, held });
            }
            Op::PollWaiter { waiter } => {
                let Some(w) = self.pick_waiter(waiter) else { return r };
                r.a = Some(w);
                let i = self.model.waiters[w].node;
                let got = poll_waiter(self.waiters[w].as_mut().expect("picked"));
                let want = self.model.err(i);
                if got != want {
                    self.fail(format_args!("waiter w{w} on n{i} polled {got:?}, model {want:?}"));
                }
                if got.is_some() {
                    self.waiters[w] = None; // finished futures are not polled again
                    self.model.waiters[w].held = false;
                }
            }
            Op::DropWaiter { waiter } => {
                let Some(w) = self.pick_waiter(waiter) else { return r };
                r.a = Some(w);
                self.waiters[w] = None;
                self.model.waiters[w].held = false;
            }
        }
        r
    }

    fn add_deadline(
        &mut self,
        parent: usize,
        at: u64,
        cause: Option<u32>,
        ctx: Context,
        guard: CancelGuard,
    ) -> usize {
        let i = if self.mutated(Mutation::IgnoreParentDeadline) {
            let i = self.model.push(parent, Kind::Deadline { at, cause }, true);
            if self.model.nodes[i].done.is_none() && at > self.model.now {
                self.model.nodes[i].timer = true;
            }
            i
        } else {
            self.model.add_deadline(parent, at, cause)
        };
        self.adopt(i, ctx, Some(guard));
        i
    }

    // --- checks ------------------------------------------------------------------------

    /// Every observation on context `i` (through its newest handle).
    fn observe(&self, i: usize) {
        let ctx = self.ctx(i);
        let m = &self.model;
        let want_err = m.err(i);
        let got = ctx.err();
        if got != want_err {
            self.fail(format_args!("n{i}.err() = {got:?}, model {want_err:?}"));
        }
        if ctx.is_done() != want_err.is_some() {
            self.fail(format_args!("n{i}.is_done() disagrees with model err {want_err:?}"));
        }
        if ctx.check() != want_err.map_or(Ok(()), Err) {
            self.fail(format_args!("n{i}.check() disagrees with model err {want_err:?}"));
        }
        if ctx.wait_timeout(Duration::ZERO) != want_err {
            self.fail(format_args!("n{i}.wait_timeout(0) disagrees with model {want_err:?}"));
        }
        let got_cause = ctx.cause();
        let want_cause = m.nodes[i].done.map(|(_, c)| c);
        let got_cause_m = got_cause.as_ref().map(cause_of);
        if got_cause_m != want_cause.map(Some) {
            self.fail(format_args!(
                "n{i}.cause() = {got_cause:?} ({got_cause_m:?}), model {want_cause:?}"
            ));
        }
        let want_deadline = m.deadline(i);
        let got_deadline = ctx.deadline().map(Instant::as_nanos);
        if got_deadline != want_deadline {
            self.fail(format_args!("n{i}.deadline() = {got_deadline:?}, model {want_deadline:?}"));
        }
        let want_remaining = want_deadline.map(|d| Duration::from_nanos(d.saturating_sub(m.now)));
        let got_remaining = ctx.remaining();
        if got_remaining != want_remaining {
            self.fail(format_args!(
                "n{i}.remaining() = {got_remaining:?}, model {want_remaining:?}"
            ));
        }
        if ctx.now() != Some(Instant::from_nanos(m.now)) {
            self.fail(format_args!("n{i}.now() = {:?}, model {}", ctx.now(), m.now));
        }
        for key in 0..=KEYS {
            let (got, want) = (value_of(ctx, key), m.value(i, key));
            if got != want {
                self.fail(format_args!("n{i}.value::<Key<{key}>>() = {got:?}, model {want:?}"));
            }
        }
        // Futures, polled once each with a waker that does nothing useful.
        let waker = Waker::from(Arc::new(Flag::default()));
        let mut cx = TaskContext::from_waker(&waker);
        let want_poll = want_err.map_or(Poll::Pending, Poll::Ready);
        let got = pin!(ctx.done()).poll(&mut cx);
        if got != want_poll {
            self.fail(format_args!("n{i}.done() polled {got:?}, model {want_poll:?}"));
        }
        let got = pin!(ctx.done_owned()).poll(&mut cx);
        if got != want_poll {
            self.fail(format_args!("n{i}.done_owned() polled {got:?}, model {want_poll:?}"));
        }
        let got = pin!(ctx.run(std::future::ready(7u8))).poll(&mut cx);
        let want = Poll::Ready(want_err.map_or(Ok(7u8), Err));
        if got != want {
            self.fail(format_args!("n{i}.run(ready) polled {got:?}, model {want:?}"));
        }
        let got = pin!(ctx.run(std::future::pending::<()>())).poll(&mut cx);
        let want = want_err.map_or(Poll::Pending, |e| Poll::Ready(Err(e)));
        if got != want {
            self.fail(format_args!("n{i}.run(pending) polled {got:?}, model {want:?}"));
        }
        if let Some(guard) = &self.guards[i] {
            if guard.is_done() != want_err.is_some() {
                self.fail(format_args!("n{i} guard.is_done() disagrees with model {want_err:?}"));
            }
        }
    }

    /// The checks after every op: states, guards, callbacks, wake-ups, timers, clock.
    fn check(&mut self) {
        if self.clock.now() != Instant::from_nanos(self.model.now) {
            self.fail(format_args!(
                "clock.now() = {:?}, model {}",
                self.clock.now(),
                self.model.now
            ));
        }
        for i in 0..self.handles.len() {
            let want = self.model.err(i);
            for (h, ctx) in self.handles[i].iter().enumerate() {
                let got = ctx.err();
                if got != want {
                    self.fail(format_args!("n{i} (handle {h}).err() = {got:?}, model {want:?}"));
                }
            }
            if let Some(guard) = &self.guards[i] {
                if guard.is_done() != want.is_some() {
                    self.fail(format_args!(
                        "n{i} guard.is_done() = {}, model {want:?}",
                        want.is_none()
                    ));
                }
            }
        }
        // after_func runs: exactly the expected ones, each once, after its context was done,
        // and after every waiter on the contexts of its completion was woken.
        let mut runs: Vec<Ran> = std::mem::take(&mut *self.log.lock().unwrap());
        runs.sort_unstable_by_key(|r| r.id);
        let got: Vec<(usize, Option<Seen>)> = runs.iter().map(|r| (r.id, r.seen)).collect();
        let mut want: Vec<(usize, Option<Seen>)> = self
            .expected_runs
            .iter()
            .map(|&id| {
                let af = &self.model.afs[id];
                let done = self.model.nodes[af.node].done;
                let seen = Seen {
                    err: done.map(|(err, _)| err),
                    cause: done.map(|(_, cause)| cause),
                    child_born_done_alike: true,
                    nested_after_func_ran_at_once: true,
                };
                (id, af.capture.then_some(seen))
            })
            .collect();
        want.sort_unstable_by_key(|&(id, _)| id);
        for &(id, _) in &got {
            if self.ran[id] {
                self.fail(format_args!("after_func af{id} ran a second time"));
            }
            self.ran[id] = true;
            self.stats.callbacks_run += 1;
        }
        if got != want {
            self.fail(format_args!(
                "after_func runs this step: got {got:?}, model {want:?} ((id, seen inside f))"
            ));
        }
        let mut wake_order_checks = 0;
        for (completed, ids) in &self.batches {
            for run in runs.iter().filter(|r| ids.contains(&r.id)) {
                for (w, waiter) in self.model.waiters.iter().enumerate() {
                    if waiter.held && completed.contains(&waiter.node) {
                        wake_order_checks += 1;
                        if !run.woken[w] {
                            self.fail(format_args!(
                                "af{} ran before waiter w{w} on n{} (same completion) was woken",
                                run.id, waiter.node
                            ));
                        }
                    }
                }
            }
        }
        self.stats.wake_order_checks += wake_order_checks;
        // Waiters registered on a context that is now done must have been woken.
        for (w, waiter) in self.waiters.iter().enumerate() {
            if let Some(waiter) = waiter {
                let i = self.model.waiters[w].node;
                if self.model.err(i).is_some() && !waiter.flag.0.load(Ordering::SeqCst) {
                    self.fail(format_args!("waiter w{w} on done n{i} was not woken"));
                }
            }
        }
        let want = self.model.pending_timers();
        let got = self.clock.pending_timers();
        if got != want {
            self.fail(format_args!("clock.pending_timers() = {got}, model {want}"));
        }
    }

    /// Drops everything, step by step with checks: waiters, guards (cancelling), then runs
    /// the clock out (firing the timers of contexts whose guard was detached), stops what can
    /// never run any more, drops the `AfterFunc` handles and the contexts; no timer may be left.
    fn teardown(mut self) -> Stats {
        self.stats.timers_fired = self.model.fired;
        self.stats.links = self.model.links.len();
        self.stats.links_fired = self.model.links_fired;
        self.clear_expected();
        for i in 0..self.handles.len() {
            if !self.handles[i].is_empty() {
                self.observe(i);
            }
        }
        for w in 0..self.waiters.len() {
            self.waiters[w] = None;
            self.model.waiters[w].held = false;
        }
        self.check();
        for i in 0..self.guards.len() {
            if let Some(guard) = self.guards[i].take() {
                self.clear_expected();
                drop(guard);
                self.model.nodes[i].guard = false;
                if !self.mutated(Mutation::GuardDropDoesNotCancel) {
                    self.model_complete(i, Error::Canceled, MCause::Err(Error::Canceled));
                }
                self.check();
            }
        }
        self.clear_expected();
        self.clock.set(Instant::MAX);
        self.model_advance_to(u64::MAX);
        self.check();
        self.clear_expected();
        for k in 0..self.afs.len() {
            match std::mem::replace(&mut self.afs[k], AfSlot::Gone) {
                AfSlot::Held(handle) | AfSlot::Buried(handle) => {
                    if self.model.afs[k].reg == Reg::Pending {
                        // Nothing can complete its context any more: release it.
                        let got = handle.stop();
                        let want = self.model.stop(k);
                        if got != want {
                            self.fail(format_args!("teardown af{k}.stop() = {got}, model {want}"));
                        }
                    }
                    drop(handle);
                    self.model.afs[k].handle = false;
                }
                AfSlot::Gone => {}
            }
        }
        self.check();
        for i in 0..self.handles.len() {
            let handles = std::mem::take(&mut self.handles[i]);
            self.model.nodes[i].handles = 0;
            drop(handles);
            self.check();
        }
        let left = self.clock.pending_timers();
        if left != 0 {
            self.fail(format_args!("{left} timers left after dropping everything"));
        }
        if self.leak_free {
            if let Some(k) = self.model.afs.iter().position(|af| af.reg == Reg::Pending) {
                self.fail(format_args!("harness bug: af{k} is still pending (leaked)"));
            }
        }
        self.stats
    }
}

fn poll_waiter(waiter: &mut RealWaiter) -> Option<Error> {
    let mut cx = TaskContext::from_waker(&waiter.waker);
    match Pin::new(&mut waiter.future).poll(&mut cx) {
        Poll::Ready(err) => Some(err),
        Poll::Pending => None,
    }
}
