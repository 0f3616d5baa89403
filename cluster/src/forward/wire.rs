//! A forwarded publish on the wire: written straight from the seam's type into a batch's
//! buffer (the sending path: no protobuf struct, no copy of the topic or the client id
//! before the bytes that go out), and read straight from its slice of the received batch
//! into the seam's type (the receiving path: the payload stays a slice of that buffer; the
//! topic and the client id are allocated once, as what the broker keeps).
//!
//! The writer produces exactly what prost would for `pb::ForwardedPublish` (fields in
//! number order, proto3 defaults left out, `optional` fields written when present); the
//! reader takes what prost would (any field order, unknown fields skipped, a repeated
//! scalar's last value winning). Tests hold both to prost's own encoding. The protobuf
//! messages (`to_pb`, `from_pb`) remain for the `Retained` answer.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{
    decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len, skip_field,
    DecodeContext, WireType,
};
use skein_proto::v1 as pb;
use skein_seam::{ClientId, ForwardedPublish, PublishProperties, SharedTarget};

/// `PublishBatch.publishes`.
const BATCH_PUBLISHES: u32 = 4;
/// `PublishBatch.resent`.
const BATCH_RESENT: u32 = 6;

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
        + some_varint(16, p.publish_id)
        + some_varint(20, p.adopted_from.map(|n| n.0))
        + some_bytes(21, p.for_client.as_ref().map(|c| c.as_str().len()))
        + flag(22, p.possibly_delivered)
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
    if let Some(id) = p.publish_id {
        put_varint_field(16, id, buf);
    }
    if let Some(n) = p.adopted_from {
        put_varint_field(20, n.0, buf);
    }
    if let Some(c) = &p.for_client {
        put_bytes_field(21, c.as_str().as_bytes(), buf);
    }
    if p.possibly_delivered {
        put_varint_field(22, 1, buf);
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
    // Grown once, then written as a plain slice: `BytesMut`'s own `BufMut` checks its
    // capacity and copies once per call, and a varint is one call per byte (that was ≈ 10%
    // of the sending node's CPU in a fan-in profile).
    let start = buf.len();
    buf.resize(start + batch_entry_len(encoded_len), 0);
    let mut out = &mut buf[start..];
    encode_key(BATCH_PUBLISHES, WireType::LengthDelimited, &mut out);
    encode_varint(encoded_len as u64, &mut out);
    put(p, &mut out);
    debug_assert!(out.is_empty(), "encoded_len disagrees with what put wrote");
}

/// The publishes of entries [`put_batch_entry`] wrote one after the other, each read
/// back (what a queue held for a peer that was marked down, to send elsewhere).
pub(crate) fn read_batch_entries(mut buf: Bytes) -> Vec<Result<ForwardedPublish, String>> {
    let mut out = Vec::new();
    while buf.has_remaining() {
        let entry = decode_key(&mut buf)
            .map_err(|e| e.to_string())
            .and_then(|key| match key {
                (BATCH_PUBLISHES, WireType::LengthDelimited) => length_delimited(&mut buf),
                (tag, wire_type) => Err(format!("field {tag} as {wire_type:?} in a batch")),
            });
        match entry {
            Ok(bytes) => out.push(read_publish(bytes)),
            // The rest cannot be delimited: our own writer's bytes, never seen to happen.
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

/// A `PublishBatch` without its publishes: what goes before the entries
/// [`put_batch_entry`] wrote (protobuf takes fields in any order).
pub(crate) fn batch_header(
    sequence: u64,
    from_node: u64,
    to_node: u64,
    stream_id: u64,
    folded_index: u64,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 * 11);
    let fields = [
        (1, sequence),
        (2, from_node),
        (3, to_node),
        (5, stream_id),
        (7, folded_index),
    ];
    for (tag, value) in fields {
        if value != 0 {
            put_varint_field(tag, value, &mut buf);
        }
    }
    buf.freeze()
}

/// `header` (a [`batch_header`]) with `PublishBatch.resent` set, for a batch sent again.
pub(crate) fn resent_header(header: &Bytes) -> Bytes {
    let mut buf = BytesMut::with_capacity(header.len() + 2);
    buf.extend_from_slice(header);
    put_varint_field(BATCH_RESENT, 1, &mut buf);
    buf.freeze()
}

/// A length-delimited field's bytes (after its key), as a slice of `buf`.
fn length_delimited(buf: &mut Bytes) -> Result<Bytes, String> {
    let len = decode_varint(buf).map_err(|e| e.to_string())?;
    if len > buf.remaining() as u64 {
        return Err(format!(
            "a field of {len} bytes where {} remain",
            buf.remaining()
        ));
    }
    Ok(buf.split_to(len as usize))
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "a string that is not UTF-8".to_owned())
}

/// A message of two strings (`UserProperty`, `SharedTarget`).
fn read_pair(mut buf: Bytes) -> Result<(String, String), String> {
    let (mut a, mut b) = (String::new(), String::new());
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match (tag, wire_type) {
            (1, WireType::LengthDelimited) => a = utf8(&length_delimited(&mut buf)?)?.to_owned(),
            (2, WireType::LengthDelimited) => b = utf8(&length_delimited(&mut buf)?)?.to_owned(),
            (1 | 2, other) => return Err(format!("field {tag} as {other:?}")),
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|e| e.to_string())?,
        }
    }
    Ok((a, b))
}

