//! SUBSCRIBE / UNSUBSCRIBE, wildcards, `$` topics, shared subscriptions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use skein_tests::clients::{v3, v5};
use skein_tests::{Connect, Node, Proto, Publish, RawClient, SubFilter, QUIET, RECV_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_grants_requested_qos_per_filter() {
    let node = Node::start();
    for proto in [Proto::V311, Proto::V5] {
        let (mut c, _, _) =
            RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, "granted")).await;
        let codes = c
            .subscribe(
                7,
                &[
                    SubFilter::new("g/0", 0),
                    SubFilter::new("g/1", 1),
                    SubFilter::new("g/2", 2),
                ],
            )
            .await;
        assert_eq!(codes, vec![0, 1, 2], "{proto:?}");
        c.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filter_rejected_only_for_that_filter() {
    let node = Node::start();
    for (proto, failure) in [(Proto::V311, 0x80u8), (Proto::V5, 0x8F)] {
        let (mut c, _, _) =
            RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, "badfilter")).await;
        let codes = c
            .subscribe(
                3,
                &[
                    SubFilter::new("ok/1", 1),
                    SubFilter::new("a/#/b", 1),
                    SubFilter::new("ok/2", 2),
                ],
            )
            .await;
        assert_eq!(codes, vec![1, failure, 2], "{proto:?}: SUBACK codes");
        // the valid filters work and the connection is still alive
        let mut publ = RawClient::v311(node.mqtt_addr(), "badfilter-pub").await;
        publ.publish(&Publish::new("ok/1", 0, b"fine")).await;
        let p = c.expect_publish(RECV_TIMEOUT).await;
        assert_eq!(p.topic, "ok/1");
        c.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_invalid_filters_rejected() {
    let node = Node::start();
    let mut c = RawClient::v311(node.mqtt_addr(), "badfilters").await;
    let bad = ["a/b#", "a/+b", "#/a", "a+/b"];
    let filters: Vec<SubFilter> = bad.iter().map(|f| SubFilter::new(f, 0)).collect();
    let codes = c.subscribe(1, &filters).await;
    assert_eq!(codes, vec![0x80; bad.len()], "filters {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_per_spec() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let mut plus = v3::Client::connect(addr, "plus").await;
    plus.subscribe_many(&[
        ("s/+/x", v3::QoS::AtLeastOnce),
        ("end", v3::QoS::AtLeastOnce),
    ])
    .await;
    let mut hash = v3::Client::connect(addr, "hash").await;
    hash.subscribe_many(&[("w/#", v3::QoS::AtLeastOnce), ("end", v3::QoS::AtLeastOnce)])
        .await;
    let mut plus_only = v3::Client::connect(addr, "plusonly").await;
    plus_only
        .subscribe_many(&[("+", v3::QoS::AtLeastOnce), ("+/+", v3::QoS::AtLeastOnce)])
        .await;

    let mut publ = v3::Client::connect(addr, "wpub").await;
    let topics = [
        "s/a/x", "s/b/x", "s//x", "s/a/b/x", "s/x", "s/a/y", "w", "w/a", "w/a/b", "ww/a", "/w",
    ];
    for t in topics {
        publ.publish(t, v3::QoS::AtLeastOnce, false, t).await;
    }
    publ.publish("end", v3::QoS::AtLeastOnce, false, "end")
        .await;

    async fn until_end(c: &mut v3::Client) -> BTreeSet<String> {
        let mut got = BTreeSet::new();
        loop {
            let p = c.recv().await;
            if p.topic == "end" {
                return got;
            }
            assert!(
                got.insert(p.topic.clone()),
                "duplicate delivery of {}",
                p.topic
            );
        }
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        until_end(&mut plus).await,
        set(&["s/a/x", "s/b/x", "s//x"]),
        "s/+/x"
    );
    assert_eq!(
        until_end(&mut hash).await,
        set(&["w", "w/a", "w/a/b"]),
        "w/# (must match the parent w)"
    );

    // "+" matches the one-level topics "w" and "end"; "+/+" matches "s/x", "w/a", "ww/a", "/w"
    let mut got = BTreeSet::new();
    for _ in 0..6 {
        got.insert(plus_only.recv().await.topic);
    }
    assert_eq!(
        got,
        set(&["w", "end", "s/x", "w/a", "ww/a", "/w"]),
        "+ and +/+"
    );
    plus_only.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_not_matched_by_leading_wildcards() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let mut all = v3::Client::connect(addr, "all").await;
    all.subscribe("#", v3::QoS::AtLeastOnce).await;
    let mut plus = v3::Client::connect(addr, "plusx").await;
    plus.subscribe("+/x", v3::QoS::AtLeastOnce).await;
    let mut direct = v3::Client::connect(addr, "direct").await;
    direct.subscribe("$app/x", v3::QoS::AtLeastOnce).await;

    let mut publ = v3::Client::connect(addr, "dpub").await;
    // A client publishing into $SYS may be refused by the broker (dropped or
    // disconnected); publish it from a throwaway raw connection.
    let mut sys = RawClient::v311(addr, "syspub").await;
    sys.publish(&Publish::new("$SYS/x", 0, b"sys")).await;
    sys.disconnect().await;
    publ.publish("$app/x", v3::QoS::AtLeastOnce, false, "app")
        .await;
    assert_eq!(
        direct.recv().await.topic,
        "$app/x",
        "explicit $ subscription must match"
    );
    publ.publish("s/x", v3::QoS::AtLeastOnce, false, "sentinel")
        .await;

    assert_eq!(all.recv().await.topic, "s/x", "# must not match $ topics");
    assert_eq!(
        plus.recv().await.topic,
        "s/x",
        "+/x must not match $ topics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let node = Node::start();
    let mut c = v3::Client::connect(node.mqtt_addr(), "unsub").await;
    c.subscribe_many(&[
        ("u/t", v3::QoS::AtLeastOnce),
        ("u/end", v3::QoS::AtLeastOnce),
    ])
    .await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "unsub-pub").await;
    publ.publish("u/t", v3::QoS::AtLeastOnce, false, "before")
        .await;
    assert_eq!(&c.recv().await.payload[..], b"before");

    c.unsubscribe("u/t").await;
    publ.publish("u/t", v3::QoS::AtLeastOnce, false, "after")
        .await;
    publ.publish("u/end", v3::QoS::AtLeastOnce, false, "sentinel")
        .await;
    let p = c.recv().await;
    assert_eq!(
        p.topic, "u/end",
        "message delivered after UNSUBSCRIBE: {p:?}"
    );

    // UNSUBACK for a filter that was never subscribed is still sent (v5: 0x11)
    let mut raw = RawClient::v5(node.mqtt_addr(), "unsub5").await;
    raw.send(&skein_tests::codec::unsubscribe(
        Proto::V5,
        9,
        &["never/subscribed"],
    ))
    .await;
    match raw.expect(RECV_TIMEOUT).await {
        skein_tests::Packet::UnsubAck { pkid: 9, codes, .. } => {
            assert_eq!(
                codes,
                vec![0x11],
                "v5 UNSUBACK reason for a missing subscription"
            )
        }
        other => panic!("expected UNSUBACK 9, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribe_replaces_qos() {
    let node = Node::start();
    let mut c = v3::Client::connect(node.mqtt_addr(), "resub").await;
    c.subscribe("r/t", v3::QoS::ExactlyOnce).await;
    c.subscribe("r/t", v3::QoS::AtMostOnce).await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "resub-pub").await;
    publ.publish("r/t", v3::QoS::ExactlyOnce, false, "x").await;
    let p = c.recv().await;
    assert_eq!(
        p.qos,
        v3::QoS::AtMostOnce,
        "the second SUBSCRIBE replaces the first"
    );
    c.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_round_robin() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let mut m1 = v5::Client::connect(addr, "member1").await;
    let mut m2 = v5::Client::connect(addr, "member2").await;
    for m in [&mut m1, &mut m2] {
        let code = m.subscribe("$share/g/sh/t", v5::QoS::AtLeastOnce).await;
        assert_eq!(code, v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce));
    }
    let mut normal = v5::Client::connect(addr, "normal").await;
    normal.subscribe("sh/t", v5::QoS::AtLeastOnce).await;

    let mut publ = v5::Client::connect(addr, "sh-pub").await;
    for i in 0..10 {
        publ.publish("sh/t", v5::QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }

    let all: Vec<String> = normal
        .recv_n(10)
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(
        all,
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "normal subscriber gets all, in order"
    );

    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + RECV_TIMEOUT;
    while got1.len() + got2.len() < 10 && Instant::now() < deadline {
        tokio::select! {
            p = m1.recv_within(RECV_TIMEOUT) => got1.push(String::from_utf8_lossy(&p.payload).into_owned()),
            p = m2.recv_within(RECV_TIMEOUT) => got2.push(String::from_utf8_lossy(&p.payload).into_owned()),
        }
    }
    m1.expect_no_publish(QUIET).await;
    m2.expect_no_publish(QUIET).await;
    let mut union: Vec<String> = got1.iter().chain(got2.iter()).cloned().collect();
    union.sort_by_key(|s| s[1..].parse::<u32>().unwrap());
    assert_eq!(
        union,
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "each message to exactly one member: m1={got1:?} m2={got2:?}"
    );
    assert_eq!(
        (got1.len(), got2.len()),
        (5, 5),
        "round robin over 2 members: m1={got1:?} m2={got2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_member_leaving_gets_no_more() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let mut m1 = v5::Client::connect(addr, "leave1").await;
    let mut m2 = v5::Client::connect(addr, "leave2").await;
    m1.subscribe("$share/g2/lv", v5::QoS::AtLeastOnce).await;
    m2.subscribe("$share/g2/lv", v5::QoS::AtLeastOnce).await;
    m2.unsubscribe("$share/g2/lv").await;
    let mut publ = v5::Client::connect(addr, "leave-pub").await;
    for i in 0..4 {
        publ.publish("lv", v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    assert_eq!(
        m1.recv_n(4).await.len(),
        4,
        "remaining member gets everything"
    );
    m2.expect_no_publish(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_per_session_limit_are_refused() {
    let node = Node::builder()
        .env("SKEIN_MAX_SUBSCRIPTIONS_PER_SESSION", "2")
        .start();
    for (proto, refused) in [(Proto::V311, 0x80u8), (Proto::V5, 0x97)] {
        let (mut c, _, _) =
            RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, "sublimit")).await;
        let codes = c
            .subscribe(
                1,
                &[
                    SubFilter::new("l/1", 1),
                    SubFilter::new("l/2", 1),
                    SubFilter::new("l/3", 1),
                ],
            )
            .await;
        assert_eq!(codes, vec![1, 1, refused], "{proto:?}");
        // Replacing an existing subscription is not a new one.
        let codes = c.subscribe(2, &[SubFilter::new("l/2", 2)]).await;
        assert_eq!(codes, vec![2], "{proto:?}");
        c.disconnect().await;
    }
}
