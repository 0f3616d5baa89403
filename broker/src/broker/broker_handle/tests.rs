//! The seam's inbound calls against a real broker (temporary store, sessions without
//! sockets: their queues and signals show what happened).

use bytes::Bytes;
use skein_seam::{NodeId, PublishProperties};
use skein_storage::{Availability, MinFree, Store};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::codec::{ProtocolVersion, SubscriptionOptions};
use crate::config::Config;
use crate::events::{ClientInfo, EventBus, NodeInfo};
use crate::local_cluster::LocalCluster;
use crate::message::now_ms;
use crate::session::{Attachment, KickSignal, Session, Subscription};

fn broker() -> Arc<Broker> {
    let events = EventBus::new(NodeInfo {
        node: "127.0.0.1:1883".into(),
        node_ip: "127.0.0.1".into(),
        node_name: "test".into(),
    });
    Broker::new(
        Config::default(),
        Store::open_temporary().unwrap(),
        Arc::new(LocalCluster::new(NodeId(1))),
        events,
        CancellationToken::new(),
    )
    .unwrap()
}

/// A session subscribed to `filter` at QoS 1; attached (its signal returned) unless
/// `persistent`, which leaves it offline with an expiry.
fn subscriber(
    b: &Broker,
    id: &str,
    filter: &str,
    persistent: bool,
) -> (Arc<Session>, Arc<KickSignal>) {
    let s = b.get_or_create_session(&ClientId::new(id));
    let signal = KickSignal::new();
    if persistent {
        s.state().expiry_interval = 3600;
    } else {
        s.state().attach(
            Attachment {
                connection_id: 1,
                epoch: 0,
                kick: signal.clone(),
            },
            Arc::new(ClientInfo::unknown(ClientId::new(id), ProtocolVersion::V5)),
        );
    }
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    b.subscribe(
        &s,
        filter,
        Subscription {
            options,
            subscription_id: None,
        },
    );
    (s, signal)
}

