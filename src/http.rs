//! Contexts across processes: deadlines on the wire as gRPC's `grpc-timeout` header, on the
//! `http` crate's types (feature `http`).
//!
//! A [`Context`] lives in one process. When work crosses to another service, only some of
//! it can follow:
//!
//! | | crosses the wire? | how |
//! |---|---|---|
//! | the **deadline** | yes | as the time *remaining*, in the `grpc-timeout` request header ([`inject_deadline`] on the way out, [`extract_deadline`] on the way in) |
//! | **cancellation** | yes, as the end of the call | the caller abandons the call: it resets the HTTP/2 stream or closes the HTTP/1 connection; the server sees its request's context cancelled (with [`ClientDisconnected`] when it runs behind `tower::ContextLayer`) |
//! | **values** | no | request-scoped values are in-process data; send what the next service needs as headers of your own |
//! | **causes** | no | the remote side learns *that* the call ended, never *why*; the caller keeps its own cause |
//! | the **clock** | no | the header carries a duration, not an instant, so clocks of different machines never have to agree; the time the request spends in flight is not subtracted, which errs on the side of the server giving up a little *after* its client |
//!
//! So a deadline set once at the edge bounds every hop behind it, each hop seeing a little
//! less time left; a cancelled client stops the work it started everywhere, because each
//! hop's request context is cancelled when its caller goes away and that cancels the calls
//! it made in turn.
//!
//! # What ends a remote call
//!
//! Nothing in HTTP says "cancelled"; a caller can only stop waiting. Over HTTP/2 that resets
//! the request's stream (`RST_STREAM`) and other calls on the connection carry on; over
//! HTTP/1 it closes the connection, the only way HTTP/1 has to abandon a request. Servers
//! see either as their client going away: hyper drops the response future, grpc-go cancels
//! the handler's context, and `tower::ContextLayer` cancels the
//! request's context with the cause [`ClientDisconnected`]. The remote side cannot tell a
//! cancel from a crash or a network failure, and it is not told the caller's cause.
//!
//! # The header
//!
//! `grpc-timeout` is `TimeoutValue TimeoutUnit`: at most 8 ASCII digits, then one of `H`
//! (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds), `n`
//! (nanoseconds). gRPC defines it; plain HTTP services can use it just the same.
//! [`encode_grpc_timeout`] follows grpc-go: the finest unit whose value fits in 8 digits,
//! rounded up, so a server never gives up before its client. [`decode_grpc_timeout`] is
//! strict and never panics.
//!
//! A value of `0` (any unit) means *the deadline has already passed*: [`extract_deadline`]
//! gives a context that is born done with [`Error::DeadlineExceeded`], never one without a
//! deadline.
//!
//! # Examples
//!
//! A client and a server, in one process for the example:
//!
//! ```
//! use cancelctx::http::{extract_deadline, inject_deadline};
//! use cancelctx::{Context, ManualClock};
//! use std::time::Duration;
//!
//! let clock = ManualClock::new();
//! let root = Context::with_clock(clock.clone());
//!
//! // Client: a call with 2 s left.
//! let (call, _guard) = root.with_timeout(Duration::from_secs(2));
//! let mut headers = http::HeaderMap::new();
//! inject_deadline(&call, &mut headers)?;
//! assert_eq!(headers["grpc-timeout"], "2000000u");
//!
//! // Server: the request's context ends 2 s from now on its own clock.
//! let (request, _request_guard) = extract_deadline(&root, &headers)?;
//! assert_eq!(request.remaining(), Some(Duration::from_secs(2)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use core::time::Duration;

use ::http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::{CancelGuard, Context, Error};

/// The `grpc-timeout` header's name.
///
/// ```
/// assert_eq!(cancelctx::http::GRPC_TIMEOUT.as_str(), "grpc-timeout");
/// ```
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value that fits in a `grpc-timeout` header: 8 digits.
const MAX_VALUE: u64 = 99_999_999;

