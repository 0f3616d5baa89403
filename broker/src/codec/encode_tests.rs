//! Exact encoder output: shortest forms, fields omitted before MQTT 5, lengths.

use bytes::{Bytes, BytesMut};

use super::test_support::{cat, s};
use super::*;
use ProtocolVersion::{V31, V311, V5};

fn bytes_of(packet: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf);
    assert_eq!(
        buf.len(),
        encoded_len(packet, v),
        "encoded_len of {packet:?}"
    );
    buf.to_vec()
}

fn reason_string(text: &str) -> Properties {
    Properties {
        reason_string: Some(text.into()),
        ..Properties::default()
    }
}

#[test]
fn acks_use_the_shortest_form() {
    let plain = Ack::new(1);
    let reason = Ack {
        reason: 0x10,
        ..Ack::new(1)
    };
    let with_props = Ack {
        properties: reason_string("r"),
        ..Ack::new(1)
    };
    assert_eq!(
        bytes_of(&Packet::PubAck(plain.clone()), V5),
        [0x40, 2, 0, 1]
    );
    assert_eq!(
        bytes_of(&Packet::PubRec(reason.clone()), V5),
        [0x50, 3, 0, 1, 0x10]
    );
    assert_eq!(
        bytes_of(&Packet::PubRel(with_props.clone()), V5),
        [0x62, 8, 0, 1, 0, 4, 0x1F, 0, 1, b'r']
    );
    // 3.x carries only the packet identifier.
    for ack in [plain, reason, with_props] {
        assert_eq!(
            bytes_of(&Packet::PubComp(ack.clone()), V311),
            [0x70, 2, 0, 1]
        );
        assert_eq!(bytes_of(&Packet::PubAck(ack), V31), [0x40, 2, 0, 1]);
    }
}

#[test]
fn disconnect_and_auth_forms() {
    let normal = Disconnect::default();
    let with_will = Disconnect {
        reason: 0x04,
        properties: Properties::default(),
    };
    let with_props = Disconnect {
        reason: 0,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    };
    assert_eq!(bytes_of(&Packet::Disconnect(normal), V5), [0xE0, 0]);
    assert_eq!(
        bytes_of(&Packet::Disconnect(with_will.clone()), V5),
        [0xE0, 1, 4]
    );
    assert_eq!(
        bytes_of(&Packet::Disconnect(with_props), V5),
        [0xE0, 7, 0, 5, 0x11, 0, 0, 0, 0]
    );
    assert_eq!(bytes_of(&Packet::Disconnect(with_will), V311), [0xE0, 0]);

    assert_eq!(bytes_of(&Packet::Auth(Auth::default()), V5), [0xF0, 0]);
    let continue_auth = Auth {
        reason: 0x18,
        properties: Properties::default(),
    };
    // AUTH may not drop just the property length.
    assert_eq!(
        bytes_of(&Packet::Auth(continue_auth), V5),
        [0xF0, 2, 0x18, 0]
    );
}

#[test]
fn connack_per_version() {
    let c = ConnAck {
        session_present: true,
        code: 0x02,
        properties: Properties {
            maximum_qos: Some(1),
            ..Properties::default()
        },
    };
    assert_eq!(bytes_of(&Packet::ConnAck(c.clone()), V311), [0x20, 2, 1, 2]);
    // 3.1 has no session present flag.
    assert_eq!(bytes_of(&Packet::ConnAck(c.clone()), V31), [0x20, 2, 0, 2]);
    assert_eq!(
        bytes_of(&Packet::ConnAck(c), V5),
        [0x20, 5, 1, 2, 2, 0x24, 1]
    );
}

#[test]
fn suback_and_unsuback_per_version() {
    let suback = SubAck {
        packet_id: 3,
        reason_codes: vec![0, 1, 2, 0x80],
        properties: reason_string(""),
    };
    assert_eq!(
        bytes_of(&Packet::SubAck(suback.clone()), V311),
        [0x90, 6, 0, 3, 0, 1, 2, 0x80]
    );
    assert_eq!(
        bytes_of(&Packet::SubAck(suback), V5),
        [0x90, 10, 0, 3, 3, 0x1F, 0, 0, 0, 1, 2, 0x80]
    );
    let unsuback = UnsubAck {
        packet_id: 3,
        reason_codes: vec![0, 0x11],
        properties: Properties::default(),
    };
    assert_eq!(
        bytes_of(&Packet::UnsubAck(unsuback.clone()), V311),
        [0xB0, 2, 0, 3]
    );
    assert_eq!(
        bytes_of(&Packet::UnsubAck(unsuback), V5),
        [0xB0, 5, 0, 3, 0, 0, 0x11]
    );
}

#[test]
fn connect_uses_its_own_protocol() {
    let mut c = Connect {
        protocol: V31,
        clean_start: true,
        keep_alive: 10,
        client_id: "id".into(),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"m"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties {
            session_expiry_interval: Some(1),
            ..Properties::default()
        },
    };
    let payload = cat(&[&s("id"), &s("w"), &s("m"), &s("u"), &s("p")]);
    let mut expected = cat(&[
        &[0x10, 28],
        &s("MQIsdp"),
        &[3, 0b1111_0110, 0, 10],
        &payload,
    ]);
    // The version argument does not change how a CONNECT is written.
    assert_eq!(
        bytes_of(&Packet::Connect(Box::new(c.clone())), V5),
        expected
    );

    c.protocol = V5;
    let props = [5, 0x11, 0, 0, 0, 1];
    let v5_payload = cat(&[&s("id"), &[0], &s("w"), &s("m"), &s("u"), &s("p")]);
    expected = cat(&[
        &[0x10, 33],
        &s("MQTT"),
        &[5, 0b1111_0110, 0, 10],
        &props,
        &v5_payload,
    ]);
    assert_eq!(bytes_of(&Packet::Connect(Box::new(c)), V311), expected);
}

#[test]
fn subscribe_options_per_version() {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: 2,
    };
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("a".into(), options)],
        properties: Properties::default(),
    });
    assert_eq!(
        bytes_of(&sub, V311),
        cat(&[&[0x82, 6, 0, 1], &s("a"), &[1]])
    );
    assert_eq!(
        bytes_of(&sub, V5),
        cat(&[&[0x82, 7, 0, 1, 0], &s("a"), &[0b0010_1101]])
    );
}

#[test]
fn publish_qos_0_has_no_packet_id_and_long_lengths_span_bytes() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "t".into(),
        packet_id: 0,
        payload: Bytes::from(vec![7u8; 200]),
        properties: Properties::default(),
    });
    let out = bytes_of(&p, V311);
    // 3 + 200 = 203 = 0xCB 0x01 as a variable byte integer.
    assert_eq!(&out[..6], &[0x31, 0xCB, 0x01, 0, 1, b't']);
    assert_eq!(out.len(), 3 + 203);
}

#[test]
fn encode_appends_to_existing_content() {
    let mut buf = BytesMut::from(&b"xy"[..]);
    encode(&Packet::PingReq, V311, &mut buf);
    encode(&Packet::PingResp, V5, &mut buf);
    assert_eq!(&buf[..], &[b'x', b'y', 0xC0, 0, 0xD0, 0]);
}
