//! A node the cluster marked down (see the cluster's `registry/node_down.rs`), as this
//! node takes it:
//!
//! - As an adopter: each adopted session is made here, offline, with the registry's
//!   subscriptions and expiry, indexed at once (before other nodes' interest moves here
//!   in the fold), stored, and its expiry timer armed from when it went offline. It is
//!   marked as adopted from the dead node, so what other nodes still held for that node
//!   reaches it (and only it) here. A CONNECT on any node later takes it over like any
//!   offline session.
//!   The will of its connection (kept in the registry) is due after its delay (at most the
//!   session's expiry) from when it went offline, unless the client is back first.
//! - As the announcer: one `client.disconnected` event per client that was online, reason
//!   `node_down`, naming the dead node (`node`, `nodeIp`), in every dialect enabled here;
//!   for a session that ended with its node, its will, at once.
//! - As the node marked down itself (it was paused or cut off and catches up): the
//!   connections of its former clients end without an event (the announcer had it), their
//!   wills are not published here, and what their sessions hold stays stored, sealed, for
//!   the new owners, who are offered it periodically (see `handover_holder.rs`).

use std::sync::Arc;

use skein_seam::{AdoptedSession, DownClient, NodeId, RegisteredWill};

use super::Broker;
use crate::codec::{Properties, ProtocolVersion, QoS, Will};
use crate::disconnect::DisconnectReason;
use crate::events::{raise, ClientInfo, EventBody, EventKind, NodeInfo, Transport};
use crate::message::now_ms;
use crate::session::{Kick, OptionalMs, Session};
use crate::topic;

impl Broker {
    /// See the module docs.
    pub(super) fn on_node_down(&self, node: NodeId, clients: Vec<DownClient>) {
        let me = self.cluster.node_id();
        if node == me {
            self.marked_down_here(clients);
            return;
        }
        let dead = self.node_info(node);
        let (mut adopted, mut announced) = (0usize, 0usize);
        let mut wills = 0usize;
        for client in &clients {
            if let Some(session) = &client.adopted {
                if self.adopt(client, session, node) {
                    adopted += 1;
                }
            }
            if client.announce {
                self.announce_node_down(client, &dead);
                announced += 1;
            }
            // A session that ended: its will goes out now, from here (the announcer).
            if let (None, Some(will)) = (&client.adopted, &client.will) {
                if let Some(will) = codec_will(&client.client_id, will) {
                    self.publish_will(&client.client_id, Box::new(will));
                    wills += 1;
                }
            }
        }
        tracing::info!(
            %node,
            adopted,
            announced,
            wills,
            "a node was marked down: adopted its sessions and announced its clients' end"
        );
        // After the adoptions: what other nodes redirect here from the dead node's queue
        // may be routed now.
        self.marks_applied.applied(node);
    }

