//! The `Forward` service: what peers forward to this node, delivered to the local broker
//! (and only to it: a forwarded publish is never forwarded again).
//!
//! Each stream is handled by one task, batch after batch; a batch is acknowledged ACCEPTED
//! once every message in it was delivered (or dropped as invalid, which is counted and
//! logged and never blocks the stream). A storage refusal is answered RETRY_LATER with the
//! broker's reason and ends the stream; the sender sends the batch again later. What was
//! delivered is remembered per sending node (its latest stream id, the last batch delivered
//! whole, and which messages of a partly delivered one got through), so a batch sent again
//! is acknowledged without delivering anything twice. That memory is in this process only:
//! a batch delivered just before this node stopped, and not acknowledged, is delivered
//! again after it restarts (at least once). The sender marks a batch it sends again
//! `resent`, and what this node delivers of one is flagged `possibly_delivered`: its
//! subscribers get it with DUP, and a session that holds the publish already (restored
//! from disk) does not take it again.
//!
//! A batch names the registry log index its sender had folded into its routing
//! (`folded_index`); it waits here, bounded, until this node has folded as far. A publish
//! the sender routed here by a change this node has not applied yet (a session it adopted
//! from a node marked down, or took over) would otherwise find no subscriber here and be
//! acknowledged as delivered to nobody (the adoption race).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use prost::bytes::Bytes;
use skein_proto::v1 as pb;
use skein_seam::{BrokerHandle, BrokerHandleError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::wire;
use crate::metrics;
use crate::shared::Shared;
use crate::types::NodeId;

/// How far one sending node's stream was delivered.
#[derive(Debug, Default)]
struct Delivered {
    stream_id: u64,
    /// Every batch up to this sequence was delivered whole.
    through: u64,
    /// A batch delivered in part (a storage refusal stopped it): which messages got through.
    partial: Option<(u64, Vec<bool>)>,
}

pub(crate) struct ForwardService {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// Per sending node; its lock is held while one of its batches is delivered, so a batch
    /// resent on a new stream waits for the old stream's delivery of it to finish.
    delivered: Arc<Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Delivered>>>>>,
    fold_gate: Arc<FoldGate>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::BatchAck, Status>> + Send>>;
type RetainedStream = Pin<Box<dyn Stream<Item = Result<pb::RetainedBatch, Status>> + Send>>;

/// Retained messages per batch of the `Retained` answer.
const RETAINED_PER_BATCH: usize = 256;

/// The longest a batch waits for this node to fold its sender's index (a member applies
/// what the leader committed within a round trip or a heartbeat; one cut off from the
/// leader does not catch up by waiting, and its batches go on after this). Well under the
/// sender's acknowledgement timeout (5 s by default).
const FOLD_WAIT: Duration = Duration::from_secs(2);

impl ForwardService {
    pub(crate) fn new(shared: Arc<Shared>, shutdown: CancellationToken) -> Self {
        ForwardService {
            shared,
            shutdown,
            delivered: Arc::default(),
            fold_gate: Arc::default(),
        }
    }
}

#[tonic::async_trait]
impl pb::forward_server::Forward for ForwardService {
    type PublishStream = AckStream;
    type RetainedStream = RetainedStream;

    #[tracing::instrument(level = "info", skip_all, fields(node = self.shared.id, from = request.get_ref().from_node))]
    async fn retained(
        &self,
        request: Request<pb::RetainedRequest>,
    ) -> Result<Response<RetainedStream>, Status> {
        drop(request);
        let Some(broker) = self.shared.broker.get() else {
            return Err(Status::unavailable("the node's broker is not running yet"));
        };
        let mut all: Vec<pb::ForwardedPublish> = broker
            .retained_messages()
            .into_iter()
            .map(wire::to_pb)
            .collect();
        tracing::debug!(messages = all.len(), "retained messages asked for");
        let mut batches = Vec::with_capacity(all.len().div_ceil(RETAINED_PER_BATCH));
        while !all.is_empty() {
            let rest = all.split_off(all.len().min(RETAINED_PER_BATCH));
            batches.push(Ok(pb::RetainedBatch { retained: all }));
            all = rest;
        }
        Ok(Response::new(Box::pin(futures_util::stream::iter(batches))))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.shared.id))]
    async fn publish(
        &self,
        request: Request<Streaming<pb::PublishBatchFrames>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut batches = request.into_inner();
        let (tx, mut rx) = mpsc::channel::<Result<pb::BatchAck, Status>>(4);
        let handler = Handler {
            shared: self.shared.clone(),
            delivered: self.delivered.clone(),
            fold_gate: self.fold_gate.clone(),
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    batch = batches.message() => batch,
                    _ = shutdown.cancelled() => return,
                };
                let batch = match batch {
                    Ok(Some(batch)) => batch,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(error = %status, "a forward stream from a peer broke");
                        return;
                    }
                };
                let ack = tokio::select! {
                    ack = handler.batch(batch) => ack,
                    _ = shutdown.cancelled() => return,
                };
                let last = ack.status != pb::AckStatus::Accepted as i32;
                if tx.send(Ok(ack)).await.is_err() || last {
                    return;
                }
            }
        });
        let acks = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(acks)))
    }
}

