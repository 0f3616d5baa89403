//! The late log: publishes routed while input reported before them was still unhandled,
//! so that a SUBSCRIBE in that input gets them once it is handled.
//!
//! Under load nearly every publish goes through it, so it is sharded by publisher (two
//! workers rarely write the same shard, and a shard's lock stays in its writer's cache)
//! and pruned by its writers, a little at a time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::message::Message;

const SHARDS: usize = 8;
/// A shard's bound: a publish that would go past it waits for the earlier input instead.
/// Entries leave as soon as the input reported before them has been handled, which under
/// saturation takes milliseconds (a hundred connections' reports queued behind busy
/// streams). A bound is also back-pressure there: keeping thousands of delivered messages
/// alive cost more than the waits (the `pairs` benchmark at QoS 0: broker CPU +15% with
/// 8192 entries a shard, +7% with 256 to 2048; at QoS 1 +8% with 8192, none with 2048).
const SHARD_MAX: usize = 2048;
/// The same for the payload bytes a shard keeps alive.
const SHARD_MAX_BYTES: usize = 4 << 20;
/// A writer prunes its shard every this many entries.
const PRUNE_EVERY: u64 = 64;

pub(super) struct LateLog {
    shards: [Shard; SHARDS],
}

/// Cache-line aligned, so that two workers writing two shards do not share a line.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    log: Mutex<Entries>,
    /// Entries and payload bytes in `log`, read without its lock.
    len: AtomicUsize,
    bytes: AtomicUsize,
}

#[derive(Default)]
struct Entries {
    entries: VecDeque<Entry>,
    /// The sequence number of the next entry.
    next: u64,
    bytes: usize,
}

struct Entry {
    seq: u64,
    /// Where the publish was read in the input order.
    position: u64,
    message: Arc<Message>,
}

/// Where each shard ended when a subscription was added (see [`LateLog::cutoff`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LateCutoff([u64; SHARDS]);

impl Default for LateLog {
    fn default() -> Self {
        LateLog {
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_size(&self, entries: &Entries) {
        self.len.store(entries.entries.len(), Ordering::Relaxed);
        self.bytes.store(entries.bytes, Ordering::Relaxed);
    }
}

impl Entries {
    /// Drops the entries read no later than `oldest` (the oldest input still unhandled):
    /// no SUBSCRIBE can want them any more.
    fn prune(&mut self, oldest: u64) {
        while let Some(e) = self.entries.front() {
            if e.position > oldest {
                break;
            }
            self.bytes -= e.message.payload.len();
            self.entries.pop_front();
        }
    }
}

impl LateLog {
    fn shard(&self, publisher: u64) -> &Shard {
        &self.shards[publisher as usize % SHARDS]
    }

    /// Whether the shard of `publisher` (a connection id) has room.
    pub(super) fn has_room(&self, publisher: u64) -> bool {
        let shard = self.shard(publisher);
        shard.len.load(Ordering::Relaxed) < SHARD_MAX
            && shard.bytes.load(Ordering::Relaxed) < SHARD_MAX_BYTES
    }

    /// Writes down a publish of `publisher` read at `position`; `oldest` gives the
    /// position of the oldest input still unhandled, for pruning now and then.
    pub(super) fn record(
        &self,
        publisher: u64,
        position: u64,
        message: &Arc<Message>,
        oldest: impl FnOnce() -> u64,
    ) {
        let shard = self.shard(publisher);
        let mut log = shard.lock();
        if log.next.is_multiple_of(PRUNE_EVERY) {
            log.prune(oldest());
        }
        let seq = log.next;
        log.next += 1;
        log.bytes += message.payload.len();
        log.entries.push_back(Entry {
            seq,
            position,
            message: message.clone(),
        });
        shard.publish_size(&log);
    }

    /// Prunes every shard. `oldest` is read under each shard's lock: an entry written
    /// after it was read is read after any ticket that was taken before it.
    pub(super) fn prune_all(&self, oldest: impl Fn() -> u64) {
        for shard in &self.shards {
            if shard.len.load(Ordering::Relaxed) > 0 {
                let mut log = shard.lock();
                log.prune(oldest());
                shard.publish_size(&log);
            }
        }
    }

    /// The end of every shard now.
    pub(super) fn cutoff(&self) -> LateCutoff {
        LateCutoff(std::array::from_fn(|i| self.shards[i].lock().next))
    }

    /// The publishes read after `position` and written before `cutoff`.
    pub(super) fn since(&self, position: u64, cutoff: &LateCutoff) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        for (shard, end) in self.shards.iter().zip(cutoff.0) {
            if shard.len.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let log = shard.lock();
            out.extend(
                log.entries
                    .iter()
                    .filter(|e| e.position > position && e.seq < end)
                    .map(|e| e.message.clone()),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use bytes::Bytes;

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from(topic),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            received_at_ms: 0,
            publisher: None,
            publisher_username: None,
            publish_id: None,
        })
    }

    fn topics(messages: Vec<Arc<Message>>) -> Vec<String> {
        let mut t: Vec<String> = messages.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn since_gives_what_was_read_after_and_written_before_the_cutoff() {
        let log = LateLog::default();
        log.record(1, 10, &message("a"), || 0);
        log.record(2, 12, &message("b"), || 0);
        let cutoff = log.cutoff();
        log.record(1, 13, &message("after the cutoff"), || 0);
        assert_eq!(topics(log.since(9, &cutoff)), ["a", "b"]);
        assert_eq!(topics(log.since(10, &cutoff)), ["b"]);
        assert!(log.since(12, &cutoff).is_empty());
        log.prune_all(|| 12);
        assert_eq!(topics(log.since(0, &log.cutoff())), ["after the cutoff"]);
        log.prune_all(|| u64::MAX);
        assert!(log.since(0, &log.cutoff()).is_empty());
    }

    #[test]
    fn writers_prune_what_no_unhandled_input_precedes() {
        let log = LateLog::default();
        for i in 0..PRUNE_EVERY {
            log.record(3, i + 1, &message("m"), || 0);
        }
        assert_eq!(
            log.shard(3).len.load(Ordering::Relaxed),
            PRUNE_EVERY as usize
        );
        // The next write prunes: only input at 60 and later is still unhandled.
        log.record(3, 100, &message("m"), || 60);
        assert_eq!(log.shard(3).len.load(Ordering::Relaxed), 5);
        assert!(log.has_room(3));
    }
}
