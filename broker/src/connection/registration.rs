//! A CONNECT's client registration, bounded by `connect_commit_timeout_ms`.
//!
//! The registration is proposed from its own task so that the handshake can stop waiting
//! (a node cut off from the majority: no leader, no quorum) while the proposal is still in
//! flight. A proposal that commits after the handshake gave up (it refused the client, or
//! its connection went away) would leave the registry naming this node as the owner of a
//! connection that does not exist; the task then releases that registration again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::broker::{Broker, PreindexOutcome};
use crate::events::{ClientInfo, Transport};
use crate::log_limit::LogLimit;
use skein_seam::{
    ClientId, ClusterError, ForwardedPublish, PublishProperties, RegisteredConnection,
    RegisteredWill, Registration,
};

/// One warning per interval for refusals while the cluster is unavailable (a CONNECT storm
/// against a node cut off from the majority would otherwise write one line per CONNECT).
static UNAVAILABLE: LogLimit = LogLimit::new(Duration::from_secs(10));

/// How long the warning's look at the cluster's state (whether a leader is known) may take.
const OVERVIEW_WAIT: Duration = Duration::from_millis(200);

/// What a CONNECT registers.
#[derive(Clone, Copy)]
pub(super) struct Claim {
    pub clean_start: bool,
    pub expiry: u32,
    /// [`Broker::preindex_resumed`] prepared for this registration.
    pub preindexed: bool,
}

/// Registers `client_id` for a new connection on this node, waiting at most the configured
/// commit timeout. Err: why the cluster could not commit it (the client gets Server
/// Unavailable); whatever the registration prepared or committed later is undone.
pub(super) async fn register(
    broker: &Arc<Broker>,
    client_id: &ClientId,
    claim: Claim,
    will: Option<RegisteredWill>,
    info: &ClientInfo,
) -> Result<Registration, String> {
    let (tx, mut rx) = oneshot::channel();
    let (b, id) = (broker.clone(), client_id.clone());
    let connection = registered_connection(info);
    broker.tasks.spawn(async move {
        let result = b
            .cluster
            .register_connection(&id, claim.clean_start, claim.expiry, will, Some(connection))
            .await;
        // The handshake gave up (timed out, or its connection ended): nobody attaches.
        if let Err(result) = tx.send(result) {
            undo(&b, &id, claim, result).await;
        }
    });
    let limit = broker.config.connect_commit_timeout();
    let detail = match tokio::time::timeout(limit, &mut rx).await {
        Ok(Ok(Ok(registration))) => return Ok(registration),
        Ok(Ok(Err(e))) => {
            if claim.preindexed {
                let (b, id) = (broker.clone(), client_id.clone());
                let outcome = preindex_outcome(&e);
                broker
                    .tasks
                    .spawn(async move { b.undo_preindex(&id, outcome).await });
            }
            e.to_string()
        }
        // The task was dropped: the runtime is shutting down.
        Ok(Err(_)) => "the node is shutting down".to_owned(),
        Err(_) => {
            // Closed first, so that a result sent from now on goes to the undo above,
            // and one sent just before is still read here (and used: it committed).
            rx.close();
            if let Ok(Ok(registration)) = rx.try_recv() {
                return Ok(registration);
            }
            format!("not committed within {} ms", limit.as_millis())
        }
    };
    if let Some(held_back) = UNAVAILABLE.allow() {
        let state = cluster_state(broker).await;
        tracing::warn!(
            %client_id,
            cluster = %state,
            detail = %detail,
            held_back,
            "CONNECT refused with Server Unavailable: its client registration did not commit"
        );
    }
    Err(detail)
}

/// What the events of a connection say about it, as the cluster keeps it (for the node
/// that announces its end should this node die: its `node_down` event says the same).
fn registered_connection(info: &ClientInfo) -> RegisteredConnection {
    RegisteredConnection {
        username: info.username.as_deref().map(str::to_owned),
        peer: info.peer_known().then_some(info.peer),
        sockname: (info.sockname.port() != 0).then_some(*info.sockname),
        protocol_level: info.protocol.level(),
        websocket: info.transport == Transport::WebSocket,
        keepalive: info.keepalive,
    }
}

/// A CONNECT's will as the cluster keeps it (for the node that adopts the client should
/// this node die).
pub(super) fn registered_will(w: &crate::codec::Will, client_id: &ClientId) -> RegisteredWill {
    let p = &w.properties;
    RegisteredWill {
        message: ForwardedPublish {
            topic: w.topic.as_str().into(),
            payload: w.payload.clone(),
            qos: w.qos as u8,
            retain: w.retain,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
            },
            publisher: Some(client_id.clone()),
            ..ForwardedPublish::default()
        },
        delay_secs: p.will_delay_interval.unwrap_or(0),
    }
}

/// Why the cluster cannot commit, as far as this node can tell quickly.
async fn cluster_state(broker: &Broker) -> String {
    match tokio::time::timeout(OVERVIEW_WAIT, broker.cluster.overview()).await {
        Ok(Ok(overview)) => match overview.leader_id {
            None => "no leader known".to_owned(),
            // This node's view: a leader cut off with it, or one it lost touch with.
            Some(leader) => format!("leader {} known here, no quorum acknowledged", leader.0),
        },
        _ => "no leader reachable".to_owned(),
    }
}

/// Whether a registration that failed with `e` may have committed all the same: only an
/// answer of the registry (the command was rejected) says it did not.
fn preindex_outcome(e: &ClusterError) -> PreindexOutcome {
    match e {
        ClusterError::NotOwner | ClusterError::Invalid(_) => PreindexOutcome::NotCommitted,
        _ => PreindexOutcome::MayHaveCommitted,
    }
}

/// Releases what a registration nobody waits for any more prepared or committed.
async fn undo(
    broker: &Broker,
    client_id: &ClientId,
    claim: Claim,
    result: Result<Registration, ClusterError>,
) {
    let outcome = match &result {
        Ok(_) => PreindexOutcome::MayHaveCommitted,
        Err(e) => preindex_outcome(e),
    };
    if let Ok(registration) = result {
        crate::metrics::late_registration_released();
        tracing::info!(
            %client_id,
            epoch = registration.epoch,
            "a registration committed after its CONNECT was refused: releasing it"
        );
        if let Err(e) = broker
            .cluster
            .unregister_client(client_id, registration.epoch, claim.expiry == 0)
            .await
        {
            tracing::warn!(%client_id, error = %e, "could not release a registration committed after its CONNECT was refused");
        }
    }
    if claim.preindexed {
        broker.undo_preindex(client_id, outcome).await;
    }
}