/// The units, finest first, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// The longest timeout a `grpc-timeout` header can carry: `99999999H`, about 11,400 years.
/// [`encode_grpc_timeout`] writes longer durations as this value.
///
/// ```
/// use cancelctx::http::{decode_grpc_timeout, encode_grpc_timeout, MAX_GRPC_TIMEOUT};
/// use std::time::Duration;
/// assert_eq!(encode_grpc_timeout(Duration::MAX), "99999999H");
/// assert_eq!(decode_grpc_timeout(&encode_grpc_timeout(Duration::MAX)), Ok(MAX_GRPC_TIMEOUT));
/// ```
pub const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(MAX_VALUE * 3_600);

/// Writes `timeout` as a `grpc-timeout` header value.
///
/// The value is exact when some unit holds it in 8 digits, and otherwise uses the finest unit
/// that fits, rounded up (grpc-go's rule: the server never gives up before its client).
/// Durations longer than [`MAX_GRPC_TIMEOUT`] (`99999999H`, about 11,400 years) are written
/// as that value; `Duration::ZERO` is `0n`. Never panics.
///
/// ```
/// use cancelctx::http::encode_grpc_timeout;
/// use std::time::Duration;
///
/// assert_eq!(encode_grpc_timeout(Duration::from_millis(1500)), "1500000u"); // exact
/// assert_eq!(encode_grpc_timeout(Duration::from_secs(3600)), "3600000m"); // exact
/// assert_eq!(encode_grpc_timeout(Duration::new(100_000, 1)), "100001S"); // rounded up
/// assert_eq!(encode_grpc_timeout(Duration::ZERO), "0n");
/// ```
#[must_use]
pub fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    let (value, unit) = UNITS
        .iter()
        .find_map(|&(unit, len)| {
            let value = nanos.div_ceil(u128::from(len));
            (value <= u128::from(MAX_VALUE)).then_some((value as u64, unit))
        })
        .unwrap_or((MAX_VALUE, b'H'));
    // At most 8 digits and the unit.
    let mut buf = [0u8; 9];
    let mut start = 8;
    let mut rest = value;
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buf[8] = unit;
    HeaderValue::from_bytes(&buf[start..])
        .expect("ASCII digits followed by a letter are a valid header value")
}

/// Reads a `grpc-timeout` header value: 1 to 8 ASCII digits followed by one of the units
/// `H M S m u n`, nothing else (no sign, no spaces, no decimal point).
///
/// `0` is a valid value and means the deadline has already passed. Never panics; every
/// malformed value is a [`GrpcTimeoutError`] saying what is wrong with it.
///
/// ```
/// use cancelctx::http::{decode_grpc_timeout, GrpcTimeoutError};
/// use http::HeaderValue;
/// use std::time::Duration;
///
/// let decode = |s: &'static str| decode_grpc_timeout(&HeaderValue::from_static(s));
/// assert_eq!(decode("250m"), Ok(Duration::from_millis(250)));
/// assert_eq!(decode("0n"), Ok(Duration::ZERO));
/// assert_eq!(decode(""), Err(GrpcTimeoutError::Empty));
/// assert_eq!(decode("123456789S"), Err(GrpcTimeoutError::TooManyDigits));
/// assert_eq!(decode("10"), Err(GrpcTimeoutError::MissingUnit));
/// assert_eq!(decode("10s"), Err(GrpcTimeoutError::InvalidUnit));
/// assert_eq!(decode("-1S"), Err(GrpcTimeoutError::InvalidDigit));
/// assert_eq!(decode("S"), Err(GrpcTimeoutError::MissingValue));
/// ```
pub fn decode_grpc_timeout(value: &HeaderValue) -> Result<Duration, GrpcTimeoutError> {
    decode_bytes(value.as_bytes())
}

fn decode_bytes(bytes: &[u8]) -> Result<Duration, GrpcTimeoutError> {
    let Some((&unit, digits)) = bytes.split_last() else {
        return Err(GrpcTimeoutError::Empty);
    };
    let Some(&(_, len)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(if unit.is_ascii_digit() {
            GrpcTimeoutError::MissingUnit
        } else {
            GrpcTimeoutError::InvalidUnit
        });
    };
    if digits.is_empty() {
        return Err(GrpcTimeoutError::MissingValue);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(GrpcTimeoutError::InvalidDigit);
    }
    if digits.len() > 8 {
        return Err(GrpcTimeoutError::TooManyDigits);
    }
    let value = digits.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    // At most 99_999_999 * 3.6e12 ns = 3.6e20 ns: seconds and nanoseconds apart so that it
    // cannot overflow (a Duration holds u64::MAX seconds).
    let nanos = u128::from(value) * u128::from(len);
    Ok(Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32))
}