fn forwarded(topic: &str, qos: u8) -> ForwardedPublish {
    ForwardedPublish {
        topic: topic.into(),
        payload: Bytes::from_static(b"hello"),
        qos,
        properties: PublishProperties {
            content_type: Some("text/plain".into()),
            ..Default::default()
        },
        received_at_ms: now_ms(),
        publisher: Some(ClientId::new("elsewhere")),
        to_subscribers: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_forwarded_publish_reaches_online_and_offline_sessions_and_is_stored_first() {
    let b = broker();
    let (online, _signal) = subscriber(&b, "on", "t/#", false);
    let (offline, _) = subscriber(&b, "off", "t/+", true);
    subscriber(&b, "other", "u/#", false);
    let flushes = b.store.flushes_performed();
    let matched = b.deliver_forwarded(forwarded("t/1", 1)).await.unwrap();
    assert_eq!(matched, 2);
    let queued = &online.state().queue[0].delivery;
    assert_eq!(&*queued.message.topic, "t/1");
    assert_eq!(queued.qos, QoS::AtLeastOnce);
    assert_eq!(
        queued.message.properties.content_type.as_deref(),
        Some("text/plain")
    );
    assert_eq!(offline.state().queue.len(), 1);
    // The offline session's copy is on disk before the call completes.
    assert_eq!(b.store.queue_load("off").unwrap().len(), 1);
    assert!(b.store.flushes_performed() > flushes);
}

#[tokio::test]
async fn a_forwarded_publish_that_no_publish_could_carry_is_refused() {
    let b = broker();
    let (online, _signal) = subscriber(&b, "on", "#", false);
    for (topic, qos) in [("t", 3), ("t/#", 1), ("t/+", 0), ("", 0)] {
        let error = b
            .deliver_forwarded(forwarded(topic, qos))
            .await
            .unwrap_err();
        assert!(
            matches!(error, BrokerHandleError::Invalid(_)),
            "{topic:?} {qos}: {error}"
        );
    }
    assert!(online.state().queue.is_empty());
    assert_eq!(b.deliver_forwarded(forwarded("t", 0)).await, Ok(1));
}

#[tokio::test]
async fn kicks_reach_the_attached_connection_with_their_reason() {
    let b = broker();
    let (_, taken) = subscriber(&b, "taken", "a", false);
    let (_, kicked) = subscriber(&b, "kicked", "a", false);
    subscriber(&b, "offline", "a", true);
    let by = NodeId(2);
    assert!(BrokerHandle::kick(
        &*b,
        &ClientId::new("taken"),
        KickReason::TakenOver { by }
    ));
    assert_eq!(taken.try_recv(), Some(Kick::TakenOver));
    assert!(BrokerHandle::kick(
        &*b,
        &ClientId::new("kicked"),
        KickReason::Administrative
    ));
    assert_eq!(kicked.try_recv(), Some(Kick::Administrative));
    for id in ["offline", "unknown"] {
        assert!(!BrokerHandle::kick(
            &*b,
            &ClientId::new(id),
            KickReason::TakenOver { by }
        ));
    }
}

#[tokio::test]
async fn a_session_is_handed_over_only_to_the_node_the_registry_names() {
    let b = broker();
    let taker = NodeId(2);
    // Nothing held here: an empty, complete page, and nothing to release.
    let page = b
        .hand_over_session(&ClientId::new("none"), taker, 0, 10)
        .await
        .unwrap();
    assert!(page.complete && page.messages.is_empty());
    assert!(!b
        .release_session(&ClientId::new("none"), taker, 5)
        .await
        .unwrap());

    // Held here, and the registry has no owner for it: nobody may take it.
    let (s, _) = subscriber(&b, "s", "a", true);
    b.route(crate::broker::tests::message("a", QoS::AtLeastOnce, "p"));
    let refused = b.hand_over_session(&ClientId::new("s"), taker, 0, 10).await;
    assert!(
        matches!(refused, Err(BrokerHandleError::NotOwner(_))),
        "{refused:?}"
    );
    // Registered on this node (it has not applied a takeover): ask again later.
    b.cluster
        .register_client(&ClientId::new("s"), false, 60)
        .await
        .unwrap();
    let later = b.hand_over_session(&ClientId::new("s"), taker, 0, 10).await;
    assert!(
        matches!(later, Err(BrokerHandleError::NotYet(_))),
        "{later:?}"
    );
    // Never handed over: a release deletes nothing.
    let release = b.release_session(&ClientId::new("s"), taker, 5).await;
    assert_eq!(release, Ok(false));
    // Nothing was sealed or deleted.
    let st = s.state();
    assert!(!st.moved);
    assert_eq!(st.queue.len(), 1);
    assert_eq!(b.store.queue_load("s").unwrap().len(), 1);
}

#[tokio::test]
async fn below_the_storage_guard_what_needs_the_disk_is_refused_and_nothing_queued() {
    // A real data directory, so that the free-space guard measures a real file system.
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::new(
        Config::default(),
        Store::open(dir.path()).unwrap(),
        Arc::new(LocalCluster::new(NodeId(1))),
        EventBus::new(NodeInfo {
            node: "127.0.0.1:1883".into(),
            node_ip: "127.0.0.1".into(),
            node_name: "test".into(),
        }),
        CancellationToken::new(),
    )
    .unwrap();
    let (offline, _) = subscriber(&b, "off", "t/#", true);
    let health = b.store.health();
    health.set_min_free(MinFree::Bytes(u64::MAX));
    assert_eq!(health.check().unwrap(), Availability::LowSpace);

    let refused = b.deliver_forwarded(forwarded("t/1", 1)).await;
    assert!(
        matches!(refused, Err(BrokerHandleError::Storage(_))),
        "{refused:?}"
    );
    let mut retained = forwarded("t/r", 0);
    retained.retain = true;
    let refused = b.deliver_forwarded(retained).await;
    assert!(
        matches!(refused, Err(BrokerHandleError::Storage(_))),
        "{refused:?}"
    );
    assert!(offline.state().queue.is_empty());
    assert!(b.store.queue_load("off").unwrap().is_empty());
    // QoS 0 needs no disk.
    assert_eq!(b.deliver_forwarded(forwarded("t/0", 0)).await, Ok(1));

    health.set_min_free(MinFree::Bytes(0));
    assert_eq!(health.check().unwrap(), Availability::Available);
    assert_eq!(b.deliver_forwarded(forwarded("t/2", 1)).await, Ok(1));
    assert_eq!(b.store.queue_load("off").unwrap().len(), 1);
}

/// A publish redirected from a node the session moved away from (`for_client`) reaches
/// that session only, through its own subscriptions, and once: the same publish again,
/// redirected or direct, is left out for it.
#[tokio::test]
async fn a_redirected_publish_reaches_its_session_only_and_once() {
    let b = broker();
    let (target, _) = subscriber(&b, "moved", "t/#", true);
    let (other, _signal) = subscriber(&b, "other", "t/#", false);
    let mut p = forwarded("t/1", 1);
    p.publish_id = Some(42);
    p.for_client = Some(ClientId::new("moved"));
    assert_eq!(b.deliver_forwarded(p.clone()).await, Ok(1));
    assert_eq!(target.state().queue.len(), 1);
    assert!(other.state().queue.is_empty(), "for the one session only");
    assert_eq!(
        b.store.queue_load("moved").unwrap().len(),
        1,
        "stored first"
    );
    assert_eq!(b.deliver_forwarded(p.clone()).await, Ok(0));
    let mut direct = p.clone();
    direct.for_client = None;
    b.deliver_forwarded(direct).await.unwrap();
    assert_eq!(target.state().queue.len(), 1, "the direct copy is left out");
    assert_eq!(other.state().queue.len(), 1);
    // A filter the session does not have, and a session this node does not hold.
    let mut elsewhere = forwarded("u/1", 1);
    elsewhere.for_client = Some(ClientId::new("moved"));
    assert_eq!(b.deliver_forwarded(elsewhere).await, Ok(0));
    p.for_client = Some(ClientId::new("nobody"));
    p.publish_id = Some(43);
    assert_eq!(b.deliver_forwarded(p).await, Ok(0));
    assert_eq!(target.state().queue.len(), 1);
}
