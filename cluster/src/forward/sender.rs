//! The sender task of one peer queue: keeps one `Forward.Publish` stream open to the peer,
//! sends batches as messages arrive (up to the window), matches the in-order acks, and
//! after a broken stream, a RETRY_LATER or a WRONG_NODE opens another with backoff and
//! sends the unacknowledged batches again. It ends when the peer leaves the membership or
//! the node shuts down, failing what is still held.

use std::sync::Arc;
use std::time::Duration;

use openraft::RaftMetrics;
use skein_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::encoded::{self, EncodedBatch};
use super::queue::{Closed, PeerQueue};
use crate::shared::Shared;
use crate::types::{Node, NodeId};

/// How a stream ended.
enum Ended {
    Closed(Closed),
    /// Try again after a pause. `progressed`: the peer acknowledged something on it (the
    /// backoff starts over).
    Failed {
        why: String,
        progressed: bool,
    },
    /// Another node answers at the peer's address: dial afresh once the membership has the
    /// peer's current one.
    WrongNode(String),
}

/// The gRPC address of member `peer`; None when it is not a member.
fn member_address(metrics: &RaftMetrics<NodeId, Node>, peer: NodeId) -> Option<String> {
    metrics
        .membership_config
        .membership()
        .get_node(&peer)
        .map(|n| n.grpc.clone())
}

/// Runs until the queue is closed (see the module docs).
pub(super) async fn run(queue: Arc<PeerQueue>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let settings = shared.settings.forward.clone();
    let mut membership = shared.raft.metrics();
    let mut backoff = Duration::from_millis(settings.retry_min_ms);
    let mut channel: Option<(String, Channel)> = None;
    // Whether the peer was reported unreachable: one warning per outage, not per retry.
    let mut down = false;
    loop {
        // Closed by another task (the peer was marked down, its messages sent elsewhere).
        if queue.is_closed() {
            return;
        }
        let address = member_address(&membership.borrow_and_update(), queue.peer);
        let Some(address) = address.filter(|a| !a.is_empty()) else {
            queue.close(Closed::Removed);
            return;
        };
        let ch = match &channel {
            Some((cached, ch)) if *cached == address => Ok(ch.clone()),
            _ => shared.peers.uncached(&address).inspect(|ch| {
                channel = Some((address.clone(), ch.clone()));
            }),
        };
        let ended = match ch {
            Ok(ch) => stream(&queue, ch, &shared, &mut membership, &shutdown, &mut down).await,
            Err(e) => Ended::Failed {
                why: e.to_string(),
                progressed: false,
            },
        };
        let (why, progressed) = match ended {
            Ended::Closed(why) => {
                queue.close(why);
                return;
            }
            Ended::WrongNode(why) => {
                channel = None;
                (why, false)
            }
            Ended::Failed { why, progressed } => (why, progressed),
        };
        if progressed {
            backoff = Duration::from_millis(settings.retry_min_ms);
        }
        if !down {
            down = true;
            tracing::warn!(peer = queue.peer, %address, error = %why, held = queue.held(), "forward stream to a peer failed; retrying");
        } else {
            tracing::debug!(peer = queue.peer, %address, error = %why, "forward stream to a peer failed again");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => {
                queue.close(Closed::ShuttingDown);
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_millis(settings.retry_max_ms));
    }
}

/// One stream: resends what is unacknowledged, then sends batches as they come.
async fn stream(
    queue: &PeerQueue,
    channel: Channel,
    shared: &Shared,
    membership: &mut watch::Receiver<RaftMetrics<NodeId, Node>>,
    shutdown: &CancellationToken,
    down: &mut bool,
) -> Ended {
    let failed = |why: String, progressed: bool| Ended::Failed { why, progressed };
    let window = shared.settings.forward.window_batches;
    // Never more than the window of batches is unacknowledged, so never more than that
    // waits in the channel.
    let (tx, mut rx) = mpsc::channel::<EncodedBatch>(window);
    for batch in queue.resend() {
        if tx.try_send(batch).is_err() {
            return failed("more unacknowledged batches than the window".into(), false);
        }
    }
    let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let opened = tokio::select! {
        opened = encoded::publish(channel, requests) => opened,
        _ = shutdown.cancelled() => return Ended::Closed(Closed::ShuttingDown),
    };
    let mut acks = match opened {
        Ok(acks) => acks,
        Err(status) => return failed(format!("opening the stream: {status}"), false),
    };
    let mut progressed = false;
    loop {
        if queue.is_closed() {
            return failed("the queue was closed".into(), progressed);
        }
        while let Some(batch) = queue.next_batch(shared.id, shared.routed_up_to()) {
            if tx.try_send(batch).is_err() {
                return failed("the stream stopped taking batches".into(), progressed);
            }
        }
        let window_open = queue.window_open();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ended::Closed(Closed::ShuttingDown),
            ack = acks.message() => {
                let ack = match ack {
                    Ok(Some(ack)) => ack,
                    Ok(None) => return failed("the peer ended the stream".into(), progressed),
                    Err(status) => return failed(status.to_string(), progressed),
                };
                match pb::AckStatus::try_from(ack.status) {
                    Ok(pb::AckStatus::Accepted) => {
                        if let Err(e) = queue.accepted(ack.sequence) {
                            return failed(e, progressed);
                        }
                        if !progressed && *down {
                            *down = false;
                            tracing::info!(peer = queue.peer, "forward stream to a peer is back");
                        }
                        progressed = true;
                    }
                    Ok(pb::AckStatus::RetryLater) => {
                        queue.refused(ack.sequence, &ack.detail);
                        return failed(format!("the peer refused batch {} for now: {}", ack.sequence, ack.detail), progressed);
                    }
                    Ok(pb::AckStatus::WrongNode) => {
                        return Ended::WrongNode(format!("another node answered: {}", ack.detail));
                    }
                    _ => return failed(format!("unknown acknowledgement status {}", ack.status), progressed),
                }
            }
            _ = queue.wake.notified(), if window_open => {
                // Let the tasks that are ready to run (publishers in the middle of a read
                // batch) queue theirs first: fuller batches, fewer writes and acks.
                tokio::task::yield_now().await;
            }
            changed = membership.changed() => {
                if changed.is_err() {
                    return Ended::Closed(Closed::ShuttingDown);
                }
                let member = member_address(&membership.borrow_and_update(), queue.peer).is_some();
                if !member {
                    return Ended::Closed(Closed::Removed);
                }
            }
        }
    }
}
