//! A client's session: subscriptions, the queue of messages waiting to be sent, outgoing
//! in-flight QoS 1/2 messages, incoming QoS 2 ids, and the will. It outlives connections.
//!
//! Lifecycle changes (attach, detach, takeover, expiry) are serialised by `lifecycle`, an
//! async lock; data changes happen under `state`, a short synchronous lock that is never
//! held across an await.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use skein_storage::{Store, StoredInflight, StoredSession, StoredSubscription};
use tokio_util::sync::CancellationToken;

use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions, Will};
use crate::events::ClientInfo;
use crate::hash::ProcessRandomState;
use crate::lazy_box::LazyBox;
use crate::message::Message;
use crate::storage_refusal::{self, NotStored};
use skein_seam::ClientId;

mod arrivals;
mod redirected;
mod signal;
mod state;
pub use arrivals::{publish_key, Arrivals, Delivered, GRACE_MS as ARRIVALS_GRACE_MS};
pub use redirected::Redirected;
pub use signal::{HeldWakes, Kick, KickSignal, Unpark, Unparker};

/// A message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The QoS it goes out at: min(published, granted).
    pub qos: QoS,
    /// Retain flag as sent to this subscriber.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Queued {
    pub seq: u64,
    pub delivery: Delivery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 waiting for PUBACK, or QoS 2 waiting for PUBREC.
    Sent,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub seq: u64,
    pub packet_id: u16,
    pub delivery: Delivery,
    pub state: InflightState,
}

/// The link from a session to the connection currently attached to it.
#[derive(Debug)]
pub struct Attachment {
    pub connection_id: u64,
    pub kick: Arc<KickSignal>,
    /// The connection's registration epoch in the cluster: a takeover applied elsewhere
    /// names the epoch it replaced, and ends this connection only if it is this one.
    pub epoch: u64,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// An optional Unix-milliseconds timestamp in 8 bytes instead of 16 (every session holds
/// two). A real timestamp is never 0; one that is, is stored as 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptionalMs(Option<std::num::NonZeroU64>);

impl OptionalMs {
    pub const NONE: OptionalMs = OptionalMs(None);

    pub fn at(ms: u64) -> OptionalMs {
        OptionalMs(std::num::NonZeroU64::new(ms.max(1)))
    }

