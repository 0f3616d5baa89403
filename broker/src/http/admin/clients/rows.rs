//! The clients the API lists, cluster-wide: the sessions on this node, with everything the
//! node knows of them, and the clients the cluster's registry places on other nodes, with
//! what the registry knows. The registry decides the owner: a client it places on another
//! node is shown there even if an old offline session of it is still on this node's disk.

use std::sync::Arc;

use skein_seam::{ClientId, ClientLocation, ClusterHandle, NodeId, NodeRecord};

use super::ClientView;
use crate::broker::Broker;
use crate::events::ClientInfo;
use crate::hash::HashMap;
use crate::session::Session;

/// Client locations asked of the registry per call.
const REGISTRY_BATCH: usize = 1000;

/// One client at one instant.
pub enum Row {
    /// A session on this node.
    Local(LocalRow),
    /// A client the registry places on another node.
    Remote(ClientLocation),
}

/// What a session on this node looks like at one instant, taken under its state lock.
pub struct LocalRow {
    client_id: ClientId,
    info: Option<Arc<ClientInfo>>,
    protocol_level: u8,
    expiry_interval: u32,
    disconnected_at_ms: Option<u64>,
    inflight: usize,
    queued: usize,
    subscriptions: usize,
}

impl LocalRow {
    /// None for a session that was just removed.
    pub fn capture(session: &Session) -> Option<LocalRow> {
        let st = session.state();
        if st.removed {
            return None;
        }
        Some(LocalRow {
            client_id: session.client_id.clone(),
            info: st.attached_info().cloned(),
            protocol_level: st.protocol_level,
            expiry_interval: st.expiry_interval,
            disconnected_at_ms: st.disconnected_at_ms.get(),
            inflight: st.inflight.len(),
            queued: st.queue.len(),
            subscriptions: st.subscriptions.len(),
        })
    }
}

impl Row {
    pub fn client_id(&self) -> &ClientId {
        match self {
            Row::Local(r) => &r.client_id,
            Row::Remote(l) => &l.client_id,
        }
    }

    pub fn connected(&self) -> bool {
        match self {
            Row::Local(r) => r.info.is_some(),
            Row::Remote(l) => l.online,
        }
    }

    /// Known only where the connection is: None for a client on another node.
    pub fn username(&self) -> Option<&str> {
        match self {
            Row::Local(r) => r.info.as_ref().and_then(|i| i.username.as_deref()),
            Row::Remote(_) => None,
        }
    }

    pub fn node(&self, nodes: &Nodes) -> NodeId {
        match self {
            Row::Local(_) => nodes.this,
            Row::Remote(l) => l.node,
        }
    }

    pub fn view(self, nodes: &mut Nodes, broker: &Broker) -> ClientView {
        let node = nodes.name(self.node(nodes)).clone();
        match self {
            Row::Local(r) => {
                let info = r.info.as_deref();
                ClientView {
                    clientid: r.client_id.as_str().to_owned(),
                    username: info.and_then(|i| i.username.as_deref().map(str::to_owned)),
                    node: node.name,
                    node_id: node.id.0,
                    node_ip: node.ip,
                    peername: info.map(|i| i.peer.to_string()),
                    proto_ver: Some(info.map_or(r.protocol_level, |i| i.protocol.level())),
                    keepalive: info.map(|i| i.keepalive),
                    clean_start: info.map(|i| i.clean_start),
                    connected: info.is_some(),
                    connected_at: info.map(|i| i.connected_at_ms),
                    disconnected_at: if info.is_some() {
                        None
                    } else {
                        r.disconnected_at_ms
                    },
                    expiry_interval: r.expiry_interval,
                    inflight_cnt: Some(r.inflight),
                    mqueue_len: Some(r.queued),
                    mqueue_max: Some(broker.config.max_queued_messages),
                    subscriptions_cnt: r.subscriptions,
                    subscriptions: None,
                }
            }
            Row::Remote(l) => ClientView {
                clientid: l.client_id.as_str().to_owned(),
                username: None,
                node: node.name,
                node_id: node.id.0,
                node_ip: node.ip,
                peername: None,
                proto_ver: None,
                keepalive: None,
                clean_start: l.online.then_some(l.clean_start),
                connected: l.online,
                connected_at: l.online.then_some(l.connected_at_ms),
                disconnected_at: if l.online { None } else { l.offline_since_ms },
                expiry_interval: l.session_expiry_secs,
                inflight_cnt: None,
                mqueue_len: None,
                mqueue_max: None,
                subscriptions_cnt: l.subscriptions,
                subscriptions: None,
            },
        }
    }
}