struct Handler {
    shared: Arc<Shared>,
    delivered: Arc<Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Delivered>>>>>,
    fold_gate: Arc<FoldGate>,
}

/// Where batches wait for this node's fold (one per node: every stream shares it).
#[derive(Debug, Default)]
struct FoldGate {
    /// The highest index a batch stopped waiting for at the bound: batches naming no more
    /// than that go on at once (a node far behind pays the bound once, not per batch).
    gave_up: AtomicU64,
}

impl FoldGate {
    /// Waits, bounded, until `folded` reaches `index` (see the module docs), unless a wait
    /// for it or a later index timed out already; counts the waits and how they ended.
    async fn wait(
        &self,
        folded: &watch::Sender<Option<u64>>,
        from: NodeId,
        index: u64,
        bound: Duration,
    ) -> FoldWait {
        if index <= self.gave_up.load(Ordering::Acquire) {
            return FoldWait::None;
        }
        let started = tokio::time::Instant::now();
        let outcome = wait_folded(folded, index, bound).await;
        let waited = started.elapsed();
        match outcome {
            FoldWait::None => {}
            FoldWait::Folded => {
                tracing::debug!(
                    from,
                    index,
                    ?waited,
                    "a forwarded batch waited for this node to fold its sender's index"
                );
                metrics::forward_fold_wait("folded", waited);
            }
            FoldWait::TimedOut => {
                self.gave_up.fetch_max(index, Ordering::AcqRel);
                let folded = *folded.borrow();
                tracing::warn!(from, index, ?folded, ?bound, "this node did not fold the index a forwarded batch was routed at within the bound; delivering it anyway (a session it adopted or took over at that index may miss it)");
                metrics::forward_fold_wait("timed_out", waited);
            }
        }
        outcome
    }
}

/// How a batch's wait for this node's fold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FoldWait {
    /// Folded that far already, or the batch names no index (an older sender).
    None,
    /// Waited until this node folded that far.
    Folded,
    /// The bound passed first (delivered anyway).
    TimedOut,
}

/// Waits until `folded` reaches `index` (0: no wait), at most `bound`. Cheap when caught
/// up: one read of the watch.
async fn wait_folded(folded: &watch::Sender<Option<u64>>, index: u64, bound: Duration) -> FoldWait {
    let reached = |f: &Option<u64>| index == 0 || f.is_some_and(|f| f >= index);
    if reached(&folded.borrow()) {
        return FoldWait::None;
    }
    let mut rx = folded.subscribe();
    let waited = tokio::time::timeout(bound, rx.wait_for(reached))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => FoldWait::Folded,
        // The sender lives as long as the node (in `Shared`): it closes only when the
        // node is dropped, and then nothing more will be folded.
        Ok(false) | Err(_) => FoldWait::TimedOut,
    }
}

fn ack(sequence: u64, status: pb::AckStatus, detail: impl Into<String>) -> pb::BatchAck {
    pb::BatchAck {
        sequence,
        status: status as i32,
        detail: detail.into(),
    }
}

