//! The registry fold and the seam's `ClusterHandle` on three members over loopback gRPC:
//! what each member's broker is told (a takeover once, by the node that held the client
//! id; other nodes' interest, never its own), and a subscription that is in force on every
//! member's broker by the time `subscribe` returns.
//!
//! The brokers here are recording doubles of the seam's `BrokerHandle` (the real broker is
//! driven through the same calls by the `skein-tests` cluster tests).

#[path = "support/cluster.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{init_tracing, test_settings, wait_for, TestCluster};
use skein_cluster::NodeId;
use skein_seam::{
    BoxFuture, BrokerHandle, BrokerHandleError, ClientId, ClusterError, ClusterHandle,
    ForwardedPublish, HandedOverSubscription, KickReason, NodeId as SeamNodeId,
};

const WITHIN: Duration = Duration::from_secs(15);

/// What a member's broker was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    TakenOver {
        client: String,
        epoch: u64,
        by: u64,
    },
    Interest {
        filter: String,
        node: u64,
        subscribers: u32,
    },
    Reset(Vec<(String, u64, u32)>),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Told>>);

impl Recorder {
    fn told(&self) -> Vec<Told> {
        self.0.lock().unwrap().clone()
    }

    fn interest_of(&self, filter: &str, node: u64) -> Option<u32> {
        self.told().iter().rev().find_map(|t| match t {
            Told::Interest {
                filter: f,
                node: n,
                subscribers,
            } if f == filter && *n == node => Some(*subscribers),
            Told::Reset(all) => all
                .iter()
                .find(|(f, n, _)| f == filter && *n == node)
                .map(|(_, _, s)| *s)
                .or(Some(0)),
            _ => None,
        })
    }
}

impl BrokerHandle for Recorder {
    fn deliver_forwarded(
        &self,
        _publish: ForwardedPublish,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        Box::pin(async { Err(BrokerHandleError::NotSupported("a recorder")) })
    }

    fn kick(&self, _client_id: &ClientId, _reason: KickReason) -> bool {
        false
    }

    fn taken_over(&self, client_id: &ClientId, epoch: u64, by: SeamNodeId) {
        self.0.lock().unwrap().push(Told::TakenOver {
            client: client_id.to_string(),
            epoch,
            by: by.0,
        });
    }

    fn interest_changed(&self, filter: &str, node: SeamNodeId, subscribers: u32) {
        self.0.lock().unwrap().push(Told::Interest {
            filter: filter.to_owned(),
            node: node.0,
            subscribers,
        });
    }

    fn interest_reset(&self, interest: Vec<(String, SeamNodeId, u32)>) {
        let all = interest.into_iter().map(|(f, n, s)| (f, n.0, s)).collect();
        self.0.lock().unwrap().push(Told::Reset(all));
    }

    fn retained_messages(&self) -> Vec<ForwardedPublish> {
        Vec::new()
    }

    fn restore_retained(
        &self,
        _messages: Vec<ForwardedPublish>,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        Box::pin(async { Ok(0) })
    }
}

fn subscription(filter: &str) -> HandedOverSubscription {
    HandedOverSubscription {
        filter: filter.to_owned(),
        qos: 1,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
        subscription_id: None,
    }
}

