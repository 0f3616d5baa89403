//! Dialect presence topics (seed 003): `{"online": true}` when a client is connected and
//! `{"online": false}` when it is gone, on a topic built from a template with `{clientid}`,
//! `{username}` and `{node}` (the node's `ip:port`, as the `node` field of events).
//!
//! Ordering: on a takeover the new connection is online (its `client.connected` is raised
//! before the old connection ends), so the old connection's end must not say offline.
//! Offline is published only for the connection the last online was published for, and
//! never for a `takeovered` end (on another node of a cluster, the taker's online may not
//! even pass through this node). A connection that was refused was never online: no
//! offline either. A template naming `{username}` skips clients without one. A client of
//! a node marked down (reason `node_down`) is said offline by the node that announces its
//! end (its event names the dead node, and so does `{node}`), with the username its
//! registration kept.

use std::sync::{Arc, Weak};

use super::mqtt_out::Outgoing;
use super::{ClientInfo, Event, EventBody, EventKind, KindSet, NodeInfo};
use crate::disconnect::DisconnectReason;
use crate::hash::HashMap;
use crate::topic;
use skein_seam::ClientId;

pub const DIALECT: &str = "presence";

pub fn renders() -> KindSet {
    KindSet::of(&[EventKind::ClientConnected, EventKind::ClientDisconnected])
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    ClientId,
    Username,
    Node,
}

/// A parsed presence topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses and checks a template: known placeholders only, balanced braces, and a valid
    /// topic name (no wildcards) once filled in.
    pub fn parse(template: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err("a '}' without '{'".into());
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or("a '{' without '}'")?;
            parts.push(match &after[..close] {
                "clientid" => Part::ClientId,
                "username" => Part::Username,
                "node" => Part::Node,
                other => return Err(format!("unknown placeholder {{{other}}}")),
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let t = Template { parts };
        let sample = t.fill("c", Some("u"), "127.0.0.1:1883");
        if sample.is_empty() || !topic::valid_topic_name(&sample) {
            return Err("not a valid topic name (wildcards are not allowed)".into());
        }
        Ok(t)
    }

    fn fill(&self, client_id: &str, username: Option<&str>, node: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::ClientId => out.push_str(client_id),
                Part::Username => out.push_str(username.unwrap_or("")),
                Part::Node => out.push_str(node),
            }
        }
        out
    }

    /// The topic for `client`, or None when it has no topic (no username while the template
    /// names one; a client id or username that would make an invalid topic, e.g. with `+`).
    pub fn topic(&self, client: &ClientInfo, node: &NodeInfo) -> Option<String> {
        if client.username.is_none() && self.parts.contains(&Part::Username) {
            return None;
        }
        let t = self.fill(
            client.client_id.as_str(),
            client.username.as_deref(),
            &node.node,
        );
        topic::valid_topic_name(&t).then_some(t)
    }
}

/// Turns connected/disconnected events into presence messages, remembering which
/// connection of each client id was last said to be online.
pub struct Presence {
    template: Template,
    retain: bool,
    /// Client id → the connection whose online was published. Weak: it only identifies the
    /// connection (the allocation cannot be reused while a Weak to it exists).
    online: HashMap<ClientId, Weak<ClientInfo>>,
}

impl Presence {
    pub fn new(template: Template, retain: bool) -> Presence {
        Presence {
            template,
            retain,
            online: HashMap::default(),
        }
    }

