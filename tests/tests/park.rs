//! Parked connections (park_idle_ms): an idle connection gives up its task and waits in
//! the parker; everything that can happen to a connection must still happen to it.

use std::time::{Duration, Instant};

use skein_tests::codec::{self, SubFilter};
use skein_tests::{http_request, Connect, Node, Packet, Proto, Publish, RawClient, Will};
use skein_tests::{metric_sum, unique_id, RECV_TIMEOUT};

const PARK_MS: u64 = 50;

fn node() -> Node {
    Node::builder()
        .env("SKEIN_PARK_IDLE_MS", PARK_MS)
        .env("RUST_LOG", "skein_broker=debug")
        .start()
}

/// Waits until at least `n` connections are parked.
async fn wait_parked(node: &Node, n: usize) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let parked = metric_sum(node.http_addr(), "skein_connections_parked", &[]).await;
        if parked >= n as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{parked} connections parked, expected {n}\nstderr:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn subscriber(node: &Node, proto: Proto, id: &str, filter: &str, qos: u8) -> RawClient {
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, id)).await;
    let suback = c.subscribe(1, &[SubFilter::new(filter, qos)]).await;
    assert_eq!(suback, vec![qos]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_subscriber_receives_what_is_published_and_acks_it() {
    let node = node();
    let mut sub = subscriber(&node, Proto::V5, &unique_id("psub"), "park/t", 1).await;
    let mut publ = RawClient::v5(node.mqtt_addr(), &unique_id("ppub")).await;
    wait_parked(&node, 2).await;
    assert!(metric_sum(node.http_addr(), "skein_connection_parks_total", &[]).await >= 2.0);

    // QoS 1 each way: the PUBLISH resumes the publisher (input), the delivery resumes
    // the subscriber (its session wakes it), and the PUBACKs reach parked peers again.
    for round in 0..3u16 {
        publ.publish(&Publish::new("park/t", 1, b"hello").pkid(round + 1))
            .await;
        let p = sub.expect_publish(RECV_TIMEOUT).await;
        assert_eq!(&p.payload[..], b"hello");
        sub.send(&codec::puback(p.pkid)).await;
        match publ.expect(RECV_TIMEOUT).await {
            Packet::PubAck { pkid, .. } => assert_eq!(pkid, round + 1),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        wait_parked(&node, 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_gets_its_pingresp() {
    let node = node();
    let mut c = RawClient::v311(node.mqtt_addr(), &unique_id("pping")).await;
    for _ in 0..3 {
        wait_parked(&node, 1).await;
        c.ping().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_enforced_while_parked() {
    let node = node();
    for proto in [Proto::V311, Proto::V5] {
        let id = unique_id("pka");
        let mut c = RawClient::tcp(node.mqtt_addr(), proto).await;
        c.send(&Connect::new(proto, &id).keep_alive(1).encode())
            .await;
        assert!(matches!(
            c.expect(RECV_TIMEOUT).await,
            Packet::ConnAck { code: 0, .. }
        ));
        let since = Instant::now();
        wait_parked(&node, 1).await;
        let (seen, took) = c.expect_closed_timed(since, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(1400) && took <= Duration::from_millis(3000),
            "{proto:?}: keep alive 1 s, closed after {took:?} (expected 1.5 s)"
        );
        if proto.is_v5() {
            assert!(
                matches!(seen.as_slice(), [Packet::Disconnect { reason: 0x8D, .. }]),
                "{seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_taken_over() {
    let node = node();
    let id = unique_id("ptake");
    let (mut old, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5(&id)).await;
    wait_parked(&node, 1).await;
    let (mut new, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5(&id)).await;
    old.expect_disconnect(0x8E, RECV_TIMEOUT).await;
    new.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_kicked_by_the_admin_api() {
    let node = node();
    let id = unique_id("pkick");
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5(&id)).await;
    wait_parked(&node, 1).await;
    let (status, body) = http_request(
        node.http_addr(),
        "DELETE",
        &format!("/api/v1/clients/{id}"),
        &[],
        "",
    )
    .await
    .expect("DELETE");
    assert_eq!(status, 204, "{body}");
    c.expect_disconnect(0x98, RECV_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_vanishes_leaves_its_will() {
    let node = node();
    let mut watcher = subscriber(&node, Proto::V311, &unique_id("pwatch"), "park/will", 0).await;
    let (c, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &Connect::v311(&unique_id("pwill")).will(Will::new("park/will", b"gone")),
    )
    .await;
    wait_parked(&node, 2).await;
    c.drop_connection();
    let p = watcher.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_are_told_on_shutdown() {
    let mut node = node();
    let (mut c5, _, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v5(&unique_id("pterm5"))).await;
    let mut c3 = RawClient::v311(node.mqtt_addr(), &unique_id("pterm3")).await;
    wait_parked(&node, 2).await;
    let status = node.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", node.stderr());
    c5.expect_disconnect(0x8B, RECV_TIMEOUT).await;
    let seen = c3.expect_closed(RECV_TIMEOUT).await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_resends_nothing_twice() {
    // A subscriber that parks with a QoS 1 message unacknowledged gets it once, and
    // again (DUP) only after reconnecting.
    let node = node();
    let id = unique_id("pinflight");
    let (mut sub, _, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v311(&id).clean(false)).await;
    sub.subscribe(1, &[SubFilter::new("park/q", 1)]).await;
    let mut publ = RawClient::v311(node.mqtt_addr(), &unique_id("pinpub")).await;
    publ.publish(&Publish::new("park/q", 1, b"once").pkid(7))
        .await;
    let first = sub.expect_publish(RECV_TIMEOUT).await;
    assert!(!first.dup);
    wait_parked(&node, 2).await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
    sub.drop_connection();
    let (mut again, present, _) =
        RawClient::connect_ok(node.mqtt_addr(), &Connect::v311(&id).clean(false)).await;
    assert!(present);
    let resent = again.expect_publish(RECV_TIMEOUT).await;
    assert!(resent.dup);
    assert_eq!(resent.pkid, first.pkid);
}
