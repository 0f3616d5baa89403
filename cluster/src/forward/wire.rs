//! A forwarded publish on the wire: written straight from the seam's type into a batch's
//! buffer (the sending path: no protobuf struct, no copy of the topic or the client id
//! before the bytes that go out), and read back from the protobuf message the receiver
//! decodes. The payload moves as `Bytes` on the receiving side.
//!
//! The writer produces exactly what prost would for `pb::ForwardedPublish` (fields in
//! number order, proto3 defaults left out, `optional` fields written when present); a test
//! holds it to that, byte for byte.

use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use skein_proto::v1 as pb;
use skein_seam::{ClientId, ForwardedPublish, PublishProperties, SharedTarget};

/// `PublishBatch.publishes`.
const BATCH_PUBLISHES: u32 = 4;

fn varint_field_len(tag: u32, value: u64) -> usize {
    key_len(tag) + encoded_len_varint(value)
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_varint_field(tag: u32, value: u64, buf: &mut impl BufMut) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

fn put_bytes_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

/// A message of two strings (`UserProperty`, `SharedTarget`): its encoded length.
fn pair_len(a: &str, b: &str) -> usize {
    let field = |tag, s: &str| {
        if s.is_empty() {
            0
        } else {
            bytes_field_len(tag, s.len())
        }
    };
    field(1, a) + field(2, b)
}

fn put_pair_field(tag: u32, a: &str, b: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(pair_len(a, b) as u64, buf);
    if !a.is_empty() {
        put_bytes_field(1, a.as_bytes(), buf);
    }
    if !b.is_empty() {
        put_bytes_field(2, b.as_bytes(), buf);
    }
}

/// The encoded length of `p` as a `ForwardedPublish` message.
pub(crate) fn encoded_len(p: &ForwardedPublish) -> usize {
    let props = &p.properties;
    let nonempty = |tag, len: usize| {
        if len == 0 {
            0
        } else {
            bytes_field_len(tag, len)
        }
    };
    let some_bytes = |tag, v: Option<usize>| v.map_or(0, |len| bytes_field_len(tag, len));
    let some_varint = |tag, v: Option<u64>| v.map_or(0, |v| varint_field_len(tag, v));
    let flag = |tag, on: bool| if on { varint_field_len(tag, 1) } else { 0 };
    nonempty(1, p.topic.len())
        + nonempty(2, p.payload.len())
        + if p.qos == 0 {
            0
        } else {
            varint_field_len(3, u64::from(p.qos))
        }
        + flag(4, p.retain)
        + some_varint(5, props.payload_format_indicator.map(u64::from))
        + some_varint(6, props.message_expiry_interval.map(u64::from))
        + some_bytes(7, props.content_type.as_ref().map(String::len))
        + some_bytes(8, props.response_topic.as_ref().map(String::len))
        + some_bytes(9, props.correlation_data.as_ref().map(Bytes::len))
        + props
            .user_properties
            .iter()
            .map(|(k, v)| bytes_field_len(10, pair_len(k, v)))
            .sum::<usize>()
        + some_bytes(11, p.publisher.as_ref().map(|c| c.as_str().len()))
        + if p.received_at_ms == 0 {
            0
        } else {
            varint_field_len(12, p.received_at_ms)
        }
        + flag(13, p.to_subscribers)
        + p.shared
            .iter()
            .map(|t| bytes_field_len(14, pair_len(&t.group, &t.filter)))
            .sum::<usize>()
        + some_bytes(15, p.publisher_username.as_ref().map(|u| u.len()))
}

/// Writes `p` as a `ForwardedPublish` (its [`encoded_len`] bytes).
fn put(p: &ForwardedPublish, buf: &mut impl BufMut) {
    let props = &p.properties;
    if !p.topic.is_empty() {
        put_bytes_field(1, p.topic.as_bytes(), buf);
    }
    if !p.payload.is_empty() {
        put_bytes_field(2, &p.payload, buf);
    }
    if p.qos != 0 {
        put_varint_field(3, u64::from(p.qos), buf);
    }
    if p.retain {
        put_varint_field(4, 1, buf);
    }
    if let Some(v) = props.payload_format_indicator {
        put_varint_field(5, u64::from(v), buf);
    }
    if let Some(v) = props.message_expiry_interval {
        put_varint_field(6, u64::from(v), buf);
    }
    if let Some(v) = &props.content_type {
        put_bytes_field(7, v.as_bytes(), buf);
    }
    if let Some(v) = &props.response_topic {
        put_bytes_field(8, v.as_bytes(), buf);
    }
    if let Some(v) = &props.correlation_data {
        put_bytes_field(9, v, buf);
    }
    for (key, value) in &props.user_properties {
        put_pair_field(10, key, value, buf);
    }
    if let Some(c) = &p.publisher {
        put_bytes_field(11, c.as_str().as_bytes(), buf);
    }
    if p.received_at_ms != 0 {
        put_varint_field(12, p.received_at_ms, buf);
    }
    if p.to_subscribers {
        put_varint_field(13, 1, buf);
    }
    for t in &p.shared {
        put_pair_field(14, &t.group, &t.filter, buf);
    }
    if let Some(u) = &p.publisher_username {
        put_bytes_field(15, u.as_bytes(), buf);
    }
}

/// The bytes `p` takes in a batch (as one of `PublishBatch.publishes`), given its
/// [`encoded_len`].
pub(crate) fn batch_entry_len(encoded_len: usize) -> usize {
    bytes_field_len(BATCH_PUBLISHES, encoded_len)
}

/// Appends `p` to `buf` as one of `PublishBatch.publishes`; `encoded_len` is its
/// [`encoded_len`].
pub(crate) fn put_batch_entry(p: &ForwardedPublish, encoded_len: usize, buf: &mut BytesMut) {
    encode_key(BATCH_PUBLISHES, WireType::LengthDelimited, buf);
    encode_varint(encoded_len as u64, buf);
    put(p, buf);
}

/// A `PublishBatch` without its publishes: what goes before the entries
/// [`put_batch_entry`] wrote (protobuf takes fields in any order).
pub(crate) fn batch_header(sequence: u64, from_node: u64, to_node: u64, stream_id: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 * 11);
    for (tag, value) in [(1, sequence), (2, from_node), (3, to_node), (5, stream_id)] {
        if value != 0 {
            put_varint_field(tag, value, &mut buf);
        }
    }
    buf.freeze()
}

