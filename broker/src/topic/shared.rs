//! One MQTT shared-subscription group on one filter: members and the round-robin cursor.

use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) struct SharedGroup<K, V> {
    pub(super) name: Box<str>,
    /// The filter after `$share/{name}/`: with the name, what tells this group from one of
    /// the same name on another filter.
    pub(super) filter: Box<str>,
    /// A Vec keeps round-robin order stable; groups are small enough that linear key lookup wins.
    pub(super) members: Vec<(K, V)>,
    /// Atomic so that matching can run under a shared borrow (e.g. a read lock).
    pub(super) cursor: AtomicUsize,
}

impl<K: Eq, V> SharedGroup<K, V> {
    pub(super) fn new(name: &str, filter: &str) -> Self {
        Self {
            name: name.into(),
            filter: filter.into(),
            members: Vec::new(),
            cursor: AtomicUsize::new(0),
        }
    }

    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.members.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                self.members.push((key, value));
                None
            }
        }
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let pos = self.members.iter().position(|(k, _)| k == key)?;
        // Not swap_remove: that would reorder members and skew the rotation.
        let (_, value) = self.members.remove(pos);
        if self.members.len() * 4 < self.members.capacity() {
            self.members.shrink_to_fit();
        }
        Some(value)
    }

    /// Next member in round-robin order, skipping members that are not `eligible`
    /// (e.g. offline); if none is eligible, the next member regardless.
    pub(super) fn pick<E: Fn(&K) -> bool>(&self, eligible: &E) -> Option<&(K, V)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        // fetch_add rather than load/store so concurrent matchers hand out different members.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        for offset in 0..n {
            let member = self.members.get((start + offset) % n)?;
            if eligible(&member.0) {
                if offset > 0 {
                    // Resume after the chosen member so skipped ones don't shift the rotation.
                    self.cursor.fetch_add(offset, Ordering::Relaxed);
                }
                return Some(member);
            }
        }
        self.members.get(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(keys: &[u32]) -> SharedGroup<u32, ()> {
        let mut g = SharedGroup::new("g", "t");
        for &k in keys {
            g.insert(k, ());
        }
        g
    }

    fn picks(g: &SharedGroup<u32, ()>, n: usize, eligible: impl Fn(&u32) -> bool) -> Vec<u32> {
        (0..n)
            .filter_map(|_| g.pick(&eligible).map(|m| m.0))
            .collect()
    }

    #[test]
    fn rotates_in_insertion_order() {
        let g = group(&[7, 8, 9]);
        assert_eq!(picks(&g, 6, |_| true), [7, 8, 9, 7, 8, 9]);
    }

    #[test]
    fn skips_ineligible_members() {
        let g = group(&[1, 2, 3]);
        assert_eq!(picks(&g, 6, |k| *k != 2), [1, 3, 1, 3, 1, 3]);
    }

    #[test]
    fn falls_back_when_nobody_is_eligible() {
        let g = group(&[1, 2, 3]);
        assert_eq!(picks(&g, 4, |_| false), [1, 2, 3, 1]);
    }

    #[test]
    fn replace_keeps_position_and_remove_keeps_order() {
        let mut g: SharedGroup<u32, &str> = SharedGroup::new("g", "t");
        assert_eq!(g.insert(1, "a"), None);
        assert_eq!(g.insert(2, "b"), None);
        assert_eq!(g.insert(3, "c"), None);
        assert_eq!(g.insert(1, "A"), Some("a"));
        assert_eq!(g.remove(&2), Some("b"));
        assert_eq!(g.remove(&2), None);
        assert_eq!(g.members, [(1, "A"), (3, "c")]);
    }

    #[test]
    fn empty_group_picks_nothing() {
        let g: SharedGroup<u32, ()> = SharedGroup::new("g", "t");
        assert!(g.pick(&|_: &u32| true).is_none());
    }
}
