//! One client's view of the ACL: its section's rules and the patterns with its client id
//! and username filled in, and the checks made against it.
//!
//! Mosquitto's semantics: a `deny` rule that applies wins over any grant; otherwise a
//! grant is needed (no rule: denied). A PUBLISH needs a write grant matching its topic;
//! a message on its way to the client needs a read grant matching its topic; a
//! SUBSCRIBE needs a read grant that covers the whole filter (`sensors/#` covers
//! `sensors/+/temp`; `sensors/+/temp` does not cover `sensors/#`) and no deny rule
//! covering it. A deny rule inside a broader subscription (deny `a/secret`, subscribed
//! to `a/#`) is enforced when messages are delivered.

use super::file::{Access, AclRules, Rule};
use crate::topic::matches;

/// The rules that apply to one client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRules {
    rules: Vec<Rule>,
}

impl ClientRules {
    /// The rules of `acl` for a client with `client_id` and `username`.
    ///
    /// A pattern whose `%c` / `%u` would be filled with a value holding `/`, `+` or `#`
    /// is left out (as Mosquitto does for wildcards; a `/` would reach into another
    /// client's levels), and so is a `%u` pattern for a client without a username.
    pub fn of(acl: &AclRules, client_id: &str, username: Option<&str>) -> ClientRules {
        let section = match username {
            Some(name) => acl.users.get(name).map(Vec::as_slice).unwrap_or_default(),
            None => &acl.anonymous,
        };
        let mut rules: Vec<Rule> = section.to_vec();
        for pattern in &acl.patterns {
            if let Some(filter) = substitute(&pattern.filter, client_id, username) {
                rules.push(Rule {
                    access: pattern.access,
                    filter,
                });
            }
        }
        ClientRules { rules }
    }

    /// Whether the client may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.decide(|r| matches(&r.filter, topic), Access::writes) == Some(true)
    }

    /// Whether a message on `topic` may be delivered to the client.
    pub fn may_receive(&self, topic: &str) -> Option<bool> {
        self.decide(|r| matches(&r.filter, topic), Access::reads)
    }

    /// Whether the client may subscribe to `filter` (an inner filter, without
    /// `$share/{group}/`); None when no rule covers it.
    pub fn may_subscribe(&self, filter: &str) -> Option<bool> {
        self.decide(|r| covers(&r.filter, filter), Access::reads)
    }

    /// Some(false) when a deny rule applies, Some(true) when a grant of the wanted kind
    /// applies, None when no rule says anything.
    fn decide(&self, applies: impl Fn(&Rule) -> bool, grants: fn(Access) -> bool) -> Option<bool> {
        if self
            .rules
            .iter()
            .any(|r| r.access == Access::Deny && applies(r))
        {
            return Some(false);
        }
        self.rules
            .iter()
            .any(|r| grants(r.access) && applies(r))
            .then_some(true)
    }
}

/// `filter` with `%c` and `%u` filled in; None when it can't apply to this client.
pub fn substitute(filter: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let unsafe_value = |v: &str| v.contains(['/', '+', '#']);
    let mut out = filter.to_owned();
    if out.contains("%c") {
        if unsafe_value(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if out.contains("%u") {
        let name = username?;
        if unsafe_value(name) {
            return None;
        }
        out = out.replace("%u", name);
    }
    Some(out)
}

/// Whether every topic `filter` can match is matched by `rule` (both valid filters).
pub fn covers(rule: &str, filter: &str) -> bool {
    // A rule starting with a wildcard does not reach `$` topics (MQTT-4.7.2-1).
    if filter.starts_with('$') && matches!(rule.split('/').next(), Some("+" | "#")) {
        return false;
    }
    let mut rule_levels = rule.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (rule_levels.next(), filter_levels.next()) {
            (Some("#"), _) | (None, None) => return true,
            // Only `#` covers `#`; `+` covers any single level, a wildcard one included.
            (Some("+"), Some(f)) if f != "#" => {}
            (Some(r), Some(f)) if r == f && f != "+" && f != "#" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str, client: &str, user: Option<&str>) -> ClientRules {
        ClientRules::of(&AclRules::parse(text).unwrap(), client, user)
    }

    #[test]
    fn covering() {
        for (rule, filter, expected) in [
            ("sensors/#", "sensors/+/temp", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/#", true),
            ("sensors/+/temp", "sensors/#", false),
            ("sensors/+/temp", "sensors/a/temp", true),
            ("sensors/+/temp", "sensors/+/temp", true),
            ("sensors/a/temp", "sensors/+/temp", false),
            ("#", "anything/+/#", true),
            ("#", "$SYS/x", false),
            ("+/x", "$events/x", false),
            ("$events/#", "$events/+", true),
            ("a/+", "a/b/c", false),
            ("a/b", "a/b", true),
            ("a/b", "a", false),
        ] {
            assert_eq!(covers(rule, filter), expected, "{rule} covers {filter}");
        }
    }

    #[test]
    fn sections_patterns_and_denials() {
        let text = "topic read public/#\n\
                    user alice\n\
                    topic readwrite alice/#\n\
                    topic deny alice/secret\n\
                    topic write shared/in\n\
                    pattern write devices/%c/up\n\
                    pattern read devices/%u/down/#\n";
        let anon = rules(text, "dev1", None);
        assert_eq!(anon.may_subscribe("public/news"), Some(true));
        assert_eq!(anon.may_receive("public/news"), Some(true));
        assert!(!anon.may_publish("public/news"));
        assert!(anon.may_publish("devices/dev1/up"));
        assert!(!anon.may_publish("devices/dev2/up"));
        // %u pattern: anonymous clients don't get it.
        assert_eq!(anon.may_subscribe("devices/dev1/down/#"), None);

        let alice = rules(text, "a-1", Some("alice"));
        assert!(alice.may_publish("alice/x"));
        assert!(!alice.may_publish("alice/secret"));
        assert_eq!(alice.may_subscribe("alice/#"), Some(true));
        assert_eq!(alice.may_receive("alice/secret"), Some(false));
        assert_eq!(alice.may_subscribe("alice/secret"), Some(false));
        assert_eq!(alice.may_subscribe("shared/in"), None, "write only");
        assert!(alice.may_publish("shared/in"));
        assert_eq!(alice.may_subscribe("public/#"), None, "not in her section");
        assert_eq!(alice.may_subscribe("devices/alice/down/+"), Some(true));
        assert!(alice.may_publish("devices/a-1/up"));

        // An unknown user gets the patterns only.
        let eve = rules(text, "e", Some("eve"));
        assert!(eve.may_publish("devices/e/up"));
        assert_eq!(eve.may_receive("public/news"), None);
    }

    #[test]
    fn wildcards_and_slashes_are_not_substituted() {
        let text = "pattern readwrite devices/%c/#\npattern readwrite users/%u/#\n";
        for id in ["#", "a/b", "+"] {
            let r = rules(text, id, Some(id));
            assert!(!r.may_publish("devices/a/b"), "{id}");
            assert_eq!(r.may_subscribe("devices/#"), None, "{id}");
            assert_eq!(r.may_subscribe("users/#"), None, "{id}");
        }
    }
}
