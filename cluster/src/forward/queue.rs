//! [`PeerQueue`]: what this node holds for one peer: messages waiting to be sent and
//! batches sent but not acknowledged yet, bounded together in messages and in bytes.
//! Only the sender task takes messages out; any task puts them in.
//!
//! A message is written in its wire form as it is queued, into chunks of buffer the waiting
//! messages share: a batch is then the front of those chunks behind a few bytes of header,
//! taken without copying or encoding anything again. A full chunk is sealed and a new one
//! started, never grown: growing a buffer that sent batches still share means a new one
//! with a copy of everything still waiting, and behind a slow peer (the queue held at half
//! its bound by backpressure, megabytes) that copy, made every few hundred messages into
//! freshly mapped pages, cost the sending node about a fifth of its CPU.
//!
//! A publisher waiting for the peer's answer is not a channel per message but a place in a
//! [`Run`] of its read batch's tally (see `runs`): a batch accepted answers its runs, one
//! subtraction each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prost::bytes::{Bytes, BytesMut};
use skein_seam::{ForwardError, ForwardTally, ForwardedPublish};
use tokio::sync::Notify;

use super::encoded::EncodedBatch;
use super::runs::{Run, Ticket};
use super::wire;
use crate::metrics::PeerForwardMetrics;
use crate::settings::ForwardSettings;
use crate::types::NodeId;

/// The size of a chunk of waiting messages (a larger message gets a chunk of its own
/// size): one allocation per many messages, under glibc's mmap threshold so that chunks
/// freed by acknowledgements are reused rather than mapped afresh.
const PENDING_CHUNK: usize = 64 * 1024;

/// The depth gauge is set at least every this many queued messages.
const DEPTH_EVERY: usize = 256;

/// The queue's clock ticks this many times per forward timeout (see [`PeerQueue::tick`]).
pub(crate) const TICKS_PER_TIMEOUT: u32 = 10;

/// A message in `State::sealed` or `pending`: its bytes there, and the registry log index
/// its route was folded at most (`Shared::routed_up_to` when it was queued; 0: not known).
struct Waiting {
    bytes: usize,
    routed_up_to: u64,
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
    /// The queue position of its first message.
    first_msg: u64,
    /// The callers waiting for its messages' answers, in order; a run leaves once told (a
    /// RETRY_LATER or the timeout answered it; the batch is still retried).
    runs: Vec<Run>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Waiting>,
    /// The callers waiting for answers to messages in `waiting`, in order (a caller past the
    /// timeout is told and leaves).
    waiting_runs: VecDeque<Run>,
    /// Messages ever queued: the position of the next one.
    queued: u64,
    /// The waiting messages, written one after the other as `PublishBatch.publishes`:
    /// full chunks, oldest first (each message wholly in one), then the chunk being written.
    sealed: VecDeque<Bytes>,
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
    pub(crate) entries: Bytes,
    pub(crate) waiters: Vec<Option<Ticket>>,
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

    /// Queues `publish`, answered through `tally` as `ticket` (counted there as outstanding
    /// until the peer's answer or the timeout). Refused when the queue is closed or the
    /// message would take it past either bound (counted as dropped; `tally` does not count
    /// it then).
    #[cfg(test)]
    pub(crate) fn push(
        &self,
        publish: &ForwardedPublish,
        tally: &Arc<ForwardTally>,
        ticket: u32,
    ) -> Result<(), ForwardError> {
        self.put(publish, Some((tally, ticket)), 0)
    }

    /// [`Self::push`], routed by the registry folded up to `routed_up_to` at most (see
    /// [`Self::next_batch`]).
    pub(crate) fn push_routed(
        &self,
        publish: &ForwardedPublish,
        tally: &Arc<ForwardTally>,
        ticket: u32,
        routed_up_to: u64,
    ) -> Result<(), ForwardError> {
        self.put(publish, Some((tally, ticket)), routed_up_to)
    }

    /// [`Self::push`] with nobody waiting for the answer.
    #[cfg(test)]
    pub(crate) fn push_unanswered(&self, publish: &ForwardedPublish) -> Result<(), ForwardError> {
        self.put(publish, None, 0)
    }

    /// [`Self::push_unanswered`], routed as [`Self::push_routed`] says.
    pub(crate) fn push_unanswered_routed(
        &self,
        publish: &ForwardedPublish,
        routed_up_to: u64,
    ) -> Result<(), ForwardError> {
        self.put(publish, None, routed_up_to)
    }

