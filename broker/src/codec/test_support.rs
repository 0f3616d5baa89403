//! Helpers for the codec's hand-built byte vector tests.

use super::decode::decode_all;
use super::{DecodeError, Packet, ProtocolVersion};

/// A packet whose first byte is `first`, with a one-byte remaining length.
pub(super) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let len = u8::try_from(body.len()).expect("test body under 128 bytes");
    assert!(len < 128, "test body under 128 bytes");
    let mut bytes = vec![first, len];
    bytes.extend_from_slice(body);
    bytes
}

/// Concatenates byte fragments.
pub(super) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A two-byte length-prefixed string or binary field.
pub(super) fn s(text: &str) -> Vec<u8> {
    let mut out = u16::try_from(text.len())
        .expect("short test string")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// A property section: one-byte length followed by `props`.
pub(super) fn props(props: &[u8]) -> Vec<u8> {
    let len = u8::try_from(props.len()).expect("short test properties");
    assert!(len < 128);
    cat(&[&[len], props])
}

pub(super) fn ok(bytes: &[u8], v: ProtocolVersion) -> Packet {
    match decode_all(bytes, v) {
        Ok(Some(p)) => p,
        other => panic!("expected a packet from {bytes:02x?} ({v:?}), got {other:?}"),
    }
}

pub(super) fn err(bytes: &[u8], v: ProtocolVersion) -> DecodeError {
    match decode_all(bytes, v) {
        Err(e) => e,
        other => panic!("expected an error from {bytes:02x?} ({v:?}), got {other:?}"),
    }
}

#[track_caller]
pub(super) fn malformed(bytes: &[u8], v: ProtocolVersion) {
    let e = err(bytes, v);
    assert!(
        matches!(e, DecodeError::Malformed(_)),
        "expected Malformed from {bytes:02x?} ({v:?}), got {e:?}"
    );
}

#[track_caller]
pub(super) fn protocol(bytes: &[u8], v: ProtocolVersion) {
    let e = err(bytes, v);
    assert!(
        matches!(e, DecodeError::Protocol(_)),
        "expected Protocol from {bytes:02x?} ({v:?}), got {e:?}"
    );
}

#[track_caller]
pub(super) fn bad_will(bytes: &[u8], v: ProtocolVersion) {
    let e = err(bytes, v);
    assert!(
        matches!(e, DecodeError::BadWill(_)),
        "expected BadWill from {bytes:02x?} ({v:?}), got {e:?}"
    );
}

/// Malformed before MQTT 5 (`v3` bytes), a protocol error in MQTT 5 (`v5`
/// bytes, which differ by the property section).
#[track_caller]
pub(super) fn violation(v3: &[u8], v5: &[u8]) {
    malformed(v3, ProtocolVersion::V311);
    malformed(v3, ProtocolVersion::V31);
    protocol(v5, ProtocolVersion::V5);
}
