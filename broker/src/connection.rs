//! One task per client connection: read → session → write, keepalive, limits.

mod admission;
mod authorize;
mod certificate_check;
mod cluster_step;
mod deadlines;
mod handshake;
mod identity;
mod inbound;
mod order;
mod outbound;
mod paged_slab;
pub mod park;
mod publish_acks;
mod registration;
mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::broker::Broker;
use crate::codec::{self, reason as rc, Disconnect, Packet, Properties, ProtocolVersion};
use crate::disconnect::{Close, DisconnectReason};
use crate::events::ClientInfo;
use crate::hash::HashMap;
use crate::session::{HeldWakes, Kick, Session};
use park::ParkerHandle;
use skein_seam::ClientId;
pub use socket::{PeerIdentity, Socket, StreamIo, Wrapped};

/// Writes are flushed to the socket once this much is buffered, even mid-batch.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The state of a connection after a successful CONNECT.
pub struct Connection {
    broker: Arc<Broker>,
    id: u64,
    socket: Socket,
    protocol: ProtocolVersion,
    /// What events and the admin API say about this connection (and its client id).
    info: Arc<ClientInfo>,
    session: Arc<Session>,
    epoch: u64,
    kick_rx: Arc<crate::session::KickSignal>,
    /// Seconds (0: none). Compact types here: every connection holds one of these.
    keep_alive: u16,
    last_rx: Instant,
    /// The session expiry the client asked for in CONNECT (DISCONNECT may change it).
    connect_session_expiry: u32,
    /// How many QoS 1/2 messages may be unacknowledged towards the client.
    send_window: u16,
    client_max_packet_size: u32,
    client_topic_alias_max: u16,
    /// Created by the first topic alias either way (most connections never use one).
    aliases: Option<Box<TopicAliases>>,
    /// Acknowledgements counted since the last read batch (metrics are updated per batch).
    acked: u32,
    /// Set once the client sent DISCONNECT with reason 0x04 (publish the will anyway).
    will_on_disconnect: bool,
    /// MQTT 5 Request Problem Information: false when the client asked for no Reason
    /// String on acknowledgements.
    problem_information: bool,
    /// Holds one of `broker.connection_slots` (given back on drop). A flag, not the
    /// permit itself: 16 bytes less in every connection.
    holds_slot: bool,
    /// Its place in the node's input order while it has a task (see `order`).
    input_order: Option<Box<order::InputOrderState>>,
    /// What it may publish, subscribe to and receive, when anything restricts it beyond
    /// the event topics' default (an ACL file, a token's claims, a superuser).
    authz: Option<Box<crate::auth::authz::Authz>>,
    /// An authentication source vouched for its username (see `events_subscribe_usernames`).
    username_verified: bool,
}

/// How `run` ended.
enum Outcome {
    Closed(Close),
    /// Idle long enough: park it.
    Park,
}

/// Why an idle connection woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The socket has input (or an error or end of stream to report).
    Readable,
    /// Its session may have queued something.
    Queued,
}

/// The MQTT 5 topic aliases of one connection.
#[derive(Debug, Default)]
struct TopicAliases {
    /// Set by the client's PUBLISHes.
    inbound: HashMap<u16, Arc<str>>,
    /// Given to the client by ours.
    outbound: HashMap<Arc<str>, u16>,
}

/// How [`Connection::handle_batch`] stopped.
enum Batch {
    /// No whole packet left in the read buffer.
    Drained,
    /// A batch of output is waiting to be written.
    OutputFull,
    /// Storage must be flushed before this acknowledgement goes out.
    FlushThenSend(Option<Box<Packet>>),
    /// A PUBLISH waits for the input that reached the node before it.
    RouteInOrder(Box<inbound::DeferredPublish>),
    /// A SUBSCRIBE or UNSUBSCRIBE is committed in the cluster before its answer.
    Cluster(Box<cluster_step::ClusterStep>),
    /// A peer's forward queue is over half full: wait for room before handling more of
    /// the read buffer (see `publish_acks.rs`).
    WaitForRoom,
    /// A PUBLISH or SUBSCRIBE waits for the HTTP authorizer (see `authorize.rs`).
    Authorize(Box<authorize::Pending>),
}

