//! Thin wrappers around rumqttc (v3.1.1 and v5) clients: the event loop runs
//! in its own task (never reconnecting), its events are queued, and the
//! helpers wait for specific events with deadlines.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::RECV_TIMEOUT;

/// Queue of events produced by an event-loop task.
struct Events<E> {
    rx: mpsc::UnboundedReceiver<Result<E, String>>,
    stash: VecDeque<E>,
    error: Option<String>,
}

impl<E: Debug> Events<E> {
    /// Next event (stash first); `Err` when the event loop failed or on timeout.
    async fn next(&mut self, timeout: Duration) -> Result<E, String> {
        if let Some(e) = self.stash.pop_front() {
            return Ok(e);
        }
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => Err("timeout".into()),
            Ok(None) => {
                self.error = Some("event loop task ended".into());
                Err("event loop task ended".into())
            }
            Ok(Some(Ok(e))) => Ok(e),
            Ok(Some(Err(err))) => {
                self.error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// First event matching `pred` (others are stashed in order).
    async fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&E) -> bool) -> E {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).unwrap();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let res = match self.error.clone() {
                Some(e) => Err(e),
                None => match tokio::time::timeout(left, self.rx.recv()).await {
                    Err(_) => Err("timeout".to_string()),
                    Ok(None) => Err("event loop task ended".to_string()),
                    Ok(Some(Ok(e))) => Ok(e),
                    Ok(Some(Err(e))) => {
                        self.error = Some(e.clone());
                        Err(e)
                    }
                },
            };
            match res {
                Ok(e) if pred(&e) => return e,
                // stashed immediately so that cancelling this future loses nothing
                Ok(e) => self.stash.push_back(e),
                Err(err) => panic!(
                    "waiting for {what} within {timeout:?}: {err}; other events: {:?}",
                    self.stash
                ),
            }
        }
    }

    /// Like `wait_for` but returns `None` on timeout or when the connection ended.
    async fn try_wait_for(&mut self, timeout: Duration, pred: impl Fn(&E) -> bool) -> Option<E> {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.error.is_some() {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.error = Some("event loop task ended".into());
                    return None;
                }
                Ok(Some(Ok(e))) if pred(&e) => return Some(e),
                Ok(Some(Ok(e))) => self.stash.push_back(e),
                Ok(Some(Err(e))) => self.error = Some(e),
            }
        }
    }

    /// Waits until the event loop reports an error (connection closed /
    /// server DISCONNECT) and returns its description.
    async fn wait_closed(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Ok(_) => continue,
                Err(e) if e == "timeout" => panic!("connection not closed within {timeout:?}"),
                Err(e) => return e,
            }
        }
    }

    /// Asserts no event matching `pred` shows up within `dur`.
    async fn expect_none(&mut self, dur: Duration, what: &str, pred: impl Fn(&E) -> bool) {
        if let Some(e) = self.stash.iter().find(|e| pred(e)) {
            panic!("unexpected {what}: {e:?}");
        }
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.error.is_some() {
                return;
            }
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) | Ok(None) => return,
                Ok(Some(Ok(e))) if pred(&e) => panic!("unexpected {what}: {e:?}"),
                Ok(Some(Ok(e))) => self.stash.push_back(e),
                Ok(Some(Err(e))) => self.error = Some(e),
            }
        }
    }
}

/// Runs `poll` in its own task until it fails and waits for the CONNACK, which
/// `connack` picks out (events before it are dropped).
async fn start<E, C, F, Fut>(
    mut poll: F,
    connack: impl Fn(E) -> Option<C>,
) -> Result<(Events<E>, JoinHandle<()>, C), String>
where
    E: Debug + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<E, String>> + Send,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let r = poll().await;
            let stop = r.is_err();
            if tx.send(r).is_err() || stop {
                break;
            }
        }
    });
    let mut events = Events {
        rx,
        stash: VecDeque::new(),
        error: None,
    };
    loop {
        match events.next(RECV_TIMEOUT).await {
            Ok(e) => {
                if let Some(c) = connack(e) {
                    return Ok((events, task, c));
                }
            }
            Err(e) => {
                task.abort();
                return Err(e);
            }
        }
    }
}

// ---------------------------------------------------------------- MQTT 3.1.1

