//! External authorization over HTTP, as EMQX's HTTP authorizer does it: each PUBLISH and
//! each SUBSCRIBE filter that nothing decided before (a superuser, a token's `acl` claim)
//! is POSTed as JSON to `auth_http_acl_url`:
//!
//! ```json
//! {"clientid": "...", "username": "..." | null, "peerhost": "10.0.0.7",
//!  "listener": "mqtt", "action": "publish" | "subscribe", "topic": "a/b",
//!  "qos": 1, "retain": false}
//! ```
//!
//! (`topic` is the filter for a SUBSCRIBE, without `$share/{group}/`; `qos` the QoS
//! requested; `retain` false.) Answers as for the authenticator: 200 with `{"result":
//! "allow" | "deny" | "ignore"}` (an empty 2xx body, or 204, allows), 401/403 deny;
//! `ignore` hands the decision to the ACL file (or the default). Anything else, no answer
//! within `auth_http_acl_timeout_ms` or no connection gets `auth_http_acl_on_error`
//! (deny by default; `ignore` falls through as the answer would).
//!
//! Answers are cached for `auth_http_acl_cache_ms` under a SHA-256 of the request; at
//! most `auth_http_acl_concurrency` requests are in flight. Only the connection whose
//! packet is being decided waits (see `connection/authorize.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::endpoint::{Endpoint, EndpointMetrics, EndpointSettings, Key};
use super::Answer;
use crate::config::Config;
use crate::log_limit::LogLimit;
use crate::metrics::{AUTHZ_HTTP_CACHE_HITS, AUTHZ_HTTP_IN_FLIGHT, AUTHZ_HTTP_REQUESTS};

/// What the authorizer decided (or `auth_http_acl_on_error` for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// The ACL file (or the default) decides.
    Ignore,
}

impl Decision {
    fn of(answer: Answer) -> Decision {
        match answer {
            Answer::Allow { .. } => Decision::Allow,
            Answer::Deny => Decision::Deny,
            Answer::Ignore => Decision::Ignore,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// What one PUBLISH or SUBSCRIBE filter presents to the authorizer.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub peer: IpAddr,
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub listener: &'a str,
    pub action: Action,
    pub topic: &'a str,
    pub qos: u8,
    pub retain: bool,
}

impl AuthzRequest<'_> {
    fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "clientid": self.client_id,
            "username": self.username,
            "peerhost": self.peer.to_string(),
            "listener": self.listener,
            "action": self.action.as_str(),
            "topic": self.topic,
            "qos": self.qos,
            "retain": self.retain,
        }))
        .unwrap_or_default()
    }
}

/// A request whose answer is not cached: to be asked (with [`HttpAuthz::ask`]) by the
/// connection's task, after it stopped handling its input.
#[derive(Debug)]
pub struct Question {
    key: Key,
    body: Vec<u8>,
}

/// What the cache knows about a request.
#[derive(Debug)]
pub enum Lookup {
    Known(Decision),
    Ask(Question),
}

/// An unreachable or failing authorization server, logged once a minute at most.
static FAILURE_LOG: LogLimit = LogLimit::new(Duration::from_secs(60));

/// The HTTP authorizer.
pub struct HttpAuthz {
    endpoint: Endpoint,
    on_error: Decision,
}

impl HttpAuthz {
    /// The authorizer `auth_http_acl_url` configures; None when it is off.
    pub fn from_config(config: &Config) -> Option<Arc<HttpAuthz>> {
        let endpoint = Endpoint::new(EndpointSettings {
            url: &config.auth_http_acl_url,
            timeout_ms: config.auth_http_acl_timeout_ms,
            cache_ms: config.auth_http_acl_cache_ms,
            concurrency: config.auth_http_acl_concurrency,
            metrics: EndpointMetrics {
                requests: AUTHZ_HTTP_REQUESTS,
                cache_hits: AUTHZ_HTTP_CACHE_HITS,
                in_flight: AUTHZ_HTTP_IN_FLIGHT,
            },
        })?;
        let on_error = match config.auth_http_acl_on_error.as_str() {
            "allow" => Decision::Allow,
            "ignore" => Decision::Ignore,
            _ => Decision::Deny,
        };
        Some(Arc::new(HttpAuthz { endpoint, on_error }))
    }

    /// The cached decision about `request`, or the question to ask.
    pub fn lookup(&self, request: &AuthzRequest<'_>) -> Lookup {
        let body = request.body();
        let key = Endpoint::key(&body);
        match self.endpoint.cached(&key) {
            Some(answer) => Lookup::Known(Decision::of(answer)),
            None => Lookup::Ask(Question { key, body }),
        }
    }

    /// Asks the server; its failures get the `auth_http_acl_on_error` outcome. Bounded by
    /// `auth_http_acl_timeout_ms`.
    pub async fn ask(&self, question: Question) -> Decision {
        match self.endpoint.ask(question.key, question.body).await {
            Ok(answer) => Decision::of(answer),
            Err(failure) => {
                if let Some(left_out) = FAILURE_LOG.allow() {
                    tracing::warn!(
                        outcome = failure.label(),
                        decision = ?self.on_error,
                        similar_lines_left_out = left_out,
                        "the authorization server could not be asked; auth_http_acl_on_error decides"
                    );
                }
                self.on_error
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_every_field() {
        let r = AuthzRequest {
            client_id: "c1",
            username: None,
            peer: "10.0.0.7".parse().unwrap(),
            listener: "ws",
            action: Action::Subscribe,
            topic: "a/+",
            qos: 1,
            retain: false,
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"clientid": "c1", "username": null, "peerhost": "10.0.0.7",
                "listener": "ws", "action": "subscribe", "topic": "a/+", "qos": 1,
                "retain": false})
        );
        let publish = AuthzRequest {
            action: Action::Publish,
            ..r
        };
        assert_ne!(Endpoint::key(&r.body()), Endpoint::key(&publish.body()));
    }
}
