//! The cluster of one: [`LocalCluster`] implements the seam's `ClusterHandle` with a
//! registry in this process. A test double for the broker's unit tests: a node always runs
//! a Raft group, of one member when it has no peers.

use std::sync::Mutex;

use skein_seam::{
    BoxFuture, ClientId, ClientLocation, ClusterError, ClusterHandle, ClusterOverview,
    ForwardError, ForwardedPublish, HandedOverSubscription, NodeId, NodeRecord, PreviousOwner,
    Registration,
};

use crate::hash::HashMap;

/// One registered client: its epoch, whether a connection holds it, and its session.
#[derive(Debug, Clone)]
struct Entry {
    epoch: u64,
    online: bool,
    clean_start: bool,
    expiry: u32,
    subscriptions: Vec<HandedOverSubscription>,
}

/// The cluster of one: the registry lives in this process.
pub struct LocalCluster {
    node: NodeId,
    registry: Mutex<HashMap<ClientId, Entry>>,
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

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Entry>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn location(&self, id: &ClientId, e: &Entry) -> ClientLocation {
        ClientLocation {
            client_id: id.clone(),
            node: self.node,
            epoch: e.epoch,
            online: e.online,
            clean_start: e.clean_start,
            session_expiry_secs: e.expiry,
            connected_at_ms: 0,
            offline_since_ms: None,
            subscriptions: e.subscriptions.len(),
        }
    }
}

/// The entry of `client_id` if connection `epoch` still holds it.
fn owned<'r>(
    reg: &'r mut HashMap<ClientId, Entry>,
    client_id: &ClientId,
    epoch: u64,
) -> Result<&'r mut Entry, ClusterError> {
    reg.get_mut(client_id)
        .filter(|e| e.epoch == epoch)
        .ok_or(ClusterError::NotOwner)
}

impl ClusterHandle for LocalCluster {
    fn node_id(&self) -> NodeId {
        self.node
    }

    fn register_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        clean_start: bool,
        session_expiry_secs: u32,
    ) -> BoxFuture<'a, Result<Registration, ClusterError>> {
        Box::pin(async move {
            let epoch = {
                let mut next = self.next_epoch.lock().unwrap_or_else(|e| e.into_inner());
                let e = *next;
                *next += 1;
                e
            };
            let mut reg = self.registry();
            let previous = reg.remove(client_id);
            let session_present = previous.is_some() && !clean_start;
            let subscriptions = match (&previous, clean_start) {
                (Some(p), false) => p.subscriptions.clone(),
                _ => Vec::new(),
            };
            reg.insert(
                client_id.clone(),
                Entry {
                    epoch,
                    online: true,
                    clean_start,
                    expiry: session_expiry_secs,
                    subscriptions: subscriptions.clone(),
                },
            );
            Ok(Registration {
                epoch,
                session_present,
                previous: previous.map(|p| PreviousOwner {
                    node: self.node,
                    epoch: p.epoch,
                    online: p.online,
                }),
                subscriptions,
                // One node: no other node routes anything here.
                log_index: 0,
            })
        })
    }

    fn unregister_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        session_ended: bool,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut reg = self.registry();
            if let Some(e) = reg.get_mut(client_id).filter(|e| e.epoch == epoch) {
                if session_ended || e.expiry == 0 {
                    reg.remove(client_id);
                } else {
                    e.online = false;
                }
            }
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        subscriptions: Vec<HandedOverSubscription>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut reg = self.registry();
            let e = owned(&mut reg, client_id, epoch)?;
            for s in subscriptions {
                e.subscriptions.retain(|old| old.filter != s.filter);
                e.subscriptions.push(s);
            }
            Ok(())
        })
    }

    fn unsubscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        filters: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut reg = self.registry();
            let e = owned(&mut reg, client_id, epoch)?;
            e.subscriptions.retain(|s| !filters.contains(&s.filter));
            Ok(())
        })
    }

    fn forward(
        &self,
        node: NodeId,
        _publish: ForwardedPublish,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        Box::pin(async move {
            Err(ForwardError::Unavailable {
                node,
                detail: "a cluster of one has no other node".into(),
            })
        })
    }

    fn other_members(&self) -> Vec<NodeId> {
        Vec::new()
    }

    fn node_record(&self, node: NodeId) -> Option<NodeRecord> {
        (node == self.node).then(|| NodeRecord {
            id: node,
            name: format!("skein-{node}"),
            grpc: String::new(),
            mqtt: String::new(),
        })
    }

    fn locate_client(&self, client_id: &ClientId) -> Option<ClientLocation> {
        let reg = self.registry();
        reg.get(client_id).map(|e| self.location(client_id, e))
    }

    fn clients(&self, after: Option<&str>, limit: usize) -> Vec<ClientLocation> {
        let reg = self.registry();
        let mut all: Vec<_> = reg
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
            .map(|(id, e)| self.location(id, e))
            .collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all.truncate(limit);
        all
    }

    fn kick_remote<'a>(
        &'a self,
        node: NodeId,
        _client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<bool, ClusterError>> {
        Box::pin(async move { Err(ClusterError::NotFound(format!("node {node}"))) })
    }

    fn overview(&self) -> BoxFuture<'_, Result<ClusterOverview, ClusterError>> {
        Box::pin(async move {
            Ok(ClusterOverview {
                node_id: self.node,
                node_name: format!("skein-{}", self.node),
                leader_id: Some(self.node),
                term: 0,
                commit_index: 0,
                members: Vec::new(),
            })
        })
    }

    fn remove_member(&self, node: NodeId) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move { Err(ClusterError::NotFound(format!("node {node}"))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_unregister_keeps_the_newer_owner() {
        let c = LocalCluster::new(NodeId(1));
        let id = ClientId::new("a");
        let first = c.register_client(&id, false, 60).await.unwrap();
        assert_eq!(first.previous, None);
        let second = c.register_client(&id, false, 60).await.unwrap();
        assert_eq!(second.previous.map(|p| p.epoch), Some(first.epoch));
        assert!(second.session_present);
        assert!(second.epoch > first.epoch);
        c.unregister_client(&id, first.epoch, true).await.unwrap();
        let third = c.register_client(&id, false, 60).await.unwrap();
        assert_eq!(third.previous.map(|p| p.epoch), Some(second.epoch));
    }
}
