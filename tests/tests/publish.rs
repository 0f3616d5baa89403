//! PUBLISH at QoS 0/1/2 in both directions, QoS downgrade, overlapping
//! subscriptions, receive maximum, DUP retransmission.

use std::time::Duration;

use skein_tests::clients::{v3, v5};
use skein_tests::codec;
use skein_tests::{
    prop, Connect, Node, Packet, Proto, Publish, RawClient, SubFilter, QUIET, RECV_TIMEOUT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_roundtrip_v311() {
    let node = Node::start();
    let mut sub = v3::Client::connect(node.mqtt_addr(), "sub311").await;
    assert_eq!(
        sub.subscribe("q/#", v3::QoS::ExactlyOnce).await,
        v3::SubscribeReasonCode::Success(v3::QoS::ExactlyOnce)
    );
    let mut publ = v3::Client::connect(node.mqtt_addr(), "pub311").await;
    for (i, qos) in [
        v3::QoS::AtMostOnce,
        v3::QoS::AtLeastOnce,
        v3::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("q/{i}");
        let payload = format!("payload-{i}");
        publ.publish(&topic, qos, false, payload.clone()).await;
        let got = sub.recv().await;
        assert_eq!(got.topic, topic);
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(got.qos, qos, "delivered QoS");
        assert!(!got.retain && !got.dup);
    }
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_roundtrip_v5() {
    let node = Node::start();
    let mut sub = v5::Client::connect(node.mqtt_addr(), "sub5").await;
    sub.subscribe("q/#", v5::QoS::ExactlyOnce).await;
    let mut publ = v5::Client::connect(node.mqtt_addr(), "pub5").await;
    for (i, qos) in [
        v5::QoS::AtMostOnce,
        v5::QoS::AtLeastOnce,
        v5::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("q/{i}");
        publ.publish(&topic, qos, false, vec![i as u8; 3]).await;
        let got = sub.recv().await;
        assert_eq!(v5::topic(&got), topic);
        assert_eq!(&got.payload[..], &[i as u8; 3]);
        assert_eq!(got.qos, qos);
    }
    sub.expect_no_publish(QUIET).await;
}

/// Byte-level check of the server's side of the QoS 1 and QoS 2 flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_flows_on_the_wire() {
    let node = Node::start();
    for proto in [Proto::V311, Proto::V5] {
        let (mut sub, _, _) =
            RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, "wire-sub")).await;
        assert_eq!(sub.subscribe(1, &[SubFilter::new("w/t", 2)]).await, vec![2]);
        let (mut publ, _, _) =
            RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, "wire-pub")).await;

        // inbound QoS 1: PUBLISH → PUBACK
        publ.publish(&Publish::new("w/t", 1, b"one").pkid(10)).await;
        match publ.expect(RECV_TIMEOUT).await {
            Packet::PubAck {
                pkid: 10,
                reason: 0,
                ..
            } => {}
            other => panic!("{proto:?}: expected PUBACK 10, got {other:?}"),
        }
        // outbound QoS 1
        let p = sub.expect_publish(RECV_TIMEOUT).await;
        assert_eq!(
            (p.qos, p.payload.as_slice(), p.dup),
            (1, &b"one"[..], false)
        );
        assert_ne!(p.pkid, 0);
        sub.send(&codec::puback(p.pkid)).await;

        // inbound QoS 2: PUBLISH → PUBREC, PUBREL → PUBCOMP; a retransmitted
        // PUBLISH (DUP) before PUBREL must not cause a second delivery.
        publ.publish(&Publish::new("w/t", 2, b"two").pkid(11)).await;
        match publ.expect(RECV_TIMEOUT).await {
            Packet::PubRec {
                pkid: 11,
                reason: 0,
                ..
            } => {}
            other => panic!("{proto:?}: expected PUBREC 11, got {other:?}"),
        }
        publ.publish(&Publish::new("w/t", 2, b"two").pkid(11).dup(true))
            .await;
        match publ.expect(RECV_TIMEOUT).await {
            Packet::PubRec { pkid: 11, .. } => {}
            other => panic!("{proto:?}: expected PUBREC 11 again, got {other:?}"),
        }
        publ.send(&codec::pubrel(11)).await;
        match publ.expect(RECV_TIMEOUT).await {
            Packet::PubComp {
                pkid: 11,
                reason: 0,
                ..
            } => {}
            other => panic!("{proto:?}: expected PUBCOMP 11, got {other:?}"),
        }

        // outbound QoS 2: PUBLISH → (PUBREC) → PUBREL → (PUBCOMP)
        let p = sub.expect_publish(RECV_TIMEOUT).await;
        assert_eq!((p.qos, p.payload.as_slice()), (2, &b"two"[..]));
        sub.send(&codec::pubrec(p.pkid)).await;
        let (rel, raw) = sub.recv_raw(RECV_TIMEOUT).await.expect("PUBREL");
        assert!(
            matches!(rel, Packet::PubRel { pkid, reason: 0, .. } if pkid == p.pkid),
            "{proto:?}: expected PUBREL {} got {rel:?}",
            p.pkid
        );
        assert_eq!(raw[0], 0x62, "PUBREL fixed header flags must be 0b0010");
        sub.send(&codec::pubcomp(p.pkid)).await;
        sub.expect_no_publish(QUIET).await;
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_downgraded_to_subscription_qos() {
    let node = Node::start();
    let mut s0 = v3::Client::connect(node.mqtt_addr(), "s0").await;
    s0.subscribe("dg", v3::QoS::AtMostOnce).await;
    let mut s1 = v3::Client::connect(node.mqtt_addr(), "s1").await;
    s1.subscribe("dg", v3::QoS::AtLeastOnce).await;
    let mut s2 = v3::Client::connect(node.mqtt_addr(), "s2").await;
    s2.subscribe("dg", v3::QoS::ExactlyOnce).await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "p").await;

    publ.publish("dg", v3::QoS::ExactlyOnce, false, "x").await;
    assert_eq!(s0.recv().await.qos, v3::QoS::AtMostOnce);
    assert_eq!(s1.recv().await.qos, v3::QoS::AtLeastOnce);
    assert_eq!(s2.recv().await.qos, v3::QoS::ExactlyOnce);

    // and never upgraded
    publ.publish("dg", v3::QoS::AtLeastOnce, false, "y").await;
    assert_eq!(s0.recv().await.qos, v3::QoS::AtMostOnce);
    assert_eq!(s1.recv().await.qos, v3::QoS::AtLeastOnce);
    assert_eq!(s2.recv().await.qos, v3::QoS::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_one_copy_at_max_qos_v311() {
    let node = Node::start();
    let mut sub = v3::Client::connect(node.mqtt_addr(), "overlap").await;
    sub.subscribe("a/#", v3::QoS::AtLeastOnce).await;
    sub.subscribe("a/b", v3::QoS::ExactlyOnce).await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "overlap-pub").await;
    publ.publish("a/b", v3::QoS::ExactlyOnce, false, "once")
        .await;
    let got = sub.recv().await;
    assert_eq!((got.topic.as_str(), got.qos), ("a/b", v3::QoS::ExactlyOnce));
    // Sentinel: a later message only matched by a/# proves nothing else is queued before it.
    publ.publish("a/z", v3::QoS::AtLeastOnce, false, "sentinel")
        .await;
    let next = sub.recv().await;
    assert_eq!(next.topic, "a/z", "second copy of a/b delivered: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_v5_carry_both_subscription_ids() {
    let node = Node::start();
    let mut sub = RawClient::v5(node.mqtt_addr(), "overlap5").await;
    let s1 = codec::subscribe_with_id(1, 1, &[SubFilter::new("a/#", 1)]);
    assert_eq!(sub.subscribe_bytes(1, &s1).await, vec![1]);
    let s2 = codec::subscribe_with_id(2, 2, &[SubFilter::new("a/b", 2)]);
    assert_eq!(sub.subscribe_bytes(2, &s2).await, vec![2]);

    let mut publ = RawClient::v5(node.mqtt_addr(), "overlap5-pub").await;
    publ.publish(&Publish::new("a/b", 2, b"once").pkid(1)).await;
    assert!(matches!(
        publ.expect(RECV_TIMEOUT).await,
        Packet::PubRec { pkid: 1, .. }
    ));
    publ.send(&codec::pubrel(1)).await;

    let p = sub.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.qos, 2, "{p:?}");
    let mut ids = p.props.all_ints(prop::SUBSCRIPTION_IDENTIFIER);
    ids.sort();
    assert_eq!(ids, vec![1, 2], "subscription identifiers in {p:?}");
    sub.send(&codec::pubrec(p.pkid)).await;

    publ.publish(&Publish::new("a/z", 0, b"sentinel")).await;
    let next = sub.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(next.topic, "a/z", "second copy delivered: {next:?}");
    assert_eq!(next.props.all_ints(prop::SUBSCRIPTION_IDENTIFIER), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_receive_maximum_disconnects_0x93() {
    let node = Node::builder().env("SKEIN_MAX_INFLIGHT", 2).start();
    let (mut c, _, props) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("greedy")).await;
    assert_eq!(
        props.int(prop::RECEIVE_MAXIMUM),
        Some(2),
        "CONNACK must announce Receive Maximum 2: {props:?}"
    );
    // Three QoS 2 publishes whose flows are never completed (no PUBREL).
    for id in 1..=3u16 {
        let _ = c
            .try_send(&Publish::new("rm/t", 2, b"x").pkid(id).encode(Proto::V5))
            .await;
    }
    let seen = c.expect_closed(RECV_TIMEOUT).await;
    let recs: Vec<u16> = seen
        .iter()
        .filter_map(|p| match p {
            Packet::PubRec { pkid, .. } => Some(*pkid),
            _ => None,
        })
        .collect();
    assert_eq!(
        recs,
        vec![1, 2],
        "PUBRECs before the disconnect; all packets: {seen:?}"
    );
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect { reason: 0x93, .. })),
        "expected DISCONNECT 0x93 (receive maximum exceeded) last, got {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_qos1_redelivered_with_dup_after_reconnect() {
    let node = Node::start();
    for proto in [Proto::V311, Proto::V5] {
        let id = format!("dup-{proto:?}");
        let connect = Connect::new(proto, &id).persistent(300);
        let (mut c, sp, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
        assert!(!sp);
        assert_eq!(c.subscribe(1, &[SubFilter::new("dup/t", 1)]).await, vec![1]);

        let mut publ = v3::Client::connect(node.mqtt_addr(), &format!("dup-pub-{proto:?}")).await;
        publ.publish("dup/t", v3::QoS::AtLeastOnce, false, "again")
            .await;

        let first = c.expect_publish(RECV_TIMEOUT).await;
        assert!(!first.dup, "first delivery must have DUP=0: {first:?}");
        assert_eq!(first.qos, 1);
        // no PUBACK; go away
        c.disconnect().await;

        let (mut c, sp, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
        assert!(sp, "{proto:?}: session present expected");
        let again = c.expect_publish(RECV_TIMEOUT).await;
        assert!(
            again.dup,
            "{proto:?}: redelivery must have DUP=1: {again:?}"
        );
        assert_eq!(
            again.pkid, first.pkid,
            "redelivery must reuse the packet identifier"
        );
        assert_eq!(
            (again.topic.as_str(), again.payload.as_slice(), again.qos),
            ("dup/t", &b"again"[..], 1)
        );
        c.send(&codec::puback(again.pkid)).await;
        c.expect_no_publish(QUIET).await;
        c.disconnect().await;

        // acknowledged → not redelivered on the next reconnect
        let (mut c, sp, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
        assert!(sp);
        c.expect_no_publish(QUIET).await;
        c.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_wildcard_topic_closes_connection() {
    let node = Node::start();
    for topic in ["bad/+", "bad/#"] {
        let mut c = RawClient::v311(node.mqtt_addr(), "wild-pub").await;
        c.publish(&Publish::new(topic, 0, b"x")).await;
        let seen = c.expect_closed(Duration::from_secs(3)).await;
        assert!(seen.is_empty(), "v3.1.1 {topic}: {seen:?}");

        let mut c = RawClient::v5(node.mqtt_addr(), "wild-pub5").await;
        c.publish(&Publish::new(topic, 0, b"x")).await;
        c.expect_disconnect_or_close(&[0x90, 0x81, 0x82], Duration::from_secs(3))
            .await;
    }
}

/// Subscribers' wake-ups are held while one read of PUBLISHes is routed and sent when
/// the batch ends — also when it ends in a protocol error that closes the publisher: the
/// messages routed before the bad packet still reach the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_routed_before_a_bad_packet_in_the_same_read_are_delivered() {
    let node = Node::start();
    let mut sub = RawClient::v311(node.mqtt_addr(), "held-sub").await;
    assert_eq!(sub.subscribe(1, &[SubFilter::new("held/#", 0)]).await, [0]);
    let mut publ = RawClient::v311(node.mqtt_addr(), "held-pub").await;
    let mut bytes = Vec::new();
    for i in 0..20 {
        bytes.extend(Publish::new(&format!("held/{i}"), 0, b"x").encode(Proto::V311));
    }
    // A PUBLISH with a wildcard in its topic name: a protocol error closing the publisher.
    bytes.extend(Publish::new("held/+", 0, b"bad").encode(Proto::V311));
    publ.send(&bytes).await;
    for i in 0..20 {
        let p = sub.expect_publish(RECV_TIMEOUT).await;
        assert_eq!(p.topic, format!("held/{i}"));
    }
    publ.expect_closed(RECV_TIMEOUT).await;
    sub.expect_no_publish(QUIET).await;
}
