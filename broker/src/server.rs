//! The MQTT listener: accepts connections, enforces the connection limit, and drains on
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::accept_backoff::AcceptBackoff;
use crate::broker::Broker;
use crate::connection;
use crate::connection::park::Parker;

/// Accepts until the broker's shutdown token fires, then waits for every connection task.
/// Owns the node's parker (idle connections wait there): dropped, it stops its thread
/// once every connection has ended.
pub async fn serve_mqtt(broker: Arc<Broker>, parker: Parker, listener: TcpListener) {
    broker.set_parker(parker.handle().unparker());
    accept_until_shutdown(&broker, &listener, "mqtt", |stream, addresses, permit| {
        broker
            .connections
            .spawn(connection::serve(broker.clone(), stream, addresses, permit));
    })
    .await;
    drop(listener);
    close_connections(&broker).await;
    drop(parker);
}

/// The accept loop every listener shares: accepts on `listener` until the broker's
/// shutdown token fires, counts each socket under `name`, backs off after failed accepts,
/// and hands each stream with its (peer, local) addresses and connection slot (None: the
/// node is full) to `spawn`.
pub(crate) async fn accept_until_shutdown(
    broker: &Broker,
    listener: &TcpListener,
    name: &'static str,
    mut spawn: impl FnMut(TcpStream, (SocketAddr, Arc<SocketAddr>), Option<OwnedSemaphorePermit>),
) {
    let mut socknames = SocknameCache::default();
    // Bound to one address, every connection's local address is that one: no
    // getsockname per accept. On a wildcard address it depends on the interface.
    let fixed_sockname = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified())
        .map(Arc::new);
    let mut nodelay = Nodelay::new(listener);
    let accepted_total = crate::metrics::listener_accepted(name);
    let mut backoff = AcceptBackoff::new(name);
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                backoff.failed(&e, &broker.shutdown).await;
                continue;
            }
        };
        backoff.succeeded();
        nodelay.ensure(&stream);
        accepted_total.increment(1);
        let permit = broker.connection_slots.clone().try_acquire_owned().ok();
        let sockname = match &fixed_sockname {
            Some(addr) => addr.clone(),
            None => socknames.get(stream.local_addr().unwrap_or(peer)),
        };
        spawn(stream, (peer, sockname), permit);
    }
}

/// Tells every connection the node is going away and waits (bounded) for them to end. Also
/// what `run` does itself when the accept loop failed before getting here.
pub(crate) async fn close_connections(broker: &Broker) {
    let told = broker.kick_all_for_shutdown();
    tracing::debug!(
        connections = told,
        "told connections the node is shutting down"
    );
    let connections = &broker.connections;
    connections.close();
    let drain = broker.config.shutdown_timeout();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown timeout");
    }
}

/// Gets TCP_NODELAY onto accepted sockets: writes are batched per wake-up already, and
/// Nagle's algorithm would hold back acknowledgements behind unacknowledged data. Set on
/// the listener, Linux hands it down to every accepted socket; whether that happened is
/// looked at once, on the first socket, and where it did not every socket gets its own
/// setsockopt as before.
pub(crate) struct Nodelay {
    /// Whether accepted sockets have it already; None until the first is looked at (false
    /// from the start when it could not be set on the listener).
    inherited: Option<bool>,
}

impl Nodelay {
    pub(crate) fn new(listener: &TcpListener) -> Nodelay {
        let on_listener = socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok();
        Nodelay {
            inherited: (!on_listener).then_some(false),
        }
    }

    pub(crate) fn ensure(&mut self, stream: &TcpStream) {
        let inherited = *self
            .inherited
            .get_or_insert_with(|| stream.nodelay().unwrap_or(false));
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
    }
}

/// The local addresses connections were accepted on, one allocation per address instead
/// of one per connection (a listener on a wildcard address sees a few: one per interface).
#[derive(Default)]
struct SocknameCache {
    recent: Vec<Arc<SocketAddr>>,
}

/// Distinct addresses kept; beyond that the oldest is forgotten (still correct, only
/// shared less).
const SOCKNAMES_KEPT: usize = 8;

impl SocknameCache {
    fn get(&mut self, addr: SocketAddr) -> Arc<SocketAddr> {
        if let Some(known) = self.recent.iter().find(|a| ***a == addr) {
            return known.clone();
        }
        if self.recent.len() == SOCKNAMES_KEPT {
            self.recent.remove(0);
        }
        let shared = Arc::new(addr);
        self.recent.push(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accept_one(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut nodelay = Nodelay::new(&listener);
        for _ in 0..3 {
            let (_client, accepted) = accept_one(&listener).await;
            nodelay.ensure(&accepted);
            assert!(accepted.nodelay().unwrap());
        }
        #[cfg(target_os = "linux")]
        assert_eq!(nodelay.inherited, Some(true), "Linux hands it down");
    }

    #[tokio::test]
    async fn nodelay_is_set_per_socket_when_the_listener_does_not_hand_it_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut nodelay = Nodelay {
            inherited: Some(false),
        };
        let (_client, accepted) = accept_one(&listener).await;
        nodelay.ensure(&accepted);
        assert!(accepted.nodelay().unwrap());
        assert_eq!(nodelay.inherited, Some(false));
    }

    #[test]
    fn connections_on_one_address_share_its_allocation() {
        let mut cache = SocknameCache::default();
        let a: SocketAddr = "10.0.0.1:1883".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let first = cache.get(a);
        assert!(Arc::ptr_eq(&first, &cache.get(a)));
        assert_eq!(*cache.get(b), b);
        assert!(Arc::ptr_eq(&first, &cache.get(a)));
        for port in 0..SOCKNAMES_KEPT as u16 {
            cache.get(SocketAddr::from(([10, 0, 0, 2], port)));
        }
        assert_eq!(cache.recent.len(), SOCKNAMES_KEPT);
        assert_eq!(*cache.get(a), a);
    }
}
