//! Process lifecycle: startup contract, health endpoints, persistence across
//! kill -9 and restart, SIGTERM, configuration errors.

use std::time::Duration;

use skein_tests::clients::v3;
use skein_tests::codec;
use skein_tests::{http_get, wait_until, Connect, Node, RawClient, SubFilter, QUIET, RECV_TIMEOUT};

fn persistent(node: &Node, id: &str) -> v3::MqttOptions {
    let mut o = v3::options(node.mqtt_addr(), id);
    o.set_clean_session(false);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_lines_and_health_endpoints() {
    let node = Node::start();
    let out = node.stdout();
    assert!(
        out.contains(&format!("mqtt listening on {}", node.mqtt_addr())),
        "stdout: {out}"
    );
    assert!(
        out.contains(&format!("http listening on {}", node.http_addr())),
        "stdout: {out}"
    );
    assert_ne!(node.mqtt_addr().port(), 0);
    assert_ne!(node.http_addr().port(), 0);

    let (status, _) = http_get(node.http_addr(), "/healthz")
        .await
        .expect("GET /healthz");
    assert_eq!(status, 200, "/healthz");
    // readiness may lag liveness a little: poll with a deadline
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = 0;
    while last != 200 && std::time::Instant::now() < deadline {
        last = http_get(node.http_addr(), "/readyz")
            .await
            .map(|r| r.0)
            .unwrap_or(0);
        if last != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(last, 200, "/readyz never returned 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_offline_queue_of_persistent_session() {
    let mut node = Node::start();
    let mut c = v3::Client::connect_with(persistent(&node, "durable")).await;
    c.subscribe("dur/#", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v3::Client::connect(node.mqtt_addr(), "dur-pub").await;
    for i in 0..3 {
        // PUBACK received = the broker owns the message
        publ.publish(
            &format!("dur/{i}"),
            v3::QoS::AtLeastOnce,
            false,
            format!("m{i}"),
        )
        .await;
    }
    publ.kill().await;

    node.kill9();
    node.restart();

    let mut c = v3::Client::connect_with(persistent(&node, "durable")).await;
    assert!(c.session_present(), "session must survive kill -9");
    let got: Vec<String> = c
        .recv_n(3)
        .await
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, vec!["m0", "m1", "m2"]);

    // the subscription itself survived too
    let mut publ = v3::Client::connect(node.mqtt_addr(), "dur-pub2").await;
    publ.publish("dur/after", v3::QoS::AtLeastOnce, false, "after")
        .await;
    assert_eq!(&c.recv().await.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_retained_messages() {
    let mut node = Node::start();
    let mut publ = v3::Client::connect(node.mqtt_addr(), "ret-pub").await;
    publ.publish("ret/a", v3::QoS::AtLeastOnce, true, "A").await;
    publ.publish("ret/b", v3::QoS::AtLeastOnce, true, "B1")
        .await;
    publ.publish("ret/b", v3::QoS::AtLeastOnce, true, "B2")
        .await;
    publ.publish("ret/c", v3::QoS::AtLeastOnce, true, "C").await;
    publ.publish("ret/c", v3::QoS::AtLeastOnce, true, "").await; // deleted
    publ.kill().await;

    node.kill9();
    node.restart();

    let mut sub = v3::Client::connect(node.mqtt_addr(), "ret-sub").await;
    sub.subscribe("ret/#", v3::QoS::AtLeastOnce).await;
    let mut got: Vec<(String, String, bool)> = sub
        .recv_n(2)
        .await
        .into_iter()
        .map(|p| {
            (
                p.topic,
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.retain,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("ret/a".into(), "A".into(), true),
            ("ret/b".into(), "B2".into(), true)
        ]
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_unacked_inflight_message() {
    // A QoS 1 message sent to a persistent session but never acknowledged
    // must be redelivered (DUP=1) after kill -9 + restart.
    let mut node = Node::start();
    let connect = Connect::v311("inflight").persistent(0);
    let (mut c, _, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    c.subscribe(1, &[SubFilter::new("inf", 1)]).await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "inf-pub").await;
    publ.publish("inf", v3::QoS::AtLeastOnce, false, "unacked")
        .await;
    let first = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(first.payload, b"unacked");

    node.kill9();
    let _ = c.expect_closed(RECV_TIMEOUT).await;
    node.restart();

    let (mut c, sp, _) = RawClient::connect_ok(node.mqtt_addr(), &connect).await;
    assert!(sp);
    let again = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(again.payload, b"unacked");
    assert!(again.dup, "redelivery must carry DUP=1: {again:?}");
    c.send(&codec::puback(again.pkid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_v5_clients_with_0x8b_and_exits_0() {
    let mut node = Node::start();
    let mut c5 = RawClient::v5(node.mqtt_addr(), "term5").await;
    let mut c3 = RawClient::v311(node.mqtt_addr(), "term311").await;
    c5.ping().await;
    c3.ping().await;

    let status = node.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\nstderr:\n{}",
        node.stderr()
    );

    c5.expect_disconnect(0x8B, RECV_TIMEOUT).await;
    let seen = c3.expect_closed(RECV_TIMEOUT).await;
    assert!(seen.is_empty(), "v3.1.1 clients are just closed: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_state_for_restart() {
    let mut node = Node::start();
    let mut c = v3::Client::connect_with(persistent(&node, "graceful")).await;
    c.subscribe("gr", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "gr-pub").await;
    publ.publish("gr", v3::QoS::AtLeastOnce, false, "queued")
        .await;
    publ.publish("gr/ret", v3::QoS::AtLeastOnce, true, "retained")
        .await;
    publ.kill().await;

    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    node.restart();

    let mut c = v3::Client::connect_with(persistent(&node, "graceful")).await;
    assert!(c.session_present());
    assert_eq!(&c.recv().await.payload[..], b"queued");
    let mut s = v3::Client::connect(node.mqtt_addr(), "gr-sub").await;
    s.subscribe("gr/ret", v3::QoS::AtLeastOnce).await;
    assert_eq!(&s.recv().await.payload[..], b"retained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_mqtt_port_and_data_dir() {
    let mut node = Node::start();
    let (port, dir) = (node.mqtt_port(), node.data_dir().to_path_buf());
    node.kill9();
    node.restart();
    assert_eq!(node.mqtt_port(), port);
    assert_eq!(node.data_dir(), dir.as_path());
    let mut c = RawClient::v311(node.mqtt_addr(), "after-restart").await;
    c.ping().await;
    assert!(wait_until(Duration::from_secs(5), || node.try_wait().is_none()).await);
}

fn assert_config_error(out: &skein_tests::node::ExitOutput, setting_words: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "config error must exit with code 2: {:?}\nstderr: {}",
        out.status,
        out.stderr
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "config error must be one stderr line, got: {:?}",
        out.stderr
    );
    let norm = lines[0].to_lowercase().replace(['-', '_', '.'], "");
    for w in setting_words {
        assert!(
            norm.contains(&w.to_lowercase().replace(['-', '_', '.'], "")),
            "stderr line must name {w}: {:?}",
            lines[0]
        );
    }
    assert!(
        !out.stdout.contains("listening on"),
        "must not start listening on a config error: {}",
        out.stdout
    );
}

#[test]
fn bad_env_setting_exits_2_naming_the_setting() {
    let out = Node::builder()
        .env("SKEIN_MAX_KEEPALIVE", "abc")
        .run_to_exit(Duration::from_secs(10));
    assert_config_error(&out, &["max_keepalive"]);

    let out = Node::builder()
        .env("SKEIN_MAX_INFLIGHT", "-3")
        .run_to_exit(Duration::from_secs(10));
    assert_config_error(&out, &["max_inflight"]);
}

#[test]
fn unparsable_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "this is = = not toml [\n").unwrap();
    let out = Node::builder()
        .arg("--config")
        .arg(path.display())
        .run_to_exit(Duration::from_secs(10));
    assert_config_error(&out, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_sees_server_disconnect_via_rumqttc_on_sigterm() {
    use skein_tests::clients::v5;
    let mut node = Node::start();
    let mut c = v5::Client::connect(node.mqtt_addr(), "rum-term").await;
    let status = node.terminate();
    assert!(status.success());
    let err = c.wait_closed(RECV_TIMEOUT).await;
    assert!(
        err.contains("ServerShuttingDown") || err.contains("ServerDisconnect"),
        "rumqttc should report a server DISCONNECT (shutting down), got {err}"
    );
}
