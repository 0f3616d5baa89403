//! `DELETE /api/v1/cluster/members/{id}`: removes a member from the cluster at runtime (the
//! other members keep running). Any member takes the request; the cluster hands it to the
//! leader.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use skein_seam::{ClusterOverview, NodeId};

use super::cluster::ClusterView;
use super::ApiError;
use crate::broker::Broker;

/// A removal that has not committed by then is answered 503: the cluster lacks a quorum,
/// or it is busy with another change.
const REMOVAL_DEADLINE: Duration = Duration::from_secs(10);
/// How long the answer waits for this node's view to show the committed removal (a
/// follower applies it a moment after the leader); the removal itself is done by then.
const SETTLE: Duration = Duration::from_secs(2);
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Removes member `{id}` and answers 200 with the membership that results (the shape of
/// `GET /api/v1/cluster`); 404 when no such member, 503 without a leader or quorum.
#[tracing::instrument(name = "admin_remove_member", skip_all, fields(node))]
pub async fn remove(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ClusterView>, ApiError> {
    let id = member_id(path)?;
    tracing::Span::current().record("node", id.0);
    let cluster = &broker.cluster;
    if !is_member(&cluster.overview().await?, id) {
        return Err(ApiError::NotFound(format!("no member with id {id}").into()));
    }
    match tokio::time::timeout(REMOVAL_DEADLINE, cluster.remove_member(id)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "removing member {id} did not finish within {REMOVAL_DEADLINE:?} (it may still)"
            )))
        }
    }
    tracing::info!("member removed by an operator");
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let overview = cluster.overview().await?;
        if !is_member(&overview, id) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(overview.into()));
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

fn is_member(overview: &ClusterOverview, id: NodeId) -> bool {
    overview.members.iter().any(|m| m.record.id == id)
}

/// The `{id}` segment: a node id, an unsigned integer.
fn member_id(path: Result<Path<String>, PathRejection>) -> Result<NodeId, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text.parse().map(NodeId).map_err(|_| {
        ApiError::BadRequest(format!(
            "a member id is a node id (an unsigned integer), not {text:?}"
        ))
    })
}
