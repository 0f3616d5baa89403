//! The broker's side of the cluster seam: [`BrokerHandle`], what other nodes ask of this
//! one, mapped onto the broker's own operations (routing to local sessions only, with
//! storage refusals as for the admin API's publish; the admin API's kick; other nodes'
//! interest folded into the remote interest index).

use std::sync::Arc;

use skein_seam::{
    BoxFuture, BrokerHandle, BrokerHandleError, ClientId, ForwardedPublish, KickReason, NodeId,
    SessionHandover,
};

use super::{Broker, Forwards};
use crate::codec::QoS;
use crate::message::Message;
use crate::session::{HeldWakes, Kick, MayHave};
use crate::storage_refusal::{self, NotStored};
use crate::topic;

impl BrokerHandle for Broker {
    fn deliver_forwarded(
        &self,
        publish: ForwardedPublish,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        // Routed in the future's first poll, before its first wait (the seam's contract):
        // a receiver polling several in turn has them routed in that order. (Only right
        // after a restart, or for a message redirected from a node marked down that came
        // before the mark, does it wait first: see `wait_reconciled`, `wait_for_marks`.)
        Box::pin(async move {
            self.wait_reconciled().await;
            self.wait_for_marks(publish.adopted_from).await;
            let (matched, needs_flush, redirects) = self.route_one_forwarded(publish, None)?;
            if needs_flush {
                self.flush_forwarded().await?;
            }
            settle_redirects(redirects).await?;
            Ok(matched)
        })
    }

