//! [`PeersDouble`]: the cluster handle of a node with peers, for the broker's unit tests:
//! the registry is [`LocalCluster`]'s, and forwards are recorded and answered as a test
//! sets (at once or after a delay, accepted or failed). The real data plane is exercised by
//! the cluster crate's tests and the end-to-end tests.

use std::sync::Mutex;
use std::time::Duration;

use skein_seam::{
    BoxFuture, ClientId, ClientLocation, ClusterError, ClusterHandle, ClusterOverview,
    ForwardError, ForwardedPublish, HandedOverSubscription, NodeId, NodeRecord, Registration,
};

use crate::local_cluster::LocalCluster;

pub(crate) struct PeersDouble {
    local: LocalCluster,
    peers: Vec<NodeId>,
    pub(crate) forwarded: Mutex<Vec<(NodeId, ForwardedPublish)>>,
    /// What the next forwards answer (None: accepted), and after how long.
    pub(crate) answer: Mutex<(Option<ForwardError>, Duration)>,
}

impl PeersDouble {
    pub(crate) fn new(node: u64, peers: &[u64]) -> PeersDouble {
        PeersDouble {
            local: LocalCluster::new(NodeId(node)),
            peers: peers.iter().copied().map(NodeId).collect(),
            forwarded: Mutex::new(Vec::new()),
            answer: Mutex::new((None, Duration::ZERO)),
        }
    }

    pub(crate) fn answer(&self, error: Option<ForwardError>, after: Duration) {
        *self.answer.lock().unwrap() = (error, after);
    }

    /// What was forwarded since the last call.
    pub(crate) fn take(&self) -> Vec<(NodeId, ForwardedPublish)> {
        std::mem::take(&mut *self.forwarded.lock().unwrap())
    }
}

impl ClusterHandle for PeersDouble {
    fn node_id(&self) -> NodeId {
        self.local.node_id()
    }

    fn register_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        clean_start: bool,
        session_expiry_secs: u32,
    ) -> BoxFuture<'a, Result<Registration, ClusterError>> {
        self.local
            .register_client(client_id, clean_start, session_expiry_secs)
    }

    fn unregister_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        session_ended: bool,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        self.local
            .unregister_client(client_id, epoch, session_ended)
    }

    fn subscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        subscriptions: Vec<HandedOverSubscription>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        self.local.subscribe(client_id, epoch, subscriptions)
    }

    fn unsubscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        filters: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        self.local.unsubscribe(client_id, epoch, filters)
    }

    fn forward(
        &self,
        node: NodeId,
        publish: ForwardedPublish,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        assert!(
            self.peers.contains(&node),
            "forwarded to {node}, not a peer"
        );
        self.forwarded.lock().unwrap().push((node, publish));
        let (error, after) = self.answer.lock().unwrap().clone();
        Box::pin(async move {
            tokio::time::sleep(after).await;
            error.map_or(Ok(()), Err)
        })
    }

    fn other_members(&self) -> Vec<NodeId> {
        self.peers.clone()
    }

    fn node_record(&self, node: NodeId) -> Option<NodeRecord> {
        self.local.node_record(node)
    }

    fn locate_client(&self, client_id: &ClientId) -> Option<ClientLocation> {
        self.local.locate_client(client_id)
    }

    fn clients(&self, after: Option<&str>, limit: usize) -> Vec<ClientLocation> {
        self.local.clients(after, limit)
    }

    fn kick_remote<'a>(
        &'a self,
        node: NodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<bool, ClusterError>> {
        self.local.kick_remote(node, client_id)
    }

    fn overview(&self) -> BoxFuture<'_, Result<ClusterOverview, ClusterError>> {
        self.local.overview()
    }

    fn remove_member(&self, node: NodeId) -> BoxFuture<'_, Result<(), ClusterError>> {
        self.local.remove_member(node)
    }
}
