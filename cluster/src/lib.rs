//! Skein's cluster: several broker nodes acting as one. A Raft group (openraft 0.9, storage
//! in the node's sled store through `skein-storage`) replicates the client registry, the
//! control plane: who owns each client id, each session's subscriptions, and so which nodes
//! have interest in which filter. Publishes never go through Raft. Nodes talk gRPC
//! (`skein-proto` messages only). This crate never imports the broker: the broker holds a
//! [`ClusterNode`] and folds its [`ChangeStream`] into its local views.
//!
//! Map of the crate (one job per module):
//! - [`node`]: [`ClusterNode`], a running member: start, the handle's reads, removal,
//!   shutdown; [`ChangeStream`].
//! - `commands`: the registry commands the broker proposes (register, unregister,
//!   subscribe, unsubscribe).
//! - `proposer`: batches concurrent commands into one log entry; forwards to the leader.
//! - `registry`: the replicated state and its deterministic `apply`; snapshot format;
//!   the change events.
//! - `state_machine`: openraft's state machine over the registry; snapshots in the store.
//! - `log_store`: the storage crate's sled Raft log, noting the commit index.
//! - `network`, `peers`: the Raft RPC client, one cached lazy gRPC channel per peer.
//! - `server`: the gRPC server (`Raft` and `Cluster` services).
//! - `membership`: `--peers` bootstrap, join through any member, remove.
//! - `convert`: openraft records ⇄ protobuf messages.
//! - `settings`: [`RaftSettings`] (timeouts, batching, compaction).
//! - `epoch`: connection epochs stamped by the proposer.
//! - `status`: [`ClusterStatus`].
//! - [`metrics`]: metric names and the task that keeps the Raft gauges current.
//! - `types`: the openraft type config, [`Node`], the protobuf app-data wrapper.
//! - `error`: [`ClusterError`].

mod commands;
mod convert;
mod epoch;
mod error;
mod log_store;
mod membership;
pub mod metrics;
mod network;
pub mod node;
mod peers;
mod proposer;
mod registry;
mod server;
mod settings;
mod state_machine;
mod status;
mod types;

pub use commands::Registration;
pub use error::{ClusterError, Result};
pub use membership::{parse_peers, Peer};
pub use node::{ChangeStream, ClusterConfig, ClusterNode};
pub use registry::{
    AppliedChanges, Change, ChangeEvent, ClientEntry, Owner, PreviousOwner, Registry, Subscription,
    SubscriptionOptions, SNAPSHOT_FORMAT,
};
pub use settings::RaftSettings;
pub use state_machine::RegistryView;
pub use status::{ClusterStatus, MemberStatus, Role};
pub use types::{Membership, Node, NodeId};
