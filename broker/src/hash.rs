//! The hasher behind the broker's maps. Their keys (client ids, topic levels) come from
//! clients, so the hash is seeded at random, per process and per map, as std's is; foldhash
//! instead of std's SipHash because it costs a fraction of the instructions per key (SipHash
//! was ~4% of a connect's instructions: registry inserts, removals and rehashes).

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// Randomly seeded per map (8 bytes).
pub type RandomState = foldhash::fast::RandomState;

/// A `HashMap` with [`RandomState`]; made with `HashMap::default()`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// One seed drawn per process and shared by every map built with it: for maps every session
/// holds, where even [`RandomState`]'s 8 bytes per map add up.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRandomState;

impl BuildHasher for ProcessRandomState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        static SEED: OnceLock<RandomState> = OnceLock::new();
        SEED.get_or_init(RandomState::default).build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_state_hashes_alike_and_maps_work() {
        let (a, b) = (ProcessRandomState, ProcessRandomState);
        assert_eq!(a.hash_one("client-1"), b.hash_one("client-1"));
        assert_ne!(a.hash_one("client-1"), a.hash_one("client-2"));
        let mut map: HashMap<String, u32> = HashMap::default();
        map.insert("a".into(), 1);
        assert_eq!(map.get("a"), Some(&1));
    }
}
