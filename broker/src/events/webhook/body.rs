//! Webhook request bodies, field for field as in seed 004 (EMQX's web hook), plus `node`.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::rules::{Action, Rules};
use crate::codec::{connack_v3, reason as rc, ProtocolVersion, QoS};
use crate::events::{ClientInfo, Event, EventBody, NodeInfo};
use crate::message::Message;

/// What seed 004 puts where a username is absent.
const UNDEFINED: &str = "undefined";

/// The bodies `event` renders to under `rules`: one per wanted action (at most one today;
/// a list so an event may feed several actions).
pub fn render(event: &Event, node: &NodeInfo, rules: &Rules) -> Vec<(Action, Value)> {
    let node = crate::events::dollar_event_dot_topics::held_on(event).unwrap_or(node);
    let c = &*event.client;
    let mut out = Vec::new();
    let mut add = |action: Action, topic: Option<&str>, fields: &dyn Fn() -> Value| {
        if rules.wants(action, topic) {
            let mut body = Map::new();
            body.insert("action".into(), action.as_str().into());
            body.insert("node".into(), node.node.clone().into());
            if let Value::Object(fields) = fields() {
                body.extend(fields);
            }
            out.push((action, Value::Object(body)));
        }
    };
    match &event.body {
        EventBody::Connect => add(Action::ClientConnect, None, &|| connection(c)),
        EventBody::Connack { code, success } => add(Action::ClientConnack, None, &|| {
            let mut v = connection(c);
            v["conn_ack"] = conn_ack(c.protocol, *code, *success).into();
            v
        }),
        EventBody::Connected => add(Action::ClientConnected, None, &|| {
            let mut v = connection(c);
            v["connected_at"] = (c.connected_at_ms / 1000).into();
            v
        }),
        EventBody::Disconnected { reason, .. } => add(Action::ClientDisconnected, None, &|| {
            ended(c, reason.as_str())
        }),
        EventBody::SessionTerminated { reason } => add(Action::SessionTerminated, None, &|| {
            ended(c, reason.as_str())
        }),
        EventBody::SubscribeRequest { filter, qos, .. } => {
            add(Action::ClientSubscribe, Some(filter), &|| {
                subscription(c, filter, Some(*qos))
            })
        }
        EventBody::Subscribed { filter, qos, .. } => {
            add(Action::SessionSubscribed, Some(filter), &|| {
                subscription(c, filter, Some(*qos))
            })
        }
        EventBody::UnsubscribeRequest { filter, .. } => {
            add(Action::ClientUnsubscribe, Some(filter), &|| {
                subscription(c, filter, None)
            })
        }
        EventBody::Unsubscribed { filter, .. } => {
            add(Action::SessionUnsubscribed, Some(filter), &|| {
                subscription(c, filter, None)
            })
        }
        EventBody::Publish { message, .. } => {
            add(Action::MessagePublish, Some(&message.topic), &|| {
                // The publisher is this event's client, so its username is known here.
                message_fields(message, message.qos as u8, c.username.as_deref())
            })
        }
        EventBody::Delivered { message, qos, .. } => {
            add(Action::MessageDelivered, Some(&message.topic), &|| {
                let from = message.publisher_username.as_deref();
                let mut v = message_fields(message, *qos as u8, from);
                v["clientid"] = c.client_id.as_str().into();
                v["username"] = username(c.username.as_deref()).into();
                v
            })
        }
        EventBody::Acked { message, qos, .. } => {
            add(Action::MessageAcked, Some(&message.topic), &|| {
                let from = message.publisher_username.as_deref();
                let mut v = message_fields(message, *qos as u8, from);
                v["clientid"] = c.client_id.as_str().into();
                v
            })
        }
        EventBody::Dropped { message, reason } => {
            add(Action::MessageDropped, Some(&message.topic), &|| {
                let from = message.publisher_username.as_deref();
                let mut v = message_fields(message, message.qos as u8, from);
                v["reason"] = (*reason).into();
                v
            })
        }
        // Seed 004 has no action for these.
        EventBody::Ping
        | EventBody::Offline { .. }
        | EventBody::CertificateRegistered(_)
        | EventBody::CertificateRejected(_) => {}
    }
    out
}

/// Fields of the subscribe actions (`opts` for subscribes only).
fn subscription(c: &ClientInfo, filter: &str, qos: Option<QoS>) -> Value {
    let mut v = json!({
        "clientid": c.client_id.as_str(),
        "username": username(c.username.as_deref()),
        "topic": filter,
    });
    if let Some(qos) = qos {
        v["opts"] = json!({ "qos": qos as u8 });
    }
    v
}

