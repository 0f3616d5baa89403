//! Dialect `$EVENT` (seed 000): single-level topics `$EVENT.PUBLISH`, `$EVENT.CONNECT`,
//! `$EVENT.SUBSCRIBE`, `$EVENT.UNSUBSCRIBE`, `$EVENT.PING`, `$EVENT.DISCONNECT`,
//! `$EVENT.CLOSE`, `$EVENT.ACK`, `$EVENT.OFFLINE` with the seed's camelCase fields, plus
//! `nodeName` (EVENTS.md) and `takeoverNode` on `other_kicked`.
//!
//! `$EVENT.DISCONNECT` is the client's DISCONNECT packet; `$EVENT.CLOSE` is every end of a
//! connection. A seed field the broker has no value for (`messageId` of a close, of a QoS 0
//! publish, or of an offline message, which has no packet id yet) is present with `null`, as are an unknown
//! `clientIp` and an absent username. Timestamps are numbers everywhere (the seed's ACK
//! example shows a string; one type per field is kinder to consumers). `auth` carries the
//! username only: a password never leaves the broker.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::mqtt_out::Outgoing;
use super::{ClientInfo, Event, EventBody, EventKind, KindSet, NodeInfo, Transport};
use crate::codec::{ProtocolVersion, QoS};
use crate::disconnect::DisconnectReason;

pub const DIALECT: &str = "$EVENT";

/// The canonical kinds this dialect renders.
pub fn renders() -> KindSet {
    KindSet::of(&[
        EventKind::ClientConnect,
        EventKind::ClientDisconnected,
        EventKind::ClientPing,
        EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed,
        EventKind::MessagePublish,
        EventKind::MessageAcked,
        EventKind::MessageOffline,
    ])
}

/// The `$EVENT` column of the disconnect reasons (EVENTS.md).
pub fn close_reason(reason: DisconnectReason) -> &'static str {
    use DisconnectReason as R;
    match reason {
        R::Normal => "disconnect",
        R::TcpClosed | R::PingWithoutConnect => "normal",
        R::Takeovered => "other_kicked",
        R::NodeDown => "node_down",
        R::KeepaliveTimeout => "timeout",
        R::NotAuthenticated
        | R::NotAuthorized
        | R::ClientIdTooLong
        | R::ClientIdRequired
        | R::AuthenticationExpired => "not_authorized",
        R::Kicked
        | R::TooManyConnection
        | R::GoAway
        | R::BadWillMessage
        | R::ProtocolError
        | R::ServerInternalError => "kicked",
    }
}

