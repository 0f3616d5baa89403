//! System events as MQTT messages: the `$events/...` and `$EVENT.*` dialects and presence
//! topics, observed by a real subscriber while real clients connect, misbehave and leave.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_tests::codec;
use skein_tests::{
    metric_sum, unique_id, Connect, Node, Packet, Proto, Publish, RawClient, SubFilter, Will,
    QUIET, RECV_TIMEOUT,
};

#[path = "events_mqtt/watcher.rs"]
mod watcher;

use watcher::{assert_recent_ms, is_u64, node_with_both_dialects, Watcher, DOLLAR_EVENT_TOPICS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_events_connected_subscribed_unsubscribed_fields_and_no_password() {
    let node = node_with_both_dialects(&[]);
    let node_addr = node.mqtt_addr().to_string();
    let mut w = Watcher::everything(&node).await;

    let id = unique_id("dev");
    let mut connect = Connect::v5(&id)
        .keep_alive(45)
        .will(Will::new("will/t", b"bye").qos(1));
    connect.username = Some("sample_user".into());
    connect.password = Some(b"hunter2-secret".to_vec());
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;

    let v = w.about("$events/client_connected", &id).await;
    assert_eq!(v["clientid"], id.as_str());
    assert_eq!(v["username"], "sample_user");
    assert_eq!(v["event"], "client.connected");
    assert_eq!(v["clean_start"], true);
    assert_recent_ms(&v["connected_at"]);
    assert_eq!(v["keepalive"], 45);
    assert_eq!(v["node"], node_addr.as_str());
    assert_eq!(v["node_name"], "skein-1");
    assert_eq!(v["proto_ver"], 5);
    assert_recent_ms(&v["timestamp"]);

    let v = w.about("$EVENT.CONNECT", &id).await;
    assert_eq!(v["protocol"], "MQTT");
    assert_eq!(v["clientIp"], "127.0.0.1");
    assert_eq!(v["nodeIp"], "127.0.0.1");
    assert_eq!(v["version"], "MQTT_5");
    assert_eq!(v["keepalive"], 45);
    assert_eq!(v["cleanSession"], true);
    assert_eq!(v["auth"], json!({ "username": "sample_user" }));
    assert_eq!(
        v["will"],
        json!({ "isRetain": false, "willTopic": "will/t", "willQos": 1, "willMessage": "bye" })
    );
    assert_recent_ms(&v["timestamp"]);

    let codes = c.subscribe(9, &[SubFilter::new("home/#", 1)]).await;
    assert_eq!(codes, [1]);
    let v = w.about("$events/session_subscribed", &id).await;
    assert_eq!(v["event"], "client.subscribed");
    assert_eq!(v["topic"], "home/#");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["node"], node_addr.as_str());
    let peerhost = v["peerhost"].as_str().expect("peerhost");
    assert!(peerhost.starts_with("127.0.0.1:"), "{peerhost}");
    assert_recent_ms(&v["timestamp"]);
    let v = w.about("$EVENT.SUBSCRIBE", &id).await;
    assert_eq!(v["messageId"], 9);
    assert_eq!(v["topic"], "home/#");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["protocol"], "MQTT");

    c.send(&codec::unsubscribe(Proto::V5, 10, &["home/#"]))
        .await;
    c.recv_matching(RECV_TIMEOUT, |p| matches!(p, Packet::UnsubAck { .. }))
        .await;
    let v = w.about("$events/session_unsubscribed", &id).await;
    assert_eq!(v["event"], "client.unsubscribed");
    assert_eq!(v["topic"], "home/#");
    assert_eq!(v["qos"], 1, "the QoS of the removed subscription");
    let v = w.about("$EVENT.UNSUBSCRIBE", &id).await;
    assert_eq!(v["messageId"], 10);
    assert_eq!(v["topic"], "home/#");

    c.disconnect().await;
    let v = w.about("$events/client_disconnected", &id).await;
    assert_eq!(v["event"], "client.disconnected");
    assert_eq!(v["reason"], "normal");
    assert_eq!(v["username"], "sample_user");
    assert_eq!(v["node"], node_addr.as_str());
    assert_eq!(v["sockname"], node_addr.as_str());
    assert!(v["peername"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_recent_ms(&v["disconnected_at"]);
    assert!(v.get("takeover_node").is_none());
    w.about("$EVENT.CLOSE", &id).await;

    for text in w.raw_payloads() {
        assert!(
            !text.contains("hunter2"),
            "an event carries the password: {text}"
        );
        assert!(!text.contains("password"), "{text}");
    }
}

/// Waits for the end of `id` in both dialects and checks the reasons.
async fn expect_end(
    w: &mut Watcher,
    id: &str,
    dollar_events: &str,
    dollar_event: &str,
) -> (Value, Value) {
    let e = w
        .wait("$events/client_disconnected", |v| {
            v["clientid"] == id && v["reason"] == dollar_events
        })
        .await;
    assert_eq!(e["event"], "client.disconnected");
    let c = w
        .wait("$EVENT.CLOSE", |v| {
            v["clientId"] == id && v["reason"] == dollar_event
        })
        .await;
    assert_eq!(c["protocol"], "MQTT");
    assert!(c["messageId"].is_null());
    assert!(is_u64(&c["timestamp"]));
    (e, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disconnect_reason_in_both_dialects() {
    let node = node_with_both_dialects(&[("SKEIN_MAX_CLIENT_ID_LEN", "32")]);
    let addr = node.mqtt_addr();
    let node_addr = addr.to_string();
    let mut w = Watcher::everything(&node).await;

    // normal: the client sent DISCONNECT ($EVENT.DISCONNECT, then CLOSE "disconnect").
    let id = unique_id("normal");
    RawClient::v5(addr, &id).await.disconnect().await;
    expect_end(&mut w, &id, "normal", "disconnect").await;
    let d = w.about("$EVENT.DISCONNECT", &id).await;
    assert_eq!(d["clientIp"], "127.0.0.1");
    assert_eq!(d["nodeIp"], "127.0.0.1");
    assert!(is_u64(&d["timestamp"]));

    // tcp_closed: the socket went away without DISCONNECT.
    let id = unique_id("tcp");
    RawClient::v311(addr, &id).await.drop_connection();
    expect_end(&mut w, &id, "tcp_closed", "normal").await;

    // takeovered: the same client id connected again on this node.
    let id = unique_id("twin");
    let mut old = RawClient::v5(addr, &id).await;
    let new = RawClient::v5(addr, &id).await;
    old.expect_disconnect(0x8E, RECV_TIMEOUT).await;
    let (e, c) = expect_end(&mut w, &id, "takeovered", "other_kicked").await;
    assert_eq!(e["node"], node_addr.as_str());
    assert_eq!(e["takeover_node"], node_addr.as_str());
    assert_eq!(c["nodeIp"], "127.0.0.1");
    assert_eq!(c["takeoverNode"], node_addr.as_str());
    new.disconnect().await;
    expect_end(&mut w, &id, "normal", "disconnect").await;

    // keepalive_timeout: nothing within 1.5 x keepalive.
    let id = unique_id("sleepy");
    let (_sleepy, _, _) = RawClient::connect_ok(addr, &Connect::v311(&id).keep_alive(1)).await;
    expect_end(&mut w, &id, "keepalive_timeout", "timeout").await;

    // ping_without_connect: the socket never sent CONNECT, so no client id.
    let mut raw = RawClient::tcp(addr, Proto::V311).await;
    raw.send(&codec::pingreq()).await;
    raw.expect_closed(RECV_TIMEOUT).await;
    let (e, _) = expect_end(&mut w, "", "ping_without_connect", "normal").await;
    assert!(e["peername"].as_str().unwrap().starts_with("127.0.0.1:"));

    // client_id_too_long (the limit is 32 here).
    let id = "x".repeat(40);
    let (_c, p) = RawClient::connect(addr, &Connect::v5(&id)).await;
    assert!(matches!(p, Packet::ConnAck { code: 0x85, .. }), "{p:?}");
    expect_end(&mut w, &id, "client_id_too_long", "not_authorized").await;

    // client_id_required: an empty client id asking for a persistent session.
    let (_c, p) = RawClient::connect(addr, &Connect::v311("").clean(false)).await;
    assert!(matches!(p, Packet::ConnAck { code: 2, .. }), "{p:?}");
    expect_end(&mut w, "", "client_id_required", "not_authorized").await;

    // bad_will_message: a will topic with a wildcard.
    let id = unique_id("badwill");
    let (_c, p) = RawClient::connect(addr, &Connect::v5(&id).will(Will::new("a/+", b"x"))).await;
    assert!(matches!(p, Packet::ConnAck { code: 0x90, .. }), "{p:?}");
    expect_end(&mut w, &id, "bad_will_message", "kicked").await;

    // protocol_error: a second CONNECT.
    let id = unique_id("twice");
    let mut c = RawClient::v311(addr, &id).await;
    c.send(&Connect::v311(&id).encode()).await;
    c.expect_closed(RECV_TIMEOUT).await;
    expect_end(&mut w, &id, "protocol_error", "kicked").await;

    // A refused connection was never connected: no client_connected for it.
    w.expect_none(QUIET, "$events/client_connected", |v| {
        v["clientid"] == "x".repeat(40)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connection_is_an_event() {
    // The watcher takes the only connection slot.
    let node = node_with_both_dialects(&[("SKEIN_MAX_CONNECTIONS", "1")]);
    let mut w = Watcher::everything(&node).await;
    let id = unique_id("extra");
    let (_c, p) = RawClient::connect(node.mqtt_addr(), &Connect::v5(&id)).await;
    assert!(matches!(p, Packet::ConnAck { code: 0x97, .. }), "{p:?}");
    let (e, _) = expect_end(&mut w, &id, "too_many_connection", "kicked").await;
    assert_eq!(e["node"], node.mqtt_addr().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_is_published_before_the_node_stops() {
    // QoS 1 events reach the watcher's persistent session even while it is being shut
    // down too, and wait on disk for it.
    let mut node = node_with_both_dialects(&[("SKEIN_EVENTS_QOS", "1")]);
    let watcher = Connect::v5("go-away-watcher").persistent(3600);
    let filters = ["$events/client_disconnected", "$EVENT.CLOSE"];
    let w = Watcher::connect(&node, &watcher, &filters).await;
    let victim = RawClient::v5(node.mqtt_addr(), "victim").await;

    let status = tokio::task::block_in_place(|| node.terminate());
    assert!(status.success(), "{status:?}");
    drop((w, victim));
    tokio::task::block_in_place(|| node.restart());

    let (raw, present, _) = RawClient::connect_ok(node.mqtt_addr(), &watcher).await;
    assert!(present, "the watcher's session survived the restart");
    let mut w = Watcher::on(raw);
    // Acknowledge what arrives, like a real QoS 1 subscriber.
    let (e, c) = expect_end_acked(&mut w, "victim").await;
    assert_eq!(e["reason"], "go_away");
    assert_eq!(c["reason"], "kicked");
}

/// Like `expect_end` for go_away, acknowledging QoS 1 event messages as they come.
async fn expect_end_acked(w: &mut Watcher, id: &str) -> (Value, Value) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    let (mut e, mut c) = (None, None);
    while e.is_none() || c.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = match w.raw.recv(left).await {
            Ok(Packet::Publish(p)) => p,
            Ok(_) => continue,
            Err(err) => panic!("events for {id} missing ({err:?}): {e:?} {c:?}"),
        };
        assert_eq!(p.qos, 1, "SKEIN_EVENTS_QOS=1");
        w.raw.send(&codec::puback(p.pkid)).await;
        let v: Value = serde_json::from_slice(&p.payload).unwrap();
        match p.topic.as_str() {
            "$events/client_disconnected" if v["clientid"] == id => e = Some(v),
            "$EVENT.CLOSE" if v["clientId"] == id => c = Some(v),
            _ => {}
        }
    }
    (e.unwrap(), c.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_event_message_events_ping_ack_and_offline() {
    let node = node_with_both_dialects(&[]);
    let addr = node.mqtt_addr();
    let mut w = Watcher::start(&node, &DOLLAR_EVENT_TOPICS).await;

    let sub_id = unique_id("sub");
    let mut sub = RawClient::v311(addr, &sub_id).await;
    sub.subscribe(1, &[SubFilter::new("m/#", 1)]).await;
    let off_id = unique_id("off");
    let mut off = RawClient::connect_ok(addr, &Connect::v311(&off_id).persistent(0))
        .await
        .0;
    off.subscribe(1, &[SubFilter::new("o/#", 1)]).await;
    off.disconnect().await;
    w.about("$EVENT.CLOSE", &off_id).await;

    let pub_id = unique_id("pub");
    let mut publ = RawClient::v311(addr, &pub_id).await;
    publ.publish(&Publish::new("m/1", 1, br#"{"t": 1}"#).pkid(7))
        .await;
    publ.recv_matching(RECV_TIMEOUT, |p| {
        matches!(p, Packet::PubAck { pkid: 7, .. })
    })
    .await;
    let v = w.about("$EVENT.PUBLISH", &pub_id).await;
    assert_eq!(v["protocol"], "MQTT");
    assert_eq!(v["messageId"], 7);
    assert_eq!(v["topic"], "m/1");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["retain"], false);
    assert_eq!(v["payload"], json!({ "t": 1 }));
    assert!(v.get("payloadEncoding").is_none());
    assert_eq!(v["clientIp"], "127.0.0.1");
    assert_eq!(v["nodeIp"], "127.0.0.1");
    assert!(is_u64(&v["timestamp"]));

    let delivered = sub.expect_publish(RECV_TIMEOUT).await;
    sub.send(&codec::puback(delivered.pkid)).await;
    let v = w.about("$EVENT.ACK", &sub_id).await;
    assert_eq!(v["messageId"], delivered.pkid);
    assert_eq!(v["topic"], "m/1");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["payload"], json!({ "t": 1 }));
    assert_eq!(v["clientIp"], "127.0.0.1");

    // Binary payloads are base64.
    publ.publish(&Publish::new("m/2", 0, &[0xde, 0xad, 0xbe, 0xef]))
        .await;
    let v = w.wait("$EVENT.PUBLISH", |v| v["topic"] == "m/2").await;
    assert_eq!(v["payload"], "3q2+7w==");
    assert_eq!(v["payloadEncoding"], "base64");
    assert_eq!(v["qos"], 0);
    assert!(v["messageId"].is_null(), "QoS 0 has no packet id: {v}");

    publ.publish(&Publish::new("o/1", 1, b"hello").pkid(8))
        .await;
    let v = w.about("$EVENT.OFFLINE", &off_id).await;
    assert_eq!(v["topic"], "o/1");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["retain"], false);
    assert_eq!(v["payload"], "hello");
    assert!(v["messageId"].is_null());
    assert_eq!(
        v["clientIp"], "127.0.0.1",
        "the offline client's last address"
    );
    assert_eq!(v["protocol"], "MQTT");

    publ.ping().await;
    let v = w.about("$EVENT.PING", &pub_id).await;
    assert_eq!(v["clientIp"], "127.0.0.1");
    assert!(is_u64(&v["timestamp"]));

    // The event messages themselves raise no events ($EVENT.PUBLISH of an event).
    w.expect_none(QUIET, "$EVENT.PUBLISH", |v| {
        v["topic"].as_str().is_some_and(|t| t.starts_with("$EVENT"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_online_offline_takeover_and_retain() {
    let node = Node::builder()
        .env(
            "SKEIN_EVENTS_PRESENCE_TOPIC",
            "presence/{username}/{clientid}",
        )
        .start();
    let addr = node.mqtt_addr();
    let mut w = Watcher::start(&node, &["presence/#"]).await;
    let id = unique_id("dev");
    let topic = format!("presence/DU_1/{id}");
    let with_user = || {
        let mut c = Connect::v5(&id);
        c.username = Some("DU_1".into());
        c
    };
    let online = |v: &Value| *v == json!({ "online": true });
    let offline = |v: &Value| *v == json!({ "online": false });

    let (mut first, _, _) = RawClient::connect_ok(addr, &with_user()).await;
    w.wait(&topic, online).await;

    // Takeover: the new connection is online; the old one's end must not say offline.
    let (second, _, _) = RawClient::connect_ok(addr, &with_user()).await;
    w.wait(&topic, online).await;
    first.expect_disconnect(0x8E, RECV_TIMEOUT).await;
    w.expect_none(QUIET, &topic, offline).await;
    let retained = retained_payload(&node, &topic).await;
    assert_eq!(retained, json!({ "online": true }));

    second.disconnect().await;
    w.wait(&topic, offline).await;
    let retained = retained_payload(&node, &topic).await;
    assert_eq!(retained, json!({ "online": false }));

    // No username: the template cannot be filled, nothing is published.
    let anon = unique_id("anon");
    RawClient::v5(addr, &anon).await.disconnect().await;
    w.read_for(QUIET).await;
    assert!(
        w.seen.iter().all(|(t, _, _)| !t.contains(&anon)),
        "{:?}",
        w.raw_payloads()
    );
}

/// The retained message on `topic`, as a fresh subscriber sees it.
async fn retained_payload(node: &Node, topic: &str) -> Value {
    let mut c = RawClient::v311(node.mqtt_addr(), &unique_id("retained")).await;
    c.subscribe(1, &[SubFilter::new(topic, 0)]).await;
    let p = c.expect_publish(RECV_TIMEOUT).await;
    assert!(p.retain, "presence messages are retained by default");
    serde_json::from_slice(&p.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_dialects_and_kinds_publish_nothing() {
    // $events off, $EVENT off (its default): nothing at all.
    let node = Node::builder()
        .env("SKEIN_EVENTS_DOLLAR_EVENTS", "0")
        .start();
    let mut w = Watcher::everything(&node).await;
    let id = unique_id("quiet");
    RawClient::v5(node.mqtt_addr(), &id)
        .await
        .disconnect()
        .await;
    w.expect_none(QUIET, "$events/client_connected", |_| true)
        .await;
    assert!(w.raw_payloads().is_empty(), "{:?}", w.raw_payloads());

    // Only the kinds asked for: client.disconnected yes, client.connected (raised before
    // it, on the same queue) no.
    let node = Node::builder()
        .env("SKEIN_EVENTS_DOLLAR_EVENTS_KINDS", "client.disconnected")
        .start();
    let mut w = Watcher::everything(&node).await;
    let id = unique_id("some");
    RawClient::v5(node.mqtt_addr(), &id)
        .await
        .disconnect()
        .await;
    w.about("$events/client_disconnected", &id).await;
    assert!(
        w.raw_payloads()
            .iter()
            .all(|t| t.contains("client.disconnected")),
        "{:?}",
        w.raw_payloads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_queue_drops_and_counts_without_blocking() {
    let node = Node::builder()
        .env("SKEIN_EVENTS_QUEUE_CAPACITY", "1")
        .env("SKEIN_MAX_QUEUED_MESSAGES", "100000")
        .env("SKEIN_MAX_SUBSCRIPTIONS_PER_SESSION", "100000")
        .start();
    let id = unique_id("burst");
    let mut w = Watcher::connect(&node, &Connect::v5(&id), &["$events/#"]).await;
    // Its own connect and subscribe events (with a queue of one, maybe not both).
    w.read_for(QUIET).await;
    let labels = ["dialect=\"$events\"", "reason=\"queue_full\""];
    let series = "skein_events_dropped_total";
    const N: usize = 1000;
    // A burst of N events from one SUBSCRIBE against a queue of one: the connection never
    // waits for the dialect, so most are dropped; every one is either published or counted.
    // (Retried with fresh filters in the unlikely case the dialect kept up with a burst.)
    for round in 0..5 {
        let before = metric_sum(node.http_addr(), series, &labels).await;
        let filters: Vec<SubFilter> = (0..N)
            .map(|i| SubFilter::new(&format!("f{round}/{i}"), 0))
            .collect();
        let started = Instant::now();
        let codes = w.raw.subscribe(2 + round as u16, &filters).await;
        assert_eq!(codes.len(), N);
        assert!(started.elapsed() < RECV_TIMEOUT, "SUBACK was not delayed");
        let prefix = format!("f{round}/");
        let mut received = 0usize;
        let mut dropped = 0f64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            w.read_for(Duration::from_millis(200)).await;
            received += std::mem::take(&mut w.seen)
                .into_iter()
                .filter(|(t, v, _)| {
                    t == "$events/session_subscribed"
                        && v["topic"].as_str().is_some_and(|x| x.starts_with(&prefix))
                })
                .count();
            dropped = metric_sum(node.http_addr(), series, &labels).await - before;
            if received + dropped as usize == N {
                break;
            }
        }
        assert_eq!(
            received + dropped as usize,
            N,
            "published {received} + dropped {dropped} != {N}"
        );
        if dropped > 0.0 {
            return;
        }
    }
    panic!("the dialect kept up with every burst; no drop was provoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_clients_may_subscribe_to_event_topics() {
    // Every test client is on loopback (the username allow-list is unit-tested in
    // events::access): SUBACK grants, in v3 and v5, plain and shared.
    let node = Node::start();
    let mut c = RawClient::v5(node.mqtt_addr(), &unique_id("lo5")).await;
    let codes = c
        .subscribe(
            1,
            &[
                SubFilter::new("$events/#", 1),
                SubFilter::new("$EVENT.CONNECT", 0),
                SubFilter::new("$share/g/$events/client_connected", 1),
            ],
        )
        .await;
    assert_eq!(codes, [1, 0, 1]);
    let mut c = RawClient::v311(node.mqtt_addr(), &unique_id("lo3")).await;
    let codes = c.subscribe(1, &[SubFilter::new("$EVENT.CLOSE", 1)]).await;
    assert_eq!(codes, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_via_the_admin_api_in_both_dialects() {
    let node = node_with_both_dialects(&[]);
    let mut w = Watcher::everything(&node).await;

    // MQTT 5: DISCONNECT 0x98 (administrative action), then the close.
    let id = unique_id("kick5");
    let mut victim = RawClient::v5(node.mqtt_addr(), &id).await;
    let path = format!("/api/v1/clients/{id}");
    let (status, body) = skein_tests::http_request(node.http_addr(), "DELETE", &path, &[], "")
        .await
        .expect("DELETE");
    assert_eq!(status, 204, "{body}");
    victim.expect_disconnect(0x98, RECV_TIMEOUT).await;
    let (e, c) = expect_end(&mut w, &id, "kicked", "kicked").await;
    assert_eq!(e["node"], node.mqtt_addr().to_string().as_str());
    assert!(e.get("takeover_node").is_none(), "{e}");
    assert_eq!(c["clientIp"], "127.0.0.1");
    assert!(c.get("takeoverNode").is_none(), "{c}");

    // MQTT 3.1.1 has no server DISCONNECT: the socket just closes, for the same reason.
    let id = unique_id("kick3");
    let mut victim = RawClient::v311(node.mqtt_addr(), &id).await;
    let path = format!("/api/v1/clients/{id}");
    let (status, body) = skein_tests::http_request(node.http_addr(), "DELETE", &path, &[], "")
        .await
        .expect("DELETE");
    assert_eq!(status, 204, "{body}");
    assert_eq!(victim.expect_closed(RECV_TIMEOUT).await, []);
    expect_end(&mut w, &id, "kicked", "kicked").await;

    // The server's DISCONNECT is not the client's: no $EVENT.DISCONNECT for either.
    w.expect_none(QUIET, "$EVENT.DISCONNECT", |v| {
        v["clientId"]
            .as_str()
            .is_some_and(|c| c.starts_with("kick"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_forge_events() {
    let node = Node::builder()
        .env("SKEIN_EVENTS_DOLLAR_EVENT", "true")
        .start();
    let mut watcher = RawClient::v5(node.mqtt_addr(), "forge-watch").await;
    watcher
        .subscribe(
            1,
            &[
                SubFilter::new("$events/#", 1),
                SubFilter::new("$EVENT.CLOSE", 1),
            ],
        )
        .await;
    for (proto, expected) in [(Proto::V5, 0x87u8), (Proto::V311, 0x00)] {
        let (mut forger, _, _) =
            RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, "forger")).await;
        let fake = br#"{"clientid":"victim","event":"client.disconnected","reason":"kicked"}"#;
        for topic in ["$events/client_disconnected", "$EVENT.CLOSE"] {
            forger.publish(&Publish::new(topic, 1, fake)).await;
            match forger.recv(RECV_TIMEOUT).await {
                Ok(Packet::PubAck { reason, .. }) => assert_eq!(reason, expected, "{proto:?}"),
                other => panic!("{proto:?}: expected PUBACK, got {other:?}"),
            }
        }
        forger.disconnect().await;
    }
    // The watcher sees the forger's real events, never the forged payload.
    let deadline = Instant::now() + QUIET;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match watcher.recv(left).await {
            Ok(Packet::Publish(p)) => {
                let body = String::from_utf8_lossy(&p.payload);
                assert!(!body.contains("victim"), "forged event delivered: {body}");
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_the_one_in_force() {
    let node = node_with_both_dialects(&[("SKEIN_MAX_KEEPALIVE", "20")]);
    let mut w = Watcher::everything(&node).await;
    // MQTT 5 clients asking for more (or for none) get the cap as Server Keep Alive.
    for asked in [100, 0] {
        let id = unique_id("capped");
        let connect = Connect::v5(&id).keep_alive(asked);
        let (_c, _, props) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
        assert_eq!(props.int(codec::prop::SERVER_KEEP_ALIVE), Some(20));
        let v = w.about("$events/client_connected", &id).await;
        assert_eq!(v["keepalive"], 20, "asked {asked}");
        let v = w.about("$EVENT.CONNECT", &id).await;
        assert_eq!(v["keepalive"], 20, "asked {asked}");
    }
    // Within the cap: as asked. A 3.x client can't be told: as asked too.
    for connect in [
        Connect::v5("within").keep_alive(15),
        Connect::v311("old").keep_alive(100),
    ] {
        let (_c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
        let v = w
            .about("$events/client_connected", &connect.client_id)
            .await;
        assert_eq!(v["keepalive"], connect.keep_alive);
    }
}

/// CONNECT bytes with the connect flags byte replaced (`level` 4 or 5 right after "MQTT").
fn with_flags(connect: &Connect, flags: impl Fn(u8) -> u8) -> Vec<u8> {
    let mut bytes = connect.encode();
    assert!(bytes[1] < 0x80, "one-byte remaining length");
    // type, length, 00 04 'M' 'Q' 'T' 'T', level, flags
    bytes[9] = flags(bytes[9]);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wills_are_bad_will_message() {
    let node = node_with_both_dialects(&[]);
    let addr = node.mqtt_addr();
    let mut w = Watcher::everything(&node).await;

    // MQTT 5, will QoS 3: CONNACK 0x81, then the connection is closed.
    let v5 = Connect::v5(&unique_id("qos3")).will(Will::new("w/t", b"x").qos(3));
    let mut raw = RawClient::tcp(addr, Proto::V5).await;
    raw.send(&v5.encode()).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck { code: 0x81, .. }]),
        "{seen:?}"
    );
    let (e, _) = expect_end(&mut w, "", "bad_will_message", "kicked").await;
    assert!(e["peername"].as_str().unwrap().starts_with("127.0.0.1:"));

    // MQTT 5, a will property that is not allowed there (Topic Alias).
    let mut will = Will::new("w/t", b"x");
    will.props
        .push(codec::prop::TOPIC_ALIAS, skein_tests::PropValue::U16(1));
    let mut raw = RawClient::tcp(addr, Proto::V5).await;
    raw.send(&Connect::v5(&unique_id("wprops")).will(will).encode())
        .await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck { code: 0x81, .. }]),
        "{seen:?}"
    );
    expect_end(&mut w, "", "bad_will_message", "kicked").await;

    // MQTT 3.1.1, will retain without the will flag: closed without a CONNACK.
    let v3 = with_flags(&Connect::v311(&unique_id("noflag")), |f| f | 0x20);
    let mut raw = RawClient::tcp(addr, Proto::V311).await;
    raw.send(&v3).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(seen.is_empty(), "{seen:?}");
    expect_end(&mut w, "", "bad_will_message", "kicked").await;

    // Other malformed CONNECTs are still protocol errors.
    let mut raw = RawClient::tcp(addr, Proto::V311).await;
    raw.send(&with_flags(&Connect::v311("reserved"), |f| f | 0x01))
        .await;
    raw.expect_closed(RECV_TIMEOUT).await;
    expect_end(&mut w, "", "protocol_error", "kicked").await;
}
