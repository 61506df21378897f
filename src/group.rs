//! [`Group`]: Go's `errgroup.WithContext`, for any executor and for threads.

use alloc::sync::Arc as StdArc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};

use event_listener::{Event, IntoNotification};
use futures_core::future::FusedFuture;

use crate::context::{CancelGuard, Context};
use crate::error::Cause;
use crate::relay::{deferred_wakes, Waiter};
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};
use crate::wait_group::{WaitGroup, WaitGroupWait, WaitGuard};

/// `limit` when there is none.
const UNLIMITED: usize = usize::MAX;

/// A group of tasks working on one job, which fails as a whole at the first error: Go's
/// `errgroup.WithContext`.
///
/// The group owns a child of the parent context, [`context()`](Group::context), which every
/// member receives. It is cancelled
///
/// - at the first member error (its [`cause`](Context::cause) is that error: downcast it to
///   `E`),
/// - when a member panics (cause: [`MemberPanicked`], with `std`),
/// - when the parent is done,
/// - when [`wait`](Group::wait) or [`wait_blocking`](Group::wait_blocking) returns (Go's
///   rule), and when the group is dropped.
///
/// Members are started with [`go`](Group::go) (a future you spawn on your executor or await:
/// the crate never picks an executor) or [`go_thread`](Group::go_thread) (a new std thread).
/// Each counts from its `go` call until it has finished; a member future dropped before it
/// finishes stops counting (that is not an error). [`wait`](Group::wait) waits for every
/// member counted so far and returns the first error.
///
/// # Errors
///
/// `wait` returns the first error as an `Arc<E>`: the same allocation as the context's
/// cause, so it can be returned by every call to `wait` (calling it twice is fine) without
/// requiring `E: Clone`. Later errors are dropped.
///
/// # Limits
///
/// [`set_limit`](Group::set_limit) bounds how many members run their function at once. A
/// member over the limit waits for a slot before its function is called (asynchronously for
/// `go`, blocking the caller for `go_thread`); [`try_go`](Group::try_go) and
/// [`try_go_thread`](Group::try_go_thread) take a slot or give up at once. Unlike Go, the
/// limit may be changed while members run (Go panics): the new limit applies to members
/// that have not started yet; running members keep their slots, so after lowering it more
/// members than the new limit may run until enough of them finish. `Some(0)` admits no one
/// until the limit is raised.
///
/// # Panics
///
/// With `std`, a member that panics (a thread, or a member future's `poll`, or its function,
/// or its `Drop` when it finishes; also user code the group runs on a member's behalf: an
/// `after_func` callback on the group's context run by the member's error, or the `Drop` of a
/// later error) does not unwind into your executor: the group's context is
/// cancelled with [`MemberPanicked`] as the cause, the other members carry on until they see
/// it, and `wait` / `wait_blocking` resume the first panic once every member has finished
/// (the convention of `std::thread::scope`; Go's errgroup lets it crash the process). Without
/// `std` a panic unwinds through the executor as usual; the member's count and slot are
/// still released when the executor drops the future.
///
/// # Examples
///
/// Go's errgroup over URLs: fetch all, stop at the first failure.
///
/// ```
/// use cancelctx::{Context, Group};
/// use std::time::Duration;
///
/// #[derive(Debug)]
/// struct FetchError(String);
/// impl std::fmt::Display for FetchError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "fetching {} failed", self.0)
///     }
/// }
/// impl std::error::Error for FetchError {}
///
/// async fn fetch(ctx: Context, url: &'static str) -> Result<(), FetchError> {
///     // A stand-in for an HTTP request bounded by `ctx`.
///     match ctx.sleep(Duration::from_millis(1)).await {
///         Ok(()) if url.contains(".invalid") => Err(FetchError(url.into())),
///         Ok(()) => Ok(()),
///         Err(_cancelled) => Ok(()), // another fetch failed: stop quietly
///     }
/// }
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// let urls = ["http://www.golang.org/", "http://www.google.com/", "http://www.somestupidname.invalid/"];
/// let group = Group::new(&Context::background());
/// for url in urls {
///     tokio::spawn(group.go(move |ctx| fetch(ctx, url)));
/// }
/// let err = group.wait().await.unwrap_err();
/// assert_eq!(err.to_string(), "fetching http://www.somestupidname.invalid/ failed");
/// let cause = group.context().cause().unwrap();
/// assert!(cause.downcast_ref::<FetchError>().is_some());
/// # }
/// ```
pub struct Group<E> {
    shared: Arc<Shared<E>>,
}

