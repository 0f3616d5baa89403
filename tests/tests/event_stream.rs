//! The stream dialect: connects and disconnects of real clients in a persisted log with
//! increasing ids, read over HTTP (pages, long poll, server-sent events), kept across a
//! restart of the node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::clients::v3;
use skein_tests::{http_get, http_request, unique_id, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// The events of `client_id` in the log, waiting until there are `n`.
async fn entries_of(node: &Node, client_id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get_json(node.http_addr(), "/api/v1/events?after=0&limit=1000").await;
        let mine: Vec<Value> = page["events"]
            .as_array()
            .expect("events array")
            .iter()
            .filter(|e| e["client_id"] == client_id)
            .cloned()
            .collect();
        if mine.len() >= n {
            return mine;
        }
        assert!(Instant::now() < deadline, "{client_id}: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Checks one entry field by field (names, JSON types, values).
fn check_entry(e: &Value, client_id: &str, event_type: &str, instance: &str, after_ns: u64) {
    let fields: Vec<&str> = {
        let mut k: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    };
    assert_eq!(
        fields,
        ["client_id", "event_type", "id", "instance", "occurred_at"],
        "{e}"
    );
    assert!(e["id"].is_u64(), "{e}");
    assert_eq!(e["client_id"], client_id);
    assert_eq!(e["event_type"], event_type);
    assert_eq!(e["instance"], instance);
    let at = e["occurred_at"]
        .as_u64()
        .expect("occurred_at is an integer");
    // Nanoseconds, from the clock when the event was raised.
    assert!(
        at >= after_ns && at <= now_ns(),
        "occurred_at {at} vs {after_ns}"
    );
}

#[tokio::test]
async fn connects_and_disconnects_are_logged_and_survive_a_restart() {
    let mut node = Node::builder().env("SKEIN_NODE_NAME", "edge-9").start();
    let id = unique_id("st");
    let before = now_ns();
    let c = v3::Client::connect(node.mqtt_addr(), &id).await;
    c.disconnect().await;
    let entries = entries_of(&node, &id, 2).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    check_entry(&entries[0], &id, "connect", "edge-9", before);
    check_entry(&entries[1], &id, "disconnect", "edge-9", before);
    let (first, second) = (
        entries[0]["id"].as_u64().unwrap(),
        entries[1]["id"].as_u64().unwrap(),
    );
    assert!(first < second);
    assert!(entries[0]["occurred_at"].as_u64() <= entries[1]["occurred_at"].as_u64());

    assert!(node.terminate().success());
    node.restart();
    let page = get_json(node.http_addr(), "/api/v1/events?after=0").await;
    let kept: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["client_id"] == id.as_str())
        .collect();
    assert_eq!(
        kept,
        entries.iter().collect::<Vec<_>>(),
        "same entries, same ids"
    );

    let c = v3::Client::connect(node.mqtt_addr(), &id).await;
    let again = entries_of(&node, &id, 3).await;
    assert!(
        again[2]["id"].as_u64().unwrap() > second,
        "ids keep increasing: {again:?}"
    );
    check_entry(&again[2], &id, "connect", "edge-9", before);
    c.kill().await;
    let page = get_json(
        node.http_addr(),
        &format!("/api/v1/events?after={second}&limit=1"),
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["id"], again[2]["id"]);
    assert_eq!(page["next"], again[2]["id"]);
}

#[tokio::test]
async fn occurred_at_is_real_nanoseconds_not_scaled_milliseconds() {
    let node = Node::start();
    let mut at = Vec::new();
    for _ in 0..3 {
        let id = unique_id("ns");
        v3::Client::connect(node.mqtt_addr(), &id)
            .await
            .disconnect()
            .await;
        for e in entries_of(&node, &id, 2).await {
            at.push(e["occurred_at"].as_u64().expect("integer"));
        }
    }
    // A millisecond clock scaled up always ends in six zeros; six real nanosecond
    // readings all doing so has a chance of 1e-36.
    assert!(at.iter().any(|t| t % 1_000_000 != 0), "{at:?}");
}

#[tokio::test]
async fn refused_connections_write_nothing() {
    let node = Node::builder().env("SKEIN_MAX_CLIENT_ID_LEN", "8").start();
    let long = "much-too-long-client-id";
    let refused = v3::Client::try_connect(v3::options(node.mqtt_addr(), long)).await;
    assert!(refused.is_err());
    let ok = unique_id("ok");
    assert!(ok.len() <= 8);
    let c = v3::Client::connect(node.mqtt_addr(), &ok).await;
    entries_of(&node, &ok, 1).await;
    c.disconnect().await;
    entries_of(&node, &ok, 2).await;
    let page = get_json(node.http_addr(), "/api/v1/events?after=0").await;
    let all = page["events"].as_array().unwrap();
    assert!(all.iter().all(|e| e["client_id"] != long), "{page}");
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_client_connects() {
    let node = Node::start();
    let page = get_json(node.http_addr(), "/api/v1/events").await;
    let next = page["next"].as_u64().unwrap();
    let http = node.http_addr();
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let path = format!("/api/v1/events?after={next}&wait_ms=20000");
        // http_get gives up after 5 s: this request must be answered well before.
        let page = get_json(http, &path).await;
        (page, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = unique_id("poll");
    let _c = v3::Client::connect(node.mqtt_addr(), &id).await;
    let (page, took) = poll.await.unwrap();
    assert_eq!(page["events"][0]["client_id"], id.as_str(), "{page}");
    assert_eq!(page["events"][0]["event_type"], "connect");
    assert!(took < Duration::from_secs(4), "{took:?}");

    // Nothing new: empty at the deadline.
    let next = page["next"].as_u64().unwrap();
    let started = Instant::now();
    let page = get_json(
        node.http_addr(),
        &format!("/api/v1/events?after={next}&wait_ms=300"),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(page["events"].as_array().unwrap().len(), 0);
    assert_eq!(page["next"], next);
}

#[tokio::test]
async fn server_sent_events_carry_ids_to_resume_from() {
    let node = Node::start();
    let id = unique_id("sse");
    let c = v3::Client::connect(node.mqtt_addr(), &id).await;
    let first = entries_of(&node, &id, 1).await[0]["id"].as_u64().unwrap();

    let mut s = tokio::net::TcpStream::connect(node.http_addr())
        .await
        .unwrap();
    let req = format!(
        "GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {}\r\n\r\n",
        first - 1
    );
    s.write_all(req.as_bytes()).await.unwrap();
    c.disconnect().await;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events: Vec<(u64, Value)> = sse_events(&text);
        if events.len() >= 2 {
            break events;
        }
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            other => panic!("stream ended ({other:?}): {text}"),
        }
    };
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    assert_eq!(events[0].0, first);
    assert_eq!(events[0].1["id"], first);
    assert_eq!(events[0].1["client_id"], id.as_str());
    assert_eq!(events[0].1["event_type"], "connect");
    assert!(events[1].0 > first);
    assert_eq!(events[1].1["event_type"], "disconnect");
}

/// (id, data) of the complete events in an SSE response so far.
fn sse_events(text: &str) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("data:") {
            if let (Some(i), Ok(d)) = (id.take(), serde_json::from_str(v.trim())) {
                out.push((i, d));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_stream_can_be_switched_off_and_is_behind_the_api_token() {
    let node = Node::builder().env("SKEIN_STREAM_ENABLED", "false").start();
    let (status, body) = http_get(node.http_addr(), "/api/v1/events").await.unwrap();
    assert_eq!(status, 404, "{body}");

    let node = Node::builder().env("SKEIN_API_TOKEN", "t0k").start();
    let (status, _) = http_get(node.http_addr(), "/api/v1/events").await.unwrap();
    assert_eq!(status, 401);
    let (status, body) = http_request(
        node.http_addr(),
        "GET",
        "/api/v1/events?limit=5",
        &["Authorization: Bearer t0k"],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(node.http_addr(), "/api/v1/events?limit=x")
        .await
        .unwrap();
    assert_eq!(status, 401, "auth first: {body}");
}

#[tokio::test]
async fn clients_still_connected_at_shutdown_get_their_disconnect_logged() {
    let mut node = Node::start();
    let id = unique_id("at-stop");
    let _c = v3::Client::connect(node.mqtt_addr(), &id).await;
    entries_of(&node, &id, 1).await;
    assert!(node.terminate().success());
    node.restart();
    let entries = entries_of(&node, &id, 2).await;
    assert_eq!(entries[1]["event_type"], "disconnect", "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_kinds_choose_what_is_recorded() {
    let node = Node::builder()
        .env("SKEIN_STREAM_KINDS", "client.disconnected")
        .start();
    let id = unique_id("kinds");
    let c = v3::Client::connect(node.mqtt_addr(), &id).await;
    c.disconnect().await;
    let entries = entries_of(&node, &id, 1).await;
    // The disconnect is there; give a stray connect entry no chance to be missed.
    let again = entries_of(&node, &id, 1).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(entries[0]["event_type"], "disconnect", "{entries:?}");
}