/// Serves one accepted TCP connection to its end. `permit` is None when the node is at its
/// connection limit: the client then gets a CONNACK refusal.
///
/// A plain function returning the task's future, so that the arguments are consumed
/// here instead of being kept in the task for its whole life.
pub fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    addresses: (SocketAddr, Arc<SocketAddr>),
    permit: Option<OwnedSemaphorePermit>,
) -> impl std::future::Future<Output = ()> + Send {
    serve_socket(broker, Socket::new(stream), addresses, permit)
}

/// [`serve`] for a stream behind TLS or WebSocket framing, its layer's handshake done.
pub fn serve_wrapped(
    broker: Arc<Broker>,
    stream: socket::Wrapped,
    addresses: (SocketAddr, Arc<SocketAddr>),
    permit: Option<OwnedSemaphorePermit>,
) -> impl std::future::Future<Output = ()> + Send {
    serve_socket(broker, Socket::wrapped(stream), addresses, permit)
}

fn serve_socket(
    broker: Arc<Broker>,
    socket: Socket,
    (peer, sockname): (SocketAddr, Arc<SocketAddr>),
    permit: Option<OwnedSemaphorePermit>,
) -> impl std::future::Future<Output = ()> + Send {
    let connection_id = broker.next_connection_id();
    let span = connection_span(connection_id, peer, None);
    // Boxed, like `finish` below: the handshake's state is freed once it is done.
    let handshake = Box::pin(handshake::accept(
        broker,
        socket,
        connection_id,
        (peer, sockname),
        permit.is_some(),
    ));
    async move {
        // Boxed at once: an unboxed local would keep its slot in the task for good.
        let Some(mut conn) = handshake.await.map(Box::new) else {
            return;
        };
        tracing::Span::current().record("client_id", conn.info.client_id.as_str());
        if let Some(permit) = permit {
            permit.forget();
            conn.holds_slot = true;
        }
        if let Err(close) = Box::pin(conn.start()).await {
            Box::pin(conn.finish(close)).await;
            return;
        }
        drive(conn).await;
    }
    .instrument(span)
}

/// DEBUG, not INFO: an enabled span is kept by the subscriber for the connection's life
/// (about 340 B per connection); the INFO and above events here name the client instead.
fn connection_span(id: u64, peer: SocketAddr, client_id: Option<&ClientId>) -> tracing::Span {
    tracing::debug_span!(
        "connection",
        id,
        %peer,
        client_id = client_id.map(|c| c.as_str())
    )
}

/// Runs an attached connection until it ends or parks (the parker resumes it here). One
/// that could not park carries on in this task and does not try again.
async fn drive(mut conn: Box<Connection>) {
    let mut may_park = true;
    let close = loop {
        match conn.run().await {
            Outcome::Closed(close) => break close,
            Outcome::Park if may_park => {
                let due = conn.keepalive_deadline();
                // The server's parker, as the connection's signal holds it.
                let Some(parker) = conn.kick_rx.unparker().and_then(ParkerHandle::of) else {
                    // None when no MQTT server runs (unit tests): it never parks.
                    may_park = false;
                    continue;
                };
                // The parked socket is watched by the parker, and this task ends.
                conn.leave_input_order();
                match parker.park(conn, due) {
                    Ok(()) => return,
                    Err(back) => (conn, may_park) = (back, false),
                }
            }
            Outcome::Park => {}
        }
    };
    // Input arriving while it closes is never handled: publishes must not wait for it.
    conn.leave_input_order();
    // Boxed: the closing path's state is only allocated when it runs, keeping the
    // connection task small while it idles in `run`.
    Box::pin(conn.finish(close)).await;
}