async fn three_with_recorders() -> (TestCluster, Vec<(NodeId, Arc<Recorder>)>) {
    init_tracing();
    let cluster = TestCluster::start(&[1, 2, 3], test_settings()).await;
    cluster.leader(WITHIN).await;
    let recorders = [1, 2, 3]
        .into_iter()
        .map(|id| {
            let recorder = Arc::new(Recorder::default());
            assert!(cluster.node(id).attach_broker(recorder.clone()));
            (id, recorder)
        })
        .collect();
    (cluster, recorders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_in_every_members_interest_when_subscribe_returns() {
    let (cluster, recorders) = three_with_recorders().await;
    let on: &dyn ClusterHandle = cluster.node(2).as_ref();
    let client = ClientId::new("sub");
    let registration = on.register_client(&client, true, 0).await.unwrap();

    for round in 0..20 {
        let filter = format!("in/force/{round}");
        on.subscribe(&client, registration.epoch, vec![subscription(&filter)])
            .await
            .unwrap();
        // No waiting: the call returned only once the others had folded it.
        for (id, recorder) in &recorders {
            let expected = if *id == 2 { None } else { Some(1) };
            let seen = recorder.interest_of(&filter, 2);
            assert_eq!(
                seen.filter(|n| *n > 0),
                expected,
                "member {id} after round {round}: {:?}",
                recorder.told()
            );
        }
    }
    // A member never hears of its own interest.
    assert!(recorders[1]
        .1
        .told()
        .iter()
        .all(|t| !matches!(t, Told::Interest { node: 2, .. })));
    // The connection's late command after a takeover is refused as NotOwner.
    let elsewhere: &dyn ClusterHandle = cluster.node(3).as_ref();
    elsewhere.register_client(&client, false, 0).await.unwrap();
    let late = on
        .subscribe(&client, registration.epoch, vec![subscription("late")])
        .await;
    assert_eq!(late, Err(ClusterError::NotOwner));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_is_told_once_to_the_node_that_held_the_client_id() {
    let (cluster, recorders) = three_with_recorders().await;
    let first: &dyn ClusterHandle = cluster.node(1).as_ref();
    let second: &dyn ClusterHandle = cluster.node(3).as_ref();
    let client = ClientId::new("roamer");
    let old = first.register_client(&client, false, 600).await.unwrap();
    first
        .subscribe(&client, old.epoch, vec![subscription("roam/#")])
        .await
        .unwrap();
    // A takeover on the same node is the broker's own: nobody is told.
    let again = first.register_client(&client, false, 600).await.unwrap();
    assert!(again.session_present);
    let new = second.register_client(&client, false, 600).await.unwrap();
    assert!(new.session_present);
    assert_eq!(new.subscriptions, vec![subscription("roam/#")]);
    assert_eq!(
        new.previous.map(|p| (p.node, p.epoch, p.online)),
        Some((SeamNodeId(1), again.epoch, true))
    );

    let expected = Told::TakenOver {
        client: "roamer".into(),
        epoch: again.epoch,
        by: 3,
    };
    wait_for(WITHIN, "node 1 is told of the takeover", || async {
        recorders[0].1.told().contains(&expected).then_some(())
    })
    .await;
    // Everyone folds the same entry; give the others the time to (not) act on it.
    wait_for(WITHIN, "every member folded the takeover", || async {
        let last = cluster.node(3).registry().last_applied()?;
        [1, 2, 3]
            .iter()
            .all(|id| cluster.node(*id).folded_index() >= Some(last))
            .then_some(())
    })
    .await;
    for (id, recorder) in &recorders {
        let takeovers: Vec<Told> = recorder
            .told()
            .into_iter()
            .filter(|t| matches!(t, Told::TakenOver { .. }))
            .collect();
        let expected_here = if *id == 1 {
            vec![expected.clone()]
        } else {
            vec![]
        };
        assert_eq!(takeovers, expected_here, "member {id}");
    }
    // The interest moved with the session: node 2 sees it on 3 and no longer on 1.
    assert_eq!(recorders[1].1.interest_of("roam/#", 3), Some(1));
    assert_eq!(recorders[1].1.interest_of("roam/#", 1), Some(0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_attached_late_starts_from_the_whole_interest() {
    init_tracing();
    let cluster = TestCluster::start(&[1, 2], test_settings()).await;
    cluster.leader(WITHIN).await;
    let on: &dyn ClusterHandle = cluster.node(1).as_ref();
    let client = ClientId::new("early");
    let r = on.register_client(&client, true, 0).await.unwrap();
    on.subscribe(
        &client,
        r.epoch,
        vec![subscription("a/+"), subscription("b")],
    )
    .await
    .unwrap();
    // Node 2 has no broker yet, so the SUBSCRIBE did not wait for it (see `in_force`): it
    // is attached once node 2 applied the subscription, as a broker starting late is.
    let committed = cluster.node(1).status().commit_index.unwrap_or(0);
    cluster.applied_everywhere(committed, WITHIN).await;
    let recorder = Arc::new(Recorder::default());
    cluster.node(2).attach_broker(recorder.clone());
    wait_for(WITHIN, "the reset arrives", || async {
        recorder.told().first().cloned()
    })
    .await;
    assert_eq!(
        recorder.told()[0],
        Told::Reset(vec![("a/+".into(), 1, 1), ("b".into(), 1, 1)])
    );
    assert!(!cluster.node(2).attach_broker(recorder.clone()), "once");
    cluster.shutdown().await;
}
