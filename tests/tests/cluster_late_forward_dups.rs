//! A forward that reaches a node late, after a persistent session came there from another
//! node, on real processes: the session's client does not get it again as a new message.
//!
//! The publishing node forwards every publish to each node with a matching subscriber,
//! whoever owns the client. A node handles one sender's batches in order, so one batch
//! that waits (here: for a redirect to a stopped node) holds the later ones back; those
//! were routed while the session was on the publishing node, which delivered them to the
//! client there. The client then moves to the waiting node, and the held-back batches
//! reach it after its CONNACK (the chaos suite's "copy on a later connection without
//! DUP": 100 rounds, seed 42, `chaos-sub-4` `p1:527`).

use std::time::{Duration, Instant};

use skein_tests::codec::puback;
use skein_tests::session_faults::{number, publish_unacked, wait_owner, Paused};
use skein_tests::{
    unique_id, Connect, Packet, RawClient, SubFilter, TestCluster, QUIET, RECV_TIMEOUT,
};

/// How long a CONNECT may wait for its registration (the stopped node is skipped after
/// the cluster's fold wait, 2 s).
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_held_back_behind_a_stalled_batch_do_not_reach_a_session_that_came_since() {
    // Published after the stalling one: each in a batch of its own, all within the
    // sender's window (4 batches), so they are sent before the client moves.
    const K: usize = 3;
    // Not marked down while stopped: the stall ends when it runs again.
    let cluster =
        TestCluster::start_with(3, |_, b| b.env("SKEIN_NODE_DOWN_AFTER_MS", 600_000)).await;
    let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    // The publisher's node holds the session first; the taker stalls; the stopped node
    // is where the other session went.
    let (origin, taker, stopped) = (leader, others[0], others[1]);
    let persistent = |id: &str| Connect::v5(id).clean(false).session_expiry(3600);

    // A subscriber on the taker: the origin forwards every publish there.
    let mut anchor = RawClient::v5(cluster.node(taker).mqtt_addr(), &unique_id("anchor")).await;
    assert_eq!(
        anchor.subscribe(1, &[SubFilter::new("late/#", 0)]).await,
        [0]
    );
    // A session that moved from the taker to the node about to stop: the taker
    // redirects what it is forwarded for it to that node, and waits for its answer.
    let moved = unique_id("moved");
    let (mut first, _, _) =
        RawClient::connect_ok(cluster.node(taker).mqtt_addr(), &persistent(&moved)).await;
    assert_eq!(
        first.subscribe(1, &[SubFilter::new("late/#", 1)]).await,
        [1]
    );
    first.disconnect().await;
    let (there, _, _) =
        RawClient::connect_ok(cluster.node(stopped).mqtt_addr(), &persistent(&moved)).await;
    wait_owner(
        cluster.node(taker).http_addr(),
        &moved,
        stopped,
        CONNECT_DEADLINE,
    )
    .await;

    // The client under test, on the origin.
    let id = unique_id("client");
    let (mut old, _, _) =
        RawClient::connect_ok(cluster.node(origin).mqtt_addr(), &persistent(&id)).await;
    assert_eq!(old.subscribe(1, &[SubFilter::new("late/#", 1)]).await, [1]);
    // Each message from a publisher of its own: a publisher's connection waits for a
    // PUBACK before it goes on, and these wait for the stopped node's copy.
    let mut publishers = Vec::new();
    for _ in 0..K + 2 {
        publishers.push(RawClient::v5(cluster.node(origin).mqtt_addr(), &unique_id("pub")).await);
    }

    let mut paused = Paused::stop(cluster.node(stopped).pid());
    // m1 stalls the origin's stream to the taker (its redirect waits for the stopped
    // node); m2..m4 are sent behind it.
    publish_unacked(&mut publishers[0], "late/x", 1, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 2..=K + 1 {
        publish_unacked(&mut publishers[n - 1], "late/x", n, n).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Delivered on the origin and acknowledged there.
    let mut got = Vec::new();
    while got.len() < K + 1 {
        let p = old.expect_publish(RECV_TIMEOUT).await;
        old.send(&puback(p.pkid)).await;
        got.push(number(&p));
    }
    assert_eq!(got, (1..=K + 1).collect::<Vec<_>>());
    // The taker delivered m1 to its own subscriber, then waits for the redirect; m2..m4
    // wait behind it.
    assert_eq!(number(&anchor.expect_publish(RECV_TIMEOUT).await), 1);
    anchor.expect_no_publish(Duration::from_millis(300)).await;

    // The client moves to the taker.
    old.disconnect().await;
    let mut c = RawClient::tcp(cluster.node(taker).mqtt_addr(), persistent(&id).proto).await;
    c.send(&persistent(&id).encode()).await;
    let mut new = match c.recv(CONNECT_DEADLINE).await {
        Ok(Packet::ConnAck {
            session_present: true,
            code: 0,
            ..
        }) => c,
        other => panic!("CONNECT on the taker: {other:?}"),
    };
    // The stalled batch, and those behind it, reach the taker now.
    paused.resume();
    let mut at_anchor = Vec::new();
    let end = Instant::now() + RECV_TIMEOUT * 4;
    while at_anchor.len() < K {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the taker's subscriber got {at_anchor:?}");
        if let Ok(Packet::Publish(p)) = anchor.recv(left).await {
            at_anchor.push(number(&p));
        }
    }
    // Nothing of it on the new connection: acknowledged on the origin, handed over as
    // such. A copy here would have to carry DUP at least.
    let mut again = Vec::new();
    let quiet_until = Instant::now() + QUIET * 3;
    loop {
        let left = quiet_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match new.recv(left).await {
            Ok(Packet::Publish(p)) => {
                new.send(&puback(p.pkid)).await;
                again.push((number(&p), p.dup));
            }
            Ok(other) => panic!("new connection: {other:?}"),
            Err(_) => break,
        }
    }
    let as_new: Vec<usize> = again
        .iter()
        .filter(|(_, dup)| !dup)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        as_new.is_empty(),
        "acknowledged on the origin, then sent again as new messages after the move: {as_new:?} (all copies: {again:?})"
    );
    // The new connection works: a later publish comes once.
    publish_unacked(&mut publishers[K + 1], "late/x", K + 2, K + 2).await;
    let p = new.expect_publish(RECV_TIMEOUT).await;
    assert_eq!((number(&p), p.dup), (K + 2, false));
    new.send(&puback(p.pkid)).await;
    drop((there, publishers));
}
