//! The data plane's sending side: [`Forwarder`], one bounded queue and one long-lived
//! `Forward.Publish` stream per peer this node forwards to, and the receiving side
//! (`receiver`, the `Forward` service).
//!
//! - `forward_tallied` queues the message synchronously, so the order of calls is the
//!   order the peer delivers in, and counts it in the caller's tally (see the seam's
//!   `ForwardTally`): the peer's acknowledgement of a batch answers the runs of tickets in
//!   it together (`runs`), or, after `ack_timeout_ms`, tells the caller the peer is
//!   unavailable while the message stays queued for it. The timeout is the queue's: a task
//!   per queue ticks ten times per timeout and answers the runs that waited too long, so a
//!   forward costs neither a timer, a channel nor a clock read of its own. `forward` is
//!   the same with a tally of its own and a future.
//! - The queue holds what waits and what was sent but not acknowledged, bounded in
//!   messages and bytes; only a forward that would exceed a bound is refused
//!   (`QueueFull`) and counted. A broken stream, or a peer answering RETRY_LATER, costs a
//!   reconnect with backoff, not a message: the unacknowledged batches are sent again and
//!   the peer, which remembers how far each sender's stream was delivered, acknowledges
//!   what it has without delivering it twice.
//! - Batches carry as many waiting messages as fit (up to `batch_messages` /
//!   `batch_bytes`), and up to `window_batches` are in flight: while the peer delivers one
//!   batch, the messages that arrive meanwhile form the next. That is where cross-node
//!   throughput comes from.
//! - Backpressure: a publisher whose forwards nobody waits for (QoS 0) asks `room` after
//!   each read batch and, while the peer's queue holds more than half its bounds, waits
//!   (up to `ack_timeout_ms`) before reading more; only past the bound are forwards dropped.
//! - A peer that leaves the membership has its queue closed: the waiting callers are told
//!   it is unavailable.
//! - The stream runs on a connection of its own, not the Raft channel, so a busy data
//!   plane does not delay heartbeats.
//! - A peer marked down has what its queue held sent to every live member, for the
//!   sessions that came from it there (adopted, or taken over while it was away:
//!   `redirect`).
//! - Retained messages: a node that starts or joins fetches the set one member holds
//!   (`retained_sync`).

mod encoded;
mod queue;
mod receiver;
mod redirect;
mod retained_sync;
mod runs;
mod sender;
pub(crate) mod wire;

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use skein_seam::{BoxFuture, ForwardError, ForwardTally, ForwardedPublish};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::shared::Shared;
use crate::types::NodeId;
use queue::PeerQueue;

pub(crate) use receiver::ForwardService;
pub(crate) use retained_sync::run as fetch_retained;