struct Shared<E> {
    ctx: Context,
    guard: CancelGuard,
    members: WaitGroup,
    error: Mutex<Option<StdArc<E>>>,
    #[cfg(feature = "std")]
    panic: Mutex<PanicSlot>,
    slots: Slots,
}

/// The first member panic, kept for `wait` to resume.
#[cfg(feature = "std")]
enum PanicSlot {
    None,
    Payload(std::boxed::Box<dyn core::any::Any + Send + 'static>),
    /// An earlier `wait` resumed it.
    Resumed,
}

impl<E: core::error::Error + Send + Sync + 'static> Group<E> {
    /// A group whose context is a child of `parent`.
    ///
    /// ```
    /// use cancelctx::{Context, Group};
    /// let (parent, cancel) = Context::unclocked().with_cancel();
    /// let group: Group<std::io::Error> = Group::new(&parent);
    /// cancel.cancel();
    /// assert!(group.context().is_done());
    /// ```
    #[must_use]
    pub fn new(parent: &Context) -> Group<E> {
        let (ctx, guard) = parent.with_cancel();
        Group {
            shared: Arc::new(Shared {
                ctx,
                guard,
                members: WaitGroup::new(),
                error: Mutex::new(None),
                #[cfg(feature = "std")]
                panic: Mutex::new(PanicSlot::None),
                slots: Slots::new(),
            }),
        }
    }

    /// The group's context: the one every member receives.
    ///
    /// ```
    /// let group: cancelctx::Group<std::io::Error> = cancelctx::Group::new(&cancelctx::Context::unclocked());
    /// assert!(!group.context().is_done());
    /// ```
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.shared.ctx
    }

    /// A member: a future that waits for a slot (if a limit is set), calls `f` with the
    /// group's context, and runs the future `f` returns, recording its error. Spawn it on
    /// your executor or await it; it is `Send` when `F` and `Fut` are, and `'static` when they
    /// are. The member counts from this call until it finishes or is dropped.
    ///
    /// As in Go, `f` is called even if the group's context is already done (after an
    /// error, or after `wait`): check the context it receives.
    ///
    /// ```
    /// use cancelctx::{Context, Group};
    /// let group: Group<std::fmt::Error> = Group::new(&Context::unclocked());
    /// let member = group.go(|ctx| async move {
    ///     ctx.check().map_err(|_| std::fmt::Error)?;
    ///     Ok(())
    /// });
    /// pollster::block_on(member);
    /// assert!(pollster::block_on(group.wait()).is_ok());
    /// ```
    pub fn go<F, Fut>(&self, f: F) -> Member<E, F, Fut>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let count = self.shared.members.add();
        Member::new(self.shared.clone(), count, None, f)
    }

    /// [`go`](Group::go) if a slot is free now: `None` (and `f` dropped) at the limit.
    ///
    /// ```
    /// use cancelctx::{Context, Group};
    /// let group: Group<std::fmt::Error> = Group::new(&Context::unclocked());
    /// group.set_limit(Some(1));
    /// let first = group.try_go(|_ctx| async { Ok(()) }).expect("a slot is free");
    /// assert!(group.try_go(|_ctx| async { Ok(()) }).is_none());
    /// pollster::block_on(first);
    /// assert!(group.try_go(|_ctx| async { Ok(()) }).is_some());
    /// ```
    pub fn try_go<F, Fut>(&self, f: F) -> Option<Member<E, F, Fut>>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let slot = self.shared.slots.try_acquire()?;
        let count = self.shared.members.add();
        Some(Member::new(self.shared.clone(), count, Some(slot), f))
    }

    /// Sets how many members may run their function at once (`None`: no limit, the
    /// default). See [Limits](Group#limits) for changes while members run.
    ///
    /// ```
    /// let group: cancelctx::Group<std::io::Error> = cancelctx::Group::new(&cancelctx::Context::unclocked());
    /// group.set_limit(Some(4));
    /// assert_eq!(group.limit(), Some(4));
    /// group.set_limit(None);
    /// assert_eq!(group.limit(), None);
    /// ```
    pub fn set_limit(&self, limit: Option<usize>) {
        self.shared.slots.set_limit(limit);
    }

    /// The current limit, if any.
    ///
    /// ```
    /// let group: cancelctx::Group<std::io::Error> = cancelctx::Group::new(&cancelctx::Context::unclocked());
    /// assert_eq!(group.limit(), None);
    /// ```
    #[must_use]
    pub fn limit(&self) -> Option<usize> {
        match self.shared.slots.limit.load(Ordering::Relaxed) {
            UNLIMITED => None,
            n => Some(n),
        }
    }

    /// Members counted and not finished yet (waiting for a slot or running).
    ///
    /// ```
    /// let group: cancelctx::Group<std::io::Error> = cancelctx::Group::new(&cancelctx::Context::unclocked());
    /// let member = group.go(|_ctx| async { Ok(()) });
    /// assert_eq!(group.members(), 1);
    /// drop(member); // never run: stops counting
    /// assert_eq!(group.members(), 0);
    /// ```
    #[must_use]
    pub fn members(&self) -> usize {
        self.shared.members.count()
    }

    /// Waits until every member counted so far has finished, cancels the group's context,
    /// and returns the first error (see [Errors](Group#errors)), or resumes the first member
    /// panic (see [Panics](Group#panics)). Calling it again returns the same result.
    ///
    /// ```
    /// use cancelctx::{Context, Group};
    /// let group: Group<std::fmt::Error> = Group::new(&Context::unclocked());
    /// pollster::block_on(group.go(|_ctx| async { Err(std::fmt::Error) }));
    /// assert!(pollster::block_on(group.wait()).is_err());
    /// assert!(group.context().is_done());
    /// ```
    pub fn wait(&self) -> GroupWait<'_, E> {
        GroupWait { group: self, members: self.shared.members.wait(), finished: false }
    }

    /// Cancels the context, then the first panic or the first error.
    fn result(&self) -> Result<(), StdArc<E>> {
        self.shared.guard.cancel();
        #[cfg(feature = "std")]
        {
            let mut panic = self.shared.panic.lock();
            match core::mem::replace(&mut *panic, PanicSlot::None) {
                PanicSlot::None => *panic = PanicSlot::None,
                PanicSlot::Payload(payload) => {
                    *panic = PanicSlot::Resumed;
                    drop(panic);
                    std::panic::resume_unwind(payload);
                }
                PanicSlot::Resumed => {
                    *panic = PanicSlot::Resumed;
                    drop(panic);
                    panic!("a member of this group panicked (an earlier wait resumed its panic)");
                }
            }
        }
        match &*self.shared.error.lock() {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }
}

