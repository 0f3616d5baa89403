//! A peer connection left stuck by a network cut is replaced: on real sockets, through a
//! relay that can silence the connections it carries while still passing new ones (what a
//! TCP connection in retransmission backoff looks like after the link heals).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skein_proto::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;

/// A TCP relay to `upstream`. `silence` stops the connections it carries so far: they stay
/// open and pass nothing, as a connection whose bytes are held in a peer's retransmission
/// queue; connections accepted later pass as usual.
struct Relay {
    addr: String,
    accepted: Arc<AtomicUsize>,
    generation: watch::Sender<usize>,
    stop: CancellationToken,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (generation, _) = watch::channel(0usize);
        let stop = CancellationToken::new();
        let (count, generations, stopped) = (accepted.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = stopped.cancelled() => return,
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut silenced = generations.subscribe();
                let born = *silenced.borrow_and_update();
                let (upstream, stopped) = (upstream.clone(), stopped.clone());
                tokio::spawn(async move {
                    let mut server = TcpStream::connect(&upstream).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                        _ = silenced.wait_for(|g| *g > born) => {}
                        _ = stopped.cancelled() => return,
                    }
                    // Silenced: hold both sockets open, passing nothing, until the end.
                    stopped.cancelled().await;
                    drop((client, server));
                });
            }
        });
        Relay {
            addr,
            accepted,
            generation,
            stop,
        }
    }

    fn silence_current_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gRPC server with no services: every call is answered (`UNIMPLEMENTED`), which is all
/// a test of the connection needs.
async fn answering_server() -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stopped.cancelled_owned(),
            )
            .await
            .unwrap();
    });
    (addr, stop)
}

/// One call with a deadline: whether the peer answered (any status it sent counts).
async fn answered(peers: &Peers, addr: &str) -> bool {
    let mut client = raft_client(peers.channel(2, addr).unwrap());
    let mut request = tonic::Request::new(pb::VoteRequest::default());
    request.set_timeout(Duration::from_millis(300));
    match client.vote(request).await {
        Ok(_) => true,
        Err(status) => status.code() == tonic::Code::Unimplemented,
    }
}

#[tokio::test]
async fn a_connection_that_went_silent_is_replaced_within_two_keepalives() {
    let keepalive = Duration::from_millis(400);
    let (server, _server) = answering_server().await;
    let relay = Relay::start(server).await;
    let peers = Peers::new(Duration::from_secs(1), keepalive);
    assert!(
        answered(&peers, &relay.addr).await,
        "a first call is answered"
    );

    // Idle but answering pings: the connection is kept, not redialled.
    tokio::time::sleep(keepalive * 4).await;
    assert!(answered(&peers, &relay.addr).await);
    assert_eq!(relay.accepted(), 1, "a live idle connection stays open");

    // The cut heals, but the old connection stays stuck: calls on it time out until the
    // keepalive closes it and the channel dials a new one.
    relay.silence_current_connections();
    let silenced = Instant::now();
    let deadline = silenced + keepalive * 2 + Duration::from_secs(2);
    loop {
        if answered(&peers, &relay.addr).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer {:?} after the connection went silent",
            silenced.elapsed()
        );
    }
    assert_eq!(relay.accepted(), 2, "answered on a new connection");
}
