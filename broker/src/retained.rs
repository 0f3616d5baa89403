//! Retained messages: one per topic, in memory for matching and in storage for restarts.

use std::sync::{Arc, RwLock};

use skein_storage::Store;

use crate::hash::HashMap;
use crate::message::Message;
use crate::topic;

pub struct RetainedStore {
    store: Store,
    messages: RwLock<HashMap<Arc<str>, Arc<Message>>>,
}

impl RetainedStore {
    pub fn load(store: Store) -> Result<RetainedStore, skein_storage::StorageError> {
        let mut messages = HashMap::default();
        for stored in store.retained_load()? {
            let m = Message::from_stored(stored);
            messages.insert(m.topic.clone(), Arc::new(m));
        }
        tracing::info!(retained = messages.len(), "loaded retained messages");
        Ok(RetainedStore {
            store,
            messages: RwLock::new(messages),
        })
    }

    /// Stores `message` as the topic's retained message, or deletes it for an empty payload
    /// (flush before acknowledging). Storage first: when it refuses (no room: only a
    /// delete is taken then) or fails, the retained message stays what it was.
    pub fn update(&self, message: &Arc<Message>) -> Result<(), skein_storage::StorageError> {
        let mut map = self.messages.write().unwrap_or_else(|e| e.into_inner());
        if message.payload.is_empty() {
            self.store.retained_delete(&message.topic)?;
            map.remove(&message.topic);
        } else {
            self.store.health().admit()?;
            self.store.retained_put(&message.to_stored(&[]))?;
            map.insert(message.topic.clone(), message.clone());
        }
        Ok(())
    }

    /// Unexpired retained messages whose topic matches `filter` (a filter without `$share`).
    /// Stores `message` (fetched from another node) unless a message as new or newer is
    /// held for its topic; true when stored.
    pub fn restore(&self, message: &Arc<Message>) -> Result<bool, skein_storage::StorageError> {
        let mut map = self.messages.write().unwrap_or_else(|e| e.into_inner());
        let newer_held = map
            .get(&message.topic)
            .is_some_and(|held| held.received_at_ms >= message.received_at_ms);
        if newer_held || message.payload.is_empty() {
            return Ok(false);
        }
        self.store.health().admit()?;
        self.store.retained_put(&message.to_stored(&[]))?;
        map.insert(message.topic.clone(), message.clone());
        Ok(true)
    }

    pub fn matching(&self, filter: &str, now_ms: u64) -> Vec<Arc<Message>> {
        let map = self.messages.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|m| !m.is_expired(now_ms) && topic::matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    /// Every unexpired retained message, `$` topics included (for the admin API).
    pub fn snapshot(&self, now_ms: u64) -> Vec<Arc<Message>> {
        let map = self.messages.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|m| !m.is_expired(now_ms))
            .cloned()
            .collect()
    }

    /// Deletes retained messages whose Message Expiry has passed; returns how many.
    pub fn remove_expired(&self, now_ms: u64) -> usize {
        let mut map = self.messages.write().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<Arc<str>> = map
            .values()
            .filter(|m| m.is_expired(now_ms))
            .map(|m| m.topic.clone())
            .collect();
        for topic in &expired {
            map.remove(topic);
            if let Err(e) = self.store.retained_delete(topic) {
                tracing::error!(%topic, error = %e, "cannot delete expired retained message");
            }
        }
        expired.len()
    }

    pub fn len(&self) -> usize {
        self.messages
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::message::MessageProperties;
    use bytes::Bytes;

    fn retained(topic: &str, expiry: Option<u32>) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from(topic),
            payload: Bytes::from_static(b"v"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties {
                message_expiry_interval: expiry,
                ..Default::default()
            },
            received_at_ms: 1_000,
            publisher: None,
            publisher_username: None,
            publish_id: None,
        })
    }

    #[test]
    fn expired_messages_are_swept_from_memory_and_storage() {
        let store = Store::open_temporary().unwrap();
        let r = RetainedStore::load(store.clone()).unwrap();
        r.update(&retained("a", Some(1))).unwrap();
        r.update(&retained("b", None)).unwrap();
        assert_eq!(r.matching("#", 1_500).len(), 2);
        assert_eq!(r.matching("#", 2_000).len(), 1);
        assert_eq!(r.remove_expired(2_000), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(store.retained_load().unwrap().len(), 1);
    }
}
