//! `GET /api/v1/clients`, `GET /api/v1/clients/{id}`, `DELETE /api/v1/clients/{id}`,
//! cluster-wide: every node lists, shows and kicks every client, wherever it is connected.
//!
//! A client here is a session: connected, or an offline persistent session (`connected:
//! false`), with the node that holds it (`node`, `node_id`, `node_ip`). What only a live
//! connection knows (username, peer, keepalive, clean start, connect time) is `null` for an
//! offline session. A client held by another node shows what the cluster's registry knows
//! (connected, since when, clean start, expiry, how many subscriptions); what only its node
//! knows (username, peer, keepalive, protocol version, in-flight and queued counts, the
//! subscriptions themselves) is `null` there: that node's API has it.

mod rows;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::params::{Listing, Params, RawQuery};
use super::subscriptions::SubscriptionView;
use super::ApiError;
use crate::broker::Broker;
use rows::{Nodes, Row};
use skein_seam::ClientId;

const LIST_PARAMS: &[&str] = &["page", "limit", "node", "username", "connected"];
const KICK_PARAMS: &[&str] = &["clear_session"];

/// One client as the API shows it; `null` marks what the answering node cannot know (see
/// the module's doc).
#[derive(Debug, Serialize)]
pub struct ClientView {
    pub clientid: String,
    pub username: Option<String>,
    /// The name of the node that holds the session (null: a node the cluster no longer
    /// has a record of).
    pub node: Option<String>,
    pub node_id: u64,
    /// The IP that node advertises.
    pub node_ip: Option<String>,
    /// The client's address, `ip:port`.
    pub peername: Option<String>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub proto_ver: Option<u8>,
    pub keepalive: Option<u16>,
    pub clean_start: Option<bool>,
    pub connected: bool,
    /// Unix milliseconds of the CONNECT.
    pub connected_at: Option<u64>,
    /// Unix milliseconds the last connection ended (offline sessions).
    pub disconnected_at: Option<u64>,
    /// Session Expiry Interval, seconds (0: the session ends with the connection).
    pub expiry_interval: u32,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight_cnt: Option<usize>,
    /// Messages waiting to be sent.
    pub mqueue_len: Option<usize>,
    pub mqueue_max: Option<usize>,
    pub subscriptions_cnt: usize,
    /// In the detail answer of a client on this node only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<SubscriptionView>>,
}

#[tracing::instrument(name = "admin_list_clients", skip_all)]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    query: RawQuery,
) -> Result<Json<Listing<ClientView>>, ApiError> {
    let params = Params::parse(query, LIST_PARAMS)?;
    let paging = params.paging()?;
    let connected = params.flag("connected")?;
    let username = params.get("username");
    let node = params.get("node");
    let mut nodes = Nodes::new(&broker);
    let mut rows = rows::gather(&broker);
    rows.retain(|r| {
        connected.is_none_or(|c| c == r.connected())
            && username.is_none_or(|u| r.username() == Some(u))
            && node.is_none_or(|n| {
                let id = r.node(&nodes);
                nodes.name(id).matches(n)
            })
    });
    rows.sort_unstable_by(|a, b| a.client_id().cmp(b.client_id()));
    Ok(Json(paging.apply(rows, |r| r.view(&mut nodes, &broker))))
}

#[tracing::instrument(name = "admin_client_detail", skip_all, fields(client_id))]
pub async fn detail(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ClientView>, ApiError> {
    let id = client_id(path)?;
    tracing::Span::current().record("client_id", id.as_str());
    let row = rows::find(&broker, &id).ok_or(ApiError::NotFound("client not found".into()))?;
    let mut nodes = Nodes::new(&broker);
    let local = matches!(row, Row::Local(_));
    let mut view = row.view(&mut nodes, &broker);
    if local {
        // Read under a second lock: count what is shown, so the two always agree. A
        // session removed meanwhile shows none.
        let subscriptions = broker
            .find_session(&id)
            .map(|s| SubscriptionView::of_session(&s))
            .unwrap_or_default();
        view.subscriptions_cnt = subscriptions.len();
        view.subscriptions = Some(subscriptions);
    }
    Ok(Json(view))
}

/// Kicks the client's connection wherever it is (DISCONNECT 0x98 to MQTT 5 clients, reason
/// `kicked`, the event from the node that held it). The session stays unless
/// `?clear_session=true`, which also ends it (offline or not); that one is for the node
/// that holds the session: 409 from another.
#[tracing::instrument(name = "admin_kick_client", skip_all, fields(client_id))]
pub async fn kick(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<StatusCode, ApiError> {
    let id = client_id(path)?;
    tracing::Span::current().record("client_id", id.as_str());
    let params = Params::parse(query, KICK_PARAMS)?;
    let clear_session = params.flag("clear_session")?.unwrap_or(false);
    if let Some(owner) = rows::remote_owner(&broker, &id) {
        let name = Nodes::new(&broker).name(owner.node).name.clone();
        let node = match name {
            Some(name) => format!("node {} ({name})", owner.node),
            None => format!("node {}", owner.node),
        };
        if clear_session {
            return Err(ApiError::Conflict(format!(
                "the session is held by {node}: end it through that node's API"
            )));
        }
        if !owner.online || !broker.cluster.kick_remote(owner.node, &id).await? {
            return Err(ApiError::NotFound("client not connected".into()));
        }
        tracing::info!(node = %owner.node, "client kicked on another node by an operator");
    } else if clear_session {
        if !broker.discard_session(&id).await {
            return Err(ApiError::NotFound("no session for this client id".into()));
        }
        tracing::info!("session discarded by an operator");
    } else {
        if !broker.kick(&id) {
            return Err(ApiError::NotFound("client not connected".into()));
        }
        tracing::info!("client kicked by an operator");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The percent-decoded `{id}` segment (`a%2Fb` is the client id `a/b`).
fn client_id(path: Result<Path<String>, PathRejection>) -> Result<ClientId, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(ClientId::new(&id))
}
