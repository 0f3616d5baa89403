//! A full disk never turns into acknowledged-and-lost messages (issue 12). The data
//! directory is a small tmpfs; three offline persistent sessions subscribe to `fill/#` and
//! a publisher sends 4 KB QoS 1 messages until the node refuses one. Every message that
//! got a success PUBACK must reach every session after the node restarts with room on the
//! disk, and a refusal is a failure PUBACK (MQTT 5) or a closed connection (3.1.1), never a
//! success.
//!
//! Two ways to run out: the free-space guard (`storage_min_free_bytes`) refuses before the
//! disk is full and the node keeps serving what needs no disk, recovering by itself when
//! the tmpfs grows; with the guard off the disk really fills, sled fails for good, and the
//! node stops with a non-zero status so that its supervisor restarts it.
//!
//! Mounting needs root (CI runs as root); elsewhere each test prints `skipped: ...`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::codec::{self, Proto};
use skein_tests::{
    http_get, http_request, metric_sum, prop, Connect, Node, NodeBuilder, Packet, Publish,
    RawClient, RecvError, SubFilter, RECV_TIMEOUT,
};

const SUBSCRIBERS: [&str; 3] = ["sub-a", "sub-b", "sub-c"];
const PAYLOAD_LEN: usize = 4096;
/// Far more than an 8 MB disk holds: filling ends with a refusal, not with this.
const MAX_PUBLISHES: u32 = 20_000;
/// Publishes tried again after a refusal, as a client that keeps sending would.
const RETRY_PUBLISHES: u32 = 200;
const RESTART_DEADLINE: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`8m`); None, after printing why, where that is not
    /// possible.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        match mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir.path(),
        ) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(why) => {
                println!("skipped: {test}: cannot mount a tmpfs (needs root): {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks) the file system in place; the node keeps running on it.
    fn resize(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}")], self.path())
            .unwrap_or_else(|e| panic!("cannot resize the tmpfs to {size}: {e}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.path()).status();
        if !status.is_ok_and(|s| s.success()) {
            // Something still holds it (a node that has not exited yet): detach it lazily.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

fn mount(args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn node_on(data: &Path, min_free: &str) -> NodeBuilder {
    Node::builder()
        .data_dir(data)
        .env("SKEIN_STORAGE_MIN_FREE_BYTES", min_free)
        // Bounded queues must not be what refuses here.
        .env("SKEIN_MAX_QUEUED_MESSAGES", 1_000_000)
}

/// Message `n` as payload: its number in 8 digits, then filler up to 4 KB.
fn payload(n: u32) -> Vec<u8> {
    let mut p = format!("{n:08}").into_bytes();
    p.resize(PAYLOAD_LEN, b'x');
    p
}

fn number(payload: &[u8]) -> u32 {
    std::str::from_utf8(&payload[..8])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered payload: {:?}", &payload[..8]))
}

fn persistent(proto: Proto, id: &str) -> Connect {
    Connect::new(proto, id).persistent(3600)
}

/// Creates the three offline persistent sessions subscribed to `fill/#` at QoS 1.
async fn subscribe_offline(addr: SocketAddr, proto: Proto) {
    for id in SUBSCRIBERS {
        let (mut c, _, _) = RawClient::connect_ok(addr, &persistent(proto, id)).await;
        assert_eq!(c.subscribe(1, &[SubFilter::new("fill/#", 1)]).await, [1]);
        c.disconnect().await;
    }
}

/// How the node answered the publish it did not acknowledge.
#[derive(Debug)]
enum Refusal {
    /// PUBACK with a failure reason code (MQTT 5).
    Ack { reason: u8, props: codec::Props },
    /// DISCONNECT (MQTT 5), then the connection closed.
    Disconnect { reason: u8 },
    /// The connection closed without an acknowledgement.
    Closed,
}

/// Publishes messages `from..` one at a time, each awaiting its PUBACK, until one is not
/// acknowledged with success. Returns the acknowledged numbers and the refusal.
async fn publish_until_refused(c: &mut RawClient, from: u32) -> (BTreeSet<u32>, Refusal) {
    match publish_some(c, from, MAX_PUBLISHES).await {
        (acked, Some(refusal)) => (acked, refusal),
        (_, None) => {
            panic!("{MAX_PUBLISHES} publishes of 4 KB were all acknowledged on a small tmpfs")
        }
    }
}

/// Publishes at most `count` messages from `from` on, one at a time, each awaiting its
/// PUBACK; stops at the first that is not acknowledged with success.
async fn publish_some(
    c: &mut RawClient,
    from: u32,
    count: u32,
) -> (BTreeSet<u32>, Option<Refusal>) {
    let mut acked = BTreeSet::new();
    for n in from..from + count {
        let pkid = (n % 60_000) as u16 + 1;
        let publish = Publish::new(&format!("fill/{n}"), 1, &payload(n)).pkid(pkid);
        if c.try_send(&publish.encode(c.proto)).await.is_err() {
            return (acked, Some(Refusal::Closed));
        }
        match c.recv(RECV_TIMEOUT).await {
            Ok(Packet::PubAck {
                pkid: id,
                reason: 0,
                ..
            }) if id == pkid => {
                acked.insert(n);
            }
            Ok(Packet::PubAck {
                pkid: id,
                reason,
                props,
            }) if id == pkid => return (acked, Some(Refusal::Ack { reason, props })),
            Ok(Packet::Disconnect { reason, .. }) => {
                c.expect_closed(RECV_TIMEOUT).await;
                return (acked, Some(Refusal::Disconnect { reason }));
            }
            Err(RecvError::Closed) => return (acked, Some(Refusal::Closed)),
            other => panic!("publish {n}: unexpected answer {other:?}"),
        }
    }
    (acked, None)
}

/// Publishes message `n` at QoS 2 with packet id `pkid`, completing the flow when it is
/// taken: Some(PUBREC reason), or None when the connection closed without one.
async fn publish_qos2(c: &mut RawClient, n: u32, pkid: u16) -> Option<u8> {
    let publish = Publish::new(&format!("fill/{n}"), 2, &payload(n)).pkid(pkid);
    c.try_send(&publish.encode(c.proto)).await.ok()?;
    let reason = match c.recv(RECV_TIMEOUT).await {
        Ok(Packet::PubRec {
            pkid: id, reason, ..
        }) if id == pkid => reason,
        Err(RecvError::Closed) => return None,
        other => panic!("QoS 2 publish {n}: unexpected answer {other:?}"),
    };
    if reason == 0 {
        c.send(&codec::pubrel(pkid)).await;
        match c.expect(RECV_TIMEOUT).await {
            Packet::PubComp { pkid: id, .. } if id == pkid => {}
            other => panic!("expected PUBCOMP {pkid}, got {other:?}"),
        }
    }
    Some(reason)
}

/// Reconnects each subscriber and receives until every number in `want` has arrived
/// (acknowledging each delivery); returns what each got.
async fn collect(addr: SocketAddr, proto: Proto, want: &BTreeSet<u32>) -> Vec<BTreeSet<u32>> {
    let mut all = Vec::new();
    for id in SUBSCRIBERS {
        let (mut c, present, _) = RawClient::connect_ok(addr, &persistent(proto, id)).await;
        assert!(present, "{id}: the session must have survived the restart");
        let mut got = BTreeSet::new();
        let deadline = Instant::now() + RESTART_DEADLINE;
        while !want.is_subset(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.recv(left).await {
                Ok(Packet::Publish(p)) => {
                    got.insert(number(&p.payload));
                    c.send(&codec::puback(p.pkid)).await;
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "{id}: {e:?} with {} of {} acknowledged messages received; missing: {:?}",
                    want.intersection(&got).count(),
                    want.len(),
                    want.difference(&got).take(10).collect::<Vec<_>>()
                ),
            }
        }
        // Anything else queued comes right behind: take it, to compare below.
        while let Ok(Packet::Publish(p)) = c.recv(Duration::from_millis(300)).await {
            got.insert(number(&p.payload));
            c.send(&codec::puback(p.pkid)).await;
        }
        c.disconnect().await;
        all.push(got);
    }
    all
}

async fn readyz(http: SocketAddr) -> (u16, Value) {
    let (status, body) = http_get(http, "/readyz").await.expect("GET /readyz");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Whether `/readyz` answers 200 within 10 s.
async fn became_ready(http: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if readyz(http).await.0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn api_publish(http: SocketAddr, body: Value) -> (u16, Value) {
    let (status, text) = http_request(http, "POST", "/api/v1/publish", &[], &body.to_string())
        .await
        .expect("POST /api/v1/publish");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Below the guard: refused before the disk is full, the node goes on serving what needs
/// no disk, and it takes publishes again by itself once the tmpfs grows.
async fn the_guard_refuses_and_recovers(test: &str, proto: Proto, min_free: &str) {
    let Some(fs) = Tmpfs::mount(test, "8m") else {
        return;
    };
    let data: PathBuf = fs.path().join("data");
    let mut node = node_on(&data, min_free).start();
    let (addr, http) = (node.mqtt_addr(), node.http_addr());
    assert!(became_ready(http).await, "/readyz never answered 200");
    subscribe_offline(addr, proto).await;
    // A clean subscriber online: its deliveries need no disk.
    let mut live = RawClient::connect_ok(addr, &Connect::new(proto, "live"))
        .await
        .0;
    live.subscribe(1, &[SubFilter::new("live/#", 1)]).await;

    let mut publisher = RawClient::connect_ok(addr, &Connect::new(proto, "filler"))
        .await
        .0;
    let (mut acked, refusal) = publish_until_refused(&mut publisher, 1).await;
    assert!(
        acked.len() >= 50,
        "only {} acknowledged before the refusal",
        acked.len()
    );
    println!("{test}: {} acknowledged, then {refusal:?}", acked.len());
    let refused_first = acked.last().unwrap() + 1;
    match (proto.is_v5(), &refusal) {
        (
            true,
            Refusal::Ack {
                reason: 0x83,
                props,
            },
        ) => {
            let text = props.str(prop::REASON_STRING).unwrap_or_default();
            assert!(text.contains("storage_min_free_bytes"), "{text:?}");
        }
        (false, Refusal::Closed) => {}
        other => panic!("refused as {other:?}"),
    }
    assert!(
        node.try_wait().is_none(),
        "below the guard the node keeps running"
    );
    let (status, body) = readyz(http).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "storage_low_space", "{body}");
    assert_eq!(metric_sum(http, "skein_storage_available", &[]).await, 0.0);
    let refused = ["reason=\"storage_low_space\""];
    assert!(metric_sum(http, "skein_publishes_refused_total", &refused).await >= 1.0);

    // Later publishes are refused too, not acknowledged and dropped; QoS 2 as well.
    const QOS2_ID: u16 = 4242;
    if proto.is_v5() {
        let (more, again) = publish_until_refused(&mut publisher, refused_first + 1).await;
        assert!(more.is_empty(), "acknowledged below the guard: {more:?}");
        assert!(
            matches!(again, Refusal::Ack { reason: 0x83, .. }),
            "{again:?}"
        );
        assert_eq!(
            publish_qos2(&mut publisher, 800_000, QOS2_ID).await,
            Some(0x83)
        );
    } else {
        let mut again = RawClient::connect_ok(addr, &Connect::new(proto, "filler"))
            .await
            .0;
        let (more, refusal) = publish_until_refused(&mut again, refused_first + 1).await;
        assert!(more.is_empty(), "acknowledged below the guard: {more:?}");
        assert!(matches!(refusal, Refusal::Closed), "{refusal:?}");
        let mut again = RawClient::connect_ok(addr, &Connect::new(proto, "filler"))
            .await
            .0;
        assert_eq!(publish_qos2(&mut again, 800_000, QOS2_ID).await, None);
    }

    // What needs no disk is served: QoS 1 to an online clean session.
    let mut other = RawClient::connect_ok(addr, &Connect::new(proto, "other"))
        .await
        .0;
    other
        .publish(&Publish::new("live/1", 1, b"no disk needed").pkid(7))
        .await;
    match other.expect(RECV_TIMEOUT).await {
        Packet::PubAck {
            pkid: 7, reason: 0, ..
        } => {}
        p => panic!("expected PUBACK 0 for a publish needing no disk, got {p:?}"),
    }
    let got = live.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(got.payload, b"no disk needed");
    live.send(&codec::puback(got.pkid)).await;

    // The admin API refuses with 507 and a JSON error, a retained publish too.
    let (status, body) = api_publish(
        http,
        serde_json::json!({"topic": "fill/api", "qos": 1, "payload": "x"}),
    )
    .await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not stored"),
        "{body}"
    );
    let retained = serde_json::json!({"topic": "keep/me", "retain": true, "payload": "x"});
    let (status, body) = api_publish(http, retained.clone()).await;
    assert_eq!(status, 507, "{body}");

    // Room again: ready without a restart, and publishes are taken.
    fs.resize("64m");
    assert!(
        became_ready(http).await,
        "/readyz did not return to 200 after the tmpfs grew"
    );
    assert_eq!(metric_sum(http, "skein_storage_available", &[]).await, 1.0);
    let after = 900_000;
    if !proto.is_v5() {
        // Its connection was closed by the refusal (an MQTT 5 one is still open).
        publisher = RawClient::connect_ok(addr, &Connect::new(proto, "filler"))
            .await
            .0;
    }
    let one = Publish::new("fill/after", 1, &payload(after)).pkid(1);
    publisher.publish(&one).await;
    match publisher.expect(RECV_TIMEOUT).await {
        Packet::PubAck {
            pkid: 1, reason: 0, ..
        } => acked.insert(after),
        p => panic!("expected PUBACK 0 once there is room, got {p:?}"),
    };
    let (status, body) = api_publish(http, retained).await;
    assert_eq!(status, 200, "{body}");
    // The refused QoS 2 id was forgotten: the same id now carries a new message, which
    // must be routed, not taken for a duplicate of the refused one.
    assert_eq!(
        publish_qos2(&mut publisher, 800_001, QOS2_ID).await,
        Some(0)
    );
    acked.insert(800_001);

    // Restart on the same data: every acknowledged message is there, and nothing that
    // was refused (the guard refuses before any session has the message).
    assert!(node.terminate().success(), "{}", node.stderr());
    node.restart();
    let got = collect(node.mqtt_addr(), proto, &acked).await;
    for (id, got) in SUBSCRIBERS.iter().zip(got) {
        assert_eq!(got, acked, "{id}");
    }
}

/// With the guard off the disk really fills: sled fails for good, so the node stops by
/// itself with a non-zero status; started again with room, it has every acknowledged
/// message.
async fn a_full_disk_stops_the_node_without_losing_what_it_acknowledged(test: &str, proto: Proto) {
    let Some(fs) = Tmpfs::mount(test, "8m") else {
        return;
    };
    let data = fs.path().join("data");
    let mut node = node_on(&data, "0").start();
    let addr = node.mqtt_addr();
    subscribe_offline(addr, proto).await;
    let mut publisher = RawClient::connect_ok(addr, &Connect::new(proto, "filler"))
        .await
        .0;
    let (mut acked, refusal) = publish_until_refused(&mut publisher, 1).await;
    assert!(
        acked.len() >= 50,
        "only {} acknowledged before the refusal",
        acked.len()
    );
    println!("{test}: {} acknowledged, then {refusal:?}", acked.len());
    check_refusal(proto, &refusal);
    // The publisher comes back and sends on, as clients do, for as long as the node
    // takes connections: whatever it acknowledges now must be stored too.
    let mut next = acked.last().unwrap() + 2;
    for round in 0..5 {
        let connect = Connect::new(proto, "filler");
        let Ok(mut publisher) = RawClient::try_connect_ok(addr, &connect).await else {
            break;
        };
        let (more, refusal) = publish_some(&mut publisher, next, RETRY_PUBLISHES).await;
        println!(
            "{test}: retry {round}: {} acknowledged, then {refusal:?}",
            more.len()
        );
        if let Some(refusal) = &refusal {
            check_refusal(proto, refusal);
        }
        next += RETRY_PUBLISHES + 1;
        acked.extend(more);
    }
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "exit status {status}");
    let stderr = node.stderr();
    assert!(stderr.contains("storage failed"), "{stderr}");

    fs.resize("64m");
    node.restart();
    let got = collect(node.mqtt_addr(), proto, &acked).await;
    for (id, got) in SUBSCRIBERS.iter().zip(got) {
        assert!(
            acked.is_subset(&got),
            "{id} lost acknowledged messages: {:?}",
            acked.difference(&got).take(10).collect::<Vec<_>>()
        );
    }
}

/// A refusal after a write failed: a failure PUBACK or DISCONNECT (MQTT 5), or a closed
/// connection (3.1.1).
fn check_refusal(proto: Proto, refusal: &Refusal) {
    match (proto.is_v5(), refusal) {
        (true, Refusal::Ack { reason, .. } | Refusal::Disconnect { reason }) => {
            assert!(*reason >= 0x80, "{refusal:?}")
        }
        (true, Refusal::Closed) | (false, Refusal::Closed) => {}
        other => panic!("refused as {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_guard_v311_publishes_are_refused_and_the_node_recovers() {
    the_guard_refuses_and_recovers("guard v3.1.1", Proto::V311, "4194304").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_guard_v5_publishes_are_refused_and_the_node_recovers() {
    the_guard_refuses_and_recovers("guard v5", Proto::V5, "50%").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_v311_stops_the_node_and_loses_nothing_acknowledged() {
    a_full_disk_stops_the_node_without_losing_what_it_acknowledged("full v3.1.1", Proto::V311)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_v5_stops_the_node_and_loses_nothing_acknowledged() {
    a_full_disk_stops_the_node_without_losing_what_it_acknowledged("full v5", Proto::V5).await;
}
