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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, Request as HttpRequest, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::{AUTH_HTTP_CACHE_HITS, AUTH_HTTP_IN_FLIGHT, AUTH_HTTP_REQUESTS};

/// Cached answers at most; past it, answers are not cached until entries expire.
const MAX_CACHED: usize = 100_000;
/// Largest answer body read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

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

#[derive(Deserialize)]
struct Reply {
    result: String,
    #[serde(default)]
    is_superuser: bool,
}

/// The HTTP authenticator.
pub struct HttpAuth {
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    cache_ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Instant, Answer)>>,
    permits: Semaphore,
    on_error_allow: bool,
}

impl HttpAuth {
    /// The authenticator `auth_http_url` configures; None when it is off.
    pub fn from_config(config: &Config) -> Option<Arc<HttpAuth>> {
        let uri = crate::events::webhook::parse_urls(&config.auth_http_url)
            .ok()?
            .into_iter()
            .next()?;
        let timeout = Duration::from_millis(config.auth_http_timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Some(Arc::new(HttpAuth {
            uri,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            cache_ttl: Duration::from_millis(config.auth_http_cache_ms),
            cache: Mutex::new(HashMap::new()),
            permits: Semaphore::new(config.auth_http_concurrency.max(1)),
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
        let key: [u8; 32] = Sha256::digest(&body).into();
        if let Some(answer) = self.cached(&key) {
            metrics::counter!(AUTH_HTTP_CACHE_HITS).increment(1);
            return Ok(answer);
        }
        let deadline = Instant::now() + self.timeout;
        let outcome = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(_permit)) => {
                let gauge = metrics::gauge!(AUTH_HTTP_IN_FLIGHT);
                gauge.increment(1.0);
                let outcome = tokio::time::timeout_at(deadline, self.post(Bytes::from(body)))
                    .await
                    .unwrap_or(Err(Failure::Timeout));
                gauge.decrement(1.0);
                outcome
            }
            _ => Err(Failure::Busy),
        };
        let label = match outcome {
            Ok(Answer::Allow { superuser: true }) => "superuser",
            Ok(Answer::Allow { .. }) => "allow",
            Ok(Answer::Deny) => "deny",
            Ok(Answer::Ignore) => "ignore",
            Err(f) => f.label(),
        };
        metrics::counter!(AUTH_HTTP_REQUESTS, "outcome" => label).increment(1);
        if let Ok(answer) = outcome {
            self.remember(key, answer);
        }
        outcome
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Answer> {
        if self.cache_ttl.is_zero() {
            return None;
        }
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, answer)| *answer)
    }

    fn remember(&self, key: [u8; 32], answer: Answer) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                return;
            }
        }
        cache.insert(key, (now + self.cache_ttl, answer));
    }

    async fn post(&self, body: Bytes) -> Result<Answer, Failure> {
        let request = HttpRequest::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|_| Failure::ConnectError)?;
        let response = self.client.request(request).await.map_err(|e| {
            tracing::debug!(error = %e, "authentication request failed");
            Failure::ConnectError
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| Failure::BadResponse)?
            .to_bytes();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(Answer::Deny);
        }
        if !status.is_success() {
            return Err(Failure::HttpError(status.as_u16()));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Answer::Allow { superuser: false });
        }
        let reply: Reply = serde_json::from_slice(&body).map_err(|_| Failure::BadResponse)?;
        match reply.result.as_str() {
            "allow" => Ok(Answer::Allow {
                superuser: reply.is_superuser,
            }),
            "deny" => Ok(Answer::Deny),
            "ignore" => Ok(Answer::Ignore),
            _ => Err(Failure::BadResponse),
        }
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
        assert_ne!(Sha256::digest(r.body()), Sha256::digest(other.body()));
    }
}
