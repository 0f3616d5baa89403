//! The cluster as each node's admin API shows it: `GET /api/v1/clients` (the registry,
//! cluster-wide, with this node's own sessions in detail) and `GET /api/v1/cluster`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Result};

use crate::cluster::Topology;
use crate::http::get_json;

const PAGE: usize = 1000;

/// One client as a node lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientRow {
    pub clientid: String,
    pub node_id: u64,
    pub connected: bool,
    /// Only the node holding the live connection knows the peer: a row with it is a
    /// connection of the answering node itself.
    pub local_connection: bool,
}

pub async fn clients(topology: &Topology, node: usize) -> Result<Vec<ClientRow>> {
    let mut rows = Vec::new();
    for page in 1.. {
        let path = format!("/api/v1/clients?limit={PAGE}&page={page}");
        let v = get_json(topology.http[node], &path).await?;
        let data = v["data"]
            .as_array()
            .ok_or_else(|| anyhow!("node {}: no data array in {v}", node + 1))?;
        for c in data {
            rows.push(ClientRow {
                clientid: c["clientid"].as_str().unwrap_or_default().to_owned(),
                node_id: c["node_id"].as_u64().unwrap_or(0),
                connected: c["connected"].as_bool().unwrap_or(false),
                local_connection: c["connected"].as_bool() == Some(true)
                    && !c["peername"].is_null(),
            });
        }
        if data.len() < PAGE {
            break;
        }
    }
    rows.sort();
    Ok(rows)
}

/// Client ids that two or more nodes each list as a live connection of their own.
pub async fn double_owners(topology: &Topology) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut holders: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for node in topology.running() {
        for row in clients(topology, node).await? {
            if row.local_connection {
                holders.entry(row.clientid).or_default().push(node);
            }
        }
    }
    holders.retain(|_, nodes| nodes.len() > 1);
    Ok(holders)
}

/// What must be equal on every node once the cluster settled: every client's owner and
/// whether it is connected, the leader and the members with their roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub clients: BTreeSet<(String, u64, bool)>,
    pub leader: Option<u64>,
    pub members: BTreeSet<(u64, String)>,
}

pub async fn view(topology: &Topology, node: usize) -> Result<View> {
    let clients = clients(topology, node)
        .await?
        .into_iter()
        .map(|r| (r.clientid, r.node_id, r.connected))
        .collect();
    let cluster = get_json(topology.http[node], "/api/v1/cluster").await?;
    let members = cluster["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["role"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(View {
        clients,
        leader: cluster["leader_id"].as_u64(),
        members,
    })
}

/// Every node's view; Ok(None) when all are equal, else how the first differing one differs.
pub async fn compare(topology: &Topology) -> Result<Option<String>> {
    let mut views = Vec::new();
    for node in 0..topology.len() {
        views.push((node, view(topology, node).await?));
    }
    let (first_node, first) = &views[0];
    for (node, v) in &views[1..] {
        if v != first {
            return Ok(Some(describe(*first_node, first, *node, v)));
        }
    }
    Ok(None)
}

fn describe(a: usize, va: &View, b: usize, vb: &View) -> String {
    let only_a: Vec<_> = va.clients.difference(&vb.clients).collect();
    let only_b: Vec<_> = vb.clients.difference(&va.clients).collect();
    format!(
        "node {} vs node {}: leader {:?} vs {:?}; members {:?} vs {:?}; clients only on node {}: {:?}; only on node {}: {:?}",
        a + 1,
        b + 1,
        va.leader,
        vb.leader,
        va.members,
        vb.members,
        a + 1,
        only_a,
        b + 1,
        only_b
    )
}

/// The registry rows of one node as text, for the report file.
pub fn rows_text(rows: &[ClientRow]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{}@{}{}{}",
                r.clientid,
                r.node_id,
                if r.connected { "" } else { "(offline)" },
                if r.local_connection { "*" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}
