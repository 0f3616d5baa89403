//! Persistent sessions moving between nodes with real processes: a client that resumes
//! its session on another node gets the messages queued and in flight for it on the old
//! node, exactly once and in order, and the old node keeps none of them; racing CONNECTs
//! of one persistent client leave one owner with every message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skein_tests::codec::{puback, pubcomp, pubrec};
use skein_tests::{
    metric_sum, unique_id, Connect, Packet, Publish, RawClient, SubFilter, TestCluster, QUIET,
    RECV_TIMEOUT,
};

/// How long the counters and gauges of a node may take to show what happened.
const SETTLE: Duration = Duration::from_secs(10);

/// Publishes at QoS 1 and waits for the PUBACK: the message is stored for every offline
/// persistent subscriber once this returns.
async fn publish_acked(p: &mut RawClient, topic: &str, payload: &[u8], pkid: u16) {
    p.publish(&Publish::new(topic, 1, payload).pkid(pkid)).await;
    let ack = p
        .recv_matching(
            RECV_TIMEOUT,
            |x| matches!(x, Packet::PubAck { pkid: id, .. } if *id == pkid),
        )
        .await;
    assert!(
        matches!(ack, Packet::PubAck { reason: 0, .. }),
        "PUBACK {ack:?}"
    );
}

fn payload(i: usize) -> Vec<u8> {
    format!("m{i}").into_bytes()
}

