//! Acknowledgements that wait for other nodes, on a real connection over TCP to a broker
//! whose cluster handle is [`PeersDouble`] (forwards answered as each test sets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use skein_seam::{BrokerHandle, ForwardError, NodeId};
use skein_storage::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::broker::forwarding_test_support::PeersDouble;
use crate::broker::Broker;
use crate::codec::{self, Ack, Connect, Packet, Properties, ProtocolVersion, Publish, QoS};
use crate::config::Config;

struct Node {
    cluster: Arc<PeersDouble>,
    addr: SocketAddr,
}

/// A broker with a peer (node 2) that has subscribers for `remote/#`, serving MQTT.
async fn node() -> Node {
    let cluster = Arc::new(PeersDouble::new(1, &[2]));
    let broker = Broker::new(
        Config::default(),
        Store::open_temporary().unwrap(),
        cluster.clone(),
        crate::broker::tests::test_events(),
        CancellationToken::new(),
    )
    .unwrap();
    broker.interest_changed("remote/#", NodeId(2), 1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let b = broker;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let permit = b.connection_slots.clone().try_acquire_owned().ok();
            tokio::spawn(crate::connection::serve(
                b.clone(),
                stream,
                (peer, Arc::new(addr)),
                permit,
            ));
        }
    });
    Node { cluster, addr }
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
    protocol: ProtocolVersion,
}

impl Client {
    async fn connect(addr: SocketAddr, protocol: ProtocolVersion) -> Client {
        let mut c = Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            protocol,
        };
        let connect = Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: format!("publisher-{protocol:?}"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        c.send(&[Packet::Connect(Box::new(connect))]).await;
        assert!(matches!(c.next().await, Some(Packet::ConnAck(a)) if a.code == 0));
        c
    }

    /// Sends `packets` in one write (one read batch on the broker's side).
    async fn send(&mut self, packets: &[Packet]) {
        let mut out = BytesMut::new();
        for p in packets {
            codec::encode(p, self.protocol, &mut out);
        }
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet; None once the broker closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.protocol, 1 << 20).unwrap() {
                return Some(p);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("an answer within the deadline");
            if read.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// The next packet, expected to be the acknowledgement of `packet_id`; its reason code
    /// and reason string.
    async fn ack_of(&mut self, packet_id: u16) -> (u8, Option<String>) {
        match self.next().await {
            Some(Packet::PubAck(a) | Packet::PubRec(a)) if a.packet_id == packet_id => {
                (a.reason, a.properties.reason_string)
            }
            other => panic!("expected the acknowledgement of {packet_id}, got {other:?}"),
        }
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: Bytes::from_static(b"x"),
        properties: Properties::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_wait_for_the_peer_and_keep_publish_order() {
    let n = node().await;
    let mut c = Client::connect(n.addr, ProtocolVersion::V5).await;
    n.cluster.answer(None, Duration::from_millis(300));
    let started = Instant::now();
    c.send(&[
        publish("remote/a", QoS::AtLeastOnce, 1),
        publish("local/b", QoS::AtLeastOnce, 2),
        publish("remote/c", QoS::ExactlyOnce, 3),
        publish("remote/d", QoS::AtLeastOnce, 4),
    ])
    .await;
    assert_eq!(c.ack_of(1).await, (0x00, None));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "after the peer: {waited:?}"
    );
    // Behind the waiting one, though nothing waits for it (and nobody subscribes).
    assert_eq!(c.ack_of(2).await.0, 0x10);
    assert_eq!(c.ack_of(3).await.0, 0x00);
    assert_eq!(c.ack_of(4).await.0, 0x00);
    // The batch's forwards were in flight together: one wait, not three.
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    let sent: Vec<String> = n
        .cluster
        .take()
        .into_iter()
        .map(|(_, p)| p.topic.to_string())
        .collect();
    assert_eq!(sent, ["remote/a", "remote/c", "remote/d"]);
    c.send(&[Packet::PubRel(Ack::new(3))]).await;
    assert!(matches!(c.next().await, Some(Packet::PubComp(a)) if a.packet_id == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_that_fails_is_refused_with_a_reason_code() {
    let n = node().await;
    let mut c = Client::connect(n.addr, ProtocolVersion::V5).await;
    n.cluster
        .answer(Some(ForwardError::QueueFull(NodeId(2))), Duration::ZERO);
    c.send(&[publish("remote/a", QoS::AtLeastOnce, 1)]).await;
    let (code, reason) = c.ack_of(1).await;
    assert_eq!(code, 0x97, "quota exceeded for a full queue");
    assert!(reason.unwrap().contains("full"));

    n.cluster.answer(
        Some(ForwardError::Unavailable {
            node: NodeId(2),
            detail: "gone".into(),
        }),
        Duration::ZERO,
    );
    c.send(&[publish("remote/b", QoS::ExactlyOnce, 2)]).await;
    let (code, reason) = c.ack_of(2).await;
    assert_eq!(code, 0x80);
    assert!(reason.unwrap().contains("gone"));
    // The refusal ended that QoS 2 flow: the same id again is a new message, not a
    // duplicate, and goes to the peer again.
    n.cluster.answer(None, Duration::ZERO);
    n.cluster.take();
    c.send(&[publish("remote/b", QoS::ExactlyOnce, 2)]).await;
    assert_eq!(c.ack_of(2).await.0, 0x00);
    assert_eq!(n.cluster.take().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_1_1_publisher_is_disconnected_without_an_acknowledgement() {
    let n = node().await;
    let mut c = Client::connect(n.addr, ProtocolVersion::V311).await;
    n.cluster.answer(None, Duration::ZERO);
    c.send(&[publish("remote/ok", QoS::AtLeastOnce, 1)]).await;
    assert_eq!(c.ack_of(1).await.0, 0);
    n.cluster.answer(
        Some(ForwardError::Refused {
            node: NodeId(2),
            detail: "disk full".into(),
        }),
        Duration::ZERO,
    );
    // The acknowledgement before the failure still goes out; the failed one does not.
    c.send(&[
        publish("local/x", QoS::AtLeastOnce, 2),
        publish("remote/no", QoS::AtLeastOnce, 3),
    ])
    .await;
    assert_eq!(c.ack_of(2).await.0, 0);
    assert_eq!(c.next().await, None, "closed without PUBACK 3");
}