impl<E> Shared<E>
where
    E: core::error::Error + Send + Sync + 'static,
{
    /// Records `err` if it is the first and cancels the group with it.
    fn fail(&self, err: E) {
        self.contain(move || {
            let err = StdArc::new(err);
            {
                let mut first = self.error.lock();
                if first.is_some() {
                    return; // later errors are dropped (outside the lock, with `err`)
                }
                *first = Some(err.clone());
            }
            let cause: Cause = err;
            self.guard.cancel_with_cause(cause);
        });
    }

    /// Records the first panic and cancels the group with [`MemberPanicked`].
    #[cfg(feature = "std")]
    fn panicked(&self, payload: std::boxed::Box<dyn core::any::Any + Send + 'static>) {
        let cause = MemberPanicked::from_payload(&*payload);
        {
            let mut slot = self.panic.lock();
            if let PanicSlot::None = *slot {
                *slot = PanicSlot::Payload(payload);
            }
        }
        // A panic of the cancel (an `after_func` callback on the group's context) is
        // resumed by the cancel after the context is done; the first panic is kept already.
        let cancelled = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
            self.guard.cancel_with(cause);
        }));
        drop(cancelled);
    }

    /// Runs bookkeeping that may call user code (`E`'s `Drop`, `after_func` callbacks run
    /// by cancelling the group's context). With `std`, a panic there is a member panic:
    /// recorded, the group cancelled, and resumed by `wait`; it never unwinds into the
    /// member's executor.
    fn contain(&self, f: impl FnOnce()) {
        #[cfg(feature = "std")]
        if let Err(payload) = std::panic::catch_unwind(core::panic::AssertUnwindSafe(f)) {
            self.panicked(payload);
        }
        #[cfg(not(feature = "std"))]
        f();
    }
}

