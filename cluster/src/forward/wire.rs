//! A forwarded publish between the seam's type and its protobuf message. Everything is
//! moved, the payload included (it is `Bytes` on both sides).

use skein_proto::v1 as pb;
use skein_seam::{ClientId, ForwardedPublish, PublishProperties, SharedTarget};

pub(crate) fn to_pb(p: ForwardedPublish) -> pb::ForwardedPublish {
    let props = p.properties;
    pb::ForwardedPublish {
        topic: p.topic,
        payload: p.payload,
        qos: u32::from(p.qos),
        retain: p.retain,
        payload_format_indicator: props.payload_format_indicator.map(u32::from),
        message_expiry_interval: props.message_expiry_interval,
        content_type: props.content_type,
        response_topic: props.response_topic,
        correlation_data: props.correlation_data,
        user_properties: props
            .user_properties
            .into_iter()
            .map(|(key, value)| pb::UserProperty { key, value })
            .collect(),
        publisher_client_id: p.publisher.map(|c| c.as_str().to_owned()),
        received_at_ms: p.received_at_ms,
        to_subscribers: p.to_subscribers,
        shared: p
            .shared
            .into_iter()
            .map(|t| pb::SharedTarget {
                group: t.group,
                filter: t.filter,
            })
            .collect(),
        publisher_username: p.publisher_username,
    }
}

/// The seam's publish, or why no MQTT publish could carry this message (the broker checks
/// the topic itself).
pub(crate) fn from_pb(p: pb::ForwardedPublish) -> Result<ForwardedPublish, String> {
    let qos = u8::try_from(p.qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or_else(|| format!("QoS {}", p.qos))?;
    let payload_format_indicator = match p.payload_format_indicator {
        None => None,
        Some(v @ 0..=1) => Some(v as u8),
        Some(other) => return Err(format!("payload format indicator {other}")),
    };
    Ok(ForwardedPublish {
        topic: p.topic,
        payload: p.payload,
        qos,
        retain: p.retain,
        properties: PublishProperties {
            payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p
                .user_properties
                .into_iter()
                .map(|u| (u.key, u.value))
                .collect(),
        },
        received_at_ms: p.received_at_ms,
        publisher: p.publisher_client_id.as_deref().map(ClientId::new),
        publisher_username: p.publisher_username,
        to_subscribers: p.to_subscribers,
        shared: p
            .shared
            .into_iter()
            .map(|t| SharedTarget {
                group: t.group,
                filter: t.filter,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use prost::bytes::Bytes;

    use super::*;

    #[test]
    fn a_publish_survives_the_wire_field_for_field() {
        let publish = ForwardedPublish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: 2,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(30),
                content_type: Some("text/plain".into()),
                response_topic: Some("re/ply".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
            received_at_ms: 1_700_000_000_123,
            publisher: Some(ClientId::new("pub")),
            publisher_username: Some("alice".into()),
            to_subscribers: true,
            shared: vec![SharedTarget {
                group: "g".into(),
                filter: "a/+".into(),
            }],
        };
        assert_eq!(from_pb(to_pb(publish.clone())), Ok(publish));
        let bare = ForwardedPublish {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 0,
            retain: false,
            properties: PublishProperties::default(),
            received_at_ms: 0,
            publisher: None,
            publisher_username: None,
            to_subscribers: false,
            shared: Vec::new(),
        };
        assert_eq!(from_pb(to_pb(bare.clone())), Ok(bare));
    }

    #[test]
    fn what_no_publish_could_carry_is_refused() {
        let mut p = to_pb(ForwardedPublish {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 1,
            retain: false,
            properties: PublishProperties::default(),
            received_at_ms: 0,
            publisher: None,
            publisher_username: None,
            to_subscribers: true,
            shared: Vec::new(),
        });
        p.qos = 3;
        assert_eq!(from_pb(p.clone()).unwrap_err(), "QoS 3");
        p.qos = 1;
        p.payload_format_indicator = Some(2);
        assert!(from_pb(p).unwrap_err().contains("payload format"));
    }
}
