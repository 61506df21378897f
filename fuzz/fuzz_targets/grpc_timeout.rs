//! Fuzz target for the `grpc-timeout` codec (`cancelctx::http`):
//!
//! - any bytes that make a header value decode to a duration or an error, never a panic; a
//!   decoded duration is at most `MAX_GRPC_TIMEOUT` and survives a re-encode unchanged;
//! - a duration built from the input encodes to a header that decodes to no less than it
//!   and less than one unit of the header more (durations past `MAX_GRPC_TIMEOUT` encode as
//!   it).
//!
//! The checks are shared with the proptests of `tests/http_codec.rs`.
#![no_main]

#[path = "../../tests/common/grpc_timeout_props.rs"]
mod grpc_timeout_props;

use std::time::Duration;

use grpc_timeout_props::{check_decode, check_round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        check_decode(&value);
    }
    if data.len() >= 13 {
        // A shift spreads the seconds over every magnitude, from 0 to u64::MAX.
        let secs = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[12] % 65).min(63);
        let secs = if data[12] % 65 == 64 { 0 } else { secs };
        let nanos = u32::from_le_bytes(data[8..12].try_into().unwrap()) % 1_000_000_000;
        check_round_trip(Duration::new(secs, nanos));
    }
});
