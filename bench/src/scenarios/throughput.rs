//! fanin, fanout and pairs: connect the subscribers and publishers, start every publisher
//! at once, watch the deliveries, and stop when all arrived, when nothing more arrives
//! after the publishers finished, or at the timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::{Scenario, Settings};
use crate::conn::Conn;
use crate::report::ThroughputReport;
use crate::scenarios::publisher::{self, PublisherPlan, PublisherProgress};
use crate::scenarios::subscriber::{self, DeliveryProgress, SubscriberResult};
use crate::scenarios::ticker::{self, Schedule};
use crate::stats::{Accounting, Deliveries, Latency};

/// After the last publish is acknowledged, a run whose deliveries stall this long is over.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(5);
/// Connections opened at once while setting up.
const SETUP_CONCURRENCY: usize = 50;

/// Who publishes where and who listens.
#[derive(Debug, PartialEq, Eq)]
pub struct Topology {
    /// Topic of each publisher.
    pub publishers: Vec<String>,
    /// Filter of each subscriber and the publishers it hears.
    pub subscribers: Vec<(String, Vec<u32>)>,
}

pub fn topology(scenario: Scenario, prefix: &str, publishers: u32, subscribers: u32) -> Topology {
    match scenario {
        Scenario::Fanin => {
            let topic = format!("{prefix}/fanin");
            Topology {
                publishers: vec![topic.clone(); publishers as usize],
                subscribers: vec![(topic, (0..publishers).collect())],
            }
        }
        Scenario::Fanout => {
            let topic = format!("{prefix}/fanout");
            Topology {
                publishers: vec![topic.clone()],
                subscribers: vec![(topic, vec![0]); subscribers as usize],
            }
        }
        Scenario::Pairs | Scenario::Connect | Scenario::Takeover => {
            let topics: Vec<String> = (0..publishers)
                .map(|i| format!("{prefix}/pairs/{i}"))
                .collect();
            Topology {
                subscribers: topics
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.clone(), vec![i as u32]))
                    .collect(),
                publishers: topics,
            }
        }
    }
}

/// The gap between a publisher's messages and its first message's offset, spreading
/// `publishers` evenly over one gap.
pub fn schedule(rate: f64, publishers: u32, index: u32) -> (Duration, Duration) {
    let gap = Duration::from_secs_f64(f64::from(publishers) / rate);
    let offset = gap.mul_f64(f64::from(index) / f64::from(publishers));
    (gap, offset)
}

