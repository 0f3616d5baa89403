//! A node marked down, and what that does to the clients it owned (`NodeDown`, `NodeUp`).
//!
//! Deterministic like the rest of `apply`: the proposer (the leader) stamps the time and the
//! voters it saw alive; applying reads only those, the registry and the set of nodes
//! already marked down. Clients are visited in id order.
//!
//! - A client the node registered after the proposer last heard from it
//!   (`registered_after_ms`, by the registration's stamp) is left as it is: the node ran
//!   then. A paused node that resumes reads the CONNECTs that waited for it and may commit
//!   their registrations just before the mark the leader had decided on; taken, such a
//!   connection would be accepted and at once closed by its own node, and its session's
//!   messages left behind on the node that held it before.
//! - Every other client of the down node goes offline at the stamp (one already offline
//!   keeps its own time).
//! - A session with expiry 0 ends with its connection, as on any disconnect: the entry and
//!   its interest go.
//! - Any other session is adopted: a live node picked by [`pick`] (hash of the client id
//!   over the sorted candidates) becomes its owner, offline, under a fresh epoch, and its
//!   subscriptions' interest moves there, so every node forwards matching publishes to the
//!   adopter, which queues them. A CONNECT anywhere later takes it over from the adopter
//!   like any offline session.
//! - The node itself stays marked down (not picked, not marked again) until the leader
//!   hears from it again (`NodeUp`; a leader marked down marks itself up). Its
//!   registrations meanwhile are rejected (`NODE_DOWN`, see `registry.rs`).

use skein_proto::v1 as pb;

use super::change::DownClient;
use super::{Change, Owner, Registry};
use crate::types::NodeId;

impl Registry {
    pub(super) fn node_down(
        &mut self,
        c: &pb::NodeDown,
        changes: &mut Vec<Change>,
    ) -> pb::command_result::Result {
        let dead = c.node_id;
        if !self.down_nodes.insert(dead) {
            return marked(false, 0, 0);
        }
        self.marks.insert(dead, c.stamped_at_ms);
        changes.push(Change::NodeMarked {
            node: dead,
            down: true,
            at_ms: c.stamped_at_ms,
        });
        let mut candidates: Vec<NodeId> = c
            .adopters
            .iter()
            .copied()
            .filter(|n| *n != dead && !self.down_nodes.contains(n))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let alive_after = c.registered_after_ms;
        let owned: Vec<_> = self
            .clients
            .iter()
            .filter(|(_, e)| e.owner.node == dead)
            .filter(|(_, e)| alive_after == 0 || e.connected_at_ms <= alive_after)
            .map(|(id, _)| id.clone())
            .collect();
        let (mut adopted, mut ended) = (0u32, 0u32);
        for client_id in owned {
            let Some(mut entry) = self.clients.remove(&client_id) else {
                continue;
            };
            let previous = entry.owner;
            let was_online = entry.is_online();
            // Only an online connection's will is still due; the adopter publishes it.
            let will = self.wills.remove(&client_id).filter(|_| was_online);
            // And its description, for the announcer's event.
            let connection = self
                .connections
                .remove(&client_id)
                .filter(|_| was_online)
                .map(|c| c.decode());
            let offline_since_ms = entry.offline_since_ms().unwrap_or(c.stamped_at_ms);
            let chosen = pick(&candidates, &client_id);
            let adopter = chosen
                .filter(|_| entry.session_expiry_secs > 0)
                .map(|node| Owner {
                    node,
                    // The stamp in microseconds, as the proposer's epochs are: later than the
                    // dead node's registration, and unique with the node for the client.
                    epoch: c
                        .stamped_at_ms
                        .saturating_mul(1000)
                        .max(previous.epoch.saturating_add(1)),
                });
            // The interest leaves the dead node unless the session stays there.
            let stays = adopter.is_none() && entry.session_expiry_secs > 0;
            if !stays {
                for filter in entry.subscriptions.keys() {
                    self.add_interest(filter, dead, -1, changes);
                }
            }
            let (session_expiry_secs, clean_start, connected_at_ms) = (
                entry.session_expiry_secs,
                entry.clean_start,
                entry.connected_at_ms,
            );
            match adopter {
                Some(owner) => {
                    for filter in entry.subscriptions.keys() {
                        self.add_interest(filter, owner.node, 1, changes);
                    }
                    entry.owner = owner;
                    entry.set_offline_since(Some(offline_since_ms));
                    self.clients.insert(client_id.clone(), entry);
                    adopted += 1;
                }
                // No live node to adopt it (none was named): it stays, offline, on the
                // down node, which hands it on when it returns.
                None if entry.session_expiry_secs > 0 => {
                    entry.set_offline_since(Some(offline_since_ms));
                    self.clients.insert(client_id.clone(), entry);
                }
                None => ended += 1,
            }
            changes.push(Change::NodeDownClient(Box::new(DownClient {
                client_id,
                previous,
                was_online,
                announcer: chosen.unwrap_or(dead),
                adopter,
                session_expiry_secs,
                clean_start,
                connected_at_ms,
                offline_since_ms,
                will,
                connection,
            })));
        }
        marked(true, adopted, ended)
    }

    /// `node` is alive again: it leaves the set of nodes marked down. Returns the answer of
    /// a `NodeUp` command.
    pub(super) fn node_up(
        &mut self,
        node: NodeId,
        changes: &mut Vec<Change>,
    ) -> pb::command_result::Result {
        let changed = self.down_nodes.remove(&node);
        if changed {
            changes.push(Change::NodeMarked {
                node,
                down: false,
                at_ms: 0,
            });
        }
        marked(changed, 0, 0)
    }
}

fn marked(changed: bool, adopted: u32, ended: u32) -> pb::command_result::Result {
    pb::command_result::Result::NodeMarked(pb::NodeMarked {
        changed,
        adopted,
        ended,
    })
}

/// The candidate (sorted, without duplicates) that adopts `client_id`: FNV-1a of the id,
/// modulo their number. Spelled out rather than a std hasher, whose output may change
/// between Rust releases: members built by different compilers must pick alike.
pub(crate) fn pick(candidates: &[NodeId], client_id: &str) -> Option<NodeId> {
    if candidates.is_empty() {
        return None;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let n = candidates.len() as u64;
    candidates.get((hash % n) as usize).copied()
}
