//! A node resumed from a SIGSTOP while its client was taken over elsewhere, on real
//! processes (issue 14's double owners; chaos seed 7, `chaos-sub-3`): the old connection
//! on the resumed node gets nothing once the node could have learned of the takeover,
//! and ends with DISCONNECT 0x8E.
//!
//! A node resumed after more than the election timeout found its election timer expired
//! and campaigned before the leader's next AppendEntries reached it; its higher term made
//! the leader step down, and the cluster had no leader for about 2 s, during which the
//! resumed node applied nothing and went on delivering its own publishers' messages to the
//! connection that had been taken over. The leader must stay, and the resumed node catch
//! up from it.

use std::time::{Duration, Instant};

use skein_tests::session_faults::{connect_within, Paused};
use skein_tests::{unique_id, Connect, Packet, Publish, RawClient, RecvError, SubFilter};
use skein_tests::{TestCluster, RECV_TIMEOUT};

/// How long the follower stays stopped: past its election timer (openraft's leader lease,
/// 2 s with the default election timeout, plus the election timeout, at most 2 s), so
/// that on resuming it would campaign at once.
const PAUSE: Duration = Duration::from_millis(4500);
/// A takeover's CONNACK while the old node is stopped: the registration commits at once,
/// the kick and the hand-over to the stopped node time out first.
const CONNACK_WITHIN: Duration = Duration::from_secs(30);
/// From the resume until the resumed node has applied the takeover (the leader's next
/// AppendEntries after its back-off from the silent peer, 0.5 s, and the apply), with room
/// for a loaded machine; the chaos suite allows 1 s from the CONNACK. Without the fix the
/// resumed node deposed the leader and delivered for about 2 s.
const CAUGHT_UP_WITHIN: Duration = Duration::from_millis(1500);
/// How often the resumed node's own publisher sends.
const EVERY: Duration = Duration::from_millis(50);

/// The `term` and `leader_id` node `id` shows.
async fn term_and_leader(cluster: &TestCluster, id: u64) -> (u64, u64) {
    let v = cluster
        .overview(id)
        .await
        .unwrap_or_else(|| panic!("node {id} has no overview"));
    (
        v["term"].as_u64().expect("term"),
        v["leader_id"].as_u64().expect("leader_id"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_node_delivers_nothing_to_a_connection_taken_over_while_it_was_stopped() {
    // Not marked down while stopped: the client moves by a takeover, not an adoption.
    let cluster =
        TestCluster::start_with(3, |_, b| b.env("SKEIN_NODE_DOWN_AFTER_MS", 600_000)).await;
    let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (stopped, taker) = (followers[0], followers[1]);
    let stopped_mqtt = cluster.node(stopped).mqtt_addr();

    let id = unique_id("owner");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut old, _, _) = RawClient::connect_ok(stopped_mqtt, &persistent).await;
    assert_eq!(old.subscribe(1, &[SubFilter::new("owner/#", 0)]).await, [0]);
    // A publisher on the stopped node: what it sends is routed there, by that node's
    // registry.
    let mut publisher = RawClient::v5(stopped_mqtt, &unique_id("pub")).await;
    let before = term_and_leader(&cluster, leader).await;

    let stopped_at = Instant::now();
    let mut paused = Paused::stop(cluster.node(stopped).pid());
    let (mut new, _) =
        connect_within(cluster.node(taker).mqtt_addr(), &persistent, CONNACK_WITHIN).await;
    // The fault's length, not a wait for a condition: the follower must stay stopped past
    // its election timer.
    tokio::time::sleep_until((stopped_at + PAUSE).into()).await;
    paused.resume();
    let resumed = Instant::now();

    // The old connection, read until the server closes it: when each PUBLISH came.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let end = Instant::now() + RECV_TIMEOUT * 4;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match old.recv(left).await {
                Ok(Packet::Publish(_)) => got.push(resumed.elapsed()),
                Ok(Packet::Disconnect { reason, .. }) => return (got, Some(reason)),
                Ok(other) => panic!("the old connection got {other:?}"),
                Err(RecvError::Closed) => return (got, None),
                Err(e) => panic!("the old connection was not closed: {e:?}; got {got:?}"),
            }
        }
    });
    // The resumed node's publisher sends on until the old connection is closed.
    let mut n = 0u32;
    while !reader.is_finished() {
        n += 1;
        publisher
            .publish(&Publish::new("owner/x", 0, format!("m{n}").as_bytes()))
            .await;
        tokio::time::sleep(EVERY).await;
    }
    let (got, reason) = reader.await.expect("the reader");
    eprintln!(
        "the old connection got {} messages, the last {:?} after the resume, then {reason:02x?}",
        got.len(),
        got.last()
    );
    let late: Vec<&Duration> = got.iter().filter(|at| **at > CAUGHT_UP_WITHIN).collect();
    assert!(
        late.is_empty(),
        "the taken-over connection still got messages {late:?} after the resume (all: {got:?}; CONNACK on node {taker} came before the resume)"
    );
    assert_eq!(reason, Some(0x8E), "the old connection's end (got {got:?})");
    let after = term_and_leader(&cluster, leader).await;
    assert_eq!(
        after, before,
        "(term, leader) before the stop and after the resume: the resumed node deposed the leader"
    );

    // The new connection gets what the resumed node's publisher sends now.
    n += 1;
    publisher
        .publish(&Publish::new("owner/x", 0, format!("m{n}").as_bytes()))
        .await;
    let end = Instant::now() + RECV_TIMEOUT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let p = new.expect_publish(left).await;
        if p.payload == format!("m{n}").as_bytes() {
            break;
        }
    }
}
