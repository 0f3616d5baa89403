//! Routing: a publish to every matching session of this node, and retained messages to a
//! new subscription.

use std::sync::Arc;

use super::{Broker, RouteOutcome, SessionRef, SubEntry, Subscribed};
use crate::events::raise;
use crate::input_order::LateRead;
use crate::message::{now_ms, Message};
use crate::session::{Delivery, EnqueueOutcome, HeldWakes, Session, Subscription};
use crate::topic;

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

impl Broker {
    /// Routes a publish to every matching session on this node; never blocks.
    pub fn route(&self, message: Arc<Message>) -> RouteOutcome {
        self.route_holding_wakes(message, None, None)
    }

    /// Like `route`, with the subscribers' wake-ups held in `held` (see [`HeldWakes`]);
    /// None wakes them at once.
    ///
    /// `late`: the publish was read (there) while input reported before it was still
    /// unhandled. It is routed all the same and written to
    /// the late log, for a SUBSCRIBE in that input (see [`Self::deliver_late`]); unless it
    /// matches nobody: then nothing is done (`deferred`), and the caller routes it again
    /// once the earlier input is handled, so that a subscription in it is in force. Not
    /// for a retained publish: a subscription added meanwhile would get it twice (routed,
    /// and as a retained message), so that one waits for the earlier input instead.
    pub fn route_holding_wakes(
        &self,
        message: Arc<Message>,
        mut held: Option<&mut HeldWakes>,
        late: Option<LateRead>,
    ) -> RouteOutcome {
        debug_assert!(late.is_none() || !message.retain);
        let retained_changed = message.retain && self.retained.update(&message);
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
            if let Some(read) = late {
                if targets.is_empty() {
                    return RouteOutcome {
                        deferred: true,
                        ..RouteOutcome::default()
                    };
                }
                // Under the index's read lock: see `InputOrder::late_cutoff`.
                self.input_order.record_late(read, &message);
            }
        }
        merge_per_session(&mut targets);
        let mut outcome = RouteOutcome {
            matched: targets.len(),
            needs_flush: retained_changed,
            deferred: false,
        };
        let (now, max) = (now_ms(), self.config.max_queued_messages);
        for (session, delivery, _) in targets {
            let wake = held.as_deref_mut();
            outcome.needs_flush |= self.enqueue(&session, &message, delivery, now, max, wake);
        }
        if outcome.matched == 0 {
            crate::metrics::message_dropped("no_subscribers");
            raise::unrouted(self, &message);
        }
        outcome
    }

    /// Queues one delivery of `message`; true when it was written to storage (flush before
    /// acknowledging the publisher).
    fn enqueue(
        &self,
        session: &Arc<Session>,
        message: &Arc<Message>,
        delivery: Delivery,
        now: u64,
        max: usize,
        held: Option<&mut HeldWakes>,
    ) -> bool {
        let qos = delivery.qos;
        match session.enqueue_holding_wake(delivery, max, &self.store, now, held) {
            EnqueueOutcome::Queued => false,
            EnqueueOutcome::QueuedOffline => {
                raise::offline(&self.events, session, message, qos);
                false
            }
            EnqueueOutcome::Stored { online } => {
                if !online {
                    raise::offline(&self.events, session, message, qos);
                }
                true
            }
            EnqueueOutcome::Dropped(reason) => {
                crate::metrics::message_dropped(reason.as_str());
                raise::dropped(&self.events, session, message, reason.as_str());
                tracing::debug!(client_id = %session.client_id, reason = reason.as_str(), "message dropped");
                false
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
        if subscribed.existed || (group.is_some() && !subscribed.alone_in_group) {
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
        let (now, max) = (now_ms(), self.config.max_queued_messages);
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
            self.enqueue(session, &message, delivery, now, max, None);
            delivered.push(message);
        }
    }

    /// Queues the retained messages matching `filter` for `session` (on subscribe).
    pub fn deliver_retained(&self, session: &Arc<Session>, filter: &str, sub: &Subscription) {
        let now = now_ms();
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
            if let EnqueueOutcome::Dropped(reason) =
                session.enqueue(delivery, self.config.max_queued_messages, &self.store, now)
            {
                crate::metrics::message_dropped(reason.as_str());
                if let Some(m) = &for_event {
                    raise::dropped(&self.events, session, m, reason.as_str());
                }
            }
        }
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
        (reported, b.route_holding_wakes(m.clone(), None, Some(read)))
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
                needs_flush: false,
                deferred: true
            }
        );
    }
}
