//! The webhook against a real HTTP server on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::*;
use crate::codec::{ProtocolVersion, QoS};
use crate::config::Config;
use crate::disconnect::DisconnectReason;
use crate::events::test_support::event_at;
use crate::events::{ClientInfo, EventBody, EventKind, SessionEnd, Transport};
use crate::message::Message;
use skein_seam::ClientId;

/// What the test server saw, and what it answers: `fail_first` requests get 503.
#[derive(Clone, Default)]
struct Hook {
    bodies: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    fail_first: usize,
}

impl Hook {
    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let bodies = self.bodies();
            if bodies.len() >= n || Instant::now() > deadline {
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn receive(State(hook): State<Hook>, body: String) -> StatusCode {
    let n = hook.hits.fetch_add(1, Ordering::SeqCst);
    if n < hook.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    hook.bodies.lock().unwrap().push(value);
    StatusCode::OK
}

async fn serve(hook: Hook) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/hook", post(receive)).with_state(hook);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn bus() -> EventBus {
    EventBus::new(NodeInfo {
        node: "127.0.0.1:1883".into(),
        node_ip: "127.0.0.1".into(),
        node_name: "n1".into(),
    })
}

fn config(urls: String, rules: &str) -> Config {
    Config {
        webhook_urls: urls,
        webhook_rules: rules.into(),
        webhook_timeout_ms: 500,
        ..Config::default()
    }
}

fn client(id: &str, protocol: ProtocolVersion) -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        client_id: ClientId::new(id),
        username: Some("user".into()),
        peer: "127.0.0.1:40000".parse().unwrap(),
        sockname: std::sync::Arc::new("127.0.0.1:1883".parse().unwrap()),
        protocol,
        transport: Transport::Tcp,
        keepalive: 30,
        clean_start: true,
        connected_at_ms: 1_700_000_000_999,
        will: None,
    })
}

fn event(client: &Arc<ClientInfo>, body: EventBody) -> Event {
    event_at(client, 1_700_000_001_000, body)
}

