use super::*;
use std::collections::HashSet;

use bytes::Bytes;
use skein_storage::Store;
use tokio_util::sync::CancellationToken;

use crate::cluster_handle::LocalCluster;
use crate::codec::SubscriptionOptions;
use crate::config::Config;
use crate::events::{ClientInfo, EventBus, NodeInfo, Transport};
use crate::ids::{ClientId, NodeId};
use crate::message::{now_ms, Message, MessageProperties};
use crate::session::{Attachment, Session, Subscription};

/// Base units only, spelled out as Prometheus wants them.
const FORBIDDEN_UNITS: &[&str] = &[
    "_ms",
    "_millis",
    "_milliseconds",
    "_us",
    "_micros",
    "_microseconds",
    "_nanoseconds",
    "_ns",
    "_minutes",
    "_hours",
    "_kb",
    "_kib",
    "_mb",
    "_mib",
    "_kilobytes",
    "_megabytes",
    "_percent",
];

#[test]
fn every_name_follows_prometheus_conventions() {
    let mut seen = HashSet::new();
    for d in descriptions() {
        let n = d.name;
        assert!(seen.insert(n), "{n} is described twice");
        assert!(n.starts_with("skein_"), "{n}: no skein_ prefix");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !n.contains("__")
                && !n.ends_with('_'),
            "{n}: not snake_case"
        );
        assert_eq!(
            d.kind == Kind::Counter,
            n.ends_with("_total"),
            "{n}: counters, and only counters, end in _total"
        );
        let base = n.strip_suffix("_total").unwrap_or(n);
        match d.unit {
            Unit::Seconds => assert!(base.ends_with("_seconds"), "{n}: unit not in the name"),
            Unit::Bytes => assert!(base.ends_with("_bytes"), "{n}: unit not in the name"),
            Unit::Count => assert!(
                !base.ends_with("_seconds") && !base.ends_with("_bytes"),
                "{n}: a unit in the name but described as a count"
            ),
            other => panic!("{n}: {other:?} is not a base unit"),
        }
        for bad in FORBIDDEN_UNITS {
            assert!(
                !base.ends_with(bad) && !base.contains(&format!("{bad}_")),
                "{n}: {bad} is not a base unit"
            );
        }
        if d.kind == Kind::Histogram {
            assert!(
                !base.ends_with("_count") && !base.ends_with("_sum") && !base.ends_with("_bucket"),
                "{n}: clashes with the histogram's own series"
            );
        }
        assert!(!d.help.trim().is_empty(), "{n}: no HELP text");
        assert!(!d.help.contains('\n'), "{n}: HELP on several lines");
        for l in d.labels {
            assert!(
                !l.is_empty()
                    && !l.starts_with("__")
                    && !["le", "quantile", "instance", "job"].contains(l)
                    && l.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{n}: label {l:?} is reserved or not snake_case"
            );
        }
    }
}

/// A name constant without a description would export without HELP text.
#[test]
fn every_name_constant_is_described() {
    let described: HashSet<&str> = descriptions().map(|d| d.name).collect();
    let source = include_str!("metrics.rs");
    let mut constants = 0;
    for line in source.lines() {
        let Some((_, rest)) = line.split_once(": &str = \"") else {
            continue;
        };
        if !line.trim_start().starts_with("pub const ") {
            continue;
        }
        let name = rest.split('"').next().unwrap_or_default();
        assert!(described.contains(name), "{name} has no description row");
        constants += 1;
    }
    assert_eq!(constants, described.len(), "a row without its constant");
}

#[test]
fn the_issue_names_are_exported() {
    let described: HashSet<&str> = descriptions().map(|d| d.name).collect();
    for name in [
        "skein_connections",
        "skein_connects_total",
        "skein_connects_refused_total",
        "skein_disconnects_total",
        "skein_sessions",
        "skein_subscriptions",
        "skein_retained_messages",
        "skein_messages_received_total",
        "skein_messages_sent_total",
        "skein_messages_acked_total",
        "skein_messages_dropped_total",
        "skein_received_bytes_total",
        "skein_sent_bytes_total",
        "skein_inflight_messages",
        "skein_queued_messages",
        "skein_packet_decode_errors_total",
        "skein_event_queue_depth",
        "skein_events_dropped_total",
        "skein_webhook_requests_total",
        "skein_webhook_request_duration_seconds",
        "skein_storage_flush_duration_seconds",
    ] {
        assert!(described.contains(name), "{name} missing");
    }
}

fn local_recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .expect("buckets")
        .build_recorder()
}

