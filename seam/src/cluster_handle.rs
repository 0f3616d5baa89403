//! The outbound half of the seam: what the broker asks of its cluster. The broker only
//! talks to the cluster through [`ClusterHandle`]; a single node is a one-member cluster
//! behind the same trait.

use std::sync::Arc;

use crate::box_future::BoxFuture;
use crate::broker_handle::{
    ForwardedPublish, HandedOverSubscription, RegisteredConnection, RegisteredWill, SessionHandover,
};
use crate::certificate::{
    CertificateRecord, CertificateRegistration, CertificateStatus, SeenCertificate,
};
use crate::forward_tally::{ForwardError, ForwardTally};
use crate::ids::{ClientId, NodeId};

/// The outcome of claiming a client id cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Increases with every registration of this client id, so a late command of an older
    /// connection can't change a newer one's state. Every later call for this connection
    /// passes it back.
    pub epoch: u64,
    /// MQTT Session Present, from the replicated registry: a session of this client id
    /// existed (on any node) and the CONNECT did not ask for a clean start.
    pub session_present: bool,
    /// Who held the client id before, if anyone.
    pub previous: Option<PreviousOwner>,
    /// The session's subscriptions as the registry holds them (empty without a session
    /// present): what a node that did not hold the session rebuilds it from.
    pub subscriptions: Vec<HandedOverSubscription>,
    /// The registry log index of the registration (0: unknown, e.g. a single node's).
    pub log_index: u64,
}

/// The connection (or offline session) a registration replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousOwner {
    pub node: NodeId,
    pub epoch: u64,
    /// A connection held it; false: an offline session.
    pub online: bool,
}

/// Where a client id is, cluster-wide, as the registry on this node has applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLocation {
    pub client_id: ClientId,
    pub node: NodeId,
    pub epoch: u64,
    pub online: bool,
    pub clean_start: bool,
    pub session_expiry_secs: u32,
    /// When the owning connection registered, ms since the Unix epoch.
    pub connected_at_ms: u64,
    /// Since when no connection holds it, ms since the Unix epoch.
    pub offline_since_ms: Option<u64>,
    pub subscriptions: usize,
}

/// A member's record: how other nodes and events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    /// The gRPC address members dial (`host:port`).
    pub grpc: String,
    /// The advertised MQTT address (`ip:port`): the `node` field of events.
    pub mqtt: String,
}

/// The cluster as the admin API shows it (`GET /api/v1/cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOverview {
    pub node_id: NodeId,
    pub node_name: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MemberOverview>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberOverview {
    pub record: NodeRecord,
    /// A voter (false: a learner).
    pub voter: bool,
    pub reachable: bool,
    /// Since the leader last heard from it; None when unknown.
    pub last_contact_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// No quorum, no leader, or a timeout: MQTT's Server Unavailable (0x88, return code 3).
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    /// The connection's registration was replaced (taken over) before the command applied.
    #[error("the client id is owned by a newer connection")]
    NotOwner,
    /// The cluster refused the request as invalid.
    #[error("refused by the cluster: {0}")]
    Invalid(String),
    /// No such member, or no such client.
    #[error("not found: {0}")]
    NotFound(String),
    /// The peer answered, and asks to be asked again shortly (it is busy with the
    /// request's subject: a session still closing, a registration it has not applied).
    #[error("busy, ask again: {0}")]
    Busy(String),
}

/// Implemented by the cluster (and, for unit tests, by a one-node double); called by the
/// broker.
///
/// Contract:
/// - One owner: after `register_client` returns, at most one live connection holds the
///   client id cluster-wide; a previous owner on another node is told through that node's
///   [`crate::BrokerHandle::taken_over`].
/// - Input order: a SUBSCRIBE whose bytes reached a node before another client's PUBLISH
///   reached it is in force for that PUBLISH (on one node, the broker's `input_order`
///   module does this).
/// - A SUBACK means the subscription is in force for every publish any node accepts
///   after it was sent: `subscribe` returns only once every reachable member's broker has
///   folded it into its interest index. A PUBACK/PUBREC means every target (local
///   sessions, each peer node with interest, the offline queue on disk) has the message:
///   the broker awaits `forward` (or the tally of `forward_tallied`) before acknowledging.
pub trait ClusterHandle: Send + Sync {
    fn node_id(&self) -> NodeId;

