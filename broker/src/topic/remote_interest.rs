//! [`RemoteInterest`]: which other nodes have subscribers for which filters, folded from the
//! cluster's registry changes (`interest_changed`, `interest_reset`), next to the trie of
//! this node's own sessions. Matching a topic against it says where a publish goes beyond
//! this node: each node with a matching ordinary filter, and for each matching shared
//! group (`$share/{group}/{filter}`) with members on other nodes, the one node picked to
//! deliver it.
//!
//! Shared groups cluster-wide: each message goes to one member of the group, whichever node
//! holds it. The pick is a weighted round robin over the group's members counted per node:
//! with `l` members here and `c1`, `c2`, ... on other nodes, each run of `l + c1 + c2 ...`
//! messages gives `l` to this node (which picks one of its members as usual) and `ci` to
//! node `i` (which does the same). Members that are offline count too: their messages wait
//! in their queues, as on a single node when every member is offline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use skein_seam::{NodeId, SharedTarget};
use smallvec::SmallVec;

use super::tree::TopicTree;
use super::validate::parse_subscription;
use super::walk::Group;

/// Other nodes' interest. A node never appears for itself.
#[derive(Default)]
pub struct RemoteInterest {
    /// (filter, node) -> subscribers on that node; shared groups as groups of nodes.
    tree: RwLock<TopicTree<NodeId, u32>>,
    /// Whether `tree` holds anything: while it does not, the publish path pays one load.
    any: AtomicBool,
    /// Whether `tree` holds a filter starting with `$` (another node's event watcher):
    /// this node's event dialects then have a receiver.
    dollar: AtomicBool,
}

/// Where a publish goes beyond this node, one entry per node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteTargets {
    /// Inline for one node, the usual case: no allocation per publish.
    pub nodes: SmallVec<[NodeTarget; 1]>,
    /// Shared groups that a member on another node gets this time: this node's members
    /// of them must not.
    pub taken: Vec<SharedTarget>,
}

/// What one node is sent a publish for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    pub node: NodeId,
    /// An ordinary (non-shared) filter of one of its sessions matched.
    pub to_subscribers: bool,
    /// Shared groups it was picked to deliver to.
    pub shared: Vec<SharedTarget>,
}

