//! Prometheus metrics: every metric name, its help text and unit, the recorder, and the
//! functions that update series. `GET /metrics` and the gauges computed when it is scraped
//! live in `http/metrics_endpoint.rs`.
//!
//! Counters on the message path are bumped through the functions below, which use keys
//! built at compile time: counting a message costs a registry lookup and an atomic add,
//! never an allocation. Gauges that are sums over sessions (online/offline sessions,
//! subscriptions, queued and in-flight messages, retained messages, event queue depths)
//! are computed from broker state when Prometheus scrapes, so the hot path never
//! maintains them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

mod record;
mod transport;
pub use record::*;
pub use transport::{
    certificate_kicks, certificate_registered, certificate_registration_failed,
    certificate_rejected, handshake_failed, listener_accepted, tls_reload,
};

// Connections and sessions.
/// Gauge {protocol}: open MQTT connections past a successful CONNECT.
pub const CONNECTIONS: &str = "skein_connections";
/// Gauge: connections parked (idle, waiting without a task).
pub const CONNECTIONS_PARKED: &str = "skein_connections_parked";
/// Counter: times a connection parked.
pub const CONNECTION_PARKS: &str = "skein_connection_parks_total";
/// Counter {protocol}: successful CONNECTs.
pub const CONNECTS: &str = "skein_connects_total";
/// Counter {reason}: connections refused before a session was attached.
pub const CONNECTS_REFUSED: &str = "skein_connects_refused_total";
/// Counter: CONNECTs whose client had closed its socket before the node read them.
pub const CONNECTS_ABANDONED: &str = "skein_connects_abandoned_total";
/// Counter: client registrations that committed after their CONNECT was refused (or its
/// connection ended), released again.
pub const CONNECT_REGISTRATIONS_RELEASED: &str = "skein_connect_registrations_released_total";
/// Counter {request}: SUBSCRIBEs / UNSUBSCRIBEs the cluster did not take (their filters
/// were refused).
pub const CLUSTER_REFUSED: &str = "skein_cluster_refused_total";
/// Counter {reason}: connections ended after a successful CONNECT.
pub const DISCONNECTS: &str = "skein_disconnects_total";
/// Counter {role="taken"|"released"|"duplicate"}: messages of sessions moved between
/// nodes: written here for a client this node took over, deleted here once its new node
/// had them, or left out here as they had reached this node too.
pub const SESSION_HANDOVER_MESSAGES: &str = "skein_session_handover_messages_total";
/// Counter {reason}: session hand-overs this node could not finish (what was not fetched
/// stays on the node that held it).
pub const SESSION_HANDOVER_FAILURES: &str = "skein_session_handover_failures_total";
/// Counter: deliveries not queued for a session because it moved to another node, which
/// gets the message itself.
pub const SESSION_HANDOVER_SKIPPED: &str = "skein_session_handover_skipped_deliveries_total";
/// Counter {outcome="sent"|"failed"|"delivered"|"duplicate"|"no_session"}: forwards for a session
/// that had moved away from the receiving node, sent on to its owner (on the node it
/// moved away from), and what the owner did with them.
pub const SESSION_MOVED_AWAY_REDIRECTS: &str = "skein_session_moved_away_redirects_total";
/// Counter {cause}: queued QoS 1/2 messages marked to go out with DUP, as their client
/// may have them already.
pub const MESSAGES_MARKED_DUP: &str = "skein_messages_marked_dup_total";
/// Gauge {state="online"|"offline"}: sessions on this node.
pub const SESSIONS: &str = "skein_sessions";
/// Gauge: subscriptions of all sessions on this node.
pub const SUBSCRIPTIONS: &str = "skein_subscriptions";
/// Gauge: retained messages.
pub const RETAINED_MESSAGES: &str = "skein_retained_messages";

