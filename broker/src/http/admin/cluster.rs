//! `GET /api/v1/cluster`: the cluster as this node sees it (its id, name, term and commit
//! index), with the members as the leader sees them (their reachability is known there).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use skein_seam::{ClusterOverview, MemberOverview};

use super::ApiError;
use crate::broker::Broker;

#[derive(Debug, Serialize, PartialEq)]
pub struct ClusterView {
    pub node_id: u64,
    pub node_name: String,
    /// Null while no leader is known.
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub grpc: String,
    pub mqtt: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    pub reachable: bool,
    /// Null when unknown.
    pub last_contact_ms: Option<u64>,
}

impl From<ClusterOverview> for ClusterView {
    fn from(o: ClusterOverview) -> ClusterView {
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
    fn from(m: MemberOverview) -> MemberView {
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

#[tracing::instrument(name = "admin_cluster", skip_all)]
pub async fn overview(State(broker): State<Arc<Broker>>) -> Result<Json<ClusterView>, ApiError> {
    match broker.cluster.overview().await {
        Ok(overview) => Ok(Json(overview.into())),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_seam::{NodeId, NodeRecord};

    #[test]
    fn the_overview_renders_the_documented_fields() {
        let view = ClusterView::from(ClusterOverview {
            node_id: NodeId(2),
            node_name: "skein-2".into(),
            leader_id: Some(NodeId(1)),
            term: 3,
            commit_index: 42,
            members: vec![MemberOverview {
                record: NodeRecord {
                    id: NodeId(1),
                    name: "skein-1".into(),
                    grpc: "10.0.0.1:7070".into(),
                    mqtt: "10.0.0.1:1883".into(),
                },
                voter: false,
                reachable: true,
                last_contact_ms: None,
            }],
        });
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "node_id": 2, "node_name": "skein-2", "leader_id": 1, "term": 3,
                "commit_index": 42,
                "members": [{"id": 1, "name": "skein-1", "grpc": "10.0.0.1:7070",
                    "mqtt": "10.0.0.1:1883", "role": "learner", "reachable": true,
                    "last_contact_ms": null}]
            })
        );
    }
}
