//! [`Instant`]: a point on a context tree's clock.

use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};
use core::time::Duration;

/// A point in time on a context tree's [`Clock`](crate::Clock), in nanoseconds since the
/// clock's own epoch.
///
/// Unlike `std::time::Instant`, it exists without `std` and its epoch belongs to the clock:
/// [`ManualClock`](crate::ManualClock) starts at [`Instant::ZERO`], the std clock at the first
/// time the process read it. Instants of different clocks are not comparable in any
/// meaningful way. The range is [`Instant::ZERO`] to [`Instant::MAX`] (about 584 years).
///
/// # Examples
///
/// ```
/// use cancelctx::Instant;
/// use core::time::Duration;
///
/// let t = Instant::from_nanos(1_000);
/// let later = t + Duration::from_micros(1);
/// assert_eq!(later.as_nanos(), 2_000);
/// assert_eq!(later.saturating_duration_since(t), Duration::from_micros(1));
/// assert_eq!(t.saturating_duration_since(later), Duration::ZERO);
/// assert_eq!(Instant::MAX.checked_add(Duration::from_nanos(1)), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The clock's epoch.
    ///
    /// ```
    /// assert_eq!(cancelctx::Instant::ZERO.as_nanos(), 0);
    /// ```
    pub const ZERO: Instant = Instant(0);

    /// The latest representable instant. A deadline here is reached only by a clock that is
    /// set to it (for example `ManualClock::set(Instant::MAX)`).
    ///
    /// ```
    /// assert_eq!(cancelctx::Instant::MAX.as_nanos(), u64::MAX);
    /// ```
    pub const MAX: Instant = Instant(u64::MAX);

    /// The instant `nanos` nanoseconds after the epoch. Clock implementations use this.
    ///
    /// ```
    /// assert_eq!(cancelctx::Instant::from_nanos(7).as_nanos(), 7);
    /// ```
    #[must_use]
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// Nanoseconds since the epoch.
    ///
    /// ```
    /// use core::time::Duration;
    /// let t = cancelctx::Instant::ZERO + Duration::from_millis(1);
    /// assert_eq!(t.as_nanos(), 1_000_000);
    /// ```
    #[must_use]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, or `None` past [`Instant::MAX`].
    ///
    /// ```
    /// use cancelctx::Instant;
    /// use core::time::Duration;
    /// assert_eq!(Instant::ZERO.checked_add(Duration::from_nanos(5)), Some(Instant::from_nanos(5)));
    /// assert_eq!(Instant::ZERO.checked_add(Duration::MAX), None);
    /// ```
    #[must_use]
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let nanos = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(nanos).map(Instant)
    }

    /// `self - d`, or `None` before [`Instant::ZERO`].
    ///
    /// ```
    /// use cancelctx::Instant;
    /// use core::time::Duration;
    /// assert_eq!(Instant::from_nanos(5).checked_sub(Duration::from_nanos(5)), Some(Instant::ZERO));
    /// assert_eq!(Instant::ZERO.checked_sub(Duration::from_nanos(1)), None);
    /// ```
    #[must_use]
    pub fn checked_sub(self, d: Duration) -> Option<Instant> {
        let nanos = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(nanos).map(Instant)
    }

    /// `self + d`, clamped to [`Instant::MAX`].
    ///
    /// ```
    /// use cancelctx::Instant;
    /// use core::time::Duration;
    /// assert_eq!(Instant::ZERO.saturating_add(Duration::MAX), Instant::MAX);
    /// ```
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant::MAX)
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    ///
    /// ```
    /// use cancelctx::Instant;
    /// use core::time::Duration;
    /// let (a, b) = (Instant::from_nanos(10), Instant::from_nanos(25));
    /// assert_eq!(b.saturating_duration_since(a), Duration::from_nanos(15));
    /// assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
    /// ```
    #[must_use]
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({:?})", Duration::from_nanos(self.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// # Panics
    ///
    /// Panics if the result is past [`Instant::MAX`]; use [`Instant::checked_add`] or
    /// [`Instant::saturating_add`] to avoid that.
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).expect("overflow when adding a duration to a cancelctx::Instant")
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;

    /// # Panics
    ///
    /// Panics if the result is before [`Instant::ZERO`]; use [`Instant::checked_sub`].
    fn sub(self, d: Duration) -> Instant {
        self.checked_sub(d).expect("overflow when subtracting a duration from a cancelctx::Instant")
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}