/// Why a `grpc-timeout` header was refused.
///
/// Returned by [`decode_grpc_timeout`] and [`extract_deadline`]. A server answers such a
/// request as malformed (see `tower::ContextLayer`), never with a
/// longer or missing deadline.
///
/// ```
/// use cancelctx::http::{decode_grpc_timeout, GrpcTimeoutError};
/// let err = decode_grpc_timeout(&http::HeaderValue::from_static("1.5S")).unwrap_err();
/// assert_eq!(err, GrpcTimeoutError::InvalidDigit);
/// assert_eq!(err.to_string(), "malformed grpc-timeout: the value has a byte that is not an ASCII digit");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcTimeoutError {
    /// The header is empty.
    Empty,
    /// The unit is there but no digits precede it.
    MissingValue,
    /// The value has a byte that is not an ASCII digit: a sign, a space, a decimal point,
    /// anything non-ASCII.
    InvalidDigit,
    /// The value has more than the 8 digits gRPC allows.
    TooManyDigits,
    /// The header ends in a digit: there is no unit.
    MissingUnit,
    /// The last byte is not one of the units `H M S m u n`.
    InvalidUnit,
    /// The header is valid but the context tree has no clock to measure it: the parent given
    /// to [`extract_deadline`] is rooted at [`Context::unclocked`]. A server configuration
    /// error, not the client's.
    NoClock,
}

impl GrpcTimeoutError {
    /// Whether the client sent a malformed header (`true`), rather than the server being
    /// unable to use a valid one ([`GrpcTimeoutError::NoClock`]).
    ///
    /// ```
    /// use cancelctx::http::GrpcTimeoutError;
    /// assert!(GrpcTimeoutError::Empty.is_malformed());
    /// assert!(!GrpcTimeoutError::NoClock.is_malformed());
    /// ```
    #[must_use]
    pub fn is_malformed(self) -> bool {
        self != GrpcTimeoutError::NoClock
    }

    /// The `Display` text as a `&'static str` (for response bodies and `grpc-message`).
    pub(crate) fn message(self) -> &'static str {
        match self {
            GrpcTimeoutError::Empty => "malformed grpc-timeout: the header is empty",
            GrpcTimeoutError::MissingValue => "malformed grpc-timeout: no digits before the unit",
            GrpcTimeoutError::InvalidDigit => {
                "malformed grpc-timeout: the value has a byte that is not an ASCII digit"
            }
            GrpcTimeoutError::TooManyDigits => "malformed grpc-timeout: more than 8 digits",
            GrpcTimeoutError::MissingUnit => {
                "malformed grpc-timeout: no unit (one of H M S m u n) after the digits"
            }
            GrpcTimeoutError::InvalidUnit => {
                "malformed grpc-timeout: the unit is not one of H M S m u n"
            }
            GrpcTimeoutError::NoClock => {
                "grpc-timeout cannot be applied: the server's context tree has no clock"
            }
        }
    }
}

impl fmt::Display for GrpcTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for GrpcTimeoutError {}

/// The [`cause`](Context::cause) of a request's context when its client went away before
/// the response was ready (the server dropped the response future: the connection closed or
/// the HTTP/2 stream was reset).
///
/// Set by `tower::ContextLayer`; the error is
/// [`Error::Canceled`], as in Go, where `r.Context()` is cancelled when the client disconnects.
///
/// ```
/// use cancelctx::http::ClientDisconnected;
/// use cancelctx::Context;
///
/// let (ctx, guard) = Context::unclocked().with_cancel();
/// guard.cancel_with(ClientDisconnected);
/// assert!(ctx.cause().unwrap().is::<ClientDisconnected>());
/// assert_eq!(ClientDisconnected.to_string(), "client disconnected");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientDisconnected;

impl fmt::Display for ClientDisconnected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client disconnected")
    }
}

