//! What one connection may publish, subscribe to and receive: the ACL file's rules for
//! it, its token's `acl` claim, and the event topics' rule.
//!
//! How they combine:
//! - a superuser (as the HTTP authenticator may mark one) may do anything, event topics
//!   included;
//! - a token's `acl` claim narrows: what it does not list is refused;
//! - the ACL file: a deny rule wins, then a grant is needed (Mosquitto's semantics, see
//!   `acl::rules`);
//! - event topics (`$events/...`, `$EVENT...`): the ACL file decides when one of its
//!   rules applies (a `user ops` / `topic read $events/#` grants them, `topic deny
//!   $EVENT.#`... refuses them), otherwise the built-in default does: clients on
//!   loopback and the `events_subscribe_usernames` (verified by a source) may read them.
//!   Clients never publish there (the node alone does).
//!
//! Without an ACL file and a token claim the default alone applies (everything but the
//! event topics is allowed), with no per-connection state.

use std::net::IpAddr;
use std::sync::Arc;

use crate::acl::{AclState, ClientRules};
use crate::events::access;
use crate::jwt::TokenAcl;

/// A connection's authorization state (boxed in the connection: most have none).
pub struct Authz {
    superuser: bool,
    token_acl: Option<TokenAcl>,
    acl: Option<Arc<AclState>>,
    /// The ACL file's rules for this client, with the generation they were built from.
    rules: Option<(u64, ClientRules)>,
    /// The event topics' built-in rule allows this client.
    events_default: bool,
    client_id: Box<str>,
    username: Option<Box<str>>,
}

/// Who a connection is, for [`Authz::new`].
pub struct Subject<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub peer: IpAddr,
    /// A source vouched for the username.
    pub verified: bool,
    pub superuser: bool,
    pub token_acl: Option<TokenAcl>,
}

impl Authz {
    /// The state of a connection; None when nothing restricts it beyond the event
    /// topics' default (no ACL file, no token claim, no superuser).
    pub fn new(
        subject: Subject<'_>,
        acl: Option<&Arc<AclState>>,
        events_usernames: &[String],
    ) -> Option<Box<Authz>> {
        if acl.is_none() && subject.token_acl.is_none() && !subject.superuser {
            return None;
        }
        let username = subject.username.filter(|_| subject.verified);
        let token_acl = subject
            .token_acl
            .map(|t| t.for_client(subject.client_id, subject.username));
        Some(Box::new(Authz {
            superuser: subject.superuser,
            token_acl,
            acl: acl.cloned(),
            rules: None,
            events_default: access::may_subscribe(subject.peer, username, events_usernames),
            client_id: subject.client_id.into(),
            username: subject.username.map(Into::into),
        }))
    }

    /// The ACL file's rules for this client as of the rules in force (rebuilt after a
    /// reload); None without an ACL file.
    fn rules(&mut self) -> Option<&ClientRules> {
        let acl = self.acl.as_ref()?;
        let generation = acl.generation();
        if self.rules.as_ref().is_none_or(|(g, _)| *g != generation) {
            self.rules = Some(acl.client_rules(&self.client_id, self.username.as_deref()));
        }
        self.rules.as_ref().map(|(_, r)| r)
    }

    /// What is decided about publishing to `topic` before the HTTP authorizer is asked:
    /// Some(true) for a superuser, Some(false) when the token's claim refuses it.
    pub fn publish_settled(&self, topic: &str) -> Option<bool> {
        if self.superuser {
            return Some(true);
        }
        let refused = self
            .token_acl
            .as_ref()
            .is_some_and(|t| !t.may_publish(topic));
        refused.then_some(false)
    }

    /// As [`Self::publish_settled`], for subscribing to `filter`.
    pub fn subscribe_settled(&self, filter: &str) -> Option<bool> {
        if self.superuser {
            return Some(true);
        }
        let refused = self
            .token_acl
            .as_ref()
            .is_some_and(|t| !t.may_subscribe(filter));
        refused.then_some(false)
    }

