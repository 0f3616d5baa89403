//! CONNECT decoding and MQTT 5 property validation.

use super::test_support::*;
use super::*;
use ProtocolVersion::{V31, V311, V5};

/// A CONNECT with keep alive 60; `rest` holds the v5 properties and payload.
fn connect(name: &str, level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    frame(0x10, &cat(&[&s(name), &[level, flags, 0, 60], rest]))
}

fn decoded_connect(bytes: &[u8], v: ProtocolVersion) -> Connect {
    match ok(bytes, v) {
        Packet::Connect(c) => *c,
        other => panic!("expected CONNECT, got {other:?}"),
    }
}

/// A v5 CONNECT carrying `connect_props` and client id "c".
fn v5_connect_with(connect_props: &[u8]) -> Vec<u8> {
    connect("MQTT", 5, 0x02, &cat(&[&props(connect_props), &s("c")]))
}

#[test]
fn minimal_connects_per_version() {
    let c = decoded_connect(&connect("MQTT", 4, 0x02, &s("cid")), V311);
    assert_eq!(
        c,
        Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 60,
            client_id: "cid".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    );
    let c = decoded_connect(&connect("MQIsdp", 3, 0, &s("c")), V311);
    assert_eq!((c.protocol, c.clean_start), (V31, false));
    let c = decoded_connect(&connect("MQTT", 5, 0, &cat(&[&[0], &s("")])), V311);
    assert_eq!((c.protocol, c.client_id.as_str()), (V5, ""));
}

#[test]
fn connect_is_parsed_by_its_own_protocol_level() {
    // A 3.1.1 CONNECT has no property section even on a connection marked v5.
    let c = decoded_connect(&connect("MQTT", 4, 0, &s("c")), V5);
    assert_eq!(c.protocol, V311);
    // A v5 CONNECT's properties are read even though the caller passes V311.
    let c = decoded_connect(&v5_connect_with(&[0x21, 0, 10]), V311);
    assert_eq!(c.properties.receive_maximum, Some(10));
}

