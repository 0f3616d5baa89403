//! The inbound half of the seam: what the cluster asks of the local broker. The broker
//! implements [`BrokerHandle`]; the cluster's server calls it for what peer nodes send.
//! Only plain values cross here (no broker types), so that the cluster never needs the
//! broker crate.

use std::sync::Arc;

use bytes::Bytes;

use crate::box_future::BoxFuture;
use crate::ids::{ClientId, NodeId};

/// A publish that another node accepted and forwards to this one, which has matching
/// subscriptions. The default is an empty QoS 0 publish on topic "" for no one, what a
/// decoder starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedPublish {
    /// A topic name (no wildcards). Shared, as the broker holds it: forwarding a message
    /// to several nodes copies no topic.
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// 0, 1 or 2, as on the wire.
    pub qos: u8,
    pub retain: bool,
    pub properties: PublishProperties,
    /// Unix milliseconds when the publishing node received it: Message Expiry counts
    /// from there.
    pub received_at_ms: u64,
    /// The publishing client; None for a message a node published itself (events).
    pub publisher: Option<ClientId>,
    /// The publisher's username, for the events that name it.
    pub publisher_username: Option<Arc<str>>,
    /// The id the origin node gave the publish (None from a node that gives none): one
    /// publish routed to two nodes has one id, two alike publishes have two.
    pub publish_id: Option<u64>,
    /// Deliver to the receiver's ordinary (non-shared) subscriptions that match.
    pub to_subscribers: bool,
    /// Shared subscription groups the sender picked the receiver for: one member of each
    /// on the receiving node gets the message.
    pub shared: Vec<SharedTarget>,
    /// Redirected from the forward queue of node `adopted_from`, which was marked down
    /// before it took the message: deliver only to the sessions this node adopted from it
    /// (ignoring `to_subscribers` and `shared`: this node's own subscribers had their copy).
    pub adopted_from: Option<NodeId>,
    /// Redirected by a node that client `for_client`'s session moved away from (the
    /// sender routed it there by a registry older than the move): deliver only to that
    /// session, through its own subscriptions, unless it has the publish already. Comes
    /// before `adopted_from`, `to_subscribers` and `shared`.
    pub for_client: Option<ClientId>,
    /// The subscribers may have it already (a forward resent to a node that restarted
    /// since it may have delivered it, or redirected from such a node or from one marked
    /// down): sent with DUP, and left out for a session that holds the publish.
    pub possibly_delivered: bool,
    /// The registry log index the sending node had folded at most when it routed the
    /// message (its batch's `folded_index`; 0: unknown). A session that came to the
    /// receiver from another node by a registration at a higher index was elsewhere in
    /// the sender's routing: the node that held it then got the message for it (and may
    /// have delivered it), so the receiver's copy goes to it as a possible redelivery.
    /// Set by the receiving node; never on the wire.
    pub routed_index: u64,
}

/// A shared subscription group (`$share/{group}/{filter}`) a forwarded publish is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedTarget {
    pub group: String,
    /// The filter after `$share/{group}/`.
    pub filter: String,
}

/// The MQTT 5 properties that travel with a message from publisher to subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// Why the cluster asks the broker to end a local client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// The client id connected on node `by`, which took the session over.
    TakenOver { by: NodeId },
    /// An operator kicked the client through another node.
    Administrative,
}

