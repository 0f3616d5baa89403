//! The subscription index: a trie keyed by filter level, with shared-subscription groups.

use std::hash::Hash;

use super::node::{shrink_if_sparse, Node};
use super::subscribers::Subscribers;
use super::validate::{valid_share_group, valid_topic_filter};

/// Subscription index: filter → subscribers, with MQTT shared-subscription groups.
///
/// Filters passed in are inner filters (after [`parse_subscription`](super::parse_subscription)
/// has stripped `$share/{group}/`). Invalid filters or group names are ignored rather
/// than stored, so nothing that could never match takes up memory.
///
/// All operations are iterative, so filters with any number of levels cannot overflow the stack.
pub struct TopicTree<K, V> {
    pub(super) root: Node<K, V>,
    len: usize,
    /// Subscriptions whose filter starts with `$` (the only ones that can match a `$`
    /// topic): while there are none, the event dialects skip rendering their `$` topics.
    dollar_len: usize,
}

/// Only the size: dumping a whole index would flood logs, and derived Debug would recurse per level.
impl<K, V> std::fmt::Debug for TopicTree<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for TopicTree<K, V> {
    fn default() -> Self {
        Self {
            root: Node::new(),
            len: 0,
            dollar_len: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V> TopicTree<K, V> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `key`'s subscription on (filter, group). Returns the previous value if it replaced one.
    ///
    /// An invalid filter or share group is ignored and `None` returned.
    pub fn subscribe(
        &mut self,
        filter: &str,
        share_group: Option<&str>,
        key: K,
        value: V,
    ) -> Option<V> {
        if !acceptable(filter, share_group) {
            return None;
        }
        let previous = self
            .slot_or_insert(filter)
            .insert(share_group, filter, key, value);
        if previous.is_none() {
            self.len += 1;
            self.dollar_len += usize::from(filter.starts_with('$'));
        }
        previous
    }

    /// Removes `key`'s subscription on (filter, group) and returns its value.
    /// Trie nodes left without subscriptions or children are freed.
    pub fn unsubscribe(&mut self, filter: &str, share_group: Option<&str>, key: &K) -> Option<V> {
        if !acceptable(filter, share_group) {
            return None;
        }
        let slot = self.slot_mut(filter)?;
        let removed = slot.remove(share_group, key)?;
        let emptied = slot.is_empty();
        self.len -= 1;
        self.dollar_len -= usize::from(filter.starts_with('$'));
        if emptied {
            self.prune(filter);
        }
        Some(removed)
    }

    /// Number of (filter, group, key) subscriptions held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Members of the shared group `group` on (inner) `filter`.
    #[must_use]
    pub fn group_size(&self, filter: &str, group: &str) -> usize {
        self.slot(filter).map_or(0, |s| s.group_size(group))
    }

    /// Whether any subscription could match a topic starting with `$` (MQTT-4.7.2-1:
    /// filters starting with a wildcard never do).
    #[must_use]
    pub fn has_dollar_filters(&self) -> bool {
        self.dollar_len > 0
    }

    /// All subscriptions as (filter, group, key, value), in no particular order.
    /// Meant for admin listing and persistence, not the publish path: it rebuilds filter strings.
    pub fn iter(&self) -> impl Iterator<Item = (String, Option<&str>, &K, &V)> + '_ {
        let mut out = Vec::with_capacity(self.len);
        if let Some(multi) = self.root.multi.as_deref() {
            out.extend(multi.entries().map(|(g, k, v)| ("#".to_owned(), g, k, v)));
        }
        // Depth-first with one shared path buffer, so deep filters cost linear, not quadratic, time.
        let mut pending = Vec::new();
        push_children(&self.root, None, &mut pending);
        let mut path = String::new();
        while let Some((node, parent_len, level)) = pending.pop() {
            // Everything popped since the parent lies in the parent's subtree, so the
            // buffer still starts with the parent's path.
            match parent_len {
                None => path.clear(),
                Some(len) => {
                    path.truncate(len);
                    path.push('/');
                }
            }
            path.push_str(level);
            out.extend(node.subs.entries().map(|(g, k, v)| (path.clone(), g, k, v)));
            if let Some(multi) = node.multi.as_deref() {
                let filter = format!("{path}/#");
                out.extend(multi.entries().map(|(g, k, v)| (filter.clone(), g, k, v)));
            }
            push_children(node, Some(path.len()), &mut pending);
        }
        out.into_iter()
    }

    /// Owned snapshot of [`iter`](Self::iter), convenient for persistence.
    pub fn subscriptions(&self) -> Vec<(String, Option<String>, K, V)>
    where
        V: Clone,
    {
        self.iter()
            .map(|(f, g, k, v)| (f, g.map(str::to_owned), k.clone(), v.clone()))
            .collect()
    }

    fn slot_or_insert(&mut self, filter: &str) -> &mut Subscribers<K, V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = match level {
                // Validation guarantees '#' is the last level.
                "#" => {
                    return node
                        .multi
                        .get_or_insert_with(|| Box::new(Subscribers::new()))
                }
                "+" => node.plus.get_or_insert_with(|| Box::new(Node::new())),
                literal => node.literal.entry(literal.into()).or_insert_with(Node::new),
            };
        }
        &mut node.subs
    }

    fn slot(&self, filter: &str) -> Option<&Subscribers<K, V>> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => return node.multi.as_deref(),
                "+" => node.plus.as_deref()?,
                literal => node.literal.get(literal)?,
            };
        }
        Some(&node.subs)
    }

    fn slot_mut(&mut self, filter: &str) -> Option<&mut Subscribers<K, V>> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => return node.multi.as_deref_mut(),
                "+" => node.plus.as_deref_mut()?,
                literal => node.literal.get_mut(literal)?,
            };
        }
        Some(&mut node.subs)
    }

    /// Frees the chain of nodes that only existed for `filter`, whose subscription slot just became empty.
    fn prune(&mut self, filter: &str) -> Option<()> {
        // The cut goes below the deepest node on the path that still holds something
        // other than this path; the root is always kept.
        let mut cut = 0;
        let mut node = &self.root;
        let mut ends_in_multi = false;
        for (depth, level) in filter.split('/').enumerate() {
            if !node.subs.is_empty() || node.child_count() > 1 {
                cut = depth;
            }
            node = match level {
                "#" => {
                    ends_in_multi = true;
                    break;
                }
                "+" => node.plus.as_deref()?,
                literal => node.literal.get(literal)?,
            };
        }
        if !ends_in_multi && !node.is_empty() {
            // The filter's own node still has children; nothing to free.
            return Some(());
        }

        let mut levels = filter.split('/');
        let mut node = &mut self.root;
        for _ in 0..cut {
            node = match levels.next()? {
                "+" => node.plus.as_deref_mut()?,
                literal => node.literal.get_mut(literal)?,
            };
        }
        match levels.next()? {
            "#" => node.multi = None,
            "+" => node.plus = None,
            literal => {
                node.literal.remove(literal);
                shrink_if_sparse(&mut node.literal);
            }
        }
        Some(())
    }

    /// Number of trie nodes including the root, to check that pruning frees everything.
    #[cfg(test)]
    pub(super) fn node_count(&self) -> usize {
        let mut count = 0;
        let mut pending = vec![&self.root];
        while let Some(node) = pending.pop() {
            count += 1 + usize::from(node.multi.is_some());
            pending.extend(node.literal.values());
            pending.extend(node.plus.as_deref());
        }
        count
    }
}

