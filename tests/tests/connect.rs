//! CONNECT / CONNACK, client identifiers, keep alive.

use std::time::{Duration, Instant};

use skein_tests::codec::{self, frame, put_str};
use skein_tests::{
    clients, prop, Connect, Node, Packet, PropValue, Proto, RawClient, RECV_TIMEOUT,
};

const CLOSE: Duration = Duration::from_secs(3);

/// CONNECT with an arbitrary protocol name / level (v3.1.1 layout, no v5 properties).
fn connect_with_protocol(name: &str, level: u8, client_id: &str) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    put_str(&mut b, name);
    b.extend_from_slice(&[level, 0x02, 0x00, 0x3C]);
    put_str(&mut b, client_id);
    frame(0x10, &b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v31_connect_accepted() {
    let node = Node::start();
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V31).await;
    c.send(&Connect::new(Proto::V31, "old-client").encode())
        .await;
    let (p, raw) = c.recv_raw(RECV_TIMEOUT).await.expect("CONNACK");
    assert_eq!(
        raw,
        vec![0x20, 0x02, 0x00, 0x00],
        "v3.1 CONNACK bytes, decoded {p:?}"
    );
    c.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_connect_accepted() {
    let node = Node::start();
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
    c.send(&Connect::v311("c311").encode()).await;
    let (p, raw) = c.recv_raw(RECV_TIMEOUT).await.expect("CONNACK");
    assert_eq!(
        raw,
        vec![0x20, 0x02, 0x00, 0x00],
        "v3.1.1 CONNACK bytes, decoded {p:?}"
    );
    c.ping().await;

    // and a real client library
    let mut rc = clients::v3::Client::connect(node.mqtt_addr(), "rumqttc-311").await;
    assert!(!rc.session_present());
    rc.subscribe("x", clients::v3::QoS::AtLeastOnce).await;
    rc.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connect_accepted() {
    let node = Node::start();
    let (mut c, p) = RawClient::connect(node.mqtt_addr(), &Connect::v5("c5")).await;
    match p {
        Packet::ConnAck {
            session_present: false,
            code: 0,
            ..
        } => {}
        other => panic!("expected CONNACK success / session present 0, got {other:?}"),
    }
    c.ping().await;

    let rc = clients::v5::Client::connect(node.mqtt_addr(), "rumqttc-5").await;
    assert_eq!(rc.connack.code, clients::v5::ConnectReturnCode::Success);
    rc.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_refused_then_closed() {
    let node = Node::start();

    // Level 2 (pre-3.1): a v3-style refusal, return code 0x01.
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
    c.send(&connect_with_protocol("MQTT", 2, "lvl2")).await;
    let (p, raw) = c.recv_raw(RECV_TIMEOUT).await.expect("CONNACK for level 2");
    assert_eq!(
        raw,
        vec![0x20, 0x02, 0x00, 0x01],
        "level 2 → CONNACK 0x01; decoded {p:?}"
    );
    c.expect_closed(CLOSE).await;

    // Level 6 (a future version): refused with 0x01 (v3 layout) or 0x84 (v5 layout).
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
    c.send(&connect_with_protocol("MQTT", 6, "lvl6")).await;
    let (p, raw) = c.recv_raw(RECV_TIMEOUT).await.expect("CONNACK for level 6");
    match p {
        Packet::ConnAck {
            code: 0x01 | 0x84, ..
        } => {}
        other => panic!("level 6 → CONNACK 0x01/0x84 expected, got {other:?} (bytes {raw:02x?})"),
    }
    c.expect_closed(CLOSE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_name_closed() {
    let node = Node::start();
    for (name, level) in [("MQTX", 4u8), ("MQTT", 3), ("MQIsdp", 4), ("", 4)] {
        let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
        c.send(&connect_with_protocol(name, level, "badname")).await;
        let seen = c.expect_closed(CLOSE).await;
        for p in &seen {
            match p {
                Packet::ConnAck { code, .. } if *code != 0 => {}
                other => panic!("protocol name {name:?} level {level}: only a refusing CONNACK may precede the close, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_closes_connection() {
    let node = Node::start();

    let mut c = RawClient::v311(node.mqtt_addr(), "twice-311").await;
    c.send(&Connect::v311("twice-311").encode()).await;
    let seen = c.expect_closed(CLOSE).await;
    assert!(
        seen.is_empty(),
        "v3.1.1: nothing may be sent in reply to a second CONNECT, got {seen:?}"
    );

    let mut c = RawClient::v5(node.mqtt_addr(), "twice-5").await;
    c.send(&Connect::v5("twice-5").encode()).await;
    c.expect_disconnect_or_close(&[0x82], CLOSE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_within_connect_timeout_closes() {
    let node = Node::builder().env("SKEIN_CONNECT_TIMEOUT_MS", 300).start();
    let start = Instant::now();
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
    let seen = c.expect_closed(Duration::from_secs(3)).await;
    let took = start.elapsed();
    assert!(
        seen.is_empty(),
        "nothing may be sent before CONNECT, got {seen:?}"
    );
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the 300 ms connect timeout"
    );
    assert!(
        took < Duration::from_millis(2000),
        "closed only after {took:?}"
    );

    // A client that does connect in time is unaffected.
    let mut ok = RawClient::v311(node.mqtt_addr(), "in-time").await;
    ok.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingreq_before_connect_closes() {
    let node = Node::start();
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
    c.send(&codec::pingreq()).await;
    let seen = c.expect_closed(CLOSE).await;
    assert!(
        !seen.iter().any(|p| matches!(p, Packet::PingResp)),
        "PINGRESP sent before CONNECT: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_with_clean_session_accepted() {
    let node = Node::start();

    let (mut c, sp, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v311("")).await;
    assert!(!sp);
    c.ping().await;

    let (mut c5, sp, props) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("")).await;
    assert!(!sp);
    let assigned = props
        .str(prop::ASSIGNED_CLIENT_IDENTIFIER)
        .unwrap_or_else(|| panic!("v5 CONNACK lacks Assigned Client Identifier: {props:?}"))
        .to_string();
    assert!(!assigned.is_empty(), "assigned client identifier is empty");
    c5.ping().await;

    // two anonymous clients get distinct identifiers
    let (_c5b, _, props_b) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("")).await;
    assert_ne!(
        props_b.str(prop::ASSIGNED_CLIENT_IDENTIFIER),
        Some(assigned.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_with_persistent_session_refused() {
    let node = Node::start();

    // v3.1.1: clean session 0 + empty id → 0x02 identifier rejected, then close.
    let (mut c, p) = RawClient::connect(node.mqtt_addr(), &Connect::v311("").clean(false)).await;
    assert!(
        matches!(
            p,
            Packet::ConnAck {
                code: 0x02,
                session_present: false,
                ..
            }
        ),
        "v3.1.1 empty id + clean session 0: expected CONNACK 0x02, got {p:?}"
    );
    c.expect_closed(CLOSE).await;

    // v5: empty id with a session that outlives the connection → 0x85.
    for clean in [false, true] {
        let (mut c, p) = RawClient::connect(
            node.mqtt_addr(),
            &Connect::v5("").clean(clean).session_expiry(60),
        )
        .await;
        assert!(
            matches!(p, Packet::ConnAck { code: 0x85, .. }),
            "v5 empty id + session expiry 60 (clean start {clean}): expected CONNACK 0x85, got {p:?}"
        );
        c.expect_closed(CLOSE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_client_id_refused() {
    let node = Node::builder().env("SKEIN_MAX_CLIENT_ID_LEN", 10).start();

    let (mut c, p) = RawClient::connect(node.mqtt_addr(), &Connect::v311("abcdefghijk")).await;
    assert!(
        matches!(p, Packet::ConnAck { code: 0x02, .. }),
        "v3.1.1 11-char id with max 10: expected CONNACK 0x02, got {p:?}"
    );
    c.expect_closed(CLOSE).await;

    let (mut c, p) = RawClient::connect(node.mqtt_addr(), &Connect::v5("abcdefghijk")).await;
    assert!(
        matches!(p, Packet::ConnAck { code: 0x85, .. }),
        "v5 11-char id with max 10: expected CONNACK 0x85, got {p:?}"
    );
    c.expect_closed(CLOSE).await;

    // exactly at the limit is fine
    let (mut ok, _, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v311("abcdefghij")).await;
    ok.ping().await;
    let (mut ok5, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("0123456789")).await;
    ok5.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_expiry_closes_silent_client() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let check = |proto: Proto, id: &'static str| async move {
        let mut c = RawClient::tcp(addr, proto).await;
        c.send(&Connect::new(proto, id).keep_alive(1).encode())
            .await;
        let p = c.expect(RECV_TIMEOUT).await;
        assert!(matches!(p, Packet::ConnAck { code: 0, .. }), "{p:?}");
        let since = Instant::now();
        let (seen, took) = c.expect_closed_timed(since, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(1000) && took <= Duration::from_millis(3500),
            "{proto:?}: keep alive 1 s, closed after {took:?} (expected ~1.5 s)"
        );
        for p in &seen {
            // v5 may say why (0x8D keep alive timeout)
            assert!(
                matches!(p, Packet::Disconnect { reason: 0x8D, .. }),
                "{proto:?}: unexpected packet before keep-alive close: {p:?}"
            );
        }
    };
    tokio::join!(check(Proto::V311, "ka-311"), check(Proto::V5, "ka-5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingreq_keeps_connection_alive_and_gets_pingresp() {
    let node = Node::start();
    let mut c = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
    c.send(&Connect::v311("pinger").keep_alive(1).encode())
        .await;
    assert!(matches!(
        c.expect(RECV_TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    // Ping every 500 ms for 3 s: well past 1.5 × keep alive, still connected.
    for _ in 0..6 {
        c.send(&codec::pingreq()).await;
        let (p, raw) = c.recv_raw(RECV_TIMEOUT).await.expect("PINGRESP");
        assert_eq!(raw, vec![0xD0, 0x00], "PINGRESP bytes; decoded {p:?}");
        tokio::time::sleep(Duration::from_millis(500)).await; // pacing the client, not synchronisation
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_caps_requested_keep_alive() {
    let node = Node::builder().env("SKEIN_MAX_KEEPALIVE", 60).start();
    let (_c, _, props) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("ka120").keep_alive(120)).await;
    assert_eq!(
        props.int(prop::SERVER_KEEP_ALIVE),
        Some(60),
        "CONNACK properties: {props:?}"
    );

    // rumqttc sees the same value
    let mut opts = clients::v5::options(node.mqtt_addr(), "ka120-rumqttc");
    opts.set_keep_alive(Duration::from_secs(120));
    let rc = clients::v5::Client::connect_with(opts).await;
    let server_ka = rc
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.server_keep_alive);
    assert_eq!(server_ka, Some(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_arrives_promptly() {
    let node = Node::start();
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let proto = if i % 2 == 0 { Proto::V311 } else { Proto::V5 };
        let start = Instant::now();
        let (c, p) =
            RawClient::connect(node.mqtt_addr(), &Connect::new(proto, &format!("lat-{i}"))).await;
        let took = start.elapsed();
        assert!(matches!(p, Packet::ConnAck { code: 0, .. }), "{p:?}");
        // A hang detector, not a speed target (those live in bench/): a loaded CI
        // machine may take long, but never seconds.
        assert!(
            took < Duration::from_secs(5),
            "connection {i}: CONNACK after {took:?}"
        );
        worst = worst.max(took);
        c.disconnect().await;
    }
    eprintln!("worst CONNACK latency over 20 connections: {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connect_properties_are_accepted() {
    // A CONNECT carrying the common properties must be accepted and the
    // CONNACK must be decodable v5 (properties section present).
    let node = Node::start();
    let connect = Connect::v5("props")
        .session_expiry(0)
        .prop(prop::RECEIVE_MAXIMUM, PropValue::U16(20))
        .prop(prop::MAXIMUM_PACKET_SIZE, PropValue::U32(65536))
        .prop(prop::TOPIC_ALIAS_MAXIMUM, PropValue::U16(5))
        .prop(prop::USER_PROPERTY, PropValue::Pair("k".into(), "v".into()));
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    c.ping().await;
}

/// MQTT-3.1.4 allows packets right after CONNECT without waiting for CONNACK: a
/// SUBSCRIBE in the same TCP segment as the CONNECT is answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_sent_with_the_connect_is_answered() {
    let node = Node::start();
    for proto in [Proto::V311, Proto::V5] {
        let connect = match proto {
            Proto::V5 => Connect::v5("pipelined-5"),
            _ => Connect::v311("pipelined-4"),
        };
        let mut bytes = connect.encode();
        bytes.extend(codec::subscribe(
            proto,
            7,
            &[skein_tests::SubFilter::new("p/#", 1)],
            &codec::Props::new(),
        ));
        let mut c = RawClient::tcp(node.mqtt_addr(), proto).await;
        c.send(&bytes).await;
        let suback = c
            .recv_matching(RECV_TIMEOUT, |p| {
                matches!(p, Packet::SubAck { pkid: 7, .. })
            })
            .await;
        assert!(
            matches!(suback, Packet::SubAck { ref codes, .. } if codes == &[1]),
            "{suback:?}"
        );
        assert!(
            matches!(c.stashed().front(), Some(Packet::ConnAck { .. })),
            "CONNACK first: {:?}",
            c.stashed()
        );
    }
}

/// A packet read by the last read of a batch is answered at once: its answer is written
/// without waiting for another wake-up. (Those answers once waited in the write buffer
/// until a spurious readiness wake-up flushed them, or forever once wake-ups were exact.)
/// A persistent session's SUBSCRIBE is answered after a storage flush, which widens the
/// window; many rounds make hitting it near certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_read_at_the_end_of_a_batch_is_answered() {
    let node = Node::start();
    for round in 0..200 {
        let connect = Connect::v5(&format!("batch-end-{round}")).persistent(600);
        let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
        let filters = [skein_tests::SubFilter::new("b/#", 1)];
        assert_eq!(c.subscribe(1, &filters).await, [1], "round {round}");
        c.ping().await;
    }
}
