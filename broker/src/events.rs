//! System events: one typed model ([`model`]), raised at protocol points, fanned out to one
//! bounded queue per dialect. Raising never blocks: a full queue drops the event for that
//! dialect and counts it in `skein_events_dropped_total`.
//!
//! The events sit below the broker, its sessions and connections, and below `config`:
//! helpers raise from the bus and a snapshot of the client ([`raise`]), the dialects get
//! their settings as [`EventSettings`] and publish through [`mqtt_out::Publisher`], which
//! the broker implements.

pub mod access;
pub mod dollar_event_dot_topics;
pub mod dollar_events_slash_topics;
pub mod model;
pub mod mqtt_dialects;
pub mod mqtt_out;
pub mod presence;
pub mod raise;
pub mod redis;
pub mod settings;
pub mod sink_task;
pub mod stream;
#[cfg(test)]
pub(crate) mod test_support;
pub mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

pub use model::*;
pub use settings::EventSettings;

struct Sink {
    dialect: &'static str,
    kinds: KindSet,
    tx: mpsc::Sender<Arc<Event>>,
    /// Only publishes on `$` topics: gets events only while some subscription starts
    /// with `$` (see [`EventBus::set_dollar_receivers`]).
    dollar_only: bool,
}

/// Where events go. Built at startup from the config; dialect tasks hold the receivers.
pub struct EventBus {
    node: NodeInfo,
    sinks: Vec<Sink>,
    /// Kinds some sink always wants.
    wanted: KindSet,
    /// Kinds only `$`-only sinks want.
    wanted_by_dollar_only: KindSet,
    /// Whether a subscription starting with `$` exists. Without one, events for the
    /// `$`-only sinks are not even built: queueing three events per connect to tasks that
    /// drop them cost a task wake-up each.
    dollar_receivers: AtomicBool,
}

impl EventBus {
    pub fn new(node: NodeInfo) -> EventBus {
        EventBus {
            node,
            sinks: Vec::new(),
            wanted: KindSet::NONE,
            wanted_by_dollar_only: KindSet::NONE,
            dollar_receivers: AtomicBool::new(false),
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
        self.add(dialect, kinds, capacity, false)
    }

    /// Registers a dialect. One with `dollar_only` (every message it renders goes to a `$`
    /// topic, never retained) gets events only while a subscription starting with `$`
    /// exists.
    pub(crate) fn add(
        &mut self,
        dialect: &'static str,
        kinds: KindSet,
        capacity: usize,
        dollar_only: bool,
    ) -> mpsc::Receiver<Arc<Event>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.sinks.push(Sink {
            dialect,
            kinds,
            tx,
            dollar_only,
        });
        if dollar_only {
            self.wanted_by_dollar_only = self.wanted_by_dollar_only.union(kinds);
        } else {
            self.wanted = self.wanted.union(kinds);
        }
        rx
    }

    /// Whether a subscription starting with `$` exists (kept up to date by the broker
    /// under its subscription index's lock).
    pub fn set_dollar_receivers(&self, present: bool) {
        // Only on a change: every `wants` reads this line.
        if self.dollar_receivers.load(Ordering::Relaxed) != present {
            self.dollar_receivers.store(present, Ordering::Release);
        }
    }

    fn dollar_receivers(&self) -> bool {
        self.dollar_receivers.load(Ordering::Acquire)
    }

    fn wanted_now(&self) -> KindSet {
        if self.dollar_receivers() {
            self.wanted.union(self.wanted_by_dollar_only)
        } else {
            self.wanted
        }
    }

    /// Whether some dialect could ever want `kind`, whatever the subscriptions.
    pub fn could_want(&self, kind: EventKind) -> bool {
        self.wanted.union(self.wanted_by_dollar_only).contains(kind)
    }

    /// Whether any dialect wants `kind` now: check before building an expensive event.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.wanted_now().contains(kind)
    }

    /// Whether any dialect wants any of `kinds` now.
    pub fn wants_any(&self, kinds: KindSet) -> bool {
        self.wanted_now().0 & kinds.0 != 0
    }

    /// Hands the event to every dialect that wants it, without waiting.
    pub fn emit(&self, event: Event) {
        let kind = event.kind();
        if !self.wants(kind) {
            return;
        }
        let event = Arc::new(event);
        let dollar_receivers = self.dollar_receivers();
        for sink in &self.sinks {
            if !sink.kinds.contains(kind) || (sink.dollar_only && !dollar_receivers) {
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
    use skein_seam::ClientId;

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
    fn dollar_sinks_get_events_only_while_a_dollar_subscription_exists() {
        let mut bus = EventBus::new(crate::events::test_support::node());
        let pings = KindSet::of(&[EventKind::ClientPing]);
        let mut dollar = bus.add("d", pings, 8, true);
        let mut plain = bus.add_sink("p", pings, 8);
        bus.emit(event());
        assert!(dollar.try_recv().is_err());
        assert!(plain.try_recv().is_ok());
        bus.set_dollar_receivers(true);
        bus.emit(event());
        assert!(dollar.try_recv().is_ok());
        assert!(plain.try_recv().is_ok());
        bus.set_dollar_receivers(false);
        bus.emit(event());
        assert!(dollar.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking_and_only_wanted_kinds_are_queued() {
        let mut bus = EventBus::new(crate::events::test_support::node());
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
