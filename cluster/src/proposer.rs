//! [`Proposer`]: turns many concurrent registry commands into few log entries.
//!
//! openraft 0.9's leader appends (and fsyncs) each `client_write` as its own entry, one after
//! the other, so a CONNECT storm proposed command by command would cost one fsync per
//! CONNECT. Callers instead put their command into a bounded queue and await their own
//! result; one task takes everything queued (up to `max_commands_per_entry`) as one
//! [`pb::CommandBatch`], commits it as one entry, and hands each caller its result. While an
//! entry is being committed the next batch gathers, so the batch size follows the load.
//! One entry is in flight at a time, so commands commit in the order they were queued.
//!
//! On a follower the batch goes to the leader's `Cluster.Propose`; the answer is returned
//! once this node has applied the entry too, so the caller's own node reflects it (and its
//! change stream has carried it). No leader, a leader that moved, or a failed call: the
//! batch is retried, re-reading who leads, until the oldest command's deadline; then every
//! caller gets [`ClusterError::NoLeader`] or [`ClusterError::Timeout`]. A retry after a call
//! whose outcome is unknown may apply a batch twice; commands are idempotent for that:
//! registering the owner again, a second subscribe or unsubscribe, a second unregister
//! change nothing (the repeat's *result* may differ: an unregister answered `NOT_OWNER`).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use skein_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::convert::FromPb;
use crate::error::{ClusterError, Result};
use crate::metrics;
use crate::peers::cluster_client;
use crate::shared::Shared;
use crate::types::{LogId, Proto};

/// A command's result and the index of the log entry that holds it.
pub(crate) type Committed = (pb::CommandResult, u64);

struct Pending {
    command: pb::Command,
    reply: oneshot::Sender<Result<Committed>>,
    submitted: Instant,
}

/// The submitting side of the proposer; cheap to clone.
#[derive(Clone)]
pub(crate) struct Proposer {
    queue: mpsc::Sender<Pending>,
    capacity: usize,
    timeout: Duration,
}

impl Proposer {
    /// The proposer and the task that commits its batches (run it until `shutdown`).
    pub(crate) fn new(
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> (Proposer, impl std::future::Future<Output = ()>) {
        let capacity = shared.settings.proposal_queue;
        let (queue, rx) = mpsc::channel(capacity);
        let proposer = Proposer {
            queue,
            capacity,
            timeout: shared.settings.proposal_timeout(),
        };
        (proposer, run(shared, rx, shutdown))
    }

    /// Commits `command` and returns what applying it answered, with its entry's index.
    pub(crate) async fn propose(&self, command: pb::Command) -> Result<Committed> {
        let (reply, answer) = oneshot::channel();
        let submitted = Instant::now();
        let pending = Pending {
            command,
            reply,
            submitted,
        };
        match self.queue.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::proposal_failed("queue_full", 1);
                return Err(ClusterError::Overloaded(self.capacity));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ClusterError::ShuttingDown),
        }
        // The task answers by the deadline; the margin covers its last step.
        let bound = submitted + self.timeout + Duration::from_secs(1);
        let result = match tokio::time::timeout_at(bound, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_dropped)) => Err(ClusterError::ShuttingDown),
            Err(_) => Err(ClusterError::Timeout(self.timeout)),
        };
        if result.is_ok() {
            metrics::proposal_done(submitted.elapsed());
        }
        result
    }
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    let max = shared.settings.max_commands_per_entry;
    let timeout = shared.settings.proposal_timeout();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = rx.recv() => match next {
                Some(p) => p,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Callers that gave up (timed out, connection gone) need no commit.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let deadline = batch[0].submitted + timeout;
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let count = commands.len();
        metrics::proposal_batch(count);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => Err(ClusterError::ShuttingDown),
            outcome = commit(&shared, pb::CommandBatch { commands, leader_stamped_ms: 0 }, deadline) => outcome,
        };
        match outcome {
            Ok((results, index)) if results.len() == count => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok((result, index)));
                }
            }
            Ok((results, _)) => {
                let e = format!("{} results for {count} commands", results.len());
                tracing::error!(error = %e, "the leader answered a batch with the wrong number of results");
                for reply in replies {
                    let _ = reply.send(Err(ClusterError::Proposal(e.clone())));
                }
            }
            Err(e) => {
                metrics::proposal_failed(failure_reason(&e), count);
                tracing::warn!(commands = count, error = %e, "a registry proposal failed");
                for reply in replies {
                    let _ = reply.send(Err(e.duplicate()));
                }
            }
        }
    }
    rx.close();
    while let Ok(p) = rx.try_recv() {
        let _ = p.reply.send(Err(ClusterError::ShuttingDown));
    }
}

fn failure_reason(e: &ClusterError) -> &'static str {
    match e {
        ClusterError::NoLeader(_) => "no_leader",
        ClusterError::Timeout(_) => "timeout",
        ClusterError::ShuttingDown | ClusterError::Stopped(_) => "stopped",
        _ => "error",
    }
}

