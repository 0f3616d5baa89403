//! The MQTT listener: accepts connections, enforces the connection limit, and drains on
//! shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::connection;

/// Accepts until the broker's shutdown token fires, then waits for every connection task.
pub async fn serve_mqtt(broker: Arc<Broker>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(broker.config.max_connections));
    let connections = &broker.connections;
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = permits.clone().try_acquire_owned().ok();
        connections.spawn(connection::serve(broker.clone(), stream, peer, permit));
    }
    drop(listener);
    let told = broker.kick_all_for_shutdown();
    tracing::debug!(
        connections = told,
        "told connections the node is shutting down"
    );
    connections.close();
    let drain = broker.config.shutdown_timeout();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown timeout");
    }
}
