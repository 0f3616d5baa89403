//! Routing: a publish to every matching session of this node, and retained messages to a
//! new subscription.

use std::sync::Arc;

use super::{Broker, RouteOutcome, SessionRef, SubEntry};
use crate::events::raise;
use crate::message::{now_ms, Message};
use crate::session::{Delivery, EnqueueOutcome, HeldWakes, Session, Subscription};

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
        self.route_holding_wakes(message, None)
    }

    /// Like `route`, with the subscribers' wake-ups held in `held` (see [`HeldWakes`]);
    /// None wakes them at once.
    pub fn route_holding_wakes(
        &self,
        message: Arc<Message>,
        mut held: Option<&mut HeldWakes>,
    ) -> RouteOutcome {
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
        }
        merge_per_session(&mut targets);
        let mut outcome = RouteOutcome {
            matched: targets.len(),
            needs_flush: retained_changed,
        };
        let (now, max) = (now_ms(), self.config.max_queued_messages);
        for (session, delivery, _) in targets {
            let qos = delivery.qos;
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
                }
            }
        }
        if outcome.matched == 0 {
            crate::metrics::message_dropped("no_subscribers");
            raise::unrouted(&self.events, &message, |publisher| {
                Some(self.find_session(publisher)?.event_client().0)
            });
        }
        outcome
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
                    raise::dropped(&self.events, || session.event_client(), m, reason.as_str());
                }
            }
        }
    }
}
