//! `GET /api/v1/topics/retained`: the retained messages stored on this node, all of them or
//! those matching a topic filter (`?topic=a/#`).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::Serialize;

use super::params::{Listing, Params, RawQuery};
use super::ApiError;
use crate::broker::Broker;
use crate::message::{now_ms, Message};
use crate::topic;

const PARAMS: &[&str] = &["page", "limit", "topic"];

/// One retained message as the API shows it.
#[derive(Debug, Serialize)]
pub struct RetainedView {
    pub topic: String,
    pub qos: u8,
    /// The payload as text when it is UTF-8, else base64 (see `payload_encoding`).
    pub payload: String,
    /// `plain` or `base64`.
    pub payload_encoding: &'static str,
    /// Unix milliseconds the broker received it.
    pub received_at: u64,
    /// The client that published it; `null` when published through the API.
    pub from_clientid: Option<String>,
    /// Unix milliseconds its Message Expiry Interval ends; `null` if it never expires.
    pub expires_at: Option<u64>,
}

impl RetainedView {
    fn new(m: &Message) -> RetainedView {
        let (payload, payload_encoding) = encode_payload(&m.payload);
        RetainedView {
            topic: m.topic.to_string(),
            qos: m.qos as u8,
            payload,
            payload_encoding,
            received_at: m.received_at_ms,
            from_clientid: m.publisher.as_ref().map(|c| c.as_str().to_owned()),
            expires_at: m
                .properties
                .message_expiry_interval
                .map(|s| m.received_at_ms.saturating_add(u64::from(s) * 1000)),
        }
    }
}

/// A payload for JSON: itself when it is UTF-8 text, else base64 (standard alphabet).
pub fn encode_payload(payload: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text) => (text.to_owned(), "plain"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(payload),
            "base64",
        ),
    }
}

#[tracing::instrument(name = "admin_list_retained", skip_all)]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    query: RawQuery,
) -> Result<Json<Listing<RetainedView>>, ApiError> {
    let params = Params::parse(query, PARAMS)?;
    let paging = params.paging()?;
    let now = now_ms();
    let mut messages = match params.get("topic") {
        Some(filter) if topic::valid_topic_filter(filter) => broker.retained.matching(filter, now),
        Some(filter) => {
            return Err(ApiError::BadRequest(format!(
                "invalid topic filter {filter:?}"
            )))
        }
        None => broker.retained.snapshot(now),
    };
    messages.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
    Ok(Json(paging.apply(messages, |m| RetainedView::new(&m))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_text_when_they_can_be() {
        assert_eq!(encode_payload(b"hello"), ("hello".to_owned(), "plain"));
        assert_eq!(encode_payload(b""), (String::new(), "plain"));
        assert_eq!(
            encode_payload(&[0xff, 0x00, 0x01]),
            ("/wAB".to_owned(), "base64")
        );
    }
}
