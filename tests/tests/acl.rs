//! Authorization by ACL file (Mosquitto's format) against a real node: SUBACK and
//! PUBACK/PUBREC codes in MQTT 3.1.1 and 5.0, %c / %u patterns, deny rules at delivery,
//! retained messages and wills, the event topics' default, reloads (on change, on SIGHUP,
//! a bad file keeping the old rules), `message.dropped` with reason `not_authorized`, and
//! mosquitto_pub / mosquitto_sub as independent clients.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use serde_json::Value;
use skein_tests::clients::{v3, v5};
use skein_tests::{
    metric_sum, unique_id, Connect, Node, Packet, Proto, Publish, RawClient, SubFilter, Will,
    QUIET, RECV_TIMEOUT,
};

const PASSWORDS: &str = "alice:plain:alice-pw\nspy:plain:spy-pw\nroot:plain:root-pw\n";

const RULES: &str = "\
# anonymous clients
topic read public/#
topic write anon/in
topic deny $events/client_connected

user alice
topic readwrite alice/#
topic deny alice/secret
topic read public/#

user spy
topic read #

user root
topic readwrite #

pattern readwrite devices/%c/#
pattern read inbox/%u/#
";

struct AclNode {
    node: Node,
    dir: tempfile::TempDir,
}

impl AclNode {
    /// Replaces the ACL file at once (a rename), so the node never reads half of it.
    fn write_acl(&self, rules: &str) {
        let tmp = self.dir.path().join("acl.new");
        std::fs::write(&tmp, rules).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("acl")).unwrap();
    }
}

fn node_with(rules: &str, extra: &[(&str, &str)]) -> AclNode {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("acl"), rules).unwrap();
    std::fs::write(dir.path().join("passwd"), PASSWORDS).unwrap();
    let mut b = Node::builder()
        .env("SKEIN_ACL_FILE", dir.path().join("acl").display())
        .env("SKEIN_PASSWORD_FILE", dir.path().join("passwd").display());
    for (k, v) in extra {
        b = b.env(k, v);
    }
    AclNode {
        node: b.start(),
        dir,
    }
}

fn login(proto: Proto, id: &str, user: &str) -> Connect {
    let mut c = Connect::new(proto, id);
    c.username = Some(user.into());
    c.password = Some(format!("{user}-pw").into_bytes());
    c
}

async fn connect(node: &Node, c: &Connect) -> RawClient {
    RawClient::connect_ok(node.mqtt_addr(), c).await.0
}

/// Publishes at `qos` and returns the acknowledgement's reason (PUBACK or PUBREC).
async fn publish_ack(c: &mut RawClient, topic: &str, qos: u8, retain: bool) -> u8 {
    let mut p = Publish::new(topic, qos, b"payload");
    p.retain = retain;
    c.publish(&p).await;
    match c.recv(RECV_TIMEOUT).await {
        Ok(Packet::PubAck { reason, .. }) if qos == 1 => reason,
        Ok(Packet::PubRec { reason, .. }) if qos == 2 => reason,
        other => panic!("publish to {topic} at QoS {qos}: {other:?}"),
    }
}