/// One page of a session's messages, as the node that held it hands them to the node
/// that took the client over (the subscriptions come from the registry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionHandover {
    /// Seconds the session outlives its connection, as the holder had it.
    pub expiry_interval: u32,
    /// In-flight and queued messages after the requested cursor, oldest first.
    pub messages: Vec<HandedOverMessage>,
    /// Nothing follows the last message of this page.
    pub complete: bool,
    /// QoS 2 packet ids the client published that await its PUBREL (first page only).
    pub incoming_qos2: Vec<u16>,
    /// Older messages of the session may still be on this node, held under this
    /// registration epoch: the holder took the client over from it without fetching
    /// everything (first page only). The taker fetches from there first.
    pub earlier: Option<(NodeId, u64)>,
    /// The publish ids of the last messages the client acknowledged on the holder (first
    /// page only): the taker leaves out the copies of them it got directly.
    pub delivered: Vec<u64>,
    /// How far the holder wrote what `earlier` holds, unconfirmed (0: nothing): the
    /// taker has the earlier node delete that before fetching from it (first page only).
    pub earlier_released_up_to: u64,
}

/// One message of a handed-over session, as the holder's session held it for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOverMessage {
    /// The holder's order: the cursor of the next page, what a release deletes up to.
    pub seq: u64,
    /// `qos` and `retain` as the subscriber gets them.
    pub message: ForwardedPublish,
    pub subscription_ids: Vec<u32>,
    /// In flight: the packet id the client was sent it under (resent with DUP).
    pub packet_id: Option<u16>,
    /// QoS 2 in flight with PUBREL sent: only the PUBCOMP is missing.
    pub released: bool,
    /// Queued (no packet id), yet the client may have it already (the holder restarted
    /// after a crash, or got it in flight from a node before): the taker sends it with DUP.
    pub possibly_sent: bool,
}

/// One subscription of a handed-over session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOverSubscription {
    /// The full filter, with any `$share/group/` prefix.
    pub filter: String,
    /// The granted QoS, 0..=2.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0..=2, as on the wire.
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

/// A client of a node the cluster marked down (it died, or was paused or cut off for
/// longer than the detection time), as far as it concerns the node told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownClient {
    pub client_id: ClientId,
    /// The node marked down, and the client's registration epoch there.
    pub node: NodeId,
    pub epoch: u64,
    /// A connection held it: one `client.disconnected` event (reason `node_down`) is due.
    pub was_online: bool,
    /// This node emits that event (exactly one node does, cluster-wide).
    pub announce: bool,
    pub clean_start: bool,
    /// When its connection registered, and since when it is offline (ms since the epoch).
    pub connected_at_ms: u64,
    pub offline_since_ms: u64,
    /// This node adopted the session: it holds it, offline, from now on.
    pub adopted: Option<AdoptedSession>,
    /// The will of the connection that was online (given to the node that publishes it:
    /// the adopter, after its delay unless the client returns first; for a session that
    /// ended, the announcer, at once).
    pub will: Option<RegisteredWill>,
    /// What the events of its connection said about it (given to the announcer, for the
    /// `node_down` event); None when the registration did not carry it (an older build).
    pub connection: Option<RegisteredConnection>,
}

/// A connection as its events describe it, kept by the cluster while it is online for the
/// node that announces its end should its node die. Never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisteredConnection {
    pub username: Option<String>,
    /// The client's address (None: unknown).
    pub peer: Option<std::net::SocketAddr>,
    /// The listener address it connected to (None: unknown).
    pub sockname: Option<std::net::SocketAddr>,
    /// The MQTT protocol level: 3, 4 or 5 (0: unknown).
    pub protocol_level: u8,
    pub websocket: bool,
    pub keepalive: u16,
}

/// A connection's will as the cluster keeps it while the connection is online, for the
/// node that adopts its client should its node die.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredWill {
    /// Topic, payload, QoS, retain and properties as the will's message carries them
    /// (`publisher` is the client; the other fields are unused).
    pub message: ForwardedPublish,
    /// MQTT 5 Will Delay Interval, seconds.
    pub delay_secs: u32,
}

/// A session this node adopted from a node marked down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedSession {
    /// Its registration here (offline): a later CONNECT elsewhere takes it over from it.
    pub epoch: u64,
    pub expiry_interval: u32,
    /// Its subscriptions, as the registry holds them.
    pub subscriptions: Vec<HandedOverSubscription>,
}