fn acceptable(filter: &str, share_group: Option<&str>) -> bool {
    valid_topic_filter(filter)
        && match share_group {
            None => true,
            Some(group) => valid_share_group(group),
        }
}

/// Pending iteration step: (node, length of its parent's path or `None` under the root, its level).
type Step<'a, K, V> = (&'a Node<K, V>, Option<usize>, &'a str);

fn push_children<'a, K, V>(
    node: &'a Node<K, V>,
    parent_len: Option<usize>,
    pending: &mut Vec<Step<'a, K, V>>,
) {
    if let Some(plus) = node.plus.as_deref() {
        pending.push((plus, parent_len, "+"));
    }
    pending.extend(
        node.literal
            .iter()
            .map(|(level, child)| (child, parent_len, &**level)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(
        tree: &TopicTree<u32, &'static str>,
    ) -> Vec<(String, Option<String>, u32, &'static str)> {
        let mut all = tree.subscriptions();
        all.sort();
        all
    }

    #[test]
    fn dollar_filters_are_counted_once_each() {
        let mut tree = TopicTree::new();
        tree.subscribe("#", None, 1, "all");
        tree.subscribe("+/x", None, 1, "one");
        assert!(!tree.has_dollar_filters(), "wildcards never match $ topics");
        tree.subscribe("$events/#", None, 1, "a");
        tree.subscribe("$events/#", None, 1, "replaced");
        tree.subscribe("$EVENT.CONNECT", Some("g"), 2, "b");
        assert!(tree.has_dollar_filters());
        assert_eq!(tree.unsubscribe("$events/#", None, &1), Some("replaced"));
        assert_eq!(tree.unsubscribe("$events/#", None, &1), None);
        assert!(tree.has_dollar_filters());
        tree.unsubscribe("$EVENT.CONNECT", Some("g"), &2);
        assert!(!tree.has_dollar_filters());
    }

    #[test]
    fn group_size_counts_the_members_of_one_group_on_one_filter() {
        let mut tree = TopicTree::new();
        assert_eq!(tree.group_size("a/+", "g"), 0);
        tree.subscribe("a/+", Some("g"), 1, "x");
        tree.subscribe("a/+", Some("g"), 2, "x");
        tree.subscribe("a/+", Some("h"), 3, "x");
        tree.subscribe("a/+", None, 4, "x");
        tree.subscribe("#", Some("g"), 5, "x");
        assert_eq!(tree.group_size("a/+", "g"), 2);
        assert_eq!(tree.group_size("a/+", "h"), 1);
        assert_eq!(tree.group_size("#", "g"), 1);
        assert_eq!(tree.group_size("a/b", "g"), 0);
        tree.unsubscribe("a/+", Some("g"), &1);
        assert_eq!(tree.group_size("a/+", "g"), 1);
    }

    #[test]
    fn subscribe_replace_unsubscribe() {
        let mut tree = TopicTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.subscribe("a/b", None, 1, "x"), None);
        assert_eq!(tree.subscribe("a/b", None, 1, "y"), Some("x"));
        assert_eq!(tree.subscribe("a/b", Some("g"), 1, "z"), None);
        assert_eq!(tree.subscribe("a/b", None, 2, "w"), None);
        assert_eq!(tree.len(), 3);

        assert_eq!(tree.unsubscribe("a/b", Some("h"), &1), None);
        assert_eq!(tree.unsubscribe("a/+", None, &1), None);
        assert_eq!(tree.unsubscribe("a/b", Some("g"), &1), Some("z"));
        assert_eq!(tree.unsubscribe("a/b", None, &1), Some("y"));
        assert_eq!(tree.unsubscribe("a/b", None, &1), None);
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.unsubscribe("a/b", None, &2), Some("w"));
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn invalid_input_is_ignored() {
        let mut tree = TopicTree::new();
        for filter in ["", "a/#/b", "a#", "a/b+", "\0"] {
            assert_eq!(tree.subscribe(filter, None, 1, "x"), None);
            assert_eq!(tree.unsubscribe(filter, None, &1), None);
        }
        for group in ["", "g+", "g#", "a/b"] {
            assert_eq!(tree.subscribe("a", Some(group), 1, "x"), None);
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn iter_rebuilds_filters() {
        let mut tree = TopicTree::new();
        let filters = [
            "#",
            "+",
            "/",
            "a//b",
            "+/+",
            "/+",
            "sport/#",
            "sport/tennis/+",
            "$SYS/#",
            "a/+/#",
        ];
        for (i, f) in filters.iter().enumerate() {
            tree.subscribe(f, None, 0, "v");
            tree.subscribe(f, Some("g"), u32::try_from(i).unwrap_or(0), "s");
        }
        let mut expected: Vec<_> = filters
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                [
                    (f.to_string(), None, 0, "v"),
                    (
                        f.to_string(),
                        Some("g".to_string()),
                        u32::try_from(i).unwrap_or(0),
                        "s",
                    ),
                ]
            })
            .collect();
        expected.sort();
        assert_eq!(listing(&tree), expected);
        assert_eq!(tree.iter().count(), tree.len());
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut tree = TopicTree::new();
        tree.subscribe("a/b/c", None, 1, "x");
        tree.subscribe("a/b", None, 1, "x");
        tree.subscribe("a/+/c/#", None, 1, "x");
        tree.subscribe("a/b/#", None, 1, "x");
        // root, a, a/b, a/b/c, a/b/#, a/+, a/+/c, a/+/c/#
        assert_eq!(tree.node_count(), 8);

        assert_eq!(tree.unsubscribe("a/b", None, &1), Some("x"));
        assert_eq!(tree.node_count(), 8, "a/b still leads to a/b/c");
        assert_eq!(tree.unsubscribe("a/+/c/#", None, &1), Some("x"));
        assert_eq!(tree.node_count(), 5);
        assert_eq!(tree.unsubscribe("a/b/c", None, &1), Some("x"));
        assert_eq!(tree.node_count(), 4);
        assert_eq!(tree.unsubscribe("a/b/#", None, &1), Some("x"));
        assert_eq!(tree.node_count(), 1);
        assert!(tree.is_empty());
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        // ~32k levels: recursion here would blow the 2 MiB test-thread stack.
        let filter = "a/".repeat(32_000) + "+";
        let topic = "a/".repeat(32_000) + "b";
        let mut tree = TopicTree::new();
        tree.subscribe(&filter, None, 1u32, ());
        tree.subscribe(&("+/".repeat(32_000) + "#"), None, 2u32, ());
        let mut hits = Vec::new();
        tree.matches(&topic, |_| true, |k, _, _| hits.push(*k));
        hits.sort_unstable();
        assert_eq!(hits, [1, 2]);
        assert_eq!(tree.iter().count(), 2);
        assert_eq!(tree.unsubscribe(&filter, None, &1), Some(()));
        assert_eq!(tree.len(), 1);
        // Dropping the remaining deep chain must not recurse either.
        drop(tree);
    }
}
