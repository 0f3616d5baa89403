//! One watcher per node, subscribed to the disconnect events of both dialects
//! (`$events/client_disconnected`, `$EVENT.CLOSE`) on its own node: events are routed to
//! every node, so while any node runs some watcher sees each event; the copies are counted
//! once (by topic and payload).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::Event;
use tokio::sync::oneshot;

use crate::cluster::NodeState;
use crate::mqtt::{self, Session};
use crate::shared::Shared;

pub const DOLLAR_EVENTS: &str = "$events/client_disconnected";
pub const DOLLAR_EVENT: &str = "$EVENT.CLOSE";

const RETRY: Duration = Duration::from_millis(200);

/// The watchers' username, the one `events_subscribe_usernames` names.
pub const USERNAME: &str = "chaos-watch";

pub async fn run(node: usize, shared: Arc<Shared>, password: String, ready: oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let session = Session {
        client_id: format!("chaos-watch-{}", node + 1),
        clean_start: true,
        expiry: None,
        credentials: Some((USERNAME.to_owned(), password)),
    };
    loop {
        if shared.topology.state(node) != NodeState::Running {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let Ok(mut est) = mqtt::connect(shared.topology.mqtt[node], &session).await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let record = |p: &rumqttc::v5::mqttbytes::v5::Publish| {
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            shared.events().insert((topic, p.payload.clone()));
        };
        let mut subscribed = true;
        for filter in [DOLLAR_EVENTS, DOLLAR_EVENT] {
            if mqtt::subscribe(&mut est, filter, record).await.is_err() {
                subscribed = false;
                break;
            }
        }
        if !subscribed {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        while let Ok(event) = est.events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                record(&p);
            }
        }
        for p in mqtt::drain_publishes(&mut est.events) {
            record(&p);
        }
        tokio::time::sleep(RETRY).await;
    }
}
