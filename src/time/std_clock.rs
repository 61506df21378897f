//! [`StdClock`]: the clock of [`Context::background`](crate::Context::background).

use std::boxed::Box;
use std::cell::Cell;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::Waker;
use std::thread_local;
use std::vec::Vec;

use super::{Clock, Instant, TimerKey};

// The primitives of the wake-up protocol between `schedule` and the timer thread: loom's
// under `cfg(loom)`, so that `tests/loom.rs` explores it (through [`model`]).
#[cfg(loom)]
use loom::sync::{atomic::AtomicU64, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{atomic::AtomicU64, Condvar, Mutex, MutexGuard};

/// Real time (`std::time::Instant`) with timers on one lazily started thread per process.
///
/// - No thread exists until the first deadline is scheduled; then a single thread named
///   `cancelctx-timer` serves every deadline of every tree on this clock. It does not keep
///   the process alive (Rust never waits for spawned threads at exit).
/// - Timers live in shards (about two per CPU), each behind its own lock; a thread schedules
///   into its own shard, so threads that create and cancel timeouts at the same time do not
///   contend. Scheduling and cancelling are O(1) in the common case (a slot in a slab and a
///   min-heap entry that a cancel leaves behind, dropped later); memory is bounded by about
///   twice the peak of pending timers of a shard and given back when the shard has none.
/// - The timer thread sleeps until the earliest deadline of all shards. A new timer wakes it
///   (a futex syscall) only if it is due earlier than that sleep.
/// - Deadlines fire within about a millisecond (the OS's condition-variable latency).
/// - `after_func` callbacks of contexts completed by a deadline run on that thread: a slow
///   callback delays later timers, so hand heavy work to another thread. A panicking waker or
///   callback is caught there (the panic hook prints it, nobody receives it) and the thread
///   goes on; should the thread ever end, it is started again.
///
/// Instants count from the first time the process read this clock. One shard holds at most
/// 2^26 pending timers (`schedule` panics beyond: that is over 15 GB of timeout contexts).
///
/// ```
/// use cancelctx::{Clock, StdClock};
/// let t = StdClock.now();
/// let std_t = StdClock::to_std(t);
/// assert_eq!(StdClock::from_std(std_t), t);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StdClock;

// A `TimerKey`'s id: | seq (32 bits) | slot (26 bits) | shard (6 bits) |. `seq` tells a slot's
// successive timers apart; `cancel` also compares the key's deadline with the slot's, so a
// stale key (a timer that fired while its context was being cancelled) can only release a
// newer timer if that one reused its slot, got the same 32-bit sequence number 2^32
// schedules later on that shard, and has the same deadline to the nanosecond.
const SHARD_BITS: u32 = 6;
const MAX_SHARDS: usize = 1 << SHARD_BITS;
const SLOT_BITS: u32 = 26;
const MAX_SLOTS: usize = 1 << SLOT_BITS;
const SEQ_SHIFT: u32 = SHARD_BITS + SLOT_BITS;

/// Slots and heap entries a shard keeps allocated while it has no timers (it allocates them
/// on first use and shrinks back to them when it empties after a burst).
const KEEP: usize = 32;
/// Cancelled entries a heap may hold beyond its live ones before it is compacted.
const SLACK: usize = 32;

struct Shared {
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// When the timer thread wakes up by itself, in nanoseconds on this clock; `u64::MAX`
    /// while it waits for a first timer or is not running. A schedule earlier than this
    /// wakes it ([`kick`]).
    sleeping_until: AtomicU64,
    control: Mutex<Control>,
    changed: Condvar,
}

/// Keeps each shard's lock on its own cache line(s), so shards used by different threads
/// do not share one.
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Default)]
struct Control {
    thread_started: bool,
    /// Set by [`kick`]; the timer thread scans the shards again before it sleeps.
    kicked: bool,
}

/// The timers of one shard: a slab of slots (free ones chained from `free`) and a min-heap
/// of `(deadline, slot, seq)`. Cancelling frees the slot and leaves its heap entry behind:
/// an entry whose slot no longer holds its `seq` is stale, skipped when it reaches the top
/// and removed in bulk when stale entries outnumber live ones (amortized O(1) per cancel).
struct Shard {
    slots: Vec<Slot>,
    /// The first free slot, or `NO_SLOT`.
    free: u32,
    live: usize,
    heap: BinaryHeap<Entry>,
    /// The next sequence number (never 0: 0 marks a free slot).
    seq: u32,
}

