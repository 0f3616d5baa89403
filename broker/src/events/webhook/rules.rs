//! Webhook rules (EMQX style): which actions are posted, and for message and
//! subscription actions, for which topics.
//!
//! Configured as a JSON array, e.g.
//! `[{"action": "on_message_publish", "topic": "foo/#"}, {"action": "on_client_connected"}]`.
//! An empty setting means every action, unfiltered.

use crate::events::{EventKind, KindSet};
use crate::topic;

/// The actions of seed 004, as they appear in the body's `action` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ClientConnect,
    ClientConnack,
    ClientConnected,
    ClientDisconnected,
    ClientSubscribe,
    ClientUnsubscribe,
    SessionSubscribed,
    SessionUnsubscribed,
    SessionTerminated,
    MessagePublish,
    MessageDelivered,
    MessageAcked,
    MessageDropped,
}

impl Action {
    pub const ALL: [Action; 13] = [
        Action::ClientConnect,
        Action::ClientConnack,
        Action::ClientConnected,
        Action::ClientDisconnected,
        Action::ClientSubscribe,
        Action::ClientUnsubscribe,
        Action::SessionSubscribed,
        Action::SessionUnsubscribed,
        Action::SessionTerminated,
        Action::MessagePublish,
        Action::MessageDelivered,
        Action::MessageAcked,
        Action::MessageDropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::ClientConnect => "client_connect",
            Action::ClientConnack => "client_connack",
            Action::ClientConnected => "client_connected",
            Action::ClientDisconnected => "client_disconnected",
            Action::ClientSubscribe => "client_subscribe",
            Action::ClientUnsubscribe => "client_unsubscribe",
            Action::SessionSubscribed => "session_subscribed",
            Action::SessionUnsubscribed => "session_unsubscribed",
            Action::SessionTerminated => "session_terminated",
            Action::MessagePublish => "message_publish",
            Action::MessageDelivered => "message_delivered",
            Action::MessageAcked => "message_acked",
            Action::MessageDropped => "message_dropped",
        }
    }

    /// `on_message_publish` (the rule spelling) or `message_publish` (the body spelling).
    pub fn parse(name: &str) -> Option<Action> {
        let name = name.strip_prefix("on_").unwrap_or(name);
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The canonical event this action is rendered from.
    pub fn kind(self) -> EventKind {
        match self {
            Action::ClientConnect => EventKind::ClientConnect,
            Action::ClientConnack => EventKind::ClientConnack,
            Action::ClientConnected => EventKind::ClientConnected,
            Action::ClientDisconnected => EventKind::ClientDisconnected,
            Action::SessionTerminated => EventKind::SessionTerminated,
            Action::ClientSubscribe => EventKind::ClientSubscribe,
            Action::SessionSubscribed => EventKind::SessionSubscribed,
            Action::ClientUnsubscribe => EventKind::ClientUnsubscribe,
            Action::SessionUnsubscribed => EventKind::SessionUnsubscribed,
            Action::MessagePublish => EventKind::MessagePublish,
            Action::MessageDelivered => EventKind::MessageDelivered,
            Action::MessageAcked => EventKind::MessageAcked,
            Action::MessageDropped => EventKind::MessageDropped,
        }
    }

    /// Whether a rule for this action may carry a topic filter.
    fn has_topic(self) -> bool {
        matches!(
            self,
            Action::ClientSubscribe
                | Action::ClientUnsubscribe
                | Action::SessionSubscribed
                | Action::SessionUnsubscribed
                | Action::MessagePublish
                | Action::MessageDelivered
                | Action::MessageAcked
                | Action::MessageDropped
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    action: Action,
    /// Inner topic filter (no `$share/` prefix); `None` matches every topic.
    topic: Option<String>,
}

/// Why a rules setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("not a JSON array of rules: {0}")]
    Json(String),
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    #[error("action {0} takes no topic")]
    TopicNotAllowed(&'static str),
    #[error("invalid topic filter {0:?}")]
    InvalidTopic(String),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    action: String,
    #[serde(default)]
    topic: Option<String>,
}

/// The parsed rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Every action, no topic filter.
    pub fn all() -> Rules {
        Rules {
            rules: Action::ALL
                .into_iter()
                .map(|action| Rule {
                    action,
                    topic: None,
                })
                .collect(),
        }
    }

    /// Parses the `webhook_rules` setting; blank means [`Rules::all`].
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        if text.trim().is_empty() {
            return Ok(Rules::all());
        }
        let raw: Vec<RawRule> =
            serde_json::from_str(text).map_err(|e| RulesError::Json(e.to_string()))?;
        let mut rules = Vec::with_capacity(raw.len());
        for r in raw {
            let action = Action::parse(&r.action).ok_or(RulesError::UnknownAction(r.action))?;
            let topic = match r.topic {
                None => None,
                Some(_) if !action.has_topic() => {
                    return Err(RulesError::TopicNotAllowed(action.as_str()))
                }
                Some(t) => match topic::parse_subscription(&t) {
                    Ok((_, inner)) => Some(inner.to_owned()),
                    Err(_) => return Err(RulesError::InvalidTopic(t)),
                },
            };
            rules.push(Rule { action, topic });
        }
        Ok(Rules { rules })
    }

    /// The event kinds some rule needs (what the dialect subscribes to on the bus).
    pub fn kinds(&self) -> KindSet {
        self.rules.iter().fold(KindSet::NONE, |set, r| {
            set.union(KindSet::of(&[r.action.kind()]))
        })
    }

    /// Whether `action` is wanted for `topic` (a topic name for messages, a subscription
    /// filter for subscribe actions; `None` for actions without a topic).
    pub fn wants(&self, action: Action, topic: Option<&str>) -> bool {
        self.rules.iter().any(|r| {
            r.action == action
                && match (&r.topic, topic) {
                    (None, _) => true,
                    (Some(filter), Some(topic)) => topic::matches(filter, strip_share(topic)),
                    (Some(_), None) => false,
                }
        })
    }
}

