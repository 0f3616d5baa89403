//! Tests of the scrape-time gauges and the `/metrics` route.

use std::time::Duration;

use bytes::Bytes;
use skein_storage::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::config::Config;
use crate::connection::park::Parker;
use crate::events::{ClientInfo, EventBus, NodeInfo, Transport};
use crate::local_cluster::LocalCluster;
use crate::message::{now_ms, Message, MessageProperties};
use crate::metrics::tests::{local_recorder, value};
use crate::metrics::{install, message_acked};
use crate::session::{Attachment, Session, Subscription};
use skein_seam::{ClientId, NodeId};

fn test_broker() -> Arc<Broker> {
    let events = EventBus::new(NodeInfo {
        node: "127.0.0.1:1883".into(),
        node_ip: "127.0.0.1".into(),
        node_name: "test".into(),
    });
    Broker::new(
        Config::default(),
        Store::open_temporary().expect("store"),
        Arc::new(LocalCluster::new(NodeId(1))),
        events,
        CancellationToken::new(),
    )
    .expect("broker")
}

fn attach(session: &Session, id: &str) {
    let kick = crate::session::KickSignal::new();
    session.state().attach(
        Attachment {
            connection_id: 1,
            epoch: 0,
            kick,
        },
        Arc::new(ClientInfo {
            client_id: ClientId::new(id),
            username: None,
            peer: "127.0.0.1:1000".parse().expect("addr"),
            sockname: std::sync::Arc::new("127.0.0.1:1883".parse().expect("addr")),
            protocol: ProtocolVersion::V5,
            transport: Transport::Tcp,
            keepalive: 60,
            clean_start: true,
            connected_at_ms: 0,
            will: None,
        }),
    );
}

fn subscription(qos: QoS) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
        subscription_id: None,
    }
}

fn message(topic: &str, retain: bool) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain,
        properties: MessageProperties::default(),
        received_at_ms: now_ms(),
        publisher: Some(ClientId::new("p")),
        publisher_username: None,
        publish_id: None,
    })
}

#[test]
fn scrape_time_gauges_sum_over_sessions() {
    let broker = test_broker();
    let online = broker.get_or_create_session(&ClientId::new("on"));
    attach(&online, "on");
    broker.subscribe(&online, "a/#", subscription(QoS::AtLeastOnce));
    broker.subscribe(&online, "b", subscription(QoS::AtMostOnce));
    let offline = broker.get_or_create_session(&ClientId::new("off"));
    offline.state().expiry_interval = 3600;
    broker.subscribe(&offline, "a/1", subscription(QoS::AtLeastOnce));
    broker.route(message("a/1", false));
    broker.route(message("a/2", true));

    let totals = session_totals(&broker);
    assert_eq!(
        totals,
        SessionTotals {
            online: 1,
            offline: 1,
            subscriptions: 3,
            inflight: 0,
            queued: 3,
        }
    );

    let recorder = local_recorder();
    let handle = recorder.handle();
    let parker = Parker::new(None, TaskTracker::new(), broker.input_order.clone());
    metrics::with_local_recorder(&recorder, || record_state(&broker, &parker.handle()));
    let text = handle.render();
    for (series, want) in [
        ("skein_sessions{state=\"online\"}", 1.0),
        ("skein_sessions{state=\"offline\"}", 1.0),
        ("skein_subscriptions", 3.0),
        ("skein_queued_messages", 3.0),
        ("skein_inflight_messages", 0.0),
        ("skein_retained_messages", 1.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
    }
}

/// Sends one raw HTTP/1.1 GET and returns (head in lower case, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("response timed out")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("no header end");
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn install_is_idempotent_and_the_endpoint_serves_text_format() {
    let first = install();
    let handle = install();
    // Both handles render the one global recorder.
    message_acked();
    assert!(first.render().contains("skein_messages_acked_total"));

    let broker = test_broker();
    let parker = Parker::new(None, TaskTracker::new(), broker.input_order.clone());
    let routes = crate::http::compose(vec![router(handle, broker, parker.handle())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(crate::http::serve(
        listener,
        routes,
        crate::http::Limits::default(),
        shutdown.clone(),
    ));

    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains("# TYPE skein_sessions gauge"), "{body}");
    assert!(
        body.contains("# HELP skein_messages_acked_total "),
        "{body}"
    );
    let (head, _) = get(addr, "/nope").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");

    shutdown.cancel();
    let _ = server.await;
}