/// The value of the series `series` (name with its labels, as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn hot_path_helpers_render_with_help_type_and_static_labels() {
    let recorder = local_recorder();
    let handle = recorder.handle();
    let text = metrics::with_local_recorder(&recorder, || {
        describe();
        message_received(QoS::AtMostOnce);
        message_received(QoS::ExactlyOnce);
        message_received(QoS::ExactlyOnce);
        message_sent(QoS::AtLeastOnce);
        message_acked();
        message_dropped("queue_full");
        message_dropped("something_new");
        bytes_received(100);
        bytes_sent(7);
        packet_decode_error();
        let hot = HotCounters::register();
        hot.connect_accepted(ProtocolVersion::V5);
        connect_refused("protocol_error");
        hot.disconnected(crate::connection::DisconnectReason::Normal);
        storage_flushed(Duration::from_millis(3));
        hot.connection_opened(ProtocolVersion::V5);
        hot.connection_opened(ProtocolVersion::V311);
        hot.connection_opened(ProtocolVersion::V311);
        hot.connection_closed(ProtocolVersion::V5);
        handle.render()
    });
    for (series, want) in [
        ("skein_messages_received_total{qos=\"0\"}", 1.0),
        ("skein_messages_received_total{qos=\"2\"}", 2.0),
        ("skein_messages_sent_total{qos=\"1\"}", 1.0),
        ("skein_messages_acked_total", 1.0),
        ("skein_messages_dropped_total{reason=\"queue_full\"}", 1.0),
        (
            "skein_messages_dropped_total{reason=\"something_new\"}",
            1.0,
        ),
        ("skein_received_bytes_total", 100.0),
        ("skein_sent_bytes_total", 7.0),
        ("skein_packet_decode_errors_total", 1.0),
        ("skein_connects_total{protocol=\"5\"}", 1.0),
        (
            "skein_connects_refused_total{reason=\"protocol_error\"}",
            1.0,
        ),
        ("skein_disconnects_total{reason=\"normal\"}", 1.0),
        ("skein_connections{protocol=\"5\"}", 0.0),
        ("skein_connections{protocol=\"4\"}", 2.0),
        ("skein_storage_flush_duration_seconds_count", 1.0),
        (
            "skein_storage_flush_duration_seconds_bucket{le=\"0.005\"}",
            1.0,
        ),
        (
            "skein_storage_flush_duration_seconds_bucket{le=\"0.001\"}",
            0.0,
        ),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
    }
    assert!(text.contains("# HELP skein_messages_received_total PUBLISH packets received"));
    assert!(text.contains("# TYPE skein_messages_received_total counter"));
    assert!(text.contains("# TYPE skein_connections gauge"));
    assert!(text.contains("# TYPE skein_storage_flush_duration_seconds histogram"));
}

fn test_broker() -> Arc<Broker> {
    let events = EventBus::new(NodeInfo {
        node: "127.0.0.1:1883".into(),
        node_ip: "127.0.0.1".into(),
        node_name: "test".into(),
    });
    Broker::new(
        Config::default(),
        Store::open_temporary().expect("store"),
        Arc::new(LocalCluster::new(NodeId(1))),
        events,
        CancellationToken::new(),
    )
    .expect("broker")
}

fn attach(session: &Session, id: &str) {
    let kick = crate::session::KickSignal::new();
    session.state().attach(
        Attachment {
            connection_id: 1,
            kick,
        },
        Arc::new(ClientInfo {
            client_id: ClientId::new(id),
            username: None,
            peer: "127.0.0.1:1000".parse().expect("addr"),
            sockname: std::sync::Arc::new("127.0.0.1:1883".parse().expect("addr")),
            protocol: ProtocolVersion::V5,
            transport: Transport::Tcp,
            keepalive: 60,
            clean_start: true,
            connected_at_ms: 0,
            will: None,
        }),
    );
}

fn subscription(qos: QoS) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
        subscription_id: None,
    }
}

fn message(topic: &str, retain: bool) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain,
        properties: MessageProperties::default(),
        received_at_ms: now_ms(),
        publisher: Some(ClientId::new("p")),
        publisher_username: None,
    })
}

#[test]
fn scrape_time_gauges_sum_over_sessions() {
    let broker = test_broker();
    let online = broker.get_or_create_session(&ClientId::new("on"));
    attach(&online, "on");
    broker.subscribe(&online, "a/#", subscription(QoS::AtLeastOnce));
    broker.subscribe(&online, "b", subscription(QoS::AtMostOnce));
    let offline = broker.get_or_create_session(&ClientId::new("off"));
    offline.state().expiry_interval = 3600;
    broker.subscribe(&offline, "a/1", subscription(QoS::AtLeastOnce));
    broker.route(message("a/1", false));
    broker.route(message("a/2", true));

    let totals = session_totals(&broker);
    assert_eq!(
        totals,
        SessionTotals {
            online: 1,
            offline: 1,
            subscriptions: 3,
            inflight: 0,
            queued: 3,
        }
    );

    let recorder = local_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record_state(&broker));
    let text = handle.render();
    for (series, want) in [
        ("skein_sessions{state=\"online\"}", 1.0),
        ("skein_sessions{state=\"offline\"}", 1.0),
        ("skein_subscriptions", 3.0),
        ("skein_queued_messages", 3.0),
        ("skein_inflight_messages", 0.0),
        ("skein_retained_messages", 1.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
    }
}

/// Sends one raw HTTP/1.1 GET and returns (head in lower case, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("response timed out")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("no header end");
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn install_is_idempotent_and_the_endpoint_serves_text_format() {
    let first = install();
    let handle = install();
    // Both handles render the one global recorder.
    message_acked();
    assert!(first.render().contains("skein_messages_acked_total"));

    let broker = test_broker();
    let routes = crate::http::compose(vec![router(handle, broker)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(crate::http::serve(
        listener,
        routes,
        crate::http::Limits::default(),
        shutdown.clone(),
    ));

    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains("# TYPE skein_sessions gauge"), "{body}");
    assert!(
        body.contains("# HELP skein_messages_acked_total "),
        "{body}"
    );
    let (head, _) = get(addr, "/nope").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");

    shutdown.cancel();
    let _ = server.await;
}