/// The messages for `event`: one, or for a DISCONNECT packet two (DISCONNECT, then CLOSE).
pub fn render(event: &Event, node: &NodeInfo) -> Vec<Outgoing> {
    let node = held_on(event).unwrap_or(node);
    let c = &event.client;
    let ts = event.timestamp_ms;
    let mut out = Vec::new();
    match &event.body {
        EventBody::Connect => out.push((
            "$EVENT.CONNECT",
            json!({
                "protocol": protocol(c),
                "version": version(c.protocol),
                "keepalive": c.keepalive,
                "cleanSession": c.clean_start,
                "auth": { "username": c.username.as_deref() },
                "will": c.will.as_ref().map(|w| {
                    let mut will = json!({
                        "isRetain": w.retain,
                        "willTopic": w.topic,
                        "willQos": w.qos as u8,
                    });
                    put_bytes(&mut will, "willMessage", "willMessageEncoding", &w.payload, false);
                    will
                }),
            }),
        )),
        EventBody::Publish { message, packet_id } => {
            // A QoS 0 PUBLISH has no packet id: null, like the other id-less messages.
            let id = (message.qos != QoS::AtMostOnce).then_some(*packet_id);
            let mut v = json!({
                "protocol": protocol(c),
                "messageId": id,
                "topic": &*message.topic,
                "qos": message.qos as u8,
                "retain": message.retain,
            });
            put_bytes(&mut v, "payload", "payloadEncoding", &message.payload, true);
            out.push(("$EVENT.PUBLISH", v));
        }
        EventBody::Subscribed {
            filter,
            qos,
            packet_id,
        } => out.push((
            "$EVENT.SUBSCRIBE",
            json!({
                "protocol": protocol(c),
                "messageId": packet_id,
                "topic": filter,
                "qos": *qos as u8,
            }),
        )),
        EventBody::Unsubscribed {
            filter, packet_id, ..
        } => out.push((
            "$EVENT.UNSUBSCRIBE",
            json!({
                "protocol": protocol(c),
                "messageId": packet_id,
                "topic": filter,
            }),
        )),
        EventBody::Ping => out.push(("$EVENT.PING", json!({}))),
        EventBody::Disconnected {
            reason,
            takeover_node,
            by_disconnect_packet,
            ..
        } => {
            if *by_disconnect_packet {
                out.push(("$EVENT.DISCONNECT", json!({})));
            }
            let mut close = json!({
                "protocol": protocol(c),
                "messageId": null,
                "reason": close_reason(*reason),
            });
            if let Some(n) = takeover_node {
                close["takeoverNode"] = Value::from(n.as_str());
            }
            out.push(("$EVENT.CLOSE", close));
        }
        EventBody::Acked {
            message,
            packet_id,
            qos,
        } => {
            let mut v = json!({
                "messageId": packet_id,
                "topic": &*message.topic,
                "qos": *qos as u8,
            });
            put_bytes(&mut v, "payload", "payloadEncoding", &message.payload, true);
            out.push(("$EVENT.ACK", v));
        }
        EventBody::Offline { message, qos } => {
            let mut v = json!({
                "protocol": protocol(c),
                "messageId": null,
                "topic": &*message.topic,
                "qos": *qos as u8,
                "retain": message.retain,
            });
            put_bytes(&mut v, "payload", "payloadEncoding", &message.payload, true);
            out.push(("$EVENT.OFFLINE", v));
        }
        _ => {}
    }
    out.into_iter()
        .map(|(topic, mut v)| {
            if let Some(map) = v.as_object_mut() {
                common(map, c, ts, node);
            }
            Outgoing::json(topic, &v)
        })
        .collect()
}

/// The node that held the connection, when the event comes from another one (a
/// `node_down` end, announced by the adopter).
pub(super) fn held_on(event: &Event) -> Option<&NodeInfo> {
    match &event.body {
        EventBody::Disconnected {
            on_node: Some(n), ..
        } => Some(n),
        _ => None,
    }
}

/// The fields every `$EVENT` message has.
fn common(map: &mut Map<String, Value>, c: &ClientInfo, ts: u64, node: &NodeInfo) {
    map.insert("clientId".into(), Value::from(c.client_id.as_str()));
    let ip = c.peer_known().then(|| c.peer.ip().to_string());
    map.insert("clientIp".into(), Value::from(ip));
    map.insert("nodeIp".into(), Value::from(node.node_ip.as_str()));
    map.insert("nodeName".into(), Value::from(node.node_name.as_str()));
    map.insert("timestamp".into(), Value::from(ts));
}

fn protocol(c: &ClientInfo) -> &'static str {
    match c.transport {
        Transport::Tcp => "MQTT",
        Transport::WebSocket => "WS",
    }
}

fn version(p: ProtocolVersion) -> &'static str {
    match p {
        ProtocolVersion::V31 => "MQTT_3_1",
        ProtocolVersion::V311 => "MQTT_3_1_1",
        ProtocolVersion::V5 => "MQTT_5",
    }
}