// Messages and bytes.
/// Counter {qos}: PUBLISH packets received from clients.
pub const MESSAGES_RECEIVED: &str = "skein_messages_received_total";
/// Counter {qos}: PUBLISH packets sent to clients.
pub const MESSAGES_SENT: &str = "skein_messages_sent_total";
/// Counter: QoS 1/2 deliveries acknowledged by the subscriber.
pub const MESSAGES_ACKED: &str = "skein_messages_acked_total";
/// Counter {reason}: messages dropped instead of delivered.
pub const MESSAGES_DROPPED: &str = "skein_messages_dropped_total";
/// Counter {reason}: QoS 1/2 publishes refused (failure acknowledgement, 3.x connection
/// closed, admin API 507/503) because the disk could not take them.
pub const PUBLISHES_REFUSED: &str = "skein_publishes_refused_total";
/// Gauge: QoS 1/2 messages sent and not yet acknowledged, over all sessions.
pub const INFLIGHT_MESSAGES: &str = "skein_inflight_messages";
/// Gauge: messages waiting in session queues, over all sessions.
pub const QUEUED_MESSAGES: &str = "skein_queued_messages";
/// Counter: bytes read from MQTT sockets.
pub const BYTES_RECEIVED: &str = "skein_received_bytes_total";
/// Counter: bytes written to MQTT sockets.
pub const BYTES_SENT: &str = "skein_sent_bytes_total";
/// Counter: packets that failed to decode (the connection is closed).
pub const PACKET_DECODE_ERRORS: &str = "skein_packet_decode_errors_total";
/// Counter: publishes that waited for input that reached the node before them.
pub const PUBLISH_ORDER_WAITS: &str = "skein_publish_order_waits_total";
/// Counter: deliveries to a new subscription of publishes routed before it was handled.
pub const PUBLISH_ORDER_LATE_DELIVERIES: &str = "skein_publish_order_late_deliveries_total";

// Events and their dialects.
/// Gauge {dialect}: events waiting in a dialect's queue.
pub const EVENT_QUEUE_DEPTH: &str = "skein_event_queue_depth";
/// Counter {dialect, reason}: events a dialect did not get.
pub const EVENTS_DROPPED: &str = "skein_events_dropped_total";
/// Counter {outcome}: webhook deliveries (recorded by the webhook dialect).
pub const WEBHOOK_REQUESTS: &str = "skein_webhook_requests_total";
/// Histogram: webhook request latency (recorded by the webhook dialect).
pub const WEBHOOK_REQUEST_DURATION: &str = "skein_webhook_request_duration_seconds";
/// Counter {outcome}: XADDs to Redis (recorded by the stream dialect).
pub const REDIS_XADD: &str = "skein_redis_xadd_total";

// Authentication and authorization.
/// Counter {outcome="success"|"error"}: ACL file (re)loads after startup.
pub const ACL_RELOADS: &str = "skein_acl_reloads_total";
/// Gauge: rules (`topic` and `pattern` lines) of the ACL file in force.
pub const ACL_RULES: &str = "skein_acl_rules";
/// Counter {action="subscribe"|"publish"|"deliver"|"will"}: what the ACL (or a token's
/// claims) refused.
pub const AUTHZ_DENIED: &str = "skein_authz_denied_total";
/// Counter {outcome}: HTTP authentication requests and their answers (allow, deny,
/// ignore, superuser, timeout, connect_error, http_error, bad_response, busy).
pub const AUTH_HTTP_REQUESTS: &str = "skein_auth_http_requests_total";
/// Counter: CONNECTs answered from the HTTP authentication cache.
pub const AUTH_HTTP_CACHE_HITS: &str = "skein_auth_http_cache_hits_total";
/// Gauge: HTTP authentication requests in flight.
pub const AUTH_HTTP_IN_FLIGHT: &str = "skein_auth_http_in_flight";
/// Counter {outcome}: HTTP authorization requests and their answers (allow, deny,
/// ignore, timeout, connect_error, http_error, bad_response, busy).
pub const AUTHZ_HTTP_REQUESTS: &str = "skein_authz_http_requests_total";
/// Counter: PUBLISHes and SUBSCRIBE filters decided from the HTTP authorization cache.
pub const AUTHZ_HTTP_CACHE_HITS: &str = "skein_authz_http_cache_hits_total";
/// Gauge: HTTP authorization requests in flight.
pub const AUTHZ_HTTP_IN_FLIGHT: &str = "skein_authz_http_in_flight";
/// Counter {outcome}: JWT checks (accepted, expired, bad_signature, invalid, claims_mismatch).
pub const AUTH_JWT: &str = "skein_auth_jwt_total";