/// Uncounts the connection (gauge, connection-limit slot) however it ends, and detaches
/// the session if the connection task unwinds from a panic, so a bug never leaves a
/// session "online" forever with its will unpublished. (On the connection itself rather
/// than guards beside it: every byte of an idle connection counts.)
impl Drop for Connection {
    fn drop(&mut self) {
        // Counted in `skein_connections` from CONNACK to here, parked or not; here also
        // when the task unwinds from a panic.
        self.broker.hot.connection_closed(self.protocol);
        if std::mem::take(&mut self.holds_slot) {
            self.broker.connection_slots.add_permits(1);
        }
        if !std::thread::panicking() {
            return;
        }
        tracing::error!(connection = self.id, client_id = %self.info.client_id, "connection task panicked");
        let close = Close::internal("internal error");
        crate::events::raise::disconnected(&self.broker.events, &self.info, &close, None);
        let (broker, session) = (self.broker.clone(), self.session.clone());
        let (id, epoch) = (self.id, self.epoch);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let close = Close::internal("internal error");
                handshake::detach(&broker, &session, (id, epoch), &close, false, false).await;
            });
        }
    }
}

impl Connection {
    /// What is known about the client on this connection.
    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.info
    }

    /// Serves the connection until it ends or parks. Between bursts of work it waits on
    /// socket readiness, its signal (a wake-up from its session, a kick, shutdown) and one
    /// timer (keepalive, parking). A task's size is fixed at spawn by its largest state,
    /// so the rare large states (a blocked write, the handshake, closing) are boxed.
    async fn run(&mut self) -> Outcome {
        // The parker was made with the same setting (lib.rs). A TLS or WebSocket stream
        // never parks: its layer's state lives in this task (see socket/wrapped.rs).
        let park_after = (!self.socket.is_wrapped())
            .then(|| self.broker.config.park_idle())
            .flatten();
        self.stamp_input().await;
        // Before anything is written (a CONNACK, say): input the client sends in answer
        // is stamped when it arrives.
        self.watch_input();
        let mut idle_since = Instant::now();
        let timer = tokio::time::sleep_until(self.next_timer(park_after.map(|p| idle_since + p)));
        tokio::pin!(timer);
        let mut wake = Wake::Queued;
        loop {
            // Inline, not boxed: an idle connection parks and drops its task anyway, and
            // boxing cost an allocation per wake-up.
            if let Err(close) = self.work(wake).await {
                return Outcome::Closed(close);
            }
            // Everything read is handled (a closing connection lets go in `drive`).
            self.release_ticket();
            self.socket.release_idle_buffers();
            if park_after.is_some() {
                idle_since = Instant::now();
            }
            // Only the work above makes the connection busy: waiting (and the timer
            // firing) doesn't.
            wake = loop {
                let this = &*self;
                tokio::select! {
                    biased;
                    _ = self.kick_rx.notified() => match self.kick_rx.try_recv() {
                        Some(kick) => return Outcome::Closed(kicked(kick, &self.broker, self.id)),
                        None => break Wake::Queued,
                    },
                    ready = std::future::poll_fn(|cx| this.poll_input(cx)) => match ready {
                        Ok(()) => break Wake::Readable,
                        Err(e) => return Outcome::Closed(Close::read_failed(&e)),
                    },
                    _ = &mut timer, if self.keep_alive != 0 || park_after.is_some() => {
                        let now = Instant::now();
                        if self.keepalive_deadline().is_some_and(|d| now >= d) {
                            return Outcome::Closed(Close::new(DisconnectReason::KeepaliveTimeout, Some(rc::KEEP_ALIVE_TIMEOUT), "no packet within 1.5 x keepalive"));
                        }
                        let park_at = park_after.map(|p| idle_since + p);
                        if park_at.is_some_and(|p| now >= p) {
                            if self.kick_rx.needs_attention() {
                                // A wake-up whose notification was spent elsewhere.
                                break Wake::Queued;
                            }
                            self.socket.release_buffers();
                            return Outcome::Park;
                        }
                        timer.as_mut().reset(self.next_timer(park_at));
                    }
                }
            };
        }
    }

    /// When the client must have sent something by; None with keep alive 0.
    fn keepalive_deadline(&self) -> Option<Instant> {
        (self.keep_alive != 0)
            .then(|| self.last_rx + Duration::from_secs(u64::from(self.keep_alive)).mul_f32(1.5))
    }

    /// When `run`'s one timer must fire next: the keepalive deadline or `park_at`.
    fn next_timer(&self, park_at: Option<Instant>) -> Instant {
        [self.keepalive_deadline(), park_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(far_future)
    }

    /// Re-sends what a previous connection left in flight.
    async fn start(&mut self) -> Result<(), Close> {
        // What a previous connection wrote may not be on disk yet: flush before this
        // one re-sends PUBLISH/PUBREL that promise it.
        if self.resume()? {
            if let Err(close) = self.flush_storage().await {
                self.socket.wbuf().clear();
                return Err(close);
            }
        }
        Ok(())
    }

    /// Reads, handles and writes until there is nothing left to do without waiting for
    /// the client or the session.
    async fn work(&mut self, wake: Wake) -> Result<(), Close> {
        // Input may already be buffered without the socket being readable: packets the
        // client sent right behind its CONNECT (MQTT-3.1.4 allows it) arrive in the same
        // read as the CONNECT and wait in the buffer when the connection starts.
        if wake == Wake::Readable {
            self.read_available()?;
        }
        let mut input_pending = self.socket.has_unread_input();
        loop {
            if input_pending {
                input_pending = self.process_input().await?;
                if !input_pending {
                    // All that was read is handled: what is read next gets its own place.
                    self.release_ticket();
                }
            }
            // Before the queue is looked at: a wake-up after this is one for later.
            self.kick_rx.take_pending();
            let before_pump = self.socket.pending_out();
            if self.pump()? {
                self.set_input_aside();
                if let Err(close) = self.flush_storage().await {
                    // Those PUBLISHes were promised by records that may not be durable.
                    self.socket.wbuf().truncate(before_pump);
                    return Err(close);
                }
            }
            // Most writes complete at once; only a full socket buffer needs the select below.
            if let Err(e) = self.socket.try_flush(&self.broker.hot) {
                return Err(Close::write_failed(&e));
            }
            if self.socket.output_pending() {
                // A client that does not read must not hold publishes back.
                self.set_input_aside();
                // Boxed: a full socket buffer is the rare case, and its select is large.
                Box::pin(self.flush_blocked()).await?;
                // Messages queued meanwhile may have spent their wake-up: pump again.
                continue;
            }
            if input_pending {
                continue;
            }
            // What arrived while this batch was handled is read now rather than after a
            // trip through the idle wait.
            if self.read_available()? {
                input_pending = true;
                continue;
            }
            return Ok(());
        }
    }

    /// Reads what the socket has without waiting. Ok(true) when something was read: the
    /// caller handles it and then writes what that produced. (Handling it here and
    /// returning whether output is pending lost the answers to packets read by the last
    /// read of a batch, until a stale readiness wake-up happened to flush them.)
    fn read_available(&mut self) -> Result<bool, Close> {
        self.take_stamp();
        let read = self.socket.try_fill(&self.broker.hot);
        self.watch_input();
        match read {
            Ok(Some(true)) => {
                self.last_rx = Instant::now();
                self.place_input();
                Ok(true)
            }
            Ok(None) => Ok(false),
            Ok(Some(false)) => Err(Close::silent(
                DisconnectReason::TcpClosed,
                "socket closed by the client",
            )),
            Err(e) => Err(Close::read_failed(&e)),
        }
    }

    /// Writes out a buffer the socket did not take at once. A client that stops reading
    /// still gets its keepalive enforced.
    async fn flush_blocked(&mut self) -> Result<(), Close> {
        let write_deadline = self.keepalive_deadline();
        let flushed = tokio::select! {
            r = self.socket.flush(&self.broker.hot) => r,
            kick = self.kick_rx.recv() => return Err(kicked(kick, &self.broker, self.id)),
            _ = tokio::time::sleep_until(write_deadline.unwrap_or_else(far_future)), if write_deadline.is_some() => {
                return Err(Close::new(DisconnectReason::KeepaliveTimeout, Some(rc::KEEP_ALIVE_TIMEOUT), "client stopped reading"));
            }
        };
        flushed.map_err(|e| Close::write_failed(&e))
    }

    /// Handles the whole packets in the read buffer. Ok(true) when it stopped early because
    /// a batch of output is waiting: the caller writes it (bounded by keepalive, kicks and
    /// shutdown) and calls again before reading more.
    async fn process_input(&mut self) -> Result<bool, Close> {
        loop {
            let mut acks = publish_acks::Acks::default();
            let batch = self.handle_batch(&mut acks);
            // The batch's forwards were in flight together; what was acknowledged before a
            // failure still goes out.
            if let Some(acks) = acks.into_pending() {
                Box::pin(self.settle_acks(acks)).await?;
            }
            let mut batch = batch?;
            while let Batch::Authorize(pending) = batch {
                // Boxed: rare, and its state would stay in every connection task.
                batch = match Box::pin(self.authorize_then_handle(*pending)).await? {
                    Some(next) => next,
                    None if self.output_batch_full() => Batch::OutputFull,
                    // Back to the read buffer.
                    None => Batch::WaitForRoom,
                };
            }
            match batch {
                Batch::Drained => return Ok(false),
                Batch::OutputFull => return Ok(true),
                // Waited above, with the batch's acknowledgements (or a packet waited for
                // the authorizer and was handled): back to the read buffer.
                Batch::WaitForRoom => {}
                Batch::RouteInOrder(deferred) => {
                    // Boxed: waiting is the rare case, and its state would stay in every
                    // connection task.
                    Box::pin(self.wait_for_earlier_input()).await;
                    let mut acks = publish_acks::Acks::default();
                    let after = self.route_deferred(*deferred, &mut acks)?;
                    if let Some(acks) = acks.into_pending() {
                        Box::pin(self.settle_acks(acks)).await?;
                    }
                    if let inbound::After::FlushThenSend(ack) = after {
                        if self.flush_then_send(ack).await? {
                            return Ok(true);
                        }
                    }
                }
                Batch::FlushThenSend(ack) => {
                    if self.flush_then_send(ack).await? {
                        return Ok(true);
                    }
                }
                Batch::Cluster(step) => {
                    // Boxed: rare next to publishes, and its state would stay in every
                    // connection task.
                    if Box::pin(self.cluster_then_send(*step)).await? {
                        return Ok(true);
                    }
                }
                // Answered above.
                Batch::Authorize(_) => {}
            }
        }
    }

    /// Flushes storage, then sends `ack`; Ok(true) when a batch of output is waiting.
    async fn flush_then_send(&mut self, ack: Option<Box<Packet>>) -> Result<bool, Close> {
        // What was handled so far is in force; a flush must not hold publishes back.
        self.set_input_aside();
        self.flush_storage().await?;
        if let Some(ack) = ack {
            self.send(&ack);
        }
        Ok(self.output_batch_full())
    }

    /// Handles packets from the read buffer until it is drained, output fills a batch, or
    /// a packet needs storage flushed first. Synchronous, so the subscribers' wake-ups it
    /// holds are released (dropped) before anything waits, on every return.
    /// Publishes answered once other nodes confirm leave their acknowledgements in `acks`
    /// (see `publish_acks`), whatever this returns.
    fn handle_batch(&mut self, acks: &mut publish_acks::Acks) -> Result<Batch, Close> {
        let mut held = HeldWakes::default();
        loop {
            if let Some(handled) = self.handle_short_ack() {
                handled?;
                continue;
            }
            let max = self.broker.config.max_packet_size as usize;
            let packet = match codec::decode(self.socket.rbuf(), self.protocol, max) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.count_acked();
                    return Ok(Batch::Drained);
                }
                Err(e) => {
                    crate::metrics::packet_decode_error();
                    return Err(Close::with_code(e.reason_code(), e.to_string()));
                }
            };
            match self.handle(packet, &mut held, acks)? {
                inbound::After::Nothing => {}
                inbound::After::FlushThenSend(ack) => return Ok(Batch::FlushThenSend(ack)),
                inbound::After::Cluster(step) => return Ok(Batch::Cluster(step)),
                inbound::After::RouteInOrder(deferred) => {
                    self.count_acked();
                    return Ok(Batch::RouteInOrder(deferred));
                }
                inbound::After::Authorize(pending) => {
                    self.count_acked();
                    return Ok(Batch::Authorize(pending));
                }
            }
            if self.output_batch_full() {
                return Ok(Batch::OutputFull);
            }
            if publish_acks::PendingAcks::waits_for_room(acks) {
                self.count_acked();
                return Ok(Batch::WaitForRoom);
            }
        }
    }

    /// Whether a batch of output waits to be written before more input is handled (then
    /// the acknowledgements handled so far are counted).
    fn output_batch_full(&mut self) -> bool {
        let full = self.socket.pending_out() >= WRITE_BATCH_BYTES;
        if full {
            self.count_acked();
        }
        full
    }

    /// Adds the acknowledgements handled since the last call to the acked counter.
    fn count_acked(&mut self) {
        self.broker
            .hot
            .acked(u64::from(std::mem::take(&mut self.acked)));
    }

    fn aliases(&mut self) -> &mut TopicAliases {
        self.aliases.get_or_insert_default()
    }

    fn send(&mut self, packet: &Packet) {
        codec::encode(packet, self.protocol, self.socket.wbuf());
    }

    /// Ends the connection: tells a v5 client why, then detaches from the session.
    async fn finish(mut self, close: Close) {
        self.count_acked();
        // Another node took the session over (noted with the kick): the event names it,
        // and the session is that node's now. Looked at only after a takeover kick.
        let taken_by = (self.kick_rx.try_recv() == Some(Kick::TakenOver))
            .then(|| self.broker.take_remote_taker(self.id))
            .flatten()
            .map(|by| self.broker.node_address(by));
        let level = match close.reason {
            DisconnectReason::Normal | DisconnectReason::TcpClosed | DisconnectReason::GoAway => {
                tracing::Level::DEBUG
            }
            _ => tracing::Level::INFO,
        };
        if level == tracing::Level::INFO {
            tracing::info!(client_id = %self.info.client_id, peer = %self.info.peer, reason = close.reason.as_str(), detail = %close.detail, "connection closed");
        } else {
            tracing::debug!(reason = close.reason.as_str(), detail = %close.detail, "connection closed");
        }
        self.broker.hot.disconnected(close.reason);
        // Marked down: the node that adopted the client announced its end, once.
        let node_down = close.reason == DisconnectReason::NodeDown;
        if !node_down {
            crate::events::raise::disconnected(
                &self.broker.events,
                &self.info,
                &close,
                taken_by.as_deref(),
            );
        }
        if let (Some(code), true) = (close.code, self.protocol.is_v5()) {
            let mut packet = Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties {
                    reason_string: Some(truncate(&close.detail, MAX_REASON_STRING))
                        .filter(|s| !s.is_empty()),
                    ..Properties::default()
                },
            });
            if codec::encoded_len(&packet, self.protocol) > self.client_max_packet_size as usize {
                packet = Packet::Disconnect(Disconnect {
                    reason: code,
                    properties: Properties::default(),
                });
            }
            self.send(&packet);
        }
        if close.reason != DisconnectReason::TcpClosed {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.socket.flush(&self.broker.hot))
                    .await;
        }
        handshake::detach(
            &self.broker,
            &self.session,
            (self.id, self.epoch),
            &close,
            self.will_on_disconnect,
            taken_by.is_some() || node_down,
        )
        .await;
        // The linger protects what the broker said last from a reset by input it did not
        // read. After the client's DISCONNECT the client sends nothing more and expects
        // nothing more (MQTT-3.14.4): closing outright saves a shutdown and a read.
        if !matches!(
            close.reason,
            DisconnectReason::TcpClosed | DisconnectReason::Normal
        ) {
            self.socket.close_gracefully(&self.broker.hot).await;
        } else {
            // TLS says close_notify, WebSocket answers the client's close frame.
            self.socket.end_layer().await;
        }
    }
}

