//! Properties of the `grpc-timeout` codec, checked both by the proptests in
//! `tests/http_codec.rs` and by the fuzz target `fuzz/fuzz_targets/grpc_timeout.rs`, which
//! include this file with `#[path = ...] mod grpc_timeout_props;`. Each check panics on a
//! violation (proptest shrinks panics like failed `prop_assert!`s).

use std::time::Duration;

use cancelctx::http::{decode_grpc_timeout, encode_grpc_timeout, MAX_GRPC_TIMEOUT};

/// The length of a unit, by its letter.
pub fn unit_len(unit: u8) -> Duration {
    match unit {
        b'n' => Duration::from_nanos(1),
        b'u' => Duration::from_micros(1),
        b'm' => Duration::from_millis(1),
        b'S' => Duration::from_secs(1),
        b'M' => Duration::from_secs(60),
        b'H' => Duration::from_secs(3600),
        other => panic!("not a unit: {other}"),
    }
}

/// `d` encodes to 2 to 9 bytes that decode to no less than `d` and less than one unit of
/// the encoding more; past [`MAX_GRPC_TIMEOUT`], to exactly that.
pub fn check_round_trip(d: Duration) {
    let header = encode_grpc_timeout(d);
    let bytes = header.as_bytes();
    assert!((2..=9).contains(&bytes.len()), "{d:?} -> {header:?}");
    let back = decode_grpc_timeout(&header).expect("an encoded value decodes");
    if d <= MAX_GRPC_TIMEOUT {
        assert!(back >= d, "{d:?} -> {header:?} -> {back:?}: shorter");
        let unit = unit_len(bytes[bytes.len() - 1]);
        assert!(back - d < unit, "{d:?} -> {header:?} -> {back:?}: a unit or more longer");
    } else {
        assert_eq!(back, MAX_GRPC_TIMEOUT, "{d:?} -> {header:?}");
    }
}

/// Any header value decodes to an error or to a duration of at most [`MAX_GRPC_TIMEOUT`]
/// that re-encodes to the same duration (never a panic). Returns whether it decoded.
pub fn check_decode(value: &http::HeaderValue) -> bool {
    match decode_grpc_timeout(value) {
        Ok(d) => {
            assert!(d <= MAX_GRPC_TIMEOUT, "{value:?} decoded to {d:?}");
            assert_eq!(decode_grpc_timeout(&encode_grpc_timeout(d)), Ok(d), "{value:?}");
            true
        }
        Err(_) => false,
    }
}
