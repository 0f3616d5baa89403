//! The task behind each MQTT-topic dialect: takes events off its bounded queue, renders
//! them, and publishes the result through the broker's normal routing (a [`Publisher`],
//! which the broker implements), so subscribers on any node receive them like any other
//! message.
//!
//! The messages have no publisher: that is how the node's own messages are told apart, and
//! they raise no `message.*` events of their own (no event storms).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Event;
use crate::codec::QoS;
use crate::message::{now_ms, Message};

/// One message a dialect publishes for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

impl Outgoing {
    pub fn json(topic: impl Into<String>, value: &serde_json::Value) -> Outgoing {
        Outgoing {
            topic: topic.into(),
            payload: Bytes::from(value.to_string()),
            retain: false,
        }
    }
}

/// Where the MQTT-topic dialects' messages go: the node's routing. Implemented by the
/// broker, which sits above the events.
pub trait Publisher: Send + Sync {
    /// Routes a message the node publishes itself (no publisher) to its subscribers.
    fn publish(&self, message: Arc<Message>);
}

/// Turns one event into the messages a dialect publishes for it (often none).
pub type Renderer = Box<dyn FnMut(&Event) -> Vec<Outgoing> + Send>;

/// A registered dialect waiting for its task.
pub struct Dialect {
    pub name: &'static str,
    pub rx: mpsc::Receiver<Arc<Event>>,
    pub render: Renderer,
}

/// The running dialect tasks, to drain at shutdown.
pub struct DialectTasks {
    stop: CancellationToken,
    handles: Vec<JoinHandle<()>>,
}

impl DialectTasks {
    /// Lets every dialect publish what is already queued (the connections' last
    /// `client.disconnected` events during a shutdown), for at most `timeout`.
    pub async fn drain(self, timeout: Duration) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + timeout;
        for handle in self.handles {
            let abort = handle.abort_handle();
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                tracing::warn!(
                    "event dialect still busy after the drain timeout; its queue is lost"
                );
                abort.abort();
            }
        }
    }
}

/// Spawns one task per dialect. The tasks hold the publisher (the broker) weakly: the
/// broker owns the event bus whose senders feed them, and a strong reference would keep
/// both alive.
pub fn spawn<P: Publisher + 'static>(
    dialects: Vec<Dialect>,
    publisher: &Arc<P>,
    qos: QoS,
) -> DialectTasks {
    let stop = CancellationToken::new();
    let handles = dialects
        .into_iter()
        .map(|d| {
            let span = tracing::info_span!("events", dialect = d.name);
            let weak: Weak<P> = Arc::downgrade(publisher);
            let publisher: Weak<dyn Publisher> = weak;
            tokio::spawn(run(d, publisher, qos, stop.clone()).instrument(span))
        })
        .collect();
    DialectTasks { stop, handles }
}

async fn run(mut d: Dialect, broker: Weak<dyn Publisher>, qos: QoS, stop: CancellationToken) {
    loop {
        // Queued events first, so `stop` is seen only once the queue is empty.
        let event = tokio::select! {
            biased;
            e = d.rx.recv() => e,
            _ = stop.cancelled() => break,
        };
        let Some(event) = event else { return };
        publish(&mut d, &broker, qos, &event);
    }
    while let Ok(event) = d.rx.try_recv() {
        publish(&mut d, &broker, qos, &event);
    }
}

fn publish(d: &mut Dialect, broker: &Weak<dyn Publisher>, qos: QoS, event: &Event) {
    let Some(broker) = broker.upgrade() else {
        return;
    };
    let out = (d.render)(event);
    if out.is_empty() {
        return;
    }
    for o in out {
        broker.publish(Arc::new(Message {
            topic: Arc::from(o.topic),
            payload: o.payload,
            qos,
            retain: o.retain,
            properties: Default::default(),
            received_at_ms: now_ms(),
            publisher: None,
            publisher_username: None,
            publish_id: Some(crate::message::new_publish_id()),
        }));
    }
}
