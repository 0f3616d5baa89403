//! Three members on loopback gRPC: election, replication of registry commands, takeover
//! changes on every node, batching of concurrent proposals.

#[path = "support/cluster.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, registry_bytes, test_settings, wait_for, TestCluster};
use skein_cluster::{Change, ChangeEvent, Role, SubscriptionOptions};

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_a_leader_and_apply_the_same_registry() {
    init_tracing();
    let cluster = TestCluster::start(&[1, 2, 3], test_settings()).await;
    let leader = cluster.leader(WITHIN).await;
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();

    // Every member publishes its own record (the bootstrap node knew only addresses).
    wait_for(WITHIN, "all three are voters with their names", || async {
        let status = cluster.node(leader).status();
        let named = status
            .members
            .iter()
            .filter(|m| m.role == Role::Voter && m.node.name == format!("node-{}", m.id))
            .count();
        (named == 3).then_some(())
    })
    .await;

    // A follower knows only the leader's reachability; it asks the leader for everyone's.
    let local = cluster.node(follower).status();
    assert_eq!(local.leader_id, Some(leader));
    assert!(local.members.iter().any(|m| m.reachable.is_none()));
    let seen_by_leader = wait_for(WITHIN, "the leader hears from every member", || async {
        let s = cluster.node(follower).leader_status().await.unwrap();
        s.members
            .iter()
            .all(|m| m.reachable == Some(true) && m.role == Role::Voter)
            .then_some(s)
    })
    .await;
    assert_eq!(
        (seen_by_leader.node_id, seen_by_leader.is_leader),
        (leader, true)
    );
    assert_eq!(seen_by_leader.members.len(), 3);

    let mut changes_on_leader = cluster.node(leader).changes();

    // A follower's proposal goes to the leader and returns once applied here.
    let on_follower = cluster.node(follower);
    let first = on_follower
        .register_client("sensor", false, 3600)
        .await
        .unwrap();
    assert!(!first.session_present);
    assert_eq!(first.previous, None);
    let options = SubscriptionOptions {
        qos: 1,
        ..Default::default()
    };
    assert!(!on_follower
        .subscribe("sensor", first.epoch, "sensors/+/temp", options, Some(5))
        .await
        .unwrap());
    let entry = on_follower
        .registry()
        .read(|r| r.client("sensor").cloned())
        .expect("applied on the proposing node before the call returned");
    assert_eq!(entry.owner.node, follower);
    assert_eq!(entry.subscriptions.len(), 1);

    // The same client connects on the leader: a takeover.
    let second = cluster
        .node(leader)
        .register_client("sensor", false, 3600)
        .await
        .unwrap();
    assert!(second.session_present);
    let previous = second.previous.expect("the follower held it");
    assert_eq!(
        (previous.owner.node, previous.owner.epoch, previous.online),
        (follower, first.epoch, true)
    );
    // The old connection's late unsubscribe is refused: it no longer owns the id.
    let late = on_follower
        .unsubscribe("sensor", first.epoch, "sensors/+/temp")
        .await
        .unwrap_err();
    assert!(
        matches!(
            late,
            skein_cluster::ClusterError::Rejected {
                not_owner: true,
                ..
            }
        ),
        "{late}"
    );

    // Every member's change stream carries the takeover; the leader's is checked here.
    let takeover = tokio::time::timeout(WITHIN, async {
        loop {
            match changes_on_leader.next().await {
                Some(ChangeEvent::Applied(applied)) => {
                    for change in &applied.changes {
                        if let Change::Registered {
                            owner,
                            previous: Some(p),
                            ..
                        } = change
                        {
                            return (owner.node, p.owner.node);
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the leader's change stream shows the takeover");
    assert_eq!(takeover, (leader, follower));

    let index = cluster.node(leader).status().applied_index.unwrap();
    cluster.applied_everywhere(index, WITHIN).await;
    let bytes = registry_bytes(cluster.node(1));
    for id in [2, 3] {
        assert_eq!(registry_bytes(cluster.node(id)), bytes, "node {id} differs");
    }
    let interest = cluster
        .node(3)
        .registry()
        .read(|r| r.interest().get("sensors/+/temp").cloned());
    assert_eq!(
        interest.map(|m| m.into_iter().collect::<Vec<_>>()),
        Some(vec![(leader, 1)]),
        "the subscription moved with the session"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_share_log_entries() {
    init_tracing();
    let cluster = Arc::new(TestCluster::start(&[1, 2, 3], test_settings()).await);
    let leader = cluster.leader(WITHIN).await;
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();

    for proposer in [leader, follower] {
        let before = cluster.node(leader).status().last_log_index.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let cluster = cluster.clone();
            tasks.push(tokio::spawn(async move {
                cluster
                    .node(proposer)
                    .register_client(&format!("c-{proposer}-{i}"), true, 0)
                    .await
            }));
        }
        for task in tasks {
            let registration = task.await.unwrap().unwrap();
            assert!(!registration.session_present);
        }
        let after = cluster.node(leader).status().last_log_index.unwrap();
        let entries = after - before;
        assert!(
            entries <= 25,
            "200 concurrent registrations through node {proposer} took {entries} log entries"
        );
        eprintln!("200 registrations through node {proposer}: {entries} log entries");
    }
    let index = cluster.node(leader).status().applied_index.unwrap();
    cluster.applied_everywhere(index, WITHIN).await;
    for node in cluster.running() {
        assert_eq!(node.registry().read(|r| r.client_count()), 400);
    }
    match Arc::try_unwrap(cluster) {
        Ok(cluster) => cluster.shutdown().await,
        Err(_) => panic!("tasks still hold the cluster"),
    }
}
