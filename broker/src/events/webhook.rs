//! The webhook dialect (seed 004): each wanted event is POSTed as JSON to every configured
//! URL, from tasks of its own, so a slow or dead web server never slows MQTT traffic.
//!
//! Pipeline: the event bus (bounded, drops counted in `skein_events_dropped_total`) feeds
//! one dispatcher, which renders the bodies the rules want and queues them per URL on the
//! lane of their client (bounded, drops counted as
//! `skein_webhook_requests_total{outcome="dropped"}`); each lane posts its bodies one after
//! another, so a client's requests arrive in the order its events happened (see
//! [`delivery`]).

pub mod body;
pub mod delivery;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use axum::http::Uri;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sink_task::SinkTask;
use super::{Event, EventBus, EventSettings, NodeInfo};
use delivery::{DeliverySettings, Queues};
use rules::Rules;

/// The dialect name on the bus and in `skein_events_dropped_total`.
pub const DIALECT: &str = "webhook";

/// Why a `webhook_urls` setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{0:?} is not a URL")]
    Invalid(String),
    #[error("{0:?}: https is not supported yet, use http://")]
    Https(String),
    #[error("{0:?}: only http:// URLs are supported")]
    Scheme(String),
}

/// Parses the comma-separated `webhook_urls` setting (blank entries ignored).
pub fn parse_urls(text: &str) -> Result<Vec<Uri>, UrlError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let uri: Uri = s.parse().map_err(|_| UrlError::Invalid(s.to_owned()))?;
            match uri.scheme_str() {
                Some("http") if uri.authority().is_some() => Ok(uri),
                Some("http") => Err(UrlError::Invalid(s.to_owned())),
                Some("https") => Err(UrlError::Https(s.to_owned())),
                _ => Err(UrlError::Scheme(s.to_owned())),
            }
        })
        .collect()
}

/// A registered, not yet started webhook dialect.
pub struct WebhookDialect {
    events: mpsc::Receiver<Arc<Event>>,
    node: NodeInfo,
    rules: Rules,
    urls: Vec<Uri>,
    settings: DeliverySettings,
}

/// Registers the webhook on `bus` when `webhook_urls` is set. The settings were checked
/// when the configuration was loaded; should they still not parse, the webhook stays off
/// (and says why) rather than taking the node down.
/// `settings`: the event settings, e.g. `&Config`.
pub fn register(bus: &mut EventBus, settings: impl Into<EventSettings>) -> Option<WebhookDialect> {
    let settings = settings.into();
    let urls = match parse_urls(&settings.webhook_urls) {
        Ok(urls) if urls.is_empty() => return None,
        Ok(urls) => urls,
        Err(e) => {
            tracing::error!(error = %e, "webhook_urls: webhook disabled");
            return None;
        }
    };
    let rules = match Rules::parse(&settings.webhook_rules) {
        Ok(rules) => rules,
        Err(e) => {
            tracing::error!(error = %e, "webhook_rules: webhook disabled");
            return None;
        }
    };
    let events = bus.add_sink(DIALECT, rules.kinds(), settings.webhook_queue_capacity);
    tracing::info!(urls = urls.len(), "webhook enabled");
    Some(WebhookDialect {
        events,
        node: bus.node().clone(),
        rules,
        urls,
        settings: DeliverySettings {
            timeout: Duration::from_millis(settings.webhook_timeout_ms),
            max_retries: settings.webhook_max_retries,
            concurrency: settings.webhook_concurrency,
            queue_capacity: settings.webhook_queue_capacity,
        },
    })
}

impl WebhookDialect {
    /// Starts posting. [`SinkTask::finish`] posts what was raised until then, within its
    /// grace period.
    pub fn start(self) -> SinkTask {
        SinkTask::spawn(DIALECT, move |stop| self.run(stop))
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut workers = JoinSet::new();
        let queues = Queues::start(&self.urls, &self.settings, &mut workers);
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.dispatch(&event, &queues),
                    None => break,
                },
                () = stop.cancelled() => {
                    while let Ok(event) = self.events.try_recv() {
                        self.dispatch(&event, &queues);
                    }
                    break;
                }
            }
        }
        // Closing the queues lets each worker finish what it holds, then end.
        drop(queues);
        while workers.join_next().await.is_some() {}
    }

    fn dispatch(&self, event: &Event, queues: &Queues) {
        for (action, body) in body::render(event, &self.node, &self.rules) {
            match serde_json::to_vec(&body) {
                Ok(bytes) => queues.push(event.client.client_id.as_str(), Bytes::from(bytes)),
                Err(e) => {
                    tracing::error!(action = action.as_str(), error = %e, "webhook body not serialisable")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
