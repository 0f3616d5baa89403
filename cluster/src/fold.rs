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
//!   events may be among what was missed). Unless what was missed holds a down mark of
//!   this node (a paused node that resumed and caught up through a snapshot): then those
//!   clients, and those the registry no longer names at all (their sessions ended with
//!   the mark), end as the mark ends them, through `node_down` for this node, as when the
//!   mark is applied from the log (same DISCONNECT, no second event: the announcer had
//!   it). A client taken over by a CONNECT elsewhere before that mark is counted with
//!   them: the snapshot does not tell the two apart.
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
        own_mark_ms: None,
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
    /// The stamp of the latest down mark of this node the fold has taken (applied, or
    /// found in the registry at a resync).
    own_mark_ms: Option<u64>,
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
                    if *node == me {
                        self.own_mark_ms = Some(*at_ms);
                    }
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
        // Before the broker hears of any of it: a forward batch built from here on may hold
        // a publish routed by these changes, and names this index for its receiver to fold
        // first.
        self.shared.folding(applied.log_index);
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
        let own_mark_ms = self.own_mark_ms;
        let (owned, interest, (lost, marked, mark), last_applied) =
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
                let lost = lost_connections(registry, me, previously, own_mark_ms);
                (owned, interest, lost, last_applied)
            });
        tracing::info!(
            why,
            owned = owned.len(),
            filters = interest.len(),
            taken_over = lost.len(),
            lost_to_a_mark = marked.len(),
            ?last_applied,
            "folding the registry anew"
        );
        self.own_mark_ms = self.own_mark_ms.max(mark);
        // As in `apply`, before the broker hears of it.
        self.shared.folding(last_applied.unwrap_or(0));
        if !marked.is_empty() {
            tracing::warn!(
                clients = marked.len(),
                at_ms = mark,
                "the cluster marked this node down (it was paused or cut off) in what the fold missed (a snapshot installed, or the change stream lagged): ending the connections of the clients it lost as the mark does"
            );
            let clients = marked
                .into_iter()
                .map(|(client_id, epoch)| lost_to_mark(&client_id, epoch, me))
                .collect();
            self.broker.node_down(SeamNodeId(me), clients);
        }
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

/// The connections this node held (`previously`: client id → epoch) that `registry` no
/// longer names it the owner of, and how they end: taken over by the node named now, or,
/// when the registry holds a down mark of this node newer than `own_mark_ms` (the last
/// one the fold took), lost to that mark, named or not. Also that mark's stamp.
#[allow(clippy::type_complexity)]
fn lost_connections(
    registry: &registry::Registry,
    me: NodeId,
    previously: &HashMap<ArcStr, u64>,
    own_mark_ms: Option<u64>,
) -> (Vec<(ArcStr, u64, NodeId)>, Vec<(ArcStr, u64)>, Option<u64>) {
    let mark = registry.last_marked_down_ms(me);
    let missed_mark = mark > own_mark_ms;
    let (mut taken, mut marked) = (Vec::new(), Vec::new());
    for (id, epoch) in previously {
        match registry.client(id) {
            Some(entry) if entry.owner.node == me => {}
            _ if missed_mark => marked.push((id.clone(), *epoch)),
            Some(entry) => taken.push((id.clone(), *epoch, entry.owner.node)),
            None => {}
        }
    }
    // In id order, as the log's changes come (`previously` is a hash map).
    taken.sort_unstable();
    marked.sort_unstable();
    (taken, marked, mark)
}

