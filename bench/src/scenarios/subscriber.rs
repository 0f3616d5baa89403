//! A subscriber: reads deliveries until the run ends, recording latency, loss and
//! duplicates, and acknowledging QoS 1/2 deliveries in one write per read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Buf;
use tokio::sync::watch;

use crate::conn::{stopped, Conn};
use crate::mqtt::{self, Packet};
use crate::stats::{nanos_since_epoch, Deliveries, Latency, PayloadHeader};

/// Counters the coordinator polls, shared by all subscribers of a run.
#[derive(Default)]
pub struct DeliveryProgress {
    /// First copies of expected messages.
    pub unique: AtomicU64,
    /// Every delivery, duplicates and strays included.
    pub delivered: AtomicU64,
}

/// What a subscriber measured.
pub struct SubscriberResult {
    pub deliveries: Deliveries,
    pub latency: Latency,
    pub delivered: u64,
    pub last_delivery: Option<Instant>,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

/// Reads until `shutdown` turns true (or the connection fails), then disconnects.
pub async fn task(
    mut conn: Conn,
    deliveries: Deliveries,
    keepalive: u16,
    progress: Arc<DeliveryProgress>,
    mut shutdown: watch::Receiver<bool>,
) -> SubscriberResult {
    let mut result = SubscriberResult {
        deliveries,
        latency: Latency::new(),
        delivered: 0,
        last_delivery: None,
        error: None,
    };
    let period = Duration::from_secs(u64::from(keepalive.max(2)) / 2);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            r = conn.fill() => {
                if let Err(e) = r {
                    result.error = Some(e.to_string());
                    break;
                }
                let now = Instant::now();
                match consume(&mut conn, &mut result, now) {
                    Ok((unique, delivered)) => {
                        if delivered > 0 {
                            result.last_delivery = Some(now);
                            progress.unique.fetch_add(unique, Ordering::Relaxed);
                            progress.delivered.fetch_add(delivered, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        result.error = Some(e.to_string());
                        break;
                    }
                }
                if let Err(e) = conn.flush().await {
                    result.error = Some(e.to_string());
                    break;
                }
            }
            _ = ping.tick(), if keepalive > 0 => {
                mqtt::encode_pingreq(&mut conn.wbuf);
                if let Err(e) = conn.flush().await {
                    result.error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    conn.close().await;
    result
}

/// Handles every whole packet in the read buffer (acks go into the write buffer); returns
/// (first copies, deliveries).
fn consume(conn: &mut Conn, r: &mut SubscriberResult, now: Instant) -> anyhow::Result<(u64, u64)> {
    let now_ns = nanos_since_epoch(now);
    let (mut unique, mut delivered) = (0, 0);
    let mut at = 0;
    let Conn { rbuf, wbuf, .. } = &mut *conn;
    let need;
    loop {
        let packet = match mqtt::parse_packet(&rbuf[at..])? {
            Some((packet, used)) => {
                at += used;
                packet
            }
            None => {
                need = mqtt::parse_fixed_header(&rbuf[at..])?.map(|(h, rem)| h + rem);
                break;
            }
        };
        match packet {
            Packet::Publish {
                qos,
                packet_id,
                payload,
                ..
            } => {
                delivered += 1;
                let header = PayloadHeader::read(payload);
                if let Some(h) = header {
                    r.latency.record_ns(now_ns.saturating_sub(h.sent_ns));
                }
                if r.deliveries.record(header) {
                    unique += 1;
                }
                match qos {
                    1 => mqtt::encode_ack(wbuf, mqtt::PUBACK, packet_id),
                    2 => mqtt::encode_ack(wbuf, mqtt::PUBREC, packet_id),
                    _ => {}
                }
            }
            Packet::PubRel(id) => mqtt::encode_ack(wbuf, mqtt::PUBCOMP, id),
            Packet::PingResp | Packet::Other(_) | Packet::SubAck { .. } => {}
            other => bail!("subscriber got an unexpected {other:?}"),
        }
    }
    rbuf.advance(at);
    if let Some(total) = need {
        conn.reserve_for(total);
    }
    r.delivered += delivered;
    Ok((unique, delivered))
}
