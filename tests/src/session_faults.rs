//! What the tests of sessions under faults share: a node paused with SIGSTOP (and resumed
//! whatever happens), numbered QoS 1 messages, a CONNECT that may wait for an election,
//! and waiting until the registry places a client on a node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::http::http_request;
use crate::{Connect, Packet, Publish, RawClient};

/// SIGSTOPs a process; SIGCONTs it when resumed or dropped (a failing test too), so no
/// node stays stopped behind a panic.
pub struct Paused(Option<Pid>);

impl Paused {
    pub fn stop(pid: u32) -> Paused {
        let pid = Pid::from_raw(pid as i32).expect("a node's pid is positive");
        kill_process(pid, Signal::STOP).unwrap_or_else(|e| panic!("SIGSTOP {pid:?}: {e}"));
        Paused(Some(pid))
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = kill_process(pid, Signal::CONT);
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}

/// The number of a message sent as `m{number}` (see [`publish_unacked`]).
pub fn number(p: &Publish) -> usize {
    let text = String::from_utf8_lossy(&p.payload);
    text.trim_start_matches('m')
        .parse()
        .unwrap_or_else(|_| panic!("not a numbered message: {text:?}"))
}

/// Sends QoS 1 publishes `m{from}..=m{to}` (packet id = the number) without waiting for
/// their PUBACKs (a forward to a stopped node holds them back).
pub async fn publish_unacked(p: &mut RawClient, topic: &str, from: usize, to: usize) {
    for i in from..=to {
        let payload = format!("m{i}");
        p.publish(&Publish::new(topic, 1, payload.as_bytes()).pkid(i as u16))
            .await;
    }
}

/// Connects with a CONNACK deadline of `deadline` (a registration may wait for an
/// election); returns the client and Session Present.
pub async fn connect_within(
    addr: SocketAddr,
    connect: &Connect,
    deadline: Duration,
) -> (RawClient, bool) {
    let mut c = RawClient::tcp(addr, connect.proto).await;
    c.send(&connect.encode()).await;
    match c.recv(deadline).await {
        Ok(Packet::ConnAck {
            session_present,
            code: 0,
            ..
        }) => (c, session_present),
        other => panic!("CONNECT of {:?}: {other:?}", connect.client_id),
    }
}

/// Waits until the node at `http` places `client_id` on node `owner`, at most `deadline`.
pub async fn wait_owner(http: SocketAddr, client_id: &str, owner: u64, deadline: Duration) {
    let path = format!("/api/v1/clients/{client_id}");
    let end = Instant::now() + deadline;
    loop {
        if let Ok((200, text)) = http_request(http, "GET", &path, &[], "").await {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if v["node_id"] == owner {
                return;
            }
        }
        assert!(
            Instant::now() < end,
            "{client_id} never placed on node {owner} by {http}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
