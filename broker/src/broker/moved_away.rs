//! Forwards that reach this node for a session that moved away from it go on to the
//! session's owner instead of nowhere.
//!
//! A peer routes a publish by the registry it has applied. A forward it queued while the
//! client's session was still here (by an older registry) can arrive after the session
//! left: the peer's stream to this node broke and was retried, or this node was killed
//! and restarted (its forward dedup is in memory: a resent batch is delivered as new),
//! and the session, sealed, is out of the index. Acknowledged as delivered, the message
//! was lost for that client while its publisher got a PUBACK (the chaos suite's "lost,
//! for every subscriber at once" after a short SIGKILL).
//!
//! So when a persistent session is sealed here its filters are remembered
//! ([`MovedAway`], for [`KEEP_FOR`], bounded), and a forwarded QoS 1/2 publish that
//! matches one of them, and that its origin accepted before it could have known of the
//! move ([`STALE_ROUTE_MS`] after the new owner registered), is forwarded once more to
//! the owner, marked `for_client`. The owner delivers it to that session only, through
//! the session's own subscriptions, unless the session has the publish already (queued,
//! in flight, noted as arrived during a hand-over, or among the last acknowledged ids),
//! and always with DUP: it was routed while the session was elsewhere, and not
//! necessarily on the redirecting node (a session that left it long ago, and moved on
//! since, was on another node then), where its client may have had it already and
//! acknowledged it on a node that could not hand the session over since (killed, or
//! stopped). The chaos suite's "copy on a later connection without DUP".
//! The peer's batch is acknowledged only once the owner has it (written to its disk), so
//! the publisher's PUBACK still means every subscriber's node has the message.
//!
//! The memory is stored too (`Store::moved_away_put`) and read back at start: a peer's
//! forward can be held for this node across two restarts of it, and the sessions it was
//! for may have been handed over and deleted here in between (nothing of them is left to
//! seal again at the second start).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skein_seam::{BrokerHandleError, ClientId};

use super::forwarding::{forwarded, Forwards};
use super::routing::Enqueue;
use super::{Broker, RouteOutcome};
use crate::codec::QoS;
use crate::hash::HashMap;
use crate::message::{now_ms, Message};
use crate::session::{publish_key, Delivery, MayHave, STALE_ROUTE_MS};
use crate::topic;

/// How long a session's filters are remembered after it was sealed here: longer than a
/// forward waits in a peer's queue for a node that restarts.
const KEEP_FOR: Duration = Duration::from_secs(120);

/// At most this many sessions remembered (the oldest go first).
const MAX_REMEMBERED: usize = 65_536;

/// Client id → the non-shared filters its session had when it was sealed here.
#[derive(Default)]
pub(super) struct MovedAway {
    /// How many are remembered: routing looks no further while it is 0.
    len: AtomicUsize,
    inner: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    filters: HashMap<ClientId, (Instant, Vec<String>)>,
    /// Oldest first; an entry whose time no longer matches `filters` was replaced.
    order: VecDeque<(Instant, ClientId)>,
}

impl MovedAway {
    /// Remembers the filters of `client_id`'s session, sealed `age` ago (now: zero).
    /// Returns the filters remembered (None: none to remember) and the clients forgotten
    /// meanwhile (expired, or the oldest past the bound).
    fn note(
        &self,
        client_id: &ClientId,
        filters: &[String],
        age: Duration,
    ) -> (Option<Vec<String>>, Vec<ClientId>) {
        let filters: Vec<String> = filters
            .iter()
            .filter(|f| !f.starts_with("$share/"))
            .cloned()
            .collect();
        if filters.is_empty() {
            return (None, Vec::new());
        }
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        let mut inner = self.lock();
        inner
            .filters
            .insert(client_id.clone(), (at, filters.clone()));
        inner.order.push_back((at, client_id.clone()));
        let forgotten = inner.prune(now);
        self.len.store(inner.filters.len(), Ordering::Relaxed);
        (Some(filters), forgotten)
    }

    /// The clients whose remembered filters match `topic`, and those forgotten meanwhile.
    fn matching(&self, topic_name: &str) -> (Vec<ClientId>, Vec<ClientId>) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return (Vec::new(), Vec::new());
        }
        let mut inner = self.lock();
        let forgotten = inner.prune(Instant::now());
        self.len.store(inner.filters.len(), Ordering::Relaxed);
        let matching = inner
            .filters
            .iter()
            .filter(|(_, (_, filters))| filters.iter().any(|f| topic::matches(f, topic_name)))
            .map(|(client_id, _)| client_id.clone())
            .collect();
        (matching, forgotten)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Remembered {
    /// Forgets the expired and the oldest past the bound; returns them.
    fn prune(&mut self, now: Instant) -> Vec<ClientId> {
        let mut forgotten = Vec::new();
        while let Some((at, client_id)) = self.order.front() {
            let expired = now.duration_since(*at) > KEEP_FOR;
            if !expired && self.order.len() <= MAX_REMEMBERED {
                break;
            }
            if self.filters.get(client_id).is_some_and(|(t, _)| t == at) {
                self.filters.remove(client_id);
                forgotten.push(client_id.clone());
            }
            self.order.pop_front();
        }
        forgotten
    }
}

