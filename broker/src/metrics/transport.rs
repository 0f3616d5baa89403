//! The listeners' metrics: connections accepted by listener, failed TLS and WebSocket
//! handshakes by listener and reason, certificate reloads; device certificates registered,
//! rejected and the connections ended when one stops being active.

use metrics::Unit;

use super::{
    desc, Desc, Kind::Counter, CERTIFICATES_REGISTERED, CERTIFICATES_REJECTED, CERTIFICATE_KICKS,
    CERT_REGISTRATIONS_FAILED, HANDSHAKE_FAILURES, LISTENER_CONNECTIONS, TLS_RELOADS,
};

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
        CERTIFICATES_REGISTERED,
        Counter,
        Unit::Count,
        &["status"],
        "Device certificates this node registered (first sight of a TLS client certificate), by the status given (active, pending_activation).",
    ),
    desc(
        CERTIFICATES_REJECTED,
        Counter,
        Unit::Count,
        &["status"],
        "Connections refused because their client certificate is not active, by its status (pending_activation, inactive, revoked).",
    ),
    desc(
        CERTIFICATE_KICKS,
        Counter,
        Unit::Count,
        &["status"],
        "Connections ended because their client certificate stopped being active (an operator set this status).",
    ),
    desc(
        CERT_REGISTRATIONS_FAILED,
        Counter,
        Unit::Count,
        &[],
        "Registrations of a new client certificate that did not commit (the cluster was unavailable): the connection was refused with server unavailable.",
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

pub fn certificate_registered(status: &'static str) {
    metrics::counter!(CERTIFICATES_REGISTERED, "status" => status).increment(1);
}

pub fn certificate_rejected(status: &'static str) {
    metrics::counter!(CERTIFICATES_REJECTED, "status" => status).increment(1);
}

pub fn certificate_kicks(status: &'static str, connections: u64) {
    metrics::counter!(CERTIFICATE_KICKS, "status" => status).increment(connections);
}

pub fn certificate_registration_failed() {
    metrics::counter!(CERT_REGISTRATIONS_FAILED).increment(1);
}

pub fn tls_reload(outcome: &'static str) {
    metrics::counter!(TLS_RELOADS, "outcome" => outcome).increment(1);
}
