//! [`ClusterNode`]: one member of the cluster, started on a listener and a store: its Raft,
//! gRPC server, proposer, membership upkeep and metrics, and the handle the broker holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::RaftMetrics;
use skein_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker_slot::BrokerSlot;
use crate::election_gate::ElectionGate;
use crate::epoch::EpochClock;
use crate::error::{ClusterError, Result};
use crate::forward::Forwarder;
use crate::log_store::{CommitIndex, LogStore};
use crate::membership::{self, Peer};
use crate::network::Network;
use crate::peers::Peers;
use crate::proposer::Proposer;
use crate::registry::{ChangeEvent, ClientIds};
use crate::settings::RaftSettings;
use crate::shared::Shared;
use crate::state_machine::{RegistryView, StateMachine};
use crate::status::ClusterStatus;
use crate::types::{Membership, Node, NodeId, Raft};
use crate::{fold, metrics, server};

/// How long open gRPC calls and the node's tasks get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How a node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id: unique in the cluster, never reused by another node.
    pub node_id: NodeId,
    /// This node's record: name, the gRPC address members dial (`host:port`; empty: its
    /// `--peers` entry, if any) and the advertised MQTT address.
    pub node: Node,
    /// Static members (`--peers`), this node included. Empty: a cluster of one, or a node
    /// that joins through `join`.
    pub peers: Vec<Peer>,
    /// Any member's gRPC address (`--join`): become a member through it. Ignored by a node
    /// among `peers`.
    pub join: Option<String>,
    pub raft: RaftSettings,
}

/// A running cluster member; share it behind an `Arc`. Dropping it does not stop it: call
/// [`ClusterNode::shutdown`].
pub struct ClusterNode {
    pub(crate) shared: Arc<Shared>,
    pub(crate) proposer: Proposer,
    pub(crate) epochs: EpochClock,
    /// Client ids lent to the registry while their registrations commit.
    pub(crate) client_ids: Arc<ClientIds>,
    /// The data plane's per-peer queues and streams.
    pub(crate) forwarder: Arc<Forwarder>,
    changes: broadcast::Sender<ChangeEvent>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The gRPC server's task, aborted if it outlives the shutdown grace.
    server: tokio::task::AbortHandle,
    grpc_addr: SocketAddr,
}

