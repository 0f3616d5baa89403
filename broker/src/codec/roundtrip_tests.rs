//! Property tests: valid packets survive encode → decode unchanged (also when
//! the bytes arrive in pieces), and arbitrary bytes never make decode panic.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

use super::properties::{id, is_permitted, PropCtx};
use super::wire::VBI_MAX;
use super::*;
use ProtocolVersion::{V31, V311, V5};

fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,8}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = u8> {
    0..=1u8
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Any valid value for every property, wherever it may appear.
fn all_properties() -> impl Strategy<Value = Properties> {
    let publish = (
        of(flag()),
        of(any::<u32>()),
        of(text()),
        of(text()),
        of(binary()),
        vec(1..=VBI_MAX, 0..3),
        of(any::<u16>()),
    );
    let connect = (
        of(any::<u32>()),
        of(text()),
        of(binary()),
        of(flag()),
        of(any::<u32>()),
        of(flag()),
        of(1..=u16::MAX),
        of(any::<u16>()),
        of(1..=u32::MAX),
    );
    let connack = (
        of(text()),
        of(any::<u16>()),
        of(text()),
        of(text()),
        of(flag()),
        of(flag()),
        of(flag()),
        of(flag()),
        of(flag()),
    );
    let common = (of(text()), vec((text(), text()), 0..3));
    (publish, connect, connack, common).prop_map(|(p, c, a, m)| Properties {
        payload_format_indicator: p.0,
        message_expiry_interval: p.1,
        content_type: p.2,
        response_topic: p.3,
        correlation_data: p.4,
        subscription_identifiers: p.5,
        topic_alias: p.6,
        session_expiry_interval: c.0,
        authentication_method: c.1,
        authentication_data: c.2,
        request_problem_information: c.3,
        will_delay_interval: c.4,
        request_response_information: c.5,
        receive_maximum: c.6,
        topic_alias_maximum: c.7,
        maximum_packet_size: c.8,
        assigned_client_identifier: a.0,
        server_keep_alive: a.1,
        response_information: a.2,
        server_reference: a.3,
        maximum_qos: a.4,
        retain_available: a.5,
        wildcard_subscription_available: a.6,
        subscription_identifiers_available: a.7,
        shared_subscription_available: a.8,
        reason_string: m.0,
        user_properties: m.1,
    })
}

/// Drops what `ctx` does not permit, so the result decodes back unchanged.
fn restrict(mut p: Properties, ctx: PropCtx) -> Properties {
    macro_rules! keep_if_permitted {
        ($($field:ident: $id:ident),* $(,)?) => {
            $(if !is_permitted(id::$id, ctx) {
                p.$field = Default::default();
            })*
        };
    }
    keep_if_permitted!(
        payload_format_indicator: PAYLOAD_FORMAT_INDICATOR,
        message_expiry_interval: MESSAGE_EXPIRY_INTERVAL,
        content_type: CONTENT_TYPE,
        response_topic: RESPONSE_TOPIC,
        correlation_data: CORRELATION_DATA,
        subscription_identifiers: SUBSCRIPTION_IDENTIFIER,
        session_expiry_interval: SESSION_EXPIRY_INTERVAL,
        assigned_client_identifier: ASSIGNED_CLIENT_IDENTIFIER,
        server_keep_alive: SERVER_KEEP_ALIVE,
        authentication_method: AUTHENTICATION_METHOD,
        authentication_data: AUTHENTICATION_DATA,
        request_problem_information: REQUEST_PROBLEM_INFORMATION,
        will_delay_interval: WILL_DELAY_INTERVAL,
        request_response_information: REQUEST_RESPONSE_INFORMATION,
        response_information: RESPONSE_INFORMATION,
        server_reference: SERVER_REFERENCE,
        reason_string: REASON_STRING,
        receive_maximum: RECEIVE_MAXIMUM,
        topic_alias_maximum: TOPIC_ALIAS_MAXIMUM,
        topic_alias: TOPIC_ALIAS,
        maximum_qos: MAXIMUM_QOS,
        retain_available: RETAIN_AVAILABLE,
        user_properties: USER_PROPERTY,
        maximum_packet_size: MAXIMUM_PACKET_SIZE,
        wildcard_subscription_available: WILDCARD_SUBSCRIPTION_AVAILABLE,
        subscription_identifiers_available: SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        shared_subscription_available: SHARED_SUBSCRIPTION_AVAILABLE,
    );
    if ctx == PropCtx::Subscribe {
        p.subscription_identifiers.truncate(1);
    }
    if ctx == PropCtx::Connect && p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    p
}

fn props(v: ProtocolVersion, ctx: PropCtx) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        all_properties().prop_map(move |p| restrict(p, ctx)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

/// A reason code in MQTT 5, always 0 before.
fn reason(v: ProtocolVersion) -> BoxedStrategy<u8> {
    if v.is_v5() {
        any::<u8>().boxed()
    } else {
        Just(0).boxed()
    }
}

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        text(),
        binary(),
        qos(),
        any::<bool>(),
        props(v, PropCtx::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let fields = (any::<bool>(), any::<u16>(), text(), of(will(v)));
    let login = (of(text()), of(binary()), props(v, PropCtx::Connect));
    (fields, login).prop_map(move |((clean_start, keep_alive, client_id, will), login)| {
        let (mut username, password, properties) = login;
        // 3.x cannot send a password without a user name.
        if !v.is_v5() && password.is_some() && username.is_none() {
            username = Some(String::new());
        }
        Packet::Connect(Box::new(Connect {
            protocol: v,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        }))
    })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let header = (qos(), any::<bool>(), any::<bool>(), 1..=u16::MAX);
    (header, text(), binary(), props(v, PropCtx::Publish)).prop_map(
        |((qos, dup, retain, id), topic, payload, properties)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: if at_most_once { 0 } else { id },
                payload,
                properties,
            })
        },
    )
}

