//! What the broker asks of the data plane: forward a publish one hop to a member, kick a
//! connection on the member that holds it, and which members there are to forward to.

use std::time::Duration;

use skein_proto::v1 as pb;
use skein_proto::v1::session_client::SessionClient;
use std::sync::Arc;

use skein_seam::{BoxFuture, ClientId, ForwardError, ForwardTally, ForwardedPublish, KickReason};

use crate::node::ClusterNode;

/// How long a kick on another member may take.
const KICK_TIMEOUT: Duration = Duration::from_secs(5);

impl ClusterNode {
    /// Sends `publish` one hop to member `node` (see the seam's `ClusterHandle::forward`):
    /// queued before this returns, so calls reach the peer in call order; the future
    /// resolves with the peer's acknowledgement. Dropping it does not withdraw the message.
    pub fn forward(
        &self,
        node: skein_seam::NodeId,
        publish: ForwardedPublish,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        self.forwarder.forward(node.0, publish)
    }

    /// [`Self::forward`] answered through `tally` as `ticket` (see the seam's
    /// `ClusterHandle::forward_tallied`): no channel, future or timer per message.
    pub fn forward_tallied(
        &self,
        node: skein_seam::NodeId,
        publish: ForwardedPublish,
        tally: &Arc<ForwardTally>,
        ticket: u32,
    ) -> Result<(), ForwardError> {
        self.forwarder
            .forward_tallied(node.0, publish, tally, ticket)
    }

    /// [`Self::forward`] with nobody waiting for the answer (QoS 0): no channel, no timer.
    pub fn forward_unanswered(
        &self,
        node: skein_seam::NodeId,
        publish: ForwardedPublish,
    ) -> Result<(), ForwardError> {
        self.forwarder.forward_unanswered(node.0, publish)
    }

    /// Backpressure for forwards nobody waits for (see the seam's
    /// `ClusterHandle::forward_room`): None while the queue to `node` has room (or there is
    /// none yet); otherwise a future that resolves once it has room (true) or after the
    /// forward timeout (false).
    pub fn forward_room(&self, node: skein_seam::NodeId) -> Option<BoxFuture<'static, bool>> {
        self.forwarder.room(node.0)
    }

    /// Ends the connection of `client_id` on member `node` as an administrative kick; false
    /// when that node had no such connection.
    pub fn kick_remote<'a>(
        &'a self,
        node: skein_seam::NodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<bool, skein_seam::ClusterError>> {
        use skein_seam::ClusterError as E;
        use tracing::Instrument;
        let span =
            tracing::info_span!("kick_remote", node = self.id(), target = node.0, %client_id);
        Box::pin(
            async move {
                if node.0 == self.id() {
                    let broker = self.shared.broker.get().ok_or_else(|| {
                        E::Unavailable("the node's broker is not running yet".into())
                    })?;
                    return Ok(broker.kick(client_id, KickReason::Administrative));
                }
                let record = self
                    .member(node.0)
                    .ok_or_else(|| E::NotFound(format!("node {node} is not a member")))?;
                let channel = self
                    .shared
                    .peers
                    .channel(node.0, &record.grpc)
                    .map_err(|e| E::Unavailable(e.to_string()))?;
                let request = pb::KickRequest {
                    client_id: client_id.as_str().to_owned(),
                    epoch: None,
                    reason: pb::KickReason::Administrative as i32,
                    taking_node_id: 0,
                    taking_node: None,
                };
                let mut client = SessionClient::new(channel);
                match tokio::time::timeout(KICK_TIMEOUT, client.kick(request)).await {
                    Ok(Ok(answer)) => Ok(answer.into_inner().kicked),
                    Ok(Err(status)) => Err(E::Unavailable(format!(
                        "kicking {client_id} on node {node}: {status}"
                    ))),
                    Err(_) => Err(E::Unavailable(format!(
                        "node {node} did not answer a kick within {KICK_TIMEOUT:?}"
                    ))),
                }
            }
            .instrument(span),
        )
    }

    /// The other members (voters and learners), as this node knows the membership: where
    /// a retained message goes.
    pub fn other_members(&self) -> Vec<skein_seam::NodeId> {
        self.shared
            .other_members()
            .into_iter()
            .map(|(id, _)| skein_seam::NodeId(id))
            .collect()
    }
}
