//! The event watcher the tests of `events_mqtt` share: a subscriber to event topics that
//! keeps what it has seen, and small checks on event fields.

use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::{
    unique_id, Connect, Node, Packet, Publish, RawClient, RecvError, SubFilter, RECV_TIMEOUT,
};

/// Every `$EVENT` topic (each is one topic level: there is no wildcard for them).
pub const DOLLAR_EVENT_TOPICS: [&str; 9] = [
    "$EVENT.PUBLISH",
    "$EVENT.CONNECT",
    "$EVENT.SUBSCRIBE",
    "$EVENT.UNSUBSCRIBE",
    "$EVENT.PING",
    "$EVENT.DISCONNECT",
    "$EVENT.CLOSE",
    "$EVENT.ACK",
    "$EVENT.OFFLINE",
];

/// A subscriber to event topics that keeps every event it has seen, so a test can wait
/// for events in any order (dialects publish from separate queues).
pub struct Watcher {
    pub raw: RawClient,
    /// (topic, parsed payload, raw payload) not consumed yet.
    pub seen: Vec<(String, Value, String)>,
    /// Every raw payload ever received (for the no-password check).
    all: Vec<String>,
}

impl Watcher {
    pub async fn connect(node: &Node, connect: &Connect, filters: &[&str]) -> Watcher {
        let (mut raw, _, _) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
        let subs: Vec<SubFilter> = filters.iter().map(|f| SubFilter::new(f, 1)).collect();
        let codes = raw.subscribe(1, &subs).await;
        assert!(codes.iter().all(|c| *c <= 2), "SUBACK {codes:02x?}");
        Watcher::on(raw)
    }

    /// A watcher on a client that is already connected and subscribed.
    pub fn on(raw: RawClient) -> Watcher {
        Watcher {
            raw,
            seen: Vec::new(),
            all: Vec::new(),
        }
    }

    pub async fn start(node: &Node, filters: &[&str]) -> Watcher {
        Watcher::connect(node, &Connect::v5(&unique_id("watcher")), filters).await
    }

    /// Both MQTT-topic dialects.
    pub async fn everything(node: &Node) -> Watcher {
        let mut filters = vec!["$events/#"];
        filters.extend(DOLLAR_EVENT_TOPICS);
        Watcher::start(node, &filters).await
    }

    fn keep(&mut self, p: Publish) {
        let text = String::from_utf8(p.payload).expect("event payloads are UTF-8");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} payload is not JSON ({e}): {text}", p.topic));
        self.all.push(text.clone());
        self.seen.push((p.topic, value, text));
    }

    /// The first event on `topic` matching `pred`, waiting up to RECV_TIMEOUT.
    pub async fn wait(&mut self, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_within(RECV_TIMEOUT, topic, pred).await
    }

    pub async fn wait_within(
        &mut self,
        timeout: Duration,
        topic: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen.iter().position(|(t, v, _)| t == topic && pred(v)) {
                return self.seen.remove(i).1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.recv(left).await {
                Ok(Packet::Publish(p)) => self.keep(p),
                Ok(_) => {}
                Err(e) => panic!(
                    "no matching event on {topic} within {timeout:?} ({e:?}); seen: {:#?}",
                    self.seen
                        .iter()
                        .map(|(t, _, raw)| (t, raw))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// The event on `topic` about client `id` (either dialect's spelling of the field).
    pub async fn about(&mut self, topic: &str, id: &str) -> Value {
        self.wait(topic, |v| v["clientid"] == id || v["clientId"] == id)
            .await
    }

    /// Reads for `dur` and asserts nothing on `topic` matches `pred`.
    pub async fn expect_none(&mut self, dur: Duration, topic: &str, pred: impl Fn(&Value) -> bool) {
        self.read_for(dur).await;
        if let Some((t, _, raw)) = self.seen.iter().find(|(t, v, _)| t == topic && pred(v)) {
            panic!("unexpected event on {t}: {raw}");
        }
    }

    /// Keeps whatever arrives within `dur`.
    pub async fn read_for(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.raw.recv(left).await {
                Ok(Packet::Publish(p)) => self.keep(p),
                Ok(_) => {}
                Err(RecvError::Timeout) => {}
                Err(e) => panic!("watcher failed: {e:?}"),
            }
        }
    }

    /// Every event received so far, consumed or not, as text.
    pub fn raw_payloads(&self) -> &[String] {
        &self.all
    }
}

pub fn node_with_both_dialects(extra: &[(&str, &str)]) -> Node {
    let mut b = Node::builder().env("SKEIN_EVENTS_DOLLAR_EVENT", "1");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b.start()
}

pub fn is_u64(v: &Value) -> bool {
    v.as_u64().is_some()
}

pub fn assert_recent_ms(v: &Value) {
    let ms = v
        .as_u64()
        .unwrap_or_else(|| panic!("not a millisecond number: {v}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        ms <= now && now - ms < 60_000,
        "{ms} is not a recent Unix time in ms"
    );
}