fn username(name: Option<&str>) -> &str {
    name.unwrap_or(UNDEFINED)
}

/// Fields of `client_connect`, `client_connack` and `client_connected`.
fn connection(c: &ClientInfo) -> Value {
    json!({
        "clientid": c.client_id.as_str(),
        "username": username(c.username.as_deref()),
        "ipaddress": c.peer.ip().to_string(),
        "keepalive": c.keepalive,
        "proto_ver": c.protocol.level(),
    })
}

/// Fields of `client_disconnected` and `session_terminated`.
fn ended(c: &ClientInfo, reason: &str) -> Value {
    json!({
        "clientid": c.client_id.as_str(),
        "username": username(c.username.as_deref()),
        "reason": reason,
    })
}

/// Fields every `message_*` action has; `publisher_username` becomes `from_username`.
fn message_fields(m: &Message, qos: u8, publisher_username: Option<&str>) -> Value {
    let mut v = json!({
        "from_client_id": m.publisher.as_ref().map_or(UNDEFINED, |p| p.as_str()),
        "from_username": username(publisher_username),
        "topic": &*m.topic,
        "qos": qos,
        "retain": m.retain,
        "ts": m.received_at_ms,
    });
    match std::str::from_utf8(&m.payload) {
        Ok(text) => v["payload"] = text.into(),
        Err(_) => {
            // JSON strings are text: binary payloads travel base64-encoded, and say so.
            v["payload"] = base64::engine::general_purpose::STANDARD
                .encode(&m.payload)
                .into();
            v["payload_encoding"] = "base64".into();
        }
    }
    v
}

