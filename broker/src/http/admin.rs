//! The HTTP admin API under `/api/v1`: clients (list, detail, kick), subscriptions,
//! retained messages, publishing as the broker, removing cluster members, and device
//! certificates (list, detail, set status). JSON in and
//! out; every error is a JSON body `{"error": ...}` with a meaningful status (see
//! [`ApiError`]).
//!
//! Clients are cluster-wide: any node lists and kicks every client, wherever it is
//! connected (the cluster's registry says where); `/api/v1/cluster` shows the members and
//! the leader. Subscriptions and retained messages are this node's.
//!
//! With `api_token` set, every route here wants `Authorization: Bearer <token>`
//! ([`protect`]); the probes and `/metrics` live in other routers and stay open.

mod auth;
mod certificates;
mod clients;
mod cluster;
mod members;
mod params;
mod publish;
mod retained;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::broker::Broker;

pub use auth::protect;

/// The admin routes, guarded by `token` when it is set and not empty. No fallback: the
/// router is merged by [`super::compose`].
pub fn router(broker: Arc<Broker>, token: Option<String>) -> Router {
    let api = Router::new()
        .route("/api/v1/clients", get(clients::list))
        .route(
            "/api/v1/clients/{id}",
            get(clients::detail).delete(clients::kick),
        )
        .route("/api/v1/subscriptions", get(subscriptions::list))
        .route("/api/v1/topics/retained", get(retained::list))
        .route("/api/v1/publish", post(publish::publish))
        .route("/api/v1/cluster", get(cluster::overview))
        .route("/api/v1/cluster/members/{id}", delete(members::remove))
        .route("/api/v1/certificates", get(certificates::list))
        .route(
            "/api/v1/certificates/{sn}",
            get(certificates::detail).put(certificates::update),
        )
        .with_state(broker);
    protect(api, token)
}

/// Why an admin request failed; rendered as `{"error": message}` with the status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A bad query parameter, path segment or body.
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(Cow<'static, str>),
    /// The request contradicts the cluster's state (a session held by another node).
    #[error("{0}")]
    Conflict(String),
    /// The body could not be read (too large, say): the extractor's own status.
    #[error("{1}")]
    Body(StatusCode, String),
    #[error("storage failure")]
    Storage(#[source] skein_storage::StorageError),
    /// What needed the disk was not stored: 507 below the free-space guard, 503 after a
    /// storage failure.
    #[error("{}", .0.message())]
    NotStored(crate::storage_refusal::NotStored),
    /// The cluster could not answer (no leader, no quorum, a member unreachable).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// Another node with subscribers did not take the message (503).
    #[error("not delivered cluster-wide: {0}")]
    NotForwarded(skein_seam::ForwardError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Body(status, _) => *status,
            ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotStored(crate::storage_refusal::NotStored::LowSpace) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ApiError::NotStored(crate::storage_refusal::NotStored::Failed) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotForwarded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<skein_seam::ClusterError> for ApiError {
    fn from(e: skein_seam::ClusterError) -> Self {
        use skein_seam::ClusterError;
        match e {
            ClusterError::Unavailable(detail) | ClusterError::Busy(detail) => {
                ApiError::Unavailable(detail)
            }
            ClusterError::NotFound(_) => ApiError::NotFound(e.to_string().into()),
            ClusterError::NotOwner => ApiError::Conflict(e.to_string()),
            ClusterError::Invalid(_) => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Storage(e) = &self {
            // The cause is for the operator's log, not for the HTTP client.
            tracing::error!(error = %e, "admin API: storage failure");
        }
        let mut response = super::error(self.status(), &self.to_string());
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"skein\""),
            );
        }
        response
    }
}
