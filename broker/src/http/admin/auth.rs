//! Bearer-token authentication for the admin API.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::ApiError;

/// Requires `Authorization: Bearer <token>` on every route of `router` when `token` is set
/// and not empty. Only the routes are guarded (not the composed fallback), so the probes
/// and `/metrics` in other routers stay open; any feature serving under `/api/v1` can wrap
/// its router with this.
pub fn protect(router: Router, token: Option<String>) -> Router {
    match token.filter(|t| !t.is_empty()) {
        None => router,
        Some(token) => router.route_layer(middleware::from_fn_with_state(
            Arc::<str>::from(token),
            check,
        )),
    }
}

async fn check(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(presented) if same_token(presented.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        presented => {
            tracing::debug!(
                path = request.uri().path(),
                token_given = presented.is_some(),
                "admin API request refused"
            );
            ApiError::Unauthorized.into_response()
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares in a time that depends only on the expected token's length, so the response
/// time does not tell how many leading bytes of a guess were right.
fn same_token(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(0);
        diff |= usize::from(p ^ e);
    }
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3creT", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"s3cret!", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
        // A longer guess whose extra length is a multiple of 256 must not pass either.
        let long = [b'a'; 256 + 1];
        assert!(!same_token(&long, b"a"));
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_others_are_refused() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("BEARER abc")), Some("abc"));
        assert_eq!(bearer(&headers("Basic YWJjOmRlZg==")), None);
        assert_eq!(bearer(&headers("Bearer")), None);
        assert_eq!(bearer(&headers("Bearer   ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
