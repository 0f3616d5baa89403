//! Forwards held for a peer that was marked down go to the nodes that adopted its
//! sessions, not nowhere: the queue is closed and emptied, and each message is sent to
//! each adopter (this node's broker when it is one) marked `adopted_from`, so that only the
//! sessions adopted from the dead node get it there (the adopter's own subscribers had
//! their copy when it was published). A publisher still waiting for its answer gets the
//! adopters' answer: acknowledged once they wrote it.

use std::sync::Arc;

use skein_seam::{BoxFuture, BrokerHandle, ForwardError, ForwardedPublish, NodeId as SeamNodeId};

use super::queue::{Closed, HeldEntries, Waiter};
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
            .remove(&dead);
        let Some(queue) = queue else {
            return;
        };
        let held = queue.take_all(Closed::MarkedDown);
        // Every message is queued to the remote adopters, in order, before anything is
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
                        sends.push((waiter, self.send_to_adopters(dead, &adopters, p)))
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
        let outcome = if adopters.is_empty() {
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
            "forwards held for a peer marked down go to the adopters of its sessions"
        );
        let me = self.shared.id;
        self.tasks.spawn(async move {
            for (waiter, (remote, local)) in sends {
                let mut failed = None;
                if let Some(publish) = local {
                    if let Err(e) = broker.deliver_forwarded(publish).await {
                        failed = Some(ForwardError::Refused {
                            node: SeamNodeId(me),
                            detail: e.to_string(),
                        });
                    }
                }
                for answer in remote {
                    if let Err(e) = answer.await {
                        failed.get_or_insert(e);
                    }
                }
                answer(waiter, failed.map_or(Ok(()), Err));
            }
        });
    }

    /// One redirected message, queued to every remote adopter now (their answers), and
    /// the publish for this node's broker when it is an adopter too. With no adopter the
    /// dead node's sessions all ended: nobody is left to take it.
    fn send_to_adopters(
        self: &Arc<Self>,
        dead: NodeId,
        adopters: &[NodeId],
        mut publish: ForwardedPublish,
    ) -> (Vec<Answer>, Option<ForwardedPublish>) {
        publish.adopted_from = Some(SeamNodeId(dead));
        publish.to_subscribers = false;
        publish.shared.clear();
        let mut remote = Vec::with_capacity(adopters.len());
        let mut local = false;
        for adopter in adopters {
            if *adopter == self.shared.id {
                local = true;
            } else {
                remote.push(self.forward(*adopter, publish.clone()));
            }
        }
        (remote, local.then_some(publish))
    }
}

type Answer = BoxFuture<'static, Result<(), ForwardError>>;

fn answer(waiter: Option<Waiter>, outcome: Result<(), ForwardError>) {
    if let Some(to) = waiter {
        let _ = to.send(outcome);
    }
}

fn unavailable(node: NodeId, detail: &str) -> ForwardError {
    ForwardError::Unavailable {
        node: SeamNodeId(node),
        detail: detail.into(),
    }
}