    pub fn get(self) -> Option<u64> {
        self.0.map(std::num::NonZeroU64::get)
    }
}

#[derive(Debug)]
pub struct SessionState {
    pub protocol_level: u8,
    /// Seconds the session lives after its connection ends; 0 = ends with the connection.
    pub expiry_interval: u32,
    pub attachment: Option<Attachment>,
    /// Bumped on every attach and detach, so timers armed for an earlier state do nothing
    /// (compared for equality only, so it may wrap).
    pub generation: u32,
    pub disconnected_at_ms: OptionalMs,
    /// Full filter (with any `$share/group/` prefix) → options.
    pub subscriptions: HashMap<String, Subscription, ProcessRandomState>,
    pub queue: LazyBox<VecDeque<Queued>>,
    /// In send order (oldest first), so a resumed session retransmits in order. Mutate it
    /// only through `push_inflight` / `remove_inflight` / `take_inflight`, which keep
    /// `ids_in_use` in step.
    pub inflight: LazyBox<VecDeque<Inflight>>,
    /// Which packet ids are in flight, once there are many (a scan of a large window per
    /// message was a tenth of the CPU in fan-out benchmarks).
    ids_in_use: Option<Box<[u64; 1024]>>,
    /// A B-tree, not a hash set: 24 bytes instead of 48 in every session, and small.
    pub incoming_qos2: LazyBox<BTreeSet<u16>>,
    pub will: Option<Box<Will>>,
    /// Unix ms when a delayed will of the offline session is due (persisted with it).
    pub will_due_ms: OptionalMs,
    /// Cancels the expiry and will timers armed while offline; created when the first is
    /// armed (most sessions never need one), cancelled and dropped on attach.
    timers: Option<CancellationToken>,
    next_packet_id: u16,
    next_seq: u64,
    /// Set when the session has been removed from the registry; a connection that finds
    /// this after taking the lifecycle lock must look the client id up again.
    pub removed: bool,
    /// Sealed: another node took the client over and started fetching the session (or
    /// the client stayed away long enough): the session takes no new messages here and
    /// keeps what it holds until the owner has fetched it (see
    /// `broker/handover_holder.rs`). Cleared when a connection attaches here again.
    pub moved: bool,
    /// Older messages of this session may still be on this node, held there under this
    /// registration epoch: a takeover here did not fetch everything from it (the holder
    /// was unreachable, or the client moved on before the fetch). A node that takes the
    /// session from this one is told to fetch from there too.
    pub pending_from: Option<(skein_seam::NodeId, u64)>,
    /// Sequence numbers set aside (the first) for messages fetched from the node that
    /// held the session, by a CONNECT that indexed its subscriptions before registering:
    /// the attach uses them (see `Broker::preindex_resumed`).
    pub reserved_seqs: Option<u64>,
    /// Adopted from this node when the cluster marked it down, until a connection
    /// attaches: what that node's peers still held for it is delivered to the sessions
    /// adopted from it only (see `broker/node_down.rs`).
    pub adopted_from: Option<skein_seam::NodeId>,
    /// The node this session last came here from and when (this node's clock, ms): the
    /// owner it is taken over from (from the moment the CONNECT indexed it here, before
    /// the registration and the hand-over), or the node it was adopted from at its mark.
    /// Kept after the hand-over and the attach: a publish routed to that node before the
    /// move applied at its sender, held there for it and redirected when it was marked
    /// down, is this session's too (see [`SessionState::came_from`]).
    pub arrived_from: Option<(skein_seam::NodeId, u64)>,
    /// A node the session was on before the one it was taken over from here, and when
    /// this node learned of it (its clock, ms): the holder's hand-over named it as a node
    /// it could not fetch everything from itself (its `pending_from`). A publish routed
    /// to that node for this session before the moves applied at its sender, held there
    /// and redirected when it was marked down, is this session's too; the holder, sealed
    /// by the hand-over, no longer takes it (see [`SessionState::came_from`]).
    pub earlier_from: Option<(skein_seam::NodeId, u64)>,
    /// While messages of this session may still be handed over from another node (from
    /// the sequence numbers set aside for a takeover until every holder handed over):
    /// what reached it here directly, so that the holder's copies are left out (see
    /// `session/arrivals.rs`).
    pub arrivals: Option<Box<Arrivals>>,
    /// A persistent session's last acknowledged publish ids, for a node that takes its
    /// client over (see `session/arrivals.rs`).
    pub delivered: Option<Box<Delivered>>,
    /// Queued messages (their sequences) the client may have already: in flight to it on
    /// another node and handed over where their packet ids could not be kept, handed over
    /// as possibly sent by a node that crashed, queued here before this node's own crash
    /// (see `Session::restore`), or put back from flight for a smaller receive window.
    /// Sent with DUP. In memory only: the start after a crash, or after a stop that left
    /// any, takes every queued message as possibly sent (see `OpenNode::serve`).
    pub redeliver: Option<Box<BTreeSet<u64>>>,
    /// Publishes redirected here from a node the session moved away from: a direct copy
    /// that comes later is left out (see `session/redirected.rs`). In memory only.
    pub redirected: Option<Box<Redirected>>,
    /// The registry log index of the registration that brought this session here from
    /// another node (None: it did not come from another node, or this process does not
    /// know). A forward its sender routed by an older registry was routed while the
    /// session was held elsewhere: the node that held it got that publish for it, and
    /// may have delivered it to the client, or handed it over, or redirected it here. A
    /// copy that reaches the session here through this node's own interest (the sender
    /// forwards to every node with a matching subscriber) is a possible redelivery (see
    /// [`MayHave`]). In memory only.
    pub came_at_index: Option<u64>,
    /// Copies queued while this session was prepared for a CONNECT taking it over from
    /// another node (`reserved_seqs`), as (sequence, the forward's routed index): the
    /// registration's index, which says whether a forward was routed while the session was
    /// still held elsewhere, is known only once it applies; [`SessionState::came_at`]
    /// then marks those routed below it as possible redeliveries. At most one per queued
    /// message (the queue is bounded). In memory only.
    pub routed_while_prepared: Option<Box<Vec<(u64, u64)>>>,
    /// A wake-up of the attached connection is held in some [`HeldWakes`], which wakes it
    /// when its batch is routed: later enqueues need not wake it themselves.
    wake_held: bool,
    /// Made persistent by `Broker::preindex_resumed` for the CONNECT it prepared for (the
    /// session was new here): a refused CONNECT's undo forgets its stored record again.
    pub stored_for_connect: bool,
    /// The client of the attached connection, else of the last one, for the events of
    /// an offline session (None after a restart).
    pub last_info: Option<Arc<ClientInfo>>,
}

pub struct Session {
    pub client_id: ClientId,
    pub lifecycle: crate::lifecycle_lock::LifecycleLock,
    state: Mutex<SessionState>,
    /// Whether storage may hold a record of this session (so ending it must delete one).
    stored: std::sync::atomic::AtomicBool,
    /// Another node took the client over and this node's interest index sends the
    /// client's messages there: publishes accepted here skip the session; forwarded ones
    /// (their sender may not know yet) are still queued, for the owner to fetch, until the
    /// session is sealed (`SessionState::moved`). Read per delivery, hence an atomic.
    moving: std::sync::atomic::AtomicBool,
}

/// What the router knows of whether a session's client may have a publish already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MayHave {
    /// It may have been delivered before (see `ForwardedPublish::possibly_delivered`).
    pub possibly_sent: bool,
    /// A forward's bound of the registry log index its sender routed it by (see
    /// `ForwardedPublish::routed_index`; 0: not forwarded, or unknown). Below a session's
    /// [`SessionState::came_at_index`] the publish may have reached the client on the
    /// node that held the session then.
    pub routed_index: u64,
    /// Redirected by a node the session moved away from: noted (under the lock that
    /// queues it) so that a direct copy coming later is left out (see `redirected.rs`).
    pub redirect: bool,
}

