//! A whole run (process or partition mode): start the cluster, the watchers, the
//! subscribers and the publishers; the fault rounds; drain; the final checks; the verdict.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin;
use crate::cluster::{self, Cluster, Net};
use crate::conns::Takeovers;
use crate::docker::{self, Docker};
use crate::events;
use crate::faults::{self, Clients, Round};
use crate::findings::Findings;
use crate::netns::Netns;
use crate::node_ip::{self, NodeIps};
use crate::options::{FaultKind, Options, PartitionNet};
use crate::report::{self, Inputs, Verdict};
use crate::rng::Rng;
use crate::shared::{publisher_id, subscriber_id, Shared};
use crate::{publisher, subscriber, watcher};

const START_DEADLINE: Duration = Duration::from_secs(60);
const WARM_UP: Duration = Duration::from_secs(2);
const PORT_ATTEMPTS: u32 = 5;
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Drain: how long to wait for the subscribers to receive every acknowledged message, and
/// how long without any new copy ends the wait early.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
const DRAIN_QUIET: Duration = Duration::from_secs(10);
const REGISTRY_DEADLINE: Duration = Duration::from_secs(20);
/// How long after a new connection's CONNACK the old one may still deliver (see
/// `Conns::overlaps`).
const OVERLAP_GRACE_SECS: f64 = 1.0;
const EVENTS_QUIET: Duration = Duration::from_secs(2);
const EVENTS_DEADLINE: Duration = Duration::from_secs(10);
/// Stream ids of the seeded random streams.
const FAULT_STREAM: u64 = 1;
const SUBSCRIBER_STREAM: u64 = 1000;
const PUBLISHER_STREAM: u64 = 2000;

pub struct Outcome {
    pub verdict: Verdict,
    /// The run directory, when kept (a failure, or --keep).
    pub kept: Option<PathBuf>,
}

