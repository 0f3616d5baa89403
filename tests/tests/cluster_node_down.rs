//! A node that dies (issue 14, "Sessions"), on real processes: after
//! `node_down_after_ms` the leader marks it down; its clients go offline with one
//! `client.disconnected` event each (reason `node_down`, in `$events` and `$EVENT`, naming
//! the dead node), its clean sessions end, and its persistent sessions are adopted by live
//! nodes, which queue what is published for them meanwhile; the clients resume them on any
//! node. Their connections' wills are published once, by the adopters. The node that
//! comes back hands what it had on disk to the adopters, once. A node
//! that was only paused closes, when it resumes, the connections it no longer owns, without
//! a second event.

// Not every helper of the shared watcher is used here.
#[allow(dead_code)]
#[path = "events_mqtt/watcher.rs"]
mod watcher;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use skein_tests::codec::puback;
use skein_tests::{
    metric_sum, unique_id, Connect, Packet, Publish, RawClient, RecvError, SubFilter, TestCluster,
    Will, RECV_TIMEOUT,
};
use watcher::Watcher;

/// The detection time the tests run with (above the default election timeout of 1 s).
const NODE_DOWN_AFTER_MS: u64 = 2000;
/// From a kill to the node_down events: detection, a possible election first (the victim
/// may lead), the commit and the events' routing, on a loaded machine.
const MARKED_DOWN_WITHIN: Duration = Duration::from_secs(20);
/// How long the counters of a node may take to show what happened.
const SETTLE: Duration = Duration::from_secs(20);

async fn cluster() -> TestCluster {
    TestCluster::start_with(3, |_, b| {
        b.env("SKEIN_NODE_DOWN_AFTER_MS", NODE_DOWN_AFTER_MS)
            .env("SKEIN_EVENTS_DOLLAR_EVENT", "1")
    })
    .await
}

/// Publishes at QoS 1 and waits for a PUBACK with reason 0 (stored for every target).
async fn publish_acked(p: &mut RawClient, topic: &str, payload: &str, pkid: u16) {
    p.publish(&Publish::new(topic, 1, payload.as_bytes()).pkid(pkid))
        .await;
    let ack = p
        .recv_matching(
            RECV_TIMEOUT,
            |x| matches!(x, Packet::PubAck { pkid: id, .. } if *id == pkid),
        )
        .await;
    assert!(
        matches!(ack, Packet::PubAck { reason: 0, .. }),
        "PUBACK of {payload}: {ack:?}"
    );
}