#[test]
fn v5_payload_order() {
    // will(QoS 1, retain), password, user name, clean start.
    let flags = 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
    let rest = cat(&[
        &props(&[0x11, 0, 0, 0, 10]),
        &s("cid"),
        &props(&cat(&[
            &[0x18, 0, 0, 0, 5, 0x01, 1, 0x03],
            &s("text/plain"),
        ])),
        &s("will/t"),
        &s("bye"),
        &s("user"),
        &s("pw"),
    ]);
    let c = decoded_connect(&connect("MQTT", 5, flags, &rest), V5);
    assert_eq!(c.properties.session_expiry_interval, Some(10));
    assert_eq!(c.client_id, "cid");
    let will = c.will.expect("will");
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("will/t", &b"bye"[..])
    );
    assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
    assert_eq!(will.properties.will_delay_interval, Some(5));
    assert_eq!(will.properties.payload_format_indicator, Some(1));
    assert_eq!(will.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn protocol_name_and_level() {
    assert_eq!(
        err(&connect("MQTX", 4, 0, &s("c")), V311),
        DecodeError::InvalidProtocolName
    );
    assert_eq!(
        err(&connect("mqtt", 4, 0, &s("c")), V311),
        DecodeError::InvalidProtocolName
    );
    assert_eq!(
        err(&connect("", 4, 0, &s("c")), V311),
        DecodeError::InvalidProtocolName
    );
    for (name, level) in [
        ("MQTT", 3),
        ("MQTT", 6),
        ("MQTT", 0x84),
        ("MQIsdp", 4),
        ("MQIsdp", 5),
    ] {
        assert_eq!(
            err(&connect(name, level, 0, &s("c")), V311),
            DecodeError::UnsupportedProtocolVersion(level)
        );
    }
    // The protocol name's length runs past the packet.
    malformed(&frame(0x10, &[0, 4, b'M', b'Q']), V311);
}

#[test]
fn reserved_connect_flag_is_malformed() {
    malformed(&connect("MQTT", 4, 0x03, &s("c")), V311);
    malformed(&connect("MQTT", 5, 0x01, &cat(&[&[0], &s("c")])), V5);
}

#[test]
fn will_qos_or_retain_without_will_flag_is_a_bad_will() {
    for flags in [0x08, 0x10, 0x20] {
        bad_will(&connect("MQTT", 4, flags, &s("c")), V311);
        bad_will(&connect("MQTT", 5, flags, &cat(&[&[0], &s("c")])), V5);
    }
}

#[test]
fn will_qos_3_is_a_bad_will() {
    let will = cat(&[&s("c"), &s("t"), &s("m")]);
    bad_will(&connect("MQTT", 4, 0x04 | 0x18, &will), V311);
    bad_will(
        &connect(
            "MQTT",
            5,
            0x04 | 0x18,
            &cat(&[&[0], &s("c"), &[0], &s("t"), &s("m")]),
        ),
        V5,
    );
}

#[test]
fn password_without_user_name() {
    malformed(&connect("MQTT", 4, 0x40, &cat(&[&s("c"), &s("pw")])), V311);
    malformed(&connect("MQIsdp", 3, 0x40, &cat(&[&s("c"), &s("pw")])), V31);
    let c = decoded_connect(
        &connect("MQTT", 5, 0x40, &cat(&[&[0], &s("c"), &s("pw")])),
        V5,
    );
    assert_eq!(
        (c.username, c.password.as_deref()),
        (None, Some(&b"pw"[..]))
    );
}

#[test]
fn connect_extra_or_missing_payload_bytes_are_malformed() {
    malformed(&connect("MQTT", 4, 0, &cat(&[&s("c"), &[0]])), V311);
    malformed(&connect("MQTT", 5, 0, &cat(&[&[0], &s("c"), &[0]])), V5);
    // User name flag set but no user name.
    malformed(&connect("MQTT", 4, 0x80, &s("c")), V311);
    // Will flag set but no will topic/payload.
    malformed(&connect("MQTT", 4, 0x04, &s("c")), V311);
    // v5 will flag set but no will property length.
    malformed(&connect("MQTT", 5, 0x04, &cat(&[&[0], &s("c")])), V5);
}

#[test]
fn connect_property_rules() {
    assert!(matches!(
        ok(&v5_connect_with(&[0x27, 0, 0, 4, 0]), V5),
        Packet::Connect(_)
    ));
    protocol(&v5_connect_with(&[0x21, 0, 0]), V5); // receive maximum 0
    protocol(&v5_connect_with(&[0x27, 0, 0, 0, 0]), V5); // maximum packet size 0
    protocol(&v5_connect_with(&[0x17, 2]), V5); // request problem information 2
    protocol(&v5_connect_with(&[0x19, 2]), V5); // request response information 2
    protocol(&v5_connect_with(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]), V5); // twice
    protocol(&v5_connect_with(&[0x23, 0, 1]), V5); // topic alias: PUBLISH only
    protocol(&v5_connect_with(&[0x18, 0, 0, 0, 1]), V5); // will delay: will only
                                                         // Authentication data needs an authentication method.
    protocol(&v5_connect_with(&cat(&[&[0x16], &s("x")])), V5);
    let c = decoded_connect(
        &v5_connect_with(&cat(&[&[0x15], &s("m"), &[0x16], &s("x")])),
        V5,
    );
    assert_eq!(c.properties.authentication_data.as_deref(), Some(&b"x"[..]));
    // User properties may repeat and keep their order.
    let pairs = cat(&[&[0x26], &s("k"), &s("1"), &[0x26], &s("k"), &s("2")]);
    let c = decoded_connect(&v5_connect_with(&pairs), V5);
    assert_eq!(
        c.properties.user_properties,
        vec![("k".into(), "1".into()), ("k".into(), "2".into())]
    );
}

