//! [`ClientIds`]: the broker's own client id strings, lent to the registry while their
//! registrations are being committed, so that an entry for a client connected to this node
//! shares the broker's allocation instead of holding a copy.
//!
//! Every member applies the same log to the same registry: a key taken from here is equal
//! to the one decoded from the entry (it is looked up by that very text), so only where the
//! bytes live differs, never what the registry holds. On members where the client is not
//! connected (and for an offer already withdrawn) the registry allocates its own string.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arcstr::ArcStr;

/// Client ids of registrations in flight on this node, with how many of each.
#[derive(Debug, Default)]
pub struct ClientIds {
    offered: Mutex<HashMap<ArcStr, u32>>,
}

impl ClientIds {
    /// Lends `id` until the returned guard is dropped (once its registration has been
    /// applied here, or has failed).
    pub(crate) fn offer(self: &Arc<Self>, id: &ArcStr) -> Offer {
        *self.lock().entry(id.clone()).or_insert(0) += 1;
        Offer {
            ids: self.clone(),
            id: id.clone(),
        }
    }

    /// The offered string equal to `id`, if any.
    pub(crate) fn get(&self, id: &str) -> Option<ArcStr> {
        self.lock()
            .get_key_value(id)
            .map(|(shared, _)| shared.clone())
    }

    /// The offered string equal to `id`, or a new one.
    pub(crate) fn shared(&self, id: &str) -> ArcStr {
        self.get(id).unwrap_or_else(|| ArcStr::from(id))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ArcStr, u32>> {
        // The map is consistent after every statement: a panic elsewhere leaves it usable.
        self.offered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An id lent to [`ClientIds`]; withdrawn on drop.
#[derive(Debug)]
pub(crate) struct Offer {
    ids: Arc<ClientIds>,
    id: ArcStr,
}

impl Drop for Offer {
    fn drop(&mut self) {
        let mut offered = self.ids.lock();
        if let Some(count) = offered.get_mut(self.id.as_str()) {
            *count -= 1;
            if *count == 0 {
                offered.remove(self.id.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offered_id_is_shared_until_every_offer_is_withdrawn() {
        let ids = Arc::new(ClientIds::default());
        let id = ArcStr::from("sensor-1");
        assert!(ids.get("sensor-1").is_none());
        let first = ids.offer(&id);
        let second = ids.offer(&ArcStr::from("sensor-1"));
        assert!(ArcStr::ptr_eq(&ids.shared("sensor-1"), &id));
        drop(first);
        assert!(ArcStr::ptr_eq(&ids.get("sensor-1").unwrap(), &id));
        drop(second);
        assert!(ids.get("sensor-1").is_none());
        let own = ids.shared("sensor-1");
        assert_eq!(own, id);
        assert!(!ArcStr::ptr_eq(&own, &id));
        assert!(ids.lock().is_empty());
    }
}
