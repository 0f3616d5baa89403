//! The node's HTTP server: liveness (`/healthz`) and readiness (`/readyz`) here; other
//! features (metrics, the admin API, the event stream) each bring a `Router` with its own
//! state, and [`compose`] merges them behind one JSON 404/405 fallback.

pub mod admin;
mod connection;
pub mod event_stream;
pub mod metrics_endpoint;
mod server;

pub use server::{serve, Limits};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// What the HTTP server reports; the broker flips `ready` once it is accepting MQTT
/// connections and clears it on shutdown. A node whose storage takes no new data (see
/// [`HealthState::watching_storage`]) or that is not a cluster member with a known leader
/// (see [`HealthState::watching_cluster`]) is not ready either.
#[derive(Clone, Default, Debug)]
pub struct HealthState {
    ready: Arc<AtomicBool>,
    storage: Option<Arc<skein_storage::StorageHealth>>,
    cluster: Option<ClusterCheck>,
}

/// Asks the cluster member whether it can take clients: `Err` says why not, as a reason
/// name and a line for an operator.
type NotReady = (&'static str, &'static str);

#[derive(Clone)]
struct ClusterCheck(Arc<dyn Fn() -> Result<(), NotReady> + Send + Sync>);

impl std::fmt::Debug for ClusterCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCheck")
    }
}