/// A shared subscription's filter without its `$share/{group}/` prefix.
fn strip_share(filter: &str) -> &str {
    match topic::parse_subscription(filter) {
        Ok((_, inner)) => inner,
        Err(_) => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_means_every_action_and_every_kind_it_needs() {
        let rules = Rules::parse("  ").unwrap();
        assert_eq!(rules, Rules::all());
        for a in Action::ALL {
            assert!(rules.wants(a, Some("any/topic")), "{a:?}");
            assert!(rules.wants(a, None), "{a:?}");
        }
        let kinds = rules.kinds();
        for k in [
            EventKind::ClientConnect,
            EventKind::ClientConnack,
            EventKind::ClientConnected,
            EventKind::ClientDisconnected,
            EventKind::SessionSubscribed,
            EventKind::SessionUnsubscribed,
            EventKind::MessagePublish,
            EventKind::MessageDelivered,
            EventKind::MessageAcked,
            EventKind::MessageDropped,
        ] {
            assert!(kinds.contains(k), "{k:?}");
        }
        assert!(!kinds.contains(EventKind::ClientPing));
        assert!(!kinds.contains(EventKind::MessageOffline));
    }

    #[test]
    fn action_names_with_and_without_on_prefix() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert_eq!(Action::parse(&format!("on_{}", a.as_str())), Some(a));
        }
        assert_eq!(Action::parse("on_client_ping"), None);
        assert_eq!(Action::parse("client.connected"), None);
    }

    #[test]
    fn topic_filters_select_messages_and_subscriptions() {
        let rules = Rules::parse(
            r#"[{"action": "on_message_publish", "topic": "a/b/c"},
                {"action": "on_message_publish", "topic": "foo/#"},
                {"action": "on_session_subscribed", "topic": "$share/g/s/+"},
                {"action": "on_client_connected"}]"#,
        )
        .unwrap();
        assert!(rules.wants(Action::MessagePublish, Some("a/b/c")));
        assert!(rules.wants(Action::MessagePublish, Some("foo/bar")));
        assert!(rules.wants(Action::MessagePublish, Some("foo")));
        assert!(!rules.wants(Action::MessagePublish, Some("a/b/d")));
        assert!(!rules.wants(Action::MessagePublish, Some("fo/bar")));
        assert!(!rules.wants(Action::MessageDelivered, Some("foo/bar")));
        assert!(rules.wants(Action::SessionSubscribed, Some("s/1")));
        assert!(rules.wants(Action::SessionSubscribed, Some("$share/other/s/1")));
        assert!(!rules.wants(Action::SessionSubscribed, Some("t/1")));
        assert!(rules.wants(Action::ClientConnected, None));
        assert!(!rules.wants(Action::ClientDisconnected, None));
        let kinds = rules.kinds();
        assert!(kinds.contains(EventKind::MessagePublish));
        assert!(kinds.contains(EventKind::SessionSubscribed));
        assert!(kinds.contains(EventKind::ClientConnected));
        assert!(!kinds.contains(EventKind::ClientDisconnected));
        assert!(!kinds.contains(EventKind::MessageDelivered));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        assert!(matches!(Rules::parse("{}"), Err(RulesError::Json(_))));
        assert!(matches!(
            Rules::parse(r#"[{"action": "on_x"}]"#),
            Err(RulesError::UnknownAction(a)) if a == "on_x"
        ));
        assert_eq!(
            Rules::parse(r#"[{"action": "on_client_connected", "topic": "a"}]"#),
            Err(RulesError::TopicNotAllowed("client_connected"))
        );
        assert!(matches!(
            Rules::parse(r#"[{"action": "on_message_publish", "topic": "a/#/b"}]"#),
            Err(RulesError::InvalidTopic(_))
        ));
        assert!(matches!(
            Rules::parse(r#"[{"action": "on_message_publish", "topc": "a"}]"#),
            Err(RulesError::Json(_))
        ));
        assert_eq!(Rules::parse("[]").unwrap().kinds(), KindSet::NONE);
    }
}
