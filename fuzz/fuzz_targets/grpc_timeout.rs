//! Fuzz target for the `grpc-timeout` codec (`cancelctx::http`):
//!
//! - any bytes that make a header value decode to a duration or an error, never a panic; a
//!   decoded duration is at most `MAX_GRPC_TIMEOUT` and survives a re-encode unchanged;
//! - a duration built from the input encodes to a header that decodes to no less than it
//!   and less than one unit of the header more (durations past `MAX_GRPC_TIMEOUT` encode as
//!   it).
#![no_main]

use std::time::Duration;

use cancelctx::http::{decode_grpc_timeout, encode_grpc_timeout, MAX_GRPC_TIMEOUT};
use libfuzzer_sys::fuzz_target;

fn unit_len(unit: u8) -> Duration {
    match unit {
        b'n' => Duration::from_nanos(1),
        b'u' => Duration::from_micros(1),
        b'm' => Duration::from_millis(1),
        b'S' => Duration::from_secs(1),
        b'M' => Duration::from_secs(60),
        b'H' => Duration::from_secs(3600),
        other => panic!("encoded an unknown unit {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        if let Ok(d) = decode_grpc_timeout(&value) {
            assert!(d <= MAX_GRPC_TIMEOUT, "{value:?} decoded to {d:?}");
            assert_eq!(decode_grpc_timeout(&encode_grpc_timeout(d)), Ok(d), "{value:?}");
        }
    }
    if data.len() >= 13 {
        // A shift spreads the seconds over every magnitude, from 0 to u64::MAX.
        let secs = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[12] % 65).min(63);
        let secs = if data[12] % 65 == 64 { 0 } else { secs };
        let nanos = u32::from_le_bytes(data[8..12].try_into().unwrap()) % 1_000_000_000;
        let d = Duration::new(secs, nanos);
        let header = encode_grpc_timeout(d);
        let bytes = header.as_bytes();
        assert!((2..=9).contains(&bytes.len()), "{d:?} -> {header:?}");
        let back = decode_grpc_timeout(&header).expect("an encoded value decodes");
        if d <= MAX_GRPC_TIMEOUT {
            assert!(back >= d, "{d:?} -> {header:?} -> {back:?}: shorter");
            assert!(back - d < unit_len(bytes[bytes.len() - 1]), "{d:?} -> {header:?} -> {back:?}");
        } else {
            assert_eq!(back, MAX_GRPC_TIMEOUT, "{d:?} -> {header:?}");
        }
    }
});
