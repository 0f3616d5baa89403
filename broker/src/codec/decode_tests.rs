//! Decoder rules outside CONNECT and properties: framing, fixed header flags,
//! PUBLISH, acknowledgements, (UN)SUBSCRIBE and the server-to-client packets.

use bytes::BytesMut;

use super::test_support::*;
use super::*;
use ProtocolVersion::{V31, V311, V5};

const ALL: [ProtocolVersion; 3] = [V31, V311, V5];

// ---- framing ----

#[test]
fn empty_and_partial_input_waits_without_consuming() {
    let full = frame(0x30, &cat(&[&s("a/b"), b"hello"]));
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decode(&mut buf, V311, usize::MAX), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &full[..cut], "consumed input at cut {cut}");
    }
    let mut buf = BytesMut::from(&full[..]);
    assert!(matches!(
        decode(&mut buf, V311, usize::MAX),
        Ok(Some(Packet::Publish(_)))
    ));
    assert!(buf.is_empty());
}

#[test]
fn consumes_exactly_one_packet() {
    let mut bytes = frame(0xC0, &[]);
    bytes.extend(frame(0xE0, &[]));
    bytes.push(0x30); // start of a third packet
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, V311, usize::MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(&buf[..], &[0xE0, 0x00, 0x30]);
    assert!(matches!(
        decode(&mut buf, V311, usize::MAX),
        Ok(Some(Packet::Disconnect(_)))
    ));
    assert_eq!(decode(&mut buf, V311, usize::MAX), Ok(None));
    assert_eq!(&buf[..], &[0x30]);
}

#[test]
fn remaining_length_over_four_bytes_is_malformed() {
    malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V311);
    // Already known after the fourth continuation byte, before a fifth arrives.
    malformed(&[0x30, 0x80, 0x80, 0x80, 0x80], V5);
}

#[test]
fn non_minimal_remaining_length_is_malformed() {
    malformed(&[0xC0, 0x80, 0x00], V311);
}

#[test]
fn too_large_is_detected_from_the_fixed_header_alone() {
    // Largest possible remaining length; no body bytes present at all.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, V5, 1024),
        Err(DecodeError::TooLarge {
            size: MAX_PACKET_SIZE,
            max: 1024
        })
    );
    // The limit covers the fixed header too: a 2 + 5 byte packet.
    let bytes = frame(0x30, &cat(&[&s("a"), b"xx"]));
    assert_eq!(bytes.len(), 7);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, V311, 6),
        Err(DecodeError::TooLarge { size: 7, max: 6 })
    );
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(decode(&mut buf, V311, 7), Ok(Some(_))));
}

#[test]
fn packet_type_zero_is_malformed() {
    for v in ALL {
        malformed(&[0x00, 0x00], v);
    }
}

#[test]
fn auth_packet_type_only_exists_in_v5() {
    malformed(&[0xF0, 0x00], V31);
    malformed(&[0xF0, 0x00], V311);
    assert_eq!(ok(&[0xF0, 0x00], V5), Packet::Auth(Auth::default()));
}

#[test]
fn reserved_fixed_header_flags() {
    let id = [0x00, 0x01];
    for v in ALL {
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE need 0010.
        malformed(&frame(0x60, &id), v);
        malformed(&frame(0x63, &id), v);
        malformed(&frame(0x80, &id), v);
        malformed(&frame(0xA0, &id), v);
        // Everything else but PUBLISH needs 0000.
        malformed(&frame(0x11, &[]), v);
        malformed(&frame(0x21, &[0, 0]), v);
        malformed(&frame(0x42, &id), v);
        malformed(&frame(0x58, &id), v);
        malformed(&frame(0x71, &id), v);
        malformed(&frame(0x92, &[0, 1, 0]), v);
        malformed(&frame(0xB4, &id), v);
        malformed(&frame(0xC1, &[]), v);
        malformed(&frame(0xD8, &[]), v);
        malformed(&frame(0xE2, &[]), v);
    }
    malformed(&frame(0xF1, &[]), V5);
    assert_eq!(ok(&frame(0x62, &id), V311), Packet::PubRel(Ack::new(1)));
}

