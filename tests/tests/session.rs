//! Clean / persistent sessions, offline queues, v5 Session Expiry Interval,
//! session takeover.

use std::time::Duration;

use skein_tests::clients::v3;
use skein_tests::codec::{self, Props};
use skein_tests::{
    prop, Connect, Node, Packet, PropValue, Publish, RawClient, SubFilter, QUIET, RECV_TIMEOUT,
};

fn persistent_opts(node: &Node, id: &str) -> v3::MqttOptions {
    let mut o = v3::options(node.mqtt_addr(), id);
    o.set_clean_session(false);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_state() {
    let node = Node::start();
    let mut c = v3::Client::connect_with(persistent_opts(&node, "cs")).await;
    assert!(!c.session_present());
    c.subscribe("cs/t", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    // clean session: old state discarded, no subscription
    let mut c = v3::Client::connect(node.mqtt_addr(), "cs").await;
    assert!(
        !c.session_present(),
        "clean session must report Session Present 0"
    );
    let mut publ = v3::Client::connect(node.mqtt_addr(), "cs-pub").await;
    publ.publish("cs/t", v3::QoS::AtLeastOnce, false, "x").await;
    c.expect_no_publish(QUIET).await;
    c.disconnect().await;

    // and the clean session is not kept either
    let c = v3::Client::connect_with(persistent_opts(&node, "cs")).await;
    assert!(
        !c.session_present(),
        "clean session state must be discarded at disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_resumes_subscriptions() {
    let node = Node::start();
    let mut c = v3::Client::connect_with(persistent_opts(&node, "ps")).await;
    c.subscribe("ps/t", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut c = v3::Client::connect_with(persistent_opts(&node, "ps")).await;
    assert!(c.session_present(), "Session Present must be 1");
    let mut publ = v3::Client::connect(node.mqtt_addr(), "ps-pub").await;
    publ.publish("ps/t", v3::QoS::AtLeastOnce, false, "resumed")
        .await;
    let p = c.recv().await;
    assert_eq!(&p.payload[..], b"resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_qos1_messages_delivered_on_reconnect() {
    let node = Node::start();
    let mut c = v3::Client::connect_with(persistent_opts(&node, "off")).await;
    c.subscribe("off/#", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v3::Client::connect(node.mqtt_addr(), "off-pub").await;
    for i in 0..3 {
        publ.publish(
            &format!("off/{i}"),
            v3::QoS::AtLeastOnce,
            false,
            format!("m{i}"),
        )
        .await;
    }
    publ.publish("off/q2", v3::QoS::ExactlyOnce, false, "m-q2")
        .await;

    let mut c = v3::Client::connect_with(persistent_opts(&node, "off")).await;
    assert!(c.session_present());
    let got: Vec<(String, String, v3::QoS)> = c
        .recv_n(4)
        .await
        .into_iter()
        .map(|p| {
            (
                p.topic,
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("off/0".into(), "m0".into(), v3::QoS::AtLeastOnce),
            ("off/1".into(), "m1".into(), v3::QoS::AtLeastOnce),
            ("off/2".into(), "m2".into(), v3::QoS::AtLeastOnce),
            // QoS 2 publish on a QoS 1 subscription is downgraded
            ("off/q2".into(), "m-q2".into(), v3::QoS::AtLeastOnce),
        ],
        "queued messages, in order"
    );
    c.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_bounded_by_max_queued_messages() {
    let node = Node::builder().env("SKEIN_MAX_QUEUED_MESSAGES", 5).start();
    let mut c = v3::Client::connect_with(persistent_opts(&node, "bounded")).await;
    c.subscribe("bq", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v3::Client::connect(node.mqtt_addr(), "bq-pub").await;
    for i in 0..10 {
        publ.publish("bq", v3::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }

    let mut c = v3::Client::connect_with(persistent_opts(&node, "bounded")).await;
    assert!(c.session_present());
    // at least one must come; then collect until the stream stays quiet for 500 ms
    let mut got = vec![c.recv().await];
    while let Some(p) = c.try_recv_within(Duration::from_millis(500)).await {
        got.push(p);
    }
    let payloads: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert!(
        !payloads.is_empty() && payloads.len() <= 5,
        "max 5 queued messages, got {} after reconnect: {payloads:?}",
        payloads.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_interval() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let scenario = |id: &'static str, expiry: u32| async move {
        let connect = Connect::v5(id).persistent(expiry);
        let (mut c, sp, _) = RawClient::connect_ok(addr, &connect).await;
        assert!(!sp);
        c.subscribe(1, &[SubFilter::new("se/t", 1)]).await;
        c.disconnect().await;
        // the condition under test is the passage of time itself
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_c, sp, _) = RawClient::connect_ok(addr, &connect).await;
        sp
    };
    let (short, long) = tokio::join!(scenario("expiry1", 1), scenario("expiry60", 60));
    assert!(
        !short,
        "session with expiry 1 s must be gone after 2 s (Session Present 0)"
    );
    assert!(
        long,
        "session with expiry 60 s must still be present after 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_zero_ends_session_at_disconnect() {
    let node = Node::start();
    let (mut c, _, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("se0").clean(false)).await;
    c.subscribe(1, &[SubFilter::new("se0/t", 1)]).await;
    c.disconnect().await;
    let (_c, sp, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("se0").clean(false)).await;
    assert!(
        !sp,
        "no Session Expiry Interval = 0: session ends with the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_changed_on_disconnect() {
    let node = Node::start();
    let addr = node.mqtt_addr();

    // 60 s at CONNECT, set to 0 at DISCONNECT → gone immediately
    let to_zero = async {
        let connect = Connect::v5("shorten").persistent(60);
        let (mut c, _, _) = RawClient::connect_ok(addr, &connect).await;
        c.subscribe(1, &[SubFilter::new("x", 1)]).await;
        let props = Props::new().with(prop::SESSION_EXPIRY_INTERVAL, PropValue::U32(0));
        c.send(&codec::disconnect(Some(0), &props)).await;
        c.expect_closed(RECV_TIMEOUT).await;
        let (_c, sp, _) = RawClient::connect_ok(addr, &connect).await;
        assert!(
            !sp,
            "session expiry set to 0 on DISCONNECT: session must be gone"
        );
    };
    // 1 s at CONNECT, raised to 60 at DISCONNECT → still there after 2 s
    let to_longer = async {
        let connect = Connect::v5("lengthen").persistent(1);
        let (mut c, _, _) = RawClient::connect_ok(addr, &connect).await;
        c.subscribe(1, &[SubFilter::new("x", 1)]).await;
        let props = Props::new().with(prop::SESSION_EXPIRY_INTERVAL, PropValue::U32(60));
        c.send(&codec::disconnect(Some(0), &props)).await;
        c.expect_closed(RECV_TIMEOUT).await;
        tokio::time::sleep(Duration::from_secs(2)).await; // the passage of time is under test
        let (_c, sp, _) = RawClient::connect_ok(addr, &connect).await;
        assert!(
            sp,
            "session expiry raised to 60 on DISCONNECT: session must survive 2 s"
        );
    };
    tokio::join!(to_zero, to_longer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_setting_expiry_when_connect_had_zero_is_protocol_error() {
    let node = Node::start();
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("zero-then")).await;
    let props = Props::new().with(prop::SESSION_EXPIRY_INTERVAL, PropValue::U32(30));
    c.send(&codec::disconnect(Some(0), &props)).await;
    c.expect_disconnect_or_close(&[0x82], RECV_TIMEOUT).await;
    let (_c, sp, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("zero-then").clean(false)).await;
    assert!(
        !sp,
        "the invalid DISCONNECT must not have extended the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_closes_old_connection() {
    let node = Node::start();
    let mut old = RawClient::v311(node.mqtt_addr(), "same-id").await;
    let _new = RawClient::v311(node.mqtt_addr(), "same-id").await;
    let seen = old.expect_closed(RECV_TIMEOUT).await;
    assert!(
        seen.is_empty(),
        "v3.1.1 takeover: old connection just closed, got {seen:?}"
    );

    let mut old = RawClient::v5(node.mqtt_addr(), "same-id5").await;
    let mut new = RawClient::v5(node.mqtt_addr(), "same-id5").await;
    old.expect_disconnect(0x8E, RECV_TIMEOUT).await;
    new.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_keeps_qos2_state_across_reconnect() {
    // Server → client QoS 2: client sends PUBREC, disconnects before PUBREL
    // arrives/completes; on reconnect the server must resend PUBREL (not the PUBLISH).
    let node = Node::start();
    let connect = Connect::v311("q2state").persistent(0);
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    c.subscribe(1, &[SubFilter::new("q2s", 2)]).await;
    let mut publ = RawClient::v311(node.mqtt_addr(), "q2state-pub").await;
    publ.publish(&Publish::new("q2s", 2, b"x").pkid(5)).await;
    assert!(matches!(
        publ.expect(RECV_TIMEOUT).await,
        Packet::PubRec { pkid: 5, .. }
    ));
    publ.send(&codec::pubrel(5)).await;

    let p = c.expect_publish(RECV_TIMEOUT).await;
    c.send(&codec::pubrec(p.pkid)).await;
    c.recv_matching(RECV_TIMEOUT, |x| matches!(x, Packet::PubRel { .. }))
        .await;
    c.disconnect().await; // without PUBCOMP

    let (mut c, sp, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    assert!(sp);
    match c.expect(RECV_TIMEOUT).await {
        Packet::PubRel { pkid, .. } => assert_eq!(pkid, p.pkid),
        other => panic!("expected PUBREL {} to be resent, got {other:?}", p.pkid),
    }
    c.send(&codec::pubcomp(p.pkid)).await;
    c.expect_no_publish(QUIET).await;
}
