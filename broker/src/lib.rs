//! Skein broker node: the MQTT codec, sessions, routing, and the glue that runs a node.
//!
//! A node is started with [`run`], which takes already-bound listeners and a shutdown
//! token so tests can bind port 0 and stop the node when they like. [`run`] is [`open`]
//! (storage and state: what can fail at startup) followed by [`OpenNode::serve`].
//!
//! The crate's modules in layer order. Direction: each module imports only modules listed
//! below it (servers -> connection -> broker -> session -> config -> events -> metrics ->
//! codec); a call upwards goes through a trait defined below (`events::mqtt_out::Publisher`,
//! `session::Unpark`). The cluster seam (ids, `ClusterHandle`, `BrokerHandle`) is the
//! `skein-seam` crate.
//!
//! - `transport`: the listeners beside plain MQTT: MQTT over TLS, WebSocket and secure
//!   WebSocket (handshakes under a deadline, certificate reloads); their connections are
//!   served like plain ones.
//! - `server`: the MQTT listener: accept loop, connection limit, owns the parker, drains
//!   connections at shutdown.
//! - `http`: the HTTP server: probes, `/metrics`, the admin API, the event stream's API.
//! - `accept_backoff`: backing off when accepting fails, on either port.
//! - `connection`: one task per client: CONNECT, read -> session -> write, keepalive,
//!   limits, parking when idle.
//! - `auth`: authentication at CONNECT (password file, JWT, the HTTP authenticator, the
//!   anonymous-client policy) and what a connection may publish, subscribe to, receive.
//! - `broker`: the node's state: session registry, subscription index, routing (to local
//!   sessions and one hop to other nodes with interest); implements the seam's
//!   `BrokerHandle`.
//! - `local_cluster`: a one-node registry in this process, the seam's `ClusterHandle` as
//!   the broker's unit tests' double (a node always runs a Raft group, of one member when
//!   it has no peers).
//! - `input_order`: the node-wide input order: tickets stamped when the reactor reports
//!   input, publishes held until earlier input is handled, the late log that hands a
//!   SUBSCRIBE the publishes that overtook it.
//! - `session`: a client's session: subscriptions, queue, in-flight messages, will; the
//!   signal that reaches its connection.
//! - `retained`: retained messages, in memory and in storage.
//! - `storage_refusal`: what a publish that needed the disk is told while storage takes no
//!   new data, counted and logged.
//! - `auth_http`: the HTTP authenticator and authorizer (`auth_http/authz.rs`): their
//!   requests, answers, cache and bound (`auth_http/endpoint.rs`, shared).
//! - `config`: settings: defaults, TOML/environment/flags, checks, `--help`; hands the
//!   events their settings.
//! - `password_file`: the password file's format and its users.
//! - `jwt`: verifying JWT passwords and reading their claims.
//! - `acl`: the ACL file (Mosquitto's format), one client's view of it, reloads.
//! - `events`: system events: the model, the bus, raising them, the dialects.
//! - `metrics`: metric names, the Prometheus recorder, the counters the hot path bumps.
//! - `message`: an application message as routing carries it.
//! - `topic`: topic names and filters, the subscription trie, other nodes' interest.
//! - `disconnect`: why a connection ended, as events, metrics and logs name it.
//! - `codec`: MQTT packets to and from bytes (3.1, 3.1.1, 5.0).
//! - `log_writer`: log output that drops what it cannot write instead of stopping the node.
//! - `log_limit`: at most one log line per interval for a condition that repeats per message.
//! - `lifecycle_lock`: the one-byte async lock that serialises a session's lifecycle.
//! - `lazy_box`: a collection that costs one pointer while it is empty.
//! - `hash`: the hasher of the node's maps.
//! - `memory`: giving freed heap back to the operating system.
//! - `aligned_pool`: the binary's allocator: cache-line-aligned blocks in pages of their own.
//! - `error`: [`BrokerError`], the crate's error type.

