//! Routing: a publish to every matching session of this node, and retained messages to a
//! new subscription.

use std::sync::Arc;

use super::{Broker, RouteOutcome, SessionRef, SubEntry};
use crate::codec::QoS;
use crate::events::raise;
use crate::message::{now_ms, Message};
use crate::session::{Delivery, EnqueueOutcome, HeldWakes, Session, Subscription};
use crate::storage_refusal::{self, NotStored};

/// Merges the non-shared deliveries of one session into one (highest QoS, every
/// subscription id): overlapping subscriptions deliver one copy. Sorting beats hashing here:
/// fan-outs are usually small, and it allocates nothing.
fn merge_per_session(targets: &mut Vec<(Arc<Session>, Delivery, bool)>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by_key(|(s, _, shared)| (*shared, Arc::as_ptr(s) as usize));
    targets.dedup_by(|later, kept| {
        if later.2 || kept.2 || !Arc::ptr_eq(&later.0, &kept.0) {
            return false;
        }
        let (d, from) = (&mut kept.1, &mut later.1);
        d.qos = d.qos.max(from.qos);
        d.retain |= from.retain;
        d.subscription_ids.append(&mut from.subscription_ids);
        true
    });
}

/// Whether storing `message` is part of routing it to `targets`: a QoS 1/2 copy for a
/// persistent session (its queue is on disk), or a retained message to keep. Deleting a
/// retained message needs no room. QoS 0 is never refused (there is no acknowledgement to
/// refuse it with); its retained copy is then not kept.
fn needs_disk(message: &Message, targets: &[(Arc<Session>, Delivery, bool)]) -> bool {
    if message.qos == QoS::AtMostOnce {
        return false;
    }
    (message.retain && !message.payload.is_empty())
        || targets
            .iter()
            .any(|(s, d, _)| d.qos != QoS::AtMostOnce && s.state().is_persistent())
}

/// What routing does with a message that needs the disk while storage takes no new data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenNotStored {
    /// A publisher waits for the answer: refuse the message whole, before any session has
    /// it, so that no subscriber gets what its publisher is told was refused.
    RefuseWhole,
    /// Nobody to tell (a will, an event): deliver what needs no disk, drop (and count)
    /// the copies that do.
    DeliverTheRest,
}

impl Broker {
    /// Routes a message no publisher waits on (a will, an event message) to every
    /// matching session on this node; never blocks. While storage takes no new data the
    /// copies that need the disk are dropped and counted, the others delivered.
    pub fn route(&self, message: Arc<Message>) -> RouteOutcome {
        self.route_with(message, None, WhenNotStored::DeliverTheRest)
    }

    /// Routes a publish whose publisher waits for the answer (the admin API): with
    /// storage taking no new data, a QoS 1/2 message that needs the disk is refused whole
    /// (`not_stored`, `matched` 0).
    pub fn route_or_refuse(&self, message: Arc<Message>) -> RouteOutcome {
        self.route_with(message, None, WhenNotStored::RefuseWhole)
    }

    /// [`Broker::route_or_refuse`] for a client's PUBLISH, with the subscribers' wake-ups
    /// held in `held` (see [`HeldWakes`]); None wakes them at once.
    pub fn route_holding_wakes(
        &self,
        message: Arc<Message>,
        held: Option<&mut HeldWakes>,
    ) -> RouteOutcome {
        self.route_with(message, held, WhenNotStored::RefuseWhole)
    }