/// The protobuf message of `p`, for the `Retained` answer (a node's retained set, once per
/// joining node: not worth a writer of its own).
pub(crate) fn to_pb(p: ForwardedPublish) -> pb::ForwardedPublish {
    let props = p.properties;
    pb::ForwardedPublish {
        topic: p.topic.to_string(),
        payload: p.payload,
        qos: u32::from(p.qos),
        retain: p.retain,
        payload_format_indicator: props.payload_format_indicator.map(u32::from),
        message_expiry_interval: props.message_expiry_interval,
        content_type: props.content_type,
        response_topic: props.response_topic,
        correlation_data: props.correlation_data,
        user_properties: props
            .user_properties
            .into_iter()
            .map(|(key, value)| pb::UserProperty { key, value })
            .collect(),
        publisher_client_id: p.publisher.map(|c| c.as_str().to_owned()),
        received_at_ms: p.received_at_ms,
        to_subscribers: p.to_subscribers,
        shared: p
            .shared
            .into_iter()
            .map(|t| pb::SharedTarget {
                group: t.group,
                filter: t.filter,
            })
            .collect(),
        publisher_username: p.publisher_username.map(|u| u.to_string()),
    }
}

/// The seam's publish, or why no MQTT publish could carry this message (the broker checks
/// the topic itself).
pub(crate) fn from_pb(p: pb::ForwardedPublish) -> Result<ForwardedPublish, String> {
    let qos = u8::try_from(p.qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or_else(|| format!("QoS {}", p.qos))?;
    let payload_format_indicator = match p.payload_format_indicator {
        None => None,
        Some(v @ 0..=1) => Some(v as u8),
        Some(other) => return Err(format!("payload format indicator {other}")),
    };
    Ok(ForwardedPublish {
        topic: p.topic.into(),
        payload: p.payload,
        qos,
        retain: p.retain,
        properties: PublishProperties {
            payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p
                .user_properties
                .into_iter()
                .map(|u| (u.key, u.value))
                .collect(),
        },
        received_at_ms: p.received_at_ms,
        publisher: p.publisher_client_id.as_deref().map(ClientId::new),
        publisher_username: p.publisher_username.map(Into::into),
        to_subscribers: p.to_subscribers,
        shared: p
            .shared
            .into_iter()
            .map(|t| SharedTarget {
                group: t.group,
                filter: t.filter,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::bytes::Bytes;
    use prost::Message as _;

    use super::*;

    /// `p` as the writer puts it in a batch.
    fn written(p: &ForwardedPublish) -> Vec<u8> {
        let len = encoded_len(p);
        let mut buf = BytesMut::new();
        put_batch_entry(p, len, &mut buf);
        assert_eq!(buf.len(), batch_entry_len(len));
        buf.to_vec()
    }

    fn text() -> impl Strategy<Value = String> {
        // Empty strings matter: proto3 leaves them out, `optional` ones it keeps.
        prop_oneof![Just(String::new()), "[a-z/+#é]{1,12}", "x{200,300}"]
    }

    fn publishes() -> impl Strategy<Value = ForwardedPublish> {
        let props = (
            proptest::option::of(0u8..=1),
            proptest::option::of(any::<u32>()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4)),
            proptest::collection::vec((text(), text()), 0..3),
        )
            .prop_map(|(pfi, expiry, ct, rt, cd, up)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                content_type: ct,
                response_topic: rt,
                correlation_data: cd.map(Bytes::from),
                user_properties: up,
            });
        (
            (
                text(),
                proptest::collection::vec(any::<u8>(), 0..300),
                0u8..=2,
                any::<bool>(),
            ),
            props,
            (
                prop_oneof![Just(0u64), any::<u64>()],
                proptest::option::of(text()),
                proptest::option::of(text()),
                any::<bool>(),
                proptest::collection::vec((text(), text()), 0..3),
            ),
        )
            .prop_map(
                |((topic, payload, qos, retain), properties, (at, publisher, user, to, shared))| {
                    ForwardedPublish {
                        topic: topic.into(),
                        payload: Bytes::from(payload),
                        qos,
                        retain,
                        properties,
                        received_at_ms: at,
                        publisher: publisher.as_deref().map(ClientId::new),
                        publisher_username: user.map(Into::into),
                        to_subscribers: to,
                        shared: shared
                            .into_iter()
                            .map(|(group, filter)| SharedTarget { group, filter })
                            .collect(),
                    }
                },
            )
    }

    proptest! {
        /// The writer is held to prost's encoding of the same message, byte for byte, and
        /// a batch of header and entries decodes as the batch prost would have sent.
        #[test]
        fn the_writer_writes_what_prost_writes(
            batch in proptest::collection::vec(publishes(), 0..4),
            (sequence, from, to, stream) in (any::<u64>(), 0u64..9, 0u64..9, any::<u64>()),
        ) {
            let mut ours = batch_header(sequence, from, to, stream).to_vec();
            for p in &batch {
                let entry = written(p);
                let alone = pb::PublishBatch {
                    publishes: vec![to_pb(p.clone())],
                    ..Default::default()
                };
                prop_assert_eq!(&entry, &alone.encode_to_vec());
                ours.extend(entry);
            }
            let expected = pb::PublishBatch {
                sequence,
                from_node: from,
                to_node: to,
                publishes: batch.into_iter().map(to_pb).collect(),
                stream_id: stream,
            };
            prop_assert_eq!(pb::PublishBatch::decode(&ours[..]).unwrap(), expected);
        }
    }

    #[test]
    fn a_publish_survives_the_wire_field_for_field() {
        let publish = ForwardedPublish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: 2,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(30),
                content_type: Some("text/plain".into()),
                response_topic: Some("re/ply".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
            received_at_ms: 1_700_000_000_123,
            publisher: Some(ClientId::new("pub")),
            publisher_username: Some("alice".into()),
            to_subscribers: true,
            shared: vec![SharedTarget {
                group: "g".into(),
                filter: "a/+".into(),
            }],
        };
        assert_eq!(from_pb(to_pb(publish.clone())), Ok(publish));
        let bare = ForwardedPublish {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 0,
            retain: false,
            properties: PublishProperties::default(),
            received_at_ms: 0,
            publisher: None,
            publisher_username: None,
            to_subscribers: false,
            shared: Vec::new(),
        };
        assert_eq!(from_pb(to_pb(bare.clone())), Ok(bare));
    }

    #[test]
    fn what_no_publish_could_carry_is_refused() {
        let mut p = to_pb(ForwardedPublish {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 1,
            retain: false,
            properties: PublishProperties::default(),
            received_at_ms: 0,
            publisher: None,
            publisher_username: None,
            to_subscribers: true,
            shared: Vec::new(),
        });
        p.qos = 3;
        assert_eq!(from_pb(p.clone()).unwrap_err(), "QoS 3");
        p.qos = 1;
        p.payload_format_indicator = Some(2);
        assert!(from_pb(p).unwrap_err().contains("payload format"));
    }
}