/// The per-peer queues of a member, created as peers are first forwarded to.
pub(crate) struct Forwarder {
    shared: Arc<Shared>,
    queues: RwLock<PeerQueues>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Forwarder {
    pub(crate) fn new(
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            shared,
            queues: RwLock::new(PeerQueues::default()),
            shutdown,
            tasks,
        })
    }

    /// See [`crate::ClusterNode::forward`].
    pub(crate) fn forward(
        self: &Arc<Self>,
        node: NodeId,
        publish: ForwardedPublish,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        // The timeout counts from here, not from the first poll (the queue notes when):
        // a caller waiting for many forwards in turn waits it once, not once per forward.
        let tally = ForwardTally::new();
        let queued = self.forward_tallied(node, publish, &tally, 0);
        Box::pin(async move {
            queued?;
            tally.settled().await;
            tally.outcome(0)
        })
    }

    /// See [`crate::ClusterNode::forward_tallied`].
    pub(crate) fn forward_tallied(
        self: &Arc<Self>,
        node: NodeId,
        publish: ForwardedPublish,
        tally: &Arc<ForwardTally>,
        ticket: u32,
    ) -> Result<(), ForwardError> {
        let routed = self.shared.routed_up_to();
        self.queue(node)?
            .push_routed(&publish, tally, ticket, routed)
    }

    /// See [`crate::ClusterNode::forward_room`].
    pub(crate) fn room(&self, node: NodeId) -> Option<BoxFuture<'static, bool>> {
        // Asked after every QoS 0 forward: looked at under the read lock, the queue's
        // `Arc` cloned only when the caller has to wait.
        let queue = {
            let queues = self.read();
            let queue = queues.get(node)?;
            if queue.has_room() {
                return None;
            }
            queue.clone()
        };
        queue.metrics.waited_for_room();
        let bound = self.shared.settings.forward.ack_timeout();
        Some(Box::pin(async move {
            tokio::time::timeout(bound, queue.room()).await.is_ok()
        }))
    }

    /// See [`crate::ClusterNode::forward_unanswered`].
    pub(crate) fn forward_unanswered(
        self: &Arc<Self>,
        node: NodeId,
        publish: ForwardedPublish,
    ) -> Result<(), ForwardError> {
        let routed = self.shared.routed_up_to();
        self.queue(node)?.push_unanswered_routed(&publish, routed)
    }

    /// The queue of `node`, made (with its sender task) on first use.
    fn queue(self: &Arc<Self>, node: NodeId) -> Result<Arc<PeerQueue>, ForwardError> {
        let unavailable = |detail: &str| ForwardError::Unavailable {
            node: skein_seam::NodeId(node),
            detail: detail.into(),
        };
        if let Some(queue) = self.read().get(node) {
            return Ok(queue.clone());
        }
        if node == self.shared.id {
            return Err(unavailable("a node does not forward to itself"));
        }
        if self.shutdown.is_cancelled() {
            return Err(unavailable("this node is shutting down"));
        }
        if !self.shared.is_member(node) {
            return Err(unavailable("it is not a member of the cluster"));
        }
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(node) {
            return Ok(queue.clone());
        }
        // Random, and never 0 (a receiver's "no stream yet").
        let stream_id = RandomState::new().hash_one((self.shared.id, node)) | 1;
        let queue = Arc::new(PeerQueue::new(
            node,
            stream_id,
            self.shared.settings.forward.clone(),
        ));
        queues.insert(node, queue.clone());
        drop(queues);
        tracing::debug!(peer = node, stream_id, "forward queue created");
        let expiring = queue.clone();
        let ack_timeout = self.shared.settings.forward.ack_timeout();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let every = (ack_timeout / queue::TICKS_PER_TIMEOUT).max(Duration::from_millis(1));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if expiring.tick(ack_timeout) {
                            return;
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        let this = self.clone();
        let task_queue = queue.clone();
        self.tasks.spawn(async move {
            sender::run(
                task_queue.clone(),
                this.shared.clone(),
                this.shutdown.clone(),
            )
            .await;
            let mut queues = this.queues.write().unwrap_or_else(|e| e.into_inner());
            if queues
                .get(node)
                .is_some_and(|q| Arc::ptr_eq(q, &task_queue))
            {
                queues.remove(node);
            }
        });
        Ok(queue)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, PeerQueues> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queues by peer: a few members, so a list scanned in place of a map. Looked up twice
/// per forwarded publish (the forward, then the QoS 0 room check): std's SipHash of the
/// node id was about 300 instructions of each forward, the scan is a few compares.
#[derive(Default)]
pub(crate) struct PeerQueues(Vec<(NodeId, Arc<PeerQueue>)>);

impl PeerQueues {
    fn get(&self, node: NodeId) -> Option<&Arc<PeerQueue>> {
        self.0.iter().find(|(n, _)| *n == node).map(|(_, q)| q)
    }

    /// Adds the queue of `node`, replacing any it had.
    fn insert(&mut self, node: NodeId, queue: Arc<PeerQueue>) {
        self.remove(node);
        self.0.push((node, queue));
    }

    pub(crate) fn remove(&mut self, node: NodeId) -> Option<Arc<PeerQueue>> {
        let at = self.0.iter().position(|(n, _)| *n == node)?;
        Some(self.0.swap_remove(at).1)
    }
}

#[cfg(test)]
mod peer_queues_tests {
    use super::*;
    use crate::settings::ForwardSettings;

    fn queue(peer: NodeId) -> Arc<PeerQueue> {
        Arc::new(PeerQueue::new(peer, 1, ForwardSettings::default()))
    }

    #[test]
    fn queues_are_found_replaced_and_removed_by_peer() {
        let mut queues = PeerQueues::default();
        assert!(queues.get(2).is_none());
        let (two, three, again) = (queue(2), queue(3), queue(2));
        queues.insert(2, two.clone());
        queues.insert(3, three.clone());
        assert!(Arc::ptr_eq(queues.get(2).unwrap(), &two));
        assert!(Arc::ptr_eq(queues.get(3).unwrap(), &three));
        queues.insert(2, again.clone());
        assert!(Arc::ptr_eq(queues.get(2).unwrap(), &again), "replaced");
        assert!(Arc::ptr_eq(&queues.remove(3).unwrap(), &three));
        assert!(queues.get(3).is_none() && queues.remove(3).is_none());
        assert!(
            Arc::ptr_eq(queues.get(2).unwrap(), &again),
            "the others stay"
        );
    }
}
