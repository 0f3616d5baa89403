//! MQTT over WebSocket (`--ws`) and secure WebSocket (`--wss`): a real client (paho-mqtt for
//! Python with `transport="websockets"`), and raw frames for what clients rarely do: a
//! packet split over two messages, two packets in one message, ping/pong, close, a text
//! message, refused upgrades. Events say `WS`; metrics count by listener.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use skein_tests::certs::{s, TestCa, TlsFiles};
use skein_tests::codec::{decode, frame, Packet, Proto};
use skein_tests::{metric_sum, unique_id, Connect, Node, RECV_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(dead_code)]
#[path = "events_mqtt/watcher.rs"]
mod watcher;

use watcher::Watcher;

/// A paho-mqtt subscriber and publisher over WebSocket (TLS when a CA file is given):
/// a QoS 1 publish of 200 kB (several WebSocket messages) and a small one arrive.
const PAHO_SCRIPT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
host, port, ca, sub_id, pub_id, topic = sys.argv[1:7]
def client(cid):
    if hasattr(mqtt, "CallbackAPIVersion"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, transport="websockets")
    else:
        c = mqtt.Client(client_id=cid, transport="websockets")
    c.ws_set_options(path="/mqtt")
    if ca != "-":
        c.tls_set(ca_certs=ca)
    return c
got, subscribed, received = threading.Event(), threading.Event(), []
def on_message(c, u, m):
    received.append(len(m.payload))
    if len(received) == 2:
        got.set()
sub = client(sub_id)
sub.on_message = on_message
sub.on_subscribe = lambda *a: subscribed.set()
sub.connect(host, int(port))
sub.loop_start()
sub.subscribe(topic, 1)
assert subscribed.wait(10), "no SUBACK"
pub = client(pub_id)
pub.connect(host, int(port))
pub.loop_start()
pub.publish(topic, b"x" * 200000, qos=1).wait_for_publish(10)
pub.publish(topic, b"small", qos=1).wait_for_publish(10)
assert got.wait(10), "received %r" % received
print("OK", sorted(received))
pub.disconnect(); sub.disconnect()
"#;