impl Broker {
    /// Remembers that the session of `client_id`, with `filters`, was sealed here now
    /// (see the module docs), in memory and in the store.
    pub(super) fn remember_moved_away(&self, client_id: &ClientId, filters: &[String]) {
        let (kept, forgotten) = self.moved_away.note(client_id, filters, Duration::ZERO);
        if let Some(filters) = kept {
            if let Err(e) = self
                .store
                .moved_away_put(client_id.as_str(), now_ms(), &filters)
            {
                // Kept in memory all the same: only a restart forgets it.
                tracing::warn!(%client_id, error = %e, "could not store a session that moved away");
            }
        }
        self.forget_moved_away(forgotten);
    }

    /// Reads back what the previous runs remembered (see the module docs); what is older
    /// than [`KEEP_FOR`] goes. Unreadable, it is forgotten (a warning): the memory only
    /// narrows a window, and the node starts without it as it did before.
    pub(super) fn restore_moved_away(&self) {
        let mut records = match self.store.moved_away_load() {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the sessions that moved away before the restart");
                return;
            }
        };
        records.sort_by_key(|(_, at_ms, _)| *at_ms);
        let now = now_ms();
        let mut forgotten = Vec::new();
        let mut restored = 0usize;
        for (client_id, at_ms, filters) in records {
            let client_id = ClientId::new(&client_id);
            let age = Duration::from_millis(now.saturating_sub(at_ms));
            if age > KEEP_FOR {
                forgotten.push(client_id);
                continue;
            }
            let (kept, dropped) = self.moved_away.note(&client_id, &filters, age);
            restored += usize::from(kept.is_some());
            forgotten.extend(dropped);
        }
        if restored > 0 {
            tracing::info!(
                sessions = restored,
                "remembered sessions that moved away before the restart"
            );
        }
        self.forget_moved_away(forgotten);
    }

    fn forget_moved_away(&self, forgotten: Vec<ClientId>) {
        if forgotten.is_empty() {
            return;
        }
        if let Err(e) = self
            .store
            .moved_away_remove(forgotten.iter().map(|c| c.as_str()))
        {
            // Left stored, it is read back and dropped at the next start.
            tracing::debug!(error = %e, "could not forget sessions that moved away");
        }
    }

    /// The forwards of `message` (forwarded here for this node's subscribers) to the
    /// owners of sessions that moved away from here and may have been meant (see the
    /// module docs); empty for QoS 0 and when nothing moved away.
    /// `possibly_delivered` goes with them (see `ForwardedPublish::possibly_delivered`).
    pub(super) fn redirect_to_moved(
        &self,
        message: &Message,
        possibly_delivered: bool,
    ) -> Forwards {
        let mut forwards = Forwards::default();
        if message.qos == QoS::AtMostOnce {
            return forwards;
        }
        let me = self.cluster.node_id();
        let (matching, forgotten) = self.moved_away.matching(&message.topic);
        self.forget_moved_away(forgotten);
        for client_id in matching {
            let Some(owner) = self.cluster.locate_client(&client_id) else {
                continue;
            };
            let stale = message.received_at_ms < owner.connected_at_ms + STALE_ROUTE_MS;
            if owner.node == me || owner.clean_start || !stale {
                continue;
            }
            let mut publish = forwarded(message, false, Vec::new());
            publish.for_client = Some(client_id.clone());
            publish.possibly_delivered = possibly_delivered;
            tracing::debug!(%client_id, owner = %owner.node, topic = %message.topic, "a forward for a session that moved away goes on to its owner");
            crate::metrics::moved_away_redirect("sent");
            forwards.push_waited(owner.node, self.cluster.forward(owner.node, publish));
        }
        forwards
    }

    /// Delivers `message`, redirected by a node `client_id`'s session moved away from, to
    /// that session only (see the module docs): how many sessions got it (0 or 1) and
    /// whether storage must be flushed first. Always as a possible redelivery (sent with
    /// DUP; see the module docs).
    pub(super) fn route_redirected(
        &self,
        client_id: &ClientId,
        message: Arc<Message>,
    ) -> Result<(usize, bool), BrokerHandleError> {
        let Some(session) = self.find_session(client_id) else {
            crate::metrics::moved_away_redirect("no_session");
            tracing::debug!(%client_id, "a redirected publish for a session this node does not hold");
            return Ok((0, false));
        };
        let delivery = {
            let st = session.state();
            if st.removed || st.moved {
                crate::metrics::moved_away_redirect("no_session");
                return Ok((0, false));
            }
            let from_self = message.publisher.as_ref() == Some(client_id);
            let mut delivery: Option<Delivery> = None;
            for (filter, sub) in st.subscriptions.iter() {
                if filter.starts_with("$share/")
                    || !topic::matches(filter, &message.topic)
                    || (from_self && sub.options.no_local)
                {
                    continue;
                }
                let d = delivery.get_or_insert_with(|| Delivery {
                    message: message.clone(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                });
                d.qos = d.qos.max(message.qos.min(sub.options.qos));
                d.retain |= message.retain && sub.options.retain_as_published;
                d.subscription_ids.extend(sub.subscription_id);
            }
            let Some(delivery) = delivery else {
                return Ok((0, false));
            };
            let key = publish_key(&message);
            let has_it = st.has_publish(&message)
                || st.arrivals.as_ref().is_some_and(|a| a.contains(key))
                || st.redirected.as_ref().is_some_and(|r| r.contains(key));
            if has_it {
                crate::metrics::moved_away_redirect("duplicate");
                return Ok((0, false));
            }
            delivery
        };
        let to = Enqueue {
            now: now_ms(),
            max: self.config.max_queued_messages,
            forwarded: true,
            not_storing: crate::storage_refusal::NotStored::of_store(self.store.health()),
            // Whatever the sender says: routed to a node the session had left, it was
            // routed while the session was elsewhere (possibly on the node that sent it,
            // or on a node it stayed on after leaving the redirecting one), where it may
            // have reached the client already.
            may_have: MayHave {
                possibly_sent: true,
                routed_index: 0,
                redirect: true,
            },
            redirected_from: None,
        };
        let mut outcome = RouteOutcome::default();
        self.enqueue(&to, &session, &message, delivery, None, &mut outcome);
        if let Some(refusal) = outcome.not_stored {
            return Err(BrokerHandleError::Storage(refusal.message().into()));
        }
        crate::metrics::moved_away_redirect("delivered");
        Ok((1, outcome.needs_flush))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use skein_seam::NodeId;
    use skein_storage::Store;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::Config;
    use crate::events::{EventBus, NodeInfo};
    use crate::local_cluster::LocalCluster;

    fn broker(store: Store) -> Arc<Broker> {
        let events = EventBus::new(NodeInfo {
            node: "127.0.0.1:1883".into(),
            node_ip: "127.0.0.1".into(),
            node_name: "test".into(),
        });
        Broker::new(
            Config::default(),
            store,
            Arc::new(LocalCluster::new(NodeId(1))),
            events,
            CancellationToken::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_restarted_node_remembers_the_sessions_that_moved_away_and_forgets_old_ones() {
        let store = Store::open_temporary().unwrap();
        let before = broker(store.clone());
        let moved = ClientId::new("moved");
        before.remember_moved_away(&moved, &["t/#".into(), "$share/g/t/#".into()]);
        // Remembered by an earlier run longer ago than it is kept.
        store
            .moved_away_put(
                "old",
                now_ms() - KEEP_FOR.as_millis() as u64 - 1000,
                &["t/#".into()],
            )
            .unwrap();
        drop(before);

        let after = broker(store.clone());
        let (matching, _) = after.moved_away.matching("t/1");
        assert_eq!(matching, [moved]);
        assert!(after.moved_away.matching("u/1").0.is_empty());
        // The old one is gone from the store too; the shared filter was never kept.
        let stored = store.moved_away_load().unwrap();
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(
            (stored[0].0.as_str(), &stored[0].2[..]),
            ("moved", &["t/#".to_owned()][..])
        );
    }

    /// A redirected forward was routed while the session was on another node, maybe one
    /// where its client got it: queued as a possible redelivery (with DUP), or not at all
    /// when the session has it.
    #[tokio::test]
    async fn a_redirected_publish_goes_out_as_a_possible_redelivery() {
        use crate::broker::tests::{message, online, sub};
        let b = broker(Store::open_temporary().unwrap());
        let id = ClientId::new("c");
        let s = online(&b, "c");
        b.subscribe(&s, "t/#", sub(QoS::AtLeastOnce, None, false));
        let m = message("t/1", QoS::AtLeastOnce, "p");
        assert_eq!(b.route_redirected(&id, m.clone()).unwrap().0, 1);
        assert_eq!(b.route_redirected(&id, m).unwrap().0, 0, "once");
        let st = s.state();
        assert_eq!(st.queue.len(), 1);
        let seq = st.queue[0].seq;
        assert!(st.redeliver.as_ref().is_some_and(|r| r.contains(&seq)));
    }
}
