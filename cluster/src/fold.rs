//! The registry fold: what applying the log means for the local broker, told to it through
//! the seam's [`BrokerHandle`] by one task that reads the change stream (so `apply` itself
//! stays deterministic and calls nothing).
//!
//! - A registration on another node that replaced one of this node's (online or an offline
//!   session): `taken_over(client, old epoch, taker)`, once per takeover cluster-wide, as
//!   only the node that held it folds it so. A takeover on this node is the broker's own
//!   (its CONNECT handling ends the old connection) and is not told.
//! - Other nodes' interest (filter → subscribers per node): `interest_changed_many`, all
//!   of an applied entry's at once, never for this node's own (the broker's trie has
//!   those).
//! - At attach, after a snapshot was installed, and when the stream lagged: the whole
//!   interest of other nodes again (`interest_reset`), and `taken_over` for every client
//!   this node owned before and the registry now names another node for (the takeover
//!   events may be among what was missed).
//!
//! The fold remembers which client ids this node owns (with their epochs) for that last
//! rule, and the last log index it folded, which [`crate::in_force`] waits on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arcstr::ArcStr;
use skein_seam::{AdoptedSession, BrokerHandle, ClientId, DownClient, NodeId as SeamNodeId};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::forward::Forwarder;
use crate::metrics;
use crate::registry::{self, AppliedChanges, Change, ChangeEvent};
use crate::shared::Shared;
use crate::types::NodeId;

