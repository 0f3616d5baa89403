//! Recording on the hot path: keys built at compile time and counter handles registered
//! once, so counting a message is an atomic add, never an allocation; and the few updates
//! rare enough to look a series up by name.

use std::time::Duration;

use metrics::{Key, Label, Level, Metadata};

use super::*;
use crate::codec::{ProtocolVersion, QoS};
use crate::disconnect::DisconnectReason;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Keys of `name` with one label `label` taking each of `values`, in that order.
macro_rules! keys {
    ($name:expr, $label:literal, [$($value:literal),+ $(,)?]) => {
        [$(Key::from_static_parts($name, {
            static LABELS: [Label; 1] = [Label::from_static_parts($label, $value)];
            &LABELS
        })),+]
    };
}

static RECEIVED: [Key; 3] = keys!(MESSAGES_RECEIVED, "qos", ["0", "1", "2"]);
static SENT: [Key; 3] = keys!(MESSAGES_SENT, "qos", ["0", "1", "2"]);
static ACKED: Key = Key::from_static_name(MESSAGES_ACKED);
static DECODE_ERRORS: Key = Key::from_static_name(PACKET_DECODE_ERRORS);
static BYTES_IN: Key = Key::from_static_name(BYTES_RECEIVED);
static BYTES_OUT: Key = Key::from_static_name(BYTES_SENT);
static CONNECTED: [Key; 3] = keys!(CONNECTIONS, "protocol", ["3", "4", "5"]);
static CONNECTS_BY_PROTOCOL: [Key; 3] = keys!(CONNECTS, "protocol", ["3", "4", "5"]);
/// Every drop reason the broker uses; another one still counts, with an allocation.
static DROPPED: [Key; 8] = keys!(
    MESSAGES_DROPPED,
    "reason",
    [
        "no_subscribers",
        "queue_full",
        "qos0_offline",
        "expired",
        "storage_error",
        "storage_low_space",
        "too_large_for_client",
        "not_authorized",
    ]
);

fn counter(key: &Key) -> metrics::Counter {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

fn qos_index(qos: QoS) -> usize {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn protocol_index(protocol: ProtocolVersion) -> usize {
    match protocol {
        ProtocolVersion::V31 => 0,
        ProtocolVersion::V311 => 1,
        ProtocolVersion::V5 => 2,
    }
}

/// Handles of the per-message counters, registered once: looking a counter up in the
/// recorder's registry on every message cost a quarter of the CPU in fan-out benchmarks.
/// The per-connection ones too: registering a handle allocates, and six registrations
/// per connection were a sixth of a connect's allocations.
#[derive(Clone)]
pub struct HotCounters {
    received: [metrics::Counter; 3],
    sent: [metrics::Counter; 3],
    acked: metrics::Counter,
    bytes_in: metrics::Counter,
    bytes_out: metrics::Counter,
    connects: [metrics::Counter; 3],
    connected: [metrics::Gauge; 3],
    /// By [`DisconnectReason::index`].
    disconnects: [metrics::Counter; DisconnectReason::ALL.len()],
}

impl HotCounters {
    /// Registers with the installed recorder (a no-op recorder when none is installed).
    pub fn register() -> HotCounters {
        HotCounters {
            received: RECEIVED.each_ref().map(counter),
            sent: SENT.each_ref().map(counter),
            acked: counter(&ACKED),
            bytes_in: counter(&BYTES_IN),
            bytes_out: counter(&BYTES_OUT),
            connects: CONNECTS_BY_PROTOCOL.each_ref().map(counter),
            connected: CONNECTED.each_ref().map(gauge),
            disconnects: DisconnectReason::ALL.map(|r| {
                let labels = vec![Label::new("reason", r.as_str())];
                counter(&Key::from_parts(DISCONNECTS, labels))
            }),
        }
    }

    /// A CONNECT succeeded (counted once; see `connection_opened` for the open ones).
    pub fn connect_accepted(&self, protocol: ProtocolVersion) {
        self.connects[protocol_index(protocol)].increment(1);
    }

    /// A connection past CONNECT opened: counted in [`CONNECTIONS`] until
    /// [`HotCounters::connection_closed`].
    pub fn connection_opened(&self, protocol: ProtocolVersion) {
        self.connected[protocol_index(protocol)].increment(1.0);
    }

    pub fn connection_closed(&self, protocol: ProtocolVersion) {
        self.connected[protocol_index(protocol)].decrement(1.0);
    }

    /// A connection past CONNECT ended.
    pub fn disconnected(&self, reason: DisconnectReason) {
        self.disconnects[reason.index()].increment(1);
    }

    pub fn received(&self, qos: QoS) {
        self.received[qos_index(qos)].increment(1);
    }

    /// `n` PUBLISH packets went out at `qos`.
    pub fn sent(&self, qos: QoS, n: u64) {
        if n > 0 {
            self.sent[qos_index(qos)].increment(n);
        }
    }

    pub fn acked(&self, n: u64) {
        if n > 0 {
            self.acked.increment(n);
        }
    }

    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.increment(n as u64);
    }

    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.increment(n as u64);
    }
}

/// A PUBLISH came in from a client.
pub fn message_received(qos: QoS) {
    counter(&RECEIVED[qos_index(qos)]).increment(1);
}