fn paho(host: &str, port: u16, ca: Option<&str>, ids: (&str, &str), topic: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("paho_ws.py");
    std::fs::write(&script, PAHO_SCRIPT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args([
            host,
            &port.to_string(),
            ca.unwrap_or("-"),
            ids.0,
            ids.1,
            topic,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("python3 (with paho-mqtt: apt-get install python3-paho-mqtt)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "paho over WebSocket failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn metric_reaches(http: SocketAddr, name: &str, labels: &[&str], at_least: f64) -> bool {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        if metric_sum(http, name, labels).await >= at_least {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_ws_and_wss_with_events_saying_ws() {
    let ca = TestCa::new("Skein Test CA");
    let files = TlsFiles::new(&ca, "unused");
    let node = Node::builder()
        .arg("--ws")
        .arg("127.0.0.1:0")
        .arg("--wss")
        .arg("127.0.0.1:0")
        .env("SKEIN_TLS_CERT_FILE", s(&files.server_cert))
        .env("SKEIN_TLS_KEY_FILE", s(&files.server_key))
        .env("SKEIN_EVENTS_DOLLAR_EVENT", "true")
        .start();
    let mut w = Watcher::start(&node, &["$EVENT.CONNECT", "$events/client_connected"]).await;
    for (listener, host, ca) in [
        ("ws", "127.0.0.1", None),
        ("wss", "localhost", Some(s(&files.ca).to_string())),
    ] {
        let port = node.listener_addr(listener).port();
        let (sub_id, pub_id) = (unique_id(listener), unique_id(listener));
        let topic = unique_id("ws/t");
        let out = tokio::task::spawn_blocking({
            let (sub_id, pub_id) = (sub_id.clone(), pub_id.clone());
            move || paho(host, port, ca.as_deref(), (&sub_id, &pub_id), &topic)
        })
        .await
        .unwrap();
        assert!(out.contains("OK [5, 200000]"), "{listener}: {out}");
        for id in [&sub_id, &pub_id] {
            let v = w
                .wait("$EVENT.CONNECT", |v| v["clientId"] == id.as_str())
                .await;
            assert_eq!(v["protocol"], "WS", "{listener}: {v}");
            w.about("$events/client_connected", id).await;
        }
        let label = format!("listener=\"{listener}\"");
        assert!(
            metric_sum(
                node.http_addr(),
                "skein_listener_connections_total",
                &[&label]
            )
            .await
                >= 2.0
        );
    }
    // A plain client's events still say MQTT.
    let plain = unique_id("plain");
    let (_c, _, _) =
        skein_tests::RawClient::connect_ok(node.mqtt_addr(), &Connect::v311(&plain)).await;
    let v = w
        .wait("$EVENT.CONNECT", |v| v["clientId"] == plain.as_str())
        .await;
    assert_eq!(v["protocol"], "MQTT");
}

/// A WebSocket client written out by hand: the upgrade, masked frames out, frames in.
struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
}

/// One frame from the server: opcode and payload.
type Frame = (u8, Vec<u8>);

const BINARY: u8 = 0x2;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// The upgrade request for `path` offering `protocols`; the server's status line and head.
async fn upgrade(addr: SocketAddr, path: &str, protocols: Option<&str>) -> (TcpStream, String) {
    upgrade_then(addr, path, protocols, &[]).await
}

/// [`upgrade`], with `then` (frames) sent in the same write as the request.
async fn upgrade_then(
    addr: SocketAddr,
    path: &str,
    protocols: Option<&str>,
    then: &[u8],
) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        request.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(then);
    stream.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut byte))
            .await
            .expect("upgrade answer within the deadline")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// One masked frame (as a client must send them).
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

impl RawWs {
    async fn open(addr: SocketAddr) -> RawWs {
        let (stream, head) = upgrade(addr, "/mqtt", Some("mqtt")).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-protocol: mqtt\r\n"),
            "{head}"
        );
        RawWs {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Sends one masked frame (as a client must).
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&masked(opcode, payload))
            .await
            .unwrap();
    }

    /// The next frame from the server; None when the socket closed.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(RECV_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("a frame within the deadline")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn parse(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, start) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < start + len {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let payload = b[start..start + len].to_vec();
        let _ = self.buf.split_to(start + len);
        Some((opcode, payload))
    }

    /// MQTT packets from binary frames until one decodes (frames may split or join them).
    async fn packet(&mut self, mqtt: &mut BytesMut) -> Packet {
        loop {
            if decode(&mut mqtt.clone(), Proto::V311).is_ok() {
                let (packet, _) = decode(mqtt, Proto::V311).unwrap();
                return packet;
            }
            let (opcode, payload) = self.recv().await.expect("socket closed before a packet");
            assert_eq!(opcode, BINARY, "MQTT comes in binary frames");
            mqtt.extend_from_slice(&payload);
        }
    }
}

fn ws_node() -> Node {
    Node::builder().arg("--ws").arg("127.0.0.1:0").start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_may_carry_half_a_packet_or_two_packets() {
    let node = ws_node();
    let mut ws = RawWs::open(node.listener_addr("ws")).await;
    let mut mqtt = BytesMut::new();
    let id = unique_id("raw-ws");
    let connect = Connect::v311(&id).encode();
    // CONNECT in two messages, split mid-packet.
    let half = connect.len() / 2;
    ws.send(BINARY, &connect[..half]).await;
    ws.send(BINARY, &connect[half..]).await;
    match ws.packet(&mut mqtt).await {
        Packet::ConnAck { code, .. } => assert_eq!(code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // SUBSCRIBE and PINGREQ in one message.
    let topic = "ws/raw";
    let mut body = vec![0, 7];
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.push(1);
    let mut two = frame(0x82, &body);
    two.extend_from_slice(&[0xc0, 0x00]);
    ws.send(BINARY, &two).await;
    match ws.packet(&mut mqtt).await {
        Packet::SubAck { .. } => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert!(matches!(ws.packet(&mut mqtt).await, Packet::PingResp));
    // A publish from a plain client arrives over the WebSocket.
    skein_tests::cli::mosquitto_pub(node.mqtt_addr(), &["-t", topic, "-m", "to-ws", "-q", "1"]);
    match ws.packet(&mut mqtt).await {
        Packet::Publish(p) => assert_eq!(p.payload, b"to-ws"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_and_a_close_is_answered_and_ends_the_connection() {
    let node = ws_node();
    let mut ws = RawWs::open(node.listener_addr("ws")).await;
    let mut mqtt = BytesMut::new();
    ws.send(BINARY, &Connect::v311(&unique_id("ping")).encode())
        .await;
    assert!(matches!(ws.packet(&mut mqtt).await, Packet::ConnAck { .. }));
    ws.send(PING, b"are you there").await;
    assert_eq!(ws.recv().await, Some((PONG, b"are you there".to_vec())));
    ws.send(CLOSE, &1000u16.to_be_bytes()).await;
    let answer = ws.recv().await.expect("a close frame in answer");
    assert_eq!(answer.0, CLOSE);
    // Then the connection ends.
    let mut rest = [0u8; 16];
    let end = tokio::time::timeout(RECV_TIMEOUT, ws.stream.read(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_or_a_message_over_the_size_limit_closes_the_connection() {
    let node = Node::builder()
        .arg("--ws")
        .arg("127.0.0.1:0")
        .env("SKEIN_MAX_PACKET_SIZE", "1024")
        .start();
    let addr = node.listener_addr("ws");
    let mut ws = RawWs::open(addr).await;
    let mut mqtt = BytesMut::new();
    ws.send(BINARY, &Connect::v311(&unique_id("text")).encode())
        .await;
    assert!(matches!(ws.packet(&mut mqtt).await, Packet::ConnAck { .. }));
    ws.send(TEXT, b"MQTT is binary").await;
    let closed = loop {
        match ws.recv().await {
            None => break true,
            Some((CLOSE, _)) => break true,
            Some(_) => {}
        }
    };
    assert!(closed);

    let mut ws = RawWs::open(addr).await;
    ws.send(BINARY, &vec![0u8; 4096]).await;
    let closed = loop {
        match ws.recv().await {
            None => break true,
            Some((CLOSE, _)) => break true,
            Some(_) => {}
        }
    };
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_to_another_path_or_without_an_mqtt_subprotocol_are_refused() {
    let node = ws_node();
    let addr = node.listener_addr("ws");
    let (_s, head) = upgrade(addr, "/other", Some("mqtt")).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (_s, head) = upgrade(addr, "/mqtt", Some("chat, superchat")).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (_s, head) = upgrade(addr, "/mqtt", None).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // The older subprotocol name of MQTT 3.1 is accepted.
    let (_s, head) = upgrade(addr, "/mqtt", Some("mqttv3.1")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let http = node.http_addr();
    let path = ["listener=\"ws\"", "reason=\"ws_path\""];
    assert!(metric_reaches(http, "skein_handshake_failures_total", &path, 1.0).await);
    let sub = ["listener=\"ws\"", "reason=\"ws_subprotocol\""];
    assert!(metric_reaches(http, "skein_handshake_failures_total", &sub, 2.0).await);
}

/// A client must wait for the 101 before it sends frames (RFC 6455, 4.1): bytes behind the
/// upgrade request are refused and counted, not taken as MQTT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_before_the_upgrade_is_answered_are_refused() {
    let node = ws_node();
    let connect = masked(BINARY, &Connect::v311(&unique_id("eager")).encode());
    let (_stream, head) =
        upgrade_then(node.listener_addr("ws"), "/mqtt", Some("mqtt"), &connect).await;
    assert!(!head.starts_with("HTTP/1.1 101"), "{head}");
    let labels = ["listener=\"ws\"", "reason=\"ws_upgrade\""];
    assert!(
        metric_reaches(
            node.http_addr(),
            "skein_handshake_failures_total",
            &labels,
            1.0
        )
        .await
    );
}