/// Reads one encoded `ForwardedPublish` (a slice of a received batch) into the seam's
/// type, or says why it is not one, or why no MQTT publish could carry it (as
/// [`from_pb`]; the broker checks the topic itself).
pub(crate) fn read_publish(buf: Bytes) -> Result<ForwardedPublish, String> {
    read_publish_after(buf, None)
}

/// [`read_publish`] for the message after `previous` in a batch: a topic, client id or
/// user name equal to the previous message's shares its allocation instead of making one
/// (a batch's messages mostly come from a few publishers, in runs).
pub(crate) fn read_publish_after(
    mut buf: Bytes,
    previous: Option<&ForwardedPublish>,
) -> Result<ForwardedPublish, String> {
    let mut p = ForwardedPublish::default();
    let (mut qos, mut format) = (0u32, None::<u32>);
    let props = &mut p.properties;
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        let varint = wire_type == WireType::Varint;
        let delimited = wire_type == WireType::LengthDelimited;
        let int = |buf: &mut Bytes| decode_varint(buf).map_err(|e| e.to_string());
        // uint32 fields keep the low 32 bits of a longer varint, as prost does.
        match tag {
            1 if delimited => {
                let bytes = length_delimited(&mut buf)?;
                let topic = utf8(&bytes)?;
                p.topic = match previous {
                    Some(prev) if &*prev.topic == topic => prev.topic.clone(),
                    _ => Arc::from(topic),
                };
            }
            2 if delimited => p.payload = length_delimited(&mut buf)?,
            3 if varint => qos = int(&mut buf)? as u32,
            4 if varint => p.retain = int(&mut buf)? != 0,
            5 if varint => format = Some(int(&mut buf)? as u32),
            6 if varint => props.message_expiry_interval = Some(int(&mut buf)? as u32),
            7 if delimited => {
                props.content_type = Some(utf8(&length_delimited(&mut buf)?)?.to_owned())
            }
            8 if delimited => {
                props.response_topic = Some(utf8(&length_delimited(&mut buf)?)?.to_owned())
            }
            9 if delimited => props.correlation_data = Some(length_delimited(&mut buf)?),
            10 if delimited => props
                .user_properties
                .push(read_pair(length_delimited(&mut buf)?)?),
            11 if delimited => {
                let bytes = length_delimited(&mut buf)?;
                let id = utf8(&bytes)?;
                p.publisher = Some(match previous.and_then(|prev| prev.publisher.as_ref()) {
                    Some(prev) if prev.as_str() == id => prev.clone(),
                    _ => ClientId::new(id),
                });
            }
            12 if varint => p.received_at_ms = int(&mut buf)?,
            13 if varint => p.to_subscribers = int(&mut buf)? != 0,
            14 if delimited => {
                let (group, filter) = read_pair(length_delimited(&mut buf)?)?;
                p.shared.push(SharedTarget { group, filter });
            }
            15 if delimited => {
                let bytes = length_delimited(&mut buf)?;
                let name = utf8(&bytes)?;
                p.publisher_username = Some(
                    match previous.and_then(|prev| prev.publisher_username.as_ref()) {
                        Some(prev) if &**prev == name => prev.clone(),
                        _ => Arc::from(name),
                    },
                );
            }
            20 if varint => p.adopted_from = Some(skein_seam::NodeId(int(&mut buf)?)),
            16 if varint => p.publish_id = Some(int(&mut buf)?),
            21 if delimited => {
                p.for_client = Some(ClientId::new(utf8(&length_delimited(&mut buf)?)?))
            }
            22 if varint => p.possibly_delivered = int(&mut buf)? != 0,
            1..=16 | 20..=22 => return Err(format!("field {tag} as {wire_type:?}")),
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|e| e.to_string())?,
        }
    }
    p.qos = u8::try_from(qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or_else(|| format!("QoS {qos}"))?;
    props.payload_format_indicator = match format {
        None => None,
        Some(v @ 0..=1) => Some(v as u8),
        Some(other) => return Err(format!("payload format indicator {other}")),
    };
    Ok(p)
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
        adopted_from: p.adopted_from.map(|n| n.0),
        publish_id: p.publish_id,
        for_client: p.for_client.map(|c| c.as_str().to_owned()),
        possibly_delivered: p.possibly_delivered,
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
        publish_id: p.publish_id,
        to_subscribers: p.to_subscribers,
        shared: p
            .shared
            .into_iter()
            .map(|t| SharedTarget {
                group: t.group,
                filter: t.filter,
            })
            .collect(),
        adopted_from: p.adopted_from.map(skein_seam::NodeId),
        for_client: p.for_client.as_deref().map(ClientId::new),
        possibly_delivered: p.possibly_delivered,
        // Not on the wire: the receiver sets it from the batch.
        routed_index: 0,
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
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(
                    (topic, payload, qos, retain),
                    properties,
                    (at, publisher, user, to, shared),
                    publish_id,
                )| {
                    ForwardedPublish {
                        topic: topic.into(),
                        payload: Bytes::from(payload),
                        qos,
                        retain,
                        properties,
                        received_at_ms: at,
                        publisher: publisher.as_deref().map(ClientId::new),
                        publisher_username: user.map(Into::into),
                        publish_id,
                        to_subscribers: to,
                        shared: shared
                            .into_iter()
                            .map(|(group, filter)| SharedTarget { group, filter })
                            .collect(),
                        adopted_from: to.then_some(skein_seam::NodeId(at)),
                        for_client: publisher.as_deref().filter(|_| retain).map(ClientId::new),
                        possibly_delivered: qos == 2 || (retain && !to),
                        routed_index: 0,
                    }
                },
            )
    }

    proptest! {
        /// The reader takes what prost writes, and what the writer writes, as the
        /// publish it was.
        #[test]
        fn the_reader_reads_what_prost_writes(p in publishes()) {
            let by_prost = Bytes::from(to_pb(p.clone()).encode_to_vec());
            let mut ours = BytesMut::new();
            put(&p, &mut ours);
            prop_assert_eq!(&ours[..], &by_prost[..]);
            prop_assert_eq!(read_publish(by_prost), from_pb(to_pb(p.clone())));
            prop_assert_eq!(read_publish(ours.freeze()), Ok(p));
        }

        /// Whatever the bytes, the reader answers (a publish or why not) without a panic,
        /// and agrees with prost on whether they are a message at all.
        #[test]
        fn the_reader_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ours = read_publish(Bytes::from(bytes.clone()));
            if pb::ForwardedPublish::decode(&bytes[..]).is_err() {
                prop_assert!(ours.is_err());
            }
        }

        /// The writer is held to prost's encoding of the same message, byte for byte, and
        /// a batch of header and entries decodes as the batch prost would have sent.
        #[test]
        fn the_writer_writes_what_prost_writes(
            batch in proptest::collection::vec(publishes(), 0..4),
            (sequence, from, to, stream, folded) in
                (any::<u64>(), 0u64..9, 0u64..9, any::<u64>(), any::<u64>()),
            resent in any::<bool>(),
        ) {
            let header = batch_header(sequence, from, to, stream, folded);
            let mut ours = if resent { resent_header(&header) } else { header }.to_vec();
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
                resent,
                folded_index: folded,
            };
            prop_assert_eq!(pb::PublishBatch::decode(&ours[..]).unwrap(), expected);
        }
    }

    #[test]
    fn batch_entries_read_back_in_order() {
        let publishes: Vec<ForwardedPublish> = ["a", "b/c", "d"]
            .iter()
            .map(|t| ForwardedPublish {
                topic: (*t).into(),
                qos: 1,
                adopted_from: Some(skein_seam::NodeId(2)),
                ..ForwardedPublish::default()
            })
            .collect();
        let mut buf = BytesMut::new();
        for p in &publishes {
            put_batch_entry(p, encoded_len(p), &mut buf);
        }
        let back: Vec<ForwardedPublish> = read_batch_entries(buf.freeze())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back, publishes);
        let garbage = read_batch_entries(Bytes::from_static(&[0x08, 0x01]));
        assert_eq!(garbage.len(), 1);
        assert!(garbage[0].is_err());
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
            publish_id: Some(u64::MAX),
            to_subscribers: true,
            shared: vec![SharedTarget {
                group: "g".into(),
                filter: "a/+".into(),
            }],
            adopted_from: Some(skein_seam::NodeId(3)),
            for_client: Some(ClientId::new("sub")),
            possibly_delivered: true,
            routed_index: 0,
        };
        assert_eq!(from_pb(to_pb(publish.clone())), Ok(publish));
        let bare = ForwardedPublish {
            topic: "t".into(),
            ..ForwardedPublish::default()
        };
        assert_eq!(from_pb(to_pb(bare.clone())), Ok(bare));
    }

    #[test]
    fn the_reader_skips_unknown_fields_and_refuses_wrong_wire_types() {
        let p = pb::ForwardedPublish {
            topic: "t".into(),
            qos: 1,
            ..Default::default()
        };
        let mut bytes = p.encode_to_vec();
        // Field 99, a varint, from a newer sender.
        encode_key(99, WireType::Varint, &mut bytes);
        encode_varint(7, &mut bytes);
        let read = read_publish(Bytes::from(bytes)).unwrap();
        assert_eq!((&*read.topic, read.qos), ("t", 1));
        // The topic as a varint.
        let mut wrong = Vec::new();
        encode_key(1, WireType::Varint, &mut wrong);
        encode_varint(7, &mut wrong);
        assert!(read_publish(Bytes::from(wrong)).is_err());
        // A length past the end.
        let mut short = Vec::new();
        encode_key(1, WireType::LengthDelimited, &mut short);
        encode_varint(10, &mut short);
        short.extend_from_slice(b"abc");
        assert!(read_publish(Bytes::from(short)).is_err());
    }

    #[test]
    fn what_no_publish_could_carry_is_refused() {
        let mut p = to_pb(ForwardedPublish {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 1,
            to_subscribers: true,
            ..Default::default()
        });
        p.qos = 3;
        assert_eq!(from_pb(p.clone()).unwrap_err(), "QoS 3");
        let read = |p: &pb::ForwardedPublish| read_publish(Bytes::from(p.encode_to_vec()));
        assert_eq!(read(&p).unwrap_err(), "QoS 3");
        p.qos = 1;
        p.payload_format_indicator = Some(2);
        assert!(read(&p).unwrap_err().contains("payload format"));
        assert!(from_pb(p).unwrap_err().contains("payload format"));
    }

    #[test]
    fn a_message_like_the_previous_one_shares_its_strings() {
        let publish = |topic: &str, id: &str| ForwardedPublish {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos: 1,
            publisher: Some(ClientId::new(id)),
            publisher_username: Some("alice".into()),
            ..ForwardedPublish::default()
        };
        let bytes = |p: &ForwardedPublish| Bytes::from(to_pb(p.clone()).encode_to_vec());
        let first = read_publish(bytes(&publish("a/b", "pub"))).unwrap();
        let same = read_publish_after(bytes(&publish("a/b", "pub")), Some(&first)).unwrap();
        assert_eq!(same, publish("a/b", "pub"));
        assert!(Arc::ptr_eq(&first.topic, &same.topic));
        let (a, b) = (first.publisher.as_ref(), same.publisher.as_ref());
        assert!(std::ptr::eq(a.unwrap().as_str(), b.unwrap().as_str()));
        let (a, b) = (&first.publisher_username, &same.publisher_username);
        assert!(Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap()));
        // Different strings are read as they are, not taken from the previous message.
        let other = read_publish_after(bytes(&publish("a/c", "other")), Some(&first)).unwrap();
        assert_eq!(other, publish("a/c", "other"));
        assert!(!Arc::ptr_eq(&first.topic, &other.topic));
    }
}
