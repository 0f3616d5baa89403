//! Publish-path matching: walks the trie along a topic without allocating.
//! [`Group`] names a shared group as matching reports it.

use std::hash::Hash;
use std::sync::atomic::AtomicUsize;

use super::node::Node;
use super::subscribers::Subscribers;
use super::tree::TopicTree;

/// A shared subscription group as matching reports it: `$share/{name}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group<'a> {
    pub name: &'a str,
    pub filter: &'a str,
}

/// A matching shared group whole: every member, and the group's round-robin cursor for a
/// caller that picks among them itself.
pub struct GroupMembers<'a, K, V> {
    pub group: Group<'a>,
    pub members: &'a [(K, V)],
    pub cursor: &'a AtomicUsize,
}

impl<K: Eq + Hash + Clone, V> TopicTree<K, V> {
    /// Calls `visit(key, value, None)` once per matching non-shared subscription, and
    /// `visit(key, value, Some(group))` for exactly one member of every matching
    /// (filter, group) shared group, chosen round robin among members for which
    /// `eligible(key)` holds (or the next member anyway if none is eligible).
    ///
    /// A topic whose first level starts with `$` is not matched by filters whose first level is a wildcard.
    pub fn matches<E, F>(&self, topic: &str, eligible: E, mut visit: F)
    where
        E: Fn(&K) -> bool,
        F: FnMut(&K, &V, Option<&str>),
    {
        self.matches_grouped(topic, eligible, |k, v, g| visit(k, v, g.map(|g| g.name)));
    }