/// No slot (slot numbers are below `MAX_SLOTS`). A slot is 32 bytes.
const NO_SLOT: u32 = u32::MAX;

impl Default for Shard {
    fn default() -> Shard {
        Shard { slots: Vec::new(), free: NO_SLOT, live: 0, heap: BinaryHeap::new(), seq: 0 }
    }
}

struct Slot {
    /// 0 while free.
    seq: u32,
    /// The next free slot (or `NO_SLOT`), while free.
    next_free: u32,
    deadline: Instant,
    waker: Option<Waker>,
}

/// A heap entry, ordered so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry {
    deadline: Instant,
    slot: u32,
    seq: u32,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (other.deadline, other.slot, other.seq).cmp(&(self.deadline, self.slot, self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Shard {
    fn insert(&mut self, shard: usize, deadline: Instant, waker: Waker) -> TimerKey {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let slot = match self.free {
            NO_SLOT => {
                let slot = self.slots.len();
                // 2^26 pending timers in one shard are more than 15 GB of timeout nodes.
                assert!(slot < MAX_SLOTS, "more than 2^26 pending timers on one StdClock shard");
                if self.slots.capacity() == 0 {
                    self.slots.reserve_exact(KEEP);
                }
                self.slots.push(Slot { seq, next_free: NO_SLOT, deadline, waker: Some(waker) });
                slot as u32
            }
            slot => {
                let entry = &mut self.slots[slot as usize];
                self.free = entry.next_free;
                *entry = Slot { seq, next_free: NO_SLOT, deadline, waker: Some(waker) };
                slot
            }
        };
        if self.heap.capacity() == 0 {
            self.heap.reserve_exact(KEEP);
        }
        // O(1) when deadlines come in increasing order (the usual case: one timeout length).
        self.heap.push(Entry { deadline, slot, seq });
        self.live += 1;
        let id = (u64::from(seq) << SEQ_SHIFT) | (u64::from(slot) << SHARD_BITS) | shard as u64;
        TimerKey::new(deadline, id)
    }

    /// Takes the waker of `key` if it is still pending here.
    fn remove(&mut self, key: TimerKey) -> Option<Waker> {
        let id = key.id();
        let slot = (id >> SHARD_BITS) as usize & (MAX_SLOTS - 1);
        let seq = (id >> SEQ_SHIFT) as u32;
        let entry = self.slots.get_mut(slot).filter(|s| s.seq == seq && seq != 0)?;
        if entry.deadline != key.deadline() {
            return None;
        }
        let waker = self.release(slot as u32);
        if self.live == 0 {
            self.reset();
        } else if self.heap.len() > 2 * self.live + SLACK {
            let slots = &self.slots;
            self.heap.retain(|e| slots[e.slot as usize].seq == e.seq);
        }
        waker
    }

    /// Frees a live slot and returns its waker.
    fn release(&mut self, slot: u32) -> Option<Waker> {
        let entry = &mut self.slots[slot as usize];
        entry.seq = 0;
        entry.next_free = self.free;
        self.free = slot;
        self.live -= 1;
        entry.waker.take()
    }

    /// No timer is pending: forget every stale entry and give back the memory of a burst.
    fn reset(&mut self) {
        self.heap.clear();
        self.slots.clear();
        self.free = NO_SLOT;
        if self.heap.capacity() > KEEP {
            self.heap.shrink_to(KEEP);
        }
        if self.slots.capacity() > KEEP {
            self.slots.shrink_to(KEEP);
        }
    }

    /// Moves the wakers of every timer due at `now` to `due`; returns the earliest deadline
    /// still pending (`Instant::MAX` if none).
    fn take_due(&mut self, now: Instant, due: &mut Vec<Waker>) -> Instant {
        while let Some(&top) = self.heap.peek() {
            let live = self.slots[top.slot as usize].seq == top.seq;
            if live && top.deadline > now {
                return top.deadline;
            }
            self.heap.pop();
            if live {
                due.extend(self.release(top.slot));
            }
        }
        if self.live == 0 {
            self.reset();
        }
        Instant::MAX
    }

    /// The earliest entry's deadline (stale or not: at worst an early wake-up).
    fn earliest(&self) -> Instant {
        self.heap.peek().map_or(Instant::MAX, |e| e.deadline)
    }
}

fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Shared {
    fn new(shards: usize) -> Shared {
        debug_assert!(shards.is_power_of_two() && shards <= MAX_SHARDS);
        Shared {
            shards: (0..shards).map(|_| Padded(Mutex::new(Shard::default()))).collect(),
            sleeping_until: AtomicU64::new(u64::MAX),
            control: Mutex::new(Control::default()),
            changed: Condvar::new(),
        }
    }
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Shared::new((2 * cpus).next_power_of_two().min(MAX_SHARDS))
    })
}

