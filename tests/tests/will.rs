//! Will messages, including v5 DISCONNECT 0x04 and Will Delay Interval.

use std::time::{Duration, Instant};

use skein_tests::clients::v3;
use skein_tests::codec::{self, Props};
use skein_tests::{Connect, Node, Proto, RawClient, Will, RECV_TIMEOUT};

async fn watcher(node: &Node, topic: &str) -> v3::Client {
    let mut w = v3::Client::connect(node.mqtt_addr(), &skein_tests::unique_id("watcher")).await;
    w.subscribe(topic, v3::QoS::AtLeastOnce).await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_abnormal_disconnect() {
    let node = Node::start();
    for proto in [Proto::V311, Proto::V5] {
        let topic = format!("will/{proto:?}");
        let mut w = watcher(&node, &topic).await;
        let (c, _, _) = RawClient::connect_ok(
            node.mqtt_addr(),
            &Connect::new(proto, "dying").will(Will::new(&topic, b"gone").qos(1)),
        )
        .await;
        c.drop_connection();
        let p = w.recv().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            (topic.as_str(), &b"gone"[..])
        );
        assert_eq!(p.qos, v3::QoS::AtLeastOnce);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_keepalive_timeout() {
    let node = Node::start();
    let mut w = watcher(&node, "will/ka").await;
    let (_silent, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v311("silent")
            .keep_alive(1)
            .will(Will::new("will/ka", b"timeout")),
    )
    .await;
    let p = w.recv_within(Duration::from_secs(5)).await;
    assert_eq!(&p.payload[..], b"timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_is_retained() {
    let node = Node::start();
    let (c, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v311("rw").will(Will::new("will/ret", b"offline").qos(1).retain(true)),
    )
    .await;
    let mut w = watcher(&node, "will/ret").await;
    c.drop_connection();
    let live = w.recv().await;
    assert_eq!(&live.payload[..], b"offline");
    // a later subscriber gets it as retained
    let mut late = v3::Client::connect(node.mqtt_addr(), "late").await;
    late.subscribe("will/ret", v3::QoS::AtLeastOnce).await;
    let p = late.recv().await;
    assert_eq!((&p.payload[..], p.retain), (&b"offline"[..], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_will_after_normal_disconnect() {
    let node = Node::start();
    for proto in [Proto::V311, Proto::V5] {
        let topic = format!("nowill/{proto:?}");
        let mut w = watcher(&node, &topic).await;
        let (c, _, _) = RawClient::connect_ok(
            node.mqtt_addr(),
            &Connect::new(proto, "polite").will(Will::new(&topic, b"should not")),
        )
        .await;
        c.disconnect().await;
        // bounded wait to show the will is NOT published
        w.expect_no_publish(Duration::from_millis(700)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_with_will_message_publishes_will() {
    let node = Node::start();
    let mut w = watcher(&node, "will/0x04").await;
    let (mut c, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v5("leaver").will(Will::new("will/0x04", b"asked for it")),
    )
    .await;
    c.send(&codec::disconnect(Some(0x04), &Props::new())).await;
    let p = w.recv().await;
    assert_eq!(&p.payload[..], b"asked for it");
    c.expect_closed(RECV_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_cancelled_by_reconnect() {
    let node = Node::start();
    let mut w = watcher(&node, "will/delay/re").await;
    let connect = Connect::v5("comeback")
        .persistent(60)
        .will(Will::new("will/delay/re", b"late").delay(2));
    let (c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    let dropped = Instant::now();
    c.drop_connection();
    // reconnect well within the delay
    tokio::time::sleep(Duration::from_millis(300)).await; // let the server notice the drop
    let (mut c2, sp, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v5("comeback").persistent(60)).await;
    assert!(sp, "session must still be present");
    assert!(
        dropped.elapsed() < Duration::from_secs(2),
        "test too slow to reconnect within the delay"
    );
    // bounded wait past the 2 s delay: no will
    w.expect_no_publish(Duration::from_millis(3000)).await;
    c2.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_fires_after_delay() {
    let node = Node::start();
    let mut w = watcher(&node, "will/delay/fire").await;
    let (c, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v5("delayed")
            .persistent(60)
            .will(Will::new("will/delay/fire", b"finally").delay(2)),
    )
    .await;
    let dropped = Instant::now();
    c.drop_connection();
    let p = w.recv_within(Duration::from_secs(6)).await;
    let took = dropped.elapsed();
    assert_eq!(&p.payload[..], b"finally");
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_millis(5500),
        "will with 2 s delay published after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_published_at_session_end_when_expiry_shorter_than_delay() {
    let node = Node::start();
    let mut w = watcher(&node, "will/delay/expiry").await;
    let (c, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v5("shortlived")
            .persistent(1)
            .will(Will::new("will/delay/expiry", b"session over").delay(10)),
    )
    .await;
    let dropped = Instant::now();
    c.drop_connection();
    let p = w.recv_within(Duration::from_secs(6)).await;
    let took = dropped.elapsed();
    assert_eq!(&p.payload[..], b"session over");
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_millis(5500),
        "session expiry 1 s < will delay 10 s: will expected at ~1 s, got {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_with_clean_session_fires_on_close() {
    // Session expiry 0: the session ends with the connection, so the will is
    // published right away even though the will delay is long.
    let node = Node::start();
    let mut w = watcher(&node, "will/delay/zero").await;
    let (c, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v5("zero").will(Will::new("will/delay/zero", b"now").delay(30)),
    )
    .await;
    c.drop_connection();
    let p = w.recv_within(Duration::from_secs(3)).await;
    assert_eq!(&p.payload[..], b"now");
}
