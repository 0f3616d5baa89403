//! Routing: a publish to every matching session of this node and one hop to each other
//! node with interest (see `forwarding.rs`), and retained messages to a new subscription.

use std::sync::Arc;

use super::forwarding::{ForwardTickets, Scope};
use super::{Broker, RouteOutcome, SessionRef, SubEntry, Subscribed};
use crate::codec::QoS;
use crate::events::raise;
use crate::input_order::LateRead;
use crate::message::{now_ms, Message};
use crate::session::{Delivery, EnqueueOutcome, HeldWakes, MayHave, Session, Subscription};
use crate::storage_refusal::{self, NotStored};
use crate::topic::{self, Group, RemoteTargets};

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

/// When and how much [`Broker::enqueue`] may queue: taken once per routed message.
pub(super) struct Enqueue {
    pub(super) now: u64,
    pub(super) max: usize,
    /// Forwarded by another node (which may route by an older registry than this node).
    pub(super) forwarded: bool,
    /// Storage takes no new data: copies that need the disk are dropped.
    pub(super) not_storing: Option<NotStored>,
    /// Whether the subscribers may have it already (see [`MayHave`]).
    pub(super) may_have: MayHave,
    /// Redirected from the queue of this node, marked down (see [`Scope::Adopted`]).
    pub(super) redirected_from: Option<skein_seam::NodeId>,
}

impl Broker {
    /// Routes a message no publisher waits on (a will, an event message) to every
    /// matching session on this node; never blocks. While storage takes no new data the
    /// copies that need the disk are dropped and counted, the others delivered.
    pub fn route(&self, message: Arc<Message>) -> RouteOutcome {
        self.route_with(
            message,
            None,
            None,
            None,
            WhenNotStored::DeliverTheRest,
            Scope::Cluster,
            MayHave::default(),
        )
    }

    /// Routes a publish whose publisher waits for the answer (the admin API): with
    /// storage taking no new data, a QoS 1/2 message that needs the disk is refused whole
    /// (`not_stored`, `matched` 0).
    pub fn route_or_refuse(&self, message: Arc<Message>) -> RouteOutcome {
        self.route_with(
            message,
            None,
            None,
            None,
            WhenNotStored::RefuseWhole,
            Scope::Cluster,
            MayHave::default(),
        )
    }

    /// Routes a publish another node forwarded to this node's sessions only, as that node
    /// chose (see [`Scope::Forwarded`]); refused whole like [`Self::route_or_refuse`] when
    /// it needs the disk while storage takes no new data.
    /// Subscribers' wake-ups are held in `held` (None wakes them at once).
    ///
    /// `may_have`: this node may have delivered it before it restarted (see
    /// `ForwardedPublish::possibly_delivered`), or a session here may have had it on the
    /// node that held it when the sender routed it (see [`MayHave`]).
    pub(crate) fn route_forwarded(
        &self,
        message: Arc<Message>,
        to_subscribers: bool,
        shared: &[skein_seam::SharedTarget],
        adopted_from: Option<skein_seam::NodeId>,
        may_have: MayHave,
        held: Option<&mut HeldWakes>,
    ) -> RouteOutcome {
        let scope = match adopted_from {
            Some(node) => Scope::Adopted(node),
            None => Scope::Forwarded {
                to_subscribers,
                shared,
            },
        };
        self.route_with(
            message,
            held,
            None,
            None,
            WhenNotStored::RefuseWhole,
            scope,
            may_have,
        )
    }

