//! Raising events from the protocol code: one call per protocol point.
//!
//! Every helper checks [`EventBus::wants`] first and builds nothing otherwise, so a kind no
//! dialect wants costs one branch. Helpers take the bus and what they say about the client
//! (a snapshot, or a closure that makes one only when the event is wanted): the events
//! know nothing of the broker, its sessions or connections, which sit above them. Messages the node publishes itself (events, with no
//! publisher) never raise `message.*` events: rendering an event as a message must not
//! produce another event about that message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{ClientInfo, Event, EventBody, EventBus, EventKind, KindSet, SessionEnd};
use crate::codec::{ProtocolVersion, QoS};
use crate::disconnect::{Close, DisconnectReason};
use crate::message::{now_ms, Message};
use skein_seam::ClientId;

/// Raises the event `body()` (of `kind`) about `client`, if a dialect wants `kind`.
#[inline]
pub fn raise(
    bus: &EventBus,
    client: &Arc<ClientInfo>,
    kind: EventKind,
    body: impl FnOnce() -> EventBody,
) {
    if bus.wants(kind) {
        emit(bus, client.clone(), body());
    }
}

fn emit(bus: &EventBus, client: Arc<ClientInfo>, body: EventBody) {
    let timestamp_ns = now_ns();
    let event = Event {
        timestamp_ms: timestamp_ns / 1_000_000,
        timestamp_ns,
        client,
        body,
    };
    debug_assert!(
        bus.could_want(event.kind()),
        "raised under another kind's check"
    );
    bus.emit(event);
}

/// Unix nanoseconds (the stream dialect's `occurred_at` needs them; the others take the
/// milliseconds of the same reading).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The kinds whose renderings name a message's publisher by username.
fn names_publisher() -> KindSet {
    KindSet::of(&[
        EventKind::MessageDelivered,
        EventKind::MessageAcked,
        EventKind::MessageDropped,
        EventKind::MessagePublish,
    ])
}

/// The username to carry on a message published by `client`: only when a dialect renders
/// message events, so the hot path allocates nothing for it otherwise.
#[inline]
pub fn publisher_username(bus: &EventBus, client: &ClientInfo) -> Option<Arc<str>> {
    if bus.wants_any(names_publisher()) {
        client.username.clone()
    } else {
        None
    }
}

/// The username of the last connection of a will's session (`last_info` looks it up), if
/// a dialect renders message events.
pub fn will_publisher_username(
    bus: &EventBus,
    last_info: impl FnOnce() -> Option<Arc<ClientInfo>>,
) -> Option<Arc<str>> {
    if !bus.wants_any(names_publisher()) {
        return None;
    }
    last_info()?.username.clone()
}

/// `session.terminated`: a session ended for `reason`. `client` describes it (see
/// `Session::event_client`); called before its state is cleared, while it still knows its
/// last connection.
pub fn session_terminated(
    bus: &EventBus,
    client: impl FnOnce() -> (Arc<ClientInfo>, bool),
    reason: SessionEnd,
) {
    if !bus.wants(EventKind::SessionTerminated) {
        return;
    }
    let (client, _) = client();
    emit(bus, client, EventBody::SessionTerminated { reason });
}

/// Raises a `message.*` event, except for the node's own messages (no publisher).
#[inline]
pub fn raise_message(
    bus: &EventBus,
    client: &Arc<ClientInfo>,
    message: &Message,
    kind: EventKind,
    body: impl FnOnce() -> EventBody,
) {
    if bus.wants(kind) && message.publisher.is_some() {
        emit(bus, client.clone(), body());
    }
}

/// `client.disconnected` for a connection that ended with `close`; `taken_by` is the
/// advertised MQTT address of the node that took the session over, when that was another
/// node.
pub fn disconnected(
    bus: &EventBus,
    client: &Arc<ClientInfo>,
    close: &Close,
    taken_by: Option<&str>,
) {
    raise(bus, client, EventKind::ClientDisconnected, || {
        EventBody::Disconnected {
            reason: close.reason,
            disconnected_at_ms: now_ms(),
            // Another node's address when it took the session over, else this node's.
            takeover_node: (close.reason == DisconnectReason::Takeovered)
                .then(|| taken_by.unwrap_or(&bus.node().node).to_owned()),
            by_disconnect_packet: close.reason == DisconnectReason::Normal,
            had_session: true,
            on_node: None,
        }
    });
}

/// The events of a connection refused before it got a session: the CONNACK (if one is
/// sent) and the end of the connection.
pub fn refused(
    bus: &EventBus,
    client: &Arc<ClientInfo>,
    connack_code: Option<u8>,
    reason: DisconnectReason,
) {
    if let Some(code) = connack_code {
        raise(bus, client, EventKind::ClientConnack, || {
            EventBody::Connack {
                code,
                success: false,
            }
        });
    }
    raise(bus, client, EventKind::ClientDisconnected, || {
        EventBody::Disconnected {
            reason,
            disconnected_at_ms: now_ms(),
            takeover_node: None,
            by_disconnect_packet: false,
            had_session: false,
            on_node: None,
        }
    });
}

