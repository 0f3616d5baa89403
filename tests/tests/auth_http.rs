//! External authentication over HTTP against a real web server the test starts: allow,
//! deny, superuser (past the ACL), ignore, a timeout and an unreachable server (with both
//! `auth_http_on_error` outcomes), the request's fields, the cache (seen as the server's
//! request count), and a slow answer not holding up other CONNECTs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use skein_tests::{metric_sum, unique_id, Connect, Node, Packet, Proto, RawClient, SubFilter};

/// The authentication server: decides by username.
#[derive(Clone, Default)]
struct AuthServer {
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
    /// Slow requests being answered now, and the most there ever were at once.
    slow_now: Arc<AtomicUsize>,
    slow_most: Arc<AtomicUsize>,
}

/// Counts a slow request as in progress until dropped (the node may hang up first).
struct InProgress(Arc<AtomicUsize>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AuthServer {
    async fn start() -> (AuthServer, SocketAddr) {
        let server = AuthServer::default();
        let keep = server.clone();
        let app = Router::new().route(
            "/auth",
            post(move |body: String| {
                let keep = keep.clone();
                async move {
                    keep.requests.fetch_add(1, Ordering::SeqCst);
                    let v: Value = serde_json::from_str(&body).expect("JSON request");
                    keep.bodies.lock().unwrap().push(v.clone());
                    let password = v["password"].as_str().unwrap_or("");
                    match v["username"].as_str().unwrap_or("") {
                        "good" if password == "right" => {
                            (StatusCode::OK, json!({"result": "allow"}).to_string())
                        }
                        "root" => (
                            StatusCode::OK,
                            json!({"result": "allow", "is_superuser": true}).to_string(),
                        ),
                        "forbidden" => (StatusCode::FORBIDDEN, String::new()),
                        "passer" => (StatusCode::OK, json!({"result": "ignore"}).to_string()),
                        "slow" => {
                            let now = keep.slow_now.fetch_add(1, Ordering::SeqCst) + 1;
                            keep.slow_most.fetch_max(now, Ordering::SeqCst);
                            let _in_progress = InProgress(keep.slow_now.clone());
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            (StatusCode::OK, json!({"result": "allow"}).to_string())
                        }
                        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                        _ => (StatusCode::OK, json!({"result": "deny"}).to_string()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (server, addr)
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn login(proto: Proto, user: &str, password: &str) -> Connect {
    let mut c = Connect::new(proto, &unique_id(user));
    c.username = Some(user.into());
    c.password = Some(password.as_bytes().to_vec());
    c
}

async fn connack(node: &Node, c: &Connect) -> (RawClient, u8) {
    let (client, p) = RawClient::connect(node.mqtt_addr(), c).await;
    match p {
        Packet::ConnAck { code, .. } => (client, code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

struct HttpNode {
    node: Node,
    _dir: tempfile::TempDir,
}

/// A node asking `url`, with an ACL that lets ordinary clients do nothing but
/// `open/#` (a superuser is past it).
fn node(url: &str, extra: &[(&str, &str)]) -> HttpNode {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acl"), "pattern readwrite open/#\n").unwrap();
    let mut b = Node::builder()
        .env("SKEIN_AUTH_HTTP_URL", url)
        .env("SKEIN_AUTH_HTTP_TIMEOUT_MS", "500")
        .env("SKEIN_ACL_FILE", dir.path().join("acl").display());
    for (k, v) in extra {
        b = b.env(k, v);
    }
    HttpNode {
        node: b.start(),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_superuser_ignore_and_the_request() {
    let (server, addr) = AuthServer::start().await;
    let n = node(&format!("http://{addr}/auth"), &[]);
    let node = &n.node;
    for (proto, bad, unavailable) in [(Proto::V5, 0x86u8, 0x88u8), (Proto::V311, 4, 3)] {
        let ok = login(proto, "good", "right");
        assert_eq!(connack(node, &ok).await.1, 0, "{proto:?}");
        assert_eq!(connack(node, &login(proto, "good", "wrong")).await.1, bad);
        assert_eq!(connack(node, &login(proto, "mallory", "x")).await.1, bad);
        assert_eq!(connack(node, &login(proto, "forbidden", "x")).await.1, bad);
        // An answer that is not one: the error outcome (deny by default).
        assert_eq!(
            connack(node, &login(proto, "broken", "x")).await.1,
            unavailable
        );
        // ignore: the anonymous-client policy (allowed by default) decides.
        assert_eq!(connack(node, &login(proto, "passer", "x")).await.1, 0);
    }
    // What the server was told.
    let body = server
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["username"] == "good" && v["password"] == "right")
        .cloned()
        .expect("a request for good");
    assert!(body["clientid"].as_str().unwrap().starts_with("good"));
    assert_eq!(body["peerhost"], "127.0.0.1");
    assert_eq!(body["listener"], "mqtt");
    assert_eq!(body["cert_common_name"], Value::Null);
    assert_eq!(body["proto_ver"], 5);

    // A superuser is past the ACL; an ordinary client is not.
    let (mut root, code) = connack(node, &login(Proto::V5, "root", "x")).await;
    assert_eq!(code, 0);
    assert_eq!(
        root.subscribe(1, &[SubFilter::new("secret/#", 1)]).await,
        [1]
    );
    let (mut good, _) = connack(node, &login(Proto::V5, "good", "right")).await;
    assert_eq!(
        good.subscribe(
            1,
            &[SubFilter::new("secret/#", 1), SubFilter::new("open/x", 1)]
        )
        .await,
        [0x87, 1]
    );
    for outcome in ["allow", "deny", "superuser", "ignore", "http_error"] {
        let label = format!("outcome=\"{outcome}\"");
        let n = metric_sum(
            node.http_addr(),
            "skein_auth_http_requests_total",
            &[&label],
        )
        .await;
        assert!(n >= 1.0, "{outcome}: {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_for_the_same_credentials() {
    let (server, addr) = AuthServer::start().await;
    let n = node(
        &format!("http://{addr}/auth"),
        &[("SKEIN_AUTH_HTTP_CACHE_MS", "60000")],
    );
    let node = &n.node;
    let mut c = Connect::v5("cached-client");
    c.username = Some("good".into());
    c.password = Some(b"right".to_vec());
    for _ in 0..3 {
        let (client, code) = connack(node, &c).await;
        assert_eq!(code, 0);
        client.disconnect().await;
    }
    assert_eq!(server.count(), 1, "one request for three CONNECTs");
    // A refusal is cached too; other credentials are asked about.
    let mut wrong = c.clone();
    wrong.password = Some(b"wrong".to_vec());
    assert_eq!(connack(node, &wrong).await.1, 0x86);
    assert_eq!(connack(node, &wrong).await.1, 0x86);
    assert_eq!(server.count(), 2);
    assert_eq!(
        metric_sum(node.http_addr(), "skein_auth_http_cache_hits_total", &[]).await,
        3.0
    );

    // Not cached: every CONNECT asks.
    let n = node_uncached(addr);
    let before = server.count();
    for _ in 0..2 {
        assert_eq!(connack(&n.node, &c).await.1, 0);
    }
    assert_eq!(server.count(), before + 2);
}

fn node_uncached(addr: SocketAddr) -> HttpNode {
    node(
        &format!("http://{addr}/auth"),
        &[("SKEIN_AUTH_HTTP_CACHE_MS", "0")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_refused_and_does_not_hold_up_other_connects() {
    let (_server, addr) = AuthServer::start().await;
    let n = node(&format!("http://{addr}/auth"), &[]);
    let node = &n.node;
    let addr_mqtt = node.mqtt_addr();
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let (c, p) = RawClient::connect(addr_mqtt, &login(Proto::V5, "slow", "x")).await;
        drop(c);
        (p, started.elapsed())
    });
    // While the slow CONNECT waits for its answer, others are let in at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (_c, code) = connack(node, &login(Proto::V5, "good", "right")).await;
    assert_eq!(code, 0);
    let quick = started.elapsed();
    assert!(quick < Duration::from_millis(400), "took {quick:?}");
    let (p, waited) = slow.await.unwrap();
    assert!(
        matches!(p, Packet::ConnAck { code: 0x88, .. }),
        "timeout: {p:?}"
    );
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "refused after {waited:?}"
    );
    assert_eq!(
        metric_sum(
            node.http_addr(),
            "skein_auth_http_requests_total",
            &["outcome=\"timeout\""]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_has_the_configured_outcome() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/auth");
    let deny = node(&url, &[]);
    assert_eq!(
        connack(&deny.node, &login(Proto::V5, "good", "right"))
            .await
            .1,
        0x88
    );
    assert_eq!(
        connack(&deny.node, &login(Proto::V311, "good", "right"))
            .await
            .1,
        3
    );
    assert_eq!(
        metric_sum(
            deny.node.http_addr(),
            "skein_auth_http_requests_total",
            &["outcome=\"connect_error\""]
        )
        .await,
        2.0
    );
    let allow = node(&url, &[("SKEIN_AUTH_HTTP_ON_ERROR", "allow")]);
    let (mut c, code) = connack(&allow.node, &login(Proto::V5, "good", "right")).await;
    assert_eq!(code, 0);
    // Let in, but not a superuser: the ACL still applies.
    assert_eq!(
        c.subscribe(1, &[SubFilter::new("secret/#", 0)]).await,
        [0x87]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_and_the_overflow_counted() {
    let (server, addr) = AuthServer::start().await;
    let n = node(
        &format!("http://{addr}/auth"),
        &[("SKEIN_AUTH_HTTP_CONCURRENCY", "1")],
    );
    let mqtt = n.node.mqtt_addr();
    // Three slow CONNECTs at once: one request at a time goes out; each CONNECT is
    // refused when its timeout passes, waiting for its answer or for a request slot.
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let (_c, p) = RawClient::connect(mqtt, &login(Proto::V5, "slow", "x")).await;
                p
            })
        })
        .collect();
    for t in tasks {
        let p = t.await.unwrap();
        assert!(matches!(p, Packet::ConnAck { code: 0x88, .. }), "{p:?}");
    }
    assert_eq!(
        server.slow_most.load(Ordering::SeqCst),
        1,
        "one request in flight at most"
    );
    let http = n.node.http_addr();
    let mut failed = 0.0;
    for outcome in ["timeout", "busy"] {
        let label = format!("outcome=\"{outcome}\"");
        failed += metric_sum(http, "skein_auth_http_requests_total", &[&label]).await;
    }
    assert_eq!(failed, 3.0);
    assert_eq!(
        metric_sum(http, "skein_auth_http_in_flight", &[]).await,
        0.0
    );
}
