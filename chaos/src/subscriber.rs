//! A persistent subscriber (clean start 0, session expiry set) driven by the fault loop:
//! it moves to the node it is told, either by connecting there while its connection is
//! still open (a takeover) or by disconnecting first, and when its connection ends it
//! reconnects with the same client id to a random running node. Every PUBLISH it receives
//! goes to the ledger with the number of the connection it came on and its DUP flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::mqtt::{self, Session};
use crate::rng::Rng;
use crate::shared::{subscriber_id, Shared, FILTER, SESSION_EXPIRY_SECS};

#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Connect to `node`; with `takeover`, while the current connection is still open.
    Move { node: usize, takeover: bool },
}

const RETRY: Duration = Duration::from_millis(200);
const CLOSE_WAIT: Duration = Duration::from_secs(2);

struct Live {
    conn: u64,
    client: AsyncClient,
    by_us: Arc<AtomicBool>,
    closed: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

pub async fn run(
    index: u32,
    shared: Arc<Shared>,
    mut rng: Rng,
    first_node: usize,
    mut commands: mpsc::Receiver<Command>,
    ready: oneshot::Sender<()>,
) {
    let id = subscriber_id(index);
    let mut ready = Some(ready);
    let mut current: Option<Live> = None;
    let mut old: Vec<Live> = Vec::new();
    let mut target = Some(first_node);
    loop {
        if current.is_none() {
            let node = target
                .take()
                .unwrap_or_else(|| random_node(&shared, &mut rng));
            match open(index, &id, node, &shared, ready.is_some()).await {
                Ok(live) => {
                    current = Some(live);
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        let mut closed = current.as_ref().map(|l| l.closed.clone()).expect("open");
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Command::Move { node, takeover: true }) => {
                    // On failure the current connection stays (it may still be kicked
                    // if the CONNECT was committed before the answer was lost).
                    if let Ok(live) = open(index, &id, node, &shared, false).await {
                        if let Some(previous) = current.replace(live) {
                            old.push(previous);
                        }
                    }
                }
                Some(Command::Move { node, takeover: false }) => {
                    if let Some(live) = current.take() {
                        close(live, &shared).await;
                    }
                    target = Some(node);
                }
            },
            () = ended(&mut closed) => {
                current = None;
                tokio::time::sleep(RETRY).await;
            }
        }
        old.retain(|l| !*l.closed.borrow());
    }
    // The run is over: stop listening; what the server still sends is not counted.
    for live in current.into_iter().chain(old) {
        live.task.abort();
    }
}

/// Resolves once the connection has ended (the watch's guard is not held across awaits).
async fn ended(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|c| *c).await.map(|_| ());
}

fn random_node(shared: &Shared, rng: &mut Rng) -> usize {
    let running = shared.topology.running();
    if running.is_empty() {
        rng.below(shared.topology.len() as u64) as usize
    } else {
        *rng.pick(&running)
    }
}

/// Connects to `node`; on the first connection (or a lost session) also subscribes.
async fn open(
    index: u32,
    id: &str,
    node: usize,
    shared: &Arc<Shared>,
    first: bool,
) -> Result<Live> {
    let topology = &shared.topology;
    let attempt = shared.conns().connecting(id, node);
    let incarnation = topology.incarnation(node);
    let session = Session {
        client_id: id.to_owned(),
        clean_start: false,
        expiry: Some(SESSION_EXPIRY_SECS),
        credentials: None,
    };
    let mut est = match mqtt::connect(topology.mqtt[node], &session).await {
        Ok(est) => est,
        Err(e) => {
            shared.connect_failed(attempt, &e);
            return Err(e);
        }
    };
    let conn = shared.conns().accepted(attempt, incarnation);
    let present = est.connack.session_present;
    if !present && !first {
        shared.sessions_lost.fetch_add(1, Ordering::Relaxed);
    }
    if !present {
        let subscribed = mqtt::subscribe(&mut est, FILTER, |p| {
            shared.ledger().received(index, conn, &p.payload, p.dup)
        })
        .await;
        if let Err(e) = subscribed {
            shared.conns().closed(conn, true, None, topology);
            return Err(e);
        }
    }
    let by_us = Arc::new(AtomicBool::new(false));
    let (closed_tx, closed) = watch::channel(false);
    let mut events = est.events;
    let task = {
        let shared = shared.clone();
        let by_us = by_us.clone();
        tokio::spawn(async move {
            let error = loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        shared.ledger().received(index, conn, &p.payload, p.dup);
                        shared.conns().message(conn);
                    }
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            for p in mqtt::drain_publishes(&mut events) {
                shared.ledger().received(index, conn, &p.payload, p.dup);
                shared.conns().message(conn);
            }
            let reason = mqtt::server_disconnect(&error);
            // The server never answers the client's DISCONNECT with one of its own: a
            // DISCONNECT from it means it ended the connection first (a takeover kick
            // racing the harness's move), and owes that end its event.
            let by_us = by_us.load(Ordering::SeqCst) && reason.is_none();
            shared.conns().closed(conn, by_us, reason, &shared.topology);
            let _ = closed_tx.send(true);
        })
    };
    Ok(Live {
        conn,
        client: est.client,
        by_us,
        closed,
        task,
    })
}

/// Sends DISCONNECT (the session stays: it has an expiry) and waits for the end.
async fn close(mut live: Live, shared: &Shared) {
    live.by_us.store(true, Ordering::SeqCst);
    let _ = live.client.disconnect().await;
    let _ = tokio::time::timeout(CLOSE_WAIT, ended(&mut live.closed)).await;
    live.task.abort();
    shared
        .conns()
        .closed(live.conn, true, None, &shared.topology);
}
