//! The replicated client registry: the Raft state machine's state, and how a command changes
//! it.
//!
//! [`Registry::apply`] is deterministic: it reads the command and the registry, nothing else
//! (no clock, no randomness, no I/O; the proposer stamps time and epoch into commands), and
//! iterates only ordered maps, so every member that applies the same log holds the same
//! registry and produces the same snapshot bytes.
//!
//! Rules, in log order:
//! - register: the id now belongs to (node, epoch), whoever held it. Without clean start the
//!   session's subscriptions carry over (moving to the new node); with it, or when the
//!   replaced session's expiry was 0 (it ended with its connection), they are dropped.
//!   Registering the owner again (a retried proposal) changes nothing. A registration
//!   whose deadline (`commit_by_ms`) the log has passed is rejected (`TOO_LATE`): its node
//!   refused the CONNECT by then (see [`Registry::clock_ms`]; the leader's stamp on the
//!   entry counts too). A registration by a node marked down is rejected (`NODE_DOWN`):
//!   the cluster took its clients away because it could not reach it, so its proposal
//!   came through a partition that may still hold the answer back from it (it refuses the
//!   CONNECT by its deadline, and the client's live connection elsewhere would be taken
//!   over for nothing); it registers again once the leader marks it up.
//! - unregister, subscribe, unsubscribe: only for the current owner (node, epoch); a late
//!   command of a connection that was taken over is rejected with `NOT_OWNER`.
//! - a session ends on an unregister that says so, or at once when its expiry is 0.
//! - node down: the node's clients go offline; sessions with expiry 0 end, the others are
//!   adopted by live nodes (see `node_down.rs`). Node up: it is no longer marked down.
//! - device certificates: registered on first sight, their status set by operators (see
//!   `certificates.rs`).

mod certificates;
#[cfg(test)]
mod certificates_tests;
mod change;
mod client_ids;
mod connection;
mod entry;
mod node_down;
#[cfg(test)]
mod node_down_tests;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arcstr::ArcStr;
use skein_proto::v1 as pb;

pub use certificates::{status_from_pb, status_to_pb};
pub use change::{AppliedChanges, Change, ChangeEvent, DownClient, PreviousOwner};
pub use client_ids::ClientIds;
use connection::ConnectionBytes;
pub use entry::{ClientEntry, Subscriptions};
pub use snapshot::SNAPSHOT_FORMAT;

use crate::types::NodeId;

/// The largest MQTT subscription identifier.
const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

/// One connection, cluster-wide: the node it is on and its epoch there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub node: NodeId,
    pub epoch: u64,
}

/// MQTT subscription options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

/// One subscription of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// Clients, their subscriptions, and which nodes have interest in which filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    clients: BTreeMap<ArcStr, ClientEntry>,
    /// filter → node → how many of that node's clients subscribe to it. Derived from
    /// `clients`; never stored.
    interest: BTreeMap<Arc<str>, BTreeMap<NodeId, u32>>,
    /// Nodes marked down (see `node_down.rs`): not picked as adopters, not marked again.
    down_nodes: BTreeSet<NodeId>,
    /// The stamp of each node's latest down mark, kept after it is marked up again (see
    /// [`Registry::last_marked_down_ms`]).
    marks: BTreeMap<NodeId, u64>,
    /// The wills of online connections that have one, kept apart from the entries (most
    /// clients have none): published by the adopter should their node die.
    wills: BTreeMap<ArcStr, pb::RegisteredWill>,
    /// What the events of online connections say about them (username, addresses,
    /// protocol), apart from the entries like the wills (an offline session has none):
    /// announced by the adopter should their node die (see `connection.rs`).
    connections: BTreeMap<ArcStr, ConnectionBytes>,
    /// Device certificates by serial number (see `certificates.rs`).
    certificates: BTreeMap<String, pb::CertificateRecord>,
    /// The log's clock: the largest proposer stamp applied (see [`Registry::clock_ms`]).
    clock_ms: u64,
}

impl Registry {
    pub fn client(&self, client_id: &str) -> Option<&ClientEntry> {
        self.clients.get(client_id)
    }