/// Waits until `name` (summed over the series with `labels`) on the node at `http` is
/// `expected`; panics with the last value seen.
async fn wait_metric(http: SocketAddr, name: &str, labels: &[&str], expected: f64) {
    let end = Instant::now() + SETTLE;
    loop {
        let seen = metric_sum(http, name, labels).await;
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < end,
            "{name}{labels:?} is {seen}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session with nothing queued or in flight leaves the node it moved away from at once:
/// no release follows an empty hand-over, and a roaming client must not leave a session
/// behind on every node it visited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_nothing_to_hand_over_is_forgotten_by_the_node_it_left() {
    let cluster = TestCluster::start(3).await;
    let persistent = Connect::v5(&unique_id("roamer"))
        .clean(false)
        .session_expiry(3600);
    let old_http = cluster.node(1).http_addr();
    let (mut c, _, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("roam/#", 1)]).await, [1]);
    c.disconnect().await;
    wait_metric(old_http, "skein_sessions", &["state=\"offline\""], 1.0).await;

    let (mut c, present, _) = RawClient::connect_ok(cluster.node(2).mqtt_addr(), &persistent).await;
    assert!(present, "Session Present = 1 on the taking node");
    wait_metric(old_http, "skein_sessions", &[], 0.0).await;
    // The subscription came along (from the registry): a publish on node 1 reaches it.
    let mut publisher = RawClient::v5(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    publish_acked(&mut publisher, "roam/x", b"here", 1).await;
    let m = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(m.payload, b"here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_move_to_the_node_that_takes_the_session_over_once_and_in_order() {
    const N: usize = 300;
    let mut cluster = TestCluster::start(3).await;
    let id = unique_id("mover");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("hand/#", 1)]).await, [1]);
    c.disconnect().await;

    // Queued on node 1's disk, published on node 3 (forwarded to node 1).
    let mut publisher = RawClient::v5(cluster.node(3).mqtt_addr(), &unique_id("pub")).await;
    for i in 1..=N {
        publish_acked(&mut publisher, "hand/x", &payload(i), i as u16).await;
    }
    let old_http = cluster.node(1).http_addr();
    wait_metric(old_http, "skein_queued_messages", &[], N as f64).await;

    let started = Instant::now();
    let (mut c, present, _) = RawClient::connect_ok(cluster.node(2).mqtt_addr(), &persistent).await;
    eprintln!(
        "CONNACK after taking {N} messages over in {:?}",
        started.elapsed()
    );
    assert!(present, "Session Present = 1 on the taking node");
    for i in 1..=N {
        let m = c.expect_publish(RECV_TIMEOUT).await;
        assert_eq!(
            String::from_utf8_lossy(&m.payload),
            format!("m{i}"),
            "message {i} in order"
        );
        assert!(!m.dup, "message {i} was queued, never sent: no DUP");
        assert_eq!(m.qos, 1);
        c.send(&puback(m.pkid)).await;
    }
    c.expect_no_publish(QUIET).await;

    // The old node deleted what it handed over, the new one counted what it took.
    wait_metric(old_http, "skein_queued_messages", &[], 0.0).await;
    wait_metric(
        old_http,
        "skein_session_handover_messages_total",
        &["role=\"released\""],
        N as f64,
    )
    .await;
    let new_http = cluster.node(2).http_addr();
    wait_metric(
        new_http,
        "skein_session_handover_messages_total",
        &["role=\"taken\""],
        N as f64,
    )
    .await;
    assert_eq!(
        metric_sum(new_http, "skein_session_handover_failures_total", &[]).await,
        0.0
    );

    // The subscription works on the new node.
    publish_acked(&mut publisher, "hand/y", b"after", 1).await;
    assert_eq!(c.expect_publish(RECV_TIMEOUT).await.payload, b"after");

    // Nothing comes back from node 1's disk when it restarts.
    let status = cluster.terminate(1);
    assert!(status.success(), "SIGTERM exit: {status:?}");
    cluster.restart(1);
    cluster.wait_formed(3, Duration::from_secs(30)).await;
    let restarted = cluster.node(1).http_addr();
    assert_eq!(
        metric_sum(restarted, "skein_queued_messages", &[]).await,
        0.0
    );
    assert_eq!(
        metric_sum(restarted, "skein_inflight_messages", &[]).await,
        0.0
    );
    c.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_messages_are_resent_with_dup_under_their_packet_ids_on_the_new_node() {
    let cluster = TestCluster::start(3).await;
    let (old, new) = (cluster.node(1), cluster.node(2));
    let id = unique_id("inflight");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(old.mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("inf/#", 2)]).await, [2]);

    let mut publisher = RawClient::v5(old.mqtt_addr(), &unique_id("pub")).await;
    publish_acked(&mut publisher, "inf/a", b"a", 1).await;
    let a = c.expect_publish(RECV_TIMEOUT).await;
    // QoS 2: PUBREC sent, PUBREL received, PUBCOMP never sent.
    publisher
        .publish(&Publish::new("inf/b", 2, b"b").pkid(2))
        .await;
    let b = c.expect_publish(RECV_TIMEOUT).await;
    c.send(&pubrec(b.pkid)).await;
    let rel = c
        .recv_matching(RECV_TIMEOUT, |p| matches!(p, Packet::PubRel { .. }))
        .await;
    assert!(matches!(rel, Packet::PubRel { pkid, .. } if pkid == b.pkid));
    // QoS 2 received, not acknowledged at all.
    publisher
        .publish(&Publish::new("inf/c", 2, b"c").pkid(3))
        .await;
    let c2 = c.expect_publish(RECV_TIMEOUT).await;
    // QoS 1 acknowledged: done, not handed over.
    publish_acked(&mut publisher, "inf/d", b"d", 4).await;
    let d = c.expect_publish(RECV_TIMEOUT).await;
    c.send(&puback(d.pkid)).await;
    assert_eq!(
        [
            &a.payload[..],
            &b.payload[..],
            &c2.payload[..],
            &d.payload[..]
        ],
        [b"a", b"b", b"c", b"d"]
    );
    wait_metric(old.http_addr(), "skein_inflight_messages", &[], 3.0).await;
    // The connection is lost (no DISCONNECT) and one more message is queued meanwhile
    // (or, if node 1 has not noticed yet, sent to the dead socket: in flight).
    c.drop_connection();
    publish_acked(&mut publisher, "inf/e", b"e", 5).await;

    let (mut c, present, _) = RawClient::connect_ok(new.mqtt_addr(), &persistent).await;
    assert!(present);
    // In the order they were first sent: a again (DUP, same id), b's PUBREL, c again.
    let again = c.expect(RECV_TIMEOUT).await;
    let Packet::Publish(a2) = again else {
        panic!("expected a's resend, got {again:?}")
    };
    assert_eq!(
        (a2.payload.as_slice(), a2.pkid, a2.dup),
        (&b"a"[..], a.pkid, true)
    );
    let rel = c.expect(RECV_TIMEOUT).await;
    assert!(
        matches!(rel, Packet::PubRel { pkid, .. } if pkid == b.pkid),
        "expected b's PUBREL, got {rel:?}"
    );
    let again = c.expect(RECV_TIMEOUT).await;
    let Packet::Publish(c3) = again else {
        panic!("expected c's resend, got {again:?}")
    };
    assert_eq!(
        (c3.payload.as_slice(), c3.pkid, c3.dup),
        (&b"c"[..], c2.pkid, true)
    );
    let e = c.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(e.payload, b"e");
    // Every flow completes on the new node.
    c.send(&puback(a2.pkid)).await;
    c.send(&pubcomp(b.pkid)).await;
    c.send(&pubrec(c3.pkid)).await;
    let rel = c
        .recv_matching(RECV_TIMEOUT, |p| matches!(p, Packet::PubRel { .. }))
        .await;
    assert!(matches!(rel, Packet::PubRel { pkid, .. } if pkid == c3.pkid));
    c.send(&pubcomp(c3.pkid)).await;
    if e.qos == 1 {
        c.send(&puback(e.pkid)).await;
    }
    c.expect_no_publish(QUIET).await;
    wait_metric(new.http_addr(), "skein_inflight_messages", &[], 0.0).await;
    wait_metric(old.http_addr(), "skein_inflight_messages", &[], 0.0).await;
    wait_metric(old.http_addr(), "skein_queued_messages", &[], 0.0).await;
}

