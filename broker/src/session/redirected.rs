//! The publishes a session got redirected from a node it moved away from (see the
//! broker's `moved_away.rs`), remembered so that a direct copy of the same publish that
//! arrives after the redirected one is left out (the redirect is one hop longer, so it
//! usually comes second and is left out itself; not always, when the direct forward
//! waited in a queue).
//!
//! Bounded: the last [`MAX_REDIRECTED`] (a few tens of KiB), allocated at the first
//! redirect; most sessions never get one.

use std::collections::{HashSet, VecDeque};

/// How many redirected publishes a session remembers.
pub const MAX_REDIRECTED: usize = 1024;

#[derive(Debug, Default)]
pub struct Redirected {
    keys: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Redirected {
    /// Notes the [`super::publish_key`] of a redirected publish.
    pub fn note(&mut self, key: u64) {
        if !self.keys.insert(key) {
            return;
        }
        if self.order.len() >= MAX_REDIRECTED {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        self.order.push_back(key);
    }

    pub fn contains(&self, key: u64) -> bool {
        self.keys.contains(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_key_goes_past_the_bound() {
        let mut r = Redirected::default();
        for key in 0..=MAX_REDIRECTED as u64 {
            r.note(key);
        }
        r.note(5);
        assert!(!r.contains(0));
        assert!(r.contains(1) && r.contains(5) && r.contains(MAX_REDIRECTED as u64));
        assert_eq!(r.order.len(), MAX_REDIRECTED);
        assert_eq!(r.keys.len(), MAX_REDIRECTED);
    }
}
