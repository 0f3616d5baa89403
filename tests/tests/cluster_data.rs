//! The cluster's data plane with real processes: a publish accepted on one node reaches
//! subscribers on the others (QoS 0/1/2, rumqttc and mosquitto clients), retained messages
//! are found on every node, a shared group gets each message once cluster-wide, a SUBACK on
//! one node is in force for a publish on another at once, forwards queued for a node
//! killed with SIGKILL are delivered once it is back, and a node that joins at runtime
//! takes part (the retained messages published before it joined included).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use skein_tests::cli::{mosquitto_pub, Sub};
use skein_tests::clients::{v3, v5};
use skein_tests::{
    metric_sum, unique_id, Connect, Packet, Proto, Publish, RawClient, SubFilter, TestCluster,
    QUIET, RECV_TIMEOUT,
};

/// How long a node that was killed may take to come back and get what was queued for it.
const BACK_DEADLINE: Duration = Duration::from_secs(30);

fn text(p: &v5::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_subscribers_on_other_nodes_at_every_qos() {
    let cluster = TestCluster::start(3).await;
    let mut on_two = v5::Client::connect(cluster.node(2).mqtt_addr(), &unique_id("sub2")).await;
    on_two.subscribe("x/#", v5::QoS::ExactlyOnce).await;
    let mut on_three = v3::Client::connect(cluster.node(3).mqtt_addr(), &unique_id("sub3")).await;
    on_three.subscribe("x/#", v3::QoS::AtLeastOnce).await;

    // A 3.1.1 publisher on node 1: its PUBACK/PUBCOMP came after both nodes took it.
    let mut publisher = v3::Client::connect(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    for (qos, q) in [
        (v3::QoS::AtMostOnce, 0u8),
        (v3::QoS::AtLeastOnce, 1),
        (v3::QoS::ExactlyOnce, 2),
    ] {
        publisher
            .publish(&format!("x/{q}"), qos, false, format!("v3-{q}"))
            .await;
    }
    // An MQTT 5 publisher on node 3 reaches node 2 too, properties intact.
    let mut v5_publisher =
        v5::Client::connect(cluster.node(3).mqtt_addr(), &unique_id("pub5")).await;
    let props = v5::PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    v5_publisher
        .publish_with("x/props", v5::QoS::AtLeastOnce, false, "v5", Some(props))
        .await;

    let got: Vec<(String, v5::QoS, String)> = on_two
        .recv_n(4)
        .await
        .iter()
        .map(|p| (v5::topic(p), p.qos, text(p)))
        .collect();
    assert_eq!(
        got,
        [
            ("x/0".into(), v5::QoS::AtMostOnce, "v3-0".into()),
            ("x/1".into(), v5::QoS::AtLeastOnce, "v3-1".into()),
            ("x/2".into(), v5::QoS::ExactlyOnce, "v3-2".into()),
            ("x/props".into(), v5::QoS::AtLeastOnce, "v5".into()),
        ]
    );
    let on_three_got: Vec<String> = on_three
        .recv_n(4)
        .await
        .iter()
        .map(|p| p.topic.clone())
        .collect();
    assert_eq!(on_three_got, ["x/0", "x/1", "x/2", "x/props"]);
    on_two.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_talk_across_nodes() {
    let cluster = TestCluster::start(3).await;
    let sub = Sub::start(
        cluster.node(3).mqtt_addr(),
        &["-t", "m/#", "-q", "2", "-C", "3", "-W", "20"],
    );
    for q in ["0", "1", "2"] {
        mosquitto_pub(
            cluster.node(1).mqtt_addr(),
            &[
                "-t",
                &format!("m/{q}"),
                "-q",
                q,
                "-m",
                &format!("hello-{q}"),
            ],
        );
    }
    let (msgs, ok) = tokio::task::spawn_blocking(move || sub.finish(Duration::from_secs(25)))
        .await
        .unwrap();
    assert!(ok, "mosquitto_sub got its 3 messages: {msgs:?}");
    let got: Vec<(String, u8, String)> = msgs
        .into_iter()
        .map(|m| (m.topic, m.qos, m.payload))
        .collect();
    assert_eq!(
        got,
        [
            ("m/0".into(), 0, "hello-0".into()),
            ("m/1".into(), 1, "hello-1".into()),
            ("m/2".into(), 2, "hello-2".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_found_on_every_node() {
    let cluster = TestCluster::start(3).await;
    // Nobody subscribes anywhere: the retained message still reaches every node.
    let mut publisher = v5::Client::connect(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish("r/1", v5::QoS::AtLeastOnce, true, "kept")
        .await;
    for id in [1, 2, 3] {
        let mut sub = v5::Client::connect(cluster.node(id).mqtt_addr(), &unique_id("late")).await;
        sub.subscribe("r/#", v5::QoS::AtLeastOnce).await;
        let p = sub.recv().await;
        assert_eq!(
            (v5::topic(&p), text(&p), p.retain),
            ("r/1".into(), "kept".into(), true)
        );
    }
    // Deleted on another node: gone everywhere once its PUBACK came.
    let mut deleter = v5::Client::connect(cluster.node(2).mqtt_addr(), &unique_id("del")).await;
    deleter.publish("r/1", v5::QoS::AtLeastOnce, true, "").await;
    for id in [1, 2, 3] {
        let mut sub = v5::Client::connect(cluster.node(id).mqtt_addr(), &unique_id("after")).await;
        sub.subscribe("r/#", v5::QoS::AtLeastOnce).await;
        sub.expect_no_publish(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_gets_each_message_once_cluster_wide() {
    let cluster = TestCluster::start(3).await;
    let mut members = Vec::new();
    for id in [1, 2, 3] {
        let mut m = v5::Client::connect(cluster.node(id).mqtt_addr(), &unique_id("member")).await;
        m.subscribe("$share/workers/jobs/+", v5::QoS::AtLeastOnce)
            .await;
        members.push((id, m));
    }
    let mut publisher = v5::Client::connect(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    const N: usize = 60;
    for i in 0..N {
        publisher
            .publish(
                &format!("jobs/{i}"),
                v5::QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await;
    }
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for (id, m) in members.iter_mut() {
        while let Some(p) = m.try_recv_within(QUIET * 3).await {
            let previous = seen.insert(text(&p), *id);
            assert!(previous.is_none(), "{} delivered twice", text(&p));
            *per_node.entry(*id).or_default() += 1;
        }
    }
    let all: BTreeSet<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "each one once"
    );
    // One member per node: a third each (a weighted round robin over the members).
    assert_eq!(per_node, BTreeMap::from([(1, 20), (2, 20), (3, 20)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suback_on_one_node_is_in_force_for_a_publish_on_another_at_once() {
    let cluster = TestCluster::start(3).await;
    let mut publisher = RawClient::v5(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    let mut subscriber = RawClient::v5(cluster.node(2).mqtt_addr(), &unique_id("sub")).await;
    for trial in 0..50u16 {
        let topic = format!("trial/{trial}");
        let suback = subscriber
            .subscribe(trial + 1, &[SubFilter::new(&topic, 1)])
            .await;
        assert_eq!(suback, [1]);
        publisher
            .publish(&Publish::new(&topic, 1, b"now").pkid(trial + 1))
            .await;
        match publisher.expect(RECV_TIMEOUT).await {
            Packet::PubAck { pkid, reason, .. } => assert_eq!((pkid, reason), (trial + 1, 0)),
            other => panic!("trial {trial}: expected PUBACK, got {other:?}"),
        }
        let p = subscriber.expect_publish(RECV_TIMEOUT).await;
        assert_eq!(p.topic, topic, "trial {trial}");
        subscriber
            .send(&skein_tests::codec::frame(0x40, &p.pkid.to_be_bytes()))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_queued_for_a_killed_node_are_delivered_once_it_is_back() {
    // Node 2 is back before the cluster marks it down: the forwards wait for it (with the
    // default node_down_after_ms they go to the adopter instead: see cluster_node_down).
    let mut cluster =
        TestCluster::start_with(3, |_, b| b.env("SKEIN_NODE_DOWN_AFTER_MS", 600_000)).await;
    let sub_id = unique_id("durable");
    let durable = Connect::v5(&sub_id).persistent(3600);
    let (mut sub, _, _) = RawClient::connect_ok(cluster.node(2).mqtt_addr(), &durable).await;
    assert_eq!(sub.subscribe(1, &[SubFilter::new("k/#", 1)]).await, [1]);
    sub.drop_connection();

    cluster.kill9(2);
    let mut publisher = RawClient::v5(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    const N: u16 = 10;
    // In one write: one read batch, whose forwards wait for node 2 together.
    let burst: Vec<u8> = (1..=N)
        .flat_map(|i| {
            Publish::new(&format!("k/{i}"), 1, format!("m{i}").as_bytes())
                .pkid(i)
                .encode(Proto::V5)
        })
        .collect();
    publisher.send(&burst).await;
    // Node 2 cannot confirm while it is down: the publisher is told so (0x80, after the
    // forward timeout) rather than held up; the messages stay queued for node 2.
    for i in 1..=N {
        match publisher.expect(Duration::from_secs(15)).await {
            Packet::PubAck { pkid, reason, .. } => {
                assert_eq!(pkid, i, "acknowledged in PUBLISH order");
                assert_eq!(reason, 0x80, "node 2 did not confirm message {i}");
            }
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }

    cluster.restart(2);
    let (mut sub, present, _) =
        RawClient::connect_ok(cluster.node(2).mqtt_addr(), &durable.clone().clean(false)).await;
    assert!(present, "the session survived on node 2's disk");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + BACK_DEADLINE;
    while got.len() < usize::from(N) && std::time::Instant::now() < deadline {
        if let Ok(Packet::Publish(p)) = sub.recv(Duration::from_secs(1)).await {
            sub.send(&skein_tests::codec::frame(0x40, &p.pkid.to_be_bytes()))
                .await;
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    let want: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "every queued publish, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_at_runtime_sends_and_gets_publishes() {
    let mut cluster = TestCluster::start(2).await;
    let mut early = v5::Client::connect(cluster.node(1).mqtt_addr(), &unique_id("early")).await;
    early
        .publish("j/kept", v5::QoS::AtLeastOnce, true, "before the join")
        .await;
    let joined = cluster.join(1).await;
    // It fetched the retained messages of a member once it joined (in the background).
    let fetched = wait_until_retained(cluster.node(joined).mqtt_addr(), "j/kept").await;
    assert_eq!(fetched, "before the join");

    let mut on_new =
        v5::Client::connect(cluster.node(joined).mqtt_addr(), &unique_id("sub-new")).await;
    on_new.subscribe("j/live/#", v5::QoS::AtLeastOnce).await;
    let mut on_old = v5::Client::connect(cluster.node(2).mqtt_addr(), &unique_id("sub-old")).await;
    on_old.subscribe("j/live/#", v5::QoS::AtLeastOnce).await;

    let mut publisher = v5::Client::connect(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    publisher
        .publish("j/live/from-1", v5::QoS::AtLeastOnce, false, "a")
        .await;
    let mut from_new =
        v5::Client::connect(cluster.node(joined).mqtt_addr(), &unique_id("pub-new")).await;
    from_new
        .publish("j/live/from-new", v5::QoS::AtLeastOnce, false, "b")
        .await;
    for sub in [&mut on_new, &mut on_old] {
        let topics: Vec<String> = sub.recv_n(2).await.iter().map(v5::topic).collect();
        assert_eq!(topics, ["j/live/from-1", "j/live/from-new"]);
    }
}

/// Subscribes to `topic` on `addr` until a retained message comes (its payload), within
/// `BACK_DEADLINE`.
async fn wait_until_retained(addr: std::net::SocketAddr, topic: &str) -> String {
    let deadline = std::time::Instant::now() + BACK_DEADLINE;
    loop {
        let mut sub = v5::Client::connect(addr, &unique_id("retained")).await;
        sub.subscribe(topic, v5::QoS::AtLeastOnce).await;
        if let Some(p) = sub.try_recv_within(QUIET).await {
            assert!(p.retain);
            return text(&p);
        }
        sub.disconnect().await;
        assert!(
            std::time::Instant::now() < deadline,
            "no retained message on {topic} at {addr} within {BACK_DEADLINE:?}"
        );
    }
}

/// Backpressure: a QoS 0 burst many times the forward queue's bound arrives whole, in
/// order, on the other node. The publisher's node stops reading while the queue to node 2
/// is over half full instead of dropping what does not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_burst_bigger_than_the_forward_queue_arrives_whole() {
    const QUEUE: usize = 200;
    const N: usize = 20_000;
    const PER_WRITE: usize = 500;
    let cluster = TestCluster::start_with(2, |_, builder| {
        builder
            .env("SKEIN_FORWARD_QUEUE_MESSAGES", QUEUE)
            .env("SKEIN_MAX_QUEUED_MESSAGES", 2 * N)
    })
    .await;
    let mut sub = RawClient::v5(cluster.node(2).mqtt_addr(), &unique_id("sub")).await;
    assert_eq!(sub.subscribe(1, &[SubFilter::new("burst/#", 0)]).await, [0]);
    let mut publisher = RawClient::v5(cluster.node(1).mqtt_addr(), &unique_id("pub")).await;
    let receiving = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            match sub.recv(Duration::from_secs(15)).await {
                Ok(Packet::Publish(p)) => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned())
                }
                Ok(_) => {}
                Err(e) => panic!("after {} of {N} messages: {e:?}", got.len()),
            }
        }
        sub.expect_no_publish(QUIET).await;
        got
    });
    for first in (0..N).step_by(PER_WRITE) {
        let writes: Vec<u8> = (first..first + PER_WRITE)
            .flat_map(|i| Publish::new("burst/x", 0, format!("m{i}").as_bytes()).encode(Proto::V5))
            .collect();
        publisher.send(&writes).await;
    }
    let got = receiving.await.expect("the subscriber got the burst");
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert!(got == want, "every message once, in order");
    let http = cluster.node(1).http_addr();
    let dropped = metric_sum(http, "skein_cluster_forward_dropped_total", &[]).await;
    assert_eq!(dropped, 0.0, "nothing dropped at the forward queue");
    let waited = metric_sum(http, "skein_cluster_forward_waited_for_room_total", &[]).await;
    assert!(
        waited > 0.0,
        "the publisher waited for room (the burst is {N}, the queue {QUEUE})"
    );
}
