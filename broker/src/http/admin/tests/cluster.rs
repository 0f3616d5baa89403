//! The cluster-wide admin API: clients on other nodes (listed, shown, kicked) and removing
//! a member, against [`OtherNodes`], a double of the cluster whose registry places clients
//! on nodes 2 and 3 besides this node's sessions. The real cluster behind the same calls is
//! exercised by `tests/tests/cluster_admin.rs`.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use skein_seam::{
    BoxFuture, ClientId, ClientLocation, ClusterError, ClusterHandle, ClusterOverview,
    ForwardError, ForwardedPublish, HandedOverSubscription, MemberOverview, NodeId, NodeRecord,
    Registration,
};

use super::{broker_in, call, get, offline, online, start};
use crate::local_cluster::LocalCluster;
use crate::session::Kick;

/// A client the double's registry places on another node.
struct RemoteClient {
    location: ClientLocation,
    /// Whether that node really has the connection (the registry may lag behind it).
    connected_there: bool,
}

#[derive(Default)]
struct State {
    remote: Vec<RemoteClient>,
    members: Vec<MemberOverview>,
    leader: Option<NodeId>,
    unreachable: Vec<NodeId>,
    kicks: Vec<(NodeId, String)>,
    removed: Vec<NodeId>,
}

/// This node's registry is a [`LocalCluster`]'s; other nodes' clients and the members are
/// set by the test.
struct OtherNodes {
    local: LocalCluster,
    state: Mutex<State>,
}

fn record(id: u64) -> NodeRecord {
    NodeRecord {
        id: NodeId(id),
        name: format!("edge-{id}"),
        grpc: format!("10.0.0.{id}:7070"),
        mqtt: format!("10.0.0.{id}:1883"),
    }
}

impl OtherNodes {
    /// Members 1 (this node, the leader), 2 and 3.
    fn new() -> Arc<OtherNodes> {
        let members = (1..=3)
            .map(|id| MemberOverview {
                record: record(id),
                voter: id != 3,
                reachable: true,
                last_contact_ms: Some(id * 10),
            })
            .collect();
        Arc::new(OtherNodes {
            local: LocalCluster::new(NodeId(1)),
            state: Mutex::new(State {
                members,
                leader: Some(NodeId(1)),
                ..State::default()
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn place(&self, id: &str, node: u64, online: bool) {
        self.state().remote.push(RemoteClient {
            location: ClientLocation {
                client_id: ClientId::new(id),
                node: NodeId(node),
                epoch: 7,
                online,
                clean_start: false,
                session_expiry_secs: 600,
                connected_at_ms: 1_700_000_001_000,
                offline_since_ms: (!online).then_some(1_700_000_002_000),
                subscriptions: 3,
            },
            connected_there: online,
        });
    }
}

impl ClusterHandle for OtherNodes {
    fn node_id(&self) -> NodeId {
        self.local.node_id()
    }

    fn register_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        clean_start: bool,
        session_expiry_secs: u32,
    ) -> BoxFuture<'a, Result<Registration, ClusterError>> {
        self.local
            .register_client(client_id, clean_start, session_expiry_secs)
    }

    fn unregister_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        session_ended: bool,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        self.local
            .unregister_client(client_id, epoch, session_ended)
    }

    fn subscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        subscriptions: Vec<HandedOverSubscription>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        self.local.subscribe(client_id, epoch, subscriptions)
    }

    fn unsubscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        filters: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        self.local.unsubscribe(client_id, epoch, filters)
    }

    fn forward(
        &self,
        node: NodeId,
        publish: ForwardedPublish,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        self.local.forward(node, publish)
    }

    fn other_members(&self) -> Vec<NodeId> {
        let st = self.state();
        let ids = st.members.iter().map(|m| m.record.id);
        ids.filter(|id| *id != self.node_id()).collect()
    }

    fn node_record(&self, node: NodeId) -> Option<NodeRecord> {
        let st = self.state();
        let member = st.members.iter().find(|m| m.record.id == node);
        member.map(|m| m.record.clone())
    }

    fn locate_client(&self, client_id: &ClientId) -> Option<ClientLocation> {
        let st = self.state();
        let remote = st
            .remote
            .iter()
            .find(|r| &r.location.client_id == client_id);
        match remote {
            Some(r) => Some(r.location.clone()),
            None => self.local.locate_client(client_id),
        }
    }

    fn clients(&self, after: Option<&str>, limit: usize) -> Vec<ClientLocation> {
        let mut all = self.local.clients(after, limit);
        let st = self.state();
        all.extend(
            st.remote
                .iter()
                .map(|r| r.location.clone())
                .filter(|l| after.is_none_or(|a| l.client_id.as_str() > a)),
        );
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all.truncate(limit);
        all
    }

