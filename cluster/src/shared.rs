//! [`Shared`]: what a running member's parts (server, proposer, membership upkeep, status)
//! share: its identity, its Raft, its peers' channels, its applied registry and the local
//! broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::broker_slot::BrokerSlot;
use crate::election_gate::ElectionGate;
use crate::log_store::CommitIndex;
use crate::peers::Peers;
use crate::settings::RaftSettings;
use crate::state_machine::RegistryView;
use crate::types::{Membership, Node, NodeId, Raft};

/// What the server, proposer and membership tasks share.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) node: Node,
    pub(crate) raft: Raft,
    pub(crate) peers: Arc<Peers>,
    pub(crate) view: RegistryView,
    pub(crate) commit: Arc<CommitIndex>,
    pub(crate) settings: RaftSettings,
    /// The local broker, for what peers ask of this node and what applying the log tells it.
    pub(crate) broker: Arc<BrokerSlot>,
    /// The last log index whose changes the local broker has folded (None: nothing yet, or
    /// no broker attached): what `Cluster.AwaitFolded` waits on.
    pub(crate) folded: watch::Sender<Option<u64>>,
    /// The last log index whose changes the fold has begun telling the broker (0: none):
    /// at least `folded`, and at least the index any routing decision of the broker was
    /// made at, which `folded` is not while the broker is being told. Stamped on forward
    /// batches (see [`Self::routed_up_to`]).
    pub(crate) folding: AtomicU64,
    /// Membership changes made on this node (as the leader) wait for each other here
    /// rather than be refused by openraft as concurrent (members publishing their records
    /// at once when a cluster starts).
    pub(crate) membership_changes: tokio::sync::Mutex<()>,
    /// Whether this node may start an election (not right after it was stopped).
    pub(crate) election_gate: ElectionGate,
}

/// The membership as this node knows it (applied or appended last), read in one place.
impl Shared {
    /// The fold is about to tell the broker the changes of log index `index`.
    pub(crate) fn folding(&self, index: u64) {
        self.folding.fetch_max(index, Ordering::Release);
    }

    /// A log index at least as high as the one any route this node's broker has taken so
    /// far was folded at (0: none): what a forward batch carries as `folded_index`.
    pub(crate) fn routed_up_to(&self) -> u64 {
        self.folding.load(Ordering::Acquire)
    }

    pub(crate) fn membership(&self) -> Membership {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// Whether `id` is a member (voter or learner); reads without copying the membership.
    pub(crate) fn is_member(&self, id: NodeId) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    /// Member `id`'s gRPC address; None when it is not a member.
    pub(crate) fn member_grpc(&self, id: NodeId) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.grpc.clone())
    }

    /// Every other member (voters and learners) with its gRPC address (empty when not
    /// known yet).
    pub(crate) fn other_members(&self) -> Vec<(NodeId, String)> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, node)| (*id, node.grpc.clone()))
            .collect()
    }
}
