//! `GET /metrics`: the Prometheus text format passes `promtool check metrics` (Debian
//! package `prometheus`), and the series count real MQTT traffic.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use skein_tests::clients::{v3, v5};
use skein_tests::{Node, Proto, RawClient, RECV_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: the response head (lower case) and the body.
struct Scrape {
    head: String,
    body: String,
}

impl Scrape {
    /// The value of `series` (name and labels exactly as rendered); None if absent.
    fn value(&self, series: &str) -> Option<f64> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The value of `series`, which must be present.
    fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.body))
    }
}

async fn scrape(http: SocketAddr) -> Scrape {
    let mut s = tokio::time::timeout(RECV_TIMEOUT, tokio::net::TcpStream::connect(http))
        .await
        .expect("HTTP connect timed out")
        .expect("HTTP connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("HTTP write");
    let mut raw = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut raw))
        .await
        .expect("HTTP response timed out")
        .expect("HTTP read");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "the body is read as-is"
    );
    Scrape {
        head,
        body: body.to_string(),
    }
}

/// Scrapes until `cond` holds (deadline RECV_TIMEOUT); returns the last scrape.
async fn scrape_until(http: SocketAddr, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let end = Instant::now() + RECV_TIMEOUT;
    loop {
        let s = scrape(http).await;
        if cond(&s) {
            return s;
        }
        if Instant::now() >= end {
            panic!(
                "{what}: not reached within {RECV_TIMEOUT:?}; last scrape:\n{}",
                s.body
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pipes `text` to `promtool check metrics`: it must exit 0 and report nothing.
fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): apt-get install prometheus (.ci/run does)")
        });
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool failed ({}):\n{report}\n--- input:\n{text}",
        out.status
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}\n--- input:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_exports_valid_metrics() {
    let node = Node::start();
    let s = scrape(node.http_addr()).await;
    promtool_check(&s.body);
    assert!(s.head.contains("cache-control: no-store"), "{}", s.head);
    for series in [
        "skein_connections{protocol=\"4\"}",
        "skein_messages_received_total{qos=\"1\"}",
        "skein_sessions{state=\"online\"}",
        "skein_sessions{state=\"offline\"}",
        "skein_subscriptions",
        "skein_retained_messages",
        "skein_queued_messages",
        "skein_inflight_messages",
        "skein_received_bytes_total",
    ] {
        assert_eq!(s.get(series), 0.0, "{series}");
    }
    assert!(s
        .body
        .contains("# HELP skein_connections Open MQTT connections"));
    assert!(s.body.contains("# TYPE skein_connections gauge"));
    assert!(s
        .body
        .contains("# TYPE skein_messages_received_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sizes_the_runtime() {
    let default = Node::start();
    // tokio's default, which the node inherits through the environment like any variable.
    let cpus = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let s = scrape(default.http_addr()).await;
    assert_eq!(s.get("skein_runtime_workers"), cpus as f64);
    let three = Node::builder().env("SKEIN_WORKER_THREADS", 3).start();
    let s = scrape(three.http_addr()).await;
    assert_eq!(s.get("skein_runtime_workers"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_counted_and_the_output_passes_promtool() {
    let node = Node::start();
    let (mqtt, http) = (node.mqtt_addr(), node.http_addr());

    // A persistent v3.1.1 session that goes offline with one subscription.
    let mut o = v3::options(mqtt, "metrics-offline");
    o.set_clean_session(false);
    let mut offline = v3::Client::connect_with(o).await;
    offline.subscribe("away/#", v3::QoS::AtLeastOnce).await;
    offline.disconnect().await;

    let mut sub = v3::Client::connect(mqtt, "metrics-sub").await;
    sub.subscribe("m/#", v3::QoS::ExactlyOnce).await;
    let mut publ = v5::Client::connect(mqtt, "metrics-pub").await;
    publ.publish("m/0", v5::QoS::AtMostOnce, false, "zero")
        .await;
    publ.publish("m/1", v5::QoS::AtLeastOnce, false, "one")
        .await;
    publ.publish("m/2", v5::QoS::ExactlyOnce, false, "two")
        .await;
    assert_eq!(sub.recv_n(3).await.len(), 3);
    // Queued for the offline session: stored and flushed before the PUBACK.
    publ.publish("away/1", v5::QoS::AtLeastOnce, false, "later")
        .await;
    // Retained, and nobody subscribes: a drop (no_subscribers) and a retained message.
    publ.publish("kept/1", v5::QoS::AtLeastOnce, true, "kept")
        .await;

    // A refusal before CONNECT, and a packet that does not decode after it.
    let mut early = RawClient::tcp(mqtt, Proto::V311).await;
    early.send(&[0xC0, 0x00]).await;
    let mut garbage = RawClient::v311(mqtt, "metrics-garbage").await;
    garbage.send(&[0x00, 0x00]).await;

    // Acks and the ends of the two raw connections arrive after the clients saw their
    // packets: wait for them.
    let s = scrape_until(http, "acks, refusal and decode error counted", |s| {
        s.value("skein_messages_acked_total") == Some(2.0)
            && s.value("skein_packet_decode_errors_total") == Some(1.0)
            && s.value("skein_connects_refused_total{reason=\"ping_without_connect\"}") == Some(1.0)
            && s.value("skein_connections{protocol=\"4\"}") == Some(1.0)
    })
    .await;
    promtool_check(&s.body);

    for (series, want) in [
        // metrics-offline, metrics-sub and metrics-garbage are v3.1.1; metrics-pub is v5.
        ("skein_connects_total{protocol=\"4\"}", 3.0),
        ("skein_connects_total{protocol=\"5\"}", 1.0),
        ("skein_connections{protocol=\"5\"}", 1.0),
        ("skein_messages_received_total{qos=\"0\"}", 1.0),
        ("skein_messages_received_total{qos=\"1\"}", 3.0),
        ("skein_messages_received_total{qos=\"2\"}", 1.0),
        ("skein_messages_sent_total{qos=\"0\"}", 1.0),
        ("skein_messages_sent_total{qos=\"1\"}", 1.0),
        ("skein_messages_sent_total{qos=\"2\"}", 1.0),
        ("skein_sessions{state=\"online\"}", 2.0),
        ("skein_sessions{state=\"offline\"}", 1.0),
        ("skein_subscriptions", 2.0),
        ("skein_queued_messages", 1.0),
        ("skein_inflight_messages", 0.0),
        ("skein_retained_messages", 1.0),
        ("skein_disconnects_total{reason=\"normal\"}", 1.0),
    ] {
        assert_eq!(s.get(series), want, "{series}");
    }
    // At least kept/1; system events published with nobody subscribed count too.
    assert!(s.get("skein_messages_dropped_total{reason=\"no_subscribers\"}") >= 1.0);
    assert!(s.get("skein_received_bytes_total") > 50.0);
    assert!(s.get("skein_sent_bytes_total") > 20.0);
    assert!(s.get("skein_storage_flush_duration_seconds_count") >= 1.0);
    assert!(s.get("skein_storage_flush_duration_seconds_sum") > 0.0);
    assert_eq!(
        s.get("skein_storage_flush_duration_seconds_bucket{le=\"+Inf\"}"),
        s.get("skein_storage_flush_duration_seconds_count")
    );
    assert!(s
        .body
        .contains("# TYPE skein_storage_flush_duration_seconds histogram"));

    // Connections leave the gauge when they end; the sessions go with clean ones.
    sub.disconnect().await;
    publ.disconnect().await;
    let s = scrape_until(http, "connections closed", |s| {
        s.value("skein_connections{protocol=\"4\"}") == Some(0.0)
            && s.value("skein_connections{protocol=\"5\"}") == Some(0.0)
    })
    .await;
    assert_eq!(s.get("skein_sessions{state=\"online\"}"), 0.0);
    assert_eq!(s.get("skein_sessions{state=\"offline\"}"), 1.0);
    assert_eq!(s.get("skein_disconnects_total{reason=\"normal\"}"), 3.0);
    assert_eq!(s.get("skein_subscriptions"), 1.0);
    promtool_check(&s.body);
}
