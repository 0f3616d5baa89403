//! Withdrawing a registration whose proposal failed with an unknown outcome.
//!
//! A CONNECT's registration that times out (no quorum, a leader lost mid-way, a forwarded
//! call whose answer never came) may still commit later: the entry can sit in a log that
//! a majority later accepts. Its connection is gone by then (the client was refused), so
//! the registry would name this node as the owner of a live connection that does not
//! exist: a ghost that stays "connected" until the client id registers again. Proposing
//! the matching unregister right after the failure rules that out whatever happens:
//! committed after the registration, it marks the session offline (or ends it, for an
//! expiry of 0); committed without it, or after another connection took the id, it is
//! rejected as not the owner and changes nothing.

use std::time::Duration;

use skein_proto::v1 as pb;
use skein_proto::v1::command::Command;
use skein_proto::v1::command_result::Result as Answer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::epoch::unix_millis;
use crate::error::ClusterError;
use crate::metrics;
use crate::proposer::Proposer;

/// How long the withdrawal keeps trying while the cluster cannot commit (a node cut off
/// from the majority for this long has had its leftover entries replaced or committed).
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// Whether a failed proposal may still commit later.
pub(crate) fn outcome_unknown(e: &ClusterError) -> bool {
    matches!(
        e,
        ClusterError::Timeout(_)
            | ClusterError::NoLeader(_)
            | ClusterError::Rpc { .. }
            | ClusterError::Proposal(_)
    )
}

/// Proposes the unregister of `(client_id, node_id, epoch)` until it commits (or the
/// cluster shuts down, or [`GIVE_UP_AFTER`]); run it as a task of the node.
pub(crate) async fn withdraw(
    proposer: Proposer,
    shutdown: CancellationToken,
    client_id: String,
    node_id: u64,
    epoch: u64,
) {
    let started = Instant::now();
    let mut retry = FIRST_RETRY;
    loop {
        let command = pb::Command {
            command: Some(Command::Unregister(pb::UnregisterClient {
                client_id: client_id.clone(),
                node_id,
                epoch,
                session_ended: false,
                stamped_at_ms: unix_millis(),
            })),
        };
        let outcome = match proposer.propose(command).await {
            Ok((result, _)) => match result.result {
                Some(Answer::Unregistered(_)) => Some("released"),
                // Rejected as not the owner: the registration never committed, or another
                // connection has taken the id since; nothing to undo either way.
                _ => Some("not_committed"),
            },
            Err(ClusterError::ShuttingDown) => return,
            Err(e) if started.elapsed() >= GIVE_UP_AFTER => {
                tracing::warn!(%client_id, epoch, error = %e, "gave up withdrawing a registration whose proposal failed; it stays if it ever committed");
                Some("gave_up")
            }
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            metrics::registration_withdrawn(outcome);
            if outcome == "released" {
                tracing::info!(%client_id, epoch, "a registration committed after its proposal had failed: released");
            }
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}
