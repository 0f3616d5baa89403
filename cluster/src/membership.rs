//! Who is in the cluster: static bootstrap from `--peers`, joining through any member,
//! keeping this node's record current, and removing members.
//!
//! - Bootstrap: with `--peers 1@host:7070,2@host:7071,...` (or none and no `--join`: a
//!   cluster of one), the node with the lowest id initializes the Raft group with every peer as a voter, and only
//!   when its log and vote are empty (its first start). The others wait to be contacted; a
//!   restarted node rejoins with the state in its data directory.
//! - Join (`--join HOST:PORT`, any member): the leader adds the node as a learner, waits
//!   until it has caught up, then makes it a voter ([`admit`]).
//! - Records: the bootstrap node knows the others only by their gRPC address, so each member
//!   sends its full record (name, addresses) to the leader until the membership holds it.
//! - Remove ([`dismiss`]): a voter or learner leaves the membership; the rest carry on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, ServerState};
use skein_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::convert::FromPb;
use crate::error::{ClusterError, Result};
use crate::log_store::LogStore;
use crate::peers::cluster_client;
use crate::shared::Shared;
use crate::types::{Membership, Node, NodeId, Raft};

/// One `--peers` entry: a member's id and the gRPC address the others dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub grpc: String,
}

/// Parses `1@host:7070,2@host:7071` (spaces around entries allowed; empty: no peers).
pub fn parse_peers(spec: &str) -> Result<Vec<Peer>> {
    let invalid = |reason: String| ClusterError::InvalidPeers {
        spec: spec.to_owned(),
        reason,
    };
    let mut peers: Vec<Peer> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| invalid(format!("{entry:?} is not ID@HOST:PORT")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|e| invalid(format!("{entry:?}: node id {id:?}: {e}")))?;
        let addr = addr.trim();
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid(format!("{entry:?}: {addr:?} is not HOST:PORT")));
        }
        if peers.iter().any(|p| p.id == id) {
            return Err(invalid(format!("node id {id} appears twice")));
        }
        peers.push(Peer {
            id,
            grpc: addr.to_owned(),
        });
    }
    Ok(peers)
}

/// Initializes the Raft group if this node is the one to do it (see the module docs).
pub(crate) async fn bootstrap(
    raft: &Raft,
    log: &mut LogStore,
    me: NodeId,
    node: &Node,
    peers: &[Peer],
) -> Result<()> {
    let lowest = peers.iter().map(|p| p.id).min().unwrap_or(me);
    if lowest != me {
        return Ok(());
    }
    let state = log.get_log_state().await?;
    let vote = log.read_vote().await?;
    if state.last_log_id.is_some() || vote.is_some() {
        tracing::info!(
            node = me,
            "restarting with the Raft state in the data directory"
        );
        return Ok(());
    }
    let mut members: BTreeMap<NodeId, Node> = peers
        .iter()
        .map(|p| {
            let record = Node {
                grpc: p.grpc.clone(),
                ..Node::default()
            };
            (p.id, record)
        })
        .collect();
    members.insert(me, node.clone());
    tracing::info!(node = me, members = ?members.keys().collect::<Vec<_>>(), "initializing the cluster");
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        // Another path initialized it meanwhile (never with a fresh log, but harmless).
        Err(RaftError::APIError(e)) => {
            tracing::info!(node = me, error = %e, "cluster already initialized");
            Ok(())
        }
        Err(RaftError::Fatal(e)) => Err(e.into()),
    }
}

/// Where to send a membership change when this node is not the leader.
fn not_leader(shared: &Shared) -> Option<pb::NotLeader> {
    let m = shared.raft.metrics().borrow().clone();
    if m.state == ServerState::Leader {
        return None;
    }
    let leader = m
        .current_leader
        .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
    Some(pb::NotLeader {
        leader_id: m.current_leader,
        leader: leader.map(Into::into),
    })
}

/// openraft's answer to a membership change, as ours.
fn changed(
    result: std::result::Result<
        openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, Node>>,
    >,
) -> Result<std::result::Result<Membership, pb::NotLeader>> {
    match result {
        Ok(response) => match response.membership {
            Some(membership) => Ok(Ok(membership)),
            None => Err(ClusterError::Membership(
                "the change committed without a membership".into(),
            )),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Ok(Err(pb::NotLeader {
            leader_id: f.leader_id,
            leader: f.leader_node.map(Into::into),
        })),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        ))) => Err(ClusterError::MembershipBusy),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(ClusterError::Membership(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(e.into()),
    }
}

