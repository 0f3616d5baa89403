//! [`Deadlines`]: when parked connections must be resumed without input (their keepalive
//! deadline), in buckets of [`BUCKET_MS`].
//!
//! A B-tree set of (deadline, key) cost ~34 bytes per parked connection (16-byte entries
//! in half-full nodes) and an ordered insert and remove per park and resume. Here an entry
//! is a key appended to its bucket's vector, and a resumed connection's entry is not
//! removed: when its bucket comes due, the key finds nothing parked under it (keys are not
//! reused) and is skipped. A client that parks often with a long keepalive would pile up
//! such stale keys (one per park until its deadline), so the owner compacts them away
//! ([`Deadlines::retain`]) once they outnumber the parked connections. A bucket fires when
//! it has ended, so a deadline is acted on at most one bucket late.

use std::collections::BTreeMap;

use super::paged_slab::Key;

/// Bucket width in ms (a power of two).
const BUCKET_MS: u64 = 64;

#[derive(Default)]
pub struct Deadlines {
    /// Bucket number (ms / BUCKET_MS) → keys due in it.
    buckets: BTreeMap<u64, Vec<Key>>,
    /// Keys held, stale ones included.
    len: usize,
}

impl Deadlines {
    pub fn insert(&mut self, due_ms: u64, key: Key) {
        self.buckets
            .entry(due_ms / BUCKET_MS)
            .or_default()
            .push(key);
        self.len += 1;
    }

    /// Keeps only the keys `keep` says are still parked.
    pub fn retain(&mut self, mut keep: impl FnMut(Key) -> bool) {
        self.buckets.retain(|_, keys| {
            keys.retain(|k| keep(*k));
            !keys.is_empty()
        });
        self.len = self.buckets.values().map(Vec::len).sum();
    }

    /// When the earliest bucket ends (the time to look again), if any.
    pub fn next_due(&self) -> Option<u64> {
        self.buckets
            .first_key_value()
            .map(|(&bucket, _)| (bucket + 1).saturating_mul(BUCKET_MS))
    }

    /// Takes the keys of every bucket that ended by `now_ms` into `out`.
    pub fn take_due(&mut self, now_ms: u64, out: &mut Vec<Key>) {
        while let Some(entry) = self.buckets.first_entry() {
            if (entry.key() + 1).saturating_mul(BUCKET_MS) > now_ms {
                break;
            }
            let keys = entry.remove();
            self.len -= keys.len();
            out.extend(keys);
        }
    }

    /// Keys held, including those of connections resumed since.
    pub fn len(&self) -> usize {
        self.len
    }
}

/// Stale keys tolerated beyond twice the parked connections before compacting.
pub const STALE_SLACK: usize = 1024;

/// Drops stale keys once they outnumber the parked connections (amortised: a compaction
/// comes at least `STALE_SLACK` parks after the last).
pub fn compact_if_stale<T>(due: &mut Deadlines, parked: &super::paged_slab::PagedSlab<T>) {
    if due.len() > 2 * parked.len() + STALE_SLACK {
        due.retain(|key| parked.contains(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_due_when_their_bucket_has_ended() {
        let mut d = Deadlines::default();
        assert_eq!(d.next_due(), None);
        d.insert(1_000, 1);
        d.insert(1_010, 2);
        d.insert(5_000, 3);
        assert_eq!(d.len(), 3);
        // 1000 and 1010 share the bucket [960, 1024).
        assert_eq!(d.next_due(), Some(1_024));
        let mut out = Vec::new();
        d.take_due(1_010, &mut out);
        assert!(out.is_empty(), "not before the bucket ends");
        d.take_due(1_024, &mut out);
        assert_eq!(out, vec![1, 2]);
        assert_eq!(d.next_due(), Some(5_056));
        out.clear();
        d.take_due(u64::MAX, &mut out);
        assert_eq!(out, vec![3]);
        assert_eq!((d.len(), d.next_due()), (0, None));
    }

    #[test]
    fn retain_drops_stale_keys_and_empty_buckets() {
        let mut d = Deadlines::default();
        for key in 1..=10 {
            d.insert(key * 100, key);
        }
        d.retain(|k| k % 5 == 0);
        assert_eq!(d.len(), 2);
        let mut out = Vec::new();
        d.take_due(u64::MAX, &mut out);
        assert_eq!(out, vec![5, 10]);
        assert_eq!(d.len(), 0);
    }

    /// A client that parks every 2.1 s with the longest keepalive, for an hour: what is
    /// kept stays proportional to what is parked.
    #[test]
    fn stale_keys_stay_proportional_to_parked_connections() {
        use crate::connection::paged_slab::PagedSlab;
        let (mut parked, mut due) = (PagedSlab::<u32>::default(), Deadlines::default());
        let (mut now, mut key) = (0u64, 0u64);
        for _ in 0..(3_600_000 / 2_100) {
            if key != 0 {
                assert!(parked.remove(key).is_some());
            }
            now += 2_100;
            key = parked.insert(1);
            due.insert(now + 65_535 * 1_500, key);
            compact_if_stale(&mut due, &parked);
            due.take_due(now, &mut Vec::new());
        }
        assert!(
            due.len() <= 2 * parked.len() + STALE_SLACK,
            "{} kept",
            due.len()
        );
    }

    #[test]
    fn a_deadline_is_acted_on_at_most_one_bucket_late() {
        for due in [0, 1, 63, 64, 65, 12_345] {
            let mut d = Deadlines::default();
            d.insert(due, 7);
            let fires = d.next_due().unwrap();
            assert!(
                fires > due && fires <= due + BUCKET_MS,
                "{due} fires at {fires}"
            );
        }
    }
}
