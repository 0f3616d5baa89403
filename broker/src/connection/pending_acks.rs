//! Acknowledgements that wait for other nodes. A QoS 1/2 PUBLISH forwarded to other nodes
//! is acknowledged only once every one of them took it (nothing is acknowledged that is not
//! stored), and a connection's acknowledgements go out in PUBLISH order (MQTT-4.6.0): once
//! one waits, every later one queues behind it. The connection goes on handling the rest
//! of its read batch meanwhile, so the forwards of one batch are in flight together, and
//! settles them all when the batch is handled: one round trip per batch, not per message.
//!
//! A forward that fails (the peer's queue full, the peer refusing it, the peer unreachable
//! within the forward timeout): an MQTT 5 publisher gets a failure PUBACK/PUBREC, 0x97
//! (quota exceeded) for a full queue and 0x80 otherwise, with the reason as Reason String;
//! a 3.x acknowledgement cannot say no, so the connection closes without one and the client
//! sends the message again when it reconnects. This node's own sessions have the message
//! by then, and the forward stays queued for its peer: a publisher that sends it again may
//! cause duplicates (at least once), never a loss.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use skein_seam::ForwardError;

use super::{Close, Connection};
use crate::broker::Forwards;
use crate::codec::{reason as rc, Packet, QoS};
use crate::log_limit::LogLimit;

static NOT_FORWARDED: LogLimit = LogLimit::new(Duration::from_secs(10));

/// The acknowledgements of one connection waiting, in PUBLISH order. In a mutex only to
/// be `Sync` as the connection must be (the forwards' futures are `Send` only); it is
/// reached through `&mut` alone, never locked.
#[derive(Default)]
pub(super) struct PendingAcks(Mutex<VecDeque<PendingAck>>);

impl PendingAcks {
    fn push(&mut self, ack: PendingAck) {
        self.0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(ack);
    }

    fn into_inner(self) -> VecDeque<PendingAck> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) enum PendingAck {
    /// Decided already; sent after a storage flush when `needs_flush`.
    Ready { ack: Packet, needs_flush: bool },
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
    Send(Packet),
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
        ack: Packet,
        needs_flush: bool,
    ) -> super::inbound::After {
        use super::inbound::After;
        if let Some(pending) = self.pending_acks.as_mut() {
            pending.push(PendingAck::Ready { ack, needs_flush });
            return After::Nothing;
        }
        if needs_flush {
            return After::FlushThenSend(Some(Box::new(ack)));
        }
        self.send(&ack);
        After::Nothing
    }

    /// Queues the acknowledgement of a publish until its forwards are answered.
    pub(super) fn await_forwards(&mut self, ack: PendingAck) {
        self.pending_acks.get_or_insert_default().push(ack);
    }

    /// Waits for the forwards of every queued acknowledgement, flushes storage once if any
    /// needs it, and sends the acknowledgements in order.
    pub(super) async fn settle_acks(&mut self) -> Result<(), Close> {
        let Some(pending) = self.pending_acks.take() else {
            return Ok(());
        };
        // What was handled is in force; waiting for peers must not hold publishes back.
        self.set_input_aside();
        let pending = pending.into_inner();
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
                        if let Some(ack) = super::inbound::publish_ack(qos, packet_id, code) {
                            answers.push(Answer::Send(ack));
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
