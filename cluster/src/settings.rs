//! [`RaftSettings`]: the Raft timing, batching and compaction knobs, and the data plane's
//! [`ForwardSettings`], with defaults that hold on a busy 2-core machine.

use std::time::Duration;

use crate::error::{ClusterError, Result};

/// The floor of [`RaftSettings::peer_keepalive`].
const MIN_PEER_KEEPALIVE: Duration = Duration::from_secs(1);

/// Purged log entries are removed in runs of at least this many.
pub const PURGE_BATCH_ENTRIES: u64 = 64;

/// The most log entries one AppendEntries carries.
pub const MAX_ENTRIES_PER_APPEND: u64 = 64;

/// Raft settings of a node. The broker fills `heartbeat_ms` from `raft_heartbeat_ms` and
/// `election_timeout_ms` from `raft_election_timeout_ms`; the rest keep their defaults unless
/// a test needs otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    /// How often the leader sends heartbeats (ms). openraft's 50 ms default flaps on a loaded
    /// 2-core machine; 250 ms keeps followers quiet at a few RPCs per second per peer.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing from the leader for a random time in
    /// `[election_timeout_ms, 2 × election_timeout_ms)` starts an election: a leader is
    /// replaced within about 1-2 s of dying, and a second of scheduling stalls does not
    /// depose a live one.
    pub election_timeout_ms: u64,
    /// Build a snapshot (and let the log be purged up to it) every this many applied entries.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot, so a follower slightly behind catches up from the log
    /// instead of receiving the whole snapshot. A member holds at most about
    /// `snapshot_every_entries + entries_kept_after_snapshot + PURGE_BATCH_ENTRIES +
    /// MAX_ENTRIES_PER_APPEND` entries, however many were ever written.
    pub entries_kept_after_snapshot: u64,
    /// The most registry commands the proposer puts in one log entry.
    pub max_commands_per_entry: usize,
    /// Commands waiting for the proposer; a full queue refuses new ones at once.
    pub proposal_queue: usize,
    /// How long a proposal may wait for a leader and a commit before it fails.
    pub proposal_timeout_ms: u64,
    /// How long the broker waits for a CONNECT's registration before it refuses the client
    /// (ms; its `connect_commit_timeout_ms`; 0: it waits for the proposal's own outcome).
    /// Stamped into the registration: one that commits later than a newer connection of
    /// the client id loses to it (see `RegisterClient.commit_by_ms`).
    pub registration_deadline_ms: u64,
    /// Applied-change events kept for slow receivers of the change stream.
    pub change_stream_capacity: usize,
    /// Timeout of dialling a peer (ms); an unreachable peer fails fast and is retried later.
    pub connect_timeout_ms: u64,
    /// How long a SUBACK waits for each other member to fold the subscription (ms); a
    /// member that has not by then is skipped and counted (see `in_force.rs`).
    pub fold_wait_ms: u64,
    /// How long the leader goes without hearing from a member before it marks it down
    /// (ms): its clients go offline and its persistent sessions are adopted by live nodes
    /// (see `node_watch.rs`). Above the election timeout, so a leader's own death is
    /// settled by an election first; below the forward timeout (5 s) with some room, so
    /// the publishers of forwards held for the dead node get the adopters' answer.
    pub node_down_after_ms: u64,
    /// The data plane: publishes forwarded to other members.
    pub forward: ForwardSettings,
}

/// The per-peer forward queues and streams (see `forward.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSettings {
    /// Messages held for one peer (queued and sent but not acknowledged); a forward that
    /// would exceed it is refused (`QueueFull`) and counted as dropped.
    pub queue_messages: usize,
    /// Encoded bytes held for one peer, bounded like `queue_messages`.
    pub queue_bytes: usize,
    /// The most messages in one batch.
    pub batch_messages: usize,
    /// A batch is closed once it holds this many encoded bytes (one larger message still
    /// travels alone).
    pub batch_bytes: usize,
    /// Batches sent to a peer and not acknowledged yet: while the peer delivers one, the
    /// next ones are on their way.
    pub window_batches: usize,
    /// How long a forward's caller waits for the peer's acknowledgement before it is told
    /// the peer is unavailable (ms). The message stays queued and is delivered once the
    /// peer is back: a publisher is never held up longer than this by a peer that is down.
    pub ack_timeout_ms: u64,
    /// The first pause before reconnecting to a peer after a failed stream (ms); doubled
    /// after each failure up to `retry_max_ms`.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            queue_messages: 100_000,
            queue_bytes: 64 * 1024 * 1024,
            batch_messages: 1024,
            batch_bytes: 1024 * 1024,
            window_batches: 4,
            ack_timeout_ms: 5000,
            retry_min_ms: 50,
            retry_max_ms: 2000,
        }
    }
}

