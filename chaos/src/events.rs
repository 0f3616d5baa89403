//! Takeover events among the disconnect events the watchers saw: `$events` reason
//! `takeovered` (field `clientid`), `$EVENT.CLOSE` reason `other_kicked` (field `clientId`).

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use serde_json::Value;

use crate::watcher::{DOLLAR_EVENT, DOLLAR_EVENTS};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TakeoverEvents {
    /// Per client id, `$events/client_disconnected` with reason `takeovered`.
    pub dollar_events: BTreeMap<String, u64>,
    /// Per client id, `$EVENT.CLOSE` with reason `other_kicked`.
    pub dollar_event: BTreeMap<String, u64>,
    /// Disconnect events whose payload was not the expected JSON.
    pub unreadable: u64,
    /// Per client id, its `$events` takeover events as received (for the report file).
    pub payloads: BTreeMap<String, Vec<String>>,
}

impl TakeoverEvents {
    pub fn total_dollar_events(&self) -> u64 {
        self.dollar_events.values().sum()
    }

    pub fn total_dollar_event(&self) -> u64 {
        self.dollar_event.values().sum()
    }
}

pub fn takeovers(seen: &HashSet<(String, Bytes)>) -> TakeoverEvents {
    let mut t = TakeoverEvents::default();
    for (topic, payload) in seen {
        let (reason, id_field, counts) = match topic.as_str() {
            DOLLAR_EVENTS => ("takeovered", "clientid", &mut t.dollar_events),
            DOLLAR_EVENT => ("other_kicked", "clientId", &mut t.dollar_event),
            _ => continue,
        };
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            t.unreadable += 1;
            continue;
        };
        if v["reason"] == reason {
            if let Some(id) = v[id_field].as_str() {
                *counts.entry(id.to_owned()).or_default() += 1;
                if topic == DOLLAR_EVENTS {
                    t.payloads
                        .entry(id.to_owned())
                        .or_default()
                        .push(String::from_utf8_lossy(payload).into_owned());
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_takeovers_of_both_dialects_per_client() {
        let mut seen = HashSet::new();
        let ev = |t: &str, p: &str| (t.to_owned(), Bytes::from(p.to_owned()));
        seen.insert(ev(
            DOLLAR_EVENTS,
            r#"{"clientid":"a","reason":"takeovered","disconnected_at":1}"#,
        ));
        seen.insert(ev(
            DOLLAR_EVENTS,
            r#"{"clientid":"a","reason":"takeovered","disconnected_at":2}"#,
        ));
        seen.insert(ev(
            DOLLAR_EVENTS,
            r#"{"clientid":"b","reason":"tcp_closed"}"#,
        ));
        seen.insert(ev(
            DOLLAR_EVENT,
            r#"{"clientId":"a","reason":"other_kicked"}"#,
        ));
        seen.insert(ev(DOLLAR_EVENT, "not json"));
        let t = takeovers(&seen);
        assert_eq!(t.dollar_events.get("a"), Some(&2));
        assert_eq!(t.dollar_events.get("b"), None);
        assert_eq!(t.total_dollar_event(), 1);
        assert_eq!(t.unreadable, 1);
    }
}
