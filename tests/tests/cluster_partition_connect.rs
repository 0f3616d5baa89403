//! CONNECTs on a node cut off from the majority (issue 14, "Partitions"), on real
//! processes: two of three nodes SIGSTOPped.
//! - Node 1 answers a CONNECT whose registration cannot commit with Server Unavailable
//!   (v5 0x88, 3.1.1 return code 3) after `connect_commit_timeout_ms`, counts it, and keeps
//!   serving its existing connections; a registration that commits after the refusal is
//!   released again (no ghost owner in the registry).
//! - A CONNECT a client sent to a paused node and then gave up on (it closed the socket)
//!   is not registered when the node resumes: the client's newer connection on another
//!   node is not taken over.
//! - A registration the leader receives only after its deadline (its node refused the
//!   CONNECT by then) is rejected: the client's live connection is not taken over, and the
//!   messages published for it afterwards all reach it (the partition chaos suite's "lost
//!   after a CONNECT to the cut-off node commits at the heal").

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};
use skein_tests::{
    http_request, metric_sum, unique_id, Connect, Packet, Publish, RawClient, RecvError, SubFilter,
    TestCluster, RECV_TIMEOUT,
};

/// How long the cluster may take to heal (elect, catch up) after SIGCONT on a loaded machine.
const HEAL_DEADLINE: Duration = Duration::from_secs(30);
/// The cluster's proposal timeout (5 s, cluster/src/settings.rs) and a margin: by then a
/// registration proposed before it has committed or failed for good.
const PROPOSAL_SETTLED: Duration = Duration::from_secs(8);

/// SIGSTOPs processes; SIGCONTs them when resumed or dropped (a failing test too), so no
/// node stays stopped behind a panic.
struct Paused(Vec<Pid>);

impl Paused {
    fn stop(pids: &[u32]) -> Paused {
        let pids: Vec<Pid> = pids
            .iter()
            .map(|&p| Pid::from_raw(p as i32).expect("a node's pid is positive"))
            .collect();
        for (i, &pid) in pids.iter().enumerate() {
            if let Err(e) = kill_process(pid, Signal::STOP) {
                // Those stopped already are resumed by the drop.
                let _ = Paused(pids[..i].to_vec());
                panic!("SIGSTOP {pid:?}: {e}");
            }
        }
        Paused(pids)
    }

