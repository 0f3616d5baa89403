//! System events: one typed model ([`model`]), raised at protocol points, fanned out to one
//! bounded queue per dialect. Raising never blocks: a full queue drops the event for that
//! dialect and counts it in `skein_events_dropped_total`.

pub mod access;
pub mod dollar_event;
pub mod dollar_events;
pub mod model;
pub mod mqtt_out;
pub mod presence;
pub mod raise;
pub mod redis;
pub mod setup;
pub mod sink_task;
pub mod stream;
#[cfg(test)]
pub(crate) mod test_support;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use model::*;

struct Sink {
    dialect: &'static str,
    kinds: KindSet,
    tx: mpsc::Sender<Arc<Event>>,
}

/// Where events go. Built at startup from the config; dialect tasks hold the receivers.
pub struct EventBus {
    node: NodeInfo,
    sinks: Vec<Sink>,
    wanted: KindSet,
}

impl EventBus {
    pub fn new(node: NodeInfo) -> EventBus {
        EventBus {
            node,
            sinks: Vec::new(),
            wanted: KindSet::NONE,
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Registers a dialect that wants `kinds`; its task consumes the returned receiver.
    pub fn add_sink(
        &mut self,
        dialect: &'static str,
        kinds: KindSet,
        capacity: usize,
    ) -> mpsc::Receiver<Arc<Event>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.sinks.push(Sink { dialect, kinds, tx });
        self.wanted = self.wanted.union(kinds);
        rx
    }

    /// Whether any dialect wants `kind`: check before building an expensive event.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.wanted.contains(kind)
    }

    /// Whether any dialect wants any of `kinds`.
    pub fn wants_any(&self, kinds: KindSet) -> bool {
        self.wanted.0 & kinds.0 != 0
    }

    /// Hands the event to every dialect that wants it, without waiting.
    pub fn emit(&self, event: Event) {
        let kind = event.kind();
        if !self.wants(kind) {
            return;
        }
        let event = Arc::new(event);
        for sink in &self.sinks {
            if !sink.kinds.contains(kind) {
                continue;
            }
            match sink.tx.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!(crate::metrics::EVENTS_DROPPED, "dialect" => sink.dialect, "reason" => "queue_full")
                        .increment(1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    metrics::counter!(crate::metrics::EVENTS_DROPPED, "dialect" => sink.dialect, "reason" => "closed")
                        .increment(1);
                }
            }
        }
    }

    /// Per dialect: events waiting in its queue (for the queue-depth gauge).
    pub fn queue_depths(&self) -> Vec<(&'static str, usize)> {
        self.sinks
            .iter()
            .map(|s| (s.dialect, s.tx.max_capacity() - s.tx.capacity()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;
    use crate::ids::ClientId;

    fn event() -> Event {
        Event {
            timestamp_ms: 1,
            timestamp_ns: 1_000_000,
            client: Arc::new(ClientInfo {
                client_id: ClientId::new("c"),
                username: None,
                peer: "127.0.0.1:1000".parse().unwrap(),
                sockname: std::sync::Arc::new("127.0.0.1:1883".parse().unwrap()),
                protocol: ProtocolVersion::V5,
                transport: Transport::Tcp,
                keepalive: 60,
                clean_start: true,
                connected_at_ms: 1,
                will: None,
            }),
            body: EventBody::Ping,
        }
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking_and_only_wanted_kinds_are_queued() {
        let mut bus = EventBus::new(NodeInfo {
            node: "127.0.0.1:1883".into(),
            node_ip: "127.0.0.1".into(),
            node_name: "n".into(),
        });
        let mut pings = bus.add_sink("a", KindSet::of(&[EventKind::ClientPing]), 1);
        let mut none = bus.add_sink("b", KindSet::of(&[EventKind::ClientConnected]), 1);
        assert!(bus.wants(EventKind::ClientPing));
        assert!(!bus.wants(EventKind::MessagePublish));
        assert!(bus.wants_any(KindSet::of(&[
            EventKind::MessagePublish,
            EventKind::ClientPing
        ])));
        assert!(!bus.wants_any(KindSet::of(&[EventKind::MessagePublish])));
        bus.emit(event());
        bus.emit(event());
        assert_eq!(bus.queue_depths(), vec![("a", 1), ("b", 0)]);
        assert!(pings.try_recv().is_ok());
        assert!(pings.try_recv().is_err());
        assert!(none.try_recv().is_err());
    }
}
