//! A handed-over session page between the seam's type and its protobuf message, and a
//! registry entry's subscriptions as the seam hands them to the broker.

use skein_proto::v1 as pb;
use skein_seam::{HandedOverMessage, HandedOverSubscription, NodeId, SessionHandover};

use crate::forward::wire;
use crate::registry::ClientEntry;

pub(crate) fn to_pb(page: SessionHandover) -> pb::SessionHandover {
    pb::SessionHandover {
        expiry_interval: page.expiry_interval,
        subscriptions: Vec::new(),
        messages: page
            .messages
            .into_iter()
            .map(|m| pb::HandedOverMessage {
                seq: m.seq,
                message: Some(wire::to_pb(m.message)),
                subscription_ids: m.subscription_ids,
                packet_id: m.packet_id.map(u32::from),
                released: m.released,
                possibly_sent: m.possibly_sent,
            })
            .collect(),
        complete: page.complete,
        incoming_qos2: page.incoming_qos2.into_iter().map(u32::from).collect(),
        earlier_node: page.earlier.map(|(node, _)| node.0),
        earlier_epoch: page.earlier.map_or(0, |(_, epoch)| epoch),
        delivered_publish_ids: page.delivered,
        earlier_released_up_to: page.earlier_released_up_to,
    }
}

/// The seam's page, or what makes the answer unusable.
pub(crate) fn from_pb(page: pb::SessionHandover) -> Result<SessionHandover, String> {
    let packet_id = |id: u32| {
        u16::try_from(id)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| format!("packet id {id}"))
    };
    let messages = page
        .messages
        .into_iter()
        .map(|m| {
            let message = m.message.ok_or("a message without its publish")?;
            Ok(HandedOverMessage {
                seq: m.seq,
                message: wire::from_pb(message)?,
                subscription_ids: m.subscription_ids,
                packet_id: m.packet_id.map(packet_id).transpose()?,
                released: m.released,
                possibly_sent: m.possibly_sent,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(SessionHandover {
        expiry_interval: page.expiry_interval,
        messages,
        complete: page.complete,
        incoming_qos2: page
            .incoming_qos2
            .into_iter()
            .map(packet_id)
            .collect::<Result<_, _>>()?,
        earlier: page
            .earlier_node
            .map(|node| (NodeId(node), page.earlier_epoch)),
        delivered: page.delivered_publish_ids,
        earlier_released_up_to: page.earlier_released_up_to,
    })
}

/// The subscriptions of a registry entry, as the seam hands them over.
pub(crate) fn handed_over(entry: &ClientEntry) -> Vec<HandedOverSubscription> {
    entry
        .subscriptions
        .iter()
        .map(|(filter, s)| HandedOverSubscription {
            filter: filter.to_string(),
            qos: s.options.qos,
            no_local: s.options.no_local,
            retain_as_published: s.options.retain_as_published,
            retain_handling: s.options.retain_handling,
            subscription_id: s.subscription_id,
        })
        .collect()
}

/// A will as the seam gives it, for the registry.
pub(crate) fn will_to_pb(w: skein_seam::RegisteredWill) -> pb::RegisteredWill {
    let m = w.message;
    let p = m.properties;
    pb::RegisteredWill {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: u32::from(m.qos),
        retain: m.retain,
        delay_secs: w.delay_secs,
        payload_format_indicator: p.payload_format_indicator.map(u32::from),
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data.map(|b| b.to_vec()),
        user_properties: p
            .user_properties
            .into_iter()
            .map(|(key, value)| pb::WillProperty { key, value })
            .collect(),
    }
}

/// A registered will for the broker; `client_id` is its publisher.
pub(crate) fn will_from_pb(client_id: &str, w: &pb::RegisteredWill) -> skein_seam::RegisteredWill {
    skein_seam::RegisteredWill {
        message: skein_seam::ForwardedPublish {
            topic: w.topic.as_str().into(),
            payload: w.payload.clone().into(),
            // Out of range only if written by something else: the broker refuses it then.
            qos: u8::try_from(w.qos).unwrap_or(u8::MAX),
            retain: w.retain,
            properties: skein_seam::PublishProperties {
                payload_format_indicator: w
                    .payload_format_indicator
                    .and_then(|v| u8::try_from(v).ok()),
                message_expiry_interval: w.message_expiry_interval,
                content_type: w.content_type.clone(),
                response_topic: w.response_topic.clone(),
                correlation_data: w.correlation_data.clone().map(Into::into),
                user_properties: w
                    .user_properties
                    .iter()
                    .map(|p| (p.key.clone(), p.value.clone()))
                    .collect(),
            },
            publisher: Some(skein_seam::ClientId::new(client_id)),
            ..skein_seam::ForwardedPublish::default()
        },
        delay_secs: w.delay_secs,
    }
}

/// A connection's description as the seam gives it, for the registry.
pub(crate) fn connection_to_pb(c: skein_seam::RegisteredConnection) -> pb::RegisteredConnection {
    let address = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    pb::RegisteredConnection {
        username: c.username,
        peer: address(c.peer),
        sockname: address(c.sockname),
        protocol_level: u32::from(c.protocol_level),
        websocket: c.websocket,
        keepalive: u32::from(c.keepalive),
    }
}

/// A registered connection's description for the broker. What does not parse (written by
/// something else) reads as unknown: it only fills in an event.
pub(crate) fn connection_from_pb(c: &pb::RegisteredConnection) -> skein_seam::RegisteredConnection {
    skein_seam::RegisteredConnection {
        username: c.username.clone(),
        peer: c.peer.parse().ok(),
        sockname: c.sockname.parse().ok(),
        protocol_level: u8::try_from(c.protocol_level).unwrap_or(0),
        websocket: c.websocket,
        keepalive: u16::try_from(c.keepalive).unwrap_or(u16::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_seam::{ClientId, ForwardedPublish, PublishProperties};

    fn message(seq: u64, packet_id: Option<u16>) -> HandedOverMessage {
        HandedOverMessage {
            seq,
            message: ForwardedPublish {
                topic: "a/b".into(),
                payload: b"p".to_vec().into(),
                qos: 2,
                retain: false,
                properties: PublishProperties::default(),
                received_at_ms: 7,
                publisher: Some(ClientId::new("pub")),
                publisher_username: None,
                publish_id: None,
                to_subscribers: false,
                shared: Vec::new(),
                adopted_from: None,
                for_client: None,
                possibly_delivered: false,
                routed_index: 0,
            },
            subscription_ids: vec![3],
            packet_id,
            released: packet_id.is_some(),
            possibly_sent: packet_id.is_none() && seq % 2 == 1,
        }
    }

    #[test]
    fn a_page_round_trips() {
        let page = SessionHandover {
            expiry_interval: 60,
            messages: vec![message(4, Some(9)), message(5, None)],
            complete: true,
            incoming_qos2: vec![1, 65535],
            earlier: Some((NodeId(3), 77)),
            delivered: vec![0, u64::MAX],
            earlier_released_up_to: 41,
        };
        assert_eq!(from_pb(to_pb(page.clone())), Ok(page));
    }

    #[test]
    fn a_page_with_impossible_packet_ids_is_refused() {
        let mut page = to_pb(SessionHandover {
            messages: vec![message(1, Some(1))],
            ..SessionHandover::default()
        });
        page.messages[0].packet_id = Some(70_000);
        assert!(from_pb(page.clone()).is_err());
        page.messages[0].packet_id = Some(0);
        assert!(from_pb(page.clone()).is_err());
        page.messages[0].packet_id = None;
        page.incoming_qos2 = vec![0];
        assert!(from_pb(page.clone()).is_err());
        page.incoming_qos2.clear();
        page.messages[0].message = None;
        assert!(from_pb(page).is_err());
    }
}
