//! `GET /api/v1/clients`, `GET /api/v1/clients/{id}`, `DELETE /api/v1/clients/{id}`.
//!
//! A client here is a session on this node: connected, or an offline persistent session
//! (`connected: false`). What only a live connection knows (username, peer, keepalive,
//! clean start, connect time) is `null` for an offline session.

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
use crate::events::{ClientInfo, NodeInfo};
use crate::session::Session;
use skein_seam::ClientId;

const LIST_PARAMS: &[&str] = &["page", "limit", "node", "username", "connected"];
const KICK_PARAMS: &[&str] = &["clear_session"];

/// One client as the API shows it.
#[derive(Debug, Serialize)]
pub struct ClientView {
    pub clientid: String,
    pub username: Option<String>,
    /// This node's name.
    pub node: String,
    pub node_ip: String,
    /// The client's address, `ip:port`.
    pub peername: Option<String>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub proto_ver: u8,
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
    pub inflight_cnt: usize,
    /// Messages waiting to be sent.
    pub mqueue_len: usize,
    pub mqueue_max: usize,
    pub subscriptions_cnt: usize,
    /// In the detail answer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<SubscriptionView>>,
}

/// What a session looks like at one instant, taken under its state lock.
struct Row {
    client_id: ClientId,
    info: Option<Arc<ClientInfo>>,
    protocol_level: u8,
    expiry_interval: u32,
    disconnected_at_ms: Option<u64>,
    inflight: usize,
    queued: usize,
    subscriptions: usize,
}

impl Row {
    /// None for a session that was just removed.
    fn capture(session: &Session) -> Option<Row> {
        let st = session.state();
        if st.removed {
            return None;
        }
        Some(Row {
            client_id: session.client_id.clone(),
            info: st.attached_info().cloned(),
            protocol_level: st.protocol_level,
            expiry_interval: st.expiry_interval,
            disconnected_at_ms: st.disconnected_at_ms.get(),
            inflight: st.inflight.len(),
            queued: st.queue.len(),
            subscriptions: st.subscriptions.len(),
        })
    }

    fn view(self, node: &NodeInfo, broker: &Broker) -> ClientView {
        let info = self.info.as_deref();
        ClientView {
            clientid: self.client_id.as_str().to_owned(),
            username: info.and_then(|i| i.username.as_deref().map(str::to_owned)),
            node: node.node_name.clone(),
            node_ip: node.node_ip.clone(),
            peername: info.map(|i| i.peer.to_string()),
            proto_ver: info.map_or(self.protocol_level, |i| i.protocol.level()),
            keepalive: info.map(|i| i.keepalive),
            clean_start: info.map(|i| i.clean_start),
            connected: info.is_some(),
            connected_at: info.map(|i| i.connected_at_ms),
            disconnected_at: if info.is_some() {
                None
            } else {
                self.disconnected_at_ms
            },
            expiry_interval: self.expiry_interval,
            inflight_cnt: self.inflight,
            mqueue_len: self.queued,
            mqueue_max: broker.config.max_queued_messages,
            subscriptions_cnt: self.subscriptions,
            subscriptions: None,
        }
    }
}

/// Whether `wanted` names this node: its name, its advertised `ip:port`, or its IP.
pub fn is_this_node(wanted: &str, node: &NodeInfo) -> bool {
    wanted == node.node_name || wanted == node.node || wanted == node.node_ip
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
    let node = broker.events.node();
    let here = params.get("node").is_none_or(|n| is_this_node(n, node));
    let mut rows: Vec<Row> = if here {
        broker
            .sessions_snapshot()
            .iter()
            .filter_map(|s| Row::capture(s))
            .filter(|r| connected.is_none_or(|c| c == r.info.is_some()))
            .filter(|r| {
                username.is_none_or(|u| {
                    r.info
                        .as_ref()
                        .is_some_and(|i| i.username.as_deref() == Some(u))
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    rows.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(Json(paging.apply(rows, |r| r.view(node, &broker))))
}

#[tracing::instrument(name = "admin_client_detail", skip_all, fields(client_id))]
pub async fn detail(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ClientView>, ApiError> {
    let id = client_id(path)?;
    tracing::Span::current().record("client_id", id.as_str());
    let not_found = || ApiError::NotFound("client not found");
    let session = broker.find_session(&id).ok_or_else(not_found)?;
    let row = Row::capture(&session).ok_or_else(not_found)?;
    let subscriptions = SubscriptionView::of_session(&session);
    let mut view = row.view(broker.events.node(), &broker);
    // Read under a second lock: count what is shown, so the two always agree.
    view.subscriptions_cnt = subscriptions.len();
    view.subscriptions = Some(subscriptions);
    Ok(Json(view))
}

/// Kicks the client's connection (DISCONNECT 0x98 to MQTT 5 clients, reason `kicked`). The
/// session stays unless `?clear_session=true`, which also ends it (offline or not).
#[tracing::instrument(name = "admin_kick_client", skip_all, fields(client_id))]
pub async fn kick(
    State(broker): State<Arc<Broker>>,
    path: Result<Path<String>, PathRejection>,
    query: RawQuery,
) -> Result<StatusCode, ApiError> {
    let id = client_id(path)?;
    tracing::Span::current().record("client_id", id.as_str());
    let params = Params::parse(query, KICK_PARAMS)?;
    if params.flag("clear_session")?.unwrap_or(false) {
        if !broker.discard_session(&id).await {
            return Err(ApiError::NotFound("no session for this client id"));
        }
        tracing::info!("session discarded by an operator");
    } else {
        if !broker.kick(&id) {
            return Err(ApiError::NotFound("client not connected"));
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