impl MayHave {
    /// Whether a QoS 1/2 copy for a session in state `st` goes out as a possible
    /// redelivery: with DUP, and not at all when the session has the publish.
    pub fn possibly_sent(self, st: &SessionState) -> bool {
        self.possibly_sent
            || (self.routed_index != 0
                && st
                    .came_at_index
                    .is_some_and(|came| self.routed_index < came))
    }
}

/// What `Session::enqueue` did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Queued for the attached connection.
    Queued,
    /// Queued and written to storage: flush before acknowledging the publisher.
    Stored {
        online: bool,
    },
    /// Queued (in memory) for an offline session.
    QueuedOffline,
    /// Not queued: the session moved to another node, which gets the message itself.
    Moved,
    /// Not queued: the same publish reached the session already, redirected from a node
    /// it moved away from.
    Redirected,
    /// Not queued: the session has this publish already (it came with a hand-over, or
    /// reached it another way; see `session/arrivals.rs`).
    Duplicate,
    Dropped(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    Qos0Offline,
    Expired,
    /// The write to storage failed.
    Storage,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Qos0Offline => "qos0_offline",
            DropReason::Expired => "expired",
            DropReason::Storage => "storage_error",
        }
    }

    /// Why the message could not be stored, when that is why it was dropped.
    pub fn not_stored(self) -> Option<NotStored> {
        (self == DropReason::Storage).then_some(NotStored::Failed)
    }
}

/// From this many messages in flight on, packet ids are tracked in a bitmap (8 KiB).
const ID_BITMAP_FROM: usize = 32;

/// A publish its origin accepted up to this long after a session moved to a new owner may
/// have been routed by a registry that did not know the move yet (the origin applies it a
/// heartbeat and an apply later; a node that was stopped or cut off, later still). Later
/// publishes went to the owner directly. A wider window only costs redirects the owner
/// recognises as copies.
pub const STALE_ROUTE_MS: u64 = 10_000;

