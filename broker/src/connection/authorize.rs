//! The HTTP authorizer (`auth_http_acl_url`, see `auth_http/authz.rs`) in the handling of
//! a PUBLISH or SUBSCRIBE.
//!
//! Order of the decision: a superuser may do anything and a token's `acl` claim refuses
//! what it does not list (neither asks); then the authorizer's `allow` / `deny` decides;
//! its `ignore` (or no authorizer) leaves it to the ACL file and the default.
//!
//! A cached answer decides at once. Otherwise the packet comes back as
//! [`After::Authorize`]: the connection stops handling its read buffer, sets its input
//! aside in the node's input order (so that neither what it read nor what arrives
//! meanwhile holds other connections' publishes back, as for a storage flush), waits for
//! the answer in its own task, and then handles the packet, and only then the packets
//! read after it. So a PUBLISH waiting for its answer neither overtakes nor is overtaken
//! by the same connection's other packets, and other connections never wait for it. A kick
//! ends the wait (see `Connection::authorize_then_handle`).

use std::sync::Arc;

use super::inbound::After;
use super::publish_acks::Acks;
use super::{admission, kicked, Batch, Close, Connection};
use crate::auth_http::authz::{Action, AuthzRequest, Decision, Lookup, Question};
use crate::codec::{Publish, Subscribe};
use crate::events::access;
use crate::session::HeldWakes;
use crate::topic;

/// What is known about one PUBLISH now.
pub(super) enum Authorization {
    /// Allowed (true) or refused.
    Decided(bool),
    /// The authorizer must be asked.
    Ask(Question),
}

/// A packet waiting for the authorizer's answer.
pub(super) enum Pending {
    Publish {
        publish: Publish,
        topic: Arc<str>,
        question: Question,
    },
    Subscribe {
        subscribe: Subscribe,
        /// One per filter: known already, or None (not asked, or asked below).
        decisions: Vec<Option<Decision>>,
        /// The filters asked about, by index.
        questions: Vec<(usize, Question)>,
    },
}

/// A [`Pending`] packet with its answers.
pub(super) enum Answered {
    Publish {
        publish: Publish,
        topic: Arc<str>,
        decision: Decision,
    },
    Subscribe {
        subscribe: Subscribe,
        decisions: Vec<Option<Decision>>,
    },
}

impl Connection {
    /// The cached decision on `action` for `topic`, or the question to ask; None when the
    /// authorizer is not asked (off, or decided before it: see the module docs).
    fn http_lookup(&self, action: Action, topic: &str, qos: u8, retain: bool) -> Option<Lookup> {
        let http = self.broker.authz_http.as_deref()?;
        let settled = self.authz.as_deref().and_then(|a| match action {
            Action::Publish => a.publish_settled(topic),
            Action::Subscribe => a.subscribe_settled(topic),
        });
        if settled.is_some() {
            return None;
        }
        Some(http.lookup(&AuthzRequest {
            client_id: self.info.client_id.as_str(),
            username: self.info.username.as_deref(),
            peer: self.info.peer.ip(),
            listener: admission::listener_of(&self.socket),
            action,
            topic,
            qos,
            retain,
        }))
    }

    /// Whether the client may publish `p` to `topic`, if that is known without waiting.
    pub(super) fn publish_authorization(&mut self, topic: &str, p: &Publish) -> Authorization {
        let http = match self.http_lookup(Action::Publish, topic, p.qos as u8, p.retain) {
            None => None,
            Some(Lookup::Known(decision)) => Some(decision),
            Some(Lookup::Ask(question)) => return Authorization::Ask(question),
        };
        Authorization::Decided(self.publish_allowed(topic, http))
    }

    /// Whether the client may publish to `topic`, given the authorizer's decision (None:
    /// not asked).
    fn publish_allowed(&mut self, topic: &str, http: Option<Decision>) -> bool {
        match http {
            Some(Decision::Allow) => true,
            Some(Decision::Deny) => false,
            Some(Decision::Ignore) | None => {
                self.authz.as_mut().is_none_or(|a| a.may_publish(topic))
            }
        }
    }

    /// The authorizer's decisions on the filters of `s` (None for a filter it is not
    /// asked about), or the SUBSCRIBE as a pending packet when some must be asked.
    pub(super) fn subscribe_authorization(
        &self,
        s: Subscribe,
    ) -> Result<(Subscribe, Vec<Option<Decision>>), Box<Pending>> {
        let mut decisions = Vec::new();
        let mut questions = Vec::new();
        if self.broker.authz_http.is_none() {
            return Ok((s, decisions));
        }
        for (i, (filter, options)) in s.filters.iter().enumerate() {
            let inner = topic::parse_subscription(filter)
                .ok()
                .map(|(_, inner)| inner);
            let lookup = inner.and_then(|inner| {
                self.http_lookup(Action::Subscribe, inner, options.qos as u8, false)
            });
            decisions.push(match lookup {
                None => None,
                Some(Lookup::Known(decision)) => Some(decision),
                Some(Lookup::Ask(question)) => {
                    questions.push((i, question));
                    None
                }
            });
        }
        if questions.is_empty() {
            return Ok((s, decisions));
        }
        Err(Box::new(Pending::Subscribe {
            subscribe: s,
            decisions,
            questions,
        }))
    }

