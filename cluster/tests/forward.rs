//! The data plane between in-process members on real gRPC: forwards reach the peer's broker
//! (a recording one) in call order and in batches, a peer that stops and comes back gets
//! what was queued for it exactly once, a peer refusing for now gets the batch again
//! without duplicates, a full queue refuses and counts, a removed peer fails what waits for
//! it, and kicks reach the node that holds the client.

#[path = "support/cluster.rs"]
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{init_tracing, test_settings, wait_for, TestCluster};
use prost::bytes::Bytes;
use skein_cluster::{ForwardSettings, RaftSettings};
use skein_seam::{
    BoxFuture, BrokerHandle, BrokerHandleError, ClientId, ForwardError, ForwardedPublish,
    KickReason, NodeId,
};

const WITHIN: Duration = Duration::from_secs(20);

/// A broker double that records what the cluster hands it; it can refuse a topic's first
/// delivery as a full disk would.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<ForwardedPublish>>,
    kicked: Mutex<Vec<(ClientId, KickReason)>>,
    refuse_once: Mutex<HashSet<String>>,
    /// Topics whose delivery takes a while (the peer's acknowledgement waits for it).
    slow: Mutex<HashSet<String>>,
    /// What it answers when asked for its retained messages, and what it was given.
    retained: Mutex<Vec<ForwardedPublish>>,
    restored: Mutex<Vec<ForwardedPublish>>,
}

impl Recorder {
    fn topics(&self) -> Vec<String> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.topic.to_string())
            .collect()
    }
}

impl BrokerHandle for Recorder {
    fn deliver_forwarded(
        &self,
        publish: ForwardedPublish,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        // Decided in the first poll, as the broker routes there.
        let refused = self.refuse_once.lock().unwrap().remove(&*publish.topic);
        if refused {
            return Box::pin(async { Err(BrokerHandleError::Storage("disk full".into())) });
        }
        let slow = self.slow.lock().unwrap().contains(&*publish.topic);
        self.delivered.lock().unwrap().push(publish);
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(1)
        })
    }

    fn kick(&self, client_id: &ClientId, reason: KickReason) -> bool {
        self.kicked
            .lock()
            .unwrap()
            .push((client_id.clone(), reason));
        client_id.as_str() == "online"
    }

    fn taken_over(&self, _client_id: &ClientId, _epoch: u64, _by: NodeId) {}
    fn interest_changed(&self, _filter: &str, _node: NodeId, _subscribers: u32) {}
    fn interest_reset(&self, _interest: Vec<(String, NodeId, u32)>) {}
    fn retained_messages(&self) -> Vec<ForwardedPublish> {
        self.retained.lock().unwrap().clone()
    }

    fn restore_retained(
        &self,
        messages: Vec<ForwardedPublish>,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        let n = messages.len();
        self.restored.lock().unwrap().extend(messages);
        Box::pin(async move { Ok(n) })
    }
}

fn publish(topic: &str) -> ForwardedPublish {
    ForwardedPublish {
        topic: topic.into(),
        payload: Bytes::from(topic.to_owned()),
        qos: 1,
        received_at_ms: 1,
        publisher: Some(ClientId::new("publisher")),
        publish_id: Some(1),
        to_subscribers: true,
        ..Default::default()
    }
}

fn settings(forward: ForwardSettings) -> RaftSettings {
    RaftSettings {
        forward,
        ..test_settings()
    }
}

/// The process's Prometheus text (one recorder for every test of this binary).
fn metrics_text() -> String {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .render()
}

/// The value of the series `name{labels}` (labels as rendered, in order), 0 if absent.
fn series(name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
        .unwrap_or(0.0)
}

