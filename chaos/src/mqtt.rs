//! Opening one rumqttc v5 connection by hand: a fresh event loop per connection (rumqttc's
//! own reconnect is never used, so the harness decides where and when a client goes), the
//! CONNACK and, when asked, a SUBACK awaited with deadlines.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};

/// CONNECT → CONNACK bound, as long as real clients wait (paho's default): longer than a
/// node can take to answer. A stopped node accepts the TCP connection and reads the
/// CONNECT only once resumed (a stop lasts at most 2 x the election timeout + 2.5 s); then
/// the registration takes up to `connect_commit_timeout_ms` (5 s by default; Server
/// Unavailable after it) and the session's hand-over up to 3 s more. A client that gave up
/// sooner would not know whether its CONNECT took the session over: a node that read it
/// before the socket closed registers it, and its commit ends the client's other
/// connection (0x8E) even if the client has moved on.
pub const CONNECT_TIMEOUT_SECS: u64 = 30;
/// Long enough that no client gives up on a node stopped for a few seconds: a stopped
/// node's connections must be ended by the node (or its death), not by the client.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const SUBACK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Session {
    pub client_id: String,
    pub clean_start: bool,
    /// Session Expiry Interval (seconds) for a persistent session.
    pub expiry: Option<u32>,
    /// Username and password (the watchers: event topics need a verified username
    /// off loopback).
    pub credentials: Option<(String, String)>,
}

pub struct Established {
    pub client: AsyncClient,
    pub events: EventLoop,
    pub connack: ConnAck,
}

pub async fn connect(addr: SocketAddr, session: &Session) -> Result<Established> {
    let mut options = MqttOptions::new(&session.client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_start(session.clean_start)
        .set_session_expiry_interval(session.expiry)
        .set_connection_timeout(CONNECT_TIMEOUT_SECS);
    if let Some((user, password)) = &session.credentials {
        options.set_credentials(user, password);
    }
    let (client, mut events) = AsyncClient::new(options, 64);
    let deadline = Duration::from_secs(CONNECT_TIMEOUT_SECS + 1);
    let connack = tokio::time::timeout(deadline, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(c))) => return Ok(c),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("{e}")),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no CONNACK within {deadline:?}"))??;
    Ok(Established {
        client,
        events,
        connack,
    })
}

/// Subscribes to `filter` at QoS 1 and waits for the SUBACK; publishes that arrive
/// meanwhile are handed to `on_publish`.
pub async fn subscribe(
    est: &mut Established,
    filter: &str,
    mut on_publish: impl FnMut(&Publish),
) -> Result<()> {
    est.client.subscribe(filter, QoS::AtLeastOnce).await?;
    let events = &mut est.events;
    tokio::time::timeout(SUBACK_TIMEOUT, async {
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::SubAck(ack)) => {
                    let granted = ack.return_codes.iter().all(|c| {
                        matches!(
                            c,
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                        )
                    });
                    if !granted {
                        bail!("SUBACK refused {filter}: {:?}", ack.return_codes);
                    }
                    return Ok(());
                }
                Event::Incoming(Packet::Publish(p)) => on_publish(&p),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no SUBACK within {SUBACK_TIMEOUT:?}"))?
}

/// The reason code of the server's DISCONNECT when that is why the connection ended.
pub fn server_disconnect(e: &ConnectionError) -> Option<u8> {
    match e {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            Some(*reason_code as u8)
        }
        _ => None,
    }
}

/// Publishes the event loop had read but not handed out when it failed (rumqttc reads
/// several packets at once): they reached the client, so they count as received.
pub fn drain_publishes(events: &mut EventLoop) -> Vec<Publish> {
    events
        .state
        .events
        .drain(..)
        .filter_map(|e| match e {
            Event::Incoming(Packet::Publish(p)) => Some(p),
            _ => None,
        })
        .collect()
}