    /// Routes the whole batch at once, in order, with the subscribers' wake-ups held until
    /// it is routed (a subscriber is woken once per batch, not per message), then flushes
    /// storage once if any message needs it: a batch costs one future, not one per message.
    fn deliver_forwarded_batch(
        &self,
        publishes: Vec<ForwardedPublish>,
    ) -> BoxFuture<'_, Vec<Result<usize, BrokerHandleError>>> {
        Box::pin(async move {
            self.wait_reconciled().await;
            for dead in publishes.iter().filter_map(|p| p.adopted_from) {
                self.wait_for_marks(Some(dead)).await;
            }
            let mut outcomes = Vec::with_capacity(publishes.len());
            // The messages whose acknowledgement waits for the flush.
            let mut to_flush = Vec::new();
            // The messages sent on to the owners of sessions that moved away from here.
            let mut redirected = Vec::new();
            {
                let mut held = HeldWakes::default();
                for publish in publishes {
                    let outcome = self.route_one_forwarded(publish, Some(&mut held));
                    let outcome = outcome.map(|(matched, needs_flush, redirects)| {
                        if needs_flush {
                            to_flush.push(outcomes.len());
                        }
                        if !redirects.is_empty() {
                            redirected.push((outcomes.len(), redirects));
                        }
                        matched
                    });
                    outcomes.push(outcome);
                }
                held.release();
            }
            if !to_flush.is_empty() && self.flush_forwarded().await.is_err() {
                for i in to_flush {
                    outcomes[i] = Err(BrokerHandleError::Storage(
                        NotStored::Failed.message().into(),
                    ));
                }
            }
            // All queued already; waited for in order.
            for (i, redirects) in redirected {
                if let Err(e) = settle_redirects(redirects).await {
                    if outcomes[i].is_ok() {
                        outcomes[i] = Err(e);
                    }
                }
            }
            outcomes
        })
    }

    /// An administrative kick is the admin API's (`kicked`, 0x98). A takeover ends the
    /// connection as a takeover does (`takeovered`, 0x8E), its `client.disconnected` event
    /// naming node `by`'s MQTT address.
    fn kick(&self, client_id: &ClientId, reason: KickReason) -> bool {
        match reason {
            KickReason::Administrative => Broker::kick(self, client_id),
            KickReason::TakenOver { by } => {
                tracing::debug!(%client_id, taken_by = %by, "session taken over by another node");
                let Some(session) = self.find_session(client_id) else {
                    return false;
                };
                let st = session.state();
                let Some(a) = st.attachment.as_ref() else {
                    return false;
                };
                self.note_remote_taker(a.connection_id, by);
                a.kick.send(Kick::TakenOver)
            }
        }
    }

    /// Ends the attached connection only if it is the one whose registration was
    /// replaced (a newer one here is left alone), and only this node does: one
    /// `client.disconnected` event per takeover, cluster-wide. The session is moving: it
    /// takes only forwarded messages until the taker fetches it, or a while passes (see
    /// `cluster_sync.rs`); then it is sealed and its subscriptions leave this node's
    /// index.
    fn taken_over(&self, client_id: &ClientId, epoch: u64, by: NodeId) {
        tracing::debug!(%client_id, epoch, taken_by = %by, "registration replaced by another node");
        let Some(session) = self.find_session(client_id) else {
            return;
        };
        {
            let mut st = session.state();
            match st.attachment.as_ref() {
                Some(a) if a.epoch == epoch => {
                    self.note_remote_taker(a.connection_id, by);
                    a.kick.send(Kick::TakenOver);
                }
                // A newer connection here (the client came back): it keeps the session.
                Some(_) => return,
                None => {}
            }
            // At once, not in the task below: from now on the taker gets what is routed
            // to the client here (this node's interest index names it already), and no
            // timer of the session ends it here.
            session.set_moving(true);
            st.generation = st.generation.wrapping_add(1);
            st.cancel_timers();
        }
        self.spawn_session_moved(session);
    }

    /// The session `preindex_resumed` prepared takes this node's own publishes from now on
    /// (they no longer go to the node that held it); until now they went there and come
    /// back with the hand-over.
    fn registered_here(&self, client_id: &ClientId) {
        if let Some(session) = self.find_session(client_id) {
            session.set_moving(false);
        }
    }

    fn node_down(&self, node: NodeId, clients: Vec<skein_seam::DownClient>) {
        self.on_node_down(node, clients);
    }

    fn interest_changed(&self, filter: &str, node: NodeId, subscribers: u32) {
        tracing::trace!(filter, %node, subscribers, "interest of another node");
        self.remote_interest.changed(filter, node, subscribers);
        self.refresh_dollar_receivers();
    }

    fn interest_changed_many(&self, changes: Vec<(String, NodeId, u32)>) {
        tracing::trace!(changes = changes.len(), "interest of other nodes");
        self.remote_interest
            .changed_many(changes.iter().map(|(f, node, n)| (f.as_str(), *node, *n)));
        self.refresh_dollar_receivers();
    }

    fn interest_reset(&self, interest: Vec<(String, NodeId, u32)>) {
        tracing::debug!(filters = interest.len(), "interest of other nodes reset");
        self.remote_interest.reset(interest);
        self.refresh_dollar_receivers();
    }

    fn retained_messages(&self) -> Vec<ForwardedPublish> {
        self.retained
            .snapshot(crate::message::now_ms())
            .iter()
            .map(|m| super::forwarding::forwarded(m, false, Vec::new()))
            .collect()
    }

    /// Stores what is newer than what this node holds, then flushes once.
    fn restore_retained(
        &self,
        messages: Vec<ForwardedPublish>,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        Box::pin(async move {
            let mut stored = 0;
            for publish in messages {
                let message = match forwarded_message(publish) {
                    Ok(m) if m.retain => Arc::new(m),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignored an invalid retained message from another node");
                        continue;
                    }
                };
                match self.retained.restore(&message) {
                    Ok(true) => stored += 1,
                    Ok(false) => {}
                    Err(e) => {
                        storage_refusal::write_failed("store a retained message", "", &e);
                        return Err(BrokerHandleError::Storage(
                            NotStored::of(&e).message().into(),
                        ));
                    }
                }
            }
            if stored > 0 {
                if let Err(e) = self.flush_storage().await {
                    storage_refusal::write_failed("flush", "", &e);
                    return Err(BrokerHandleError::Storage(
                        NotStored::Failed.message().into(),
                    ));
                }
            }
            Ok(stored)
        })
    }

    fn hand_over_session<'a>(
        &'a self,
        client_id: &'a ClientId,
        taker: NodeId,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<SessionHandover, BrokerHandleError>> {
        Box::pin(self.hand_over_page(client_id, taker, after, max))
    }

    fn release_session<'a>(
        &'a self,
        client_id: &'a ClientId,
        taker: NodeId,
        up_to: u64,
    ) -> BoxFuture<'a, Result<bool, BrokerHandleError>> {
        Box::pin(self.release_handed_over(client_id, taker, up_to))
    }

    fn adopt_offered<'a>(
        &'a self,
        client_id: &'a ClientId,
        holder: NodeId,
    ) -> BoxFuture<'a, Result<usize, BrokerHandleError>> {
        Box::pin(self.adopt_offered_session(client_id, holder))
    }

    fn certificate_disabled(&self, sn: &str, status: skein_seam::CertificateStatus) {
        self.certificate_users.disable(sn, status);
    }

    fn certificates_recheck(&self) {
        for sn in self.certificate_users.in_use() {
            match self.cluster.certificate(&sn) {
                Some(record) if record.status != skein_seam::CertificateStatus::Active => {
                    self.certificate_users.disable(&sn, record.status);
                }
                _ => {}
            }
        }
    }
}

impl Broker {
    /// Events go out as messages routed like any other: a `$` subscription on another
    /// node (an event watcher there) is a receiver of this node's event dialects too.
    fn refresh_dollar_receivers(&self) {
        let tree = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
        self.events.set_dollar_receivers(
            tree.has_dollar_filters() || self.remote_interest.has_dollar_filters(),
        );
    }