impl ClusterNode {
    /// Starts the member: opens its Raft state in `store`, serves gRPC on `listener`,
    /// initializes the cluster if this is the bootstrap node's first start, and keeps
    /// trying to join (or to publish its record) in the background.
    #[tracing::instrument(level = "info", skip_all, fields(node = config.node_id))]
    pub async fn start(
        config: ClusterConfig,
        store: &Store,
        listener: TcpListener,
    ) -> Result<Self> {
        let raft_config = Arc::new(config.raft.openraft_config()?);
        let grpc_addr = listener
            .local_addr()
            .map_err(|e| ClusterError::InvalidSetting {
                name: "grpc",
                reason: format!("listener has no address: {e}"),
            })?;
        let mut node = config.node.clone();
        if node.grpc.is_empty() {
            node.grpc = match config.peers.iter().find(|p| p.id == config.node_id) {
                Some(me) => me.grpc.clone(),
                None => grpc_addr.to_string(),
            };
        }
        let in_peers = config.peers.iter().any(|p| p.id == config.node_id);
        // One template for every pod of a StatefulSet: a node among the peers starts from
        // them and ignores `join`; one past them (scaled up) joins through `join`.
        let join = if in_peers { None } else { config.join.clone() };
        if !config.peers.is_empty() && !in_peers && join.is_none() {
            return Err(ClusterError::InvalidPeers {
                spec: format!("{:?}", config.peers),
                reason: format!("this node's id {} is not among the peers", config.node_id),
            });
        }

        let commit = CommitIndex::new();
        let mut log = LogStore::new(store.raft_log()?, commit.clone());
        let (changes, _) = broadcast::channel(config.raft.change_stream_capacity);
        let client_ids = Arc::new(ClientIds::default());
        let state_machine = StateMachine::open(
            store.raft_snapshot_slot()?,
            changes.clone(),
            client_ids.clone(),
        )?;
        let view = state_machine.view();
        let peers = Arc::new(Peers::new(
            config.raft.connect_timeout(),
            config.raft.peer_keepalive(),
        ));
        let raft = Raft::new(
            config.node_id,
            raft_config,
            Network::new(peers.clone()),
            log.clone(),
            state_machine,
        )
        .await?;

        let shared = Arc::new(Shared {
            id: config.node_id,
            node,
            raft,
            peers,
            view,
            commit,
            settings: config.raft.clone(),
            broker: Arc::new(BrokerSlot::default()),
            folded: watch::channel(None).0,
            folding: Default::default(),
            membership_changes: tokio::sync::Mutex::new(()),
            election_gate: ElectionGate::new(Duration::from_millis(
                config.raft.election_timeout_ms,
            )),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let server = {
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            tasks
                .spawn(async move {
                    if let Err(e) = server::serve(shared, listener, shutdown).await {
                        tracing::error!(error = %e, "the cluster's gRPC server stopped");
                    }
                })
                .abort_handle()
        };
        let (proposer, run_proposer) = Proposer::new(shared.clone(), shutdown.clone());
        tasks.spawn(run_proposer);
        tasks.spawn(crate::node_watch::run(
            shared.clone(),
            proposer.clone(),
            shutdown.clone(),
        ));
        {
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            let heartbeat = Duration::from_millis(config.raft.heartbeat_ms);
            tasks.spawn(async move {
                let raft = shared.raft.clone();
                shared.election_gate.run(raft, heartbeat, shutdown).await;
            });
        }
        tasks.spawn(metrics::publish(
            shared.raft.metrics(),
            shared.commit.clone(),
            shared.peers.clone(),
            Duration::from_millis(config.raft.heartbeat_ms),
            shutdown.clone(),
        ));

        // A node told to join never initializes a group of its own.
        if join.is_none() {
            let bootstrapped = membership::bootstrap(
                &shared.raft,
                &mut log,
                shared.id,
                &shared.node,
                &config.peers,
            )
            .await;
            if let Err(e) = bootstrapped {
                // Stop what was started rather than leave a server running unowned.
                shutdown.cancel();
                tasks.close();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await;
                server.abort();
                let _ = shared.raft.shutdown().await;
                return Err(e);
            }
        }
        tasks.spawn(membership::keep_record(
            shared.clone(),
            join,
            shutdown.clone(),
        ));
        tracing::info!(%grpc_addr, record = %shared.node, "cluster node started");
        let forwarder = Forwarder::new(shared.clone(), shutdown.clone(), tasks.clone());
        Ok(ClusterNode {
            shared,
            proposer,
            epochs: EpochClock::default(),
            client_ids,
            forwarder,
            changes,
            shutdown,
            tasks,
            server,
            grpc_addr,
        })
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Attaches the local broker: what peers send this node (forwarded publishes, kicks)
    /// and what applying the log means for local connections go to it, through the
    /// registry fold (see `fold.rs`), which starts now. Once; false if a broker was
    /// attached already.
    pub fn attach_broker(&self, broker: Arc<dyn skein_seam::BrokerHandle>) -> bool {
        // Subscribed before the fold reads the registry: no change falls in between.
        let changes = self.changes.subscribe();
        if !self.shared.broker.set(broker.clone()) {
            return false;
        }
        self.tasks.spawn(fold::run(
            self.shared.clone(),
            broker.clone(),
            self.forwarder.clone(),
            changes,
            self.shutdown.clone(),
        ));
        // Its own receiver, subscribed before the broker could see any connection.
        self.tasks.spawn(crate::cert_fold::run(
            broker.clone(),
            self.changes.subscribe(),
            self.shutdown.clone(),
        ));
        self.tasks.spawn(crate::forward::fetch_retained(
            self.shared.clone(),
            broker,
            self.shutdown.clone(),
        ));
        true
    }

    /// The last log index whose changes the attached broker has folded.
    pub fn folded_index(&self) -> Option<u64> {
        *self.shared.folded.borrow()
    }

    /// This node's record as it publishes it.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// The address the gRPC server listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The applied registry, for reads (owner of a client id, subscriptions, interest).
    pub fn registry(&self) -> &RegistryView {
        &self.shared.view
    }

    /// A receiver of the changes applied from now on (see [`ChangeStream`]).
    pub fn changes(&self) -> ChangeStream {
        ChangeStream {
            rx: self.changes.subscribe(),
        }
    }

    /// openraft's metrics of this node (leader, term, log and membership), as they change.
    pub fn raft_metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, Node>> {
        self.shared.raft.metrics()
    }

    /// Whether this node should take clients: only while it is in the membership (voter
    /// or learner) and knows a leader, without which no CONNECT can commit.
    pub fn readiness(&self) -> std::result::Result<(), NotReady> {
        let metrics = self.shared.raft.metrics();
        let m = metrics.borrow();
        if m.membership_config
            .membership()
            .get_node(&self.shared.id)
            .is_none()
        {
            return Err(NotReady::NotAMember);
        }
        match m.current_leader {
            Some(_) => Ok(()),
            None => Err(NotReady::NoLeader),
        }
    }

    /// The current membership as this node knows it.
    pub fn membership(&self) -> Membership {
        self.shared.membership()
    }

    /// The record of member `id`, if it is one.
    pub fn member(&self, id: NodeId) -> Option<Node> {
        self.membership().get_node(&id).cloned()
    }

    /// What this node knows (reachability of every member only if it leads).
    pub fn status(&self) -> ClusterStatus {
        self.shared.cluster_status()
    }

    /// The leader's status, where every member's reachability is known: this node's own
    /// when it leads, otherwise asked of the leader over gRPC.
    pub async fn leader_status(&self) -> Result<ClusterStatus> {
        self.shared.leader_status().await
    }

    /// Waits until a leader is known and this node has applied what the leader had
    /// committed when asked (its registry is then as current as the cluster's was); false
    /// if that did not happen within `timeout`.
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(status) = self.leader_status().await {
                if let Some(commit) = status.commit_index {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return self
                        .shared
                        .raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(commit), "caught up with the leader")
                        .await
                        .is_ok();
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes member `id` (voter or learner) through the leader; returns the membership
    /// without it. The removed node's process keeps running until it is stopped.
    #[tracing::instrument(level = "info", skip(self), fields(node = self.shared.id))]
    pub async fn remove_member(&self, id: NodeId) -> Result<Membership> {
        // Another change (a join's promotion, a record update) may still be committing:
        // retry while it is, up to the proposal timeout.
        let deadline = tokio::time::Instant::now() + self.shared.settings.proposal_timeout();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_remove_member(id).await {
                Err(e) if membership::is_busy(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(node = id, error = %e, "membership busy; retrying the removal");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                result => return result,
            }
        }
    }

    async fn try_remove_member(&self, id: NodeId) -> Result<Membership> {
        match membership::dismiss(&self.shared, id).await? {
            Ok(membership) => Ok(membership),
            Err(not_leader) => {
                let addr = not_leader
                    .leader
                    .map(|n| n.grpc)
                    .filter(|a| !a.is_empty())
                    .ok_or(ClusterError::NoLeader(
                        self.shared.settings.proposal_timeout(),
                    ))?;
                membership::remove_through(&self.shared, addr, id).await
            }
        }
    }

    /// Stops the member: the gRPC server (open calls get a bounded grace), the proposer
    /// (waiting callers get [`ClusterError::ShuttingDown`]), then Raft. The store is the
    /// caller's to flush afterwards.
    #[tracing::instrument(level = "info", skip_all, fields(node = self.shared.id))]
    /// Runs `task` as one of the node's own tasks: waited for (within the grace) at shutdown.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Cancelled when the node shuts down.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "cluster tasks did not stop in time; closing the gRPC server");
            self.server.abort();
        }
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not stop cleanly");
        }
    }
}

/// Why a member should not take clients now (see [`ClusterNode::readiness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Not in the membership (yet): a joining node not added, or a removed one.
    NotAMember,
    /// No leader known: no majority, or an election under way.
    NoLeader,
}

impl NotReady {
    /// A name for probes and logs (`not_a_member`, `no_leader`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::NotAMember => "not_a_member",
            NotReady::NoLeader => "no_leader",
        }
    }

    /// One line for an operator.
    pub fn describe(self) -> &'static str {
        match self {
            NotReady::NotAMember => "this node is not a member of the cluster (yet)",
            NotReady::NoLeader => "no leader is known: a CONNECT could not commit",
        }
    }
}

/// Applied registry changes, in log order, for the broker to fold into its local views.
///
/// To start folding without a gap: take the stream first, then read the registry with
/// [`RegistryView::read_applied`], and skip events whose `log_index` is not above the index
/// that read saw.
/// Bounded: a receiver that falls behind by more than `change_stream_capacity` events gets
/// [`ChangeEvent::Lagged`] (counted in `skein_cluster_changes_lagged_total`) and must re-read
/// the registry.
pub struct ChangeStream {
    rx: broadcast::Receiver<ChangeEvent>,
}

impl ChangeStream {
    /// The next event; `None` once the node has stopped.
    pub async fn next(&mut self) -> Option<ChangeEvent> {
        match self.rx.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::changes_lagged(missed);
                Some(ChangeEvent::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