/// Why the broker could not do what the cluster asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerHandleError {
    /// What the peer sent cannot be valid (a bad QoS, a topic with wildcards).
    #[error("invalid request from a peer: {0}")]
    Invalid(String),
    /// Storage could not take what delivery needed written: nothing may be acknowledged.
    #[error("storage failure: {0}")]
    Storage(String),
    /// This broker cannot do it yet.
    #[error("not supported yet: {0}")]
    NotSupported(&'static str),
    /// Not now (the takeover has not applied here yet, the old connection is still
    /// detaching): ask again.
    #[error("not yet: {0}")]
    NotYet(String),
    /// The asking node is not the one the registry names as the client's owner.
    #[error("not the owner: {0}")]
    NotOwner(String),
}

/// Implemented by the broker; called by the cluster.
pub trait BrokerHandle: Send + Sync {
    /// Delivers a publish another node accepted to this node's matching sessions, and
    /// only to them: a forwarded publish is not forwarded again, except once to the owner
    /// of a persistent session that moved away from this node (the sender routed it by an
    /// older registry), marked `for_client`. Completes once every local target has it
    /// (written to disk where an offline session needs it) and such an owner took it, so
    /// the publishing node may acknowledge (`NotYet`: the owner did not; send it again).
    /// Returns how many local sessions it matched. Routing happens when the future is
    /// first polled, only the waits for storage and owners after (a message redirected
    /// from a node marked down first waits, a bounded time, until this node applied the
    /// mark): a caller that polls several in turn has them routed in that order while
    /// their storage waits overlap.
    fn deliver_forwarded(
        &self,
        publish: ForwardedPublish,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>>;

    /// Delivers a batch of forwarded publishes, in order, each as
    /// [`Self::deliver_forwarded`] would; one outcome per publish, in the same order.
    /// Completes once every local target of every publish has it. The broker's own
    /// implementation routes them all in one go, wakes their subscribers once and flushes
    /// storage once; this default delivers them one after another.
    fn deliver_forwarded_batch(
        &self,
        publishes: Vec<ForwardedPublish>,
    ) -> BoxFuture<'_, Vec<Result<usize, BrokerHandleError>>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(publishes.len());
            for publish in publishes {
                outcomes.push(self.deliver_forwarded(publish).await);
            }
            outcomes
        })
    }

    /// Tells the connection of `client_id` on this node to go away for `reason`; its
    /// session stays. False when no connection of that client is attached here.
    fn kick(&self, client_id: &ClientId, reason: KickReason) -> bool;

    /// The registration `epoch` of `client_id`, which this node held (online or as an
    /// offline session), was replaced by one on node `by` (another node; a takeover on this
    /// node is the broker's own). Called once per takeover, on the node that held it, as
    /// the registry change applies here: the connection with that epoch, if still attached,
    /// ends as taken over (the disconnect event names `by`), and the session's subscriptions
    /// leave this node's index (they are `by`'s now). Messages queued for the session stay
    /// stored here.
    fn taken_over(&self, client_id: &ClientId, epoch: u64, by: NodeId);

    /// A registration of `client_id` on this node replaced one on another node, and applies
    /// here now; called as the fold takes the entry, just before the entry's interest
    /// changes: from then on this node's own publishes no longer go to that node for the
    /// client, so a session prepared here for it must take them (see the broker's
    /// `preindex_resumed`).
    fn registered_here(&self, client_id: &ClientId) {
        let _ = client_id;
    }

    /// Node `node` was marked down; `clients` are those of its clients this node has to do
    /// with (it adopts them, or announces their end), or all of them when `node` is this
    /// node (it was paused or cut off, and learns it on catching up: their connections
    /// here end without a second event; what is stored here for them stays, for the new
    /// owners to fetch). Called as the fold takes the entry, before its interest changes:
    /// an adopted session is indexed here before other nodes' publishes are routed to it.
    fn node_down(&self, node: NodeId, clients: Vec<DownClient>) {
        let _ = (node, clients);
    }

    /// Node `node` (never this one) now has `subscribers` sessions subscribed to `filter`
    /// (the full filter, with any `$share/group/` prefix); 0: none any more.
    fn interest_changed(&self, filter: &str, node: NodeId, subscribers: u32);

    /// Several [`Self::interest_changed`] at once, in order: a publish routed meanwhile
    /// sees all of them or none (a takeover moves a session's interest from one node to
    /// another: in between, a publish would find no node with interest, or two). The
    /// broker's own does them under one lock; this default, one after another.
    fn interest_changed_many(&self, changes: Vec<(String, NodeId, u32)>) {
        for (filter, node, subscribers) in changes {
            self.interest_changed(&filter, node, subscribers);
        }
    }

    /// Replaces the whole interest index of other nodes (after a snapshot was installed or
    /// the change stream lagged): `(filter, node, subscribers)` for every other node.
    fn interest_reset(&self, interest: Vec<(String, NodeId, u32)>);

    /// This node's retained messages (unexpired), each as a forwarded publish with `retain`
    /// set and no subscribers to deliver to: what a node that starts or joins fetches.
    fn retained_messages(&self) -> Vec<ForwardedPublish>;

    /// Stores retained messages another member holds (fetched when this node started or
    /// joined): each one for whose topic this node holds none or an older one (by
    /// `received_at_ms`); nothing is delivered to sessions. Returns how many were stored.
    fn restore_retained(
        &self,
        messages: Vec<ForwardedPublish>,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>>;

    /// One page of the session of `client_id` for node `taker`, which the registry names
    /// as its owner now: up to `max` in-flight and queued messages after the holder's
    /// `after` (its `seq`), oldest first. From the first call on the session here takes no
    /// new messages (they go to the owner); what this returns stays stored here until
    /// [`Self::release_session`]. Complete and empty when this node holds no such session.
    fn hand_over_session<'a>(
        &'a self,
        client_id: &'a ClientId,
        taker: NodeId,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<SessionHandover, BrokerHandleError>> {
        let _ = (client_id, taker, after, max);
        Box::pin(async { Err(BrokerHandleError::NotSupported("handing sessions over")) })
    }

    /// Node `taker` has written the handed-over messages up to `up_to` (the holder's
    /// `seq`) to its own store: they are deleted here (again: nothing happens); once none
    /// is left the session is forgotten here. False when this node holds no such session.
    fn release_session<'a>(
        &'a self,
        client_id: &'a ClientId,
        taker: NodeId,
        up_to: u64,
    ) -> BoxFuture<'a, Result<bool, BrokerHandleError>> {
        let _ = (client_id, taker, up_to);
        Box::pin(async { Err(BrokerHandleError::NotSupported("handing sessions over")) })
    }

    /// Node `holder` holds messages of the session of `client_id`, which this node owns:
    /// fetch them as a takeover does (see [`Self::hand_over_session`]). Returns how many
    /// came. `NotOwner` when this node does not own the client (or holds no session of it).
    fn adopt_offered<'a>(
        &'a self,
        client_id: &'a ClientId,
        holder: NodeId,
    ) -> BoxFuture<'a, Result<usize, BrokerHandleError>> {
        let _ = (client_id, holder);
        Box::pin(async { Err(BrokerHandleError::NotSupported("handing sessions over")) })
    }

    /// Device certificate `sn` now has `status`, other than active (the registry change
    /// applied here): the connections on this node that use it end (reason `kicked`).
    fn certificate_disabled(&self, sn: &str, status: crate::CertificateStatus) {
        let _ = (sn, status);
    }

    /// The certificate changes may have been missed (a snapshot was installed, the change
    /// stream lagged): the broker looks up the status of every certificate its connections
    /// use and ends those not active.
    fn certificates_recheck(&self) {}
}