// A `Group` is observed only through atomics and locks whose data is never left half-updated
// (panics of user code are caught, or resumed only after the state is recorded), so using it
// after a caught panic is sound and sees consistent state: the same reasoning as
// `std::sync::Mutex` without poisoning. The auto traits are lost only to the `dyn` cause,
// clock and panic payload it holds.
impl<E> core::panic::UnwindSafe for Group<E> {}
impl<E> core::panic::RefUnwindSafe for Group<E> {}

impl<E> Drop for Group<E> {
    /// Cancels the group's context: running members see it done; nobody waits for them.
    fn drop(&mut self) {
        self.shared.guard.cancel();
    }
}

impl<E> fmt::Debug for Group<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = self.shared.slots.limit.load(Ordering::Relaxed);
        f.debug_struct("Group")
            .field("members", &self.shared.members.count())
            .field("running", &self.shared.slots.running.load(Ordering::Relaxed))
            .field("limit", &(limit != UNLIMITED).then_some(limit))
            .field("context", &self.shared.ctx)
            .finish_non_exhaustive()
    }
}

/// The limit's slots: how many members run their function, and at most how many may.
struct Slots {
    running: AtomicUsize,
    limit: AtomicUsize,
    /// Notified (one more listener per freed slot, all on a limit change) for members
    /// waiting for a slot.
    freed: Event,
}

impl Slots {
    fn new() -> Slots {
        Slots {
            running: AtomicUsize::new(0),
            limit: AtomicUsize::new(UNLIMITED),
            freed: Event::new(),
        }
    }

    fn set_limit(&self, limit: Option<usize>) {
        // memory ordering: SeqCst, with `try_acquire`'s loads and event-listener's fence in
        // `notify`: a waiter that listened before re-checking sees the new limit or is woken.
        self.limit.store(limit.unwrap_or(UNLIMITED), Ordering::SeqCst);
        deferred_wakes(|| self.freed.notify(usize::MAX.additional()));
    }

    fn try_acquire(&self) -> Option<Slot<'_>> {
        let mut running = self.running.load(Ordering::SeqCst);
        loop {
            if running >= self.limit.load(Ordering::SeqCst) {
                return None;
            }
            // memory ordering: SeqCst, see `set_limit` (the slot protects no data).
            match self.running.compare_exchange_weak(
                running,
                running + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot { slots: self }),
                Err(actual) => running = actual,
            }
        }
    }

    fn release(&self) {
        // memory ordering: SeqCst; the notification below fences before it reads whether
        // anyone listens, so a waiter that listened and then found no slot is woken.
        self.running.fetch_sub(1, Ordering::SeqCst);
        // One more listener per freed slot ("additional": not absorbed by listeners that are
        // notified but have not taken their slot yet); a notified listener dropped without
        // taking a slot passes its notification on.
        deferred_wakes(|| self.freed.notify(1.additional()));
    }
}

/// A taken slot; dropping it frees the slot.
struct Slot<'a> {
    slots: &'a Slots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.release();
    }
}

/// A slot that keeps the group alive, held by a member while its function runs.
struct OwnedSlot<E> {
    shared: Arc<Shared<E>>,
}

impl<E> Drop for OwnedSlot<E> {
    fn drop(&mut self) {
        self.shared.slots.release();
    }
}

impl<E> OwnedSlot<E> {
    /// Moves `slot` into an owned slot of `shared`'s group.
    fn new(shared: &Arc<Shared<E>>, slot: Slot<'_>) -> OwnedSlot<E> {
        core::mem::forget(slot); // released by the owned slot's drop instead
        OwnedSlot { shared: shared.clone() }
    }
}

enum Stage<F, Fut> {
    /// Waiting for a slot (with `slot_waiter`) before calling `f`.
    Start(Option<F>),
    Running(Fut),
    Finished,
}

/// Future returned by [`Group::go`] and [`Group::try_go`]: one member of a [`Group`].
///
/// It waits for a slot if the group has a limit, calls the member's function with the
/// group's context, and runs the returned future; its output is `()` (the result goes to
/// the group). It counts in the group from the `go` call until it finishes or is dropped;
/// dropping it also frees its slot.
///
/// ```
/// use cancelctx::{Context, Group};
/// let group: Group<std::fmt::Error> = Group::new(&Context::unclocked());
/// let member = group.go(|_ctx| async { Ok(()) });
/// assert!(format!("{member:?}").contains("Member"));
/// pollster::block_on(member);
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Member<E, F, Fut> {
    /// Structurally pinned (it holds `Fut`); dropped first, so the member's slot and count
    /// are released after its future is gone, even if the future's `Drop` panics.
    stage: Stage<F, Fut>,
    slot_waiter: Waiter,
    slot: Option<OwnedSlot<E>>,
    count: Option<WaitGuard>,
    shared: Arc<Shared<E>>,
}