impl Session {
    pub fn new(client_id: ClientId) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            lifecycle: Default::default(),
            state: Mutex::new(SessionState::new()),
            stored: std::sync::atomic::AtomicBool::new(false),
            moving: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn mark_stored(&self) {
        self.stored
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_moving(&self, moving: bool) {
        self.moving
            .store(moving, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_moving(&self) -> bool {
        self.moving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Clears the stored mark; true if it was set.
    pub fn take_stored(&self) -> bool {
        self.stored
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The state lock. A poisoned lock means a panic elsewhere already broke an invariant
    /// for this one session; its data is still structurally valid, so keep serving.
    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What events say about this session's client: its connection's, else the last one
    /// seen, else (restored after a restart) only its id. Also whether it is online.
    pub fn event_client(&self) -> (Arc<ClientInfo>, bool) {
        let st = self.state();
        if let Some(info) = st.attached_info() {
            return (info.clone(), true);
        }
        let info = st.last_info.clone().unwrap_or_else(|| {
            Arc::new(ClientInfo::unknown(
                self.client_id.clone(),
                protocol_of_level(st.protocol_level),
            ))
        });
        (info, false)
    }

    /// Rebuilds a persistent session from storage after a restart (offline).
    ///
    /// `possibly_sent`: the node did not stop in order, so a queued QoS 1/2 message may
    /// have reached the client already (its PUBACK's deletion, or a hand-over's release,
    /// was lost with the writes sled had not flushed): each goes out with DUP, here or
    /// from the node it is handed over to.
    pub fn restore(
        stored: &StoredSession,
        queue: Vec<(u64, skein_storage::StoredMessage)>,
        inflight: Vec<StoredInflight>,
        incoming: Vec<u16>,
        now_ms: u64,
        possibly_sent: bool,
    ) -> Arc<Session> {
        let session = Session::new(ClientId::new(&stored.client_id));
        session.mark_stored();
        {
            let mut st = session.state();
            st.protocol_level = stored.protocol_level;
            st.expiry_interval = stored.session_expiry_interval;
            st.disconnected_at_ms = OptionalMs::at(stored.disconnected_at_ms.unwrap_or(now_ms));
            for sub in &stored.subscriptions {
                st.subscriptions.insert(
                    sub.filter.clone(),
                    Subscription {
                        options: SubscriptionOptions {
                            qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
                            no_local: sub.no_local,
                            retain_as_published: sub.retain_as_published,
                            retain_handling: sub.retain_handling,
                        },
                        subscription_id: sub.subscription_identifier,
                    },
                );
            }
            let mut max_seq = 0;
            for f in inflight {
                max_seq = max_seq.max(f.seq);
                let qos = QoS::from_u8(f.message.qos).unwrap_or(QoS::AtLeastOnce);
                let ids = f.message.subscription_identifiers.clone();
                let retain = f.message.retain;
                st.push_inflight(Inflight {
                    seq: f.seq,
                    packet_id: f.packet_id,
                    delivery: Delivery {
                        message: Arc::new(Message::from_stored(f.message)),
                        qos,
                        retain,
                        subscription_ids: ids,
                    },
                    state: if f.released {
                        InflightState::Released
                    } else {
                        InflightState::Sent
                    },
                });
            }
            for (seq, m) in queue {
                max_seq = max_seq.max(seq);
                let qos = QoS::from_u8(m.qos).unwrap_or(QoS::AtMostOnce);
                let ids = m.subscription_identifiers.clone();
                let retain = m.retain;
                st.queue.push_back(Queued {
                    seq,
                    delivery: Delivery {
                        message: Arc::new(Message::from_stored(m)),
                        qos,
                        retain,
                        subscription_ids: ids,
                    },
                });
            }
            if possibly_sent {
                let marks: BTreeSet<u64> = st
                    .queue
                    .iter()
                    .filter(|q| q.delivery.qos != QoS::AtMostOnce)
                    .map(|q| q.seq)
                    .collect();
                if !marks.is_empty() {
                    st.redeliver = Some(Box::new(marks));
                }
            }
            st.next_seq = max_seq + 1;
            st.incoming_qos2 = incoming.into_iter().collect::<BTreeSet<u16>>().into();
            if let Some((will, due)) = &stored.pending_will {
                st.will = Some(Box::new(will_from_stored(will.clone())));
                st.will_due_ms = OptionalMs::at(*due);
            }
        }
        session
    }

    /// Queue a delivery. Never blocks: a full queue drops the new message.
    pub fn enqueue(
        self: &Arc<Self>,
        delivery: Delivery,
        max_queued: usize,
        store: &Store,
        now_ms: u64,
    ) -> EnqueueOutcome {
        self.enqueue_holding_wake(delivery, max_queued, store, now_ms, None)
    }

    /// Like `enqueue`, but the attached connection is woken when `held` is released
    /// rather than at once (None: at once).
    pub fn enqueue_holding_wake(
        self: &Arc<Self>,
        delivery: Delivery,
        max_queued: usize,
        store: &Store,
        now_ms: u64,
        held: Option<&mut HeldWakes>,
    ) -> EnqueueOutcome {
        self.enqueue_with(
            delivery,
            max_queued,
            store,
            now_ms,
            held,
            MayHave::default(),
        )
    }

    /// Like `enqueue_holding_wake`; `may_have`: whether the client may have this publish
    /// already (a forward resent after this node restarted, or routed while the session
    /// was held by another node: see [`MayHave`]): then a QoS 1/2 copy goes out with DUP,
    /// and none is queued when the session has the publish (restored from disk, or
    /// acknowledged here since: see `SessionState::has_publish`).
    pub fn enqueue_with(
        self: &Arc<Self>,
        delivery: Delivery,
        max_queued: usize,
        store: &Store,
        now_ms: u64,
        held: Option<&mut HeldWakes>,
        may_have: MayHave,
    ) -> EnqueueOutcome {
        let mut st = self.state();
        if st.removed {
            return EnqueueOutcome::Dropped(DropReason::Expired);
        }
        if st.moved {
            return EnqueueOutcome::Moved;
        }
        if may_have.redirect {
            // Noted first: a direct copy routed on another stream right after this one is
            // queued must find it (noted after the lock was let go, it came twice on one
            // connection in the chaos suite).
            st.redirected
                .get_or_insert_with(Box::default)
                .note(publish_key(&delivery.message));
        } else if st
            .redirected
            .as_ref()
            .is_some_and(|r| r.contains(publish_key(&delivery.message)))
        {
            return EnqueueOutcome::Redirected;
        }
        if st.arrivals.as_ref().is_some_and(|a| a.expired(now_ms)) {
            st.arrivals = None;
        }
        // A retained message sent for a SUBSCRIBE is due whatever came before.
        let noted = !delivery.retain
            && st
                .arrivals
                .as_ref()
                .is_some_and(|a| a.contains(publish_key(&delivery.message)));
        if noted {
            return EnqueueOutcome::Duplicate;
        }
        // Taken over by another node, which gets the same publishes itself: a forward queued
        // here for it to fetch may reach the client there first (not a session prepared
        // here for a takeover, `reserved_seqs`: its copies are compared with the holder's).
        let given_away = self.is_moving() && st.reserved_seqs.is_none();
        let possibly_sent =
            (may_have.possibly_sent(&st) || given_away) && delivery.qos != QoS::AtMostOnce;
        if possibly_sent && st.has_publish(&delivery.message) {
            return EnqueueOutcome::Duplicate;
        }
        let online = st.is_online();
        if !online && delivery.qos == QoS::AtMostOnce {
            return EnqueueOutcome::Dropped(DropReason::Qos0Offline);
        }
        if delivery.message.is_expired(now_ms) {
            return EnqueueOutcome::Dropped(DropReason::Expired);
        }
        if st.queue.len() >= max_queued {
            return EnqueueOutcome::Dropped(DropReason::QueueFull);
        }
        let seq = st.next_seq();
        let stored = st.is_persistent() && delivery.qos != QoS::AtMostOnce;
        // Whether storage takes new data is the caller's decision, once per message (see
        // `Broker::route`): asking here again could refuse a copy after others were stored.
        if stored {
            let record = to_stored_delivery(&delivery);
            if let Err(e) = store.queue_push(self.client_id.as_str(), seq, &record) {
                storage_refusal::write_failed("queue a message", self.client_id.as_str(), &e);
                return EnqueueOutcome::Dropped(DropReason::Storage);
            }
        }
        if let Some(arrivals) = st.arrivals.as_mut() {
            arrivals.note(&delivery.message);
        }
        let qos = delivery.qos;
        st.queue.push_back(Queued { seq, delivery });
        if possibly_sent {
            st.redeliver.get_or_insert_with(Box::default).insert(seq);
        } else if st.reserved_seqs.is_some() && may_have.routed_index != 0 && qos != QoS::AtMostOnce
        {
            st.routed_while_prepared
                .get_or_insert_with(Box::default)
                .push((seq, may_have.routed_index));
        }
        if let Some(attached) = &st.attachment {
            match held {
                None => attached.kick.wake(),
                // Held already (by this batch or another one): that release wakes it.
                Some(_) if st.wake_held => {}
                Some(held) => {
                    st.wake_held = true;
                    held.sessions.push(self.clone());
                }
            }
        }
        drop(st);
        match (stored, online) {
            (true, online) => EnqueueOutcome::Stored { online },
            (false, true) => EnqueueOutcome::Queued,
            (false, false) => EnqueueOutcome::QueuedOffline,
        }
    }
}

fn will_from_stored(m: skein_storage::StoredMessage) -> Will {
    Will {
        topic: m.topic,
        payload: m.payload,
        qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtMostOnce),
        retain: m.retain,
        properties: crate::codec::Properties {
            payload_format_indicator: m.payload_format_indicator,
            message_expiry_interval: m.message_expiry_interval,
            content_type: m.content_type,
            response_topic: m.response_topic,
            correlation_data: m.correlation_data,
            user_properties: m.user_properties,
            ..Default::default()
        },
    }
}

/// The stored form of a delivery: the message with the subscriber's QoS, retain flag and ids.
pub fn to_stored_delivery(d: &Delivery) -> skein_storage::StoredMessage {
    let mut m = d.message.to_stored(&d.subscription_ids);
    m.qos = d.qos as u8;
    m.retain = d.retain;
    m
}

fn protocol_of_level(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V31,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V311,
    }
}

#[cfg(test)]
mod tests;
