//! One HTTP connection: hyper's HTTP/1.1 on the socket, watched by deadlines.
//!
//! A connection is always in one phase, and each phase but one has a deadline:
//! - *header*: from the connection's opening, or the first byte of a later request, until
//!   its header is complete: `http_header_timeout_ms`, then the connection is closed;
//! - *idle*: after a response, until the next request's first byte: `http_idle_timeout_ms`;
//! - *request*: from a complete header until its response is written. The body must
//!   arrive within `http_body_timeout_ms` (else 408) and be at most `http_max_body_bytes`
//!   (else 413, at once when a declared Content-Length says so); the handler itself has no
//!   deadline (a long poll waits up to a minute, an event stream forever).
//!
//! In every phase, a response the client does not read for `http_idle_timeout_ms` (writes
//! blocked that long) closes the connection. hyper's own `header_read_timeout` is not used:
//! it runs from the end of one response, so it would also cut idle keep-alive connections
//! at the header timeout.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::server::Limits;
use crate::metrics::{HTTP_BODIES_TOO_LARGE, HTTP_CONNECTIONS, HTTP_TIMEOUTS};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one accepted connection until it ends, a deadline passes, or (after shutdown)
/// its request in flight is answered.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let _open = Open::new(slot);
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched {
        io: stream,
        watch: watch.clone(),
    });
    let service = Guard {
        router: TowerToHyperService::new(router),
        watch: watch.clone(),
        limits: limits.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut conn = pin!(conn);
    let mut cancelled = pin!(shutdown.cancelled());
    let mut draining = false;
    let mut timer = pin!(tokio::time::sleep(limits.header_timeout));
    let mut armed: Option<Instant> = None;
    let outcome = std::future::poll_fn(|cx| {
        if !draining && cancelled.as_mut().poll(cx).is_ready() {
            // An idle connection closes now; one with a request answers it first.
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ok(result));
        }
        // Phases change only while `conn` is polled (this task reads, writes and runs the
        // handler), so the deadline is looked at again after every poll.
        let Some((deadline, phase)) = watch.deadline(&limits) else {
            return Poll::Pending;
        };
        if armed != Some(deadline) {
            timer.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(phase)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection failed"),
        Err(phase) => {
            // Dropping the connection closes the socket.
            ::metrics::counter!(HTTP_TIMEOUTS, "phase" => phase).increment(1);
            tracing::debug!(%peer, phase, "closing an HTTP connection that took too long");
        }
    }
}

/// An open connection: holds its slot and the `skein_http_connections` gauge.
struct Open {
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit) -> Open {
        ::metrics::gauge!(HTTP_CONNECTIONS).increment(1.0);
        Open { _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        ::metrics::gauge!(HTTP_CONNECTIONS).decrement(1.0);
    }
}

/// Where a connection is, for its deadlines. Shared by the socket wrapper, the service and
/// the bodies; all of them run in the connection's task, so the lock is never contended.
struct Watch {
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    /// Since when writes have been blocked (the client is not reading).
    write_blocked_since: Option<Instant>,
    /// The request's body did not arrive in time: its answer is 408, whatever the handler
    /// made of the missing body.
    body_timed_out: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a header since then.
    Header(Instant),
    /// Between requests since then.
    Idle(Instant),
    /// A request is being answered.
    Request,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            state: Mutex::new(State {
                phase: Phase::Header(Instant::now()),
                write_blocked_since: None,
                body_timed_out: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes came in: on an idle connection, a request has begun.
    fn bytes_read(&self) {
        let mut state = self.state();
        if let Phase::Idle(_) = state.phase {
            state.phase = Phase::Header(Instant::now());
        }
    }

    fn write_blocked(&self, blocked: bool) {
        let mut state = self.state();
        match (blocked, state.write_blocked_since) {
            (true, None) => state.write_blocked_since = Some(Instant::now()),
            (false, Some(_)) => state.write_blocked_since = None,
            _ => {}
        }
    }

    fn request_started(&self) {
        let mut state = self.state();
        state.phase = Phase::Request;
        state.body_timed_out = false;
    }

    fn response_finished(&self) {
        self.state().phase = Phase::Idle(Instant::now());
    }

    fn body_timed_out(&self) {
        self.state().body_timed_out = true;
    }

    fn take_body_timed_out(&self) -> bool {
        std::mem::take(&mut self.state().body_timed_out)
    }

    /// The earliest deadline and the phase it belongs to; None while a request is being
    /// answered and writes flow.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let state = self.state();
        let phase = match state.phase {
            Phase::Header(since) => Some((since + limits.header_timeout, "header")),
            Phase::Idle(since) => Some((since + limits.idle_timeout, "idle")),
            Phase::Request => None,
        };
        let write = state
            .write_blocked_since
            .map(|since| (since + limits.idle_timeout, "write"));
        match (phase, write) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// The socket, telling the watch when bytes arrive and when writes block.
struct Watched {
    io: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_read();
        }
        result
    }
}

impl Watched {
    fn note<T>(&self, result: Poll<T>) -> Poll<T> {
        self.watch.write_blocked(result.is_pending());
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router behind the body limits.
#[derive(Clone)]
struct Guard {
    router: TowerToHyperService<Router>,
    watch: Arc<Watch>,
    limits: Arc<Limits>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Guard {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        self.watch.request_started();
        let watch = self.watch.clone();
        let limits = self.limits.clone();
        if declared_length(&request).is_some_and(|n| n > limits.max_body_bytes) {
            // Answered before a byte of the body is read; hyper then closes the connection
            // instead of reading what it did not need.
            ::metrics::counter!(HTTP_BODIES_TOO_LARGE).increment(1);
            let answer = refuse(StatusCode::PAYLOAD_TOO_LARGE, &too_large(&limits));
            return Box::pin(std::future::ready(Ok(Tracked::new(answer, watch))));
        }
        let deadline = tokio::time::Instant::now() + limits.body_timeout;
        let request = request.map(|body| RequestBody {
            body: Limited::new(
                body,
                usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
            ),
            deadline,
            timer: None,
            watch: watch.clone(),
        });
        let answer = hyper::service::Service::call(&self.router, request);
        Box::pin(async move {
            let Ok(response) = answer.await;
            let response = if watch.take_body_timed_out() {
                let ms = limits.body_timeout.as_millis();
                refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("request body not received within {ms} ms (http_body_timeout_ms)"),
                )
            } else {
                response
            };
            Ok(Tracked::new(response, watch))
        })
    }
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(limits: &Limits) -> String {
    format!(
        "request body larger than {} bytes (http_max_body_bytes)",
        limits.max_body_bytes
    )
}

/// A JSON error that also ends the connection: the rest of the request is not read.
fn refuse(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = super::error(status, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body with the size limit and the deadline.
struct RequestBody {
    body: Limited<Incoming>,
    deadline: tokio::time::Instant,
    /// Made when the body first waits for the client: most requests have it all at once.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    watch: Arc<Watch>,
}

/// The client did not send the body in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
struct BodyTimeout;

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                if e.is::<LengthLimitError>() {
                    ::metrics::counter!(HTTP_BODIES_TOO_LARGE).increment(1);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.watch.body_timed_out();
                ::metrics::counter!(HTTP_TIMEOUTS, "phase" => "body").increment(1);
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that tells the watch when it has been sent (or dropped).
pub(super) struct Tracked {
    body: Body,
    watch: Option<Arc<Watch>>,
}

impl Tracked {
    fn new(response: Response<Body>, watch: Arc<Watch>) -> Response<Tracked> {
        response.map(|body| Tracked {
            body,
            watch: Some(watch),
        })
    }

    fn finish(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.response_finished();
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.finish();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(3),
            max_body_bytes: 10,
        }
    }

    #[test]
    fn the_phase_decides_the_deadline() {
        let watch = Watch::new();
        let limits = limits();
        let (at, phase) = watch.deadline(&limits).unwrap();
        assert_eq!(phase, "header");
        assert!(at <= Instant::now() + limits.header_timeout);
        watch.request_started();
        assert_eq!(watch.deadline(&limits), None, "a handler has no deadline");
        watch.response_finished();
        assert_eq!(watch.deadline(&limits).unwrap().1, "idle");
        watch.bytes_read();
        assert_eq!(watch.deadline(&limits).unwrap().1, "header");
        watch.bytes_read();
        assert_eq!(watch.deadline(&limits).unwrap().1, "header");
    }

    #[test]
    fn blocked_writes_have_a_deadline_even_in_a_request() {
        let watch = Watch::new();
        let limits = limits();
        watch.request_started();
        watch.write_blocked(true);
        let (first, phase) = watch.deadline(&limits).unwrap();
        assert_eq!(phase, "write");
        watch.write_blocked(true);
        assert_eq!(
            watch.deadline(&limits).unwrap().0,
            first,
            "from the first block"
        );
        watch.write_blocked(false);
        assert_eq!(watch.deadline(&limits), None);
        // The header deadline (1 s) comes before a write deadline (5 s).
        let watch = Watch::new();
        watch.write_blocked(true);
        assert_eq!(watch.deadline(&limits).unwrap().1, "header");
    }

    #[test]
    fn a_body_timeout_is_taken_once_per_request() {
        let watch = Watch::new();
        watch.request_started();
        watch.body_timed_out();
        assert!(watch.take_body_timed_out());
        assert!(!watch.take_body_timed_out());
        watch.body_timed_out();
        watch.request_started();
        assert!(!watch.take_body_timed_out(), "a new request starts clean");
    }

    #[test]
    fn the_declared_length_is_read_from_the_header() {
        let request = |value: &str| {
            Request::builder()
                .header(header::CONTENT_LENGTH, value)
                .body(())
                .unwrap()
        };
        assert_eq!(
            declared_length(&request("10000000000")),
            Some(10_000_000_000)
        );
        assert_eq!(declared_length(&request("nope")), None);
        assert_eq!(declared_length(&Request::new(())), None);
    }
}
