//! Tests of the event stream's HTTP API, over a real stream dialect and a real socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_storage::{EventLog, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::config::Config;
use crate::events::sink_task::SinkTask;
use crate::events::stream::register;
use crate::events::stream::tests::{bus, client, disconnected};
use crate::events::test_support::connected;
use crate::events::{EventBus, EventKind};

struct Server {
    addr: SocketAddr,
    bus: EventBus,
    store: Store,
    task: Option<SinkTask>,
}

async fn start(config: Config) -> Server {
    let store = Store::open_temporary().unwrap();
    let mut bus = bus();
    let dialect = register(&mut bus, &config, &store);
    let app = super::super::compose(vec![router(dialect.api(), Some(String::new()))]);
    let task = dialect.start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        addr,
        bus,
        store,
        task,
    }
}

/// One request; returns (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("response timed out")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn wait_for_entries(log: &EventLog, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.len() < n {
        assert!(Instant::now() < deadline, "log has {} entries", log.len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn pages_of_entries_with_ids_and_next() {
    let s = start(Config::default()).await;
    let a = client("a", 1);
    s.bus.emit(connected(&a, 1_000));
    s.bus.emit(disconnected(&a, 2_000));
    s.bus.emit(connected(&client("b", 3), 3_000));
    wait_for_entries(s.store.event_log(), 3).await;

    let page = get_json(s.addr, "/api/v1/events").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    let first = &events[0];
    assert!(first["id"].as_u64().unwrap() >= 1);
    assert_eq!(first["client_id"], "a");
    assert_eq!(first["event_type"], "connect");
    assert_eq!(first["instance"], "edge-7");
    assert_eq!(first["occurred_at"], 1_000_000_000u64);
    assert_eq!(events[1]["event_type"], "disconnect");
    assert_eq!(events[1]["occurred_at"], 2_000_000_000u64);
    assert_eq!(events[2]["client_id"], "b");
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(page["next"], ids[2]);

    let page = get_json(s.addr, &format!("/api/v1/events?after={}&limit=1", ids[0])).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["id"], ids[1]);
    assert_eq!(page["next"], ids[1]);

    let page = get_json(s.addr, &format!("/api/v1/events?after={}", ids[2])).await;
    assert_eq!(page, json!({ "events": [], "next": ids[2] }));
    s.task.unwrap().finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_queries_are_json_400s() {
    let s = start(Config::default()).await;
    for path in [
        "/api/v1/events?after=x",
        "/api/v1/events?after=-1",
        "/api/v1/events?afterr=1",
        "/api/v1/events?after=1&after=2",
        "/api/v1/events/stream?limit=1",
    ] {
        let (status, body) = get(s.addr, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_long_poll_answers_when_an_entry_arrives_or_at_its_deadline() {
    let s = start(Config::default()).await;
    let started = Instant::now();
    let page = get_json(s.addr, "/api/v1/events?after=0&wait_ms=200").await;
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert_eq!(page, json!({ "events": [], "next": 0 }));

    let addr = s.addr;
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        (
            get_json(addr, "/api/v1/events?after=0&wait_ms=30000").await,
            started.elapsed(),
        )
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.bus.emit(connected(&client("late", 1), 5_000));
    let (page, took) = poll.await.unwrap();
    assert_eq!(page["events"][0]["client_id"], "late");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// Reads server-sent events until `n` have arrived; returns their (id, data).
async fn read_sse(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<u64>,
    n: usize,
) -> Vec<(u64, Value)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let extra = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = parse_sse(&text);
        if events.len() >= n {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(
                text.to_ascii_lowercase()
                    .contains("content-type: text/event-stream"),
                "{text}"
            );
            return events;
        }
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, s.read(&mut buf)).await;
        match read {
            Ok(Ok(k)) if k > 0 => text.push_str(&String::from_utf8_lossy(&buf[..k])),
            other => panic!("stream ended or timed out ({other:?}) with {text:?}"),
        }
    }
}

/// The (id, data) of each complete event in a chunked SSE response.
fn parse_sse(text: &str) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let (mut id, mut data) = (None, None);
    for line in text.lines() {
        if let Some(v) = line
            .strip_prefix("id: ")
            .or_else(|| line.strip_prefix("id:"))
        {
            id = v.trim().parse().ok();
        } else if let Some(v) = line
            .strip_prefix("data: ")
            .or_else(|| line.strip_prefix("data:"))
        {
            data = serde_json::from_str::<Value>(v.trim()).ok();
        }
        if let (Some(i), Some(d)) = (id, data.as_ref()) {
            out.push((i, d.clone()));
            id = None;
            data = None;
        }
    }
    out
}

#[tokio::test]
async fn server_sent_events_resume_from_last_event_id() {
    let s = start(Config::default()).await;
    let (a, b) = (client("a", 1), client("b", 2));
    s.bus.emit(connected(&a, 1_000));
    s.bus.emit(connected(&b, 2_000));
    wait_for_entries(s.store.event_log(), 2).await;

    let addr = s.addr;
    let reader =
        tokio::spawn(async move { read_sse(addr, "/api/v1/events/stream", None, 3).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Arrives while the stream is open.
    s.bus.emit(disconnected(&a, 3_000));
    let events = reader.await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].1["client_id"], "a");
    assert_eq!(events[0].1["id"], events[0].0);
    assert_eq!(events[1].1["client_id"], "b");
    assert_eq!(events[2].1["event_type"], "disconnect");

    // A reconnect with Last-Event-ID gets only what came after, whatever `after` says.
    let resumed = read_sse(
        s.addr,
        "/api/v1/events/stream?after=0",
        Some(events[1].0),
        1,
    )
    .await;
    assert_eq!(resumed[0].0, events[2].0);
    let resumed = read_sse(
        s.addr,
        &format!("/api/v1/events/stream?after={}", events[0].0),
        None,
        2,
    )
    .await;
    assert_eq!(resumed[0].0, events[1].0);
}

#[tokio::test]
async fn disabled_stream_registers_nothing_and_answers_404() {
    let config = Config {
        stream_enabled: false,
        ..Config::default()
    };
    let s = start(config).await;
    assert!(s.task.is_none());
    assert!(!s.bus.wants(EventKind::ClientConnected));
    let (status, body) = get(s.addr, "/api/v1/events").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("disabled"), "{body}");
}

#[tokio::test]
async fn the_token_guards_the_stream_routes() {
    let store = Store::open_temporary().unwrap();
    let mut bus = bus();
    let dialect = register(&mut bus, &Config::default(), &store);
    let app = super::super::compose(vec![router(dialect.api(), Some("t0k".into()))]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, _) = get(addr, "/api/v1/events").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn finishing_appends_what_was_raised_and_ends_waiting_readers() {
    let s = start(Config::default()).await;
    let addr = s.addr;
    let poll =
        tokio::spawn(
            async move { get_json(addr, "/api/v1/events?after=1000000&wait_ms=60000").await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..50 {
        s.bus.emit(connected(&client(&format!("c{i}"), i), i));
    }
    let started = Instant::now();
    s.task.unwrap().finish(Duration::from_secs(5)).await;
    assert_eq!(s.store.event_log().len(), 50);
    let page = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page["events"], json!([]));
    assert!(started.elapsed() < Duration::from_secs(5));
}
