//! `GET /api/v1/subscriptions`: the subscriptions of the sessions on this node, online and
//! offline, filterable by client id and by (exact) topic filter.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::params::{Listing, Params, RawQuery};
use super::ApiError;
use crate::broker::Broker;
use crate::session::{Session, Subscription};
use skein_seam::ClientId;

const PARAMS: &[&str] = &["page", "limit", "clientid", "topic"];

/// One subscription as the API shows it.
#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    pub clientid: String,
    /// The filter as subscribed, `$share/{group}/` prefix included.
    pub topic: String,
    /// The granted QoS.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: retained messages on subscribe, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
    pub subscription_identifier: Option<u32>,
}

impl SubscriptionView {
    fn new(client_id: &ClientId, filter: &str, sub: &Subscription) -> SubscriptionView {
        SubscriptionView {
            clientid: client_id.as_str().to_owned(),
            topic: filter.to_owned(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            retain_handling: sub.options.retain_handling,
            subscription_identifier: sub.subscription_id,
        }
    }

    /// Every subscription of `session`, sorted by filter.
    pub fn of_session(session: &Session) -> Vec<SubscriptionView> {
        let mut views: Vec<SubscriptionView> = {
            let st = session.state();
            st.subscriptions
                .iter()
                .map(|(filter, sub)| SubscriptionView::new(&session.client_id, filter, sub))
                .collect()
        };
        views.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        views
    }
}

#[tracing::instrument(name = "admin_list_subscriptions", skip_all)]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    query: RawQuery,
) -> Result<Json<Listing<SubscriptionView>>, ApiError> {
    let params = Params::parse(query, PARAMS)?;
    let paging = params.paging()?;
    let topic = params.get("topic");
    let sessions = match params.get("clientid") {
        Some(id) => broker
            .find_session(&ClientId::new(id))
            .into_iter()
            .collect(),
        None => broker.sessions_snapshot(),
    };
    let mut rows: Vec<(ClientId, String, Subscription)> = Vec::new();
    for session in &sessions {
        let st = session.state();
        if st.removed {
            continue;
        }
        let id = &session.client_id;
        match topic {
            Some(t) => {
                if let Some(sub) = st.subscriptions.get(t) {
                    rows.push((id.clone(), t.to_owned(), sub.clone()));
                }
            }
            None => rows.extend(
                st.subscriptions
                    .iter()
                    .map(|(f, sub)| (id.clone(), f.clone(), sub.clone())),
            ),
        }
    }
    rows.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok(Json(paging.apply(rows, |(id, filter, sub)| {
        SubscriptionView::new(&id, &filter, &sub)
    })))
}
