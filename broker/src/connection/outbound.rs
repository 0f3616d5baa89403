//! Messages to the client: draining the session queue into the in-flight window, MQTT 5
//! topic aliases, the client's Maximum Packet Size, and retransmission on resume.

use std::sync::Arc;

use skein_storage::StoredInflight;

use super::{inbound::qos_label, Close, Connection};
use crate::codec::{self, Ack, Packet, Publish, QoS};
use crate::message::now_ms;
use crate::session::{to_stored_delivery, Delivery, Inflight, InflightState, Queued};

impl Connection {
    /// Re-sends what was in flight when the session was last connected, in order, with DUP.
    /// Messages beyond the client's new Receive Maximum go back to the queue.
    pub(super) fn resume(&mut self) -> Result<(), Close> {
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
        let inflight = std::mem::take(&mut st.inflight);
        let mut requeue = Vec::new();
        for f in inflight {
            if f.state == InflightState::Sent && st.inflight.len() >= self.send_window {
                if persistent {
                    // It goes out again under a new packet id: store it as queued.
                    let client = self.client_id.as_str();
                    let store = &self.broker.store;
                    self.storage_result(store.queue_push(
                        client,
                        f.seq,
                        &to_stored_delivery(&f.delivery),
                    ));
                    self.storage_result(store.inflight_remove(client, f.packet_id));
                }
                requeue.push(Queued {
                    seq: f.seq,
                    delivery: f.delivery,
                });
                continue;
            }
            match f.state {
                InflightState::Sent => {
                    match self.build_publish(&f.delivery, f.packet_id, true, now) {
                        Some(p) => self.send(&Packet::Publish(p)),
                        None => {
                            // Too big for this connection's Maximum Packet Size: discarded.
                            if persistent {
                                self.storage_result(
                                    self.broker
                                        .store
                                        .inflight_remove(self.client_id.as_str(), f.packet_id),
                                );
                            }
                            continue;
                        }
                    }
                }
                InflightState::Released => self.send(&Packet::PubRel(Ack::new(f.packet_id))),
            }
            st.inflight.push_back(f);
        }
        for q in requeue.into_iter().rev() {
            st.queue.push_front(q);
        }
        Ok(())
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
        while let Some(front) = st.queue.front() {
            if front.delivery.qos != QoS::AtMostOnce && st.inflight.len() >= self.send_window {
                break;
            }
            if self.socket.wbuf.len() >= super::WRITE_BATCH_BYTES {
                // Flush first; the loop comes back here.
                session.wake.notify_one();
                break;
            }
            let Some(q) = st.queue.pop_front() else { break };
            let stored = persistent && q.delivery.qos != QoS::AtMostOnce;
            if q.delivery.message.is_expired(now) {
                metrics::counter!("skein_messages_dropped_total", "reason" => "expired")
                    .increment(1);
                if stored {
                    self.storage_result(
                        self.broker
                            .store
                            .queue_remove(self.client_id.as_str(), q.seq),
                    );
                }
                continue;
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
            let Some(publish) = self.build_publish(&q.delivery, packet_id, false, now) else {
                // Too big for the client: discarded as if delivered (MQTT-3.1.2-25).
                metrics::counter!("skein_messages_dropped_total", "reason" => "too_large_for_client")
                    .increment(1);
                if stored {
                    self.storage_result(
                        self.broker
                            .store
                            .queue_remove(self.client_id.as_str(), q.seq),
                    );
                }
                continue;
            };
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
                            .inflight_put(self.client_id.as_str(), &record),
                    );
                    self.storage_result(
                        self.broker
                            .store
                            .queue_remove(self.client_id.as_str(), q.seq),
                    );
                    wrote_storage = true;
                }
                st.inflight.push_back(Inflight {
                    seq: q.seq,
                    packet_id,
                    delivery: q.delivery,
                    state: InflightState::Sent,
                });
            }
            metrics::counter!("skein_messages_sent_total", "qos" => qos_label(publish.qos))
                .increment(1);
            self.send(&Packet::Publish(publish));
        }
        Ok(wrote_storage)
    }

    pub(super) fn storage_result(&self, r: skein_storage::Result<()>) {
        if let Err(e) = r {
            tracing::error!(error = %e, "storage write failed");
        }
    }

    /// The PUBLISH for `delivery`, or None if it exceeds the client's Maximum Packet Size.
    fn build_publish(
        &mut self,
        d: &Delivery,
        packet_id: u16,
        dup: bool,
        now: u64,
    ) -> Option<Publish> {
        let v5 = self.protocol.is_v5();
        let mut publish = Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: d.message.topic.to_string(),
            packet_id,
            payload: d.message.payload.clone(),
            properties: if v5 {
                d.message.publish_properties(now, &d.subscription_ids)
            } else {
                Default::default()
            },
        };
        if self.client_max_packet_size != usize::MAX {
            // Checked with the full topic, before an alias is registered for a message
            // that may never be sent.
            let len = codec::encoded_len(&Packet::Publish(publish.clone()), self.protocol);
            if len > self.client_max_packet_size {
                return None;
            }
        }
        if v5 && self.client_topic_alias_max > 0 {
            self.apply_alias(&mut publish, &d.message.topic);
        }
        Some(publish)
    }

    fn apply_alias(&mut self, publish: &mut Publish, topic: &Arc<str>) {
        if let Some(&alias) = self.aliases_out.get(topic) {
            publish.topic.clear();
            publish.properties.topic_alias = Some(alias);
        } else if self.aliases_out.len() < self.client_topic_alias_max as usize {
            let alias = self.aliases_out.len() as u16 + 1;
            self.aliases_out.insert(topic.clone(), alias);
            publish.properties.topic_alias = Some(alias);
        }
    }
}
