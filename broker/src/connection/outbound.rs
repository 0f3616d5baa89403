//! Messages to the client: draining the session queue into the in-flight window, MQTT 5
//! topic aliases, the client's Maximum Packet Size, and retransmission on resume.

use std::sync::Arc;

use skein_storage::StoredInflight;

use super::{Close, Connection};
use crate::codec::{Ack, Packet, Properties, PublishRef, QoS};
use crate::events::{raise, EventBody, EventKind};
use crate::message::{now_ms, Message};
use crate::session::{to_stored_delivery, Delivery, Inflight, InflightState, Queued};

/// A PUBLISH's bytes besides its topic and payload, for sizing the write buffer: fixed
/// header, topic length, packet id and a short property block.
const PUBLISH_OVERHEAD: usize = 16;

impl Connection {
    /// Re-sends what was in flight when the session was last connected, in order, with DUP.
    /// Messages beyond the client's new Receive Maximum go back to the queue.
    /// True when storage must be flushed before these packets go out.
    pub(super) fn resume(&mut self) -> Result<bool, Close> {
        let session = self.session.clone();
        let mut st = session.state();
        if !st.is_attached_to(self.id) {
            return Err(Close::silent(
                super::DisconnectReason::Takeovered,
                "taken over during connect",
            ));
        }
        let now = now_ms();
        let persistent = st.is_persistent();
        let inflight = st.take_inflight();
        let mut requeue = Vec::new();
        for f in inflight {
            if f.state == InflightState::Sent && st.inflight.len() >= usize::from(self.send_window)
            {
                if persistent {
                    // It goes out again under a new packet id: store it as queued (a move,
                    // not new data: the free-space guard does not apply). The in-flight
                    // record goes only once the queued one is written.
                    let client = self.info.client_id.as_str();
                    let store = &self.broker.store;
                    let queued = store.queue_push(client, f.seq, &to_stored_delivery(&f.delivery));
                    let moved = queued.and_then(|()| store.inflight_remove(client, f.packet_id));
                    self.storage_result(moved);
                }
                requeue.push(Queued {
                    seq: f.seq,
                    delivery: f.delivery,
                });
                continue;
            }
            match f.state {
                InflightState::Sent => {
                    if !self.write_publish(&f.delivery, f.packet_id, true, now) {
                        // Too big for this connection's Maximum Packet Size: discarded.
                        if persistent {
                            self.storage_result(
                                self.broker
                                    .store
                                    .inflight_remove(self.info.client_id.as_str(), f.packet_id),
                            );
                        }
                        continue;
                    }
                }
                InflightState::Released => self.send(&Packet::PubRel(Ack::new(f.packet_id))),
            }
            st.push_inflight(f);
        }
        if !requeue.is_empty() {
            // Sent before under another packet id: it goes out again as a redelivery.
            st.redeliver
                .get_or_insert_with(Box::default)
                .extend(requeue.iter().map(|q| q.seq));
        }
        for q in requeue.into_iter().rev() {
            st.queue.push_front(q);
        }
        Ok(persistent && !st.inflight.is_empty())
    }

    /// Moves queued messages into the write buffer while the in-flight window has room.
    /// Returns true when storage was written (flush before the bytes go out, so a message is
    /// never re-sent without DUP or under another packet id after a crash).
    pub(super) fn pump(&mut self) -> Result<bool, Close> {
        let session = self.session.clone();
        let mut st = session.state();
        if !st.is_attached_to(self.id) {
            // Another connection owns the session now; our kick is on its way.
            return Ok(false);
        }
        let persistent = st.is_persistent();
        let now = now_ms();
        let mut wrote_storage = false;
        // Counted per batch, not per message.
        let mut sent = [0u64; 3];
        if let Some(front) = st.queue.front() {
            // Room for the batch at once (estimated from its first message): growing the
            // buffer by doubling copied it over and over, 5% of a QoS 1 fan-out's work.
            let m = &front.delivery.message;
            let each = m.topic.len() + m.payload.len() + PUBLISH_OVERHEAD;
            let batch = each
                .saturating_mul(st.queue.len())
                .min(super::WRITE_BATCH_BYTES);
            self.socket.wbuf().reserve(batch);
        }
        while let Some(front) = st.queue.front() {
            if front.delivery.qos != QoS::AtMostOnce
                && st.inflight.len() >= usize::from(self.send_window)
            {
                break;
            }
            if self.socket.pending_out() >= super::WRITE_BATCH_BYTES {
                // Flush first; the loop comes back here.
                self.kick_rx.wake();
                break;
            }
            let Some(q) = st.queue.pop_front() else { break };
            let stored = persistent && q.delivery.qos != QoS::AtMostOnce;
            if q.delivery.message.is_expired(now) {
                self.drop_queued(&q, stored, "expired");
                continue;
            }
            // Read rules again at delivery: a deny inside a broader subscription, and
            // rules reloaded since the SUBSCRIBE, apply to every message.
            if let Some(authz) = self.authz.as_mut() {
                if !authz.may_receive(&q.delivery.message.topic) {
                    crate::metrics::authz_denied("deliver");
                    self.drop_queued(&q, stored, "not_authorized");
                    continue;
                }
            }
            let packet_id = if q.delivery.qos == QoS::AtMostOnce {
                0
            } else {
                match st.allocate_packet_id() {
                    Some(id) => id,
                    None => {
                        st.queue.push_front(q);
                        break;
                    }
                }
            };
            let q_qos = q.delivery.qos;
            let dup = q_qos != QoS::AtMostOnce && was_in_flight_elsewhere(&mut st, q.seq);
            if !self.write_publish(&q.delivery, packet_id, dup, now) {
                // Too big for the client: discarded as if delivered (MQTT-3.1.2-25).
                self.drop_queued(&q, stored, "too_large_for_client");
                continue;
            }
            let m = &q.delivery.message;
            raise::raise_message(
                &self.broker.events,
                &self.info,
                m,
                EventKind::MessageDelivered,
                || EventBody::Delivered {
                    message: m.clone(),
                    packet_id,
                    qos: q_qos,
                },
            );
            if q.delivery.qos != QoS::AtMostOnce {
                if stored {
                    let record = StoredInflight {
                        packet_id,
                        seq: q.seq,
                        message: to_stored_delivery(&q.delivery),
                        released: false,
                    };
                    self.storage_result(
                        self.broker
                            .store
                            .inflight_put(self.info.client_id.as_str(), &record),
                    );
                    self.storage_result(
                        self.broker
                            .store
                            .queue_remove(self.info.client_id.as_str(), q.seq),
                    );
                    wrote_storage = true;
                }
                st.push_inflight(Inflight {
                    seq: q.seq,
                    packet_id,
                    delivery: q.delivery,
                    state: InflightState::Sent,
                });
            }
            sent[q_qos as usize] += 1;
        }
        drop(st);
        for (qos, n) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .zip(sent)
        {
            self.broker.hot.sent(qos, n);
        }
        Ok(wrote_storage)
    }