/// Puts `bytes` under `key`: as JSON when they parse as JSON (and `as_json`), else as a
/// UTF-8 string, else base64 with `encoding_key: "base64"`.
fn put_bytes(v: &mut Value, key: &str, encoding_key: &str, bytes: &[u8], as_json: bool) {
    let Some(map) = v.as_object_mut() else {
        return;
    };
    if as_json {
        if let Ok(parsed) = serde_json::from_slice::<Value>(bytes) {
            map.insert(key.into(), parsed);
            return;
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            map.insert(key.into(), Value::from(s));
        }
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            map.insert(key.into(), Value::from(encoded));
            map.insert(encoding_key.into(), Value::from("base64"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::events::test_support::keys;
    use crate::events::WillInfo;
    use crate::message::Message;
    use bytes::Bytes;
    use skein_seam::ClientId;
    use std::sync::Arc;

    fn node() -> NodeInfo {
        NodeInfo {
            node: "192.168.0.1:1883".into(),
            node_ip: "192.168.0.1".into(),
            node_name: "edge-1".into(),
        }
    }

    fn client() -> ClientInfo {
        ClientInfo {
            client_id: ClientId::new("dev1212313"),
            username: Some("fluxmq".into()),
            peer: "183.136.225.31:40000".parse().unwrap(),
            sockname: std::sync::Arc::new("192.168.0.1:1883".parse().unwrap()),
            protocol: ProtocolVersion::V31,
            transport: Transport::Tcp,
            keepalive: 120,
            clean_start: false,
            connected_at_ms: 1,
            will: Some(Box::new(WillInfo {
                topic: "willTest".into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                payload: Bytes::new(),
            })),
        }
    }

    fn message(payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from("test"),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            received_at_ms: 0,
            publisher: Some(ClientId::new("dev1212313")),
            publisher_username: None,
            publish_id: None,
        })
    }

    fn render_all(client: ClientInfo, body: EventBody) -> Vec<(String, Value)> {
        let event = Event {
            timestamp_ms: 1_690_599_987_495,
            timestamp_ns: 1_690_599_987_495_000_000,
            client: Arc::new(client),
            body,
        };
        render(&event, &node())
            .into_iter()
            .map(|o| {
                assert!(!o.retain);
                (o.topic, serde_json::from_slice(&o.payload).unwrap())
            })
            .collect()
    }

    fn one(body: EventBody) -> (String, Value) {
        let mut all = render_all(client(), body);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn assert_common(v: &Value) {
        assert_eq!(v["clientId"], "dev1212313");
        assert_eq!(v["clientIp"], "183.136.225.31");
        assert_eq!(v["nodeIp"], "192.168.0.1");
        assert_eq!(v["nodeName"], "edge-1");
        assert_eq!(v["timestamp"], 1_690_599_987_495u64);
    }

    #[test]
    fn connect_has_the_seed_fields_and_no_password() {
        let (topic, v) = one(EventBody::Connect);
        assert_eq!(topic, "$EVENT.CONNECT");
        assert_eq!(
            keys(&v),
            [
                "auth",
                "cleanSession",
                "clientId",
                "clientIp",
                "keepalive",
                "nodeIp",
                "nodeName",
                "protocol",
                "timestamp",
                "version",
                "will"
            ]
        );
        assert_common(&v);
        assert_eq!(v["protocol"], "MQTT");
        assert_eq!(v["version"], "MQTT_3_1");
        assert_eq!(v["keepalive"], 120);
        assert_eq!(v["cleanSession"], false);
        assert_eq!(v["auth"], json!({ "username": "fluxmq" }));
        assert_eq!(
            v["will"],
            json!({ "isRetain": false, "willTopic": "willTest", "willQos": 1, "willMessage": "" })
        );

        let mut c = client();
        c.protocol = ProtocolVersion::V5;
        c.username = None;
        c.transport = Transport::WebSocket;
        c.will = Some(Box::new(WillInfo {
            topic: "w".into(),
            qos: QoS::ExactlyOnce,
            retain: true,
            payload: Bytes::from_static(&[0xff, 0x00]),
        }));
        let v = &render_all(c.clone(), EventBody::Connect)[0].1;
        assert_eq!(v["version"], "MQTT_5");
        assert_eq!(v["protocol"], "WS");
        assert_eq!(v["auth"], json!({ "username": null }));
        assert_eq!(
            v["will"],
            json!({ "isRetain": true, "willTopic": "w", "willQos": 2, "willMessage": "/wA=", "willMessageEncoding": "base64" })
        );
        c.protocol = ProtocolVersion::V311;
        c.will = None;
        let v = &render_all(c, EventBody::Connect)[0].1;
        assert_eq!(v["version"], "MQTT_3_1_1");
        assert!(v["will"].is_null());
    }

    #[test]
    fn publish_renders_the_payload_as_json_text_or_base64() {
        let (topic, v) = one(EventBody::Publish {
            message: message(br#"{"t": 21.5, "ok": [1, 2]}"#),
            packet_id: 1,
        });
        assert_eq!(topic, "$EVENT.PUBLISH");
        assert_eq!(
            keys(&v),
            [
                "clientId",
                "clientIp",
                "messageId",
                "nodeIp",
                "nodeName",
                "payload",
                "protocol",
                "qos",
                "retain",
                "timestamp",
                "topic"
            ]
        );
        assert_common(&v);
        assert_eq!(v["protocol"], "MQTT");
        assert_eq!(v["messageId"], 1);
        assert_eq!(v["topic"], "test");
        assert_eq!(v["qos"], 1);
        assert_eq!(v["retain"], false);
        assert_eq!(v["payload"], json!({ "t": 21.5, "ok": [1, 2] }));

        let (_, v) = one(EventBody::Publish {
            message: message(b"hello world"),
            packet_id: 2,
        });
        assert_eq!(v["payload"], "hello world");
        assert!(v.get("payloadEncoding").is_none());

        let (_, v) = one(EventBody::Publish {
            message: message(&[0xde, 0xad, 0xbe, 0xef]),
            packet_id: 3,
        });
        assert_eq!(v["payload"], "3q2+7w==");
        assert_eq!(v["payloadEncoding"], "base64");

        // QoS 0 has no packet id.
        let mut m = (*message(b"0")).clone();
        m.qos = QoS::AtMostOnce;
        let (_, v) = one(EventBody::Publish {
            message: Arc::new(m),
            packet_id: 0,
        });
        assert!(v["messageId"].is_null(), "{v}");
        assert_eq!(v["qos"], 0);
    }

    #[test]
    fn subscribe_unsubscribe_and_ping() {
        let (topic, v) = one(EventBody::Subscribed {
            filter: "test".into(),
            qos: QoS::AtLeastOnce,
            packet_id: 1,
        });
        assert_eq!(topic, "$EVENT.SUBSCRIBE");
        assert_eq!(
            keys(&v),
            [
                "clientId",
                "clientIp",
                "messageId",
                "nodeIp",
                "nodeName",
                "protocol",
                "qos",
                "timestamp",
                "topic"
            ]
        );
        assert_common(&v);
        assert_eq!(
            (v["messageId"].as_u64(), v["qos"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(v["topic"], "test");

        let (topic, v) = one(EventBody::Unsubscribed {
            filter: "test".into(),
            packet_id: 4,
            qos: QoS::AtLeastOnce,
        });
        assert_eq!(topic, "$EVENT.UNSUBSCRIBE");
        assert_eq!(
            keys(&v),
            [
                "clientId",
                "clientIp",
                "messageId",
                "nodeIp",
                "nodeName",
                "protocol",
                "timestamp",
                "topic"
            ]
        );
        assert_eq!(v["messageId"], 4);

        let (topic, v) = one(EventBody::Ping);
        assert_eq!(topic, "$EVENT.PING");
        assert_eq!(
            keys(&v),
            ["clientId", "clientIp", "nodeIp", "nodeName", "timestamp"]
        );
        assert_common(&v);
    }

    #[test]
    fn a_disconnect_packet_renders_disconnect_then_close_other_ends_close_only() {
        let all = render_all(
            client(),
            EventBody::Disconnected {
                reason: DisconnectReason::Normal,
                disconnected_at_ms: 5,
                takeover_node: None,
                by_disconnect_packet: true,
                had_session: true,
                on_node: None,
            },
        );
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "$EVENT.DISCONNECT");
        assert_eq!(
            keys(&all[0].1),
            ["clientId", "clientIp", "nodeIp", "nodeName", "timestamp"]
        );
        assert_common(&all[0].1);
        assert_eq!(all[1].0, "$EVENT.CLOSE");
        let close = &all[1].1;
        assert_eq!(
            keys(close),
            [
                "clientId",
                "clientIp",
                "messageId",
                "nodeIp",
                "nodeName",
                "protocol",
                "reason",
                "timestamp"
            ]
        );
        assert_common(close);
        assert_eq!(close["reason"], "disconnect");
        assert!(close["messageId"].is_null());

        let (topic, v) = one(EventBody::Disconnected {
            reason: DisconnectReason::Takeovered,
            disconnected_at_ms: 5,
            takeover_node: Some("192.168.0.2:1883".into()),
            by_disconnect_packet: false,
            had_session: true,
            on_node: None,
        });
        assert_eq!(topic, "$EVENT.CLOSE");
        assert_eq!(v["reason"], "other_kicked");
        assert_eq!(v["takeoverNode"], "192.168.0.2:1883");
    }

    #[test]
    fn the_close_reason_column() {
        use DisconnectReason as R;
        for (reason, expected) in [
            (R::Normal, "disconnect"),
            (R::TcpClosed, "normal"),
            (R::Kicked, "kicked"),
            (R::Takeovered, "other_kicked"),
            (R::KeepaliveTimeout, "timeout"),
            (R::NotAuthenticated, "not_authorized"),
            (R::NotAuthorized, "not_authorized"),
            (R::TooManyConnection, "kicked"),
            (R::GoAway, "kicked"),
            (R::PingWithoutConnect, "normal"),
            (R::ClientIdTooLong, "not_authorized"),
            (R::ClientIdRequired, "not_authorized"),
            (R::BadWillMessage, "kicked"),
            (R::ProtocolError, "kicked"),
            (R::ServerInternalError, "kicked"),
        ] {
            assert_eq!(close_reason(reason), expected, "{reason:?}");
        }
    }

    #[test]
    fn ack_and_offline() {
        let (topic, v) = one(EventBody::Acked {
            message: message(b"[1]"),
            packet_id: 10001,
            qos: QoS::ExactlyOnce,
        });
        assert_eq!(topic, "$EVENT.ACK");
        assert_eq!(
            keys(&v),
            [
                "clientId",
                "clientIp",
                "messageId",
                "nodeIp",
                "nodeName",
                "payload",
                "qos",
                "timestamp",
                "topic"
            ]
        );
        assert_common(&v);
        assert_eq!(v["messageId"], 10001);
        assert_eq!(v["qos"], 2);
        assert_eq!(v["payload"], json!([1]));
        assert_eq!(v["topic"], "test");

        let (topic, v) = one(EventBody::Offline {
            message: message(b"x"),
            qos: QoS::AtLeastOnce,
        });
        assert_eq!(topic, "$EVENT.OFFLINE");
        assert_eq!(
            keys(&v),
            [
                "clientId",
                "clientIp",
                "messageId",
                "nodeIp",
                "nodeName",
                "payload",
                "protocol",
                "qos",
                "retain",
                "timestamp",
                "topic"
            ]
        );
        assert_eq!(v["payload"], "x");
        assert!(v["messageId"].is_null());
        assert_eq!(v["retain"], false);

        let unknown = ClientInfo::unknown(ClientId::new("dev1212313"), ProtocolVersion::V5);
        let v = &render_all(
            unknown,
            EventBody::Offline {
                message: message(b"x"),
                qos: QoS::AtLeastOnce,
            },
        )[0]
        .1;
        assert!(v["clientIp"].is_null());
    }

    #[test]
    fn other_kinds_render_nothing() {
        assert!(render_all(client(), EventBody::Connected).is_empty());
        assert!(render_all(
            client(),
            EventBody::Connack {
                code: 0,
                success: true
            }
        )
        .is_empty());
    }
}
