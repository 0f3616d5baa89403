//! What a session that is being taken over here got directly, remembered so that the
//! copies of the same publishes a node that held it hands over later are left out.
//!
//! While a persistent session moves, every node with interest in its filters gets each
//! publish: the node that held it (by the registry it had then) and this one (the session
//! is indexed here before its registration applies). A hand-over fetched before the
//! connection starts finds the direct copies still queued; one that comes later (the
//! holder was stopped or down, and offers what it held once it runs again) would find
//! them delivered and gone, and the client would get the holder's copy as a second one on
//! the same connection. So, from the moment sequence numbers are set aside for a hand-over
//! until every holder handed over, the session notes each arrival's [`publish_key`].
//!
//! Bounded: the last [`MAX_NOTED`] arrivals; older ones are forgotten (a holder that comes
//! back after that many messages may still send a copy again).
//!
//! Once every holder handed over, the notes (with the keys of what the hand-over brought)
//! stay for [`GRACE_MS`] more and a publish noted already is not queued again: a node that
//! was stopped takes, on resuming, the forwards held for it, and one meant for another
//! subscriber there reaches this session too, after the hand-over brought its copy.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use crate::message::Message;

/// How many arrivals a session remembers while a holder may still hand copies over.
pub const MAX_NOTED: usize = 8192;

/// How long the notes stay once every holder handed over (ms).
pub const GRACE_MS: u64 = 10_000;

/// How many acknowledged publish ids a persistent session remembers for a taker.
pub const MAX_DELIVERED: usize = 512;

/// The publish ids of the last messages a persistent session's client acknowledged
/// here, oldest first. A node that takes the client over got copies of the publishes
/// routed here since it indexed the session (before its registration applied here, the
/// connection here still received them): with these it leaves out the ones the client
/// has. Bounded by [`MAX_DELIVERED`] (4 KiB), allocated at the first acknowledgement.
#[derive(Debug, Default)]
pub struct Delivered {
    ids: VecDeque<u64>,
}

impl Delivered {
    pub fn note(&mut self, publish_id: u64) {
        if self.ids.len() >= MAX_DELIVERED {
            self.ids.pop_front();
        }
        self.ids.push_back(publish_id);
    }

    pub fn ids(&self) -> Vec<u64> {
        self.ids.iter().copied().collect()
    }

    pub fn contains(&self, publish_id: u64) -> bool {
        self.ids.contains(&publish_id)
    }
}

/// The keys of the latest arrivals, oldest first, and until when they are kept (None:
/// while a holder may still hand copies over).
#[derive(Debug, Default)]
pub struct Arrivals {
    keys: VecDeque<u64>,
    set: HashSet<u64>,
    until_ms: Option<u64>,
}

impl Arrivals {
    /// Notes that `message` reached the session here.
    pub fn note(&mut self, message: &Message) {
        self.note_key(publish_key(message));
    }

    /// Notes the publish of key `key` (see [`publish_key`]).
    pub fn note_key(&mut self, key: u64) {
        if !self.set.insert(key) {
            return;
        }
        if self.keys.len() >= MAX_NOTED {
            if let Some(old) = self.keys.pop_front() {
                self.set.remove(&old);
            }
        }
        self.keys.push_back(key);
    }

    /// Whether the publish of key `key` was noted.
    pub fn contains(&self, key: u64) -> bool {
        self.set.contains(&key)
    }

    /// Every holder handed over: the notes are kept until `until_ms` only.
    pub fn keep_until(&mut self, until_ms: u64) {
        self.until_ms = Some(until_ms);
    }

    /// Whether the notes are no longer needed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.until_ms.is_some_and(|until| now_ms > until)
    }

    /// The keys noted, for a lookup set.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One publish, however many nodes it was routed through: its publish id when the
/// origin node gave it one, else its publisher, the origin's reception time, topic and
/// payload (two publishes alike in all of these within one millisecond are taken for
/// one). A 64-bit hash: in memory only, never compared across processes.
pub fn publish_key(m: &Message) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match m.publish_id {
        Some(id) => {
            1u8.hash(&mut h);
            id.hash(&mut h);
        }
        None => {
            0u8.hash(&mut h);
            m.publisher.as_ref().map(|p| p.as_str()).hash(&mut h);
            m.received_at_ms.hash(&mut h);
            m.topic.hash(&mut h);
            m.payload.hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use bytes::Bytes;
    use std::sync::Arc;

    fn message(payload: &'static [u8], at: u64, id: Option<u64>) -> Message {
        Message {
            topic: Arc::from("t"),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            received_at_ms: at,
            publisher: Some(skein_seam::ClientId::new("p")),
            publisher_username: None,
            publish_id: id,
        }
    }

    #[test]
    fn the_key_is_the_publish_id_when_there_is_one_else_the_publish_itself() {
        // Alike publishes in one millisecond are told apart by their ids only.
        assert_ne!(
            publish_key(&message(b"a", 1, Some(7))),
            publish_key(&message(b"a", 1, Some(8)))
        );
        assert_eq!(
            publish_key(&message(b"a", 1, Some(7))),
            publish_key(&message(b"b", 2, Some(7)))
        );
        assert_eq!(
            publish_key(&message(b"a", 1, None)),
            publish_key(&message(b"a", 1, None))
        );
        assert_ne!(
            publish_key(&message(b"a", 1, None)),
            publish_key(&message(b"a", 2, None))
        );
    }

    #[test]
    fn only_the_latest_acknowledgements_are_kept() {
        let mut d = Delivered::default();
        for id in 0..(MAX_DELIVERED as u64 + 3) {
            d.note(id);
        }
        let ids = d.ids();
        assert_eq!(ids.len(), MAX_DELIVERED);
        assert_eq!(ids[0], 3);
        assert_eq!(ids.last(), Some(&(MAX_DELIVERED as u64 + 2)));
    }

    #[test]
    fn noted_publishes_are_known_until_the_grace_ends() {
        let mut a = Arrivals::default();
        let m = message(b"x", 1, Some(7));
        assert!(!a.contains(publish_key(&m)));
        a.note(&m);
        a.note(&m);
        assert_eq!(a.len(), 1, "one note per publish");
        assert!(a.contains(publish_key(&message(b"y", 2, Some(7)))));
        // Kept while a holder may still hand copies over, then for the grace only.
        assert!(!a.expired(u64::MAX));
        a.keep_until(100);
        assert!(!a.expired(100));
        assert!(a.expired(101));
        // Forgotten with the oldest notes.
        for i in 0..MAX_NOTED as u64 {
            a.note(&message(b"z", i, Some(1000 + i)));
        }
        assert!(!a.contains(publish_key(&m)));
        assert_eq!(a.len(), MAX_NOTED);
    }

    #[test]
    fn only_the_latest_arrivals_are_kept() {
        let mut a = Arrivals::default();
        for i in 0..(MAX_NOTED as u64 + 10) {
            a.note(&message(b"x", i, None));
        }
        assert_eq!(a.len(), MAX_NOTED);
        let keys: std::collections::HashSet<u64> = a.keys().collect();
        assert!(!keys.contains(&publish_key(&message(b"x", 0, None))));
        assert!(keys.contains(&publish_key(&message(b"x", MAX_NOTED as u64 + 9, None))));
    }
}
