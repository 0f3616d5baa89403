//! The one typed event model every dialect renders from (see shared/EVENTS.md).
//!
//! Events are raised at the exact protocol points by the connection and routing code and
//! handed to the [`super::EventBus`], which never blocks the raiser.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{ProtocolVersion, QoS};
use crate::disconnect::DisconnectReason;
use crate::message::Message;
use skein_seam::ClientId;

/// Where this node is, as events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Advertised MQTT address `ip:port` (the `node` field).
    pub node: String,
    /// Advertised IP alone (the `nodeIp` field).
    pub node_ip: String,
    /// Configured node name (`node_name` / `nodeName` / stream `instance`).
    pub node_name: String,
}

/// The transport a client came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillInfo {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
}

/// What is known about a client connection. Never holds the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: ClientId,
    pub username: Option<Arc<str>>,
    /// The client's address (`peername`, `clientIp`, `ipaddress`).
    pub peer: SocketAddr,
    /// The listener address it connected to (`sockname`). Shared by the connections
    /// accepted on the same address: 24 bytes less in every connection's info.
    pub sockname: Arc<SocketAddr>,
    pub protocol: ProtocolVersion,
    pub transport: Transport,
    pub keepalive: u16,
    pub clean_start: bool,
    /// Unix milliseconds of the CONNECT.
    pub connected_at_ms: u64,
    /// Boxed: most clients have none, and every connection holds one of these.
    pub will: Option<Box<WillInfo>>,
}

impl ClientInfo {
    /// A client known only by its id, e.g. an offline session restored after a restart:
    /// addresses are the unspecified placeholder (see [`ClientInfo::peer_known`]).
    pub fn unknown(client_id: ClientId, protocol: ProtocolVersion) -> ClientInfo {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        ClientInfo {
            client_id,
            username: None,
            peer: nowhere,
            sockname: Arc::new(nowhere),
            protocol,
            transport: Transport::Tcp,
            keepalive: 0,
            clean_start: true,
            connected_at_ms: 0,
            will: None,
        }
    }

    /// A socket that never sent a valid CONNECT: only its addresses are known.
    pub fn before_connect(
        peer: SocketAddr,
        sockname: Arc<SocketAddr>,
        protocol: ProtocolVersion,
        now_ms: u64,
    ) -> ClientInfo {
        ClientInfo {
            peer,
            sockname,
            connected_at_ms: now_ms,
            ..ClientInfo::unknown(ClientId::new(""), protocol)
        }
    }

    /// False for the placeholder addresses of [`ClientInfo::unknown`] (a TCP peer never
    /// has port 0), so renderers can say "unknown" instead of a fake address.
    pub fn peer_known(&self) -> bool {
        self.peer.port() != 0
    }
}

/// The canonical event kinds of EVENTS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    ClientConnect,
    ClientConnack,
    ClientConnected,
    ClientDisconnected,
    ClientPing,
    SessionSubscribed,
    SessionUnsubscribed,
    MessagePublish,
    MessageDelivered,
    MessageAcked,
    MessageDropped,
    MessageOffline,
    CertificateRegistered,
    CertificateRejected,
    /// SUBSCRIBE received, per filter, before any check (seed 004's `client.subscribe`).
    ClientSubscribe,
    /// UNSUBSCRIBE received, per filter, whether or not the subscription exists.
    ClientUnsubscribe,
    /// A session ended (seed 004's `session.terminated`).
    SessionTerminated,
}

impl EventKind {
    pub const ALL: [EventKind; 17] = [
        EventKind::ClientConnect,
        EventKind::ClientConnack,
        EventKind::ClientConnected,
        EventKind::ClientDisconnected,
        EventKind::ClientPing,
        EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed,
        EventKind::MessagePublish,
        EventKind::MessageDelivered,
        EventKind::MessageAcked,
        EventKind::MessageDropped,
        EventKind::MessageOffline,
        EventKind::CertificateRegistered,
        EventKind::CertificateRejected,
        EventKind::ClientSubscribe,
        EventKind::ClientUnsubscribe,
        EventKind::SessionTerminated,
    ];