/// How a member ended.
enum Outcome<E> {
    Ok,
    Err(E),
    #[cfg(feature = "std")]
    Panicked(std::boxed::Box<dyn core::any::Any + Send + 'static>),
}

/// Runs `f`, catching a panic with `std`.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    #[cfg(feature = "std")]
    {
        std::panic::catch_unwind(core::panic::AssertUnwindSafe(f))
    }
    #[cfg(not(feature = "std"))]
    {
        Ok(f())
    }
}

#[cfg(feature = "std")]
type Panic = std::boxed::Box<dyn core::any::Any + Send + 'static>;
#[cfg(not(feature = "std"))]
type Panic = core::convert::Infallible;

impl<E, F, Fut> Member<E, F, Fut>
where
    E: core::error::Error + Send + Sync + 'static,
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    fn new(
        shared: Arc<Shared<E>>,
        count: WaitGuard,
        slot: Option<Slot<'_>>,
        f: F,
    ) -> Member<E, F, Fut> {
        let slot = slot.map(|slot| OwnedSlot::new(&shared, slot));
        Member {
            stage: Stage::Start(Some(f)),
            slot_waiter: Waiter::default(),
            slot,
            count: Some(count),
            shared,
        }
    }
}

impl<E, F, Fut> Future for Member<E, F, Fut>
where
    E: core::error::Error + Send + Sync + 'static,
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        // Only `stage`'s `Running(Fut)` is structurally pinned: `Fut` is dropped in place by
        // `Pin::set`, never moved; `F` in `Start` and the other fields are never pinned.
        // SAFETY: per the above, nothing pinned is moved out of `this`.
        let this = unsafe { self.get_unchecked_mut() };
        loop {
            match &mut this.stage {
                Stage::Finished => return Poll::Ready(()),
                Stage::Start(f) => {
                    if this.slot.is_none() {
                        match this.shared.slots.try_acquire() {
                            Some(slot) => {
                                this.slot_waiter.clear();
                                this.slot = Some(OwnedSlot::new(&this.shared, slot));
                            }
                            None if this.slot_waiter.is_listening() => {
                                match this.slot_waiter.poll(cx) {
                                    Poll::Ready(()) => continue,
                                    Poll::Pending => return Poll::Pending,
                                }
                            }
                            None => {
                                // Listen, then try again: a slot freed in between either
                                // is seen by the retry or notifies this listener.
                                this.slot_waiter.listen(&this.shared.slots.freed);
                                continue;
                            }
                        }
                    }
                    let f = f.take().expect("a member's function is called once");
                    let ctx = this.shared.ctx.clone();
                    match guarded(move || f(ctx)) {
                        Ok(fut) => {
                            // SAFETY: `stage` is pinned (see above); `set` drops the old
                            // variant (an empty `Start`) in place.
                            unsafe { Pin::new_unchecked(&mut this.stage) }.set(Stage::Running(fut));
                        }
                        #[cfg(feature = "std")]
                        Err(payload) => {
                            this.finish(Outcome::Panicked(payload));
                            return Poll::Ready(());
                        }
                    }
                }
                Stage::Running(fut) => {
                    // SAFETY: `stage` is pinned and `fut` is never moved (see above).
                    let fut = unsafe { Pin::new_unchecked(fut) };
                    let outcome = match guarded(|| fut.poll(cx)) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(()))) => Outcome::Ok,
                        Ok(Poll::Ready(Err(err))) => Outcome::Err(err),
                        #[cfg(feature = "std")]
                        Err(payload) => Outcome::Panicked(payload),
                    };
                    this.finish(outcome);
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl<E, F, Fut> Member<E, F, Fut>
where
    E: core::error::Error + Send + Sync + 'static,
{
    /// Records the outcome, drops the member's future, then frees its slot and count (in
    /// that order: `wait` must find the outcome recorded when the count reaches zero).
    fn finish(&mut self, outcome: Outcome<E>) {
        match outcome {
            Outcome::Ok => {}
            Outcome::Err(err) => self.shared.fail(err),
            #[cfg(feature = "std")]
            Outcome::Panicked(payload) => self.shared.panicked(payload),
        }
        // SAFETY: `stage` is pinned (see `poll`); `set` drops the future in place.
        let dropped =
            guarded(|| unsafe { Pin::new_unchecked(&mut self.stage) }.set(Stage::Finished));
        #[cfg(feature = "std")]
        if let Err(payload) = dropped {
            self.shared.panicked(payload);
        }
        #[cfg(not(feature = "std"))]
        let _ = dropped;
        self.slot = None;
        self.count = None;
    }
}

