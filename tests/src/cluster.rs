//! Several real `skein` processes as one cluster: [`TestCluster`].
//!
//! Node `i` (ids 1..=n) gets `--node-id i`, a gRPC port picked free up front (so that
//! `--peers` can list every member before any starts) and MQTT/HTTP on port 0 (read from
//! the listening lines). [`TestCluster::start`] returns once every node's
//! `GET /api/v1/cluster` shows a leader and all n members with their records.
//! [`TestCluster::join`] adds a node at runtime (`--join`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::http_get;
use crate::node::{Node, NodeBuilder};

/// How long a cluster may take to elect a leader and show every member.
pub const FORMATION_DEADLINE: Duration = Duration::from_secs(30);

/// A cluster of real `skein` processes on 127.0.0.1.
pub struct TestCluster {
    /// Index i holds node id i + 1.
    nodes: Vec<Node>,
    /// Stopped by the test (killed or terminated, not restarted since).
    down: Vec<bool>,
}

/// `n` free TCP ports on 127.0.0.1 (bound and released; another process could take one
/// meanwhile, which the node's startup then reports).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Starts nodes on `n` gRPC ports picked free, as `start` does with them. The ports are
/// released before the nodes bind them (`--peers` must name them first), so a test running
/// beside this one may take one in between: then every node of the attempt is stopped and
/// the attempt is made again on other ports. Any other failure panics with its cause.
fn with_free_ports(
    n: usize,
    mut start: impl FnMut(&[u16]) -> Vec<Result<Node, String>>,
) -> Vec<Node> {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let ports = free_ports(n);
        let started = start(&ports);
        if started.iter().all(Result::is_ok) {
            return started.into_iter().map(Result::unwrap).collect();
        }
        let taken = started.iter().any(|r| {
            r.as_ref()
                .err()
                .is_some_and(|e| e.contains("Address already in use"))
        });
        // Dropping the nodes that did start stops them.
        let failure = started
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_default();
        if !taken || attempt == ATTEMPTS {
            panic!("{failure}");
        }
        eprintln!("a picked gRPC port was taken before a node bound it; attempt {attempt} of {ATTEMPTS} again on other ports");
    }
    unreachable!("the last attempt returns or panics")
}

impl TestCluster {
    /// Starts `n` nodes with default settings and waits until the cluster has formed.
    pub async fn start(n: usize) -> TestCluster {
        TestCluster::start_with(n, |_, builder| builder).await
    }

    /// Starts `n` nodes, each from the builder `configure(id, builder)` returns (extra
    /// settings; the cluster's own flags are set already), and waits until the cluster has
    /// formed.
    pub async fn start_with(
        n: usize,
        configure: impl Fn(u64, NodeBuilder) -> NodeBuilder,
    ) -> TestCluster {
        assert!(n >= 1, "a cluster has at least one node");
        let nodes = with_free_ports(n, |ports| {
            let peers = ports
                .iter()
                .enumerate()
                .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            ports
                .iter()
                .enumerate()
                .map(|(i, port)| {
                    let id = i as u64 + 1;
                    let builder = Node::builder()
                        .arg("--node-id")
                        .arg(id)
                        .arg("--peers")
                        .arg(&peers)
                        .grpc(format!("127.0.0.1:{port}"));
                    configure(id, builder).try_start()
                })
                .collect()
        });
        let cluster = TestCluster {
            down: vec![false; nodes.len()],
            nodes,
        };
        cluster.wait_formed(n, FORMATION_DEADLINE).await;
        cluster
    }

    /// Starts one more node (the next id) that joins the running cluster at runtime
    /// through node `via` (`--join`), and waits until every running node shows it as a
    /// voter with its record. Returns its id.
    pub async fn join(&mut self, via: u64) -> u64 {
        self.join_with(via, |_, builder| builder).await
    }

    /// [`TestCluster::join`] with extra settings for the new node.
    pub async fn join_with(
        &mut self,
        via: u64,
        configure: impl Fn(u64, NodeBuilder) -> NodeBuilder,
    ) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let via_addr = self.node(via).grpc_addr();
        let mut node = with_free_ports(1, |ports| {
            let builder = Node::builder()
                .arg("--node-id")
                .arg(id)
                .arg("--join")
                .arg(via_addr)
                .grpc(format!("127.0.0.1:{}", ports[0]));
            vec![configure(id, builder).try_start()]
        });
        self.nodes.push(node.remove(0));
        self.down.push(false);
        let members = self.nodes.len();
        self.wait_formed(members, FORMATION_DEADLINE).await;
        id
    }

    /// The node with id `id` (1-based).
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[Self::index(id)]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[Self::index(id)]
    }

    fn index(id: u64) -> usize {
        usize::try_from(id).expect("node id") - 1
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    /// The ids of the nodes the test has not stopped.
    pub fn running(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|id| !self.down[Self::index(*id)])
            .collect()
    }

    /// `GET /api/v1/cluster` of node `id`; None when it does not answer 200.
    pub async fn overview(&self, id: u64) -> Option<Value> {
        overview_at(self.node(id).http_addr()).await
    }

    /// Waits until every running node shows a leader and `members` members, each with its
    /// record (name and MQTT address); panics with what was last seen after `deadline`.
    pub async fn wait_formed(&self, members: usize, deadline: Duration) {
        let end = Instant::now() + deadline;
        let mut last = Vec::new();
        loop {
            last.clear();
            let mut formed = true;
            for id in self.running() {
                let seen = overview_at(self.node(id).http_addr()).await;
                let ok = seen.as_ref().is_some_and(|v| formed_view(v, members));
                formed &= ok;
                last.push((id, seen));
            }
            if formed {
                return;
            }
            if Instant::now() >= end {
                panic!("the cluster did not form within {deadline:?}; last seen: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's id as the running nodes agree on it, waiting up to `deadline` for one
    /// (among the nodes in `among`, when given).
    pub async fn leader(&self, among: &[u64], deadline: Duration) -> u64 {
        let end = Instant::now() + deadline;
        loop {
            let mut seen = Vec::new();
            for id in among {
                if let Some(v) = overview_at(self.node(*id).http_addr()).await {
                    seen.push(v["leader_id"].as_u64());
                }
            }
            if let Some(Some(leader)) = seen.first().copied() {
                if seen.iter().all(|s| *s == Some(leader)) && among.contains(&leader) {
                    return leader;
                }
            }
            if Instant::now() >= end {
                panic!("no leader agreed on by {among:?} within {deadline:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL node `id`.
    pub fn kill9(&mut self, id: u64) {
        self.down[Self::index(id)] = true;
        self.node_mut(id).kill9();
    }

    /// SIGTERM node `id` and wait for it to exit.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        self.down[Self::index(id)] = true;
        self.node_mut(id).terminate()
    }

    /// Starts node `id` again with its data directory and ports.
    pub fn restart(&mut self, id: u64) {
        self.node_mut(id).restart();
        self.down[Self::index(id)] = false;
    }
}

async fn overview_at(addr: SocketAddr) -> Option<Value> {
    match http_get(addr, "/api/v1/cluster").await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn formed_view(v: &Value, members: usize) -> bool {
    let Some(list) = v["members"].as_array() else {
        return false;
    };
    !v["leader_id"].is_null()
        && list.len() == members
        && list.iter().all(|m| {
            m["name"].as_str().is_some_and(|s| !s.is_empty())
                && m["mqtt"].as_str().is_some_and(|s| !s.is_empty())
                && m["role"] == "voter"
        })
}
