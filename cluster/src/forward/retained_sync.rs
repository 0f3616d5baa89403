//! Fetching the retained messages of a member when this node starts or joins: retained
//! messages ride the data plane, so a node that was away (or is new) asks one member for
//! the set it holds and keeps what is newer than its own (see
//! `BrokerHandle::restore_retained`). Best effort: when no member answers (a new cluster
//! has nothing to fetch), the node goes on with what it has. What it cannot learn this way:
//! a retained message deleted while it was away stays here until replaced or deleted again.

use std::sync::Arc;
use std::time::Duration;

use skein_proto::v1 as pb;
use skein_proto::v1::forward_client::ForwardClient;
use skein_seam::BrokerHandle;
use tokio_util::sync::CancellationToken;

use super::wire;
use crate::peers::MAX_MESSAGE_BYTES;
use crate::shared::Shared;

/// How long this node waits to learn of another member (a joining node learns the
/// membership once it has joined).
const MEMBERS_WAIT: Duration = Duration::from_secs(30);

/// How long one member may take to send its retained messages.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches the retained set from the first member that answers and hands it to `broker`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    broker: Arc<dyn BrokerHandle>,
    shutdown: CancellationToken,
) {
    let mut metrics = shared.raft.metrics();
    let deadline = tokio::time::Instant::now() + MEMBERS_WAIT;
    let members = loop {
        let mut members = shared.other_members();
        members.retain(|(_, grpc)| !grpc.is_empty());
        if !members.is_empty() {
            break members;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shutdown.cancelled() => return,
        }
    };
    for (peer, address) in members {
        let fetched = tokio::select! {
            fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(&shared, &address)) => fetched,
            _ = shutdown.cancelled() => return,
        };
        let messages = match fetched {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => {
                tracing::debug!(peer, %address, error = %e, "no retained messages from this member");
                continue;
            }
            Err(_) => {
                tracing::debug!(peer, %address, "a member took too long to send its retained messages");
                continue;
            }
        };
        let offered = messages.len();
        match broker.restore_retained(messages).await {
            Ok(stored) => {
                tracing::info!(
                    peer,
                    offered,
                    stored,
                    "retained messages fetched from a member"
                )
            }
            Err(e) => {
                tracing::warn!(peer, offered, error = %e, "retained messages from a member not stored")
            }
        }
        return;
    }
    tracing::info!("no member sent its retained messages (a new cluster has none)");
}

async fn fetch(
    shared: &Shared,
    address: &str,
) -> Result<Vec<skein_seam::ForwardedPublish>, String> {
    let channel = shared.peers.uncached(address).map_err(|e| e.to_string())?;
    let mut client = ForwardClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let request = pb::RetainedRequest {
        from_node: shared.id,
    };
    let mut batches = client
        .retained(request)
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(batch) = batches.message().await.map_err(|s| s.to_string())? {
        for publish in batch.retained {
            match wire::from_pb(publish) {
                Ok(p) => messages.push(p),
                Err(e) => tracing::warn!(error = %e, "ignored an invalid retained message"),
            }
        }
    }
    Ok(messages)
}
