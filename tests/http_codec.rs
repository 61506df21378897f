//! The `grpc-timeout` codec and `inject_deadline` / `extract_deadline` (feature `http`):
//! table tests of the grammar, proptest round trips, and deadlines on a `ManualClock`.
#![cfg(feature = "http")]

#[path = "common/grpc_timeout_props.rs"]
mod grpc_timeout_props;

use std::time::Duration;

use cancelctx::http::{
    decode_grpc_timeout, encode_grpc_timeout, extract_deadline, inject_deadline,
    ClientDisconnected, GrpcTimeoutError, GRPC_TIMEOUT, MAX_GRPC_TIMEOUT,
};
use cancelctx::{Context, Error, ManualClock};
use grpc_timeout_props::{check_decode, check_round_trip};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

fn decode(bytes: &[u8]) -> Result<Duration, GrpcTimeoutError> {
    decode_grpc_timeout(&HeaderValue::from_bytes(bytes).expect("a valid header value"))
}

#[test]
fn encodes_exactly_when_a_unit_holds_the_value() {
    let cases: &[(Duration, &str)] = &[
        (Duration::ZERO, "0n"),
        (Duration::from_nanos(1), "1n"),
        (Duration::from_nanos(99_999_999), "99999999n"),
        (Duration::from_nanos(100_000_000), "100000u"),
        (Duration::from_millis(100), "100000u"),
        (Duration::from_secs(1), "1000000u"),
        (Duration::from_secs(99), "99000000u"),
        (Duration::from_secs(100), "100000m"),
        (Duration::from_secs(3600), "3600000m"),
        (Duration::from_secs(99_999), "99999000m"),
        (Duration::from_secs(100_000), "100000S"),
        (Duration::from_secs(99_999_999), "99999999S"),
        (Duration::from_secs(100_000_020), "1666667M"),
        (Duration::from_secs(99_999_999 * 60), "99999999M"),
        (Duration::from_secs(99_999_999 * 3600), "99999999H"),
    ];
    for &(d, text) in cases {
        assert_eq!(encode_grpc_timeout(d), text, "{d:?}");
    }
}

#[test]
fn rounds_up_to_the_finest_unit_that_fits() {
    // 100 ms + 1 ns does not fit in 8 digits of nanoseconds: microseconds, rounded up.
    assert_eq!(encode_grpc_timeout(Duration::from_nanos(100_000_001)), "100001u");
    assert_eq!(encode_grpc_timeout(Duration::new(100, 1)), "100001m");
    assert_eq!(encode_grpc_timeout(Duration::new(100_000, 1)), "100001S");
    // 100,000,001 s does not fit in seconds: minutes, rounded up.
    assert_eq!(encode_grpc_timeout(Duration::from_secs(100_000_001)), "1666667M");
    assert_eq!(encode_grpc_timeout(Duration::from_secs(99_999_999 * 60 + 1)), "1666667H");
}

#[test]
fn durations_past_the_largest_header_saturate() {
    assert_eq!(MAX_GRPC_TIMEOUT, Duration::from_secs(99_999_999 * 3600));
    for d in
        [MAX_GRPC_TIMEOUT + Duration::from_nanos(1), Duration::from_secs(u64::MAX), Duration::MAX]
    {
        assert_eq!(encode_grpc_timeout(d), "99999999H", "{d:?}");
    }
}

#[test]
fn decodes_every_unit() {
    assert_eq!(decode(b"7n"), Ok(Duration::from_nanos(7)));
    assert_eq!(decode(b"7u"), Ok(Duration::from_micros(7)));
    assert_eq!(decode(b"7m"), Ok(Duration::from_millis(7)));
    assert_eq!(decode(b"7S"), Ok(Duration::from_secs(7)));
    assert_eq!(decode(b"7M"), Ok(Duration::from_secs(7 * 60)));
    assert_eq!(decode(b"7H"), Ok(Duration::from_secs(7 * 3600)));
    assert_eq!(decode(b"00000001S"), Ok(Duration::from_secs(1)), "leading zeros are digits");
    assert_eq!(decode(b"0S"), Ok(Duration::ZERO));
    assert_eq!(decode(b"99999999H"), Ok(MAX_GRPC_TIMEOUT));
}

