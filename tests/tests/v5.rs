//! MQTT 5 features: topic aliases, message expiry, properties pass-through,
//! subscription identifiers, No Local, maximum packet size, malformed
//! packets and protocol errors.

use std::time::Duration;

use skein_tests::clients::v5;
use skein_tests::codec::{self, frame};
use skein_tests::{
    prop, Connect, Node, Packet, PropValue, Proto, Publish, RawClient, SubFilter, QUIET,
    RECV_TIMEOUT,
};

const CLOSE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_client_to_server() {
    let node = Node::builder().env("SKEIN_MAX_TOPIC_ALIAS", 10).start();
    let mut sub = RawClient::v5(node.mqtt_addr(), "ta-sub").await;
    sub.subscribe(1, &[SubFilter::new("ta/#", 0)]).await;

    let (mut publ, _, props) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("ta-pub")).await;
    assert_eq!(
        props.int(prop::TOPIC_ALIAS_MAXIMUM),
        Some(10),
        "CONNACK: {props:?}"
    );
    publ.publish(
        &Publish::new("ta/long/topic", 0, b"one").prop(prop::TOPIC_ALIAS, PropValue::U16(3)),
    )
    .await;
    publ.publish(&Publish::new("", 0, b"two").prop(prop::TOPIC_ALIAS, PropValue::U16(3)))
        .await;
    // re-map the alias to another topic
    publ.publish(
        &Publish::new("ta/other", 1, b"three")
            .pkid(1)
            .prop(prop::TOPIC_ALIAS, PropValue::U16(3)),
    )
    .await;
    publ.publish(
        &Publish::new("", 1, b"four")
            .pkid(2)
            .prop(prop::TOPIC_ALIAS, PropValue::U16(3)),
    )
    .await;

    let mut got = Vec::new();
    for _ in 0..4 {
        let p = sub.expect_publish(RECV_TIMEOUT).await;
        assert!(
            !p.props.has(prop::TOPIC_ALIAS),
            "subscriber did not allow aliases, none may be sent: {p:?}"
        );
        got.push((p.topic, String::from_utf8(p.payload).unwrap()));
    }
    let want: Vec<(String, String)> = [
        ("ta/long/topic", "one"),
        ("ta/long/topic", "two"),
        ("ta/other", "three"),
        ("ta/other", "four"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_out_of_range_disconnects_0x94() {
    let node = Node::builder().env("SKEIN_MAX_TOPIC_ALIAS", 10).start();
    let mut c = RawClient::v5(node.mqtt_addr(), "ta-bad").await;
    c.publish(&Publish::new("t", 0, b"x").prop(prop::TOPIC_ALIAS, PropValue::U16(11)))
        .await;
    let seen = c.expect_closed(CLOSE).await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect { reason: 0x94, .. }]),
        "topic alias 11 with maximum 10: expected DISCONNECT 0x94 then close, got {seen:?}"
    );
    // alias 0 is never valid: the spec says 0x94; 0x82/0x81 tolerated
    let mut c = RawClient::v5(node.mqtt_addr(), "ta-zero").await;
    c.publish(&Publish::new("t", 0, b"x").prop(prop::TOPIC_ALIAS, PropValue::U16(0)))
        .await;
    let seen = c.expect_closed(CLOSE).await;
    assert!(
        matches!(
            seen.as_slice(),
            [Packet::Disconnect {
                reason: 0x94 | 0x82 | 0x81,
                ..
            }]
        ),
        "topic alias 0: expected DISCONNECT 0x94 then close, got {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_alias_or_empty_topic_is_protocol_error_0x82() {
    let node = Node::builder().env("SKEIN_MAX_TOPIC_ALIAS", 10).start();
    let cases = [
        ("empty topic, no alias", Publish::new("", 0, b"x")),
        (
            "empty topic with an alias that was never set",
            Publish::new("", 0, b"x").prop(prop::TOPIC_ALIAS, PropValue::U16(4)),
        ),
    ];
    let mut failures = Vec::new();
    for (what, p) in cases {
        let mut c = RawClient::v5(node.mqtt_addr(), "pe").await;
        c.publish(&p).await;
        let seen = c.expect_closed(CLOSE).await;
        if !matches!(seen.as_slice(), [Packet::Disconnect { reason: 0x82, .. }]) {
            failures.push(format!("{what}: got {seen:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "v5 §3.3.2.1 / §3.3.2.3.4: these are Protocol Errors → DISCONNECT 0x82; failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_counted_down_while_queued() {
    let node = Node::start();
    let connect = Connect::v5("expiring").persistent(300);
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    c.subscribe(1, &[SubFilter::new("me/#", 1)]).await;
    c.disconnect().await;

    let mut publ = RawClient::v5(node.mqtt_addr(), "expiring-pub").await;
    publ.publish(
        &Publish::new("me/short", 1, b"short")
            .pkid(1)
            .prop(prop::MESSAGE_EXPIRY_INTERVAL, PropValue::U32(1)),
    )
    .await;
    publ.publish(
        &Publish::new("me/long", 1, b"long")
            .pkid(2)
            .prop(prop::MESSAGE_EXPIRY_INTERVAL, PropValue::U32(10)),
    )
    .await;
    publ.publish(&Publish::new("me/none", 1, b"none").pkid(3))
        .await;
    for _ in 0..3 {
        assert!(matches!(
            publ.expect(RECV_TIMEOUT).await,
            Packet::PubAck { reason: 0, .. }
        ));
    }

    tokio::time::sleep(Duration::from_secs(2)).await; // the passage of time is under test

    let (mut c, sp, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    assert!(sp);
    let p = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        p.topic, "me/long",
        "the 1 s message must have expired: got {p:?}"
    );
    let left = p
        .props
        .int(prop::MESSAGE_EXPIRY_INTERVAL)
        .unwrap_or_else(|| panic!("forwarded message lacks Message Expiry Interval: {p:?}"));
    assert!(
        (1..=9).contains(&left),
        "remaining expiry after ~2 s must be < 10, got {left}"
    );
    c.send(&codec::puback(p.pkid)).await;
    let p = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.topic, "me/none");
    assert!(
        !p.props.has(prop::MESSAGE_EXPIRY_INTERVAL),
        "no expiry was set: {p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_passed_through() {
    let node = Node::start();
    let mut sub = v5::Client::connect(node.mqtt_addr(), "props-sub").await;
    sub.subscribe("pp/t", v5::QoS::AtLeastOnce).await;
    let mut publ = v5::Client::connect(node.mqtt_addr(), "props-pub").await;
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("pp/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ],
        ..Default::default()
    };
    publ.publish_with(
        "pp/t",
        v5::QoS::AtLeastOnce,
        false,
        "{\"x\":1}",
        Some(props),
    )
    .await;
    let p = sub.recv().await;
    let got = p.properties.expect("properties forwarded");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.response_topic.as_deref(), Some("pp/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    assert_eq!(
        got.user_properties,
        vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "3".to_string())
        ],
        "user properties must be forwarded unaltered and in order"
    );
    assert_eq!(&p.payload[..], b"{\"x\":1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_roundtrip() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let mut responder = RawClient::v5(addr, "responder").await;
    responder
        .subscribe(1, &[SubFilter::new("svc/req", 1)])
        .await;
    let mut requester = RawClient::v5(addr, "requester").await;
    requester
        .subscribe(1, &[SubFilter::new("svc/reply/requester", 1)])
        .await;

    requester
        .publish(
            &Publish::new("svc/req", 1, b"ping")
                .pkid(1)
                .prop(
                    prop::RESPONSE_TOPIC,
                    PropValue::Str("svc/reply/requester".into()),
                )
                .prop(prop::CORRELATION_DATA, PropValue::Bin(b"id-42".to_vec())),
        )
        .await;
    let req = responder.expect_publish(RECV_TIMEOUT).await;
    responder.send(&codec::puback(req.pkid)).await;
    let rt = req
        .props
        .str(prop::RESPONSE_TOPIC)
        .expect("response topic")
        .to_string();
    let cd = req
        .props
        .bin(prop::CORRELATION_DATA)
        .expect("correlation data")
        .to_vec();
    responder
        .publish(&Publish::new(&rt, 0, b"pong").prop(prop::CORRELATION_DATA, PropValue::Bin(cd)))
        .await;
    let resp = requester.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(resp.payload, b"pong");
    assert_eq!(resp.props.bin(prop::CORRELATION_DATA), Some(&b"id-42"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_with_payload_format_indicator_rejected_0x99() {
    let node = Node::start();
    let mut sub = RawClient::v5(node.mqtt_addr(), "pfi-sub").await;
    sub.subscribe(1, &[SubFilter::new("pfi/#", 1)]).await;

    let mut c = RawClient::v5(node.mqtt_addr(), "pfi-pub").await;
    c.publish(
        &Publish::new("pfi/bad", 1, &[0xFF, 0xFE, 0x80])
            .pkid(1)
            .prop(prop::PAYLOAD_FORMAT_INDICATOR, PropValue::Byte(1)),
    )
    .await;
    match c.recv(RECV_TIMEOUT).await {
        Ok(Packet::PubAck {
            pkid: 1,
            reason: 0x99,
            ..
        }) => {}
        Ok(Packet::Disconnect { reason: 0x99, .. }) => {
            c.expect_closed(CLOSE).await;
        }
        other => panic!("expected PUBACK 0x99 or DISCONNECT 0x99, got {other:?}"),
    }
    // never forwarded: the next message on the topic tree is the sentinel
    let mut publ = RawClient::v5(node.mqtt_addr(), "pfi-sentinel").await;
    publ.publish(
        &Publish::new("pfi/good", 0, "héllo".as_bytes())
            .prop(prop::PAYLOAD_FORMAT_INDICATOR, PropValue::Byte(1)),
    )
    .await;
    let p = sub.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.topic, "pfi/good", "invalid payload was forwarded: {p:?}");
    assert_eq!(p.props.int(prop::PAYLOAD_FORMAT_INDICATOR), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers() {
    let node = Node::start();
    let mut c = RawClient::v5(node.mqtt_addr(), "subid").await;
    c.subscribe_bytes(
        1,
        &codec::subscribe_with_id(1, 7, &[SubFilter::new("si/#", 0)]),
    )
    .await;
    // a multi-byte variable integer id
    c.subscribe_bytes(
        2,
        &codec::subscribe_with_id(2, 300, &[SubFilter::new("si/x", 0)]),
    )
    .await;
    c.subscribe(3, &[SubFilter::new("si/y", 0)]).await; // no identifier

    let mut publ = RawClient::v5(node.mqtt_addr(), "subid-pub").await;
    publ.publish(&Publish::new("si/x", 0, b"x")).await;
    let p = c.expect_publish(RECV_TIMEOUT).await;
    let mut ids = p.props.all_ints(prop::SUBSCRIPTION_IDENTIFIER);
    ids.sort();
    assert_eq!(ids, vec![7, 300], "{p:?}");

    publ.publish(&Publish::new("si/z", 0, b"z")).await;
    let p = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        p.props.all_ints(prop::SUBSCRIPTION_IDENTIFIER),
        vec![7],
        "{p:?}"
    );

    // si/y matches si/# (id 7) and si/y (no id): only 7
    publ.publish(&Publish::new("si/y", 0, b"y")).await;
    let p = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        p.props.all_ints(prop::SUBSCRIPTION_IDENTIFIER),
        vec![7],
        "{p:?}"
    );

    // subscription identifier 0 is a protocol error
    let mut bad = RawClient::v5(node.mqtt_addr(), "subid0").await;
    bad.send(&codec::subscribe_with_id(1, 0, &[SubFilter::new("z", 0)]))
        .await;
    bad.expect_disconnect_or_close(&[0x82, 0x81], CLOSE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_suppresses_own_messages() {
    let node = Node::start();
    let mut me = RawClient::v5(node.mqtt_addr(), "nl-me").await;
    me.subscribe(
        1,
        &[
            SubFilter::new("nl/t", 0).no_local(),
            SubFilter::new("nl/echo", 0),
        ],
    )
    .await;
    let mut other = RawClient::v5(node.mqtt_addr(), "nl-other").await;
    other.subscribe(1, &[SubFilter::new("nl/t", 0)]).await;

    me.publish(&Publish::new("nl/t", 0, b"mine")).await;
    let p = other.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.payload, b"mine", "other subscribers still get it");
    // control: without No Local the client does get its own message
    me.publish(&Publish::new("nl/echo", 0, b"echo")).await;
    let p = me.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        p.topic, "nl/echo",
        "own message delivered despite No Local: {p:?}"
    );
    // and messages from others on the No Local filter do arrive
    other.publish(&Publish::new("nl/t", 0, b"theirs")).await;
    let p = me.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.payload, b"theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_maximum_packet_size_respected() {
    let node = Node::start();
    let (mut small, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v5("tiny").prop(prop::MAXIMUM_PACKET_SIZE, PropValue::U32(100)),
    )
    .await;
    small.subscribe(1, &[SubFilter::new("mps", 0)]).await;
    let mut big = RawClient::v5(node.mqtt_addr(), "big").await;
    big.subscribe(1, &[SubFilter::new("mps", 0)]).await;

    let mut publ = RawClient::v5(node.mqtt_addr(), "mps-pub").await;
    publ.publish(&Publish::new("mps", 0, b"small-1")).await;
    publ.publish(&Publish::new("mps", 0, &[b'L'; 500])).await;
    publ.publish(&Publish::new("mps", 0, b"small-2")).await;

    let a = small.expect_publish(RECV_TIMEOUT).await;
    let b = small.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        (a.payload.as_slice(), b.payload.as_slice()),
        (&b"small-1"[..], &b"small-2"[..])
    );
    for _ in 0..3 {
        big.expect_publish(RECV_TIMEOUT).await;
    }
    small.ping().await; // still connected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_larger_than_server_maximum_rejected() {
    let node = Node::builder().env("SKEIN_MAX_PACKET_SIZE", 1024).start();
    let (mut c, _, props) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("toobig")).await;
    assert_eq!(
        props.int(prop::MAXIMUM_PACKET_SIZE),
        Some(1024),
        "CONNACK: {props:?}"
    );
    let _ = c
        .try_send(&Publish::new("big", 0, &[0u8; 2000]).encode(Proto::V5))
        .await;
    c.expect_disconnect_or_close(&[0x95], CLOSE).await;

    let mut c3 = RawClient::v311(node.mqtt_addr(), "toobig311").await;
    let _ = c3
        .try_send(&Publish::new("big", 0, &[0u8; 2000]).encode(Proto::V311))
        .await;
    let seen = c3.expect_closed(CLOSE).await;
    assert!(seen.is_empty(), "{seen:?}");

    // a packet just under the limit is fine
    let mut ok = RawClient::v5(node.mqtt_addr(), "fits").await;
    ok.publish(&Publish::new("fits", 1, &[0u8; 900]).pkid(1))
        .await;
    let p = ok.expect(RECV_TIMEOUT).await;
    // 0x10 (no matching subscribers) is a success code too
    assert!(
        matches!(
            p,
            Packet::PubAck {
                pkid: 1,
                reason: 0x00 | 0x10,
                ..
            }
        ),
        "912-byte packet under the 1024 limit: {p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_disconnect_0x81() {
    let node = Node::start();
    let sub_body = {
        let mut b = bytes::BytesMut::new();
        b.extend_from_slice(&[0x00, 0x01, 0x00]); // pkid 1, empty properties
        codec::put_str(&mut b, "m/t");
        b.extend_from_slice(&[0x00]);
        b.to_vec()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // SUBSCRIBE must have fixed-header flags 0b0010
        ("SUBSCRIBE with reserved flags 0000", frame(0x80, &sub_body)),
        // PUBLISH with QoS 3
        ("PUBLISH QoS 3", {
            let mut p = Publish::new("m/t", 1, b"x").encode(Proto::V5);
            p[0] = 0x36;
            p
        }),
        // PUBREL must have flags 0b0010
        ("PUBREL with flags 0000", frame(0x60, &[0x00, 0x01])),
        // remaining length says 10, a 5 byte varint field follows (overlong)
        (
            "overlong remaining length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        // subscription options with reserved bits set
        ("subscription options reserved bits", {
            let mut b = sub_body.clone();
            *b.last_mut().unwrap() = 0xC0;
            frame(0x82, &b)
        }),
    ];
    let mut failures = Vec::new();
    for (what, bytes) in cases {
        let mut c = RawClient::v5(node.mqtt_addr(), "malformed").await;
        let _ = c.try_send(&bytes).await;
        let seen = c.expect_closed(CLOSE).await;
        if !matches!(seen.as_slice(), [Packet::Disconnect { reason: 0x81, .. }]) {
            failures.push(format!("{what} ({bytes:02x?}): got {seen:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "expected DISCONNECT 0x81 then close for each malformed packet; failures:\n{}",
        failures.join("\n")
    );
    // v3.1.1: just closed
    let mut c = RawClient::v311(node.mqtt_addr(), "malformed311").await;
    let _ = c
        .try_send(&frame(
            0x80,
            &[0x00, 0x01, 0x00, 0x03, b'm', b'/', b't', 0x00],
        ))
        .await;
    let seen = c.expect_closed(CLOSE).await;
    assert!(seen.is_empty(), "v3.1.1: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_disconnect_0x82() {
    let node = Node::start();
    // receive maximum 0 in CONNECT is a protocol error → CONNACK 0x82 (or close)
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V5).await;
    c.send(
        &Connect::v5("rm0")
            .prop(prop::RECEIVE_MAXIMUM, PropValue::U16(0))
            .encode(),
    )
    .await;
    let seen = c.expect_closed(CLOSE).await;
    assert!(
        matches!(seen.as_slice(), [] | [Packet::ConnAck { code: 0x82, .. }]),
        "Receive Maximum 0 in CONNECT: expected CONNACK 0x82 (optional) then close, got {seen:?}"
    );

    // a property that is not allowed in PUBLISH (Session Expiry Interval)
    let mut c = RawClient::v5(node.mqtt_addr(), "badprop").await;
    c.publish(&Publish::new("t", 0, b"x").prop(prop::SESSION_EXPIRY_INTERVAL, PropValue::U32(1)))
        .await;
    c.expect_disconnect_or_close(&[0x81, 0x82], CLOSE).await;

    // a duplicated single-occurrence property (two Message Expiry Intervals)
    let mut c = RawClient::v5(node.mqtt_addr(), "dupprop").await;
    c.publish(
        &Publish::new("t", 0, b"x")
            .prop(prop::MESSAGE_EXPIRY_INTERVAL, PropValue::U32(1))
            .prop(prop::MESSAGE_EXPIRY_INTERVAL, PropValue::U32(2)),
    )
    .await;
    c.expect_disconnect_or_close(&[0x82, 0x81], CLOSE).await;

    // the connection is still usable for a well-behaved client
    let mut ok = RawClient::v5(node.mqtt_addr(), "fine").await;
    ok.ping().await;
    ok.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_alias_never_pushes_a_publish_past_the_client_maximum() {
    let node = Node::start();
    let (mut tight, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v5("alias-tight")
            .prop(prop::MAXIMUM_PACKET_SIZE, PropValue::U32(50))
            .prop(prop::TOPIC_ALIAS_MAXIMUM, PropValue::U16(10)),
    )
    .await;
    tight.subscribe(1, &[SubFilter::new("t/x", 0)]).await;
    let mut publ = RawClient::v5(node.mqtt_addr(), "alias-pub").await;
    // 1 + 1 + (2 + 3) + 1 + 42 = 50 bytes without an alias; a Topic Alias property would
    // make it 53.
    publ.publish(&Publish::new("t/x", 0, &[b'a'; 42])).await;
    publ.publish(&Publish::new("t/x", 0, b"small")).await;
    publ.publish(&Publish::new("t/x", 0, b"again")).await;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (packet, raw) = tight.recv_raw(RECV_TIMEOUT).await.expect("a PUBLISH");
        if let Packet::Publish(p) = packet {
            assert!(
                raw.len() <= 50,
                "{} bytes sent to a client allowing 50",
                raw.len()
            );
            seen.push((
                p.topic.clone(),
                p.props.int(prop::TOPIC_ALIAS),
                p.payload.len(),
            ));
        }
    }
    assert_eq!(seen[0], ("t/x".to_string(), None, 42), "{seen:?}");
    // The alias is only introduced once it fits, then used with an empty topic.
    assert_eq!(seen[1], ("t/x".to_string(), Some(1), 5), "{seen:?}");
    assert_eq!(seen[2], (String::new(), Some(1), 5), "{seen:?}");
}
