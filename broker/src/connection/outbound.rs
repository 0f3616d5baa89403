//! Messages to the client: draining the session queue into the in-flight window, MQTT 5
//! topic aliases, the client's Maximum Packet Size, and retransmission on resume.

use std::sync::Arc;

use skein_storage::StoredInflight;

use super::{inbound::qos_label, Close, Connection};
use crate::codec::{self, Ack, Packet, Publish, QoS};
use crate::message::now_ms;
use crate::session::{to_stored_delivery, Delivery, Inflight, InflightState};

impl Connection {
    /// Re-sends what was in flight when the session was last connected, in order, with DUP.
    pub(super) fn resume(&mut self) -> Result<(), Close> {
        let session = self.session.clone();
        let st = session.state();
        if !st.is_attached_to(self.id) {
            return Err(Close::silent(
                super::DisconnectReason::Takeovered,
                "taken over during connect",
            ));
        }
        let now = now_ms();
        for f in st.inflight.iter() {
            match f.state {
                InflightState::Sent => {
                    if let Some(p) = self.build_publish(&f.delivery, f.packet_id, true, now) {
                        self.send(&Packet::Publish(p));
                    }
                }
                InflightState::Released => self.send(&Packet::PubRel(Ack::new(f.packet_id))),
            }
        }
        Ok(())
    }

    /// Moves queued messages into the write buffer while the in-flight window has room.
    pub(super) fn pump(&mut self) -> Result<(), Close> {
        let session = self.session.clone();
        let mut st = session.state();
        if !st.is_attached_to(self.id) {
            // Another connection owns the session now; our kick is on its way.
            return Ok(());
        }
        let persistent = st.is_persistent();
        let now = now_ms();
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
                // Too big for the client: discarded as if delivered (MQTT 5 §3.1.2.11.4).
                metrics::counter!("skein_messages_dropped_total", "reason" => "too_large_for_client").increment(1);
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
        Ok(())
    }

    fn storage_result(&self, r: skein_storage::Result<()>) {
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
        if v5 && self.client_topic_alias_max > 0 {
            self.apply_alias(&mut publish, &d.message.topic);
        }
        let fits = |p: &Publish| {
            codec::encoded_len(&Packet::Publish(p.clone()), self.protocol)
                <= self.client_max_packet_size
        };
        if self.client_max_packet_size == usize::MAX || fits(&publish) {
            return Some(publish);
        }
        // Properties the spec lets us drop to make it fit.
        publish.properties.user_properties.clear();
        fits(&publish).then_some(publish)
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
