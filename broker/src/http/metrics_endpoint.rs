//! `GET /metrics` in the Prometheus text format, and the gauges computed from broker state
//! when it is scraped (sums over sessions, retained messages, parked connections, event
//! queue depths), so the hot path never maintains them. The series themselves are defined
//! and updated in `crate::metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::broker::Broker;
use crate::connection::park::ParkerHandle;
use crate::metrics::{
    CONNECTIONS_PARKED, EVENT_QUEUE_DEPTH, INFLIGHT_MESSAGES, LOG_LINES_DROPPED, QUEUED_MESSAGES,
    RETAINED_MESSAGES, SESSIONS, SUBSCRIPTIONS,
};

/// Sums over the sessions of this node, taken when Prometheus scrapes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionTotals {
    pub online: usize,
    pub offline: usize,
    pub subscriptions: usize,
    pub inflight: usize,
    pub queued: usize,
}

/// Walks the session registry. Each session is locked briefly, one at a time; the
/// registry itself is only held to copy the list.
pub fn session_totals(broker: &Broker) -> SessionTotals {
    let mut t = SessionTotals::default();
    for session in broker.sessions_snapshot() {
        let st = session.state();
        if st.removed {
            continue;
        }
        if st.is_online() {
            t.online += 1;
        } else {
            t.offline += 1;
        }
        t.subscriptions += st.subscriptions.len();
        t.inflight += st.inflight.len();
        t.queued += st.queue.len();
    }
    t
}

/// Sets the gauges that are computed from broker state.
pub fn record_state(broker: &Broker, parker: &ParkerHandle) {
    let t = session_totals(broker);
    metrics::gauge!(SESSIONS, "state" => "online").set(t.online as f64);
    metrics::gauge!(SESSIONS, "state" => "offline").set(t.offline as f64);
    metrics::gauge!(SUBSCRIPTIONS).set(t.subscriptions as f64);
    metrics::gauge!(INFLIGHT_MESSAGES).set(t.inflight as f64);
    metrics::gauge!(QUEUED_MESSAGES).set(t.queued as f64);
    metrics::gauge!(RETAINED_MESSAGES).set(broker.retained.len() as f64);
    metrics::gauge!(CONNECTIONS_PARKED).set(parker.parked() as f64);
    for (dialect, depth) in broker.events.queue_depths() {
        metrics::gauge!(EVENT_QUEUE_DEPTH, "dialect" => dialect).set(depth as f64);
    }
    // Counted outside the recorder: logging starts before it is installed.
    metrics::counter!(LOG_LINES_DROPPED).absolute(crate::log_writer::lines_dropped());
    crate::metrics::record_storage(broker.store.health());
}

#[derive(Clone)]
struct MetricsState {
    handle: PrometheusHandle,
    broker: Arc<Broker>,
    parker: ParkerHandle,
}

/// `GET /metrics` in the Prometheus text format, without a fallback (see
/// [`super::compose`]).
pub fn router(handle: PrometheusHandle, broker: Arc<Broker>, parker: ParkerHandle) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(MetricsState {
            handle,
            broker,
            parker,
        })
}

#[tracing::instrument(skip_all)]
async fn scrape(State(state): State<MetricsState>) -> Response {
    record_state(&state.broker, &state.parker);
    let body = state.handle.render();
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    // Every scrape must see current values.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests;
