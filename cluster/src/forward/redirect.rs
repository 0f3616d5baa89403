//! Forwards held for a peer that was marked down go to the nodes that took its sessions
//! over, not nowhere: the queue is closed and emptied, and each message is sent to every
//! member that is not marked down (this node's broker included) marked `adopted_from`, so
//! that only the sessions that came from the dead node get it there (each node's own
//! subscribers had their copy when it was published). Those are the sessions adopted from
//! it at the mark, and those whose clients connected elsewhere shortly before (their
//! hand-over from it failed, still waits for it, or was made while this queue still held
//! forwards for it): a message routed to the dead node before such a
//! takeover applied here is theirs too, and the adopters alone do not hold them (the
//! chaos suite's seed 42 lost messages for every subscriber that left a SIGKILLed node
//! before its mark: held for it, redirected to no adopter, acknowledged). A publisher
//! still waiting for its answer gets the receivers' answer: acknowledged once they wrote
//! it. When the mark left the dead node sessions of its own (registered there after the
//! leader last heard from it), each held message is also queued for the dead node again,
//! and the answer waits for it too (see [`Forwarder::keeps_sessions`]).

use std::sync::Arc;

use skein_seam::{BoxFuture, BrokerHandle, ForwardError, ForwardedPublish, NodeId as SeamNodeId};

use super::queue::{Closed, HeldEntries};
use super::runs::Ticket;
use super::{wire, Forwarder};
use crate::metrics;
use crate::types::NodeId;

impl Forwarder {
    /// Empties the queue of `dead` (marked down) into forwards to `adopters` (see the
    /// module docs). Nothing happens when no queue to it exists.
    pub(crate) fn redirect(
        self: &Arc<Self>,
        dead: NodeId,
        adopters: Vec<NodeId>,
        broker: Arc<dyn BrokerHandle>,
    ) {
        let queue = self
            .queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dead);
        let Some(queue) = queue else {
            return;
        };
        let held = queue.take_all(Closed::MarkedDown);
        let receivers = self.receivers(dead, &adopters);
        let kept = self.keeps_sessions(dead);
        // Every message is queued to the remote receivers, in order, before anything is
        // awaited; the local deliveries are then made in the same order.
        let mut sends = Vec::new();
        let mut unusable = 0usize;
        for HeldEntries {
            entries,
            waiters,
            sent,
        } in held
        {
            let mut waiters = waiters.into_iter();
            for publish in wire::read_batch_entries(entries) {
                let waiter = waiters.next().flatten();
                match publish {
                    Ok(mut p) => {
                        // The dead node may have delivered what it was sent before it went.
                        p.possibly_delivered |= sent;
                        let again = kept.then(|| self.forward(dead, p.clone()));
                        let redirected = self.send_to_receivers(dead, &receivers, p);
                        sends.push((waiter, redirected, again))
                    }
                    Err(e) => {
                        unusable += 1;
                        tracing::warn!(peer = dead, error = %e, "a message held for a peer marked down could not be read back; dropped");
                        answer(waiter, Err(unavailable(dead, "could not be redirected")));
                    }
                }
            }
            // More waiters than entries: never from our own writer.
            for waiter in waiters.flatten() {
                answer(Some(waiter), Err(unavailable(dead, "lost in the redirect")));
            }
        }
        let redirected = sends.len();
        let outcome = if receivers.is_empty() {
            "no_adopter"
        } else {
            "redirected"
        };
        metrics::forwards_redirected(outcome, redirected);
        metrics::forwards_redirected("invalid", unusable);
        tracing::info!(
            peer = dead,
            messages = redirected,
            ?adopters,
            ?receivers,
            sent_again_to_it = kept,
            "forwards held for a peer marked down go to the adopters of its sessions"
        );
        let me = self.shared.id;
        self.tasks.spawn(async move {
            for (waiter, (remote, local), again) in sends {
                let mut failed = None;
                if let Some(publish) = local {
                    if let Err(e) = broker.deliver_forwarded(publish).await {
                        failed = Some(ForwardError::Refused {
                            node: SeamNodeId(me),
                            detail: e.to_string(),
                        });
                    }
                }
                for answer in remote.into_iter().chain(again) {
                    if let Err(e) = answer.await {
                        failed.get_or_insert(e);
                    }
                }
                answer(waiter, failed.map_or(Ok(()), Err));
            }
        });
    }

    /// Whether the mark left `dead` owning persistent sessions with subscriptions: those
    /// it registered after the leader last heard from it (it ran then, see the registry's
    /// `node_down.rs`), or with no live member to adopt them. A message held for it may be
    /// theirs, and no other node holds them: it is queued for `dead` again (it gets it
    /// when it answers, as it gets what is routed to them from now on), and its
    /// publisher's answer waits for that too. Without this, such a message went only to
    /// the members for the sessions that came from `dead`, reached none of the ones it
    /// kept, and was acknowledged (the chaos suite's seed 42: a node resumed from a 3 s
    /// SIGSTOP read a waiting CONNECT, registered it, and was marked down 0.3 s later
    /// with three messages for that client still in a peer's queue for it).
    fn keeps_sessions(&self, dead: NodeId) -> bool {
        self.shared.view.read(|r| {
            r.clients().any(|(_, e)| {
                e.owner.node == dead && e.session_expiry_secs > 0 && !e.subscriptions.is_empty()
            })
        })
    }

    /// The nodes a message held for `dead` is redirected to: its adopters, and every
    /// other member not marked down, this one included (see the module docs). Sent
    /// nowhere else, it would reach no session that left the dead node by a takeover.
    fn receivers(&self, dead: NodeId, adopters: &[NodeId]) -> Vec<NodeId> {
        let down = self.shared.view.read(|r| r.down_nodes().clone());
        let mut receivers: Vec<NodeId> = adopters.to_vec();
        let members = self
            .shared
            .other_members()
            .into_iter()
            .map(|(id, _)| id)
            .chain(std::iter::once(self.shared.id));
        for node in members {
            if node != dead && !down.contains(&node) && !receivers.contains(&node) {
                receivers.push(node);
            }
        }
        receivers.sort_unstable();
        receivers
    }

    /// One redirected message, queued to every remote receiver now (their answers), and
    /// the publish for this node's broker when it is one. With no receiver (no member
    /// left) nobody is left to take it.
    fn send_to_receivers(
        self: &Arc<Self>,
        dead: NodeId,
        receivers: &[NodeId],
        mut publish: ForwardedPublish,
    ) -> (Vec<Answer>, Option<ForwardedPublish>) {
        publish.adopted_from = Some(SeamNodeId(dead));
        publish.to_subscribers = false;
        publish.shared.clear();
        let mut remote = Vec::with_capacity(receivers.len());
        let mut local = false;
        for receiver in receivers {
            if *receiver == self.shared.id {
                local = true;
            } else {
                remote.push(self.forward(*receiver, publish.clone()));
            }
        }
        (remote, local.then_some(publish))
    }
}

type Answer = BoxFuture<'static, Result<(), ForwardError>>;

fn answer(waiter: Option<Ticket>, outcome: Result<(), ForwardError>) {
    if let Some(ticket) = waiter {
        ticket.answer(outcome);
    }
}

fn unavailable(node: NodeId, detail: &str) -> ForwardError {
    ForwardError::Unavailable {
        node: SeamNodeId(node),
        detail: detail.into(),
    }
}