/// A timer that does not fire (tokio's own "far future" is about 30 years).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Reason strings carry client input (a topic, say): keep them short.
const MAX_REASON_STRING: usize = 256;

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn go_away() -> Close {
    Close::new(
        DisconnectReason::GoAway,
        Some(rc::SERVER_SHUTTING_DOWN),
        "server shutting down",
    )
}

/// How a kick ends connection `id`.
fn kicked(kick: Kick, broker: &Broker, id: u64) -> Close {
    match kick {
        // The reason string names the certificate and its status.
        Kick::CertificateDisabled => Close::new(
            DisconnectReason::Kicked,
            Some(rc::ADMINISTRATIVE_ACTION),
            broker
                .certificate_users
                .why_disabled(id)
                .unwrap_or_else(|| "certificate no longer active".to_owned()),
        ),
        Kick::ShuttingDown => go_away(),
        Kick::Administrative => Close::new(
            DisconnectReason::Kicked,
            Some(rc::ADMINISTRATIVE_ACTION),
            "kicked by an operator",
        ),
        Kick::TakenOver => taken_over(),
        Kick::AuthExpired => Close::new(
            DisconnectReason::AuthenticationExpired,
            Some(rc::NOT_AUTHORIZED),
            "authentication expired",
        ),
        // The adopting node announced the end (reason node_down); a v5 client is told to
        // use another server (its session lives on another node now).
        Kick::NodeDown => Close::new(
            DisconnectReason::NodeDown,
            Some(rc::USE_ANOTHER_SERVER),
            "this node was marked down by the cluster",
        ),
    }
}