impl ForwardSettings {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    fn check(&self) -> Result<()> {
        let invalid = |name, reason: String| ClusterError::InvalidSetting { name, reason };
        for (name, value) in [
            ("forward.queue_messages", self.queue_messages),
            ("forward.queue_bytes", self.queue_bytes),
            ("forward.batch_messages", self.batch_messages),
            ("forward.batch_bytes", self.batch_bytes),
            ("forward.window_batches", self.window_batches),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be above 0".into()));
            }
        }
        if self.ack_timeout_ms == 0 || self.retry_min_ms == 0 {
            return Err(invalid(
                "forward",
                "ack_timeout_ms and retry_min_ms must be above 0".into(),
            ));
        }
        if self.retry_max_ms < self.retry_min_ms {
            return Err(invalid(
                "forward.retry_max_ms",
                format!(
                    "{} ms is below retry_min_ms ({} ms)",
                    self.retry_max_ms, self.retry_min_ms
                ),
            ));
        }
        Ok(())
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 250,
            election_timeout_ms: 1000,
            snapshot_every_entries: 2000,
            entries_kept_after_snapshot: 500,
            max_commands_per_entry: 1024,
            proposal_queue: 8192,
            proposal_timeout_ms: 5000,
            registration_deadline_ms: 0,
            change_stream_capacity: 4096,
            connect_timeout_ms: 1000,
            forward: ForwardSettings::default(),
            fold_wait_ms: 2000,
            node_down_after_ms: 3000,
        }
    }
}

impl RaftSettings {
    pub fn proposal_timeout(&self) -> Duration {
        Duration::from_millis(self.proposal_timeout_ms)
    }

    pub fn node_down_after(&self) -> Duration {
        Duration::from_millis(self.node_down_after_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The HTTP/2 keepalive of the connections to peers: one silent this long (no frame
    /// from the peer) is pinged, and closed when the ping goes unanswered as long again.
    /// The election timeout: a connection left stuck by a network cut (see `peers.rs`) is
    /// replaced within two election timeouts, so a healed node hears the leader and takes
    /// part in elections again at once, instead of after the TCP retransmission backoff
    /// (over 10 s once a cut lasted a few seconds). On a live link the Raft heartbeats
    /// keep the leader's connections busy; an idle one costs a ping per period.
    /// Never below one second: a ping unanswered that long closes every stream on the
    /// connection, and a busy peer on a loaded host (or a debug build under a test suite)
    /// can take a few hundred milliseconds to answer.
    pub fn peer_keepalive(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms).max(MIN_PEER_KEEPALIVE)
    }

    /// The openraft configuration these settings stand for, checked.
    pub fn openraft_config(&self) -> Result<openraft::Config> {
        let invalid = |name, reason: String| ClusterError::InvalidSetting { name, reason };
        if self.heartbeat_ms == 0 {
            return Err(invalid("raft_heartbeat_ms", "must be above 0".into()));
        }
        if self.election_timeout_ms < 2 * self.heartbeat_ms {
            return Err(invalid(
                "raft_election_timeout_ms",
                format!(
                    "{} ms must be at least twice raft_heartbeat_ms ({} ms), or followers \
                     start elections between heartbeats",
                    self.election_timeout_ms, self.heartbeat_ms
                ),
            ));
        }
        for (name, value) in [
            ("max_commands_per_entry", self.max_commands_per_entry),
            ("proposal_queue", self.proposal_queue),
            ("change_stream_capacity", self.change_stream_capacity),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be above 0".into()));
            }
        }
        if self.node_down_after_ms <= self.election_timeout_ms {
            return Err(invalid(
                "node_down_after_ms",
                format!(
                    "{} ms must be above raft_election_timeout_ms ({} ms): a dead leader is \
                     replaced by an election before its clients are marked offline",
                    self.node_down_after_ms, self.election_timeout_ms
                ),
            ));
        }
        if self.snapshot_every_entries == 0 {
            return Err(invalid("snapshot_every_entries", "must be above 0".into()));
        }
        self.forward.check()?;
        let config = openraft::Config {
            cluster_name: "skein".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            // A snapshot chunk gets the time of a few heartbeats, not openraft's 200 ms.
            install_snapshot_timeout: (self.heartbeat_ms * 8).max(2000),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            // A follower further behind than a snapshot's worth gets the snapshot.
            replication_lag_threshold: self.snapshot_every_entries
                + self.entries_kept_after_snapshot,
            purge_batch_size: PURGE_BATCH_ENTRIES,
            // Each entry holds up to `max_commands_per_entry` commands: 64 entries keep an
            // AppendEntries to a few MiB, and bound how far behind a purge can be held
            // (openraft postpones a purge while a replication RPC carries the entries).
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| invalid("raft", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_calm() {
        let config = RaftSettings::default().openraft_config().unwrap();
        assert_eq!(config.heartbeat_interval, 250);
        assert_eq!(
            (config.election_timeout_min, config.election_timeout_max),
            (1000, 2000)
        );
    }

    #[test]
    fn an_election_timeout_close_to_the_heartbeat_is_refused() {
        let settings = RaftSettings {
            heartbeat_ms: 500,
            election_timeout_ms: 800,
            ..Default::default()
        };
        let e = settings.openraft_config().unwrap_err().to_string();
        assert!(e.contains("raft_election_timeout_ms"), "{e}");
        let zero = RaftSettings {
            proposal_queue: 0,
            ..Default::default()
        };
        assert!(zero.openraft_config().is_err());
        let no_window = RaftSettings {
            forward: ForwardSettings {
                window_batches: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = no_window.openraft_config().unwrap_err().to_string();
        assert!(e.contains("forward.window_batches"), "{e}");
        let hasty = RaftSettings {
            node_down_after_ms: 1000,
            ..Default::default()
        };
        let e = hasty.openraft_config().unwrap_err().to_string();
        assert!(e.contains("node_down_after_ms"), "{e}");
    }
}
