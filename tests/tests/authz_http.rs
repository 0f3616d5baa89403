//! External authorization over HTTP (`auth_http_acl_url`) against a real web server the
//! test starts: allow, deny (JSON and 403), ignore (the ACL file decides) for SUBSCRIBE
//! and PUBLISH in MQTT 3.1.1 and 5.0, the request's fields, a superuser from the
//! authenticator skipping it, the cache (seen as the server's request count), a timeout
//! and an unreachable server with their configured outcomes, a slow answer holding back
//! only its own connection, whose packets keep their order, a kick not waiting for it, and
//! mosquitto_pub over TLS asked about as listener `mqtts`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use skein_tests::{
    metric_sum, unique_id, Connect, Node, Packet, Proto, Publish, RawClient, SubFilter, QUIET,
    RECV_TIMEOUT,
};
use tokio::sync::watch;

/// The authorization server: decides by topic prefix (`allow/`, `deny/`, `forbid/` for
/// a 403, `ignore/`, `gate/` waits for the test to open the gate, `slow/` outlasts the
/// node's timeout), except for clients whose id starts with `spy`, which may do anything.
/// Its `/auth` route authenticates: `root` is a superuser, everybody else is allowed.
#[derive(Clone)]
struct AuthzServer {
    bodies: Arc<Mutex<Vec<Value>>>,
    gate: watch::Sender<bool>,
}

