//! One HTTP decision server as the authenticator and the authorizer both use it: a JSON
//! POST, its answer (`allow` / `deny` / `ignore`), a bound on requests in flight, a timeout
//! covering the wait for a request slot, and a cache of answers keyed by a SHA-256 of the
//! request body (so nothing of the request itself, a password say, is kept).

use std::collections::HashMap;
use std::sync::Mutex;
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

use super::{Answer, Failure};

/// Cached answers at most; past it, answers are not cached until entries expire.
const MAX_CACHED: usize = 100_000;
/// Largest answer body read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// The metric names one endpoint counts under.
pub struct EndpointMetrics {
    /// Counter {outcome}.
    pub requests: &'static str,
    /// Counter.
    pub cache_hits: &'static str,
    /// Gauge.
    pub in_flight: &'static str,
}

/// How an endpoint is set up (from the `auth_http_*` or `auth_http_acl_*` settings).
pub struct EndpointSettings<'a> {
    pub url: &'a str,
    pub timeout_ms: u64,
    pub cache_ms: u64,
    pub concurrency: usize,
    pub metrics: EndpointMetrics,
}

/// The digest a request is cached under.
pub type Key = [u8; 32];

#[derive(Deserialize)]
struct Reply {
    result: String,
    #[serde(default)]
    is_superuser: bool,
}

/// An HTTP decision server.
pub struct Endpoint {
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    cache_ttl: Duration,
    cache: Mutex<HashMap<Key, (Instant, Answer)>>,
    permits: Semaphore,
    metrics: EndpointMetrics,
}

impl Endpoint {
    /// None when `url` is empty (the configuration checked its shape).
    pub fn new(settings: EndpointSettings<'_>) -> Option<Endpoint> {
        let uri = crate::events::webhook::parse_urls(settings.url)
            .ok()?
            .into_iter()
            .next()?;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Some(Endpoint {
            uri,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            cache_ttl: Duration::from_millis(settings.cache_ms),
            cache: Mutex::new(HashMap::new()),
            permits: Semaphore::new(settings.concurrency.max(1)),
            metrics: settings.metrics,
        })
    }

    pub fn key(body: &[u8]) -> Key {
        Sha256::digest(body).into()
    }

    /// The cached answer for `key`, counted as a hit; None when there is none (or it
    /// expired).
    pub fn cached(&self, key: &Key) -> Option<Answer> {
        if self.cache_ttl.is_zero() {
            return None;
        }
        let answer = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(key)
                .filter(|(until, _)| *until > Instant::now())
                .map(|(_, answer)| *answer)
        };
        if answer.is_some() {
            metrics::counter!(self.metrics.cache_hits).increment(1);
        }
        answer
    }

    /// Asks the server about `body` (whose digest is `key`), without looking at the cache
    /// first; an answer is cached, an error is not.
    pub async fn ask(&self, key: Key, body: Vec<u8>) -> Result<Answer, Failure> {
        let deadline = Instant::now() + self.timeout;
        let outcome = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(_permit)) => {
                let gauge = metrics::gauge!(self.metrics.in_flight);
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
        metrics::counter!(self.metrics.requests, "outcome" => label).increment(1);
        if let Ok(answer) = outcome {
            self.remember(key, answer);
        }
        outcome
    }

    fn remember(&self, key: Key, answer: Answer) {
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
            tracing::debug!(error = %e, uri = %self.uri, "decision request failed");
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
