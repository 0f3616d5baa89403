//! The holding side of moving a session between nodes: another node took the client over
//! and fetches the session's in-flight and queued messages here, page by page
//! (`BrokerHandle::hand_over_session`), writes them to its own store, then tells this
//! node to delete them (`BrokerHandle::release_session`). The taking side is
//! `handover_taker.rs`.
//!
//! Nothing is deleted here before the taker has it: a taker that dies midway leaves the
//! rest here, still stored. A page is answered only once the registry on this node names
//! the asking node as the owner (so this node has applied the takeover, and routes new
//! messages for the client there), and the session is sealed first ([`Broker::seal_moved`]):
//! it takes no new messages, so the pages the taker reads end.

use std::sync::Arc;
use std::time::Duration;

use skein_seam::{BrokerHandleError, ClientId, HandedOverMessage, NodeId, SessionHandover};

use super::Broker;
use crate::session::{Delivery, InflightState, Session};

/// How long a page waits for the session's lifecycle lock (a connection detaching, a
/// CONNECT here) before the taker is told to ask again.
const LIFECYCLE_WAIT: Duration = Duration::from_secs(2);

/// How often a node offers the owners what it still holds of sessions that moved away.
const OFFER_EVERY: Duration = Duration::from_secs(15);

/// A page stops growing past this many bytes of topics and payloads (it has at least one
/// message, whatever its size).
const PAGE_BYTES: usize = 1024 * 1024;

impl Broker {
    /// Up to `max` messages after `after` (in the session's sequence order) of the session
    /// of `client_id`, for node `taker` (see the module docs).
    pub(super) async fn hand_over_page(
        &self,
        client_id: &ClientId,
        taker: NodeId,
        after: u64,
        max: usize,
    ) -> Result<SessionHandover, BrokerHandleError> {
        let Some(session) = self.find_session(client_id) else {
            return Ok(nothing_here());
        };
        let _lifecycle = self.lock_for_handover(&session).await?;
        self.check_taker(client_id, taker)?;
        {
            let st = session.state();
            if st.removed {
                return Ok(nothing_here());
            }
            if st.attachment.is_some() {
                return Err(BrokerHandleError::NotYet(
                    "the taken-over connection is still closing".into(),
                ));
            }
        }
        if after == 0 {
            let unindexed = self.seal_moved(&session);
            let st = session.state();
            tracing::info!(
                %client_id,
                %taker,
                inflight = st.inflight.len(),
                queued = st.queue.len(),
                unindexed,
                "handing the session over to the node that took its client over"
            );
        }
        let mut page = page(&session, after, max);
        if let Some((earlier, _)) = page.earlier {
            // Written here, its release unconfirmed: the taker gets those messages from
            // this node, so the earlier node must not hand them over again.
            let key = (client_id.clone(), earlier);
            page.earlier_released_up_to = self.unreleased_lock().get(&key).copied().unwrap_or(0);
        }
        let nothing_to_hand_over = after == 0
            && page.complete
            && page.messages.is_empty()
            && page.incoming_qos2.is_empty()
            && page.earlier.is_none();
        if nothing_to_hand_over {
            // No release will come for an empty page: the session ends here now (sealed,
            // so out of the index; its subscriptions live on in the registry), instead of
            // staying in memory and on disk for every client that roams.
            self.forget_handed_over(&session);
            tracing::debug!(%client_id, %taker, "a session with nothing to hand over forgotten here");
        }
        Ok(page)
    }

    /// Deletes the messages up to `up_to` that node `taker` now has; once none is left the
    /// session is forgotten here. False when there is no such session here, or it is not
    /// handed over (never asked for, or attached here again): nothing is deleted then.
    pub(super) async fn release_handed_over(
        &self,
        client_id: &ClientId,
        taker: NodeId,
        up_to: u64,
    ) -> Result<bool, BrokerHandleError> {
        let Some(session) = self.find_session(client_id) else {
            return Ok(false);
        };
        let _lifecycle = self.lock_for_handover(&session).await?;
        // Any node that fetched the messages may release them, the owner or not: it wrote
        // them (a node that lost the client meanwhile hands them on in turn). A session
        // attached here again is not sealed: nothing goes then.
        let persistent = {
            let st = session.state();
            if st.removed || !st.moved {
                return Ok(false);
            }
            st.is_persistent()
        };
        let (released, left) = self.delete_up_to(&session, up_to, persistent)?;
        if left == 0 {
            self.forget_handed_over(&session);
        }
        if persistent {
            self.flush_storage().await.map_err(|e| {
                crate::storage_refusal::write_failed("flush", client_id.as_str(), &e);
                BrokerHandleError::Storage(e.to_string())
            })?;
        }
        crate::metrics::handover_messages("released", released);
        tracing::info!(
            %client_id,
            %taker,
            up_to,
            released,
            left,
            "deleted what the new owner of the session has"
        );
        Ok(true)
    }