fn publish(client: &Arc<ClientInfo>, topic: &str) -> Event {
    event(
        client,
        EventBody::Publish {
            message: Arc::new(Message {
                topic: Arc::from(topic),
                payload: bytes::Bytes::from_static(b"{\"t\":1}"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                received_at_ms: 1_700_000_002_000,
                publisher: Some(client.client_id.clone()),
                publisher_username: None,
                publish_id: None,
            }),
            packet_id: 1,
        },
    )
}

fn disconnected(client: &Arc<ClientInfo>) -> Event {
    event(
        client,
        EventBody::Disconnected {
            reason: DisconnectReason::TcpClosed,
            disconnected_at_ms: 1_700_000_003_000,
            takeover_node: None,
            by_disconnect_packet: false,
            had_session: true,
            on_node: None,
        },
    )
}

#[test]
fn urls_must_be_plain_http() {
    assert!(parse_urls("").unwrap().is_empty());
    assert!(parse_urls(" , ").unwrap().is_empty());
    let urls = parse_urls("http://127.0.0.1:8080/hook, http://hooks.local/x").unwrap();
    assert_eq!(urls.len(), 2);
    assert_eq!(urls[1].host(), Some("hooks.local"));
    assert!(matches!(parse_urls("https://h/x"), Err(UrlError::Https(_))));
    assert!(matches!(parse_urls("ftp://h/x"), Err(UrlError::Scheme(_))));
    assert!(matches!(
        parse_urls("/just/a/path"),
        Err(UrlError::Scheme(_))
    ));
    assert!(matches!(parse_urls("http://"), Err(UrlError::Invalid(_))));
}

#[test]
fn off_without_urls_and_subscribes_only_to_what_rules_need() {
    let mut b = bus();
    assert!(register(&mut b, &Config::default()).is_none());
    assert!(!b.wants(EventKind::ClientConnected));

    let mut b = bus();
    let rules = r#"[{"action": "on_message_publish", "topic": "a/#"}]"#;
    let dialect = register(&mut b, &config("http://127.0.0.1:9/h".into(), rules));
    assert!(dialect.is_some());
    assert!(b.wants(EventKind::MessagePublish));
    assert!(!b.wants(EventKind::ClientConnected));
    assert!(!b.wants(EventKind::MessageDelivered));

    let mut b = bus();
    let rules = r#"[{"action": "on_session_terminated"}, {"action": "on_client_subscribe"}]"#;
    register(&mut b, &config("http://127.0.0.1:9/h".into(), rules)).unwrap();
    assert!(b.wants(EventKind::SessionTerminated));
    assert!(b.wants(EventKind::ClientSubscribe));
    assert!(!b.wants(EventKind::ClientDisconnected));
    assert!(!b.wants(EventKind::ClientConnected));
    assert!(!b.wants(EventKind::SessionSubscribed));
}

#[tokio::test]
async fn posts_bodies_for_the_rules_to_every_url() {
    let (a, b) = (Hook::default(), Hook::default());
    let urls = format!(
        "http://{}/hook,http://{}/hook",
        serve(a.clone()).await,
        serve(b.clone()).await
    );
    let rules = r#"[{"action": "on_client_connected"},
                    {"action": "on_message_publish", "topic": "foo/#"},
                    {"action": "on_session_terminated"}]"#;
    let mut bus = bus();
    let task = register(&mut bus, &config(urls, rules)).unwrap().start();

    let v3 = client("dev-3", ProtocolVersion::V311);
    bus.emit(event(&v3, EventBody::Connected));
    bus.emit(publish(&v3, "bar/1"));
    bus.emit(publish(&v3, "foo/1"));
    bus.emit(disconnected(&v3));
    bus.emit(event(
        &v3,
        EventBody::SessionTerminated {
            reason: SessionEnd::ConnectionEnded(DisconnectReason::TcpClosed),
        },
    ));

    for hook in [&a, &b] {
        let mut bodies = hook.wait_for(3).await;
        // Concurrent requests may land in any order.
        bodies.sort_by_key(|v| v["action"].as_str().unwrap_or("").to_owned());
        assert_eq!(bodies.len(), 3, "{bodies:?}");
        assert_eq!(
            bodies[0],
            json!({
                "action": "client_connected",
                "node": "127.0.0.1:1883",
                "clientid": "dev-3",
                "username": "user",
                "ipaddress": "127.0.0.1",
                "keepalive": 30,
                "proto_ver": 4,
                "connected_at": 1_700_000_000u64,
            })
        );
        let publish = &bodies[1];
        assert_eq!(publish["action"], "message_publish");
        assert_eq!(publish["topic"], "foo/1");
        assert_eq!(publish["from_client_id"], "dev-3");
        assert_eq!(publish["from_username"], "user");
        assert_eq!(publish["qos"], 1);
        assert_eq!(publish["retain"], false);
        assert_eq!(publish["payload"], "{\"t\":1}");
        assert_eq!(publish["ts"], 1_700_000_002_000u64);
        assert_eq!(
            bodies[2],
            json!({
                "action": "session_terminated",
                "node": "127.0.0.1:1883",
                "clientid": "dev-3",
                "username": "user",
                "reason": "tcp_closed",
            })
        );
    }
    task.finish(Duration::from_secs(5)).await;
    assert_eq!(a.bodies().len(), 3, "nothing more after the wait");
}