pub mod accept_backoff;
pub mod acl;
pub mod aligned_pool;
pub mod auth;
pub mod auth_http;
pub mod broker;
pub mod codec;
pub mod config;
pub mod connection;
pub mod disconnect;
pub mod error;
pub mod events;
pub mod hash;
pub mod http;
pub mod input_order;
pub mod jwt;
pub mod lazy_box;
pub mod lifecycle_lock;
#[cfg(test)]
pub mod local_cluster;
pub mod log_limit;
pub mod log_writer;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod password_file;
pub mod retained;
mod server;
pub mod session;
pub mod storage_refusal;
pub mod topic;
pub mod transport;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use broker::Broker;
pub use config::Config;
pub use error::BrokerError;

use skein_cluster::{ClusterConfig, ClusterNode, RaftSettings};

/// How long a shutdown waits for the event dialects to publish what is queued.
const EVENTS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How events name this node: the MQTT listener's address (loopback when it listens on
/// every interface).
fn node_info(config: &Config, mqtt: std::net::SocketAddr) -> events::NodeInfo {
    let node = config
        .advertise_addr
        .parse::<std::net::SocketAddr>()
        .unwrap_or_else(|_| {
            let ip = if mqtt.ip().is_unspecified() {
                local_ipv4().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
            } else {
                mqtt.ip()
            };
            std::net::SocketAddr::new(ip, mqtt.port())
        });
    events::NodeInfo {
        node: node.to_string(),
        node_ip: node.ip().to_string(),
        node_name: config.node_name.clone(),
    }
}

/// The first non-loopback local IPv4 address, from the kernel's routing trie (no network
/// traffic, no extra dependency); None when there is none or /proc is unavailable.
fn local_ipv4() -> Option<std::net::IpAddr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    first_local_ipv4(&trie)
}

fn first_local_ipv4(trie: &str) -> Option<std::net::IpAddr> {
    let mut previous: Option<&str> = None;
    for line in trie.lines() {
        let line = line.trim();
        if line.starts_with("/32 host LOCAL") {
            if let Some(ip) = previous.and_then(|p| p.parse::<std::net::Ipv4Addr>().ok()) {
                if !ip.is_loopback() {
                    return Some(ip.into());
                }
            }
        }
        previous = line.strip_prefix("|-- ").or(previous);
    }
    None
}

/// Runs a node until `shutdown` fires: [`open`], then [`OpenNode::serve`].
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    open(config, listeners, shutdown).await?.serve().await
}

/// The node's listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub mqtt: TcpListener,
    pub http: TcpListener,
    /// The cluster's gRPC (Raft, proposals, membership).
    pub grpc: TcpListener,
    /// The listeners that are off unless configured: MQTT over TLS, WebSocket, secure
    /// WebSocket.
    pub extra: ExtraListeners,
}

/// MQTT over TLS (`mqtts`), over WebSocket (`ws`) and secure WebSocket (`wss`); None: off.
#[derive(Default)]
pub struct ExtraListeners {
    pub mqtts: Option<TcpListener>,
    pub ws: Option<TcpListener>,
    pub wss: Option<TcpListener>,
}

impl ExtraListeners {
    /// Each listener that is on, with its name.
    fn each(&self) -> impl Iterator<Item = (transport::Listener, &TcpListener)> {
        [
            (transport::Listener::Mqtts, self.mqtts.as_ref()),
            (transport::Listener::Ws, self.ws.as_ref()),
            (transport::Listener::Wss, self.wss.as_ref()),
        ]
        .into_iter()
        .filter_map(|(kind, l)| Some((kind, l?)))
    }
}

