//! The webhook dialect: a real node POSTs JSON bodies (seed 004) to a real web server on
//! loopback while real MQTT clients connect, subscribe, publish and leave; and a web
//! server that never answers does not slow MQTT traffic down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use serde_json::Value;
use skein_tests::clients::v3;
use skein_tests::codec::{self, ack};
use skein_tests::{
    http_get, http_request, unique_id, Connect, Node, Packet, Publish, RawClient, SubFilter, QUIET,
    RECV_TIMEOUT,
};

/// A web server on 127.0.0.1 that keeps every JSON body POSTed to `/hook`.
#[derive(Clone, Default)]
struct Hook {
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> (Hook, SocketAddr) {
        let hook = Hook::default();
        let keep = hook.clone();
        let app = Router::new().route(
            "/hook",
            post(move |body: String| {
                let keep = keep.clone();
                async move {
                    let value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {body}"));
                    keep.bodies.lock().unwrap().push(value);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hook, addr)
    }

    /// The first body for which `pick` holds, waiting up to 10 s.
    async fn find(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.bodies.lock().unwrap().iter().find(|v| pick(v)) {
                return v.clone();
            }
            if Instant::now() > deadline {
                panic!("no {what} body; got {:#?}", self.bodies.lock().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn action(&self, action: &str, key: &str, client: &str) -> Value {
        self.find(&format!("{action} of {client}"), |v| {
            v["action"] == action && v[key] == client
        })
        .await
    }

    /// Every body received so far for which `pick` holds, in arrival order.
    fn all(&self, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies.iter().filter(|v| pick(v)).cloned().collect()
    }

    /// Actions about `client_id` so far, in arrival order.
    fn actions_of(&self, client_id: &str) -> Vec<String> {
        self.all(|v| v["clientid"] == client_id)
            .iter()
            .map(|v| v["action"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

fn hook_node(addr: SocketAddr) -> skein_tests::NodeBuilder {
    Node::builder().env("SKEIN_WEBHOOK_URLS", format!("http://{addr}/hook"))
}

/// Keys of a client_connect body, which client_connack and client_connected extend.
const CONNECTION: &[&str] = &[
    "action",
    "node",
    "clientid",
    "username",
    "ipaddress",
    "keepalive",
    "proto_ver",
];

/// Keys of a message, in message_publish, _delivered and _acked bodies.
const MESSAGE: &[&str] = &[
    "from_client_id",
    "from_username",
    "topic",
    "qos",
    "retain",
    "payload",
    "ts",
];

/// Asserts `body` has exactly these keys.
fn keys(body: &Value, expected: &[&str]) {
    let mut got: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(got, expected, "{body}");
}

#[tokio::test]
async fn bodies_follow_real_clients_field_by_field() {
    let (hook, addr) = Hook::start().await;
    let node = hook_node(addr).start();
    let node_field = node.mqtt_addr().to_string();
    let (sub_id, pub_id) = (unique_id("wh-sub"), unique_id("wh-pub"));

    let mut opts = v3::options(node.mqtt_addr(), &sub_id);
    opts.set_credentials("alice", "secret");
    let mut sub = v3::Client::connect_with(opts).await;
    sub.subscribe("wh/#", v3::QoS::AtLeastOnce).await;
    let mut opts = v3::options(node.mqtt_addr(), &pub_id);
    opts.set_credentials("bob", "secret");
    let mut publisher = v3::Client::connect_with(opts).await;
    publisher
        .publish("wh/t", v3::QoS::AtLeastOnce, false, "hello")
        .await;
    let got = sub.recv().await;
    assert_eq!(&got.payload[..], b"hello");

    let v = hook.action("client_connect", "clientid", &sub_id).await;
    keys(&v, CONNECTION);
    assert_eq!(v["node"], node_field);
    assert_eq!(v["username"], "alice");
    assert_eq!(v["ipaddress"], "127.0.0.1");
    assert_eq!(v["keepalive"], 30);
    assert_eq!(v["proto_ver"], 4);

    let v = hook.action("client_connack", "clientid", &sub_id).await;
    keys(&v, &[CONNECTION, &["conn_ack"]].concat());
    assert_eq!(v["conn_ack"], "success");

    let v = hook.action("client_connected", "clientid", &pub_id).await;
    keys(&v, &[CONNECTION, &["connected_at"]].concat());
    assert_eq!(v["username"], "bob");
    let v = hook.action("client_connected", "clientid", &sub_id).await;
    assert_eq!(v["username"], "alice");
    let connected_at = v["connected_at"]
        .as_u64()
        .expect("connected_at is an integer");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        connected_at <= now_s && connected_at + 60 > now_s,
        "seconds: {connected_at}"
    );

    for action in ["client_subscribe", "session_subscribed"] {
        let v = hook.action(action, "clientid", &sub_id).await;
        keys(
            &v,
            &["action", "node", "clientid", "username", "topic", "opts"],
        );
        assert_eq!(v["username"], "alice");
        assert_eq!(v["topic"], "wh/#");
        assert_eq!(v["opts"]["qos"], 1);
    }

    let v = hook
        .action("message_publish", "from_client_id", &pub_id)
        .await;
    keys(&v, &[&["action", "node"], MESSAGE].concat());
    assert_eq!(v["from_username"], "bob");
    assert_eq!(v["topic"], "wh/t");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["retain"], false);
    assert_eq!(v["payload"], "hello");
    let ts = v["ts"].as_u64().expect("ts is an integer");
    assert!(ts > 1_600_000_000_000, "milliseconds: {ts}");

    let v = hook.action("message_delivered", "clientid", &sub_id).await;
    keys(
        &v,
        &[&["action", "node", "clientid", "username"], MESSAGE].concat(),
    );
    assert_eq!(v["username"], "alice");
    assert_eq!(v["from_client_id"], pub_id.as_str());
    assert_eq!(v["from_username"], "bob", "the publisher's username");
    assert_eq!(v["payload"], "hello");
    assert_eq!(v["ts"], ts);

    let v = hook.action("message_acked", "clientid", &sub_id).await;
    keys(&v, &[&["action", "node", "clientid"], MESSAGE].concat());
    assert_eq!(v["from_client_id"], pub_id.as_str());
    assert_eq!(v["from_username"], "bob", "the publisher's username");
    assert_eq!(v["qos"], 1);

    sub.unsubscribe("wh/#").await;
    for action in ["client_unsubscribe", "session_unsubscribed"] {
        let v = hook.action(action, "clientid", &sub_id).await;
        keys(&v, &["action", "node", "clientid", "username", "topic"]);
        assert_eq!(v["topic"], "wh/#");
    }

    sub.disconnect().await;
    let v = hook
        .action("client_disconnected", "clientid", &sub_id)
        .await;
    keys(&v, &["action", "node", "clientid", "username", "reason"]);
    assert_eq!(v["reason"], "normal");
    // A clean MQTT 3.1.1 session ends with its connection.
    let v = hook.action("session_terminated", "clientid", &sub_id).await;
    keys(&v, &["action", "node", "clientid", "username", "reason"]);
    assert_eq!(v["reason"], "normal");

    publisher.kill().await;
    let v = hook
        .action("client_disconnected", "clientid", &pub_id)
        .await;
    assert_eq!(v["reason"], "tcp_closed");
}

#[tokio::test]
async fn rules_select_actions_and_topics() {
    let (hook, addr) = Hook::start().await;
    let rules = r#"[{"action": "on_message_publish", "topic": "keep/#"},
                    {"action": "on_client_connected"}]"#;
    let node = hook_node(addr).env("SKEIN_WEBHOOK_RULES", rules).start();
    let id = unique_id("wh-rules");
    let mut c = v3::Client::connect(node.mqtt_addr(), &id).await;
    c.publish("drop/1", v3::QoS::AtLeastOnce, false, "x").await;
    c.publish("keep/1", v3::QoS::AtLeastOnce, false, "y").await;
    let v = hook
        .find("message_publish on keep/1", |v| {
            v["action"] == "message_publish"
        })
        .await;
    assert_eq!(v["topic"], "keep/1");
    hook.action("client_connected", "clientid", &id).await;
    c.disconnect().await;
    // Give anything unwanted the time to arrive, then check it didn't.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bodies = hook.bodies.lock().unwrap().clone();
    let actions: Vec<&str> = bodies.iter().filter_map(|v| v["action"].as_str()).collect();
    assert_eq!(actions.len(), 2, "{bodies:#?}");
    assert!(actions.contains(&"message_publish") && actions.contains(&"client_connected"));
}

/// A web server that accepts connections, reads nothing and never answers.
fn black_hole() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming().flatten() {
            held.push(socket);
            if held.len() > 1000 {
                break;
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_web_server_that_never_answers_does_not_slow_mqtt() {
    let node = Node::builder()
        .env(
            "SKEIN_WEBHOOK_URLS",
            format!("http://{}/hook", black_hole()),
        )
        .env("SKEIN_WEBHOOK_TIMEOUT_MS", "300")
        .env("SKEIN_WEBHOOK_CONCURRENCY", "2")
        .env("SKEIN_WEBHOOK_QUEUE_CAPACITY", "20")
        .start();
    let mut sub = v3::Client::connect(node.mqtt_addr(), &unique_id("slow-sub")).await;
    sub.subscribe("slow/t", v3::QoS::AtLeastOnce).await;
    let mut publisher = v3::Client::connect(node.mqtt_addr(), &unique_id("slow-pub")).await;

    // Every publish raises message_publish, _delivered and _acked for the webhook, far more
    // than its queue holds; the MQTT flow must not notice. Normally this takes well under a
    // second; the bound only catches a flow that waits for the web server.
    const N: usize = 300;
    let started = Instant::now();
    for i in 0..N {
        publisher
            .publish("slow/t", v3::QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    let got = sub.recv_n(N).await;
    let took = started.elapsed();
    assert_eq!(got.len(), N);
    assert!(took < Duration::from_secs(15), "QoS 1 flow took {took:?}");

    // The failures are counted, by outcome.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, metrics) = http_get(node.http_addr(), "/metrics").await.unwrap();
        assert_eq!(status, 200);
        let has = |outcome: &str| {
            metrics.lines().any(|l| {
                l.starts_with("skein_webhook_requests_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
        };
        if has("dropped") && has("timeout") {
            assert!(
                metrics.contains("skein_webhook_request_duration_seconds"),
                "latency histogram missing"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outcomes not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn anonymous_publishers_are_undefined() {
    let (hook, addr) = Hook::start().await;
    let node = hook_node(addr).start();
    let (sub_id, pub_id) = (unique_id("wh-anon-sub"), unique_id("wh-anon-pub"));
    let mut sub = v3::Client::connect(node.mqtt_addr(), &sub_id).await;
    sub.subscribe("anon/#", v3::QoS::AtLeastOnce).await;
    let mut publisher = v3::Client::connect(node.mqtt_addr(), &pub_id).await;
    publisher
        .publish("anon/t", v3::QoS::AtLeastOnce, false, "x")
        .await;
    sub.recv().await;
    for action in ["message_publish", "message_delivered", "message_acked"] {
        let v = hook
            .find(action, |v| {
                v["action"] == action && v["from_client_id"] == pub_id.as_str()
            })
            .await;
        assert_eq!(v["from_username"], "undefined", "{action}: {v}");
    }
}

#[tokio::test]
async fn subscribe_and_unsubscribe_requests_are_reported_at_receipt_refused_or_not() {
    let (hook, addr) = Hook::start().await;
    let node = hook_node(addr).start();
    let id = unique_id("wh-req");
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &Connect::v5(&id)).await;
    let codes = c
        .subscribe(
            1,
            &[SubFilter::new("ok/1", 1), SubFilter::new("bad/#/x", 2)],
        )
        .await;
    assert_eq!(codes, [1, 0x8F], "the second filter is invalid");

    let v = hook
        .find("client_subscribe of bad/#/x", |v| {
            v["action"] == "client_subscribe" && v["topic"] == "bad/#/x"
        })
        .await;
    keys(
        &v,
        &["action", "node", "clientid", "username", "topic", "opts"],
    );
    assert_eq!(v["clientid"], id.as_str());
    assert_eq!(v["username"], "undefined");
    assert_eq!(v["opts"]["qos"], 2, "the requested QoS");
    let v = hook
        .find("client_subscribe of ok/1", |v| {
            v["action"] == "client_subscribe" && v["topic"] == "ok/1"
        })
        .await;
    assert_eq!(v["opts"]["qos"], 1);
    let v = hook.action("session_subscribed", "clientid", &id).await;
    assert_eq!(v["topic"], "ok/1");

    // Unsubscribing from something never subscribed: requested, but nothing removed.
    c.send(&codec::unsubscribe(
        skein_tests::Proto::V5,
        2,
        &["never/there"],
    ))
    .await;
    let unsuback = c
        .recv_matching(RECV_TIMEOUT, |p| matches!(p, Packet::UnsubAck { .. }))
        .await;
    assert!(
        matches!(&unsuback, Packet::UnsubAck { codes, .. } if codes == &[0x11]),
        "{unsuback:?}"
    );
    let v = hook.action("client_unsubscribe", "clientid", &id).await;
    keys(&v, &["action", "node", "clientid", "username", "topic"]);
    assert_eq!(v["topic"], "never/there");
    tokio::time::sleep(QUIET).await;
    assert!(
        hook.all(|v| v["action"] == "session_subscribed" && v["topic"] == "bad/#/x")
            .is_empty(),
        "a refused filter is no session subscription"
    );
    assert!(
        hook.all(|v| v["action"] == "session_unsubscribed" && v["clientid"] == id.as_str())
            .is_empty(),
        "nothing was unsubscribed"
    );
    // Requests come before their results (one client's requests arrive in order).
    let actions = hook.actions_of(&id);
    let first = |a: &str| actions.iter().position(|x| x == a).unwrap();
    assert!(
        first("client_subscribe") < first("session_subscribed"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn every_end_of_a_session_is_reported_once_with_its_reason() {
    let (hook, addr) = Hook::start().await;
    let node = hook_node(addr).start();
    let (mqtt, http) = (node.mqtt_addr(), node.http_addr());
    let terminated = |id: &str| {
        let id = id.to_owned();
        move |v: &Value| v["action"] == "session_terminated" && v["clientid"] == id.as_str()
    };

    // MQTT 5, Session Expiry 0: the session ends with the connection.
    let v5_id = unique_id("wh-end-v5");
    RawClient::connect_ok(mqtt, &Connect::v5(&v5_id))
        .await
        .0
        .disconnect()
        .await;
    let v = hook
        .find("session_terminated (v5)", terminated(&v5_id))
        .await;
    keys(&v, &["action", "node", "clientid", "username", "reason"]);
    assert_eq!(v["reason"], "normal");

    // A clean 3.1.1 session whose socket just closed.
    let closed_id = unique_id("wh-end-closed");
    RawClient::v311(mqtt, &closed_id).await.drop_connection();
    let v = hook
        .find("session_terminated (closed)", terminated(&closed_id))
        .await;
    assert_eq!(v["reason"], "tcp_closed");

    // A persistent session that expires a second after its connection ended.
    let expiring = unique_id("wh-end-expiry");
    let mut connect = Connect::v5(&expiring).persistent(1);
    connect.username = Some("carol".into());
    RawClient::connect_ok(mqtt, &connect)
        .await
        .0
        .disconnect()
        .await;
    hook.action("client_disconnected", "clientid", &expiring)
        .await;
    assert!(
        hook.all(terminated(&expiring)).is_empty(),
        "ended before it expired"
    );
    let v = hook
        .find("session_terminated (expired)", terminated(&expiring))
        .await;
    assert_eq!(v["reason"], "expired");
    assert_eq!(v["username"], "carol", "named by its last connection");

    // An offline persistent session discarded through the admin API.
    let discarded = unique_id("wh-end-discard");
    RawClient::connect_ok(mqtt, &Connect::v311(&discarded).clean(false))
        .await
        .0
        .disconnect()
        .await;
    hook.action("client_disconnected", "clientid", &discarded)
        .await;
    let path = format!("/api/v1/clients/{discarded}?clear_session=true");
    let (status, body) = http_request(http, "DELETE", &path, &[], "").await.unwrap();
    assert_eq!(status, 204, "{body}");
    let v = hook
        .find("session_terminated (discarded)", terminated(&discarded))
        .await;
    assert_eq!(v["reason"], "discarded");

    // A session taken over lives on: the old connection's end is no session end.
    let twin = unique_id("wh-end-twin");
    let mut old = RawClient::connect_ok(mqtt, &Connect::v311(&twin).clean(false))
        .await
        .0;
    let new = RawClient::connect_ok(mqtt, &Connect::v311(&twin).clean(false))
        .await
        .0;
    old.expect_closed(RECV_TIMEOUT).await;
    hook.find("takeover", |v| {
        v["action"] == "client_disconnected" && v["clientid"] == twin.as_str()
    })
    .await;
    new.disconnect().await;

    tokio::time::sleep(QUIET).await;
    for id in [&v5_id, &closed_id, &expiring, &discarded] {
        assert_eq!(hook.all(terminated(id)).len(), 1, "{id}: exactly once");
    }
    assert!(
        hook.all(terminated(&twin)).is_empty(),
        "persistent: lives on"
    );
}

#[tokio::test]
async fn a_negative_acknowledgement_is_a_drop_not_an_ack() {
    let (hook, addr) = Hook::start().await;
    let node = hook_node(addr).start();
    let mqtt = node.mqtt_addr();
    let sub_id = unique_id("wh-nack-sub");
    let (mut sub, _, _) = RawClient::connect_ok(mqtt, &Connect::v5(&sub_id)).await;
    sub.subscribe(1, &[SubFilter::new("nack/#", 2)]).await;
    let mut publisher = RawClient::v5(mqtt, &unique_id("wh-nack-pub")).await;

    // QoS 1: PUBACK 0x80 (unspecified error).
    publisher
        .publish(&Publish::new("nack/1", 1, b"one").pkid(1))
        .await;
    let p = sub.expect_publish(RECV_TIMEOUT).await;
    sub.send(&nack(0x40, p.pkid, 0x80)).await;
    // QoS 2: PUBREC 0x87 (not authorized) ends the flow.
    publisher
        .publish(&Publish::new("nack/2", 2, b"two").pkid(2))
        .await;
    let p = sub.expect_publish(RECV_TIMEOUT).await;
    sub.send(&nack(0x50, p.pkid, 0x87)).await;
    // A positive acknowledgement still counts as one.
    publisher
        .publish(&Publish::new("nack/3", 1, b"three").pkid(3))
        .await;
    let p = sub.expect_publish(RECV_TIMEOUT).await;
    sub.send(&ack(0x40, p.pkid)).await;

    for topic in ["nack/1", "nack/2"] {
        let v = hook
            .find(&format!("message_dropped of {topic}"), |v| {
                v["action"] == "message_dropped" && v["topic"] == topic
            })
            .await;
        assert_eq!(v["reason"], "rejected_by_client", "{v}");
    }
    hook.find("message_acked of nack/3", |v| {
        v["action"] == "message_acked" && v["topic"] == "nack/3"
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let acked: Vec<Value> = hook.all(|v| v["action"] == "message_acked");
    assert_eq!(acked.len(), 1, "only nack/3 was acknowledged: {acked:#?}");
}

/// An MQTT 5 PUBACK (0x40) or PUBREC (0x50) with a reason code.
fn nack(first_byte: u8, pkid: u16, reason: u8) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    codec::frame(first_byte, &[hi, lo, reason])
}

#[tokio::test]
async fn one_clients_requests_arrive_in_order_with_concurrent_requests() {
    let (hook, addr) = Hook::start().await;
    let node = hook_node(addr)
        .env("SKEIN_WEBHOOK_CONCURRENCY", "8")
        .start();
    let ids: Vec<String> = (0..8).map(|_| unique_id("wh-order")).collect();
    for id in &ids {
        let mut c = v3::Client::connect(node.mqtt_addr(), id).await;
        c.subscribe("order/#", v3::QoS::AtMostOnce).await;
        c.disconnect().await;
    }
    let expected = [
        "client_connect",
        "client_connack",
        "client_connected",
        "client_subscribe",
        "session_subscribed",
        "client_disconnected",
        "session_terminated",
    ];
    for id in &ids {
        hook.action("session_terminated", "clientid", id).await;
        assert_eq!(hook.actions_of(id), expected, "{id}");
    }
}
