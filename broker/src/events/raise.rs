//! Raising events from the protocol code: one call per protocol point.
//!
//! Every helper checks [`EventBus::wants`] first and builds nothing otherwise, so a kind no
//! dialect wants costs one branch. Messages the node publishes itself (events, with no
//! publisher) never raise `message.*` events: rendering an event as a message must not
//! produce another event about that message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{ClientInfo, Event, EventBody, EventBus, EventKind, KindSet, SessionEnd};
use crate::broker::Broker;
use crate::codec::{ProtocolVersion, QoS};
use crate::disconnect::{Close, DisconnectReason};
use crate::ids::ClientId;
use crate::message::{now_ms, Message};
use crate::session::Session;

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

/// The username of the last connection of `client_id`'s session (for its will), if a
/// dialect renders message events.
pub fn will_publisher_username(broker: &Broker, client_id: &ClientId) -> Option<Arc<str>> {
    if !broker.events.wants_any(names_publisher()) {
        return None;
    }
    let session = broker.find_session(client_id)?;
    let info = session.state().last_info.clone()?;
    info.username.clone()
}

/// `session.terminated`: `session` ended for `reason`. Called before its state is cleared,
/// while it still knows its last connection.
pub fn session_terminated(bus: &EventBus, session: &Session, reason: SessionEnd) {
    if !bus.wants(EventKind::SessionTerminated) {
        return;
    }
    let (client, _) = session_client(session);
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

/// `client.disconnected` for a connection that ended with `close`.
pub fn disconnected(broker: &Broker, client: &Arc<ClientInfo>, close: &Close) {
    raise(
        &broker.events,
        client,
        EventKind::ClientDisconnected,
        || EventBody::Disconnected {
            reason: close.reason,
            disconnected_at_ms: now_ms(),
            // One node for now: every takeover is by a connection on this node.
            takeover_node: (close.reason == DisconnectReason::Takeovered)
                .then(|| broker.events.node().node.clone()),
            by_disconnect_packet: close.reason == DisconnectReason::Normal,
            had_session: true,
        },
    );
}

/// The events of a connection refused before it got a session: the CONNACK (if one is
/// sent) and the end of the connection.
pub fn refused(
    broker: &Broker,
    client: &Arc<ClientInfo>,
    connack_code: Option<u8>,
    reason: DisconnectReason,
) {
    if let Some(code) = connack_code {
        raise(&broker.events, client, EventKind::ClientConnack, || {
            EventBody::Connack {
                code,
                success: false,
            }
        });
    }
    raise(
        &broker.events,
        client,
        EventKind::ClientDisconnected,
        || EventBody::Disconnected {
            reason,
            disconnected_at_ms: now_ms(),
            takeover_node: None,
            by_disconnect_packet: false,
            had_session: false,
        },
    );
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
    peer: SocketAddr,
    sockname: Arc<SocketAddr>,
    protocol: Option<ProtocolVersion>,
) -> Arc<ClientInfo> {
    Arc::new(ClientInfo::before_connect(
        peer,
        sockname,
        protocol.unwrap_or(ProtocolVersion::V311),
        now_ms(),
    ))
}

/// What events say about the client of `session`: its connection's, else the last one
/// seen, else (restored after a restart) only its id. Also whether it is online.
pub fn session_client(session: &Session) -> (Arc<ClientInfo>, bool) {
    let st = session.state();
    if let Some(info) = st.attached_info() {
        return (info.clone(), true);
    }
    let info = st.last_info.clone().unwrap_or_else(|| {
        Arc::new(ClientInfo::unknown(
            session.client_id.clone(),
            protocol_of_level(st.protocol_level),
        ))
    });
    (info, false)
}

fn protocol_of_level(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V31,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V311,
    }
}

/// `message.offline` when `message` was queued for `session` while it is offline.
#[inline]
pub fn offline(bus: &EventBus, session: &Session, message: &Arc<Message>, qos: QoS) {
    if !bus.wants(EventKind::MessageOffline) || message.publisher.is_none() {
        return;
    }
    let (client, online) = session_client(session);
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

/// `message.dropped` on the way to `session`.
#[inline]
pub fn dropped(bus: &EventBus, session: &Session, message: &Arc<Message>, reason: &'static str) {
    if !bus.wants(EventKind::MessageDropped) || message.publisher.is_none() {
        return;
    }
    let (client, _) = session_client(session);
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
/// publisher.
#[inline]
pub fn unrouted(broker: &Broker, message: &Arc<Message>) {
    if !broker.events.wants(EventKind::MessageDropped) {
        return;
    }
    let Some(publisher) = &message.publisher else {
        return;
    };
    let client = match broker.find_session(publisher) {
        Some(session) => session_client(&session).0,
        None => Arc::new(ClientInfo::unknown(
            publisher.clone(),
            ProtocolVersion::V311,
        )),
    };
    emit(
        &broker.events,
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
    use crate::ids::ClientId;
    use bytes::Bytes;

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
        let session = Session::new(ClientId::new("c"));
        offline(&bus, &session, &message(None), QoS::AtLeastOnce);
        assert!(rx.try_recv().is_err());
        offline(&bus, &session, &message(Some("p")), QoS::AtLeastOnce);
        let event = rx.try_recv().expect("offline event");
        assert_eq!(event.kind(), EventKind::MessageOffline);
        assert_eq!(event.client.client_id.as_str(), "c");
        assert!(!event.client.peer_known());
    }

    #[test]
    fn an_offline_session_is_described_by_its_last_connection() {
        let session = Session::new(ClientId::new("c"));
        let last = Arc::new(ClientInfo {
            username: Some("u".into()),
            ..ClientInfo::unknown(ClientId::new("c"), ProtocolVersion::V5)
        });
        session.state().last_info = Some(last.clone());
        let (info, online) = session_client(&session);
        assert!(!online);
        assert!(Arc::ptr_eq(&info, &last));
    }
}
