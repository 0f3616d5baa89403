//! [`PeerQueue`]: what this node holds for one peer: messages waiting to be sent and
//! batches sent but not acknowledged yet, bounded together in messages and in bytes.
//! Only the sender task takes messages out; any task puts them in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use prost::bytes::Bytes;
use prost::Message as _;
use skein_proto::v1 as pb;
use skein_seam::ForwardError;
use tokio::sync::{oneshot, Notify};

use crate::metrics::PeerForwardMetrics;
use crate::settings::ForwardSettings;
use crate::types::NodeId;

/// Where a forward's caller learns the peer's answer.
pub(crate) type Waiter = oneshot::Sender<Result<(), ForwardError>>;

struct Waiting {
    publish: pb::ForwardedPublish,
    bytes: usize,
    /// None: nobody waits for the answer (QoS 0).
    waiter: Option<Waiter>,
}

/// A batch on its way: kept until the peer acknowledges it, to be sent again on the next
/// stream if this one breaks first.
struct Sent {
    sequence: u64,
    /// The batch as sent, encoded once: the stream sends this buffer, and sends it again
    /// if the stream breaks.
    encoded: Bytes,
    /// Messages in it.
    count: usize,
    /// None once told (a RETRY_LATER answered the callers; the batch is still retried).
    waiters: Vec<Option<Waiter>>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Waiting>,
    unacked: VecDeque<Sent>,
    /// Messages in `waiting` and `unacked`, and their encoded bytes: what the bounds limit.
    held_messages: usize,
    held_bytes: usize,
    /// The sequence of the last batch made.
    last_sequence: u64,
    /// Why no more forwards are taken; the queue is empty from then on.
    closed: Option<Closed>,
}

/// Why a queue stopped taking forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The peer left the membership.
    Removed,
    /// This node is shutting down.
    ShuttingDown,
}

impl Closed {
    /// The `reason` label of the messages it dropped.
    fn reason(self) -> &'static str {
        match self {
            Closed::Removed => "peer_removed",
            Closed::ShuttingDown => "shutting_down",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Closed::Removed => "it is no longer a member of the cluster",
            Closed::ShuttingDown => "this node is shutting down",
        }
    }
}

pub(crate) struct PeerQueue {
    pub(crate) peer: NodeId,
    /// Names this queue's stream to the peer: sequences count within it (see
    /// `dataplane.proto`).
    pub(crate) stream_id: u64,
    state: Mutex<State>,
    /// Wakes the sender task when a message arrives in an empty queue.
    pub(crate) wake: Notify,
    /// Wakes publishers waiting for room (see [`Self::has_room`]) when acknowledgements
    /// bring the queue back under half its bounds, or the queue closes.
    room: Notify,
    /// Whether more than half of a bound is held: what publishers look at after each
    /// forward, without the lock.
    over_half: AtomicBool,
    settings: ForwardSettings,
    pub(crate) metrics: PeerForwardMetrics,
}

