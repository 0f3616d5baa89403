//! External authentication over HTTP, as EMQX's HTTP authenticator does it: each CONNECT
//! the local sources don't decide is POSTed as JSON to `auth_http_url`:
//!
//! ```json
//! {"clientid": "...", "username": "..." | null, "password": "..." | null,
//!  "peerhost": "10.0.0.7", "cert_common_name": "..." | null, "listener": "mqtt",
//!  "proto_ver": 4}
//! ```
//!
//! Answers: 200 with `{"result": "allow" | "deny" | "ignore", "is_superuser": bool}`
//! (an empty 2xx body, or 204, allows), 401/403 deny; anything else, no answer within
//! `auth_http_timeout_ms`, or no connection is an error, whose outcome is
//! `auth_http_on_error` (deny by default). `ignore` hands the client to the
//! anonymous-client policy.
//!
//! Answers (not errors) are cached for `auth_http_cache_ms` under a digest of the whole
//! request (the password is never kept). At most `auth_http_concurrency` requests are in
//! flight; a CONNECT waiting for one gets the error outcome when the timeout passes. The
//! CONNECT that asks waits (its own task); no other connection does.

pub mod authz;
mod endpoint;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::{AUTH_HTTP_CACHE_HITS, AUTH_HTTP_IN_FLIGHT, AUTH_HTTP_REQUESTS};
use endpoint::{Endpoint, EndpointMetrics, EndpointSettings};

/// What the authenticator said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allow { superuser: bool },
    Deny,
    Ignore,
}

/// Why there is no answer; `label` is the metric's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    ConnectError,
    HttpError(u16),
    BadResponse,
    /// No request slot free within the timeout.
    Busy,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::ConnectError => "connect_error",
            Failure::HttpError(_) => "http_error",
            Failure::BadResponse => "bad_response",
            Failure::Busy => "busy",
        }
    }
}

/// What a CONNECT presents to the authenticator.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: IpAddr,
    /// The TLS client certificate's common name (None without TLS client certificates).
    pub cert_common_name: Option<&'a str>,
    /// The listener the client came in on (`mqtt`; `mqtts`, `ws`, `wss` with TLS/WebSocket).
    pub listener: &'a str,
    pub protocol_level: u8,
}

impl AuthRequest<'_> {
    fn body(&self) -> Vec<u8> {
        let password = self.password.map(String::from_utf8_lossy);
        serde_json::to_vec(&serde_json::json!({
            "clientid": self.client_id,
            "username": self.username,
            "password": password,
            "peerhost": self.peer.to_string(),
            "cert_common_name": self.cert_common_name,
            "listener": self.listener,
            "proto_ver": self.protocol_level,
        }))
        .unwrap_or_default()
    }
}

/// The HTTP authenticator.
pub struct HttpAuth {
    endpoint: Endpoint,
    on_error_allow: bool,
}

impl HttpAuth {
    /// The authenticator `auth_http_url` configures; None when it is off.
    pub fn from_config(config: &Config) -> Option<Arc<HttpAuth>> {
        let endpoint = Endpoint::new(EndpointSettings {
            url: &config.auth_http_url,
            timeout_ms: config.auth_http_timeout_ms,
            cache_ms: config.auth_http_cache_ms,
            concurrency: config.auth_http_concurrency,
            metrics: EndpointMetrics {
                requests: AUTH_HTTP_REQUESTS,
                cache_hits: AUTH_HTTP_CACHE_HITS,
                in_flight: AUTH_HTTP_IN_FLIGHT,
            },
        })?;
        Some(Arc::new(HttpAuth {
            endpoint,
            on_error_allow: config.auth_http_on_error == "allow",
        }))
    }

    /// Whether a CONNECT the authenticator could not be asked about is let in.
    pub fn on_error_allows(&self) -> bool {
        self.on_error_allow
    }

    /// Asks about `request` (or finds the answer in the cache).
    pub async fn ask(&self, request: &AuthRequest<'_>) -> Result<Answer, Failure> {
        let body = request.body();
        let key = Endpoint::key(&body);
        if let Some(answer) = self.endpoint.cached(&key) {
            return Ok(answer);
        }
        self.endpoint.ask(key, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_every_field_and_the_key_ignores_nothing_else() {
        let r = AuthRequest {
            client_id: "c1",
            username: Some("u"),
            password: Some(b"pw"),
            peer: "10.0.0.7".parse().unwrap(),
            cert_common_name: None,
            listener: "mqtt",
            protocol_level: 5,
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"clientid": "c1", "username": "u", "password": "pw",
                "peerhost": "10.0.0.7", "cert_common_name": null, "listener": "mqtt",
                "proto_ver": 5})
        );
        let other = AuthRequest {
            password: Some(b"other"),
            ..r
        };
        assert_ne!(Endpoint::key(&r.body()), Endpoint::key(&other.body()));
    }
}