/// A client this node lost to a down mark it learned from a snapshot, as `node_down` for
/// this node takes it: only the id and the epoch of its connection here count (the
/// announcer, the adopter and the will were the business of other nodes, long done).
fn lost_to_mark(client_id: &str, epoch: u64, me: NodeId) -> DownClient {
    DownClient {
        client_id: ClientId::new(client_id),
        node: SeamNodeId(me),
        epoch,
        was_online: true,
        announce: false,
        clean_start: false,
        connected_at_ms: 0,
        offline_since_ms: 0,
        adopted: None,
        will: None,
        connection: None,
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
            // For the announcer's event only.
            connection: d
                .connection
                .as_ref()
                .filter(|_| announce)
                .map(crate::session_wire::connection_from_pb),
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

#[cfg(test)]
mod tests {
    use super::*;
    use skein_proto::v1 as pb;
    use skein_proto::v1::command::Command;

    fn register(r: &mut registry::Registry, client: &str, node: NodeId, epoch: u64, expiry: u32) {
        apply(
            r,
            Command::Register(pb::RegisterClient {
                client_id: client.into(),
                node_id: node,
                epoch,
                clean_start: false,
                session_expiry_secs: expiry,
                stamped_at_ms: 1_000 + epoch,
                ..Default::default()
            }),
        );
    }

    fn apply(r: &mut registry::Registry, command: Command) {
        let command = pb::Command {
            command: Some(command),
        };
        r.apply(&command, &mut Vec::new());
    }

    fn node_down(r: &mut registry::Registry, node: NodeId, at_ms: u64) {
        apply(
            r,
            Command::NodeDown(pb::NodeDown {
                node_id: node,
                stamped_at_ms: at_ms,
                adopters: vec![1, 2, 3],
                registered_after_ms: 0,
            }),
        );
    }

    /// Node 3 held `kept`, `adopted` (a persistent session), `ended` (expiry 0) and
    /// `roamer`, which a CONNECT on node 1 took over. Folded anew without a mark of node
    /// 3 in between: the takeover is one; with a mark it has not taken: the mark's.
    #[test]
    fn connections_lost_to_a_mark_the_fold_missed_end_as_the_mark_ends_them() {
        let mut r = registry::Registry::default();
        register(&mut r, "kept", 3, 1, 60);
        register(&mut r, "adopted", 3, 2, 60);
        register(&mut r, "ended", 3, 3, 0);
        register(&mut r, "roamer", 3, 4, 60);
        let previously: HashMap<ArcStr, u64> =
            [("kept", 1), ("adopted", 2), ("ended", 3), ("roamer", 4)]
                .into_iter()
                .map(|(id, epoch)| (ArcStr::from(id), epoch))
                .collect();
        register(&mut r, "roamer", 1, 10, 60);
        let (taken, marked, mark) = lost_connections(&r, 3, &previously, None);
        assert_eq!(taken, [(ArcStr::from("roamer"), 4, 1)]);
        assert!(marked.is_empty() && mark.is_none());

        node_down(&mut r, 3, 9_000);
        // A registration of node 3 after the mark (a CONNECT it took when it resumed, once
        // marked up: the registry refuses registrations of a node marked down).
        apply(&mut r, Command::NodeUp(pb::NodeUp { node_id: 3 }));
        register(&mut r, "kept", 3, 20, 60);
        let mut previously = previously;
        previously.insert(ArcStr::from("kept"), 20);
        let (taken, marked, mark) = lost_connections(&r, 3, &previously, None);
        assert!(taken.is_empty(), "{taken:?}");
        let ids: Vec<(&str, u64)> = marked.iter().map(|(id, e)| (id.as_str(), *e)).collect();
        assert_eq!(ids, [("adopted", 2), ("ended", 3), ("roamer", 4)]);
        assert_eq!(mark, Some(9_000));
        // The fold applied that mark from the log: later losses are takeovers again.
        register(&mut r, "kept", 2, 30, 60);
        let (taken, marked, _) = lost_connections(&r, 3, &previously, Some(9_000));
        assert!(marked.is_empty());
        let ids: Vec<&str> = taken.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["adopted", "kept", "roamer"]);
        // Marked up again before the snapshot was taken: the mark still counts.
        apply(&mut r, Command::NodeUp(pb::NodeUp { node_id: 3 }));
        let (_, marked, _) = lost_connections(&r, 3, &previously, Some(8_000));
        assert_eq!(marked.len(), 4);
    }
}
