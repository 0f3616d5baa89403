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
//! in flight, noted as arrived during a hand-over, or among the last acknowledged ids).
//! The peer's batch is acknowledged only once the owner has it (written to its disk), so
//! the publisher's PUBACK still means every subscriber's node has the message.

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
use crate::session::{publish_key, Delivery};
use crate::topic;

/// How long a session's filters are remembered after it was sealed here: longer than a
/// forward waits in a peer's queue for a node that restarts.
const KEEP_FOR: Duration = Duration::from_secs(120);

/// At most this many sessions remembered (the oldest go first).
const MAX_REMEMBERED: usize = 65_536;

/// A publish its origin accepted up to this long after the new owner registered may have
/// been routed by a registry that did not know the move yet (the origin applies it a
/// heartbeat and an apply later; a node that was stopped or cut off, later still). Later
/// publishes went to the owner directly. A wider window only costs redirects the owner
/// recognises as copies.
const STALE_ROUTE_MS: u64 = 10_000;

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
    /// Remembers the filters of `client_id`'s session, sealed here now.
    pub(super) fn note(&self, client_id: &ClientId, filters: &[String]) {
        let filters: Vec<String> = filters
            .iter()
            .filter(|f| !f.starts_with("$share/"))
            .cloned()
            .collect();
        if filters.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.filters.insert(client_id.clone(), (now, filters));
        inner.order.push_back((now, client_id.clone()));
        inner.prune(now);
        self.len.store(inner.filters.len(), Ordering::Relaxed);
    }

    /// The clients whose remembered filters match `topic`.
    fn matching(&self, topic_name: &str) -> Vec<ClientId> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut inner = self.lock();
        inner.prune(Instant::now());
        self.len.store(inner.filters.len(), Ordering::Relaxed);
        inner
            .filters
            .iter()
            .filter(|(_, (_, filters))| filters.iter().any(|f| topic::matches(f, topic_name)))
            .map(|(client_id, _)| client_id.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Remembered {
    fn prune(&mut self, now: Instant) {
        while let Some((at, client_id)) = self.order.front() {
            let expired = now.duration_since(*at) > KEEP_FOR;
            if !expired && self.order.len() <= MAX_REMEMBERED {
                break;
            }
            if self.filters.get(client_id).is_some_and(|(t, _)| t == at) {
                self.filters.remove(client_id);
            }
            self.order.pop_front();
        }
    }
}

impl Broker {
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
        for client_id in self.moved_away.matching(&message.topic) {
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
    /// whether storage must be flushed first. `possibly_delivered`: the client may have it
    /// from the node that redirected it (sent with DUP).
    pub(super) fn route_redirected(
        &self,
        client_id: &ClientId,
        message: Arc<Message>,
        possibly_delivered: bool,
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
                || st
                    .arrivals
                    .as_ref()
                    .is_some_and(|a| a.keys().any(|k| k == key))
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
            possibly_delivered,
        };
        let mut outcome = RouteOutcome::default();
        self.enqueue(&to, &session, &message, delivery, None, &mut outcome);
        // After the enqueue (which would leave it out otherwise): a direct copy that
        // comes later is a copy.
        session
            .state()
            .redirected
            .get_or_insert_with(Box::default)
            .note(publish_key(&message));
        if let Some(refusal) = outcome.not_stored {
            return Err(BrokerHandleError::Storage(refusal.message().into()));
        }
        crate::metrics::moved_away_redirect("delivered");
        Ok((1, outcome.needs_flush))
    }
}