/// `partition`: where partition mode runs its nodes (Docker or Netns), None in process
/// mode; `kinds`: the fault kinds the rounds pick from.
pub async fn run(
    opts: &Options,
    binary: PathBuf,
    partition: Option<PartitionNet>,
    kinds: &[FaultKind],
) -> Result<Outcome> {
    let base = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("skein-chaos-")
        .tempdir_in(&base)
        .with_context(|| format!("making a run directory in {}", base.display()))?;
    let mut findings = Findings::new();
    findings.note(format!(
        "run directory {}; binary {}; {} nodes, {} subscribers, {} publishers at {}/s, {} rounds, seed {}",
        dir.path().display(),
        binary.display(),
        opts.nodes,
        opts.subscribers,
        opts.publishers,
        opts.rate,
        opts.rounds,
        opts.seed
    ));
    let n = opts.nodes as usize;
    // Event topics are open to loopback clients and to verified usernames listed in
    // events_subscribe_usernames: partition mode's clients are not on loopback.
    let password = dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "chaos".into());
    let password_file = dir.path().join("passwd");
    std::fs::write(
        &password_file,
        format!("{}:plain:{password}\n", watcher::USERNAME),
    )?;
    let net = match partition {
        None => Net::Local,
        Some(PartitionNet::Docker) => {
            let (binary, password_file) = (binary.clone(), password_file.clone());
            // Off the runtime's thread: a Ctrl-C meanwhile is still heard, and a Docker
            // value finished after the run was dropped cleans up after itself.
            let made =
                tokio::task::spawn_blocking(move || Docker::create(n, &binary, &password_file))
                    .await??;
            findings.note(format!(
                "Docker: image {}, networks {}-clients (MQTT, HTTP) and {}-peers (gRPC), containers {}-nodeI",
                made.image(),
                made.prefix(),
                made.prefix(),
                made.prefix()
            ));
            Net::Docker(made)
        }
        Some(_) => Net::Netns(Netns::create(n)?),
    };
    findings.note(format!("nodes as {}", net.describe()));
    let password_path = match net {
        Net::Docker(_) => docker::PASSWORD_PATH.to_owned(),
        _ => password_file.to_string_lossy().into_owned(),
    };
    let envs = vec![
        ("SKEIN_PASSWORD_FILE".into(), password_path),
        (
            "SKEIN_EVENTS_SUBSCRIBE_USERNAMES".into(),
            watcher::USERNAME.into(),
        ),
        ("SKEIN_EVENTS_DOLLAR_EVENT".into(), "true".into()),
        ("SKEIN_EVENTS_QOS".into(), "1".into()),
        // Far above what a run queues: an overflow drop would look like a loss.
        ("SKEIN_MAX_QUEUED_MESSAGES".into(), "1000000".into()),
        // A shared machine's disk must not refuse publishes mid-run.
        ("SKEIN_STORAGE_MIN_FREE_BYTES".into(), "0".into()),
        (
            "SKEIN_RAFT_ELECTION_TIMEOUT_MS".into(),
            opts.election_timeout_ms.to_string(),
        ),
    ];
    // Ports picked free are released before the nodes bind them (`--peers` names them
    // first): a test running beside this one may take one in between. Then the attempt's
    // nodes are stopped and their directories removed, and it starts again on other ports.
    let retry_ports = opts.base_port.is_none() && matches!(net, Net::Local);
    let mut net = Some(net);
    let mut attempt = 1;
    let mut cluster = loop {
        let this_net = net.take().unwrap_or(Net::Local);
        let addresses = cluster::addresses(n, opts.base_port, &this_net)?;
        let mut cluster = Cluster::new(
            binary.clone(),
            dir.path(),
            &addresses,
            envs.clone(),
            this_net,
        );
        match cluster.start_all(START_DEADLINE).await {
            Ok(()) => {
                findings.note(format!(
                    "cluster formed on {addresses:?} (MQTT, HTTP, gRPC per node)"
                ));
                break cluster;
            }
            Err(e)
                if retry_ports
                    && attempt < PORT_ATTEMPTS
                    && format!("{e:#}").contains("Address already in use") =>
            {
                findings.note(format!(
                    "attempt {attempt}: a picked port was taken before a node bound it; again on other ports"
                ));
                cluster.shutdown();
                drop(cluster);
                remove_node_files(dir.path())?;
                attempt += 1;
            }
            Err(e) => return Err(e.context("starting the cluster")),
        }
    };

    let shared = Arc::new(Shared::new(
        cluster.topology(),
        opts.subscribers,
        findings.started(),
    ));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut ready = Vec::new();
    for node in 0..n {
        let (tx, rx) = oneshot::channel();
        tasks.push(tokio::spawn(watcher::run(
            node,
            shared.clone(),
            password.clone(),
            tx,
        )));
        ready.push(rx);
    }
    let mut subscribers = Vec::new();
    for s in 0..opts.subscribers {
        let (tx, rx) = oneshot::channel();
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let rng = Rng::fork(opts.seed, SUBSCRIBER_STREAM + u64::from(s));
        let first = s as usize % n;
        tasks.push(tokio::spawn(subscriber::run(
            s,
            shared.clone(),
            rng,
            first,
            cmd_rx,
            tx,
        )));
        subscribers.push(cmd_tx);
        ready.push(rx);
    }
    for rx in ready {
        tokio::time::timeout(READY_DEADLINE, rx)
            .await
            .map_err(|_| anyhow!("watchers and subscribers not ready within {READY_DEADLINE:?}"))?
            .map_err(|_| anyhow!("a watcher or subscriber ended before it was ready"))?;
    }
    findings.note("watchers and persistent subscribers connected and subscribed");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publishers = Vec::new();
    let mut publisher_tasks = Vec::new();
    for p in 0..opts.publishers {
        let (tx, rx) = mpsc::channel(16);
        let rng = Rng::fork(opts.seed, PUBLISHER_STREAM + u64::from(p));
        publisher_tasks.push(tokio::spawn(publisher::run(
            p,
            shared.clone(),
            rng,
            opts.rate,
            rx,
            stop_rx.clone(),
        )));
        publishers.push(tx);
    }
    let clients = Clients {
        subscribers,
        publishers,
    };

    // Traffic on a healthy cluster first, so that even a run without rounds checks some.
    tokio::time::sleep(WARM_UP).await;
    let mut rng = Rng::fork(opts.seed, FAULT_STREAM);
    for number in 1..=opts.rounds {
        Round {
            number,
            of: opts.rounds,
            cluster: &mut cluster,
            clients: &clients,
            shared: &shared,
            rng: &mut rng,
            election_timeout_ms: opts.election_timeout_ms,
            kinds,
            findings: &mut findings,
        }
        .run()
        .await;
    }
    shared.round.store(opts.rounds + 1, Ordering::Relaxed);

    let _ = stop_tx.send(true);
    for t in publisher_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    findings.note(format!(
        "publishers stopped: {} acknowledged; draining",
        shared.ledger().acked_count()
    ));
    drain(&shared, &mut findings).await;
    faults::settle(&mut cluster, &shared, &mut findings, "final").await;
    let registries = registries(&cluster, &mut findings).await;
    let events = settled_events(&shared).await;
    let node_ips = node_ips(&cluster, &shared, &mut findings).await;

    let cuts = shared.cuts().clone();
    let (overlaps, while_cut) = shared.conns().overlaps(OVERLAP_GRACE_SECS, &cuts);
    for (id, what) in overlaps {
        findings.note(format!("double owner {id}: {what}"));
        findings.double_owners.entry(id).or_insert(what);
    }
    for (id, what) in while_cut {
        findings.note(format!(
            "allowed while cut off (existing connections keep serving local traffic): {id}: {what}"
        ));
    }
    let takeovers: Takeovers = shared.conns().takeovers();
    let mut explained = BTreeSet::new();
    for (id, what) in &takeovers.examples {
        findings.note(format!("takeover accounting: {id}: {what}"));
        if explained.insert(id.clone()) {
            let history = shared.conns().history(id);
            findings.note(format!(
                "{id}'s connections and failed CONNECTs:\n  {}",
                history.join("\n  ")
            ));
        }
    }
    let ids: BTreeSet<&String> = takeovers
        .caused
        .keys()
        .chain(events.dollar_events.keys())
        .collect();
    for id in ids {
        let caused = takeovers.caused.get(id).copied().unwrap_or(0);
        let seen = events.dollar_events.get(id).copied().unwrap_or(0);
        if seen != caused {
            let history = shared.conns().history(id);
            let mut payloads = events.payloads.get(id).cloned().unwrap_or_default();
            payloads.sort();
            findings.note(format!(
                "{id}: {caused} takeovers caused (+{} uncertain), {seen} $events takeover events:\n  {}\n  events:\n  {}",
                takeovers.voided.get(id).copied().unwrap_or(0),
                history.join("\n  "),
                payloads.join("\n  ")
            ));
        }
    }
    let ledger = shared.ledger();
    let loss = ledger.loss();
    if !loss.runs.is_empty() {
        let lines: Vec<String> = loss
            .runs
            .iter()
            .take(200)
            .map(|(s, p, first, last, from, until)| {
                format!(
                    "{} missed p{p}:{first}..={last} ({} messages, acknowledged {from:.1}s..{until:.1}s)",
                    subscriber_id(*s),
                    last - first + 1
                )
            })
            .collect();
        findings.note(format!("lost:\n  {}", lines.join("\n  ")));
        for p in 0..opts.publishers {
            let id = publisher_id(p);
            let history = shared.conns().history(&id);
            findings.note(format!("{id}'s connections:\n  {}", history.join("\n  ")));
        }
    }
    let duplicates = ledger.duplicates();
    if !duplicates.examples.is_empty() {
        findings.note(format!(
            "duplicates beyond QoS 1 rules, examples:\n  {}",
            duplicates.examples.join("\n  ")
        ));
        let counts: Vec<String> = duplicates
            .by_connections
            .iter()
            .map(|((s, before, after), n)| {
                format!("subscriber {s}: {n} after a copy on conn {before}, on conn {after}")
            })
            .collect();
        findings.note(format!(
            "duplicates by subscriber and connections:\n  {}",
            counts.join("\n  ")
        ));
    }
    let troubled: BTreeSet<u32> = loss
        .by_subscriber
        .keys()
        .chain(duplicates.subscribers.iter())
        .copied()
        .collect();
    for s in troubled {
        let id = subscriber_id(s);
        let history = shared.conns().history(&id);
        findings.note(format!("{id}'s connections:\n  {}", history.join("\n  ")));
    }
    let verdict = report::verdict(&Inputs {
        rounds: opts.rounds,
        seed: opts.seed,
        subscribers: opts.subscribers,
        acked: ledger.acked_count(),
        unacked: ledger.unacked,
        received: ledger.total_received(),
        loss: &loss,
        duplicates,
        findings: &findings,
        registries,
        takeovers: &takeovers,
        events: &events,
        sessions_lost: shared.sessions_lost.load(Ordering::Relaxed),
        node_ips: &node_ips,
    });
    if !ledger.refused.is_empty() {
        findings.note(format!(
            "PUBACK refusals by reason code: {:?}",
            ledger.refused
        ));
    }
    findings.note(format!(
        "failed connection attempts by kind: {:?}",
        shared
            .connect_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    ));
    findings.note(format!(
        "{} client connections opened in all",
        shared.conns().count()
    ));
    drop(ledger);

    drop(clients);
    for t in tasks {
        t.abort();
    }
    cluster.shutdown();
    let kept = if !verdict.ok || opts.keep {
        let mut text = findings.log.join("\n");
        text.push('\n');
        for line in verdict.lines.iter().chain(std::iter::once(&verdict.json)) {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(dir.path().join("report.txt"), text)?;
        Some(dir.keep())
    } else {
        None
    };
    Ok(Outcome { verdict, kept })
}

