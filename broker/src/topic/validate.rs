//! Syntax checks for topic names (PUBLISH) and topic filters (SUBSCRIBE/UNSUBSCRIBE).

use super::TopicError;

/// Longest topic name or filter in bytes: MQTT strings carry a two-byte length prefix.
pub const MAX_TOPIC_LEN: usize = 65_535;

const SHARE_PREFIX: &str = "$share/";

/// MQTT topic name check for PUBLISH: non-empty, no `+` or `#`, at most 65535 bytes
/// (and no NUL, which MQTT forbids in every topic string).
#[must_use]
pub fn valid_topic_name(name: &str) -> bool {
    within_limits(name) && !name.contains(['+', '#'])
}

/// MQTT topic filter check: non-empty; `#` only as the whole last level; `+` only as a whole level.
#[must_use]
pub fn valid_topic_filter(filter: &str) -> bool {
    if !within_limits(filter) {
        return false;
    }
    let mut seen_multi = false;
    for level in filter.split('/') {
        if seen_multi {
            // Something follows '#', but '#' must be the final level.
            return false;
        }
        match level {
            "#" => seen_multi = true,
            "+" => {}
            literal if literal.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Splits `$share/{group}/{filter}`.
///
/// `Ok((None, filter))` for a normal filter, `Ok((Some(group), filter))` for a shared one.
/// The prefix is case-sensitive, and a bare `$share` (no slash) is an ordinary filter.
///
/// # Errors
/// [`TopicError::InvalidShareGroup`] when the share name is empty or contains `+`, `#` or NUL;
/// [`TopicError::InvalidFilter`] when the (inner) filter is missing or invalid.
pub fn parse_subscription(filter: &str) -> Result<(Option<&str>, &str), TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return if valid_topic_filter(filter) {
            Ok((None, filter))
        } else {
            Err(TopicError::InvalidFilter)
        };
    };
    let (group, inner) = match rest.split_once('/') {
        Some((group, inner)) => (group, Some(inner)),
        None => (rest, None),
    };
    if !valid_share_group(group) {
        return Err(TopicError::InvalidShareGroup);
    }
    match inner {
        Some(inner) if valid_topic_filter(inner) => Ok((Some(group), inner)),
        _ => Err(TopicError::InvalidFilter),
    }
}

/// Share names are a single level without wildcards (MQTT 5 §4.8.2).
pub(super) fn valid_share_group(group: &str) -> bool {
    !group.is_empty() && !group.contains(['+', '#', '/', '\0'])
}

fn within_limits(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOPIC_LEN && !s.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in [
            "a",
            "/",
            "a//b",
            "/finance",
            "$SYS/x",
            "sport/tennis/player1",
            " ",
        ] {
            assert!(valid_topic_name(ok), "{ok:?} should be valid");
        }
        for bad in ["", "+", "#", "a/+", "a/#", "a+b", "sport/tennis#", "a\0b"] {
            assert!(!valid_topic_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn topic_name_length_limit() {
        assert!(valid_topic_name(&"a".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_topic_name(&"a".repeat(MAX_TOPIC_LEN + 1)));
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "/",
            "a//b",
            "+/+",
            "/+",
            "+/#",
            "sport/#",
            "sport/tennis/+",
            "$SYS/#",
            "a/+/b",
            "$share",
            "//",
        ] {
            assert!(valid_topic_filter(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/#/ranking",
            "#/",
            "##",
            "a/b+",
            "+a",
            "a/++",
            "#/#",
            "a\0",
        ] {
            assert!(!valid_topic_filter(bad), "{bad:?} should be invalid");
        }
        assert!(valid_topic_filter(&"a".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_topic_filter(&"a".repeat(MAX_TOPIC_LEN + 1)));
    }

    #[test]
    fn subscriptions() {
        assert_eq!(parse_subscription("a/#"), Ok((None, "a/#")));
        assert_eq!(parse_subscription("$share/g/a/#"), Ok((Some("g"), "a/#")));
        assert_eq!(parse_subscription("$share/g/+"), Ok((Some("g"), "+")));
        assert_eq!(parse_subscription("$share/g//"), Ok((Some("g"), "/")));
        assert_eq!(parse_subscription("$share"), Ok((None, "$share")));
        // Case matters: this is an ordinary filter, not a shared subscription.
        assert_eq!(parse_subscription("$SHARE/g/a"), Ok((None, "$SHARE/g/a")));

        assert_eq!(parse_subscription(""), Err(TopicError::InvalidFilter));
        assert_eq!(parse_subscription("a/#/b"), Err(TopicError::InvalidFilter));
        assert_eq!(
            parse_subscription("$share//a"),
            Err(TopicError::InvalidShareGroup)
        );
        assert_eq!(
            parse_subscription("$share/"),
            Err(TopicError::InvalidShareGroup)
        );
        assert_eq!(
            parse_subscription("$share/g+/a"),
            Err(TopicError::InvalidShareGroup)
        );
        assert_eq!(
            parse_subscription("$share/#/a"),
            Err(TopicError::InvalidShareGroup)
        );
        assert_eq!(
            parse_subscription("$share/g"),
            Err(TopicError::InvalidFilter)
        );
        assert_eq!(
            parse_subscription("$share/g/"),
            Err(TopicError::InvalidFilter)
        );
        assert_eq!(
            parse_subscription("$share/g/a#"),
            Err(TopicError::InvalidFilter)
        );
        assert_eq!(
            parse_subscription("$share/g/#/a"),
            Err(TopicError::InvalidFilter)
        );
    }
}
