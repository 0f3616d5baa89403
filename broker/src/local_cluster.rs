//! The cluster of one: [`LocalCluster`] implements the seam's `ClusterHandle` with a
//! registry in this process, for a single node and for unit tests.

use std::sync::Mutex;

use skein_seam::{BoxFuture, ClientId, ClusterError, ClusterHandle, NodeId, Registration};

use crate::hash::HashMap;

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
