use super::*;
use crate::codec::{ProtocolVersion, QoS};
use std::collections::HashSet;

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
    let source = include_str!("../metrics.rs");
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

pub(crate) fn local_recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .expect("buckets")
        .build_recorder()
}

/// The value of the series `series` (name with its labels, as rendered), if present.
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
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
        hot.disconnected(crate::disconnect::DisconnectReason::Normal);
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
