//! Answering a client's PUBLISH: at once, after a storage flush, or once other nodes took
//! it; refused when storage or another node could not take it.
//!
//! Acknowledgements that wait for other nodes: a QoS 1/2 PUBLISH forwarded to other nodes
//! is acknowledged only once every one of them took it (nothing is acknowledged that is not
//! stored), and a connection's acknowledgements go out in PUBLISH order (MQTT-4.6.0): once
//! one waits, every later one queues behind it. The connection goes on handling the rest
//! of its read batch meanwhile, so the forwards of one batch are in flight together, and
//! settles them all when the batch is handled: one round trip per batch, not per message.
//! The batch's forwards are answered in one tally (`Acks::tickets`, see the seam's
//! `ForwardTally`): the peer's answer to a batch of its queue is counted once per run of
//! this connection's publishes in it, not sent through a channel per message.
//!
//! A forward that fails (the peer's queue full, the peer refusing it, the peer unreachable
//! within the forward timeout): an MQTT 5 publisher gets a failure PUBACK/PUBREC, 0x97
//! (quota exceeded) for a full queue and 0x80 otherwise, with the reason as Reason String;
//! a 3.x acknowledgement cannot say no, so the connection closes without one and the client
//! sends the message again when it reconnects. This node's own sessions have the message
//! by then, and the forward stays queued for its peer: a publisher that sends it again may
//! cause duplicates (at least once), never a loss.
//!
//! Backpressure: a QoS 0 publish has no acknowledgement to hold back, so a fast publisher
//! could fill a peer's forward queue and lose what overflows. When a QoS 0 publish is
//! forwarded to a peer whose queue is over half full, the read batch stops there and the
//! connection waits for room (at most the forward timeout) before it handles more input;
//! only past the queue's bound is a forward dropped (and counted).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use skein_seam::{BoxFuture, ForwardError, NodeId};

use super::inbound::After;
use super::{Close, Connection};
use crate::broker::{ForwardTickets, Forwards, RouteOutcome};
use crate::codec::{reason as rc, Ack, Packet, Properties, QoS};
use crate::log_limit::LogLimit;
use crate::storage_refusal::{self, NotStored};

#[cfg(test)]
mod tests;

static NOT_FORWARDED: LogLimit = LogLimit::new(Duration::from_secs(10));

/// The acknowledgements of one read batch left waiting, in PUBLISH order. Owned by the
/// batch's handling, not the connection: every connection would carry the pointer, and
/// they are settled before the connection reads again. In a mutex only to be `Sync`, as
/// what a connection's task holds across an await must be (the forwards' futures are
/// `Send` only); it is reached through `&mut` alone, never locked.
#[derive(Default)]
pub(super) struct PendingAcks(Mutex<Parked>);

#[derive(Default)]
struct Parked {
    acks: VecDeque<PendingAck>,
    /// Peers whose forward queue was more than half full when a QoS 0 publish of the batch
    /// was forwarded to them, each with its wait for room (once per peer per batch): the
    /// connection reads no more until they have room, or the bound passed (backpressure:
    /// see `ClusterHandle::forward_room`).
    room: Vec<(NodeId, BoxFuture<'static, bool>)>,
}

/// Where a read batch parks acknowledgements (None until one waits), and the tickets its
/// QoS 1/2 forwards are answered by (see [`ForwardTickets`]): one per read batch.
#[derive(Default)]
pub(super) struct Acks {
    pending: Option<Box<PendingAcks>>,
    pub(super) tickets: ForwardTickets,
}

impl Acks {
    /// What waits to be settled, if anything.
    pub(super) fn into_pending(self) -> Option<Box<PendingAcks>> {
        self.pending
    }

    fn as_mut(&mut self) -> Option<&mut Box<PendingAcks>> {
        self.pending.as_mut()
    }

    fn get_or_insert_default(&mut self) -> &mut Box<PendingAcks> {
        self.pending.get_or_insert_default()
    }
}

impl PendingAcks {
    fn parked(&mut self) -> &mut Parked {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&mut self, ack: PendingAck) {
        self.parked().acks.push_back(ack);
    }

    /// Whether the batch must wait for room at a peer before handling more input.
    pub(super) fn waits_for_room(acks: &mut Acks) -> bool {
        acks.as_mut().is_some_and(|p| !p.parked().room.is_empty())
    }

    /// Whether the batch waits for room at `node` already.
    fn waits_for(acks: &mut Acks, node: NodeId) -> bool {
        acks.as_mut()
            .is_some_and(|p| p.parked().room.iter().any(|(n, _)| *n == node))
    }

    /// Queues `ack` (a publish whose forwards are in flight) behind those waiting.
    pub(super) fn park(acks: &mut Acks, ack: PendingAck) {
        acks.get_or_insert_default().push(ack);
    }

