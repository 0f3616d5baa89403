//! Posting webhook bodies: one bounded queue and one worker per URL, at most
//! `concurrency` requests in flight per URL, retries with exponential backoff on 5xx,
//! timeouts and connection errors. Every attempt is counted by outcome.
//!
//! HTTP client: hyper-util's pooled client over plain TCP (`http://` only; TLS is not
//! built in yet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, Request, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::{WEBHOOK_REQUESTS as REQUESTS, WEBHOOK_REQUEST_DURATION as DURATION};

/// First retry delay; doubled for each further retry, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How delivery behaves (from the `webhook_*` settings).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Bound on one attempt, connect to last body byte.
    pub timeout: Duration,
    /// Attempts after the first one.
    pub max_retries: u32,
    /// Requests in flight per URL.
    pub concurrency: usize,
    /// Bodies waiting per URL; more are dropped and counted.
    pub queue_capacity: usize,
}

/// How one attempt ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The server answered with a status outside 2xx.
    HttpError(u16),
    Timeout,
    /// No connection, or it broke before the answer was complete.
    ConnectError,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::HttpError(_) => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
        }
    }

    /// Worth another attempt: the server may recover. A 4xx will not change.
    fn retryable(self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::HttpError(status) => status >= 500,
            Outcome::Timeout | Outcome::ConnectError => true,
        }
    }
}

/// Counts a body that never got a request (queue full, or shut down first).
pub fn count_dropped(n: u64) {
    metrics::counter!(REQUESTS, "outcome" => "dropped").increment(n);
}

/// A pooled HTTP/1.1 client that POSTs JSON.
#[derive(Clone)]
pub struct Poster {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Poster {
    pub fn new(timeout: Duration) -> Poster {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Poster {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// One attempt, counted and timed.
    pub async fn post(&self, uri: &Uri, body: Bytes) -> Outcome {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.attempt(uri, body)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Timeout,
        };
        metrics::counter!(REQUESTS, "outcome" => outcome.label()).increment(1);
        metrics::histogram!(DURATION).record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn attempt(&self, uri: &Uri, body: Bytes) -> Outcome {
        let request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let Ok(request) = request else {
            // The URI was validated at startup; nothing else here can fail.
            return Outcome::ConnectError;
        };
        match self.client.request(request).await {
            Ok(response) => {
                let status = response.status();
                // Read the answer to the end so the connection goes back to the pool.
                if response.into_body().collect().await.is_err() {
                    return Outcome::ConnectError;
                }
                if status.is_success() {
                    Outcome::Success
                } else {
                    Outcome::HttpError(status.as_u16())
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, connect = e.is_connect(), "webhook request failed");
                Outcome::ConnectError
            }
        }
    }
}

/// Delay before retry number `retry` (1-based).
fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Posts `body` until it succeeds, fails for good, or the attempts run out.
async fn deliver(poster: &Poster, uri: &Uri, body: Bytes, max_retries: u32) -> Outcome {
    let mut retry = 0;
    loop {
        let outcome = poster.post(uri, body.clone()).await;
        if !outcome.retryable() || retry >= max_retries {
            if outcome != Outcome::Success {
                tracing::warn!(url = %uri, outcome = outcome.label(), attempts = retry + 1, "webhook delivery failed");
            }
            return outcome;
        }
        retry += 1;
        tokio::time::sleep(backoff(retry)).await;
    }
}

/// Sends to every URL's queue without waiting; a full queue drops (and counts) the body.
pub struct Queues {
    senders: Vec<mpsc::Sender<Bytes>>,
}

impl Queues {
    /// Starts one worker per URL in `workers`; the workers end once every body queued
    /// before the `Queues` was dropped has been delivered or given up on.
    pub fn start(urls: &[Uri], settings: &DeliverySettings, workers: &mut JoinSet<()>) -> Queues {
        let poster = Poster::new(settings.timeout);
        let senders = urls
            .iter()
            .map(|uri| {
                let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
                workers.spawn(worker(
                    uri.clone(),
                    rx,
                    poster.clone(),
                    settings.concurrency.max(1),
                    settings.max_retries,
                ));
                tx
            })
            .collect();
        Queues { senders }
    }

    pub fn push(&self, body: Bytes) {
        for tx in &self.senders {
            if tx.try_send(body.clone()).is_err() {
                count_dropped(1);
            }
        }
    }
}

async fn worker(
    uri: Uri,
    mut jobs: mpsc::Receiver<Bytes>,
    poster: Poster,
    concurrency: usize,
    max_retries: u32,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut inflight = JoinSet::new();
    while let Some(body) = jobs.recv().await {
        while inflight.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (poster, uri) = (poster.clone(), uri.clone());
        inflight.spawn(async move {
            deliver(&poster, &uri, body, max_retries).await;
            drop(permit);
        });
    }
    while inflight.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn only_server_side_failures_are_retried() {
        assert!(!Outcome::Success.retryable());
        assert!(!Outcome::HttpError(404).retryable());
        assert!(Outcome::HttpError(503).retryable());
        assert!(Outcome::Timeout.retryable());
        assert!(Outcome::ConnectError.retryable());
    }
}