    /// Whether the client may subscribe to `filter` (without `$share/{group}/`).
    pub fn may_subscribe(&mut self, filter: &str) -> bool {
        if self.superuser {
            return true;
        }
        if self
            .token_acl
            .as_ref()
            .is_some_and(|t| !t.may_subscribe(filter))
        {
            return false;
        }
        let events_default = self.events_default;
        let event = access::is_event_filter(filter);
        match self.rules().map(|r| r.may_subscribe(filter)) {
            Some(Some(decided)) => decided,
            _ if event => events_default,
            Some(None) => false,
            None => true,
        }
    }

    /// Whether a message on `topic` may be delivered to the client.
    pub fn may_receive(&mut self, topic: &str) -> bool {
        if self.superuser {
            return true;
        }
        if self
            .token_acl
            .as_ref()
            .is_some_and(|t| !t.may_receive(topic))
        {
            return false;
        }
        let events_default = self.events_default;
        let event = access::is_event_filter(topic);
        match self.rules().map(|r| r.may_receive(topic)) {
            Some(Some(decided)) => decided,
            _ if event => events_default,
            Some(None) => false,
            None => true,
        }
    }

    /// Whether the client may publish to `topic` (never an event topic: checked before).
    pub fn may_publish(&mut self, topic: &str) -> bool {
        if self.superuser {
            return true;
        }
        if self
            .token_acl
            .as_ref()
            .is_some_and(|t| !t.may_publish(topic))
        {
            return false;
        }
        self.rules().is_none_or(|r| r.may_publish(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AclRules;

    fn state(text: &str) -> Arc<AclState> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, text).unwrap();
        AclState::new(path.clone(), Arc::new(AclRules::load(&path).unwrap()))
    }

    fn subject<'a>(peer: &str, username: Option<&'a str>) -> Subject<'a> {
        Subject {
            client_id: "c1",
            username,
            peer: peer.parse().unwrap(),
            verified: true,
            superuser: false,
            token_acl: None,
        }
    }

    #[test]
    fn nothing_configured_needs_no_state() {
        assert!(Authz::new(subject("10.0.0.1", None), None, &[]).is_none());
    }

    #[test]
    fn event_topics_default_and_acl_overrides() {
        let acl = state(
            "user ops\ntopic read $events/#\nuser dev\ntopic deny $EVENT.CONNECT\ntopic read #\n",
        );
        let remote = "10.0.0.1";
        // No rule about event topics: loopback clients get them, remote ones don't.
        let mut anon_local = Authz::new(subject("127.0.0.1", None), Some(&acl), &[]).unwrap();
        assert!(anon_local.may_subscribe("$events/client_connected"));
        assert!(!anon_local.may_subscribe("a/b"), "no rule: denied");
        let mut anon_remote = Authz::new(subject(remote, None), Some(&acl), &[]).unwrap();
        assert!(!anon_remote.may_subscribe("$events/#"));
        // An ACL grant opens them to a remote client.
        let mut ops = Authz::new(subject(remote, Some("ops")), Some(&acl), &[]).unwrap();
        assert!(ops.may_subscribe("$events/#"));
        assert!(ops.may_receive("$events/client_connected"));
        // A deny closes them even on loopback; `#` does not reach `$` topics.
        let mut dev = Authz::new(subject("127.0.0.1", Some("dev")), Some(&acl), &[]).unwrap();
        assert!(!dev.may_subscribe("$EVENT.CONNECT"));
        assert!(
            dev.may_subscribe("$EVENT.CLOSE"),
            "default for what no rule names"
        );
        assert!(dev.may_subscribe("x/y"));
    }

    #[test]
    fn token_claims_narrow_and_superusers_pass() {
        let acl = state("pattern readwrite devices/%c/#\n");
        let mut s = subject("10.0.0.1", None);
        s.token_acl = Some(TokenAcl {
            publish: vec!["devices/%c/up".into()],
            subscribe: vec![],
            all: vec![],
        });
        let mut a = Authz::new(s, Some(&acl), &[]).unwrap();
        assert!(a.may_publish("devices/c1/up"));
        assert!(!a.may_publish("devices/c1/other"), "the claim narrows");
        assert!(!a.may_subscribe("devices/c1/#"));
        let mut s = subject("10.0.0.1", None);
        s.superuser = true;
        let mut root = Authz::new(s, Some(&acl), &[]).unwrap();
        assert!(root.may_publish("anything"));
        assert!(root.may_subscribe("$events/#"));
    }
}