#[test]
fn payloads_are_slices_of_the_input_buffer() {
    let bytes = frame(0x30, &cat(&[&s("t"), b"payload"]));
    let mut buf = BytesMut::from(&bytes[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V311, usize::MAX) else {
        panic!("expected PUBLISH");
    };
    assert_eq!(&p.payload[..], b"payload");
    assert!(
        range.contains(&(p.payload.as_ptr() as usize)),
        "payload was copied"
    );
}

// ---- PUBLISH ----

#[test]
fn publish_fields_v3_and_v5() {
    let p = ok(&frame(0x3B, &cat(&[&s("a/b"), &[0x12, 0x34], b"x"])), V311);
    assert_eq!(
        p,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 0x1234,
            payload: "x".into(),
            properties: Properties::default(),
        })
    );
    // QoS 0 has no packet identifier; v5 adds a property section.
    let p = ok(
        &frame(0x30, &cat(&[&s("t"), &props(&[0x23, 0, 7]), b"xy"])),
        V5,
    );
    let Packet::Publish(p) = p else { panic!() };
    assert_eq!((p.packet_id, p.properties.topic_alias), (0, Some(7)));
    assert_eq!(&p.payload[..], b"xy");
}

#[test]
fn publish_qos_3_is_malformed() {
    for v in ALL {
        malformed(&frame(0x36, &cat(&[&s("t"), &[0, 1]])), v);
    }
}

#[test]
fn publish_dup_with_qos_0_is_malformed() {
    for v in ALL {
        malformed(&frame(0x38, &s("t")), v);
    }
}

#[test]
fn publish_packet_id_0_with_qos() {
    violation(
        &frame(0x32, &cat(&[&s("t"), &[0, 0]])),
        &frame(0x32, &cat(&[&s("t"), &[0, 0], &[0]])),
    );
    violation(
        &frame(0x34, &cat(&[&s("t"), &[0, 0]])),
        &frame(0x34, &cat(&[&s("t"), &[0, 0], &[0]])),
    );
}

#[test]
fn publish_topic_must_be_valid_utf8_without_nul() {
    malformed(&frame(0x30, &[0, 2, 0xC3, 0x28]), V311);
    malformed(&frame(0x30, &[0, 3, b'a', 0, b'b', 0]), V5);
    // Topic length runs past the remaining length.
    malformed(&frame(0x30, &[0, 9, b'a']), V311);
    // Remaining length too short for the packet identifier.
    malformed(&frame(0x32, &cat(&[&s("t"), &[1]])), V311);
}

#[test]
fn publish_v5_property_length_past_end_is_malformed() {
    malformed(&frame(0x30, &cat(&[&s("t"), &[5, 0x23, 0]])), V5);
    // No property length at all.
    malformed(&frame(0x30, &s("t")), V5);
}

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ----

#[test]
fn v3_acks_are_exactly_two_bytes() {
    for first in [0x40, 0x50, 0x62, 0x70] {
        for v in [V31, V311] {
            assert!(matches!(
                ok(&frame(first, &[0, 9]), v),
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_)
            ));
            malformed(&frame(first, &[0, 9, 0]), v);
            malformed(&frame(first, &[0]), v);
        }
    }
}

#[test]
fn v5_ack_short_forms() {
    let with = |reason, props: Properties| Ack {
        packet_id: 9,
        reason,
        properties: props,
    };
    assert_eq!(
        ok(&frame(0x40, &[0, 9]), V5),
        Packet::PubAck(with(0, Properties::default()))
    );
    assert_eq!(
        ok(&frame(0x50, &[0, 9, 0x10]), V5),
        Packet::PubRec(with(0x10, Properties::default()))
    );
    assert_eq!(
        ok(&frame(0x62, &[0, 9, 0x92, 0]), V5),
        Packet::PubRel(with(0x92, Properties::default()))
    );
    let reason_string = Properties {
        reason_string: Some("no".into()),
        ..Properties::default()
    };
    assert_eq!(
        ok(
            &frame(
                0x70,
                &cat(&[&[0, 9, 0x80], &props(&cat(&[&[0x1F], &s("no")]))])
            ),
            V5
        ),
        Packet::PubComp(with(0x80, reason_string))
    );
    malformed(&frame(0x40, &[0]), V5);
    // Bytes after the properties.
    malformed(&frame(0x40, &[0, 9, 0, 0, 0]), V5);
    // Property length past the end.
    malformed(&frame(0x40, &[0, 9, 0, 3, 0x1F]), V5);
    // Topic alias is not an acknowledgement property.
    protocol(&frame(0x40, &[0, 9, 0, 3, 0x23, 0, 1]), V5);
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----

#[test]
fn subscribe_fields_v3_keep_v5_options_at_defaults() {
    let p = ok(
        &frame(0x82, &cat(&[&[0, 5], &s("a/#"), &[2], &s("b"), &[0]])),
        V311,
    );
    let Packet::Subscribe(sub) = p else { panic!() };
    assert_eq!(sub.packet_id, 5);
    let qos2 = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        ..SubscriptionOptions::default()
    };
    assert_eq!(
        sub.filters,
        vec![
            ("a/#".into(), qos2),
            ("b".into(), SubscriptionOptions::default())
        ]
    );
}

