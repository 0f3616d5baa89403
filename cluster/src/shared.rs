//! [`Shared`]: what a running member's parts (server, proposer, membership upkeep, status)
//! share: its identity, its Raft, its peers' channels, its applied registry and the local
//! broker.

use std::sync::Arc;

use tokio::sync::watch;

use crate::broker_slot::BrokerSlot;
use crate::log_store::CommitIndex;
use crate::peers::Peers;
use crate::settings::RaftSettings;
use crate::state_machine::RegistryView;
use crate::types::{Node, NodeId, Raft};

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
}
