//! A node SIGKILLed while a persistent QoS 1 subscriber gets messages through it, on real
//! processes (the chaos suite's "copy on a later connection without DUP"): after the node
//! restarts and the client resumes its session (on that node, or on another one), a
//! message it had received already may come again only as a redelivery: DUP = 1, on a
//! later connection. Such copies come from the killed node's disk (a record whose
//! deletion had not reached it) and from the publisher's node, which sends the restarted
//! node the forward batches it never acknowledged (the restarted node cannot know it
//! delivered them: that record was in memory).
//!
//! Also, on one node: messages put back in the queue because the client's new receive
//! window is smaller, then left there by a SIGKILL, keep their DUP after the restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_tests::codec::puback;
use skein_tests::session_faults::{connect_within, number, publish_unacked};
use skein_tests::{
    metric_sum, prop, unique_id, Connect, Node, Packet, PropValue, Publish, RawClient, SubFilter,
    TestCluster, RECV_TIMEOUT,
};

/// A CONNECT after the kill may wait for the hand-over from the dead node (1 s for an
/// unreachable holder) and for an election; on a loaded machine, with a margin.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Rounds of kill and restart in one test: each kill may or may not land while a forward
/// to the killed node is delivered and not yet acknowledged.
const ROUNDS: usize = 3;

/// Messages published per round, one every [`PUBLISH_EVERY`].
const PER_ROUND: usize = 150;
const PUBLISH_EVERY: Duration = Duration::from_millis(8);

/// Publishes in flight at most (the node's receive window is 128).
const MAX_UNACKED: usize = 100;

/// (connection, DUP) of every copy of each message number, in arrival order.
type Copies = Arc<Mutex<BTreeMap<usize, Vec<(usize, bool)>>>>;