/// The next publish `c` receives on `topic`, or None within [`QUIET`].
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_publish_codes_in_both_protocols() {
    let n = node_with(RULES, &[]);
    let node = &n.node;
    let mut spy = connect(node, &login(Proto::V5, &unique_id("spy"), "spy")).await;
    assert_eq!(spy.subscribe(1, &[SubFilter::new("#", 1)]).await, [1]);

    for (proto, denied) in [(Proto::V5, 0x87u8), (Proto::V311, 0x80)] {
        let mut alice = connect(node, &login(proto, &unique_id("alice"), "alice")).await;
        let codes = alice
            .subscribe(
                1,
                &[
                    SubFilter::new("alice/#", 1),
                    SubFilter::new("public/+", 0),
                    SubFilter::new("other/#", 1),
                    SubFilter::new("alice/secret", 1),
                    SubFilter::new("inbox/alice/x", 1),
                    SubFilter::new("inbox/bob/x", 1),
                    SubFilter::new("#", 0),
                    SubFilter::new("$share/g/alice/+", 1),
                ],
            )
            .await;
        assert_eq!(
            codes,
            [1, 0, denied, denied, 1, denied, denied, 1],
            "{proto:?} SUBACK"
        );

        // A denied publish: 5.0 PUBACK/PUBREC 0x87; 3.1.1 acknowledged (0) and dropped.
        let v3_ok = if proto == Proto::V5 { 0x87 } else { 0 };
        assert_eq!(publish_ack(&mut alice, "other/x", 1, false).await, v3_ok);
        assert_eq!(publish_ack(&mut alice, "other/y", 2, false).await, v3_ok);
        if proto == Proto::V311 {
            // The QoS 2 flow completes for the 3.1.1 client.
            alice.send(&skein_tests::codec::ack(0x62, 1)).await;
            assert!(matches!(
                alice.recv(RECV_TIMEOUT).await,
                Ok(Packet::PubComp { .. })
            ));
        }
        alice.publish(&Publish::new("other/z", 0, b"q0")).await;
        // Allowed: acknowledged and delivered.
        assert_eq!(publish_ack(&mut alice, "alice/x", 1, false).await, 0);
        let got = next_on(&mut spy, "alice/x", RECV_TIMEOUT).await;
        assert!(got.is_some(), "{proto:?}: alice/x not routed");
        for refused in ["other/x", "other/y", "other/z"] {
            assert!(
                next_on(&mut spy, refused, QUIET).await.is_none(),
                "{proto:?}: {refused} was routed"
            );
        }
        // %c: a client's own devices/<client id>/... only.
        let id = unique_id("dev");
        let mut dev = connect(node, &Connect::new(proto, &id)).await;
        assert_eq!(
            publish_ack(&mut dev, &format!("devices/{id}/up"), 1, false).await,
            0
        );
        assert_eq!(
            publish_ack(&mut dev, "devices/someone-else/up", 1, false).await,
            v3_ok
        );
        let codes = dev
            .subscribe(
                2,
                &[
                    SubFilter::new(&format!("devices/{id}/#"), 1),
                    SubFilter::new("devices/+/up", 1),
                    SubFilter::new("public/news", 0),
                ],
            )
            .await;
        assert_eq!(codes, [1, denied, 0], "{proto:?} anonymous SUBACK");
    }
    assert!(
        metric_sum(
            node.http_addr(),
            "skein_messages_dropped_total",
            &["reason=\"not_authorized\""]
        )
        .await
            >= 6.0
    );
    assert!(
        metric_sum(
            node.http_addr(),
            "skein_authz_denied_total",
            &["action=\"subscribe\""]
        )
        .await
            >= 10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_apply_at_delivery_and_to_retained_messages_and_wills() {
    let n = node_with(RULES, &[]);
    let node = &n.node;
    let mut root = connect(node, &login(Proto::V5, &unique_id("root"), "root")).await;
    let mut alice = connect(node, &login(Proto::V5, &unique_id("alice"), "alice")).await;
    assert_eq!(
        alice.subscribe(1, &[SubFilter::new("alice/#", 1)]).await,
        [1]
    );
    // alice/# is allowed, its alice/secret part is not: checked per message.
    assert_eq!(publish_ack(&mut root, "alice/secret", 1, false).await, 0);
    assert_eq!(publish_ack(&mut root, "alice/open", 1, false).await, 0);
    let got = next_on(&mut alice, "alice/open", RECV_TIMEOUT).await;
    assert!(got.is_some());
    assert!(next_on(&mut alice, "alice/secret", QUIET).await.is_none());
    assert!(
        metric_sum(
            node.http_addr(),
            "skein_authz_denied_total",
            &["action=\"deliver\""]
        )
        .await
            >= 1.0
    );

    // Retained: a denied retained publish is not kept; an allowed one is delivered only
    // to subscribers who may read it.
    let mut anon = connect(node, &Connect::v5(&unique_id("anon"))).await;
    assert_eq!(publish_ack(&mut anon, "public/r", 1, true).await, 0x87);
    assert_eq!(publish_ack(&mut root, "alice/secret-r", 1, true).await, 0);
    assert_eq!(publish_ack(&mut root, "alice/secret", 1, true).await, 0);
    let mut spy = connect(node, &login(Proto::V5, &unique_id("spy"), "spy")).await;
    assert_eq!(
        spy.subscribe(1, &[SubFilter::new("public/r", 1)]).await,
        [1]
    );
    assert!(next_on(&mut spy, "public/r", QUIET).await.is_none(), "kept");
    let mut alice2 = connect(node, &login(Proto::V311, &unique_id("alice"), "alice")).await;
    assert_eq!(
        alice2.subscribe(1, &[SubFilter::new("alice/#", 1)]).await,
        [1]
    );
    assert!(next_on(&mut alice2, "alice/secret-r", RECV_TIMEOUT)
        .await
        .is_some());
    assert!(next_on(&mut alice2, "alice/secret", QUIET).await.is_none());

    // Wills: one to a topic the client may not write is not published.
    assert_eq!(spy.subscribe(2, &[SubFilter::new("will/#", 1)]).await, [1]);
    let refused = Connect::v311(&unique_id("willful")).will(Will::new("will/anon", b"bye"));
    let allowed =
        login(Proto::V311, &unique_id("alice-will"), "alice").will(Will::new("alice/will", b"bye"));
    assert_eq!(
        spy.subscribe(3, &[SubFilter::new("alice/will", 1)]).await,
        [1]
    );
    connect(node, &refused).await.drop_connection();
    connect(node, &allowed).await.drop_connection();
    assert!(next_on(&mut spy, "alice/will", RECV_TIMEOUT)
        .await
        .is_some());
    assert!(next_on(&mut spy, "will/anon", QUIET).await.is_none());
    assert_eq!(
        metric_sum(
            node.http_addr(),
            "skein_authz_denied_total",
            &["action=\"will\""]
        )
        .await,
        1.0
    );
}

/// A web server that keeps every webhook body.
async fn webhook() -> (Arc<Mutex<Vec<Value>>>, SocketAddr) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keep = bodies.clone();
    let app = Router::new().route(
        "/hook",
        post(move |body: String| {
            let keep = keep.clone();
            async move {
                keep.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (bodies, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_are_message_dropped_not_authorized() {
    let (bodies, hook) = webhook().await;
    let n = node_with(
        RULES,
        &[
            ("SKEIN_WEBHOOK_URLS", &format!("http://{hook}/hook")),
            (
                "SKEIN_WEBHOOK_RULES",
                r#"[{"action": "on_message_dropped"}]"#,
            ),
        ],
    );
    let node = &n.node;
    let id = unique_id("alice");
    let mut alice = connect(node, &login(Proto::V5, &id, "alice")).await;
    assert_eq!(publish_ack(&mut alice, "other/x", 1, false).await, 0x87);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let found = bodies
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["action"] == "message_dropped" && v["topic"] == "other/x")
            .cloned();
        if let Some(v) = found {
            break v;
        }
        assert!(Instant::now() < deadline, "no message_dropped body");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["reason"], "not_authorized");
    assert_eq!(body["from_client_id"], id.as_str());
    assert_eq!(body["from_username"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_topics_keep_their_default_unless_the_acl_names_them() {
    let n = node_with(RULES, &[("SKEIN_EVENTS_DOLLAR_EVENT", "true")]);
    let node = &n.node;
    // Anonymous on loopback: the default allows event topics, except the one the
    // anonymous section denies.
    let mut anon = connect(node, &Connect::v5(&unique_id("anon"))).await;
    let codes = anon
        .subscribe(
            1,
            &[
                SubFilter::new("$events/client_disconnected", 0),
                SubFilter::new("$events/client_connected", 0),
                SubFilter::new("$EVENT.CONNECT", 0),
            ],
        )
        .await;
    assert_eq!(codes, [0, 0x87, 0]);
    // Clients still can't publish there, whatever the ACL says (root has readwrite #,
    // which does not reach $ topics anyway).
    let mut root = connect(node, &login(Proto::V5, &unique_id("root"), "root")).await;
    assert_eq!(
        publish_ack(&mut root, "$events/client_connected", 1, false).await,
        0x87
    );
    // The event of a new connection reaches the anonymous subscriber (read at delivery).
    let id = unique_id("someone");
    let _c = connect(node, &Connect::v311(&id)).await;
    // (root's own CONNECT event may come first.)
    loop {
        let p = next_on(&mut anon, "$EVENT.CONNECT", RECV_TIMEOUT)
            .await
            .expect("$EVENT.CONNECT delivered");
        if String::from_utf8_lossy(&p.payload).contains(&id) {
            break;
        }
    }
}

/// Subscribes `filter` with a fresh v5 client until the SUBACK code is `want`.
async fn wait_for_code(node: &Node, filter: &str, want: u8) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = connect(node, &Connect::v5(&unique_id("probe"))).await;
        let code = c.subscribe(1, &[SubFilter::new(filter, 0)]).await[0];
        c.disconnect().await;
        if code == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{filter}: SUBACK 0x{code:02x}, never 0x{want:02x}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_change_and_a_bad_file_keeps_them() {
    let n = node_with("topic read a/#\n", &[("SKEIN_ACL_POLL_MS", "100")]);
    let node = &n.node;
    // A subscriber that stays connected across the reloads.
    let mut early = connect(node, &Connect::v5(&unique_id("early"))).await;
    assert_eq!(early.subscribe(1, &[SubFilter::new("a/#", 1)]).await, [1]);
    wait_for_code(node, "b/x", 0x87).await;

    n.write_acl("topic read b/#\ntopic readwrite a/#\n");
    wait_for_code(node, "b/x", 0).await;
    let mut writer = connect(node, &Connect::v5(&unique_id("w"))).await;
    assert_eq!(publish_ack(&mut writer, "a/1", 1, false).await, 0);
    assert!(next_on(&mut early, "a/1", RECV_TIMEOUT).await.is_some());

    // A bad file: logged, counted, the rules in force stay.
    n.write_acl("topic read c/#\nfrobnicate\n");
    let reloaded = skein_tests::wait_until(Duration::from_secs(10), || {
        node.stderr().contains("ACL file not reloaded")
    })
    .await;
    assert!(reloaded, "{}", node.stderr());
    assert!(node.stderr().contains("line 2"), "{}", node.stderr());
    assert_eq!(
        metric_sum(
            node.http_addr(),
            "skein_acl_reloads_total",
            &["outcome=\"error\""]
        )
        .await,
        1.0
    );
    wait_for_code(node, "b/x", 0).await;
    wait_for_code(node, "c/x", 0x87).await;

    // Read revoked while subscribed: the subscription stays, its messages stop.
    n.write_acl("topic write a/#\n");
    wait_for_code(node, "a/x", 0x87).await;
    assert_eq!(publish_ack(&mut writer, "a/2", 1, false).await, 0);
    assert!(next_on(&mut early, "a/2", QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules() {
    use rustix::process::{kill_process, Pid, Signal};
    // Polling off: only SIGHUP reloads.
    let n = node_with("topic read a/#\n", &[("SKEIN_ACL_POLL_MS", "0")]);
    let node = &n.node;
    let pid = Pid::from_raw(node.pid() as i32).unwrap();
    // At once after it says it listens: the handler is already there (a SIGHUP before it
    // would end the process).
    kill_process(pid, Signal::HUP).unwrap();
    wait_for_code(node, "a/x", 0).await;
    n.write_acl("topic read b/#\n");
    wait_for_code(node, "b/x", 0x87).await;
    tokio::time::sleep(QUIET).await;
    wait_for_code(node, "b/x", 0x87).await;
    kill_process(pid, Signal::HUP).unwrap();
    wait_for_code(node, "b/x", 0).await;
    wait_for_code(node, "a/x", 0x87).await;
    assert!(node.stderr().contains("SIGHUP"), "{}", node.stderr());
}

/// Runs a mosquitto client to completion (10 s deadline); its stdout and stderr.
fn mosquitto(tool: &str, addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (apt-get install -y mosquitto-clients)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn mosquitto_clients_see_the_codes() {
    let n = node_with(RULES, &[]);
    let addr = n.node.mqtt_addr();
    let cred = ["-u", "alice", "-P", "alice-pw"];
    for (version, denied) in [("mqttv311", "128"), ("mqttv5", "135")] {
        // mosquitto_sub -d prints the SUBACK's codes.
        let mut args = vec!["-V", version, "-d", "-W", "1", "-C", "1"];
        args.extend(cred);
        args.extend(["-t", "alice/x", "-t", "other/x"]);
        let (_, out) = mosquitto("mosquitto_sub", addr, &args);
        assert!(
            out.contains(&format!("Subscribed (mid: 1): 1, {denied}"))
                || out.contains(&format!("Subscribed (mid: 1): 0, {denied}")),
            "{version}: {out}"
        );
    }
    // mosquitto_pub: an allowed publish succeeds; a refused one is acknowledged (3.1.1) or
    // reported as not authorized (5.0).
    let mut args = vec![
        "-V", "mqttv311", "-q", "1", "-t", "other/x", "-m", "m", "-d",
    ];
    args.extend(cred);
    let (ok, out) = mosquitto("mosquitto_pub", addr, &args);
    assert!(ok && out.contains("received PUBACK"), "{out}");
    let mut args = vec!["-V", "mqttv5", "-q", "1", "-t", "other/x", "-m", "m", "-d"];
    args.extend(cred);
    let (_, out) = mosquitto("mosquitto_pub", addr, &args);
    assert!(out.to_lowercase().contains("not authorized"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_clients_get_the_codes() {
    let n = node_with(RULES, &[]);
    let node = &n.node;
    let mut o = v5::options(node.mqtt_addr(), &unique_id("rumq5"));
    o.set_credentials("alice", "alice-pw");
    let mut c = v5::Client::connect_with(o).await;
    let code = c.subscribe("other/#", v5::QoS::AtLeastOnce).await;
    assert_eq!(code, v5::SubscribeReasonCode::NotAuthorized);
    let code = c.subscribe("alice/#", v5::QoS::AtLeastOnce).await;
    assert_eq!(code, v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce));
    c.disconnect().await;
    let mut o = v3::options(node.mqtt_addr(), &unique_id("rumq3"));
    o.set_credentials("alice", "alice-pw");
    let mut c = v3::Client::connect_with(o).await;
    let code = c.subscribe("other/#", v3::QoS::AtLeastOnce).await;
    assert_eq!(code, v3::SubscribeReasonCode::Failure);
    let code = c.subscribe("public/#", v3::QoS::AtMostOnce).await;
    assert_eq!(code, v3::SubscribeReasonCode::Success(v3::QoS::AtMostOnce));
    c.disconnect().await;
}

#[test]
fn a_bad_acl_file_at_startup_is_a_config_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl");
    std::fs::write(&path, "topic read a/#\nuser\n").unwrap();
    let out = Node::builder()
        .env("SKEIN_ACL_FILE", path.display())
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let line = out.stderr.trim();
    assert!(
        line.starts_with("config error: acl_file: ") && line.contains("line 2"),
        "{line}"
    );
}