// Storage.
/// Histogram: time to flush storage to disk.
pub const STORAGE_FLUSH_DURATION: &str = "skein_storage_flush_duration_seconds";
/// Gauge: 1 while storage takes new data, 0 below the free-space guard or after a failure.
pub const STORAGE_AVAILABLE: &str = "skein_storage_available";
/// Gauge {state="available"|"low_space"|"failed"}: 1 for the storage's current state.
pub const STORAGE_STATE: &str = "skein_storage_state";
/// Gauge: free bytes on the data directory's file system, as last measured.
pub const STORAGE_FREE_BYTES: &str = "skein_storage_free_bytes";
/// Gauge: the free-space guard in bytes (`storage_min_free_bytes`; 0: off).
pub const STORAGE_MIN_FREE_BYTES: &str = "skein_storage_min_free_bytes";

// Runtime.
/// Gauge: worker threads of the runtime the node runs on (`worker_threads`).
pub const RUNTIME_WORKERS: &str = "skein_runtime_workers";
/// Counter {listener}: failed accepts on the MQTT or HTTP listener (each followed by a wait).
pub const ACCEPT_ERRORS: &str = "skein_accept_errors_total";
/// Counter: log lines that could not be written (stderr full or closed) and were dropped.
pub const LOG_LINES_DROPPED: &str = "skein_log_lines_dropped_total";

// The HTTP server.
/// Gauge: open HTTP connections.
pub const HTTP_CONNECTIONS: &str = "skein_http_connections";
/// Counter: HTTP connections closed at once because `http_max_connections` were open.
pub const HTTP_CONNECTIONS_REFUSED: &str = "skein_http_connections_refused_total";
/// Counter {phase}: HTTP connections closed, or requests answered 408, for taking too long.
pub const HTTP_TIMEOUTS: &str = "skein_http_timeouts_total";
/// Counter: HTTP requests answered 413 (body over `http_max_body_bytes`).
pub const HTTP_BODIES_TOO_LARGE: &str = "skein_http_bodies_too_large_total";

// Listeners (rows and updates in metrics/transport.rs).
/// Counter {listener}: sockets accepted, by listener (mqtt, mqtts, ws, wss).
pub const LISTENER_CONNECTIONS: &str = "skein_listener_connections_total";
/// Counter {listener, reason}: TLS or WebSocket handshakes that failed.
pub const HANDSHAKE_FAILURES: &str = "skein_handshake_failures_total";
/// Counter {outcome}: reloads of the TLS certificate files.
pub const TLS_RELOADS: &str = "skein_tls_reloads_total";
/// Counter {status}: device certificates this node registered.
pub const CERTIFICATES_REGISTERED: &str = "skein_certificates_registered_total";
/// Counter {status}: connections refused for a certificate that is not active.
pub const CERTIFICATES_REJECTED: &str = "skein_certificates_rejected_total";
/// Counter {status}: connections ended as their certificate stopped being active.
pub const CERTIFICATE_KICKS: &str = "skein_certificate_kicks_total";
/// Counter: certificate registrations that did not commit.
pub const CERT_REGISTRATIONS_FAILED: &str = "skein_certificate_registrations_failed_total";