    /// Routes a forwarded publish to this node's sessions only (a forwarded publish is
    /// never forwarded again): how many it matched, and whether storage must be flushed
    /// before the peer is told.
    ///
    /// Also the forwards sent on to the owners of sessions that moved away from here, for
    /// an ordinary forward (see `moved_away.rs`): the peer is answered once they have it.
    fn route_one_forwarded(
        &self,
        mut publish: ForwardedPublish,
        held: Option<&mut HeldWakes>,
    ) -> Result<(usize, bool, Forwards), BrokerHandleError> {
        let possibly_delivered = publish.possibly_delivered;
        if let Some(client_id) = publish.for_client.take() {
            let message = forwarded_message(publish)?;
            let (matched, needs_flush) = self.route_redirected(&client_id, Arc::new(message))?;
            return Ok((matched, needs_flush, Forwards::default()));
        }
        let to_subscribers = publish.to_subscribers;
        let adopted_from = publish.adopted_from;
        // Redirected from a node marked down, it is for the sessions that came from
        // there, whatever their registrations' indexes.
        let may_have = MayHave {
            possibly_sent: possibly_delivered,
            routed_index: if adopted_from.is_none() {
                publish.routed_index
            } else {
                0
            },
            redirect: false,
        };
        let shared = std::mem::take(&mut publish.shared);
        let message = forwarded_message(publish)?;
        // The publishing node waits for this answer to acknowledge its publisher, as
        // the admin API's caller does: what needs the disk while storage takes no new
        // data is refused whole, and a retained message needs it at any QoS.
        if message.retain && !message.payload.is_empty() {
            if let Some(refusal) = NotStored::of_store(self.store.health()) {
                storage_refusal::publish_refused(refusal, &message.topic, self.store.health());
                return Err(BrokerHandleError::Storage(refusal.message().into()));
            }
        }
        let message = Arc::new(message);
        let outcome = self.route_forwarded(
            message.clone(),
            to_subscribers,
            &shared,
            adopted_from,
            may_have,
            held,
        );
        if let Some(refusal) = outcome.not_stored {
            return Err(BrokerHandleError::Storage(refusal.message().into()));
        }
        let redirects = if to_subscribers && adopted_from.is_none() {
            self.redirect_to_moved(&message, possibly_delivered)
        } else {
            Forwards::default()
        };
        Ok((outcome.matched, outcome.needs_flush, redirects))
    }

    /// A message redirected from the queue of node `adopted_from` (marked down) waits,
    /// a bounded time, until this node has applied that mark: before, no session here is
    /// adopted from it (see `marks_applied.rs`).
    async fn wait_for_marks(&self, adopted_from: Option<NodeId>) {
        let Some(dead) = adopted_from else { return };
        if !self
            .marks_applied
            .wait_for(dead, super::marks_applied::MARK_WAIT)
            .await
        {
            tracing::info!(%dead, "a message redirected from a node marked down came before this node applied the mark; routed without it");
        }
    }

    async fn flush_forwarded(&self) -> Result<(), BrokerHandleError> {
        self.flush_storage().await.map_err(|e| {
            storage_refusal::write_failed("flush", "", &e);
            BrokerHandleError::Storage(NotStored::Failed.message().into())
        })
    }
}

/// Waits for the forwards sent on to owners of sessions that moved away: one that was not
/// taken is not acknowledged (`NotYet`: the peer's batch is answered RETRY_LATER, its
/// publisher told the message was not taken), while the copy stays queued here for the
/// owner.
async fn settle_redirects(redirects: Forwards) -> Result<(), BrokerHandleError> {
    if redirects.is_empty() {
        return Ok(());
    }
    redirects.settle().await.map_err(|e| {
        crate::metrics::moved_away_redirect("failed");
        tracing::info!(error = %e, "a forward for a session that moved away was not taken by its owner; the sender is asked to send it again");
        BrokerHandleError::NotYet(format!(
            "a session it was for moved away, and its owner did not take it: {e}"
        ))
    })
}

/// The message a forwarded publish carries, refused if no valid publish could carry it.
pub(super) fn forwarded_message(p: ForwardedPublish) -> Result<Message, BrokerHandleError> {
    let qos =
        QoS::from_u8(p.qos).ok_or_else(|| BrokerHandleError::Invalid(format!("QoS {}", p.qos)))?;
    if p.topic.is_empty() || !topic::valid_topic_name(&p.topic) {
        return Err(BrokerHandleError::Invalid(format!(
            "topic name {:?}",
            p.topic
        )));
    }
    Ok(Message {
        topic: p.topic,
        payload: p.payload,
        qos,
        retain: p.retain,
        properties: p.properties,
        received_at_ms: p.received_at_ms,
        publisher: p.publisher,
        publisher_username: p.publisher_username,
        publish_id: p.publish_id,
    })
}

#[cfg(test)]
mod tests;