    fn resume(&mut self) {
        for pid in self.0.drain(..) {
            let _ = kill_process(pid, Signal::CONT);
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}

async fn get(http: SocketAddr, path: &str) -> (u16, Value) {
    let (status, text) = http_request(http, "GET", path, &[], "")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value)
}

/// Polls `GET path` until `cond` holds; panics with the last answer after `deadline`.
async fn get_until(
    http: SocketAddr,
    path: &str,
    deadline: Duration,
    cond: impl Fn(u16, &Value) -> bool,
) -> Value {
    let end = Instant::now() + deadline;
    loop {
        let (status, v) = get(http, path).await;
        if cond(status, &v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "GET {path}: condition not met within {deadline:?}; last: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `connect` and returns its CONNACK's code and how long it took.
async fn connack(addr: SocketAddr, connect: &Connect) -> (u8, Duration) {
    let started = Instant::now();
    let (_client, answer) = RawClient::connect(addr, connect).await;
    match answer {
        Packet::ConnAck { code, .. } => (code, started.elapsed()),
        other => panic!(
            "expected a CONNACK for {:?}, got {other:?}",
            connect.client_id
        ),
    }
}

/// Every node's registry lists `id` as connected (waiting up to [`HEAL_DEADLINE`] on each),
/// and on node `owner`.
async fn every_registry_has_it_connected_on(cluster: &TestCluster, id: &str, owner: u64) {
    let path = format!("/api/v1/clients/{id}");
    for node in cluster.ids() {
        let v = get_until(
            cluster.node(node).http_addr(),
            &path,
            HEAL_DEADLINE,
            |s, v| s == 200 && v["connected"] == true,
        )
        .await;
        assert_eq!(v["node_id"], json!(owner), "registry on node {node}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quorum_refuses_connects_in_time_and_keeps_local_traffic() {
    let cluster = TestCluster::start_with(3, |id, builder| {
        if id == 1 {
            builder.env("SKEIN_CONNECT_COMMIT_TIMEOUT_MS", 1000)
        } else {
            builder
        }
    })
    .await;
    let one = cluster.node(1);
    let (mqtt, http) = (one.mqtt_addr(), one.http_addr());

    // Connections made while the cluster was whole.
    let topic = unique_id("partition/local");
    let mut subscriber = RawClient::v5(mqtt, &unique_id("sub")).await;
    assert_eq!(
        subscriber.subscribe(1, &[SubFilter::new(&topic, 1)]).await,
        [1]
    );
    let mut publisher = RawClient::v311(mqtt, &unique_id("pub")).await;

    let mut paused = Paused::stop(&[cluster.node(2).pid(), cluster.node(3).pid()]);
    let refused_before = metric_sum(
        http,
        "skein_connects_refused_total",
        &["reason=\"cluster_unavailable\""],
    )
    .await;

    let v5_id = unique_id("refused-v5");
    let (code, took) = connack(mqtt, &Connect::v5(&v5_id)).await;
    assert_eq!(code, 0x88, "v5 CONNECT without quorum (after {took:?})");
    eprintln!("v5 refused after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(3),
        "v5 refused after {took:?}, not after about connect_commit_timeout_ms (1 s)"
    );
    let v3_id = unique_id("refused-v3");
    let (code, took) = connack(mqtt, &Connect::v311(&v3_id)).await;
    assert_eq!(code, 3, "3.1.1 CONNECT without quorum (after {took:?})");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(3),
        "3.1.1 refused after {took:?}"
    );
    eprintln!("3.1.1 refused after {took:?}");
    // One warning for both (rate-limited), saying why.
    let stderr = one.stderr();
    let warning = stderr
        .lines()
        .find(|l| l.contains("CONNECT refused with Server Unavailable"))
        .unwrap_or_else(|| panic!("no warning on node 1:\n{stderr}"));
    eprintln!("{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("not committed within 1000 ms"),
        "the warning says why: {warning}"
    );
    let refused = metric_sum(
        http,
        "skein_connects_refused_total",
        &["reason=\"cluster_unavailable\""],
    )
    .await;
    assert_eq!(refused - refused_before, 2.0, "both refusals counted");

    // Local traffic goes on: QoS 1 from the 3.1.1 publisher to the v5 subscriber.
    publisher
        .publish(&Publish::new(&topic, 1, b"while cut off").pkid(7))
        .await;
    let puback = publisher
        .recv_matching(RECV_TIMEOUT, |p| {
            matches!(p, Packet::PubAck { pkid: 7, .. })
        })
        .await;
    assert!(matches!(puback, Packet::PubAck { .. }), "{puback:?}");
    let got = subscriber.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(got.payload, b"while cut off");
    let stopped_at = Instant::now();

    // Healed: the proposals still in flight commit (or fail) now.
    paused.resume();
    let healed_at = Instant::now() + HEAL_DEADLINE;
    let fresh = unique_id("after-heal");
    let mut after = loop {
        match RawClient::try_connect_ok(mqtt, &Connect::v5(&fresh)).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < healed_at, "no CONNECT after healing: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    after.ping().await;

    // The refused registrations have settled: released after a late commit, or never
    // committed at all.
    let settled = stopped_at + PROPOSAL_SETTLED;
    let released = loop {
        let released = metric_sum(http, "skein_connect_registrations_released_total", &[]).await;
        if released >= 2.0 || Instant::now() >= settled {
            break released;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("registrations released after their refusal: {released}");
    for id in [&v5_id, &v3_id] {
        for node in cluster.ids() {
            let path = format!("/api/v1/clients/{id}");
            get_until(
                cluster.node(node).http_addr(),
                &path,
                HEAL_DEADLINE,
                |s, _| s == 404,
            )
            .await;
        }
    }
    // And the registry agrees with the live connection made after healing.
    every_registry_has_it_connected_on(&cluster, &fresh, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_abandoned_on_a_paused_node_does_not_take_the_live_one_over() {
    let cluster = TestCluster::start(3).await;
    let (one, two) = (cluster.node(1), cluster.node(2));
    let id = unique_id("abandoned");
    let abandoned_before = metric_sum(one.http_addr(), "skein_connects_abandoned_total", &[]).await;

    let mut paused = Paused::stop(&[one.pid()]);
    // The kernel accepts the connection into node 1's backlog; nobody reads it yet.
    let mut stale = RawClient::tcp(one.mqtt_addr(), Connect::v5(&id).proto).await;
    stale.send(&Connect::v5(&id).encode()).await;
    // The client gives up on the silent node and connects to another one.
    stale.drop_connection();
    let deadline = Instant::now() + HEAL_DEADLINE;
    let mut live = loop {
        match RawClient::try_connect_ok(two.mqtt_addr(), &Connect::v5(&id)).await {
            Ok(c) => break c,
            // Node 1 may have led: nodes 2 and 3 elect a new leader first.
            Err(e) => {
                assert!(Instant::now() < deadline, "no CONNECT on node 2: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    paused.resume();
    // Until node 1 has read the stale CONNECT, the live connection must hear nothing (a
    // takeover would be a DISCONNECT 0x8E here).
    let abandoned = loop {
        let n = metric_sum(one.http_addr(), "skein_connects_abandoned_total", &[]).await;
        if n > abandoned_before {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 never dropped the abandoned CONNECT"
        );
        match live.recv(Duration::from_millis(100)).await {
            Err(RecvError::Timeout) => {}
            other => panic!("the live connection on node 2 got {other:?}"),
        }
    };
    assert_eq!(abandoned - abandoned_before, 1.0);

    // The live connection is not taken over: nothing arrives, and it still answers.
    match live.recv(Duration::from_secs(3)).await {
        Err(RecvError::Timeout) => {}
        other => panic!("the live connection on node 2 got {other:?}"),
    }
    live.ping().await;
    every_registry_has_it_connected_on(&cluster, &id, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_the_leader_reads_after_its_connect_was_refused_takes_nothing_over() {
    // Short, so that the leader, paused, reads the proposal after it (and the refusal)
    // while the proposal itself (5 s) is still waiting for the answer.
    let commit_ms = 1500;
    let cluster = TestCluster::start_with(3, |_, builder| {
        builder.env("SKEIN_CONNECT_COMMIT_TIMEOUT_MS", commit_ms)
    })
    .await;
    let ids = cluster.ids();
    let leader = cluster.leader(&ids, HEAL_DEADLINE).await;
    let others: Vec<u64> = ids.iter().copied().filter(|n| *n != leader).collect();
    let (proposer, follower) = (others[0], others[1]);
    let lead = cluster.node(leader);

    // A persistent session, live on the leader, subscribed (in force on every node, so
    // the proposer prepares the session's index for the CONNECT below).
    let id = unique_id("late-commit");
    let topic = unique_id("late-commit/t");
    let persistent = Connect::v5(&id).persistent(3600);
    let (mut live, _, _) = RawClient::connect_ok(lead.mqtt_addr(), &persistent).await;
    assert_eq!(live.subscribe(1, &[SubFilter::new(&topic, 1)]).await, [1]);
    let mut publisher = RawClient::v311(lead.mqtt_addr(), &unique_id("late-commit-pub")).await;

    // The proposer is left alone: its Propose waits in the paused leader's socket.
    let mut paused = Paused::stop(&[lead.pid(), cluster.node(follower).pid()]);
    let connected_at = Instant::now();
    let (code, took) = connack(cluster.node(proposer).mqtt_addr(), &persistent).await;
    assert_eq!(code, 0x88, "CONNECT on the lone node (after {took:?})");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        connected_at.elapsed() < Duration::from_secs(4),
        "the machine is too slow for this test: the proposal must still be in flight"
    );
    paused.resume();

    // Until the proposal has settled for good, the live connection hears nothing (a
    // takeover would be a DISCONNECT 0x8E).
    let mut kicked = None;
    while connected_at.elapsed() < PROPOSAL_SETTLED {
        match live.recv(Duration::from_millis(100)).await {
            Err(RecvError::Timeout) => {}
            other => {
                kicked = Some(format!("{other:?}"));
                break;
            }
        }
    }
    tokio::time::sleep_until((connected_at + PROPOSAL_SETTLED).into()).await;

    // Published now, acknowledged: each must reach the client, on its live connection
    // or (taken over) on a new one resuming the session.
    let count = 20u16;
    for n in 1..=count {
        publisher
            .publish(&Publish::new(&topic, 1, format!("m{n}").as_bytes()).pkid(n))
            .await;
        let ack = publisher
            .recv_matching(
                RECV_TIMEOUT,
                |p| matches!(p, Packet::PubAck { pkid, .. } if *pkid == n),
            )
            .await;
        assert!(
            matches!(ack, Packet::PubAck { reason: 0, .. }),
            "message {n}: {ack:?}"
        );
    }
    if kicked.is_some() {
        let deadline = Instant::now() + HEAL_DEADLINE;
        live = loop {
            match RawClient::try_connect_ok(lead.mqtt_addr(), &persistent).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no CONNECT after the takeover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
    }
    let mut got = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(10);
    while got.len() < usize::from(count) && Instant::now() < until {
        match live.recv(Duration::from_millis(200)).await {
            Ok(Packet::Publish(p)) => {
                if p.qos == 1 {
                    live.send(&skein_tests::codec::puback(p.pkid)).await;
                }
                got.insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(_) | Err(RecvError::Timeout) => {}
            Err(e) => panic!("the client's connection: {e:?} (kicked before: {kicked:?})"),
        }
    }
    let missing: Vec<u16> = (1..=count)
        .filter(|n| !got.contains(&format!("m{n}")))
        .collect();
    assert!(
        kicked.is_none() && missing.is_empty(),
        "the refused CONNECT's registration took the live connection over: {kicked:?}; \
         acknowledged messages never received: {missing:?}"
    );
    every_registry_has_it_connected_on(&cluster, &id, leader).await;
}