#[test]
fn subscribe_v5_options() {
    let p = ok(
        &frame(0x82, &cat(&[&[0, 5], &[0], &s("a"), &[0b0010_1101]])),
        V5,
    );
    let Packet::Subscribe(sub) = p else { panic!() };
    let expected = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: 2,
    };
    assert_eq!(sub.filters, vec![("a".into(), expected)]);
}

#[test]
fn subscribe_packet_id_0_and_empty_filter_list() {
    violation(
        &frame(0x82, &cat(&[&[0, 0], &s("a"), &[0]])),
        &frame(0x82, &cat(&[&[0, 0], &[0], &s("a"), &[0]])),
    );
    violation(&frame(0x82, &[0, 1]), &frame(0x82, &[0, 1, 0]));
}

#[test]
fn subscribe_v3_option_bits() {
    for bad in [0b0000_0100, 0b0000_1000, 0b0001_0000, 0b1000_0000] {
        malformed(&frame(0x82, &cat(&[&[0, 1], &s("a"), &[bad]])), V311);
        malformed(&frame(0x82, &cat(&[&[0, 1], &s("a"), &[bad]])), V31);
    }
    malformed(&frame(0x82, &cat(&[&[0, 1], &s("a"), &[3]])), V311);
}

#[test]
fn subscribe_v5_option_bits() {
    let sub = |options: u8| frame(0x82, &cat(&[&[0, 1], &[0], &s("a"), &[options]]));
    malformed(&sub(0b0100_0000), V5);
    malformed(&sub(0b1000_0000), V5);
    protocol(&sub(0b0000_0011), V5);
    protocol(&sub(0b0011_0000), V5);
    // Options byte missing after the last filter.
    malformed(&frame(0x82, &cat(&[&[0, 1], &[0], &s("a")])), V5);
}

#[test]
fn unsubscribe_rules() {
    let p = ok(&frame(0xA2, &cat(&[&[0, 3], &s("a"), &s("b/+")])), V311);
    assert_eq!(
        p,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 3,
            filters: vec!["a".into(), "b/+".into()],
            properties: Properties::default(),
        })
    );
    violation(
        &frame(0xA2, &cat(&[&[0, 0], &s("a")])),
        &frame(0xA2, &cat(&[&[0, 0], &[0], &s("a")])),
    );
    violation(&frame(0xA2, &[0, 1]), &frame(0xA2, &[0, 1, 0]));
    malformed(&frame(0xA2, &cat(&[&[0, 1], &s("a"), &[0]])), V311);
}

// ---- PINGREQ, DISCONNECT, AUTH ----

#[test]
fn ping_has_no_body() {
    for v in ALL {
        assert_eq!(ok(&[0xC0, 0], v), Packet::PingReq);
        assert_eq!(ok(&[0xD0, 0], v), Packet::PingResp);
        malformed(&[0xC0, 1, 0], v);
        malformed(&[0xD0, 1, 0], v);
    }
}