/// Removes the nodes' data directories and logs of a failed start.
fn remove_node_files(dir: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("node-") {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Waits until every subscriber has every acknowledged message, or nothing new arrived
/// for a while, or the deadline.
async fn drain(shared: &Shared, findings: &mut Findings) {
    let start = Instant::now();
    let mut last = shared.ledger().total_received();
    let mut last_change = Instant::now();
    loop {
        let (missing, received) = {
            let l = shared.ledger();
            let missing: u64 = (0..l.subscribers()).map(|s| l.missing(s)).sum();
            (missing, l.total_received())
        };
        if missing == 0 {
            findings.note(format!(
                "drained in {:.1}s: every subscriber has every acknowledged message",
                start.elapsed().as_secs_f64()
            ));
            return;
        }
        if received != last {
            last = received;
            last_change = Instant::now();
        }
        if last_change.elapsed() >= DRAIN_QUIET || start.elapsed() >= DRAIN_DEADLINE {
            findings.note(format!(
                "drain ended after {:.1}s with {missing} (subscriber, message) pairs missing",
                start.elapsed().as_secs_f64()
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// None once every node's registry and cluster view agree (retried until the deadline);
/// otherwise the last difference seen.
async fn registries(cluster: &Cluster, findings: &mut Findings) -> Option<String> {
    let topology = cluster.topology();
    let end = Instant::now() + REGISTRY_DEADLINE;
    loop {
        let last = match admin::compare(&topology).await {
            Ok(None) => return None,
            Ok(Some(diff)) => diff,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= end {
            findings.note(format!("registries differ: {last}"));
            for node in 0..topology.len() {
                if let Ok(rows) = admin::clients(&topology, node).await {
                    findings.note(format!(
                        "node {} lists: {}",
                        node + 1,
                        admin::rows_text(&rows)
                    ));
                }
            }
            return Some(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `node_ip` check: the watchers' events and every node's registry rows against the
/// addresses the harness gave the nodes.
async fn node_ips(cluster: &Cluster, shared: &Shared, findings: &mut Findings) -> NodeIps {
    let topology = cluster.topology();
    let names = match node_ip::expected(&topology).await {
        Ok(n) => n,
        Err(e) => {
            return NodeIps {
                wrong: 1,
                examples: vec![format!("no node named its members: {e:#}")],
                ..NodeIps::default()
            };
        }
    };
    findings.note(format!("node addresses by name: {names:?}"));
    let mut out = node_ip::check_events(&shared.events(), &names);
    if let Err(e) = node_ip::check_rows(&topology, &names, &mut out).await {
        findings.note(format!("node_ip: reading the registries: {e:#}"));
        out.wrong += 1;
        out.examples.push(format!("reading the registries: {e:#}"));
    }
    out
}

/// The takeover events once no new disconnect event arrived for a moment.
async fn settled_events(shared: &Shared) -> events::TakeoverEvents {
    let end = Instant::now() + EVENTS_DEADLINE;
    let mut last = shared.events().len();
    let mut since = Instant::now();
    while Instant::now() < end && since.elapsed() < EVENTS_QUIET {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = shared.events().len();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    events::takeovers(&shared.events())
}
