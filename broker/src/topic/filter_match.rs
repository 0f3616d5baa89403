//! One filter against one topic, level by level: how retained messages are matched to a
//! new subscription and webhook rules to a message's topic, and the reference the
//! subscription trie (`tree.rs`) is tested against.

/// Whether `filter` (an inner filter, without any `$share/` prefix) matches `topic`.
///
/// MQTT semantics: `sport/#` matches `sport`, `+` matches an empty level, and a topic
/// starting with `$` is not matched by a filter whose first level is `+` or `#`.
#[must_use]
pub fn matches(filter: &str, topic: &str) -> bool {
    // MQTT-4.7.2-1: keep broker-internal `$` topics out of catch-all subscriptions.
    if topic.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#")) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // '#' also covers its parent level, so it matches even when the topic has ended.
            (Some("#"), _) | (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// (filter, topic, expected) — mostly the examples from MQTT 3.1.1 §4.7 / MQTT 5 §4.7.
    pub(in crate::topic) const CASES: &[(&str, &str, bool)] = &[
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("sport/#", "sport/", true),
        ("sport/#", "sports", false),
        ("#", "sport", true),
        ("#", "/", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "sport", true),
        ("+", "", true),
        ("+", "/finance", false),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+/+", "a/b/c", false),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("/finance", "/finance", true),
        ("/finance", "finance", false),
        ("#", "$SYS/monitor/Clients", false),
        ("#", "$SYS", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+", "$SYS", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/+", "$SYS/monitor", false),
        // Only the first level is protected.
        ("a/+", "a/$x", true),
        ("a/#", "a/$x/y", true),
        ("Sport", "sport", false),
    ];

    #[test]
    fn spec_examples() {
        for &(filter, topic, expected) in CASES {
            assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
        }
    }
}
