//! A SUBSCRIBE's or UNSUBSCRIBE's change committed in the cluster before it is
//! acknowledged. The change is made here first, where the packet is handled (so the
//! node-wide input order holds for it: see `input_order`), then the cluster commits it; the
//! SUBACK goes out once the subscription is in force on every member (the seam's
//! `ClusterHandle::subscribe`). Only this connection waits: its input is set aside so that
//! other connections' publishes are not held behind it.
//!
//! When the cluster cannot take the change (no quorum, a timeout), the local change is
//! undone and the filters are refused: MQTT 5 SUBACK/UNSUBACK 0x80 "Unspecified error"
//! (the condition is transient and none of the specific codes fits it: 0x97 speaks of a
//! quota, 0x83 of a valid request the server will not accept as a matter of policy), with
//! the cause as Reason String; MQTT 3.1.1 SUBACK 0x80 (failure). An MQTT 3.1.1 UNSUBACK
//! cannot say no: the connection closes instead, its subscriptions intact, and the client
//! sends the UNSUBSCRIBE again once reconnected. A connection whose client id was taken
//! over meanwhile ends as taken over.

use std::sync::Arc;

use skein_seam::{ClusterError, HandedOverSubscription};

use super::inbound::{ClusterStep, Granted};
use super::{Close, Connection};
use crate::codec::{reason as rc, Packet, Properties, SubAck, UnsubAck};
use crate::message::Message;
use crate::session::{Kick, Subscription};

impl Connection {
    /// Commits `step` in the cluster, then sends its acknowledgement (after a storage flush
    /// for a persistent session); Ok(true) when a batch of output is waiting.
    pub(super) async fn cluster_then_send(&mut self, step: ClusterStep) -> Result<bool, Close> {
        // What was handled so far is in force here: nothing waits for this commit.
        self.set_input_aside();
        let ack = match step {
            ClusterStep::Subscribe {
                packet_id,
                codes,
                granted,
                retained,
            } => {
                self.commit_subscribe(packet_id, codes, granted, retained)
                    .await?
            }
            ClusterStep::Unsubscribe {
                packet_id,
                codes,
                removed,
            } => self.commit_unsubscribe(packet_id, codes, removed).await?,
        };
        if self.session.state().is_persistent() {
            self.flush_storage().await?;
        }
        self.send(&ack);
        Ok(self.output_batch_full())
    }

    async fn commit_subscribe(
        &mut self,
        packet_id: u16,
        mut codes: Vec<u8>,
        granted: Vec<Granted>,
        retained: Vec<(Vec<Arc<Message>>, Subscription)>,
    ) -> Result<Packet, Close> {
        let subscriptions = granted
            .iter()
            .map(|g| handed_over(&g.filter, &g.subscription))
            .collect();
        let committed = self
            .broker
            .cluster
            .subscribe(&self.info.client_id, self.epoch, subscriptions)
            .await;
        let mut properties = Properties::default();
        match committed {
            Ok(()) => {
                // Queued now, written by the next pump: after the SUBACK.
                for (messages, sub) in retained {
                    self.broker
                        .deliver_retained_messages(&self.session, messages, &sub);
                }
            }
            Err(ClusterError::NotOwner) => return Err(self.taken_over_elsewhere()),
            Err(e) => {
                crate::metrics::cluster_refused("subscribe");
                tracing::info!(client_id = %self.info.client_id, error = %e, "SUBSCRIBE refused: the cluster did not take it");
                for g in granted {
                    match g.replaced {
                        Some(before) => {
                            self.broker.subscribe(&self.session, &g.filter, before);
                        }
                        None => {
                            self.broker.unsubscribe(&self.session, &g.filter);
                        }
                    }
                    codes[g.index] = rc::UNSPECIFIED_ERROR;
                }
                properties.reason_string = self.explain(&e);
            }
        }
        Ok(Packet::SubAck(SubAck {
            packet_id,
            reason_codes: codes,
            properties,
        }))
    }

    async fn commit_unsubscribe(
        &mut self,
        packet_id: u16,
        mut codes: Vec<u8>,
        removed: Vec<(usize, String, Subscription)>,
    ) -> Result<Packet, Close> {
        let filters = removed.iter().map(|(_, f, _)| f.clone()).collect();
        let committed = self
            .broker
            .cluster
            .unsubscribe(&self.info.client_id, self.epoch, filters)
            .await;
        let mut properties = Properties::default();
        match committed {
            Ok(()) => {}
            Err(ClusterError::NotOwner) => return Err(self.taken_over_elsewhere()),
            Err(e) => {
                crate::metrics::cluster_refused("unsubscribe");
                tracing::info!(client_id = %self.info.client_id, error = %e, "UNSUBSCRIBE refused: the cluster did not take it");
                for (index, filter, before) in removed {
                    self.broker.subscribe(&self.session, &filter, before);
                    codes[index] = rc::UNSPECIFIED_ERROR;
                }
                if !self.protocol.is_v5() {
                    return Err(Close::new(
                        crate::disconnect::DisconnectReason::ServerInternalError,
                        None,
                        "the cluster did not take an UNSUBSCRIBE",
                    ));
                }
                properties.reason_string = self.explain(&e);
            }
        }
        Ok(Packet::UnsubAck(UnsubAck {
            packet_id,
            reason_codes: codes,
            properties,
        }))
    }

    /// The cluster refused a command of this connection's epoch: a newer registration
    /// took the client id. Noted as its node's takeover (as the registry fold would, should
    /// it come later) so the disconnect event names it and the session moves there.
    fn taken_over_elsewhere(&self) -> Close {
        let me = self.broker.cluster.node_id();
        if let Some(owner) = self
            .broker
            .cluster
            .locate_client(&self.info.client_id)
            .filter(|o| o.node != me)
        {
            self.broker.note_remote_taker(self.id, owner.node);
            self.kick_rx.send(Kick::TakenOver);
        }
        super::taken_over()
    }

    /// The Reason String of a refusal, unless the client asked for none (MQTT 5 only).
    fn explain(&self, e: &ClusterError) -> Option<String> {
        (self.protocol.is_v5() && self.problem_information).then(|| e.to_string())
    }
}

fn handed_over(filter: &str, sub: &Subscription) -> HandedOverSubscription {
    HandedOverSubscription {
        filter: filter.to_owned(),
        qos: sub.options.qos as u8,
        no_local: sub.options.no_local,
        retain_as_published: sub.options.retain_as_published,
        retain_handling: sub.options.retain_handling,
        subscription_id: sub.subscription_id,
    }
}
