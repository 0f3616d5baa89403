//! Subscriptions take effect in the order packets reach the node: client B sends SUBSCRIBE
//! without waiting for its SUBACK, then client A (already connected) sends PUBLISH on that
//! topic. B's SUBSCRIBE reached the node first, so B must get the message, once, every
//! time: whether B's or A's connection is running, idle, or parked, at either QoS, for a
//! clean or a persistent B, whether the topic has another subscriber already or not (the
//! node routes such a publish at once and hands it to B when B's SUBSCRIBE is handled),
//! and for a retained publish. Each trial uses fresh clients and a fresh topic, so nothing
//! retained or left over from an earlier trial can make it pass.

use std::time::{Duration, Instant};

use skein_tests::codec::{self, Props, SubFilter};
use skein_tests::{metric_sum, unique_id, Connect, Node, Packet, Proto, Publish, RawClient};

const TRIALS: usize = 50;
/// How long B may take to get the message once A sent it.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(2);
/// How long B is watched for a second copy.
const SECOND_COPY_WAIT: Duration = Duration::from_millis(100);
const PARK_MS: u64 = 50;

/// Which of the two clients is parked when B subscribes and A publishes.
#[derive(Debug, Clone, Copy)]
enum Parked {
    Subscriber,
    Publisher,
    Both,
}

/// What one trial publishes, and to whom.
#[derive(Debug, Clone, Copy)]
struct Setup {
    qos: u8,
    /// Another client subscribed to the topic before B (so the publish matches someone).
    witness: bool,
    /// A retained publish (with a witness: B must get it once, as a plain message).
    retain: bool,
}

impl Setup {
    /// Trial `i`'s variant: plain, with a witness, with a witness and retained.
    fn nth(i: usize, qos: u8) -> Setup {
        Setup {
            qos,
            witness: !i.is_multiple_of(3),
            retain: i % 3 == 2,
        }
    }
}

/// One trial's outcome: None when B got the message once, otherwise what went wrong.
type Failure = Option<String>;

/// B (already connected) subscribes to a fresh topic and, before its SUBACK can have
/// arrived, A (already connected) publishes on it.
async fn race(
    node: &Node,
    mut b: RawClient,
    mut a: RawClient,
    topic: &str,
    setup: Setup,
) -> Failure {
    let mut witness = match setup.witness {
        true => {
            let mut w = RawClient::v311(node.mqtt_addr(), &unique_id("ow")).await;
            w.subscribe(1, &[SubFilter::new(topic, 1)]).await;
            Some(w)
        }
        false => None,
    };
    let subscribe = codec::subscribe(b.proto, 1, &[SubFilter::new(topic, 1)], &Props::new());
    let publish = Publish::new(topic, setup.qos, b"ordered")
        .retain(setup.retain)
        .encode(a.proto);
    // write_all returns once the kernel has taken the bytes: on loopback they are then in
    // the node's receive queue for B, before A's PUBLISH is even written.
    b.send(&subscribe).await;
    a.send(&publish).await;
    let failure = match first_publish(&mut b, DELIVERY_DEADLINE).await {
        Some(p) if p.topic != topic => Some(format!("got a PUBLISH on {:?} instead", p.topic)),
        Some(p) if p.retain => Some("got it as a retained message".to_owned()),
        Some(_) => match first_publish(&mut b, SECOND_COPY_WAIT).await {
            Some(p) => Some(format!("got a second copy (retain {})", p.retain)),
            None => None,
        },
        None => {
            // What A heard tells routing's view: an MQTT 5 PUBACK says 0x10 "no matching
            // subscribers" when the PUBLISH was routed before the subscription existed.
            let puback = match (setup.qos, a.recv(Duration::from_millis(200)).await) {
                (1, Ok(Packet::PubAck { reason, .. })) => {
                    format!(", A's PUBACK reason 0x{reason:02x}")
                }
                _ => String::new(),
            };
            Some(format!("no PUBLISH within {DELIVERY_DEADLINE:?}{puback}"))
        }
    };
    if let Some(w) = &mut witness {
        if first_publish(w, DELIVERY_DEADLINE).await.is_none() {
            return Some("the witness got nothing".to_owned());
        }
    }
    a.disconnect().await;
    b.disconnect().await;
    if let Some(w) = witness {
        w.disconnect().await;
    }
    failure
}