impl HealthState {
    /// A new state, not ready: a broker that hasn't bound its listener must not get traffic.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also reports not ready while `storage` takes no new data (free space below the
    /// guard, or a storage failure), with the reason.
    pub fn watching_storage(mut self, storage: Arc<skein_storage::StorageHealth>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Also reports not ready while `check` says the node cannot take clients (not a
    /// member, no leader known), with its reason (prefixed `cluster_`) and detail: a
    /// CONNECT there could not commit, so a load balancer should send clients elsewhere.
    pub fn watching_cluster(
        mut self,
        check: impl Fn() -> Result<(), NotReady> + Send + Sync + 'static,
    ) -> Self {
        self.cluster = Some(ClusterCheck(Arc::new(check)));
        self
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Everything the handlers can reach. Cloned per request, so fields should be cheap handles.
#[derive(Clone)]
struct AppState {
    health: HealthState,
}

impl FromRef<AppState> for HealthState {
    fn from_ref(state: &AppState) -> Self {
        state.health.clone()
    }
}

/// The probes alone: `GET /healthz`, `GET /readyz`, JSON 404/405 for everything else.
pub fn router(state: HealthState) -> Router {
    compose(vec![health_routes(state)])
}

/// `GET /healthz` and `GET /readyz`, without a fallback (see [`compose`]).
pub fn health_routes(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { health: state })
}

/// Merges feature routers and adds the JSON 404/405 answers. Feature routers must not set
/// a fallback of their own (axum refuses to merge two).
pub fn compose(parts: Vec<Router>) -> Router {
    parts
        .into_iter()
        .fold(Router::new(), Router::merge)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Liveness: answering at all is the signal, so this never looks at broker state.
async fn healthz() -> Response {
    probe(StatusCode::OK, "ok")
}

async fn readyz(State(health): State<HealthState>) -> Response {
    if !health.is_ready() {
        return probe(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    }
    let storage = health.storage.as_deref();
    if let Some((state, detail)) = storage.and_then(|s| Some((s.availability(), s.describe()?))) {
        return not_ready(format!("storage_{}", state.as_str()), detail);
    }
    if let Some(Err((reason, detail))) = health.cluster.as_ref().map(|check| (check.0)()) {
        return not_ready(format!("cluster_{reason}"), detail.to_owned());
    }
    probe(StatusCode::OK, "ready")
}

fn not_ready(reason: String, detail: String) -> Response {
    no_store(
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "reason": reason,
                "detail": detail,
            })),
        )
            .into_response(),
    )
}

fn probe(status: StatusCode, text: &str) -> Response {
    no_store((status, Json(json!({ "status": text }))).into_response())
}

fn no_store(mut response: Response) -> Response {
    // A cached probe answer would hide the very transitions probes exist to see.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// A JSON error body `{"error": message}` with `status`: every endpoint answers errors so.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    struct Server {
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(state: HealthState) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            router(state),
            Limits::default(),
            shutdown.clone(),
        ));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    /// Sends one raw HTTP/1.1 request and returns (status code, headers, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("response timed out")
            .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("no header end");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("no status code");
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    fn json_body(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
    }

    #[tokio::test]
    async fn healthz_is_ok() {
        let server = start(HealthState::new()).await;
        let (status, head, body) = request(server.addr, "GET", "/healthz").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("cache-control: no-store"), "{head}");
        assert_eq!(json_body(&body), json!({ "status": "ok" }));
    }

    #[tokio::test]
    async fn readyz_follows_state() {
        let state = HealthState::new();
        assert!(!state.is_ready());
        let server = start(state.clone()).await;

        let (status, _, body) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(json_body(&body), json!({ "status": "not_ready" }));

        state.set_ready(true);
        assert!(state.is_ready());
        let (status, _, body) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(status, 200);
        assert_eq!(json_body(&body), json!({ "status": "ready" }));

        state.set_ready(false);
        let (status, _, _) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn readyz_is_503_with_the_reason_while_storage_takes_no_new_data() {
        use skein_storage::{MinFree, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let storage = store.health().clone();
        let state = HealthState::new().watching_storage(storage.clone());
        state.set_ready(true);
        let server = start(state).await;
        let (status, _, body) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(
            (status, json_body(&body)),
            (200, json!({ "status": "ready" }))
        );

        // More free space than the file system has: below the guard.
        storage.set_min_free(MinFree::Bytes(u64::MAX));
        storage.check().unwrap();
        let (status, head, body) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(status, 503);
        assert!(head.contains("cache-control: no-store"), "{head}");
        let body = json_body(&body);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["reason"], "storage_low_space");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("storage_min_free_bytes"), "{detail}");

        // Room again: ready, without anything else happening.
        storage.set_min_free(MinFree::Bytes(0));
        storage.check().unwrap();
        let (status, _, _) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_node_is_a_member_with_a_leader() {
        use std::sync::atomic::AtomicU8;
        // 0: not a member, 1: a member without a leader, 2: a member with one.
        let cluster = Arc::new(AtomicU8::new(0));
        let seen = cluster.clone();
        let state =
            HealthState::new().watching_cluster(move || match seen.load(Ordering::SeqCst) {
                0 => Err(("not_a_member", "not a member")),
                1 => Err(("no_leader", "no leader")),
                _ => Ok(()),
            });
        state.set_ready(true);
        let server = start(state.clone()).await;
        for (step, reason) in [(0, "cluster_not_a_member"), (1, "cluster_no_leader")] {
            cluster.store(step, Ordering::SeqCst);
            let (status, _, body) = request(server.addr, "GET", "/readyz").await;
            let body = json_body(&body);
            assert_eq!((status, &body["reason"]), (503, &json!(reason)), "{body}");
            assert_eq!(body["status"], "not_ready");
            let detail = if step == 0 {
                "not a member"
            } else {
                "no leader"
            };
            assert_eq!(body["detail"], detail, "{body}");
        }
        cluster.store(2, Ordering::SeqCst);
        let (status, _, body) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(
            (status, json_body(&body)),
            (200, json!({ "status": "ready" }))
        );
        // Shutting down wins over a healthy cluster.
        state.set_ready(false);
        let (status, _, body) = request(server.addr, "GET", "/readyz").await;
        assert_eq!(
            (status, json_body(&body)),
            (503, json!({ "status": "not_ready" }))
        );
    }

    #[tokio::test]
    async fn unknown_path_and_method_are_json_errors() {
        let server = start(HealthState::new()).await;
        let (status, head, body) = request(server.addr, "GET", "/nope").await;
        assert_eq!(status, 404);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(json_body(&body), json!({ "error": "not found" }));

        let (status, _, body) = request(server.addr, "POST", "/healthz").await;
        assert_eq!(status, 405);
        assert_eq!(json_body(&body), json!({ "error": "method not allowed" }));
    }

    #[tokio::test]
    async fn head_is_served() {
        let server = start(HealthState::new()).await;
        let (status, _, body) = request(server.addr, "HEAD", "/healthz").await;
        assert_eq!(status, 200);
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn shuts_down_on_cancel() {
        let server = start(HealthState::new()).await;
        // An idle keep-alive connection must not hold shutdown open.
        let _idle = TcpStream::connect(server.addr).await.unwrap();
        request(server.addr, "GET", "/healthz").await;
        server.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("serve didn't stop after cancel")
            .unwrap();
        assert!(result.is_ok());
        assert!(TcpStream::connect(server.addr).await.is_err());
    }
}
