//! Property tests: the trie against the one-filter matcher (`filter_match`), and churn
//! against a model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{matches, valid_topic_filter, TopicTree};

/// Levels chosen to hit every special case: wildcards, `$` topics and empty levels.
fn filter() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "$x", "", "+", "#"]),
        1..=4,
    )
    .prop_map(|levels| levels.join("/"))
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "$x", ""]), 1..=4)
        .prop_map(|levels| levels.join("/"))
}

fn group() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(vec!["g", "h"]).prop_map(str::to_owned))
}

type Model = BTreeMap<(String, Option<String>, u8), u8>;

/// Node count of a tree freshly built from `model`: what pruning must get back to.
fn fresh_node_count(model: &Model) -> usize {
    let mut tree = TopicTree::new();
    for ((f, g, k), v) in model {
        tree.subscribe(f, g.as_deref(), *k, *v);
    }
    tree.node_count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_agrees_with_the_one_filter_matcher(
        subs in prop::collection::vec((filter(), group(), 0u8..3), 0..24),
        topics in prop::collection::vec(topic(), 1..8),
    ) {
        let mut tree = TopicTree::new();
        // (filter, group) → members
        let mut model: BTreeMap<(String, Option<String>), BTreeSet<u8>> = BTreeMap::new();
        for (f, g, k) in &subs {
            tree.subscribe(f, g.as_deref(), *k, f.clone());
            if valid_topic_filter(f) {
                model.entry((f.clone(), g.clone())).or_default().insert(*k);
            }
        }
        prop_assert_eq!(tree.len(), model.values().map(BTreeSet::len).sum::<usize>());

        for t in &topics {
            let mut plain = Vec::new();
            let mut shared = Vec::new();
            tree.matches(t, |_| true, |k, f, g| match g {
                None => plain.push((f.clone(), *k)),
                Some(g) => shared.push(((f.clone(), Some(g.to_owned())), *k)),
            });
            plain.sort();
            shared.sort();

            let want_plain: Vec<(String, u8)> = model
                .iter()
                .filter(|((f, g), _)| g.is_none() && matches(f, t))
                .flat_map(|((f, _), keys)| keys.iter().map(move |k| (f.clone(), *k)))
                .collect();
            prop_assert_eq!(&plain, &want_plain, "topic {:?}", t);

            let got_groups: Vec<_> = shared.iter().map(|(fg, _)| fg.clone()).collect();
            let want_groups: Vec<_> = model
                .keys()
                .filter(|(f, g)| g.is_some() && matches(f, t))
                .cloned()
                .collect();
            prop_assert_eq!(&got_groups, &want_groups, "one member per group, topic {:?}", t);
            for (fg, k) in &shared {
                prop_assert!(model[fg].contains(k));
            }
        }
    }

    #[test]
    fn churn_keeps_len_and_prunes(
        ops in prop::collection::vec((any::<bool>(), filter(), group(), 0u8..3, any::<u8>()), 0..64),
    ) {
        let mut tree = TopicTree::new();
        let mut model = Model::new();
        for (subscribe, f, g, k, v) in ops {
            let valid = valid_topic_filter(&f);
            let id = (f.clone(), g.clone(), k);
            if subscribe {
                let got = tree.subscribe(&f, g.as_deref(), k, v);
                let want = if valid { model.insert(id, v) } else { None };
                prop_assert_eq!(got, want);
            } else {
                let got = tree.unsubscribe(&f, g.as_deref(), &k);
                let want = if valid { model.remove(&id) } else { None };
                prop_assert_eq!(got, want);
            }
            prop_assert_eq!(tree.len(), model.len());
            prop_assert_eq!(tree.is_empty(), model.is_empty());
        }

        let mut listed = tree.subscriptions();
        listed.sort();
        let want: Vec<_> = model.iter().map(|((f, g, k), v)| (f.clone(), g.clone(), *k, *v)).collect();
        prop_assert_eq!(listed, want);
        prop_assert_eq!(tree.node_count(), fresh_node_count(&model));

        for (f, g, k) in model.keys() {
            prop_assert!(tree.unsubscribe(f, g.as_deref(), k).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.node_count(), 1);
    }
}
