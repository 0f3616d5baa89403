//! The HTTP port is bounded like the MQTT port: slow or idle HTTP clients are closed after
//! the configured timeouts, bodies are limited, connections beyond `http_max_connections`
//! are closed at once, and none of it locks MQTT clients out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skein_tests::clients::v3;
use skein_tests::{
    http_get, http_request, metric_sum, Connect, Node, Packet, Proto, RawClient, RECV_TIMEOUT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far more than any timeout set here: a connection still open this long was not closed.
const CLOSE_DEADLINE: Duration = Duration::from_secs(15);

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect")
}

/// Reads until the server ends the connection (EOF or reset), at most `deadline`: what
/// arrived and how long it took, or None when the connection was still open.
async fn until_closed(stream: &mut TcpStream, deadline: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((started.elapsed(), String::from_utf8_lossy(&got).into()))
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `request` on a kept-alive connection and reads exactly one response (by its
/// Content-Length): (status, body).
async fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).await.expect("write");
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a Content-Length");
            if body.len() >= length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
                return (status.expect("a status"), body.to_string());
            }
        }
    };
    tokio::time::timeout(RECV_TIMEOUT, read)
        .await
        .expect("response timed out")
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: skein\r\n\r\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slow {
    /// Connects and sends nothing.
    Silent,
    /// Sends half a header.
    PartialHeader,
    /// Sends a header promising 100 bytes, then 10.
    PartialBody,
}