/// A PUBLISH went out to a client.
pub fn message_sent(qos: QoS) {
    counter(&SENT[qos_index(qos)]).increment(1);
}

/// A subscriber acknowledged a QoS 1/2 delivery.
pub fn message_acked() {
    counter(&ACKED).increment(1);
}

/// A message was dropped for `reason` (e.g. `DropReason::as_str()`).
pub fn message_dropped(reason: &'static str) {
    let known = DROPPED
        .iter()
        .find(|k| k.labels().next().is_some_and(|l| l.value() == reason));
    match known {
        Some(key) => counter(key).increment(1),
        None => metrics::counter!(MESSAGES_DROPPED, "reason" => reason).increment(1),
    }
}

/// The ACL (or a token's claims) refused `action` (subscribe, publish, deliver, will).
pub fn authz_denied(action: &'static str) {
    metrics::counter!(AUTHZ_DENIED, "action" => action).increment(1);
}

/// A QoS 1/2 publish was refused for `reason` (`NotStored::reason`): storage could not
/// take it. Rare enough for a lookup by name.
pub fn publish_refused(reason: &'static str) {
    metrics::counter!(PUBLISHES_REFUSED, "reason" => reason).increment(1);
}

/// Bytes read from an MQTT socket.
pub fn bytes_received(n: usize) {
    counter(&BYTES_IN).increment(n as u64);
}

/// Bytes written to an MQTT socket.
pub fn bytes_sent(n: usize) {
    counter(&BYTES_OUT).increment(n as u64);
}

/// A packet failed to decode.
pub fn packet_decode_error() {
    counter(&DECODE_ERRORS).increment(1);
}

pub fn cluster_refused(request: &'static str) {
    metrics::counter!(CLUSTER_REFUSED, "request" => request).increment(1);
}

/// `n` messages of a moved session were written here (`taken`) or deleted here once the
/// new node had them (`released`).
pub fn handover_messages(role: &'static str, n: usize) {
    metrics::counter!(SESSION_HANDOVER_MESSAGES, "role" => role).increment(n as u64);
}

/// A session hand-over stopped before the holder had handed everything over.
pub fn handover_failed(reason: &'static str) {
    metrics::counter!(SESSION_HANDOVER_FAILURES, "reason" => reason).increment(1);
}

pub fn moved_away_redirect(outcome: &'static str) {
    metrics::counter!(SESSION_MOVED_AWAY_REDIRECTS, "outcome" => outcome).increment(1);
}

/// `n` queued messages marked to go out with DUP (see [`MESSAGES_MARKED_DUP`]).
pub fn marked_dup(cause: &'static str, n: usize) {
    metrics::counter!(MESSAGES_MARKED_DUP, "cause" => cause).increment(n as u64);
}

pub fn handover_skipped_delivery() {
    metrics::counter!(SESSION_HANDOVER_SKIPPED).increment(1);
}

/// A connection was refused before a session was attached.
pub fn connect_refused(reason: &'static str) {
    metrics::counter!(CONNECTS_REFUSED, "reason" => reason).increment(1);
}

/// A CONNECT was dropped unregistered: its client had closed the socket.
pub fn connect_abandoned() {
    metrics::counter!(CONNECTS_ABANDONED).increment(1);
}

/// A registration that committed after its CONNECT was refused is being released.
pub fn late_registration_released() {
    metrics::counter!(CONNECT_REGISTRATIONS_RELEASED).increment(1);
}

fn gauge(key: &Key) -> metrics::Gauge {
    metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
}

/// Observes one storage flush.
pub fn storage_flushed(elapsed: Duration) {
    metrics::histogram!(STORAGE_FLUSH_DURATION).record(elapsed.as_secs_f64());
}

/// The storage gauges, from the state the storage monitor keeps up to date (set when
/// Prometheus scrapes, see `http/metrics_endpoint.rs`).
pub fn record_storage(health: &skein_storage::StorageHealth) {
    use skein_storage::Availability;
    let now = health.availability();
    metrics::gauge!(STORAGE_AVAILABLE).set(f64::from(u8::from(now == Availability::Available)));
    for state in [
        Availability::Available,
        Availability::LowSpace,
        Availability::Failed,
    ] {
        metrics::gauge!(STORAGE_STATE, "state" => state.as_str())
            .set(f64::from(u8::from(state == now)));
    }
    let space = health.space();
    metrics::gauge!(STORAGE_FREE_BYTES).set(space.free as f64);
    metrics::gauge!(STORAGE_MIN_FREE_BYTES).set(space.min_free as f64);
}

/// Creates the series a dashboard expects to see at zero before the first event.
pub(super) fn preregister() {
    for key in RECEIVED.iter().chain(&SENT).chain([&ACKED, &DECODE_ERRORS]) {
        counter(key).absolute(0);
    }
    for key in [&BYTES_IN, &BYTES_OUT] {
        counter(key).absolute(0);
    }
    for key in &CONNECTED {
        metrics::with_recorder(|r| r.register_gauge(key, &METADATA)).set(0.0);
    }
    for name in [
        LOG_LINES_DROPPED,
        HTTP_CONNECTIONS_REFUSED,
        HTTP_BODIES_TOO_LARGE,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(HTTP_CONNECTIONS).set(0.0);
}
