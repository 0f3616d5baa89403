//! The cluster's part of routing: where a publish accepted on this node goes beyond it,
//! the forwards sent through the cluster handle, and [`Forwards`], what a publisher's
//! acknowledgement waits for. A forwarded publish is routed to this node's sessions only
//! ([`Scope::Forwarded`]), never forwarded again.
//!
//! Retained messages ride the data plane, not Raft: a retained publish (a new message or a
//! delete) is forwarded one hop to every other member, with or without interest there, and
//! each node stores it in its own retained store, so a subscription on any node finds it
//! locally. Raft would order retained updates cluster-wide, but it would put every
//! retained publish (payload included) through the leader, the log, an fsync on a majority
//! and the snapshots, for messages that are state only in the weak MQTT sense (the last
//! one on a topic wins). The data plane keeps the publish path's cost and order: per
//! publishing node the order is kept, as for any publish; two nodes updating one topic at
//! the same instant may leave different members with different last messages. A node that
//! starts or joins fetches the set one member holds and keeps what is newer than its own
//! (`BrokerHandle::restore_retained`); a delete it missed while away is not learned.

#[cfg(test)]
pub(crate) mod peers_double;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use skein_seam::{BoxFuture, ForwardError, ForwardTally, ForwardedPublish, NodeId, SharedTarget};
use smallvec::SmallVec;

use super::{Broker, SessionRef, SubEntry};
use crate::codec::QoS;
use crate::message::Message;
use crate::topic::{Group, NodeTarget, RemoteTargets, TopicTree};

/// How far a publish is routed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// Accepted on this node: its sessions, and one hop to each node with interest.
    Cluster,
    /// Forwarded by another node: this node's sessions only, as that node chose: the
    /// ordinary subscribers if `to_subscribers`, and one member of each group in `shared`.
    Forwarded {
        to_subscribers: bool,
        shared: &'a [SharedTarget],
    },
    /// Redirected from the queue of a node marked down: only to the sessions here that
    /// came from it (adopted from it, or taken over from it: see
    /// `SessionState::came_from`), through any of their subscriptions.
    Adopted(NodeId),
}

impl Scope<'_> {
    /// Whether a matching subscription gets the publish here: `group` for a shared one
    /// (`remote`: the groups a member on another node gets this time).
    pub(super) fn delivers(&self, group: Option<Group<'_>>, remote: &RemoteTargets) -> bool {
        match (self, group) {
            (Scope::Cluster, None) => true,
            (Scope::Cluster, Some(g)) => !remote.takes(g),
            (Scope::Forwarded { to_subscribers, .. }, None) => *to_subscribers,
            (Scope::Forwarded { shared, .. }, Some(g)) => shared
                .iter()
                .any(|t| t.group == g.name && t.filter == g.filter),
            (Scope::Adopted(_), _) => true,
        }
    }
}

/// The forwards of one publish, each resolving once its node accepted the message; a QoS 0
/// publish's forwards carry no answer (nobody waits for one).
#[derive(Default)]
pub struct Forwards {
    answers: SmallVec<[(NodeId, Answer); 1]>,
    /// Where the `Tallied` answers come (see [`ForwardTickets`]).
    tally: Option<Arc<ForwardTally>>,
}

enum Answer {
    Waited(BoxFuture<'static, Result<(), ForwardError>>),
    /// Answered in the tally of the publisher's read batch, as this ticket.
    Tallied(u32),
    /// Queued (or refused at once) without an answer to wait for.
    Unanswered(Result<(), ForwardError>),
}

/// What a connection hands routing so that the QoS 1/2 forwards of one read batch are
/// answered together: one [`ForwardTally`] (made at the first forward) and a ticket per
/// publish. The cluster answers a batch of the peer's with one count per run of tickets
/// instead of a channel and a future per message. A fresh value per read batch: a tally
/// is never reused (see the seam's `forward_tally`).
#[derive(Default)]
pub struct ForwardTickets {
    tally: Option<Arc<ForwardTally>>,
    next: u32,
}

impl ForwardTickets {
    /// The tally and the ticket for the next publish.
    fn next(&mut self) -> (Arc<ForwardTally>, u32) {
        if self.next == u32::MAX {
            // Never in practice (a read batch is far smaller): a new tally, not a wrap.
            *self = ForwardTickets::default();
        }
        let ticket = self.next;
        self.next += 1;
        let tally = self.tally.get_or_insert_with(ForwardTally::new).clone();
        (tally, ticket)
    }
}

impl Forwards {
    /// Adds a forward to `node` whose answer is waited for.
    pub(super) fn push_waited(
        &mut self,
        node: NodeId,
        answer: BoxFuture<'static, Result<(), ForwardError>>,
    ) {
        self.answers.push((node, Answer::Waited(answer)));
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The nodes forwarded to.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.answers.iter().map(|(node, _)| *node)
    }

