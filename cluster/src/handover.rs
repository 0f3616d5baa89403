//! Moving a persistent session between members (the `Session.HandOver` and
//! `Session.Release` RPCs): the calls the taker makes to the node that held the session.
//! The server side is in `session_service.rs`, the page's conversions in
//! `session_wire.rs`; what is moved, and when, is the broker's.

use std::time::Duration;

use skein_proto::v1 as pb;
use skein_proto::v1::session_client::SessionClient;
use skein_seam::{
    BoxFuture, ClientId, ClusterError as SeamError, NodeId as SeamNodeId, SessionHandover,
};
use tonic::Code;
use tracing::Instrument;

use crate::node::ClusterNode;
use crate::peers::MAX_MESSAGE_BYTES;
use crate::session_wire;

/// How long one HandOver or Release call may take (a page is bounded, so this is
/// generous); the broker bounds the whole hand-over on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an offer may take: the owner's whole fetch, which it bounds itself.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

impl ClusterNode {
    /// One page of `client_id`'s session from member `holder` (see the seam's
    /// `ClusterHandle::fetch_session`).
    pub fn fetch_session<'a>(
        &'a self,
        holder: SeamNodeId,
        client_id: &'a ClientId,
        holder_epoch: u64,
        after: u64,
        max: u32,
    ) -> BoxFuture<'a, Result<SessionHandover, SeamError>> {
        let span = tracing::info_span!(
            "fetch_session",
            node = self.id(),
            holder = holder.0,
            %client_id,
            after
        );
        Box::pin(
            async move {
                let mut client = self.session_client(holder)?;
                let mut request = tonic::Request::new(pb::HandOverRequest {
                    client_id: client_id.as_str().to_owned(),
                    holder_epoch,
                    taking_node_id: self.id(),
                    after,
                    max_messages: max,
                });
                request.set_timeout(CALL_TIMEOUT);
                let answer = tokio::time::timeout(CALL_TIMEOUT, client.hand_over(request))
                    .await
                    .map_err(|_| timed_out(holder))?
                    .map_err(|status| from_status(holder, &status))?;
                session_wire::from_pb(answer.into_inner()).map_err(|detail| {
                    SeamError::Invalid(format!("node {holder} handed over {detail}"))
                })
            }
            .instrument(span),
        )
    }

    /// Tells member `holder` the messages up to `up_to` are written here (see the seam's
    /// `ClusterHandle::release_session`).
    pub fn release_session<'a>(
        &'a self,
        holder: SeamNodeId,
        client_id: &'a ClientId,
        holder_epoch: u64,
        up_to: u64,
    ) -> BoxFuture<'a, Result<(), SeamError>> {
        let span = tracing::info_span!(
            "release_session",
            node = self.id(),
            holder = holder.0,
            %client_id,
            up_to
        );
        Box::pin(
            async move {
                let mut client = self.session_client(holder)?;
                let mut request = tonic::Request::new(pb::ReleaseRequest {
                    client_id: client_id.as_str().to_owned(),
                    holder_epoch,
                    up_to_seq: up_to,
                    taking_node_id: self.id(),
                });
                request.set_timeout(CALL_TIMEOUT);
                tokio::time::timeout(CALL_TIMEOUT, client.release(request))
                    .await
                    .map_err(|_| timed_out(holder))?
                    .map_err(|status| from_status(holder, &status))?;
                Ok(())
            }
            .instrument(span),
        )
    }

    /// Tells member `owner` this node holds messages of `client_id`'s session (see the
    /// seam's `ClusterHandle::offer_session`). Its fetch is bounded by the owner; the call
    /// waits for it a little longer.
    pub fn offer_session<'a>(
        &'a self,
        owner: SeamNodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<usize, SeamError>> {
        let span = tracing::info_span!(
            "offer_session",
            node = self.id(),
            owner = owner.0,
            %client_id
        );
        Box::pin(
            async move {
                let mut client = self.session_client(owner)?;
                let mut request = tonic::Request::new(pb::OfferRequest {
                    client_id: client_id.as_str().to_owned(),
                    holder_node_id: self.id(),
                });
                request.set_timeout(OFFER_TIMEOUT);
                let answer = tokio::time::timeout(OFFER_TIMEOUT, client.offer(request))
                    .await
                    .map_err(|_| {
                        SeamError::Unavailable(format!(
                            "node {owner} did not answer an offer within {OFFER_TIMEOUT:?}"
                        ))
                    })?
                    .map_err(|status| from_status(owner, &status))?;
                Ok(usize::try_from(answer.into_inner().taken).unwrap_or(usize::MAX))
            }
            .instrument(span),
        )
    }

    fn session_client(
        &self,
        holder: SeamNodeId,
    ) -> Result<SessionClient<tonic::transport::Channel>, SeamError> {
        let record = self
            .member(holder.0)
            .ok_or_else(|| SeamError::NotFound(format!("node {holder} is not a member")))?;
        let channel = self
            .shared
            .peers
            .channel(holder.0, &record.grpc)
            .map_err(|e| SeamError::Unavailable(e.to_string()))?;
        Ok(SessionClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

fn timed_out(holder: SeamNodeId) -> SeamError {
    SeamError::Unavailable(format!(
        "node {holder} did not answer within {CALL_TIMEOUT:?}"
    ))
}

/// FAILED_PRECONDITION is the holder saying another node owns the client now, ABORTED that
/// it is busy with the session (ask again); everything else is "not now" (a holder that
/// cannot be reached among it).
fn from_status(holder: SeamNodeId, status: &tonic::Status) -> SeamError {
    let detail = format!("node {holder}: {}", status.message());
    match status.code() {
        Code::FailedPrecondition => SeamError::NotOwner,
        Code::Aborted => SeamError::Busy(detail),
        Code::InvalidArgument => SeamError::Invalid(detail),
        _ => SeamError::Unavailable(detail),
    }
}
