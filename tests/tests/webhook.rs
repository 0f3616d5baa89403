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
use skein_tests::{http_get, unique_id, Node};

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
}

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
    let node = Node::builder()
        .env("SKEIN_WEBHOOK_URLS", format!("http://{addr}/hook"))
        .start();
    let node_field = node.mqtt_addr().to_string();
    let (sub_id, pub_id) = (unique_id("wh-sub"), unique_id("wh-pub"));

    let mut opts = v3::options(node.mqtt_addr(), &sub_id);
    opts.set_credentials("alice", "secret");
    let mut sub = v3::Client::connect_with(opts).await;
    sub.subscribe("wh/#", v3::QoS::AtLeastOnce).await;
    let mut publisher = v3::Client::connect(node.mqtt_addr(), &pub_id).await;
    publisher
        .publish("wh/t", v3::QoS::AtLeastOnce, false, "hello")
        .await;
    let got = sub.recv().await;
    assert_eq!(&got.payload[..], b"hello");

    let v = hook.action("client_connect", "clientid", &sub_id).await;
    keys(
        &v,
        &[
            "action",
            "node",
            "clientid",
            "username",
            "ipaddress",
            "keepalive",
            "proto_ver",
        ],
    );
    assert_eq!(v["node"], node_field);
    assert_eq!(v["username"], "alice");
    assert_eq!(v["ipaddress"], "127.0.0.1");
    assert_eq!(v["keepalive"], 30);
    assert_eq!(v["proto_ver"], 4);

    let v = hook.action("client_connack", "clientid", &sub_id).await;
    keys(
        &v,
        &[
            "action",
            "node",
            "clientid",
            "username",
            "ipaddress",
            "keepalive",
            "proto_ver",
            "conn_ack",
        ],
    );
    assert_eq!(v["conn_ack"], "success");

    let v = hook.action("client_connected", "clientid", &pub_id).await;
    keys(
        &v,
        &[
            "action",
            "node",
            "clientid",
            "username",
            "ipaddress",
            "keepalive",
            "proto_ver",
            "connected_at",
        ],
    );
    assert_eq!(v["username"], "undefined", "no username: \"undefined\"");
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
    keys(
        &v,
        &[
            "action",
            "node",
            "from_client_id",
            "from_username",
            "topic",
            "qos",
            "retain",
            "payload",
            "ts",
        ],
    );
    assert_eq!(v["from_username"], "undefined");
    assert_eq!(v["topic"], "wh/t");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["retain"], false);
    assert_eq!(v["payload"], "hello");
    let ts = v["ts"].as_u64().expect("ts is an integer");
    assert!(ts > 1_600_000_000_000, "milliseconds: {ts}");

    let v = hook.action("message_delivered", "clientid", &sub_id).await;
    keys(
        &v,
        &[
            "action",
            "node",
            "clientid",
            "username",
            "from_client_id",
            "from_username",
            "topic",
            "qos",
            "retain",
            "payload",
            "ts",
        ],
    );
    assert_eq!(v["username"], "alice");
    assert_eq!(v["from_client_id"], pub_id.as_str());
    assert_eq!(v["payload"], "hello");
    assert_eq!(v["ts"], ts);

    let v = hook.action("message_acked", "clientid", &sub_id).await;
    keys(
        &v,
        &[
            "action",
            "node",
            "clientid",
            "from_client_id",
            "from_username",
            "topic",
            "qos",
            "retain",
            "payload",
            "ts",
        ],
    );
    assert_eq!(v["from_client_id"], pub_id.as_str());
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
    let node = Node::builder()
        .env("SKEIN_WEBHOOK_URLS", format!("http://{addr}/hook"))
        .env("SKEIN_WEBHOOK_RULES", rules)
        .start();
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