    /// Drops a message taken off the queue: counted, reported, and removed from storage
    /// when it was stored there.
    fn drop_queued(&self, q: &Queued, stored: bool, reason: &'static str) {
        self.raise_dropped(&q.delivery.message, reason);
        if stored {
            self.storage_result(
                self.broker
                    .store
                    .queue_remove(self.info.client_id.as_str(), q.seq),
            );
        }
    }

    /// `message.dropped` (event and metric) for a message on its way to this connection's
    /// client.
    pub(super) fn raise_dropped(&self, m: &Arc<Message>, reason: &'static str) {
        crate::metrics::message_dropped(reason);
        raise::raise_message(
            &self.broker.events,
            &self.info,
            m,
            EventKind::MessageDropped,
            || EventBody::Dropped {
                message: m.clone(),
                reason,
            },
        );
    }

    pub(super) fn storage_result(&self, r: skein_storage::Result<()>) {
        if let Err(e) = r {
            let client = self.info.client_id.as_str();
            crate::storage_refusal::write_failed("delivery state", client, &e);
        }
    }

    /// Writes the PUBLISH of `delivery` into the write buffer; false (nothing written) if it
    /// exceeds the client's Maximum Packet Size.
    fn write_publish(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: u64) -> bool {
        let v5 = self.protocol.is_v5();
        let m = &d.message;
        let mut properties = (v5 && (m.has_properties() || !d.subscription_ids.is_empty()))
            .then(|| m.publish_properties(now, &d.subscription_ids));
        // Checked with the full topic, before an alias is registered for a message that
        // may never be sent.
        if publish_ref(d, packet_id, dup, &m.topic, properties.as_ref()).encoded_len(self.protocol)
            > self.client_max_packet_size as usize
        {
            return false;
        }
        let mut topic: &str = &m.topic;
        if v5 && self.client_topic_alias_max > 0 {
            if let Some((alias, known)) = self.alias_for(&m.topic) {
                let mut aliased = properties.clone().unwrap_or_default();
                aliased.topic_alias = Some(alias);
                let alias_topic = if known { "" } else { topic };
                let len = publish_ref(d, packet_id, dup, alias_topic, Some(&aliased))
                    .encoded_len(self.protocol);
                if len <= self.client_max_packet_size as usize {
                    properties = Some(aliased);
                    topic = alias_topic;
                } else if !known {
                    // The alias property would push it past the client's maximum: send the
                    // full topic (which fits) and keep the alias for a later message.
                    self.aliases().outbound.remove(&m.topic);
                }
            }
        }
        publish_ref(d, packet_id, dup, topic, properties.as_ref())
            .encode(self.protocol, self.socket.wbuf());
        true
    }

    /// The outgoing alias for `topic` and whether the client already knows it; None when
    /// all aliases the client allows are taken.
    fn alias_for(&mut self, topic: &Arc<str>) -> Option<(u16, bool)> {
        let max = self.client_topic_alias_max as usize;
        let aliases = &mut self.aliases().outbound;
        if let Some(&alias) = aliases.get(topic) {
            return Some((alias, true));
        }
        if aliases.len() >= max {
            return None;
        }
        let alias = aliases.len() as u16 + 1;
        aliases.insert(topic.clone(), alias);
        Some((alias, false))
    }
}

fn publish_ref<'a>(
    d: &'a Delivery,
    packet_id: u16,
    dup: bool,
    topic: &'a str,
    properties: Option<&'a Properties>,
) -> PublishRef<'a> {
    PublishRef {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic,
        packet_id,
        payload: &d.message.payload,
        properties,
    }
}

/// Whether the queued message `seq` was in flight to the client on another node (see
/// `SessionState::redeliver`); the mark is used up.
fn was_in_flight_elsewhere(st: &mut crate::session::SessionState, seq: u64) -> bool {
    let Some(marks) = st.redeliver.as_mut() else {
        return false;
    };
    let marked = marks.remove(&seq);
    if marks.is_empty() {
        st.redeliver = None;
    }
    marked
}