/// Reads `c` (connection number `conn`) until it closes, acknowledging every publish and
/// noting its copy.
async fn read_until_closed(mut c: RawClient, conn: usize, copies: Copies) {
    loop {
        match c.recv(Duration::from_secs(120)).await {
            Ok(Packet::Publish(p)) => {
                copies
                    .lock()
                    .unwrap()
                    .entry(number(&p))
                    .or_default()
                    .push((conn, p.dup));
                // The node may be gone already.
                if c.try_send(&puback(p.pkid)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The copies QoS 1 does not allow: after the first, each must carry DUP and come on a
/// later connection than the copy before it.
fn violations(copies: &BTreeMap<usize, Vec<(usize, bool)>>) -> Vec<(usize, Vec<(usize, bool)>)> {
    copies
        .iter()
        .filter(|(_, c)| {
            c.windows(2)
                .any(|pair| !pair[1].1 || pair[1].0 <= pair[0].0)
        })
        .map(|(n, c)| (*n, c.clone()))
        .collect()
}

/// `resume_elsewhere`: the client comes back on another node (the session is handed over
/// from the restarted node) instead of on the killed one.
async fn kill_while_receiving(resume_elsewhere: bool) {
    let mut cluster =
        TestCluster::start_with(3, |_, b| b.env("SKEIN_NODE_DOWN_AFTER_MS", 600_000)).await;
    let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    // The publisher on the leader, the client on a follower that is killed: its messages
    // go through the forward stream from the leader to it.
    let (killed, elsewhere) = (others[0], others[1]);
    let id = unique_id("crashed");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut sub, _, _) =
        RawClient::connect_ok(cluster.node(killed).mqtt_addr(), &persistent).await;
    assert_eq!(sub.subscribe(1, &[SubFilter::new("crash/#", 1)]).await, [1]);
    let copies: Copies = Arc::default();
    let mut conn = 0;
    let mut reading = tokio::spawn(read_until_closed(sub, conn, copies.clone()));
    let publisher_addr = cluster.node(leader).mqtt_addr();
    // MQTT 5: a publish that fails while the node is dead gets a failure PUBACK (a 3.1.1
    // publisher would be disconnected).
    let mut publisher = RawClient::v5(publisher_addr, &unique_id("pub")).await;
    let mut unacked = 0;
    let mut next = 1;
    for round in 0..ROUNDS {
        // Messages flowing; the kill lands in the middle of them.
        let from = next;
        let publishing = tokio::spawn(async move {
            for i in from..from + PER_ROUND {
                let payload = format!("m{i}");
                publisher
                    .publish(&Publish::new("crash/x", 1, payload.as_bytes()).pkid(i as u16))
                    .await;
                unacked += 1;
                // Within the node's receive window; a PUBACK may wait for the forward
                // timeout while the client's node is dead.
                let deadline = tokio::time::Instant::now() + PUBLISH_EVERY;
                loop {
                    let wait = if unacked >= MAX_UNACKED {
                        RECV_TIMEOUT * 3
                    } else {
                        deadline.saturating_duration_since(tokio::time::Instant::now())
                    };
                    match publisher.recv(wait).await {
                        Ok(Packet::PubAck { .. }) => unacked -= 1,
                        Ok(other) => panic!("publisher: {other:?}"),
                        Err(_) if unacked < MAX_UNACKED => break,
                        Err(e) => panic!("publisher: no PUBACK: {e:?}"),
                    }
                }
            }
            (publisher, unacked)
        });
        next += PER_ROUND;
        tokio::time::sleep(PUBLISH_EVERY * (PER_ROUND as u32) / 2).await;
        cluster.kill9(killed);
        cluster.restart(killed);
        // The old connection ended with its node.
        tokio::time::timeout(CONNECT_DEADLINE, &mut reading)
            .await
            .expect("the killed node's connection ends")
            .expect("the reader");
        let node = if resume_elsewhere && round % 2 == 0 {
            elsewhere
        } else {
            killed
        };
        let (sub, present) = connect_within(
            cluster.node(node).mqtt_addr(),
            &persistent,
            CONNECT_DEADLINE,
        )
        .await;
        assert!(present, "round {round}: the session survives");
        conn += 1;
        reading = tokio::spawn(read_until_closed(sub, conn, copies.clone()));
        (publisher, unacked) = publishing.await.expect("the publisher");
        // Everything routed meanwhile (and resent) arrives before the next round.
        tokio::time::sleep(Duration::from_secs(3)).await;
        if node == elsewhere {
            // Back to the node that is killed next, for the next round.
            let (sub, present) = connect_within(
                cluster.node(killed).mqtt_addr(),
                &persistent,
                CONNECT_DEADLINE,
            )
            .await;
            assert!(present);
            tokio::time::timeout(CONNECT_DEADLINE, &mut reading)
                .await
                .expect("the taken-over connection ends")
                .expect("the reader");
            conn += 1;
            reading = tokio::spawn(read_until_closed(sub, conn, copies.clone()));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // What the nodes still hold comes (offers, resent forwards) before the check.
    tokio::time::sleep(Duration::from_secs(5)).await;
    reading.abort();
    let copies = copies.lock().unwrap().clone();
    let again: usize = copies.values().map(|c| c.len() - 1).sum();
    let marked: f64 = {
        let mut sum = 0.0;
        for id in cluster.ids() {
            sum += metric_sum(
                cluster.node(id).http_addr(),
                "skein_messages_marked_dup_total",
                &[],
            )
            .await;
        }
        sum
    };
    eprintln!(
        "{} messages received, {again} copies again; {marked} marked for DUP since the last restarts",
        copies.len()
    );
    assert!(
        copies.len() > PER_ROUND,
        "messages flowed: {}",
        copies.len()
    );
    let wrong = violations(&copies);
    assert!(
        wrong.is_empty(),
        "copies QoS 1 does not allow ((connection, DUP) per copy): {wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_messages_come_again_only_as_redeliveries_on_the_same_node() {
    kill_while_receiving(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_messages_come_again_only_as_redeliveries_on_another_node() {
    kill_while_receiving(true).await;
}

/// In flight to the client, put back in the queue by a reconnect with a receive window of
/// 1 (they go out again under new packet ids), then left there by a SIGKILL: after the
/// restart each comes with DUP, as the client has had it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_requeued_for_a_smaller_window_keep_dup_across_a_kill() {
    const N: usize = 5;
    let mut node = Node::start();
    let id = unique_id("window");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut sub, _, _) = RawClient::connect_ok(node.mqtt_addr(), &persistent).await;
    assert_eq!(sub.subscribe(1, &[SubFilter::new("win/#", 1)]).await, [1]);
    let mut publisher = RawClient::v311(node.mqtt_addr(), &unique_id("pub")).await;
    publish_unacked(&mut publisher, "win/x", 1, N).await;
    for i in 1..=N {
        let p = sub.expect_publish(RECV_TIMEOUT).await;
        assert_eq!((number(&p), p.dup), (i, false));
    }
    // Nothing acknowledged; back with a window of one.
    sub.drop_connection();
    let narrow = Connect::v5(&id)
        .clean(false)
        .session_expiry(3600)
        .prop(prop::RECEIVE_MAXIMUM, PropValue::U16(1));
    let (mut sub, present) = connect_within(node.mqtt_addr(), &narrow, RECV_TIMEOUT).await;
    assert!(present);
    let p = sub.expect_publish(RECV_TIMEOUT).await;
    assert_eq!((number(&p), p.dup), (1, true));
    // 2..=N wait in the queue behind the unacknowledged 1.
    sub.expect_no_publish(Duration::from_millis(500)).await;
    node.kill9();
    node.restart();
    let (mut sub, present) = connect_within(node.mqtt_addr(), &persistent, RECV_TIMEOUT).await;
    assert!(present);
    let mut got = Vec::new();
    while got.len() < N {
        let p = sub.expect_publish(RECV_TIMEOUT).await;
        sub.send(&puback(p.pkid)).await;
        got.push((number(&p), p.dup));
    }
    got.sort();
    assert_eq!(
        got,
        (1..=N).map(|i| (i, true)).collect::<Vec<_>>(),
        "every message the client has had comes with DUP"
    );
    let marked = metric_sum(
        node.http_addr(),
        "skein_messages_marked_dup_total",
        &["cause=\"unclean_restart\""],
    )
    .await;
    assert_eq!(
        marked,
        (N - 1) as f64,
        "the queued ones, marked at the restart"
    );
}