/// Every client cluster-wide, one row per client id, unsorted.
pub fn gather(broker: &Broker) -> Vec<Row> {
    let this = broker.cluster.node_id();
    let remote: HashMap<ClientId, ClientLocation> = registry(&*broker.cluster)
        .into_iter()
        .filter(|l| l.node != this)
        .map(|l| (l.client_id.clone(), l))
        .collect();
    let mut rows: Vec<Row> = broker
        .sessions_snapshot()
        .iter()
        .filter(|s| !remote.contains_key(&s.client_id))
        .filter_map(|s| LocalRow::capture(s))
        .map(Row::Local)
        .collect();
    rows.extend(remote.into_values().map(Row::Remote));
    rows
}

/// The client `id` where the registry places it: on another node, or this node's session.
pub fn find(broker: &Broker, id: &ClientId) -> Option<Row> {
    match remote_owner(broker, id) {
        Some(location) => Some(Row::Remote(location)),
        None => {
            let session = broker.find_session(id)?;
            LocalRow::capture(&session).map(Row::Local)
        }
    }
}

/// Where the registry places `id` when that is another node.
pub fn remote_owner(broker: &Broker, id: &ClientId) -> Option<ClientLocation> {
    let this = broker.cluster.node_id();
    broker.cluster.locate_client(id).filter(|l| l.node != this)
}

/// The whole registry, in client id order, asked for in batches.
fn registry(cluster: &dyn ClusterHandle) -> Vec<ClientLocation> {
    let mut all: Vec<ClientLocation> = Vec::new();
    loop {
        let after = all.last().map(|l| l.client_id.as_str().to_owned());
        let batch = cluster.clients(after.as_deref(), REGISTRY_BATCH);
        let last_batch = batch.len() < REGISTRY_BATCH;
        all.extend(batch);
        if last_batch {
            return all;
        }
    }
}

/// How the API names a node, and what `?node=` matches.
#[derive(Debug, Clone)]
pub struct NodeName {
    pub id: NodeId,
    /// None for a node the cluster has no record of (removed since).
    pub name: Option<String>,
    /// Its advertised MQTT address, `ip:port`.
    pub addr: Option<String>,
    pub ip: Option<String>,
}

impl NodeName {
    fn of_record(id: NodeId, record: Option<NodeRecord>) -> NodeName {
        let Some(record) = record else {
            return NodeName {
                id,
                name: None,
                addr: None,
                ip: None,
            };
        };
        let addr = Some(record.mqtt).filter(|a| !a.is_empty());
        NodeName {
            id,
            name: Some(record.name),
            ip: addr.as_deref().map(ip_of),
            addr,
        }
    }

    /// `wanted` is its name, its advertised `ip:port`, or its IP.
    pub fn matches(&self, wanted: &str) -> bool {
        [&self.name, &self.addr, &self.ip]
            .into_iter()
            .any(|n| n.as_deref() == Some(wanted))
    }
}

/// The IP of an `ip:port` address (`[v6]:port` too); the text itself if it has no port.
fn ip_of(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .to_owned(),
    }
}

/// The names of the nodes a request shows, each looked up once.
pub struct Nodes<'a> {
    cluster: &'a dyn ClusterHandle,
    pub this: NodeId,
    names: HashMap<NodeId, NodeName>,
}

impl<'a> Nodes<'a> {
    /// This node as its events name it; other nodes by their records in the cluster.
    pub fn new(broker: &'a Broker) -> Nodes<'a> {
        let this = broker.cluster.node_id();
        let info = broker.events.node();
        let mut names = HashMap::default();
        names.insert(
            this,
            NodeName {
                id: this,
                name: Some(info.node_name.clone()),
                addr: Some(info.node.clone()),
                ip: Some(info.node_ip.clone()),
            },
        );
        Nodes {
            cluster: &*broker.cluster,
            this,
            names,
        }
    }

    pub fn name(&mut self, id: NodeId) -> &NodeName {
        let cluster = self.cluster;
        self.names
            .entry(id)
            .or_insert_with(|| NodeName::of_record(id, cluster.node_record(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_matched_by_name_address_or_ip() {
        let record = NodeRecord {
            id: NodeId(2),
            name: "edge-2".into(),
            grpc: "10.0.0.2:7070".into(),
            mqtt: "10.0.0.2:1883".into(),
        };
        let n = NodeName::of_record(NodeId(2), Some(record));
        assert_eq!(n.ip.as_deref(), Some("10.0.0.2"));
        for wanted in ["edge-2", "10.0.0.2:1883", "10.0.0.2"] {
            assert!(n.matches(wanted), "{wanted}");
        }
        for wanted in ["edge-1", "10.0.0.2:7070", "2", ""] {
            assert!(!n.matches(wanted), "{wanted}");
        }
        let gone = NodeName::of_record(NodeId(3), None);
        assert!(!gone.matches(""));
        assert_eq!(gone.name, None);
    }

    #[test]
    fn the_ip_of_an_address() {
        assert_eq!(ip_of("10.0.0.2:1883"), "10.0.0.2");
        assert_eq!(ip_of("[::1]:1883"), "::1");
        assert_eq!(ip_of("node-2.skein:1883"), "node-2.skein");
        assert_eq!(ip_of("10.0.0.2"), "10.0.0.2");
    }
}