    /// [`Broker::route_or_refuse`] for a client's PUBLISH, with the subscribers' wake-ups
    /// held in `held` (see [`HeldWakes`]); None wakes them at once. Its QoS 1/2 forwards
    /// are answered in the tally of `tickets`, the read batch's (see [`ForwardTickets`]).
    ///
    /// `late`: the publish was read (there) while input reported before it was still
    /// unhandled. It is routed all the same and written to the late log, for a SUBSCRIBE
    /// in that input (see [`Self::deliver_late`]); unless it matches nobody, here or on
    /// another node: then nothing is done (`deferred`), and the caller routes it again once the earlier input is
    /// handled, so that a subscription in it is in force. Not for a retained publish: a
    /// subscription added meanwhile would get it twice (routed, and as a retained
    /// message), so that one waits for the earlier input instead. A publish refused whole
    /// for want of disk is not logged: no subscriber gets it.
    pub fn route_holding_wakes(
        &self,
        message: Arc<Message>,
        held: Option<&mut HeldWakes>,
        late: Option<LateRead>,
        tickets: Option<&mut ForwardTickets>,
    ) -> RouteOutcome {
        self.route_with(
            message,
            held,
            late,
            tickets,
            WhenNotStored::RefuseWhole,
            Scope::Cluster,
            MayHave::default(),
        )
    }

