//! The accept loop of a TLS or WebSocket listener: each accepted socket's handshake runs in
//! its own task, under `tls_handshake_timeout_ms`, then the connection is served like a
//! plain MQTT one. Handshake failures are counted by listener and reason, and logged at
//! most once per interval per listener.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::rustls;

use super::tls::TlsContext;
use super::{certificate, chain, ws, Listener};
use crate::broker::Broker;
use crate::connection::{self, PeerIdentity, Wrapped};
use crate::events::Transport;
use crate::log_limit::LogLimit;

/// At most one handshake failure logged per listener this often (a scanner or a client
/// with a wrong CA retries fast).
const LOG_EVERY: Duration = Duration::from_secs(10);

static LOGS: [LogLimit; 3] = [
    LogLimit::new(LOG_EVERY),
    LogLimit::new(LOG_EVERY),
    LogLimit::new(LOG_EVERY),
];

/// Accepts on `listener` until the broker's shutdown; each connection's task is tracked
/// with the plain MQTT ones (shutdown drains them together). `tls` is Some for `mqtts`
/// and `wss`.
pub async fn serve(
    broker: Arc<Broker>,
    kind: Listener,
    listener: TcpListener,
    tls: Option<Arc<TlsContext>>,
) {
    crate::server::accept_until_shutdown(
        &broker,
        &listener,
        kind.name(),
        |stream, addresses, permit| {
            let task =
                handshake_then_serve(broker.clone(), kind, stream, addresses, permit, tls.clone());
            broker.connections.spawn(task);
        },
    )
    .await;
}

/// A failed handshake: the metric's reason and what to log.
struct Failure {
    reason: &'static str,
    detail: String,
}

async fn handshake_then_serve(
    broker: Arc<Broker>,
    kind: Listener,
    stream: TcpStream,
    addresses: (SocketAddr, Arc<SocketAddr>),
    permit: Option<OwnedSemaphorePermit>,
    tls: Option<Arc<TlsContext>>,
) {
    let max_message = broker.config.max_packet_size as usize;
    let opened = tokio::select! {
        _ = broker.shutdown.cancelled() => return,
        opened = tokio::time::timeout(
            broker.config.tls_handshake_timeout(),
            open(kind, stream, tls.as_deref(), max_message),
        ) => opened,
    };
    let failure = match opened {
        Ok(Ok(wrapped)) => {
            connection::serve_wrapped(broker, wrapped, addresses, permit).await;
            return;
        }
        Ok(Err(failure)) => failure,
        Err(_) => Failure {
            reason: "timeout",
            detail: format!(
                "handshake not done within {} ms",
                broker.config.tls_handshake_timeout_ms
            ),
        },
    };
    crate::metrics::handshake_failed(kind.name(), failure.reason);
    let log = match kind {
        Listener::Mqtts => &LOGS[0],
        Listener::Ws => &LOGS[1],
        _ => &LOGS[2],
    };
    if let Some(held_back) = log.allow() {
        tracing::warn!(
            listener = kind.name(),
            peer = %addresses.0,
            reason = failure.reason,
            error = %failure.detail,
            not_logged_before = held_back,
            "handshake failed"
        );
    }
}

/// Runs the listener's layers over `stream`: TLS, then the WebSocket upgrade, as `kind` has.
async fn open(
    kind: Listener,
    stream: TcpStream,
    tls: Option<&TlsContext>,
    max_message: usize,
) -> Result<Wrapped, Failure> {
    let transport = if kind.websocket() {
        Transport::WebSocket
    } else {
        Transport::Tcp
    };
    let upgrade_failed = |(reason, detail): (&'static str, String)| Failure { reason, detail };
    let tls = match (kind.tls(), tls) {
        (true, Some(tls)) => tls,
        (true, None) => {
            return Err(Failure {
                reason: "no_tls_config",
                detail: "the listener has no TLS configuration".into(),
            })
        }
        (false, _) => {
            let ws = ws::accept(stream, max_message)
                .await
                .map_err(upgrade_failed)?;
            return Ok(Wrapped::new(Box::new(ws), transport, PeerIdentity::NotTls));
        }
    };
    let stream = tls.acceptor().accept(stream).await.map_err(|e| Failure {
        reason: tls_failure_reason(&e),
        detail: e.to_string(),
    })?;
    let identity = match stream.get_ref().1.peer_certificates() {
        Some(presented @ [end_entity, ..]) => PeerIdentity::Certificate {
            common_name: certificate::common_name(end_entity).map(String::into_boxed_str),
            device: chain::seen(presented, &tls.client_cas()).map(Box::new),
        },
        _ => PeerIdentity::NoCertificate,
    };
    if kind.websocket() {
        let ws = ws::accept(stream, max_message)
            .await
            .map_err(upgrade_failed)?;
        Ok(Wrapped::new(Box::new(ws), transport, identity))
    } else {
        Ok(Wrapped::new(Box::new(stream), transport, identity))
    }
}

/// The metric's reason for a failed TLS handshake.
fn tls_failure_reason(e: &io::Error) -> &'static str {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        // The client refused this node's certificate (an unknown CA, say).
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => "closed",
    }
}