    /// Makes the adopted session here (see the module docs). False when a connection here
    /// holds the client already (a CONNECT that raced the adoption keeps it).
    fn adopt(&self, client: &DownClient, adopted: &AdoptedSession, from: NodeId) -> bool {
        let session = self.get_or_create_session(&client.client_id);
        let generation = {
            let mut st = session.state();
            if st.attachment.is_some() {
                return false;
            }
            // A session this node held before (sealed when the client left) comes back
            // to life with what it still stores.
            st.removed = false;
            st.moved = false;
            st.expiry_interval = adopted.expiry_interval;
            st.disconnected_at_ms = OptionalMs::at(client.offline_since_ms);
            st.adopted_from = Some(from);
            // Kept past the attach (which ends `adopted_from`): a member that applies the
            // mark later redirects what it held for the dead node later.
            st.arrived_from = Some((from, now_ms()));
            // The dead node may still hold messages of the session (and know which ones
            // its client acknowledged there): a connection attaching here, or a node that
            // takes the client over from here, fetches from it, and whatever it offers
            // later is compared with what reached the session here since now (its
            // forwards were redirected here, and a node that was only paused delivers to
            // its old connection until it learns of the mark).
            st.pending_from = Some((from, client.epoch));
            st.arrivals.get_or_insert_with(Box::default);
            st.generation = st.generation.wrapping_add(1);
            st.cancel_timers();
            // Its connection's will: due after its delay (at most the session's expiry)
            // from when it went offline, unless the client is back first.
            st.will = client
                .will
                .as_ref()
                .and_then(|w| codec_will(&client.client_id, w))
                .map(Box::new);
            st.will_due_ms = match &client.will {
                Some(w) if st.will.is_some() => OptionalMs::at(
                    client.offline_since_ms
                        + u64::from(w.delay_secs.min(adopted.expiry_interval)) * 1000,
                ),
                _ => OptionalMs::NONE,
            };
            st.generation
        };
        session.set_moving(false);
        {
            let mut registry = self.registry();
            let here = registry
                .get(&client.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, &session));
            if !here {
                registry.insert(client.client_id.clone(), session.clone());
            }
        }
        self.replace_subscriptions(&session, &adopted.subscriptions);
        {
            let st = session.state();
            if st.is_persistent() {
                self.persist_session_locked(&session, &st);
            }
        }
        if let Some(broker) = self.me.upgrade() {
            let now = now_ms();
            let due = session.state().will_due_ms.get();
            if let Some(due) = due {
                broker.schedule_will(&session, generation, due.saturating_sub(now));
            }
            let elapsed = now.saturating_sub(client.offline_since_ms);
            broker.schedule_expiry(&session, generation, adopted.expiry_interval, elapsed);
        }
        tracing::debug!(client_id = %client.client_id, %from, subscriptions = adopted.subscriptions.len(), "adopted the session of a node marked down");
        true
    }

    /// The one `client.disconnected` event of a client whose node died.
    fn announce_node_down(&self, client: &DownClient, dead: &NodeInfo) {
        let info = Arc::new(down_client_info(client));
        raise::raise(&self.events, &info, EventKind::ClientDisconnected, || {
            EventBody::Disconnected {
                reason: DisconnectReason::NodeDown,
                disconnected_at_ms: client.offline_since_ms,
                takeover_node: None,
                by_disconnect_packet: false,
                had_session: true,
                on_node: Some(Box::new(dead.clone())),
            }
        });
    }

    /// How events name node `node`: its member record's MQTT address and name.
    fn node_info(&self, node: NodeId) -> NodeInfo {
        let record = self.cluster.node_record(node);
        let address = self.node_address(node);
        let node_ip = address
            .rsplit_once(':')
            .map_or(address.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        NodeInfo {
            node_ip,
            node_name: record.map(|r| r.name).unwrap_or_default(),
            node: address,
        }
    }

    /// This node was marked down: see the module docs.
    fn marked_down_here(&self, clients: Vec<DownClient>) {
        let mut closed = 0usize;
        let mut moving = Vec::new();
        for client in &clients {
            let Some(session) = self.find_session(&client.client_id) else {
                continue;
            };
            {
                let mut st = session.state();
                match st.attachment.as_ref() {
                    Some(a) if a.epoch == client.epoch => {
                        closed += usize::from(a.kick.send(Kick::NodeDown));
                    }
                    // A newer connection here: its registration is newer than the mark.
                    Some(_) => continue,
                    None => {}
                }
                session.set_moving(true);
                st.generation = st.generation.wrapping_add(1);
                st.cancel_timers();
            }
            moving.push(session);
        }
        self.spawn_sealed(moving);
        tracing::warn!(
            clients = clients.len(),
            closed,
            "this node was marked down while it was away: closed the connections of the clients it no longer owns (their node_down events came from the adopters)"
        );
    }

    /// Seals `sessions` once their connections are gone (see `cluster_sync.rs`); what they
    /// hold goes to the new owners with the periodic offer (`handover_holder.rs`). Not
    /// offered at once: an owner that meanwhile fetched part of it by a takeover would get
    /// again what its client has acknowledged since (a copy on the same connection).
    fn spawn_sealed(&self, sessions: Vec<Arc<Session>>) {
        if sessions.is_empty() {
            return;
        }
        let Some(broker) = self.me.upgrade() else {
            return;
        };
        let tasks = broker.tasks.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(super::cluster_sync::SEAL_AFTER) => {}
                _ = broker.shutdown.cancelled() => return,
            }
            for session in &sessions {
                broker.session_moved(session).await;
            }
        });
    }
}

/// The client of a node marked down as its events describe it: as the connection's own
/// events did, from what its registration kept (see the cluster's `RegisteredConnection`);
/// what a registration of an older build did not keep reads as unknown.
fn down_client_info(client: &DownClient) -> ClientInfo {
    let unknown = ClientInfo::unknown(client.client_id.clone(), ProtocolVersion::V311);
    let base = ClientInfo {
        clean_start: client.clean_start,
        connected_at_ms: client.connected_at_ms,
        ..unknown
    };
    let Some(c) = &client.connection else {
        return base;
    };
    let protocol = match c.protocol_level {
        3 => ProtocolVersion::V31,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V311,
    };
    ClientInfo {
        username: c.username.as_deref().map(Arc::from),
        peer: c.peer.unwrap_or(base.peer),
        sockname: c.sockname.map_or(base.sockname.clone(), Arc::new),
        protocol,
        transport: if c.websocket {
            Transport::WebSocket
        } else {
            Transport::Tcp
        },
        keepalive: c.keepalive,
        ..base
    }
}

/// The will a registered will describes; None (logged) when no will could be it.
fn codec_will(client_id: &skein_seam::ClientId, w: &RegisteredWill) -> Option<Will> {
    let m = &w.message;
    let valid = QoS::from_u8(m.qos).filter(|_| topic::valid_topic_name(&m.topic));
    let Some(qos) = valid else {
        tracing::warn!(%client_id, topic = %m.topic, qos = m.qos, "ignored an invalid will from the registry");
        return None;
    };
    let p = &m.properties;
    Some(Will {
        topic: m.topic.to_string(),
        payload: m.payload.clone(),
        qos,
        retain: m.retain,
        properties: Properties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            will_delay_interval: Some(w.delay_secs),
            ..Properties::default()
        },
    })
}
