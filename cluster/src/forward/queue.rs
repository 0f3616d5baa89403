//! [`PeerQueue`]: what this node holds for one peer: messages waiting to be sent and
//! batches sent but not acknowledged yet, bounded together in messages and in bytes.
//! Only the sender task takes messages out; any task puts them in.
//!
//! A message is written in its wire form as it is queued, into one buffer the waiting
//! messages share: a batch is then the front of that buffer behind a few bytes of header,
//! taken without copying or encoding anything again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use prost::bytes::BytesMut;
use skein_seam::{ForwardError, ForwardedPublish};
use tokio::sync::{oneshot, Notify};

use super::encoded::EncodedBatch;
use super::wire;
use crate::metrics::PeerForwardMetrics;
use crate::settings::ForwardSettings;
use crate::types::NodeId;

/// How much the waiting messages' buffer grows by at least: one allocation per many
/// messages.
const PENDING_CHUNK: usize = 64 * 1024;

/// The depth gauge is set at least every this many queued messages.
const DEPTH_EVERY: usize = 256;

/// Where a forward's caller learns the peer's answer.
pub(crate) type Waiter = oneshot::Sender<Result<(), ForwardError>>;

/// The queue's clock ticks this many times per forward timeout (see [`PeerQueue::tick`]).
pub(crate) const TICKS_PER_TIMEOUT: u32 = 10;

/// A caller waiting for the peer's answer, since which tick of the queue's clock: past the
/// forward timeout it is told the peer is unavailable (see [`PeerQueue::tick`]) while the
/// message stays queued.
struct Answer {
    since: u64,
    to: Waiter,
}

/// A message in `State::pending`.
struct Waiting {
    /// Its bytes there.
    bytes: usize,
    /// None: nobody waits for the answer (QoS 0).
    waiter: Option<Answer>,
}

/// A batch on its way: kept until the peer acknowledges it, to be sent again on the next
/// stream if this one breaks first.
struct Sent {
    sequence: u64,
    /// The batch as sent, encoded once: the stream sends these buffers, and sends them
    /// again if the stream breaks.
    encoded: EncodedBatch,
    /// Messages in it.
    count: usize,
    /// None once told (a RETRY_LATER or the timeout answered the caller; the batch is
    /// still retried).
    waiters: Vec<Option<Answer>>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Waiting>,
    /// The waiting messages, written one after the other as `PublishBatch.publishes`.
    pending: BytesMut,
    unacked: VecDeque<Sent>,
    /// Messages in `waiting` and `unacked`, and their encoded bytes: what the bounds limit.
    held_messages: usize,
    held_bytes: usize,
    /// The sequence of the last batch made.
    last_sequence: u64,
    /// Why no more forwards are taken; the queue is empty from then on.
    closed: Option<Closed>,
}

/// Messages a queue held, as [`PeerQueue::take_all`] hands them over: their batch entries,
/// and per message the caller waiting for its answer (None: nobody, or told already).
pub(crate) struct HeldEntries {
    pub(crate) entries: prost::bytes::Bytes,
    pub(crate) waiters: Vec<Option<Waiter>>,
    /// Sent to the peer, unacknowledged: it may have delivered them.
    pub(crate) sent: bool,
}

/// Why a queue stopped taking forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The peer left the membership.
    Removed,
    /// This node is shutting down.
    ShuttingDown,
    /// The peer was marked down: what it held went to the adopters of its sessions.
    MarkedDown,
}

impl Closed {
    /// The `reason` label of the messages it dropped.
    fn reason(self) -> &'static str {
        match self {
            Closed::Removed => "peer_removed",
            Closed::ShuttingDown => "shutting_down",
            Closed::MarkedDown => "peer_down",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Closed::Removed => "it is no longer a member of the cluster",
            Closed::ShuttingDown => "this node is shutting down",
            Closed::MarkedDown => "it was marked down",
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
    /// Ticks of the expiry task: a forward notes the tick it was queued in, not the time
    /// (no clock read per message).
    clock: AtomicU64,
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
            clock: AtomicU64::new(0),
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
        publish: &ForwardedPublish,
    ) -> Result<oneshot::Receiver<Result<(), ForwardError>>, ForwardError> {
        let (to, answer) = oneshot::channel();
        self.put(publish, Some(to))?;
        Ok(answer)
    }