impl<E, F, Fut: Future> FusedFuture for Member<E, F, Fut>
where
    E: core::error::Error + Send + Sync + 'static,
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    fn is_terminated(&self) -> bool {
        matches!(self.stage, Stage::Finished)
    }
}

impl<E, F, Fut> fmt::Debug for Member<E, F, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match (&self.stage, &self.slot) {
            (Stage::Start(_), None) => "waiting for a slot",
            (Stage::Start(_), Some(_)) => "starting",
            (Stage::Running(_), _) => "running",
            (Stage::Finished, _) => "finished",
        };
        f.debug_struct("Member").field("stage", &stage).finish_non_exhaustive()
    }
}

/// Future returned by [`Group::wait`]: resolves once every member counted so far has
/// finished, to the first error; see [`Group::wait`].
///
/// ```
/// let group: cancelctx::Group<std::io::Error> = cancelctx::Group::new(&cancelctx::Context::unclocked());
/// assert!(pollster::block_on(group.wait()).is_ok());
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct GroupWait<'a, E> {
    group: &'a Group<E>,
    members: WaitGroupWait<'a>,
    finished: bool,
}

impl<E: core::error::Error + Send + Sync + 'static> Future for GroupWait<'_, E> {
    type Output = Result<(), StdArc<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if Pin::new(&mut this.members).poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.finished = true;
        Poll::Ready(this.group.result())
    }
}

impl<E: core::error::Error + Send + Sync + 'static> FusedFuture for GroupWait<'_, E> {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl<E> fmt::Debug for GroupWait<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupWait")
            .field("members", &self.group.shared.members.count())
            .field("finished", &self.finished)
            .finish()
    }
}

#[cfg(feature = "std")]
pub use self::threads::MemberPanicked;

#[cfg(feature = "std")]
mod threads {
    use std::string::String;

    use super::*;

    /// The [`cause`](Context::cause) of a [`Group`]'s context when a member panicked. The
    /// panic itself is resumed by [`Group::wait`] / [`Group::wait_blocking`].
    ///
    /// ```
    /// use cancelctx::{Context, Group, MemberPanicked};
    /// let group: Group<std::io::Error> = Group::new(&Context::unclocked());
    /// group.go_thread(|_ctx| panic!("boom"));
    /// let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| group.wait_blocking()));
    /// assert!(resumed.is_err());
    /// let cause = group.context().cause().unwrap();
    /// let panicked = cause.downcast_ref::<MemberPanicked>().unwrap();
    /// assert_eq!(panicked.message(), Some("boom"));
    /// assert_eq!(panicked.to_string(), "a member of the group panicked: boom");
    /// ```
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct MemberPanicked {
        message: Option<String>,
    }

    impl MemberPanicked {
        pub(super) fn from_payload(payload: &(dyn core::any::Any + Send)) -> MemberPanicked {
            let message = payload
                .downcast_ref::<&'static str>()
                .map(|s| String::from(*s))
                .or_else(|| payload.downcast_ref::<String>().cloned());
            MemberPanicked { message }
        }

        /// The panic message, if the payload was a string (as `panic!` makes it).
        ///
        /// ```
        /// # use cancelctx::{Context, Group, MemberPanicked};
        /// let group: Group<std::io::Error> = Group::new(&Context::unclocked());
        /// group.go_thread(|_ctx| std::panic::panic_any(7u8));
        /// let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| group.wait_blocking()));
        /// let cause = group.context().cause().unwrap();
        /// assert_eq!(cause.downcast_ref::<MemberPanicked>().unwrap().message(), None);
        /// ```
        #[must_use]
        pub fn message(&self) -> Option<&str> {
            self.message.as_deref()
        }
    }

