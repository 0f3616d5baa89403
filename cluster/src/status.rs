//! [`ClusterStatus`]: what a member knows of the cluster (`Cluster.Status`, and the broker's
//! `GET /api/v1/cluster`).

use openraft::ServerState;
use skein_proto::v1 as pb;

use crate::error::{ClusterError, Result};
use crate::metrics::REACHABLE_HEARTBEATS;
use crate::peers::cluster_client;
use crate::shared::Shared;
use crate::types::{Node, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub node: Node,
    pub role: Role,
    /// Heard from within a few heartbeats. Known for every member on the leader; on another
    /// node only for itself and the leader (`None` for the rest).
    pub reachable: Option<bool>,
    /// Milliseconds since this node last heard from the member (`None`: not since start).
    pub last_contact_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub node_name: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub is_leader: bool,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// The last entry removed from the log by compaction.
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

impl Shared {
    /// See `ClusterNode::leader_status`.
    pub(crate) async fn leader_status(&self) -> Result<ClusterStatus> {
        let local = self.cluster_status();
        if local.is_leader {
            return Ok(local);
        }
        let wait = self.settings.proposal_timeout();
        let leader = local.leader_id.ok_or(ClusterError::NoLeader(wait))?;
        let addr = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.grpc.clone())
            .filter(|a| !a.is_empty())
            .ok_or(ClusterError::NoLeader(wait))?;
        let channel = self.peers.channel(leader, &addr)?;
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(wait);
        let rpc_error = |status| ClusterError::Rpc {
            call: "Status",
            addr: addr.clone(),
            status: Box::new(status),
        };
        let response = tokio::time::timeout(wait, cluster_client(channel).status(request))
            .await
            .map_err(|_| ClusterError::Timeout(wait))?
            .map_err(rpc_error)?;
        Ok(from_pb(response.into_inner()))
    }
}

fn from_pb(s: pb::StatusResponse) -> ClusterStatus {
    let is_leader = s.state() == pb::ServerState::Leader;
    ClusterStatus {
        node_id: s.node_id,
        node_name: s.node_name,
        leader_id: s.leader_id,
        term: s.term,
        is_leader,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_log_index: s.last_log_index,
        purged_index: s.purged_index,
        members: s
            .members
            .into_iter()
            .map(|m| MemberStatus {
                id: m.id,
                role: if m.role() == pb::Role::Learner {
                    Role::Learner
                } else {
                    Role::Voter
                },
                node: m.node.map(Into::into).unwrap_or_default(),
                reachable: Some(m.reachable),
                last_contact_ms: m.last_contact_ms,
            })
            .collect(),
    }
}

impl Shared {
    pub(crate) fn cluster_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let is_leader = m.state == ServerState::Leader;
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let reachable_within =
            std::time::Duration::from_millis(self.settings.heartbeat_ms) * REACHABLE_HEARTBEATS;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let since = self.peers.since_contact(*id);
                let reachable = if *id == self.id {
                    Some(true)
                } else if is_leader || m.current_leader == Some(*id) {
                    Some(since.is_some_and(|d| d <= reachable_within))
                } else {
                    None
                };
                MemberStatus {
                    id: *id,
                    node: node.clone(),
                    role: if voters.contains(id) {
                        Role::Voter
                    } else {
                        Role::Learner
                    },
                    reachable,
                    last_contact_ms: since
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            node_name: self.node.name.clone(),
            leader_id: m.current_leader,
            term: m.current_term,
            is_leader,
            commit_index: self.commit.get(),
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    pub(crate) fn status(&self) -> pb::StatusResponse {
        let s = self.cluster_status();
        let state = match self.raft.metrics().borrow().state {
            ServerState::Leader => pb::ServerState::Leader,
            ServerState::Follower => pb::ServerState::Follower,
            ServerState::Candidate => pb::ServerState::Candidate,
            ServerState::Learner => pb::ServerState::Learner,
            ServerState::Shutdown => pb::ServerState::Shutdown,
        };
        pb::StatusResponse {
            node_id: s.node_id,
            node_name: s.node_name,
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
            purged_index: s.purged_index,
            state: state as i32,
            members: s
                .members
                .into_iter()
                .map(|m| pb::MemberStatus {
                    id: m.id,
                    node: Some(m.node.into()),
                    role: match m.role {
                        Role::Voter => pb::Role::Voter,
                        Role::Learner => pb::Role::Learner,
                    } as i32,
                    reachable: m.reachable.unwrap_or(false),
                    last_contact_ms: m.last_contact_ms,
                    matched_index: None,
                })
                .collect(),
        }
    }
}