/// `conn_ack`: "success", else the refusal's name (MQTT 5 reason code or 3.x return code,
/// as sent on the wire to this client).
pub fn conn_ack(protocol: ProtocolVersion, code: u8, success: bool) -> String {
    if success {
        return "success".into();
    }
    let name = if protocol.is_v5() {
        match code {
            rc::UNSPECIFIED_ERROR => "unspecified_error",
            rc::MALFORMED_PACKET => "malformed_packet",
            rc::PROTOCOL_ERROR => "protocol_error",
            rc::IMPLEMENTATION_SPECIFIC_ERROR => "implementation_specific_error",
            rc::UNSUPPORTED_PROTOCOL_VERSION => "unsupported_protocol_version",
            rc::CLIENT_IDENTIFIER_NOT_VALID => "client_identifier_not_valid",
            rc::BAD_USER_NAME_OR_PASSWORD => "bad_username_or_password",
            rc::NOT_AUTHORIZED => "not_authorized",
            rc::SERVER_UNAVAILABLE => "server_unavailable",
            rc::SERVER_BUSY => "server_busy",
            rc::BANNED => "banned",
            rc::SERVER_SHUTTING_DOWN => "server_shutting_down",
            rc::BAD_AUTHENTICATION_METHOD => "bad_authentication_method",
            rc::TOPIC_NAME_INVALID => "topic_name_invalid",
            rc::PACKET_TOO_LARGE => "packet_too_large",
            rc::QUOTA_EXCEEDED => "quota_exceeded",
            rc::PAYLOAD_FORMAT_INVALID => "payload_format_invalid",
            rc::RETAIN_NOT_SUPPORTED => "retain_not_supported",
            rc::QOS_NOT_SUPPORTED => "qos_not_supported",
            rc::USE_ANOTHER_SERVER => "use_another_server",
            rc::SERVER_MOVED => "server_moved",
            rc::CONNECTION_RATE_EXCEEDED => "connection_rate_exceeded",
            _ => return format!("reason_code_{code:#04x}"),
        }
    } else {
        match code {
            connack_v3::UNACCEPTABLE_PROTOCOL_VERSION => "unsupported_protocol_version",
            connack_v3::IDENTIFIER_REJECTED => "client_identifier_not_valid",
            connack_v3::SERVER_UNAVAILABLE => "server_unavailable",
            connack_v3::BAD_USER_NAME_OR_PASSWORD => "bad_username_or_password",
            connack_v3::NOT_AUTHORIZED => "not_authorized",
            _ => return format!("return_code_{code}"),
        }
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disconnect::DisconnectReason;
    use crate::events::test_support::{event_at, node};
    use crate::events::{SessionEnd, Transport};
    use bytes::Bytes;
    use skein_seam::ClientId;
    use std::sync::Arc;

    fn client(username: Option<&str>, protocol: ProtocolVersion) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            client_id: ClientId::new("dev-1"),
            username: username.map(std::sync::Arc::from),
            peer: "192.168.1.7:50123".parse().unwrap(),
            sockname: std::sync::Arc::new("10.0.0.1:1883".parse().unwrap()),
            protocol,
            transport: Transport::Tcp,
            keepalive: 60,
            clean_start: true,
            connected_at_ms: 1_700_000_123_456,
            will: None,
        })
    }

    fn event(client: Arc<ClientInfo>, body: EventBody) -> Event {
        event_at(&client, 1_700_000_200_000, body)
    }

    fn message(payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from("foo/bar"),
            payload: Bytes::from_static(payload),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Default::default(),
            received_at_ms: 1_700_000_300_000,
            publisher: Some(ClientId::new("pub-1")),
            publisher_username: Some(Arc::from("bob")),
            publish_id: None,
        })
    }

    fn one(event: &Event) -> Value {
        let mut bodies = render(event, &node(), &Rules::all());
        assert_eq!(bodies.len(), 1, "{bodies:?}");
        bodies.remove(0).1
    }

    #[test]
    fn connection_actions() {
        let c = client(None, ProtocolVersion::V311);
        assert_eq!(
            one(&event(c.clone(), EventBody::Connect)),
            json!({
                "action": "client_connect",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "undefined",
                "ipaddress": "192.168.1.7",
                "keepalive": 60,
                "proto_ver": 4,
            })
        );
        let c5 = client(Some("alice"), ProtocolVersion::V5);
        let v = one(&event(
            c5.clone(),
            EventBody::Connack {
                code: 0,
                success: true,
            },
        ));
        assert_eq!(v["action"], "client_connack");
        assert_eq!(v["username"], "alice");
        assert_eq!(v["proto_ver"], 5);
        assert_eq!(v["conn_ack"], "success");
        let v = one(&event(
            c5.clone(),
            EventBody::Connack {
                code: rc::NOT_AUTHORIZED,
                success: false,
            },
        ));
        assert_eq!(v["conn_ack"], "not_authorized");
        let v = one(&event(
            c.clone(),
            EventBody::Connack {
                code: connack_v3::BAD_USER_NAME_OR_PASSWORD,
                success: false,
            },
        ));
        assert_eq!(v["conn_ack"], "bad_username_or_password");
        assert_eq!(
            one(&event(c5, EventBody::Connected)),
            json!({
                "action": "client_connected",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "alice",
                "ipaddress": "192.168.1.7",
                "keepalive": 60,
                "proto_ver": 5,
                "connected_at": 1_700_000_123u64,
            })
        );
    }

    #[test]
    fn disconnect_and_session_terminated() {
        let e = event(
            client(None, ProtocolVersion::V311),
            EventBody::Disconnected {
                reason: DisconnectReason::KeepaliveTimeout,
                disconnected_at_ms: 1,
                takeover_node: None,
                by_disconnect_packet: false,
                had_session: true,
                on_node: None,
            },
        );
        let expected = json!({
            "action": "client_disconnected",
            "node": "10.0.0.1:1883",
            "clientid": "dev-1",
            "username": "undefined",
            "reason": "keepalive_timeout",
        });
        assert_eq!(one(&e), expected);

        // The end of a session is an event of its own, whatever ended it.
        let terminated = |reason| {
            one(&event(
                client(Some("u"), ProtocolVersion::V5),
                EventBody::SessionTerminated { reason },
            ))
        };
        assert_eq!(
            terminated(SessionEnd::Expired),
            json!({
                "action": "session_terminated",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "u",
                "reason": "expired",
            })
        );
        let v = terminated(SessionEnd::ConnectionEnded(DisconnectReason::Normal));
        assert_eq!(v["reason"], "normal");
        assert_eq!(terminated(SessionEnd::Discarded)["reason"], "discarded");
    }

    #[test]
    fn requests_and_results_of_subscriptions_are_separate_actions_and_follow_topic_rules() {
        let c = client(Some("u"), ProtocolVersion::V5);
        let request = event(
            c.clone(),
            EventBody::SubscribeRequest {
                filter: "foo/#".into(),
                qos: QoS::ExactlyOnce,
                packet_id: 3,
            },
        );
        assert_eq!(
            one(&request),
            json!({
                "action": "client_subscribe",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "u",
                "topic": "foo/#",
                "opts": { "qos": 2 },
            })
        );
        let unsubscribe = event(
            c.clone(),
            EventBody::UnsubscribeRequest {
                filter: "never/subscribed".into(),
                packet_id: 5,
            },
        );
        assert_eq!(
            one(&unsubscribe),
            json!({
                "action": "client_unsubscribe",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "u",
                "topic": "never/subscribed",
            })
        );
        let e = event(
            c,
            EventBody::Subscribed {
                filter: "foo/#".into(),
                qos: QoS::AtLeastOnce,
                packet_id: 3,
            },
        );
        let bodies = render(&e, &node(), &Rules::all());
        let actions: Vec<_> = bodies.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(actions, ["session_subscribed"]);
        assert_eq!(
            bodies[0].1,
            json!({
                "action": "session_subscribed",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "u",
                "topic": "foo/#",
                "opts": { "qos": 1 },
            })
        );
        let e = event(
            client(None, ProtocolVersion::V5),
            EventBody::Unsubscribed {
                filter: "a/b".into(),
                packet_id: 4,
                qos: QoS::AtLeastOnce,
            },
        );
        let rules =
            Rules::parse(r#"[{"action": "on_session_unsubscribed", "topic": "a/+"}]"#).unwrap();
        let bodies = render(&e, &node(), &rules);
        assert_eq!(bodies.len(), 1);
        assert_eq!(
            bodies[0].1,
            json!({
                "action": "session_unsubscribed",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "undefined",
                "topic": "a/b",
            })
        );
        let rules =
            Rules::parse(r#"[{"action": "on_session_unsubscribed", "topic": "x/#"}]"#).unwrap();
        assert!(render(&e, &node(), &rules).is_empty());
    }

    #[test]
    fn message_actions() {
        let publisher = client(Some("bob"), ProtocolVersion::V311);
        let v = one(&event(
            publisher,
            EventBody::Publish {
                message: message(b"hello"),
                packet_id: 1,
            },
        ));
        assert_eq!(
            v,
            json!({
                "action": "message_publish",
                "node": "10.0.0.1:1883",
                "from_client_id": "pub-1",
                "from_username": "bob",
                "topic": "foo/bar",
                "qos": 2,
                "retain": true,
                "payload": "hello",
                "ts": 1_700_000_300_000u64,
            })
        );
        let subscriber = client(None, ProtocolVersion::V5);
        let v = one(&event(
            subscriber.clone(),
            EventBody::Delivered {
                message: message(b"hello"),
                packet_id: 7,
                qos: QoS::AtLeastOnce,
            },
        ));
        assert_eq!(
            v,
            json!({
                "action": "message_delivered",
                "node": "10.0.0.1:1883",
                "clientid": "dev-1",
                "username": "undefined",
                "from_client_id": "pub-1",
                "from_username": "bob",
                "topic": "foo/bar",
                "qos": 1,
                "retain": true,
                "payload": "hello",
                "ts": 1_700_000_300_000u64,
            })
        );
        let v = one(&event(
            subscriber.clone(),
            EventBody::Acked {
                message: message(b"hello"),
                packet_id: 7,
                qos: QoS::AtLeastOnce,
            },
        ));
        assert_eq!(v["action"], "message_acked");
        assert_eq!(v["clientid"], "dev-1");
        assert!(v.get("username").is_none(), "seed 004 has none for acked");
        assert_eq!(v["from_username"], "bob");
        assert_eq!(v["qos"], 1);
        let v = one(&event(
            subscriber,
            EventBody::Dropped {
                message: message(&[0xff, 0x00]),
                reason: "queue_full",
            },
        ));
        assert_eq!(v["action"], "message_dropped");
        assert_eq!(v["reason"], "queue_full");
        assert_eq!(v["payload"], "/wA=");
        assert_eq!(v["payload_encoding"], "base64");
        assert_eq!(v["qos"], 2);
        assert_eq!(v["from_username"], "bob");

        // A publisher without a username.
        let mut anonymous = (*message(b"x")).clone();
        anonymous.publisher_username = None;
        let v = one(&event(
            client(None, ProtocolVersion::V5),
            EventBody::Delivered {
                message: Arc::new(anonymous),
                packet_id: 1,
                qos: QoS::AtMostOnce,
            },
        ));
        assert_eq!(v["from_username"], "undefined");
    }

    #[test]
    fn events_without_a_webhook_action_render_nothing() {
        let c = client(None, ProtocolVersion::V5);
        assert!(render(&event(c.clone(), EventBody::Ping), &node(), &Rules::all()).is_empty());
        let offline = EventBody::Offline {
            message: message(b"x"),
            qos: QoS::AtLeastOnce,
        };
        assert!(render(&event(c, offline), &node(), &Rules::all()).is_empty());
    }
}
