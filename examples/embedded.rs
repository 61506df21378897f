//! A `no_std`-style use: a hand-written [`Clock`] on a (fake) hardware timer.
//!
//! On a microcontroller the crate is used without `std` (`default-features = false`): no
//! background clock, no threads. Time comes from a free-running counter with one compare
//! register that raises an interrupt when the counter reaches it. The clock below keeps its
//! pending wake-ups in a queue ordered by deadline and keeps the compare register armed for
//! the earliest one at all times:
//!
//! - after `schedule` (a new earliest deadline re-arms it),
//! - after `cancel` (removing the earliest re-arms it for the next, or disarms it),
//! - after the interrupt (the due wakers are woken, then it is re-armed for what is left).
//!
//! Arming for a count the counter has already passed would never fire on real hardware, so
//! arming checks for that and pends the interrupt by hand.
//!
//! The "hardware" here is a few atomics driven by `FakeTimer::tick`, so the example runs on
//! the host: `cargo run --example embedded --no-default-features`. Nothing below uses `std`
//! except `main`'s printing; the lock is a spin lock standing in for a critical section
//! (`critical_section::Mutex` on a real target).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::Waker;
use core::time::Duration;

extern crate alloc;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use cancelctx::{Clock, Context, Error, Instant, TimerKey};

/// Counter ticks per second (a 1 MHz timer).
const HZ: u64 = 1_000_000;
/// The compare register's "disarmed" value.
const DISARMED: u64 = u64::MAX;

/// The timer peripheral: a counter, a compare register and an interrupt-pending flag.
struct FakeTimer {
    counter: AtomicU64,
    compare: AtomicU64,
    pending: AtomicBool,
}

impl FakeTimer {
    const fn new() -> FakeTimer {
        FakeTimer {
            counter: AtomicU64::new(0),
            compare: AtomicU64::new(DISARMED),
            pending: AtomicBool::new(false),
        }
    }

    /// The hardware counting: sets the interrupt flag when the counter reaches `compare`.
    fn tick(&self, ticks: u64) {
        let now = self.counter.fetch_add(ticks, Ordering::AcqRel) + ticks;
        if now >= self.compare.load(Ordering::Acquire) {
            self.pending.store(true, Ordering::Release);
        }
    }
}

static TIMER: FakeTimer = FakeTimer::new();

/// A spin lock standing in for a critical section.
struct Lock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `with`, which holds the lock exclusively.
unsafe impl<T: Send> Sync for Lock<T> {}

impl<T> Lock<T> {
    const fn new(value: T) -> Lock<T> {
        Lock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // memory ordering: Acquire on taking and Release on giving back, as any lock.
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the flag gives this call exclusive access until it is cleared below.
        let result = f(unsafe { &mut *self.value.get() });
        self.locked.store(false, Ordering::Release);
        result
    }
}

/// The queue of pending wake-ups, ordered by deadline (the key's first field).
struct Timers {
    next_id: u64,
    queue: BTreeMap<TimerKey, Waker>,
}

/// The clock: reads the counter, keeps the compare register on the earliest deadline.
struct HwClock {
    timers: Lock<Timers>,
}

fn ticks_to_instant(ticks: u64) -> Instant {
    Instant::from_nanos(ticks * (1_000_000_000 / HZ))
}

fn instant_to_ticks(at: Instant) -> u64 {
    // Round up: waking a tick late is allowed, early only costs a re-arm.
    at.as_nanos().div_ceil(1_000_000_000 / HZ)
}

impl HwClock {
    /// Arms the compare register for the earliest pending deadline (or disarms it). If that
    /// count has already passed, the comparator would not fire: pend the interrupt by hand.
    /// Called with the lock held, so it sees the queue as it is.
    fn rearm(timers: &Timers) {
        match timers.queue.keys().next() {
            Some(first) => {
                let at = instant_to_ticks(first.deadline());
                TIMER.compare.store(at, Ordering::Release);
                if TIMER.counter.load(Ordering::Acquire) >= at {
                    TIMER.pending.store(true, Ordering::Release);
                }
            }
            None => TIMER.compare.store(DISARMED, Ordering::Release),
        }
    }