/// Opens connections `count` at a time, keeping their order.
async fn open_all<F, Fut>(n: usize, open: F) -> anyhow::Result<Vec<Conn>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Conn>> + Send + 'static,
{
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < SETUP_CONCURRENCY {
            let fut = open(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        if let Some(joined) = set.join_next().await {
            let (i, conn) = joined?;
            conns[i] = Some(conn?);
        }
    }
    Ok(conns.into_iter().flatten().collect())
}

pub async fn run(s: &Settings) -> anyhow::Result<ThroughputReport> {
    let deadline = Instant::now() + s.timeout;
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        crate::stats::now_nanos() % 1_000_000_007
    );
    let prefix = format!("skein-bench/{nonce}");
    let topo = topology(s.scenario, &prefix, s.publishers, s.subscribers);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let progress = Arc::new(DeliveryProgress::default());

    let setup = async {
        let (addr, sub_addr, ka, qos) = (s.addr, s.sub_addr, s.keepalive, s.qos);
        let filters: Vec<String> = topo.subscribers.iter().map(|(f, _)| f.clone()).collect();
        let subs = open_all(filters.len(), |i| {
            let (id, filter) = (format!("sb-{nonce}-s{i}"), filters[i].clone());
            async move {
                let mut c = Conn::open(sub_addr, &id, ka, true).await?;
                c.subscribe(&filter, qos).await?;
                Ok(c)
            }
        })
        .await
        .context("connecting subscribers")?;
        let pubs = open_all(topo.publishers.len(), |i| {
            let id = format!("sb-{nonce}-p{i}");
            async move { Conn::open(addr, &id, ka, true).await }
        })
        .await
        .context("connecting publishers")?;
        anyhow::Ok((subs, pubs))
    };
    let (subs, pubs) = match tokio::time::timeout_at(deadline.into(), setup).await {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("timed out connecting and subscribing ({:?})", s.timeout),
    };

    let mut sub_tasks = Vec::new();
    for (conn, (_, from)) in subs.into_iter().zip(&topo.subscribers) {
        let deliveries = Deliveries::new(from.iter().copied(), s.publishers, s.count);
        sub_tasks.push(tokio::spawn(subscriber::task(
            conn,
            deliveries,
            s.keepalive,
            progress.clone(),
            stop_rx.clone(),
        )));
    }
    let mut pub_progress = Vec::new();
    let mut schedules = Vec::new();
    let mut pub_tasks = Vec::new();
    for (i, (conn, topic)) in pubs.into_iter().zip(&topo.publishers).enumerate() {
        let plan = PublisherPlan {
            index: i as u32,
            topic: topic.clone(),
            qos: s.qos,
            count: s.count,
            payload: s.payload,
            inflight: s.inflight,
            schedule: s.rate.map(|rate| {
                let (gap, offset) = schedule(rate, s.publishers, i as u32);
                Schedule::new(gap, offset)
            }),
        };
        schedules.extend(plan.schedule.clone());
        let p = Arc::new(PublisherProgress::default());
        pub_progress.push(p.clone());
        pub_tasks.push(tokio::spawn(publisher::task(
            conn,
            plan,
            start_rx.clone(),
            stop_rx.clone(),
            p,
            s.keepalive,
        )));
    }

    let expected_unique: u64 = topo
        .subscribers
        .iter()
        .map(|(_, from)| from.len() as u64)
        .sum::<u64>()
        * s.count;
    let expected_acked = u64::from(s.publishers) * s.count;
    let start = Instant::now();
    let _ = start_tx.send(Some(start));
    let clock_stop = Arc::new(AtomicBool::new(false));
    let clock = (!schedules.is_empty())
        .then(|| ticker::spawn(start, schedules, s.count, clock_stop.clone()));

    let mut timed_out = false;
    let mut pub_error = None;
    let mut last_delivered = 0;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let now = Instant::now();
        if progress.unique.load(Ordering::Relaxed) >= expected_unique {
            break;
        }
        if now >= deadline {
            timed_out = true;
            break;
        }
        if let Some(t) = pub_tasks.iter().position(|t| t.is_finished()) {
            // A publisher only ends early on an error (or never gets here otherwise).
            if pub_progress[t].acked.load(Ordering::Relaxed) < s.count {
                pub_error = Some(format!("publisher {t} stopped early"));
                break;
            }
        }
        let delivered = progress.delivered.load(Ordering::Relaxed);
        if delivered != last_delivered {
            last_delivered = delivered;
            last_change = now;
        }
        let acked: u64 = pub_progress
            .iter()
            .map(|p| p.acked.load(Ordering::Relaxed))
            .sum();
        if acked >= expected_acked && now - last_change >= DRAIN_GRACE {
            break;
        }
        if sub_tasks.iter().all(|t| t.is_finished()) {
            break; // every subscriber lost its connection
        }
    }
    let _ = stop_tx.send(true);
    // The clock thread sees this within 50 ms and ends; nothing waits for it.
    clock_stop.store(true, Ordering::Relaxed);
    drop(clock);

    let mut latency = Latency::new();
    let mut accounting = Accounting::default();
    let mut delivered = 0;
    let mut last_delivery = None::<Instant>;
    let mut sub_errors = Vec::new();
    for t in sub_tasks {
        let r: SubscriberResult = match tokio::time::timeout(Duration::from_secs(2), t).await {
            Ok(Ok(r)) => r,
            _ => continue,
        };
        latency.merge(&r.latency);
        accounting += r.deliveries.accounting();
        delivered += r.delivered;
        last_delivery = last_delivery.max(r.last_delivery);
        if let Some(e) = r.error {
            sub_errors.push(e);
        }
    }
    for (i, t) in pub_tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(2), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => pub_error = pub_error.or(Some(format!("publisher {i}: {e:#}"))),
            _ => {}
        }
    }
    if let Some(e) = &pub_error {
        eprintln!("warning: {e}");
    }
    if let Some(e) = sub_errors.first() {
        eprintln!(
            "warning: {} subscriber(s) stopped early: {e}",
            sub_errors.len()
        );
    }
    let sent = pub_progress
        .iter()
        .map(|p| p.sent.load(Ordering::Relaxed))
        .sum();
    let end = last_delivery.unwrap_or(start);
    Ok(ThroughputReport {
        scenario: s.scenario.name().to_string(),
        broker: s.broker.clone(),
        qos: s.qos,
        publishers: s.publishers,
        subscribers: s.subscribers,
        count: s.count,
        payload: s.payload,
        inflight: s.inflight,
        rate: s.rate,
        sent,
        delivered,
        accounting,
        elapsed_s: (end - start).as_secs_f64(),
        latency: latency.summary(),
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies() {
        let t = topology(Scenario::Fanin, "p", 3, 1);
        assert_eq!(t.publishers, ["p/fanin"; 3]);
        assert_eq!(t.subscribers, [("p/fanin".to_string(), vec![0, 1, 2])]);
        let t = topology(Scenario::Fanout, "p", 1, 2);
        assert_eq!(t.publishers, ["p/fanout"]);
        assert_eq!(t.subscribers.len(), 2);
        assert!(t
            .subscribers
            .iter()
            .all(|(f, from)| f == "p/fanout" && from == &[0]));
        let t = topology(Scenario::Pairs, "p", 2, 2);
        assert_eq!(t.publishers, ["p/pairs/0", "p/pairs/1"]);
        assert_eq!(t.subscribers[1], ("p/pairs/1".to_string(), vec![1]));
    }

    #[test]
    fn schedules_spread_publishers_over_one_gap() {
        // 10k msgs/s over 100 publishers: each sends every 10 ms, 100 us apart.
        let (gap, offset) = schedule(10_000.0, 100, 0);
        assert_eq!(gap, Duration::from_millis(10));
        assert_eq!(offset, Duration::ZERO);
        let (_, offset) = schedule(10_000.0, 100, 99);
        assert_eq!(offset, Duration::from_micros(9_900));
    }
}
