//! One task per client connection: read → session → write, keepalive, limits.

mod handshake;
mod inbound;
mod outbound;
pub mod reason;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::broker::Broker;
use crate::codec::{self, reason as rc, Disconnect, Packet, Properties, ProtocolVersion};
use crate::events::ClientInfo;
use crate::ids::ClientId;
use crate::session::{Kick, Session};
pub use reason::{Close, DisconnectReason};

/// Writes are flushed to the socket once this much is buffered, even mid-batch.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
const READ_CHUNK: usize = 4096;
/// A write buffer larger than this is freed once it has been flushed.
const IDLE_WRITE_CAPACITY: usize = 1024;
/// How long, and how much input, a closing connection drains before it is dropped.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// A socket before CONNECT: the read and write halves and what has been read so far.
pub struct Socket {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    counters: Arc<crate::metrics::HotCounters>,
    /// A large read or write happened since the buffers were last considered idle.
    busy: bool,
}

impl Socket {
    fn new(stream: TcpStream, counters: Arc<crate::metrics::HotCounters>) -> Socket {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Socket {
            reader,
            writer,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            counters,
            busy: false,
        }
    }

    /// Reads more bytes; Ok(false) on end of stream. Cancel-safe. The read buffer is only
    /// grown once the socket is readable, so an idle connection holds no buffer.
    async fn fill(&mut self) -> std::io::Result<bool> {
        loop {
            self.reader.readable().await?;
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            match self.reader.try_read_buf(&mut self.rbuf) {
                Ok(n) => {
                    self.counters.bytes_in(n);
                    self.busy |= n >= READ_CHUNK / 2;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Stale readiness: don't sit on the buffer while waiting again.
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new();
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes what the socket takes without waiting.
    fn try_flush(&mut self) -> std::io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.writer.try_write(&self.wbuf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.counters.bytes_out(n);
                    self.busy |= n >= IDLE_WRITE_CAPACITY;
                    self.wbuf.advance(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Gives idle buffers back to the allocator (memory per idle connection).
    /// Buffers survive one loop iteration after a large read or write, so a streaming
    /// connection keeps them (re-growing them every batch cost a tenth of the CPU).
    fn release_idle_buffers(&mut self) {
        if std::mem::take(&mut self.busy) {
            return;
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > IDLE_WRITE_CAPACITY {
            self.wbuf = BytesMut::new();
        }
    }

    /// Flushes what is pending, half-closes, then reads and discards until the client closes
    /// (bounded). Closing outright with unread input makes the kernel send RST, and a
    /// client still writing would lose our last packet (a DISCONNECT or CONNACK) with it.
    async fn close_gracefully(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        let _ = self.writer.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            let mut left = LINGER_MAX_BYTES;
            while left > 0 {
                match self.reader.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }

    /// Writes the buffer out. Cancel-safe: what was written is consumed from the buffer, so
    /// an interrupted flush resumes where it stopped.
    async fn flush(&mut self) -> std::io::Result<()> {
        while !self.wbuf.is_empty() {
            let n = self.writer.write(&self.wbuf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.wbuf.advance(n);
            self.counters.bytes_out(n);
            self.busy |= n >= IDLE_WRITE_CAPACITY;
        }
        Ok(())
    }
}

/// The state of a connection after a successful CONNECT.
pub struct Connection {
    broker: Arc<Broker>,
    id: u64,
    socket: Socket,
    protocol: ProtocolVersion,
    client_id: ClientId,
    /// What events and the admin API say about this connection.
    info: Arc<ClientInfo>,
    session: Arc<Session>,
    epoch: u64,
    kick_rx: Arc<crate::session::KickSignal>,
    keep_alive: Duration,
    last_rx: Instant,
    /// The session expiry the client asked for in CONNECT (DISCONNECT may change it).
    connect_session_expiry: u32,
    /// How many QoS 1/2 messages may be unacknowledged towards the client.
    send_window: usize,
    client_max_packet_size: usize,
    client_topic_alias_max: u16,
    aliases_in: HashMap<u16, Arc<str>>,
    aliases_out: HashMap<Arc<str>, u16>,
    /// Acknowledgements counted since the last read batch (metrics are updated per batch).
    acked: u64,
    /// Set once the client sent DISCONNECT with reason 0x04 (publish the will anyway).
    will_on_disconnect: bool,
}

/// Serves one accepted TCP connection to its end. `permit` is None when the node is at its
/// connection limit: the client then gets a CONNACK refusal.
pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    let connection_id = broker.next_connection_id();
    let span = tracing::info_span!("connection", id = connection_id, %peer, client_id = tracing::field::Empty);
    let sockname = stream.local_addr().unwrap_or(peer);
    async move {
        let socket = Socket::new(stream, broker.hot.clone());
        // Boxed, like `finish` below: the handshake's state is freed once it is done.
        let Some(mut conn) = Box::pin(handshake::accept(
            broker,
            socket,
            connection_id,
            (peer, sockname),
            permit.is_some(),
        ))
        .await
        else {
            return;
        };
        tracing::Span::current().record("client_id", conn.client_id.as_str());
        let _connected = crate::metrics::ConnectionGauge::new(conn.protocol);
        let guard = DetachOnPanic {
            broker: conn.broker.clone(),
            session: conn.session.clone(),
            connection_id: conn.id,
            epoch: conn.epoch,
            info: conn.info.clone(),
        };
        let close = conn.run().await;
        // Boxed: the closing path's state is only allocated when it runs, keeping the
        // connection task small while it idles in `run`.
        Box::pin(conn.finish(close)).await;
        drop(guard);
        drop(permit);
    }
    .instrument(span)
    .await
}

/// Detaches the session if the connection task unwinds from a panic, so a bug never
/// leaves a session "online" forever with its will unpublished. Does nothing on a normal end.
struct DetachOnPanic {
    broker: Arc<Broker>,
    session: Arc<Session>,
    connection_id: u64,
    epoch: u64,
    info: Arc<ClientInfo>,
}

impl Drop for DetachOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        tracing::error!(connection = self.connection_id, "connection task panicked");
        let close = Close::internal("internal error");
        crate::events::raise::disconnected(&self.broker, &self.info, &close);
        let (broker, session) = (self.broker.clone(), self.session.clone());
        let (id, epoch) = (self.connection_id, self.epoch);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let close = Close::internal("internal error");
                handshake::detach(&broker, &session, id, epoch, &close, false).await;
            });
        }
    }
}

impl Connection {
    /// What is known about the client on this connection.
    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.info
    }

    async fn run(&mut self) -> Close {
        match self.resume() {
            Err(close) => return close,
            // What a previous connection wrote may not be on disk yet: flush before this
            // one re-sends PUBLISH/PUBREL that promise it.
            Ok(true) => {
                if let Err(close) = self.flush_storage().await {
                    self.socket.wbuf.clear();
                    return close;
                }
            }
            Ok(false) => {}
        }
        let timeout = self.keep_alive.mul_f32(1.5);
        let keepalive = tokio::time::sleep(timeout);
        tokio::pin!(keepalive);
        let shutdown = self.broker.shutdown.clone();
        let mut input_pending = false;
        loop {
            if input_pending {
                match self.process_input().await {
                    Ok(more) => input_pending = more,
                    Err(close) => return close,
                }
            }
            let before_pump = self.socket.wbuf.len();
            match self.pump() {
                Err(close) => return close,
                Ok(true) => {
                    if let Err(close) = self.flush_storage().await {
                        // Those PUBLISHes were promised by records that may not be durable.
                        self.socket.wbuf.truncate(before_pump);
                        return close;
                    }
                }
                Ok(false) => {}
            }
            // Most writes complete at once; only a full socket buffer needs the select below.
            if let Err(e) = self.socket.try_flush() {
                return Close::silent(DisconnectReason::TcpClosed, format!("write failed: {e}"));
            }
            if !self.socket.wbuf.is_empty() {
                // A client that stops reading still gets its keepalive enforced.
                let write_deadline = self.last_rx + timeout;
                let flushed = tokio::select! {
                    r = self.socket.flush() => r,
                    _ = shutdown.cancelled() => return go_away(),
                    kick = self.kick_rx.recv() => return kicked(Some(kick)),
                    _ = tokio::time::sleep_until(write_deadline), if !self.keep_alive.is_zero() => {
                        return Close::new(DisconnectReason::KeepaliveTimeout, Some(rc::KEEP_ALIVE_TIMEOUT), "client stopped reading");
                    }
                };
                if let Err(e) = flushed {
                    return Close::silent(
                        DisconnectReason::TcpClosed,
                        format!("write failed: {e}"),
                    );
                }
            }
            if input_pending {
                continue;
            }
            self.socket.release_idle_buffers();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return go_away(),
                kick = self.kick_rx.recv() => return kicked(Some(kick)),
                read = self.socket.fill() => match read {
                    Ok(true) => {
                        self.last_rx = Instant::now();
                        match self.process_input().await {
                            Ok(more) => input_pending = more,
                            Err(close) => return close,
                        }
                    }
                    Ok(false) => return Close::silent(DisconnectReason::TcpClosed, "socket closed by the client"),
                    Err(e) => return Close::silent(DisconnectReason::TcpClosed, format!("read failed: {e}")),
                },
                _ = self.session.wake.notified() => {}
                _ = &mut keepalive, if !self.keep_alive.is_zero() => {
                    let deadline = self.last_rx + timeout;
                    if Instant::now() >= deadline {
                        return Close::new(DisconnectReason::KeepaliveTimeout, Some(rc::KEEP_ALIVE_TIMEOUT), "no packet within 1.5 x keepalive");
                    }
                    keepalive.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Decodes and handles every whole packet in the read buffer.
    /// Handles the whole packets in the read buffer. Ok(true) when it stopped early because
    /// a batch of output is waiting: the caller writes it (bounded by keepalive, kicks and
    /// shutdown) and calls again before reading more.
    async fn process_input(&mut self) -> Result<bool, Close> {
        loop {
            let max = self.broker.config.max_packet_size as usize;
            let packet = match codec::decode(&mut self.socket.rbuf, self.protocol, max) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.broker.hot.acked(std::mem::take(&mut self.acked));
                    return Ok(false);
                }
                Err(e) => {
                    crate::metrics::packet_decode_error();
                    return Err(Close::with_code(e.reason_code(), e.to_string()));
                }
            };
            if let inbound::After::FlushThenSend(ack) = self.handle(packet)? {
                self.flush_storage().await?;
                if let Some(ack) = ack {
                    self.send(&ack);
                }
            }
            if self.socket.wbuf.len() >= WRITE_BATCH_BYTES {
                self.broker.hot.acked(std::mem::take(&mut self.acked));
                return Ok(true);
            }
        }
    }

    fn send(&mut self, packet: &Packet) {
        codec::encode(packet, self.protocol, &mut self.socket.wbuf);
    }

    /// Ends the connection: tells a v5 client why, then detaches from the session.
    async fn finish(mut self, close: Close) {
        self.broker.hot.acked(std::mem::take(&mut self.acked));
        let level = match close.reason {
            DisconnectReason::Normal | DisconnectReason::TcpClosed | DisconnectReason::GoAway => {
                tracing::Level::DEBUG
            }
            _ => tracing::Level::INFO,
        };
        if level == tracing::Level::INFO {
            tracing::info!(reason = close.reason.as_str(), detail = %close.detail, "connection closed");
        } else {
            tracing::debug!(reason = close.reason.as_str(), detail = %close.detail, "connection closed");
        }
        crate::metrics::disconnected(close.reason.as_str());
        crate::events::raise::disconnected(&self.broker, &self.info, &close);
        if let (Some(code), true) = (close.code, self.protocol.is_v5()) {
            let mut packet = Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties {
                    reason_string: Some(truncate(&close.detail, MAX_REASON_STRING))
                        .filter(|s| !s.is_empty()),
                    ..Properties::default()
                },
            });
            if codec::encoded_len(&packet, self.protocol) > self.client_max_packet_size {
                packet = Packet::Disconnect(Disconnect {
                    reason: code,
                    properties: Properties::default(),
                });
            }
            self.send(&packet);
        }
        if close.reason != DisconnectReason::TcpClosed {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.flush()).await;
        }
        handshake::detach(
            &self.broker,
            &self.session,
            self.id,
            self.epoch,
            &close,
            self.will_on_disconnect,
        )
        .await;
        if close.reason != DisconnectReason::TcpClosed {
            self.socket.close_gracefully().await;
        }
    }
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

fn kicked(kick: Option<Kick>) -> Close {
    match kick {
        Some(Kick::Administrative) => Close::new(
            DisconnectReason::Kicked,
            Some(rc::ADMINISTRATIVE_ACTION),
            "kicked by an operator",
        ),
        _ => Close::new(
            DisconnectReason::Takeovered,
            Some(rc::SESSION_TAKEN_OVER),
            "session taken over",
        ),
    }
}