    fn route_with(
        &self,
        message: Arc<Message>,
        mut held: Option<&mut HeldWakes>,
        when_not_stored: WhenNotStored,
    ) -> RouteOutcome {
        // (session, delivery, shared): non-shared matches of one session are merged below.
        let mut targets: Vec<(Arc<Session>, Delivery, bool)> = Vec::new();
        {
            let tree = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
            tree.matches(
                &message.topic,
                |k: &SessionRef| k.0.state().is_online(),
                |k: &SessionRef, v: &SubEntry, shared: Option<&str>| {
                    let is_publisher = message
                        .publisher
                        .as_ref()
                        .is_some_and(|p| *p == k.0.client_id);
                    if v.options.no_local && is_publisher && shared.is_none() {
                        return;
                    }
                    let qos = message.qos.min(v.options.qos);
                    let retain = message.retain && v.options.retain_as_published;
                    targets.push((
                        k.0.clone(),
                        Delivery {
                            message: message.clone(),
                            qos,
                            retain,
                            subscription_ids: v.subscription_id.into_iter().collect(),
                        },
                        shared.is_some(),
                    ));
                },
            );
        }
        merge_per_session(&mut targets);
        let mut outcome = RouteOutcome {
            matched: targets.len(),
            ..RouteOutcome::default()
        };
        // One atomic load while storage is fine. Otherwise the decision is taken here,
        // once for the message: asking again per copy could refuse one after others were
        // stored.
        let not_storing = NotStored::of_store(self.store.health());
        if let Some(refusal) = not_storing {
            if when_not_stored == WhenNotStored::RefuseWhole && needs_disk(&message, &targets) {
                storage_refusal::publish_refused(refusal, &message.topic, self.store.health());
                outcome.matched = 0;
                outcome.not_stored = Some(refusal);
                return outcome;
            }
        }
        if message.retain {
            match self.retained.update(&message) {
                Ok(()) => outcome.needs_flush = true,
                Err(e) => {
                    let refusal = NotStored::of(&e);
                    // A QoS 0 message goes on to its subscribers (nothing to refuse to):
                    // only its retained copy is lost, and counted.
                    crate::metrics::message_dropped(refusal.reason());
                    storage_refusal::write_failed("store a retained message", "", &e);
                    outcome.not_stored = Some(refusal);
                }
            }
        }
        let (now, max) = (now_ms(), self.config.max_queued_messages);
        for (session, delivery, _) in targets {
            let qos = delivery.qos;
            if let Some(refusal) = not_storing {
                if qos != QoS::AtMostOnce && session.state().is_persistent() {
                    crate::metrics::message_dropped(refusal.reason());
                    raise::dropped(
                        &self.events,
                        || session.event_client(),
                        &message,
                        refusal.reason(),
                    );
                    outcome.not_stored.get_or_insert(refusal);
                    continue;
                }
            }
            match session.enqueue_holding_wake(delivery, max, &self.store, now, held.as_deref_mut())
            {
                EnqueueOutcome::Queued => {}
                EnqueueOutcome::QueuedOffline => {
                    raise::offline(&self.events, || session.event_client(), &message, qos)
                }
                EnqueueOutcome::Stored { online } => {
                    outcome.needs_flush = true;
                    if !online {
                        raise::offline(&self.events, || session.event_client(), &message, qos);
                    }
                }
                EnqueueOutcome::Dropped(reason) => {
                    crate::metrics::message_dropped(reason.as_str());
                    raise::dropped(
                        &self.events,
                        || session.event_client(),
                        &message,
                        reason.as_str(),
                    );
                    tracing::debug!(client_id = %session.client_id, reason = reason.as_str(), "message dropped");
                    if let Some(refusal) = reason.not_stored() {
                        outcome.not_stored.get_or_insert(refusal);
                    }
                }
            }
        }
        let answered = when_not_stored == WhenNotStored::RefuseWhole;
        if let (Some(refusal), true) = (outcome.not_stored, answered) {
            if message.qos != QoS::AtMostOnce {
                storage_refusal::publish_refused(refusal, &message.topic, self.store.health());
            }
        }
        if outcome.matched == 0 && outcome.not_stored.is_none() {
            crate::metrics::message_dropped("no_subscribers");
            raise::unrouted(&self.events, &message, |publisher| {
                Some(self.find_session(publisher)?.event_client().0)
            });
        }
        outcome
    }