    fn into_inner(self) -> Parked {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) enum PendingAck {
    /// Decided already; sent after a storage flush when `needs_flush`.
    Ready { ack: Box<Packet>, needs_flush: bool },
    /// A routed publish whose forwards are in flight.
    Forwarded {
        qos: QoS,
        packet_id: u16,
        /// The code of the acknowledgement if every forward succeeds.
        code: u8,
        needs_flush: bool,
        qos2_stored: bool,
        forwards: Forwards,
    },
}

/// What settling decided for one publish.
enum Answer {
    Send(Box<Packet>),
    NotForwarded {
        qos: QoS,
        packet_id: u16,
        qos2_stored: bool,
        error: ForwardError,
    },
}

impl Connection {
    /// Sends a publish's acknowledgement (after a flush when `needs_flush`), or queues it
    /// behind acknowledgements that wait for other nodes.
    pub(super) fn answer_publish(
        &mut self,
        acks: &mut Acks,
        ack: Packet,
        needs_flush: bool,
    ) -> After {
        if let Some(pending) = acks.as_mut() {
            pending.push(PendingAck::Ready {
                ack: Box::new(ack),
                needs_flush,
            });
            return After::Nothing;
        }
        if needs_flush {
            return After::FlushThenSend(Some(Box::new(ack)));
        }
        self.send(&ack);
        After::Nothing
    }

    /// Waits for the forwards of every queued acknowledgement, flushes storage once if any
    /// needs it, and sends the acknowledgements in order.
    pub(super) async fn settle_acks(&mut self, pending: Box<PendingAcks>) -> Result<(), Close> {
        // What was handled is in force; waiting for peers must not hold publishes back.
        self.set_input_aside();
        let Parked {
            acks: pending,
            room,
        } = pending.into_inner();
        for (node, wait) in room {
            if !wait.await {
                tracing::debug!(client_id = %self.info.client_id, %node, "no room in the forward queue to a peer within the bound; reading on");
            }
        }
        let mut answers = Vec::with_capacity(pending.len());
        let mut flush = false;
        // Every forward is in flight already: waiting for them in turn costs the slowest.
        for entry in pending {
            match entry {
                PendingAck::Ready { ack, needs_flush } => {
                    flush |= needs_flush;
                    answers.push(Answer::Send(ack));
                }
                PendingAck::Forwarded {
                    qos,
                    packet_id,
                    code,
                    needs_flush,
                    qos2_stored,
                    forwards,
                } => match forwards.settle().await {
                    Ok(()) => {
                        flush |= needs_flush || qos2_stored;
                        if let Some(ack) = publish_ack(qos, packet_id, code) {
                            answers.push(Answer::Send(Box::new(ack)));
                        }
                    }
                    Err(error) => answers.push(Answer::NotForwarded {
                        qos,
                        packet_id,
                        qos2_stored,
                        error,
                    }),
                },
            }
        }
        if flush {
            self.flush_storage().await?;
        }
        for answer in answers {
            match answer {
                Answer::Send(ack) => self.send(&ack),
                Answer::NotForwarded {
                    qos,
                    packet_id,
                    qos2_stored,
                    error,
                } => self.refuse_not_forwarded(qos, packet_id, qos2_stored, &error)?,
            }
        }
        Ok(())
    }

    /// Acknowledges a routed PUBLISH, or refuses it when what it needed on disk was not
    /// stored.
    /// `(qos, packet_id, qos2_stored)`: the publish's QoS and id, and whether its QoS 2 id
    /// was stored.
    pub(super) fn answer_routed(
        &mut self,
        outcome: RouteOutcome,
        (qos, packet_id, qos2_stored): (QoS, u16, bool),
        acks: &mut Acks,
    ) -> Result<After, Close> {
        if let (Some(refusal), false) = (outcome.not_stored, qos == QoS::AtMostOnce) {
            if qos == QoS::ExactlyOnce {
                self.forget_incoming_qos2(packet_id, qos2_stored);
            }
            return self.refuse_unstored(qos, packet_id, refusal, acks);
        }
        Ok(self.acknowledge_routed(outcome, (qos, packet_id, qos2_stored), acks))
    }

    /// Acknowledges a routed publish: at once, after a storage flush, or (forwarded to
    /// other nodes) once they took it (see the module docs). A QoS 0 publish's forwards are
    /// not waited for.
    fn acknowledge_routed(
        &mut self,
        outcome: RouteOutcome,
        (qos, packet_id, qos2_stored): (QoS, u16, bool),
        acks: &mut Acks,
    ) -> After {
        let nobody = outcome.matched == 0 && outcome.remote == 0;
        let code = if nobody && self.protocol.is_v5() {
            rc::NO_MATCHING_SUBSCRIBERS
        } else {
            rc::SUCCESS
        };
        if qos == QoS::AtMostOnce {
            self.wait_for_forward_room(&outcome.forwards, acks);
            return After::Nothing;
        }
        // Acknowledged only once it is on disk.
        let needs_flush = outcome.needs_flush || qos2_stored;
        if !outcome.forwards.is_empty() {
            PendingAcks::park(
                acks,
                PendingAck::Forwarded {
                    qos,
                    packet_id,
                    code,
                    needs_flush: outcome.needs_flush,
                    qos2_stored,
                    forwards: outcome.forwards,
                },
            );
            return After::Nothing;
        }
        match publish_ack(qos, packet_id, code) {
            Some(ack) => self.answer_publish(acks, ack, needs_flush),
            None => After::Nothing,
        }
    }