/// This thread's shard: threads are numbered in the order they first schedule a timer, so
/// up to `shards` threads get one each.
fn this_shard(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    // During thread-local destruction: shard 0 (any shard is correct, only slower).
    let n = SHARD
        .try_with(|shard| {
            if shard.get() == usize::MAX {
                shard.set(NEXT.fetch_add(1, Ordering::Relaxed));
            }
            shard.get()
        })
        .unwrap_or(0);
    n & (shards - 1)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code of this module panics while holding a lock; wakers run after it is released.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl StdClock {
    /// The `std::time::Instant` of an [`Instant`] on this clock.
    ///
    /// ```
    /// use cancelctx::{Instant, StdClock};
    /// assert!(StdClock::to_std(Instant::ZERO) <= std::time::Instant::now());
    /// ```
    #[must_use]
    pub fn to_std(instant: Instant) -> std::time::Instant {
        let since = core::time::Duration::from_nanos(instant.as_nanos());
        epoch()
            .checked_add(since)
            .unwrap_or_else(|| epoch() + core::time::Duration::from_secs(u32::MAX.into()))
    }

    /// The [`Instant`] on this clock of a `std::time::Instant` (clamped to the clock's range).
    ///
    /// ```
    /// use cancelctx::{Clock, StdClock};
    /// let now = std::time::Instant::now();
    /// assert!(StdClock::from_std(now) <= StdClock.now());
    /// ```
    #[must_use]
    pub fn from_std(instant: std::time::Instant) -> Instant {
        let nanos = instant.saturating_duration_since(epoch()).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl Clock for StdClock {
    fn now(&self) -> Instant {
        StdClock::from_std(std::time::Instant::now())
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        let shared = shared();
        let (key, kick) = schedule_in(shared, this_shard(shared.shards.len()), deadline, waker);
        if let Some(deadline) = kick {
            self::kick(shared, deadline);
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        cancel_in(shared(), key);
    }
}

/// Adds a timer to `shard`; returns its key, and its deadline if the timer thread must be
/// woken for it ([`kick`]: it sleeps past the deadline).
fn schedule_in(
    shared: &Shared,
    shard: usize,
    deadline: Instant,
    waker: Waker,
) -> (TimerKey, Option<Instant>) {
    let key = lock(&shared.shards[shard].0).insert(shard, deadline, waker);
    // memory ordering: Relaxed is enough: the timer thread publishes its sleep and then
    // takes every shard's lock to look again (`round`), so either it sees this timer or this
    // load, made after this shard's lock was released, sees its new sleep (the mutex orders
    // them). Loom model `std_clock_schedule_vs_timer_thread_falling_asleep`.
    let earlier = deadline.as_nanos() < shared.sleeping_until.load(Ordering::Relaxed);
    (key, earlier.then_some(deadline))
}

fn cancel_in(shared: &Shared, key: TimerKey) {
    let shard = (key.id() as usize) & (MAX_SHARDS - 1);
    let Some(shard) = shared.shards.get(shard) else { return };
    let removed = lock(&shard.0).remove(key);
    drop(removed); // the waker is dropped outside the lock
}

/// Wakes the timer thread (starting it the first time) for a timer due before its sleep.
fn kick(shared: &'static Shared, deadline: Instant) {
    let mut control = lock(&shared.control);
    if !control.thread_started {
        start_thread(shared, &mut control);
        return; // the new thread's first scan finds the timer
    }
    wake_thread(shared, control, deadline);
}

/// Makes the (started) timer thread scan again before it sleeps, or wakes it if it sleeps.
fn wake_thread(shared: &Shared, mut control: MutexGuard<'_, Control>, deadline: Instant) {
    control.kicked = true;
    // Later timers need not wake it again: it scans every shard when it wakes up.
    shared.sleeping_until.fetch_min(deadline.as_nanos(), Ordering::Relaxed);
    shared.changed.notify_one();
}

/// Starts the timer thread. If the OS refuses a thread, the timers stay in their shards and
/// the next `schedule` tries again (a panic here would surface in whatever code happened to
/// make a deadline, possibly inside another context's completion).
fn start_thread(shared: &'static Shared, control: &mut Control) {
    let spawned = std::thread::Builder::new().name("cancelctx-timer".into()).spawn(move || {
        let _restart = Restart(shared);
        run(shared);
    });
    control.thread_started = spawned.is_ok();
}

/// Restarts the timer thread if it ever ends (it never returns; only a panic of this crate's
/// own code could end it, user panics are caught): pending deadlines must not stop firing
/// for the rest of the process.
struct Restart(&'static Shared);

impl Drop for Restart {
    fn drop(&mut self) {
        let mut control = lock(&self.0.control);
        control.thread_started = false;
        self.0.sleeping_until.store(u64::MAX, Ordering::Relaxed);
        if self.0.shards.iter().any(|shard| lock(&shard.0).live > 0) {
            start_thread(self.0, &mut control);
        }
    }
}

/// The timer thread: wake everything due in every shard, sleep until the earliest deadline
/// left, repeat.
///
/// Wakers run with no lock held, each under `catch_unwind`: a panicking `after_func` callback
/// or waker is reported by the panic hook and dropped here, and the thread goes on (nobody
/// could receive the panic, and every other deadline of the process depends on this thread).
fn run(shared: &'static Shared) {
    let mut due = Vec::new();
    loop {
        if let Some(earliest) = round(shared, StdClock.now(), &mut due) {
            sleep(shared, earliest, || StdClock.now());
        }
    }
}

/// One scan of the timer thread: wakes every timer due at `now` (then returns `None`: scan
/// again), or publishes when it will wake up by itself and returns that instant (or `None` if
/// a timer appeared meanwhile that it must look at first).
fn round(shared: &Shared, now: Instant, due: &mut Vec<Waker>) -> Option<Instant> {
    // A kick from before this point concerns a timer this scan finds.
    lock(&shared.control).kicked = false;
    let mut earliest = Instant::MAX;
    for shard in &*shared.shards {
        earliest = earliest.min(lock(&shard.0).take_due(now, due));
    }
    if !due.is_empty() {
        drop(crate::panic::for_each_caught(due.drain(..), Waker::wake));
        return None;
    }
    // Publish the sleep, then look again: a timer scheduled meanwhile is either seen here or
    // its `schedule` sees the new sleep and kicks (see `schedule_in`).
    shared.sleeping_until.store(earliest.as_nanos(), Ordering::Relaxed);
    if shared.shards.iter().any(|shard| lock(&shard.0).earliest() < earliest) {
        return None;
    }
    Some(earliest)
}

/// Sleeps until `earliest` (as `now` tells) or a kick, whichever comes first.
fn sleep(shared: &Shared, earliest: Instant, now: impl Fn() -> Instant) {
    let mut control = lock(&shared.control);
    while !control.kicked {
        let now = now();
        if earliest == Instant::MAX {
            control = shared.changed.wait(control).unwrap_or_else(|e| e.into_inner());
        } else if now < earliest {
            let wait = earliest.saturating_duration_since(now);
            control =
                shared.changed.wait_timeout(control, wait).unwrap_or_else(|e| e.into_inner()).0;
        } else {
            break;
        }
    }
}

/// The wake-up protocol between `schedule` and the timer thread, for the loom models in
/// `tests/loom.rs` (`cfg(loom)` builds only): a clock state of its own, not the process's.
#[cfg(loom)]
#[doc(hidden)]
pub mod model {
    use super::{Instant, Ordering, Shared, TimerKey, Vec, Waker};

    /// A std clock's timer state with `shards` shards (a power of two), whose timer thread
    /// counts as started (the model plays it) and last slept until `sleeping_until`.
    pub struct Clock(Shared);

    impl core::fmt::Debug for Clock {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("Clock").finish_non_exhaustive()
        }
    }

    impl Clock {
        pub fn new(shards: usize, sleeping_until: Instant) -> Clock {
            let shared = Shared::new(shards);
            shared.sleeping_until.store(sleeping_until.as_nanos(), Ordering::Relaxed);
            super::lock(&shared.control).thread_started = true;
            Clock(shared)
        }

        /// `StdClock::schedule` from a thread of `shard`.
        pub fn schedule(&self, shard: usize, deadline: Instant, waker: Waker) -> TimerKey {
            let (key, kick) = super::schedule_in(&self.0, shard, deadline, waker);
            if let Some(deadline) = kick {
                super::wake_thread(&self.0, super::lock(&self.0.control), deadline);
            }
            key
        }

        /// `StdClock::cancel`.
        pub fn cancel(&self, key: TimerKey) {
            super::cancel_in(&self.0, key);
        }

        /// One scan of the timer thread at `now`; see `round`.
        pub fn round(&self, now: Instant) -> Option<Instant> {
            super::round(&self.0, now, &mut Vec::new())
        }

        /// The timer thread's sleep until `earliest` or a kick (time stands still at `now`).
        pub fn sleep(&self, earliest: Instant, now: Instant) {
            super::sleep(&self.0, earliest, || now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Waker, Arc<Count>) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Waker::from(count.clone()), count)
    }

    fn at(nanos: u64) -> Instant {
        Instant::from_nanos(nanos)
    }

    fn slot_of(key: TimerKey) -> u64 {
        (key.id() >> SHARD_BITS) & (MAX_SLOTS as u64 - 1)
    }

    #[test]
    fn keys_name_their_shard_and_release_their_waker_once() {
        let mut shard = Shard::default();
        let (w, count) = waker();
        let key = shard.insert(5, at(10), w);
        assert_eq!((key.deadline(), key.id() as usize & (MAX_SHARDS - 1)), (at(10), 5));
        assert_eq!(Arc::strong_count(&count), 2);
        assert!(shard.remove(key).is_some());
        assert_eq!(Arc::strong_count(&count), 1, "the waker was handed back");
        assert!(shard.remove(key).is_none(), "a second cancel is a no-op");
        assert_eq!(shard.live, 0);
    }

    #[test]
    fn a_stale_key_does_not_release_the_next_timer_of_its_slot() {
        let mut shard = Shard::default();
        let (keep, _k) = waker();
        let _pending = shard.insert(0, at(1), keep); // keeps the shard from resetting
        let (w, _c) = waker();
        let old = shard.insert(0, at(10), w);
        assert!(shard.remove(old).is_some());
        // The same slot, reused: same deadline, newer sequence number.
        let (w, count) = waker();
        let new = shard.insert(0, at(10), w);
        assert_eq!(slot_of(new), slot_of(old));
        assert!(shard.remove(old).is_none());
        // The same slot and sequence number but another deadline: not this timer either.
        assert!(shard.remove(TimerKey::new(at(11), new.id())).is_none());
        assert_eq!(Arc::strong_count(&count), 2, "the newer timer is still pending");
        assert!(shard.remove(new).is_some());
    }

    #[test]
    fn keys_of_another_layout_are_ignored() {
        let mut shard = Shard::default();
        let (w, _c) = waker();
        let key = shard.insert(0, at(3), w);
        for id in [0, u64::MAX, key.id() ^ (1 << SEQ_SHIFT), key.id() + (7 << SHARD_BITS)] {
            assert!(shard.remove(TimerKey::new(at(3), id)).is_none(), "id {id:#x}");
        }
        assert_eq!(shard.live, 1);
    }

    #[test]
    fn due_timers_are_taken_in_deadline_order_and_cancelled_ones_skipped() {
        let mut shard = Shard::default();
        let mut counts = Vec::new();
        let mut keys = Vec::new();
        for d in [30, 10, 20, 40, 15] {
            let (w, c) = waker();
            keys.push(shard.insert(1, at(d), w));
            counts.push(c);
        }
        assert!(shard.remove(keys[1]).is_some()); // 10, cancelled: its entry stays in the heap
        assert_eq!(shard.earliest(), at(10), "a stale top may only make the thread wake early");
        let mut due = Vec::new();
        assert_eq!(shard.take_due(at(5), &mut due), at(15), "the cancelled top is skipped");
        assert!(due.is_empty());
        assert_eq!(shard.take_due(at(30), &mut due), at(40));
        assert_eq!(due.len(), 3); // 15, 20, 30
        due.drain(..).for_each(Waker::wake);
        let woken: Vec<usize> = counts.iter().map(|c| c.0.load(Ordering::Relaxed)).collect();
        assert_eq!(woken, [1, 0, 1, 0, 1]);
        assert!(shard.remove(keys[0]).is_none(), "a fired timer is forgotten");
        assert_eq!(shard.take_due(at(u64::MAX), &mut due), Instant::MAX);
        assert_eq!((due.len(), shard.live, shard.heap.len()), (1, 0, 0));
    }

    #[test]
    fn cancelled_entries_are_compacted_while_a_timer_stays_pending() {
        let mut shard = Shard::default();
        let (w, _c) = waker();
        let _pending = shard.insert(0, at(1), w);
        for i in 0..10_000 {
            let (w, _c) = waker();
            let key = shard.insert(0, at(100 + i), w);
            assert!(shard.remove(key).is_some());
            assert!(shard.heap.len() <= 2 * shard.live + SLACK + 1, "at {i}");
        }
        assert_eq!(shard.slots.len(), 2, "the freed slot is reused");
        assert!(shard.heap.capacity() <= 2 * KEEP + SLACK);
    }

    #[test]
    fn only_a_timer_earlier_than_the_threads_sleep_wakes_it() {
        let shared = Shared::new(2);
        shared.sleeping_until.store(100, Ordering::Relaxed);
        let (_, kick) = schedule_in(&shared, 0, at(150), waker().0);
        assert_eq!(kick, None, "a later timer does not wake the thread");
        let (_, kick) = schedule_in(&shared, 0, at(100), waker().0);
        assert_eq!(kick, None, "nor one due when it wakes anyway");
        let (_, kick) = schedule_in(&shared, 1, at(50), waker().0);
        assert_eq!(kick, Some(at(50)));
    }

    #[test]
    fn a_round_wakes_what_is_due_in_every_shard_and_publishes_the_next_deadline() {
        let shared = Shared::new(4);
        let (w10, c10) = waker();
        let (w5, c5) = waker();
        let (w7, c7) = waker();
        schedule_in(&shared, 0, at(10), w10);
        schedule_in(&shared, 3, at(5), w5);
        let (cancelled, _) = schedule_in(&shared, 2, at(7), w7);
        cancel_in(&shared, cancelled);
        let mut due = Vec::new();
        assert_eq!(round(&shared, at(1), &mut due), Some(at(5)));
        assert_eq!(shared.sleeping_until.load(Ordering::Relaxed), 5);
        assert_eq!(round(&shared, at(8), &mut due), None, "woke the timer at 5: look again");
        assert_eq!(round(&shared, at(8), &mut due), Some(at(10)));
        let woken = [&c5, &c7, &c10].map(|c| c.0.load(Ordering::Relaxed));
        assert_eq!(woken, [1, 0, 0]);
        assert_eq!(round(&shared, at(10), &mut due), None);
        assert_eq!(round(&shared, at(10), &mut due), Some(Instant::MAX));
        assert_eq!(c10.0.load(Ordering::Relaxed), 1);
        assert_eq!(shared.sleeping_until.load(Ordering::Relaxed), u64::MAX);
    }

    #[test]
    fn a_slot_is_32_bytes_and_a_heap_entry_16() {
        assert_eq!((size_of::<Slot>(), size_of::<Entry>()), (32, 16));
    }

    #[test]
    fn an_emptied_shard_gives_back_the_memory_of_a_burst() {
        let mut shard = Shard::default();
        let keys: Vec<_> = (0..1_000).map(|i| shard.insert(0, at(i), waker().0)).collect();
        assert!(shard.slots.capacity() >= 1_000);
        for key in keys {
            assert!(shard.remove(key).is_some());
        }
        assert_eq!((shard.slots.capacity(), shard.heap.capacity()), (KEEP, KEEP));
        assert_eq!((shard.slots.len(), shard.heap.len(), shard.free), (0, 0, NO_SLOT));
    }
}
