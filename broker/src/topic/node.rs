//! Trie node of the subscription index: one node per filter level.

use std::hash::Hash;

use super::subscribers::Subscribers;

use crate::hash::HashMap;

pub(super) struct Node<K, V> {
    pub(super) literal: HashMap<Box<str>, Node<K, V>>,
    pub(super) plus: Option<Box<Node<K, V>>>,
    /// `#` always ends a filter, so its slot needs subscribers but never children.
    pub(super) multi: Option<Box<Subscribers<K, V>>>,
    /// Subscriptions whose filter ends exactly at this node.
    pub(super) subs: Subscribers<K, V>,
}

impl<K, V> Node<K, V> {
    pub(super) fn new() -> Self {
        Self {
            literal: HashMap::default(),
            plus: None,
            multi: None,
            subs: Subscribers::new(),
        }
    }

    pub(super) fn child_count(&self) -> usize {
        self.literal.len() + usize::from(self.plus.is_some()) + usize::from(self.multi.is_some())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.child_count() == 0 && self.subs.is_empty()
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Filters may have tens of thousands of levels; the default recursive drop
    /// would use one stack frame per level, so dismantle deep subtrees with a heap stack.
    fn drop(&mut self) {
        if self.literal.is_empty() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        detach_children(self, &mut pending);
        while let Some(mut node) = pending.pop() {
            detach_children(&mut node, &mut pending);
        }
    }
}

fn detach_children<K, V>(node: &mut Node<K, V>, out: &mut Vec<Node<K, V>>) {
    out.extend(node.literal.drain().map(|(_, child)| child));
    if let Some(plus) = node.plus.take() {
        out.push(*plus);
    }
}

/// Gives memory back after churn; the 4x hysteresis keeps alternating
/// insert/remove from reallocating every time.
pub(super) fn shrink_if_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}