    /// [`Self::matches`], naming each shared group by its name and its filter.
    pub fn matches_grouped<E, F>(&self, topic: &str, eligible: E, mut visit: F)
    where
        E: Fn(&K) -> bool,
        F: FnMut(&K, &V, Option<Group<'_>>),
    {
        self.walk(topic, |slot| slot.visit(&eligible, &mut visit));
    }

    /// Calls `plain(key, value)` once per matching non-shared subscription and `group`
    /// once per matching shared group, with all its members: for an index whose caller
    /// picks the member itself (the cluster's, weighing nodes by their subscribers).
    pub fn matches_all<P, G>(&self, topic: &str, mut plain: P, mut group: G)
    where
        P: FnMut(&K, &V),
        G: FnMut(GroupMembers<'_, K, V>),
    {
        self.walk(topic, |slot| slot.visit_all(&mut plain, &mut group));
    }

    /// Calls `at` with every subscriber slot whose filter matches `topic`.
    fn walk<'n, A>(&'n self, topic: &str, mut at: A)
    where
        A: FnMut(&'n Subscribers<K, V>),
    {
        let mut pending = Pending::new();
        pending.push((&self.root, Some(topic)));
        let mut at_root = true;
        // Each popped frame follows a single path; a frame is only pushed where both a
        // '+' child and a literal child match the same level.
        while let Some((mut node, mut rest)) = pending.pop() {
            loop {
                let Some(remaining) = rest else {
                    at(&node.subs);
                    // "sport/#" also matches "sport".
                    if let Some(multi) = node.multi.as_deref() {
                        at(multi);
                    }
                    break;
                };
                let (level, tail) = split_level(remaining);
                // MQTT-4.7.2-1: no first-level wildcard for `$` topics.
                let wildcards = !(at_root && level.starts_with('$'));
                at_root = false;
                if wildcards {
                    if let Some(multi) = node.multi.as_deref() {
                        at(multi);
                    }
                }
                let plus = node.plus.as_deref().filter(|_| wildcards);
                node = match (plus, node.literal.get(level)) {
                    (Some(plus), Some(literal)) => {
                        pending.push((plus, tail));
                        literal
                    }
                    (Some(next), None) | (None, Some(next)) => next,
                    (None, None) => break,
                };
                rest = tail;
            }
        }
    }
}

/// First level of `rest` and what follows its separator; `None` once no level is left
/// (distinct from `Some("")`, which is one more, empty, level).
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}

/// A branch still to explore: the node reached and the unconsumed topic levels.
type Frame<'n, 't, K, V> = (&'n Node<K, V>, Option<&'t str>);

const INLINE_FRAMES: usize = 16;

/// LIFO stack that lives on the call stack for typical fan-out and only touches
/// the heap for unusually branchy subscription sets.
struct Pending<'n, 't, K, V> {
    inline: [Option<Frame<'n, 't, K, V>>; INLINE_FRAMES],
    len: usize,
    spill: Vec<Frame<'n, 't, K, V>>,
}

impl<'n, 't, K, V> Pending<'n, 't, K, V> {
    fn new() -> Self {
        Self {
            inline: [None; INLINE_FRAMES],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, frame: Frame<'n, 't, K, V>) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(frame);
                self.len += 1;
            }
            None => self.spill.push(frame),
        }
    }

    fn pop(&mut self) -> Option<Frame<'n, 't, K, V>> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len)?.take()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::topic::filter_match::tests::CASES;

    fn hits(
        tree: &TopicTree<u32, &'static str>,
        topic: &str,
    ) -> Vec<(u32, &'static str, Option<String>)> {
        let mut out = Vec::new();
        tree.matches(
            topic,
            |_| true,
            |k, v, g| out.push((*k, *v, g.map(str::to_owned))),
        );
        out.sort();
        out
    }

    #[test]
    fn spec_examples() {
        for &(filter, topic, expected) in CASES {
            let mut tree = TopicTree::new();
            tree.subscribe(filter, None, 1, "plain");
            tree.subscribe(filter, Some("g"), 2, "shared");
            let want = if expected {
                vec![(1, "plain", None), (2, "shared", Some("g".to_owned()))]
            } else {
                vec![]
            };
            assert_eq!(hits(&tree, topic), want, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn every_matching_filter_reported_once() {
        let mut tree = TopicTree::new();
        for (i, f) in [
            "#", "a/#", "a/b", "a/+", "+/b", "+/+", "+/#", "a/b/#", "a/c",
        ]
        .iter()
        .enumerate()
        {
            tree.subscribe(f, None, u32::try_from(i).unwrap_or(u32::MAX), "v");
        }
        let keys: Vec<u32> = hits(&tree, "a/b").into_iter().map(|h| h.0).collect();
        assert_eq!(keys, [0, 1, 2, 3, 4, 5, 6, 7]);
        let keys: Vec<u32> = hits(&tree, "$a/b").into_iter().map(|h| h.0).collect();
        assert!(keys.is_empty());
    }

    #[test]
    fn many_branches_spill_past_the_inline_stack() {
        // Filters x/../+/../x with the '+' at every position: along the all-x path each
        // level has both a '+' and a literal child, so ~40 branches wait at once.
        let mut tree = TopicTree::new();
        let depth = 40;
        for i in 0..depth {
            let mut levels = vec!["x"; depth];
            levels[i] = "+";
            tree.subscribe(&levels.join("/"), None, u32::try_from(i).unwrap_or(0), "v");
        }
        let topic = vec!["x"; depth].join("/");
        assert_eq!(hits(&tree, &topic).len(), depth);
    }

    #[test]
    fn shared_round_robin_is_even() {
        let mut tree = TopicTree::new();
        for k in 0..3 {
            tree.subscribe("sensors/+", Some("workers"), k, "v");
        }
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for _ in 0..300 {
            tree.matches(
                "sensors/t1",
                |_| true,
                |k, _, g| {
                    assert_eq!(g, Some("workers"));
                    *counts.entry(*k).or_default() += 1;
                },
            );
        }
        assert_eq!(counts, HashMap::from([(0, 100), (1, 100), (2, 100)]));
    }

    #[test]
    fn shared_skips_ineligible_members() {
        let mut tree = TopicTree::new();
        for k in 0..3 {
            tree.subscribe("a/#", Some("g"), k, "v");
        }
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for _ in 0..300 {
            tree.matches(
                "a/b",
                |k| *k != 1,
                |k, _, _| *counts.entry(*k).or_default() += 1,
            );
        }
        assert_eq!(counts, HashMap::from([(0, 150), (2, 150)]));

        // Nobody eligible: delivery still happens, still one member per message.
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for _ in 0..300 {
            tree.matches(
                "a/b",
                |_| false,
                |k, _, _| *counts.entry(*k).or_default() += 1,
            );
        }
        assert_eq!(counts.values().sum::<usize>(), 300);
        assert!(counts.values().all(|&n| n == 100));
    }

    #[test]
    fn one_member_per_group_per_message() {
        let mut tree = TopicTree::new();
        for k in 0..3 {
            tree.subscribe("t", Some("g1"), k, "v");
        }
        for k in 10..12 {
            tree.subscribe("t", Some("g2"), k, "v");
        }
        tree.subscribe("t", None, 99, "v");
        // Same group name on another filter is a different group.
        tree.subscribe("+", Some("g1"), 50, "v");
        for _ in 0..10 {
            let hits = hits(&tree, "t");
            let per = |g: Option<&str>| hits.iter().filter(|h| h.2.as_deref() == g).count();
            assert_eq!(per(Some("g1")), 2, "{hits:?}");
            assert_eq!(per(Some("g2")), 1, "{hits:?}");
            assert_eq!(per(None), 1, "{hits:?}");
        }
    }

    #[test]
    fn two_groups_on_one_filter_each_get_one() {
        let mut tree = TopicTree::new();
        tree.subscribe("a/b", Some("g1"), 1, "v");
        tree.subscribe("a/b", Some("g1"), 2, "v");
        tree.subscribe("a/b", Some("g2"), 3, "v");
        tree.subscribe("a/b", Some("g2"), 4, "v");
        let mut g1 = Vec::new();
        let mut g2 = Vec::new();
        for _ in 0..4 {
            tree.matches(
                "a/b",
                |_| true,
                |k, _, g| match g {
                    Some("g1") => g1.push(*k),
                    Some("g2") => g2.push(*k),
                    other => panic!("unexpected group {other:?}"),
                },
            );
        }
        assert_eq!(g1, [1, 2, 1, 2]);
        assert_eq!(g2, [3, 4, 3, 4]);
    }

    #[test]
    fn groups_are_named_by_name_and_filter_and_can_be_had_whole() {
        let mut tree = TopicTree::new();
        tree.subscribe("a/+", Some("g"), 1, "x");
        tree.subscribe("a/#", Some("g"), 2, "y");
        tree.subscribe("a/#", Some("g"), 3, "z");
        tree.subscribe("a/b", None, 4, "p");
        let mut picked = Vec::new();
        tree.matches_grouped(
            "a/b",
            |_| true,
            |k, _, g| picked.push((*k, g.map(|g| (g.name.to_owned(), g.filter.to_owned())))),
        );
        picked.sort();
        assert_eq!(picked.len(), 3, "{picked:?}");
        assert_eq!(picked[0], (1, Some(("g".into(), "a/+".into()))));
        assert_eq!(picked[2], (4, None));

        let mut plain = Vec::new();
        let mut groups = Vec::new();
        tree.matches_all(
            "a/b",
            |k, _| plain.push(*k),
            |g| {
                let keys: Vec<u32> = g.members.iter().map(|(k, _)| *k).collect();
                groups.push((g.group.filter.to_owned(), keys));
            },
        );
        groups.sort();
        assert_eq!(plain, [4]);
        assert_eq!(
            groups,
            [("a/#".to_owned(), vec![2, 3]), ("a/+".to_owned(), vec![1])]
        );
    }

    #[test]
    fn shared_dollar_rule_applies_to_inner_filter() {
        let mut tree = TopicTree::new();
        tree.subscribe("#", Some("g"), 1, "v");
        tree.subscribe("$SYS/#", Some("g"), 2, "v");
        assert_eq!(hits(&tree, "$SYS/uptime"), [(2, "v", Some("g".to_owned()))]);
    }
}
