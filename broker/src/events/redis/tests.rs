//! The Redis sink against a real `redis-server` (Debian package `redis-server`), started
//! per test on a free loopback port without persistence.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::codec::ProtocolVersion;
use crate::config::Config;
use crate::disconnect::DisconnectReason;
use crate::events::test_support::{connected, event_at};
use crate::events::{ClientInfo, EventBody, EventKind, NodeInfo};
use skein_seam::ClientId;

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not installed (apt-get install redis-server)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on (bound then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn bus() -> EventBus {
    EventBus::new(NodeInfo {
        node: "127.0.0.1:1883".into(),
        node_ip: "127.0.0.1".into(),
        node_name: "edge-r".into(),
    })
}

fn config(url: String) -> Config {
    Config {
        redis_url: url,
        redis_stream_prefix: "test".into(),
        ..Config::default()
    }
}

fn client(id: &str) -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        connected_at_ms: 7,
        ..ClientInfo::unknown(ClientId::new(id), ProtocolVersion::V311)
    })
}

fn disconnected(c: &Arc<ClientInfo>, at_ms: u64) -> Event {
    ended(c, at_ms, true)
}

/// `client.disconnected`; `had_session` false: refused before it went live.
fn ended(c: &Arc<ClientInfo>, at_ms: u64, had_session: bool) -> Event {
    event_at(
        c,
        at_ms,
        EventBody::Disconnected {
            reason: DisconnectReason::TcpClosed,
            disconnected_at_ms: at_ms,
            takeover_node: None,
            by_disconnect_packet: false,
            had_session,
            on_node: None,
        },
    )
}

/// XRANGE key - + as (id, [(field, value)]).
async fn xrange(url: &str, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let target = parse_url(url).unwrap();
    let mut conn = Connection::connect(&target, Duration::from_secs(5))
        .await
        .unwrap();
    let reply = conn
        .pipeline(&[vec![b"XRANGE", key.as_bytes(), b"-", b"+"]])
        .await
        .unwrap()
        .remove(0);
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("not a bulk string: {other:?}"),
    };
    let Reply::Array(Some(items)) = reply else {
        panic!("XRANGE answered {reply:?}");
    };
    items
        .iter()
        .map(|item| {
            let Reply::Array(Some(parts)) = item else {
                panic!("entry {item:?}");
            };
            let Reply::Array(Some(fields)) = &parts[1] else {
                panic!("fields {parts:?}");
            };
            let pairs = fields
                .chunks(2)
                .map(|kv| (text(&kv[0]), text(&kv[1])))
                .collect();
            (text(&parts[0]), pairs)
        })
        .collect()
}

async fn wait_for_len(url: &str, key: &str, n: usize) -> Vec<(String, Vec<(String, String)>)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = xrange(url, key).await;
        if entries.len() >= n || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn off_unless_a_url_is_set() {
    let mut b = bus();
    assert!(register(&mut b, &Config::default()).is_none());
    assert!(!b.wants(EventKind::ClientConnected));
    assert_eq!(stream_key("skein"), "skein.mqtt");
    assert_eq!(Config::default().redis_stream_prefix, "skein");
}