    async fn lock_for_handover<'a>(
        &'a self,
        session: &'a Session,
    ) -> Result<crate::lifecycle_lock::LifecycleGuard<'a>, BrokerHandleError> {
        tokio::time::timeout(
            LIFECYCLE_WAIT,
            session.lifecycle.lock(&self.lifecycle_waiters),
        )
        .await
        .map_err(|_| BrokerHandleError::NotYet("the session is busy".into()))
    }

    /// The registry here must name `taker` as the owner: before this node applied the
    /// takeover it still routes messages to the session here (ask again), and a node that
    /// lost the client to a third one meanwhile gets nothing (that one fetches it).
    fn check_taker(&self, client_id: &ClientId, taker: NodeId) -> Result<(), BrokerHandleError> {
        let me = self.cluster.node_id();
        match self.cluster.locate_client(client_id) {
            Some(owner) if owner.node == taker && taker != me => Ok(()),
            Some(owner) if owner.node == me => Err(BrokerHandleError::NotYet(
                "this node has not applied the takeover yet".into(),
            )),
            Some(owner) => Err(BrokerHandleError::NotOwner(format!(
                "node {} owns the client now",
                owner.node
            ))),
            None => Err(BrokerHandleError::NotOwner(
                "the client is not registered".into(),
            )),
        }
    }

    /// Deletes the in-flight and queued messages with a sequence up to `up_to`, in memory
    /// and (`persistent`) in storage. Returns how many went and how many are left.
    fn delete_up_to(
        &self,
        session: &Session,
        up_to: u64,
        persistent: bool,
    ) -> Result<(usize, usize), BrokerHandleError> {
        let id = session.client_id.as_str();
        let mut st = session.state();
        let mut released = 0;
        while let Some(pos) = st.inflight.iter().position(|f| f.seq <= up_to) {
            let Some(f) = st.remove_inflight(pos) else {
                break;
            };
            if persistent {
                self.store
                    .inflight_remove(id, f.packet_id)
                    .map_err(|e| storage_error("delete a handed-over message", id, &e))?;
            }
            released += 1;
        }
        let gone: Vec<u64> = st
            .queue
            .iter()
            .map(|q| q.seq)
            .filter(|seq| *seq <= up_to)
            .collect();
        st.queue.retain(|q| q.seq > up_to);
        if let Some(marks) = st.redeliver.as_mut() {
            marks.retain(|seq| *seq > up_to);
            if marks.is_empty() {
                st.redeliver = None;
            }
        }
        released += gone.len();
        if persistent {
            for seq in gone {
                self.store
                    .queue_remove(id, seq)
                    .map_err(|e| storage_error("delete a handed-over message", id, &e))?;
            }
        }
        Ok((released, st.inflight.len() + st.queue.len()))
    }

    /// Everything of the session went to its new node: it ends here without an event (it
    /// lives on there), and its stored record goes.
    fn forget_handed_over(&self, session: &Arc<Session>) {
        {
            let mut st = session.state();
            st.clear();
            st.removed = true;
        }
        {
            let mut reg = self.registry();
            if reg
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                reg.remove(&session.client_id);
            }
        }
        self.forget_stored_session(session);
    }
}