    /// Waits until every node answered; the first failure, if any. Every forward is
    /// waited for: each is queued for its node whatever the others answer. Forwards
    /// answered in a tally wait for the whole tally (the read batch's other forwards were
    /// sent with them: they come back in the same batches).
    pub async fn settle(self) -> Result<(), ForwardError> {
        let mut failed = None;
        if let Some(tally) = &self.tally {
            tally.settled().await;
        }
        for (_, answer) in self.answers {
            let outcome = match answer {
                Answer::Waited(answer) => answer.await,
                Answer::Tallied(ticket) => match &self.tally {
                    Some(tally) => tally.outcome(ticket),
                    None => Ok(()),
                },
                Answer::Unanswered(outcome) => outcome,
            };
            if let Err(e) = outcome {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for Forwards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Forwards")
            .field(&self.nodes().collect::<Vec<_>>())
            .finish()
    }
}

/// Equal when sent to the same nodes.
impl PartialEq for Forwards {
    fn eq(&self, other: &Self) -> bool {
        self.nodes().eq(other.nodes())
    }
}
impl Eq for Forwards {}

impl Broker {
    /// Where a publish on `topic` goes beyond this node. Taken under the local index's read
    /// lock (`local`), so that a shared group's pick weighs this node's members as the
    /// local match then finds them. Costs one atomic load while no other node has interest.
    pub(super) fn remote_targets(
        &self,
        topic: &str,
        local: &TopicTree<SessionRef, SubEntry>,
    ) -> RemoteTargets {
        if self.remote_interest.is_empty() {
            return RemoteTargets::default();
        }
        self.remote_interest
            .targets(topic, |g| local.group_size(g.filter, g.name))
    }

    /// Sends `message` one hop to each node of `targets` and, when it is retained, to every
    /// other member (see the module docs). A QoS 1/2 message is answered in the tally of
    /// `tickets` when given, otherwise through a future per forward.
    pub(super) fn forward(
        &self,
        message: &Message,
        targets: RemoteTargets,
        tickets: Option<&mut ForwardTickets>,
    ) -> Forwards {
        let mut nodes = targets.nodes;
        if message.retain {
            for node in self.cluster.other_members() {
                if !nodes.iter().any(|t| t.node == node) {
                    nodes.push(NodeTarget {
                        node,
                        to_subscribers: false,
                        shared: Vec::new(),
                    });
                }
            }
        }
        let tally = match tickets {
            Some(tickets) if message.qos != QoS::AtMostOnce && !nodes.is_empty() => {
                Some(tickets.next())
            }
            _ => None,
        };
        let answers = nodes
            .into_iter()
            .map(|t| {
                let publish = forwarded(message, t.to_subscribers, t.shared);
                let answer = match &tally {
                    _ if message.qos == QoS::AtMostOnce => {
                        Answer::Unanswered(self.cluster.forward_unanswered(t.node, publish))
                    }
                    Some((tally, ticket)) => {
                        match self
                            .cluster
                            .forward_tallied(t.node, publish, tally, *ticket)
                        {
                            Ok(()) => Answer::Tallied(*ticket),
                            Err(e) => Answer::Unanswered(Err(e)),
                        }
                    }
                    None => Answer::Waited(self.cluster.forward(t.node, publish)),
                };
                (t.node, answer)
            })
            .collect();
        Forwards {
            answers,
            tally: tally.map(|(tally, _)| tally),
        }
    }
}

/// `message` as it travels to another node.
pub(super) fn forwarded(
    message: &Message,
    to_subscribers: bool,
    shared: Vec<SharedTarget>,
) -> ForwardedPublish {
    ForwardedPublish {
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        qos: message.qos as u8,
        retain: message.retain,
        properties: message.properties.clone(),
        received_at_ms: message.received_at_ms,
        publisher: message.publisher.clone(),
        publisher_username: message.publisher_username.clone(),
        publish_id: message.publish_id,
        to_subscribers,
        shared,
        adopted_from: None,
        for_client: None,
        possibly_delivered: false,
        routed_index: 0,
    }
}