#[tokio::test]
async fn entries_are_xadded_with_the_seed_fields_in_order() {
    let redis = RedisServer::start_on(free_port());
    let mut bus = bus();
    let task = register(&mut bus, &config(redis.url())).unwrap().start();
    let a = client("dev-a");
    bus.emit(connected(&a, 1_700_000_000_001));
    bus.emit(ended(&client("refused"), 1, false));
    bus.emit(disconnected(&a, 1_700_000_000_002));
    let entries = wait_for_len(&redis.url(), "test.mqtt", 2).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(
        entries[0].1,
        pairs(&[
            ("client_id", "dev-a"),
            ("event_type", "connect"),
            ("instance", "edge-r"),
            ("occurred_at", "1700000000001000000"),
        ])
    );
    assert_eq!(
        entries[1].1,
        pairs(&[
            ("client_id", "dev-a"),
            ("event_type", "disconnect"),
            ("instance", "edge-r"),
            ("occurred_at", "1700000000002000000"),
        ])
    );
    task.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn redis_stream_maxlen_trims_the_stream_keeping_the_newest() {
    // Small internal nodes, so that `MAXLEN ~` trims close to the limit.
    let redis = RedisServer::start_with(free_port(), &["--stream-node-max-entries", "5"]);
    let mut bus = bus();
    let config = Config {
        redis_stream_maxlen: 20,
        ..config(redis.url())
    };
    let task = register(&mut bus, &config).unwrap().start();
    for i in 0..200 {
        bus.emit(connected(&client(&format!("c{i}")), i + 1));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let entries = loop {
        let entries = xrange(&redis.url(), "test.mqtt").await;
        if entries.last().is_some_and(|(_, f)| f[0].1 == "c199") {
            break entries;
        }
        assert!(Instant::now() < deadline, "c199 never arrived: {entries:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        (20..=25).contains(&entries.len()),
        "{} entries kept",
        entries.len()
    );
    let ids: Vec<&str> = entries.iter().map(|(_, f)| f[0].1.as_str()).collect();
    let newest: Vec<String> = (200 - entries.len()..200)
        .map(|i| format!("c{i}"))
        .collect();
    assert_eq!(ids, newest);
    task.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn entries_wait_for_redis_to_come_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut bus = bus();
    let task = register(&mut bus, &config(url.clone())).unwrap().start();
    for i in 0..5 {
        bus.emit(connected(&client(&format!("c{i}")), i));
    }
    // Let a few connection attempts fail first.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _redis = RedisServer::start_on(port);
    let entries = wait_for_len(&url, "test.mqtt", 5).await;
    let ids: Vec<&str> = entries.iter().map(|(_, f)| f[0].1.as_str()).collect();
    assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4"]);
    task.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_refused_command_is_skipped_not_retried() {
    let redis = RedisServer::start_on(free_port());
    // The key holds a string: XADD answers WRONGTYPE.
    let target = parse_url(&redis.url()).unwrap();
    let mut conn = Connection::connect(&target, Duration::from_secs(5))
        .await
        .unwrap();
    let reply = conn
        .pipeline(&[vec![b"SET", b"test.mqtt", b"x"]])
        .await
        .unwrap();
    assert_eq!(reply, vec![Reply::Status("OK".into())]);
    let mut bus = bus();
    let task = register(&mut bus, &config(redis.url())).unwrap().start();
    bus.emit(connected(&client("a"), 1));
    // Give it time to try, then make the key a stream again: later entries go through.
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.pipeline(&[vec![b"DEL", b"test.mqtt"]]).await.unwrap();
    bus.emit(connected(&client("b"), 2));
    let entries = wait_for_len(&redis.url(), "test.mqtt", 1).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1[0].1, "b");
    task.finish(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_an_unreachable_redis() {
    let mut bus = bus();
    let task = register(
        &mut bus,
        &config(format!("redis://127.0.0.1:{}", free_port())),
    )
    .unwrap()
    .start();
    bus.emit(connected(&client("a"), 1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    task.finish(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn password_and_database_are_used() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "s3cret",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let redis = RedisServer { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(async {
        let bad = parse_url(&format!("redis://:wrong@127.0.0.1:{port}")).unwrap();
        assert!(matches!(
            Connection::connect(&bad, Duration::from_secs(5)).await,
            Err(RespError::Refused("AUTH", _))
        ));
        let url = format!("redis://:s3cret@127.0.0.1:{port}/2");
        let mut bus = bus();
        let task = register(&mut bus, &config(url.clone())).unwrap().start();
        bus.emit(connected(&client("a"), 1));
        let entries = wait_for_len(&url, "test.mqtt", 1).await;
        assert_eq!(entries.len(), 1);
        let db0 = format!("redis://:s3cret@127.0.0.1:{port}/0");
        assert!(
            xrange(&db0, "test.mqtt").await.is_empty(),
            "written to db 2 only"
        );
        task.finish(Duration::from_secs(5)).await;
    });
    drop(redis);
}