/// Folds the change stream into `broker` until `shutdown`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    broker: Arc<dyn BrokerHandle>,
    forwarder: Arc<Forwarder>,
    mut changes: broadcast::Receiver<ChangeEvent>,
    shutdown: CancellationToken,
) {
    let mut fold = Fold {
        shared,
        broker,
        forwarder,
        owned: HashMap::new(),
        folded: None,
    };
    fold.resync("the broker was attached");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = changes.recv() => event,
        };
        match event {
            Ok(ChangeEvent::Applied(applied)) => fold.apply(&applied),
            Ok(ChangeEvent::Reset { .. }) => fold.resync("a snapshot was installed"),
            // Not sent on the broadcast channel itself; a receiver reports it.
            Ok(ChangeEvent::Lagged { .. }) => fold.resync("the change stream lagged"),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::changes_lagged(missed);
                tracing::warn!(
                    missed,
                    "the registry fold fell behind the change stream; re-reading the registry"
                );
                fold.resync("the change stream lagged");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

struct Fold {
    shared: Arc<Shared>,
    broker: Arc<dyn BrokerHandle>,
    forwarder: Arc<Forwarder>,
    /// The client ids this node owns, as far as the fold has seen, with their epochs. The
    /// keys are the registry's own shared strings.
    owned: HashMap<ArcStr, u64>,
    folded: Option<u64>,
}

impl Fold {
    fn apply(&mut self, applied: &AppliedChanges) {
        // Already in what the last resync read.
        if self.folded.is_some_and(|f| applied.log_index <= f) {
            return;
        }
        let me = self.shared.id;
        // Told after the entry's interest changes: until then this node routes its own
        // publishes to the session it held (and keeps them for the taker, which fetches
        // them); from then on to the taker only.
        let mut taken = Vec::new();
        let mut arrived = Vec::new();
        let mut interest = Vec::new();
        let mut down = NodesDown::default();
        for change in &applied.changes {
            match change {
                Change::NodeMarked {
                    node,
                    down: true,
                    at_ms,
                } => {
                    down.marked(*node, *at_ms, me);
                }
                Change::NodeDownClient(d) => {
                    if d.previous.node == me {
                        self.owned.remove(&d.client_id);
                    } else if let Some(owner) = d.adopter.filter(|o| o.node == me) {
                        self.owned.insert(d.client_id.clone(), owner.epoch);
                    }
                    down.client(d, me, &self.shared);
                }
                Change::Registered {
                    client_id,
                    owner,
                    previous,
                    ..
                } => {
                    if owner.node == me {
                        self.owned.insert(client_id.clone(), owner.epoch);
                        if previous.is_some_and(|p| p.owner.node != me) {
                            arrived.push(client_id);
                        }
                        continue;
                    }
                    self.owned.remove(client_id);
                    if let Some(previous) = previous.filter(|p| p.owner.node == me) {
                        taken.push((client_id, previous.owner.epoch, owner.node));
                    }
                }
                Change::Unregistered {
                    client_id,
                    owner,
                    session_ended: true,
                } if owner.node == me && self.owned.get(client_id) == Some(&owner.epoch) => {
                    self.owned.remove(client_id);
                }
                Change::Interest {
                    filter,
                    node,
                    subscribers,
                } if *node != me => {
                    interest.push((filter.to_string(), SeamNodeId(*node), *subscribers));
                }
                _ => {}
            }
        }
        // Before the interest moves: a publish routed in between reaches both the session
        // here and the node that held it (the hand-over keeps it once), never neither.
        for client_id in arrived {
            self.broker.registered_here(&ClientId::new(client_id));
        }
        // Before the interest moves here too (as a registration here): the adopted
        // sessions are in this node's index when the adopters' interest is folded.
        down.tell(&*self.broker);
        // At once: a takeover moves the session's interest from one node to another,
        // and a publish routed in between would find neither or both.
        if !interest.is_empty() {
            self.broker.interest_changed_many(interest);
        }
        for (client_id, epoch, by) in taken {
            self.broker
                .taken_over(&ClientId::new(client_id), epoch, SeamNodeId(by));
        }
        // After the interest moved: what this node still held for a node marked down goes
        // to the live members (for the sessions that came from it), and new publishes go
        // to the adopters.
        for (dead, adopters) in down.adopters {
            self.forwarder
                .redirect(dead, adopters.into_iter().collect(), self.broker.clone());
        }
        self.advance(Some(applied.log_index));
    }

    /// Reads the registry anew and tells the broker what it may have missed (see the module
    /// docs).
    fn resync(&mut self, why: &'static str) {
        let me = self.shared.id;
        let previously = &self.owned;
        let (owned, interest, lost, last_applied) =
            self.shared.view.read_applied(|registry, last_applied| {
                let owned: HashMap<ArcStr, u64> = registry
                    .clients()
                    .filter(|(_, entry)| entry.owner.node == me)
                    .map(|(id, entry)| (id.clone(), entry.owner.epoch))
                    .collect();
                let interest: Vec<(String, SeamNodeId, u32)> = registry
                    .interest()
                    .iter()
                    .flat_map(|(filter, nodes)| {
                        nodes
                            .iter()
                            .filter(|(node, _)| **node != me)
                            .map(|(node, n)| (filter.to_string(), SeamNodeId(*node), *n))
                    })
                    .collect();
                let lost: Vec<(ArcStr, u64, NodeId)> = previously
                    .iter()
                    .filter_map(|(id, epoch)| {
                        let entry = registry.client(id)?;
                        (entry.owner.node != me).then(|| (id.clone(), *epoch, entry.owner.node))
                    })
                    .collect();
                (owned, interest, lost, last_applied)
            });
        tracing::info!(
            why,
            owned = owned.len(),
            filters = interest.len(),
            taken_over = lost.len(),
            ?last_applied,
            "folding the registry anew"
        );
        for (client_id, epoch, by) in lost {
            self.broker
                .taken_over(&ClientId::new(&client_id), epoch, SeamNodeId(by));
        }
        // Registered here since the last fold (as `apply` does, before the interest).
        for client_id in owned.keys().filter(|id| !previously.contains_key(*id)) {
            self.broker.registered_here(&ClientId::new(client_id));
        }
        self.broker.interest_reset(interest);
        self.owned = owned;
        self.advance(last_applied);
    }

    fn advance(&mut self, index: Option<u64>) {
        if index > self.folded {
            self.folded = index;
            self.shared.folded.send_replace(index);
        }
    }
}

/// What one applied entry's node-down changes mean here, gathered as the fold reads them.
#[derive(Default)]
struct NodesDown {
    /// Per node marked down: the nodes that adopted its sessions (where its queue goes).
    adopters: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Per node marked down: its clients this node adopts or announces (all of them when
    /// it is this node).
    clients: BTreeMap<NodeId, Vec<DownClient>>,
}

impl NodesDown {
    fn marked(&mut self, node: NodeId, at_ms: u64, me: NodeId) {
        if node == me {
            tracing::warn!(
                at_ms,
                "the cluster marked this node down (it was paused or cut off): its clients went offline and its sessions moved to other nodes"
            );
        }
        self.adopters.entry(node).or_default();
        self.clients.entry(node).or_default();
    }

    fn client(&mut self, d: &registry::DownClient, me: NodeId, shared: &Shared) {
        let dead = d.previous.node;
        if let Some(owner) = d.adopter {
            self.adopters.entry(dead).or_default().insert(owner.node);
        }
        let adopted_here = d.adopter.filter(|o| o.node == me);
        let announce = d.was_online && d.announcer == me;
        if dead != me && adopted_here.is_none() && !announce {
            return;
        }
        let adopted = adopted_here.map(|owner| AdoptedSession {
            epoch: owner.epoch,
            expiry_interval: d.session_expiry_secs,
            subscriptions: shared.view.read(|r| {
                r.client(&d.client_id)
                    .filter(|e| e.owner == owner)
                    .map(crate::session_wire::handed_over)
                    .unwrap_or_default()
            }),
        });
        self.clients.entry(dead).or_default().push(DownClient {
            client_id: ClientId::new(&d.client_id),
            node: SeamNodeId(dead),
            epoch: d.previous.epoch,
            was_online: d.was_online,
            announce,
            clean_start: d.clean_start,
            connected_at_ms: d.connected_at_ms,
            offline_since_ms: d.offline_since_ms,
            // Published by the adopter, or for a session that ended, by the announcer.
            will: d
                .will
                .as_ref()
                .filter(|_| adopted.is_some() || (announce && d.adopter.is_none()))
                .map(|w| crate::session_wire::will_from_pb(&d.client_id, w)),
            adopted,
        });
    }

    fn tell(&mut self, broker: &dyn BrokerHandle) {
        for (dead, clients) in std::mem::take(&mut self.clients) {
            let adopted = clients.iter().filter(|c| c.adopted.is_some()).count();
            if adopted > 0 {
                metrics::sessions_adopted(adopted);
            }
            // Also with no client here: the broker notes the mark as applied, and a
            // message redirected from the dead node's queue waits for that (every member
            // gets them, not only the adopters: see `forward/redirect.rs`).
            broker.node_down(SeamNodeId(dead), clients);
        }
    }
}