#[tokio::test]
async fn server_errors_are_retried_until_they_succeed() {
    let hook = Hook {
        fail_first: 2,
        ..Hook::default()
    };
    let urls = format!("http://{}/hook", serve(hook.clone()).await);
    let mut bus = bus();
    let config = Config {
        webhook_max_retries: 3,
        ..config(urls, r#"[{"action": "on_client_connected"}]"#)
    };
    let task = register(&mut bus, &config).unwrap().start();
    bus.emit(event(
        &client("c", ProtocolVersion::V5),
        EventBody::Connected,
    ));
    let bodies = hook.wait_for(1).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["proto_ver"], 5);
    assert_eq!(
        hook.hits.load(Ordering::SeqCst),
        3,
        "two 503s, then success"
    );
    task.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn retries_are_bounded() {
    let hook = Hook {
        fail_first: usize::MAX,
        ..Hook::default()
    };
    let urls = format!("http://{}/hook", serve(hook.clone()).await);
    let mut bus = bus();
    let config = Config {
        webhook_max_retries: 2,
        ..config(urls, r#"[{"action": "on_client_connected"}]"#)
    };
    let task = register(&mut bus, &config).unwrap().start();
    bus.emit(event(
        &client("c", ProtocolVersion::V5),
        EventBody::Connected,
    ));
    // 1 + 2 retries; backoff 100 ms + 200 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.hits.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.hits.load(Ordering::SeqCst), 3);
    task.finish(Duration::from_secs(5)).await;
}

/// A server that accepts connections and never answers.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_silent_server_costs_the_raiser_nothing_and_the_queue_stays_bounded() {
    let (addr, _server) = black_hole().await;
    let mut bus = bus();
    let config = Config {
        webhook_concurrency: 2,
        webhook_queue_capacity: 4,
        webhook_max_retries: 0,
        ..config(format!("http://{addr}/hook"), "")
    };
    let task = register(&mut bus, &config).unwrap().start();
    let c = client("c", ProtocolVersion::V5);
    let started = Instant::now();
    for _ in 0..10_000 {
        bus.emit(publish(&c, "t"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "raising blocked: {:?}",
        started.elapsed()
    );
    // Finishing doesn't wait for the silent server past its grace.
    let started = Instant::now();
    task.finish(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn finish_posts_what_was_raised_before_it() {
    let hook = Hook::default();
    let urls = format!("http://{}/hook", serve(hook.clone()).await);
    let mut bus = bus();
    let task = register(
        &mut bus,
        &config(urls, r#"[{"action": "client_connected"}]"#),
    )
    .unwrap()
    .start();
    for i in 0..20 {
        bus.emit(event(
            &client(&format!("c{i}"), ProtocolVersion::V5),
            EventBody::Connected,
        ));
    }
    task.finish(Duration::from_secs(5)).await;
    assert_eq!(hook.bodies().len(), 20);
}

/// A server that records bodies in arrival order and answers the first request about
/// `slow_action` after `delay`, with 503 (`fail`) or 200.
#[derive(Clone)]
struct SlowFirst {
    bodies: Arc<Mutex<Vec<Value>>>,
    slowed: Arc<AtomicUsize>,
    slow_action: &'static str,
    delay: Duration,
    fail: bool,
}

async fn receive_slow_first(State(hook): State<SlowFirst>, body: String) -> StatusCode {
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    if value["action"] == hook.slow_action && hook.slowed.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(hook.delay).await;
        if hook.fail {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    hook.bodies.lock().unwrap().push(value);
    StatusCode::OK
}

async fn serve_slow_first(hook: SlowFirst) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive_slow_first))
        .with_state(hook);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn order_of_one_client(fail: bool) -> Vec<String> {
    let hook = SlowFirst {
        bodies: Arc::default(),
        slowed: Arc::default(),
        slow_action: "client_connect",
        delay: Duration::from_millis(300),
        fail,
    };
    let urls = format!("http://{}/hook", serve_slow_first(hook.clone()).await);
    let mut bus = bus();
    let config = Config {
        webhook_concurrency: 4,
        webhook_max_retries: 3,
        ..config(urls, "")
    };
    let task = register(&mut bus, &config).unwrap().start();
    let c = client("ordered", ProtocolVersion::V5);
    bus.emit(event(&c, EventBody::Connect));
    bus.emit(event(
        &c,
        EventBody::Connack {
            code: 0,
            success: true,
        },
    ));
    bus.emit(event(&c, EventBody::Connected));
    task.finish(Duration::from_secs(10)).await;
    let bodies = hook.bodies.lock().unwrap().clone();
    bodies
        .iter()
        .map(|v| v["action"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn one_clients_requests_arrive_in_order_even_when_the_first_is_slow() {
    assert_eq!(
        order_of_one_client(false).await,
        ["client_connect", "client_connack", "client_connected"]
    );
}

#[tokio::test]
async fn one_clients_requests_arrive_in_order_even_when_the_first_is_retried() {
    assert_eq!(
        order_of_one_client(true).await,
        ["client_connect", "client_connack", "client_connected"]
    );
}

#[tokio::test]
async fn a_slow_client_does_not_hold_up_clients_on_other_lanes() {
    let hook = SlowFirst {
        bodies: Arc::default(),
        slowed: Arc::default(),
        slow_action: "client_connect",
        delay: Duration::from_millis(2_000),
        fail: false,
    };
    let urls = format!("http://{}/hook", serve_slow_first(hook.clone()).await);
    let mut bus = bus();
    let config = Config {
        webhook_concurrency: 4,
        ..config(urls, "")
    };
    let task = register(&mut bus, &config).unwrap().start();
    let slow = client("slow", ProtocolVersion::V5);
    let lane = delivery::lane_of("slow", 4);
    let other = (0..)
        .map(|i| format!("other-{i}"))
        .find(|id| delivery::lane_of(id, 4) != lane)
        .unwrap();
    bus.emit(event(&slow, EventBody::Connect));
    bus.emit(event(
        &client(&other, ProtocolVersion::V5),
        EventBody::Connected,
    ));
    // The other client's body arrives while the slow one is still being answered.
    let deadline = Instant::now() + Duration::from_millis(1_500);
    loop {
        let seen = hook.bodies.lock().unwrap().clone();
        if seen.iter().any(|v| v["clientid"] == other.as_str()) {
            assert!(
                seen.iter().all(|v| v["clientid"] != "slow"),
                "the slow body was answered first: {seen:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "held up by the slow client");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.finish(Duration::from_secs(5)).await;
}