/// Commits one batch through whoever leads, retrying until `deadline` (see the module docs):
/// the results and the index of the entry.
#[tracing::instrument(level = "debug", skip_all, fields(node = shared.id, commands = batch.commands.len()))]
async fn commit(
    shared: &Shared,
    batch: pb::CommandBatch,
    deadline: Instant,
) -> Result<(Vec<pb::CommandResult>, u64)> {
    let mut metrics = shared.raft.metrics();
    let mut backoff = Duration::from_millis(20);
    let mut ever_had_leader = false;
    loop {
        let m = metrics.borrow_and_update().clone();
        let waited = shared.settings.proposal_timeout();
        if Instant::now() >= deadline {
            return Err(if ever_had_leader {
                ClusterError::Timeout(waited)
            } else {
                ClusterError::NoLeader(waited)
            });
        }
        let Some(leader) = m.current_leader else {
            // An election is under way: wait for its outcome.
            let _ = tokio::time::timeout_at(deadline, metrics.changed()).await;
            continue;
        };
        ever_had_leader = true;
        let attempt = if leader == shared.id {
            write_here(shared, batch.clone(), deadline).await
        } else {
            let addr = m
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.grpc.clone())
                .unwrap_or_default();
            forward(shared, leader, &addr, batch.clone(), deadline).await
        };
        match attempt {
            Attempt::Done(results) => return results,
            Attempt::Retry(why) => {
                tracing::debug!(leader, %why, "retrying a registry proposal");
                // A backoff, not a wait for the next metrics change: those come with every
                // append, and a leader that refuses would be asked again in a tight loop.
                tokio::time::sleep_until(deadline.min(Instant::now() + backoff)).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

enum Attempt {
    Done(Result<(Vec<pb::CommandResult>, u64)>),
    /// Not committed (or not known to be): try again, with the leader read anew.
    Retry(String),
}

async fn write_here(shared: &Shared, batch: pb::CommandBatch, deadline: Instant) -> Attempt {
    let written =
        tokio::time::timeout_at(deadline, shared.raft.client_write(leader_stamped(batch))).await;
    match written {
        Err(_) => Attempt::Done(Err(ClusterError::Timeout(
            shared.settings.proposal_timeout(),
        ))),
        Ok(Ok(response)) => Attempt::Done(Ok((response.data.0.results, response.log_id.index))),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Attempt::Retry(format!("leadership moved to {:?}", f.leader_id))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Attempt::Done(Err(ClusterError::Membership(e.to_string())))
        }
        Ok(Err(RaftError::Fatal(e))) => Attempt::Done(Err(e.into())),
    }
}

/// `batch` as the leader writes it into its log: stamped with the leader's clock now (see
/// `CommandBatch.leader_stamped_ms`). A follower's stamp would not do: the batch may wait
/// in a request a cut-off network delivers much later.
pub(crate) fn leader_stamped(mut batch: pb::CommandBatch) -> Proto<pb::CommandBatch> {
    batch.leader_stamped_ms = crate::epoch::unix_millis();
    Proto(batch)
}

async fn forward(
    shared: &Shared,
    leader: crate::types::NodeId,
    addr: &str,
    batch: pb::CommandBatch,
    deadline: Instant,
) -> Attempt {
    if addr.is_empty() {
        return Attempt::Retry(format!("no address known for leader {leader}"));
    }
    let channel = match shared.peers.channel(leader, addr) {
        Ok(channel) => channel,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let mut request = tonic::Request::new(pb::ProposeRequest { batch: Some(batch) });
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let answer = tokio::time::timeout_at(deadline, cluster_client(channel).propose(request)).await;
    let response = match answer {
        Err(_) => {
            return Attempt::Done(Err(ClusterError::Timeout(
                shared.settings.proposal_timeout(),
            )))
        }
        Ok(Err(status)) => {
            return Attempt::Retry(format!("Propose to {leader} at {addr}: {status}"))
        }
        Ok(Ok(response)) => response.into_inner(),
    };
    let (log_id, results) = match response.outcome {
        Some(pb::propose_response::Outcome::Committed(c)) => (c.log_id, c.results),
        Some(pb::propose_response::Outcome::NotLeader(n)) => {
            return Attempt::Retry(format!(
                "{leader} is not the leader (it says {:?})",
                n.leader_id
            ))
        }
        None => return Attempt::Retry(format!("{leader} answered Propose without an outcome")),
    };
    let log_id: LogId = match log_id.map(FromPb::into_raft) {
        Some(Ok(id)) => id,
        Some(Err(e)) => return Attempt::Done(Err(e)),
        None => {
            return Attempt::Done(Err(ClusterError::Proposal(
                "committed without a log id".into(),
            )))
        }
    };
    // Answer once this node has applied the entry too (see the module docs).
    let remaining = deadline.saturating_duration_since(Instant::now());
    let applied = shared
        .raft
        .wait(Some(remaining))
        .applied_index_at_least(Some(log_id.index), "the forwarded batch is applied here")
        .await;
    match applied {
        Ok(_) => Attempt::Done(Ok((
            results.map(|r| r.results).unwrap_or_default(),
            log_id.index,
        ))),
        Err(_) => Attempt::Done(Err(ClusterError::Timeout(
            shared.settings.proposal_timeout(),
        ))),
    }
}
