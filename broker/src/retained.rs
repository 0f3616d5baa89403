//! Retained messages: one per topic, in memory for matching and in storage for restarts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use skein_storage::Store;

use crate::message::Message;
use crate::topic;

pub struct RetainedStore {
    store: Store,
    messages: RwLock<HashMap<Arc<str>, Arc<Message>>>,
}

impl RetainedStore {
    pub fn load(store: Store) -> Result<RetainedStore, skein_storage::StorageError> {
        let mut messages = HashMap::new();
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

    /// Stores `message` as the topic's retained message, or deletes it for an empty payload.
    /// True if storage was written (flush before acknowledging).
    pub fn update(&self, message: &Arc<Message>) -> bool {
        let mut map = self.messages.write().unwrap_or_else(|e| e.into_inner());
        let result = if message.payload.is_empty() {
            map.remove(&message.topic);
            self.store.retained_delete(&message.topic)
        } else {
            map.insert(message.topic.clone(), message.clone());
            self.store.retained_put(&message.to_stored(&[]))
        };
        if let Err(e) = result {
            tracing::error!(topic = %message.topic, error = %e, "cannot store retained message");
            return false;
        }
        true
    }

    /// Unexpired retained messages whose topic matches `filter` (a filter without `$share`).
    pub fn matching(&self, filter: &str, now_ms: u64) -> Vec<Arc<Message>> {
        let map = self.messages.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|m| !m.is_expired(now_ms) && topic::matches(filter, &m.topic))
            .cloned()
            .collect()
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
