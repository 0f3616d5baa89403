//! `/readyz` and the cluster: a node is ready only as a member with a known leader (without
//! one no CONNECT can commit, so a load balancer must send clients elsewhere), while
//! `/healthz` answers as long as the process serves.

use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::{http_get, Node};

/// Three election timeouts at the default 1000 ms: long enough for a leader to appear if
/// one could.
const NO_LEADER_FOR: Duration = Duration::from_secs(3);
const READY_DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn readyz(node: &Node) -> (u16, Value) {
    let (status, body) = http_get(node.http_addr(), "/readyz")
        .await
        .expect("GET /readyz");
    let body = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, body)
}

/// Polls `/readyz` until it answers 200 or `deadline` passes; the last answer.
async fn wait_ready(node: &Node, deadline: Duration) -> (u16, Value) {
    let end = Instant::now() + deadline;
    loop {
        let answer = readyz(node).await;
        if answer.0 == 200 || Instant::now() >= end {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_majority_is_not_ready_until_one_is_up() {
    let (grpc_1, grpc_2) = (free_port(), free_port());
    let peers = format!("1@127.0.0.1:{grpc_1},2@127.0.0.1:{grpc_2}");
    let member = |id: u64, port: u16| {
        Node::builder()
            .arg("--node-id")
            .arg(id)
            .arg("--peers")
            .arg(&peers)
            .grpc(format!("127.0.0.1:{port}"))
    };
    // Node 1 initializes a two-member cluster alone: a member, but no leader.
    let node_1 = member(1, grpc_1).start();
    let (status, body) = wait_ready(&node_1, NO_LEADER_FOR).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "cluster_no_leader", "{body}");
    assert_eq!(body["status"], "not_ready");
    let (status, _) = http_get(node_1.http_addr(), "/healthz").await.unwrap();
    assert_eq!(status, 200, "alive while not ready");

    // A majority: a leader is elected and both turn ready.
    let node_2 = member(2, grpc_2).start();
    for node in [&node_1, &node_2] {
        let (status, body) = wait_ready(node, READY_DEADLINE).await;
        assert_eq!(
            (status, body.clone()),
            (200, serde_json::json!({ "status": "ready" })),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_joined_yet_is_not_ready() {
    // Nothing serves the address it joins through: it is never added.
    let node = Node::builder()
        .arg("--node-id")
        .arg(4)
        .arg("--join")
        .arg(format!("127.0.0.1:{}", free_port()))
        .start();
    let (status, body) = wait_ready(&node, NO_LEADER_FOR).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "cluster_not_a_member", "{body}");
    let (status, _) = http_get(node.http_addr(), "/healthz").await.unwrap();
    assert_eq!(status, 200);
}
