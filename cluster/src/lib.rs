//! Skein's cluster: several broker nodes acting as one. A Raft group (openraft 0.9, storage
//! in the node's sled store through `skein-storage`) replicates the client registry, the
//! control plane: who owns each client id, each session's subscriptions, and so which nodes
//! have interest in which filter. Publishes never go through Raft. Nodes talk gRPC
//! (`skein-proto` messages only). This crate never imports the broker: the broker holds a
//! [`ClusterNode`] and folds its [`ChangeStream`] into its local views.
//!
//! The crate's modules in layer order: each imports only modules listed below it.
//!
//! - `handle`: [`ClusterNode`] as the seam's `ClusterHandle`, what the broker holds.
//! - `certificates`: the device certificate commands (register on first sight, set a
//!   status) and their records as the seam names them.
//! - `commands`: the registry commands the broker proposes (register, unregister,
//!   subscribe, unsubscribe).
//! - `data_plane`: what the broker asks of the data plane: forward a publish to a member,
//!   kick a connection on another member, the members to forward retained messages to.
//! - `handover`: the calls a member that took a client over makes to the one that held
//!   its session (`HandOver`, `Release`).
//! - `node`: [`ClusterNode`], a running member: start, reads, status, removal, shutdown;
//!   [`ChangeStream`]; attaching the broker.
//! - `in_force`: a SUBACK waits until every other member has folded the subscription.
//! - `fold`: the registry fold, applied changes told to the local broker.
//! - `cert_fold`: certificates that stopped being active, told to the local broker.
//! - `server`: the gRPC server (`Raft`, `Cluster`, `Forward` and `Session` services).
//! - `session_service`: the `Session` service: kicks from other members, sessions handed
//!   over to the member that took their client.
//! - `session_wire`: a handed-over session page between the seam and protobuf.
//! - `forward`: the data plane: one bounded queue and batched stream per peer, and the
//!   `Forward` service that delivers what peers send to the local broker.
//! - `node_watch`: the leader marks members it has not heard from down, and up again.
//! - `withdraw`: a registration whose proposal failed with an unknown outcome is
//!   unregistered again, so a late commit leaves no ghost owner.
//! - `proposer`: batches concurrent commands into one log entry; forwards to the leader.
//! - `membership`: `--peers` bootstrap, join through any member, member records, removal.
//! - `status`: [`ClusterStatus`], this node's or the leader's.
//! - `shared`: what a member's parts share (identity, Raft, peers, registry view).
//! - `election_gate`: a member that did not run for a while (stopped, starved) campaigns
//!   only after running an election timeout without hearing from a leader.
//! - `network`: the Raft RPC client (openraft's network traits over gRPC).
//! - `state_machine`: openraft's state machine over the registry; snapshots in the store.
//! - `metrics`: metric names and the task that keeps the Raft gauges current.
//! - `log_store`: the storage crate's sled Raft log, noting the commit index.
//! - `peers`: one cached lazy gRPC channel per member, and when each was last heard from.
//! - `registry`: the replicated state and its deterministic `apply`; snapshot format;
//!   change events.
//! - `broker_slot`: where the local broker is attached, for what peers ask of this node.
//! - `convert`: openraft records ⇄ protobuf messages.
//! - `settings`: [`RaftSettings`] (timeouts, batching, compaction).
//! - `join`: awaiting several futures at once on the caller's task.
//! - `epoch`: connection epochs stamped by the proposer.
//! - `error`: [`ClusterError`].
//! - `types`: the openraft type config, [`Node`], the protobuf app-data wrapper.

mod broker_slot;
mod cert_fold;
mod certificates;
mod commands;
mod convert;
mod data_plane;
mod election_gate;
mod epoch;
mod error;
mod fold;
mod forward;
mod handle;
mod handover;
mod in_force;
mod join;
mod log_store;
mod membership;
pub mod metrics;
mod network;
pub mod node;
mod node_watch;
mod peers;
mod proposer;
mod registry;
mod server;
mod session_service;
mod session_wire;
mod settings;
mod shared;
mod state_machine;
mod status;
mod types;
mod withdraw;

pub use commands::Registration;
pub use error::{ClusterError, Result};
pub use membership::{parse_peers, Peer};
pub use node::{ChangeStream, ClusterConfig, ClusterNode, NotReady};
pub use registry::{
    AppliedChanges, Change, ChangeEvent, ClientEntry, ClientIds, DownClient, Owner, PreviousOwner,
    Registry, Subscription, SubscriptionOptions, Subscriptions, SNAPSHOT_FORMAT,
};
pub use settings::{ForwardSettings, RaftSettings, MAX_ENTRIES_PER_APPEND, PURGE_BATCH_ENTRIES};
pub use state_machine::RegistryView;
pub use status::{ClusterStatus, MemberStatus, Role};
pub use types::{Membership, Node, NodeId};