#[test]
fn disconnect_forms() {
    assert_eq!(
        ok(&[0xE0, 0], V311),
        Packet::Disconnect(Disconnect::default())
    );
    malformed(&[0xE0, 1, 0], V311);
    assert_eq!(
        ok(&[0xE0, 0], V5),
        Packet::Disconnect(Disconnect::default())
    );
    let reason_only = Disconnect {
        reason: 0x04,
        properties: Properties::default(),
    };
    assert_eq!(
        ok(&[0xE0, 1, 0x04], V5),
        Packet::Disconnect(reason_only.clone())
    );
    assert_eq!(ok(&[0xE0, 2, 0x04, 0], V5), Packet::Disconnect(reason_only));
    malformed(&[0xE0, 3, 0x04, 0, 0], V5);
}

#[test]
fn auth_forms() {
    let p = ok(
        &frame(
            0xF0,
            &cat(&[&[0x18], &props(&cat(&[&[0x15], &s("SCRAM")]))]),
        ),
        V5,
    );
    let Packet::Auth(auth) = p else { panic!() };
    assert_eq!(auth.reason, 0x18);
    assert_eq!(
        auth.properties.authentication_method.as_deref(),
        Some("SCRAM")
    );
    // A reason code without a property length is only allowed for DISCONNECT.
    malformed(&[0xF0, 1, 0x18], V5);
    malformed(&[0xF0, 3, 0x18, 0, 0], V5);
}

// ---- server-to-client packets ----

#[test]
fn connack_forms() {
    let v3 = ConnAck {
        session_present: true,
        code: 5,
        properties: Properties::default(),
    };
    assert_eq!(ok(&[0x20, 2, 1, 5], V311), Packet::ConnAck(v3));
    malformed(&[0x20, 2, 2, 0], V311);
    malformed(&[0x20, 3, 0, 0, 0], V311);
    // 3.1 had no session present flag.
    let Packet::ConnAck(c) = ok(&[0x20, 2, 1, 0], V31) else {
        panic!()
    };
    assert!(!c.session_present);
    let Packet::ConnAck(c) = ok(&[0x20, 7, 0, 0x86, 4, 0x24, 0x01, 0x28, 0x00], V5) else {
        panic!()
    };
    assert_eq!(c.code, 0x86);
    assert_eq!(c.properties.maximum_qos, Some(1));
    assert_eq!(c.properties.wildcard_subscription_available, Some(0));
    // Property section is required in v5.
    malformed(&[0x20, 2, 0, 0], V5);
}

#[test]
fn suback_and_unsuback_forms() {
    let Packet::SubAck(ack) = ok(&[0x90, 4, 0, 7, 0x01, 0x80], V311) else {
        panic!()
    };
    assert_eq!((ack.packet_id, ack.reason_codes), (7, vec![0x01, 0x80]));
    malformed(&[0x90, 2, 0, 7], V311);
    let Packet::SubAck(ack) = ok(&[0x90, 4, 0, 7, 0, 0x97], V5) else {
        panic!()
    };
    assert_eq!(ack.reason_codes, vec![0x97]);
    protocol(&[0x90, 3, 0, 7, 0], V5);

    assert_eq!(
        ok(&[0xB0, 2, 0, 7], V311),
        Packet::UnsubAck(UnsubAck {
            packet_id: 7,
            reason_codes: vec![],
            properties: Properties::default(),
        })
    );
    malformed(&[0xB0, 3, 0, 7, 0], V311);
    let Packet::UnsubAck(u) = ok(&[0xB0, 5, 0, 7, 0, 0x00, 0x11], V5) else {
        panic!()
    };
    assert_eq!(u.reason_codes, vec![0x00, 0x11]);
    protocol(&[0xB0, 3, 0, 7, 0], V5);
}

#[test]
fn error_reason_codes() {
    assert_eq!(DecodeError::Malformed("x").reason_code(), 0x81);
    assert_eq!(DecodeError::Protocol("x").reason_code(), 0x82);
    assert_eq!(
        DecodeError::TooLarge { size: 2, max: 1 }.reason_code(),
        0x95
    );
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion(6).reason_code(),
        0x84
    );
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion(6).connack_v3_code(),
        Some(1)
    );
    assert_eq!(DecodeError::Malformed("x").connack_v3_code(), None);
    assert_eq!(
        DecodeError::TooLarge { size: 2, max: 1 }.to_string(),
        "packet of 2 bytes exceeds the maximum packet size of 1 bytes"
    );
}
