//! The Raft network: openraft's [`RaftNetworkFactory`] and [`RaftNetwork`] over the `Raft`
//! gRPC service, one cached channel per peer (see `peers.rs`).
//!
//! Errors map to what openraft does next: a peer that cannot be reached (connection refused,
//! name not resolving, connection lost) is [`Unreachable`], so openraft backs off before the
//! next attempt instead of spinning; so is a peer that refuses what we send (a malformed or
//! unknown message: another version) or whose Raft has stopped (`UNAVAILABLE`). A message
//! too large is [`PayloadTooLarge`], so it sends fewer entries; a deadline passed is a
//! [`NetworkError`], retried at once.

// openraft's RPC error type is large (about 300 bytes); it is what the trait returns, so the
// helpers here build it as is rather than box it only to unbox it at the trait boundary.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::Code;

use crate::convert::{FromPb, ToPb};
use crate::peers::{raft_client, Peers};
use crate::types::{Node, NodeId, TypeConfig};

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

/// Makes a [`Connection`] per target for openraft's replication and election tasks.
#[derive(Clone)]
pub(crate) struct Network {
    peers: Arc<Peers>,
}

impl Network {
    pub(crate) fn new(peers: Arc<Peers>) -> Self {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            target,
            addr: node.grpc.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// The Raft RPCs to one peer.
pub(crate) struct Connection {
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

impl Connection {
    fn client<E: std::error::Error>(
        &self,
    ) -> RpcResult<skein_proto::v1::raft_client::RaftClient<tonic::transport::Channel>, E> {
        self.peers
            .channel(self.target, &self.addr)
            .map(raft_client)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // Lets the peer drop work its caller has given up on.
    request.set_timeout(timeout);
    request
}

/// What a failed call means to openraft (see the module docs).
fn rpc_error<E: std::error::Error>(
    status: tonic::Status,
    entries: usize,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    match status.code() {
        Code::ResourceExhausted | Code::OutOfRange if entries > 1 => {
            RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2) as u64))
        }
        // openraft already waited for this one; trying again at once is fine.
        Code::DeadlineExceeded => RPCError::Network(NetworkError::new(&status)),
        // Down, unreachable, stopped, or refusing what we send (another version): back off
        // rather than retry in a tight loop.
        _ => RPCError::Unreachable(Unreachable::new(&status)),
    }
}

fn malformed<E: std::error::Error>(
    e: crate::error::ClusterError,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for Connection {
    #[tracing::instrument(level = "trace", skip_all, fields(target = self.target, entries = rpc.entries.len()))]
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let entries = rpc.entries.len();
        let response = self
            .client()?
            .append_entries(request(rpc.to_pb(), option.hard_ttl()))
            .await
            .map_err(|s| rpc_error(s, entries))?;
        self.peers.heard_from(self.target);
        response.into_inner().into_raft().map_err(malformed)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target, offset = rpc.offset, done = rpc.done))]
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let response = self
            .client()?
            .install_snapshot(request(rpc.to_pb(), option.hard_ttl()))
            .await
            .map_err(|s| rpc_error(s, 0))?;
        self.peers.heard_from(self.target);
        let outcome: crate::convert::InstallSnapshotOutcome =
            response.into_inner().into_raft().map_err(malformed)?;
        outcome.map_err(|e| {
            RPCError::RemoteError(RemoteError::new(self.target, RaftError::APIError(e)))
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(target = self.target))]
    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let response = self
            .client()?
            .vote(request(rpc.to_pb(), option.hard_ttl()))
            .await
            .map_err(|s| rpc_error(s, 0))?;
        self.peers.heard_from(self.target);
        response.into_inner().into_raft().map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;

    /// A peer that is down (nothing listens on its port) is unreachable, so openraft backs
    /// off; the call fails fast instead of hanging.
    #[tokio::test]
    async fn a_peer_that_is_down_is_unreachable() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let peers = Arc::new(Peers::new(Duration::from_secs(1), Duration::from_secs(1)));
        let node = Node {
            grpc: addr,
            ..Node::default()
        };
        let mut connection = Network::new(peers.clone()).new_client(2, &node).await;
        let started = std::time::Instant::now();
        let request = VoteRequest::new(Vote::new(1, 1), None);
        let e = connection
            .vote(request, RPCOption::new(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(e, RPCError::Unreachable(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(peers.since_contact(2), None, "no contact was made");
    }
}
