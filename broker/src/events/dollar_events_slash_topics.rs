//! Dialect `$events` (seed 001): `$events/client_connected`, `$events/client_disconnected`,
//! `$events/session_subscribed`, `$events/session_unsubscribed` with the seed's snake_case
//! fields, and `$events/certificate_registered`, `$events/certificate_rejected` with the
//! seed's camelCase ones (`peerName`, `caSn`, `sn`, `commonName`, `status`,
//! `certificateChainSn`). Each message carries exactly the fields of the seed's table for
//! its topic, plus `node_name` (EVENTS.md) and, on a takeover, `takeover_node`. `username`
//! is `null` when the client sent none, and so is an address that is unknown.

use serde_json::{json, Map, Value};

use super::mqtt_out::Outgoing;
use super::{CertificateEvent, ClientInfo, Event, EventBody, EventKind, KindSet, NodeInfo};

pub const DIALECT: &str = "$events";

/// The canonical kinds this dialect renders.
pub fn renders() -> KindSet {
    default_kinds()
}

/// The kinds published by default: all of the seed's topics (the certificate ones are
/// raised only by TLS clients with a certificate).
pub fn default_kinds() -> KindSet {
    KindSet::of(&[
        EventKind::ClientConnected,
        EventKind::ClientDisconnected,
        EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed,
        EventKind::CertificateRegistered,
        EventKind::CertificateRejected,
    ])
}

/// The message for `event`, if this dialect has a topic for it.
pub fn render(event: &Event, node: &NodeInfo) -> Option<Outgoing> {
    let node = super::dollar_event_dot_topics::held_on(event).unwrap_or(node);
    let c = &event.client;
    let (topic, mut fields) = match &event.body {
        EventBody::Connected => (
            "$events/client_connected",
            json!({
                "clientid": c.client_id.as_str(),
                "username": c.username.as_deref(),
                "event": "client.connected",
                "clean_start": c.clean_start,
                "connected_at": c.connected_at_ms,
                "keepalive": c.keepalive,
                "proto_ver": c.protocol.level(),
                "timestamp": event.timestamp_ms,
            }),
        ),
        EventBody::Disconnected {
            reason,
            disconnected_at_ms,
            takeover_node,
            ..
        } => {
            let mut fields = json!({
                "clientid": c.client_id.as_str(),
                "username": c.username.as_deref(),
                "event": "client.disconnected",
                "reason": reason.as_str(),
                "peername": peername(c),
                "sockname": known(*c.sockname),
                "disconnected_at": disconnected_at_ms,
            });
            if let Some(n) = takeover_node {
                fields["takeover_node"] = Value::from(n.as_str());
            }
            ("$events/client_disconnected", fields)
        }
        EventBody::Subscribed { filter, qos, .. } => (
            "$events/session_subscribed",
            json!({
                "clientid": c.client_id.as_str(),
                "event": "client.subscribed",
                "peerhost": peername(c),
                "qos": *qos as u8,
                "timestamp": event.timestamp_ms,
                "topic": filter,
            }),
        ),
        EventBody::Unsubscribed { filter, qos, .. } => (
            "$events/session_unsubscribed",
            json!({
                "clientid": c.client_id.as_str(),
                "event": "client.unsubscribed",
                "peerhost": peername(c),
                // The QoS the removed subscription had been granted.
                "qos": *qos as u8,
                "timestamp": event.timestamp_ms,
                "topic": filter,
            }),
        ),
        EventBody::CertificateRegistered(cert) => (
            "$events/certificate_registered",
            certificate(event, cert, "certificate.registered"),
        ),
        EventBody::CertificateRejected(cert) => (
            "$events/certificate_rejected",
            certificate(event, cert, "certificate.rejected"),
        ),
        _ => return None,
    };
    let map: &mut Map<String, Value> = fields.as_object_mut()?;
    map.insert("node".into(), Value::from(node.node.as_str()));
    map.insert("node_name".into(), Value::from(node.node_name.as_str()));
    Some(Outgoing::json(topic, &fields))
}

