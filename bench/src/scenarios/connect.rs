//! connect: open C connections, at most K at a time, hold them idle with keep alive, and
//! measure the broker's resident memory before and after.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::cli::Settings;
use crate::conn::Conn;
use crate::report::ConnectReport;
use crate::stats::Latency;

/// Resident set size in KiB from the text of /proc/PID/status.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// The broker's RSS once it stops changing: a broker that has just opened its port may
/// still be starting (seen: Skein 6.4 MB at its listening log line, 8.2 MB 0.3 s later), and
/// a baseline taken mid-start charges the rest of its start-up to the connections.
/// Samples every 200 ms until two agree within 16 KiB, for at most 3 s.
async fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let give_up = Instant::now() + Duration::from_secs(3);
    let mut last = vm_rss_kib(pid)?;
    while Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = vm_rss_kib(pid)?;
        if now.abs_diff(last) <= 16 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

struct Worker {
    latency: Latency,
    first_attempt: Option<Instant>,
    last_connack: Option<Instant>,
}

pub async fn run(s: &Settings) -> anyhow::Result<ConnectReport> {
    let deadline = Instant::now() + s.timeout;
    // Spread over a cluster's nodes, one process's RSS says nothing per connection.
    let pid = s.broker_pid.filter(|_| s.connect_addrs.len() == 1);
    let rss_before = match pid {
        Some(pid) => Some(settled_rss_kib(pid).await?),
        None => None,
    };
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        crate::stats::now_nanos() % 1_000_000_007
    );
    let next = Arc::new(AtomicU32::new(0));
    let failed = Arc::new(AtomicU32::new(0));
    let dropped = Arc::new(AtomicU32::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<()>();
    let mut holders = JoinSet::new();
    let mut workers = JoinSet::new();
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));

    for _ in 0..s.concurrency.min(s.connections) {
        let (next, failed, dropped) = (next.clone(), failed.clone(), dropped.clone());
        let (stop_rx, held_tx, first_error) =
            (stop_rx.clone(), held_tx.clone(), first_error.clone());
        let (addrs, keepalive, total, nonce) = (
            s.connect_addrs.clone(),
            s.keepalive,
            s.connections,
            nonce.clone(),
        );
        let holder_spawner = tokio::runtime::Handle::current();
        workers.spawn(async move {
            let mut w = Worker {
                latency: Latency::new(),
                first_attempt: None,
                last_connack: None,
            };
            let mut holds = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || *stop_rx.borrow() {
                    break;
                }
                let t0 = Instant::now();
                w.first_attempt.get_or_insert(t0);
                let id = format!("sb-{nonce}-c{i}");
                let addr = addrs[i as usize % addrs.len()];
                match Conn::open(addr, &id, keepalive, true).await {
                    Ok(mut conn) => {
                        let t1 = Instant::now();
                        w.latency.record(t1 - t0);
                        w.last_connack = Some(t1);
                        let (mut stop_rx, dropped) = (stop_rx.clone(), dropped.clone());
                        holds.push(holder_spawner.spawn(async move {
                            if !conn.idle(keepalive, &mut stop_rx).await {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            conn.close_without_time_wait().await;
                        }));
                        let _ = held_tx.send(());
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(format!("{e:#}"));
                    }
                }
            }
            (w, holds)
        });
    }
    drop(held_tx);

    // Wait for the workers (every connection attempted) or the deadline.
    let mut timed_out = false;
    let mut per_worker = Vec::new();
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok((w, holds))) => {
                    per_worker.push(w);
                    for h in holds {
                        holders.spawn(async move { let _ = h.await; });
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                timed_out = true;
                let _ = stop_tx.send(true);
                break;
            }
        }
    }
    let mut connected = 0u32;
    while held_rx.try_recv().is_ok() {
        connected += 1;
    }

    // Hold the connections idle, then measure.
    if !timed_out {
        let hold_until = (Instant::now() + s.hold).min(deadline);
        tokio::time::sleep_until(hold_until.into()).await;
    }
    let rss_after = pid.and_then(|pid| vm_rss_kib(pid).ok());
    let _ = stop_tx.send(true);
    workers.abort_all();
    let closing = async { while holders.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;

    let mut latency = Latency::new();
    let mut first = None::<Instant>;
    let mut last = None::<Instant>;
    for w in &per_worker {
        latency.merge(&w.latency);
        first = match (first, w.first_attempt) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(w.last_connack);
    }
    if let Some(e) = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        eprintln!(
            "warning: {} connection(s) failed, first: {e}",
            failed.load(Ordering::Relaxed)
        );
    }
    let lost = dropped.load(Ordering::Relaxed);
    if lost > 0 {
        eprintln!("warning: the broker closed {lost} idle connection(s) while they were held");
    }
    let elapsed_s = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(ConnectReport {
        broker: s.broker.clone(),
        connections: s.connections,
        concurrency: s.concurrency,
        connected,
        failed: failed.load(Ordering::Relaxed),
        elapsed_s,
        latency: latency.summary(),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_status_text() {
        let status = "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmRSS:\t    6789 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(6789));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        // Our own process has one.
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
    }
}