    pub fn clients(&self) -> impl Iterator<Item = (&ArcStr, &ClientEntry)> {
        self.clients.iter()
    }

    /// The clients whose ids sort after `after` (all of them for None), in id order.
    pub fn clients_after<'a>(
        &'a self,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ArcStr, &'a ClientEntry)> + 'a {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.clients.range::<str, _>((start, Bound::Unbounded))
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The will of the connection that holds `client_id`, if it registered one.
    pub fn will(&self, client_id: &str) -> Option<&pb::RegisteredWill> {
        self.wills.get(client_id)
    }

    /// What the events of the online connection that holds `client_id` say about it, if
    /// its registration carried that.
    pub fn connection(&self, client_id: &str) -> Option<pb::RegisteredConnection> {
        self.connections.get(client_id).map(ConnectionBytes::decode)
    }

    /// The stamp of the latest down mark of `node` (None: never marked down), whether or
    /// not it is marked up again since: a member that missed a mark of itself (it learned
    /// it through a snapshot) ends the connections it lost as the mark does.
    pub fn last_marked_down_ms(&self, node: NodeId) -> Option<u64> {
        self.marks.get(&node).copied()
    }

    /// The nodes marked down, in id order.
    pub fn down_nodes(&self) -> &BTreeSet<NodeId> {
        &self.down_nodes
    }

    /// The largest proposer stamp (`stamped_at_ms` of a registration, an unregistration or
    /// a node-down mark) applied so far (rejected commands do not count): the log has certainly reached that time on its
    /// proposer's clock. A registration committed after the log passed its
    /// `commit_by_ms` was given up by its node (the CONNECT refused, its client maybe
    /// connected again elsewhere), whether or not a newer connection of the id committed
    /// first: it must not take anything over. Read from the log only, so every member
    /// judges alike; clocks differing between nodes only make a registration near its
    /// deadline refused (the client connects again), never a given-up one accepted.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Raises the log's clock to the stamp the leader put on the entry being applied (when
    /// it wrote it into its log; 0: none), before the entry's commands: a registration the
    /// leader received after its `commit_by_ms` is then rejected like one behind a later
    /// stamp. A proposal can reach the leader long after its node gave up: held in a
    /// connection a partition stalled, or by a leader that was paused.
    pub fn observe_leader_stamp(&mut self, leader_stamped_ms: u64) {
        self.clock_ms = self.clock_ms.max(leader_stamped_ms);
    }

    /// Every filter with subscribers, and how many each node has.
    pub fn interest(&self) -> &BTreeMap<Arc<str>, BTreeMap<NodeId, u32>> {
        &self.interest
    }

    /// Applies one command: its result, with the changes it made appended to `changes`.
    pub fn apply(&mut self, command: &pb::Command, changes: &mut Vec<Change>) -> pb::CommandResult {
        self.apply_sharing(command, &ClientIds::default(), changes)
    }

    /// [`Registry::apply`], keying a new entry by the string `ids` offers for its client id
    /// (the local broker's) when there is one.
    pub fn apply_sharing(
        &mut self,
        command: &pb::Command,
        ids: &ClientIds,
        changes: &mut Vec<Change>,
    ) -> pb::CommandResult {
        use pb::command::Command;
        let result = match &command.command {
            Some(Command::Register(c)) => self.register(c, ids, changes),
            Some(Command::Unregister(c)) => self.unregister(c, changes),
            Some(Command::Subscribe(c)) => self.subscribe(c, changes),
            Some(Command::Unsubscribe(c)) => self.unsubscribe(c, changes),
            Some(Command::NodeDown(c)) => Ok(self.node_down(c, changes)),
            Some(Command::NodeUp(c)) => Ok(self.node_up(c.node_id, changes)),
            Some(Command::RegisterCertificate(c)) => self.register_certificate(c, changes),
            Some(Command::SetCertificateStatus(c)) => self.set_certificate_status(c, changes),
            None => Err(invalid("no command (written by a newer Skein?)")),
        };
        // After the command (a registration is judged by the clock before it), and only
        // when it applied: a rejected command changes nothing.
        if result.is_ok() {
            self.clock_ms = self.clock_ms.max(stamp_of(command));
        }
        let result = result.unwrap_or_else(pb::command_result::Result::Rejected);
        pb::CommandResult {
            result: Some(result),
        }
    }

    fn register(
        &mut self,
        c: &pb::RegisterClient,
        ids: &ClientIds,
        changes: &mut Vec<Change>,
    ) -> Result<pb::command_result::Result, pb::Rejected> {
        check_client_id(&c.client_id)?;
        let owner = Owner {
            node: c.node_id,
            epoch: c.epoch,
        };
        let retried = self
            .clients
            .get(c.client_id.as_str())
            .is_some_and(|existing| existing.owner == owner);
        if !retried && self.down_nodes.contains(&c.node_id) {
            return Err(node_marked_down(&c.client_id, c.node_id));
        }
        let (client_id, previous) = match self.clients.remove_entry(c.client_id.as_str()) {
            Some((key, existing)) if existing.owner == owner => {
                // A retried proposal of the registration that already holds the id.
                let session_present = !existing.clean_start;
                self.clients.insert(key, existing);
                return Ok(registered(session_present, None));
            }
            // Refused by its node long ago (its clock, against the newer connection's):
            // the client is on that newer connection now.
            Some((key, existing))
                if c.commit_by_ms != 0 && existing.connected_at_ms > c.commit_by_ms =>
            {
                let newer_at = existing.connected_at_ms;
                self.clients.insert(key, existing);
                return Err(too_late(&c.client_id, c.commit_by_ms, newer_at));
            }
            // The log has passed its deadline: its node refused the CONNECT by now.
            Some((key, existing)) if c.commit_by_ms != 0 && self.clock_ms > c.commit_by_ms => {
                self.clients.insert(key, existing);
                return Err(too_late_for_log(
                    &c.client_id,
                    c.commit_by_ms,
                    self.clock_ms,
                ));
            }
            None if c.commit_by_ms != 0 && self.clock_ms > c.commit_by_ms => {
                return Err(too_late_for_log(
                    &c.client_id,
                    c.commit_by_ms,
                    self.clock_ms,
                ));
            }
            // The new connection's string when it is here, so the old one's can go.
            Some((key, existing)) => (ids.get(&c.client_id).unwrap_or(key), Some(existing)),
            None => (ids.shared(&c.client_id), None),
        };
        // A session with expiry 0 ends with its connection: taking that connection over
        // finds no session (as on a single node), so nothing carries over.
        let resumes = previous
            .as_ref()
            .is_some_and(|old| old.session_expiry_secs > 0 && !c.clean_start);
        let session_present = resumes;
        let replaced = previous.as_ref().map(|old| PreviousOwner {
            owner: old.owner,
            online: old.is_online(),
        });
        // The takeover first, then the interest it moves, in the same applied batch.
        changes.push(Change::Registered {
            client_id: client_id.clone(),
            owner,
            previous: replaced,
            session_present,
        });
        let mut entry =
            ClientEntry::online(owner, c.clean_start, c.session_expiry_secs, c.stamped_at_ms);
        if let Some(old) = previous {
            for filter in old.subscriptions.keys() {
                self.add_interest(filter, old.owner.node, -1, changes);
            }
            if resumes {
                for filter in old.subscriptions.keys() {
                    self.add_interest(filter, owner.node, 1, changes);
                }
                entry.subscriptions = old.subscriptions;
            }
        }
        match &c.will {
            Some(will) => {
                self.wills.insert(client_id.clone(), will.clone());
            }
            None => {
                self.wills.remove(&client_id);
            }
        }
        match &c.connection {
            Some(connection) => {
                self.connections
                    .insert(client_id.clone(), ConnectionBytes::encode(connection));
            }
            None => {
                self.connections.remove(&client_id);
            }
        }
        self.clients.insert(client_id, entry);
        Ok(registered(session_present, replaced))
    }

    fn unregister(
        &mut self,
        c: &pb::UnregisterClient,
        changes: &mut Vec<Change>,
    ) -> Result<pb::command_result::Result, pb::Rejected> {
        let owner = Owner {
            node: c.node_id,
            epoch: c.epoch,
        };
        let (client_id, entry) = self.owned_mut(&c.client_id, owner)?;
        let session_ended = c.session_ended || entry.session_expiry_secs == 0;
        if session_ended {
            if let Some(entry) = self.clients.remove(&client_id) {
                for filter in entry.subscriptions.keys() {
                    self.add_interest(filter, owner.node, -1, changes);
                }
            }
        } else {
            entry.set_offline_since(Some(c.stamped_at_ms));
        }
        // The connection ended on its node, which saw to its will and announced its end.
        self.wills.remove(&client_id);
        self.connections.remove(&client_id);
        changes.push(Change::Unregistered {
            client_id,
            owner,
            session_ended,
        });
        Ok(pb::command_result::Result::Unregistered(pb::Unregistered {
            session_kept: !session_ended,
        }))
    }

    fn subscribe(
        &mut self,
        c: &pb::Subscribe,
        changes: &mut Vec<Change>,
    ) -> Result<pb::command_result::Result, pb::Rejected> {
        check_filter(&c.filter)?;
        let options = check_options(c.options.as_ref())?;
        if let Some(id) = c.subscription_id {
            if id == 0 || id > MAX_SUBSCRIPTION_ID {
                return Err(invalid(format!(
                    "subscription identifier {id} out of range"
                )));
            }
        }
        let owner = Owner {
            node: c.node_id,
            epoch: c.epoch,
        };
        let (client_id, entry) = self.owned_mut(&c.client_id, owner)?;
        let filter: Arc<str> = Arc::from(c.filter.as_str());
        let subscription = Subscription {
            options,
            subscription_id: c.subscription_id,
        };
        let replaced = entry
            .subscriptions
            .insert(filter.clone(), subscription)
            .is_some();
        if !replaced {
            self.add_interest(&filter, owner.node, 1, changes);
        }
        changes.push(Change::Subscribed {
            client_id,
            node: owner.node,
            filter,
            options,
            subscription_id: c.subscription_id,
        });
        Ok(pb::command_result::Result::Subscribed(pb::Subscribed {
            replaced,
        }))
    }

    fn unsubscribe(
        &mut self,
        c: &pb::Unsubscribe,
        changes: &mut Vec<Change>,
    ) -> Result<pb::command_result::Result, pb::Rejected> {
        check_filter(&c.filter)?;
        let owner = Owner {
            node: c.node_id,
            epoch: c.epoch,
        };
        let (client_id, entry) = self.owned_mut(&c.client_id, owner)?;
        let removed = entry.subscriptions.remove_entry(c.filter.as_str());
        let existed = removed.is_some();
        if let Some((filter, _)) = removed {
            self.add_interest(&filter, owner.node, -1, changes);
            changes.push(Change::Unsubscribed {
                client_id,
                node: owner.node,
                filter,
            });
        }
        Ok(pb::command_result::Result::Unsubscribed(pb::Unsubscribed {
            existed,
        }))
    }

    /// The entry of `client_id` (and its shared key) if `owner` holds it.
    fn owned_mut(
        &mut self,
        client_id: &str,
        owner: Owner,
    ) -> Result<(ArcStr, &mut ClientEntry), pb::Rejected> {
        let key = match self.clients.get_key_value(client_id) {
            Some((key, entry)) if entry.owner == owner => key.clone(),
            _ => return Err(not_owner(client_id)),
        };
        match self.clients.get_mut(client_id) {
            Some(entry) => Ok((key, entry)),
            None => Err(not_owner(client_id)),
        }
    }

    /// Adds `delta` (±1) to `node`'s subscriber count for `filter`, recording the new count.
    fn add_interest(
        &mut self,
        filter: &Arc<str>,
        node: NodeId,
        delta: i32,
        changes: &mut Vec<Change>,
    ) {
        let nodes = self.interest.entry(filter.clone()).or_default();
        let count = nodes.entry(node).or_insert(0);
        *count = count.saturating_add_signed(delta);
        let subscribers = *count;
        if subscribers == 0 {
            nodes.remove(&node);
            if nodes.is_empty() {
                self.interest.remove(filter);
            }
        }
        changes.push(Change::Interest {
            filter: filter.clone(),
            node,
            subscribers,
        });
    }

    /// Rebuilds the interest index from the clients (after loading a snapshot).
    fn rebuild_interest(&mut self) {
        self.interest.clear();
        for entry in self.clients.values() {
            for filter in entry.subscriptions.keys() {
                *self
                    .interest
                    .entry(filter.clone())
                    .or_default()
                    .entry(entry.owner.node)
                    .or_insert(0) += 1;
            }
        }
    }
}