/// A membership request that may succeed if sent again shortly: another change was in
/// progress (here or, answered over gRPC as `UNAVAILABLE`, on the leader).
pub(crate) fn is_busy(e: &ClusterError) -> bool {
    match e {
        ClusterError::MembershipBusy => true,
        ClusterError::Rpc { status, .. } => status.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

/// On the leader: makes `id` a voter with record `node` (see the module docs).
pub(crate) async fn admit(
    shared: &Shared,
    id: NodeId,
    node: Node,
) -> Result<std::result::Result<Membership, pb::NotLeader>> {
    if let Some(elsewhere) = not_leader(shared) {
        return Ok(Err(elsewhere));
    }
    let _one_at_a_time = shared.membership_changes.lock().await;
    let raft = &shared.raft;
    let membership = shared.membership();
    let is_voter = membership.voter_ids().any(|v| v == id);
    let record = membership.get_node(&id);
    if is_voter {
        if record == Some(&node) {
            return Ok(Ok(membership));
        }
        tracing::info!(node = id, record = %node, "updating a member's record");
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
        return changed(raft.change_membership(change, false).await);
    }
    if record != Some(&node) {
        tracing::info!(node = id, record = %node, "adding a learner");
        if let Err(elsewhere) = changed(raft.add_learner(id, node, false).await)? {
            return Ok(Err(elsewhere));
        }
    }
    let target = raft.metrics().borrow().last_log_index;
    let wait = shared.settings.proposal_timeout() * 6;
    let caught_up = raft
        .wait(Some(wait))
        .metrics(
            |m| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .and_then(|l| l.as_ref().map(|l| l.index));
                matched >= target
            },
            "the learner caught up",
        )
        .await;
    if caught_up.is_err() {
        return Err(ClusterError::Timeout(wait));
    }
    tracing::info!(node = id, "promoting a caught-up learner to voter");
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    changed(raft.change_membership(change, false).await)
}

/// On the leader: removes member `id` (voter or learner); removing a non-member is a no-op.
pub(crate) async fn dismiss(
    shared: &Shared,
    id: NodeId,
) -> Result<std::result::Result<Membership, pb::NotLeader>> {
    if let Some(elsewhere) = not_leader(shared) {
        return Ok(Err(elsewhere));
    }
    let _one_at_a_time = shared.membership_changes.lock().await;
    let raft = &shared.raft;
    let membership = shared.membership();
    let change = if membership.voter_ids().any(|v| v == id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if membership.get_node(&id).is_some() {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return Ok(Ok(membership));
    };
    tracing::info!(node = id, "removing a member");
    let result = changed(raft.change_membership(change, false).await)?;
    if result.is_ok() {
        shared.peers.retain(|n| n != id);
    }
    Ok(result)
}

/// How many times a membership request follows a "not the leader, ask X" answer.
const MAX_REDIRECTS: usize = 3;

/// A membership request for the leader.
enum Request {
    Join(pb::JoinRequest),
    Remove(pb::RemoveRequest),
}

impl Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Join(_) => "Join",
            Request::Remove(_) => "Remove",
        }
    }

    /// Sends it to one member: the committed membership, or who leads instead.
    async fn send(
        &self,
        mut client: skein_proto::v1::cluster_client::ClusterClient<tonic::transport::Channel>,
    ) -> std::result::Result<std::result::Result<pb::Membership, pb::NotLeader>, tonic::Status>
    {
        let (done, not_leader) = match self {
            Request::Join(r) => match client.join(r.clone()).await?.into_inner().outcome {
                Some(pb::join_response::Outcome::Joined(m)) => (Some(m), None),
                Some(pb::join_response::Outcome::NotLeader(n)) => (None, Some(n)),
                None => (None, None),
            },
            Request::Remove(r) => match client.remove(*r).await?.into_inner().outcome {
                Some(pb::remove_response::Outcome::Removed(m)) => (Some(m), None),
                Some(pb::remove_response::Outcome::NotLeader(n)) => (None, Some(n)),
                None => (None, None),
            },
        };
        match (done, not_leader) {
            (Some(m), _) => Ok(Ok(m)),
            (None, Some(n)) => Ok(Err(n)),
            (None, None) => Err(tonic::Status::internal(format!(
                "{} answered without an outcome",
                self.name()
            ))),
        }
    }
}