fn ack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let fields = (0..4u8, any::<u16>(), reason(v), props(v, PropCtx::Ack));
    fields.prop_map(|(kind, packet_id, reason, properties)| {
        let ack = Ack {
            packet_id,
            reason,
            properties,
        };
        match kind {
            0 => Packet::PubAck(ack),
            1 => Packet::PubRec(ack),
            2 => Packet::PubRel(ack),
            _ => Packet::PubComp(ack),
        }
    })
}

fn options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0..=2u8).prop_map(move |(qos, nl, rap, rh)| {
        if v.is_v5() {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        }
    })
}

fn subscriptions(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let subscribe = (
        1..=u16::MAX,
        vec((text(), options(v)), 1..4),
        props(v, PropCtx::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let suback = (
        any::<u16>(),
        vec(any::<u8>(), 1..4),
        props(v, PropCtx::SubAck),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        });
    let unsubscribe = (
        1..=u16::MAX,
        vec(text(), 1..4),
        props(v, PropCtx::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let codes = if v.is_v5() {
        vec(any::<u8>(), 1..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let unsuback = (any::<u16>(), codes, props(v, PropCtx::UnsubAck)).prop_map(
        |(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        },
    );
    prop_oneof![subscribe, suback, unsubscribe, unsuback]
}

fn any_packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let connack = (any::<bool>(), any::<u8>(), props(v, PropCtx::ConnAck)).prop_map(
        move |(session_present, code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && v != V31,
                code,
                properties,
            })
        },
    );
    let disconnect = (reason(v), props(v, PropCtx::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let auth = (any::<u8>(), props(v, PropCtx::Auth))
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
    let common = prop_oneof![
        connect(v),
        connack,
        publish(v),
        ack(v),
        subscriptions(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ];
    if v.is_v5() {
        prop_oneof![common, auth].boxed()
    } else {
        common.boxed()
    }
}

fn versioned_packets() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    prop_oneof![Just(V31), Just(V311), Just(V5)]
        .prop_flat_map(|v| (Just(v), vec(any_packet(v), 1..5)))
}

/// What the fuzz target checks: anything decoded re-encodes to bytes that
/// decode to the same packet.
fn assert_reencodes(packet: &Packet, v: ProtocolVersion) {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf);
    assert_eq!(buf.len(), encoded_len(packet, v));
    let again = decode(&mut buf, v, usize::MAX);
    assert_eq!(again.as_ref().ok().and_then(Option::as_ref), Some(packet));
    assert!(buf.is_empty());
}

/// Decodes until the buffer runs dry or fails; must never panic.
fn decode_everything(bytes: &[u8], v: ProtocolVersion) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, v, 4096) {
        assert_reencodes(&packet, v);
    }
}

proptest! {
    #[test]
    fn valid_packets_round_trip((v, packets) in versioned_packets()) {
        for packet in &packets {
            let mut buf = BytesMut::new();
            encode(packet, v, &mut buf);
            let len = buf.len();
            prop_assert_eq!(len, encoded_len(packet, v));
            // One byte under the exact size is refused, the exact size is fine.
            let mut short = buf.clone();
            let too_large = Err(DecodeError::TooLarge { size: len, max: len - 1 });
            prop_assert_eq!(decode(&mut short, v, len - 1), too_large);
            prop_assert_eq!(decode(&mut buf, v, len), Ok(Some(packet.clone())));
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn packets_fed_in_pieces_decode_once_complete(
        (v, packets) in versioned_packets(),
        chunks in vec(1..24usize, 1..64),
    ) {
        let mut wire = BytesMut::new();
        for packet in &packets {
            encode(packet, v, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut offset = 0;
        let mut sizes = chunks.iter().cycle();
        while offset < wire.len() {
            let step = sizes.next().copied().unwrap_or(1).min(wire.len() - offset);
            buf.extend_from_slice(&wire[offset..offset + step]);
            offset += step;
            loop {
                let before = buf.len();
                match decode(&mut buf, v, usize::MAX) {
                    Ok(Some(packet)) => decoded.push(packet),
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), before, "None consumed bytes");
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for v in [V31, V311, V5] {
            decode_everything(&bytes, v);
        }
    }

    #[test]
    fn random_bodies_behind_a_valid_length_never_panic(
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..120),
    ) {
        // A correct remaining length gets random bytes past framing into the
        // per-packet parsers far more often than fully random input.
        let mut bytes = vec![first, body.len() as u8];
        bytes.extend_from_slice(&body);
        for v in [V31, V311, V5] {
            decode_everything(&bytes, v);
        }
    }

    #[test]
    fn mutated_packets_never_panic(
        (v, packets) in versioned_packets(),
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut wire = BytesMut::new();
        for packet in &packets {
            encode(packet, v, &mut wire);
        }
        let at = index.index(wire.len());
        wire[at] = value;
        decode_everything(&wire, v);
    }
}
