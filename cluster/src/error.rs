//! The crate's error type.

use std::time::Duration;

use crate::types::NodeId;

/// Everything that can go wrong running a cluster node or asking it for something.
///
/// For the broker: [`ClusterError::is_unavailable`] says the cluster cannot take the request
/// now (no leader, overloaded, shutting down, leader unreachable): refuse the client with
/// "server unavailable" (MQTT 5 0x88, 3.1.1 return code 3) and let it retry.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting is out of range or inconsistent with another.
    #[error("invalid cluster setting {name}: {reason}")]
    InvalidSetting { name: &'static str, reason: String },

    /// `--peers` could not be parsed.
    #[error("invalid peers list {spec:?}: {reason}")]
    InvalidPeers { spec: String, reason: String },

    /// The node's store could not be opened or read.
    #[error("cluster storage: {0}")]
    Storage(#[from] skein_storage::StorageError),

    /// openraft's storage layer failed (log, vote or snapshot).
    #[error("Raft storage: {0}")]
    RaftStorage(Box<openraft::StorageError<NodeId>>),

    /// The Raft node stopped (shut down, or after a storage failure).
    #[error("Raft stopped: {0}")]
    Stopped(Box<openraft::error::Fatal<NodeId>>),

    /// No leader was known within the wait (an election, or this node is in a minority).
    #[error("no Raft leader within {0:?}")]
    NoLeader(Duration),

    /// The proposal was not answered in time. It may still commit.
    #[error("proposal not committed within {0:?} (it may still commit)")]
    Timeout(Duration),

    /// The proposal queue is full.
    #[error("too many pending proposals (queue of {0})")]
    Overloaded(usize),

    /// The node is shutting down.
    #[error("the cluster node is shutting down")]
    ShuttingDown,

    /// A gRPC call to another member failed. Its outcome is unknown when it was a proposal.
    #[error("gRPC call {call} to {addr} failed: {status}")]
    Rpc {
        call: &'static str,
        addr: String,
        #[source]
        status: Box<tonic::Status>,
    },

    /// A message from another member lacks a part the protocol requires.
    #[error("malformed {what} from another member: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },

    /// Snapshot bytes could not be read (damaged, or written by a newer Skein).
    #[error("invalid registry snapshot: {0}")]
    Snapshot(String),

    /// Another membership change is still being committed; retry shortly.
    #[error("a membership change is in progress")]
    MembershipBusy,

    /// openraft refused a membership change (e.g. an unknown learner, or removing the last
    /// voter).
    #[error("membership change refused: {0}")]
    Membership(String),

    /// A node could not join: no member was reachable at the given address, or the join did
    /// not finish in time.
    #[error("cannot join the cluster through {addr}: {reason}")]
    Join { addr: String, reason: String },

    /// A proposal failed for a reason other than the ones above (the message says which).
    #[error("proposal failed: {0}")]
    Proposal(String),

    /// The registry refused the command. `not_owner`: the connection's (node, epoch) no
    /// longer holds the client id (it was taken over); otherwise the command was malformed.
    #[error("registry command rejected: {detail}")]
    Rejected { not_owner: bool, detail: String },

    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl ClusterError {
    /// The cluster cannot take the request right now; retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader(_)
                | ClusterError::MembershipBusy
                | ClusterError::Timeout(_)
                | ClusterError::Overloaded(_)
                | ClusterError::ShuttingDown
                | ClusterError::Rpc { .. }
                | ClusterError::Stopped(_)
        )
    }
}

impl From<openraft::StorageError<NodeId>> for ClusterError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        ClusterError::RaftStorage(Box::new(e))
    }
}

impl From<openraft::error::Fatal<NodeId>> for ClusterError {
    fn from(e: openraft::error::Fatal<NodeId>) -> Self {
        ClusterError::Stopped(Box::new(e))
    }
}

impl ClusterError {
    /// The same error for another waiter of a failed batch (causes that cannot be cloned are
    /// carried as text).
    pub(crate) fn duplicate(&self) -> ClusterError {
        match self {
            ClusterError::NoLeader(d) => ClusterError::NoLeader(*d),
            ClusterError::Timeout(d) => ClusterError::Timeout(*d),
            ClusterError::Overloaded(n) => ClusterError::Overloaded(*n),
            ClusterError::ShuttingDown => ClusterError::ShuttingDown,
            ClusterError::MembershipBusy => ClusterError::MembershipBusy,
            ClusterError::Stopped(e) => ClusterError::Stopped(e.clone()),
            ClusterError::Malformed { what, reason } => ClusterError::Malformed { what, reason },
            ClusterError::Rpc { call, addr, status } => ClusterError::Rpc {
                call,
                addr: addr.clone(),
                status: status.clone(),
            },
            other => ClusterError::Proposal(other.to_string()),
        }
    }
}

/// Result alias of the crate.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