/// Sends a membership request to `addr`, following leader hints, until one commits it.
async fn ask_leader(
    shared: &Shared,
    mut addr: String,
    request: Request,
    deadline: tokio::time::Instant,
) -> Result<Membership> {
    for _ in 0..=MAX_REDIRECTS {
        let client = cluster_client(shared.peers.uncached(&addr)?);
        let answer = tokio::time::timeout_at(deadline, request.send(client))
            .await
            .map_err(|_| ClusterError::Join {
                addr: addr.clone(),
                reason: format!("{} not answered in time", request.name()),
            })?;
        match answer {
            Ok(Ok(membership)) => return membership.into_raft(),
            Ok(Err(pb::NotLeader {
                leader: Some(leader),
                ..
            })) if !leader.grpc.is_empty() => addr = leader.grpc,
            Ok(Err(_)) => return Err(ClusterError::NoLeader(shared.settings.proposal_timeout())),
            Err(status) => {
                return Err(ClusterError::Rpc {
                    call: request.name(),
                    addr,
                    status: Box::new(status),
                })
            }
        }
    }
    Err(ClusterError::Join {
        addr,
        reason: format!("still not the leader after {MAX_REDIRECTS} redirects"),
    })
}

/// Asks the member at `addr` (or the leader it points to) to make this node a voter with
/// its current record.
pub(crate) async fn join_through(shared: &Shared, addr: String) -> Result<Membership> {
    let request = Request::Join(pb::JoinRequest {
        node_id: shared.id,
        node: Some(shared.node.clone().into()),
    });
    // A join waits for this node to catch up: give it the leader's catch-up bound and more.
    let deadline = tokio::time::Instant::now() + shared.settings.proposal_timeout() * 8;
    ask_leader(shared, addr, request, deadline).await
}

/// Asks the leader (at `addr`) to remove member `id`.
pub(crate) async fn remove_through(
    shared: &Shared,
    addr: String,
    id: NodeId,
) -> Result<Membership> {
    let request = Request::Remove(pb::RemoveRequest { node_id: id });
    let deadline = tokio::time::Instant::now() + shared.settings.proposal_timeout() * 2;
    ask_leader(shared, addr, request, deadline).await
}

/// Until the membership holds this node as a voter with its own record: joins through
/// `join` (when not a member yet) or sends the record to the leader (when it is stale).
/// A node that is not a member and has no `--join` waits to be added (static peers).
pub(crate) async fn keep_record(
    shared: Arc<Shared>,
    join: Option<String>,
    shutdown: CancellationToken,
) {
    let mut metrics = shared.raft.metrics();
    let mut backoff = Duration::from_millis(200);
    loop {
        let m = metrics.borrow_and_update().clone();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == shared.id);
        let record = membership.get_node(&shared.id);
        if is_voter && record == Some(&shared.node) {
            tracing::debug!(node = shared.id, "this node is a voter with its own record");
            return;
        }
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.grpc.clone())
            .filter(|a| !a.is_empty());
        let target = match (record.is_some(), leader_addr) {
            (true, Some(leader)) => Some(leader),
            _ => join.clone(),
        };
        if record.is_some() && m.current_leader == Some(shared.id) {
            // This node leads (a cluster of one restarted on another address, say): update
            // its own record here rather than dial the stale address the record holds.
            match admit(&shared, shared.id, shared.node.clone()).await {
                Ok(Ok(_)) => {
                    // Committed: wait (briefly) for this node to see the new membership.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        changed = metrics.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
                Ok(Err(_)) => {}
                Err(e) => {
                    tracing::info!(node = shared.id, error = %e, "updating this node's record failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        }
        let Some(addr) = target else {
            // Not a member and nowhere to ask: wait to be added (or for a leader to appear).
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
            continue;
        };
        match join_through(&shared, addr.clone()).await {
            Ok(_) => {
                backoff = Duration::from_millis(200);
                // Committed: wait (briefly) for this node to see the new membership.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            Err(e) => {
                // Concurrent membership changes are refused while one is in progress
                // (members publishing their records at start): expected, retried.
                if is_busy(&e) {
                    tracing::info!(node = shared.id, %addr, error = %e, "membership change refused for now; retrying");
                } else {
                    tracing::warn!(node = shared.id, %addr, error = %e, "joining the cluster failed; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_dns_names_and_spaces() {
        let peers = parse_peers("1@skein-0.skein:7070, 2@127.0.0.1:7071 ,3@[::1]:7072").unwrap();
        assert_eq!(
            peers,
            [
                Peer {
                    id: 1,
                    grpc: "skein-0.skein:7070".into()
                },
                Peer {
                    id: 2,
                    grpc: "127.0.0.1:7071".into()
                },
                Peer {
                    id: 3,
                    grpc: "[::1]:7072".into()
                },
            ]
        );
        assert!(parse_peers("").unwrap().is_empty());
    }

    #[test]
    fn bad_peer_lists_say_what_is_wrong() {
        for (spec, says) in [
            ("1@a:1,1@b:2", "appears twice"),
            ("a@host:1", "node id"),
            ("1host:1", "ID@HOST:PORT"),
            ("1@host", "HOST:PORT"),
            ("1@:7070", "HOST:PORT"),
            ("1@host:99999", "HOST:PORT"),
        ] {
            let e = parse_peers(spec).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