async fn two_members(forward: ForwardSettings) -> (TestCluster, Arc<Recorder>, Arc<Recorder>) {
    metrics_text();
    let cluster = TestCluster::start(&[1, 2], settings(forward)).await;
    cluster.leader(WITHIN).await;
    let (one, two) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    assert!(cluster.node(1).attach_broker(one.clone()));
    assert!(cluster.node(2).attach_broker(two.clone()));
    (cluster, one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_arrive_in_call_order_in_batches_and_are_acknowledged() {
    init_tracing();
    let (cluster, _, two) = two_members(ForwardSettings::default()).await;
    let sender = cluster.node(1);
    let batches_before = series("skein_cluster_forward_batch_messages_count", "");
    let started = std::time::Instant::now();
    let answers: Vec<_> = (0..3000)
        .map(|i| sender.forward(NodeId(2), publish(&format!("t/{i}"))))
        .collect();
    for answer in answers {
        answer.await.expect("acknowledged by the peer");
    }
    let want: Vec<String> = (0..3000).map(|i| format!("t/{i}")).collect();
    assert_eq!(two.topics(), want, "delivered once each, in call order");
    {
        let delivered = two.delivered.lock().unwrap();
        assert_eq!(delivered[7].payload, Bytes::from("t/7"));
        assert_eq!(delivered[7].publisher, Some(ClientId::new("publisher")));
    }
    let batches = series("skein_cluster_forward_batch_messages_count", "") - batches_before;
    eprintln!(
        "3000 forwards acknowledged in {:?}, in {batches} batches",
        started.elapsed()
    );
    assert!(
        (1.0..3000.0).contains(&batches),
        "3000 messages queued at once travel in far fewer batches, got {batches}"
    );
    assert!(series("skein_cluster_forward_sent_total", "peer=\"2\"") >= 3000.0);

    // Not to itself, not to a stranger.
    let to_self = sender.forward(NodeId(1), publish("x")).await.unwrap_err();
    assert!(
        matches!(to_self, ForwardError::Unavailable { .. }),
        "{to_self}"
    );
    let stranger = sender.forward(NodeId(9), publish("x")).await.unwrap_err();
    assert!(
        matches!(stranger, ForwardError::Unavailable { .. }),
        "{stranger}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_restarts_gets_what_was_queued_for_it_exactly_once() {
    init_tracing();
    let forward = ForwardSettings {
        ack_timeout_ms: 500,
        ..ForwardSettings::default()
    };
    let (mut cluster, _, two) = two_members(forward).await;
    for i in 0..50 {
        cluster
            .node(1)
            .forward(NodeId(2), publish(&format!("before/{i}")))
            .await
            .unwrap();
    }
    cluster.stop(2).await;
    let waiting: Vec<_> = (0..200)
        .map(|i| {
            cluster
                .node(1)
                .forward(NodeId(2), publish(&format!("during/{i}")))
        })
        .collect();
    // The callers are not held up while the peer is away; the messages stay queued.
    for answer in waiting {
        match answer.await {
            Err(ForwardError::Unavailable { detail, .. }) => {
                assert!(detail.contains("stays queued"), "{detail}")
            }
            other => panic!("expected a timeout answer, got {other:?}"),
        }
    }

    cluster.restart(2).await;
    let again = Arc::new(Recorder::default());
    assert!(cluster.node(2).attach_broker(again.clone()));
    wait_for(
        WITHIN,
        "the queued messages reach the restarted peer",
        || async { (again.topics().len() >= 200).then_some(()) },
    )
    .await;
    let want: Vec<String> = (0..200).map(|i| format!("during/{i}")).collect();
    assert_eq!(
        again.topics(),
        want,
        "each once, in order, none from before"
    );
    assert_eq!(two.topics().len(), 50);
    // The next forward is answered as usual.
    cluster
        .node(1)
        .forward(NodeId(2), publish("after"))
        .await
        .unwrap();
    assert_eq!(again.topics().last().map(String::as_str), Some("after"));
    cluster.shutdown().await;
}

/// A batch the peer delivered but had not acknowledged when it stopped comes to its next
/// run again (its record of delivered batches died with it), marked as possibly delivered:
/// the broker sends it with DUP. What was never sent to it is not marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_just_before_the_peer_stopped_comes_again_marked_possibly_delivered() {
    init_tracing();
    let (mut cluster, _, two) = two_members(ForwardSettings {
        ack_timeout_ms: 500,
        ..ForwardSettings::default()
    })
    .await;
    two.slow.lock().unwrap().insert("first".into());
    let sender = cluster.node(1).clone();
    let first = tokio::spawn(async move { sender.forward(NodeId(2), publish("first")).await });
    wait_for(WITHIN, "the peer delivers the first message", || async {
        (!two.topics().is_empty()).then_some(())
    })
    .await;
    // Delivered, its acknowledgement still waiting for the slow delivery: the peer stops.
    cluster.stop(2).await;
    assert!(first.await.unwrap().is_err(), "never acknowledged");
    cluster.restart(2).await;
    let again = Arc::new(Recorder::default());
    assert!(cluster.node(2).attach_broker(again.clone()));
    cluster
        .node(1)
        .forward(NodeId(2), publish("after"))
        .await
        .unwrap();
    let delivered: Vec<(String, bool)> = again
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|p| (p.topic.to_string(), p.possibly_delivered))
        .collect();
    assert_eq!(
        delivered,
        [("first".to_owned(), true), ("after".to_owned(), false)]
    );
    assert!(!two.delivered.lock().unwrap()[0].possibly_delivered);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_peer_refuses_for_now_is_sent_again_without_duplicates() {
    init_tracing();
    let (cluster, _, two) = two_members(ForwardSettings {
        retry_min_ms: 20,
        window_batches: 1,
        ..ForwardSettings::default()
    })
    .await;
    // m/0 goes alone and is acknowledged slowly: m/1..m/9 make the next batch, whose m/5
    // the peer refuses once.
    two.slow.lock().unwrap().insert("m/0".into());
    two.refuse_once.lock().unwrap().insert("m/5".into());
    let answers: Vec<_> = (0..10)
        .map(|i| {
            cluster
                .node(1)
                .forward(NodeId(2), publish(&format!("m/{i}")))
        })
        .collect();
    let mut refused = 0;
    for answer in answers {
        match answer.await {
            Ok(()) => {}
            Err(ForwardError::Refused { node, detail }) => {
                assert_eq!((node, detail.as_str()), (NodeId(2), "disk full"));
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 1, "the refused message's caller is told at once");
    wait_for(
        WITHIN,
        "the refused message is delivered on the retry",
        || async { two.topics().contains(&"m/5".to_owned()).then_some(()) },
    )
    .await;
    let mut topics = two.topics();
    topics.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("m/{i}")).collect();
    want.sort();
    assert_eq!(topics, want, "every message exactly once");
    assert!(
        series(
            "skein_cluster_forward_received_duplicates_total",
            "peer=\"1\""
        ) >= 1.0,
        "the resent batch's delivered messages were recognised"
    );
    assert!(series("skein_cluster_forward_retried_total", "peer=\"2\"") >= 1.0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_and_counts_and_a_removed_peer_fails_what_waits() {
    init_tracing();
    metrics_text();
    let forward = ForwardSettings {
        queue_messages: 10,
        ack_timeout_ms: 60_000,
        ..ForwardSettings::default()
    };
    let mut cluster = TestCluster::start(&[1, 2, 3], settings(forward)).await;
    let leader = cluster.leader(WITHIN).await;
    for id in [1, 2, 3] {
        cluster
            .node(id)
            .attach_broker(Arc::new(Recorder::default()));
    }
    let (sender, gone) = match leader {
        3 => (3, 2),
        l => (l, if l == 1 { 3 } else { 1 }),
    };
    let dropped_before = series(
        "skein_cluster_forward_dropped_total",
        &format!("peer=\"{gone}\",reason=\"queue_full\""),
    );
    cluster.stop(gone).await;
    let node = cluster.node(sender).clone();
    let waiting: Vec<_> = (0..15)
        .map(|i| node.forward(NodeId(gone), publish(&format!("q/{i}"))))
        .collect();
    let mut waiting = waiting.into_iter();
    let held: Vec<_> = waiting.by_ref().take(10).collect();
    for overflow in waiting {
        assert_eq!(overflow.await, Err(ForwardError::QueueFull(NodeId(gone))));
    }
    let dropped = series(
        "skein_cluster_forward_dropped_total",
        &format!("peer=\"{gone}\",reason=\"queue_full\""),
    );
    assert_eq!(dropped - dropped_before, 5.0);

    node.remove_member(gone).await.unwrap();
    for answer in held {
        let e = tokio::time::timeout(WITHIN, answer)
            .await
            .expect("answered once the peer is removed");
        assert!(
            matches!(&e, Err(ForwardError::Unavailable { detail, .. }) if detail.contains("no longer a member")),
            "{e:?}"
        );
    }
    let e = node
        .forward(NodeId(gone), publish("late"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForwardError::Unavailable { .. }), "{e}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_reaches_the_broker_of_the_node_that_holds_the_client() {
    init_tracing();
    let (cluster, _, two) = two_members(ForwardSettings::default()).await;
    let node = cluster.node(1);
    assert!(node
        .kick_remote(NodeId(2), &ClientId::new("online"))
        .await
        .unwrap());
    assert!(!node
        .kick_remote(NodeId(2), &ClientId::new("elsewhere"))
        .await
        .unwrap());
    let kicked = two.kicked.lock().unwrap().clone();
    assert_eq!(
        kicked,
        [
            (ClientId::new("online"), KickReason::Administrative),
            (ClientId::new("elsewhere"), KickReason::Administrative)
        ]
    );
    let stranger = node.kick_remote(NodeId(7), &ClientId::new("x")).await;
    assert!(matches!(
        stranger,
        Err(skein_seam::ClusterError::NotFound(_))
    ));
    assert_eq!(node.other_members(), [NodeId(2)]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_the_retained_messages_of_a_member_when_its_broker_attaches() {
    init_tracing();
    let cluster = TestCluster::start(&[1, 2], settings(ForwardSettings::default())).await;
    cluster.leader(WITHIN).await;
    let holder = Arc::new(Recorder::default());
    let mut kept = publish("r/kept");
    kept.retain = true;
    kept.to_subscribers = false;
    holder.retained.lock().unwrap().push(kept.clone());
    assert!(cluster.node(2).attach_broker(holder));
    let newcomer = Arc::new(Recorder::default());
    assert!(cluster.node(1).attach_broker(newcomer.clone()));
    let restored = wait_for(
        WITHIN,
        "node 1 fetched node 2's retained messages",
        || async {
            let restored = newcomer.restored.lock().unwrap().clone();
            (!restored.is_empty()).then_some(restored)
        },
    )
    .await;
    assert_eq!(restored, [kept]);
    cluster.shutdown().await;
}