/// What one racing connection saw before it was told to go (or until it was quiet).
struct Racer {
    node: u64,
    client: RawClient,
    publishes: Vec<Publish>,
    kicked: bool,
}

async fn watch(node: u64, mut client: RawClient) -> Racer {
    let mut publishes = Vec::new();
    let kicked = loop {
        match client.recv(QUIET).await {
            Ok(Packet::Publish(p)) => publishes.push(p),
            Ok(Packet::Disconnect { reason, .. }) => {
                assert_eq!(reason, 0x8E, "node {node}: the loser is taken over");
                break true;
            }
            Ok(other) => panic!("node {node}: {other:?}"),
            Err(skein_tests::RecvError::Timeout) => break false,
            Err(e) => panic!("node {node}: {e:?}"),
        }
    };
    Racer {
        node,
        client,
        publishes,
        kicked,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connects_of_a_persistent_session_leave_one_owner_with_every_message() {
    const QUEUED: usize = 20;
    let cluster = TestCluster::start(3).await;
    let (a, b) = (cluster.node(1).mqtt_addr(), cluster.node(2).mqtt_addr());
    let mut publisher = RawClient::v5(cluster.node(3).mqtt_addr(), &unique_id("pub")).await;
    for trial in 0..20 {
        let id = unique_id("prace");
        let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
        // The session lives on node 3 with messages queued for it there.
        let (mut c, _, _) = RawClient::connect_ok(cluster.node(3).mqtt_addr(), &persistent).await;
        let filter = format!("prace/{trial}");
        assert_eq!(c.subscribe(1, &[SubFilter::new(&filter, 1)]).await, [1]);
        c.disconnect().await;
        for i in 1..=QUEUED {
            publish_acked(&mut publisher, &filter, &payload(i), i as u16).await;
        }

        let (first, second) = tokio::join!(
            RawClient::try_connect_ok(a, &persistent),
            RawClient::try_connect_ok(b, &persistent)
        );
        let mut racers = Vec::new();
        for (node, c) in [(1, first), (2, second)] {
            // A connection may even be refused outright when it lost before its CONNACK.
            if let Ok(c) = c {
                racers.push(watch(node, c).await);
            }
        }
        let alive: Vec<&Racer> = racers.iter().filter(|r| !r.kicked).collect();
        assert_eq!(
            alive.len(),
            1,
            "trial {trial}: survivors on nodes {:?}",
            alive.iter().map(|r| r.node).collect::<Vec<_>>()
        );
        let mut survivor = racers.into_iter().find(|r| !r.kicked).unwrap();
        // Every queued message reaches the survivor, in order; what the loser was sent
        // and did not acknowledge comes again with DUP (QoS 1 allows it), nothing else
        // twice.
        let mut got = std::mem::take(&mut survivor.publishes);
        while got.len() < QUEUED {
            got.push(survivor.client.expect_publish(RECV_TIMEOUT).await);
        }
        for p in &got {
            survivor.client.send(&puback(p.pkid)).await;
        }
        let payloads: Vec<String> = got
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        let expected: Vec<String> = (1..=QUEUED).map(|i| format!("m{i}")).collect();
        assert_eq!(
            payloads, expected,
            "trial {trial}: node {} got them in order",
            survivor.node
        );
        survivor.client.expect_no_publish(QUIET).await;
        // The survivor owns the client id: a registry command of its epoch commits.
        assert_eq!(
            survivor
                .client
                .subscribe(2, &[SubFilter::new("prace/extra", 0)])
                .await,
            [0],
            "trial {trial}"
        );
        survivor.client.disconnect().await;
    }
}

/// Publishes `n` QoS 1 messages `m1`..`mn` of `size` bytes (a number, then padding) to
/// `topic`, a window at a time, each window waiting for its PUBACKs.
async fn publish_many(p: &mut RawClient, topic: &str, n: usize, size: usize) {
    const WINDOW: usize = 50;
    let mut i = 1;
    while i <= n {
        let last = (i + WINDOW - 1).min(n);
        for j in i..=last {
            let mut body = payload(j);
            body.push(b' ');
            body.resize(size.max(body.len()), b'.');
            p.publish(&Publish::new(topic, 1, &body).pkid(j as u16))
                .await;
        }
        for j in i..=last {
            let ack = p
                .recv_matching(
                    RECV_TIMEOUT,
                    |x| matches!(x, Packet::PubAck { pkid, .. } if usize::from(*pkid) == j),
                )
                .await;
            assert!(matches!(ack, Packet::PubAck { reason: 0, .. }), "{ack:?}");
        }
        i = last + 1;
    }
}

/// The number a message of [`publish_many`] carries.
fn number(p: &Publish) -> usize {
    let text = String::from_utf8_lossy(&p.payload);
    text.trim_start_matches('m')
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered message: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_hand_over_loses_nothing_and_hands_the_rest_over_when_back() {
    // Under the default queue bound (1000); about four pages of 1 MiB.
    const N: usize = 900;
    let mut cluster = TestCluster::start(3).await;
    // Holder and taker are followers: the registration survives the kill.
    let leader = cluster.leader(&cluster.ids(), RECV_TIMEOUT).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    let (holder, taker) = (others[0], others[1]);
    let id = unique_id("killed");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut c, _, _) = RawClient::connect_ok(cluster.node(holder).mqtt_addr(), &persistent).await;
    assert_eq!(c.subscribe(1, &[SubFilter::new("kill/#", 1)]).await, [1]);
    c.disconnect().await;
    let mut publisher = RawClient::v5(cluster.node(leader).mqtt_addr(), &unique_id("pub")).await;
    publish_many(&mut publisher, "kill/x", N, 4096).await;
    wait_metric(
        cluster.node(holder).http_addr(),
        "skein_queued_messages",
        &[],
        N as f64,
    )
    .await;

    // The holder dies while the taker fetches its pages.
    let taker_addr = cluster.node(taker).mqtt_addr();
    let connect = tokio::spawn({
        let persistent = persistent.clone();
        async move { RawClient::connect_ok(taker_addr, &persistent).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    cluster.kill9(holder);
    let (mut c, present, _) = connect.await.unwrap();
    assert!(present);
    let mut got = Vec::new();
    while let Ok(Packet::Publish(p)) = c.recv(Duration::from_secs(2)).await {
        c.send(&puback(p.pkid)).await;
        got.push(number(&p));
    }
    let before_restart = got.len();
    eprintln!("{before_restart} of {N} messages reached the taker before the holder came back");

    // Back, the holder hands the rest over to the owner (deleting what the taker had
    // written already before the kill, not sending it twice).
    cluster.restart(holder);
    let end = Instant::now() + Duration::from_secs(60);
    while got.len() < N {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{} of {N} messages arrived", got.len());
        match c.recv(left).await {
            Ok(Packet::Publish(p)) => {
                c.send(&puback(p.pkid)).await;
                got.push(number(&p));
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => panic!("{} of {N} messages arrived: {e:?}", got.len()),
        }
    }
    c.expect_no_publish(QUIET).await;
    assert_eq!(got, (1..=N).collect::<Vec<_>>(), "each once, in order");
    wait_metric(
        cluster.node(holder).http_addr(),
        "skein_queued_messages",
        &[],
        0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_flowing_during_a_takeover_are_neither_lost_nor_doubled() {
    publishes_flowing_during_a_takeover(3).await;
}

/// Published on the node that takes the session over: its own publishes must reach the
/// session while the hand-over runs, before the connection attaches there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_the_taking_node_during_a_takeover_are_neither_lost_nor_doubled() {
    publishes_flowing_during_a_takeover(2).await;
}

/// A subscriber on node 1 taken over on node 2 while a publisher on `publisher_node`
/// publishes QoS 1 messages one after the other.
async fn publishes_flowing_during_a_takeover(publisher_node: u64) {
    const M: usize = 400;
    let cluster = TestCluster::start(3).await;
    let id = unique_id("flow");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut old, _, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &persistent).await;
    assert_eq!(old.subscribe(1, &[SubFilter::new("flow/#", 1)]).await, [1]);

    // One after the other, each acknowledged.
    let publisher_addr = cluster.node(publisher_node).mqtt_addr();
    let publishing = tokio::spawn(async move {
        let mut p = RawClient::v5(publisher_addr, &unique_id("pub")).await;
        for i in 1..=M {
            publish_acked(&mut p, "flow/x", &payload(i), (i % 60_000) as u16 + 1).await;
        }
    });
    let mut got = Vec::new();
    while got.len() < M / 4 {
        let p = old.expect_publish(RECV_TIMEOUT).await;
        old.send(&puback(p.pkid)).await;
        got.push((number(&p), p.dup));
    }
    // Taken over on node 2 while messages keep coming.
    let (mut new, present, _) =
        RawClient::connect_ok(cluster.node(2).mqtt_addr(), &persistent).await;
    assert!(present);
    // What reached the old connection before it was told to go (not acknowledged: it
    // comes again, with DUP).
    loop {
        match old.recv(RECV_TIMEOUT).await {
            Ok(Packet::Publish(p)) => got.push((number(&p), p.dup)),
            Ok(Packet::Disconnect { reason, .. }) => {
                assert_eq!(reason, 0x8E);
                break;
            }
            other => panic!("old connection: {other:?}"),
        }
    }
    let on_old = got.len();
    let mut on_new = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let have: std::collections::BTreeSet<usize> =
            got.iter().chain(&on_new).map(|(n, _)| *n).collect();
        if have.len() == M {
            break;
        }
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "lost: {:?}",
            (1..=M).filter(|n| !have.contains(n)).collect::<Vec<_>>()
        );
        match new.recv(left.min(Duration::from_secs(5))).await {
            Ok(Packet::Publish(p)) => {
                new.send(&puback(p.pkid)).await;
                on_new.push((number(&p), p.dup));
            }
            Ok(other) => panic!("new connection: {other:?}"),
            Err(e) => panic!(
                "new connection: {e:?}; missing {:?}",
                (1..=M).filter(|n| !have.contains(n)).collect::<Vec<_>>()
            ),
        }
    }
    tokio::time::timeout(Duration::from_secs(30), publishing)
        .await
        .expect("the publisher got every PUBACK")
        .expect("the publisher got every PUBACK");
    new.expect_no_publish(QUIET).await;
    // In order on the new connection; a message comes twice only as the DUP resend of
    // one the old connection was sent and did not acknowledge.
    let numbers: Vec<usize> = on_new.iter().map(|(n, _)| *n).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "out of order on the new node: {numbers:?}"
    );
    let unacked_on_old: Vec<usize> = got[M / 4..].iter().map(|(n, _)| *n).collect();
    for (n, dup) in &on_new {
        let seen_before = got.iter().any(|(m, _)| m == n);
        assert!(
            !seen_before || (*dup && unacked_on_old.contains(n)),
            "message {n} came twice without being a DUP resend"
        );
    }
    eprintln!(
        "{on_old} messages on the old connection, {} on the new",
        on_new.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publish_awaiting_pubrel_is_known_on_the_new_node_and_not_delivered_twice() {
    let cluster = TestCluster::start(3).await;
    let mut subscriber = RawClient::v5(cluster.node(3).mqtt_addr(), &unique_id("watcher")).await;
    assert_eq!(
        subscriber.subscribe(1, &[SubFilter::new("q2/#", 2)]).await,
        [2]
    );
    let id = unique_id("q2pub");
    let persistent = Connect::v5(&id).clean(false).session_expiry(3600);
    let (mut p, _, _) = RawClient::connect_ok(cluster.node(1).mqtt_addr(), &persistent).await;
    p.publish(&Publish::new("q2/x", 2, b"once").pkid(7)).await;
    let rec = p.expect(RECV_TIMEOUT).await;
    assert!(
        matches!(
            rec,
            Packet::PubRec {
                pkid: 7,
                reason: 0,
                ..
            }
        ),
        "{rec:?}"
    );
    let got = subscriber.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(got.payload, b"once");
    subscriber.send(&pubrec(got.pkid)).await;
    // Gone before its PUBREL; back on another node.
    p.drop_connection();
    let (mut p, present, _) = RawClient::connect_ok(cluster.node(2).mqtt_addr(), &persistent).await;
    assert!(present);
    // A resend of the PUBLISH is recognised: acknowledged, not delivered again.
    p.publish(&Publish::new("q2/x", 2, b"once").pkid(7).dup(true))
        .await;
    let rec = p.expect(RECV_TIMEOUT).await;
    assert!(
        matches!(
            rec,
            Packet::PubRec {
                pkid: 7,
                reason: 0,
                ..
            }
        ),
        "{rec:?}"
    );
    subscriber.expect_no_publish(QUIET).await;
    // Its PUBREL finds the id (MQTT 5 would say 0x92 Packet Identifier not found).
    p.send(&skein_tests::codec::pubrel(7)).await;
    let comp = p.expect(RECV_TIMEOUT).await;
    assert!(
        matches!(
            comp,
            Packet::PubComp {
                pkid: 7,
                reason: 0,
                ..
            }
        ),
        "{comp:?}"
    );
}