impl Broker {
    /// Every [`OFFER_EVERY`], until shutdown: [`Broker::offer_stranded`].
    pub(super) async fn offer_stranded_every_while(&self) {
        loop {
            self.offer_stranded().await;
            tokio::select! {
                _ = tokio::time::sleep(OFFER_EVERY) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Offers the owners of sessions that moved away what this node still holds of them:
    /// what it stored while it was down, or what a hand-over that stopped left here. The
    /// messages of a session that ended, or started clean, since go.
    pub(super) async fn offer_stranded(&self) {
        let me = self.cluster.node_id();
        for session in self.sessions_snapshot() {
            if !is_stranded(&session) {
                continue;
            }
            let client_id = &session.client_id;
            match self.cluster.locate_client(client_id) {
                Some(owner) if owner.node == me => {}
                Some(owner) if !owner.clean_start => {
                    match self.cluster.offer_session(owner.node, client_id).await {
                        Ok(taken) => {
                            tracing::info!(%client_id, owner = %owner.node, taken, "the owner took what this node held of its session")
                        }
                        Err(e) => {
                            tracing::info!(%client_id, owner = %owner.node, error = %e, "the owner did not take what this node holds of its session; offered again later")
                        }
                    }
                }
                _ => {
                    let _lifecycle = session.lifecycle.lock(&self.lifecycle_waiters).await;
                    let owner = self.cluster.locate_client(client_id);
                    let obsolete = owner.is_none_or(|o| o.node != me && o.clean_start);
                    if obsolete && is_stranded(&session) {
                        tracing::info!(%client_id, "the session this node held messages of ended or started clean elsewhere; its messages go");
                        self.forget_handed_over(&session);
                    }
                }
            }
        }
    }
}

/// A session that moved away but still holds messages here.
fn is_stranded(session: &Session) -> bool {
    let st = session.state();
    st.moved
        && !st.removed
        && st.attachment.is_none()
        && (!st.queue.is_empty() || !st.inflight.is_empty())
}

fn storage_error(
    what: &'static str,
    client_id: &str,
    e: &skein_storage::StorageError,
) -> BrokerHandleError {
    crate::storage_refusal::write_failed(what, client_id, e);
    BrokerHandleError::Storage(e.to_string())
}

fn nothing_here() -> SessionHandover {
    SessionHandover {
        complete: true,
        ..SessionHandover::default()
    }
}

/// A message of the session: its sequence, delivery, and (in flight) packet id and
/// whether its PUBREL was sent.
type Waiting<'a> = (u64, &'a Delivery, Option<(u16, bool)>);

/// The session's messages after `after`, oldest first (in-flight and queued ones share
/// one sequence), at most `max` and about [`PAGE_BYTES`] (see [`page_bytes`]).
///
/// Per page, only what goes into it is looked at, besides the in-flight messages (at
/// most the client's Receive Maximum): the queue is kept in sequence order, so the first
/// queued message after `after` is found by bisection, not by sorting the whole session
/// again for every page.
fn page(session: &Session, after: u64, max: usize) -> SessionHandover {
    let st = session.state();
    let mut inflight: Vec<Waiting<'_>> = st
        .inflight
        .iter()
        .filter(|f| f.seq > after)
        .map(|f| {
            let released = f.state == InflightState::Released;
            (f.seq, &f.delivery, Some((f.packet_id, released)))
        })
        .collect();
    inflight.sort_unstable_by_key(|(seq, _, _)| *seq);
    let from = st.queue.partition_point(|q| q.seq <= after);
    let mut queued = st
        .queue
        .range(from..)
        .map(|q| (q.seq, &q.delivery, None))
        .peekable();
    let mut inflight = inflight.into_iter().peekable();
    let mut messages = Vec::new();
    let mut bytes = 0;
    loop {
        // The lower sequence of the two fronts goes next.
        let next = match (inflight.peek(), queued.peek()) {
            (None, None) => break,
            (Some(f), Some(q)) if q.0 < f.0 => queued.peek(),
            (Some(_), _) => inflight.peek(),
            (None, Some(_)) => queued.peek(),
        };
        let Some(&(seq, delivery, sent)) = next else {
            break;
        };
        if messages.len() >= max || (bytes >= PAGE_BYTES && !messages.is_empty()) {
            break;
        }
        if sent.is_some() {
            inflight.next();
        } else {
            queued.next();
        }
        bytes += page_bytes(delivery);
        let m = &delivery.message;
        let mut message = super::forwarding::forwarded(m, false, Vec::new());
        message.qos = delivery.qos as u8;
        message.retain = delivery.retain;
        messages.push(HandedOverMessage {
            seq,
            message,
            subscription_ids: delivery.subscription_ids.clone(),
            packet_id: sent.map(|(id, _)| id),
            released: sent.is_some_and(|(_, released)| released),
            // Queued here, but marked as one the client may have (see
            // `SessionState::redeliver`): the taker sends it with DUP too.
            possibly_sent: sent.is_none()
                && st.redeliver.as_ref().is_some_and(|r| r.contains(&seq)),
        });
    }
    let complete = inflight.peek().is_none() && queued.peek().is_none();
    SessionHandover {
        expiry_interval: st.expiry_interval,
        complete,
        incoming_qos2: if after == 0 {
            st.incoming_qos2.iter().copied().collect()
        } else {
            Vec::new()
        },
        earlier: st.pending_from.filter(|_| after == 0),
        delivered: match (&st.delivered, after) {
            (Some(d), 0) => d.ids(),
            _ => Vec::new(),
        },
        // Filled in by the caller, which knows this node's cursors.
        earlier_released_up_to: 0,
        messages,
    }
}

/// What a message adds to a page, near enough: its topic, payload, properties (user
/// properties, correlation data and the strings can be as large as the payload) and
/// subscription ids, and a few bytes for the fixed fields.
fn page_bytes(d: &Delivery) -> usize {
    let m = &d.message;
    let p = &m.properties;
    let strings = p.content_type.as_ref().map_or(0, String::len)
        + p.response_topic.as_ref().map_or(0, String::len)
        + p.correlation_data.as_ref().map_or(0, |c| c.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    let publisher = m.publisher.as_ref().map_or(0, |c| c.as_str().len());
    m.topic.len() + m.payload.len() + strings + publisher + 4 * d.subscription_ids.len() + 32
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use skein_seam::ClientId;

    use super::*;
    use crate::codec::QoS;
    use crate::message::Message;
    use crate::session::{Inflight, Queued};

    fn delivery(payload: usize, user_properties: usize) -> Delivery {
        let mut properties = crate::message::MessageProperties::default();
        if user_properties > 0 {
            properties.user_properties = vec![("k".into(), "v".repeat(user_properties))];
        }
        Delivery {
            message: Arc::new(Message {
                topic: Arc::from("t"),
                payload: Bytes::from(vec![0u8; payload]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties,
                received_at_ms: 0,
                publisher: None,
                publisher_username: None,
                publish_id: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
        }
    }

    /// In-flight messages (in send order, not sequence order) and queued ones come out
    /// merged by sequence, page after page, each message once.
    #[test]
    fn pages_merge_in_flight_and_queued_messages_in_sequence_order() {
        let session = Session::new(ClientId::new("c"));
        {
            let mut st = session.state();
            for (seq, packet_id) in [(5, 1), (2, 2), (9, 3)] {
                st.push_inflight(Inflight {
                    seq,
                    packet_id,
                    delivery: delivery(1, 0),
                    state: InflightState::Sent,
                });
            }
            for seq in [1, 3, 4, 6, 7, 8, 10, 11] {
                st.insert_queued(Queued {
                    seq,
                    delivery: delivery(1, 0),
                });
            }
        }
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let p = page(&session, after, 3);
            assert!(p.messages.len() <= 3);
            seen.extend(p.messages.iter().map(|m| (m.seq, m.packet_id)));
            if p.complete {
                break;
            }
            after = p.messages.last().unwrap().seq;
        }
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
        assert_eq!(seen[1], (2, Some(2)));
        assert_eq!(seen[8], (9, Some(3)));
        assert_eq!(seen[0], (1, None));
    }

    /// A queued message marked as one the client may have (after a crash here) is handed
    /// over as possibly sent, so the taker sends it with DUP; an unmarked one is not.
    #[test]
    fn queued_messages_marked_for_redelivery_are_handed_over_as_possibly_sent() {
        let session = Session::new(ClientId::new("c"));
        {
            let mut st = session.state();
            for seq in 1..=3 {
                st.insert_queued(Queued {
                    seq,
                    delivery: delivery(1, 0),
                });
            }
            st.redeliver = Some(Box::new([1, 3].into_iter().collect()));
        }
        let p = page(&session, 0, 10);
        let flags: Vec<(u64, bool, Option<u16>)> = p
            .messages
            .iter()
            .map(|m| (m.seq, m.possibly_sent, m.packet_id))
            .collect();
        assert_eq!(flags, [(1, true, None), (2, false, None), (3, true, None)]);
    }

    /// The 1 MiB bound counts properties: messages whose weight is in their user
    /// properties fill a page as heavy payloads do.
    #[test]
    fn a_page_stops_at_about_a_mebibyte_properties_included() {
        let session = Session::new(ClientId::new("c"));
        {
            let mut st = session.state();
            for seq in 1..=10 {
                st.insert_queued(Queued {
                    seq,
                    delivery: delivery(0, 300 * 1024),
                });
            }
        }
        let p = page(&session, 0, 256);
        assert_eq!(p.messages.len(), 4, "stops once past 1 MiB");
        assert!(!p.complete);
        // One message is sent whatever its size.
        let big = Session::new(ClientId::new("d"));
        big.state().insert_queued(Queued {
            seq: 1,
            delivery: delivery(0, 2 * 1024 * 1024),
        });
        let p = page(&big, 0, 256);
        assert_eq!(p.messages.len(), 1);
        assert!(p.complete);
    }
}