    /// The canonical name, e.g. `client.connected`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ClientConnect => "client.connect",
            EventKind::ClientConnack => "client.connack",
            EventKind::ClientConnected => "client.connected",
            EventKind::ClientDisconnected => "client.disconnected",
            EventKind::ClientPing => "client.ping",
            EventKind::SessionSubscribed => "session.subscribed",
            EventKind::SessionUnsubscribed => "session.unsubscribed",
            EventKind::MessagePublish => "message.publish",
            EventKind::MessageDelivered => "message.delivered",
            EventKind::MessageAcked => "message.acked",
            EventKind::MessageDropped => "message.dropped",
            EventKind::MessageOffline => "message.offline",
            EventKind::CertificateRegistered => "certificate.registered",
            EventKind::CertificateRejected => "certificate.rejected",
            EventKind::ClientSubscribe => "client.subscribe",
            EventKind::ClientUnsubscribe => "client.unsubscribe",
            EventKind::SessionTerminated => "session.terminated",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// A bit for kind sets (`KindSet`).
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of event kinds, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KindSet(pub u32);

impl KindSet {
    pub const NONE: KindSet = KindSet(0);
    pub fn all() -> KindSet {
        KindSet(EventKind::ALL.iter().fold(0, |m, k| m | k.bit()))
    }
    pub fn of(kinds: &[EventKind]) -> KindSet {
        KindSet(kinds.iter().fold(0, |m, k| m | k.bit()))
    }
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }
    pub fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }
}

#[derive(Debug, Clone)]
pub enum EventBody {
    /// CONNECT received, before authentication.
    Connect,
    /// CONNACK about to be sent: `code` as on the wire (3.x return code or 5.0 reason code).
    Connack {
        code: u8,
        success: bool,
    },
    Connected,
    /// The connection is gone. `takeover_node` is the `node` of the connection that took
    /// the session over (takeovered only). `by_disconnect_packet` is true when the client
    /// sent DISCONNECT (the `$EVENT.DISCONNECT` rendering).
    Disconnected {
        reason: DisconnectReason,
        disconnected_at_ms: u64,
        takeover_node: Option<String>,
        by_disconnect_packet: bool,
        /// The connection had gone live (raised `client.connected`); false for one refused
        /// before it had a session, which raises `client.disconnected` too.
        had_session: bool,
        /// The node that held the connection when it is not this one (a `node_down` end,
        /// announced by the node that adopted the session): renderings name it in `node`
        /// and `nodeIp`. Boxed: None costs one word.
        on_node: Option<Box<NodeInfo>>,
    },
    Ping,
    Subscribed {
        filter: String,
        qos: QoS,
        packet_id: u16,
    },
    /// A subscription was removed; `qos` is the QoS it had been granted.
    Unsubscribed {
        filter: String,
        packet_id: u16,
        qos: QoS,
    },
    /// A PUBLISH accepted from `client`, before routing.
    Publish {
        message: Arc<Message>,
        packet_id: u16,
    },
    /// About to be written to subscriber `client`.
    Delivered {
        message: Arc<Message>,
        packet_id: u16,
        qos: QoS,
    },
    /// Subscriber `client` acknowledged it.
    Acked {
        message: Arc<Message>,
        packet_id: u16,
        qos: QoS,
    },
    /// Dropped on its way to `client` (or, for `no_subscribers`, from publisher `client`).
    Dropped {
        message: Arc<Message>,
        reason: &'static str,
    },
    /// Stored for offline persistent session `client`.
    Offline {
        message: Arc<Message>,
        qos: QoS,
    },
    /// One filter of a SUBSCRIBE, as received: `qos` is the requested QoS. Raised before
    /// any check, so for filters refused later too.
    SubscribeRequest {
        filter: String,
        qos: QoS,
        packet_id: u16,
    },
    /// One filter of an UNSUBSCRIBE, as received, whether or not it was subscribed.
    UnsubscribeRequest {
        filter: String,
        packet_id: u16,
    },
    /// The session of `client` ended: its subscriptions and queue are gone.
    SessionTerminated {
        reason: SessionEnd,
    },
    /// `client`'s TLS certificate was seen for the first time, cluster-wide, and this node
    /// registered it (boxed: rare, and larger than the common bodies).
    CertificateRegistered(Box<CertificateEvent>),
    /// `client`'s TLS certificate is not active: the connection was refused.
    CertificateRejected(Box<CertificateEvent>),
}