#[test]
fn will_property_rules() {
    let with_will_props = |will_props: &[u8]| {
        connect(
            "MQTT",
            5,
            0x04,
            &cat(&[&[0], &s("c"), &props(will_props), &s("t"), &s("m")]),
        )
    };
    let permitted = cat(&[
        &[0x18, 0, 0, 0, 1, 0x01, 0, 0x02, 0, 0, 0, 9],
        &[0x03],
        &s("ct"),
        &[0x08],
        &s("rt"),
        &[0x09],
        &s("cd"),
        &[0x26],
        &s("k"),
        &s("v"),
    ]);
    let c = decoded_connect(&with_will_props(&permitted), V5);
    let w = c.will.expect("will").properties;
    assert_eq!(w.response_topic.as_deref(), Some("rt"));
    assert_eq!(w.correlation_data.as_deref(), Some(&b"cd"[..]));
    assert_eq!(w.message_expiry_interval, Some(9));
    bad_will(&with_will_props(&[0x11, 0, 0, 0, 1]), V5); // session expiry
    bad_will(&with_will_props(&[0x23, 0, 1]), V5); // topic alias
    bad_will(&with_will_props(&[0x0B, 1]), V5); // subscription identifier
    bad_will(&with_will_props(&[0x01, 2]), V5); // payload format 2
    bad_will(&with_will_props(&[0x7F]), V5); // unknown property
}

#[test]
fn a_will_topic_that_is_no_valid_string_is_a_bad_will_but_truncation_stays_malformed() {
    let will = |topic: &[u8]| {
        let mut field = u16::try_from(topic.len()).unwrap().to_be_bytes().to_vec();
        field.extend_from_slice(topic);
        connect("MQTT", 4, 0x04, &cat(&[&s("c"), &field, &s("m")]))
    };
    bad_will(&will(b"a\xffb"), V311); // not UTF-8
    bad_will(&will(b"a\0b"), V311); // U+0000
                                    // The packet ends inside the will: a framing problem, not a will problem.
    malformed(&connect("MQTT", 4, 0x04, &cat(&[&s("c"), &s("t")])), V311);
    malformed(&connect("MQTT", 5, 0x04, &cat(&[&[0], &s("c"), &[5]])), V5);
    // The client id before the will still decodes in a good CONNECT with the same will.
    let c = decoded_connect(&will(b"w/t"), V311);
    assert_eq!(c.will.expect("will").topic, "w/t");
}

#[test]
fn the_protocol_of_a_connect_is_told_before_it_decodes() {
    let v5 = connect("MQTT", 5, 0x04 | 0x18, &cat(&[&[0], &s("c")]));
    assert_eq!(connect_protocol(&v5), Some(V5));
    assert_eq!(
        connect_protocol(&connect("MQTT", 4, 0, &s("c"))),
        Some(V311)
    );
    assert_eq!(
        connect_protocol(&connect("MQIsdp", 3, 0, &s("c"))),
        Some(V31)
    );
    assert_eq!(connect_protocol(&connect("MQTT", 9, 0, &s("c"))), None);
    assert_eq!(connect_protocol(&v5[..6]), None, "level not there yet");
    assert_eq!(connect_protocol(&[0xC0, 0]), None, "PINGREQ");
    assert_eq!(connect_protocol(&[]), None);
}

// ---- properties in other packets ----

/// A v5 QoS 0 PUBLISH to "t" with the given properties and payload "p".
fn publish_with(publish_props: &[u8]) -> Vec<u8> {
    frame(0x30, &cat(&[&s("t"), &props(publish_props), b"p"]))
}

#[test]
fn unknown_property_identifiers_are_malformed() {
    for id in [0x00, 0x04, 0x10, 0x14, 0x1B, 0x2B, 0x7F] {
        malformed(&publish_with(&[id, 0]), V5);
    }
    // Identifier 128 as a two-byte variable byte integer.
    malformed(&publish_with(&[0x80, 0x01, 0]), V5);
}