    /// [`Self::push`] with nobody waiting for the answer.
    pub(crate) fn push_unanswered(&self, publish: &ForwardedPublish) -> Result<(), ForwardError> {
        self.put(publish, None)
    }

    fn put(&self, publish: &ForwardedPublish, waiter: Option<Waiter>) -> Result<(), ForwardError> {
        let len = wire::encoded_len(publish);
        let bytes = wire::batch_entry_len(len);
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
        let waiter = waiter.map(|to| Answer {
            // Under the lock: the waiting callers are in the order of their `since`.
            since: self.clock.load(Ordering::Relaxed),
            to,
        });
        let was_empty = st.waiting.is_empty();
        if st.pending.capacity() - st.pending.len() < bytes {
            // Room for many messages at once: while sent batches still share the old
            // buffer, growing it means a new one.
            st.pending.reserve(bytes.max(PENDING_CHUNK));
        }
        wire::put_batch_entry(publish, len, &mut st.pending);
        st.waiting.push_back(Waiting { bytes, waiter });
        st.held_messages += 1;
        st.held_bytes += bytes;
        // The gauge is also set per batch and per acknowledgement; here only often enough
        // to show a queue that grows while nothing is sent.
        if was_empty || st.held_messages.is_multiple_of(DEPTH_EVERY) {
            self.metrics.depth(st.held_messages);
        }
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
    /// kept as unacknowledged; None when nothing waits or the window is full. Only the
    /// sender task calls it (and `resend`, `accepted`).
    pub(crate) fn next_batch(&self, from_node: NodeId) -> Option<EncodedBatch> {
        let mut st = self.state();
        if st.waiting.is_empty() || st.unacked.len() >= self.settings.window_batches {
            return None;
        }
        let mut waiters = Vec::with_capacity(st.waiting.len().min(self.settings.batch_messages));
        let mut bytes = 0;
        while let Some(next) = st.waiting.front() {
            let full = waiters.len() >= self.settings.batch_messages
                || (!waiters.is_empty() && bytes + next.bytes > self.settings.batch_bytes);
            if full {
                break;
            }
            let Some(w) = st.waiting.pop_front() else {
                break;
            };
            bytes += w.bytes;
            waiters.push(w.waiter);
        }
        let publishes = st.pending.split_to(bytes).freeze();
        st.last_sequence += 1;
        let sequence = st.last_sequence;
        let count = waiters.len();
        let encoded = EncodedBatch {
            header: wire::batch_header(sequence, from_node, self.peer, self.stream_id),
            publishes,
        };
        st.unacked.push_back(Sent {
            sequence,
            encoded: encoded.clone(),
            count,
            waiters,
            bytes,
        });
        self.metrics.depth(st.held_messages);
        drop(st);
        self.metrics.batch(count);
        Some(encoded)
    }

    /// Every unacknowledged batch again, oldest first, for a new stream (counted as
    /// retried), marked `resent`: the peer may have delivered it before a restart, which
    /// its own record of delivered batches does not survive.
    pub(crate) fn resend(&self) -> Vec<EncodedBatch> {
        let st = self.state();
        let batches: Vec<EncodedBatch> = st
            .unacked
            .iter()
            .map(|s| EncodedBatch {
                header: wire::resent_header(&s.encoded.header),
                publishes: s.encoded.publishes.clone(),
            })
            .collect();
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
            let _ = waiter.to.send(Ok(()));
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
        let waiters: Vec<Answer> = sent.waiters.iter_mut().filter_map(Option::take).collect();
        drop(st);
        for waiter in waiters {
            let _ = waiter.to.send(Err(ForwardError::Refused {
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
        st.pending = BytesMut::new();
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
            let _ = waiter.to.send(Err(ForwardError::Unavailable {
                node: self.node(),
                detail: why.detail().into(),
            }));
        }
    }

    /// Stops taking forwards (as [`Self::close`]) and hands over everything held, oldest
    /// first: runs of batch entries (see `wire::read_batch_entries`), each with one slot
    /// per message for the caller still waiting for its answer. Nothing is counted as
    /// dropped: the caller sends it on.
    pub(crate) fn take_all(&self, why: Closed) -> Vec<HeldEntries> {
        let mut st = self.state();
        st.closed = Some(why);
        let waiting = std::mem::take(&mut st.waiting);
        let unacked = std::mem::take(&mut st.unacked);
        let mut pending = std::mem::take(&mut st.pending).freeze();
        st.held_messages = 0;
        st.held_bytes = 0;
        self.over_half.store(false, Ordering::Release);
        drop(st);
        self.room.notify_waiters();
        // The sender looks again, finds the queue closed and ends.
        self.wake.notify_one();
        self.metrics.depth(0);
        let sent = unacked.into_iter().map(|s| HeldEntries {
            entries: s.encoded.publishes,
            waiters: s.waiters.into_iter().map(|w| w.map(|a| a.to)).collect(),
            sent: true,
        });
        let queued: Vec<HeldEntries> = waiting
            .into_iter()
            .map(|w| HeldEntries {
                entries: pending.split_to(w.bytes),
                waiters: vec![w.waiter.map(|a| a.to)],
                sent: false,
            })
            .collect();
        sent.chain(queued).collect()
    }

    /// Advances the queue's clock by one tick (the expiry task calls it
    /// [`TICKS_PER_TIMEOUT`] times per `timeout`) and tells the callers that have waited the
    /// timeout that the peer did not answer in time; their messages stay queued and are
    /// still sent. One scan per tick instead of one timer per forward. A caller queued
    /// during tick `t` is told at tick `t + TICKS_PER_TIMEOUT + 1`: after at least the
    /// timeout, at most a fifth more. Returns whether the queue is closed (the task ends).
    pub(crate) fn tick(&self, timeout: std::time::Duration) -> bool {
        let mut st = self.state();
        if st.closed.is_some() {
            return true;
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let mut expired = Vec::new();
        let st = &mut *st;
        let answers = st
            .unacked
            .iter_mut()
            .flat_map(|s| s.waiters.iter_mut())
            .chain(st.waiting.iter_mut().map(|w| &mut w.waiter));
        for slot in answers {
            match slot {
                // Oldest first: the first caller still in time ends the scan.
                Some(a) if now - a.since <= u64::from(TICKS_PER_TIMEOUT) => break,
                Some(_) => expired.extend(slot.take()),
                None => {}
            }
        }
        if expired.is_empty() {
            return false;
        }
        for waiter in expired {
            let _ = waiter.to.send(Err(ForwardError::Unavailable {
                node: self.node(),
                detail: format!(
                    "no acknowledgement within {timeout:?}; the message stays queued for it"
                ),
            }));
        }
        false
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed.is_some()
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

    use prost::bytes::Bytes;
    use prost::Message as _;
    use skein_proto::v1 as pb;
    use skein_seam::PublishProperties;

    fn decoded(batch: Option<EncodedBatch>) -> pb::PublishBatch {
        pb::PublishBatch::decode(&batch.expect("a batch").to_vec()[..]).unwrap()
    }

    fn publish(topic: &str, payload: usize) -> ForwardedPublish {
        ForwardedPublish {
            topic: topic.into(),
            payload: Bytes::from(vec![7u8; payload]),
            qos: 1,
            retain: false,
            properties: PublishProperties::default(),
            received_at_ms: 0,
            publisher: None,
            publisher_username: None,
            publish_id: None,
            to_subscribers: true,
            shared: Vec::new(),
            adopted_from: None,
            for_client: None,
            possibly_delivered: false,
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
            .map(|i| q.push(&publish(&format!("t/{i}"), 10)).unwrap())
            .collect();
        assert_eq!(
            q.push(&publish("t/4", 10)).unwrap_err(),
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
        // A new stream gets the unacknowledged batch again, same sequence, marked resent.
        let again = q.resend();
        assert_eq!(again.len(), 1);
        assert_eq!(
            decoded(Some(again[0].clone())),
            pb::PublishBatch {
                resent: true,
                ..second
            }
        );
        q.accepted(2).unwrap();
        assert_eq!(q.held(), 0);
    }

    #[tokio::test]
    async fn publishers_wait_for_room_above_half_the_bound_until_acks_free_it() {
        let q = PeerQueue::new(2, 1, settings());
        for i in 0..3 {
            q.push(&publish(&format!("t/{i}"), 1)).unwrap();
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
            q.push(&publish(&format!("u/{i}"), 1)).unwrap();
        }
        assert!(!q.has_room());
        q.close(Closed::ShuttingDown);
        assert!(q.has_room());
    }

    #[tokio::test]
    async fn callers_past_the_timeout_are_told_but_their_messages_stay_queued() {
        let q = PeerQueue::new(2, 1, settings());
        let timeout = std::time::Duration::from_secs(5);
        let old = q.push(&publish("old", 1)).unwrap();
        let sent = decoded(q.next_batch(1));
        for _ in 0..5 {
            assert!(!q.tick(timeout));
        }
        q.push_unanswered(&publish("nobody waits", 1)).unwrap();
        let mut young = q.push(&publish("young", 1)).unwrap();
        for _ in 5..TICKS_PER_TIMEOUT {
            assert!(!q.tick(timeout));
        }
        let mut old = old;
        assert!(
            old.try_recv().is_err(),
            "a timeout of ticks, but maybe queued late in its tick"
        );
        assert!(!q.tick(timeout));
        assert!(matches!(
            old.await.unwrap(),
            Err(ForwardError::Unavailable { detail, .. }) if detail.contains("stays queued")
        ));
        assert!(young.try_recv().is_err(), "still within the timeout");
        // Still sent, still answered when acknowledged (to nobody, for the expired one).
        assert_eq!(q.held(), 3);
        q.accepted(sent.sequence).unwrap();
        let rest = decoded(q.next_batch(1));
        assert_eq!(rest.publishes.len(), 2);
        q.accepted(rest.sequence).unwrap();
        assert_eq!(young.await.unwrap(), Ok(()));
        q.close(Closed::Removed);
        assert!(q.tick(timeout), "a closed queue ends its task");
    }

    #[test]
    fn a_batch_closes_at_its_byte_bound_but_a_large_message_travels_alone() {
        let q = PeerQueue::new(2, 1, settings());
        q.push(&publish("a", 200)).unwrap();
        q.push(&publish("b", 200)).unwrap();
        assert_eq!(decoded(q.next_batch(1)).publishes.len(), 1);
        assert_eq!(decoded(q.next_batch(1)).publishes.len(), 1);
        // Larger than the whole byte bound: refused, never queued.
        assert!(matches!(
            q.push(&publish("huge", 2000)),
            Err(ForwardError::QueueFull(_))
        ));
    }

    #[tokio::test]
    async fn closing_fails_every_caller_and_refusals_answer_but_keep_the_batch() {
        let q = PeerQueue::new(3, 1, settings());
        let a = q.push(&publish("a", 1)).unwrap();
        let b = q.push(&publish("b", 1)).unwrap();
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

        let c = q.push(&publish("c", 1)).unwrap();
        q.close(Closed::Removed);
        assert!(matches!(
            c.await.unwrap(),
            Err(ForwardError::Unavailable { .. })
        ));
        assert_eq!(q.held(), 0);
        assert!(matches!(
            q.push(&publish("d", 1)),
            Err(ForwardError::Unavailable { .. })
        ));
    }
}
