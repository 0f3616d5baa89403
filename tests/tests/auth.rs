//! Username/password authentication against a real node: the password file (salted
//! SHA-256 and `plain:` lines), `allow_anonymous`, the CONNACK codes of each protocol, the
//! `not_authenticated` / `not_authorized` events, and configuration errors at startup.

use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::clients::{v3, v5};
use skein_tests::{
    metric_sum, unique_id, Connect, Node, Packet, Proto, RawClient, SubFilter, RECV_TIMEOUT,
};

/// `alice` / `s3cret`, as the README's `printf ... | sha256sum` recipe writes the line.
const ALICE: &str = "alice:sha256:\
    874ed15b5f87d911c777e1510c143c13d1614558744e357de5ee2a4ef92ec697:\
    00112233445566778899aabbccddeeff";
const ALICE_PASSWORD: &str = "s3cret";
/// A development user; the password has a colon and would show up in any leak.
const BOB: &str = "bob:plain:hunter2:x";
const BOB_PASSWORD: &str = "hunter2:x";

struct AuthNode {
    node: Node,
    /// Holds the password file for as long as the node runs.
    _dir: tempfile::TempDir,
}

/// A node with the two users above; `extra` settings on top.
fn node(extra: &[(&str, &str)]) -> AuthNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passwd");
    std::fs::write(&path, format!("# test users\n{ALICE}\n\n{BOB}\n")).expect("password file");
    let mut b = Node::builder()
        .env("SKEIN_PASSWORD_FILE", path.display())
        // Debug logs too must not carry a password.
        .env("SKEIN_LOG", "debug");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    AuthNode {
        node: b.start(),
        _dir: dir,
    }
}

fn login(mut c: Connect, username: &str, password: &str) -> Connect {
    c.username = Some(username.into());
    c.password = Some(password.as_bytes().to_vec());
    c
}

/// Sends `connect`, expects a CONNACK with `code` and then the close (for a refusal).
async fn connack(node: &Node, connect: &Connect, code: u8) {
    let (mut c, p) = RawClient::connect(node.mqtt_addr(), connect).await;
    match p {
        Packet::ConnAck { code: got, .. } => assert_eq!(
            got, code,
            "CONNACK for {:?} / {:?}",
            connect.client_id, connect.username
        ),
        other => panic!("expected CONNACK 0x{code:02x}, got {other:?}"),
    }
    if code != 0 {
        c.expect_closed(RECV_TIMEOUT).await;
    }
}

