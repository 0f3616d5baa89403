//! The `Session` service: a peer asks this node to end a local client's connection
//! (`Kick`), or, having taken a client over, for the messages of the session this node
//! held (`HandOver`, page by page) and then to delete them (`Release`).

use std::sync::Arc;

use skein_proto::v1 as pb;
use skein_seam::{BrokerHandle, BrokerHandleError, ClientId, KickReason, NodeId};
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

    /// One page of a session this node held, for the node that took its client over.
    #[tracing::instrument(level = "info", skip_all, fields(
        node = self.shared.id,
        client_id = %request.get_ref().client_id,
        taker = request.get_ref().taking_node_id,
        after = request.get_ref().after,
    ))]
    async fn hand_over(
        &self,
        request: Request<pb::HandOverRequest>,
    ) -> Result<Response<pb::SessionHandover>, Status> {
        let request = request.into_inner();
        if request.client_id.is_empty() {
            return Err(Status::invalid_argument("hand over without a client id"));
        }
        let max = usize::try_from(request.max_messages)
            .unwrap_or(MAX_PAGE_MESSAGES)
            .clamp(1, MAX_PAGE_MESSAGES);
        let page = self
            .broker()?
            .hand_over_session(
                &ClientId::new(&request.client_id),
                NodeId(request.taking_node_id),
                request.after,
                max,
            )
            .await
            .map_err(to_status)?;
        tracing::debug!(
            messages = page.messages.len(),
            complete = page.complete,
            "handed over a page of a session"
        );
        Ok(Response::new(crate::session_wire::to_pb(page)))
    }

    /// The taker has written what it was handed up to `up_to_seq`: delete it here.
    #[tracing::instrument(level = "info", skip_all, fields(
        node = self.shared.id,
        client_id = %request.get_ref().client_id,
        taker = request.get_ref().taking_node_id,
        up_to = request.get_ref().up_to_seq,
    ))]
    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let request = request.into_inner();
        if request.client_id.is_empty() {
            return Err(Status::invalid_argument("release without a client id"));
        }
        let released = self
            .broker()?
            .release_session(
                &ClientId::new(&request.client_id),
                NodeId(request.taking_node_id),
                request.up_to_seq,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ReleaseResponse { released }))
    }

    /// A member holds messages of a session this node owns: fetch them.
    #[tracing::instrument(level = "info", skip_all, fields(
        node = self.shared.id,
        client_id = %request.get_ref().client_id,
        holder = request.get_ref().holder_node_id,
    ))]
    async fn offer(
        &self,
        request: Request<pb::OfferRequest>,
    ) -> Result<Response<pb::OfferResponse>, Status> {
        let request = request.into_inner();
        if request.client_id.is_empty() {
            return Err(Status::invalid_argument("offer without a client id"));
        }
        let taken = self
            .broker()?
            .adopt_offered(
                &ClientId::new(&request.client_id),
                NodeId(request.holder_node_id),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::OfferResponse {
            taken: taken as u64,
        }))
    }
}

/// The most messages one `HandOver` answer carries, whatever the taker asks: pages stay
/// well under gRPC's 4 MiB default message size for ordinary payloads.
const MAX_PAGE_MESSAGES: usize = 256;

impl SessionService {
    fn broker(&self) -> Result<&std::sync::Arc<dyn BrokerHandle>, Status> {
        self.shared
            .broker
            .get()
            .ok_or_else(|| Status::unavailable("the node's broker is not running yet"))
    }
}

/// The status the taker reads: FAILED_PRECONDITION means it is not the owner (it stops),
/// ABORTED that this node is busy with the session (it asks again shortly), UNAVAILABLE
/// that this node cannot serve it now.
fn to_status(e: BrokerHandleError) -> Status {
    match e {
        BrokerHandleError::NotOwner(detail) => Status::failed_precondition(detail),
        BrokerHandleError::Invalid(detail) => Status::invalid_argument(detail),
        BrokerHandleError::NotYet(detail) => Status::aborted(detail),
        BrokerHandleError::Storage(detail) => Status::unavailable(detail),
        BrokerHandleError::NotSupported(what) => Status::unimplemented(what),
    }
}
