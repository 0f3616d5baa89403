//! The admin API across a cluster of real processes: a client connected to node 2 shown
//! from node 1 with its node, kicked from node 1 (DISCONNECT 0x98 on node 2, one event,
//! from node 2), and a member removed at runtime through any node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_tests::{
    http_request, http_request_within, unique_id, Connect, RawClient, TestCluster, QUIET,
    RECV_TIMEOUT,
};

#[path = "events_mqtt/watcher.rs"]
#[allow(dead_code)]
mod watcher;

use watcher::Watcher;

/// How long the registry may take to reach another node, or a membership change to
/// commit, on a loaded machine.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(20);
/// A removal the cluster cannot commit is answered after the API's bound on it (10 s).
const NO_QUORUM_ANSWER: Duration = Duration::from_secs(30);

/// One API call: (status, parsed JSON body; `Null` for an empty body).
async fn call(http: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let (status, text) = http_request(http, method, path, &[], "")
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"))
    };
    (status, value)
}

/// Polls `GET path` until `cond` holds on (status, body); panics with the last answer.
async fn get_until(http: SocketAddr, path: &str, cond: impl Fn(u16, &Value) -> bool) -> Value {
    let end = Instant::now() + CLUSTER_DEADLINE;
    loop {
        let (status, v) = call(http, "GET", path).await;
        if cond(status, &v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "GET {path}: condition not met within {CLUSTER_DEADLINE:?}; last: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn listed(listing: &Value, id: &str) -> bool {
    let data = listing["data"].as_array().expect("a data array");
    data.iter().any(|c| c["clientid"] == json!(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_node_2_is_shown_from_every_node_with_its_node() {
    let cluster = TestCluster::start(3).await;
    let (one, two) = (cluster.node(1), cluster.node(2));
    let id = unique_id("on-two");
    let connect = Connect::v5(&id).persistent(600);
    let (client, _, _) = RawClient::connect_ok(two.mqtt_addr(), &connect).await;
    let path = format!("/api/v1/clients/{id}");

    // CONNACK followed the registration's commit; node 1 applies it a moment later.
    let v = get_until(one.http_addr(), &path, |s, v| {
        s == 200 && v["connected"] == true
    })
    .await;
    assert_eq!(v["node"], json!("skein-2"), "{v}");
    assert_eq!(v["node_id"], json!(2), "{v}");
    assert_eq!(v["node_ip"], json!("127.0.0.1"), "{v}");
    assert_eq!(v["expiry_interval"], json!(600), "{v}");
    assert_eq!(v["clean_start"], json!(false), "{v}");
    assert!(v["connected_at"].is_u64(), "{v}");
    // What only node 2 knows.
    for field in [
        "username",
        "peername",
        "proto_ver",
        "inflight_cnt",
        "mqueue_len",
    ] {
        assert_eq!(v[field], Value::Null, "{field}: {v}");
    }
    assert!(v.get("subscriptions").is_none(), "{v}");

    // Node 2 has the connection's details.
    let (status, local) = call(two.http_addr(), "GET", &path).await;
    assert_eq!(status, 200, "{local}");
    assert_eq!(local["node_id"], json!(2));
    assert_eq!(local["proto_ver"], json!(5));
    assert_eq!(local["inflight_cnt"], json!(0));
    assert_eq!(local["subscriptions"], json!([]));

    let by_node = get_until(one.http_addr(), "/api/v1/clients?node=skein-2", |s, _| {
        s == 200
    })
    .await;
    assert!(listed(&by_node, &id), "{by_node}");
    let (_, elsewhere) = call(one.http_addr(), "GET", "/api/v1/clients?node=skein-1").await;
    assert!(!listed(&elsewhere, &id), "{elsewhere}");
    let three = cluster.node(3).http_addr();
    get_until(three, "/api/v1/clients?connected=true", |s, v| {
        s == 200 && listed(v, &id)
    })
    .await;

    // Gone offline on node 2: node 1 says so, and since when.
    client.disconnect().await;
    let v = get_until(one.http_addr(), &path, |s, v| {
        s == 200 && v["connected"] == false
    })
    .await;
    assert_eq!(v["node_id"], json!(2), "{v}");
    assert!(v["disconnected_at"].is_u64(), "{v}");
    assert_eq!(v["connected_at"], Value::Null, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_node_1_kicks_the_client_on_node_2_which_raises_the_event() {
    let cluster = TestCluster::start(3).await;
    let (one, two) = (cluster.node(1), cluster.node(2));
    let mut on_two = Watcher::start(two, &["$events/client_disconnected"]).await;
    let mut on_one = Watcher::start(one, &["$events/client_disconnected"]).await;
    let id = unique_id("kick-me");
    let mut victim = RawClient::v5(two.mqtt_addr(), &id).await;
    let path = format!("/api/v1/clients/{id}");
    get_until(one.http_addr(), &path, |s, v| {
        s == 200 && v["connected"] == true
    })
    .await;

    let (status, body) = call(one.http_addr(), "DELETE", &path).await;
    assert_eq!(status, 204, "{body}");
    victim.expect_disconnect(0x98, RECV_TIMEOUT).await;
    let e = on_two
        .wait("$events/client_disconnected", |v| {
            v["clientid"] == id.as_str()
        })
        .await;
    assert_eq!(e["reason"], json!("kicked"), "{e}");
    assert_eq!(e["node"], json!(two.mqtt_addr().to_string()), "{e}");
    // One event cluster-wide, from the node that held the connection; a watcher on node 1
    // gets it as any publish from node 2.
    let routed = on_one
        .wait("$events/client_disconnected", |v| {
            v["clientid"] == id.as_str()
        })
        .await;
    assert_eq!(routed, e);
    for watcher in [&mut on_one, &mut on_two] {
        watcher
            .expect_none(QUIET, "$events/client_disconnected", |v| {
                v["clientid"] == id.as_str()
            })
            .await;
    }

    // A clean session ended with the connection: no client left to kick, anywhere.
    get_until(one.http_addr(), &path, |s, _| s == 404).await;
    let (status, body) = call(one.http_addr(), "DELETE", &path).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_removed_through_any_node_and_the_rest_keep_serving() {
    let mut cluster = TestCluster::start(3).await;
    let (one, two) = (cluster.node(1).http_addr(), cluster.node(2).http_addr());

    let (status, v) = call(one, "DELETE", "/api/v1/cluster/members/3").await;
    assert_eq!(status, 200, "{v}");
    let ids: Vec<u64> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_u64().expect("a member id"))
        .collect();
    assert_eq!(ids, [1, 2], "{v}");
    assert!(v["leader_id"].is_u64(), "{v}");
    get_until(two, "/api/v1/cluster", |s, v| {
        s == 200 && v["members"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await;

    let (status, v) = call(two, "DELETE", "/api/v1/cluster/members/3").await;
    assert_eq!((status, &v["error"]), (404, &json!("no member with id 3")));
    let (status, v) = call(two, "DELETE", "/api/v1/cluster/members/x").await;
    assert_eq!(status, 400, "{v}");

    // Two members left, both needed for a quorum: they still take clients.
    for node in [1, 2] {
        let addr = cluster.node(node).mqtt_addr();
        RawClient::v5(addr, &unique_id("after-removal")).await;
    }

    // Without a quorum, a removal is refused with 503, in bounded time.
    cluster.kill9(2);
    let (status, text) = http_request_within(
        NO_QUORUM_ANSWER,
        one,
        "DELETE",
        "/api/v1/cluster/members/2",
        &[],
        "",
    )
    .await
    .expect("an answer without a quorum");
    assert_eq!(status, 503, "{text}");
}