#[test]
fn publish_property_rules() {
    let Packet::Publish(p) = ok(&publish_with(&[0x0B, 1, 0x0B, 0xFF, 0x7F, 0x23, 0, 0]), V5) else {
        panic!()
    };
    // Several subscription identifiers; topic alias 0 is left to the broker.
    assert_eq!(p.properties.subscription_identifiers, vec![1, 16_383]);
    assert_eq!(p.properties.topic_alias, Some(0));
    protocol(&publish_with(&[0x0B, 0]), V5); // subscription identifier 0
    protocol(&publish_with(&[0x01, 2]), V5); // payload format indicator 2
    protocol(&publish_with(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1]), V5); // twice
    protocol(&publish_with(&[0x23, 0, 1, 0x23, 0, 2]), V5); // topic alias twice
    protocol(&publish_with(&[0x11, 0, 0, 0, 1]), V5); // session expiry
    protocol(&publish_with(&[0x1F, 0, 0]), V5); // reason string
                                                // Values that run past the property section or hold bad strings.
    malformed(&publish_with(&[0x02, 0, 0]), V5);
    malformed(&publish_with(&[0x03, 0, 1, 0xFF]), V5);
    malformed(&publish_with(&[0x26, 0, 1, b'k', 0, 1, 0]), V5);
    malformed(&publish_with(&[0x0B, 0x80]), V5);
}

#[test]
fn subscribe_allows_one_subscription_identifier() {
    let sub = |p: &[u8]| frame(0x82, &cat(&[&[0, 1], &props(p), &s("a"), &[0]]));
    let Packet::Subscribe(decoded) = ok(&sub(&[0x0B, 5]), V5) else {
        panic!()
    };
    assert_eq!(decoded.properties.subscription_identifiers, vec![5]);
    protocol(&sub(&[0x0B, 5, 0x0B, 6]), V5);
    protocol(&sub(&[0x0B, 0]), V5);
    protocol(&sub(&[0x1F, 0, 0]), V5);
    assert!(matches!(
        ok(&sub(&cat(&[&[0x26], &s("k"), &s("v")])), V5),
        Packet::Subscribe(_)
    ));
}

#[test]
fn connack_property_rules() {
    let connack = |p: &[u8]| frame(0x20, &cat(&[&[0, 0], &props(p)]));
    for id in [0x24, 0x25, 0x28, 0x29, 0x2A] {
        assert!(matches!(ok(&connack(&[id, 1]), V5), Packet::ConnAck(_)));
        protocol(&connack(&[id, 2]), V5);
    }
    protocol(&connack(&[0x21, 0, 0]), V5);
    protocol(&connack(&[0x17, 1]), V5); // request problem information: CONNECT only
    let Packet::ConnAck(c) = ok(&connack(&cat(&[&[0x12], &s("gen"), &[0x13, 0, 30]])), V5) else {
        panic!()
    };
    assert_eq!(
        c.properties.assigned_client_identifier.as_deref(),
        Some("gen")
    );
    assert_eq!(c.properties.server_keep_alive, Some(30));
}

#[test]
fn disconnect_and_unsubscribe_property_rules() {
    let disconnect = |p: &[u8]| frame(0xE0, &cat(&[&[0x8B], &props(p)]));
    let permitted = cat(&[&[0x11, 0, 0, 0, 1, 0x1C], &s("other"), &[0x1F], &s("bye")]);
    let Packet::Disconnect(d) = ok(&disconnect(&permitted), V5) else {
        panic!()
    };
    assert_eq!(d.properties.server_reference.as_deref(), Some("other"));
    protocol(&disconnect(&[0x18, 0, 0, 0, 1]), V5);

    let unsubscribe = |p: &[u8]| frame(0xA2, &cat(&[&[0, 1], &props(p), &s("a")]));
    assert!(matches!(
        ok(&unsubscribe(&cat(&[&[0x26], &s("k"), &s("v")])), V5),
        Packet::Unsubscribe(_)
    ));
    protocol(&unsubscribe(&[0x0B, 1]), V5);
}
