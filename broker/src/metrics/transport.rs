//! The listeners' metrics: connections accepted by listener, failed TLS and WebSocket
//! handshakes by listener and reason, certificate reloads.

use metrics::Unit;

use super::{desc, Desc, Kind::Counter, HANDSHAKE_FAILURES, LISTENER_CONNECTIONS, TLS_RELOADS};

pub(super) const TRANSPORTS: &[Desc] = &[
    desc(
        LISTENER_CONNECTIONS,
        Counter,
        Unit::Count,
        &["listener"],
        "Sockets accepted, by listener (mqtt, mqtts, ws, wss).",
    ),
    desc(
        HANDSHAKE_FAILURES,
        Counter,
        Unit::Count,
        &["listener", "reason"],
        "TLS and WebSocket handshakes that failed, by listener and reason (timeout, no_certificate, bad_certificate, alert_received, incompatible, protocol, closed, ws_path, ws_subprotocol, ws_upgrade).",
    ),
    desc(
        TLS_RELOADS,
        Counter,
        Unit::Count,
        &["outcome"],
        "Reloads of the TLS certificate, key and CA files (on a change or SIGHUP), by outcome (ok, failed: the previous ones stay in force).",
    ),
];

/// The accepted-sockets counter of one listener, looked up once by its accept loop.
pub fn listener_accepted(listener: &'static str) -> metrics::Counter {
    metrics::counter!(LISTENER_CONNECTIONS, "listener" => listener)
}

pub fn handshake_failed(listener: &'static str, reason: &'static str) {
    metrics::counter!(HANDSHAKE_FAILURES, "listener" => listener, "reason" => reason).increment(1);
}

pub fn tls_reload(outcome: &'static str) {
    metrics::counter!(TLS_RELOADS, "outcome" => outcome).increment(1);
}
