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
//!
//! Messages that wait in the sender's queue while its window is full go out together once
//! it opens: one routed before the client moved must not go in a batch naming the index
//! of one routed after (the receiver reads the batch's index as each message's).

use std::time::{Duration, Instant};

use skein_tests::codec::puback;
use skein_tests::session_faults::{number, publish_unacked, wait_owner, Paused};
use skein_tests::{
    unique_id, Connect, Packet, RawClient, SubFilter, TestCluster, QUIET, RECV_TIMEOUT,
};

/// How long a CONNECT may wait for its registration (the stopped node is skipped after
/// the cluster's fold wait, 2 s).
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// The stage both tests share: a cluster whose origin node (the leader) forwards to the
/// taker, where a subscriber (`anchor`) holds `late/#` and a session that moved on to the
/// node about to be stopped is remembered (so the taker redirects to it, and waits).
struct Stage {
    cluster: TestCluster,
    origin: u64,
    taker: u64,
    stopped: u64,
    anchor: RawClient,
    /// The moved session's connection on the node to stop: kept open.
    _there: RawClient,
}

fn persistent(id: &str) -> Connect {
    Connect::v5(id).clean(false).session_expiry(3600)
}

impl Stage {
    async fn set() -> Stage {
        // Not marked down while stopped: the stall ends when it runs again.
        let cluster =
            TestCluster::start_with(3, |_, b| b.env("SKEIN_NODE_DOWN_AFTER_MS", 600_000)).await;
        let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
        let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
        // The publisher's node holds the session first; the taker stalls; the stopped node
        // is where the other session went.
        let (origin, taker, stopped) = (leader, others[0], others[1]);

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
        Stage {
            cluster,
            origin,
            taker,
            stopped,
            anchor,
            _there: there,
        }
    }

    /// A persistent client `id` on the origin, subscribed to `late/#`.
    async fn client_on_origin(&self, id: &str) -> RawClient {
        let (mut old, _, _) =
            RawClient::connect_ok(self.cluster.node(self.origin).mqtt_addr(), &persistent(id))
                .await;
        assert_eq!(old.subscribe(1, &[SubFilter::new("late/#", 1)]).await, [1]);
        old
    }

    /// `n` publishers on the origin, one per message: a publisher's connection waits for a
    /// PUBACK before it goes on, and these wait for the stopped node's copy.
    async fn publishers(&self, n: usize) -> Vec<RawClient> {
        let mut publishers = Vec::new();
        for _ in 0..n {
            publishers.push(
                RawClient::v5(
                    self.cluster.node(self.origin).mqtt_addr(),
                    &unique_id("pub"),
                )
                .await,
            );
        }
        publishers
    }