    fn put(
        &self,
        publish: &ForwardedPublish,
        answer: Option<(&Arc<ForwardTally>, u32)>,
        routed_up_to: u64,
    ) -> Result<(), ForwardError> {
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
        let at = st.queued;
        st.queued += 1;
        if let Some((tally, ticket)) = answer {
            // Under the lock: the runs are in the order of their `since`.
            let since = self.clock.load(Ordering::Relaxed);
            let extended = st
                .waiting_runs
                .back_mut()
                .is_some_and(|run| run.extend(tally, ticket, at, since));
            if !extended {
                let run = Run::new(tally, ticket, self.peer, at, since);
                st.waiting_runs.push_back(run);
            }
        }
        let was_empty = st.waiting.is_empty();
        st.make_room(bytes);
        wire::put_batch_entry(publish, len, &mut st.pending);
        st.waiting.push_back(Waiting {
            bytes,
            routed_up_to,
        });
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
    /// sender task calls it (and `resend`, `accepted`). `folded_index` (the sender's
    /// `routed_up_to` now) goes in the batch (see `dataplane.proto`), lowered to the index
    /// its messages were queued at when they say so: the receiver takes it as the bound of
    /// the registry each of them was routed by (a session that came to it by a later
    /// registration was elsewhere then), and a batch built long after its messages were
    /// routed (they waited for the window) would overstate it.
    ///
    /// A batch holds only messages queued at one index: the receiver reads the batch's
    /// index as each message's. A batch that named the highest of several let a message
    /// routed before a session came to the receiver pass for one routed after, and the
    /// client got it again without DUP (the chaos suite, 100 rounds, seed 42: a message
    /// queued at 400 went out in a batch naming 411, the index its subscriber came at).
    pub(crate) fn next_batch(&self, from_node: NodeId, folded_index: u64) -> Option<EncodedBatch> {
        let mut st = self.state();
        if st.waiting.is_empty() || st.unacked.len() >= self.settings.window_batches {
            return None;
        }
        let first_msg = st.queued - st.waiting.len() as u64;
        let mut count = 0;
        let mut bytes = 0;
        // The index the batch's messages were queued at (0: unknown).
        let routed = st.waiting.front().map_or(0, |w| w.routed_up_to);
        while let Some(next) = st.waiting.front() {
            let full = count >= self.settings.batch_messages
                || (count > 0 && bytes + next.bytes > self.settings.batch_bytes)
                || next.routed_up_to != routed;
            if full {
                break;
            }
            bytes += next.bytes;
            count += 1;
            st.waiting.pop_front();
        }
        // The runs of the messages taken go with the batch, the last one split where the
        // batch ends.
        let end = first_msg + count as u64;
        let mut runs = Vec::new();
        while let Some(run) = st.waiting_runs.front_mut() {
            if run.first_msg >= end {
                break;
            }
            if run.end_msg() > end {
                runs.push(run.split_front((end - run.first_msg) as u32));
                break;
            }
            runs.extend(st.waiting_runs.pop_front());
        }
        let batch_index = if routed == 0 {
            folded_index
        } else {
            routed.min(folded_index)
        };
        let publishes = st.take_front(bytes);
        st.last_sequence += 1;
        let sequence = st.last_sequence;
        let encoded = EncodedBatch {
            header: wire::batch_header(sequence, from_node, self.peer, self.stream_id, batch_index),
            publishes,
        };
        st.unacked.push_back(Sent {
            sequence,
            encoded: encoded.clone(),
            count,
            first_msg,
            runs,
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
        for run in sent.runs {
            run.accept();
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
        let runs = std::mem::take(&mut sent.runs);
        drop(st);
        for run in runs {
            run.fail(ForwardError::Refused {
                node: self.node(),
                detail: detail.to_owned(),
            });
        }
    }

    /// Stops taking forwards and fails everything held (counted as dropped for `why`).
    pub(crate) fn close(&self, why: Closed) {
        let mut st = self.state();
        st.closed = Some(why);
        st.waiting.clear();
        let waiting_runs = std::mem::take(&mut st.waiting_runs);
        let unacked = std::mem::take(&mut st.unacked);
        st.sealed.clear();
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
        let runs = unacked.into_iter().flat_map(|s| s.runs).chain(waiting_runs);
        for run in runs {
            run.fail(ForwardError::Unavailable {
                node: self.node(),
                detail: why.detail().into(),
            });
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
        let waiting_first = st.queued - waiting.len() as u64;
        let waiting_runs = std::mem::take(&mut st.waiting_runs);
        let unacked = std::mem::take(&mut st.unacked);
        let queued_entries: Vec<Bytes> = waiting
            .iter()
            .map(|w| concat(st.take_front(w.bytes)))
            .collect();
        st.sealed.clear();
        st.pending = BytesMut::new();
        st.held_messages = 0;
        st.held_bytes = 0;
        self.over_half.store(false, Ordering::Release);
        drop(st);
        self.room.notify_waiters();
        // The sender looks again, finds the queue closed and ends.
        self.wake.notify_one();
        self.metrics.depth(0);
        let sent = unacked.into_iter().map(|s| HeldEntries {
            entries: concat(s.encoded.publishes),
            waiters: tickets(s.first_msg, s.count, s.runs),
            sent: true,
        });
        let mut queued_tickets = tickets(waiting_first, waiting.len(), waiting_runs).into_iter();
        let queued: Vec<HeldEntries> = queued_entries
            .into_iter()
            .map(|entries| HeldEntries {
                entries,
                waiters: vec![queued_tickets.next().flatten()],
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
        let late = |run: &Run| now - run.since > u64::from(TICKS_PER_TIMEOUT);
        let mut expired = Vec::new();
        let st = &mut *st;
        // Oldest first: the first run still in time ends the scan.
        let mut in_time = false;
        for sent in &mut st.unacked {
            let n = sent.runs.iter().take_while(|r| late(r)).count();
            expired.extend(sent.runs.drain(..n));
            if !sent.runs.is_empty() {
                in_time = true;
                break;
            }
        }
        while !in_time && st.waiting_runs.front().is_some_and(late) {
            expired.extend(st.waiting_runs.pop_front());
        }
        if expired.is_empty() {
            return false;
        }
        for run in expired {
            run.fail(ForwardError::Unavailable {
                node: self.node(),
                detail: format!(
                    "no acknowledgement within {timeout:?}; the message stays queued for it"
                ),
            });
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

impl State {
    /// Makes room in `pending` for an entry of `bytes`: a chunk without room for it is
    /// sealed as it is and a new one started (see the module docs).
    fn make_room(&mut self, bytes: usize) {
        if self.pending.capacity() - self.pending.len() >= bytes {
            return;
        }
        if !self.pending.is_empty() {
            let full = self.pending.split().freeze();
            self.sealed.push_back(full);
        }
        // Empty now: nothing is copied. Reclaimed in place when no sent batch shares it
        // any more, otherwise a new chunk.
        self.pending.reserve(bytes.max(PENDING_CHUNK));
    }

    /// The first `bytes` of the waiting messages' entries (whole entries: the callers
    /// count them from `waiting`), one slice per chunk they lie in.
    fn take_front(&mut self, mut bytes: usize) -> Vec<Bytes> {
        let mut parts = Vec::with_capacity(1 + self.sealed.len().min(2));
        while bytes > 0 {
            let Some(front) = self.sealed.front_mut() else {
                parts.push(self.pending.split_to(bytes).freeze());
                break;
            };
            if front.len() > bytes {
                parts.push(front.split_to(bytes));
                break;
            }
            bytes -= front.len();
            parts.extend(self.sealed.pop_front());
        }
        parts
    }
}

/// `parts` as one buffer: copied only when there are several (a batch that spans chunks,
/// handed over when its peer is marked down: rare).
fn concat(mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    parts.concat().into()
}

/// Per message from position `first` on (`count` of them), its caller's ticket from `runs`
/// (None: nobody waits, or was told already).
fn tickets(first: u64, count: usize, runs: impl IntoIterator<Item = Run>) -> Vec<Option<Ticket>> {
    let mut slots: Vec<Option<Ticket>> = std::iter::repeat_with(|| None).take(count).collect();
    for run in runs {
        let at = run.first_msg.saturating_sub(first) as usize;
        for (slot, ticket) in slots.iter_mut().skip(at).zip(run.into_tickets()) {
            *slot = Some(ticket);
        }
    }
    slots
}

#[cfg(test)]
mod tests;
