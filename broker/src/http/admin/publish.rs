//! `POST /api/v1/publish`: publish a message as the broker itself (no publisher client).
//! It is routed like a client's publish, so it reaches subscribers, replaces or deletes
//! the retained message, and is queued for offline persistent sessions; the answer comes
//! once whatever it wrote to storage is on disk. What needed the disk and could not be
//! stored is answered 507 (free space below `storage_min_free_bytes`) or 503 (storage
//! failed), never 200.

use std::fmt;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::ApiError;
use crate::broker::Broker;
use crate::codec::QoS;
use crate::message::{now_ms, Message, MessageProperties};
use crate::storage_refusal::{self, NotStored};
use crate::topic;

/// The request body. Unknown fields are refused, so a misspelt one isn't silently lost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    payload_encoding: PayloadEncoding,
    #[serde(default)]
    properties: PublishProperties,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PayloadEncoding {
    #[default]
    Plain,
    Base64,
}

/// The MQTT 5 properties a published message may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishProperties {
    #[serde(default)]
    user_properties: UserProperties,
    content_type: Option<String>,
    message_expiry_interval: Option<u32>,
    payload_format_indicator: Option<u8>,
    response_topic: Option<String>,
    /// Taken as UTF-8 bytes.
    correlation_data: Option<String>,
}

/// A JSON object of string values, in the order given (MQTT user properties are ordered).
#[derive(Debug, Default)]
struct UserProperties(Vec<(String, String)>);

impl<'de> Deserialize<'de> for UserProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = UserProperties;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserProperties, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(UserProperties(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

#[derive(Debug, Serialize)]
pub struct PublishAnswer {
    /// How many sessions it was routed to (0: nobody subscribes).
    pub matched: usize,
}

#[tracing::instrument(name = "admin_publish", skip_all, fields(topic))]
pub async fn publish(
    State(broker): State<Arc<Broker>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishAnswer>, ApiError> {
    let body = body.map_err(|e| ApiError::Body(e.status(), e.body_text()))?;
    let request: PublishRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid publish request: {e}")))?;
    tracing::Span::current().record("topic", request.topic.as_str());
    let message = to_message(request, &broker)?;
    // A retained message needs the disk at any QoS: refused whole, as a QoS 1/2 message
    // that needs it is by routing.
    if message.retain && !message.payload.is_empty() {
        if let Some(refusal) = NotStored::of_store(broker.store.health()) {
            storage_refusal::publish_refused(refusal, &message.topic, broker.store.health());
            return Err(ApiError::NotStored(refusal));
        }
    }
    let qos = message.qos;
    let outcome = broker.route_or_refuse(Arc::new(message));
    if let Some(refusal) = outcome.not_stored {
        return Err(ApiError::NotStored(refusal));
    }
    if outcome.needs_flush {
        if let Err(e) = broker.flush_storage().await {
            storage_refusal::write_failed("flush", "", &e);
            return Err(ApiError::NotStored(NotStored::Failed));
        }
    }
    // Answered like a QoS 1/2 client: once every node with subscribers took it.
    if qos != QoS::AtMostOnce {
        outcome
            .forwards
            .settle()
            .await
            .map_err(ApiError::NotForwarded)?;
    }
    tracing::debug!(matched = outcome.matched, "published through the admin API");
    Ok(Json(PublishAnswer {
        matched: outcome.matched,
    }))
}

/// Checks the request the way a client PUBLISH is checked and builds the message.
fn to_message(request: PublishRequest, broker: &Broker) -> Result<Message, ApiError> {
    let bad = |msg: String| Err(ApiError::BadRequest(msg));
    if !topic::valid_topic_name(&request.topic) {
        return bad(format!(
            "invalid topic name {:?}: it must be 1 to 65535 bytes, without + or # or NUL",
            request.topic
        ));
    }
    let Some(qos) = QoS::from_u8(request.qos) else {
        return bad(format!("qos must be 0, 1 or 2, not {}", request.qos));
    };
    if request.retain && !broker.config.retain_available {
        return bad("retain is not available on this node".into());
    }
    let payload = match request.payload_encoding {
        PayloadEncoding::Plain => Bytes::from(request.payload),
        PayloadEncoding::Base64 => {
            match base64::engine::general_purpose::STANDARD.decode(request.payload.trim()) {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => return bad(format!("payload is not valid base64: {e}")),
            }
        }
    };
    let max = broker.config.max_packet_size as usize;
    if payload.len() > max {
        return bad(format!(
            "payload of {} bytes is larger than max_packet_size ({max})",
            payload.len()
        ));
    }
    let p = request.properties;
    match p.payload_format_indicator {
        None | Some(0) => {}
        Some(1) if std::str::from_utf8(&payload).is_ok() => {}
        Some(1) => return bad("payload_format_indicator is 1 but the payload is not UTF-8".into()),
        Some(other) => {
            return bad(format!(
                "payload_format_indicator must be 0 or 1, not {other}"
            ))
        }
    }
    if let Some(t) = &p.response_topic {
        if !topic::valid_topic_name(t) {
            return bad(format!("invalid response_topic {t:?}"));
        }
    }
    Ok(Message {
        topic: Arc::from(request.topic.as_str()),
        payload,
        qos,
        retain: request.retain,
        properties: MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data.map(Bytes::from),
            user_properties: p.user_properties.0,
        },
        received_at_ms: now_ms(),
        publisher: None,
        publisher_username: None,
        publish_id: Some(crate::message::new_publish_id()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_keep_their_order_and_repeats() {
        let r: PublishRequest = serde_json::from_str(
            r#"{"topic":"t","properties":{"user_properties":{"z":"1","a":"2","z":"3"}}}"#,
        )
        .unwrap();
        let pairs = r.properties.user_properties.0;
        assert_eq!(
            pairs,
            vec![
                ("z".to_owned(), "1".to_owned()),
                ("a".to_owned(), "2".to_owned()),
                ("z".to_owned(), "3".to_owned())
            ]
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        for body in [
            r#"{"topic":"t","qos":1,"retained":true}"#,
            r#"{"topic":"t","properties":{"user_property":{}}}"#,
            r#"{"topic":"t","properties":{"user_properties":{"k":1}}}"#,
            r#"{"topic":"t","payload_encoding":"hex"}"#,
            r#"{"payload":"x"}"#,
        ] {
            assert!(
                serde_json::from_str::<PublishRequest>(body).is_err(),
                "{body} was accepted"
            );
        }
    }
}