async fn wait_metric(http: SocketAddr, name: &str, expected: f64) {
    let end = Instant::now() + SETTLE;
    loop {
        let seen = metric_sum(http, name, &[]).await;
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < end,
            "{name} is {seen} at {http}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both renderings of the node_down end of `id`, each naming node `dead_mqtt`: the
/// `$events` one and the `$EVENT` one.
async fn expect_node_down_events(
    w: &mut Watcher,
    id: &str,
    dead_mqtt: &str,
) -> (serde_json::Value, serde_json::Value) {
    let v = w
        .wait_within(MARKED_DOWN_WITHIN, "$events/client_disconnected", |v| {
            v["clientid"] == id
        })
        .await;
    assert_eq!(v["reason"], "node_down", "{v}");
    assert_eq!(v["node"], dead_mqtt, "names the dead node: {v}");
    let close = w
        .wait_within(RECV_TIMEOUT, "$EVENT.CLOSE", |v| v["clientId"] == id)
        .await;
    assert_eq!(close["reason"], "node_down", "{close}");
    let dead_ip = dead_mqtt.rsplit_once(':').unwrap().0;
    assert_eq!(close["nodeIp"], dead_ip, "{close}");
    (v, close)
}

/// Receives `n` publishes, acknowledging each, and returns their payloads.
async fn receive(c: &mut RawClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        match c.recv(left).await {
            Ok(Packet::Publish(p)) => {
                if p.qos > 0 {
                    c.send(&puback(p.pkid)).await;
                }
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(_) => {}
            Err(e) => panic!("{} of {n} messages arrived ({e:?}): {got:?}", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_go_offline_once_and_its_sessions_are_adopted() {
    let mut cluster = cluster().await;
    let dead_mqtt = cluster.node(3).mqtt_addr().to_string();
    let mut w = Watcher::start(
        cluster.node(1),
        &["$events/client_disconnected", "$EVENT.CLOSE"],
    )
    .await;

    // On node 3: a persistent subscriber online, a clean client online, and a persistent
    // session offline with messages queued on node 3's disk.
    // Both online clients have wills, which the adopters publish once.
    let (mut wills, _, _) = RawClient::connect_ok(
        cluster.node(1).mqtt_addr(),
        &Connect::v5(&unique_id("wills")),
    )
    .await;
    assert_eq!(
        wills.subscribe(1, &[SubFilter::new("nd/will/#", 1)]).await,
        [1]
    );
    let sub_id = unique_id("sub");
    let sub = Connect::v5(&sub_id).clean(false).session_expiry(3600);
    let (mut s, _, _) = RawClient::connect_ok(
        cluster.node(3).mqtt_addr(),
        &sub.clone()
            .will(Will::new("nd/will/sub", b"sub gone").qos(1).delay(0)),
    )
    .await;
    let sub_peer = s.local_addr().to_string();
    assert_eq!(s.subscribe(1, &[SubFilter::new("nd/live/#", 1)]).await, [1]);
    let clean_id = unique_id("clean");
    let (_clean, _, _) = RawClient::connect_ok(
        cluster.node(3).mqtt_addr(),
        &Connect::v5(&clean_id).will(Will::new("nd/will/clean", b"clean gone").qos(1)),
    )
    .await;
    let away_id = unique_id("away");
    let away = Connect::v5(&away_id).clean(false).session_expiry(3600);
    let (mut a, _, _) = RawClient::connect_ok(cluster.node(3).mqtt_addr(), &away).await;
    assert_eq!(a.subscribe(1, &[SubFilter::new("nd/away/#", 1)]).await, [1]);
    a.disconnect().await;
    let mut publisher = RawClient::v5(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    const BEFORE: usize = 10;
    for i in 1..=BEFORE {
        publish_acked(
            &mut publisher,
            "nd/away/x",
            &format!("before {i}"),
            i as u16,
        )
        .await;
    }
    wait_metric(
        cluster.node(3).http_addr(),
        "skein_queued_messages",
        BEFORE as f64,
    )
    .await;

    let killed = Instant::now();
    cluster.kill9(3);
    // One event per client that was online, from the adopters: none for the session
    // that was offline already.
    let (v, close) = expect_node_down_events(&mut w, &sub_id, &dead_mqtt).await;
    // The connection's own address and protocol, as its registration kept them.
    assert_eq!(v["peername"], sub_peer.as_str(), "{v}");
    assert_eq!(v["sockname"], dead_mqtt.as_str(), "{v}");
    assert_eq!(
        (&close["clientIp"], &close["protocol"]),
        (&"127.0.0.1".into(), &"MQTT".into()),
        "{close}"
    );
    expect_node_down_events(&mut w, &clean_id, &dead_mqtt).await;
    eprintln!("node_down events {:?} after the kill", killed.elapsed());
    // (The watcher saw `away` leave normally before the kill.)
    let ours = |id: &serde_json::Value| id == &sub_id || id == &clean_id || id == &away_id;
    w.expect_none(Duration::from_secs(2), "$events/client_disconnected", |v| {
        ours(&v["clientid"]) && v["reason"] == "node_down"
    })
    .await;
    w.expect_none(Duration::ZERO, "$EVENT.CLOSE", |v| {
        ours(&v["clientId"]) && v["reason"] == "node_down"
    })
    .await;

    let mut got = receive(&mut wills, 2).await;
    got.sort();
    assert_eq!(got, ["clean gone", "sub gone"], "each will once");
    wills.expect_no_publish(Duration::from_secs(1)).await;

    // Both persistent sessions have an adopter that queues for them; the clean one ended.
    let adopted = metric_sum(
        cluster.node(1).http_addr(),
        "skein_sessions_adopted_total",
        &[],
    )
    .await
        + metric_sum(
            cluster.node(2).http_addr(),
            "skein_sessions_adopted_total",
            &[],
        )
        .await;
    assert_eq!(adopted, 2.0, "sessions adopted on nodes 1 and 2");
    const AFTER: usize = 20;
    for i in 1..=AFTER {
        let pkid = (BEFORE + i) as u16;
        publish_acked(&mut publisher, "nd/live/x", &format!("live {i}"), pkid).await;
        publish_acked(
            &mut publisher,
            "nd/away/x",
            &format!("after {i}"),
            pkid + 100,
        )
        .await;
    }

    // The subscriber resumes on node 2: its session, subscription and everything queued.
    let (mut s, present, _) = RawClient::connect_ok(cluster.node(2).mqtt_addr(), &sub).await;
    assert!(present, "Session Present = 1 after the adoption");
    let got = receive(&mut s, AFTER).await;
    let expected: Vec<String> = (1..=AFTER).map(|i| format!("live {i}")).collect();
    assert_eq!(got, expected, "each once, in order");
    s.expect_no_publish(Duration::from_secs(1)).await;

    // Node 3 comes back: what it had queued goes to the adopter (once), then leaves its disk.
    cluster.restart(3);
    wait_metric(cluster.node(3).http_addr(), "skein_queued_messages", 0.0).await;
    let (mut a, present, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &away).await;
    assert!(
        present,
        "Session Present = 1 for the session that was offline"
    );
    let got = receive(&mut a, BEFORE + AFTER).await;
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates: {got:?}");
    let expected: BTreeSet<String> = (1..=BEFORE)
        .map(|i| format!("before {i}"))
        .chain((1..=AFTER).map(|i| format!("after {i}")))
        .collect();
    assert_eq!(unique, expected.iter().collect(), "every message");
    a.expect_no_publish(Duration::from_secs(1)).await;
    // And the clean client's session is gone for good: a new connection finds none.
    let (_c, present, _) = RawClient::connect_ok(
        cluster.node(2).mqtt_addr(),
        &Connect::v5(&clean_id).clean(false).session_expiry(60),
    )
    .await;
    assert!(!present, "the clean session ended with its node");
}

/// SIGSTOPs a process; SIGCONTs it when resumed or dropped (a failing test too).
struct Paused(Option<Pid>);

impl Paused {
    fn stop(pid: u32) -> Paused {
        let pid = Pid::from_raw(pid as i32).expect("a node's pid is positive");
        kill_process(pid, Signal::STOP).expect("SIGSTOP");
        Paused(Some(pid))
    }

    fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = kill_process(pid, Signal::CONT);
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}

/// A web server on 127.0.0.1 that keeps every JSON body POSTed to `/hook` (the webhook
/// dialect of every node posts there).
#[derive(Clone, Default)]
struct Hook(Arc<Mutex<Vec<serde_json::Value>>>);

impl Hook {
    async fn start() -> (Hook, SocketAddr) {
        let hook = Hook::default();
        let keep = hook.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let keep = keep.clone();
                async move {
                    let v = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {body}"));
                    keep.0.lock().unwrap().push(v);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hook, addr)
    }

    /// The `client_disconnected` bodies of `id` so far.
    fn disconnected(&self, id: &str) -> Vec<serde_json::Value> {
        let bodies = self.0.lock().unwrap();
        bodies
            .iter()
            .filter(|v| v["action"] == "client_disconnected" && v["clientid"] == id)
            .cloned()
            .collect()
    }

    async fn wait_disconnected(&self, id: &str, reason: &str) -> serde_json::Value {
        let end = Instant::now() + MARKED_DOWN_WITHIN;
        loop {
            if let Some(v) = self
                .disconnected(id)
                .into_iter()
                .find(|v| v["reason"] == reason)
            {
                return v;
            }
            assert!(
                Instant::now() < end,
                "no client_disconnected of {id} ({reason}): {:?}",
                self.disconnected(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

/// The fields a node_down end names about the connection itself, against the same event of
/// an ordinary end of a connection alike (`reference`, same node, same username and
/// protocol): the same keys, none of them null where the ordinary one has a value, the same
/// values where they are the node's or the user's, and the client's own address.
fn same_fields_as(
    down: &serde_json::Value,
    reference: &serde_json::Value,
    differ: &[&str],
    peer: &str,
) {
    assert_eq!(keys(down), keys(reference), "{down}\nagainst {reference}");
    for key in keys(reference) {
        let (d, r) = (&down[&key], &reference[&key]);
        assert_eq!(
            d.is_null(),
            r.is_null(),
            "{key}: {down}\nagainst {reference}"
        );
        if differ.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "peername" => assert_eq!(d, peer, "{key}: {down}"),
            "clientIp" | "ipaddress" => {
                assert_eq!(d, peer.rsplit_once(':').unwrap().0, "{key}: {down}")
            }
            _ => assert_eq!(d, r, "{key}: {down}\nagainst {reference}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_marked_down_closes_the_connections_it_lost_without_a_second_event() {
    let (hook, hook_addr) = Hook::start().await;
    let cluster = TestCluster::start_with(3, |_, b| {
        b.env("SKEIN_NODE_DOWN_AFTER_MS", NODE_DOWN_AFTER_MS)
            .env("SKEIN_EVENTS_DOLLAR_EVENT", "1")
            .env("SKEIN_WEBHOOK_URLS", format!("http://{hook_addr}/hook"))
            .env(
                "SKEIN_EVENTS_PRESENCE_TOPIC",
                "nd/presence/{username}/{clientid}",
            )
    })
    .await;
    let paused_mqtt = cluster.node(3).mqtt_addr().to_string();
    let mut w = Watcher::start(
        cluster.node(1),
        &[
            "$events/client_disconnected",
            "$EVENT.CLOSE",
            "nd/presence/#",
        ],
    )
    .await;
    let user = || {
        let mut c = Connect::v5(&unique_id("nd-user")).keep_alive(30);
        c.username = Some("nd-user".into());
        c
    };
    // An ordinary end of a connection like the one node 3 will lose (same user, protocol
    // and node, its socket closed): what each dialect says of it.
    let ordinary = user();
    let (o, _, _) = RawClient::connect_ok(cluster.node(3).mqtt_addr(), &ordinary).await;
    let ordinary_peer = o.local_addr().to_string();
    drop(o);
    let ordinary_id = ordinary.client_id.clone();
    let ref_events = w
        .wait("$events/client_disconnected", |v| {
            v["clientid"] == *ordinary_id
        })
        .await;
    assert_eq!(ref_events["peername"], *ordinary_peer, "{ref_events}");
    let ref_close = w
        .wait("$EVENT.CLOSE", |v| v["clientId"] == *ordinary_id)
        .await;
    let ref_hook = hook.wait_disconnected(&ordinary_id, "tcp_closed").await;

    let connect = user();
    let id = connect.client_id.clone();
    let persistent = connect.clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(cluster.node(3).mqtt_addr(), &persistent).await;
    let peer = c.local_addr().to_string();
    assert_eq!(
        c.subscribe(1, &[SubFilter::new("nd/paused/#", 1)]).await,
        [1]
    );
    let presence = format!("nd/presence/nd-user/{id}");
    w.wait(&presence, |v| v["online"] == true).await;

    let mut paused = Paused::stop(cluster.node(3).pid());
    let (down, close) = expect_node_down_events(&mut w, &id, &paused_mqtt).await;
    // Field by field, each dialect as for the ordinary end (which was not a node_down:
    // its reason and times differ).
    same_fields_as(
        &down,
        &ref_events,
        &["clientid", "reason", "disconnected_at"],
        &peer,
    );
    assert_eq!(down["username"], "nd-user");
    assert_eq!(down["sockname"], paused_mqtt.as_str(), "{down}");
    same_fields_as(
        &close,
        &ref_close,
        &["clientId", "reason", "timestamp"],
        &peer,
    );
    assert_eq!(close["protocol"], "MQTT");
    let body = hook.wait_disconnected(&id, "node_down").await;
    same_fields_as(&body, &ref_hook, &["clientid", "reason"], &peer);
    assert_eq!(body["username"], "nd-user");
    assert_eq!(body["node"], paused_mqtt.as_str());
    // Presence: offline, once, from the announcer.
    w.wait_within(RECV_TIMEOUT, &presence, |v| v["online"] == false)
        .await;
    let mut publisher = RawClient::v5(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    publish_acked(&mut publisher, "nd/paused/x", "while paused", 1).await;

    // Resumed, node 3 learns it was marked down and ends the stale connection: a v5
    // DISCONNECT "use another server" (0x9C), then the socket closes.
    paused.resume();
    let end = Instant::now() + MARKED_DOWN_WITHIN;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "node 3 kept the connection it lost");
        match c.recv(left).await {
            Ok(Packet::Disconnect { reason, .. }) => {
                assert_eq!(reason, 0x9C, "DISCONNECT reason");
            }
            Ok(_) => {}
            Err(RecvError::Closed) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    w.expect_none(Duration::from_secs(3), "$events/client_disconnected", |v| {
        v["clientid"] == id
    })
    .await;
    w.expect_none(Duration::ZERO, "$EVENT.CLOSE", |v| v["clientId"] == id)
        .await;
    w.expect_none(Duration::ZERO, &presence, |v| v["online"] == false)
        .await;
    assert_eq!(
        hook.disconnected(&id).len(),
        1,
        "{:?}",
        hook.disconnected(&id)
    );

    // The client resumes elsewhere with what was published while node 3 was away.
    let (mut c, present, _) = RawClient::connect_ok(cluster.node(2).mqtt_addr(), &persistent).await;
    assert!(present, "Session Present = 1");
    assert_eq!(receive(&mut c, 1).await, ["while paused"]);
    c.expect_no_publish(Duration::from_secs(1)).await;
}