fn registered(
    session_present: bool,
    previous: Option<PreviousOwner>,
) -> pb::command_result::Result {
    pb::command_result::Result::Registered(pb::Registered {
        session_present,
        previous: previous.map(|p| pb::ClientOwner {
            node_id: p.owner.node,
            epoch: p.owner.epoch,
            online: p.online,
        }),
    })
}

fn check_client_id(client_id: &str) -> Result<(), pb::Rejected> {
    if client_id.is_empty() {
        return Err(invalid("empty client id"));
    }
    Ok(())
}

fn check_filter(filter: &str) -> Result<(), pb::Rejected> {
    if filter.is_empty() {
        return Err(invalid("empty topic filter"));
    }
    Ok(())
}

fn check_options(
    options: Option<&pb::SubscriptionOptions>,
) -> Result<SubscriptionOptions, pb::Rejected> {
    let o = options.ok_or_else(|| invalid("no subscription options"))?;
    let qos = u8::try_from(o.qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or_else(|| invalid(format!("QoS {} out of range", o.qos)))?;
    let retain_handling = u8::try_from(o.retain_handling)
        .ok()
        .filter(|r| *r <= 2)
        .ok_or_else(|| {
            invalid(format!(
                "retain handling {} out of range",
                o.retain_handling
            ))
        })?;
    Ok(SubscriptionOptions {
        qos,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling,
    })
}

fn invalid(detail: impl Into<String>) -> pb::Rejected {
    pb::Rejected {
        reason: pb::RejectReason::Invalid as i32,
        detail: detail.into(),
    }
}

fn too_late(client_id: &str, commit_by_ms: u64, newer_at_ms: u64) -> pb::Rejected {
    pb::Rejected {
        reason: pb::RejectReason::TooLate as i32,
        detail: format!(
            "the registration of client id {client_id:?} was due by {commit_by_ms} ms; a newer connection registered at {newer_at_ms} ms"
        ),
    }
}

fn node_marked_down(client_id: &str, node: NodeId) -> pb::Rejected {
    pb::Rejected {
        reason: pb::RejectReason::NodeDown as i32,
        detail: format!(
            "the registration of client id {client_id:?} is by node {node}, which the cluster marked down: it registers clients again once marked up"
        ),
    }
}

fn too_late_for_log(client_id: &str, commit_by_ms: u64, clock_ms: u64) -> pb::Rejected {
    pb::Rejected {
        reason: pb::RejectReason::TooLate as i32,
        detail: format!(
            "the registration of client id {client_id:?} was due by {commit_by_ms} ms; the log had reached {clock_ms} ms"
        ),
    }
}

/// The proposer's stamp a command carries (0: none).
fn stamp_of(command: &pb::Command) -> u64 {
    use pb::command::Command;
    match &command.command {
        Some(Command::Register(c)) => c.stamped_at_ms,
        Some(Command::Unregister(c)) => c.stamped_at_ms,
        Some(Command::NodeDown(c)) => c.stamped_at_ms,
        _ => 0,
    }
}

fn not_owner(client_id: &str) -> pb::Rejected {
    pb::Rejected {
        reason: pb::RejectReason::NotOwner as i32,
        detail: format!("the connection no longer owns client id {client_id:?}"),
    }
}