/// A device certificate as its events show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateEvent {
    pub seen: skein_seam::SeenCertificate,
    pub status: skein_seam::CertificateStatus,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Its connection ended and the session does not outlive it (a clean session, or MQTT 5
    /// Session Expiry 0): the connection's reason.
    ConnectionEnded(DisconnectReason),
    /// A persistent session stayed offline past its expiry interval.
    Expired,
    /// An operator discarded the offline session (admin API).
    Discarded,
}

impl SessionEnd {
    /// The reason as events spell it: the disconnect reason, `expired` or `discarded`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::ConnectionEnded(reason) => reason.as_str(),
            SessionEnd::Expired => "expired",
            SessionEnd::Discarded => "discarded",
        }
    }
}

/// One event: what happened, to which client, when.
#[derive(Debug, Clone)]
pub struct Event {
    pub timestamp_ms: u64,
    /// Nanoseconds since the epoch, from the same clock reading as `timestamp_ms`.
    pub timestamp_ns: u64,
    pub client: Arc<ClientInfo>,
    pub body: EventBody,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match &self.body {
            EventBody::Connect => EventKind::ClientConnect,
            EventBody::Connack { .. } => EventKind::ClientConnack,
            EventBody::Connected => EventKind::ClientConnected,
            EventBody::Disconnected { .. } => EventKind::ClientDisconnected,
            EventBody::Ping => EventKind::ClientPing,
            EventBody::Subscribed { .. } => EventKind::SessionSubscribed,
            EventBody::Unsubscribed { .. } => EventKind::SessionUnsubscribed,
            EventBody::Publish { .. } => EventKind::MessagePublish,
            EventBody::Delivered { .. } => EventKind::MessageDelivered,
            EventBody::Acked { .. } => EventKind::MessageAcked,
            EventBody::Dropped { .. } => EventKind::MessageDropped,
            EventBody::Offline { .. } => EventKind::MessageOffline,
            EventBody::SubscribeRequest { .. } => EventKind::ClientSubscribe,
            EventBody::UnsubscribeRequest { .. } => EventKind::ClientUnsubscribe,
            EventBody::SessionTerminated { .. } => EventKind::SessionTerminated,
            EventBody::CertificateRegistered(_) => EventKind::CertificateRegistered,
            EventBody::CertificateRejected(_) => EventKind::CertificateRejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_names_and_bits_are_distinct() {
        let mut seen = 0;
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(seen & k.bit(), 0);
            seen |= k.bit();
        }
        assert_eq!(KindSet::all().0, seen);
        assert!(KindSet::of(&[EventKind::ClientPing]).contains(EventKind::ClientPing));
        assert!(!KindSet::NONE.contains(EventKind::ClientPing));
        assert_eq!(
            EventKind::parse("session.terminated"),
            Some(EventKind::SessionTerminated)
        );
        assert_eq!(
            EventKind::parse("client.subscribe"),
            Some(EventKind::ClientSubscribe)
        );
    }

    #[test]
    fn session_end_reasons_are_spelled_like_disconnect_reasons() {
        assert_eq!(
            SessionEnd::ConnectionEnded(DisconnectReason::TcpClosed).as_str(),
            "tcp_closed"
        );
        assert_eq!(SessionEnd::Expired.as_str(), "expired");
        assert_eq!(SessionEnd::Discarded.as_str(), "discarded");
    }
}
