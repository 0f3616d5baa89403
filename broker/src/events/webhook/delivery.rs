//! Posting webhook bodies: per URL, `concurrency` lanes, each a bounded queue with one
//! worker that posts its bodies one after another (retries included), so at most
//! `concurrency` requests are in flight per URL. A body goes to the lane its client id
//! hashes to: the requests of one client arrive in order (a receiver never sees
//! `client_connected` before `client_connect`), those of different clients in parallel.
//! Retries with exponential backoff on 5xx, timeouts and connection errors; a body that
//! is being retried holds up the later bodies of its lane. Every attempt is counted by
//! outcome.
//!
//! HTTP client: hyper-util's pooled client over plain TCP (`http://` only; TLS is not
//! built in yet).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use axum::http::{header, Request, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
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
    /// Requests in flight per URL: its number of lanes.
    pub concurrency: usize,
    /// Bodies waiting per URL, shared evenly by its lanes; more are dropped and counted.
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

/// Sends to every URL's lanes without waiting; a full lane drops (and counts) the body.
pub struct Queues {
    /// Per URL, the senders of its lanes.
    urls: Vec<Vec<mpsc::Sender<Bytes>>>,
}

impl Queues {
    /// Starts the lanes of every URL in `workers`; they end once every body queued before
    /// the `Queues` was dropped has been delivered or given up on.
    pub fn start(urls: &[Uri], settings: &DeliverySettings, workers: &mut JoinSet<()>) -> Queues {
        let poster = Poster::new(settings.timeout);
        let lanes = settings.concurrency.max(1);
        let capacity = settings.queue_capacity.max(1).div_ceil(lanes);
        let urls = urls
            .iter()
            .map(|uri| {
                (0..lanes)
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(capacity);
                        workers.spawn(lane(uri.clone(), rx, poster.clone(), settings.max_retries));
                        tx
                    })
                    .collect()
            })
            .collect();
        Queues { urls }
    }

    /// Queues `body` for every URL, on the lane of `client_id`.
    pub fn push(&self, client_id: &str, body: Bytes) {
        for lanes in &self.urls {
            let tx = &lanes[lane_of(client_id, lanes.len())];
            if tx.try_send(body.clone()).is_err() {
                count_dropped(1);
            }
        }
    }
}

/// The lane of `client_id` among `lanes`: always the same one for a client.
pub fn lane_of(client_id: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    client_id.hash(&mut hasher);
    (hasher.finish() % lanes.max(1) as u64) as usize
}

/// One lane: posts its bodies strictly one after another.
async fn lane(uri: Uri, mut jobs: mpsc::Receiver<Bytes>, poster: Poster, max_retries: u32) {
    while let Some(body) = jobs.recv().await {
        deliver(&poster, &uri, body, max_retries).await;
    }
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

    #[test]
    fn a_client_always_gets_the_same_lane_and_clients_spread() {
        assert_eq!(lane_of("dev-1", 4), lane_of("dev-1", 4));
        assert_eq!(lane_of("anything", 1), 0);
        assert_eq!(lane_of("anything", 0), 0);
        let used: std::collections::HashSet<usize> =
            (0..64).map(|i| lane_of(&format!("c{i}"), 4)).collect();
        assert_eq!(used.len(), 4, "64 clients over 4 lanes use them all");
    }
}
