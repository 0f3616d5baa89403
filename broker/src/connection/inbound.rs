//! Packets from the client after CONNECT.

use bytes::Buf;
use std::borrow::Cow;
use std::sync::Arc;

use super::authorize::{Authorization, Pending};
use super::cluster_step::{ClusterStep, Granted};
use super::publish_acks::{publish_ack, Acks};
use super::{taken_over, Close, Connection, DisconnectReason};
use crate::auth_http::authz::Decision;
use crate::codec::{
    reason as rc, Ack, Disconnect, Packet, Properties, Publish, QoS, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::events::{raise, EventBody, EventKind};
use crate::input_order::LateRead;
use crate::message::Message;
use crate::session::{HeldWakes, InflightState, Subscription};
use crate::storage_refusal::{self, NotStored};
use crate::topic;

/// What must happen after a packet was handled synchronously.
pub(super) enum After {
    Nothing,
    /// Flush storage, then send the packet (an acknowledgement that promises durability).
    /// Boxed so the waiting state of an idle connection stays small.
    FlushThenSend(Option<Box<Packet>>),
    /// Wait until the input that reached the node before this PUBLISH is handled, then
    /// route it (see [`crate::broker::Broker::route_holding_wakes`]).
    RouteInOrder(Box<DeferredPublish>),
    /// Commit a SUBSCRIBE's or UNSUBSCRIBE's change in the cluster, then answer it (see
    /// `cluster_step.rs`).
    Cluster(Box<ClusterStep>),
    /// Ask the HTTP authorizer, then handle the packet (see `authorize.rs`).
    Authorize(Box<Pending>),
}

/// A PUBLISH that waits for earlier input before it is routed and acknowledged.
pub(super) struct DeferredPublish {
    message: Arc<Message>,
    qos: QoS,
    packet_id: u16,
    qos2_stored: bool,
}

impl Connection {
    /// Handles one packet without waiting; anything that must wait for storage comes back
    /// as [`After`] (keeps this off the connection future's inline state). Subscribers of
    /// what it publishes are woken when `held` is released (or another batch's holder
    /// that held them first).
    pub(super) fn handle(
        &mut self,
        packet: Packet,
        held: &mut HeldWakes,
        acks: &mut Acks,
    ) -> Result<After, Close> {
        self.ensure_attached()?;
        match packet {
            Packet::Publish(p) => self.on_publish(p, held, acks),
            Packet::PubAck(a) => {
                self.on_outgoing_done(a.packet_id, false, a.reason >= 0x80)?;
                Ok(After::Nothing)
            }
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubComp(a) => {
                self.on_outgoing_done(a.packet_id, true, false)?;
                Ok(After::Nothing)
            }
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                raise::raise(
                    &self.broker.events,
                    &self.info,
                    EventKind::ClientPing,
                    || EventBody::Ping,
                );
                self.send(&Packet::PingResp);
                Ok(After::Nothing)
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Connect(_) => Err(Close::protocol("second CONNECT")),
            Packet::Auth(_) => Err(Close::protocol("AUTH without enhanced authentication")),
            other => Err(Close::protocol(format!(
                "{} is not sent by clients",
                other.name()
            ))),
        }
    }

    /// Taken over: nothing more from this connection may touch the session.
    pub(super) fn ensure_attached(&self) -> Result<(), Close> {
        if self.session.state().is_attached_to(self.id) {
            Ok(())
        } else {
            Err(taken_over())
        }
    }

    /// Handles a PUBACK or PUBCOMP at the front of the read buffer in its four-byte form
    /// (every MQTT 3 one, and MQTT 5's success without properties) straight from the
    /// bytes; None when the buffer starts with anything else. The general decoder builds
    /// a `Packet` around an empty `Properties` for each: about 400 bytes moved several
    /// times per acknowledgement, a tenth of the CPU of a QoS 1 fan-out.
    pub(super) fn handle_short_ack(&mut self) -> Option<Result<(), Close>> {
        let buf = self.socket.rbuf();
        let &[first, 2, high, low, ..] = &buf[..] else {
            return None;
        };
        let is_pubcomp = match first {
            0x40 => false,
            0x70 => true,
            _ => return None,
        };
        buf.advance(4);
        Some(self.on_outgoing_done(u16::from_be_bytes([high, low]), is_pubcomp, false))
    }

    fn on_publish(
        &mut self,
        mut p: Publish,
        held: &mut HeldWakes,
        acks: &mut Acks,
    ) -> Result<After, Close> {
        self.broker.hot.received(p.qos);
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Close::protocol(
                "Subscription Identifier in a client PUBLISH",
            ));
        }
        let topic = self.resolve_topic(&mut p)?;
        if p.retain && !self.broker.config.retain_available {
            return Err(Close::with_code(
                rc::RETAIN_NOT_SUPPORTED,
                "retain is not available",
            ));
        }
        if crate::events::access::is_event_filter(&topic) {
            return Ok(self.refuse_event_publish(&p, acks));
        }
        match self.publish_authorization(&topic, &p) {
            Authorization::Decided(true) => self.publish_authorized(p, topic, held, acks),
            Authorization::Decided(false) => {
                crate::metrics::authz_denied("publish");
                Ok(self.refuse_unauthorized_publish(p, topic, acks))
            }
            Authorization::Ask(question) => Ok(After::Authorize(Box::new(Pending::Publish {
                publish: p,
                topic,
                question,
            }))),
        }
    }

    /// Handles a PUBLISH its client may send.
    pub(super) fn publish_authorized(
        &mut self,
        p: Publish,
        topic: Arc<str>,
        held: &mut HeldWakes,
        acks: &mut Acks,
    ) -> Result<After, Close> {
        let invalid_payload = p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err();
        if p.qos == QoS::ExactlyOnce {
            let (duplicate, full) = {
                let st = self.session.state();
                (
                    st.incoming_qos2.contains(&p.packet_id),
                    st.incoming_qos2.len() >= self.broker.config.max_inflight as usize,
                )
            };
            if duplicate {
                // Already routed once; the client did not get our PUBREC. (Flushed first for
                // a persistent session: the first copy may have been handled by a connection
                // that was taken over before its flush.)
                let persistent = self.session.state().is_persistent();
                let dup = Packet::PubRec(Ack::new(p.packet_id));
                return Ok(self.answer_publish(acks, dup, persistent));
            }
            if full {
                return Err(Close::with_code(
                    rc::RECEIVE_MAXIMUM_EXCEEDED,
                    "more unacknowledged QoS 2 publishes than Receive Maximum",
                ));
            }
        }
        if invalid_payload {
            if p.qos == QoS::AtMostOnce {
                return Err(Close::with_code(
                    rc::PAYLOAD_FORMAT_INVALID,
                    "payload is not UTF-8",
                ));
            }
            self.ack_publish(&p, rc::PAYLOAD_FORMAT_INVALID, acks);
            return Ok(After::Nothing);
        }
        // A QoS 2 id is remembered (and stored) before routing, so a resend after a crash
        // is recognised as a duplicate.
        let qos2_stored = if p.qos == QoS::ExactlyOnce {
            // Stored under the session lock, so a takeover can't clear the session between
            // the memory and the storage update.
            let mut st = self.session.state();
            let persistent = st.is_persistent();
            if persistent {
                let store = &self.broker.store;
                let client = self.info.client_id.as_str();
                let written = store
                    .health()
                    .admit()
                    .and_then(|()| store.incoming_put(client, p.packet_id));
                if let Err(e) = written {
                    drop(st);
                    storage_refusal::write_failed("store an incoming QoS 2 id", client, &e);
                    let refusal = NotStored::of(&e);
                    storage_refusal::publish_refused(refusal, &topic, store.health());
                    return self.refuse_unstored(p.qos, p.packet_id, refusal, acks);
                }
            }
            st.incoming_qos2.insert(p.packet_id);
            persistent
        } else {
            false
        };
        let message = self.message_of(&p, topic);
        raise::raise_message(
            &self.broker.events,
            &self.info,
            &message,
            EventKind::MessagePublish,
            || EventBody::Publish {
                message: message.clone(),
                packet_id: p.packet_id,
            },
        );
        let deferred = |message| {
            After::RouteInOrder(Box::new(DeferredPublish {
                message,
                qos: p.qos,
                packet_id: p.packet_id,
                qos2_stored,
            }))
        };
        let outcome = match self.publish_order() {
            None => {
                self.broker
                    .route_holding_wakes(message, Some(held), None, Some(&mut acks.tickets))
            }
            // See `Broker::route_holding_wakes` for why a retained publish waits.
            Some(_) if p.retain || !self.broker.input_order.may_route_late(self.id) => {
                return Ok(deferred(message))
            }
            Some(position) => {
                let read = LateRead {
                    connection: self.id,
                    position,
                };
                let outcome = self.broker.route_holding_wakes(
                    message.clone(),
                    Some(held),
                    Some(read),
                    Some(&mut acks.tickets),
                );
                if outcome.deferred {
                    return Ok(deferred(message));
                }
                outcome
            }
        };
        self.answer_routed(outcome, (p.qos, p.packet_id, qos2_stored), acks)
    }

    /// Routes a PUBLISH that waited for the input before it, and answers it.
    pub(super) fn route_deferred(
        &mut self,
        d: DeferredPublish,
        acks: &mut Acks,
    ) -> Result<After, Close> {
        let outcome = self.broker.route_or_refuse(d.message);
        self.answer_routed(outcome, (d.qos, d.packet_id, d.qos2_stored), acks)
    }

    /// Only the node publishes on event topics: a client publish there would forge events.
    /// MQTT 5 clients get "not authorized"; 3.x acknowledgements can't say no, so the
    /// message is acknowledged and dropped.
    fn refuse_event_publish(&mut self, p: &Publish, acks: &mut Acks) -> After {
        tracing::info!(client_id = %self.info.client_id, topic = %p.topic, "refused a client publish to an event topic");
        self.refuse_event_publish_quietly(p, acks)
    }

    /// Counts the refused publish `p` and answers it: MQTT 5 "not authorized", 3.x
    /// acknowledged (its acknowledgements can't say no) and dropped.
    fn refuse_event_publish_quietly(&mut self, p: &Publish, acks: &mut Acks) -> After {
        crate::metrics::message_dropped("not_authorized");
        if self.protocol.is_v5() {
            // A PUBREC >= 0x80 ends the QoS 2 flow: no id to remember.
            self.ack_publish(p, rc::NOT_AUTHORIZED, acks);
        } else {
            if p.qos == QoS::ExactlyOnce {
                self.session.state().incoming_qos2.insert(p.packet_id);
            }
            self.ack_publish(p, rc::SUCCESS, acks);
        }
        After::Nothing
    }

    /// The message a PUBLISH of this client carries, as sessions and events take it.
    fn message_of(&self, p: &Publish, topic: Arc<str>) -> Arc<Message> {
        Arc::new(Message::from_publish(
            p,
            topic,
            Some(self.info.client_id.clone()),
            raise::publisher_username(&self.broker.events, &self.info),
        ))
    }

    /// A PUBLISH the ACL refuses: answered like one to an event topic (see
    /// `refuse_event_publish`), and raised as `message.dropped` (`not_authorized`).
    pub(super) fn refuse_unauthorized_publish(
        &mut self,
        p: Publish,
        topic: Arc<str>,
        acks: &mut Acks,
    ) -> After {
        tracing::debug!(client_id = %self.info.client_id, %topic, "publish refused by the ACL");
        let after = self.refuse_event_publish_quietly(&p, acks);
        if self.broker.events.wants(EventKind::MessageDropped) {
            let message = self.message_of(&p, topic);
            raise::raise_message(
                &self.broker.events,
                &self.info,
                &message,
                EventKind::MessageDropped,
                || EventBody::Dropped {
                    message: message.clone(),
                    reason: "not_authorized",
                },
            );
        }
        after
    }

    fn ack_publish(&mut self, p: &Publish, code: u8, acks: &mut Acks) {
        if let Some(ack) = publish_ack(p.qos, p.packet_id, code) {
            self.answer_publish(acks, ack, false);
        }
    }

    /// The topic of an incoming PUBLISH, after MQTT 5 topic alias handling and validation.
    fn resolve_topic(&mut self, p: &mut Publish) -> Result<Arc<str>, Close> {
        if let Some(alias) = p.properties.topic_alias.take() {
            if !self.protocol.is_v5() {
                return Err(Close::protocol("topic alias in MQTT 3"));
            }
            if alias == 0 || alias > self.broker.config.max_topic_alias {
                return Err(Close::with_code(
                    rc::TOPIC_ALIAS_INVALID,
                    format!("topic alias {alias} out of range"),
                ));
            }
            if p.topic.is_empty() {
                return match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(t) => Ok(t.clone()),
                    None => Err(Close::protocol(format!("unknown topic alias {alias}"))),
                };
            }
            self.check_topic(&p.topic)?;
            let t: Arc<str> = Arc::from(p.topic.as_str());
            self.aliases().inbound.insert(alias, t.clone());
            return Ok(t);
        }
        if p.topic.is_empty() && self.protocol.is_v5() {
            return Err(Close::protocol("empty topic name without a topic alias"));
        }
        self.check_topic(&p.topic)?;
        Ok(Arc::from(p.topic.as_str()))
    }

    fn check_topic(&self, name: &str) -> Result<(), Close> {
        if topic::valid_topic_name(name) {
            Ok(())
        } else {
            Err(Close::with_code(
                rc::TOPIC_NAME_INVALID,
                format!("invalid topic name {name:?}"),
            ))
        }
    }

    fn on_pubrel(&mut self, a: Ack) -> Result<After, Close> {
        let (found, persistent) = {
            let mut st = self.session.state();
            (
                st.incoming_qos2
                    .get_mut()
                    .is_some_and(|ids| ids.remove(&a.packet_id)),
                st.is_persistent(),
            )
        };
        if found && persistent {
            if let Err(e) = self
                .broker
                .store
                .incoming_remove(self.info.client_id.as_str(), a.packet_id)
            {
                storage_refusal::write_failed(
                    "remove an incoming QoS 2 id",
                    self.info.client_id.as_str(),
                    &e,
                );
            }
        }
        let reason = if found || !self.protocol.is_v5() {
            rc::SUCCESS
        } else {
            rc::PACKET_IDENTIFIER_NOT_FOUND
        };
        let pubcomp = Packet::PubComp(Ack {
            packet_id: a.packet_id,
            reason,
            properties: Properties::default(),
        });
        // A stale stored id would swallow the next QoS 2 PUBLISH that reuses it after a crash.
        if found && persistent {
            return Ok(After::FlushThenSend(Some(Box::new(pubcomp))));
        }
        self.send(&pubcomp);
        Ok(After::Nothing)
    }

    fn on_pubrec(&mut self, a: Ack) -> Result<After, Close> {
        if a.reason >= 0x80 {
            // The client refused the message: the QoS 2 flow ends here.
            self.on_outgoing_done(a.packet_id, false, true)?;
            return Ok(After::Nothing);
        }
        let session = self.session.clone();
        let mut st = session.state();
        let persistent = st.is_persistent();
        let found = st
            .inflight
            .get_mut()
            .and_then(|q| q.iter_mut().find(|f| f.packet_id == a.packet_id));
        let Some(f) = found else {
            drop(st);
            // Answer anyway so the client's flow completes.
            let reason = if self.protocol.is_v5() {
                rc::PACKET_IDENTIFIER_NOT_FOUND
            } else {
                rc::SUCCESS
            };
            self.send(&Packet::PubRel(Ack {
                packet_id: a.packet_id,
                reason,
                properties: Properties::default(),
            }));
            return Ok(After::Nothing);
        };
        if f.delivery.qos != QoS::ExactlyOnce {
            return Err(Close::protocol("PUBREC for a QoS 1 message"));
        }
        f.state = InflightState::Released;
        let stored = persistent.then(|| skein_storage::StoredInflight {
            packet_id: f.packet_id,
            seq: f.seq,
            // Only the id matters once released: the PUBLISH is never sent again.
            message: skein_storage::StoredMessage {
                qos: 2,
                ..Default::default()
            },
            released: true,
        });
        drop(st);
        let pubrel = Packet::PubRel(Ack::new(a.packet_id));
        let Some(stored) = stored else {
            self.send(&pubrel);
            return Ok(After::Nothing);
        };
        if let Err(e) = self
            .broker
            .store
            .inflight_put(self.info.client_id.as_str(), &stored)
        {
            storage_refusal::write_failed(
                "store in-flight state",
                self.info.client_id.as_str(),
                &e,
            );
        }
        // After PUBREL the PUBLISH must never be re-sent, even after a crash.
        Ok(After::FlushThenSend(Some(Box::new(pubrel))))
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is delivered; or a PUBACK / PUBREC
    /// with a failure reason (MQTT 5, `refused`): the client rejected it, and it is dropped.
    /// Checks the attachment itself, under the lock it takes anyway: the four-byte
    /// acknowledgements come here without `handle` (see `handle_short_ack`).
    fn on_outgoing_done(
        &mut self,
        packet_id: u16,
        is_pubcomp: bool,
        refused: bool,
    ) -> Result<(), Close> {
        let mut st = self.session.state();
        if !st.is_attached_to(self.id) {
            return Err(taken_over());
        }
        let Some(pos) = st.inflight.iter().position(|f| f.packet_id == packet_id) else {
            return Ok(());
        };
        let f = &st.inflight[pos];
        let expected = if is_pubcomp {
            f.state == InflightState::Released
        } else {
            true
        };
        if !expected {
            return Ok(());
        }
        let persistent = st.is_persistent();
        let done = st.remove_inflight(pos);
        if let Some(id) = done.as_ref().and_then(|f| f.delivery.message.publish_id) {
            if persistent && !refused {
                st.delivered.get_or_insert_with(Box::default).note(id);
            }
        }
        drop(st);
        if let Some(f) = done {
            let m = &f.delivery.message;
            if refused {
                self.raise_dropped(m, "rejected_by_client");
            } else {
                raise::raise_message(
                    &self.broker.events,
                    &self.info,
                    m,
                    EventKind::MessageAcked,
                    || EventBody::Acked {
                        message: m.clone(),
                        packet_id,
                        qos: f.delivery.qos,
                    },
                );
            }
        }
        // A rejection is counted as a drop above, not as an acknowledgement.
        self.acked = self.acked.saturating_add(u32::from(!refused));
        if persistent {
            if let Err(e) = self
                .broker
                .store
                .inflight_remove(self.info.client_id.as_str(), packet_id)
            {
                storage_refusal::write_failed(
                    "remove an in-flight message",
                    self.info.client_id.as_str(),
                    &e,
                );
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<After, Close> {
        for (filter, options) in &s.filters {
            // At receipt, before any check: refused filters are reported too.
            raise::raise(
                &self.broker.events,
                &self.info,
                EventKind::ClientSubscribe,
                || EventBody::SubscribeRequest {
                    filter: filter.clone(),
                    qos: options.qos,
                    packet_id: s.packet_id,
                },
            );
        }
        match self.subscribe_authorization(s) {
            Ok((s, decisions)) => self.subscribe_decided(s, &decisions),
            Err(pending) => Ok(After::Authorize(pending)),
        }
    }

    /// Handles a SUBSCRIBE whose HTTP authorization decisions are known, one per filter
    /// (None: not asked).
    pub(super) fn subscribe_decided(
        &mut self,
        s: Subscribe,
        decisions: &[Option<Decision>],
    ) -> Result<After, Close> {
        let v5 = self.protocol.is_v5();
        let invalid = if v5 { rc::TOPIC_FILTER_INVALID } else { 0x80 };
        let subscription_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut granted = Vec::new();
        // Publishes that reached the node after this SUBSCRIBE but were routed before it
        // was handled, queued for its subscriptions (see `Broker::deliver_late`).
        let mut late = Vec::new();
        let reported_at = self.input_ticket_position();
        for (i, (filter, options)) in s.filters.iter().enumerate() {
            let Ok((group, inner)) = topic::parse_subscription(filter) else {
                codes.push(invalid);
                continue;
            };
            if group.is_some() && options.no_local {
                return Err(Close::protocol("No Local on a shared subscription"));
            }
            if !self.subscribe_allowed(inner, decisions.get(i).copied().flatten()) {
                tracing::debug!(client_id = %self.info.client_id, %filter, "subscription refused by the ACL");
                crate::metrics::authz_denied("subscribe");
                codes.push(if v5 { rc::NOT_AUTHORIZED } else { 0x80 });
                continue;
            }
            let at_limit = {
                let st = self.session.state();
                !st.subscriptions.contains_key(filter)
                    && st.subscriptions.len() >= self.broker.config.max_subscriptions_per_session
            };
            if at_limit {
                codes.push(if v5 { rc::QUOTA_EXCEEDED } else { 0x80 });
                continue;
            }
            let mut options = *options;
            options.qos = self.broker.granted_qos(options.qos);
            let sub = Subscription {
                options,
                subscription_id,
            };
            let replaced = self.session.state().subscriptions.get(filter).cloned();
            let subscribed = self.broker.subscribe(&self.session, filter, sub.clone());
            granted.push(Granted {
                index: codes.len(),
                filter: filter.clone(),
                subscription: sub.clone(),
                replaced,
            });
            if let Some(position) = reported_at {
                self.broker.deliver_late(
                    &self.session,
                    filter,
                    &sub,
                    &subscribed,
                    position,
                    &mut late,
                );
            }
            let existed = subscribed.existed;
            raise::raise(
                &self.broker.events,
                &self.info,
                EventKind::SessionSubscribed,
                || EventBody::Subscribed {
                    filter: filter.clone(),
                    qos: options.qos,
                    packet_id: s.packet_id,
                },
            );
            codes.push(options.qos as u8);
            let wants_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if group.is_none() && wants_retained {
                let matching = self
                    .broker
                    .retained
                    .matching(inner, crate::message::now_ms());
                if !matching.is_empty() {
                    retained.push((matching, sub));
                }
            }
        }
        if granted.is_empty() {
            let suback = Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reason_codes: codes,
                properties: Properties::default(),
            });
            return Ok(self.after_durable(suback));
        }
        Ok(After::Cluster(Box::new(ClusterStep::Subscribe {
            packet_id: s.packet_id,
            codes,
            granted,
            retained,
        })))
    }

    /// Sends `ack` now, or after a storage flush when the session is persistent.
    pub(super) fn after_durable(&mut self, ack: Packet) -> After {
        if self.session.state().is_persistent() {
            After::FlushThenSend(Some(Box::new(ack)))
        } else {
            self.send(&ack);
            After::Nothing
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<After, Close> {
        for filter in &u.filters {
            // At receipt: filters that were never subscribed are reported too.
            raise::raise(
                &self.broker.events,
                &self.info,
                EventKind::ClientUnsubscribe,
                || EventBody::UnsubscribeRequest {
                    filter: filter.clone(),
                    packet_id: u.packet_id,
                },
            );
        }
        let mut removed = Vec::new();
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            if topic::parse_subscription(filter).is_err() {
                codes.push(rc::TOPIC_FILTER_INVALID);
                continue;
            }
            let held = self.session.state().subscriptions.get(filter).cloned();
            let Some(qos) = self.broker.unsubscribe(&self.session, filter) else {
                codes.push(rc::NO_SUBSCRIPTION_EXISTED);
                continue;
            };
            raise::raise(
                &self.broker.events,
                &self.info,
                EventKind::SessionUnsubscribed,
                || EventBody::Unsubscribed {
                    filter: filter.clone(),
                    packet_id: u.packet_id,
                    qos,
                },
            );
            if let Some(held) = held {
                removed.push((codes.len(), filter.clone(), held));
            }
            codes.push(rc::SUCCESS);
        }
        if removed.is_empty() {
            let unsuback = Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reason_codes: codes,
                properties: Properties::default(),
            });
            return Ok(self.after_durable(unsuback));
        }
        Ok(After::Cluster(Box::new(ClusterStep::Unsubscribe {
            packet_id: u.packet_id,
            codes,
            removed,
        })))
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_session_expiry == 0 && expiry != 0 {
                return Close::protocol(
                    "Session Expiry Interval set on DISCONNECT after 0 in CONNECT",
                );
            }
            let capped = expiry.min(self.broker.config.max_session_expiry_interval);
            let mut st = self.session.state();
            st.expiry_interval = capped;
            if st.is_persistent() {
                self.broker.persist_session_locked(&self.session, &st);
            }
        }
        // Only a normal disconnection discards the will (MQTT-3.1.2-8), and it must be gone
        // before a quick reconnect can find it.
        self.will_on_disconnect = d.reason != rc::NORMAL_DISCONNECTION;
        if !self.will_on_disconnect {
            self.session.state().will = None;
        }
        let detail: Cow<'static, str> = match d.reason {
            rc::NORMAL_DISCONNECTION => "DISCONNECT reason 0x00".into(),
            other => format!("DISCONNECT reason 0x{other:02x}").into(),
        };
        Close::silent(DisconnectReason::Normal, detail)
    }
}
