//! An application message as the router carries it: one shared allocation per publish,
//! whatever the number of subscribers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use skein_storage::StoredMessage;

use crate::codec::{Properties, Publish, QoS};
use skein_seam::ClientId;

/// The MQTT 5 properties that travel with a message from publisher to subscribers: the
/// seam's type, so a forwarded publish carries them as they are.
pub use skein_seam::PublishProperties as MessageProperties;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: MessageProperties,
    /// Wall-clock receive time, so Message Expiry keeps counting across a restart.
    pub received_at_ms: u64,
    pub publisher: Option<ClientId>,
    /// The publisher's username, for events that name it (`from_username`). Set only while
    /// a dialect renders message events; not stored, so lost across a restart.
    pub publisher_username: Option<Arc<str>>,
    /// Given once by the node that accepted the publish ([`new_publish_id`]) and kept
    /// wherever the message goes (forwards, hand-overs, storage): tells one publish routed
    /// twice from two alike ones. None for what a node or a store that had none sent.
    pub publish_id: Option<u64>,
}

/// A publish id no other publish in the cluster has (in practice): this process's random
/// start plus a counter, so a restarted node does not hand out its earlier ids again.
pub fn new_publish_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_ms());
        h.write_u32(std::process::id());
        h.finish()
    });
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Message {
    pub fn from_publish(
        publish: &Publish,
        topic: Arc<str>,
        publisher: Option<ClientId>,
        publisher_username: Option<Arc<str>>,
    ) -> Message {
        let p = &publish.properties;
        Message {
            topic,
            // A copy, so a message that waits in a queue doesn't pin the whole read buffer
            // it was sliced from.
            payload: Bytes::copy_from_slice(&publish.payload),
            qos: publish.qos,
            retain: publish.retain,
            properties: MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
            },
            received_at_ms: now_ms(),
            publisher,
            publisher_username,
            publish_id: Some(new_publish_id()),
        }
    }

    /// Seconds of Message Expiry left at `now_ms`: `None` if it never expires, `Some(0)` if expired.
    pub fn remaining_expiry(&self, now_ms: u64) -> Option<u32> {
        let interval = self.properties.message_expiry_interval?;
        let elapsed_s = now_ms.saturating_sub(self.received_at_ms) / 1000;
        Some((interval as u64).saturating_sub(elapsed_s) as u32)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        match self.properties.message_expiry_interval {
            None => false,
            Some(interval) => now_ms.saturating_sub(self.received_at_ms) >= interval as u64 * 1000,
        }
    }

    /// Whether an outgoing MQTT 5 PUBLISH of this message carries any property.
    pub fn has_properties(&self) -> bool {
        self.properties != MessageProperties::default()
    }

    /// The properties of an outgoing PUBLISH of this message (MQTT 5).
    pub fn publish_properties(&self, now_ms: u64, subscription_ids: &[u32]) -> Properties {
        let p = &self.properties;
        Properties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: self.remaining_expiry(now_ms).map(|s| s.max(1)),
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            subscription_identifiers: subscription_ids.to_vec(),
            ..Properties::default()
        }
    }

    pub fn to_stored(&self, subscription_ids: &[u32]) -> StoredMessage {
        let p = &self.properties;
        StoredMessage {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            qos: self.qos as u8,
            retain: self.retain,
            received_at_ms: self.received_at_ms,
            message_expiry_interval: p.message_expiry_interval,
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            subscription_identifiers: subscription_ids.to_vec(),
            publisher: self
                .publisher
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            publish_id: self.publish_id,
        }
    }

    pub fn from_stored(s: StoredMessage) -> Message {
        Message {
            topic: Arc::from(s.topic.as_str()),
            payload: s.payload,
            qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
            retain: s.retain,
            properties: MessageProperties {
                payload_format_indicator: s.payload_format_indicator,
                message_expiry_interval: s.message_expiry_interval,
                content_type: s.content_type,
                response_topic: s.response_topic,
                correlation_data: s.correlation_data,
                user_properties: s.user_properties,
            },
            received_at_ms: s.received_at_ms,
            publisher: if s.publisher.is_empty() {
                None
            } else {
                Some(ClientId::new(&s.publisher))
            },
            publisher_username: None,
            publish_id: s.publish_id,
        }
    }
}

impl Message {
    pub fn from_will(
        will: crate::codec::Will,
        publisher: ClientId,
        publisher_username: Option<Arc<str>>,
    ) -> Message {
        let p = will.properties;
        Message {
            topic: Arc::from(will.topic.as_str()),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
            },
            received_at_ms: now_ms(),
            publisher: Some(publisher),
            publisher_username,
            publish_id: Some(new_publish_id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_counts_down_in_whole_seconds() {
        let mut m = Message {
            topic: Arc::from("t"),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties {
                message_expiry_interval: Some(10),
                ..Default::default()
            },
            received_at_ms: 1_000,
            publisher: None,
            publisher_username: None,
            publish_id: None,
        };
        assert_eq!(m.remaining_expiry(1_000), Some(10));
        assert_eq!(m.remaining_expiry(4_500), Some(7));
        assert!(!m.is_expired(10_999));
        assert!(m.is_expired(11_000));
        m.properties.message_expiry_interval = None;
        assert_eq!(m.remaining_expiry(u64::MAX), None);
        assert!(!m.is_expired(u64::MAX));
    }

    #[test]
    fn stored_round_trip_keeps_everything() {
        let m = Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"xyz"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(5),
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
            },
            received_at_ms: 42,
            publisher: Some(ClientId::new("pub")),
            publisher_username: None,
            publish_id: Some(new_publish_id()),
        };
        assert_eq!(Message::from_stored(m.to_stored(&[3])), m);
    }

    #[test]
    fn a_publish_carries_its_publishers_username() {
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 1,
            payload: Bytes::from_static(b"x"),
            properties: Properties::default(),
        };
        let m = Message::from_publish(
            &publish,
            Arc::from("t"),
            Some(ClientId::new("c")),
            Some(Arc::from("alice")),
        );
        assert_eq!(m.publisher_username.as_deref(), Some("alice"));
        assert_eq!(m.publisher.as_ref().map(ClientId::as_str), Some("c"));
    }
}