    fn kick_remote<'a>(
        &'a self,
        node: NodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<bool, ClusterError>> {
        Box::pin(async move {
            let mut st = self.state();
            if st.unreachable.contains(&node) {
                return Err(ClusterError::Unavailable(format!(
                    "node {node} unreachable"
                )));
            }
            if !st.members.iter().any(|m| m.record.id == node) {
                return Err(ClusterError::NotFound(format!("node {node}")));
            }
            let held = st.remote.iter_mut().find(|r| {
                r.location.node == node && &r.location.client_id == client_id && r.connected_there
            });
            let Some(held) = held else {
                return Ok(false);
            };
            held.connected_there = false;
            held.location.online = false;
            st.kicks.push((node, client_id.as_str().to_owned()));
            Ok(true)
        })
    }

    fn overview(&self) -> BoxFuture<'_, Result<ClusterOverview, ClusterError>> {
        Box::pin(async move {
            let st = self.state();
            Ok(ClusterOverview {
                node_id: NodeId(1),
                node_name: "test-node".into(),
                leader_id: st.leader,
                term: 5,
                commit_index: 42,
                members: st.members.clone(),
            })
        })
    }

    fn remove_member(&self, node: NodeId) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut st = self.state();
            if st.leader.is_none() {
                return Err(ClusterError::Unavailable("no leader".into()));
            }
            st.members.retain(|m| m.record.id != node);
            st.removed.push(node);
            Ok(())
        })
    }
}

fn row<'a>(listing: &'a Value, id: &str) -> &'a Value {
    listing["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clientid"] == json!(id))
        .unwrap_or_else(|| panic!("{id} not listed: {listing}"))
}