impl Handler {
    /// The delivery record of `from`. Records of nodes that left the membership are
    /// forgotten whenever a new sender appears, so the map holds at most one per member.
    fn record(&self, from: NodeId) -> Arc<tokio::sync::Mutex<Delivered>> {
        let mut map = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = map.get(&from) {
            return record.clone();
        }
        let membership = self
            .shared
            .raft
            .metrics()
            .borrow()
            .membership_config
            .clone();
        map.retain(|id, _| membership.membership().get_node(id).is_some());
        map.entry(from).or_default().clone()
    }

    #[tracing::instrument(level = "trace", skip_all, fields(from = batch.from_node, sequence = batch.sequence, messages = batch.publishes.len()))]
    async fn batch(&self, batch: pb::PublishBatchFrames) -> pb::BatchAck {
        use pb::AckStatus::{Accepted, RetryLater, WrongNode};
        let sequence = batch.sequence;
        if batch.to_node != self.shared.id {
            return ack(
                sequence,
                WrongNode,
                format!("this is node {}, not {}", self.shared.id, batch.to_node),
            );
        }
        let Some(broker) = self.shared.broker.get() else {
            return ack(sequence, RetryLater, "the node's broker is not running yet");
        };
        let from = batch.from_node;
        (self.fold_gate)
            .wait(&self.shared.folded, from, batch.folded_index, FOLD_WAIT)
            .await;
        let record = self.record(from);
        let mut record = record.lock().await;
        if record.stream_id != batch.stream_id || sequence > record.through + 1 {
            // A sender's new queue (or one this process never heard of): nothing of it
            // was delivered here.
            *record = Delivered {
                stream_id: batch.stream_id,
                through: sequence.saturating_sub(1),
                partial: None,
            };
        }
        if sequence <= record.through {
            metrics::forward_received(from, 0, batch.publishes.len());
            return ack(sequence, Accepted, "");
        }
        let mut done = match record.partial.take() {
            Some((s, done)) if s == sequence && done.len() == batch.publishes.len() => done,
            _ => vec![false; batch.publishes.len()],
        };
        let duplicates = done.iter().filter(|d| **d).count();
        let outcomes = deliver(
            broker.as_ref(),
            batch.publishes,
            &done,
            batch.resent,
            batch.folded_index,
        )
        .await;
        let (mut delivered, mut invalid, mut refusal) = (0, 0, None);
        for (i, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    delivered += 1;
                    done[i] = true;
                }
                // Storage refused: nothing may be acknowledged; the sender sends the batch
                // again.
                Err(BrokerHandleError::Storage(detail)) => {
                    refusal.get_or_insert(detail);
                }
                // Delivered here, but the owner of a session that moved away from here did
                // not take its copy in time (see the broker's `moved_away.rs`): not
                // acknowledged (the publisher is told so), yet not delivered here again
                // when the batch comes back; the copy stays queued for the owner here.
                Err(BrokerHandleError::NotYet(detail)) => {
                    done[i] = true;
                    refusal.get_or_insert(detail);
                }
                Err(e) => {
                    invalid += 1;
                    done[i] = true;
                    tracing::warn!(from, sequence, error = %e, "dropped a forwarded message that cannot be delivered");
                }
            }
        }
        metrics::forward_received(from, delivered, duplicates);
        if invalid > 0 {
            metrics::forward_received_dropped(from, "invalid", invalid);
        }
        match refusal {
            Some(detail) => {
                record.partial = Some((sequence, done));
                ack(sequence, RetryLater, detail)
            }
            None => {
                record.through = sequence;
                ack(sequence, Accepted, "")
            }
        }
    }
}

