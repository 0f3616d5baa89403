//! A handed-over session page between the seam's type and its protobuf message.

use skein_proto::v1 as pb;
use skein_seam::{HandedOverMessage, NodeId, SessionHandover};

use crate::forward::wire;

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
            },
            subscription_ids: vec![3],
            packet_id,
            released: packet_id.is_some(),
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
