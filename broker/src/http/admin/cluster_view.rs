//! The cluster as the admin API renders it: the shape of `GET /api/v1/cluster`, also the
//! answer of a membership change.

use serde::Serialize;
use skein_seam::{ClusterOverview, MemberOverview};

/// `{"node_id", "node_name", "leader_id", "term", "commit_index", "members": [...]}`.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub node_id: u64,
    pub node_name: String,
    /// None while no leader is known (an election, or this node is cut off).
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    /// The gRPC address members dial.
    pub grpc: String,
    /// The advertised MQTT address.
    pub mqtt: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    pub reachable: bool,
    /// Since the leader last heard from it; None when unknown.
    pub last_contact_ms: Option<u64>,
}

impl From<ClusterOverview> for ClusterView {
    fn from(o: ClusterOverview) -> Self {
        ClusterView {
            node_id: o.node_id.0,
            node_name: o.node_name,
            leader_id: o.leader_id.map(|l| l.0),
            term: o.term,
            commit_index: o.commit_index,
            members: o.members.into_iter().map(MemberView::from).collect(),
        }
    }
}

impl From<MemberOverview> for MemberView {
    fn from(m: MemberOverview) -> Self {
        MemberView {
            id: m.record.id.0,
            name: m.record.name,
            grpc: m.record.grpc,
            mqtt: m.record.mqtt,
            role: if m.voter { "voter" } else { "learner" },
            reachable: m.reachable,
            last_contact_ms: m.last_contact_ms,
        }
    }
}
