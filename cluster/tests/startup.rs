//! A node refuses to start on a bad configuration, and leaves its store as it found it.
//! (Kept apart from `single_node.rs`, whose metrics assertions need the process to itself.)

#[path = "support/cluster.rs"]
mod common;

use std::time::Duration;

use common::{init_tracing, test_settings, wait_for};

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_from_its_own_peers_list_or_with_bad_settings_does_not_start() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let store = skein_storage::Store::open(dir.path()).unwrap();
    let config = |peers: &str, raft: skein_cluster::RaftSettings| skein_cluster::ClusterConfig {
        node_id: 5,
        node: skein_cluster::Node::default(),
        peers: skein_cluster::parse_peers(peers).unwrap(),
        join: None,
        raft,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = skein_cluster::ClusterNode::start(
        config("1@127.0.0.1:7070,2@127.0.0.1:7071", test_settings()),
        &store,
        listener,
    )
    .await
    .err()
    .expect("refused");
    assert!(e.to_string().contains("not among the peers"), "{e}");

    let calm = skein_cluster::RaftSettings {
        heartbeat_ms: 1000,
        election_timeout_ms: 1500,
        ..test_settings()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = skein_cluster::ClusterNode::start(config("", calm), &store, listener)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("raft_election_timeout_ms"), "{e}");
    // The refusals left the store as a fresh node's: a valid start on it bootstraps.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = skein_cluster::ClusterNode::start(config("", test_settings()), &store, listener)
        .await
        .unwrap();
    wait_for(WITHIN, "the node leads its cluster of one", || async {
        node.status().is_leader.then_some(())
    })
    .await;
    node.shutdown().await;
}
