//! The registry's snapshot bytes: a format byte, then a `RegistrySnapshot` protobuf message.
//!
//! Clients are written in id order and subscriptions in filter order, so equal registries
//! give equal bytes. The interest index is not stored: loading rebuilds it from the clients.
//! A format byte this build does not know is an error naming it, never a guess. Fields
//! added since (the nodes marked down, the device certificates, the log's clock, the online
//! connections' descriptions, the nodes' latest marks) are protobuf additions within format 1: an older snapshot
//! reads as having none (clock 0).

use std::sync::Arc;

use arcstr::ArcStr;
use prost::Message;
use skein_proto::v1 as pb;

use super::{check_options, ClientEntry, ConnectionBytes, Owner, Registry, Subscription};

/// The format byte of the snapshots this build writes (and the only one it reads).
pub const SNAPSHOT_FORMAT: u8 = 1;

use crate::error::ClusterError;

impl Registry {
    /// The registry as snapshot bytes.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let message = pb::RegistrySnapshot {
            clients: self
                .clients
                .iter()
                .map(|(id, entry)| {
                    let mut record = client_record(id, entry);
                    record.will = self.wills.get(id).cloned();
                    record.connection = self.connections.get(id).map(|c| c.decode());
                    record
                })
                .collect(),
            down_nodes: self.down_nodes.iter().copied().collect(),
            certificates: self.certificate_records(),
            clock_ms: self.clock_ms,
            marks: self
                .marks
                .iter()
                .map(|(node, at)| pb::NodeMark {
                    node_id: *node,
                    stamped_at_ms: *at,
                })
                .collect(),
        };
        let mut bytes = Vec::with_capacity(1 + message.encoded_len());
        bytes.push(SNAPSHOT_FORMAT);
        message.encode_raw(&mut bytes);
        bytes
    }

    /// A registry from snapshot bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Registry, ClusterError> {
        let body = match bytes.split_first() {
            Some((&SNAPSHOT_FORMAT, body)) => body,
            Some((v, _)) => {
                return Err(ClusterError::Snapshot(format!(
                    "format {v} is unknown (this build reads {SNAPSHOT_FORMAT}); \
                     written by a newer Skein?"
                )))
            }
            None => return Err(ClusterError::Snapshot("empty".into())),
        };
        let message = pb::RegistrySnapshot::decode(body)
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        let mut registry = Registry::default();
        for mut record in message.clients {
            let will = record.will.take();
            let connection = record.connection.take();
            let (id, entry) = client_entry(record)?;
            if let Some(will) = will {
                registry.wills.insert(id.clone(), will);
            }
            if let Some(connection) = connection {
                registry
                    .connections
                    .insert(id.clone(), ConnectionBytes::encode(&connection));
            }
            if registry.clients.insert(id.clone(), entry).is_some() {
                return Err(ClusterError::Snapshot(format!("client {id:?} twice")));
            }
        }
        registry.down_nodes = message.down_nodes.into_iter().collect();
        registry
            .load_certificates(message.certificates)
            .map_err(ClusterError::Snapshot)?;
        registry.clock_ms = message.clock_ms;
        registry.marks = message
            .marks
            .into_iter()
            .map(|m| (m.node_id, m.stamped_at_ms))
            .collect();
        registry.rebuild_interest();
        Ok(registry)
    }
}

fn client_record(id: &str, entry: &ClientEntry) -> pb::ClientRecord {
    pb::ClientRecord {
        client_id: id.to_owned(),
        node_id: entry.owner.node,
        epoch: entry.owner.epoch,
        clean_start: entry.clean_start,
        session_expiry_secs: entry.session_expiry_secs,
        connected_at_ms: entry.connected_at_ms,
        offline_since_ms: entry.offline_since_ms(),
        subscriptions: entry
            .subscriptions
            .iter()
            .map(|(filter, s)| pb::SubscriptionRecord {
                filter: filter.to_string(),
                options: Some(pb::SubscriptionOptions {
                    qos: s.options.qos.into(),
                    no_local: s.options.no_local,
                    retain_as_published: s.options.retain_as_published,
                    retain_handling: s.options.retain_handling.into(),
                }),
                subscription_id: s.subscription_id,
            })
            .collect(),
        will: None,
        connection: None,
    }
}

fn client_entry(record: pb::ClientRecord) -> Result<(ArcStr, ClientEntry), ClusterError> {
    let owner = Owner {
        node: record.node_id,
        epoch: record.epoch,
    };
    let mut entry = ClientEntry::online(
        owner,
        record.clean_start,
        record.session_expiry_secs,
        record.connected_at_ms,
    );
    entry.set_offline_since(record.offline_since_ms);
    for s in record.subscriptions {
        let options = check_options(s.options.as_ref()).map_err(|r| {
            ClusterError::Snapshot(format!(
                "client {:?}, filter {:?}: {}",
                record.client_id, s.filter, r.detail
            ))
        })?;
        let subscription = Subscription {
            options,
            subscription_id: s.subscription_id,
        };
        entry
            .subscriptions
            .insert(Arc::from(s.filter), subscription);
    }
    Ok((ArcStr::from(record.client_id), entry))
}
