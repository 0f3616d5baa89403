//! The `node_ip` invariant: every disconnect event the watchers saw names the node that
//! raised it by that node's own address (`$events` `node` = ip:port, `$EVENT` `nodeIp`),
//! and every node's `GET /api/v1/clients` gives each session's owner by its address
//! (`node_ip`). With containers or namespaces each node has an IP of its own, so a node
//! that reported a wrong interface, a loopback or an unspecified address is caught.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use serde_json::Value;

use crate::cluster::Topology;
use crate::http::get_json;
use crate::watcher::{DOLLAR_EVENT, DOLLAR_EVENTS};

const PAGE: usize = 1000;
/// Examples of wrong addresses kept for the verdict line.
const EXAMPLES: usize = 5;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeIps {
    /// Disconnect events whose node address was compared.
    pub events: u64,
    /// Registry rows (over every node's admin API) whose `node_ip` was compared.
    pub rows: u64,
    /// Events and rows that named a node by another address (or an unknown node).
    pub wrong: u64,
    pub examples: Vec<String>,
    /// The distinct node addresses expected (one per node in partition mode).
    pub distinct: usize,
}

impl NodeIps {
    fn wrong(&mut self, what: String) {
        self.wrong += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }
}

/// Each node's name (as `GET /api/v1/cluster` gives it) with the address the harness gave
/// its MQTT listener.
pub async fn expected(topology: &Topology) -> Result<BTreeMap<String, (u64, IpAddr)>> {
    let mut last = None;
    for node in topology.running() {
        match get_json(topology.http[node], "/api/v1/cluster").await {
            Ok(v) => return Ok(names(&v, topology)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no node runs")))
}

fn names(cluster: &Value, topology: &Topology) -> BTreeMap<String, (u64, IpAddr)> {
    let mut out = BTreeMap::new();
    for m in cluster["members"].as_array().into_iter().flatten() {
        let (Some(id), Some(name)) = (m["id"].as_u64(), m["name"].as_str()) else {
            continue;
        };
        if let Some(addr) = (id as usize)
            .checked_sub(1)
            .and_then(|i| topology.mqtt.get(i))
        {
            out.insert(name.to_owned(), (id, addr.ip()));
        }
    }
    out
}

/// Compares the events the watchers saw with the expected addresses.
pub fn check_events(
    seen: &HashSet<(String, Bytes)>,
    nodes: &BTreeMap<String, (u64, IpAddr)>,
) -> NodeIps {
    let mut out = NodeIps {
        distinct: nodes
            .values()
            .map(|(_, ip)| *ip)
            .collect::<HashSet<_>>()
            .len(),
        ..NodeIps::default()
    };
    for (topic, payload) in seen {
        let (name_field, ip_field) = match topic.as_str() {
            DOLLAR_EVENTS => ("node_name", "node"),
            DOLLAR_EVENT => ("nodeName", "nodeIp"),
            _ => continue,
        };
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            // Counted by the takeover_events line (unreadable).
            continue;
        };
        out.events += 1;
        let name = v[name_field].as_str().unwrap_or_default();
        let given = v[ip_field].as_str().unwrap_or_default();
        let ip = given
            .parse::<IpAddr>()
            .ok()
            .or_else(|| given.parse::<SocketAddr>().ok().map(|a| a.ip()));
        match (nodes.get(name), ip) {
            (Some((_, want)), Some(got)) if got == *want => {}
            (Some((id, want)), _) => out.wrong(format!(
                "{topic} from node {id} ({name}): {ip_field} {given:?}, its address is {want}"
            )),
            (None, _) => out.wrong(format!(
                "{topic}: {name_field} {name:?} is no member ({ip_field} {given:?})"
            )),
        }
    }
    out
}

/// Adds every running node's registry rows: each row's `node_ip` must be its owner's.
pub async fn check_rows(
    topology: &Topology,
    nodes: &BTreeMap<String, (u64, IpAddr)>,
    out: &mut NodeIps,
) -> Result<()> {
    let by_id: BTreeMap<u64, IpAddr> = nodes.values().copied().collect();
    for node in topology.running() {
        for page in 1.. {
            let path = format!("/api/v1/clients?limit={PAGE}&page={page}");
            let v = get_json(topology.http[node], &path).await?;
            let data = v["data"]
                .as_array()
                .ok_or_else(|| anyhow!("node {}: no data array in {v}", node + 1))?;
            for row in data {
                check_row(row, node, &by_id, out);
            }
            if data.len() < PAGE {
                break;
            }
        }
    }
    Ok(())
}

fn check_row(row: &Value, asked: usize, by_id: &BTreeMap<u64, IpAddr>, out: &mut NodeIps) {
    let id = row["node_id"].as_u64().unwrap_or(0);
    let given = row["node_ip"].as_str();
    out.rows += 1;
    let got = given.and_then(|g| g.parse::<IpAddr>().ok());
    match (by_id.get(&id), got) {
        (Some(want), Some(got)) if got == *want => {}
        (want, _) => out.wrong(format!(
            "node {}'s /api/v1/clients: {} on node {id} with node_ip {given:?}, its address is {want:?}",
            asked + 1,
            row["clientid"]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes() -> BTreeMap<String, (u64, IpAddr)> {
        BTreeMap::from([
            ("skein-1".to_owned(), (1, "10.214.9.11".parse().unwrap())),
            ("skein-2".to_owned(), (2, "10.214.9.12".parse().unwrap())),
        ])
    }

    #[test]
    fn events_must_name_their_node_by_its_own_address() {
        let ev = |t: &str, p: Value| (t.to_owned(), Bytes::from(p.to_string()));
        let mut seen = HashSet::new();
        seen.insert(ev(
            DOLLAR_EVENTS,
            json!({"node": "10.214.9.11:1883", "node_name": "skein-1", "clientid": "a"}),
        ));
        seen.insert(ev(
            DOLLAR_EVENT,
            json!({"nodeIp": "10.214.9.12", "nodeName": "skein-2", "clientId": "a"}),
        ));
        let ok = check_events(&seen, &nodes());
        assert_eq!((ok.events, ok.wrong, ok.distinct), (2, 0, 2));

        // Node 2's event naming node 1's address, a loopback, an unknown node.
        seen.insert(ev(
            DOLLAR_EVENT,
            json!({"nodeIp": "10.214.9.11", "nodeName": "skein-2", "clientId": "b"}),
        ));
        seen.insert(ev(
            DOLLAR_EVENTS,
            json!({"node": "127.0.0.1:1883", "node_name": "skein-1", "clientid": "b"}),
        ));
        seen.insert(ev(
            DOLLAR_EVENT,
            json!({"nodeIp": "10.214.9.13", "nodeName": "skein-3", "clientId": "c"}),
        ));
        seen.insert(ev("$events/client_connected", json!({"node": "x"})));
        let bad = check_events(&seen, &nodes());
        assert_eq!((bad.events, bad.wrong), (5, 3));
        assert_eq!(bad.examples.len(), 3);
    }

    #[test]
    fn registry_rows_must_name_their_owner_by_its_address() {
        let by_id: BTreeMap<u64, IpAddr> = nodes().values().copied().collect();
        let mut out = NodeIps::default();
        check_row(
            &json!({"clientid": "a", "node_id": 2, "node_ip": "10.214.9.12"}),
            0,
            &by_id,
            &mut out,
        );
        assert_eq!((out.rows, out.wrong), (1, 0));
        check_row(
            &json!({"clientid": "a", "node_id": 2, "node_ip": null}),
            0,
            &by_id,
            &mut out,
        );
        check_row(
            &json!({"clientid": "b", "node_id": 1, "node_ip": "0.0.0.0"}),
            1,
            &by_id,
            &mut out,
        );
        assert_eq!((out.rows, out.wrong), (3, 2));
    }
}
