//! The records the broker stores, independent of its packet types so the
//! on-disk format does not change when the protocol code does.

use bytes::Bytes;

/// A message as stored (independent of the broker's packet types).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// Unix time in milliseconds when the broker received it (to count Message Expiry down).
    pub received_at_ms: u64,
    pub message_expiry_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    pub subscription_identifiers: Vec<u32>,
    /// Client id of the publisher (for No Local and events); empty if unknown.
    pub publisher: String,
    /// The cluster-wide id the accepting node gave the publish (None: unknown), so that a
    /// copy handed over after a restart is still recognised.
    pub publish_id: Option<u64>,
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredSubscription {
    /// Full filter including any `$share/group/` prefix.
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_identifier: Option<u32>,
}

/// A persistent session's metadata and subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredSession {
    pub client_id: String,
    pub protocol_level: u8,
    /// Seconds; `u32::MAX` = never.
    pub session_expiry_interval: u32,
    /// Unix ms when the client disconnected; None while connected.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<StoredSubscription>,
    /// A will waiting for its delay (MQTT 5 Will Delay Interval) when the
    /// broker stopped, with the unix ms when it is due; None otherwise.
    pub pending_will: Option<(StoredMessage, u64)>,
}

/// An outgoing QoS 1/2 message sent (or to be re-sent) to a client, keyed by packet id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredInflight {
    pub packet_id: u16,
    /// Broker-assigned send order; `Store::inflight_load` sorts by it so that
    /// a resumed session is re-sent messages in their original order.
    pub seq: u64,
    pub message: StoredMessage,
    /// QoS 2 only: PUBREC received, PUBREL sent (message no longer needed but the id is).
    pub released: bool,
}