impl PeerQueue {
    pub(crate) fn new(peer: NodeId, stream_id: u64, settings: ForwardSettings) -> PeerQueue {
        PeerQueue {
            peer,
            stream_id,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            room: Notify::new(),
            over_half: AtomicBool::new(false),
            settings,
            metrics: PeerForwardMetrics::new(peer),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn node(&self) -> skein_seam::NodeId {
        skein_seam::NodeId(self.peer)
    }

    /// Queues `publish`; the receiver gets the peer's answer. Refused when the queue is
    /// closed or the message would take it past either bound (counted as dropped).
    pub(crate) fn push(
        &self,
        publish: pb::ForwardedPublish,
    ) -> Result<oneshot::Receiver<Result<(), ForwardError>>, ForwardError> {
        let (waiter, answer) = oneshot::channel();
        self.put(publish, Some(waiter))?;
        Ok(answer)
    }

    /// [`Self::push`] with nobody waiting for the answer.
    pub(crate) fn push_unanswered(
        &self,
        publish: pb::ForwardedPublish,
    ) -> Result<(), ForwardError> {
        self.put(publish, None)
    }

    fn put(
        &self,
        publish: pb::ForwardedPublish,
        waiter: Option<Waiter>,
    ) -> Result<(), ForwardError> {
        let bytes = publish.encoded_len();
        let mut st = self.state();
        if let Some(closed) = st.closed {
            return Err(ForwardError::Unavailable {
                node: self.node(),
                detail: closed.detail().into(),
            });
        }
        if st.held_messages >= self.settings.queue_messages
            || st.held_bytes + bytes > self.settings.queue_bytes
        {
            drop(st);
            self.metrics.dropped("queue_full", 1);
            return Err(ForwardError::QueueFull(self.node()));
        }
        let was_empty = st.waiting.is_empty();
        st.waiting.push_back(Waiting {
            publish,
            bytes,
            waiter,
        });
        st.held_messages += 1;
        st.held_bytes += bytes;
        self.metrics.depth(st.held_messages);
        if !self.under_half(&st) {
            self.over_half.store(true, Ordering::Release);
        }
        drop(st);
        // The sender drains the whole queue (or fills its window) each time it looks: a
        // queue that was not empty has a wake-up pending or is waiting for room.
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether a publisher may go on without waiting: the queue holds at most half of
    /// either bound (the other half absorbs what publishers read before they look again),
    /// or it is closed (forwards fail at once then; waiting would not help).
    pub(crate) fn has_room(&self) -> bool {
        !self.over_half.load(Ordering::Acquire)
    }

    fn under_half(&self, st: &State) -> bool {
        st.held_messages <= self.settings.queue_messages / 2
            && st.held_bytes <= self.settings.queue_bytes / 2
    }

    /// Resolves once [`Self::has_room`] holds.
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before looking, so an acknowledgement in between is not missed.
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// Whether another batch may be sent before an acknowledgement comes back.
    pub(crate) fn window_open(&self) -> bool {
        self.state().unacked.len() < self.settings.window_batches
    }

    /// The next batch to send (as many waiting messages as fit, up to the batch bounds),
    /// kept as unacknowledged; None when nothing waits or the window is full.
    /// Only the sender task calls it (and `resend`, `accepted`, `close`), so the batch is
    /// encoded outside the lock and recorded after.
    pub(crate) fn next_batch(&self, from_node: NodeId) -> Option<Bytes> {
        let mut st = self.state();
        if st.waiting.is_empty() || st.unacked.len() >= self.settings.window_batches {
            return None;
        }
        let mut publishes = Vec::with_capacity(st.waiting.len().min(self.settings.batch_messages));
        let mut waiters = Vec::with_capacity(publishes.capacity());
        let mut bytes = 0;
        while let Some(next) = st.waiting.front() {
            let full = publishes.len() >= self.settings.batch_messages
                || (!publishes.is_empty() && bytes + next.bytes > self.settings.batch_bytes);
            if full {
                break;
            }
            let Some(w) = st.waiting.pop_front() else {
                break;
            };
            bytes += w.bytes;
            publishes.push(w.publish);
            waiters.push(w.waiter);
        }
        st.last_sequence += 1;
        let sequence = st.last_sequence;
        drop(st);
        let count = publishes.len();
        let batch = pb::PublishBatch {
            sequence,
            from_node,
            to_node: self.peer,
            publishes,
            stream_id: self.stream_id,
        };
        let encoded = Bytes::from(batch.encode_to_vec());
        self.metrics.batch(count);
        self.state().unacked.push_back(Sent {
            sequence,
            encoded: encoded.clone(),
            count,
            waiters,
            bytes,
        });
        Some(encoded)
    }

    /// Every unacknowledged batch again, oldest first, for a new stream (counted as
    /// retried).
    pub(crate) fn resend(&self) -> Vec<Bytes> {
        let st = self.state();
        let batches: Vec<Bytes> = st.unacked.iter().map(|s| s.encoded.clone()).collect();
        let messages: usize = st.unacked.iter().map(|s| s.count).sum();
        drop(st);
        self.metrics.retried(messages);
        batches
    }

    /// The peer accepted batch `sequence`, which must be the oldest unacknowledged one
    /// (acks come in order): its callers are told, its room is freed.
    pub(crate) fn accepted(&self, sequence: u64) -> Result<(), String> {
        let mut st = self.state();
        let sent = match st.unacked.front() {
            Some(front) if front.sequence == sequence => st.unacked.pop_front(),
            other => {
                return Err(format!(
                    "acknowledgement of batch {sequence} while the oldest unacknowledged is {:?}",
                    other.map(|s| s.sequence)
                ))
            }
        };
        let Some(sent) = sent else {
            return Err("no batch to acknowledge".into());
        };
        st.held_messages -= sent.count;
        st.held_bytes -= sent.bytes;
        self.metrics.depth(st.held_messages);
        let room = self.under_half(&st);
        if room {
            self.over_half.store(false, Ordering::Release);
        }
        drop(st);
        if room {
            self.room.notify_waiters();
        }
        self.metrics.sent(sent.count);
        for waiter in sent.waiters.into_iter().flatten() {
            let _ = waiter.send(Ok(()));
        }
        Ok(())
    }

    /// The peer could not take batch `sequence` now: its callers are told so at once (a
    /// publisher is answered as promptly as a local storage refusal would be), and the batch
    /// stays queued to be sent again.
    pub(crate) fn refused(&self, sequence: u64, detail: &str) {
        let mut st = self.state();
        let Some(sent) = st.unacked.iter_mut().find(|s| s.sequence == sequence) else {
            return;
        };
        let waiters: Vec<Waiter> = sent.waiters.iter_mut().filter_map(Option::take).collect();
        drop(st);
        for waiter in waiters {
            let _ = waiter.send(Err(ForwardError::Refused {
                node: self.node(),
                detail: detail.to_owned(),
            }));
        }
    }

    /// Stops taking forwards and fails everything held (counted as dropped for `why`).
    pub(crate) fn close(&self, why: Closed) {
        let mut st = self.state();
        st.closed = Some(why);
        let waiting = std::mem::take(&mut st.waiting);
        let unacked = std::mem::take(&mut st.unacked);
        let dropped = st.held_messages;
        st.held_messages = 0;
        st.held_bytes = 0;
        self.over_half.store(false, Ordering::Release);
        drop(st);
        self.room.notify_waiters();
        self.metrics.depth(0);
        if dropped > 0 {
            self.metrics.dropped(why.reason(), dropped);
            tracing::warn!(
                peer = self.peer,
                messages = dropped,
                reason = why.reason(),
                "forwards to a peer dropped"
            );
        }
        let waiters = waiting
            .into_iter()
            .map(|w| w.waiter)
            .chain(unacked.into_iter().flat_map(|s| s.waiters));
        for waiter in waiters.flatten() {
            let _ = waiter.send(Err(ForwardError::Unavailable {
                node: self.node(),
                detail: why.detail().into(),
            }));
        }
    }

    /// Messages held (waiting and unacknowledged).
    pub(crate) fn held(&self) -> usize {
        self.state().held_messages
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn decoded(batch: Option<Bytes>) -> pb::PublishBatch {
        pb::PublishBatch::decode(batch.expect("a batch")).unwrap()
    }

    fn publish(topic: &str, payload: usize) -> pb::ForwardedPublish {
        pb::ForwardedPublish {
            topic: topic.into(),
            payload: Bytes::from(vec![7u8; payload]),
            qos: 1,
            to_subscribers: true,
            ..Default::default()
        }
    }

    fn settings() -> ForwardSettings {
        ForwardSettings {
            queue_messages: 4,
            queue_bytes: 1000,
            batch_messages: 2,
            batch_bytes: 300,
            window_batches: 2,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn batches_keep_order_fill_the_window_and_acks_free_room() {
        let q = PeerQueue::new(2, 99, settings());
        let answers: Vec<_> = (0..4)
            .map(|i| q.push(publish(&format!("t/{i}"), 10)).unwrap())
            .collect();
        assert_eq!(
            q.push(publish("t/4", 10)).unwrap_err(),
            ForwardError::QueueFull(skein_seam::NodeId(2))
        );
        let first = decoded(q.next_batch(1));
        let second = decoded(q.next_batch(1));
        assert!(q.next_batch(1).is_none(), "window of two batches");
        assert_eq!((first.sequence, second.sequence), (1, 2));
        assert_eq!(
            (first.from_node, first.to_node, first.stream_id),
            (1, 2, 99)
        );
        let topics: Vec<&str> = first
            .publishes
            .iter()
            .chain(&second.publishes)
            .map(|p| p.topic.as_str())
            .collect();
        assert_eq!(topics, ["t/0", "t/1", "t/2", "t/3"]);

        assert!(q.accepted(2).is_err(), "acks come in order");
        q.accepted(1).unwrap();
        assert_eq!(q.held(), 2);
        let mut answers = answers.into_iter();
        for _ in 0..2 {
            assert_eq!(answers.next().unwrap().await.unwrap(), Ok(()));
        }
        // A new stream gets the unacknowledged batch again, same sequence.
        let again = q.resend();
        assert_eq!(again.len(), 1);
        assert_eq!(decoded(Some(again[0].clone())), second);
        q.accepted(2).unwrap();
        assert_eq!(q.held(), 0);
    }

    #[tokio::test]
    async fn publishers_wait_for_room_above_half_the_bound_until_acks_free_it() {
        let q = PeerQueue::new(2, 1, settings());
        for i in 0..3 {
            q.push(publish(&format!("t/{i}"), 1)).unwrap();
        }
        assert!(!q.has_room(), "3 of 4 held: over half");
        let first = decoded(q.next_batch(1));
        let short = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(short, q.room()).await.is_err());
        let waiting = tokio::spawn({
            let q = Arc::new(q);
            let waiter = q.clone();
            let sequence = first.sequence;
            async move {
                let room = tokio::spawn(async move { waiter.room().await });
                tokio::task::yield_now().await;
                q.accepted(sequence).unwrap();
                room.await.unwrap();
                q
            }
        });
        let q = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("room once the batch was acknowledged")
            .unwrap();
        assert!(q.has_room());
        // A closed queue never keeps a publisher waiting.
        for i in 0..2 {
            q.push(publish(&format!("u/{i}"), 1)).unwrap();
        }
        assert!(!q.has_room());
        q.close(Closed::ShuttingDown);
        assert!(q.has_room());
    }

    #[test]
    fn a_batch_closes_at_its_byte_bound_but_a_large_message_travels_alone() {
        let q = PeerQueue::new(2, 1, settings());
        q.push(publish("a", 200)).unwrap();
        q.push(publish("b", 200)).unwrap();
        assert_eq!(decoded(q.next_batch(1)).publishes.len(), 1);
        assert_eq!(decoded(q.next_batch(1)).publishes.len(), 1);
        // Larger than the whole byte bound: refused, never queued.
        assert!(matches!(
            q.push(publish("huge", 2000)),
            Err(ForwardError::QueueFull(_))
        ));
    }

    #[tokio::test]
    async fn closing_fails_every_caller_and_refusals_answer_but_keep_the_batch() {
        let q = PeerQueue::new(3, 1, settings());
        let a = q.push(publish("a", 1)).unwrap();
        let b = q.push(publish("b", 1)).unwrap();
        let batch = decoded(q.next_batch(1));
        q.refused(batch.sequence, "disk full");
        assert!(
            matches!(a.await.unwrap(), Err(ForwardError::Refused { detail, .. }) if detail == "disk full")
        );
        assert!(matches!(
            b.await.unwrap(),
            Err(ForwardError::Refused { .. })
        ));
        assert_eq!(q.resend().len(), 1, "still held for another try");

        let c = q.push(publish("c", 1)).unwrap();
        q.close(Closed::Removed);
        assert!(matches!(
            c.await.unwrap(),
            Err(ForwardError::Unavailable { .. })
        ));
        assert_eq!(q.held(), 0);
        assert!(matches!(
            q.push(publish("d", 1)),
            Err(ForwardError::Unavailable { .. })
        ));
    }
}
