//! Faults on real members: the leader stops, a member restarts from its data directory, a
//! fourth member joins and one is removed, all while proposals keep committing.

#[path = "support/cluster.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, registry_bytes, test_settings, wait_for, TestCluster};
use skein_cluster::{Role, SubscriptionOptions};

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_and_a_restarted_member_catches_up() {
    init_tracing();
    let mut cluster = TestCluster::start(&[1, 2, 3], test_settings()).await;
    let old_leader = cluster.leader(WITHIN).await;
    let before = cluster
        .node(old_leader)
        .register_client("before", false, 60)
        .await
        .unwrap();

    // A follower keeps proposing while the leader goes away: every proposal waits for the
    // new leader and commits; none fails.
    let proposer = *[1, 2, 3].iter().find(|id| **id != old_leader).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let during = {
        let (node, done) = (cluster.node(proposer).clone(), done.clone());
        tokio::spawn(async move {
            let mut committed = 0;
            while !done.load(Ordering::Relaxed) {
                node.register_client(&format!("during-{committed}"), true, 0)
                    .await
                    .expect("a proposal across the leader change");
                committed += 1;
            }
            committed
        })
    };
    wait_for(WITHIN, "proposals flow before the stop", || async {
        cluster
            .node(proposer)
            .registry()
            .read(|r| r.client("during-3").is_some())
            .then_some(())
    })
    .await;
    cluster.stop(old_leader).await;
    let new_leader = cluster.leader(WITHIN).await;
    assert_ne!(new_leader, old_leader);
    let index = cluster.node(new_leader).status().last_log_index.unwrap();
    wait_for(WITHIN, "proposals commit under the new leader", || async {
        cluster
            .node(new_leader)
            .status()
            .commit_index
            .is_some_and(|c| c >= index + 3)
            .then_some(())
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let committed = during.await.unwrap();
    assert!(committed > 4, "{committed} proposals");
    let survivor = *[1, 2, 3]
        .iter()
        .find(|id| **id != old_leader && **id != new_leader)
        .unwrap();

    // Proposals commit with one member down, through the new leader and a follower.
    let after = cluster
        .node(survivor)
        .register_client("after", false, 60)
        .await
        .unwrap();
    cluster
        .node(new_leader)
        .subscribe(
            "after",
            after.epoch,
            "t/#",
            SubscriptionOptions::default(),
            None,
        )
        .await
        .expect_err("only the owning connection may subscribe");
    let on_survivor = cluster.node(survivor);
    on_survivor
        .subscribe(
            "after",
            after.epoch,
            "t/#",
            SubscriptionOptions::default(),
            None,
        )
        .await
        .unwrap();
    assert!(
        on_survivor
            .registry()
            .read(|r| r.client("before").map(|c| c.owner.epoch))
            == Some(before.epoch),
        "what the old leader committed survives it"
    );

    // The stopped member comes back from its data directory and catches up.
    cluster.restart(old_leader).await;
    let index = cluster.node(new_leader).status().applied_index.unwrap();
    cluster.applied_everywhere(index, WITHIN).await;
    let expected = registry_bytes(cluster.node(new_leader));
    assert_eq!(registry_bytes(cluster.node(old_leader)), expected);
    assert!(cluster.node(old_leader).registry().read(|r| r
        .client("after")
        .is_some_and(|c| c.subscriptions.len() == 1)));
    // And it takes part again: its proposals commit.
    cluster
        .node(old_leader)
        .register_client("back", true, 0)
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_at_runtime_and_another_is_removed() {
    init_tracing();
    let mut cluster = TestCluster::start(&[1, 2, 3], test_settings()).await;
    let leader = cluster.leader(WITHIN).await;
    for i in 0..20 {
        cluster
            .node(leader)
            .register_client(&format!("early-{i}"), false, 60)
            .await
            .unwrap();
    }
    let follower = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();

    // Node 4 joins through a follower, which points it at the leader; it is known by a DNS
    // name (localhost), which the leader resolves when it connects to replicate.
    cluster.join(4, follower).await;
    wait_for(WITHIN, "node 4 is a voter on every member", || async {
        cluster
            .running()
            .all(|n| {
                n.status().members.iter().any(|m| {
                    m.id == 4
                        && m.role == Role::Voter
                        && m.node.name == "node-4"
                        && m.node.grpc.starts_with("localhost:")
                })
            })
            .then_some(())
    })
    .await;
    let joined = cluster
        .node(4)
        .register_client("via-4", false, 60)
        .await
        .unwrap();
    assert!(!joined.session_present);
    let index = cluster.node(leader).status().applied_index.unwrap();
    cluster.applied_everywhere(index, WITHIN).await;
    assert_eq!(
        registry_bytes(cluster.node(4)),
        registry_bytes(cluster.node(leader))
    );
    assert_eq!(cluster.node(4).registry().read(|r| r.client_count()), 21);

    // Remove a follower other than the one asked: the request goes to the leader.
    let removed = *[1, 2, 3]
        .iter()
        .find(|id| **id != leader && **id != follower)
        .unwrap();
    let membership = cluster.node(follower).remove_member(removed).await.unwrap();
    assert!(membership.get_node(&removed).is_none());
    assert!(membership.voter_ids().all(|v| v != removed));
    cluster.stop(removed).await;
    wait_for(WITHIN, "the others see the removal", || async {
        cluster
            .running()
            .all(|n| n.membership().get_node(&removed).is_none())
            .then_some(())
    })
    .await;
    // Three voters remain; proposals still commit from each.
    for id in [leader, follower, 4] {
        cluster
            .node(id)
            .register_client(&format!("after-removal-{id}"), true, 0)
            .await
            .unwrap();
    }
    // Removing a non-member is a no-op, not an error.
    cluster.node(4).remove_member(99).await.unwrap();
    cluster.shutdown().await;
}

/// A registration whose proposal failed (no quorum) can still commit later, when its entry
/// sits in the log of the member that leads again: the node withdraws it, so the registry
/// never keeps a live owner for a connection that was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_failed_but_commits_later_is_withdrawn() {
    init_tracing();
    let settings = skein_cluster::RaftSettings {
        proposal_timeout_ms: 2_000,
        ..test_settings()
    };
    let mut cluster = TestCluster::start(&[1, 2, 3], settings).await;
    let leader = cluster.leader(WITHIN).await;
    let others: Vec<_> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for id in &others {
        cluster.stop(*id).await;
    }
    // Appended to the leader's log only: without a quorum the proposal times out.
    let failed = cluster
        .node(leader)
        .register_client("refused", false, 60)
        .await;
    assert!(failed.is_err(), "no quorum, yet committed: {failed:?}");

    // The member that comes back lacks the entry, so it cannot lead: the old leader is
    // elected again and commits the registration after all, then its withdrawal.
    let back = others[0];
    cluster.restart(back).await;
    for id in [leader, back] {
        wait_for(WITHIN, "the late registration withdrawn", || async {
            let online = cluster
                .node(id)
                .registry()
                .read(|r| r.client("refused").map(|e| e.is_online()));
            (online == Some(false)).then_some(())
        })
        .await;
    }
    cluster.shutdown().await;
}