/// Whether a socket refused before a valid CONNECT is worth an event. Sockets that close
/// without sending anything are port scanners and TCP health probes (a load balancer's, a
/// Kubernetes probe's): an event each would drown the real ones. A client that speaks
/// MQTT wrongly (PINGREQ first, garbage, another packet first) is reported.
pub fn reported_before_connect(reason: DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::PingWithoutConnect
            | DisconnectReason::ProtocolError
            | DisconnectReason::BadWillMessage
    )
}

/// The ClientInfo of a socket refused before a valid CONNECT.
pub fn before_connect(
    (peer, sockname): (SocketAddr, Arc<SocketAddr>),
    transport: super::Transport,
    protocol: Option<ProtocolVersion>,
) -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        transport,
        ..ClientInfo::before_connect(
            peer,
            sockname,
            protocol.unwrap_or(ProtocolVersion::V311),
            now_ms(),
        )
    })
}

/// `message.offline` when `message` was queued for a session while it is offline;
/// `client` describes the session and says whether it is online (`Session::event_client`).
#[inline]
pub fn offline(
    bus: &EventBus,
    client: impl FnOnce() -> (Arc<ClientInfo>, bool),
    message: &Arc<Message>,
    qos: QoS,
) {
    if !bus.wants(EventKind::MessageOffline) || message.publisher.is_none() {
        return;
    }
    let (client, online) = client();
    if !online {
        emit(
            bus,
            client,
            EventBody::Offline {
                message: message.clone(),
                qos,
            },
        );
    }
}

/// `message.dropped` on the way to the session `client` describes.
#[inline]
pub fn dropped(
    bus: &EventBus,
    client: impl FnOnce() -> (Arc<ClientInfo>, bool),
    message: &Arc<Message>,
    reason: &'static str,
) {
    if !bus.wants(EventKind::MessageDropped) || message.publisher.is_none() {
        return;
    }
    let (client, _) = client();
    emit(
        bus,
        client,
        EventBody::Dropped {
            message: message.clone(),
            reason,
        },
    );
}

/// `message.dropped` for a message that matched no subscriber: the event is about its
/// publisher, as `publisher_client` describes it (None: known by its id only).
#[inline]
pub fn unrouted(
    bus: &EventBus,
    message: &Arc<Message>,
    publisher_client: impl FnOnce(&ClientId) -> Option<Arc<ClientInfo>>,
) {
    if !bus.wants(EventKind::MessageDropped) {
        return;
    }
    let Some(publisher) = &message.publisher else {
        return;
    };
    let client = publisher_client(publisher).unwrap_or_else(|| {
        Arc::new(ClientInfo::unknown(
            publisher.clone(),
            ProtocolVersion::V311,
        ))
    });
    emit(
        bus,
        client,
        EventBody::Dropped {
            message: message.clone(),
            reason: "no_subscribers",
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::KindSet;
    use bytes::Bytes;
    use skein_seam::ClientId;

    #[test]
    fn the_dollar_gate_closing_while_an_event_is_built_is_not_a_bug() {
        let mut bus = EventBus::new(crate::events::test_support::node());
        let mut rx = bus.add("d", KindSet::of(&[EventKind::ClientPing]), 8, true);
        bus.set_dollar_receivers(true);
        let client = Arc::new(ClientInfo::unknown(
            ClientId::new("c"),
            crate::codec::ProtocolVersion::V5,
        ));
        raise(&bus, &client, EventKind::ClientPing, || {
            bus.set_dollar_receivers(false);
            EventBody::Ping
        });
        assert!(rx.try_recv().is_err(), "nobody could receive it any more");
    }

    fn bus(kinds: &[EventKind]) -> (EventBus, tokio::sync::mpsc::Receiver<Arc<Event>>) {
        let mut bus = EventBus::new(crate::events::test_support::node());
        let rx = bus.add_sink("t", KindSet::of(kinds), 16);
        (bus, rx)
    }

    fn message(publisher: Option<&str>) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from("t"),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            received_at_ms: 0,
            publisher: publisher.map(ClientId::new),
            publisher_username: None,
            publish_id: None,
        })
    }

    #[test]
    fn unwanted_kinds_build_nothing_and_system_messages_raise_nothing() {
        let (bus, mut rx) = bus(&[EventKind::MessageOffline]);
        let client = Arc::new(ClientInfo::unknown(ClientId::new("c"), ProtocolVersion::V5));
        raise(&bus, &client, EventKind::ClientPing, || {
            panic!("built an event nobody wants")
        });
        raise_message(
            &bus,
            &client,
            &message(None),
            EventKind::MessageOffline,
            || panic!("built an event about the node's own message"),
        );
        let session = crate::session::Session::new(ClientId::new("c"));
        offline(
            &bus,
            || session.event_client(),
            &message(None),
            QoS::AtLeastOnce,
        );
        assert!(rx.try_recv().is_err());
        offline(
            &bus,
            || session.event_client(),
            &message(Some("p")),
            QoS::AtLeastOnce,
        );
        let event = rx.try_recv().expect("offline event");
        assert_eq!(event.kind(), EventKind::MessageOffline);
        assert_eq!(event.client.client_id.as_str(), "c");
        assert!(!event.client.peer_known());
    }
}