pub mod v3 {
    use super::*;
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing,
        Packet, Publish, QoS, SubscribeReasonCode,
    };
    use std::sync::Arc;
    use tokio::sync::Mutex;

    /// Default options: 127.0.0.1, keep alive 30 s, clean session.
    pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// A connected rumqttc v3.1.1 client.
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        events: Events<Event>,
        task: JoinHandle<()>,
    }

    impl Client {
        /// Clean-session connection with default options.
        pub async fn connect(addr: SocketAddr, client_id: &str) -> Client {
            Self::connect_with(options(addr, client_id)).await
        }

        /// Connects and panics unless CONNACK is successful.
        pub async fn connect_with(opts: MqttOptions) -> Client {
            let id = opts.client_id();
            Self::try_connect(opts)
                .await
                .unwrap_or_else(|e| panic!("v3 connect of {id:?} failed: {e}"))
        }

        /// Connects; `Err` carries the rumqttc error (e.g. a refused CONNACK).
        pub async fn try_connect(opts: MqttOptions) -> Result<Client, String> {
            let (client, el) = AsyncClient::new(opts, 100);
            let el = Arc::new(Mutex::new(el));
            let (events, task, connack) = start(
                move || {
                    let el = el.clone();
                    async move { el.lock().await.poll().await.map_err(|e| format!("{e:?}")) }
                },
                |e| match e {
                    Event::Incoming(Packet::ConnAck(c)) => Some(c),
                    _ => None,
                },
            )
            .await?;
            Ok(Client {
                client,
                connack,
                events,
                task,
            })
        }

        pub fn session_present(&self) -> bool {
            self.connack.session_present
        }

        /// Subscribes to one filter and returns the SUBACK code.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("subscribe request");
            self.wait_suback().await.remove(0)
        }

        /// Subscribes to several filters in one SUBSCRIBE.
        pub async fn subscribe_many(
            &mut self,
            filters: &[(&str, QoS)],
        ) -> Vec<SubscribeReasonCode> {
            let f: Vec<rumqttc::SubscribeFilter> = filters
                .iter()
                .map(|(p, q)| rumqttc::SubscribeFilter::new(p.to_string(), *q))
                .collect();
            self.client
                .subscribe_many(f)
                .await
                .expect("subscribe request");
            self.wait_suback().await
        }

        async fn wait_suback(&mut self) -> Vec<SubscribeReasonCode> {
            match self
                .events
                .wait_for(RECV_TIMEOUT, "SUBACK", |e| {
                    matches!(e, Event::Incoming(Packet::SubAck(_)))
                })
                .await
            {
                Event::Incoming(Packet::SubAck(s)) => s.return_codes,
                _ => unreachable!(),
            }
        }

        pub async fn unsubscribe(&mut self, filter: &str) {
            self.client
                .unsubscribe(filter)
                .await
                .expect("unsubscribe request");
            self.events
                .wait_for(RECV_TIMEOUT, "UNSUBACK", |e| {
                    matches!(e, Event::Incoming(Packet::UnsubAck(_)))
                })
                .await;
        }

        /// Publishes and waits until the flow is complete (sent for QoS 0,
        /// PUBACK for QoS 1, PUBCOMP for QoS 2).
        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.client
                .publish(topic, qos, retain, payload.into())
                .await
                .expect("publish request");
            let ev = self
                .events
                .wait_for(RECV_TIMEOUT, "outgoing PUBLISH", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Publish(_)))
                })
                .await;
            let Event::Outgoing(Outgoing::Publish(pkid)) = ev else {
                unreachable!()
            };
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.events
                        .wait_for(
                            RECV_TIMEOUT,
                            "PUBACK",
                            |e| matches!(e, Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid),
                        )
                        .await;
                }
                QoS::ExactlyOnce => {
                    self.events
                        .wait_for(
                            RECV_TIMEOUT,
                            "PUBCOMP",
                            |e| matches!(e, Event::Incoming(Packet::PubComp(a)) if a.pkid == pkid),
                        )
                        .await;
                }
            }
        }

        /// Next incoming PUBLISH.
        pub async fn recv(&mut self) -> Publish {
            self.recv_within(RECV_TIMEOUT).await
        }

        pub async fn recv_within(&mut self, timeout: Duration) -> Publish {
            match self
                .events
                .wait_for(timeout, "incoming PUBLISH", |e| {
                    matches!(e, Event::Incoming(Packet::Publish(_)))
                })
                .await
            {
                Event::Incoming(Packet::Publish(p)) => p,
                _ => unreachable!(),
            }
        }

        /// Next incoming PUBLISH, or `None` if none arrives within `timeout`.
        pub async fn try_recv_within(&mut self, timeout: Duration) -> Option<Publish> {
            match self
                .events
                .try_wait_for(timeout, |e| {
                    matches!(e, Event::Incoming(Packet::Publish(_)))
                })
                .await
            {
                Some(Event::Incoming(Packet::Publish(p))) => Some(p),
                _ => None,
            }
        }

        /// Receives `n` publishes.
        pub async fn recv_n(&mut self, n: usize) -> Vec<Publish> {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(self.recv().await);
            }
            v
        }

        /// Asserts no PUBLISH arrives within `dur` (bounded absence check).
        pub async fn expect_no_publish(&mut self, dur: Duration) {
            self.events
                .expect_none(dur, "PUBLISH", |e| {
                    matches!(e, Event::Incoming(Packet::Publish(_)))
                })
                .await
        }

        /// Waits until the event loop reports an error (connection closed).
        pub async fn wait_closed(&mut self, timeout: Duration) -> String {
            self.events.wait_closed(timeout).await
        }

        /// Sends DISCONNECT and waits (deadline) until the server closed the connection.
        pub async fn disconnect(mut self) {
            self.client.disconnect().await.expect("disconnect request");
            self.events
                .wait_for(RECV_TIMEOUT, "outgoing DISCONNECT", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Disconnect))
                })
                .await;
            // The server closes the connection once it has processed the
            // DISCONNECT; waiting for that makes a following reconnect with
            // the same client id deterministic (no session takeover race).
            self.wait_closed(RECV_TIMEOUT).await;
            self.task.abort();
            let _ = (&mut self.task).await;
        }

        /// Drops the TCP connection without DISCONNECT.
        pub async fn kill(mut self) {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

// ---------------------------------------------------------------- MQTT 5

pub mod v5 {
    use super::*;
    use bytes::Bytes;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectProperties, ConnectReturnCode, Filter, LastWill, LastWillProperties,
        Packet, Publish, PublishProperties, RetainForwardRule, SubscribeProperties,
        SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
    use rumqttc::Outgoing;
    use std::sync::Arc;
    use tokio::sync::Mutex;

    /// Default options: 127.0.0.1, keep alive 30 s, clean start.
    pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// A connected rumqttc v5 client.
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        events: Events<Event>,
        task: JoinHandle<()>,
    }

    impl Client {
        pub async fn connect(addr: SocketAddr, client_id: &str) -> Client {
            Self::connect_with(options(addr, client_id)).await
        }

        pub async fn connect_with(opts: MqttOptions) -> Client {
            let id = opts.client_id();
            Self::try_connect(opts)
                .await
                .unwrap_or_else(|e| panic!("v5 connect of {id:?} failed: {e}"))
        }

        pub async fn try_connect(opts: MqttOptions) -> Result<Client, String> {
            let (client, el) = AsyncClient::new(opts, 100);
            let el = Arc::new(Mutex::new(el));
            let (events, task, connack) = start(
                move || {
                    let el = el.clone();
                    async move { el.lock().await.poll().await.map_err(|e| format!("{e:?}")) }
                },
                |e| match e {
                    Event::Incoming(Packet::ConnAck(c)) => Some(c),
                    _ => None,
                },
            )
            .await?;
            Ok(Client {
                client,
                connack,
                events,
                task,
            })
        }

        pub fn session_present(&self) -> bool {
            self.connack.session_present
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("subscribe request");
            self.wait_suback().await.remove(0)
        }

        /// One SUBSCRIBE with full filter options and an optional subscription identifier.
        pub async fn subscribe_filters(
            &mut self,
            filters: Vec<Filter>,
            sub_id: Option<usize>,
        ) -> Vec<SubscribeReasonCode> {
            match sub_id {
                Some(id) => self
                    .client
                    .subscribe_many_with_properties(
                        filters,
                        SubscribeProperties {
                            id: Some(id),
                            user_properties: vec![],
                        },
                    )
                    .await
                    .expect("subscribe request"),
                None => self
                    .client
                    .subscribe_many(filters)
                    .await
                    .expect("subscribe request"),
            }
            self.wait_suback().await
        }

        async fn wait_suback(&mut self) -> Vec<SubscribeReasonCode> {
            match self
                .events
                .wait_for(RECV_TIMEOUT, "SUBACK", |e| {
                    matches!(e, Event::Incoming(Packet::SubAck(_)))
                })
                .await
            {
                Event::Incoming(Packet::SubAck(s)) => s.return_codes,
                _ => unreachable!(),
            }
        }

        pub async fn unsubscribe(&mut self, filter: &str) {
            self.client
                .unsubscribe(filter)
                .await
                .expect("unsubscribe request");
            self.events
                .wait_for(RECV_TIMEOUT, "UNSUBACK", |e| {
                    matches!(e, Event::Incoming(Packet::UnsubAck(_)))
                })
                .await;
        }

        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.publish_with(topic, qos, retain, payload, None).await
        }

        /// Publishes (with optional properties) and waits for the flow to complete.
        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            props: Option<PublishProperties>,
        ) {
            let payload = Bytes::from(payload.into());
            match props {
                Some(p) => {
                    self.client
                        .publish_with_properties(topic, qos, retain, payload, p)
                        .await
                }
                None => self.client.publish(topic, qos, retain, payload).await,
            }
            .expect("publish request");
            let ev = self
                .events
                .wait_for(RECV_TIMEOUT, "outgoing PUBLISH", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Publish(_)))
                })
                .await;
            let Event::Outgoing(Outgoing::Publish(pkid)) = ev else {
                unreachable!()
            };
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.events
                        .wait_for(
                            RECV_TIMEOUT,
                            "PUBACK",
                            |e| matches!(e, Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid),
                        )
                        .await;
                }
                QoS::ExactlyOnce => {
                    self.events
                        .wait_for(
                            RECV_TIMEOUT,
                            "PUBCOMP",
                            |e| matches!(e, Event::Incoming(Packet::PubComp(a)) if a.pkid == pkid),
                        )
                        .await;
                }
            }
        }

        pub async fn recv(&mut self) -> Publish {
            self.recv_within(RECV_TIMEOUT).await
        }

        pub async fn recv_within(&mut self, timeout: Duration) -> Publish {
            match self
                .events
                .wait_for(timeout, "incoming PUBLISH", |e| {
                    matches!(e, Event::Incoming(Packet::Publish(_)))
                })
                .await
            {
                Event::Incoming(Packet::Publish(p)) => p,
                _ => unreachable!(),
            }
        }

        /// Next incoming PUBLISH, or `None` if none arrives within `timeout`.
        pub async fn try_recv_within(&mut self, timeout: Duration) -> Option<Publish> {
            match self
                .events
                .try_wait_for(timeout, |e| {
                    matches!(e, Event::Incoming(Packet::Publish(_)))
                })
                .await
            {
                Some(Event::Incoming(Packet::Publish(p))) => Some(p),
                _ => None,
            }
        }

        pub async fn recv_n(&mut self, n: usize) -> Vec<Publish> {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(self.recv().await);
            }
            v
        }

        pub async fn expect_no_publish(&mut self, dur: Duration) {
            self.events
                .expect_none(dur, "PUBLISH", |e| {
                    matches!(e, Event::Incoming(Packet::Publish(_)))
                })
                .await
        }

        /// Waits until the event loop reports an error (connection closed /
        /// server DISCONNECT) and returns its description.
        pub async fn wait_closed(&mut self, timeout: Duration) -> String {
            self.events.wait_closed(timeout).await
        }

        pub async fn disconnect(mut self) {
            self.client.disconnect().await.expect("disconnect request");
            self.events
                .wait_for(RECV_TIMEOUT, "outgoing DISCONNECT", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Disconnect))
                })
                .await;
            // The server closes the connection once it has processed the
            // DISCONNECT; waiting for that makes a following reconnect with
            // the same client id deterministic (no session takeover race).
            self.wait_closed(RECV_TIMEOUT).await;
            self.task.abort();
            let _ = (&mut self.task).await;
        }

        pub async fn kill(mut self) {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Topic of a v5 publish as a String.
    pub fn topic(p: &Publish) -> String {
        String::from_utf8_lossy(&p.topic).into_owned()
    }
}
