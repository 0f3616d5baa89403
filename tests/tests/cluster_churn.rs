//! Connect/disconnect churn against real nodes: every CONNECT and every end of a connection
//! is a registry command in the Raft log, so without compaction the log would grow by
//! each one. After many clean-session cycles from concurrent clients, the log a node holds
//! (`skein_raft_log_entries`: last log index minus the last purged one) has stayed within
//! the compaction bound the whole time, snapshots were built, and the registry is empty
//! again.
//!
//! Counts: `SKEIN_CHURN_CYCLES` (default 50,000) against one node, about 8 s of churn in a
//! debug build on 2 cores; `SKEIN_CLUSTER_CHURN_CYCLES` (default 20,000) spread over three
//! nodes, where a connect costs about five times as much (50,000 took 40 s there). Either
//! count writes well past the bound (measured: about one log entry per 22 registry
//! commands on one node, per 11 on three; two commands a cycle), so the bound is tested
//! either way; a count too small to pass the bound fails the test rather than passing it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skein_tests::{metric_sum, Connect, Node, RawClient, TestCluster};

/// The cluster's compaction settings (cluster/src/settings.rs, `RaftSettings::default`):
/// a snapshot every 2000 applied entries, 500 kept behind it, purges in runs of 64 and up
/// to 64 entries appended at once. A member holds at most their sum, however many entries
/// were ever written.
const SNAPSHOT_EVERY: u64 = 2000;
const LOG_BOUND: u64 = SNAPSHOT_EVERY + 500 + 64 + 64;

/// Clients connecting at once: enough that the proposer puts many commands in one entry.
const CONCURRENCY: usize = 64;

/// How long the whole churn may take in a debug build on a busy 2-core machine.
const CHURN_DEADLINE: Duration = Duration::from_secs(120);

/// How long a gauge may take to show what the node has applied (the metrics loop also
/// ticks on its own).
const SETTLE: Duration = Duration::from_secs(10);

/// The count in environment variable `name`, or `default`.
fn cycles(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a count: {e}")),
        Err(_) => default,
    }
}

/// What one watched node showed during and after the churn.
#[derive(Debug)]
struct LogSeen {
    max_held: u64,
    last_held: u64,
    commit_index: u64,
    snapshots: u64,
}

/// Polls `skein_raft_log_entries` of each node until `done`, keeping the largest value.
fn watch_logs(nodes: Vec<SocketAddr>, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut max = vec![0u64; nodes.len()];
        while !done.load(Ordering::Relaxed) {
            for (i, http) in nodes.iter().enumerate() {
                let held = metric_sum(*http, "skein_raft_log_entries", &[]).await as u64;
                max[i] = max[i].max(held);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max
    })
}

/// `total` connect/disconnect cycles (MQTT 3.1.1, clean session, a fresh client id each),
/// `CONCURRENCY` at a time, spread round robin over `targets`.
async fn churn(targets: Vec<SocketAddr>, total: usize, tag: &str) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, failures, targets) = (next.clone(), failures.clone(), targets.clone());
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let addr = targets[i % targets.len()];
                let connect = Connect::v311(&format!("{tag}-{i}"));
                match RawClient::try_connect_ok(addr, &connect).await {
                    Ok(c) => c.disconnect().await,
                    Err(e) => {
                        // Counted and reported below: one refusal fails the test.
                        if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("cycle {i} on {addr}: {e}");
                        }
                    }
                }
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.expect("churn task");
        }
    };
    tokio::time::timeout(CHURN_DEADLINE, all)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{total} cycles not done within {CHURN_DEADLINE:?} ({} started)",
                next.load(Ordering::Relaxed)
            )
        });
    let took = started.elapsed();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "every CONNECT accepted"
    );
    took
}

/// Waits until node `http`'s registry holds no client and its log gauge is settled, and
/// returns what it shows.
async fn settled(http: SocketAddr, max_held: u64) -> LogSeen {
    let end = Instant::now() + SETTLE;
    loop {
        let clients = metric_sum(http, "skein_cluster_registry_clients", &[]).await;
        let commit_index = metric_sum(http, "skein_raft_commit_index", &[]).await as u64;
        let applied = metric_sum(http, "skein_raft_applied_index", &[]).await as u64;
        if clients == 0.0 && applied >= commit_index {
            return LogSeen {
                max_held,
                last_held: metric_sum(http, "skein_raft_log_entries", &[]).await as u64,
                commit_index,
                snapshots: metric_sum(http, "skein_raft_snapshots_built_total", &[]).await as u64,
            };
        }
        assert!(
            Instant::now() < end,
            "{http}: {clients} clients still in the registry, applied {applied} of {commit_index}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check(node: &str, seen: &LogSeen, total: usize) {
    eprintln!("{node}: {seen:?}");
    // The churn must have written more than the bound, or the bound shows nothing.
    assert!(
        seen.commit_index > LOG_BOUND,
        "{node}: {total} cycles wrote only {} entries (the bound is {LOG_BOUND}): raise the count",
        seen.commit_index
    );
    assert!(seen.snapshots >= 1, "{node}: no snapshot built: {seen:?}");
    assert!(
        seen.max_held <= LOG_BOUND && seen.last_held <= LOG_BOUND,
        "{node}: the log grew past {LOG_BOUND} entries: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_churn_on_one_node_keeps_the_raft_log_bounded() {
    let total = cycles("SKEIN_CHURN_CYCLES", 50_000);
    let node = Node::start();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_logs(vec![node.http_addr()], done.clone());

    let took = churn(vec![node.mqtt_addr()], total, "solo").await;
    done.store(true, Ordering::Relaxed);
    let max_held = watcher.await.unwrap()[0];
    eprintln!(
        "one node: {total} connect/disconnect cycles in {took:?} ({:.0}/s)",
        total as f64 / took.as_secs_f64()
    );
    let seen = settled(node.http_addr(), max_held).await;
    check("one node", &seen, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_churn_over_three_nodes_keeps_every_raft_log_bounded() {
    let total = cycles("SKEIN_CLUSTER_CHURN_CYCLES", 20_000);
    let cluster = TestCluster::start(3).await;
    let http: Vec<SocketAddr> = cluster
        .ids()
        .iter()
        .map(|id| cluster.node(*id).http_addr())
        .collect();
    let mqtt: Vec<SocketAddr> = cluster
        .ids()
        .iter()
        .map(|id| cluster.node(*id).mqtt_addr())
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_logs(http.clone(), done.clone());

    let took = churn(mqtt, total, "trio").await;
    done.store(true, Ordering::Relaxed);
    let max_held = watcher.await.unwrap();
    eprintln!(
        "three nodes: {total} connect/disconnect cycles in {took:?} ({:.0}/s)",
        total as f64 / took.as_secs_f64()
    );
    for (i, addr) in http.iter().enumerate() {
        let seen = settled(*addr, max_held[i]).await;
        check(&format!("node {}", i + 1), &seen, total);
    }
}
