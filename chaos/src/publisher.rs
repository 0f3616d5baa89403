//! A QoS 1 publisher: one message in flight, `p<i>:<seq>` on `chaos/p<i>`, at a steady
//! rate. A message counts as acknowledged only on PUBACK 0x00 / 0x10; a connection that
//! fails meanwhile is replaced (clean start, a random running node) and the next message
//! gets the next sequence, so no payload is ever sent twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::Event;
use tokio::sync::{mpsc, watch};

use crate::ledger::payload;
use crate::mqtt::{self, Established, Session};
use crate::rng::Rng;
use crate::shared::{publisher_id, Shared};

/// How long a PUBACK may take (the broker answers within 5 s even when a peer does not).
const PUBACK_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_millis(200);

pub async fn run(
    index: u32,
    shared: Arc<Shared>,
    mut rng: Rng,
    rate: u32,
    mut moves: mpsc::Receiver<usize>,
    stop: watch::Receiver<bool>,
) {
    let id = publisher_id(index);
    let topic = format!("chaos/p{index}");
    let interval = Duration::from_secs(1) / rate.max(1);
    // The connection and its number in the connection record (publishers are recorded
    // too: a CONNECT of theirs that a stopped node reads late can take one over).
    let mut current: Option<(Established, u64)> = None;
    let mut target: Option<usize> = None;
    let mut seq = 0u64;
    while !*stop.borrow() {
        let started = Instant::now();
        while let Ok(node) = moves.try_recv() {
            if let Some((est, conn)) = current.take() {
                disconnect(est, conn, &shared).await;
            }
            target = Some(node);
        }
        if current.is_none() {
            let node = target.take().unwrap_or_else(|| {
                let running = shared.topology.running();
                if running.is_empty() {
                    rng.below(shared.topology.len() as u64) as usize
                } else {
                    *rng.pick(&running)
                }
            });
            let session = Session {
                client_id: id.clone(),
                clean_start: true,
                expiry: None,
                credentials: None,
            };
            let attempt = shared.conns().connecting(&id, node);
            let incarnation = shared.topology.incarnation(node);
            match mqtt::connect(shared.topology.mqtt[node], &session).await {
                Ok(est) => {
                    let conn = shared.conns().accepted(attempt, incarnation);
                    current = Some((est, conn));
                }
                Err(e) => {
                    shared.connect_failed(attempt, &e);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        seq += 1;
        let (est, conn) = current.as_mut().expect("connected");
        let conn = *conn;
        let body = Bytes::from(payload(index, seq));
        match publish_one(est, &topic, body).await {
            Ok(code) if code == 0x00 || code == 0x10 => {
                let round = shared.round.load(Ordering::Relaxed);
                shared.ledger().acked((index, seq), round);
            }
            Ok(code) => {
                let mut ledger = shared.ledger();
                ledger.unacked += 1;
                *ledger.refused.entry(code).or_default() += 1;
            }
            Err(failure) => {
                shared.ledger().unacked += 1;
                // A timeout: the harness gives the connection up; else the server or the
                // network ended it.
                let (by_us, reason) = match failure {
                    Failure::Timeout => (true, None),
                    Failure::Ended(reason) => (false, reason),
                };
                shared.conns().closed(conn, by_us, reason, &shared.topology);
                current = None;
            }
        }
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    if let Some((est, conn)) = current.take() {
        disconnect(est, conn, &shared).await;
    }
}

enum Failure {
    /// No PUBACK in time.
    Timeout,
    /// The connection ended, with the server's DISCONNECT reason if one came.
    Ended(Option<u8>),
}

/// Publishes at QoS 1 and waits for the PUBACK; its reason code.
async fn publish_one(est: &mut Established, topic: &str, body: Bytes) -> Result<u8, Failure> {
    if est
        .client
        .publish(topic, QoS::AtLeastOnce, false, body)
        .await
        .is_err()
    {
        return Err(Failure::Ended(None));
    }
    let events = &mut est.events;
    tokio::time::timeout(PUBACK_TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => return Ok(reason_code(&ack.reason)),
                Ok(_) => {}
                Err(e) => return Err(Failure::Ended(mqtt::server_disconnect(&e))),
            }
        }
    })
    .await
    .map_err(|_| Failure::Timeout)?
}

fn reason_code(reason: &PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

async fn disconnect(mut est: Established, conn: u64, shared: &Shared) {
    let _ = est.client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while est.events.poll().await.is_ok() {}
    })
    .await;
    shared.conns().closed(conn, true, None, &shared.topology);
}
