//! Forwards that reach a node after the session they were for moved away from it, on
//! real processes (issue 14, the chaos suite's "lost, for every subscriber at once"):
//! the node sends them on to the session's owner instead of acknowledging them as
//! delivered to nobody.
//!
//! A persistent subscriber's node is SIGKILLed; a publish routed to it waits in the
//! publisher's node's forward queue; the subscriber resumes its session on another node;
//! the killed node restarts with its data, learns the session moved (and seals its copy),
//! and only then gets the forward again (its forward dedup is in memory: the resent batch
//! is new to it). Before, that message matched nothing there and was acknowledged: the
//! publisher could get PUBACK 0 for a message the subscriber never got.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use skein_tests::codec::puback;
use skein_tests::session_faults::{connect_within, publish_unacked, wait_owner, Paused};
use skein_tests::{
    metric_sum, unique_id, Connect, Packet, Publish, RawClient, SubFilter, TestCluster,
};

/// A CONNECT to a node whose previous holder is dead waits for the hand-over (1 s for an
/// unreachable holder) and its registration; on a loaded machine, with a margin.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// How long the redirected messages may take to reach the subscriber: the restart, the
/// registry's catch-up, the sender's reconnect backoff (up to 2 s), the redirect.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(40);

/// The next `n` PUBACKs `publisher` gets (packet id, reason), each within
/// `CONNECT_DEADLINE`: a publisher is told 0x80 after 5 s when a forward is not taken.
async fn pubacks(publisher: &mut RawClient, n: usize) -> Vec<(u16, u8)> {
    let mut acks = Vec::new();
    while acks.len() < n {
        match publisher.recv(CONNECT_DEADLINE).await {
            Ok(Packet::PubAck { pkid, reason, .. }) => acks.push((pkid, reason)),
            Ok(_) => {}
            Err(e) => panic!("PUBACKs {acks:?} of {n} came ({e:?})"),
        }
    }
    acks
}

/// Reads what `c` receives until every payload of `want` came or `deadline` passed,
/// acknowledging each QoS 1 publish; returns the payloads that came.
async fn receive_until(
    c: &mut RawClient,
    want: &BTreeSet<String>,
    deadline: Duration,
) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    let end = Instant::now() + deadline;
    while !want.is_subset(&got) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match c.recv(left).await {
            Ok(Packet::Publish(p)) => {
                if p.qos > 0 {
                    c.send(&puback(p.pkid)).await;
                }
                got.insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}

/// Every payload of `want` reaches `new` within [`DELIVERY_DEADLINE`]; when some do not,
/// the failure names them with the count of redirects `metric` (a node's counter, labels)
/// saw, as `what`.
async fn assert_all_arrive(
    new: &mut RawClient,
    want: &BTreeSet<String>,
    metric: (std::net::SocketAddr, &str, &[&str]),
    what: &str,
) {
    let got = receive_until(new, want, DELIVERY_DEADLINE).await;
    let (addr, name, labels) = metric;
    let redirected = metric_sum(addr, name, labels).await;
    let missing: Vec<&String> = want.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "missing on the session's new node: {missing:?} (got {got:?}; {what}: {redirected})"
    );
}

/// The paused holder's tests end alike: the publisher's `n` PUBACKs are collected, the
/// holder was marked down, and every payload of `want` reaches `client` although the holder
/// stays paused (only the mark's redirect can bring them).
async fn assert_redirected_from_paused_holder(
    publisher: &mut RawClient,
    publisher_http: std::net::SocketAddr,
    client: &mut RawClient,
    want: &BTreeSet<String>,
    n: usize,
) {
    let acks = pubacks(publisher, n).await;
    eprintln!("PUBACKs (packet id, reason): {acks:?}");
    let marked = metric_sum(publisher_http, "skein_nodes_marked_down_total", &[]).await;
    assert!(marked >= 1.0, "the holder was marked down while paused");
    assert_all_arrive(
        client,
        want,
        (
            publisher_http,
            "skein_cluster_forwards_redirected_total",
            &[],
        ),
        "redirected from the paused holder's queue",
    )
    .await;
}

/// A persistent subscriber on `holder` (filter `{topic}/#`), SIGKILLed with its node, and
/// `n` QoS 1 publishes `m1`..`mn` to `{topic}/x` on `publisher_node` routed to the dead
/// holder (held in the publisher's node's forward queue, PUBACKs pending).
struct HeldForDeadHolder {
    persistent: Connect,
    id: String,
    publisher: RawClient,
    want: BTreeSet<String>,
}