    pub fn render(&mut self, event: &Event, node: &NodeInfo) -> Option<Outgoing> {
        // `{node}` is where the connection was, as in its online's topic.
        let node = super::dollar_event_dot_topics::held_on(event).unwrap_or(node);
        let c = &event.client;
        let online = match &event.body {
            EventBody::Connected => {
                self.online.insert(c.client_id.clone(), Arc::downgrade(c));
                true
            }
            EventBody::Disconnected { reason, .. } => {
                let current = self
                    .online
                    .get(&c.client_id)
                    .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(c)));
                // A client of a node marked down: its node published its online and
                // cannot say offline; the one node that announces its end does.
                let announced = *reason == DisconnectReason::NodeDown;
                if !current && !announced {
                    return None;
                }
                if current {
                    self.online.remove(&c.client_id);
                }
                if *reason == DisconnectReason::Takeovered {
                    return None;
                }
                false
            }
            _ => return None,
        };
        let Some(topic) = self.template.topic(c, node) else {
            metrics::counter!("skein_events_dropped_total", "dialect" => DIALECT, "reason" => "no_topic")
                .increment(1);
            return None;
        };
        let payload = if online {
            r#"{"online":true}"#
        } else {
            r#"{"online":false}"#
        };
        Some(Outgoing {
            topic,
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            retain: self.retain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;
    use crate::events::test_support::{event_at, node};

    fn client(id: &str, username: Option<&str>) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            username: username.map(std::sync::Arc::from),
            peer: "10.0.0.9:4000".parse().unwrap(),
            ..ClientInfo::unknown(ClientId::new(id), ProtocolVersion::V5)
        })
    }

    fn event(client: &Arc<ClientInfo>, body: EventBody) -> Event {
        event_at(client, 1, body)
    }

    fn gone(reason: DisconnectReason) -> EventBody {
        EventBody::Disconnected {
            reason,
            disconnected_at_ms: 2,
            takeover_node: None,
            by_disconnect_packet: false,
            had_session: true,
            on_node: None,
        }
    }

    #[test]
    fn templates_are_checked() {
        let t = Template::parse("open/KEY/{username}/online").unwrap();
        assert_eq!(
            t.topic(&client("c", Some("DU_1")), &node()).as_deref(),
            Some("open/KEY/DU_1/online")
        );
        assert_eq!(t.topic(&client("c", None), &node()), None);
        let t = Template::parse("p/{node}/{clientid}").unwrap();
        assert_eq!(
            t.topic(&client("dev", None), &node()).as_deref(),
            Some("p/10.0.0.1:1883/dev")
        );
        assert_eq!(t.topic(&client("a+b", None), &node()), None);
        assert_eq!(
            Template::parse("{clientid}")
                .unwrap()
                .topic(&client("x", None), &node())
                .as_deref(),
            Some("x")
        );
        for bad in [
            "a/+/{clientid}",
            "a/#",
            "{client}",
            "a/{clientid",
            "a/}b",
            "",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn online_then_offline_with_the_retain_switch() {
        let mut p = Presence::new(Template::parse("s/{clientid}").unwrap(), true);
        let c = client("dev", None);
        let on = p.render(&event(&c, EventBody::Connected), &node()).unwrap();
        assert_eq!(on.topic, "s/dev");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&on.payload).unwrap(),
            serde_json::json!({ "online": true })
        );
        assert!(on.retain);
        let off = p
            .render(&event(&c, gone(DisconnectReason::TcpClosed)), &node())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&off.payload).unwrap(),
            serde_json::json!({ "online": false })
        );
        let mut p = Presence::new(Template::parse("s/{clientid}").unwrap(), false);
        assert!(
            !p.render(&event(&c, EventBody::Connected), &node())
                .unwrap()
                .retain
        );
    }

    #[test]
    fn a_takeover_never_says_offline_for_the_old_connection() {
        let mut p = Presence::new(Template::parse("s/{clientid}").unwrap(), true);
        let old = client("dev", None);
        let new = client("dev", None);
        assert!(p
            .render(&event(&old, EventBody::Connected), &node())
            .is_some());
        assert!(p
            .render(&event(&new, EventBody::Connected), &node())
            .is_some());
        // The old connection ends after the new one is online: nothing.
        assert!(p
            .render(&event(&old, gone(DisconnectReason::Takeovered)), &node())
            .is_none());
        // The new one ending says offline.
        assert!(p
            .render(&event(&new, gone(DisconnectReason::Normal)), &node())
            .is_some());
        // A takeover from elsewhere (the taker's online never came here): nothing either.
        let lone = client("other", None);
        assert!(p
            .render(&event(&lone, EventBody::Connected), &node())
            .is_some());
        assert!(p
            .render(&event(&lone, gone(DisconnectReason::Takeovered)), &node())
            .is_none());
    }

    #[test]
    fn a_client_of_a_node_marked_down_is_said_offline_by_its_announcer() {
        let mut p = Presence::new(Template::parse("open/K/{username}/{node}").unwrap(), true);
        let dead = NodeInfo {
            node: "10.0.0.3:1883".into(),
            node_ip: "10.0.0.3".into(),
            node_name: "edge-3".into(),
        };
        let body = |on_node: Option<NodeInfo>| EventBody::Disconnected {
            reason: DisconnectReason::NodeDown,
            disconnected_at_ms: 2,
            takeover_node: None,
            by_disconnect_packet: false,
            had_session: true,
            on_node: on_node.map(Box::new),
        };
        // Its online was published by the dead node: the topic names that node.
        let off = p
            .render(
                &event(&client("dev", Some("DU_1")), body(Some(dead))),
                &node(),
            )
            .unwrap();
        assert_eq!(off.topic, "open/K/DU_1/10.0.0.3:1883");
        assert_eq!(&off.payload[..], br#"{"online":false}"#);
        // Without the username (a registration of an older build) there is no topic.
        assert!(p
            .render(&event(&client("dev", None), body(None)), &node())
            .is_none());
        // Another end of a connection this node never said online stays silent.
        assert!(p
            .render(
                &event(&client("dev", Some("DU_1")), gone(DisconnectReason::Normal)),
                &node()
            )
            .is_none());
    }

    #[test]
    fn a_refused_connection_was_never_online() {
        let mut p = Presence::new(Template::parse("s/{clientid}").unwrap(), true);
        let c = client("dev", None);
        assert!(p
            .render(&event(&c, gone(DisconnectReason::ClientIdTooLong)), &node())
            .is_none());
    }
}