    /// Publishes m1 (it stalls the origin's stream to the taker: its redirect waits for
    /// the stopped node), then m2..=`last`, each in a batch of its own behind it.
    async fn stall(&self, publishers: &mut [RawClient], last: usize) -> Paused {
        let paused = Paused::stop(self.cluster.node(self.stopped).pid());
        publish_unacked(&mut publishers[0], "late/x", 1, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for n in 2..=last {
            publish_unacked(&mut publishers[n - 1], "late/x", n, n).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        paused
    }

    /// The client of `old` moves to the taker (its session there, present).
    async fn move_to_taker(&self, old: RawClient, id: &str) -> RawClient {
        old.disconnect().await;
        let addr = self.cluster.node(self.taker).mqtt_addr();
        let mut c = RawClient::tcp(addr, persistent(id).proto).await;
        c.send(&persistent(id).encode()).await;
        match c.recv(CONNECT_DEADLINE).await {
            Ok(Packet::ConnAck {
                session_present: true,
                code: 0,
                ..
            }) => c,
            other => panic!("CONNECT on the taker: {other:?}"),
        }
    }

    /// Waits until the taker's subscriber has got `numbers` (the stall is over).
    async fn anchor_gets(&mut self, numbers: &[usize]) {
        let mut at_anchor = Vec::new();
        let end = Instant::now() + RECV_TIMEOUT * 4;
        while !numbers.iter().all(|n| at_anchor.contains(n)) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the taker's subscriber got {at_anchor:?}");
            if let Ok(Packet::Publish(p)) = self.anchor.recv(left).await {
                at_anchor.push(number(&p));
            }
        }
    }
}

/// Receives on `c` (acknowledging) until it stays quiet: each message's number and DUP.
async fn copies(c: &mut RawClient) -> Vec<(usize, bool)> {
    let mut got = Vec::new();
    let quiet_until = Instant::now() + QUIET * 3;
    loop {
        let left = quiet_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match c.recv(left).await {
            Ok(Packet::Publish(p)) => {
                c.send(&puback(p.pkid)).await;
                got.push((number(&p), p.dup));
            }
            Ok(other) => panic!("new connection: {other:?}"),
            Err(_) => break,
        }
    }
    got
}

/// Receives `n` messages on `c`, acknowledging each: their numbers.
async fn receive(c: &mut RawClient, n: usize) -> Vec<usize> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = c.expect_publish(RECV_TIMEOUT).await;
        c.send(&puback(p.pkid)).await;
        got.push(number(&p));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_held_back_behind_a_stalled_batch_do_not_reach_a_session_that_came_since() {
    // Published after the stalling one: each in a batch of its own, all within the
    // sender's window (4 batches), so they are sent before the client moves.
    const K: usize = 3;
    let mut stage = Stage::set().await;
    let id = unique_id("client");
    let mut old = stage.client_on_origin(&id).await;
    let mut publishers = stage.publishers(K + 2).await;

    let mut paused = stage.stall(&mut publishers, K + 1).await;
    // Delivered on the origin and acknowledged there.
    assert_eq!(
        receive(&mut old, K + 1).await,
        (1..=K + 1).collect::<Vec<_>>()
    );
    // The taker delivered m1 to its own subscriber, then waits for the redirect; m2..m4
    // wait behind it.
    assert_eq!(number(&stage.anchor.expect_publish(RECV_TIMEOUT).await), 1);
    stage
        .anchor
        .expect_no_publish(Duration::from_millis(300))
        .await;

    let mut new = stage.move_to_taker(old, &id).await;
    // The stalled batch, and those behind it, reach the taker now.
    paused.resume();
    stage.anchor_gets(&(2..=K + 1).collect::<Vec<_>>()).await;
    // Nothing of it on the new connection: acknowledged on the origin, handed over as
    // such. A copy here would have to carry DUP at least.
    let again = copies(&mut new).await;
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
}

/// m1 stalls the stream and m2..m4 fill the window; m5 (routed while the client is on
/// the origin) and m6 (routed after the origin applied the move) wait in the queue, and go
/// out once the window opens. In one batch naming m6's index, m5 passed for a message
/// routed after the move and reached the new connection as new (the chaos suite, 100
/// rounds, seed 42: `p1:727`, `p0:467`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_before_and_after_a_move_do_not_share_a_batch_index() {
    // m1 and the three behind it: the sender's window (4 batches).
    const WINDOW: usize = 4;
    let (before, after) = (WINDOW + 1, WINDOW + 2);
    let mut stage = Stage::set().await;
    let id = unique_id("client");
    let mut old = stage.client_on_origin(&id).await;
    let mut publishers = stage.publishers(after).await;

    let mut paused = stage.stall(&mut publishers, before).await;
    assert_eq!(
        receive(&mut old, before).await,
        (1..=before).collect::<Vec<_>>()
    );
    assert_eq!(number(&stage.anchor.expect_publish(RECV_TIMEOUT).await), 1);
    stage
        .anchor
        .expect_no_publish(Duration::from_millis(300))
        .await;

    let mut new = stage.move_to_taker(old, &id).await;
    // Routed by the registry that has the move: queued for the taker behind m5.
    wait_owner(
        stage.cluster.node(stage.origin).http_addr(),
        &id,
        stage.taker,
        CONNECT_DEADLINE,
    )
    .await;
    publish_unacked(&mut publishers[after - 1], "late/x", after, after).await;
    paused.resume();
    stage.anchor_gets(&(2..=after).collect::<Vec<_>>()).await;

    let got = copies(&mut new).await;
    let as_new: Vec<usize> = got
        .iter()
        .filter(|(n, dup)| *n < after && !dup)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        as_new.is_empty(),
        "acknowledged on the origin, then sent again as new messages after the move: {as_new:?} (all copies: {got:?})"
    );
    // The message routed after the move is the new connection's, once.
    let latest: Vec<&(usize, bool)> = got.iter().filter(|(n, _)| *n == after).collect();
    assert_eq!(latest, [&(after, false)], "all copies: {got:?}");
}