async fn hold_forwards_for_a_dead_holder(
    cluster: &mut TestCluster,
    holder: u64,
    publisher_node: u64,
    topic: &str,
    n: usize,
) -> HeldForDeadHolder {
    let id = unique_id(topic);
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut old, _, _) =
        RawClient::connect_ok(cluster.node(holder).mqtt_addr(), &persistent).await;
    let filter = format!("{topic}/#");
    assert_eq!(old.subscribe(1, &[SubFilter::new(&filter, 1)]).await, [1]);
    wait_owner(
        cluster.node(publisher_node).http_addr(),
        &id,
        holder,
        CONNECT_DEADLINE,
    )
    .await;
    let mut publisher =
        RawClient::v5(cluster.node(publisher_node).mqtt_addr(), &unique_id("pub")).await;

    cluster.kill9(holder);
    drop(old);
    let want: BTreeSet<String> = (1..=n).map(|i| format!("m{i}")).collect();
    let to = format!("{topic}/x");
    for i in 1..=n {
        let payload = format!("m{i}");
        publisher
            .publish(&Publish::new(&to, 1, payload.as_bytes()).pkid(i as u16))
            .await;
    }
    HeldForDeadHolder {
        persistent,
        id,
        publisher,
        want,
    }
}

/// The client resumes its session on `taker` (Session Present) and `observer`'s registry
/// says so.
async fn resume_on(
    cluster: &TestCluster,
    taker: u64,
    observer: u64,
    held: &HeldForDeadHolder,
) -> RawClient {
    let (new, present) = connect_within(
        cluster.node(taker).mqtt_addr(),
        &held.persistent,
        CONNECT_DEADLINE,
    )
    .await;
    assert!(present, "the session is kept in the registry");
    wait_owner(
        cluster.node(observer).http_addr(),
        &held.id,
        taker,
        CONNECT_DEADLINE,
    )
    .await;
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_resent_to_a_restarted_node_reaches_the_session_that_moved_away() {
    const N: usize = 5;
    // Not marked down while it is away (the chaos suite's kill was 2.5 s, under the
    // 3 s default): node-down adoption has tests of its own.
    let mut cluster =
        TestCluster::start_with(3, |_, b| b.env("SKEIN_NODE_DOWN_AFTER_MS", 600_000)).await;
    // The killed node is not the leader: the takeover's registration needs no election.
    let leader = cluster.leader(&cluster.ids(), CONNECT_DEADLINE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (holder, taker, publisher_node) = (others[0], others[1], leader);

    let held =
        hold_forwards_for_a_dead_holder(&mut cluster, holder, publisher_node, "moved", N).await;
    // The client resumes its session on the taker; the dead holder hands nothing over.
    let mut new = resume_on(&cluster, taker, publisher_node, &held).await;
    let HeldForDeadHolder {
        mut publisher,
        want,
        ..
    } = held;
    // The holder comes back with the session on its disk; the queued forwards are sent
    // to it again.
    cluster.restart(holder);

    for (pkid, reason) in pubacks(&mut publisher, N).await {
        eprintln!("PUBACK m{pkid}: reason {reason:#x}");
    }
    // Whatever the PUBACKs said (a publisher is told 0x80 after 5 s, its message still
    // queued), every message reaches the subscriber: none is acknowledged by the
    // restarted holder for a session that is not there any more.
    assert_all_arrive(
        &mut new,
        &want,
        (
            cluster.node(holder).http_addr(),
            "skein_session_moved_away_redirects_total",
            &["outcome=\"sent\""],
        ),
        "redirected by the holder",
    )
    .await;
}

/// The same move, but the dead holder stays dead until the cluster marks it down (the
/// chaos suite's seed 42, 100 rounds: every subscriber that left a SIGKILLed node before
/// its mark lost what was held for that node). The mark empties the publisher's node's
/// queue for the dead node into forwards to the adopters of its sessions, and this session
/// is nobody's adoptee (its client had connected elsewhere): before, the messages went to
/// no node and were acknowledged. Now every live member gets them, for the sessions that
/// came from the dead node (adopted, or taken over while it could not hand them over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_held_for_a_node_marked_down_reach_a_session_that_left_it_before_the_mark() {
    const N: usize = 5;
    // Long enough for the takeover to register before the mark (the hand-over waits 1 s
    // for the unreachable holder), short enough for the test.
    const NODE_DOWN_AFTER_MS: u64 = 4000;
    let mut cluster = TestCluster::start_with(3, |_, b| {
        b.env("SKEIN_NODE_DOWN_AFTER_MS", NODE_DOWN_AFTER_MS)
    })
    .await;
    let leader = cluster.leader(&cluster.ids(), CONNECT_DEADLINE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (holder, taker, publisher_node) = (others[0], others[1], leader);

    // Routed to the dead holder: held in the publisher's node's queue for it.
    let held =
        hold_forwards_for_a_dead_holder(&mut cluster, holder, publisher_node, "marked", N).await;
    // The client resumes its session on the taker before the mark: not adopted.
    let mut new = resume_on(&cluster, taker, publisher_node, &held).await;
    let want = held.want;

    // The holder never comes back: only the mark's redirect can bring them.
    assert_all_arrive(
        &mut new,
        &want,
        (
            cluster.node(publisher_node).http_addr(),
            "skein_cluster_forwards_redirected_total",
            &[],
        ),
        "redirected from the dead node's queue",
    )
    .await;
}

/// A forward held for a node across two restarts of it (the chaos suite's seed 42, 100
/// rounds: node 2 SIGKILLed twice in a row, four subscribers lost what node 1 held for
/// it). Between the restarts the session moved away with a whole hand-over, so the node
/// deleted it; the third process had nothing of it, not even the memory that it moved
/// away (in the second process only): the held forward matched nothing there and was
/// acknowledged. Now that memory is stored and read back at start.
///
/// The publisher's node is SIGSTOPped while the forward is held, so that it reaches only
/// the third process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_held_across_two_restarts_reaches_the_session_that_moved_away_between_them() {
    const N: usize = 3;
    let mut cluster =
        TestCluster::start_with(3, |_, b| b.env("SKEIN_NODE_DOWN_AFTER_MS", 600_000)).await;
    // The taker leads: the registrations need it and the holder only (the publisher's
    // node is stopped meanwhile).
    let leader = cluster.leader(&cluster.ids(), CONNECT_DEADLINE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (holder, publisher_node, taker) = (others[0], others[1], leader);

    let held =
        hold_forwards_for_a_dead_holder(&mut cluster, holder, publisher_node, "twice", N).await;
    // Routed (to the dead holder) before the publisher's node stops. The forward queue's
    // depth gauge shows what is held for a peer only as its stream retries (1 here, not
    // N), so this is a margin, not a condition.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut paused = Paused::stop(cluster.node(publisher_node).pid());

    // The holder's second process; the client resumes on the taker, which fetches the
    // session whole from it (the holder seals and deletes its copy).
    cluster.restart(holder);
    let mut new = resume_on(&cluster, taker, holder, &held).await;
    let want = held.want;
    // The third process; then the held forwards are sent to it. The second process wrote
    // its memory of the move to sled, durable with sled's next background flush (every
    // 500 ms): nothing outside the process shows when that happened, so this one wait is
    // a margin of three flush intervals, not a condition.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill9(holder);
    cluster.restart(holder);
    paused.resume();

    assert_all_arrive(
        &mut new,
        &want,
        (
            cluster.node(holder).http_addr(),
            "skein_session_moved_away_redirects_total",
            &["outcome=\"sent\""],
        ),
        "redirected by the holder's third process",
    )
    .await;
}

/// The same move from a holder that is paused (SIGSTOP), not dead: the chaos suite's seed
/// 42, 100 rounds on b707800 lost `p0:1427` for `chaos-sub-5` this way. The client left
/// its SIGSTOPped node for another, whose registration committed at once, while its
/// hand-over still waited for the paused holder (a call to a stopped process waits for
/// its timeout); the leader then marked the holder down and sent what it held for it
/// (the message, routed there before the takeover applied) to every live member for the
/// sessions that came from it. On the taker the session was neither adopted from the
/// holder nor yet known to have missed its hand-over (that is noted when the hand-over
/// gives up), so the message reached nobody there, and the publisher got PUBACK 0; the
/// holder, resumed, had nothing to hand over. Now a session counts as come from the node
/// it is taken over from, from the moment the CONNECT indexes it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_held_for_a_paused_holder_reach_a_taker_whose_hand_over_still_waits_at_the_mark() {
    const N: usize = 5;
    // Well inside the 3 s a hand-over call waits for the paused holder (above the 1 s
    // election timeout, as required).
    const NODE_DOWN_AFTER_MS: u64 = 1500;
    let cluster = TestCluster::start_with(3, |_, b| {
        b.env("SKEIN_NODE_DOWN_AFTER_MS", NODE_DOWN_AFTER_MS)
    })
    .await;
    let leader = cluster.leader(&cluster.ids(), CONNECT_DEADLINE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (holder, taker, publisher_node) = (others[0], others[1], leader);

    let id = unique_id("waiting");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut old, _, _) =
        RawClient::connect_ok(cluster.node(holder).mqtt_addr(), &persistent).await;
    assert_eq!(
        old.subscribe(1, &[SubFilter::new("waiting/#", 1)]).await,
        [1]
    );
    let publisher_http = cluster.node(publisher_node).http_addr();
    wait_owner(publisher_http, &id, holder, CONNECT_DEADLINE).await;
    // A subscriber on the publisher's node: once it has every message, each was routed
    // there, and so queued for the holder before the takeover below can apply there.
    let mut witness = RawClient::v5(
        cluster.node(publisher_node).mqtt_addr(),
        &unique_id("witness"),
    )
    .await;
    assert_eq!(
        witness
            .subscribe(1, &[SubFilter::new("waiting/#", 0)])
            .await,
        [0]
    );
    let mut publisher =
        RawClient::v5(cluster.node(publisher_node).mqtt_addr(), &unique_id("pub")).await;

    let mut paused = Paused::stop(cluster.node(holder).pid());
    publish_unacked(&mut publisher, "waiting/x", 1, N).await;
    let want: BTreeSet<String> = (1..=N).map(|i| format!("m{i}")).collect();
    let routed = receive_until(&mut witness, &want, CONNECT_DEADLINE).await;
    assert_eq!(routed, want, "routed on the publisher's node");

    // The client moves to the taker: registered at once (the leader and the taker are a
    // majority), CONNACK once the hand-over from the paused holder gives up; the mark
    // comes in between.
    let (mut new, present) = connect_within(
        cluster.node(taker).mqtt_addr(),
        &persistent,
        CONNECT_DEADLINE,
    )
    .await;
    assert!(present, "the session is kept in the registry");
    drop(old);
    assert_redirected_from_paused_holder(&mut publisher, publisher_http, &mut new, &want, N).await;
    paused.resume();
}

/// Forwards held for a node whose mark leaves it a session of its own (the chaos suite's
/// seed 42, 100 rounds: node 1, resumed from a 3.0 s SIGSTOP, read a waiting CONNECT of
/// `chaos-sub-4` and registered it; the leader, which had not heard from it since before
/// the pause, marked it down 0.3 s later; a registration after the last contact stays with
/// its node, so no member adopted the session). The publisher's node held messages for
/// that session in its queue for the node (its stream's window full of batches the
/// resumed node had not folded yet); the mark sent them to the live members for the
/// sessions that came from the node, none of which was this one, and they were
/// acknowledged. Now they are queued for the node again, and acknowledged once it has
/// them.
///
/// Timing: the node is resumed just before the leader's detection time (it registers the
/// client after the leader last heard from it), and the leader, its replication to the
/// node backing off after the pause, marks it down before it hears from it again (about
/// one attempt in two). An attempt where the leader heard from it first proves nothing;
/// it is said so and made again. Even in the scenario, the held messages must still be
/// unsent at the mark for b707800 to lose them (the window full of batches the resumed
/// node has not folded): with b707800's release binary 1 run of 2 lost all 5, with its
/// debug binary none of 3 did (the node took them before its mark). With the fix every
/// run in the scenario gets all of them.
///
/// Not in the default run: whether the scenario happens at all is up to the machine's
/// timing (on main's merged tree, with the suite's other binaries building beside it, 8
/// attempts in a row had the leader hear from the node first). Run it with `cargo test -p
/// skein-tests --test cluster_moved_forwards -- --ignored`; the chaos suite's 100-round
/// runs (chaos/README.md) cover the same path under real faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-dependent scenario (the leader must mark the node down before it hears from it again); run with --ignored"]
async fn forwards_held_for_a_node_marked_down_reach_the_session_it_registered_after_its_last_contact(
) {
    const NODE_DOWN_AFTER_MS: u64 = 2000;
    const ATTEMPTS: usize = 8;
    for attempt in 1..=ATTEMPTS {
        if kept_session_gets_what_was_held(NODE_DOWN_AFTER_MS).await {
            return;
        }
        eprintln!(
            "attempt {attempt}: the leader heard from the resumed node before its mark; again"
        );
    }
    panic!("in {ATTEMPTS} attempts the leader never marked the resumed node down in time");
}

/// One attempt (see above): false when the mark did not come, or came only after the
/// leader heard from the node again (the scenario did not happen).
async fn kept_session_gets_what_was_held(node_down_after_ms: u64) -> bool {
    const HELD: usize = 5;
    // The forward stream's window (`forward.window_batches`, 4 by default).
    const WINDOW: usize = 4;
    let cluster = TestCluster::start_with(3, |_, b| {
        b.env("SKEIN_NODE_DOWN_AFTER_MS", node_down_after_ms)
    })
    .await;
    let leader = cluster.leader(&cluster.ids(), CONNECT_DEADLINE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (paused_node, publisher_node) = (others[0], others[1]);
    let paused_mqtt = cluster.node(paused_node).mqtt_addr();
    let publisher_http = cluster.node(publisher_node).http_addr();
    let leader_http = cluster.node(leader).http_addr();

    // A subscriber on the node to pause: what is published is forwarded there.
    let mut anchor = RawClient::v5(paused_mqtt, &unique_id("anchor")).await;
    assert_eq!(
        anchor.subscribe(1, &[SubFilter::new("kept/#", 0)]).await,
        [0]
    );
    // The client's session, offline on the publisher's node.
    let id = unique_id("kept");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) =
        RawClient::connect_ok(cluster.node(publisher_node).mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("kept/#", 1)]).await, [1]);
    c.disconnect().await;
    wait_owner(leader_http, &id, publisher_node, CONNECT_DEADLINE).await;
    let mut publisher =
        RawClient::v5(cluster.node(publisher_node).mqtt_addr(), &unique_id("pub")).await;

    let paused_at = Instant::now();
    let mut paused = Paused::stop(cluster.node(paused_node).pid());
    // The registry moves on without the paused node, and what the publisher's node
    // forwards to it from now on names that index: resumed, it folds before it takes
    // those batches, and they fill the stream's window meanwhile.
    drop(RawClient::v5(cluster.node(leader).mqtt_addr(), &unique_id("churn")).await);
    let churned = metric_sum(publisher_http, "skein_raft_applied_index", &[]).await;
    // One batch each (the stream is idle in between: paced, not waited on), until the
    // window of unacknowledged batches is full; the rest wait in the queue.
    for i in 1..=WINDOW {
        publish_unacked(&mut publisher, "kept/x", i, i).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_unacked(&mut publisher, "kept/x", WINDOW + 1, 20).await;
    // The client's CONNECT waits in the paused node's socket.
    let mut client = RawClient::tcp(paused_mqtt, persistent.proto).await;
    client.send(&persistent.encode()).await;
    let resume_at = paused_at + Duration::from_millis(node_down_after_ms - 100);
    tokio::time::sleep_until(resume_at.into()).await;
    paused.resume();
    // Registered by the resumed node (after the leader last heard from it), as the
    // publisher's node sees it: what is published now is routed there for the client.
    wait_owner(publisher_http, &id, paused_node, CONNECT_DEADLINE).await;
    publish_unacked(&mut publisher, "kept/x", 21, 20 + HELD).await;
    let acks = pubacks(&mut publisher, 20 + HELD).await;
    let marked = metric_sum(leader_http, "skein_nodes_marked_down_total", &[]).await;
    let adopted = metric_sum(leader_http, "skein_sessions_adopted_total", &[]).await
        + metric_sum(publisher_http, "skein_sessions_adopted_total", &[]).await;
    eprintln!("churned to index {churned}; marked down {marked}, sessions adopted {adopted}; PUBACKs (packet id, reason): {acks:?}");
    let owner_now = {
        let path = format!("/api/v1/clients/{id}");
        let (_, text) = skein_tests::http_request(leader_http, "GET", &path, &[], "")
            .await
            .expect("GET the client");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["node_id"].as_u64()
    };
    if marked < 1.0 || owner_now != Some(paused_node) {
        eprintln!("not the scenario: marked {marked}, owner now {owner_now:?}");
        return false;
    }
    let want: BTreeSet<String> = acks
        .iter()
        .filter(|(pkid, reason)| *pkid as usize > 20 && *reason == 0)
        .map(|(pkid, _)| format!("m{pkid}"))
        .collect();
    match client.recv(CONNECT_DEADLINE).await {
        Ok(Packet::ConnAck { code: 0, .. }) => {}
        other => panic!("the waiting CONNECT was answered {other:?}"),
    }
    assert_all_arrive(
        &mut client,
        &want,
        (
            publisher_http,
            "skein_cluster_forwards_redirected_total",
            &[],
        ),
        "redirected from the marked node's queue",
    )
    .await;
    drop(anchor);
    true
}

