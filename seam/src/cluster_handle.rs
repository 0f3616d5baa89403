//! The outbound half of the seam: what the broker asks of its cluster. The broker only
//! talks to the cluster through [`ClusterHandle`]; a single node is a one-member cluster
//! behind the same trait.

use crate::box_future::BoxFuture;
use crate::ids::{ClientId, NodeId};

/// The outcome of claiming a client id cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Increases with every registration of this client id, so a late unregister of an
    /// older connection can't remove a newer one.
    pub epoch: u64,
    /// The node that held the client id before, if any.
    pub previous_owner: Option<NodeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
}

/// Implemented by the cluster (and, for a single node, by the broker's `LocalCluster`);
/// called by the broker.
///
/// Contract:
/// - One owner: after `register_client` returns, at most one live connection holds the
///   client id cluster-wide; a previous owner on another node is told through that node's
///   [`crate::BrokerHandle::kick`] ([`crate::KickReason::TakenOver`]).
/// - Input order: a SUBSCRIBE whose bytes reached a node before another client's PUBLISH
///   reached it is in force for that PUBLISH (on one node, the broker's `input_order`
///   module does this).
/// - A SUBACK means the subscription is in force for every publish any node accepts
///   after it was sent; a PUBACK/PUBREC means every target (local sessions, each peer node with
///   interest, the offline queue on disk) has the message.
pub trait ClusterHandle: Send + Sync {
    fn node_id(&self) -> NodeId;
    /// Claims `client_id` for a connection on this node.
    fn register_client<'a>(
        &'a self,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<Registration, ClusterError>>;
    /// Releases the claim taken with `epoch`; a no-op if a newer claim exists.
    fn unregister_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;
}