/// Starts this node's cluster member on `store`: a one-member Raft group without peers
/// (the same code path as a cluster of many). Its record names the advertised MQTT
/// address, as events do.
async fn start_cluster(
    config: &Config,
    store: &skein_storage::Store,
    grpc: TcpListener,
    node: &events::NodeInfo,
) -> Result<Arc<ClusterNode>, BrokerError> {
    let cluster_error = |e: skein_cluster::ClusterError| BrokerError::Cluster(e.to_string());
    let peers = skein_cluster::parse_peers(&config.peers).map_err(cluster_error)?;
    let grpc_addr = grpc.local_addr().map_err(|cause| BrokerError::Io {
        context: "gRPC listener address".into(),
        cause,
    })?;
    // Empty: this node's `--peers` entry names it (the cluster fills it in); otherwise
    // the listener's address, on the advertised IP when it listens on every interface.
    let advertised_grpc = if !config.grpc_advertise.is_empty() {
        config.grpc_advertise.clone()
    } else if peers.iter().any(|p| p.id == config.node_id) {
        String::new()
    } else if grpc_addr.ip().is_unspecified() {
        format!("{}:{}", node.node_ip, grpc_addr.port())
    } else {
        grpc_addr.to_string()
    };
    let cluster_config = ClusterConfig {
        node_id: config.node_id,
        node: skein_cluster::Node {
            name: config.node_name.clone(),
            grpc: advertised_grpc,
            mqtt: node.node.clone(),
        },
        peers,
        join: (!config.join.is_empty()).then(|| config.join.clone()),
        raft: RaftSettings {
            heartbeat_ms: config.raft_heartbeat_ms,
            election_timeout_ms: config.raft_election_timeout_ms,
            registration_deadline_ms: config.connect_commit_timeout_ms,
            node_down_after_ms: config.node_down_after_ms,
            forward: skein_cluster::ForwardSettings {
                queue_messages: config.forward_queue_messages,
                ..skein_cluster::ForwardSettings::default()
            },
            ..RaftSettings::default()
        },
    };
    let member = ClusterNode::start(cluster_config, store, grpc)
        .await
        .map_err(cluster_error)?;
    Ok(Arc::new(member))
}

/// A node whose storage is open and whose state is loaded, not serving yet. What can
/// stop a node at startup (a data directory that is a file or read-only, a store from a
/// newer version, a corrupt record) has been tried when [`open`] returns, so the binary
/// says it is listening only once this exists.
pub struct OpenNode {
    broker: Arc<Broker>,
    cluster: Arc<ClusterNode>,
    mqtt: TcpListener,
    http: TcpListener,
    extra: ExtraListeners,
    /// The TLS configuration of `mqtts` and `wss` (None when both are off).
    tls: Option<Arc<transport::tls::TlsContext>>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    mqtt_dialects: events::mqtt_dialects::MqttDialects,
    webhook: Option<events::webhook::WebhookDialect>,
    stream: events::stream::StreamDialect,
    redis: Option<events::redis::RedisDialect>,
    api_token: String,
    http_limits: http::Limits,
    /// SIGHUP's handler for ACL reloads, installed before the node says it listens.
    acl_hangup: Option<tokio::signal::unix::Signal>,
}

/// Opens storage, starts the node's cluster member (its gRPC server serves from here on)
/// and loads the node's state (sessions, retained messages) with the listeners already
/// bound; serves no MQTT or HTTP yet.
pub async fn open(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<OpenNode, BrokerError> {
    let Listeners {
        mqtt,
        http,
        grpc,
        extra,
    } = listeners;
    // Before storage is opened: a bad certificate or key stops the node at once.
    let tls = if config.tls_enabled() {
        Some(transport::tls::TlsContext::load(&config)?)
    } else {
        None
    };
    // Before anything records: what is counted earlier is lost.
    let prometheus = metrics::install();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    ::metrics::gauge!(metrics::RUNTIME_WORKERS).set(workers as f64);
    // Opening scans the event log's segments: blocking I/O, off the async workers.
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || skein_storage::Store::open(&data_dir))
        .await
        .map_err(|e| BrokerError::Io {
            context: "opening the store".into(),
            cause: std::io::Error::other(e),
        })??;
    let mqtt_addr = mqtt.local_addr().map_err(|cause| BrokerError::Io {
        context: "MQTT listener address".into(),
        cause,
    })?;
    let info = node_info(&config, mqtt_addr);
    let cluster = start_cluster(&config, &store, grpc, &info).await?;
    let mut events = events::EventBus::new(info);
    let mqtt_dialects = events::mqtt_dialects::register_mqtt_dialects(&mut events, &config);
    let webhook = events::webhook::register(&mut events, &config);
    let stream = events::stream::register(&mut events, &config, &store);
    let redis = events::redis::register(&mut events, &config);
    let api_token = config.api_token.expose().to_owned();
    let http_limits = http::Limits::from_config(&config);
    let broker = match Broker::new(config, store, cluster.clone(), events, shutdown) {
        Ok(broker) => broker,
        Err(e) => {
            cluster.shutdown().await;
            return Err(e.into());
        }
    };
    // From here on the registry's changes reach the broker (takeovers by other nodes,
    // their interest).
    cluster.attach_broker(broker.clone());
    let acl_hangup = broker
        .acl
        .as_ref()
        .and_then(|_| acl::AclState::hangup_signal());
    Ok(OpenNode {
        broker,
        cluster,
        mqtt,
        http,
        extra,
        tls,
        prometheus,
        mqtt_dialects,
        webhook,
        stream,
        redis,
        api_token,
        http_limits,
        acl_hangup,
    })
}

