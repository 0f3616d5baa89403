//! The cluster's metrics, by name, in one place (the `metrics` facade: the broker installs
//! the Prometheus recorder).
//!
//! Fixed by issue 13: `skein_raft_term`, `skein_raft_is_leader`, `skein_raft_commit_index`,
//! `skein_raft_applied_index`, `skein_raft_leader_changes_total`, `skein_raft_proposal_seconds`,
//! `skein_cluster_members` (by role and reachability), and per peer the forward queue's depth
//! and what was sent, retried and dropped (`skein_cluster_forward_*`). The rest are this
//! crate's own.

use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::log_store::CommitIndex;
use crate::peers::Peers;
use crate::types::{Node, NodeId};

pub const RAFT_TERM: &str = "skein_raft_term";
pub const RAFT_IS_LEADER: &str = "skein_raft_is_leader";
pub const RAFT_COMMIT_INDEX: &str = "skein_raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "skein_raft_applied_index";
pub const RAFT_LEADER_CHANGES: &str = "skein_raft_leader_changes_total";
/// From a command's submission to its result (committed and applied here), per command.
pub const RAFT_PROPOSAL_SECONDS: &str = "skein_raft_proposal_seconds";
/// Registry commands per log entry the proposer wrote.
pub const RAFT_PROPOSAL_BATCH_COMMANDS: &str = "skein_raft_proposal_batch_commands";
/// Proposals that failed, by `reason` (`queue_full`, `timeout`, `no_leader`, `stopped`).
pub const RAFT_PROPOSALS_FAILED: &str = "skein_raft_proposals_failed_total";
/// Log entries held (last log index minus last purged): bounded by snapshot compaction.
pub const RAFT_LOG_ENTRIES: &str = "skein_raft_log_entries";
pub const RAFT_SNAPSHOTS_BUILT: &str = "skein_raft_snapshots_built_total";
pub const RAFT_SNAPSHOT_BYTES: &str = "skein_raft_snapshot_bytes";
/// Members by `role` (`voter`, `learner`) and `reachable` (`true`, `false`, `unknown`).
pub const CLUSTER_MEMBERS: &str = "skein_cluster_members";
/// Client ids in the replicated registry (online and offline sessions).
pub const CLUSTER_REGISTRY_CLIENTS: &str = "skein_cluster_registry_clients";
/// Change-stream events a slow receiver missed (it then re-reads the registry).
pub const CLUSTER_CHANGES_LAGGED: &str = "skein_cluster_changes_lagged_total";

/// Counter: members this node, as the leader, marked down (no contact for
/// `node_down_after_ms`).
pub const NODES_MARKED_DOWN: &str = "skein_nodes_marked_down_total";
/// Counter: sessions of a node marked down that this node adopted.
pub const SESSIONS_ADOPTED: &str = "skein_sessions_adopted_total";
/// Counter {outcome}: messages held for a peer marked down, taken from its queue and sent
/// to the live members for the sessions that came from it (`redirected`), or dropped
/// (`no_adopter`: no member left; `invalid`).
pub const FORWARDS_REDIRECTED: &str = "skein_cluster_forwards_redirected_total";

