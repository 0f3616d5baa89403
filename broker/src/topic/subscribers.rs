//! The subscriptions that end at one trie position: plain ones plus shared groups.

use std::hash::Hash;

use super::node::shrink_if_sparse;
use super::shared::SharedGroup;
use super::walk::{Group, GroupMembers};

use crate::hash::HashMap;

pub(super) struct Subscribers<K, V> {
    direct: HashMap<K, V>,
    /// Few groups share one filter in practice, so a Vec beats a map here.
    shared: Vec<SharedGroup<K, V>>,
}

impl<K, V> Subscribers<K, V> {
    pub(super) fn new() -> Self {
        Self {
            direct: HashMap::default(),
            shared: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    /// Members of the shared group `name` here.
    pub(super) fn group_size(&self, name: &str) -> usize {
        self.shared
            .iter()
            .find(|g| &*g.name == name)
            .map_or(0, |g| g.members.len())
    }

    /// Every subscription here as (group, key, value).
    pub(super) fn entries(&self) -> impl Iterator<Item = (Option<&str>, &K, &V)> {
        let direct = self.direct.iter().map(|(k, v)| (None, k, v));
        let shared = self.shared.iter().flat_map(|g| {
            let name = &*g.name;
            g.members.iter().map(move |(k, v)| (Some(name), k, v))
        });
        direct.chain(shared)
    }
}

impl<K: Eq + Hash, V> Subscribers<K, V> {
    /// Adds `key` as a plain subscriber, or as a member of shared group `group` on
    /// `filter` (the filter of this slot).
    pub(super) fn insert(
        &mut self,
        group: Option<&str>,
        filter: &str,
        key: K,
        value: V,
    ) -> Option<V> {
        let Some(name) = group else {
            return self.direct.insert(key, value);
        };
        if let Some(g) = self.shared.iter_mut().find(|g| &*g.name == name) {
            return g.insert(key, value);
        }
        let mut g = SharedGroup::new(name, filter);
        g.insert(key, value);
        self.shared.push(g);
        None
    }

    pub(super) fn remove(&mut self, group: Option<&str>, key: &K) -> Option<V> {
        let Some(name) = group else {
            let removed = self.direct.remove(key);
            shrink_if_sparse(&mut self.direct);
            return removed;
        };
        let pos = self.shared.iter().position(|g| &*g.name == name)?;
        let g = self.shared.get_mut(pos)?;
        let removed = g.remove(key);
        if g.members.is_empty() {
            // Group order carries no meaning, so the cheap removal is fine.
            self.shared.swap_remove(pos);
        }
        removed
    }

    /// Every plain subscriber, plus one round-robin member per shared group.
    pub(super) fn visit<E, F>(&self, eligible: &E, visit: &mut F)
    where
        E: Fn(&K) -> bool,
        F: FnMut(&K, &V, Option<Group<'_>>),
    {
        for (k, v) in &self.direct {
            visit(k, v, None);
        }
        for g in &self.shared {
            if let Some((k, v)) = g.pick(eligible) {
                let group = Group {
                    name: &g.name,
                    filter: &g.filter,
                };
                visit(k, v, Some(group));
            }
        }
    }

    /// Every plain subscriber, and every shared group whole (its members and cursor).
    pub(super) fn visit_all<P, G>(&self, plain: &mut P, group: &mut G)
    where
        P: FnMut(&K, &V),
        G: FnMut(GroupMembers<'_, K, V>),
    {
        for (k, v) in &self.direct {
            plain(k, v);
        }
        for g in &self.shared {
            group(GroupMembers {
                group: Group {
                    name: &g.name,
                    filter: &g.filter,
                },
                members: &g.members,
                cursor: &g.cursor,
            });
        }
    }
}