impl std::error::Error for ClientDisconnected {}

/// Prepares the headers of an outgoing request made on behalf of `ctx`.
///
/// - `Err(e)` if `ctx` is done, or its deadline has passed and its timer has not fired yet
///   (`Err(Error::DeadlineExceeded)`): do not send the request.
/// - With a deadline: sets `grpc-timeout` to the time remaining (rounded up to the header's
///   precision), replacing any value already there.
/// - Without one: removes any `grpc-timeout` already there, so a stale deadline (a header
///   map reused from an incoming request, say) is not forwarded.
///
/// ```
/// use cancelctx::http::inject_deadline;
/// use cancelctx::{Context, Error, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let root = Context::with_clock(clock.clone());
/// let mut headers = http::HeaderMap::new();
///
/// let (ctx, guard) = root.with_timeout(Duration::from_millis(250));
/// inject_deadline(&ctx, &mut headers)?;
/// assert_eq!(headers["grpc-timeout"], "250000u");
///
/// inject_deadline(&root, &mut headers)?; // no deadline: the stale header goes
/// assert!(headers.get("grpc-timeout").is_none());
///
/// guard.cancel();
/// assert_eq!(inject_deadline(&ctx, &mut headers), Err(Error::Canceled));
/// # Ok::<(), Error>(())
/// ```
pub fn inject_deadline(ctx: &Context, headers: &mut HeaderMap) -> Result<(), Error> {
    ctx.check()?;
    match ctx.remaining() {
        Some(Duration::ZERO) => Err(Error::DeadlineExceeded),
        Some(remaining) => {
            headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(remaining));
            Ok(())
        }
        None => {
            headers.remove(GRPC_TIMEOUT);
            Ok(())
        }
    }
}

/// Reads the `grpc-timeout` of all `headers`' values: `Ok(None)` without one; the earliest
/// if there are several, all of which must be valid.
pub(crate) fn header_timeout(headers: &HeaderMap) -> Result<Option<Duration>, GrpcTimeoutError> {
    let mut earliest: Option<Duration> = None;
    for value in headers.get_all(GRPC_TIMEOUT) {
        let timeout = decode_grpc_timeout(value)?;
        earliest = Some(earliest.map_or(timeout, |e| e.min(timeout)));
    }
    Ok(earliest)
}

/// The context of an incoming request: a child of `parent` whose deadline is the earlier of
/// `parent`'s and now + the request's `grpc-timeout` (no header: no deadline of its own).
///
/// The returned [`CancelGuard`] ends the request's context; keep it for as long as the
/// request is being served. If the header appears more than once, every value must be valid
/// and the earliest wins. A timeout of `0` gives a context that is born done with
/// [`Error::DeadlineExceeded`].
///
/// # Errors
///
/// A malformed header ([`GrpcTimeoutError`]), or [`GrpcTimeoutError::NoClock`] when the
/// header is valid but `parent`'s tree has no clock. A request without the header never
/// fails.
///
/// ```
/// use cancelctx::http::{extract_deadline, GrpcTimeoutError};
/// use cancelctx::{Context, Error, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let (server, _g) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(30));
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("grpc-timeout", http::HeaderValue::from_static("5S"));
/// let (ctx, _guard) = extract_deadline(&server, &headers)?;
/// assert_eq!(ctx.remaining(), Some(Duration::from_secs(5)));
///
/// headers.insert("grpc-timeout", http::HeaderValue::from_static("5 S"));
/// assert_eq!(extract_deadline(&server, &headers).unwrap_err(), GrpcTimeoutError::InvalidDigit);
///
/// headers.insert("grpc-timeout", http::HeaderValue::from_static("0m"));
/// let (ctx, _guard) = extract_deadline(&server, &headers)?;
/// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
/// # Ok::<(), GrpcTimeoutError>(())
/// ```
pub fn extract_deadline(
    parent: &Context,
    headers: &HeaderMap,
) -> Result<(Context, CancelGuard), GrpcTimeoutError> {
    match header_timeout(headers)? {
        None => Ok(parent.with_cancel()),
        Some(timeout) => parent.try_with_timeout(timeout).map_err(|_| GrpcTimeoutError::NoClock),
    }
}