/// Forwards held for a paused node reach a session that left it twice: first for a node
/// whose hand-over from it gave up, then for a third node, whose hand-over was still
/// waiting for the paused node (named by the second one as an earlier holder) when the
/// leader marked it down (issue 14, the chaos suite's seed 7: `p2:874` for
/// `chaos-sub-0`). The mark's redirect goes to the sessions that came from the dead node;
/// the second node's session was sealed by the hand-over, and the third's came from the
/// second. Now the third node's session counts as come from every holder its hand-over
/// is told of.
///
/// Timing (measured on the shared 2-core machine): the first taker's CONNACK comes about
/// 6 s after the pause (its registration, then its hand-over from the paused holder gives
/// up), the second's about 4.5 s later (its hand-over fetches from the first taker, then
/// waits for the holder). The mark, 8 s after the last contact, falls in that wait. The
/// publisher's node gives up on its forwards to the paused node after 5 s, so the
/// publisher may be told 0x80; the messages are still held for the node, and must reach
/// the session all the same. With the hand-over's note left out, 3 runs of 3 lost all 5;
/// with it, every run got them. A mark that comes before the first CONNACK (a slower
/// machine) takes the path `forwards_held_for_a_paused_holder_reach_a_taker_whose_hand_over_still_waits_at_the_mark`
/// covers, and passes without proving this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_held_for_a_paused_holder_reach_a_second_taker_whose_hand_over_still_waits_at_the_mark(
) {
    const N: usize = 5;
    const NODE_DOWN_AFTER_MS: u64 = 8000;
    let cluster = TestCluster::start_with(3, |_, b| {
        b.env("SKEIN_NODE_DOWN_AFTER_MS", NODE_DOWN_AFTER_MS)
    })
    .await;
    let leader = cluster.leader(&cluster.ids(), CONNECT_DEADLINE).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (holder, first_taker, second_taker) = (others[0], others[1], leader);

    let id = unique_id("twice");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut old, _, _) =
        RawClient::connect_ok(cluster.node(holder).mqtt_addr(), &persistent).await;
    assert_eq!(old.subscribe(1, &[SubFilter::new("twice/#", 1)]).await, [1]);
    let publisher_http = cluster.node(leader).http_addr();
    wait_owner(publisher_http, &id, holder, CONNECT_DEADLINE).await;
    // Once the witness (on the publisher's node) has every message, each was routed
    // there, and so queued for the holder before any takeover applied there.
    let mut witness = RawClient::v5(cluster.node(leader).mqtt_addr(), &unique_id("witness")).await;
    assert_eq!(
        witness.subscribe(1, &[SubFilter::new("twice/#", 0)]).await,
        [0]
    );
    let mut publisher = RawClient::v5(cluster.node(leader).mqtt_addr(), &unique_id("pub")).await;

    let mut paused = Paused::stop(cluster.node(holder).pid());
    publish_unacked(&mut publisher, "twice/x", 1, N).await;
    let want: BTreeSet<String> = (1..=N).map(|i| format!("m{i}")).collect();
    let routed = receive_until(&mut witness, &want, CONNECT_DEADLINE).await;
    assert_eq!(routed, want, "routed on the publisher's node");

    let (first, present) = connect_within(
        cluster.node(first_taker).mqtt_addr(),
        &persistent,
        CONNECT_DEADLINE,
    )
    .await;
    assert!(present, "the session is kept in the registry");
    let gave_up = metric_sum(
        cluster.node(first_taker).http_addr(),
        "skein_session_handover_failures_total",
        &[],
    )
    .await;
    assert!(
        gave_up >= 1.0,
        "the first taker's hand-over from the paused holder gave up"
    );
    let (mut second, present) = connect_within(
        cluster.node(second_taker).mqtt_addr(),
        &persistent,
        CONNECT_DEADLINE,
    )
    .await;
    assert!(present, "the session is kept in the registry");
    drop((old, first));
    assert_redirected_from_paused_holder(&mut publisher, publisher_http, &mut second, &want, N)
        .await;
    paused.resume();
}