    // Private, with four thin public entry points that each fix most of these: a struct
    // of options would only move the same eight names into one more type.
    #[allow(clippy::too_many_arguments)]
    fn route_with(
        &self,
        message: Arc<Message>,
        mut held: Option<&mut HeldWakes>,
        late: Option<LateRead>,
        tickets: Option<&mut ForwardTickets>,
        when_not_stored: WhenNotStored,
        scope: Scope<'_>,
        may_have: MayHave,
    ) -> RouteOutcome {
        debug_assert!(late.is_none() || !message.retain);
        // One atomic load while storage is fine. Otherwise the decision is taken here,
        // once for the message: asking again per copy could refuse one after others were
        // stored.
        let not_storing = NotStored::of_store(self.store.health());
        // (session, delivery, shared): non-shared matches of one session are merged below.
        let mut targets: Vec<(Arc<Session>, Delivery, bool)> = Vec::new();
        let mut remote = RemoteTargets::default();
        let refused = {
            let tree = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
            if let Scope::Cluster = scope {
                remote = self.remote_targets(&message.topic, &tree);
            }
            tree.matches_grouped(
                &message.topic,
                |k: &SessionRef| k.0.state().is_online(),
                |k: &SessionRef, v: &SubEntry, shared: Option<Group<'_>>| {
                    if !scope.delivers(shared, &remote) {
                        return;
                    }
                    if let Scope::Adopted(from) = scope {
                        if !k.0.state().came_from(from, message.received_at_ms) {
                            return;
                        }
                    }
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
            // Forwarded, it is not unrouted: routed now (and logged as late) like a
            // publish with local targets.
            if late.is_some() && targets.is_empty() && remote.is_empty() {
                return RouteOutcome {
                    deferred: true,
                    ..RouteOutcome::default()
                };
            }
            let refused = not_storing.filter(|_| {
                when_not_stored == WhenNotStored::RefuseWhole && needs_disk(&message, &targets)
            });
            if let (Some(read), None) = (late, refused) {
                // Under the index's read lock: see `InputOrder::late_cutoff`.
                self.input_order.record_late(read, &message);
            }
            refused
        };
        if let Some(refusal) = refused {
            storage_refusal::publish_refused(refusal, &message.topic, self.store.health());
            return RouteOutcome {
                not_stored: Some(refusal),
                ..RouteOutcome::default()
            };
        }
        merge_per_session(&mut targets);
        let mut outcome = RouteOutcome {
            matched: targets.len(),
            ..RouteOutcome::default()
        };
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
        let to = Enqueue {
            // Only the local copies need it: no clock read for a publish that only goes on
            // to other nodes.
            now: if targets.is_empty() { 0 } else { now_ms() },
            max: self.config.max_queued_messages,
            forwarded: !matches!(scope, Scope::Cluster),
            not_storing,
            may_have,
            redirected_from: match scope {
                Scope::Adopted(from) => Some(from),
                _ => None,
            },
        };
        for (session, delivery, _) in targets {
            let wake = held.as_deref_mut();
            self.enqueue(&to, &session, &message, delivery, wake, &mut outcome);
        }
        outcome.remote = remote.nodes.len();
        if let Scope::Cluster = scope {
            if !remote.is_empty() || message.retain {
                outcome.forwards = self.forward(&message, remote, tickets);
            }
        }
        let answered = when_not_stored == WhenNotStored::RefuseWhole;
        if let (Some(refusal), true) = (outcome.not_stored, answered) {
            if message.qos != QoS::AtMostOnce {
                storage_refusal::publish_refused(refusal, &message.topic, self.store.health());
            }
        }
        // The publishing node alone says a publish reached nobody.
        let origin = matches!(scope, Scope::Cluster);
        if outcome.matched == 0 && outcome.remote == 0 && outcome.not_stored.is_none() && origin {
            crate::metrics::message_dropped("no_subscribers");
            raise::unrouted(&self.events, &message, |publisher| {
                Some(self.find_session(publisher)?.event_client().0)
            });
        }
        outcome
    }

    /// Queues one delivery of `message`, noting in `outcome` what was written to storage
    /// (flush before acknowledging the publisher) and what needed the disk but was not
    /// stored. While storage takes no new data a copy that needs the disk (QoS 1/2 for a
    /// persistent session) is dropped and counted instead.
    pub(super) fn enqueue(
        &self,
        to: &Enqueue,
        session: &Arc<Session>,
        message: &Arc<Message>,
        delivery: Delivery,
        held: Option<&mut HeldWakes>,
        outcome: &mut RouteOutcome,
    ) {
        let qos = delivery.qos;
        // Routed here by this node's registry, which sends it to the new owner too (see
        // `Session::is_moving`).
        if !to.forwarded && session.is_moving() {
            crate::metrics::handover_skipped_delivery();
            return;
        }
        if let Some(refusal) = to.not_storing {
            if qos != QoS::AtMostOnce && session.state().is_persistent() {
                crate::metrics::message_dropped(refusal.reason());
                raise::dropped(
                    &self.events,
                    || session.event_client(),
                    message,
                    refusal.reason(),
                );
                outcome.not_stored.get_or_insert(refusal);
                return;
            }
        }
        // Redirected from a dead node's queue to a session that was taken over from it
        // (not adopted, no hand-over pending): its client may have had the publish
        // routed to it here directly, past the hand-over's notes of what arrived.
        let may_have = MayHave {
            possibly_sent: to.may_have.possibly_sent
                || to.redirected_from.is_some_and(|dead| {
                    session
                        .state()
                        .came_from_by_takeover_only(dead, message.received_at_ms)
                }),
            ..to.may_have
        };
        let enqueued = session.enqueue_with(delivery, to.max, &self.store, to.now, held, may_have);
        let queued = matches!(
            enqueued,
            EnqueueOutcome::Queued | EnqueueOutcome::QueuedOffline | EnqueueOutcome::Stored { .. }
        );
        if may_have.possibly_sent && queued && qos != QoS::AtMostOnce {
            crate::metrics::marked_dup("resent_forward", 1);
        }
        match enqueued {
            EnqueueOutcome::Queued => {}
            // The owner the session moved to gets it (see `handover_holder.rs`).
            EnqueueOutcome::Moved => crate::metrics::handover_skipped_delivery(),
            EnqueueOutcome::Redirected => crate::metrics::moved_away_redirect("duplicate"),
            // The session has it (a hand-over brought it, or it came another way).
            EnqueueOutcome::Duplicate => crate::metrics::handover_messages("duplicate", 1),
            EnqueueOutcome::QueuedOffline => {
                raise::offline(&self.events, || session.event_client(), message, qos)
            }
            EnqueueOutcome::Stored { online } => {
                outcome.needs_flush = true;
                if !online {
                    raise::offline(&self.events, || session.event_client(), message, qos);
                }
            }
            EnqueueOutcome::Dropped(reason) => {
                crate::metrics::message_dropped(reason.as_str());
                raise::dropped(
                    &self.events,
                    || session.event_client(),
                    message,
                    reason.as_str(),
                );
                tracing::debug!(client_id = %session.client_id, reason = reason.as_str(), "message dropped");
                if let Some(refusal) = reason.not_stored() {
                    outcome.not_stored.get_or_insert(refusal);
                }
            }
        }
    }

    /// Gives a new subscription the publishes it missed: those read after the input with
    /// the SUBSCRIBE was reported (at `position` of the input order) but matched without
    /// the subscription, because they were routed before that input was handled. A
    /// publish the session got through a subscription it had already is left out, like
    /// one another member of a shared group got. Appends what it queued to `delivered`
    /// (a SUBSCRIBE with overlapping filters gets one copy).
    /// (What it writes to storage for a persistent session is flushed before the SUBACK.)
    pub fn deliver_late(
        &self,
        session: &Arc<Session>,
        filter: &str,
        sub: &Subscription,
        subscribed: &Subscribed,
        position: u64,
        delivered: &mut Vec<Arc<Message>>,
    ) {
        let Ok((group, inner)) = topic::parse_subscription(filter) else {
            return;
        };
        // A group with members elsewhere had a member when those publishes were routed.
        let group_elsewhere = group.is_some_and(|g| self.remote_interest.has_group(inner, g));
        if subscribed.existed || (group.is_some() && !subscribed.alone_in_group) || group_elsewhere
        {
            return;
        }
        let missed = self
            .input_order
            .late_since(position, &subscribed.late_cutoff);
        if missed.is_empty() {
            return;
        }
        // Non-shared subscriptions it had besides this one: a publish that matches one of
        // them reached the session then.
        let others: Vec<(String, Subscription)> = session
            .state()
            .subscriptions
            .iter()
            .filter(|(f, _)| f.as_str() != filter && !f.starts_with("$share/"))
            .map(|(f, s)| (f.clone(), s.clone()))
            .collect();
        // The publishes were acknowledged already: a copy that needs the disk while storage
        // takes no new data is dropped and counted, as routing does for a will.
        let to = Enqueue {
            now: now_ms(),
            max: self.config.max_queued_messages,
            forwarded: false,
            not_storing: NotStored::of_store(self.store.health()),
            may_have: MayHave::default(),
            redirected_from: None,
        };
        let mut outcome = RouteOutcome::default();
        for message in missed {
            let from_self = message
                .publisher
                .as_ref()
                .is_some_and(|p| *p == session.client_id);
            if !topic::matches(inner, &message.topic)
                || (from_self && sub.options.no_local && group.is_none())
                || delivered.iter().any(|d| Arc::ptr_eq(d, &message))
            {
                continue;
            }
            let got_it = others.iter().any(|(f, s)| {
                topic::matches(f, &message.topic) && !(from_self && s.options.no_local)
            });
            if got_it {
                continue;
            }
            let delivery = Delivery {
                qos: message.qos.min(sub.options.qos),
                retain: message.retain && sub.options.retain_as_published,
                subscription_ids: sub.subscription_id.into_iter().collect(),
                message: message.clone(),
            };
            self.input_order.late_delivered();
            self.enqueue(&to, session, &message, delivery, None, &mut outcome);
            delivered.push(message);
        }
    }

    /// Queues the retained messages matching `filter` for `session` (on subscribe). While
    /// storage takes no new data, a persistent session gets no QoS 1/2 copies (they are
    /// counted as dropped); it has them once it subscribes again with room on the disk.
    pub fn deliver_retained(&self, session: &Arc<Session>, filter: &str, sub: &Subscription) {
        let retained = self.retained.matching(filter, now_ms());
        self.deliver_retained_messages(session, retained, sub);
    }

    /// Queues `retained` (matched earlier, see [`RetainedStore::matching`]) for `session`
    /// as retained messages of subscription `sub`.
    pub fn deliver_retained_messages(
        &self,
        session: &Arc<Session>,
        retained: Vec<Arc<Message>>,
        sub: &Subscription,
    ) {
        let now = now_ms();
        let refusal = NotStored::of_store(self.store.health())
            .filter(|_| session.state().is_persistent() && sub.options.qos != QoS::AtMostOnce);
        for message in retained {
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

    /// A forward routed (by its batch's bound) before the registration that brought the
    /// session here from another node may have reached the client there: it goes out as
    /// a redelivery, and not at all when the client acknowledged it (the hand-over's
    /// list); one routed since is an ordinary delivery. A publish of this node's own is
    /// never one.
    #[test]
    fn a_forward_routed_before_the_session_came_here_is_a_possible_redelivery() {
        let b = super::super::tests::broker();
        let s = online(&b, "c");
        b.subscribe(&s, "t/#", sub(QoS::AtLeastOnce, None, false));
        s.state().came_at_index = Some(100);
        let acknowledged = Arc::new(Message {
            publish_id: Some(7),
            ..(*message("t/1", QoS::AtLeastOnce, "p")).clone()
        });
        s.state().delivered.get_or_insert_with(Box::default).note(7);
        let forwarded = |m: &Arc<Message>, routed_index: u64| {
            b.route_forwarded(
                m.clone(),
                true,
                &[],
                None,
                MayHave {
                    routed_index,
                    ..MayHave::default()
                },
                None,
            )
        };
        assert_eq!(forwarded(&acknowledged, 99).matched, 1);
        assert_eq!(s.state().queue.len(), 0, "acknowledged on the old node");
        let before = message("t/2", QoS::AtLeastOnce, "p");
        forwarded(&before, 99);
        let after = message("t/3", QoS::AtLeastOnce, "p");
        forwarded(&after, 100);
        let unknown = message("t/4", QoS::AtLeastOnce, "p");
        forwarded(&unknown, 0);
        b.route(message("t/5", QoS::AtLeastOnce, "p"));
        let st = s.state();
        let queued: Vec<(String, bool)> = st
            .queue
            .iter()
            .map(|q| {
                let redelivery = st.redeliver.as_ref().is_some_and(|r| r.contains(&q.seq));
                (q.delivery.message.topic.to_string(), redelivery)
            })
            .collect();
        let expected = [
            ("t/2", true),
            ("t/3", false),
            ("t/4", false),
            ("t/5", false),
        ];
        assert_eq!(queued, expected.map(|(t, r)| (t.to_owned(), r)).to_vec());
    }
}

#[cfg(test)]
mod late_tests {
    use super::super::tests::{broker, message, online, sub};
    use super::*;
    use crate::codec::QoS;

    /// Input reported (a ticket taken), then a publish read and routed while that input
    /// is unhandled; returns the ticket's position.
    fn route_late(b: &Broker, m: &Arc<Message>) -> (crate::input_order::Ticket, RouteOutcome) {
        let reported = b.input_order.ticket();
        let read = LateRead {
            connection: 7,
            position: b.input_order.now(),
        };
        (
            reported,
            b.route_holding_wakes(m.clone(), None, Some(read), None),
        )
    }

    fn queued(s: &Session) -> usize {
        s.state().queue.len()
    }

    #[test]
    fn a_subscription_reported_first_gets_what_was_routed_before_it_once() {
        let b = broker();
        let witness = online(&b, "witness");
        let late = online(&b, "late");
        b.subscribe(&witness, "t/#", sub(QoS::AtLeastOnce, None, false));
        let m = message("t/1", QoS::AtLeastOnce, "pub");
        let (reported, outcome) = route_late(&b, &m);
        assert_eq!((outcome.matched, outcome.deferred), (1, false));
        let s = sub(QoS::AtLeastOnce, Some(4), false);
        let subscribed = b.subscribe(&late, "t/+", s.clone());
        let mut delivered = Vec::new();
        let position = reported.position();
        b.deliver_late(&late, "t/+", &s, &subscribed, position, &mut delivered);
        assert_eq!(queued(&late), 1);
        assert_eq!(late.state().queue[0].delivery.subscription_ids, [4]);
        // An overlapping filter of the same SUBSCRIBE adds no second copy.
        let also = b.subscribe(&late, "t/#", s.clone());
        b.deliver_late(&late, "t/#", &s, &also, position, &mut delivered);
        assert_eq!(queued(&late), 1);
        // Routed after the subscription was added: routed to it, not given again.
        let (_, after) = route_late(&b, &message("t/2", QoS::AtLeastOnce, "pub"));
        assert_eq!(after.matched, 2);
        let again = b.subscribe(&late, "t/2", s.clone());
        b.deliver_late(&late, "t/2", &s, &again, position, &mut Vec::new());
        assert_eq!(queued(&late), 2, "t/2 came by routing only");
    }

    #[test]
    fn input_reported_after_the_read_gets_nothing_from_before() {
        let b = broker();
        let witness = online(&b, "witness");
        b.subscribe(&witness, "t", sub(QoS::AtMostOnce, None, false));
        let (_held, _) = route_late(&b, &message("t", QoS::AtMostOnce, "pub"));
        let later = b.input_order.ticket();
        let late = online(&b, "late");
        let s = sub(QoS::AtMostOnce, None, false);
        let subscribed = b.subscribe(&late, "t", s.clone());
        b.deliver_late(
            &late,
            "t",
            &s,
            &subscribed,
            later.position(),
            &mut Vec::new(),
        );
        assert_eq!(queued(&late), 0);
    }

    #[test]
    fn no_local_a_subscription_it_had_and_a_shared_group_with_members_get_nothing() {
        let b = broker();
        let member = online(&b, "member");
        b.subscribe(&member, "$share/g/t", sub(QoS::AtMostOnce, None, false));
        let me = online(&b, "me");
        b.subscribe(&me, "t", sub(QoS::AtMostOnce, None, false));
        let (reported, _) = route_late(&b, &message("t", QoS::AtMostOnce, "me"));
        let position = reported.position();
        // Its own publish, and a No Local subscription: routing would not have given it.
        let other = online(&b, "other");
        let no_local = sub(QoS::AtMostOnce, None, true);
        let s = b.subscribe(&me, "+", no_local.clone());
        b.deliver_late(&me, "+", &no_local, &s, position, &mut Vec::new());
        assert_eq!(
            queued(&me),
            1,
            "only what routing gave its plain subscription"
        );
        // A second member of a group that got the message already.
        let plain = sub(QoS::AtMostOnce, None, false);
        let s = b.subscribe(&other, "$share/g/t", plain.clone());
        assert!(!s.alone_in_group);
        b.deliver_late(&other, "$share/g/t", &plain, &s, position, &mut Vec::new());
        assert_eq!(queued(&other), 0);
        // The first member of a new group gets it.
        let s = b.subscribe(&other, "$share/h/t", plain.clone());
        assert!(s.alone_in_group);
        b.deliver_late(&other, "$share/h/t", &plain, &s, position, &mut Vec::new());
        assert_eq!(queued(&other), 1);
    }

    #[test]
    fn a_publish_that_matches_nobody_is_deferred_untouched() {
        let b = broker();
        let (_reported, outcome) = route_late(&b, &message("nobody/here", QoS::AtLeastOnce, "p"));
        assert_eq!(
            outcome,
            RouteOutcome {
                matched: 0,
                remote: 0,
                needs_flush: false,
                not_stored: None,
                deferred: true,
                forwards: Default::default(),
            }
        );
    }
}