// Cluster (Raft): constants go here, with their rows in `CLUSTER` below.

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric's name, kind, unit, label names and HELP text.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn desc(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Desc {
    Desc {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

const CONNECTIONS_AND_SESSIONS: &[Desc] = &[
    desc(
        CONNECTIONS,
        Gauge,
        Unit::Count,
        &["protocol"],
        "Open MQTT connections past a successful CONNECT, by protocol level (3, 4, 5).",
    ),
    desc(
        CONNECTIONS_PARKED,
        Gauge,
        Unit::Count,
        &[],
        "Connections parked: idle, holding no task until their socket, session or keepalive needs them.",
    ),
    desc(
        CONNECTION_PARKS,
        Counter,
        Unit::Count,
        &[],
        "Times an idle connection parked.",
    ),
    desc(
        CONNECTS,
        Counter,
        Unit::Count,
        &["protocol"],
        "Successful CONNECTs, by protocol level (3, 4, 5).",
    ),
    desc(
        CONNECTS_REFUSED,
        Counter,
        Unit::Count,
        &["reason"],
        "Connections refused before a session was attached, by reason.",
    ),
    desc(
        CONNECTS_ABANDONED,
        Counter,
        Unit::Count,
        &[],
        "CONNECTs not registered because their client had already closed the socket.",
    ),
    desc(
        CONNECT_REGISTRATIONS_RELEASED,
        Counter,
        Unit::Count,
        &[],
        "Client registrations that committed after their CONNECT was refused, released again.",
    ),
    desc(
        CLUSTER_REFUSED,
        Counter,
        Unit::Count,
        &["request"],
        "SUBSCRIBEs and UNSUBSCRIBEs the cluster did not take (no quorum, a timeout): their filters were refused, by request.",
    ),
    desc(
        DISCONNECTS,
        Counter,
        Unit::Count,
        &["reason"],
        "Connections ended after a successful CONNECT, by reason.",
    ),
    desc(
        SESSION_HANDOVER_MESSAGES,
        Counter,
        Unit::Count,
        &["role"],
        "Messages of persistent sessions moved between nodes: taken (written here for a client this node took over), released (deleted here once the new node had them) or duplicate (handed over but left out here, as they had reached this node too).",
    ),
    desc(
        SESSION_HANDOVER_FAILURES,
        Counter,
        Unit::Count,
        &["reason"],
        "Session hand-overs this node could not finish, by reason; what was not fetched stays on the node that held the session.",
    ),
    desc(
        SESSION_HANDOVER_SKIPPED,
        Counter,
        Unit::Count,
        &[],
        "Deliveries not queued for a session that moved to another node (that node gets the message itself).",
    ),
    desc(
        SESSION_MOVED_AWAY_REDIRECTS,
        Counter,
        Unit::Count,
        &["outcome"],
        "Forwards that reached a node after the session they were for had moved away from it: sent on to the owner (sent; failed: the owner did not take it, the sender is asked to send it again), and on the owner delivered, left out as a copy the session had (duplicate) or for a session it no longer holds (no_session).",
    ),
    desc(
        MESSAGES_MARKED_DUP,
        Counter,
        Unit::Count,
        &["cause"],
        "Queued QoS 1/2 messages marked to go out with DUP as their client may have them already, by cause: unclean_restart (queued on disk when the node stopped without an orderly shutdown), resent_forward (a forward sent again to a node that may have delivered it before it restarted, redirected from such a node, or from a node marked down).",
    ),
    desc(
        SESSIONS,
        Gauge,
        Unit::Count,
        &["state"],
        "Sessions on this node, online (a connection attached) or offline (persistent, waiting).",
    ),
    desc(
        SUBSCRIPTIONS,
        Gauge,
        Unit::Count,
        &[],
        "Subscriptions of all sessions on this node.",
    ),
    desc(
        RETAINED_MESSAGES,
        Gauge,
        Unit::Count,
        &[],
        "Retained messages stored on this node.",
    ),
];

const MESSAGES: &[Desc] = &[
    desc(
        MESSAGES_RECEIVED,
        Counter,
        Unit::Count,
        &["qos"],
        "PUBLISH packets received from clients, by QoS.",
    ),
    desc(
        MESSAGES_SENT,
        Counter,
        Unit::Count,
        &["qos"],
        "PUBLISH packets sent to clients, by QoS.",
    ),
    desc(
        MESSAGES_ACKED,
        Counter,
        Unit::Count,
        &[],
        "QoS 1/2 deliveries acknowledged by the subscriber.",
    ),
    desc(
        MESSAGES_DROPPED,
        Counter,
        Unit::Count,
        &["reason"],
        "Messages dropped instead of delivered, by reason.",
    ),
    desc(
        PUBLISHES_REFUSED,
        Counter,
        Unit::Count,
        &["reason"],
        "QoS 1/2 publishes refused: the disk could not take them (storage_low_space, storage_error), or another node with subscribers did not (forward_queue_full, forward_failed).",
    ),
    desc(
        INFLIGHT_MESSAGES,
        Gauge,
        Unit::Count,
        &[],
        "QoS 1/2 messages sent to clients and not yet acknowledged.",
    ),
    desc(
        QUEUED_MESSAGES,
        Gauge,
        Unit::Count,
        &[],
        "Messages waiting in session queues.",
    ),
    desc(
        BYTES_RECEIVED,
        Counter,
        Unit::Bytes,
        &[],
        "Bytes read from MQTT sockets.",
    ),
    desc(
        BYTES_SENT,
        Counter,
        Unit::Bytes,
        &[],
        "Bytes written to MQTT sockets.",
    ),
    desc(
        PACKET_DECODE_ERRORS,
        Counter,
        Unit::Count,
        &[],
        "MQTT packets that failed to decode; the connection is closed.",
    ),
    desc(
        PUBLISH_ORDER_WAITS,
        Counter,
        Unit::Count,
        &[],
        "Client PUBLISHes that waited, before routing, for other connections to handle input that reached the node first (they matched no subscription yet, or the late log was full).",
    ),
    desc(
        PUBLISH_ORDER_LATE_DELIVERIES,
        Counter,
        Unit::Count,
        &[],
        "Deliveries to a new subscription of publishes that reached the node after its SUBSCRIBE but were routed before the SUBSCRIBE was handled.",
    ),
];

const EVENTS: &[Desc] = &[
    desc(
        EVENT_QUEUE_DEPTH,
        Gauge,
        Unit::Count,
        &["dialect"],
        "Events waiting in a dialect's queue.",
    ),
    desc(
        EVENTS_DROPPED,
        Counter,
        Unit::Count,
        &["dialect", "reason"],
        "Events a dialect did not get (its queue was full or closed).",
    ),
    desc(
        WEBHOOK_REQUESTS,
        Counter,
        Unit::Count,
        &["outcome"],
        "Webhook deliveries, by outcome.",
    ),
    desc(
        WEBHOOK_REQUEST_DURATION,
        Histogram,
        Unit::Seconds,
        &[],
        "Webhook request latency.",
    ),
    desc(
        REDIS_XADD,
        Counter,
        Unit::Count,
        &["outcome"],
        "Events appended to the Redis stream (XADD), by outcome.",
    ),
];

const STORAGE: &[Desc] = &[
    desc(
        STORAGE_FLUSH_DURATION,
        Histogram,
        Unit::Seconds,
        &[],
        "Time to flush storage to disk (before acknowledging stored messages, and at shutdown).",
    ),
    desc(
        STORAGE_AVAILABLE,
        Gauge,
        Unit::Count,
        &[],
        "1 while storage takes new data; 0 below storage_min_free_bytes or after a storage failure.",
    ),
    desc(
        STORAGE_STATE,
        Gauge,
        Unit::Count,
        &["state"],
        "1 for the storage's current state (available, low_space, failed), 0 for the others.",
    ),
    desc(
        STORAGE_FREE_BYTES,
        Gauge,
        Unit::Bytes,
        &[],
        "Free bytes on the data directory's file system, as last measured (every 500 ms).",
    ),
    desc(
        STORAGE_MIN_FREE_BYTES,
        Gauge,
        Unit::Bytes,
        &[],
        "The free-space guard in bytes (storage_min_free_bytes; 0: off).",
    ),
];

const RUNTIME: &[Desc] = &[
    desc(
        RUNTIME_WORKERS,
        Gauge,
        Unit::Count,
        &[],
        "Worker threads of the async runtime (setting worker_threads; 0 there means one per CPU).",
    ),
    desc(
        ACCEPT_ERRORS,
        Counter,
        Unit::Count,
        &["listener"],
        "Failed accepts (too many open files, say), by listener (mqtt, http); each is followed by a wait of 5 ms doubling to 1 s.",
    ),
    desc(
        LOG_LINES_DROPPED,
        Counter,
        Unit::Count,
        &[],
        "Log lines that could not be written (stderr full or closed) and were dropped.",
    ),
];

const HTTP_SERVER: &[Desc] = &[
    desc(
        HTTP_CONNECTIONS,
        Gauge,
        Unit::Count,
        &[],
        "Open HTTP connections.",
    ),
    desc(
        HTTP_CONNECTIONS_REFUSED,
        Counter,
        Unit::Count,
        &[],
        "HTTP connections closed at once because http_max_connections were open.",
    ),
    desc(
        HTTP_TIMEOUTS,
        Counter,
        Unit::Count,
        &["phase"],
        "HTTP connections closed (header, idle, write) or requests answered 408 (body) for taking too long, by phase.",
    ),
    desc(
        HTTP_BODIES_TOO_LARGE,
        Counter,
        Unit::Count,
        &[],
        "HTTP requests answered 413: a body over http_max_body_bytes.",
    ),
];

/// Raft metrics of the cluster (leader changes, terms, log indexes, RPC latencies): their
/// rows go here, e.g. `skein_raft_leader_changes_total`.
const CLUSTER: &[Desc] = &[];

const SECURITY: &[Desc] = &[
    desc(
        ACL_RELOADS,
        Counter,
        Unit::Count,
        &["outcome"],
        "ACL file reloads (on change or SIGHUP), by outcome; a failed one keeps the old rules.",
    ),
    desc(
        ACL_RULES,
        Gauge,
        Unit::Count,
        &[],
        "Rules (topic and pattern lines) of the ACL file in force.",
    ),
    desc(
        AUTHZ_DENIED,
        Counter,
        Unit::Count,
        &["action"],
        "Subscriptions, publishes, deliveries and wills the ACL or a token's claims refused.",
    ),
    desc(
        AUTH_HTTP_REQUESTS,
        Counter,
        Unit::Count,
        &["outcome"],
        "HTTP authentication requests, by outcome.",
    ),
    desc(
        AUTH_HTTP_CACHE_HITS,
        Counter,
        Unit::Count,
        &[],
        "CONNECTs answered from the HTTP authentication cache.",
    ),
    desc(
        AUTH_HTTP_IN_FLIGHT,
        Gauge,
        Unit::Count,
        &[],
        "HTTP authentication requests in flight.",
    ),
    desc(
        AUTHZ_HTTP_REQUESTS,
        Counter,
        Unit::Count,
        &["outcome"],
        "HTTP authorization requests, by outcome.",
    ),
    desc(
        AUTHZ_HTTP_CACHE_HITS,
        Counter,
        Unit::Count,
        &[],
        "PUBLISHes and SUBSCRIBE filters decided from the HTTP authorization cache.",
    ),
    desc(
        AUTHZ_HTTP_IN_FLIGHT,
        Gauge,
        Unit::Count,
        &[],
        "HTTP authorization requests in flight.",
    ),
    desc(
        AUTH_JWT,
        Counter,
        Unit::Count,
        &["outcome"],
        "JWT checks at CONNECT, by outcome.",
    ),
];

/// Every metric this node exports.
pub const ALL: &[&[Desc]] = &[
    CONNECTIONS_AND_SESSIONS,
    MESSAGES,
    EVENTS,
    STORAGE,
    RUNTIME,
    HTTP_SERVER,
    transport::TRANSPORTS,
    CLUSTER,
    SECURITY,
];

/// Every metric, flattened.
pub fn descriptions() -> impl Iterator<Item = &'static Desc> {
    ALL.iter().flat_map(|group| group.iter())
}

/// Histogram buckets in seconds: from sub-millisecond disk flushes to slow web servers.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets of a count per batch (messages per forwarded batch).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0];

/// How often histogram samples are folded in when nobody scrapes, so they don't pile up.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for this process and describes every metric. Only the
/// first call installs; later ones (a second node in one process, unit tests) get the same
/// handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(skein_cluster::metrics::FORWARD_BATCH_MESSAGES.into()),
                        BATCH_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    preregister();
                    spawn_upkeep(handle.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed: /metrics will be empty")
                }
            }
            handle
        })
        .clone()
}

/// Sends every HELP text and unit to the current recorder, the cluster's included.
pub fn describe() {
    for d in descriptions() {
        match d.kind {
            Kind::Counter => metrics::describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => metrics::describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => metrics::describe_histogram!(d.name, d.unit, d.help),
        }
    }
    skein_cluster::metrics::describe();
}

/// A thread rather than a task: it must outlive any one runtime (tests start several).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
}

#[cfg(test)]
pub(crate) mod tests;
