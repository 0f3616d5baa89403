//! [`Peers`]: one cached gRPC channel per member, shared by the Raft network and the
//! proposer's and admin calls.
//!
//! A channel is created lazily (`connect_lazy`): nothing is dialled until the first call,
//! the host name is resolved each time the channel (re)connects, so a member behind a DNS
//! name (a Kubernetes headless service) is found once its name resolves, and a broken
//! connection is re-established on the next call. A member whose address changes in the
//! membership gets a new channel.
//!
//! A connection that goes silent is dropped within two keepalive periods (see
//! [`RaftSettings::peer_keepalive`](crate::RaftSettings::peer_keepalive)): after a network
//! cut heals, a TCP connection that had bytes in flight stays stuck until the kernel's next
//! retransmission, which backs off exponentially (0.2 s, 0.4 s, ... 6.4 s, 12.8 s), so it can
//! carry nothing for many seconds after the link is back. Every call on it times out, and
//! a call's timeout does not close the connection; the keepalive does, and the next call
//! dials a fresh connection, which works at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skein_proto::v1::cluster_client::ClusterClient;
use skein_proto::v1::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClusterError, Result};
use crate::types::NodeId;

/// The largest message a member sends or accepts: a batch of log entries or a snapshot
/// chunk (openraft sends 3 MiB chunks), with room to spare.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub(crate) struct Peers {
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
    /// When this node last heard from each peer: a Raft response from it, or (on a
    /// follower) a request from the leader. openraft 0.9's metrics have no such time.
    contacts: Mutex<HashMap<NodeId, Instant>>,
    connect_timeout: Duration,
    /// A connection silent this long is pinged; a ping unanswered this long closes it.
    keepalive: Duration,
}

impl Peers {
    pub(crate) fn new(connect_timeout: Duration, keepalive: Duration) -> Self {
        Peers {
            channels: Mutex::new(HashMap::new()),
            contacts: Mutex::new(HashMap::new()),
            connect_timeout,
            keepalive,
        }
    }

    /// The channel to member `node` at `addr` (`host:port`).
    pub(crate) fn channel(&self, node: NodeId, addr: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached_addr, channel)) = channels.get(&node) {
            if cached_addr == addr {
                return Ok(channel.clone());
            }
        }
        let channel = self.endpoint(addr)?.connect_lazy();
        channels.insert(node, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }

    /// A channel to an address that belongs to no known member yet (`--join`), not cached.
    pub(crate) fn uncached(&self, addr: &str) -> Result<Channel> {
        Ok(self.endpoint(addr)?.connect_lazy())
    }

    /// Forgets members that left, closing their channels once in-flight calls finish.
    pub(crate) fn retain(&self, mut keep: impl FnMut(NodeId) -> bool) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|node, _| keep(*node));
        drop(channels);
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        contacts.retain(|node, _| keep(*node));
    }

    /// Notes that `node` was heard from just now.
    pub(crate) fn heard_from(&self, node: NodeId) {
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        contacts.insert(node, Instant::now());
    }

    /// How long ago `node` was last heard from (`None`: never since this node started).
    pub(crate) fn since_contact(&self, node: NodeId) -> Option<Duration> {
        let contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        contacts.get(&node).map(Instant::elapsed)
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let uri = format!("http://{addr}");
        let endpoint = Endpoint::from_shared(uri).map_err(|e| ClusterError::InvalidSetting {
            name: "grpc address",
            reason: format!("{addr:?}: {e}"),
        })?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true))
    }
}

pub(crate) fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub(crate) fn cluster_client(channel: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests;
