//! What applying the log changed, as the broker folds it into its local views.

use std::sync::Arc;

use arcstr::ArcStr;

use crate::registry::{Owner, SubscriptionOptions};
use crate::types::NodeId;

/// The changes one log entry made, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedChanges {
    /// The index of the entry that made them.
    pub log_index: u64,
    pub changes: Vec<Change>,
}

/// One change to the replicated registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `client_id` now belongs to `owner`. When `previous` was another connection, the node
    /// holding it disconnects it (taken over by `owner.node`).
    Registered {
        client_id: ArcStr,
        owner: Owner,
        /// Who held the id before (online or as an offline session).
        previous: Option<PreviousOwner>,
        session_present: bool,
    },
    /// The connection `owner` ended; with `session_ended` the client is forgotten, otherwise
    /// its session stays on `owner.node`, offline.
    Unregistered {
        client_id: ArcStr,
        owner: Owner,
        session_ended: bool,
    },
    /// A client's subscription was added or replaced.
    Subscribed {
        client_id: ArcStr,
        node: NodeId,
        filter: Arc<str>,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    },
    /// A client's subscription was removed by an UNSUBSCRIBE (subscriptions dropped with a
    /// session are not listed one by one: see [`Change::Interest`]).
    Unsubscribed {
        client_id: ArcStr,
        node: NodeId,
        filter: Arc<str>,
    },
    /// Node `node` was marked down at `at_ms` (`down`), or no longer is. When marked down,
    /// a [`Change::NodeDownClient`] follows for each client it owned.
    NodeMarked {
        node: NodeId,
        down: bool,
        at_ms: u64,
    },
    /// A client of a node marked down went offline with it (see [`DownClient`]; boxed: the
    /// other changes are far smaller and far more common).
    NodeDownClient(Box<DownClient>),
    /// How many clients of `node` subscribe to `filter` changed; 0 means none do any more.
    /// The interest index (filter → nodes) is the sum of these.
    Interest {
        filter: Arc<str>,
        node: NodeId,
        subscribers: u32,
    },
    /// Device certificate `sn` was registered with, or set to, `status`. Every node ends
    /// its connections that use a certificate whose status is not active.
    CertificateStatus {
        sn: String,
        status: skein_proto::v1::CertificateStatus,
    },
}

/// A client of a node marked down: its session ended (no `adopter`) or was adopted.
#[derive(Debug, Clone, PartialEq)]
pub struct DownClient {
    pub client_id: ArcStr,
    /// Its registration on the node that went down.
    pub previous: Owner,
    /// A connection held it then (false: an offline session): one `client.disconnected`
    /// event (reason `node_down`) is due, from `announcer`.
    pub was_online: bool,
    /// The live node that emits the event: the adopter, or for a session that ended, the
    /// node the same pick names.
    pub announcer: NodeId,
    /// The session's new registration (offline) on the node that adopted it; None: the
    /// session ended (expiry 0).
    pub adopter: Option<Owner>,
    pub session_expiry_secs: u32,
    pub clean_start: bool,
    pub connected_at_ms: u64,
    /// Since when it is offline (the node-down stamp, or its earlier disconnect).
    pub offline_since_ms: u64,
    /// The will of its connection (online ones only): the adopter, or for a session that
    /// ended the announcer, publishes it.
    pub will: Option<skein_proto::v1::RegisteredWill>,
    /// What the events of its connection (online ones only) say about it, for the
    /// announcer's event; None when its registration did not carry it (an older build).
    pub connection: Option<skein_proto::v1::RegisteredConnection>,
}

/// The owner a registration replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousOwner {
    pub owner: Owner,
    /// A connection held it (false: an offline session).
    pub online: bool,
}

/// What a receiver of the change stream gets.
#[derive(Debug, Clone)]
pub enum ChangeEvent {
    /// The changes of one applied entry.
    Applied(Arc<AppliedChanges>),
    /// The registry was replaced wholesale (a snapshot from the leader was installed): read
    /// it again (see `ClusterNode::registry`) rather than fold changes, and disconnect local
    /// connections it no longer names as owners (as for [`ChangeEvent::Lagged`]).
    Reset { last_applied: Option<u64> },
    /// The receiver fell `missed` events behind and they were dropped (the stream is
    /// bounded): read the registry again, as for a reset. Takeovers may be among the
    /// missed events, so the receiver also compares each local connection's (client id,
    /// epoch) with the registry's owner and disconnects those that lost it.
    Lagged { missed: u64 },
}
