//! A node without peers is a one-member Raft cluster: the same code path as a cluster. Its
//! Raft gauges and proposal histogram are recorded (one member per process here, so the
//! process-wide metrics belong to it alone).

#[path = "support/cluster.rs"]
mod common;

use std::time::Duration;

use common::{init_tracing, registry_bytes, test_settings, wait_for, TestCluster};
use metrics_exporter_prometheus::PrometheusBuilder;
use skein_cluster::SubscriptionOptions;

const WITHIN: Duration = Duration::from_secs(15);

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_a_one_member_cluster_that_keeps_its_state() {
    init_tracing();
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let mut cluster = TestCluster::start(&[], test_settings()).await;
    // `start(&[])` started nobody: a single node has no peers list at all.
    cluster.start_alone(7).await;
    let leader = cluster.leader(WITHIN).await;
    assert_eq!(leader, 7);

    let node = cluster.node(7);
    let r = node.register_client("solo", false, 600).await.unwrap();
    node.subscribe("solo", r.epoch, "a/b", SubscriptionOptions::default(), None)
        .await
        .unwrap();
    assert!(node
        .unregister_client("solo", r.epoch, false)
        .await
        .unwrap());

    let text = wait_for(WITHIN, "the Raft gauges are published", || async {
        let text = metrics.render();
        (sample(&text, "skein_raft_is_leader") == Some(1.0)
            && sample(&text, "skein_raft_applied_index").is_some_and(|i| i >= 3.0)
            && sample(&text, "skein_raft_commit_index").is_some_and(|i| i >= 3.0))
        .then_some(text)
    })
    .await;
    assert!(
        sample(&text, "skein_raft_term").is_some_and(|t| t >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "skein_raft_leader_changes_total").is_some_and(|c| c >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "skein_raft_proposal_seconds_count").is_some_and(|c| c >= 3.0),
        "{text}"
    );
    assert!(
        text.contains("skein_cluster_members{role=\"voter\",reachable=\"true\"} 1"),
        "{text}"
    );
    assert!(
        sample(&text, "skein_cluster_registry_clients") == Some(1.0),
        "{text}"
    );

    // Restarted from its data directory, it leads again with the same registry and does not
    // initialize a second time.
    let before = registry_bytes(cluster.node(7));
    cluster.stop(7).await;
    cluster.restart(7).await;
    cluster.leader(WITHIN).await;
    assert_eq!(registry_bytes(cluster.node(7)), before);
    let again = cluster
        .node(7)
        .register_client("solo", false, 600)
        .await
        .unwrap();
    assert!(
        again.session_present,
        "the offline session survived the restart"
    );
    cluster.shutdown().await;
}