fn assert_no_password_in_logs(node: &Node) {
    let logs = node.stderr();
    for secret in [ALICE_PASSWORD, "hunter2", "wrong-pw"] {
        assert!(!logs.contains(secret), "the log has {secret:?}:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_and_bad_passwords_for_every_protocol() {
    let n = node(&[]);
    let node = &n.node;
    for proto in [Proto::V31, Proto::V311] {
        let c = |id: &str| Connect::new(proto, &unique_id(id));
        connack(node, &login(c("alice"), "alice", ALICE_PASSWORD), 0).await;
        connack(node, &login(c("bob"), "bob", BOB_PASSWORD), 0).await;
        // 3.x return code 4: bad user name or password.
        connack(node, &login(c("bad"), "alice", "wrong-pw"), 4).await;
        connack(node, &login(c("bad"), "bob", "hunter2"), 4).await;
        connack(node, &login(c("who"), "mallory", ALICE_PASSWORD), 4).await;
        let mut no_password = c("nopw");
        no_password.username = Some("alice".into());
        connack(node, &no_password, 4).await;
        // No username: anonymous, allowed by default.
        connack(node, &c("anon"), 0).await;
    }

    let c = |id: &str| Connect::v5(&unique_id(id));
    connack(node, &login(c("alice5"), "alice", ALICE_PASSWORD), 0).await;
    connack(node, &login(c("bad5"), "alice", "wrong-pw"), 0x86).await;
    connack(node, &login(c("who5"), "mallory", "x"), 0x86).await;
    connack(node, &c("anon5"), 0).await;
    // MQTT 5 allows a password without a username: still anonymous.
    let mut password_only = c("pwonly5");
    password_only.password = Some(b"wrong-pw".to_vec());
    connack(node, &password_only, 0).await;

    // The reason string tells an MQTT 5 client why, without echoing anything it sent.
    let bad = login(c("why5"), "alice", "wrong-pw");
    let (_c, p) = RawClient::connect(node.mqtt_addr(), &bad).await;
    let Packet::ConnAck { code, props, .. } = p else {
        panic!("{p:?}")
    };
    assert_eq!(code, 0x86);
    assert_eq!(
        props.str(skein_tests::prop::REASON_STRING),
        Some("bad username or password")
    );

    // Real client libraries, both protocols.
    let mut o = v3::options(node.mqtt_addr(), &unique_id("rumqttc3"));
    o.set_credentials("alice", ALICE_PASSWORD);
    v3::Client::connect_with(o).await.disconnect().await;
    let mut o = v3::options(node.mqtt_addr(), &unique_id("rumqttc3"));
    o.set_credentials("alice", "wrong-pw");
    let err = v3::Client::try_connect(o).await.err().expect("refused");
    assert!(err.contains("BadUserNamePassword"), "{err}");
    let mut o = v5::options(node.mqtt_addr(), &unique_id("rumqttc5"));
    o.set_credentials("bob", BOB_PASSWORD);
    v5::Client::connect_with(o).await.disconnect().await;
    let mut o = v5::options(node.mqtt_addr(), &unique_id("rumqttc5"));
    o.set_credentials("bob", "wrong-pw");
    let err = v5::Client::try_connect(o).await.err().expect("refused");
    assert!(err.contains("BadUserNamePassword"), "{err}");

    assert_no_password_in_logs(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_are_refused_when_disabled() {
    let n = node(&[("SKEIN_ALLOW_ANONYMOUS", "false")]);
    let node = &n.node;
    // 3.x return code 5 / MQTT 5 0x87: not authorized.
    connack(node, &Connect::v311(&unique_id("anon")), 5).await;
    connack(node, &Connect::new(Proto::V31, &unique_id("anon")), 5).await;
    connack(node, &Connect::v5(&unique_id("anon5")), 0x87).await;
    let mut password_only = Connect::v5(&unique_id("pwonly5"));
    password_only.password = Some(ALICE_PASSWORD.as_bytes().to_vec());
    connack(node, &password_only, 0x87).await;
    // A known user still gets in, a wrong password is still 4 / 0x86.
    let alice = login(Connect::v311(&unique_id("alice")), "alice", ALICE_PASSWORD);
    connack(node, &alice, 0).await;
    let alice = login(Connect::v5(&unique_id("alice5")), "alice", ALICE_PASSWORD);
    connack(node, &alice, 0).await;
    connack(
        node,
        &login(Connect::v311(&unique_id("bad")), "bob", "wrong-pw"),
        4,
    )
    .await;
    connack(
        node,
        &login(Connect::v5(&unique_id("bad5")), "bob", "wrong-pw"),
        0x86,
    )
    .await;
    assert_no_password_in_logs(node);
}

/// Collects event messages and finds them in any order.
struct Events {
    raw: RawClient,
    seen: Vec<(String, Value)>,
    /// Every payload as text, for the no-password check.
    all: Vec<String>,
}

impl Events {
    /// A loopback subscriber; it has to log in like everyone else.
    async fn watch(node: &Node, filters: &[&str]) -> Events {
        let connect = login(Connect::v5(&unique_id("watcher")), "alice", ALICE_PASSWORD);
        let (mut raw, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
        let subs: Vec<SubFilter> = filters.iter().map(|f| SubFilter::new(f, 0)).collect();
        let codes = raw.subscribe(1, &subs).await;
        assert!(codes.iter().all(|c| *c == 0), "SUBACK {codes:02x?}");
        Events {
            raw,
            seen: Vec::new(),
            all: Vec::new(),
        }
    }

    /// The first event on `topic` about client `id` (either dialect's field name).
    async fn about(&mut self, topic: &str, id: &str) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let found = self
                .seen
                .iter()
                .position(|(t, v)| t == topic && (v["clientid"] == id || v["clientId"] == id));
            if let Some(i) = found {
                return self.seen.remove(i).1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.recv(left).await {
                Ok(Packet::Publish(p)) => {
                    let text = String::from_utf8(p.payload).expect("UTF-8 event");
                    let value = serde_json::from_str(&text).expect("JSON event");
                    self.all.push(text);
                    self.seen.push((p.topic, value));
                }
                Ok(_) => {}
                Err(e) => panic!("no {topic} event for {id} ({e:?}); seen {:?}", self.seen),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_disconnect_events_with_their_reasons() {
    let n = node(&[
        ("SKEIN_ALLOW_ANONYMOUS", "false"),
        ("SKEIN_EVENTS_DOLLAR_EVENT", "true"),
    ]);
    let node = &n.node;
    let mut w = Events::watch(
        node,
        &[
            "$events/client_connected",
            "$events/client_disconnected",
            "$EVENT.CONNECT",
            "$EVENT.CLOSE",
        ],
    )
    .await;

    // Bad password: not_authenticated in $events, not_authorized in $EVENT.
    let mut refused = Vec::new();
    let id = unique_id("intruder");
    refused.push(id.clone());
    connack(node, &login(Connect::v5(&id), "alice", "wrong-pw"), 0x86).await;
    let e = w.about("$events/client_disconnected", &id).await;
    assert_eq!(e["event"], "client.disconnected");
    assert_eq!(e["reason"], "not_authenticated");
    assert_eq!(e["username"], "alice");
    assert!(e["disconnected_at"].is_u64(), "{e}");
    let peer = e["peername"].as_str().expect("peername");
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(e["node"], node.mqtt_addr().to_string().as_str());
    let c = w.about("$EVENT.CLOSE", &id).await;
    assert_eq!(c["reason"], "not_authorized");
    assert_eq!(c["clientIp"], "127.0.0.1");
    // CONNECT comes before authentication, so it is reported; its auth has no password.
    let connect = w.about("$EVENT.CONNECT", &id).await;
    assert_eq!(connect["auth"], serde_json::json!({ "username": "alice" }));

    // The same over MQTT 3.1.1.
    let id = unique_id("intruder3");
    refused.push(id.clone());
    connack(node, &login(Connect::v311(&id), "mallory", "wrong-pw"), 4).await;
    let e = w.about("$events/client_disconnected", &id).await;
    assert_eq!(e["reason"], "not_authenticated");
    assert_eq!(e["username"], "mallory");
    assert_eq!(
        w.about("$EVENT.CLOSE", &id).await["reason"],
        "not_authorized"
    );

    // No username while anonymous clients are refused: not_authorized in both.
    let id = unique_id("anon");
    refused.push(id.clone());
    connack(node, &Connect::v311(&id), 5).await;
    let e = w.about("$events/client_disconnected", &id).await;
    assert_eq!(e["reason"], "not_authorized");
    assert!(e["username"].is_null(), "{e}");
    assert_eq!(
        w.about("$EVENT.CLOSE", &id).await["reason"],
        "not_authorized"
    );

    // A good login is connected; the refused ones never were. (The watcher may see its
    // own client_connected: the event can be routed after its SUBSCRIBE.)
    let id = unique_id("bob");
    let (_bob, _, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        &login(Connect::v5(&id), "bob", BOB_PASSWORD),
    )
    .await;
    let e = w.about("$events/client_connected", &id).await;
    assert_eq!(e["username"], "bob");
    let refused_connected = w.seen.iter().any(|(t, v)| {
        t == "$events/client_connected" && refused.iter().any(|r| v["clientid"] == r.as_str())
    });
    assert!(!refused_connected, "{:?}", w.seen);

    for text in &w.all {
        for secret in ["wrong-pw", "hunter2", "password"] {
            assert!(
                !text.contains(secret),
                "an event carries {secret:?}: {text}"
            );
        }
    }
    assert_eq!(
        metric_sum(
            node.http_addr(),
            "skein_connects_refused_total",
            &["reason=\"not_authenticated\""]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric_sum(
            node.http_addr(),
            "skein_connects_refused_total",
            &["reason=\"not_authorized\""]
        )
        .await,
        1.0
    );
    assert_no_password_in_logs(node);
}

#[test]
fn a_bad_password_file_or_policy_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    std::fs::write(&path, format!("{ALICE}\nmallory:hunter2\n")).unwrap();
    let out = Node::builder()
        .env("SKEIN_PASSWORD_FILE", path.display())
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let line = out.stderr.trim();
    assert!(
        line.starts_with("config error: password_file: ") && line.contains("line 2"),
        "{line}"
    );
    assert!(!line.contains("hunter2"), "{line}");

    let out = Node::builder()
        .env("SKEIN_PASSWORD_FILE", dir.path().join("missing").display())
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);

    let out = Node::builder()
        .env("SKEIN_ALLOW_ANONYMOUS", "false")
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.starts_with("config error: allow_anonymous: "),
        "{}",
        out.stderr
    );
}