    /// Claims `client_id` for a connection on this node (CONNECT): committed cluster-wide
    /// before it returns.
    fn register_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        clean_start: bool,
        session_expiry_secs: u32,
    ) -> BoxFuture<'a, Result<Registration, ClusterError>>;

    /// [`Self::register_client`] for a connection with a will and what its events say
    /// about it: the cluster keeps both while the connection is online, for the node that
    /// adopts or announces the client should this node die (it publishes the will and the
    /// `node_down` event then). Without a cluster there is nobody to give them to.
    fn register_connection<'a>(
        &'a self,
        client_id: &'a ClientId,
        clean_start: bool,
        session_expiry_secs: u32,
        will: Option<RegisteredWill>,
        connection: Option<RegisteredConnection>,
    ) -> BoxFuture<'a, Result<Registration, ClusterError>> {
        let _ = (will, connection);
        self.register_client(client_id, clean_start, session_expiry_secs)
    }

    /// Releases the claim taken with `epoch` (the connection ended); with `session_ended`
    /// the session is forgotten, otherwise it stays on this node, offline. A no-op (Ok) if
    /// a newer claim exists.
    fn unregister_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        session_ended: bool,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// Adds or replaces subscriptions of connection `epoch`; returns once they are in force
    /// cluster-wide (see the contract above).
    fn subscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        subscriptions: Vec<HandedOverSubscription>,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// Removes subscriptions (full filters, with any `$share/group/` prefix) of connection
    /// `epoch`.
    fn unsubscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        filters: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// Sends `publish` one hop to `node`. The message is queued before this returns, so the
    /// order of calls is the order the peer sees; the future resolves once the peer
    /// accepted it (delivered to its sessions, written where an offline session needs it).
    /// Dropping the future does not withdraw the message.
    fn forward(
        &self,
        node: NodeId,
        publish: ForwardedPublish,
    ) -> BoxFuture<'static, Result<(), ForwardError>>;

    /// [`Self::forward`] answered through `tally` instead of a future of its own (see
    /// [`ForwardTally`]): the forward of publish `ticket` of a read batch. On Ok it was
    /// queued, in call order as `forward`'s, and counted in `tally` as outstanding until
    /// the peer's answer (or the forward timeout) settles it; Err when it was refused at
    /// once, and then `tally` does not count it. A batch the peer accepts answers all its
    /// forwards together. The default answers it with [`Self::forward`]'s future.
    fn forward_tallied(
        &self,
        node: NodeId,
        publish: ForwardedPublish,
        tally: &Arc<ForwardTally>,
        ticket: u32,
    ) -> Result<(), ForwardError> {
        tally.attach(ticket, self.forward(node, publish));
        Ok(())
    }

    /// [`Self::forward`] for a publish nobody waits on (QoS 0): queued the same way, in the
    /// same order, but the peer's answer is not kept for anyone. Err only when the queue
    /// refused it at once (full, or the peer is not a member), which is counted.
    fn forward_unanswered(
        &self,
        node: NodeId,
        publish: ForwardedPublish,
    ) -> Result<(), ForwardError> {
        drop(self.forward(node, publish));
        Ok(())
    }

    /// Backpressure for publishers whose forwards nobody waits for (QoS 0): None while the
    /// queue to `node` has room; otherwise a future that resolves once it has room again
    /// (true) or after a bound (false: forwards beyond the queue's bound are then dropped
    /// and counted). A connection awaits it before reading more, so a fast publisher slows
    /// to the peer's pace instead of losing messages.
    fn forward_room(&self, node: NodeId) -> Option<BoxFuture<'static, bool>> {
        let _ = node;
        None
    }

    /// The other members (voters and learners), as this node knows the membership: where
    /// a retained message is forwarded, whether or not they have interest.
    fn other_members(&self) -> Vec<NodeId>;

    /// A member's record (for the `node` fields of events), if `node` is a member.
    fn node_record(&self, node: NodeId) -> Option<NodeRecord>;

    /// Where `client_id` is, cluster-wide.
    fn locate_client(&self, client_id: &ClientId) -> Option<ClientLocation>;

    /// The node that owns `client_id` and its session's subscriptions, as the registry on
    /// this node has applied it (None: no such client): what a CONNECT that resumes the
    /// session here subscribes to before its registration makes other nodes route here.
    fn session_subscriptions(
        &self,
        client_id: &ClientId,
    ) -> Option<(NodeId, Vec<HandedOverSubscription>)> {
        let _ = client_id;
        None
    }

    /// Registered clients, cluster-wide, in client id order after `after`, at most `limit`.
    fn clients(&self, after: Option<&str>, limit: usize) -> Vec<ClientLocation>;

    /// Ends the connection of `client_id` on `node` (another member) as an administrative
    /// kick; false when that node had no such connection.
    fn kick_remote<'a>(
        &'a self,
        node: NodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<bool, ClusterError>>;

    /// Asks member `holder`, which held `client_id`'s session under registration
    /// `holder_epoch` before this node took the client over, for one page of its messages
    /// (see [`crate::BrokerHandle::hand_over_session`]). `Busy`: ask again shortly (the
    /// holder has not applied the takeover yet, its connection is still closing);
    /// `Unavailable`: the holder cannot be reached; `NotOwner`: the registry names another
    /// node as the owner now.
    fn fetch_session<'a>(
        &'a self,
        holder: NodeId,
        client_id: &'a ClientId,
        holder_epoch: u64,
        after: u64,
        max: u32,
    ) -> BoxFuture<'a, Result<SessionHandover, ClusterError>> {
        let _ = (holder, client_id, holder_epoch, after, max);
        Box::pin(async {
            Err(ClusterError::Unavailable(
                "sessions are not handed over between nodes here".into(),
            ))
        })
    }

    /// Tells member `holder` that this node has written the messages of `client_id`'s
    /// session up to `up_to` (the holder's `seq`): it deletes them (see
    /// [`crate::BrokerHandle::release_session`]).
    fn release_session<'a>(
        &'a self,
        holder: NodeId,
        client_id: &'a ClientId,
        holder_epoch: u64,
        up_to: u64,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        let _ = (holder, client_id, holder_epoch, up_to);
        Box::pin(async {
            Err(ClusterError::Unavailable(
                "sessions are not handed over between nodes here".into(),
            ))
        })
    }

    /// Tells member `owner`, which owns `client_id`, that this node holds messages of its
    /// session (see [`crate::BrokerHandle::adopt_offered`]): it fetches them. Returns how
    /// many it took.
    fn offer_session<'a>(
        &'a self,
        owner: NodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<usize, ClusterError>> {
        let _ = (owner, client_id);
        Box::pin(async {
            Err(ClusterError::Unavailable(
                "sessions are not handed over between nodes here".into(),
            ))
        })
    }

    /// The cluster's members, leader and progress (member reachability from the leader).
    fn overview(&self) -> BoxFuture<'_, Result<ClusterOverview, ClusterError>>;

    /// Removes member `node` from the cluster.
    fn remove_member(&self, node: NodeId) -> BoxFuture<'_, Result<(), ClusterError>>;

    // ---- Device certificates (issue 16): replicated like the client registry. ----

    /// Registers `seen` with `status` unless the registry has it already; committed
    /// cluster-wide before it returns. Of several nodes registering one certificate at
    /// once, the log order picks the one that gets `created: true`.
    fn register_certificate(
        &self,
        seen: SeenCertificate,
        status: CertificateStatus,
    ) -> BoxFuture<'_, Result<CertificateRegistration, ClusterError>> {
        let _ = (seen, status);
        Box::pin(async {
            Err(ClusterError::Unavailable(
                "this cluster keeps no certificate registry".into(),
            ))
        })
    }

    /// The certificate with serial number `sn`, as the registry on this node has applied it.
    fn certificate(&self, sn: &str) -> Option<CertificateRecord> {
        let _ = sn;
        None
    }

    /// Every registered certificate, in serial number order.
    fn certificates(&self) -> Vec<CertificateRecord> {
        Vec::new()
    }

    /// Sets the status of certificate `sn`; committed cluster-wide before it returns.
    /// `NotFound` for an unknown serial number. Every node ends its connections that use a
    /// certificate whose status is not active (see [`crate::BrokerHandle`]).
    fn set_certificate_status<'a>(
        &'a self,
        sn: &'a str,
        status: CertificateStatus,
    ) -> BoxFuture<'a, Result<CertificateRecord, ClusterError>> {
        let _ = (sn, status);
        Box::pin(async {
            Err(ClusterError::Unavailable(
                "this cluster keeps no certificate registry".into(),
            ))
        })
    }
}
