//! Wiring of the MQTT-topic dialects (`$events`, `$EVENT`, presence): each gets its own
//! bounded queue on the bus at startup (before the broker exists) and its task once the
//! broker does.

use std::sync::Arc;

use super::mqtt_out::{self, Dialect, DialectTasks, Publisher, Renderer};
use super::presence::{Presence, Template};
use super::EventSettings;
use super::{dollar_event_dot_topics, dollar_events_slash_topics, EventBus, KindSet};
use crate::codec::QoS;

/// The dialects registered on the bus, waiting for the broker to start their tasks.
pub struct MqttDialects {
    dialects: Vec<Dialect>,
    qos: QoS,
}

/// Registers every MQTT-topic dialect the config enables, with the kinds it asks for
/// (limited to those the dialect renders).
/// `settings`: the event settings, e.g. `&Config`.
pub fn register_mqtt_dialects(
    bus: &mut EventBus,
    settings: impl Into<EventSettings>,
) -> MqttDialects {
    let settings = settings.into();
    let capacity = settings.events_queue_capacity;
    let mut dialects = Vec::new();
    let mut add = |bus: &mut EventBus,
                   name: &'static str,
                   kinds: KindSet,
                   render: Renderer,
                   // Every message on a `$` topic, never retained: the bus queues it
                   // events only while a subscription could receive them.
                   dollar_topics_only: bool| {
        if kinds == KindSet::NONE {
            return;
        }
        let rx = bus.add(name, kinds, capacity, dollar_topics_only);
        dialects.push(Dialect { name, rx, render });
    };
    if settings.events_dollar_events {
        let node = bus.node().clone();
        let kinds = KindSet(
            settings.events_dollar_events_kinds.0 & dollar_events_slash_topics::renders().0,
        );
        let render: Renderer = Box::new(move |e| {
            dollar_events_slash_topics::render(e, &node)
                .into_iter()
                .collect()
        });
        add(
            bus,
            dollar_events_slash_topics::DIALECT,
            kinds,
            render,
            true,
        );
    }
    if settings.events_dollar_event {
        let node = bus.node().clone();
        let kinds =
            KindSet(settings.events_dollar_event_kinds.0 & dollar_event_dot_topics::renders().0);
        let render: Renderer = Box::new(move |e| dollar_event_dot_topics::render(e, &node));
        add(bus, dollar_event_dot_topics::DIALECT, kinds, render, true);
    }
    if !settings.events_presence_topic.is_empty() {
        match Template::parse(&settings.events_presence_topic) {
            Ok(template) => {
                let node = bus.node().clone();
                let mut presence = Presence::new(template, settings.events_presence_retain);
                let render: Renderer =
                    Box::new(move |e| presence.render(e, &node).into_iter().collect());
                add(
                    bus,
                    super::presence::DIALECT,
                    KindSet(settings.events_presence_kinds.0 & super::presence::renders().0),
                    render,
                    // Any topic, possibly retained.
                    false,
                );
            }
            // The config loader already refused a bad template; these are settings built in code.
            Err(e) => tracing::error!(error = %e, "events_presence_topic: presence topics are off"),
        }
    }
    MqttDialects {
        dialects,
        qos: QoS::from_u8(settings.events_qos).unwrap_or(QoS::AtMostOnce),
    }
}