    /// The interrupt handler: takes the due wakers, re-arms, then wakes them with no lock
    /// held (waking completes contexts, which runs their `after_func` callbacks — and those
    /// may schedule or cancel timers on this very clock).
    fn on_interrupt(&self) {
        if !TIMER.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let now = self.now();
        let due: Vec<Waker> = self.timers.with(|t| {
            let later = t.queue.split_off(&TimerKey::new(now, u64::MAX));
            let due = core::mem::replace(&mut t.queue, later);
            HwClock::rearm(t);
            due.into_values().collect()
        });
        due.into_iter().for_each(Waker::wake);
    }
}

impl Clock for HwClock {
    fn now(&self) -> Instant {
        ticks_to_instant(TIMER.counter.load(Ordering::Acquire))
    }

    fn schedule(&self, deadline: Instant, waker: Waker) -> TimerKey {
        self.timers.with(|t| {
            t.next_id += 1;
            let key = TimerKey::new(deadline, t.next_id);
            t.queue.insert(key, waker);
            HwClock::rearm(t);
            key
        })
    }

    fn cancel(&self, key: TimerKey) {
        self.timers.with(|t| {
            if t.queue.remove(&key).is_some() {
                HwClock::rearm(t);
            }
        });
    }
}

fn compare() -> Option<u64> {
    match TIMER.compare.load(Ordering::Acquire) {
        DISARMED => None,
        at => Some(at),
    }
}

/// The main loop of the firmware: advance the hardware, service the interrupt.
fn run_for(clock: &HwClock, ticks: u64) {
    for _ in 0..ticks / 100 {
        TIMER.tick(100);
        clock.on_interrupt();
    }
}

fn main() {
    let clock =
        Arc::new(HwClock { timers: Lock::new(Timers { next_id: 0, queue: BTreeMap::new() }) });
    let root = Context::with_clock(clock.clone());

    // A sensor read that must finish within 5 ms, and a radio send within 8 ms.
    let (sensor, _sensor_guard) = root.with_timeout(Duration::from_millis(5));
    let (radio, radio_guard) = root.with_timeout(Duration::from_millis(8));
    let _led = sensor.after_func(|| println!("  after_func: sensor timed out, LED on"));
    assert_eq!(compare(), Some(5_000), "armed for the earliest deadline");
    println!("compare register armed at {:?} ticks", compare());

    // The radio finished early: cancelling releases its timer; the earliest stays armed.
    radio_guard.cancel();
    assert_eq!(radio.err(), Some(Error::Canceled));
    assert_eq!(compare(), Some(5_000));

    // A retry with a 2 ms budget: the new earliest deadline re-arms the register.
    let (retry, retry_guard) = root.with_timeout(Duration::from_millis(2));
    assert_eq!(compare(), Some(2_000));
    println!("retry scheduled: compare re-armed at {:?}", compare());
    // ... and succeeds at 1 ms: its cancel re-arms for the sensor's deadline.
    run_for(&clock, 1_000);
    retry_guard.cancel();
    assert_eq!(compare(), Some(5_000));
    println!("retry done at 1 ms: compare back at {:?}", compare());
    assert_eq!(retry.err(), Some(Error::Canceled));

    // Run to 5 ms: the interrupt completes the sensor's deadline and disarms (nothing left).
    run_for(&clock, 4_000);
    assert_eq!(sensor.err(), Some(Error::DeadlineExceeded));
    assert_eq!(compare(), None);
    println!("5 ms: sensor {:?}, compare disarmed", sensor.err().unwrap());

    // A deadline that has already passed when armed (born done, no timer), and one that
    // passes between arming and the next interrupt: the pending flag catches it.
    let (late, _late_guard) = root.with_deadline(ticks_to_instant(4_000));
    assert_eq!(late.err(), Some(Error::DeadlineExceeded));
    let (soon, _soon_guard) = root.with_timeout(Duration::from_micros(50));
    TIMER.counter.fetch_add(60, Ordering::AcqRel); // counter jumps past it before servicing
    clock.on_interrupt(); // nothing pending yet: the comparator fired only on a `tick`
    let (_other, _other_guard) = root.with_timeout(Duration::from_millis(100)); // re-arms
    clock.on_interrupt();
    assert_eq!(
        soon.err(),
        Some(Error::DeadlineExceeded),
        "a passed compare value pends the interrupt"
    );
    assert_eq!(compare(), Some(105_060));
    println!("a compare value already passed at arming was caught: soon {:?}", soon.err().unwrap());
    println!("ok");
}