impl AuthzServer {
    async fn start() -> (AuthzServer, SocketAddr) {
        let server = AuthzServer {
            bodies: Arc::default(),
            gate: watch::channel(false).0,
        };
        let keep = server.clone();
        let app = Router::new()
            .route(
                "/acl",
                post(move |body: String| {
                    let keep = keep.clone();
                    async move { keep.decide(&body).await }
                }),
            )
            .route(
                "/auth",
                post(|body: String| async move {
                    let v: Value = serde_json::from_str(&body).expect("JSON request");
                    let superuser = v["username"] == "root";
                    json!({"result": "allow", "is_superuser": superuser}).to_string()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (server, addr)
    }

    async fn decide(&self, body: &str) -> (StatusCode, String) {
        let v: Value = serde_json::from_str(body).expect("JSON request");
        self.bodies.lock().unwrap().push(v.clone());
        let answer = |result: &str| (StatusCode::OK, json!({ "result": result }).to_string());
        if v["clientid"].as_str().unwrap_or("").starts_with("spy") {
            return answer("allow");
        }
        let topic = v["topic"].as_str().unwrap_or("");
        match topic.split('/').next().unwrap_or("") {
            "allow" => answer("allow"),
            "forbid" => (StatusCode::FORBIDDEN, String::new()),
            "ignore" => answer("ignore"),
            "gate" => {
                let mut open = self.gate.subscribe();
                // Bounded: a test that never opens the gate fails on its own deadline.
                let _ = tokio::time::timeout(Duration::from_secs(20), open.wait_for(|o| *o)).await;
                answer("allow")
            }
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                answer("allow")
            }
            _ => answer("deny"),
        }
    }

    /// Requests about `topic` so far.
    fn asked_about(&self, topic: &str) -> usize {
        let bodies = self.bodies.lock().unwrap();
        bodies.iter().filter(|v| v["topic"] == topic).count()
    }

    /// Requests of client `id` about `topic` so far.
    fn asked_by(&self, id: &str, topic: &str) -> usize {
        let bodies = self.bodies.lock().unwrap();
        let asked = |v: &&Value| v["clientid"] == id && v["topic"] == topic;
        bodies.iter().filter(asked).count()
    }
}

struct AuthzNode {
    node: Node,
    _dir: tempfile::TempDir,
}

/// A node asking `url`, whose ACL file grants `ignore/ok/#` to everyone, and reading
/// everything to the user `spy` (deliveries are checked against the file's read rules).
fn start_node(url: &str, extra: &[(&str, &str)]) -> AuthzNode {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acl"),
        "pattern readwrite ignore/ok/#\nuser spy\ntopic read #\n",
    )
    .unwrap();
    let mut b = Node::builder()
        .env("SKEIN_AUTH_HTTP_ACL_URL", url)
        .env("SKEIN_AUTH_HTTP_ACL_TIMEOUT_MS", "500")
        .env("SKEIN_ACL_FILE", dir.path().join("acl").display());
    for (k, v) in extra {
        b = b.env(k, v);
    }
    AuthzNode {
        node: b.start(),
        _dir: dir,
    }
}

async fn connect(node: &Node, c: &Connect) -> RawClient {
    RawClient::connect_ok(node.mqtt_addr(), c).await.0
}

/// A client allowed everything by the server, subscribed to `#`.
async fn spy(node: &Node) -> RawClient {
    let mut c = Connect::v5(&unique_id("spy"));
    c.username = Some("spy".into());
    let mut spy = connect(node, &c).await;
    assert_eq!(spy.subscribe(1, &[SubFilter::new("#", 1)]).await, [1]);
    spy
}

/// Publishes at `qos` and returns the acknowledgement's reason (PUBACK or PUBREC), with
/// MQTT 5's "no matching subscribers" (0x10, a success) as 0.
async fn publish_ack(c: &mut RawClient, topic: &str, qos: u8) -> u8 {
    c.publish(&Publish::new(topic, qos, b"payload")).await;
    let reason = match c.recv(RECV_TIMEOUT).await {
        Ok(Packet::PubAck { reason, .. }) if qos == 1 => reason,
        Ok(Packet::PubRec { reason, .. }) if qos == 2 => reason,
        other => panic!("publish to {topic} at QoS {qos}: {other:?}"),
    };
    if reason == 0x10 {
        0
    } else {
        reason
    }
}

/// The next publish `c` receives on `topic`, or None within `within`.
async fn next_on(c: &mut RawClient, topic: &str, within: Duration) -> Option<Publish> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match c.recv(left).await {
            Ok(Packet::Publish(p)) if p.topic == topic => return Some(p),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

async fn metric(node: &Node, name: &str, labels: &[&str]) -> f64 {
    metric_sum(node.http_addr(), name, labels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_ignore_for_subscribe_and_publish_in_both_protocols() {
    let (server, addr) = AuthzServer::start().await;
    let n = start_node(&format!("http://{addr}/acl"), &[]);
    let node = &n.node;
    let mut spy = spy(node).await;
    for (proto, denied) in [(Proto::V5, 0x87u8), (Proto::V311, 0x80)] {
        let id = unique_id("client");
        let mut c = Connect::new(proto, &id);
        c.username = Some("user-1".into());
        let mut client = connect(node, &c).await;
        let codes = client
            .subscribe(
                1,
                &[
                    SubFilter::new("allow/x", 1),
                    SubFilter::new("deny/x", 1),
                    SubFilter::new("forbid/x", 0),
                    SubFilter::new("ignore/ok/x", 1),
                    SubFilter::new("ignore/no/x", 1),
                    SubFilter::new("$share/g/allow/+", 1),
                ],
            )
            .await;
        assert_eq!(codes, [1, denied, denied, 1, denied, 1], "{proto:?} SUBACK");

        // Denied: 5.0 PUBACK/PUBREC 0x87; 3.1.1 acknowledged (0) and dropped.
        let refused = if proto == Proto::V5 { 0x87 } else { 0 };
        assert_eq!(publish_ack(&mut client, "deny/a", 1).await, refused);
        assert_eq!(publish_ack(&mut client, "forbid/a", 2).await, refused);
        if proto == Proto::V311 {
            // The QoS 2 flow completes for the 3.1.1 client.
            client.send(&skein_tests::codec::ack(0x62, 1)).await;
            assert!(matches!(
                client.recv(RECV_TIMEOUT).await,
                Ok(Packet::PubComp { .. })
            ));
        }
        client.publish(&Publish::new("deny/q0", 0, b"q0")).await;
        assert_eq!(publish_ack(&mut client, "ignore/no/a", 1).await, refused);
        // Allowed by the server, or by the ACL file after `ignore`: routed.
        assert_eq!(publish_ack(&mut client, "allow/a", 1).await, 0);
        assert!(next_on(&mut spy, "allow/a", RECV_TIMEOUT).await.is_some());
        assert_eq!(publish_ack(&mut client, "ignore/ok/a", 1).await, 0);
        assert!(next_on(&mut spy, "ignore/ok/a", RECV_TIMEOUT)
            .await
            .is_some());
        for dropped in ["deny/a", "forbid/a", "deny/q0", "ignore/no/a"] {
            assert!(
                next_on(&mut spy, dropped, QUIET).await.is_none(),
                "{proto:?}: {dropped} was routed"
            );
        }

        // What the server was told.
        let body = server
            .bodies
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["clientid"] == id.as_str() && v["topic"] == "forbid/a")
            .cloned()
            .expect("a request about forbid/a");
        assert_eq!(
            body,
            json!({"clientid": id, "username": "user-1", "peerhost": "127.0.0.1",
                "listener": "mqtt", "action": "publish", "topic": "forbid/a", "qos": 2,
                "retain": false})
        );
        let body = server
            .bodies
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["clientid"] == id.as_str() && v["topic"] == "ignore/ok/x")
            .cloned()
            .expect("a request about a subscription");
        assert_eq!(body["action"], "subscribe");
        assert_eq!(body["qos"], 1);
        assert_eq!(body["retain"], false);
    }
    // The shared subscription was asked about without its `$share/g/`.
    assert!(server.asked_about("allow/+") >= 2);
    assert!(
        metric(
            node,
            "skein_messages_dropped_total",
            &["reason=\"not_authorized\""]
        )
        .await
            >= 8.0
    );
    assert!(metric(node, "skein_authz_denied_total", &["action=\"publish\""]).await >= 8.0);
    assert!(metric(node, "skein_authz_denied_total", &["action=\"subscribe\""]).await >= 6.0);
    for outcome in ["allow", "deny", "ignore"] {
        let label = format!("outcome=\"{outcome}\"");
        let n = metric(node, "skein_authz_http_requests_total", &[&label]).await;
        assert!(n >= 1.0, "{outcome}: {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_is_not_asked_and_a_refused_will_is_not_published() {
    let (server, addr) = AuthzServer::start().await;
    let n = start_node(
        &format!("http://{addr}/acl"),
        &[("SKEIN_AUTH_HTTP_URL", &format!("http://{addr}/auth"))],
    );
    let node = &n.node;
    let mut spy = spy(node).await;
    for proto in [Proto::V5, Proto::V311] {
        let id = unique_id("root");
        let mut c = Connect::new(proto, &id);
        c.username = Some("root".into());
        c.password = Some(b"x".to_vec());
        let mut root = connect(node, &c).await;
        assert_eq!(root.subscribe(1, &[SubFilter::new("deny/#", 1)]).await, [1]);
        assert_eq!(publish_ack(&mut root, "deny/root", 1).await, 0);
        assert!(next_on(&mut spy, "deny/root", RECV_TIMEOUT).await.is_some());
        let asked = server
            .bodies
            .lock()
            .unwrap()
            .iter()
            .any(|v| v["clientid"] == id.as_str());
        assert!(!asked, "{proto:?}: the superuser was asked about");
    }
    // A will on a topic the server refuses is dropped at CONNECT; an allowed one is
    // published when its client goes.
    for (topic, published) in [("deny/will", false), ("allow/will", true)] {
        let mut c = Connect::v5(&unique_id("willing"));
        c.username = Some("user-2".into());
        c.will = Some(skein_tests::Will::new(topic, b"gone"));
        let client = connect(node, &c).await;
        drop(client);
        let within = if published { RECV_TIMEOUT } else { QUIET };
        assert_eq!(
            next_on(&mut spy, topic, within).await.is_some(),
            published,
            "{topic}"
        );
    }
    assert_eq!(
        metric(node, "skein_authz_denied_total", &["action=\"will\""]).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_for_the_same_request() {
    let (server, addr) = AuthzServer::start().await;
    let n = start_node(
        &format!("http://{addr}/acl"),
        &[("SKEIN_AUTH_HTTP_ACL_CACHE_MS", "60000")],
    );
    let node = &n.node;
    let mut client = connect(node, &Connect::v5("cached-client")).await;
    for _ in 0..3 {
        assert_eq!(publish_ack(&mut client, "allow/cached", 1).await, 0);
        assert_eq!(publish_ack(&mut client, "deny/cached", 1).await, 0x87);
    }
    assert_eq!(server.asked_about("allow/cached"), 1);
    assert_eq!(
        server.asked_about("deny/cached"),
        1,
        "a refusal is cached too"
    );
    assert_eq!(
        metric(node, "skein_authz_http_cache_hits_total", &[]).await,
        4.0
    );
    // Another QoS is another request.
    assert_eq!(publish_ack(&mut client, "allow/cached", 2).await, 0);
    assert_eq!(server.asked_about("allow/cached"), 2);

    // Not cached: every PUBLISH asks.
    let uncached = start_node(
        &format!("http://{addr}/acl"),
        &[("SKEIN_AUTH_HTTP_ACL_CACHE_MS", "0")],
    );
    let mut client = connect(&uncached.node, &Connect::v5("uncached-client")).await;
    for _ in 0..2 {
        assert_eq!(publish_ack(&mut client, "allow/uncached", 1).await, 0);
    }
    assert_eq!(server.asked_about("allow/uncached"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_and_an_unreachable_server_have_the_configured_outcome() {
    let (_server, addr) = AuthzServer::start().await;
    let url = format!("http://{addr}/acl");
    // No answer within the node's 500 ms: denied by default.
    let deny = start_node(&url, &[]);
    let mut client = connect(&deny.node, &Connect::v5(&unique_id("waiting"))).await;
    let started = Instant::now();
    assert_eq!(publish_ack(&mut client, "slow/a", 1).await, 0x87);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(4),
        "refused after {waited:?}"
    );
    assert_eq!(
        client.subscribe(1, &[SubFilter::new("slow/b", 1)]).await,
        [0x87]
    );
    assert_eq!(
        metric(
            &deny.node,
            "skein_authz_http_requests_total",
            &["outcome=\"timeout\""]
        )
        .await,
        2.0
    );
    let allow = start_node(&url, &[("SKEIN_AUTH_HTTP_ACL_ON_ERROR", "allow")]);
    let mut client = connect(&allow.node, &Connect::v5(&unique_id("waiting"))).await;
    assert_eq!(publish_ack(&mut client, "slow/a", 1).await, 0);

    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/acl");
    let deny = start_node(&url, &[]);
    let mut v5 = connect(&deny.node, &Connect::v5(&unique_id("unreached"))).await;
    assert_eq!(publish_ack(&mut v5, "allow/a", 1).await, 0x87);
    let mut v3 = connect(&deny.node, &Connect::v311(&unique_id("unreached"))).await;
    assert_eq!(
        v3.subscribe(1, &[SubFilter::new("allow/a", 1)]).await,
        [0x80]
    );
    assert_eq!(
        metric(
            &deny.node,
            "skein_authz_http_requests_total",
            &["outcome=\"connect_error\""]
        )
        .await,
        2.0
    );
    // `ignore`: the ACL file decides, as after an `ignore` answer.
    let ignore = start_node(&url, &[("SKEIN_AUTH_HTTP_ACL_ON_ERROR", "ignore")]);
    let mut client = connect(&ignore.node, &Connect::v5(&unique_id("unreached"))).await;
    assert_eq!(publish_ack(&mut client, "ignore/ok/a", 1).await, 0);
    assert_eq!(publish_ack(&mut client, "allow/a", 1).await, 0x87);
    let allow = start_node(&url, &[("SKEIN_AUTH_HTTP_ACL_ON_ERROR", "allow")]);
    let mut client = connect(&allow.node, &Connect::v311(&unique_id("unreached"))).await;
    assert_eq!(
        client.subscribe(1, &[SubFilter::new("deny/a", 1)]).await,
        [1]
    );
}

/// Packets `c` receives until it has `n` of them (publishes, acknowledgements).
async fn packets(c: &mut RawClient, n: usize) -> Vec<Packet> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(c.expect(RECV_TIMEOUT).await);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_holds_back_its_own_connection_in_order_and_no_other() {
    let (server, addr) = AuthzServer::start().await;
    let n = start_node(
        &format!("http://{addr}/acl"),
        &[("SKEIN_AUTH_HTTP_ACL_TIMEOUT_MS", "30000")],
    );
    let node = &n.node;
    for proto in [Proto::V5, Proto::V311] {
        server.gate.send_replace(false);
        let mut spy = spy(node).await;
        let waiting_id = unique_id("waiting");
        let mut waiting = connect(node, &Connect::new(proto, &waiting_id)).await;
        // One write: a PUBLISH whose answer waits for the gate, then a SUBSCRIBE and
        // publishes the server would answer at once.
        let gated = format!("gate/{proto:?}");
        let mut burst = Publish::new(&gated, 1, b"1").pkid(1).encode(proto);
        burst.extend(skein_tests::codec::subscribe(
            proto,
            5,
            &[SubFilter::new("allow/sub", 1)],
            &skein_tests::codec::Props::new(),
        ));
        burst.extend(Publish::new("allow/second", 1, b"2").pkid(2).encode(proto));
        burst.extend(Publish::new("allow/third", 0, b"3").encode(proto));
        waiting.send(&burst).await;
        let deadline = Instant::now() + RECV_TIMEOUT;
        while server.asked_about(&gated) < 1 {
            assert!(
                Instant::now() < deadline,
                "the gated publish was never asked about"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Meanwhile another connection is answered and routed at once.
        let mut other = connect(node, &Connect::new(proto, &unique_id("other"))).await;
        assert_eq!(publish_ack(&mut other, "allow/other", 1).await, 0);
        assert!(next_on(&mut spy, "allow/other", RECV_TIMEOUT)
            .await
            .is_some());
        // And the waiting connection's later packets did not overtake its first.
        assert!(
            waiting.recv(QUIET).await.is_err(),
            "{proto:?}: answered before the gated publish"
        );
        assert_eq!(server.asked_by(&waiting_id, "allow/sub"), 0, "{proto:?}");
        assert_eq!(server.asked_by(&waiting_id, "allow/second"), 0, "{proto:?}");

        server.gate.send_replace(true);
        let answers = packets(&mut waiting, 3).await;
        assert!(
            matches!(
                answers.as_slice(),
                [
                    Packet::PubAck {
                        pkid: 1,
                        reason: 0,
                        ..
                    },
                    Packet::SubAck { pkid: 5, .. },
                    Packet::PubAck {
                        pkid: 2,
                        reason: 0,
                        ..
                    },
                ]
            ),
            "{proto:?}: {answers:?}"
        );
        let mut routed = Vec::new();
        while routed.len() < 3 {
            match spy.expect(RECV_TIMEOUT).await {
                Packet::Publish(p) if p.topic != "allow/other" => routed.push(p.topic),
                _ => {}
            }
        }
        assert_eq!(
            routed,
            [gated.as_str(), "allow/second", "allow/third"],
            "{proto:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_ends_a_connection_waiting_for_an_answer() {
    let (server, addr) = AuthzServer::start().await;
    let n = start_node(
        &format!("http://{addr}/acl"),
        &[("SKEIN_AUTH_HTTP_ACL_TIMEOUT_MS", "30000")],
    );
    let node = &n.node;
    let id = unique_id("kicked");
    let mut waiting = connect(node, &Connect::v5(&id)).await;
    waiting.publish(&Publish::new("gate/kick", 1, b"1")).await;
    let deadline = Instant::now() + RECV_TIMEOUT;
    while server.asked_by(&id, "gate/kick") < 1 {
        assert!(
            Instant::now() < deadline,
            "the gated publish was never asked about"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The gate stays shut: the operator's kick does not wait for the answer.
    let path = format!("/api/v1/clients/{id}");
    let (status, body) = skein_tests::http_request(node.http_addr(), "DELETE", &path, &[], "")
        .await
        .expect("DELETE");
    assert_eq!(status, 204, "{body}");
    waiting.expect_disconnect(0x98, RECV_TIMEOUT).await;
    server.gate.send_replace(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_over_tls_is_asked_about_as_mqtts() {
    use skein_tests::certs::{s, TestCa, TlsFiles};
    let (server, addr) = AuthzServer::start().await;
    let ca = TestCa::new("authz-ca");
    let files = TlsFiles::new(&ca, "device-1");
    let node = Node::builder()
        .arg("--mqtts")
        .arg("127.0.0.1:0")
        .env("SKEIN_TLS_CERT_FILE", s(&files.server_cert))
        .env("SKEIN_TLS_KEY_FILE", s(&files.server_key))
        .env("SKEIN_AUTH_HTTP_ACL_URL", format!("http://{addr}/acl"))
        .start();
    let mut spy = spy(&node).await;
    let mqtts = node.listener_addr("mqtts");
    let ca_file = s(&files.ca).to_string();
    let id = unique_id("tls-device");
    for topic in ["deny/tls", "allow/tls"] {
        let args = [
            "--cafile", &ca_file, "-i", &id, "-t", topic, "-m", "over-tls", "-q", "1",
        ]
        .map(String::from);
        // 3.1.1: a refused publish is acknowledged (and dropped), so both succeed.
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            skein_tests::cli::mosquitto_pub(mqtts, &args);
        })
        .await
        .unwrap();
    }
    assert!(next_on(&mut spy, "allow/tls", RECV_TIMEOUT).await.is_some());
    assert!(next_on(&mut spy, "deny/tls", QUIET).await.is_none());
    let bodies = server.bodies.lock().unwrap().clone();
    let asked: Vec<_> = bodies
        .iter()
        .filter(|v| v["clientid"] == id.as_str())
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    for body in asked {
        assert_eq!(body["listener"], "mqtts");
        assert_eq!(body["action"], "publish");
        assert_eq!(body["qos"], 1);
    }
}
