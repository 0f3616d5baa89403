//! Integration test support for Skein.
//!
//! * [`Node`] spawns a real `skein` process (ephemeral ports, own temp data
//!   dir), waits for its `mqtt listening on` / `http listening on` lines and
//!   can `kill9()`, `terminate()` (SIGTERM) and `restart()` it.
//! * [`raw::RawClient`] speaks MQTT byte by byte (for illegal packets and exact
//!   wire assertions) using the small codec in [`codec`].
//! * [`clients::v3::Client`] / [`clients::v5::Client`] wrap rumqttc clients.
//! * [`cli`] runs `mosquitto_pub` / `mosquitto_sub` for interop tests.
//! * [`wait_until`] polls a condition with a deadline.
//! * [`http_get`] / [`http_request`] / [`http_request_within`] / [`metric_sum`] talk to
//!   the HTTP listener.
//! * [`layering`] checks that no crate's top-level modules import each other in a cycle.
//!
//! The crate's modules in layer order. Direction: each module imports only modules listed
//! below it.
//!
//! - `chart`: the Helm chart's StatefulSet rendered and run as pods (Docker containers of
//!   the image, or local processes).
//! - `cluster`: several real `skein` processes as one cluster ([`cluster::TestCluster`]).
//! - `node`: spawning and controlling real `skein` processes.
//! - `clients`: rumqttc clients whose events tests wait for with deadlines.
//! - `raw`: the raw-socket MQTT client.
//! - `cli`: the `mosquitto_pub` / `mosquitto_sub` helpers.
//! - `layering`: the layering check of `tests/layering.rs`.
//! - `http`: minimal HTTP requests to a node's HTTP listener, and reading `/metrics`.
//! - `codec`: the permissive MQTT codec of the raw client.
//! - `wait`: the default timeouts and waiting on a condition with a deadline.

pub mod chart;
pub mod cli;
pub mod clients;
pub mod cluster;
pub mod codec;
pub mod http;
pub mod layering;
pub mod node;
pub mod raw;
pub mod wait;

pub use cluster::TestCluster;
pub use codec::{prop, Connect, Packet, PropValue, Props, Proto, Publish, SubFilter, Will};
pub use http::{http_get, http_request, http_request_within, metric_sum};
pub use node::{Node, NodeBuilder};
pub use raw::{RawClient, RecvError};
pub use wait::{wait_until, wait_until_blocking, QUIET, RECV_TIMEOUT};

/// A client id unique within the test process (prefix + counter).
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}