/// Gauge {peer}: messages held for a peer: waiting, or sent and not acknowledged yet.
pub const FORWARD_QUEUE_DEPTH: &str = "skein_cluster_forward_queue_depth";
/// Counter {peer}: forwarded messages the peer acknowledged.
pub const FORWARD_SENT: &str = "skein_cluster_forward_sent_total";
/// Counter {peer}: forwarded messages sent again on a new stream (after a broken stream or
/// the peer's RETRY_LATER).
pub const FORWARD_RETRIED: &str = "skein_cluster_forward_retried_total";
/// Counter {peer, reason}: messages not forwarded: `queue_full` (refused by the bounded
/// queue), `peer_removed`, `shutting_down`.
pub const FORWARD_DROPPED: &str = "skein_cluster_forward_dropped_total";
/// Counter {peer}: times a publisher stopped reading to wait for room in the peer's
/// queue (backpressure, instead of dropping its QoS 0 forwards).
pub const FORWARD_WAITED_FOR_ROOM: &str = "skein_cluster_forward_waited_for_room_total";
/// Histogram: messages per batch sent to a peer.
pub const FORWARD_BATCH_MESSAGES: &str = "skein_cluster_forward_batch_messages";
/// Counter {peer}: forwarded messages this node received from a peer and delivered.
pub const FORWARD_RECEIVED: &str = "skein_cluster_forward_received_total";
/// Counter {peer}: messages a peer sent again that this node had delivered already:
/// acknowledged, not delivered twice.
pub const FORWARD_RECEIVED_DUPLICATES: &str = "skein_cluster_forward_received_duplicates_total";
/// Counter {peer, reason}: forwarded messages this node could not deliver and dropped
/// (`invalid`: no MQTT publish could carry it).
pub const FORWARD_RECEIVED_DROPPED: &str = "skein_cluster_forward_received_dropped_total";
/// Counter {outcome}: forwarded batches that waited for this node to fold the registry
/// index their sender had routed at: `folded` (it did), `timed_out` (delivered anyway after
/// the bound).
pub const FORWARD_FOLD_WAITS: &str = "skein_cluster_forward_fold_waits_total";
/// Histogram: how long those batches waited, in seconds.
pub const FORWARD_FOLD_WAIT_SECONDS: &str = "skein_cluster_forward_fold_wait_seconds";

/// One peer's forward series, registered once per queue (the hot path only bumps them).
pub(crate) struct PeerForwardMetrics {
    depth: metrics::Gauge,
    sent: metrics::Counter,
    retried: metrics::Counter,
    waited: metrics::Counter,
    batch: metrics::Histogram,
    peer: String,
}

impl PeerForwardMetrics {
    pub(crate) fn new(peer: NodeId) -> Self {
        let peer = peer.to_string();
        PeerForwardMetrics {
            depth: metrics::gauge!(FORWARD_QUEUE_DEPTH, "peer" => peer.clone()),
            sent: metrics::counter!(FORWARD_SENT, "peer" => peer.clone()),
            retried: metrics::counter!(FORWARD_RETRIED, "peer" => peer.clone()),
            waited: metrics::counter!(FORWARD_WAITED_FOR_ROOM, "peer" => peer.clone()),
            batch: metrics::histogram!(FORWARD_BATCH_MESSAGES),
            peer,
        }
    }

    pub(crate) fn depth(&self, held: usize) {
        self.depth.set(held as f64);
    }

    pub(crate) fn sent(&self, messages: usize) {
        self.sent.increment(messages as u64);
    }

    pub(crate) fn retried(&self, messages: usize) {
        if messages > 0 {
            self.retried.increment(messages as u64);
        }
    }

    pub(crate) fn waited_for_room(&self) {
        self.waited.increment(1);
    }

    pub(crate) fn batch(&self, messages: usize) {
        self.batch.record(messages as f64);
    }

    /// Rare (a full queue, a peer removed): the series is looked up when it happens.
    pub(crate) fn dropped(&self, reason: &'static str, messages: usize) {
        metrics::counter!(FORWARD_DROPPED, "peer" => self.peer.clone(), "reason" => reason)
            .increment(messages as u64);
    }
}

/// What this node received from peer `peer`: delivered, duplicates, dropped.
pub(crate) fn forward_received(peer: NodeId, delivered: usize, duplicates: usize) {
    let peer = peer.to_string();
    if delivered > 0 {
        metrics::counter!(FORWARD_RECEIVED, "peer" => peer.clone()).increment(delivered as u64);
    }
    if duplicates > 0 {
        metrics::counter!(FORWARD_RECEIVED_DUPLICATES, "peer" => peer).increment(duplicates as u64);
    }
}

