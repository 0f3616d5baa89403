use std::time::Duration;

use serde_json::json;

use super::*;
use crate::codec::ProtocolVersion;
use crate::config::Config;
use crate::disconnect::DisconnectReason;
use crate::events::test_support::{connected, event_at};
use crate::events::{ClientInfo, NodeInfo};
use skein_seam::ClientId;

pub(crate) fn bus() -> EventBus {
    EventBus::new(NodeInfo {
        node: "127.0.0.1:1883".into(),
        node_ip: "127.0.0.1".into(),
        node_name: "edge-7".into(),
    })
}

pub(crate) fn client(id: &str, connected_at_ms: u64) -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        connected_at_ms,
        ..ClientInfo::unknown(ClientId::new(id), ProtocolVersion::V5)
    })
}

pub(crate) fn disconnected(c: &Arc<ClientInfo>, at_ms: u64) -> Event {
    event_at(
        c,
        at_ms,
        EventBody::Disconnected {
            reason: DisconnectReason::Normal,
            disconnected_at_ms: at_ms,
            takeover_node: None,
            by_disconnect_packet: true,
            had_session: true,
            on_node: None,
        },
    )
}

#[test]
fn entries_pair_connects_with_disconnects() {
    let a = client("a", 1);
    let event = connected(&a, 1_700_000_000_123);
    let e = entry(&event, "n").unwrap();
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({
            "client_id": "a",
            "event_type": "connect",
            "instance": "n",
            "occurred_at": 1_700_000_000_123_000_000u64,
        })
    );
    let event = disconnected(&a, 1_700_000_000_456);
    let e = entry(&event, "n").unwrap();
    assert_eq!(e.event_type, EventType::Disconnect);
    assert_eq!(e.occurred_at, 1_700_000_000_456_000_000);
    let refused = event_at(
        &client("refused", 9),
        2,
        EventBody::Disconnected {
            reason: DisconnectReason::NotAuthorized,
            disconnected_at_ms: 2,
            takeover_node: None,
            by_disconnect_packet: false,
            had_session: false,
            on_node: None,
        },
    );
    assert!(entry(&refused, "n").is_none());
    let ping = event_at(&a, 1, EventBody::Ping);
    assert!(entry(&ping, "n").is_none());
}

#[test]
fn occurred_at_is_the_events_own_nanosecond_clock() {
    let c = client("ns", 1);
    let mut event = connected(&c, 1_700_000_000_123);
    event.timestamp_ns = 1_700_000_000_123_456_789;
    let e = entry(&event, "n").unwrap();
    assert_eq!(e.occurred_at, 1_700_000_000_123_456_789);
    let mut event = disconnected(&c, 1_700_000_000_124);
    event.timestamp_ns = 1_700_000_000_124_000_001;
    let e = entry(&event, "n").unwrap();
    assert_eq!(e.occurred_at, 1_700_000_000_124_000_001);
}

#[test]
fn retention_trims_by_age_and_length() {
    let store = Store::open_temporary().unwrap();
    let log = store.event_log();
    for i in 0..10u64 {
        log.append_at(i * 1_000_000_000, b"{}").unwrap();
    }
    let keep_all = Retention {
        max_age: None,
        max_entries: None,
    };
    assert_eq!(keep_all.enforce(log, u64::MAX).unwrap(), 0);
    let by_age = Retention {
        max_age: Some(Duration::from_secs(5)),
        max_entries: None,
    };
    // At t=10 s, entries from before t=5 s go.
    assert_eq!(by_age.enforce(log, 10_000_000_000).unwrap(), 5);
    let by_len = Retention {
        max_age: None,
        max_entries: Some(2),
    };
    assert_eq!(by_len.enforce(log, 0).unwrap(), 3);
    assert_eq!(log.len(), 2);

    let config = Config {
        stream_retention_secs: 0,
        stream_max_entries: 0,
        ..Config::default()
    };
    assert_eq!(Retention::from_settings(&(&config).into()), keep_all);
    let defaults = Retention::from_settings(&(&Config::default()).into());
    assert_eq!(defaults.max_age, Some(Duration::from_secs(86_400)));
    assert_eq!(defaults.max_entries, Some(1_000_000));
    assert_eq!(defaults.interval(), MAX_TRIM_INTERVAL);
    assert_eq!(by_age.interval(), Duration::from_secs(1));
}

#[test]
fn entries_are_written_as_serde_json_writes_them() {
    let names = [
        "plain-client-1",
        "",
        "quote\"and\\backslash",
        "control\n\t\u{1}\u{1f}",
        "unicode-ümlaut-✓-😀",
        "del\u{7f}",
    ];
    for client_id in names {
        for instance in ["skein-1", "node \"two\""] {
            for event_type in [EventType::Connect, EventType::Disconnect] {
                for occurred_at in [0, 7, 1_796_585_916_123_456_789, u64::MAX] {
                    let entry = Entry {
                        client_id,
                        event_type,
                        instance,
                        occurred_at,
                    };
                    let mut ours = b"prefix".to_vec();
                    entry.write_json(&mut ours);
                    let mut theirs = b"prefix".to_vec();
                    serde_json::to_writer(&mut theirs, &entry).unwrap();
                    assert_eq!(
                        String::from_utf8(ours).unwrap(),
                        String::from_utf8(theirs).unwrap()
                    );
                }
            }
        }
    }
}