    impl fmt::Display for MemberPanicked {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.message {
                Some(message) => write!(f, "a member of the group panicked: {message}"),
                None => f.write_str("a member of the group panicked"),
            }
        }
    }

    impl std::error::Error for MemberPanicked {}

    impl<E: core::error::Error + Send + Sync + 'static> Group<E> {
        /// Runs `f` with the group's context on a new std thread, as a member. If the group
        /// has a limit and no slot is free, this blocks the calling thread until one is (Go's
        /// `Go` with `SetLimit`). The member counts from this call.
        ///
        /// # Panics
        ///
        /// If the operating system cannot create a thread (as `std::thread::spawn`); the
        /// member's count and slot are released first. A panic of `f` itself is caught: see
        /// [Panics](Group#panics).
        ///
        /// ```
        /// use cancelctx::{Context, Group};
        /// let group: Group<std::num::ParseIntError> = Group::new(&Context::unclocked());
        /// group.go_thread(|_ctx| "12".parse::<u8>().map(drop));
        /// group.go_thread(|_ctx| "x".parse::<u8>().map(drop));
        /// assert!(group.wait_blocking().is_err());
        /// ```
        pub fn go_thread<F>(&self, f: F)
        where
            F: FnOnce(Context) -> Result<(), E> + Send + 'static,
        {
            let count = self.shared.members.add();
            let slot = self.acquire_blocking();
            self.spawn(count, slot, f);
        }

        /// [`go_thread`](Group::go_thread) if a slot is free now; `false` (and `f` dropped)
        /// at the limit.
        ///
        /// # Panics
        ///
        /// As [`go_thread`](Group::go_thread).
        ///
        /// ```
        /// use cancelctx::{Context, Group};
        /// let group: Group<std::io::Error> = Group::new(&Context::unclocked());
        /// group.set_limit(Some(0));
        /// assert!(!group.try_go_thread(|_ctx| Ok(())));
        /// group.set_limit(None);
        /// assert!(group.try_go_thread(|_ctx| Ok(())));
        /// group.wait_blocking().unwrap();
        /// ```
        #[must_use = "`false` means `f` was not run"]
        pub fn try_go_thread<F>(&self, f: F) -> bool
        where
            F: FnOnce(Context) -> Result<(), E> + Send + 'static,
        {
            let Some(slot) = self.shared.slots.try_acquire() else { return false };
            let slot = OwnedSlot::new(&self.shared, slot);
            let count = self.shared.members.add();
            self.spawn(count, slot, f);
            true
        }

        /// Blocks the thread until every member counted so far has finished; otherwise as
        /// [`wait`](Group::wait).
        ///
        /// ```
        /// use cancelctx::{Context, Group};
        /// let group: Group<std::io::Error> = Group::new(&Context::unclocked());
        /// group.go_thread(|ctx| {
        ///     assert!(!ctx.is_done());
        ///     Ok(())
        /// });
        /// group.wait_blocking().unwrap();
        /// assert!(group.context().is_done()); // Go's rule: Wait cancels
        /// ```
        pub fn wait_blocking(&self) -> Result<(), StdArc<E>> {
            self.shared.members.wait_blocking();
            self.result()
        }

        fn acquire_blocking(&self) -> OwnedSlot<E> {
            let slots = &self.shared.slots;
            let mut waiter = Waiter::default();
            loop {
                if let Some(slot) = slots.try_acquire() {
                    return OwnedSlot::new(&self.shared, slot);
                }
                if waiter.is_listening() {
                    waiter.wait();
                } else {
                    waiter.listen(&slots.freed);
                }
            }
        }

        fn spawn<F>(&self, count: WaitGuard, slot: OwnedSlot<E>, f: F)
        where
            F: FnOnce(Context) -> Result<(), E> + Send + 'static,
        {
            let shared = self.shared.clone();
            let body = move || {
                let outcome = match std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
                    f(shared.ctx.clone())
                })) {
                    Ok(Ok(())) => Outcome::Ok,
                    Ok(Err(err)) => Outcome::Err(err),
                    Err(payload) => Outcome::Panicked(payload),
                };
                match outcome {
                    Outcome::Ok => {}
                    Outcome::Err(err) => shared.fail(err),
                    Outcome::Panicked(payload) => shared.panicked(payload),
                }
                drop(slot);
                drop(count);
            };
            if let Err(err) = std::thread::Builder::new().spawn(body) {
                // `body` (with the count and slot) was dropped by `spawn`.
                panic!("failed to spawn a group member thread: {err}");
            }
        }
    }
}