pub(crate) fn forward_received_dropped(peer: NodeId, reason: &'static str, messages: usize) {
    metrics::counter!(FORWARD_RECEIVED_DROPPED, "peer" => peer.to_string(), "reason" => reason)
        .increment(messages as u64);
}

/// A forwarded batch waited `waited` for this node's fold and it ended as `outcome`.
pub(crate) fn forward_fold_wait(outcome: &'static str, waited: Duration) {
    metrics::counter!(FORWARD_FOLD_WAITS, "outcome" => outcome).increment(1);
    metrics::histogram!(FORWARD_FOLD_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// Times this node noticed it had not run for a while (stopped or starved) and held its
/// elections back until it hears from the leader (see `election_gate.rs`).
pub const RAFT_STALLS: &str = "skein_raft_stalls_total";

/// Members a SUBACK or a takeover's CONNACK did not wait for (unreachable, or not folded
/// within the bound).
pub const CLUSTER_IN_FORCE_SKIPPED: &str = "skein_cluster_in_force_skipped_total";

/// Counter {outcome}: registrations whose proposal failed with an unknown outcome and were
/// withdrawn: `released` (it had committed after all), `not_committed`, `gave_up`.
pub const CLUSTER_REGISTRATIONS_WITHDRAWN: &str = "skein_cluster_registrations_withdrawn_total";

/// Every metric of this crate with its HELP text, for the recorder the broker installs.
const DESCRIPTIONS: &[(&str, &str)] = &[
    (RAFT_TERM, "The Raft term this node is in."),
    (RAFT_IS_LEADER, "1 while this node leads the Raft group, else 0."),
    (RAFT_COMMIT_INDEX, "The last log index this node knows committed."),
    (RAFT_APPLIED_INDEX, "The last log index this node applied to its registry."),
    (RAFT_LEADER_CHANGES, "Times this node saw a new leader."),
    (RAFT_STALLS, "Times this node noticed it had not run for half an election timeout or more (stopped or starved): it starts no election before it hears from the leader or runs an election timeout without."),
    (RAFT_PROPOSAL_SECONDS, "From a registry command's submission to its result (committed and applied here), in seconds."),
    (RAFT_PROPOSAL_BATCH_COMMANDS, "Registry commands per log entry the proposer wrote."),
    (RAFT_PROPOSALS_FAILED, "Registry commands that failed, by reason (queue_full, timeout, no_leader, stopped, error)."),
    (RAFT_LOG_ENTRIES, "Log entries held (bounded by snapshot compaction)."),
    (RAFT_SNAPSHOTS_BUILT, "Registry snapshots built."),
    (RAFT_SNAPSHOT_BYTES, "Size of the last registry snapshot, in bytes."),
    (CLUSTER_MEMBERS, "Cluster members by role (voter, learner) and reachable (true, false, unknown: only the leader knows)."),
    (CLUSTER_REGISTRY_CLIENTS, "Client ids in the replicated registry (online and offline sessions)."),
    (CLUSTER_CHANGES_LAGGED, "Registry changes a slow receiver missed (it then read the registry anew)."),
    (CLUSTER_REGISTRATIONS_WITHDRAWN, "Registrations whose proposal failed with an unknown outcome (timeout, leader lost) and that this node withdrew, by outcome: released (it had committed after all), not_committed, gave_up."),
    (CLUSTER_IN_FORCE_SKIPPED, "Members a SUBACK (or a takeover's CONNACK) did not wait for: unreachable, or the entry not folded within the bound."),
    (FORWARD_QUEUE_DEPTH, "Messages held for a peer node: waiting to be forwarded, or sent and not acknowledged yet."),
    (FORWARD_SENT, "Messages forwarded to a peer node and acknowledged by it."),
    (FORWARD_RETRIED, "Forwarded messages sent again on a new stream (after a broken stream or the peer's retry-later answer)."),
    (FORWARD_DROPPED, "Messages not forwarded to a peer node, by reason (queue_full, peer_removed, shutting_down)."),
    (FORWARD_WAITED_FOR_ROOM, "Times a publisher stopped reading until the forward queue to a peer node had room again (backpressure)."),
    (FORWARD_BATCH_MESSAGES, "Messages per batch forwarded to a peer node."),
    (FORWARD_RECEIVED, "Messages a peer node forwarded to this one and this one delivered."),
    (FORWARD_RECEIVED_DUPLICATES, "Messages a peer node sent again that this node had delivered already: acknowledged, not delivered twice."),
    (FORWARD_RECEIVED_DROPPED, "Messages a peer node forwarded that this node dropped, by reason (invalid)."),
    (FORWARD_FOLD_WAITS, "Forwarded batches that waited for this node to fold the registry index their sender routed them at, by outcome (folded; timed_out: delivered anyway after 2 s)."),
    (FORWARD_FOLD_WAIT_SECONDS, "How long forwarded batches waited for this node to fold their sender's registry index, in seconds."),
    (NODES_MARKED_DOWN, "Members this node, as the Raft leader, marked down after node_down_after_ms without contact."),
    (SESSIONS_ADOPTED, "Persistent sessions of a node marked down that this node adopted."),
    (FORWARDS_REDIRECTED, "Messages held for a peer marked down, sent on to the live members for the sessions that came from it (redirected) or dropped (no_adopter: no member left; invalid)."),
];

/// Sends this crate's HELP texts to the installed recorder (the broker calls it when it
/// installs one).
pub fn describe() {
    for (name, help) in DESCRIPTIONS {
        if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
        } else if [
            RAFT_PROPOSAL_SECONDS,
            RAFT_PROPOSAL_BATCH_COMMANDS,
            FORWARD_BATCH_MESSAGES,
            FORWARD_FOLD_WAIT_SECONDS,
        ]
        .contains(name)
        {
            metrics::describe_histogram!(*name, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
}

pub(crate) fn raft_stall() {
    metrics::counter!(RAFT_STALLS).increment(1);
}

pub(crate) fn in_force_skipped() {
    metrics::counter!(CLUSTER_IN_FORCE_SKIPPED).increment(1);
}

pub(crate) fn registry_size(clients: usize) {
    metrics::gauge!(CLUSTER_REGISTRY_CLIENTS).set(clients as f64);
}

pub(crate) fn snapshot_built(bytes: usize) {
    metrics::counter!(RAFT_SNAPSHOTS_BUILT).increment(1);
    metrics::gauge!(RAFT_SNAPSHOT_BYTES).set(bytes as f64);
}

pub(crate) fn proposal_done(elapsed: Duration) {
    metrics::histogram!(RAFT_PROPOSAL_SECONDS).record(elapsed.as_secs_f64());
}

pub(crate) fn proposal_batch(commands: usize) {
    metrics::histogram!(RAFT_PROPOSAL_BATCH_COMMANDS).record(commands as f64);
}

pub(crate) fn proposal_failed(reason: &'static str, count: usize) {
    metrics::counter!(RAFT_PROPOSALS_FAILED, "reason" => reason).increment(count as u64);
}

pub(crate) fn registration_withdrawn(outcome: &'static str) {
    metrics::counter!(CLUSTER_REGISTRATIONS_WITHDRAWN, "outcome" => outcome).increment(1);
}

pub(crate) fn node_marked(down: bool) {
    if down {
        metrics::counter!(NODES_MARKED_DOWN).increment(1);
    }
}

pub(crate) fn sessions_adopted(n: usize) {
    metrics::counter!(SESSIONS_ADOPTED).increment(n as u64);
}

pub(crate) fn forwards_redirected(outcome: &'static str, n: usize) {
    metrics::counter!(FORWARDS_REDIRECTED, "outcome" => outcome).increment(n as u64);
}

pub(crate) fn changes_lagged(missed: u64) {
    metrics::counter!(CLUSTER_CHANGES_LAGGED).increment(missed);
}

/// A member counts as reachable when heard from within this many heartbeats.
pub(crate) const REACHABLE_HEARTBEATS: u32 = 4;

/// Keeps the Raft gauges current: on every change of openraft's metrics, and every second
/// for the commit index and reachability (which change without a metrics update).
pub(crate) async fn publish(
    mut raft_metrics: watch::Receiver<RaftMetrics<NodeId, Node>>,
    commit: std::sync::Arc<CommitIndex>,
    peers: std::sync::Arc<Peers>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) {
    let mut leader: Option<NodeId> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let m = raft_metrics.borrow_and_update().clone();
        if m.current_leader.is_some() && m.current_leader != leader {
            metrics::counter!(RAFT_LEADER_CHANGES).increment(1);
            // openraft's own election logs are at warn and below by default (the broker's
            // filter): this line is what an operator reads at info.
            tracing::info!(
                leader = ?m.current_leader,
                term = m.current_term,
                previous = ?leader,
                "cluster leader"
            );
        } else if m.current_leader.is_none() && leader.is_some() {
            // The start of a leaderless time: with the line above, how long it lasted.
            tracing::info!(
                term = m.current_term,
                previous = ?leader,
                "no cluster leader known"
            );
        }
        leader = m.current_leader;
        metrics::gauge!(RAFT_TERM).set(m.current_term as f64);
        let is_leader = m.state == ServerState::Leader;
        metrics::gauge!(RAFT_IS_LEADER).set(if is_leader { 1.0 } else { 0.0 });
        if let Some(index) = commit.get() {
            metrics::gauge!(RAFT_COMMIT_INDEX).set(index as f64);
        }
        if let Some(applied) = m.last_applied {
            metrics::gauge!(RAFT_APPLIED_INDEX).set(applied.index as f64);
        }
        let held = match (m.last_log_index, m.purged) {
            (Some(last), Some(purged)) => last.saturating_sub(purged.index),
            (Some(last), None) => last + 1,
            (None, _) => 0,
        };
        metrics::gauge!(RAFT_LOG_ENTRIES).set(held as f64);
        publish_members(&m, &peers, heartbeat);

        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = raft_metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Members by role and reachability. Only the leader hears from every member (followers
/// hear from the leader alone), so only the leader reports `reachable` as `true`/`false`;
/// the others report `unknown`.
fn publish_members(m: &RaftMetrics<NodeId, Node>, peers: &Peers, heartbeat: Duration) {
    const REACHABILITY: [&str; 3] = ["true", "false", "unknown"];
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    let is_leader = m.state == ServerState::Leader;
    let mut counts = [[0u32; 3]; 2]; // [voter, learner] × REACHABILITY
    for (id, _) in membership.nodes() {
        let role = usize::from(!voters.contains(id));
        let reachability = if *id == m.id {
            0
        } else if !is_leader {
            2
        } else if peers
            .since_contact(*id)
            .is_some_and(|d| d <= heartbeat * REACHABLE_HEARTBEATS)
        {
            0
        } else {
            1
        };
        counts[role][reachability] += 1;
    }
    for (r, role) in ["voter", "learner"].into_iter().enumerate() {
        for (u, reachable) in REACHABILITY.into_iter().enumerate() {
            metrics::gauge!(CLUSTER_MEMBERS, "role" => role, "reachable" => reachable)
                .set(f64::from(counts[r][u]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name constant without a description would export without HELP text.
    #[test]
    fn every_name_constant_is_described() {
        let source = include_str!("metrics.rs");
        let names: Vec<&str> = source
            .lines()
            .filter(|l| l.starts_with("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            assert!(
                DESCRIPTIONS.iter().any(|(n, _)| *n == name),
                "{name} has no description"
            );
        }
    }
}