impl MqttDialects {
    /// Names of the registered dialects, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.dialects.iter().map(|d| d.name).collect()
    }

    /// Starts one task per dialect, publishing through `publisher` (the broker); drain
    /// them at shutdown with [`DialectTasks::drain`].
    pub fn start<P: Publisher + 'static>(self, publisher: &Arc<P>) -> DialectTasks {
        mqtt_out::spawn(self.dialects, publisher, self.qos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::config::Config;
    use crate::events::{ClientInfo, EventKind, NodeInfo};
    use crate::local_cluster::LocalCluster;
    use crate::session::{Attachment, Subscription};
    use skein_seam::{ClientId, NodeId};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn bus() -> EventBus {
        EventBus::new(NodeInfo {
            node: "127.0.0.1:1883".into(),
            node_ip: "127.0.0.1".into(),
            node_name: "n".into(),
        })
    }

    #[test]
    fn only_enabled_dialects_and_rendered_kinds_are_registered() {
        let mut config = Config::default();
        let mut b = bus();
        let d = register_mqtt_dialects(&mut b, &config);
        assert_eq!(d.names(), ["$events"]);
        assert!(
            !b.wants(EventKind::ClientConnected),
            "nobody could receive a $ topic yet"
        );
        b.set_dollar_receivers(true);
        assert!(b.wants(EventKind::ClientConnected));
        assert!(
            !b.wants(EventKind::MessagePublish),
            "hot-path kinds off by default"
        );
        assert!(!b.wants(EventKind::ClientPing));

        config.events_dollar_events = false;
        let mut b = bus();
        assert!(register_mqtt_dialects(&mut b, &config).names().is_empty());
        assert!(!b.wants(EventKind::ClientConnected));

        config.events_dollar_event = true;
        config.events_dollar_event_kinds = KindSet::of(&[EventKind::ClientPing]);
        config.events_presence_topic = "p/{clientid}".into();
        let mut b = bus();
        let d = register_mqtt_dialects(&mut b, &config);
        assert_eq!(d.names(), ["$EVENT", "presence"]);
        assert!(!b.wants(EventKind::ClientPing), "only $EVENT renders pings");
        assert!(b.wants(EventKind::ClientConnected), "presence: any topic");
        b.set_dollar_receivers(true);
        assert!(b.wants(EventKind::ClientPing));
        assert!(!b.wants(EventKind::MessagePublish));
        assert!(b.wants(EventKind::ClientDisconnected));
    }

    /// A subscriber session on the broker, without a connection (the queue shows what
    /// routing delivered).
    fn subscriber(broker: &Arc<Broker>, filter: &str) -> Arc<crate::session::Session> {
        let s = broker.get_or_create_session(&ClientId::new("sub"));
        let tx = crate::session::KickSignal::new();
        s.state().attach(
            Attachment {
                connection_id: 1,
                epoch: 0,
                kick: tx,
            },
            Arc::new(ClientInfo::unknown(
                ClientId::new("sub"),
                crate::codec::ProtocolVersion::V5,
            )),
        );
        broker.subscribe(
            &s,
            filter,
            Subscription {
                options: Default::default(),
                subscription_id: None,
            },
        );
        s
    }

    #[tokio::test]
    async fn a_full_queue_counts_drops_without_blocking_and_drain_publishes_the_rest() {
        let mut config = Config {
            events_queue_capacity: 3,
            ..Config::default()
        };
        config.events_dollar_events_kinds = KindSet::of(&[EventKind::ClientConnected]);
        let mut b = bus();
        let dialects = register_mqtt_dialects(&mut b, &config);
        let broker = Broker::new(
            config,
            skein_storage::Store::open_temporary().unwrap(),
            Arc::new(LocalCluster::new(NodeId(1))),
            b,
            CancellationToken::new(),
        )
        .unwrap();
        let sub = subscriber(&broker, "$events/#");
        let client = Arc::new(ClientInfo::unknown(
            ClientId::new("c"),
            crate::codec::ProtocolVersion::V5,
        ));
        // No task consumes yet: the queue fills at 3 and further events are dropped at once.
        let started = std::time::Instant::now();
        for _ in 0..10 {
            crate::events::raise::raise(
                &broker.events,
                &client,
                EventKind::ClientConnected,
                || crate::events::EventBody::Connected,
            );
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(broker.events.queue_depths(), vec![("$events", 3)]);
        let tasks = dialects.start(&broker);
        tasks.drain(Duration::from_secs(5)).await;
        let st = sub.state();
        assert_eq!(st.queue.len(), 3);
        let m = &st.queue[0].delivery.message;
        assert_eq!(&*m.topic, "$events/client_connected");
        assert!(m.publisher.is_none());
        assert_eq!(m.qos, QoS::AtMostOnce);
    }
}