impl RemoteTargets {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn entry(&mut self, node: NodeId) -> &mut NodeTarget {
        let at = match self.nodes.iter().position(|t| t.node == node) {
            Some(at) => at,
            None => {
                self.nodes.push(NodeTarget {
                    node,
                    to_subscribers: false,
                    shared: Vec::new(),
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[at]
    }

    /// Whether this node's members of `group` are passed over for this publish.
    pub fn takes(&self, group: Group<'_>) -> bool {
        self.taken
            .iter()
            .any(|t| t.group == group.name && t.filter == group.filter)
    }
}

impl RemoteInterest {
    pub fn new() -> Self {
        Self::default()
    }

    /// No other node has interest in anything (a single node, say).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TopicTree<NodeId, u32>> {
        self.tree.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `node` now has `subscribers` sessions subscribed to `filter` (the full filter,
    /// with any `$share/{group}/` prefix); 0 removes it. A filter no session could have
    /// subscribed is ignored (and logged).
    pub fn changed(&self, filter: &str, node: NodeId, subscribers: u32) {
        self.changed_many([(filter, node, subscribers)]);
    }

    /// Several [`Self::changed`] in order under one lock: a publish routed meanwhile sees
    /// all of them or none.
    pub fn changed_many<'a>(&self, changes: impl IntoIterator<Item = (&'a str, NodeId, u32)>) {
        let mut tree = self.write();
        for (filter, node, subscribers) in changes {
            let Ok((group, inner)) = parse_subscription(filter) else {
                tracing::warn!(filter, %node, "ignored interest in an invalid filter");
                continue;
            };
            if subscribers == 0 {
                tree.unsubscribe(inner, group, &node);
            } else {
                tree.subscribe(inner, group, node, subscribers);
            }
        }
        self.any.store(!tree.is_empty(), Ordering::Release);
        self.dollar
            .store(tree.has_dollar_filters(), Ordering::Release);
    }

    /// Whether another node has a subscription to a filter starting with `$`.
    pub fn has_dollar_filters(&self) -> bool {
        self.dollar.load(Ordering::Acquire)
    }

    /// Replaces the whole index: `(filter, node, subscribers)` for every other node.
    pub fn reset(&self, interest: Vec<(String, NodeId, u32)>) {
        let mut fresh = TopicTree::new();
        for (filter, node, subscribers) in interest {
            match parse_subscription(&filter) {
                Ok((group, inner)) if subscribers > 0 => {
                    fresh.subscribe(inner, group, node, subscribers);
                }
                Ok(_) => {}
                Err(_) => tracing::warn!(filter, %node, "ignored interest in an invalid filter"),
            }
        }
        let mut tree = self.write();
        *tree = fresh;
        self.any.store(!tree.is_empty(), Ordering::Release);
        self.dollar
            .store(tree.has_dollar_filters(), Ordering::Release);
    }

    /// Whether another node has members in shared group `group` on (inner) `filter`.
    pub fn has_group(&self, filter: &str, group: &str) -> bool {
        !self.is_empty()
            && self
                .tree
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .group_size(filter, group)
                > 0
    }

    /// Where a publish on `topic` goes beyond this node. `local_members(group)` is how many
    /// members this node has in a shared group (0 if none), for the weighted pick.
    pub fn targets(
        &self,
        topic: &str,
        local_members: impl Fn(Group<'_>) -> usize,
    ) -> RemoteTargets {
        let mut out = RemoteTargets::default();
        if self.is_empty() {
            return out;
        }
        let tree = self.tree.read().unwrap_or_else(|e| e.into_inner());
        let mut groups = Vec::new();
        tree.matches_all(
            topic,
            |node, _| out.entry(*node).to_subscribers = true,
            |g| {
                let remote: u64 = g.members.iter().map(|(_, n)| u64::from(*n)).sum();
                let local = local_members(g.group) as u64;
                let total = remote + local;
                if total == 0 {
                    return;
                }
                let mut at = (g.cursor.fetch_add(1, Ordering::Relaxed) as u64) % total;
                if at < local {
                    return;
                }
                at -= local;
                for (node, n) in g.members {
                    if at < u64::from(*n) {
                        let target = SharedTarget {
                            group: g.group.name.to_owned(),
                            filter: g.group.filter.to_owned(),
                        };
                        groups.push((*node, target));
                        return;
                    }
                    at -= u64::from(*n);
                }
            },
        );
        drop(tree);
        for (node, target) in groups {
            out.taken.push(target.clone());
            out.entry(node).shared.push(target);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::topic::matches;

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    #[test]
    fn ordinary_interest_names_each_node_once() {
        let r = RemoteInterest::new();
        assert!(r.is_empty());
        assert!(r.targets("a/b", |_| 0).is_empty());
        r.changed("a/#", n(2), 3);
        r.changed("a/+", n(2), 1);
        r.changed("+/b", n(3), 1);
        r.changed("x", n(4), 1);
        assert!(!r.is_empty());
        let mut t = r.targets("a/b", |_| 0);
        t.nodes.sort_by_key(|t| t.node);
        let nodes: Vec<(NodeId, bool)> =
            t.nodes.iter().map(|t| (t.node, t.to_subscribers)).collect();
        assert_eq!(nodes, [(n(2), true), (n(3), true)]);
        r.changed("a/#", n(2), 0);
        r.changed("a/+", n(2), 0);
        let t = r.targets("a/b", |_| 0);
        assert_eq!(t.nodes.len(), 1);
        r.reset(vec![("other".into(), n(5), 1)]);
        assert!(r.targets("a/b", |_| 0).is_empty());
        r.reset(Vec::new());
        assert!(r.is_empty());
    }

    #[test]
    fn shared_groups_are_picked_by_member_count_across_nodes() {
        let r = RemoteInterest::new();
        r.changed("$share/g/s/+", n(2), 2);
        r.changed("$share/g/s/+", n(3), 1);
        assert!(r.has_group("s/+", "g"));
        assert!(!r.has_group("s/+", "h") && !r.has_group("s/#", "g"));
        let mut counts: BTreeMap<Option<NodeId>, usize> = BTreeMap::new();
        for _ in 0..400 {
            let t = r.targets("s/1", |g| {
                assert_eq!((g.name, g.filter), ("g", "s/+"));
                1
            });
            match t.nodes.as_slice() {
                [] => {
                    assert!(t.taken.is_empty());
                    *counts.entry(None).or_default() += 1;
                }
                [one] => {
                    assert!(!one.to_subscribers);
                    assert_eq!(one.shared, t.taken);
                    assert!(t.takes(Group {
                        name: "g",
                        filter: "s/+"
                    }));
                    *counts.entry(Some(one.node)).or_default() += 1;
                }
                more => panic!("one member per message, got {more:?}"),
            }
        }
        assert_eq!(
            counts,
            BTreeMap::from([(None, 100), (Some(n(2)), 200), (Some(n(3)), 100)])
        );
    }

    #[test]
    fn invalid_filters_are_ignored() {
        let r = RemoteInterest::new();
        r.changed("a/#/b", n(2), 1);
        r.changed("$share//x", n(2), 1);
        assert!(r.is_empty());
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$x", "+", "#"]);
        let plain = prop::collection::vec(level, 1..=3).prop_map(|l| l.join("/"));
        (
            plain,
            prop::option::of(prop::sample::select(vec!["g", "h"])),
        )
            .prop_map(|(f, g)| match g {
                Some(g) => format!("$share/{g}/{f}"),
                None => f,
            })
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "$x"]), 1..=3)
            .prop_map(|l| l.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a naive model: every node with a matching ordinary filter is a target,
        /// and every matching shared group goes to exactly one place: this node (when it
        /// has members) or one node that has members of it.
        #[test]
        fn remote_matching_agrees_with_a_naive_matcher(
            changes in prop::collection::vec((filter(), 2u64..5, 0u32..3), 0..30),
            local in prop::collection::btree_set(filter(), 0..4),
            topics in prop::collection::vec(topic(), 1..6),
        ) {
            let r = RemoteInterest::new();
            // (full filter, node) -> subscribers
            let mut model: BTreeMap<(String, u64), u32> = BTreeMap::new();
            for (f, node, count) in &changes {
                r.changed(f, n(*node), *count);
                if parse_subscription(f).is_ok() {
                    if *count == 0 {
                        model.remove(&(f.clone(), *node));
                    } else {
                        model.insert((f.clone(), *node), *count);
                    }
                }
            }
            prop_assert_eq!(r.is_empty(), model.is_empty());
            let local_groups: BTreeSet<(String, String)> = local
                .iter()
                .filter_map(|f| match parse_subscription(f) {
                    Ok((Some(g), inner)) => Some((g.to_owned(), inner.to_owned())),
                    _ => None,
                })
                .collect();
            for t in &topics {
                let targets = r.targets(t, |g| {
                    usize::from(local_groups.contains(&(g.name.to_owned(), g.filter.to_owned())))
                });
                let want_plain: BTreeSet<u64> = model
                    .keys()
                    .filter(|(f, _)| !f.starts_with("$share/") && matches(f, t))
                    .map(|(_, node)| *node)
                    .collect();
                let got_plain: BTreeSet<u64> = targets
                    .nodes
                    .iter()
                    .filter(|x| x.to_subscribers)
                    .map(|x| x.node.0)
                    .collect();
                prop_assert_eq!(got_plain, want_plain);
                let nodes: Vec<u64> = targets.nodes.iter().map(|x| x.node.0).collect();
                let unique: BTreeSet<u64> = nodes.iter().copied().collect();
                prop_assert_eq!(nodes.len(), unique.len(), "one entry per node");
                prop_assert!(targets.nodes.iter().all(|x| x.to_subscribers || !x.shared.is_empty()));

                // Every matching group with remote members: one place gets it.
                let mut remote_groups: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
                for (f, node) in model.keys() {
                    if let Ok((Some(g), inner)) = parse_subscription(f) {
                        if matches(inner, t) {
                            remote_groups.entry((g.to_owned(), inner.to_owned())).or_default().insert(*node);
                        }
                    }
                }
                for ((g, f), members) in &remote_groups {
                    let picked: Vec<u64> = targets
                        .nodes
                        .iter()
                        .filter(|x| x.shared.iter().any(|s| s.group == *g && s.filter == *f))
                        .map(|x| x.node.0)
                        .collect();
                    let taken = targets.takes(Group { name: g, filter: f });
                    prop_assert_eq!(taken, !picked.is_empty());
                    prop_assert!(picked.len() <= 1, "one node per group: {:?}", picked);
                    if let [node] = picked.as_slice() {
                        prop_assert!(members.contains(node));
                    } else {
                        prop_assert!(local_groups.contains(&(g.clone(), f.clone())), "no place got {}/{}", g, f);
                    }
                }
                // Nothing is sent for a group without remote members.
                for x in &targets.nodes {
                    for s in &x.shared {
                        prop_assert!(remote_groups.contains_key(&(s.group.clone(), s.filter.clone())));
                    }
                }
            }
        }
    }
}