impl OpenNode {
    /// The address MQTT clients connect to.
    pub fn mqtt_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.mqtt.local_addr()
    }

    /// The addresses of the listeners beside plain MQTT that are on (`mqtts`, `ws`, `wss`).
    pub fn extra_addrs(&self) -> std::io::Result<Vec<(&'static str, std::net::SocketAddr)>> {
        self.extra
            .each()
            .map(|(kind, l)| Ok((kind.name(), l.local_addr()?)))
            .collect()
    }

    /// The address of the HTTP server (probes, metrics, admin API).
    pub fn http_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.http.local_addr()
    }

    /// The address the cluster's gRPC server listens on.
    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        self.cluster.grpc_addr()
    }

    /// Serves MQTT and HTTP until the shutdown token given to [`open`] fires, then drains
    /// connections and flushes storage.
    pub async fn serve(self) -> Result<(), BrokerError> {
        let OpenNode {
            broker,
            cluster,
            mqtt,
            http,
            extra,
            tls,
            prometheus,
            mqtt_dialects,
            webhook,
            stream,
            redis,
            api_token,
            http_limits,
            acl_hangup,
        } = self;
        let shutdown = broker.shutdown.clone();
        broker.spawn_retained_sweeper(std::time::Duration::from_secs(30));
        broker.spawn_acl_watch(acl_hangup);
        // What the registry still says of this node's previous run.
        let member = cluster.clone();
        broker.spawn_registry_reconcile(async move {
            member.caught_up(std::time::Duration::from_secs(60)).await
        });
        broker.spawn_storage_monitor();
        let mqtt_dialects = mqtt_dialects.start(&broker);
        let stream_api = stream.api();
        let sinks: Vec<events::sink_task::SinkTask> = [
            webhook.map(|w| w.start()),
            stream.start(),
            redis.map(|r| r.start()),
        ]
        .into_iter()
        .flatten()
        .collect();
        // Owned by the MQTT server; the /metrics route reads how many connections it holds.
        let parker = connection::park::Parker::new(
            broker.config.park_idle(),
            broker.connections.clone(),
            broker.input_order.clone(),
        );
        let member = cluster.clone();
        let health = http::HealthState::new()
            .watching_storage(broker.store.health().clone())
            .watching_cluster(move || {
                member
                    .readiness()
                    .map_err(|why| (why.as_str(), why.describe()))
            });
        let routes = http::compose(vec![
            http::health_routes(health.clone()),
            http::metrics_endpoint::router(prometheus, broker.clone(), parker.handle()),
            http::event_stream::router(stream_api, Some(api_token.clone())),
            http::admin::router(broker.clone(), Some(api_token)),
        ]);
        let http_task = tokio::spawn(http::serve(http, routes, http_limits, shutdown.clone()));
        health.set_ready(true);
        {
            // Readiness drops as soon as the drain starts, not when it ends.
            let (health, shutdown) = (health.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                health.set_ready(false);
            });
        }
        // On a worker, so that a connection task spawned by the accept loop starts on the
        // accepting worker without waking another thread (less CPU per connect than from
        // the thread that polls `run`, with half the context switches). With glibc alone
        // the task cells would share that worker's arena with the connection state that
        // outlives them, and parking would leave holes (1.8 instead of 0.86 kB per idle
        // connection); the binary's allocator (aligned_pool) keeps task cells in chunks
        // of their own.
        if let Some(tls) = &tls {
            let interval = std::time::Duration::from_millis(broker.config.tls_reload_interval_ms);
            tls.clone().spawn_watch(interval, shutdown.clone());
        }
        let ExtraListeners { mqtts, ws, wss } = extra;
        for (kind, listener) in [
            (transport::Listener::Mqtts, mqtts),
            (transport::Listener::Ws, ws),
            (transport::Listener::Wss, wss),
        ] {
            if let Some(listener) = listener {
                // Ends on shutdown; its connections are drained with the MQTT server's.
                tokio::spawn(transport::listener::serve(
                    broker.clone(),
                    kind,
                    listener,
                    tls.clone(),
                ));
            }
        }
        let listener = tokio::spawn(server::serve_mqtt(broker.clone(), parker, mqtt)).await;
        if let Err(e) = &listener {
            // A panic in the accept loop: stop the node as a shutdown would, connections
            // drained before storage is flushed.
            tracing::error!(error = %e, "the MQTT listener failed; stopping the node");
            shutdown.cancel();
            server::close_connections(&broker).await;
        }
        // The connections' last events (go_away) go out before the node stops.
        mqtt_dialects.drain(EVENTS_DRAIN).await;
        broker.tasks.close();
        broker.tasks.wait().await;
        // Connections are drained and have released their client ids: the member leaves
        // off before storage is flushed.
        cluster.shutdown().await;
        // Every connection has ended: the sinks hand on the last events (and the stream
        // writes them) before storage is flushed.
        let finishing: Vec<_> = sinks
            .into_iter()
            .map(|sink| tokio::spawn(sink.finish(EVENTS_DRAIN)))
            .collect();
        for task in finishing {
            let _ = task.await;
        }
        if let Err(e) = broker.flush_storage().await {
            // After a storage failure the node ends with that error, below.
            if broker.store.health().failure().is_none() {
                return Err(e.into());
            }
        }
        // The stream sink syncs the event log when it finishes, unless it overran its drain.
        events::stream::sync_log(broker.store.event_log().clone()).await;
        match tokio::time::timeout(broker.config.shutdown_timeout(), http_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "http task failed"),
            Err(_) => tracing::warn!("http server still busy after the shutdown timeout"),
        }
        if let Some(cause) = broker.store.health().failure() {
            return Err(BrokerError::StorageFailed(cause));
        }
        // Last: everything sent was recorded and flushed above, so the next start may take
        // what is queued on disk as not sent yet (no mark: sent with DUP, see
        // `Session::restore`). Unless some queued messages are known to be possible
        // redeliveries: that knowledge is not stored, so the next start must assume it of
        // all of them.
        let marked = broker.stored_redelivery_marks();
        if marked > 0 {
            tracing::info!(
                messages = marked,
                "queued messages the clients may have already: the stop is not recorded as clean, the next start sends what is queued with DUP"
            );
        } else if let Err(e) = broker.store.mark_clean_stop().await {
            tracing::warn!(error = %e, "could not record the orderly stop; the next start takes it for a crash");
        }
        tracing::info!("node stopped");
        listener.map_err(|e| BrokerError::Io {
            context: "MQTT listener".into(),
            cause: std::io::Error::other(e),
        })
    }
}

#[cfg(test)]
mod node_info_tests {
    use super::*;

    #[test]
    fn the_first_local_non_loopback_address_is_advertised() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.1.2.3\n        /32 host LOCAL\n\
                    Local:\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 10.1.2.3\n        /32 host LOCAL\n";
        assert_eq!(
            first_local_ipv4(trie),
            Some(std::net::IpAddr::from([10, 1, 2, 3]))
        );
        assert_eq!(first_local_ipv4("|-- 127.0.0.1\n   /32 host LOCAL\n"), None);
    }

    #[test]
    fn a_configured_advertise_address_wins() {
        let config = Config {
            advertise_addr: "192.0.2.7:1883".into(),
            ..Config::default()
        };
        let info = node_info(&config, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(info.node, "192.0.2.7:1883");
        assert_eq!(info.node_ip, "192.0.2.7");
        let loopback = node_info(&Config::default(), "127.0.0.1:2000".parse().unwrap());
        assert_eq!(loopback.node, "127.0.0.1:2000");
    }
}
