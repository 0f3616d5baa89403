//! [`Deadlines`]: when parked connections must be resumed without input (their keepalive
//! deadline), in buckets of [`BUCKET_MS`].
//!
//! A B-tree set of (deadline, key) cost ~34 bytes per parked connection (16-byte entries
//! in half-full nodes) and an ordered insert and remove per park and resume. Here an entry
//! is a key appended to its bucket's vector, and a resumed connection's entry is not
//! removed: when its bucket comes due, the key finds nothing parked under it (keys are not
//! reused) and is skipped. A bucket fires when it has ended, so a deadline is acted on at
//! most one bucket late.

use std::collections::BTreeMap;

use super::paged_slab::Key;

/// Bucket width in ms (a power of two).
const BUCKET_MS: u64 = 64;

#[derive(Default)]
pub struct Deadlines {
    /// Bucket number (ms / BUCKET_MS) → keys due in it.
    buckets: BTreeMap<u64, Vec<Key>>,
}

impl Deadlines {
    pub fn insert(&mut self, due_ms: u64, key: Key) {
        self.buckets
            .entry(due_ms / BUCKET_MS)
            .or_default()
            .push(key);
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
            out.extend(entry.remove());
        }
    }

    /// Keys held, including those of connections resumed since.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
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