    /// Backpressure for a QoS 0 publish, whose forwards nobody waits for: the read batch
    /// waits, before the connection reads more, for room at each node whose queue is more
    /// than half full.
    fn wait_for_forward_room(&self, forwards: &Forwards, acks: &mut Acks) {
        for node in forwards.nodes() {
            if PendingAcks::waits_for(acks, node) {
                continue;
            }
            if let Some(wait) = self.broker.cluster.forward_room(node) {
                acks.get_or_insert_default()
                    .parked()
                    .room
                    .push((node, wait));
            }
        }
    }

    /// Flushes storage before a durability-promising acknowledgement goes out.
    pub(super) async fn flush_storage(&self) -> Result<(), Close> {
        self.broker.flush_storage().await.map_err(|e| {
            storage_refusal::write_failed("flush", self.info.client_id.as_str(), &e);
            Close::internal("storage failure")
        })
    }

    /// A QoS 1/2 publish whose message was not stored where it had to be: an MQTT 5 client
    /// gets a failure PUBACK/PUBREC (0x83, and the reason as Reason String unless it asked
    /// for no problem information); a 3.x acknowledgement cannot say no, so the connection
    /// closes without one and the client sends the message again when it reconnects.
    pub(super) fn refuse_unstored(
        &mut self,
        qos: QoS,
        packet_id: u16,
        refusal: NotStored,
        acks: &mut Acks,
    ) -> Result<After, Close> {
        if !self.protocol.is_v5() {
            return Err(Close::internal(refusal.message()));
        }
        let code = rc::IMPLEMENTATION_SPECIFIC_ERROR;
        match self.refusal_ack(qos, packet_id, code, refusal.message()) {
            Some(ack) => Ok(self.answer_publish(acks, ack, false)),
            None => Ok(After::Nothing),
        }
    }

    /// An MQTT 5 failure PUBACK/PUBREC with `reason` as Reason String (unless the client
    /// asked for no problem information, or it would not fit the client's packet size).
    fn refusal_ack(&self, qos: QoS, packet_id: u16, code: u8, reason: &str) -> Option<Packet> {
        let explained = Properties {
            reason_string: self.problem_information.then(|| reason.to_owned()),
            ..Properties::default()
        };
        let ack = publish_ack_with(qos, packet_id, code, explained)?;
        if crate::codec::encoded_len(&ack, self.protocol) > self.client_max_packet_size as usize {
            return publish_ack(qos, packet_id, code);
        }
        Some(ack)
    }

    /// Sends an MQTT 5 failure acknowledgement now (its turn has come).
    pub(super) fn send_refusal(&mut self, qos: QoS, packet_id: u16, code: u8, reason: &str) {
        if let Some(ack) = self.refusal_ack(qos, packet_id, code, reason) {
            self.send(&ack);
        }
    }

    /// Forgets the id of a QoS 2 publish that was refused (the refusal ends its flow), in
    /// storage too: a stale stored id would take the client's resend for a duplicate.
    pub(super) fn forget_incoming_qos2(&mut self, packet_id: u16, stored: bool) {
        if let Some(ids) = self.session.state().incoming_qos2.get_mut() {
            ids.remove(&packet_id);
        }
        if stored {
            let client = self.info.client_id.as_str();
            if let Err(e) = self.broker.store.incoming_remove(client, packet_id) {
                storage_refusal::write_failed("forget a refused QoS 2 id", client, &e);
            }
        }
    }

    /// A publish another node did not take: see the module docs.
    fn refuse_not_forwarded(
        &mut self,
        qos: QoS,
        packet_id: u16,
        qos2_stored: bool,
        error: &ForwardError,
    ) -> Result<(), Close> {
        let (code, reason) = match error {
            ForwardError::QueueFull(_) => (rc::QUOTA_EXCEEDED, "forward_queue_full"),
            _ => (rc::UNSPECIFIED_ERROR, "forward_failed"),
        };
        crate::metrics::publish_refused(reason);
        if let Some(held_back) = NOT_FORWARDED.allow() {
            tracing::warn!(client_id = %self.info.client_id, error = %error, held_back, "publish refused: another node with subscribers did not take it");
        }
        if qos == QoS::ExactlyOnce {
            self.forget_incoming_qos2(packet_id, qos2_stored);
        }
        let detail = format!("not delivered cluster-wide: {error}");
        if !self.protocol.is_v5() {
            return Err(Close::internal(detail));
        }
        self.send_refusal(qos, packet_id, code, &detail);
        Ok(())
    }
}

/// PUBACK or PUBREC for an incoming PUBLISH; None for QoS 0.
pub(super) fn publish_ack(qos: QoS, packet_id: u16, code: u8) -> Option<Packet> {
    publish_ack_with(qos, packet_id, code, Properties::default())
}

fn publish_ack_with(qos: QoS, packet_id: u16, code: u8, properties: Properties) -> Option<Packet> {
    let ack = Ack {
        packet_id,
        reason: code,
        properties,
    };
    match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Packet::PubAck(ack)),
        QoS::ExactlyOnce => Some(Packet::PubRec(ack)),
    }
}
