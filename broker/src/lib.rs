//! Skein broker node: the MQTT codec, sessions, routing, and the glue that runs a node.
//!
//! A node is started with [`run`], which takes already-bound listeners and a shutdown
//! token so tests can bind port 0 and stop the node when they like.

pub mod auth;
pub mod broker;
pub mod cluster_handle;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod events;
pub mod http;
pub mod ids;
pub mod message;
pub mod metrics;
pub mod retained;
mod server;
pub mod session;
pub mod topic;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use broker::Broker;
pub use config::Config;
pub use error::BrokerError;

use cluster_handle::LocalCluster;
use ids::NodeId;

/// How long a shutdown waits for the event dialects to publish what is queued.
const EVENTS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How events name this node: the MQTT listener's address (loopback when it listens on
/// every interface).
fn node_info(config: &Config, mqtt: std::net::SocketAddr) -> events::NodeInfo {
    let ip = if mqtt.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        mqtt.ip()
    };
    events::NodeInfo {
        node: std::net::SocketAddr::new(ip, mqtt.port()).to_string(),
        node_ip: ip.to_string(),
        node_name: config.node_name.clone(),
    }
}

/// Runs a node until `shutdown` fires: serves MQTT and HTTP, then drains connections and
/// flushes storage.
pub async fn run(
    config: Config,
    mqtt: TcpListener,
    http: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    // Before anything records: what is counted earlier is lost.
    let prometheus = metrics::install();
    let store = skein_storage::Store::open(&config.data_dir)?;
    let cluster = Arc::new(LocalCluster::new(NodeId(config.node_id)));
    let mqtt_addr = mqtt.local_addr().map_err(|source| BrokerError::Io {
        context: "MQTT listener address".into(),
        source,
    })?;
    let mut events = events::EventBus::new(node_info(&config, mqtt_addr));
    let mqtt_dialects = events::setup::register_mqtt_dialects(&mut events, &config);
    let webhook = events::webhook::register(&mut events, &config);
    let stream = events::stream::register(&mut events, &config, &store);
    let redis = events::redis::register(&mut events, &config);
    let api_token = config.api_token.expose().to_owned();
    let broker = Broker::new(config, store.clone(), cluster, events, shutdown.clone())?;
    broker.spawn_retained_sweeper(std::time::Duration::from_secs(30));
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
    let health = http::HealthState::new();
    let routes = http::compose(vec![
        http::health_routes(health.clone()),
        metrics::router(prometheus, broker.clone()),
        events::stream::router(stream_api, Some(api_token.clone())),
        http::admin::router(broker.clone(), Some(api_token)),
    ]);
    let http_task = tokio::spawn(http::serve(http, routes, shutdown.clone()));
    health.set_ready(true);
    {
        // Readiness drops as soon as the drain starts, not when it ends.
        let (health, shutdown) = (health.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            health.set_ready(false);
        });
    }
    server::serve_mqtt(broker.clone(), mqtt).await;
    // The connections' last events (go_away) go out before the node stops.
    mqtt_dialects.drain(EVENTS_DRAIN).await;
    broker.tasks.close();
    broker.tasks.wait().await;
    // Every connection has ended: the sinks hand on the last events (and the stream
    // writes them) before storage is flushed.
    let finishing: Vec<_> = sinks
        .into_iter()
        .map(|sink| tokio::spawn(sink.finish(EVENTS_DRAIN)))
        .collect();
    for task in finishing {
        let _ = task.await;
    }
    broker.flush_storage().await?;
    match tokio::time::timeout(broker.config.shutdown_timeout(), http_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "http task failed"),
        Err(_) => tracing::warn!("http server still busy after the shutdown timeout"),
    }
    tracing::info!("node stopped");
    Ok(())
}
