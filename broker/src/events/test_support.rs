//! Fixtures shared by the events unit tests.

use std::sync::Arc;

use serde_json::Value;

use super::{ClientInfo, Event, EventBody, NodeInfo};

/// The node the dialect renderer tests render for.
pub(crate) fn node() -> NodeInfo {
    NodeInfo {
        node: "10.0.0.1:1883".into(),
        node_ip: "10.0.0.1".into(),
        node_name: "edge-1".into(),
    }
}

/// An event raised at `at_ms`, its nanosecond stamp from the same clock reading.
pub(crate) fn event_at(c: &Arc<ClientInfo>, at_ms: u64, body: EventBody) -> Event {
    Event {
        timestamp_ms: at_ms,
        timestamp_ns: at_ms * 1_000_000,
        client: c.clone(),
        body,
    }
}

pub(crate) fn connected(c: &Arc<ClientInfo>, at_ms: u64) -> Event {
    event_at(c, at_ms, EventBody::Connected)
}

/// A rendered JSON object's keys, sorted.
pub(crate) fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}