#[test]
fn rejects_every_malformed_value_with_its_reason() {
    use GrpcTimeoutError::*;
    let cases: &[(&[u8], GrpcTimeoutError)] = &[
        (b"", Empty),
        (b"S", MissingValue),
        (b"n", MissingValue),
        (b"1", MissingUnit),
        (b"100", MissingUnit),
        (b"123456789", MissingUnit),
        (b"10s", InvalidUnit),
        (b"10ms", InvalidUnit),
        (b"10 ", InvalidUnit),
        (b"10h", InvalidUnit),
        (b"10\xff", InvalidUnit),
        (b"123456789S", TooManyDigits),
        (b"000000000S", TooManyDigits),
        (b"99999999999999999999999H", TooManyDigits),
        (b"+1S", InvalidDigit),
        (b"-1S", InvalidDigit),
        (b" 1S", InvalidDigit),
        (b"1 S", InvalidDigit),
        (b"1.5S", InvalidDigit),
        (b"1_0S", InvalidDigit),
        (b"0x1S", InvalidDigit),
        (b"1SS", InvalidDigit),
        (b"\xd9\xa1S", InvalidDigit), // ARABIC-INDIC DIGIT ONE is not an ASCII digit
        (b"1\tS", InvalidDigit),
    ];
    for &(bytes, expected) in cases {
        assert_eq!(decode(bytes), Err(expected), "{:?}", String::from_utf8_lossy(bytes));
        assert!(expected.is_malformed());
        assert!(expected.to_string().starts_with("malformed grpc-timeout: "), "{expected}");
    }
}

#[test]
fn client_disconnected_is_a_cause() {
    let (ctx, guard) = Context::unclocked().with_cancel();
    guard.cancel_with(ClientDisconnected);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<ClientDisconnected>(),
        Some(&ClientDisconnected)
    );
}

#[test]
fn inject_writes_the_remaining_time_and_refuses_done_contexts() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (ctx, guard) = root.with_timeout(Duration::from_secs(10));
    let mut headers = HeaderMap::new();
    headers.append(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
    headers.append(GRPC_TIMEOUT, HeaderValue::from_static("2S"));

    clock.advance(Duration::from_millis(2500));
    inject_deadline(&ctx, &mut headers).unwrap();
    assert_eq!(headers.get_all(GRPC_TIMEOUT).iter().collect::<Vec<_>>(), ["7500000u"]);

    // A value node between: the deadline is still the nearest one's.
    inject_deadline(&ctx.with_value(5u8), &mut headers).unwrap();
    assert_eq!(headers[GRPC_TIMEOUT], "7500000u");

    // No deadline: a stale header is removed.
    inject_deadline(&root, &mut headers).unwrap();
    assert!(headers.get(GRPC_TIMEOUT).is_none());
    inject_deadline(&ctx.without_cancel(), &mut headers).unwrap();
    assert!(headers.get(GRPC_TIMEOUT).is_none());

    guard.cancel();
    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
    assert_eq!(inject_deadline(&ctx, &mut headers), Err(Error::Canceled));
    assert_eq!(headers[GRPC_TIMEOUT], "1S", "a refused request's headers are left alone");
}

#[test]
fn inject_refuses_a_passed_deadline_whose_timer_has_not_fired() {
    // A clock whose time moves without firing timers, as a real clock does between the
    // deadline and its timer thread waking up.
    #[derive(Debug, Default)]
    struct LazyClock(std::sync::atomic::AtomicU64);
    impl cancelctx::Clock for LazyClock {
        fn now(&self) -> cancelctx::Instant {
            cancelctx::Instant::from_nanos(self.0.load(std::sync::atomic::Ordering::SeqCst))
        }
        fn schedule(
            &self,
            deadline: cancelctx::Instant,
            _: std::task::Waker,
        ) -> cancelctx::TimerKey {
            cancelctx::TimerKey::new(deadline, 0)
        }
        fn cancel(&self, _: cancelctx::TimerKey) {}
    }
    let clock = std::sync::Arc::new(LazyClock::default());
    let (ctx, _guard) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(1));
    clock.0.store(2_000_000_000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(ctx.err(), None);
    let mut headers = HeaderMap::new();
    assert_eq!(inject_deadline(&ctx, &mut headers), Err(Error::DeadlineExceeded));
    assert!(headers.is_empty());
}

