//! The HTTP listener, bounded like the MQTT one: at most `http_max_connections` open
//! connections (more are closed at once, counted), and every connection watched by
//! deadlines (see [`super::connection`]) so that slow or idle clients cannot hold file
//! descriptors the MQTT listener needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use crate::accept_backoff::AcceptBackoff;
use crate::config::Config;
use crate::metrics::HTTP_CONNECTIONS_REFUSED;

/// What the HTTP server allows a connection; from the `http_*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// From a request's first byte (the connection's opening, for the first request) to
    /// the end of its header.
    pub header_timeout: Duration,
    /// Between requests; also how long a response may wait for the client to read it.
    pub idle_timeout: Duration,
    /// From a request's header to the end of its body.
    pub body_timeout: Duration,
    /// The largest request body.
    pub max_body_bytes: u64,
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            max_connections: config.http_max_connections,
            header_timeout: Duration::from_millis(config.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(config.http_idle_timeout_ms),
            body_timeout: Duration::from_millis(config.http_body_timeout_ms),
            max_body_bytes: config.http_max_body_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from_config(&Config::default())
    }
}

/// How often a refused connection is logged at most (each one is counted).
const LOG_REFUSALS_EVERY: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting,
/// closes idle connections and waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The server bounds every body (see `connection`); axum's own 2 MB default would
    // otherwise cap `http_max_body_bytes` for the extractors.
    let router = router.layer(DefaultBodyLimit::disable());
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut backoff = AcceptBackoff::new("http");
    let mut refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                backoff.failed(&e, &shutdown).await;
                continue;
            }
        };
        backoff.succeeded();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed before a byte is read: the client sees the connection end at once
            // instead of waiting in a queue for a slot.
            drop(stream);
            refusals.count(limits.max_connections);
            continue;
        };
        connections.spawn(connection::serve(
            stream,
            peer,
            router.clone(),
            limits.clone(),
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Connections closed for want of a slot: each counted, logged at most every
/// [`LOG_REFUSALS_EVERY`].
#[derive(Default)]
struct Refusals {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn count(&mut self, limit: usize) {
        ::metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < LOG_REFUSALS_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            http_max_connections = limit,
            unlogged = self.unlogged,
            "HTTP connection limit reached; closing new connections"
        );
        self.logged_at = Some(now);
        self.unlogged = 0;
    }
}