impl Slow {
    fn bytes(self) -> &'static [u8] {
        match self {
            Slow::Silent => b"",
            Slow::PartialHeader => b"GET /healthz HTTP/1.1\r\nHost: skein\r\n",
            Slow::PartialBody => {
                b"POST /api/v1/publish HTTP/1.1\r\nHost: skein\r\nContent-Length: 100\r\n\r\n{\"topic\":"
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_http_connections_are_closed_after_their_timeouts() {
    const HEADER: Duration = Duration::from_millis(800);
    const IDLE: Duration = Duration::from_millis(2500);
    const BODY: Duration = Duration::from_millis(1200);
    const EACH: usize = 30;
    let node = Node::builder()
        .env("SKEIN_HTTP_HEADER_TIMEOUT_MS", HEADER.as_millis())
        .env("SKEIN_HTTP_IDLE_TIMEOUT_MS", IDLE.as_millis())
        .env("SKEIN_HTTP_BODY_TIMEOUT_MS", BODY.as_millis())
        .start();
    let http = node.http_addr();

    let mut slow = Vec::new();
    for kind in [Slow::Silent, Slow::PartialHeader, Slow::PartialBody] {
        for _ in 0..EACH {
            slow.push(tokio::spawn(async move {
                let mut stream = connect(http).await;
                stream.write_all(kind.bytes()).await.expect("write");
                (kind, until_closed(&mut stream, CLOSE_DEADLINE).await)
            }));
        }
    }
    // Kept alive after an answer: open past the header timeout, closed at the idle one.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tokio::spawn(async move {
            let mut stream = connect(http).await;
            let (status, _) = exchange(&mut stream, &get("/healthz")).await;
            assert_eq!(status, 200);
            let answered = Instant::now();
            let early = until_closed(&mut stream, HEADER * 2).await;
            assert!(early.is_none(), "closed before the idle timeout: {early:?}");
            let closed = until_closed(&mut stream, CLOSE_DEADLINE).await;
            (answered.elapsed(), closed)
        }));
    }

    for task in slow {
        let (kind, closed) = task.await.unwrap();
        let (after, answer) =
            closed.unwrap_or_else(|| panic!("{kind:?} still open after {CLOSE_DEADLINE:?}"));
        // The server's clock starts no earlier than the client's: never closed early.
        let timeout = if kind == Slow::PartialBody {
            BODY
        } else {
            HEADER
        };
        assert!(
            after >= timeout - Duration::from_millis(50),
            "{kind:?} closed after {after:?}, before {timeout:?}"
        );
        if kind == Slow::PartialBody {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
            assert!(answer.contains("http_body_timeout_ms"), "{answer:?}");
        } else {
            assert_eq!(answer, "", "{kind:?} got an answer");
        }
    }
    for task in idle {
        let (after, closed) = task.await.unwrap();
        assert!(
            closed.is_some(),
            "a kept-alive connection still open after {after:?}"
        );
        assert!(
            after >= IDLE - Duration::from_millis(200),
            "idle connection closed after {after:?}"
        );
    }

    let phase = |p: &'static str| async move {
        metric_sum(
            http,
            "skein_http_timeouts_total",
            &[&format!("phase=\"{p}\"")],
        )
        .await
    };
    assert!(phase("header").await >= (2 * EACH) as f64);
    assert!(phase("body").await >= EACH as f64);
    assert!(phase("idle").await >= 5.0);
    // The node serves as before.
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);
    let mut c = v3::Client::connect(node.mqtt_addr(), "after-slow-http").await;
    c.subscribe("t", v3::QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_without_waiting_for_it() {
    // The body timeout stays at its 30 s default: a quick 413 did not wait for the body.
    let node = Node::builder()
        .env("SKEIN_HTTP_MAX_BODY_BYTES", 1000)
        .start();
    let http = node.http_addr();

    let started = Instant::now();
    let mut stream = connect(http).await;
    stream
        .write_all(
            b"POST /api/v1/publish HTTP/1.1\r\nHost: skein\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000000\r\n\r\n",
        )
        .await
        .unwrap();
    let (_, answer) = until_closed(&mut stream, RECV_TIMEOUT)
        .await
        .expect("still open: the server waited for the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("http_max_body_bytes"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Chunked, so the size is only known while reading: cut at the limit.
    let mut stream = connect(http).await;
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: skein\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(RECV_TIMEOUT, stream.read_exact(&mut head))
        .await
        .expect("no answer to a chunked body over the limit")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");

    // Within the limit, the API works.
    let body = r#"{"topic": "limits/ok", "payload": "fits"}"#;
    let (status, answer) = http_request(http, "POST", "/api/v1/publish", &[], body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(metric_sum(http, "skein_http_bodies_too_large_total", &[]).await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_http_max_connections_new_connections_are_closed_and_mqtt_still_accepts() {
    const MAX: usize = 4;
    let node = Node::builder()
        .env("SKEIN_HTTP_MAX_CONNECTIONS", MAX)
        .start();
    let http = node.http_addr();
    // Each answered once, so the server holds them all.
    let mut held = Vec::new();
    for _ in 0..MAX {
        let mut stream = connect(http).await;
        assert_eq!(exchange(&mut stream, &get("/healthz")).await.0, 200);
        held.push(stream);
    }
    for _ in 0..10 {
        let mut extra = connect(http).await;
        let _ = extra.write_all(get("/healthz").as_bytes()).await;
        let closed = until_closed(&mut extra, RECV_TIMEOUT).await;
        let (_, answer) = closed.expect("a connection beyond the limit stayed open");
        assert_eq!(answer, "", "a connection beyond the limit was served");
    }
    // MQTT is not affected by the HTTP limit.
    let mut sub = v3::Client::connect(node.mqtt_addr(), "http-full-sub").await;
    sub.subscribe("t/#", v3::QoS::AtLeastOnce).await;
    let mut publ = v3::Client::connect(node.mqtt_addr(), "http-full-pub").await;
    publ.publish("t/1", v3::QoS::AtLeastOnce, false, "hi").await;
    assert_eq!(&sub.recv().await.payload[..], b"hi");

    // A held connection still serves, /metrics included.
    let (status, text) = exchange(&mut held[0], &get("/metrics")).await;
    assert_eq!(status, 200);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    assert!(value("skein_http_connections_refused_total") >= 10.0);
    assert_eq!(value("skein_http_connections"), MAX as f64);

    // A freed slot is taken again.
    held.pop();
    let mut served = false;
    let deadline = Instant::now() + RECV_TIMEOUT;
    while !served && Instant::now() < deadline {
        served = http_get(http, "/healthz")
            .await
            .is_ok_and(|(s, _)| s == 200);
        if !served {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(served, "no HTTP connection accepted after one closed");
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/<pid>/fd")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_sockets_exhausting_the_fd_limit_do_not_lock_mqtt_out_for_good() {
    const HEADER_MS: u64 = 1500;
    let node = Node::builder()
        .env("SKEIN_HTTP_HEADER_TIMEOUT_MS", HEADER_MS)
        .start();
    let (http, pid) = (node.http_addr(), node.pid());
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);
    // Room for 20 more descriptors, then EMFILE: as a node at `ulimit -n` would be.
    let limit = open_fds(pid) + 20;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("running prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");

    // Idle HTTP sockets: 20 take the descriptors, the rest wait in the kernel's queue.
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(connect(http).await);
    }
    // An MQTT client gets in once the header timeout has freed descriptors (before, it
    // waited as long as the idle HTTP sockets stayed: forever).
    let mut mqtt = RawClient::tcp(node.mqtt_addr(), Proto::V311).await;
    mqtt.send(&Connect::v311("after-emfile").encode()).await;
    match mqtt.recv(Duration::from_secs(30)).await {
        Ok(Packet::ConnAck { code: 0, .. }) => {}
        other => panic!("MQTT locked out after the HTTP sockets timed out: {other:?}"),
    }
    drop(idle);

    let mut errors = 0.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok((200, text)) = http_get(http, "/metrics").await {
            errors = text
                .lines()
                .filter(|l| l.starts_with("skein_accept_errors_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors > 0.0, "the failed accepts were not counted");
}