fn ids(listing: &Value) -> Vec<&str> {
    let data = listing["data"].as_array().unwrap();
    data.iter()
        .map(|c| c["clientid"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn clients_on_other_nodes_are_listed_with_their_node() {
    let cluster = OtherNodes::new();
    let b = broker_in(cluster.clone());
    let _a = online(&b, "a", Some("u1"));
    // In the registry on this node too: listed once, from the session.
    cluster
        .local
        .register_client(&ClientId::new("a"), true, 0)
        .await
        .unwrap();
    // An old offline session here of a client the registry places on node 2 now.
    offline(&b, "d");
    cluster.place("d", 2, true);
    cluster.place("b", 2, true);
    cluster.place("e", 3, false);
    // On a node that is no member any more.
    cluster.place("x", 9, true);
    let addr = start(b, None).await;

    let all = get(addr, "/api/v1/clients").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let all = all.json();
    assert_eq!(ids(&all), ["a", "b", "d", "e", "x"]);
    assert_eq!(all["meta"]["count"], json!(5));

    let a = row(&all, "a");
    assert_eq!(a["node"], json!("test-node"));
    assert_eq!(a["node_id"], json!(1));
    assert_eq!(a["node_ip"], json!("127.0.0.1"));
    assert_eq!(a["username"], json!("u1"));
    assert_eq!(a["inflight_cnt"], json!(0));
    assert_eq!(a["mqueue_max"], json!(1000));

    let b_row = row(&all, "b");
    assert_eq!(
        *b_row,
        json!({
            "clientid": "b", "username": null, "node": "edge-2", "node_id": 2,
            "node_ip": "10.0.0.2", "peername": null, "proto_ver": null, "keepalive": null,
            "clean_start": false, "connected": true, "connected_at": 1_700_000_001_000u64,
            "disconnected_at": null, "expiry_interval": 600, "inflight_cnt": null,
            "mqueue_len": null, "mqueue_max": null, "subscriptions_cnt": 3,
        })
    );
    assert_eq!(
        row(&all, "d")["node_id"],
        json!(2),
        "the registry names the owner"
    );
    let e = row(&all, "e");
    assert_eq!(e["connected"], json!(false));
    assert_eq!(e["clean_start"], Value::Null);
    assert_eq!(e["connected_at"], Value::Null);
    assert_eq!(e["disconnected_at"], json!(1_700_000_002_000u64));
    let x = row(&all, "x");
    assert_eq!((&x["node"], &x["node_id"]), (&Value::Null, &json!(9)));

    let cases: &[(&str, &[&str])] = &[
        ("node=edge-2", &["b", "d"]),
        ("node=10.0.0.3", &["e"]),
        ("node=10.0.0.3:1883", &["e"]),
        ("node=test-node", &["a"]),
        ("node=127.0.0.1", &["a"]),
        ("node=edge-9", &[]),
        ("connected=false", &["e"]),
        ("connected=true&node=edge-2", &["b", "d"]),
        // Only the node holding the connection knows the username.
        ("username=u1", &["a"]),
        ("limit=2&page=2", &["d", "e"]),
    ];
    for (query, want) in cases {
        let answer = get(addr, &format!("/api/v1/clients?{query}")).await;
        assert_eq!(answer.status, 200, "{query}: {}", answer.body);
        assert_eq!(ids(&answer.json()), *want, "{query}");
    }
}

#[tokio::test]
async fn the_registry_is_read_past_its_first_batch() {
    let cluster = OtherNodes::new();
    for i in 0..2500 {
        cluster.place(&format!("c{i:04}"), 2, true);
    }
    let b = broker_in(cluster.clone());
    let _a = online(&b, "a", None);
    let addr = start(b, None).await;
    let last = get(addr, "/api/v1/clients?limit=1000&page=3").await.json();
    assert_eq!(last["meta"]["count"], json!(2501));
    assert_eq!(ids(&last).len(), 501);
    assert_eq!(ids(&last).last(), Some(&"c2499"));
}

#[tokio::test]
async fn the_detail_of_a_client_on_another_node_names_it() {
    let cluster = OtherNodes::new();
    cluster.place("b", 2, true);
    let b = broker_in(cluster.clone());
    let addr = start(b, None).await;

    let answer = get(addr, "/api/v1/clients/b").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let v = answer.json();
    assert_eq!(v["node"], json!("edge-2"));
    assert_eq!(v["node_id"], json!(2));
    assert_eq!(v["subscriptions_cnt"], json!(3));
    assert!(v.get("subscriptions").is_none(), "{v}");
    get(addr, "/api/v1/clients/nobody")
        .await
        .assert_error(404, "client not found");
}

#[tokio::test]
async fn delete_kicks_a_client_on_another_node_through_the_cluster() {
    let cluster = OtherNodes::new();
    cluster.place("b", 2, true);
    cluster.place("e", 3, false);
    cluster.place("f", 3, true);
    // The registry still says online; node 2 no longer has the connection.
    cluster.place("g", 2, true);
    cluster.state().remote[3].connected_there = false;
    let b = broker_in(cluster.clone());
    let (_l, local_kicks) = online(&b, "l", None);
    let addr = start(b, None).await;

    call(
        addr,
        "DELETE",
        "/api/v1/clients/b?clear_session=true",
        &[],
        "",
    )
    .await
    .assert_error(409, "node 2 (edge-2)");
    let answer = call(addr, "DELETE", "/api/v1/clients/b", &[], "").await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(cluster.state().kicks, [(NodeId(2), "b".to_owned())]);

    call(addr, "DELETE", "/api/v1/clients/b", &[], "")
        .await
        .assert_error(404, "not connected");
    call(addr, "DELETE", "/api/v1/clients/e", &[], "")
        .await
        .assert_error(404, "not connected");
    call(addr, "DELETE", "/api/v1/clients/g", &[], "")
        .await
        .assert_error(404, "not connected");
    cluster.state().unreachable.push(NodeId(3));
    call(addr, "DELETE", "/api/v1/clients/f", &[], "")
        .await
        .assert_error(503, "node 3 unreachable");
    assert_eq!(cluster.state().kicks.len(), 1, "only b was kicked");

    // A client on this node is kicked here, not through the cluster.
    let answer = call(addr, "DELETE", "/api/v1/clients/l", &[], "").await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(local_kicks.try_recv(), Some(Kick::Administrative));
    assert_eq!(cluster.state().kicks.len(), 1);
}

#[tokio::test]
async fn delete_removes_a_member_and_answers_the_membership() {
    let cluster = OtherNodes::new();
    let b = broker_in(cluster.clone());
    let addr = start(b.clone(), None).await;

    let answer = call(addr, "DELETE", "/api/v1/cluster/members/3", &[], "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({
            "node_id": 1, "node_name": "test-node", "leader_id": 1, "term": 5,
            "commit_index": 42, "members": [
                {"id": 1, "name": "edge-1", "grpc": "10.0.0.1:7070", "mqtt": "10.0.0.1:1883",
                 "role": "voter", "reachable": true, "last_contact_ms": 10},
                {"id": 2, "name": "edge-2", "grpc": "10.0.0.2:7070", "mqtt": "10.0.0.2:1883",
                 "role": "voter", "reachable": true, "last_contact_ms": 20},
            ]
        })
    );
    assert_eq!(cluster.state().removed, [NodeId(3)]);

    call(addr, "DELETE", "/api/v1/cluster/members/3", &[], "")
        .await
        .assert_error(404, "no member with id 3");
    call(addr, "DELETE", "/api/v1/cluster/members/two", &[], "")
        .await
        .assert_error(400, "\"two\"");
    call(addr, "GET", "/api/v1/cluster/members/2", &[], "")
        .await
        .assert_error(405, "method not allowed");
    cluster.state().leader = None;
    call(addr, "DELETE", "/api/v1/cluster/members/2", &[], "")
        .await
        .assert_error(503, "no leader");
    assert_eq!(cluster.state().removed, [NodeId(3)]);

    // The admin token guards it like every other admin endpoint.
    let guarded = start(b, Some("s3cret")).await;
    call(guarded, "DELETE", "/api/v1/cluster/members/2", &[], "")
        .await
        .assert_error(401, "bearer token");
}