/// Another connection took the session: this one ends, touching it no more.
fn taken_over() -> Close {
    Close::new(
        DisconnectReason::Takeovered,
        Some(rc::SESSION_TAKEN_OVER),
        "session taken over",
    )
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every idle connection holds one task of this size (plus its session and socket), so
    /// growth here is memory per connection: keep processing state out of it (boxed).
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let broker = crate::broker::Broker::new(
            crate::config::Config::default(),
            skein_storage::Store::open_temporary().unwrap(),
            Arc::new(crate::local_cluster::LocalCluster::new(skein_seam::NodeId(
                1,
            ))),
            crate::events::EventBus::new(crate::events::NodeInfo {
                node: "127.0.0.1:1883".into(),
                node_ip: "127.0.0.1".into(),
                node_name: "test".into(),
            }),
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let handshake = handshake::accept(
            broker.clone(),
            Socket::new(TcpStream::connect(addr).await.unwrap()),
            1,
            (addr, Arc::new(addr)),
            true,
        );
        let handshake = std::mem::size_of_val(&handshake);
        let task = serve(broker, stream, (addr, Arc::new(addr)), None);
        let (task, conn) = (
            std::mem::size_of_val(&task),
            std::mem::size_of::<Connection>(),
        );
        eprintln!(
            "connection task future: {task} B, Connection: {conn} B, handshake: {handshake} B"
        );
        // 1384 B with Connection inline before the rare states were boxed; since then
        // 496 B plus the boxed Connection (144 B). A parked connection has no task.
        assert!(task <= 640, "connection task future grew to {task} B");
        assert!(conn <= 320, "Connection grew to {conn} B");
        // Boxed once per connection: under 1 KiB it comes from glibc's per-thread cache,
        // above it from the slow path that consolidates the free lists first (2.6 kB
        // while the CONNECT was moved into it and the refusal path was inline).
        assert!(handshake <= 1000, "handshake future grew to {handshake} B");
    }
}