/// Delivers the messages not `done` yet, in batch order, through one call for the batch
/// (see `BrokerHandle::deliver_forwarded_batch`); what no publish could carry is refused
/// here and never reaches the broker. A `resent` batch's messages may have been delivered
/// here before this process started (the record above does not survive a restart): they
/// go out as possible redeliveries. Each message is marked with the batch's
/// `folded_index`, a bound of the registry its sender routed it by (see
/// `ForwardedPublish::routed_index`).
async fn deliver(
    broker: &dyn BrokerHandle,
    publishes: Vec<Bytes>,
    done: &[bool],
    resent: bool,
    folded_index: u64,
) -> Vec<(usize, Result<(), BrokerHandleError>)> {
    let mut outcomes = Vec::with_capacity(publishes.len());
    let mut indexes = Vec::with_capacity(publishes.len());
    let mut valid = Vec::with_capacity(publishes.len());
    for (i, publish) in publishes.into_iter().enumerate() {
        if done.get(i).copied().unwrap_or(false) {
            continue;
        }
        match wire::read_publish_after(publish, valid.last()) {
            Ok(mut publish) => {
                publish.possibly_delivered |= resent;
                publish.routed_index = folded_index;
                indexes.push(i);
                valid.push(publish);
            }
            Err(e) => outcomes.push((i, Err(BrokerHandleError::Invalid(e)))),
        }
    }
    if !valid.is_empty() {
        let delivered = broker.deliver_forwarded_batch(valid).await;
        outcomes.extend(
            indexes
                .into_iter()
                .zip(delivered)
                .map(|(i, outcome)| (i, outcome.map(|_| ()))),
        );
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_waits_for_the_fold_only_when_it_is_behind_and_at_most_the_bound() {
        let folded = Arc::new(watch::channel(Some(10)).0);
        // Caught up, or no index named (an older sender): no wait.
        let bound = Duration::from_secs(30);
        assert_eq!(wait_folded(&folded, 10, bound).await, FoldWait::None);
        assert_eq!(wait_folded(&folded, 3, bound).await, FoldWait::None);
        assert_eq!(wait_folded(&folded, 0, bound).await, FoldWait::None);
        let nothing = watch::channel(None).0;
        assert_eq!(wait_folded(&nothing, 0, bound).await, FoldWait::None);

        // Behind: waits while the fold moves, up to the index (not merely past 10).
        let waiter = {
            let folded = folded.clone();
            tokio::spawn(async move { wait_folded(&folded, 12, bound).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        folded.send_replace(Some(11));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still one index short");
        let started = std::time::Instant::now();
        folded.send_replace(Some(13));
        assert_eq!(waiter.await.unwrap(), FoldWait::Folded);
        assert!(started.elapsed() < Duration::from_secs(5));

        // Behind and the fold stands still: the bound ends it.
        let started = std::time::Instant::now();
        let bound = Duration::from_millis(50);
        assert_eq!(wait_folded(&folded, 14, bound).await, FoldWait::TimedOut);
        assert_eq!(wait_folded(&nothing, 1, bound).await, FoldWait::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= 2 * bound && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    /// The gate counts the waits by outcome, and after a timeout lets batches naming no
    /// later index through at once.
    #[test]
    fn the_gate_counts_its_waits_and_pays_a_timeout_once() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let folded = Arc::new(watch::channel(Some(5)).0);
        let gate = Arc::new(FoldGate::default());
        let bound = Duration::from_millis(50);
        ::metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async {
                assert_eq!(gate.wait(&folded, 2, 5, bound).await, FoldWait::None);
                assert_eq!(gate.wait(&folded, 2, 0, bound).await, FoldWait::None);
                let waiter = {
                    let (gate, folded) = (gate.clone(), folded.clone());
                    tokio::spawn(async move { gate.wait(&folded, 2, 6, bound * 100).await })
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
                folded.send_replace(Some(6));
                assert_eq!(waiter.await.unwrap(), FoldWait::Folded);

                assert_eq!(gate.wait(&folded, 2, 8, bound).await, FoldWait::TimedOut);
                // Gave up on 8: 7 and 8 go on at once, 9 waits again.
                let started = std::time::Instant::now();
                assert_eq!(gate.wait(&folded, 2, 7, bound).await, FoldWait::None);
                assert_eq!(gate.wait(&folded, 3, 8, bound).await, FoldWait::None);
                assert!(started.elapsed() < bound);
                assert_eq!(gate.wait(&folded, 3, 9, bound).await, FoldWait::TimedOut);
            });
        });
        let text = handle.render();
        let count = |outcome: &str| {
            let line = format!("skein_cluster_forward_fold_waits_total{{outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&line))
                .map(|v| v.trim().parse::<u64>().unwrap())
        };
        assert_eq!(count("folded"), Some(1), "{text}");
        assert_eq!(count("timed_out"), Some(2), "{text}");
        assert!(
            text.contains("skein_cluster_forward_fold_wait_seconds_count 3"),
            "{text}"
        );
    }
}
