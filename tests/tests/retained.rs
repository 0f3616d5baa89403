//! Retained messages, v5 Retain Handling and Retain As Published.

use skein_tests::clients::v3;
use skein_tests::{Node, Publish, RawClient, SubFilter, QUIET, RECV_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_delivered_on_subscribe_with_retain_flag() {
    let node = Node::start();
    let mut publ = v3::Client::connect(node.mqtt_addr(), "rpub").await;
    publ.publish("r/1", v3::QoS::AtLeastOnce, true, "kept")
        .await;
    // QoS 1 so the broker has handled it (PUBACK) before the subscriber subscribes;
    // a QoS 0 publish could still be in flight and be delivered live.
    publ.publish("r/2", v3::QoS::AtLeastOnce, false, "not kept")
        .await;

    let mut sub = v3::Client::connect(node.mqtt_addr(), "rsub").await;
    sub.subscribe("r/#", v3::QoS::AtLeastOnce).await;
    let p = sub.recv().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("r/1", &b"kept"[..]));
    assert!(
        p.retain,
        "retained delivery on subscribe must have RETAIN=1"
    );
    assert_eq!(p.qos, v3::QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_of_retained_publish_has_retain_clear_v311() {
    let node = Node::start();
    let mut sub = v3::Client::connect(node.mqtt_addr(), "live").await;
    sub.subscribe("lr", v3::QoS::AtLeastOnce).await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "live-pub").await;
    publ.publish("lr", v3::QoS::AtLeastOnce, true, "x").await;
    let p = sub.recv().await;
    assert!(
        !p.retain,
        "v3.1.1 [MQTT-3.3.1-9]: RETAIN=0 for established subscriptions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_replaced() {
    let node = Node::start();
    let mut publ = v3::Client::connect(node.mqtt_addr(), "rep-pub").await;
    publ.publish("rep", v3::QoS::AtLeastOnce, true, "v1").await;
    publ.publish("rep", v3::QoS::AtLeastOnce, true, "v2").await;

    let mut sub = v3::Client::connect(node.mqtt_addr(), "rep-sub").await;
    sub.subscribe("rep", v3::QoS::AtLeastOnce).await;
    let p = sub.recv().await;
    assert_eq!(&p.payload[..], b"v2");
    assert!(p.retain);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_retained_payload_deletes() {
    let node = Node::start();
    let mut publ = v3::Client::connect(node.mqtt_addr(), "del-pub").await;
    publ.publish("del", v3::QoS::AtLeastOnce, true, "v1").await;
    publ.publish("del", v3::QoS::AtLeastOnce, true, "").await;
    publ.publish("keep", v3::QoS::AtLeastOnce, true, "k").await;

    let mut sub = v3::Client::connect(node.mqtt_addr(), "del-sub").await;
    sub.subscribe_many(&[
        ("del", v3::QoS::AtLeastOnce),
        ("keep", v3::QoS::AtLeastOnce),
    ])
    .await;
    let p = sub.recv().await;
    assert_eq!(p.topic, "keep", "deleted retained message delivered: {p:?}");
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_matched_by_wildcards() {
    let node = Node::start();
    let mut publ = v3::Client::connect(node.mqtt_addr(), "wr-pub").await;
    for t in ["h/1", "h/2/x", "h/3", "other"] {
        publ.publish(t, v3::QoS::AtLeastOnce, true, t).await;
    }
    let mut sub = v3::Client::connect(node.mqtt_addr(), "wr-sub").await;
    sub.subscribe("h/+", v3::QoS::AtMostOnce).await;
    let mut topics: Vec<String> = sub.recv_n(2).await.into_iter().map(|p| p.topic).collect();
    topics.sort();
    assert_eq!(topics, vec!["h/1", "h/3"]);
    sub.expect_no_publish(QUIET).await;
}

/// Retain Handling 0 / 1 / 2 (v5 subscription option bits 4-5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let mut publ = RawClient::v5(addr, "rh-pub").await;
    publ.publish(&Publish::new("rh/t", 0, b"old").retain(true))
        .await;
    // make sure it is stored before anyone subscribes: a QoS 1 round trip after it
    publ.publish(&Publish::new("rh/other", 1, b"sync").pkid(1))
        .await;
    publ.expect(RECV_TIMEOUT).await;

    // RH=0: sent at every subscribe
    let mut c0 = RawClient::v5(addr, "rh0").await;
    c0.subscribe(1, &[SubFilter::new("rh/t", 0).retain_handling(0)])
        .await;
    let p = c0.expect_publish(RECV_TIMEOUT).await;
    assert_eq!((p.payload.as_slice(), p.retain), (&b"old"[..], true));
    c0.subscribe(2, &[SubFilter::new("rh/t", 0).retain_handling(0)])
        .await;
    let p = c0.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.payload, b"old", "RH=0 resends on re-subscribe");

    // RH=1: only if the subscription did not exist
    let mut c1 = RawClient::v5(addr, "rh1").await;
    c1.subscribe(1, &[SubFilter::new("rh/t", 0).retain_handling(1)])
        .await;
    let p = c1.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.payload, b"old");
    c1.subscribe(2, &[SubFilter::new("rh/t", 0).retain_handling(1)])
        .await;

    // RH=2: never
    let mut c2 = RawClient::v5(addr, "rh2").await;
    c2.subscribe(1, &[SubFilter::new("rh/t", 0).retain_handling(2)])
        .await;

    // A live message after the SUBACKs must be the next thing c1 and c2 see.
    publ.publish(&Publish::new("rh/t", 0, b"live")).await;
    let p = c1.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        p.payload, b"live",
        "RH=1 re-subscribe must not resend the retained message"
    );
    let p = c2.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.payload, b"live", "RH=2 must not send retained messages");
    let p = c0.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.payload, b"live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_as_published() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let mut rap = RawClient::v5(addr, "rap").await;
    rap.subscribe(1, &[SubFilter::new("rap/t", 1).retain_as_published()])
        .await;
    let mut plain = RawClient::v5(addr, "norap").await;
    plain.subscribe(1, &[SubFilter::new("rap/t", 1)]).await;

    let mut publ = RawClient::v5(addr, "rap-pub").await;
    publ.publish(&Publish::new("rap/t", 0, b"r").retain(true))
        .await;
    publ.publish(&Publish::new("rap/t", 0, b"n")).await;

    let a = rap.expect_publish(RECV_TIMEOUT).await;
    let b = rap.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        (a.payload.as_slice(), a.retain),
        (&b"r"[..], true),
        "RAP=1 keeps RETAIN=1"
    );
    assert_eq!((b.payload.as_slice(), b.retain), (&b"n"[..], false));
    let a = plain.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(
        (a.payload.as_slice(), a.retain),
        (&b"r"[..], false),
        "RAP=0 clears RETAIN"
    );
}
