//! The `Session` service: a peer asks this node to end a local client's connection
//! (`Kick`). Handing a session over to another node (`HandOver`, `Release`) comes with
//! moving sessions between nodes (issue 14): answered UNIMPLEMENTED until then.

use std::sync::Arc;

use skein_proto::v1 as pb;
use skein_seam::{ClientId, KickReason};
use tonic::{Request, Response, Status};

use crate::shared::Shared;

pub(crate) struct SessionService {
    shared: Arc<Shared>,
}

impl SessionService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SessionService { shared }
    }
}

#[tonic::async_trait]
impl pb::session_server::Session for SessionService {
    /// Ends the connection holding the client id here, whatever its epoch (the broker
    /// kicks by client id).
    #[tracing::instrument(level = "info", skip_all, fields(node = self.shared.id, client_id = %request.get_ref().client_id))]
    async fn kick(
        &self,
        request: Request<pb::KickRequest>,
    ) -> Result<Response<pb::KickResponse>, Status> {
        let request = request.into_inner();
        if request.client_id.is_empty() {
            return Err(Status::invalid_argument("kick without a client id"));
        }
        let reason = match pb::KickReason::try_from(request.reason) {
            Ok(pb::KickReason::Administrative) => KickReason::Administrative,
            Ok(pb::KickReason::TakenOver) => KickReason::TakenOver {
                by: skein_seam::NodeId(request.taking_node_id),
            },
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown kick reason {}",
                    request.reason
                )))
            }
        };
        let Some(broker) = self.shared.broker.get() else {
            return Err(Status::unavailable("the node's broker is not running yet"));
        };
        let kicked = broker.kick(&ClientId::new(&request.client_id), reason);
        Ok(Response::new(pb::KickResponse { kicked }))
    }

    async fn hand_over(
        &self,
        _request: Request<pb::HandOverRequest>,
    ) -> Result<Response<pb::SessionHandover>, Status> {
        Err(Status::unimplemented(
            "handing a session over between nodes is not supported yet",
        ))
    }

    async fn release(
        &self,
        _request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        Err(Status::unimplemented(
            "handing a session over between nodes is not supported yet",
        ))
    }
}
