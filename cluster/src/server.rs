//! The gRPC server of a member: the `Raft` service (into openraft), the `Cluster` admin
//! service (join, remove, status, and proposals from followers), and the data plane's
//! `Forward` and `Session` services, on one listener.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use skein_proto::v1 as pb;
use skein_proto::v1::cluster_server::{Cluster, ClusterServer};
use skein_proto::v1::forward_server::ForwardServer;
use skein_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use skein_proto::v1::session_server::SessionServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::convert::{FromPb, InstallSnapshotOutcome, ToPb};
use crate::error::{ClusterError, Result};
use crate::forward::ForwardService;
use crate::membership;
use crate::peers::MAX_MESSAGE_BYTES;
use crate::session_service::SessionService;
use crate::shared::Shared;
use crate::types::NodeId;

/// The longest `AwaitFolded` wait a caller may ask for.
const MAX_FOLD_WAIT: Duration = Duration::from_secs(10);

/// Serves the services on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let raft = RaftServer::new(RaftService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let forward = ForwardServer::new(ForwardService::new(shared.clone(), shutdown.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let session = SessionServer::new(SessionService::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let cluster = ClusterServer::new(ClusterService { shared })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(raft)
        .add_service(cluster)
        .add_service(forward)
        .add_service(session)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// A Raft failure as a status: a stopped Raft is unavailable (the caller backs off).
fn fatal(e: openraft::error::Fatal<NodeId>) -> Status {
    Status::unavailable(format!("Raft stopped: {e}"))
}

fn malformed(e: crate::error::ClusterError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub(crate) fn status_of(e: &ClusterError) -> Status {
    match e {
        e if e.is_unavailable() => Status::unavailable(e.to_string()),
        ClusterError::Membership(_) => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

struct RaftService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    #[tracing::instrument(level = "trace", skip_all, fields(node = self.shared.id, entries = request.get_ref().entries.len()))]
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let rpc = request.into_inner().into_raft().map_err(malformed)?;
        let leader = crate::convert::vote_leader(&rpc);
        let response = self.shared.raft.append_entries(rpc).await;
        self.shared.peers.heard_from(leader);
        match response {
            Ok(response) => {
                // Refused for a higher vote here: a deposed leader, no reason to wait.
                if !matches!(
                    response,
                    openraft::raft::AppendEntriesResponse::HigherVote(_)
                ) {
                    let gate = &self.shared.election_gate;
                    gate.heard_from_leader(&self.shared.raft);
                }
                Ok(Response::new(response.to_pb()))
            }
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
            Err(RaftError::APIError(never)) => match never {},
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.shared.id))]
    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = request.into_inner().into_raft().map_err(malformed)?;
        match self.shared.raft.vote(rpc).await {
            Ok(response) => Ok(Response::new(response.to_pb())),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
            Err(RaftError::APIError(never)) => match never {},
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.shared.id))]
    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let rpc = request.into_inner().into_raft().map_err(malformed)?;
        let vote = rpc.vote;
        let outcome: InstallSnapshotOutcome = match self.shared.raft.install_snapshot(rpc).await {
            Ok(response) => {
                // Answered with the sender's vote: taken from the current leader.
                if response.vote == vote {
                    let gate = &self.shared.election_gate;
                    gate.heard_from_leader(&self.shared.raft);
                }
                Ok(response)
            }
            Err(RaftError::APIError(e)) => Err(e),
            Err(RaftError::Fatal(e)) => return Err(fatal(e)),
        };
        Ok(Response::new(outcome.to_pb()))
    }
}

struct ClusterService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    #[tracing::instrument(level = "info", skip_all, fields(node = self.shared.id, joining = request.get_ref().node_id))]
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        use pb::join_response::Outcome;
        let request = request.into_inner();
        let node = request
            .node
            .ok_or_else(|| Status::invalid_argument("join without a node record"))?;
        let outcome = match membership::admit(&self.shared, request.node_id, node.into()).await {
            Ok(Ok(membership)) => Outcome::Joined(membership.to_pb()),
            Ok(Err(not_leader)) => Outcome::NotLeader(not_leader),
            Err(e) => return Err(status_of(&e)),
        };
        Ok(Response::new(pb::JoinResponse {
            outcome: Some(outcome),
        }))
    }

    #[tracing::instrument(level = "info", skip_all, fields(node = self.shared.id, removing = request.get_ref().node_id))]
    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        use pb::remove_response::Outcome;
        let id = request.into_inner().node_id;
        let outcome = match membership::dismiss(&self.shared, id).await {
            Ok(Ok(membership)) => Outcome::Removed(membership.to_pb()),
            Ok(Err(not_leader)) => Outcome::NotLeader(not_leader),
            Err(e) => return Err(status_of(&e)),
        };
        Ok(Response::new(pb::RemoveResponse {
            outcome: Some(outcome),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.shared.id))]
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.shared.status()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.shared.id, index = request.get_ref().index))]
    async fn await_folded(
        &self,
        request: Request<pb::AwaitFoldedRequest>,
    ) -> Result<Response<pb::AwaitFoldedResponse>, Status> {
        let request = request.into_inner();
        // No broker yet (the node is starting): nothing to wait for here. Its broker reads
        // the whole registry when it is attached.
        let wait = if self.shared.broker.get().is_some() {
            Duration::from_millis(u64::from(request.wait_ms)).min(MAX_FOLD_WAIT)
        } else {
            Duration::ZERO
        };
        let mut folded = self.shared.folded.subscribe();
        let reached = tokio::time::timeout(
            wait,
            folded.wait_for(|f| f.is_some_and(|f| f >= request.index)),
        )
        .await;
        let folded_index = *self.shared.folded.borrow();
        Ok(Response::new(pb::AwaitFoldedResponse {
            folded: matches!(reached, Ok(Ok(_))),
            folded_index,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.shared.id, commands = request.get_ref().batch.as_ref().map_or(0, |b| b.commands.len())))]
    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        use pb::propose_response::Outcome;
        let batch = request
            .into_inner()
            .batch
            .ok_or_else(|| Status::invalid_argument("proposal without a batch"))?;
        let written = self
            .shared
            .raft
            .client_write(crate::proposer::leader_stamped(batch))
            .await;
        let outcome = match written {
            Ok(written) => Outcome::Committed(pb::Committed {
                log_id: Some(written.log_id.to_pb()),
                results: Some(written.data.0),
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Outcome::NotLeader(pb::NotLeader {
                    leader_id: f.leader_id,
                    leader: f.leader_node.map(Into::into),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                return Err(Status::internal(format!(
                    "a registry write was refused as a membership change: {e}"
                )))
            }
            Err(RaftError::Fatal(e)) => return Err(fatal(e)),
        };
        Ok(Response::new(pb::ProposeResponse {
            outcome: Some(outcome),
        }))
    }
}