    /// Whether the client may subscribe to `inner` (a filter without `$share/{group}/`),
    /// given the authorizer's decision (None: not asked).
    pub(super) fn subscribe_allowed(&mut self, inner: &str, http: Option<Decision>) -> bool {
        match http {
            Some(Decision::Allow) => return true,
            Some(Decision::Deny) => return false,
            Some(Decision::Ignore) | None => {}
        }
        match self.authz.as_mut() {
            Some(authz) => authz.may_subscribe(inner),
            None if access::is_event_filter(inner) => {
                let info = &self.info;
                let allowed = &self.broker.config.events_subscribe_usernames;
                // A username only counts when a source (password file, token, HTTP
                // authenticator) vouched for it: anyone can claim one otherwise.
                let username = info.username.as_deref().filter(|_| self.username_verified);
                access::may_subscribe(info.peer.ip(), username, allowed)
            }
            None => true,
        }
    }

    /// Asks the authorizer what `pending` needs (a SUBSCRIBE's filters at once). Bounded
    /// by `auth_http_acl_timeout_ms`; only this connection waits.
    pub(super) async fn ask_authorizer(&mut self, pending: Pending) -> Answered {
        // Whatever was read so far is handled up to this packet; nothing of it may hold
        // other connections' publishes back while this one waits.
        self.set_input_aside();
        let Some(http) = self.broker.authz_http.clone() else {
            // Not reached: a pending packet exists only with an authorizer.
            return match pending {
                Pending::Publish { publish, topic, .. } => Answered::Publish {
                    publish,
                    topic,
                    decision: Decision::Ignore,
                },
                Pending::Subscribe {
                    subscribe,
                    decisions,
                    ..
                } => Answered::Subscribe {
                    subscribe,
                    decisions,
                },
            };
        };
        match pending {
            Pending::Publish {
                publish,
                topic,
                question,
            } => Answered::Publish {
                publish,
                topic,
                decision: http.ask(question).await,
            },
            Pending::Subscribe {
                subscribe,
                mut decisions,
                questions,
            } => {
                let (indexes, asked): (Vec<usize>, Vec<Question>) = questions.into_iter().unzip();
                let answers =
                    futures_util::future::join_all(asked.into_iter().map(|q| http.ask(q))).await;
                for (i, answer) in indexes.into_iter().zip(answers) {
                    if let Some(slot) = decisions.get_mut(i) {
                        *slot = Some(answer);
                    }
                }
                Answered::Subscribe {
                    subscribe,
                    decisions,
                }
            }
        }
    }

    /// Asks the HTTP authorizer about `pending`, then handles it; what that leaves to
    /// do comes back as a batch's end (None: nothing).
    pub(super) async fn authorize_then_handle(
        &mut self,
        pending: Pending,
    ) -> Result<Option<Batch>, Close> {
        // A kick (takeover, operator, shutdown) ends the wait at once: the answer may be
        // up to `auth_http_acl_timeout_ms` away.
        let kick_rx = self.kick_rx.clone();
        let answered = tokio::select! {
            answered = self.ask_authorizer(pending) => answered,
            kick = kick_rx.recv() => return Err(kicked(kick, &self.broker, self.id)),
        };
        let mut acks = Acks::default();
        let after = self.resume_authorized(answered, &mut acks);
        if let Some(acks) = acks.into_pending() {
            Box::pin(self.settle_acks(acks)).await?;
        }
        Ok(match after? {
            After::Nothing => None,
            After::FlushThenSend(ack) => Some(Batch::FlushThenSend(ack)),
            After::RouteInOrder(deferred) => Some(Batch::RouteInOrder(deferred)),
            After::Cluster(step) => Some(Batch::Cluster(step)),
            After::Authorize(pending) => Some(Batch::Authorize(pending)),
        })
    }

    /// Handles a packet once the authorizer answered, as if it had been handled at once.
    pub(super) fn resume_authorized(
        &mut self,
        answered: Answered,
        acks: &mut Acks,
    ) -> Result<After, Close> {
        // Taken over while waiting: nothing more from this connection may touch the session.
        self.ensure_attached()?;
        match answered {
            Answered::Publish {
                publish,
                topic,
                decision,
            } => {
                if self.publish_allowed(&topic, Some(decision)) {
                    // Released (dropped) on return, before anything waits.
                    let mut held = HeldWakes::default();
                    self.publish_authorized(publish, topic, &mut held, acks)
                } else {
                    crate::metrics::authz_denied("publish");
                    Ok(self.refuse_unauthorized_publish(publish, topic, acks))
                }
            }
            Answered::Subscribe {
                subscribe,
                decisions,
            } => self.subscribe_decided(subscribe, &decisions),
        }
    }
}