    /// Queues the retained messages matching `filter` for `session` (on subscribe). While
    /// storage takes no new data, a persistent session gets no QoS 1/2 copies (they are
    /// counted as dropped); it has them once it subscribes again with room on the disk.
    pub fn deliver_retained(&self, session: &Arc<Session>, filter: &str, sub: &Subscription) {
        let now = now_ms();
        let refusal = NotStored::of_store(self.store.health())
            .filter(|_| session.state().is_persistent() && sub.options.qos != QoS::AtMostOnce);
        for message in self.retained.matching(filter, now) {
            let for_event = self
                .events
                .wants(crate::events::EventKind::MessageDropped)
                .then(|| message.clone());
            let delivery = Delivery {
                qos: message.qos.min(sub.options.qos),
                message,
                retain: true,
                subscription_ids: sub.subscription_id.into_iter().collect(),
            };
            let dropped = match refusal {
                Some(refusal) if delivery.qos != QoS::AtMostOnce => Some(refusal.reason()),
                _ => match session.enqueue(
                    delivery,
                    self.config.max_queued_messages,
                    &self.store,
                    now,
                ) {
                    EnqueueOutcome::Dropped(reason) => Some(reason.as_str()),
                    _ => None,
                },
            };
            if let Some(reason) = dropped {
                crate::metrics::message_dropped(reason);
                if let Some(m) = &for_event {
                    raise::dropped(&self.events, || session.event_client(), m, reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{message, online, sub, test_events};
    use super::*;
    use crate::config::Config;
    use crate::local_cluster::LocalCluster;
    use bytes::Bytes;
    use skein_seam::{ClientId, NodeId};
    use skein_storage::{Availability, MinFree, Store};
    use tokio_util::sync::CancellationToken;

    /// A broker on a real data directory, so the free-space guard measures a real file
    /// system; `low` sets the guard above the file system's size (or turns it off).
    struct Node {
        broker: Arc<Broker>,
        _dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            let dir = tempfile::tempdir().unwrap();
            let broker = Broker::new(
                Config::default(),
                Store::open(dir.path()).unwrap(),
                Arc::new(LocalCluster::new(NodeId(1))),
                test_events(),
                CancellationToken::new(),
            )
            .unwrap();
            let node = Node { broker, _dir: dir };
            node.low(false);
            node
        }

        fn low(&self, low: bool) {
            let health = self.broker.store.health();
            health.set_min_free(MinFree::Bytes(if low { u64::MAX } else { 0 }));
            let want = if low {
                Availability::LowSpace
            } else {
                Availability::Available
            };
            assert_eq!(health.check().unwrap(), want);
        }

        fn offline_persistent(&self, id: &str, filter: &str) -> Arc<Session> {
            let s = self.broker.get_or_create_session(&ClientId::new(id));
            s.state().expiry_interval = 3600;
            self.broker
                .subscribe(&s, filter, sub(QoS::AtLeastOnce, None, false));
            s
        }
    }

    fn retained(topic: &str, qos: QoS, payload: &'static [u8]) -> Arc<Message> {
        let mut m = (*message(topic, qos, "p")).clone();
        m.retain = true;
        m.payload = Bytes::from_static(payload);
        Arc::new(m)
    }

    #[test]
    fn below_the_guard_a_message_a_persistent_session_needs_is_refused_whole() {
        let node = Node::new();
        let b = &node.broker;
        let stored = node.offline_persistent("stored", "t/#");
        let live = online(b, "live");
        b.subscribe(&live, "t/#", sub(QoS::AtLeastOnce, None, false));
        node.low(true);

        let out = b.route_or_refuse(message("t/1", QoS::AtLeastOnce, "p"));
        assert_eq!(out.not_stored, Some(NotStored::LowSpace));
        assert_eq!(out.matched, 0, "refused before any session had it");
        assert!(stored.state().queue.is_empty());
        assert!(live.state().queue.is_empty());
        assert!(b.store.queue_load("stored").unwrap().is_empty());

        // QoS 0 needs no disk: the online session gets it, the offline one never would.
        let out = b.route_or_refuse(message("t/2", QoS::AtMostOnce, "p"));
        assert_eq!((out.not_stored, out.matched), (None, 2));
        assert_eq!(live.state().queue.len(), 1);

        // With nobody to answer (a will, an event) the copies that need no disk go out.
        let out = b.route(message("t/3", QoS::AtLeastOnce, "p"));
        assert_eq!(
            (out.not_stored, out.matched),
            (Some(NotStored::LowSpace), 2)
        );
        assert_eq!(live.state().queue.len(), 2);
        assert!(stored.state().queue.is_empty());

        // Room again: stored and acknowledged as usual.
        node.low(false);
        let out = b.route_or_refuse(message("t/4", QoS::AtLeastOnce, "p"));
        assert_eq!(out.not_stored, None);
        assert!(out.needs_flush);
        assert_eq!(b.store.queue_load("stored").unwrap().len(), 1);
    }

    #[test]
    fn below_the_guard_clean_sessions_still_get_qos_1() {
        let node = Node::new();
        let b = &node.broker;
        let live = online(b, "live");
        b.subscribe(&live, "t", sub(QoS::AtLeastOnce, None, false));
        // A persistent session subscribed at QoS 0 stores nothing either.
        let s = node.offline_persistent("zero", "other");
        b.subscribe(&s, "t", sub(QoS::AtMostOnce, None, false));
        node.low(true);
        let out = b.route_or_refuse(message("t", QoS::AtLeastOnce, "p"));
        assert_eq!(
            (out.not_stored, out.matched, out.needs_flush),
            (None, 2, false)
        );
        assert_eq!(live.state().queue.len(), 1);
    }

    #[test]
    fn below_the_guard_a_persistent_subscriber_gets_no_retained_copy_to_store() {
        let node = Node::new();
        let b = &node.broker;
        b.route(retained("r/1", QoS::AtLeastOnce, b"one"));
        let stored = node.offline_persistent("stored", "other");
        let live = online(b, "live");
        node.low(true);
        let qos1 = sub(QoS::AtLeastOnce, None, false);
        b.deliver_retained(&stored, "r/#", &qos1);
        assert!(stored.state().queue.is_empty());
        assert!(b.store.queue_load("stored").unwrap().is_empty());
        // A clean session keeps nothing on disk: it gets its copy.
        b.deliver_retained(&live, "r/#", &qos1);
        assert_eq!(live.state().queue.len(), 1);
        node.low(false);
        b.deliver_retained(&stored, "r/#", &qos1);
        assert_eq!(b.store.queue_load("stored").unwrap().len(), 1);
    }

    #[test]
    fn below_the_guard_retained_messages_are_refused_but_deletes_go_through() {
        let node = Node::new();
        let b = &node.broker;
        assert_eq!(
            b.route(retained("r", QoS::AtLeastOnce, b"old")).not_stored,
            None
        );
        node.low(true);
        // QoS 1: refused whole; the old retained message stays, in memory and on disk.
        let out = b.route_or_refuse(retained("r", QoS::AtLeastOnce, b"new"));
        assert_eq!(out.not_stored, Some(NotStored::LowSpace));
        // QoS 0: delivered to whoever is online, but its retained copy is not kept.
        let live = online(b, "live");
        b.subscribe(&live, "r", sub(QoS::AtMostOnce, None, false));
        let out = b.route_or_refuse(retained("r", QoS::AtMostOnce, b"new"));
        assert_eq!(
            (out.not_stored, out.matched),
            (Some(NotStored::LowSpace), 1)
        );
        let kept = b.retained.matching("r", now_ms());
        assert_eq!(kept.len(), 1);
        assert_eq!(&kept[0].payload[..], b"old");
        assert_eq!(&b.store.retained_load().unwrap()[0].payload[..], b"old");
        // Deleting frees space: taken.
        let out = b.route_or_refuse(retained("r", QoS::AtLeastOnce, b""));
        assert_eq!(out.not_stored, None);
        assert!(b.retained.is_empty());
        assert!(b.store.retained_load().unwrap().is_empty());
    }
}
