//! Device certificates (issue 16, seed 001) with real nodes and real clients:
//! mosquitto_pub / mosquitto_sub over TLS with `--cert` / `--key`, certificates generated
//! by the test, serial numbers checked against `openssl x509 -serial`. First sight
//! registers a certificate once, cluster-wide, and raises `certificate.registered` with the
//! seed's fields; a certificate that is not active is refused (CONNACK not authorized,
//! 3.1.1 and 5) and raises `certificate.rejected`; the admin API lists, shows and sets
//! statuses on any node; revoking a certificate ends the clients that use it, on every node.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use skein_tests::certs::{s, TestCa, TlsFiles};
use skein_tests::cli::{try_mosquitto_pub, Sub};
use skein_tests::cluster::TestCluster;
use skein_tests::{http_request, metric_sum, unique_id, Node, NodeBuilder, RECV_TIMEOUT};

#[allow(dead_code)]
#[path = "events_mqtt/watcher.rs"]
mod watcher;

use watcher::{assert_recent_ms, Watcher};

/// The settings of a node with `--mqtts` that requires client certificates from `files.ca`.
fn with_tls(builder: NodeBuilder, files: &TlsFiles, extra: &[(&str, &str)]) -> NodeBuilder {
    let mut b = builder
        .arg("--mqtts")
        .arg("127.0.0.1:0")
        .env("SKEIN_TLS_CERT_FILE", s(&files.server_cert))
        .env("SKEIN_TLS_KEY_FILE", s(&files.server_key))
        .env("SKEIN_TLS_CLIENT_CA_FILE", s(&files.ca))
        .env("SKEIN_TLS_CLIENT_CERT", "required");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b
}

fn tls_node(files: &TlsFiles, extra: &[(&str, &str)]) -> Node {
    with_tls(Node::builder(), files, extra).start()
}

/// The serial number of the certificate in `pem`, as `openssl x509 -serial` prints it, in
/// lower case: an independent reading of what the broker parses itself.
fn openssl_serial(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", s(pem)])
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("openssl printed {text:?}"))
        .to_ascii_lowercase()
}

