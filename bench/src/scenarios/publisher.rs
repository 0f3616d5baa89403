//! A publisher: `count` messages to one topic, as fast as the window allows or on a fixed
//! schedule, each batch encoded into the connection's buffer and written at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use bytes::{Buf, BufMut};
use tokio::sync::watch;

use crate::conn::{stopped, Conn};
use crate::mqtt::{self, Packet};
use crate::scenarios::ticker::Schedule;
use crate::stats::{nanos_since_epoch, PayloadHeader, HEADER_LEN};

/// QoS 0 has no window: this many publishes go into one write.
const QOS0_BATCH: u64 = 128;

pub struct PublisherPlan {
    pub index: u32,
    pub topic: String,
    pub qos: u8,
    pub count: u64,
    pub payload: usize,
    pub inflight: u32,
    /// With an offered rate: when each message is due.
    pub schedule: Option<Schedule>,
}

/// What the coordinator sees of a running publisher.
#[derive(Default)]
pub struct PublisherProgress {
    /// Publishes written.
    pub sent: AtomicU64,
    /// Publishes fully acknowledged (PUBACK / PUBCOMP); equals `sent` at QoS 0.
    pub acked: AtomicU64,
}

struct Window {
    qos: u8,
    limit: u64,
    /// Publishes not yet acknowledged.
    open: u64,
    next_id: u16,
}

impl Window {
    fn free(&self) -> u64 {
        if self.qos == 0 {
            QOS0_BATCH
        } else {
            self.limit - self.open
        }
    }

    fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = if id == u16::MAX { 1 } else { id + 1 };
        id
    }
}

/// Runs the publisher to completion: every message written and, at QoS 1/2,
/// acknowledged.
pub async fn run(
    conn: &mut Conn,
    plan: &PublisherPlan,
    start: Instant,
    progress: &PublisherProgress,
) -> anyhow::Result<()> {
    let mut window = Window {
        qos: plan.qos,
        limit: u64::from(plan.inflight),
        open: 0,
        next_id: 1,
    };
    let topic = plan.topic.as_bytes();
    let filler = plan.payload - HEADER_LEN;
    let mut header = [0u8; HEADER_LEN];
    let mut seq = 0u64;
    while seq < plan.count || window.open > 0 {
        let mut n = (plan.count - seq).min(window.free());
        if let Some(schedule) = &plan.schedule {
            let due = schedule.due_count(start, Instant::now(), plan.count);
            n = n.min(due.saturating_sub(seq));
            if n == 0 && window.open == 0 {
                schedule.tick.notified().await;
                continue;
            }
        }
        if n > 0 {
            let now_ns = nanos_since_epoch(Instant::now());
            for _ in 0..n {
                let sent_ns = match &plan.schedule {
                    Some(schedule) => nanos_since_epoch(schedule.due_at(start, seq)),
                    None => now_ns,
                };
                let id = if plan.qos > 0 { window.next_id() } else { 0 };
                mqtt::encode_publish_head(&mut conn.wbuf, topic, plan.qos, id, plan.payload);
                PayloadHeader {
                    sent_ns,
                    publisher: plan.index,
                    seq,
                }
                .write(&mut header);
                conn.wbuf.put_slice(&header);
                conn.wbuf.put_bytes(0, filler);
                seq += 1;
            }
            if plan.qos > 0 {
                window.open += n;
            }
            conn.flush().await?;
            progress.sent.fetch_add(n, Ordering::Relaxed);
            if plan.qos == 0 {
                progress.acked.fetch_add(n, Ordering::Relaxed);
            }
        }
        if plan.qos == 0 {
            continue;
        }
        // Block for acknowledgements when the window is full or all is sent; in rate mode
        // also when nothing is due yet, but only until the next message is.
        let must_wait = window.free() == 0 || seq == plan.count;
        if must_wait {
            conn.fill().await?;
        } else if let (Some(schedule), 0) = (&plan.schedule, n) {
            tokio::select! {
                r = conn.fill() => {
                    r?;
                }
                _ = schedule.tick.notified() => continue,
            }
        } else {
            match conn.try_read() {
                Ok(0) => bail!("broker closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let acked = handle_acks(conn, &mut window)?;
        if acked > 0 {
            progress.acked.fetch_add(acked, Ordering::Relaxed);
        }
        // PUBRELs for QoS 2 go out right away: they hold window slots.
        conn.flush().await?;
    }
    Ok(())
}

/// Consumes the acknowledgements in the read buffer; returns how many publishes completed.
fn handle_acks(conn: &mut Conn, window: &mut Window) -> anyhow::Result<u64> {
    let mut done = 0;
    let mut at = 0;
    let Conn { rbuf, wbuf, .. } = conn;
    while let Some((packet, used)) = mqtt::parse_packet(&rbuf[at..])? {
        at += used;
        match packet {
            Packet::PubAck(_) if window.qos == 1 => done += 1,
            Packet::PubRec(id) if window.qos == 2 => mqtt::encode_ack(wbuf, mqtt::PUBREL, id),
            Packet::PubComp(_) if window.qos == 2 => done += 1,
            Packet::PingResp | Packet::Other(_) => {}
            other => bail!("publisher got an unexpected {other:?}"),
        }
    }
    rbuf.advance(at);
    if done > window.open {
        bail!("broker acknowledged more publishes than were sent");
    }
    window.open -= done;
    Ok(done)
}

/// Publisher task: wait for the start, publish everything, then stay connected until the
/// run ends (closing early would disturb the measurement), and disconnect.
pub async fn task(
    mut conn: Conn,
    plan: PublisherPlan,
    mut start: watch::Receiver<Option<Instant>>,
    mut shutdown: watch::Receiver<bool>,
    progress: Arc<PublisherProgress>,
    keepalive: u16,
) -> anyhow::Result<()> {
    let started = async {
        let at = start.wait_for(|s| s.is_some()).await.ok().and_then(|s| *s);
        at
    };
    let begin = tokio::select! {
        at = started => match at {
            Some(at) => at,
            None => return Ok(()),
        },
        _ = stopped(&mut shutdown) => return Ok(()),
    };
    let result = tokio::select! {
        r = run(&mut conn, &plan, begin, &progress) => r,
        _ = stopped(&mut shutdown) => Ok(()),
    };
    if result.is_ok() {
        conn.idle(keepalive, &mut shutdown).await;
    }
    conn.close().await;
    result
}