#[test]
fn extract_takes_the_earlier_deadline() {
    let clock = ManualClock::new();
    let (server, _g) = Context::with_clock(clock.clone()).with_timeout(Duration::from_secs(30));
    let mut headers = HeaderMap::new();

    // No header: the parent's deadline only, and a context of its own.
    let (ctx, guard) = extract_deadline(&server, &headers).unwrap();
    assert_eq!(ctx.deadline(), server.deadline());
    drop(guard);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(server.err(), None);

    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("5S"));
    let (ctx, _guard) = extract_deadline(&server, &headers).unwrap();
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(5)));

    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("1M"));
    let (ctx, _guard) = extract_deadline(&server, &headers).unwrap();
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(30)), "the parent's is earlier");

    // Several values: all must be valid, the earliest wins.
    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("9S"));
    headers.append(GRPC_TIMEOUT, HeaderValue::from_static("4000m"));
    let (ctx, _guard) = extract_deadline(&server, &headers).unwrap();
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(4)));
    headers.append(GRPC_TIMEOUT, HeaderValue::from_static("4 S"));
    assert_eq!(extract_deadline(&server, &headers).unwrap_err(), GrpcTimeoutError::InvalidDigit);

    // Zero: born done with DeadlineExceeded, never "no deadline".
    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("0n"));
    let (ctx, _guard) = extract_deadline(&server, &headers).unwrap();
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn extract_on_an_unclocked_tree() {
    let root = Context::unclocked();
    let mut headers = HeaderMap::new();
    let (ctx, _guard) = extract_deadline(&root, &headers).unwrap();
    assert_eq!(ctx.deadline(), None);
    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("5S"));
    let err = extract_deadline(&root, &headers).unwrap_err();
    assert_eq!(err, GrpcTimeoutError::NoClock);
    assert!(!err.is_malformed());
    headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("5"));
    assert_eq!(extract_deadline(&root, &headers).unwrap_err(), GrpcTimeoutError::MissingUnit);
}

#[test]
fn a_deadline_crosses_two_hops_and_shrinks() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (client, _g) = root.with_timeout(Duration::from_millis(800));
    let mut headers = HeaderMap::new();
    inject_deadline(&client, &mut headers).unwrap();
    let (a, _ga) = extract_deadline(&root, &headers).unwrap();
    clock.advance(Duration::from_millis(300));
    inject_deadline(&a, &mut headers).unwrap();
    let (b, _gb) = extract_deadline(&root, &headers).unwrap();
    assert_eq!(b.deadline(), client.deadline());
    clock.advance(Duration::from_millis(500));
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
}

static_assertions::assert_impl_all!(GrpcTimeoutError: Send, Sync, Copy, std::error::Error);
static_assertions::assert_impl_all!(ClientDisconnected: Send, Sync, Copy, std::error::Error);

proptest! {
    /// decode(encode(d)) is never shorter than d, and longer by less than one unit of the
    /// encoding (up to the largest value a header can carry).
    #[test]
    fn round_trip_is_never_shorter(secs in 0u64..=(99_999_999 * 3600), nanos in 0u32..1_000_000_000) {
        check_round_trip(Duration::new(secs, nanos).min(MAX_GRPC_TIMEOUT));
    }

    /// Small durations (where every unit is in play) round-trip just the same.
    #[test]
    fn round_trip_small(nanos in 0u64..(1 << 50)) {
        check_round_trip(Duration::from_nanos(nanos));
    }

    /// Every decodable value re-encodes to a value that decodes to the same duration.
    #[test]
    fn decoded_values_are_stable(value in 0u64..=99_999_999, unit in prop::sample::select(&b"numSMH"[..])) {
        let text = format!("{value}{}", unit as char);
        prop_assert!(check_decode(&HeaderValue::from_str(&text).unwrap()), "{}", text);
    }

    /// Arbitrary header bytes: an error or a duration, never a panic; a duration only for
    /// the grammar's strings.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..12)) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let decoded = check_decode(&value);
            let grammatical = bytes.len() >= 2
                && bytes.len() <= 9
                && b"HMSmun".contains(bytes.last().unwrap())
                && bytes[..bytes.len() - 1].iter().all(u8::is_ascii_digit);
            prop_assert_eq!(decoded, grammatical, "{:?}", bytes);
        }
    }
}