/// The seed's certificate fields (the same for both topics).
fn certificate(event: &Event, cert: &CertificateEvent, name: &str) -> Value {
    json!({
        "event": name,
        "timestamp": event.timestamp_ms,
        "peerName": peername(&event.client),
        "caSn": cert.seen.ca_sn,
        "sn": cert.seen.sn,
        "commonName": cert.seen.common_name,
        "status": cert.status.as_str(),
        "certificateChainSn": cert.seen.chain_sn,
    })
}

/// The client's `ip:port`, or null when unknown (a session restored after a restart).
fn peername(c: &ClientInfo) -> Option<String> {
    known(c.peer)
}

/// An address, or null for the placeholder of an unknown one (port 0).
fn known(addr: std::net::SocketAddr) -> Option<String> {
    (addr.port() != 0).then(|| addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ProtocolVersion, QoS};
    use crate::disconnect::DisconnectReason;
    use crate::events::test_support::{event_at, keys, node};
    use crate::events::Transport;
    use skein_seam::ClientId;
    use std::sync::Arc;

    fn client(username: Option<&str>) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            client_id: ClientId::new("306520284186458"),
            username: username.map(std::sync::Arc::from),
            peer: "10.0.0.9:5768".parse().unwrap(),
            sockname: std::sync::Arc::new("10.0.0.1:1883".parse().unwrap()),
            protocol: ProtocolVersion::V311,
            transport: Transport::Tcp,
            keepalive: 60,
            clean_start: true,
            connected_at_ms: 1_717_651_184_811,
            will: None,
        })
    }

    fn render_json(body: EventBody, username: Option<&str>) -> (String, Value) {
        let event = event_at(&client(username), 1_717_651_184_900, body);
        let out = render(&event, &node()).expect("rendered");
        assert!(!out.retain);
        (out.topic, serde_json::from_slice(&out.payload).unwrap())
    }

    #[test]
    fn client_connected_has_the_seed_fields() {
        let (topic, v) = render_json(EventBody::Connected, Some("sample_user"));
        assert_eq!(topic, "$events/client_connected");
        assert_eq!(
            keys(&v),
            [
                "clean_start",
                "clientid",
                "connected_at",
                "event",
                "keepalive",
                "node",
                "node_name",
                "proto_ver",
                "timestamp",
                "username"
            ]
        );
        assert_eq!(v["clientid"], "306520284186458");
        assert_eq!(v["username"], "sample_user");
        assert_eq!(v["event"], "client.connected");
        assert_eq!(v["clean_start"], true);
        assert_eq!(v["connected_at"], 1_717_651_184_811u64);
        assert_eq!(v["keepalive"], 60);
        assert_eq!(v["node"], "10.0.0.1:1883");
        assert_eq!(v["node_name"], "edge-1");
        assert_eq!(v["proto_ver"], 4);
        assert_eq!(v["timestamp"], 1_717_651_184_900u64);
        let (_, v) = render_json(EventBody::Connected, None);
        assert!(v["username"].is_null());
    }

    #[test]
    fn client_disconnected_has_the_seed_fields_and_the_takeover_node() {
        let (topic, v) = render_json(
            EventBody::Disconnected {
                reason: DisconnectReason::KeepaliveTimeout,
                disconnected_at_ms: 1_724_136_603_064,
                takeover_node: None,
                by_disconnect_packet: false,
                had_session: true,
                on_node: None,
            },
            Some("sample-user"),
        );
        assert_eq!(topic, "$events/client_disconnected");
        assert_eq!(
            keys(&v),
            [
                "clientid",
                "disconnected_at",
                "event",
                "node",
                "node_name",
                "peername",
                "reason",
                "sockname",
                "username"
            ]
        );
        assert_eq!(v["event"], "client.disconnected");
        assert_eq!(v["reason"], "keepalive_timeout");
        assert_eq!(v["peername"], "10.0.0.9:5768");
        assert_eq!(v["sockname"], "10.0.0.1:1883");
        assert_eq!(v["disconnected_at"], 1_724_136_603_064u64);
        assert_eq!(v["username"], "sample-user");

        let (_, v) = render_json(
            EventBody::Disconnected {
                reason: DisconnectReason::Takeovered,
                disconnected_at_ms: 1,
                takeover_node: Some("10.0.0.2:1883".into()),
                by_disconnect_packet: false,
                had_session: true,
                on_node: None,
            },
            None,
        );
        assert_eq!(v["reason"], "takeovered");
        assert_eq!(v["node"], "10.0.0.1:1883");
        assert_eq!(v["takeover_node"], "10.0.0.2:1883");
    }

    #[test]
    fn subscribe_events_have_the_seed_fields() {
        let (topic, v) = render_json(
            EventBody::Subscribed {
                filter: "home/#".into(),
                qos: QoS::AtLeastOnce,
                packet_id: 7,
            },
            None,
        );
        assert_eq!(topic, "$events/session_subscribed");
        assert_eq!(
            keys(&v),
            [
                "clientid",
                "event",
                "node",
                "node_name",
                "peerhost",
                "qos",
                "timestamp",
                "topic"
            ]
        );
        assert_eq!(v["event"], "client.subscribed");
        assert_eq!(v["peerhost"], "10.0.0.9:5768");
        assert_eq!(v["qos"], 1);
        assert_eq!(v["topic"], "home/#");
        assert_eq!(v["timestamp"], 1_717_651_184_900u64);

        let (topic, v) = render_json(
            EventBody::Unsubscribed {
                filter: "home/#".into(),
                packet_id: 8,
                qos: QoS::ExactlyOnce,
            },
            None,
        );
        assert_eq!(topic, "$events/session_unsubscribed");
        assert_eq!(
            keys(&v),
            [
                "clientid",
                "event",
                "node",
                "node_name",
                "peerhost",
                "qos",
                "timestamp",
                "topic"
            ]
        );
        assert_eq!(v["event"], "client.unsubscribed");
        assert_eq!(v["qos"], 2, "the removed subscription's QoS");
    }

    #[test]
    fn certificate_events_have_the_seed_fields() {
        let cert = CertificateEvent {
            seen: skein_seam::SeenCertificate {
                sn: "1bf2f708389ad1397628ab3c6c33b1636b7e49f5".into(),
                ca_sn: "7439e17052ff2edbeda4f5db379a69fd8c5f48a5".into(),
                common_name: "VIN-1234-5678".into(),
                chain_sn: "1bf2f708389ad1397628ab3c6c33b1636b7e49f5,7439e17052ff2edbeda4f5db379a69fd8c5f48a5".into(),
            },
            status: skein_seam::CertificateStatus::PendingActivation,
        };
        for (body, topic, name) in [
            (
                EventBody::CertificateRegistered(Box::new(cert.clone())),
                "$events/certificate_registered",
                "certificate.registered",
            ),
            (
                EventBody::CertificateRejected(Box::new(cert.clone())),
                "$events/certificate_rejected",
                "certificate.rejected",
            ),
        ] {
            let (t, v) = render_json(body, None);
            assert_eq!(t, topic);
            assert_eq!(
                keys(&v),
                [
                    "caSn",
                    "certificateChainSn",
                    "commonName",
                    "event",
                    "node",
                    "node_name",
                    "peerName",
                    "sn",
                    "status",
                    "timestamp"
                ]
            );
            assert_eq!(v["event"], name);
            assert_eq!(v["timestamp"], 1_717_651_184_900u64);
            assert_eq!(v["node"], "10.0.0.1:1883");
            assert_eq!(v["peerName"], "10.0.0.9:5768");
            assert_eq!(v["caSn"], "7439e17052ff2edbeda4f5db379a69fd8c5f48a5");
            assert_eq!(v["sn"], "1bf2f708389ad1397628ab3c6c33b1636b7e49f5");
            assert_eq!(v["commonName"], "VIN-1234-5678");
            assert_eq!(v["status"], "pending_activation");
            assert_eq!(v["certificateChainSn"], cert.seen.chain_sn.as_str());
        }
        assert!(default_kinds().contains(EventKind::CertificateRegistered));
        assert!(default_kinds().contains(EventKind::CertificateRejected));
    }

    #[test]
    fn kinds_without_a_topic_render_nothing() {
        let event = event_at(&client(None), 1, EventBody::Ping);
        assert!(render(&event, &node()).is_none());
    }
}
