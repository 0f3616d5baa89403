//! A cluster of real members in this process: each with its own sled store in a temporary
//! directory and a gRPC server on a loopback port, talking real gRPC. Waits are conditions
//! with deadlines.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skein_cluster::{ClusterConfig, ClusterNode, Node, NodeId, Peer, RaftSettings};
use skein_storage::Store;
use tempfile::TempDir;
use tokio::net::TcpListener;

/// Settings for tests: quicker than the defaults, still calm enough for a loaded machine.
pub fn test_settings() -> RaftSettings {
    RaftSettings {
        heartbeat_ms: 100,
        election_timeout_ms: 600,
        proposal_timeout_ms: 10_000,
        ..RaftSettings::default()
    }
}

pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub dir: TempDir,
    /// `None` while stopped.
    pub node: Option<Arc<ClusterNode>>,
    pub store: Option<Store>,
}

impl Member {
    fn running(
        id: NodeId,
        addr: SocketAddr,
        dir: TempDir,
        node: ClusterNode,
        store: Store,
    ) -> Member {
        Member {
            id,
            addr,
            dir,
            node: Some(Arc::new(node)),
            store: Some(store),
        }
    }

    pub fn node(&self) -> &Arc<ClusterNode> {
        self.node.as_ref().expect("member is running")
    }
}

pub struct TestCluster {
    pub members: BTreeMap<NodeId, Member>,
    pub peers: Vec<Peer>,
    pub settings: RaftSettings,
}

fn record(id: NodeId, addr: SocketAddr) -> Node {
    Node {
        name: format!("node-{id}"),
        grpc: addr.to_string(),
        mqtt: format!("127.0.0.1:{}", 1882 + id),
    }
}

async fn open_store(dir: &std::path::Path) -> Store {
    // A stopped member's last store handles are dropped by its Raft tasks as they end;
    // sled refuses to open a directory another handle still locks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "store still locked");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot reopen {}: {e}", dir.display()),
        }
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "port still busy");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

impl TestCluster {
    /// Starts members `ids` as a static cluster (`--peers` with all of them).
    pub async fn start(ids: &[NodeId], settings: RaftSettings) -> TestCluster {
        let mut listeners = Vec::new();
        for id in ids {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.push((*id, listener));
        }
        let peers: Vec<Peer> = listeners
            .iter()
            .map(|(id, l)| Peer {
                id: *id,
                grpc: l.local_addr().unwrap().to_string(),
            })
            .collect();
        let mut cluster = TestCluster {
            members: BTreeMap::new(),
            peers,
            settings,
        };
        for (id, listener) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let addr = listener.local_addr().unwrap();
            let store = open_store(dir.path()).await;
            let node = ClusterNode::start(cluster.config(id, addr, None), &store, listener)
                .await
                .unwrap();
            cluster
                .members
                .insert(id, Member::running(id, addr, dir, node, store));
        }
        cluster
    }

    fn config(&self, id: NodeId, addr: SocketAddr, join: Option<String>) -> ClusterConfig {
        let static_member = self.peers.iter().any(|p| p.id == id);
        ClusterConfig {
            node_id: id,
            node: record(id, addr),
            peers: if static_member {
                self.peers.clone()
            } else {
                Vec::new()
            },
            join,
            raft: self.settings.clone(),
        }
    }

    /// Starts a new member that joins through `via`'s gRPC address. Both the address it
    /// dials and the one it publishes are DNS names (`localhost:PORT`), resolved when the
    /// channels connect.
    pub async fn join(&mut self, id: NodeId, via: NodeId) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let join = Some(format!("localhost:{}", self.members[&via].addr.port()));
        let mut config = self.config(id, addr, join);
        config.node.grpc = format!("localhost:{}", addr.port());
        let node = ClusterNode::start(config, &store, listener).await.unwrap();
        self.members
            .insert(id, Member::running(id, addr, dir, node, store));
    }

    /// Starts member `id` with neither peers nor a join address: a cluster of one.
    pub async fn start_alone(&mut self, id: NodeId) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let node = ClusterNode::start(self.config(id, addr, None), &store, listener)
            .await
            .unwrap();
        self.members
            .insert(id, Member::running(id, addr, dir, node, store));
    }

    pub fn node(&self, id: NodeId) -> &Arc<ClusterNode> {
        self.members[&id].node()
    }

    pub fn running(&self) -> impl Iterator<Item = &Arc<ClusterNode>> {
        self.members.values().filter_map(|m| m.node.as_ref())
    }

    /// Stops member `id`: its server, proposer and Raft end, its store is closed.
    pub async fn stop(&mut self, id: NodeId) {
        let member = self.members.get_mut(&id).unwrap();
        let node = member.node.take().expect("running");
        node.shutdown().await;
        if let Some(store) = member.store.take() {
            store.flush().await.unwrap();
        }
    }

    /// Starts a stopped member again from its data directory, on its old port.
    pub async fn restart(&mut self, id: NodeId) {
        let (addr, path) = {
            let m = &self.members[&id];
            (m.addr, m.dir.path().to_owned())
        };
        let store = open_store(&path).await;
        let listener = bind(addr).await;
        let node = ClusterNode::start(self.config(id, addr, None), &store, listener)
            .await
            .unwrap();
        let member = self.members.get_mut(&id).unwrap();
        member.node = Some(Arc::new(node));
        member.store = Some(store);
    }

    /// The leader all running members agree on, once they do.
    pub async fn leader(&self, within: Duration) -> NodeId {
        wait_for(within, "the running members agree on a leader", || async {
            let mut leaders = self.running().map(|n| n.status().leader_id);
            let first = leaders.next().flatten()?;
            let agreed = leaders.all(|l| l == Some(first));
            let running = self.running().any(|n| n.id() == first);
            (agreed && running && self.node(first).status().is_leader).then_some(first)
        })
        .await
    }

    /// Waits until every running member has applied at least `index`.
    pub async fn applied_everywhere(&self, index: u64, within: Duration) {
        wait_for(within, "every running member applies the entry", || async {
            self.running()
                .all(|n| n.registry().last_applied() >= Some(index))
                .then_some(())
        })
        .await
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            if self.members[&id].node.is_some() {
                self.stop(id).await;
            }
        }
    }
}

/// Polls `check` until it returns `Some`, panicking with `what` after `within`.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The registry of `node` as snapshot bytes (equal bytes: equal registries).
pub fn registry_bytes(node: &ClusterNode) -> Vec<u8> {
    node.registry().read(|r| r.to_snapshot())
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
