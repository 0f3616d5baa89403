//! The seam between a broker node and its cluster. The broker only talks to the cluster
//! through [`ClusterHandle`]; a single node is a one-member cluster behind the same trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use crate::hash::HashMap;
use crate::ids::{ClientId, NodeId};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// Order contract, which an implementation must keep across nodes: a SUBSCRIBE whose
/// bytes reached a node before another client's PUBLISH reached it is in force for that
/// PUBLISH (on one node, [`crate::input_order`] does this), and a SUBACK means the
/// subscription is in force for every publish any node accepts after it was sent.
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

/// The cluster of one: the registry lives in this process.
pub struct LocalCluster {
    node: NodeId,
    registry: Mutex<HashMap<ClientId, (NodeId, u64)>>,
    /// Epochs keep increasing across unregisters, so they are per node, not per entry.
    next_epoch: Mutex<u64>,
}

impl LocalCluster {
    pub fn new(node: NodeId) -> LocalCluster {
        LocalCluster {
            node,
            registry: Mutex::new(HashMap::default()),
            next_epoch: Mutex::new(1),
        }
    }
}

impl ClusterHandle for LocalCluster {
    fn node_id(&self) -> NodeId {
        self.node
    }

    fn register_client<'a>(
        &'a self,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<Registration, ClusterError>> {
        Box::pin(async move {
            let epoch = {
                let mut next = self.next_epoch.lock().unwrap_or_else(|e| e.into_inner());
                let e = *next;
                *next += 1;
                e
            };
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            let previous = reg.insert(client_id.clone(), (self.node, epoch));
            Ok(Registration {
                epoch,
                previous_owner: previous.map(|(n, _)| n),
            })
        })
    }

    fn unregister_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            if reg.get(client_id).is_some_and(|(_, e)| *e == epoch) {
                reg.remove(client_id);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_unregister_keeps_the_newer_owner() {
        let c = LocalCluster::new(NodeId(1));
        let id = ClientId::new("a");
        let first = c.register_client(&id).await.unwrap();
        assert_eq!(first.previous_owner, None);
        let second = c.register_client(&id).await.unwrap();
        assert_eq!(second.previous_owner, Some(NodeId(1)));
        assert!(second.epoch > first.epoch);
        c.unregister_client(&id, first.epoch).await.unwrap();
        let third = c.register_client(&id).await.unwrap();
        assert_eq!(third.previous_owner, Some(NodeId(1)));
    }
}
