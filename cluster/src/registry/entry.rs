//! [`ClientEntry`] and its [`Subscriptions`], laid out for a registry of many idle clients:
//! every member holds one entry per client id in the cluster, so its size is paid per
//! connection on every node.
//!
//! 48 bytes instead of 72: the offline time is one word with a sentinel rather than an
//! `Option<u64>`, and a client's subscriptions sit behind one pointer that is null while it
//! has none (most idle clients; a `BTreeMap` is three words even when empty). The B-tree of
//! entries holds them inline, so this shrinks its nodes by a third.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Owner, Subscription};

/// `offline_since` of an entry whose client is connected.
const ONLINE: u64 = u64::MAX;

/// A client id's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    pub owner: Owner,
    /// When the owning connection registered (proposer's clock, ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// When the connection ended (ms since the Unix epoch); [`ONLINE`] while one holds the id.
    offline_since: u64,
    pub subscriptions: Subscriptions,
    pub session_expiry_secs: u32,
    pub clean_start: bool,
}

impl ClientEntry {
    /// An online entry without subscriptions yet.
    pub(crate) fn online(
        owner: Owner,
        clean_start: bool,
        session_expiry_secs: u32,
        connected_at_ms: u64,
    ) -> Self {
        ClientEntry {
            owner,
            connected_at_ms,
            offline_since: ONLINE,
            subscriptions: Subscriptions::default(),
            session_expiry_secs,
            clean_start,
        }
    }

    pub fn is_online(&self) -> bool {
        self.offline_since == ONLINE
    }

    /// When the owning connection ended; `None` while a connection holds the id.
    pub fn offline_since_ms(&self) -> Option<u64> {
        (!self.is_online()).then_some(self.offline_since)
    }

    /// Marks the entry offline since `ms` (`None`: online). A stamp of `u64::MAX` ms, half a
    /// billion years away, is kept as one millisecond earlier so that it still reads as
    /// offline; every member does the same, so the registry stays deterministic.
    pub(crate) fn set_offline_since(&mut self, ms: Option<u64>) {
        self.offline_since = ms.map_or(ONLINE, |ms| ms.min(ONLINE - 1));
    }
}

/// A client's subscriptions, by filter. Costs one null pointer while there are none.
// The box is the point: one word in every entry instead of the map's three, and one
// allocation only for the clients that subscribe.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions(Option<Box<BTreeMap<Arc<str>, Subscription>>>);

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn get(&self, filter: &str) -> Option<&Subscription> {
        self.0.as_ref()?.get(filter)
    }

    /// In filter order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Subscription)> + '_ {
        self.0.iter().flat_map(|m| m.iter())
    }

    /// In filter order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.iter().map(|(filter, _)| filter)
    }

    /// Adds or replaces the subscription to `filter`; the one it replaced.
    pub(crate) fn insert(&mut self, filter: Arc<str>, s: Subscription) -> Option<Subscription> {
        self.0
            .get_or_insert_with(Default::default)
            .insert(filter, s)
    }

    /// Removes the subscription to `filter`, with the registry's shared filter string.
    pub(crate) fn remove_entry(&mut self, filter: &str) -> Option<(Arc<str>, Subscription)> {
        let map = self.0.as_mut()?;
        let removed = map.remove_entry(filter);
        // Never an empty map behind the pointer: `is_empty` and equality rely on it.
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SubscriptionOptions;

    #[test]
    fn an_entry_is_six_words() {
        assert_eq!(std::mem::size_of::<ClientEntry>(), 48);
        assert_eq!(std::mem::size_of::<Subscriptions>(), 8);
    }

    #[test]
    fn offline_time_round_trips_and_the_sentinel_stays_offline() {
        let owner = Owner { node: 1, epoch: 2 };
        let mut e = ClientEntry::online(owner, true, 60, 1_000);
        assert!(e.is_online());
        assert_eq!(e.offline_since_ms(), None);
        e.set_offline_since(Some(0));
        assert_eq!(e.offline_since_ms(), Some(0));
        e.set_offline_since(Some(u64::MAX));
        assert!(!e.is_online());
        assert_eq!(e.offline_since_ms(), Some(u64::MAX - 1));
        e.set_offline_since(None);
        assert!(e.is_online());
    }

    #[test]
    fn subscriptions_free_their_map_when_the_last_one_goes() {
        let s = Subscription {
            options: SubscriptionOptions::default(),
            subscription_id: None,
        };
        let mut subs = Subscriptions::default();
        assert!(subs.is_empty());
        assert!(subs.insert(Arc::from("b"), s.clone()).is_none());
        assert!(subs.insert(Arc::from("a"), s.clone()).is_none());
        assert!(subs.insert(Arc::from("a"), s.clone()).is_some());
        assert_eq!(subs.keys().map(|k| &**k).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(subs.len(), 2);
        assert!(subs.get("b").is_some());
        assert!(subs.remove_entry("x").is_none());
        assert_eq!(&*subs.remove_entry("a").unwrap().0, "a");
        assert_eq!(&*subs.remove_entry("b").unwrap().0, "b");
        assert!(subs.is_empty());
        assert_eq!(subs, Subscriptions::default());
        assert!(subs.remove_entry("b").is_none());
    }
}