/// mosquitto_pub over TLS with the client certificate of `files` (`extra`: more
/// arguments); whether it worked, and its stderr.
fn publish_with_cert(addr: SocketAddr, files: &TlsFiles, extra: &[&str]) -> (bool, String) {
    let topic = unique_id("certs/t");
    let mut args = cert_args(files).to_vec();
    args.extend_from_slice(&["-t", &topic, "-m", "hello", "-q", "1"]);
    args.extend_from_slice(extra);
    let out = try_mosquitto_pub(addr, &args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A long-lived mosquitto_sub over TLS with the client certificate of `files`, as client
/// `id` (MQTT 5).
fn subscriber_with_cert(addr: SocketAddr, files: &TlsFiles, id: &str) -> Sub {
    let topic = unique_id("certs/live");
    let mut args = cert_args(files).to_vec();
    args.extend_from_slice(&["-V", "5", "-i", id, "-t", &topic, "-W", "30"]);
    Sub::start(addr, &args)
}

/// The mosquitto client arguments that trust `files.ca` and present its client certificate.
fn cert_args(files: &TlsFiles) -> [&str; 6] {
    [
        "--cafile",
        s(&files.ca),
        "--cert",
        s(&files.client_cert),
        "--key",
        s(&files.client_key),
    ]
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let headers: &[&str] = if body.is_empty() {
        &[]
    } else {
        &["Content-Type: application/json"]
    };
    let (status, text) = http_request(addr, method, path, headers, body)
        .await
        .expect("HTTP request");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Waits (RECV_TIMEOUT) until the certificate at `path` shows `status` on the node at `addr`.
async fn status_becomes(addr: SocketAddr, path: &str, status: &str) -> bool {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let (code, body) = api(addr, "GET", path, "").await;
        if code == 200 && body["status"] == status {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (RECV_TIMEOUT) for `node` to log a connection closed with the reason string of
/// a revoked certificate `sn`.
async fn closed_naming(node: &Node, sn: &str) -> bool {
    let reason = format!("certificate {sn} is revoked");
    skein_tests::wait_until(RECV_TIMEOUT, || {
        node.stderr()
            .lines()
            .any(|l| l.contains("connection closed") && l.contains(&reason) && l.contains("kicked"))
    })
    .await
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

const CERTIFICATE_EVENT_KEYS: [&str; 10] = [
    "caSn",
    "certificateChainSn",
    "commonName",
    "event",
    "node",
    "node_name",
    "peerName",
    "sn",
    "status",
    "timestamp",
];

/// One node requiring client certificates from a fresh test CA, a client certificate for
/// `cn`, and a watcher of `$events/#` on it.
struct OneNode {
    files: TlsFiles,
    node: Node,
    addr: SocketAddr,
    http: SocketAddr,
    /// The client certificate's serial, as `openssl x509 -serial` prints it.
    sn: String,
    w: Watcher,
}

async fn one_node(cn: &str, extra: &[(&str, &str)]) -> OneNode {
    let files = TlsFiles::new(&TestCa::new("Skein Device CA"), cn);
    let node = tls_node(&files, extra);
    let w = Watcher::start(&node, &["$events/#"]).await;
    OneNode {
        addr: node.listener_addr("mqtts"),
        http: node.http_addr(),
        sn: openssl_serial(&files.client_cert),
        files,
        node,
        w,
    }
}

/// Checks a certificate event field by field.
fn assert_certificate_event(v: &Value, event: &str, files: &TlsFiles, cn: &str, status: &str) {
    let sn = openssl_serial(&files.client_cert);
    let ca_sn = openssl_serial(&files.ca);
    assert_eq!(keys(v), CERTIFICATE_EVENT_KEYS, "{v}");
    assert_eq!(v["event"], event);
    assert_recent_ms(&v["timestamp"]);
    assert!(v["node"].as_str().is_some_and(|n| n.contains(':')), "{v}");
    let peer = v["peerName"].as_str().expect("peerName");
    assert!(peer.starts_with("127.0.0.1:"), "{v}");
    assert_eq!(v["sn"], sn.as_str());
    assert_eq!(v["caSn"], ca_sn.as_str());
    assert_eq!(v["commonName"], cn);
    assert_eq!(v["status"], status);
    assert_eq!(v["certificateChainSn"], format!("{sn},{ca_sn}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sight_registers_a_certificate_once_with_the_seed_fields() {
    let OneNode {
        files,
        node: _node,
        addr,
        http,
        sn,
        mut w,
    } = one_node("VIN-1234-5678", &[]).await;

    let (ok, err) = publish_with_cert(addr, &files, &[]);
    assert!(
        ok,
        "the first connection with a new certificate is accepted: {err}"
    );
    let v = w
        .wait("$events/certificate_registered", |v| v["sn"] == sn.as_str())
        .await;
    assert_certificate_event(
        &v,
        "certificate.registered",
        &files,
        "VIN-1234-5678",
        "active",
    );

    // Seen again: registered already, accepted, no second event.
    let (ok, err) = publish_with_cert(addr, &files, &["-V", "5"]);
    assert!(ok, "{err}");
    w.expect_none(
        Duration::from_millis(500),
        "$events/certificate_registered",
        |_| true,
    )
    .await;
    w.expect_none(Duration::ZERO, "$events/certificate_rejected", |_| true)
        .await;
    assert_eq!(
        metric_sum(
            http,
            "skein_certificates_registered_total",
            &["status=\"active\""]
        )
        .await,
        1.0
    );

    // The admin API: the list, the detail (upper-case hex accepted), errors.
    let (status, list) = api(http, "GET", "/api/v1/certificates", "").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["meta"]["count"], 1, "{list}");
    let row = &list["data"][0];
    assert_eq!(row["sn"], sn.as_str());
    assert_eq!(row["caSn"], openssl_serial(&files.ca).as_str());
    assert_eq!(row["commonName"], "VIN-1234-5678");
    assert_eq!(row["status"], "active");
    assert_eq!(row["certificateChainSn"], v["certificateChainSn"]);
    assert_recent_ms(&row["registered_at"]);
    assert_eq!(row["registered_at"], row["updated_at"]);
    let path = format!("/api/v1/certificates/{}", sn.to_ascii_uppercase());
    let (status, one) = api(http, "GET", &path, "").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["sn"], sn.as_str());
    let (_, none) = api(http, "GET", "/api/v1/certificates?status=revoked", "").await;
    assert_eq!(none["meta"]["count"], 0, "{none}");
    for (method, path, body, expected) in [
        ("GET", "/api/v1/certificates/abcdef01", "", 404),
        ("GET", "/api/v1/certificates/not-hex", "", 400),
        ("GET", "/api/v1/certificates?status=gone", "", 400),
        (
            "PUT",
            "/api/v1/certificates/abcdef01",
            r#"{"status":"revoked"}"#,
            404,
        ),
        ("PUT", path.as_str(), r#"{"status":"deleted"}"#, 400),
        ("PUT", path.as_str(), r#"{"state":"revoked"}"#, 400),
        ("PUT", path.as_str(), "not json", 400),
    ] {
        let (status, body) = api(http, method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_certificate_is_refused_until_an_operator_activates_it() {
    let OneNode {
        files,
        node: _node,
        addr,
        http,
        sn,
        mut w,
    } = one_node(
        "VIN-pending",
        &[("SKEIN_CERTIFICATE_AUTO_ACTIVATE", "false")],
    )
    .await;

    // MQTT 3.1.1: return code 5; MQTT 5: reason code 0x87.
    let (ok, err) = publish_with_cert(addr, &files, &["-V", "311"]);
    assert!(!ok, "a pending certificate is refused");
    assert!(err.to_lowercase().contains("not authori"), "{err}");
    let v = w
        .wait("$events/certificate_registered", |v| v["sn"] == sn.as_str())
        .await;
    assert_certificate_event(
        &v,
        "certificate.registered",
        &files,
        "VIN-pending",
        "pending_activation",
    );
    let v = w
        .wait("$events/certificate_rejected", |v| v["sn"] == sn.as_str())
        .await;
    assert_certificate_event(
        &v,
        "certificate.rejected",
        &files,
        "VIN-pending",
        "pending_activation",
    );
    let (ok, err) = publish_with_cert(addr, &files, &["-V", "5"]);
    assert!(!ok, "a pending certificate is refused over MQTT 5 too");
    assert!(err.to_lowercase().contains("not authori"), "{err}");
    let v = w
        .wait("$events/certificate_rejected", |v| v["sn"] == sn.as_str())
        .await;
    assert_eq!(v["status"], "pending_activation");
    assert_eq!(
        metric_sum(
            http,
            "skein_certificates_rejected_total",
            &["status=\"pending_activation\""]
        )
        .await,
        2.0
    );
    // Registered once, whatever the number of attempts.
    w.expect_none(Duration::ZERO, "$events/certificate_registered", |_| true)
        .await;

    let path = format!("/api/v1/certificates/{sn}");
    let (status, body) = api(http, "PUT", &path, r#"{"status":"active"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    assert!(
        body["updated_at"].as_u64() >= body["registered_at"].as_u64(),
        "{body}"
    );
    let (ok, err) = publish_with_cert(addr, &files, &["-V", "5"]);
    assert!(ok, "an activated certificate connects: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_certificate_kicks_its_live_client_and_refuses_it_after() {
    let OneNode {
        files,
        node,
        addr,
        http,
        sn,
        mut w,
    } = one_node("VIN-revoked", &[]).await;
    let id = unique_id("device");
    let sub = subscriber_with_cert(addr, &files, &id);
    w.about("$events/client_connected", &id).await;

    let path = format!("/api/v1/certificates/{sn}");
    let (status, body) = api(http, "PUT", &path, r#"{"status":"revoked"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "revoked");
    let v = w.about("$events/client_disconnected", &id).await;
    assert_eq!(v["reason"], "kicked", "{v}");
    // The DISCONNECT's reason string names the certificate; the node logs the close with it.
    assert!(closed_naming(&node, &sn).await, "{}", node.stderr());
    assert_eq!(
        metric_sum(
            http,
            "skein_certificate_kicks_total",
            &["status=\"revoked\""]
        )
        .await,
        1.0
    );
    // Its reconnection (mosquitto_sub retries) and any new connection are refused.
    let (ok, err) = publish_with_cert(addr, &files, &[]);
    assert!(!ok, "a revoked certificate is refused");
    assert!(err.to_lowercase().contains("not authori"), "{err}");
    let v = w
        .wait("$events/certificate_rejected", |v| v["sn"] == sn.as_str())
        .await;
    assert_certificate_event(&v, "certificate.rejected", &files, "VIN-revoked", "revoked");
    let (_, _) = tokio::task::spawn_blocking(move || sub.finish(Duration::from_secs(40)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_cluster_wide_one_registration_and_revocation_from_any_node() {
    let ca = TestCa::new("Skein Device CA");
    let files = std::sync::Arc::new(TlsFiles::new(&ca, "VIN-cluster"));
    let cluster = {
        let files = files.clone();
        TestCluster::start_with(2, move |_, b| with_tls(b, &files, &[])).await
    };
    let (one, two) = (cluster.node(1), cluster.node(2));
    let sn = openssl_serial(&files.client_cert);
    // Events are routed like any publish: a watcher on node 2 sees node 1's.
    let mut w = Watcher::start(two, &["$events/#"]).await;

    // The same new certificate on both nodes at once: the log order picks one registrar.
    let racers: Vec<_> = [one.listener_addr("mqtts"), two.listener_addr("mqtts")]
        .into_iter()
        .map(|addr| {
            let files = files.clone();
            std::thread::spawn(move || publish_with_cert(addr, &files, &[]))
        })
        .collect();
    for racer in racers {
        let (ok, err) = racer.join().unwrap();
        assert!(ok, "{err}");
    }
    let v = w
        .wait("$events/certificate_registered", |v| v["sn"] == sn.as_str())
        .await;
    assert_certificate_event(
        &v,
        "certificate.registered",
        &files,
        "VIN-cluster",
        "active",
    );
    w.expect_none(
        Duration::from_secs(1),
        "$events/certificate_registered",
        |_| true,
    )
    .await;
    let registered = metric_sum(one.http_addr(), "skein_certificates_registered_total", &[]).await
        + metric_sum(two.http_addr(), "skein_certificates_registered_total", &[]).await;
    assert_eq!(registered, 1.0, "one registration cluster-wide");

    // Both nodes show it.
    let path = format!("/api/v1/certificates/{sn}");
    for node in [one, two] {
        assert!(status_becomes(node.http_addr(), &path, "active").await);
    }

    // A client on node 1, revoked through node 2.
    let id = unique_id("device");
    let sub = subscriber_with_cert(one.listener_addr("mqtts"), &files, &id);
    let connected = w.about("$events/client_connected", &id).await;
    let (status, body) = api(two.http_addr(), "PUT", &path, r#"{"status":"revoked"}"#).await;
    assert_eq!(status, 200, "{body}");
    let v = w.about("$events/client_disconnected", &id).await;
    assert_eq!(v["reason"], "kicked", "{v}");
    assert_eq!(
        v["node"], connected["node"],
        "ended by the node that held it: {v}"
    );
    assert!(closed_naming(one, &sn).await, "{}", one.stderr());
    let seen_revoked = status_becomes(one.http_addr(), &path, "revoked").await;
    assert!(seen_revoked, "node 1 shows the certificate revoked");
    let (ok, _) = publish_with_cert(one.listener_addr("mqtts"), &files, &[]);
    assert!(!ok, "node 1 refuses the revoked certificate");
    tokio::task::spawn_blocking(move || sub.finish(Duration::from_secs(40)))
        .await
        .unwrap();
}