/// The first PUBLISH a client receives within `deadline` (other packets skipped).
async fn first_publish(c: &mut RawClient, deadline: Duration) -> Option<skein_tests::Publish> {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match c.recv(left).await {
            Ok(Packet::Publish(p)) => return Some(p),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn connect(proto: Proto, id: &str, persistent: bool) -> Connect {
    let c = Connect::new(proto, id);
    if persistent {
        c.persistent(3600)
    } else {
        c
    }
}

/// Fails with every failed trial listed, if there was any.
fn assert_all_delivered(what: &str, failures: Vec<(usize, String)>) {
    assert!(
        failures.is_empty(),
        "{what}: B got the message once in {}/{TRIALS} trials; failed trials: {failures:#?}",
        TRIALS - failures.len(),
    );
}

/// Neither client parks: both connections wait in their tasks.
async fn running_trials(proto: Proto, qos: u8) {
    let node = Node::builder().env("SKEIN_PARK_IDLE_MS", 0).start();
    let mut failures = Vec::new();
    for i in 0..TRIALS {
        let persistent = i % 2 == 1;
        let setup = Setup::nth(i, qos);
        let a = RawClient::connect_ok(node.mqtt_addr(), &Connect::new(proto, &unique_id("oa")))
            .await
            .0;
        let b_id = unique_id("ob");
        let b = RawClient::connect_ok(node.mqtt_addr(), &connect(proto, &b_id, persistent))
            .await
            .0;
        let topic = format!("order/{}/{qos}/{i}", proto_tag(proto));
        if let Some(why) = race(&node, b, a, &topic, setup).await {
            failures.push((i, format!("{setup:?}, persistent B: {persistent}: {why}")));
        }
    }
    assert_all_delivered(&format!("{proto:?} QoS {qos} publish"), failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_that_arrived_first_is_in_force_v311_qos0() {
    running_trials(Proto::V311, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_that_arrived_first_is_in_force_v311_qos1() {
    running_trials(Proto::V311, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_that_arrived_first_is_in_force_v5_qos0() {
    running_trials(Proto::V5, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_that_arrived_first_is_in_force_v5_qos1() {
    running_trials(Proto::V5, 1).await;
}

/// Waits until exactly `n` connections are parked.
async fn wait_parked(node: &Node, n: usize) {
    let deadline = Instant::now() + skein_tests::RECV_TIMEOUT;
    loop {
        let parked = metric_sum(node.http_addr(), "skein_connections_parked", &[]).await;
        if parked == n as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{parked} connections parked, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One client, the other, or both parked (resumed through the parker's epoll thread, not
/// tokio's) when B subscribes and A publishes.
async fn parked_trials(proto: Proto) {
    let node = Node::builder().env("SKEIN_PARK_IDLE_MS", PARK_MS).start();
    let addr = node.mqtt_addr();
    let mut failures = Vec::new();
    for i in 0..TRIALS {
        let parked = [Parked::Subscriber, Parked::Publisher, Parked::Both][i % 3];
        let setup = Setup::nth(i / 3, (i % 2) as u8);
        let (a_id, b_id) = (unique_id("pa"), unique_id("pb"));
        // The one to park connects first and parks before the other connects; the other
        // then races within PARK_MS of its CONNACK, still running.
        let (a, b) = match parked {
            Parked::Subscriber => {
                let b = RawClient::connect_ok(addr, &Connect::new(proto, &b_id))
                    .await
                    .0;
                wait_parked(&node, 1).await;
                let a = RawClient::connect_ok(addr, &Connect::new(proto, &a_id))
                    .await
                    .0;
                (a, b)
            }
            Parked::Publisher => {
                let a = RawClient::connect_ok(addr, &Connect::new(proto, &a_id))
                    .await
                    .0;
                wait_parked(&node, 1).await;
                let b = RawClient::connect_ok(addr, &Connect::new(proto, &b_id))
                    .await
                    .0;
                (a, b)
            }
            Parked::Both => {
                let a = RawClient::connect_ok(addr, &Connect::new(proto, &a_id))
                    .await
                    .0;
                let b = RawClient::connect_ok(addr, &Connect::new(proto, &b_id))
                    .await
                    .0;
                wait_parked(&node, 2).await;
                (a, b)
            }
        };
        let topic = format!("order/parked/{}/{i}", proto_tag(proto));
        if let Some(why) = race(&node, b, a, &topic, setup).await {
            failures.push((i, format!("{parked:?} parked, {setup:?}: {why}")));
        }
        wait_parked(&node, 0).await;
    }
    assert_all_delivered(&format!("{proto:?} with parking"), failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_that_arrived_first_is_in_force_when_parked_v311() {
    parked_trials(Proto::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_that_arrived_first_is_in_force_when_parked_v5() {
    parked_trials(Proto::V5).await;
}

fn proto_tag(proto: Proto) -> &'static str {
    if proto.is_v5() {
        "v5"
    } else {
        "v311"
    }
}

/// The order never holds a publish back for input that is not there. Publishers that
/// connect and stream at once run their connection tasks out of tokio's cooperative
/// budget again and again (tokio then answers a readiness poll with a wake-up of its own)
/// before they go idle; every publish of every round gets read. Parking is off, so nothing
/// else would end a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_streaming_at_once_are_not_held_back() {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 20_000;
    const ROUNDS: usize = 3;
    let node = Node::builder().env("SKEIN_PARK_IDLE_MS", 0).start();
    let addr = node.mqtt_addr();
    let burst = Publish::new("stream/t", 0, b"0123456789abcdef")
        .encode(Proto::V311)
        .repeat(EACH);
    for round in 1..=ROUNDS {
        let streams: Vec<_> = (0..PUBLISHERS)
            .map(|_| {
                let burst = burst.clone();
                tokio::spawn(async move {
                    let mut c = RawClient::v311(addr, &unique_id("stream")).await;
                    c.send(&burst).await;
                    c
                })
            })
            .collect();
        let mut publishers = Vec::new();
        for s in streams {
            publishers.push(s.await.expect("publisher task"));
        }
        let total = (round * PUBLISHERS * EACH) as f64;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut received = 0.0;
        while received < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            received = metric_sum(node.http_addr(), "skein_messages_received_total", &[]).await;
        }
        assert_eq!(
            received, total,
            "round {round}: the node read {received} of {total} publishes within 20 s"
        );
        for c in publishers {
            c.disconnect().await;
        }
    }
}
