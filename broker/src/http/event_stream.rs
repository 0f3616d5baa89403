//! Reading the event stream over HTTP.
//!
//! - `GET /api/v1/events?after=ID&limit=N`: entries after `ID` (default 0: from the
//!   oldest kept), at most `N` (default 100, capped at 1000), as
//!   `{"events": [{"id": .., "client_id": .., ...}], "next": ID}`; pass `next` as `after`
//!   to read on.
//! - `&wait_ms=N` makes it a long poll: it answers as soon as an entry after `ID` exists,
//!   or with no entries after `N` ms (capped at 60 s).
//! - `GET /api/v1/events/stream?after=ID`: server-sent events, one per entry, with `id:`
//!   lines so a reconnecting client resumes with `Last-Event-ID` (which wins over `after`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use skein_storage::EventLog;
use tokio::sync::{watch, Semaphore};

use crate::events::stream::StreamApi;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Entries read from the log at a time by an event stream.
const STREAM_BATCH: usize = 100;

/// The stream routes (no fallback: merged by [`super::compose`]), behind the admin API's
/// bearer token when `token` is set.
pub fn router(api: StreamApi, token: Option<String>) -> Router {
    let routes = Router::new()
        .route("/api/v1/events", get(list))
        .route("/api/v1/events/stream", get(stream))
        .with_state(api);
    super::admin::protect(routes, token)
}

#[derive(Serialize)]
struct Page {
    events: Vec<Value>,
    next: u64,
}

type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query parameters, refusing unknown or repeated names and bad numbers.
fn params(query: RawQuery, accepted: &[&str]) -> Result<Vec<(String, u64)>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut out: Vec<(String, u64)> = Vec::new();
    for (name, value) in pairs {
        if !accepted.contains(&name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {name:?} (accepted: {})",
                accepted.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::BadRequest(format!(
                "query parameter {name:?} given more than once"
            )));
        }
        let Ok(number) = value.trim().parse::<u64>() else {
            return Err(ApiError::BadRequest(format!(
                "query parameter {name:?} must be a non-negative integer"
            )));
        };
        out.push((name, number));
    }
    Ok(out)
}

/// Why a request failed; rendered as `{"error": ...}` with its status.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("event stream disabled (stream_enabled)")]
    Disabled,
    #[error("storage failure")]
    Storage(#[source] skein_storage::StorageError),
    /// The blocking read task failed (panicked or was cancelled at shutdown).
    #[error("read task failed")]
    ReadTask(#[source] tokio::task::JoinError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Disabled => StatusCode::NOT_FOUND,
            ApiError::Storage(error) => {
                tracing::error!(%error, "cannot read the event log");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::ReadTask(error) => {
                tracing::error!(%error, "event log read task failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        super::error(status, &self.to_string())
    }
}

fn param(params: &[(String, u64)], name: &str) -> Option<u64> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Entries after `after` as JSON objects with their `id`. The log is read on the blocking
/// pool: old entries come from disk, not from memory.
async fn read(
    log: &EventLog,
    reads: &Arc<Semaphore>,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, Value)>, ApiError> {
    // Never closed, so acquiring only waits. Held by the blocking task: a request
    // dropped mid-read must not free its place while the read still runs.
    let permit = reads.clone().acquire_owned().await.ok();
    let log = log.clone();
    let entries = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        log.read_after(after, limit)
    })
    .await
    .map_err(ApiError::ReadTask)?
    .map_err(ApiError::Storage)?;
    Ok(entries
        .into_iter()
        .map(|(id, bytes)| (id, with_id(id, &bytes)))
        .collect())
}

/// The stored entry with `"id"` first. An entry that isn't a JSON object (it never
/// should be) is passed on as `{"id": .., "raw": "<text>"}` rather than hidden.
fn with_id(id: u64, bytes: &[u8]) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), id.into());
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(fields)) => out.extend(fields),
        _ => {
            out.insert("raw".into(), String::from_utf8_lossy(bytes).into());
        }
    }
    Value::Object(out)
}

#[tracing::instrument(skip_all, name = "events_list")]
async fn list(State(api): State<StreamApi>, query: RawQuery) -> Response {
    let params = match params(query, &["after", "limit", "wait_ms"]) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(log) = api.log else {
        return ApiError::Disabled.into_response();
    };
    let after = param(&params, "after").unwrap_or(0);
    let limit = param(&params, "limit").map_or(DEFAULT_LIMIT, |l| {
        usize::try_from(l).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT)
    });
    let wait = param(&params, "wait_ms")
        .map_or(Duration::ZERO, |ms| Duration::from_millis(ms).min(MAX_WAIT));
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = api.last;
    let entries = loop {
        // Marked seen before reading: an append after this wakes `changed` below.
        last.borrow_and_update();
        let entries = match read(&log, &api.reads, after, limit).await {
            Ok(entries) => entries,
            Err(e) => return e.into_response(),
        };
        if !entries.is_empty() || wait.is_zero() {
            break entries;
        }
        match tokio::time::timeout_at(deadline, last.changed()).await {
            Ok(Ok(())) => continue,
            // Deadline, or the node is shutting down: an empty page.
            Ok(Err(_)) | Err(_) => break entries,
        }
    };
    let next = entries.last().map_or(after, |(id, _)| *id);
    let page = Page {
        events: entries.into_iter().map(|(_, v)| v).collect(),
        next,
    };
    Json(page).into_response()
}

/// Where an event stream starts: `Last-Event-ID` (a reconnect) over `after`.
fn resume_from(headers: &HeaderMap, after: Option<u64>) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(after.unwrap_or(0)),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be an event id".into())),
    }
}

struct Cursor {
    log: EventLog,
    reads: Arc<Semaphore>,
    last: watch::Receiver<u64>,
    after: u64,
    ready: VecDeque<(u64, Value)>,
}

#[tracing::instrument(skip_all, name = "events_stream")]
async fn stream(State(api): State<StreamApi>, headers: HeaderMap, query: RawQuery) -> Response {
    let params = match params(query, &["after"]) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(log) = api.log else {
        return ApiError::Disabled.into_response();
    };
    let after = match resume_from(&headers, param(&params, "after")) {
        Ok(after) => after,
        Err(e) => return e.into_response(),
    };
    let cursor = Cursor {
        log,
        last: api.last,
        reads: api.reads,
        after,
        ready: VecDeque::new(),
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some((id, entry)) = c.ready.pop_front() {
                c.after = id;
                let event = sse::Event::default()
                    .id(id.to_string())
                    .data(entry.to_string());
                return Some((Ok::<_, Infallible>(event), c));
            }
            c.last.borrow_and_update();
            match read(&c.log, &c.reads, c.after, STREAM_BATCH).await {
                Ok(entries) if !entries.is_empty() => {
                    c.ready.extend(entries);
                    continue;
                }
                Ok(_) => {}
                // Logged by `read`; the client reconnects with Last-Event-ID.
                Err(_) => return None,
            }
            // Ends the stream when the node shuts down (the sender is gone).
            c.last.changed().await.ok()?;
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests;
