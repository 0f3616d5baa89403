//! Raw-socket MQTT client for byte-level tests: it writes exactly the bytes
//! a test gives it (legal or not), decodes whatever the server sends and can
//! assert that the server closes the connection within a deadline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{self, decode, Connect, DecodeError, Packet, Proto, Publish, SubFilter};

/// Why [`RawClient::recv`] returned without a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing (complete) arrived before the timeout.
    Timeout,
    /// The server closed the connection (EOF or reset).
    Closed,
    /// The server sent bytes the codec could not decode.
    Malformed(String),
}

pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    /// Packets read from the socket but not yet consumed (see [`RawClient::recv_matching`]).
    stash: VecDeque<Packet>,
    /// Protocol used to decode server packets (set by `connect`).
    pub proto: Proto,
    closed: bool,
}

impl RawClient {
    /// Opens a TCP connection and sends nothing.
    pub async fn tcp(addr: SocketAddr, proto: Proto) -> RawClient {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: BytesMut::with_capacity(4096),
            stash: VecDeque::new(),
            proto,
            closed: false,
        }
    }

    /// Opens a connection, sends `connect` and returns the first packet the
    /// server answers with (normally CONNACK) – does not assert its code.
    pub async fn connect(addr: SocketAddr, connect: &Connect) -> (RawClient, Packet) {
        let mut c = RawClient::tcp(addr, connect.proto).await;
        c.send(&connect.encode()).await;
        let p = c.expect(crate::RECV_TIMEOUT).await;
        (c, p)
    }

    /// Connects and asserts CONNACK with code 0; returns the client and the
    /// CONNACK's session-present flag and properties.
    pub async fn connect_ok(
        addr: SocketAddr,
        connect: &Connect,
    ) -> (RawClient, bool, codec::Props) {
        let (c, p) = RawClient::connect(addr, connect).await;
        match p {
            Packet::ConnAck {
                session_present,
                code: 0,
                props,
            } => (c, session_present, props),
            other => panic!(
                "expected CONNACK 0x00 for {:?}, got {other:?}",
                connect.client_id
            ),
        }
    }

    /// Like [`connect_ok`](Self::connect_ok), but reports instead of panicking when the
    /// node is not there or does not accept (a node that is stopping, say).
    pub async fn try_connect_ok(addr: SocketAddr, connect: &Connect) -> Result<RawClient, String> {
        let stream = tokio::time::timeout(crate::RECV_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("TCP connect to {addr} timed out"))?
            .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let mut c = RawClient {
            stream,
            buf: BytesMut::with_capacity(4096),
            stash: VecDeque::new(),
            proto: connect.proto,
            closed: false,
        };
        c.try_send(&connect.encode())
            .await
            .map_err(|e| format!("sending CONNECT: {e}"))?;
        match c.recv(crate::RECV_TIMEOUT).await {
            Ok(Packet::ConnAck { code: 0, .. }) => Ok(c),
            other => Err(format!("CONNECT answered with {other:?}")),
        }
    }

    /// Convenience: v3.1.1 clean-session connection.
    pub async fn v311(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, &Connect::v311(client_id))
            .await
            .0
    }

    /// Convenience: v5 clean-start connection.
    pub async fn v5(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, &Connect::v5(client_id)).await.0
    }

    /// The client's end of the connection (what the server reports as its peer).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("local address of a connected socket")
    }

    /// Writes bytes; panics if the socket is already broken.
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes).await {
            panic!("raw send of {} bytes failed: {e}", bytes.len());
        }
    }

    /// Writes bytes, reporting errors (the server may have closed the socket).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn publish(&mut self, p: &Publish) {
        let bytes = p.encode(self.proto);
        self.send(&bytes).await;
    }

    /// Subscribes and waits for the SUBACK; returns its reason codes.
    pub async fn subscribe(&mut self, pkid: u16, filters: &[SubFilter]) -> Vec<u8> {
        let bytes = codec::subscribe(self.proto, pkid, filters, &codec::Props::new());
        self.subscribe_bytes(pkid, &bytes).await
    }

    /// Sends a prepared SUBSCRIBE and waits for the SUBACK with `pkid`.
    pub async fn subscribe_bytes(&mut self, pkid: u16, bytes: &[u8]) -> Vec<u8> {
        self.send(bytes).await;
        match self
            .recv_matching(
                crate::RECV_TIMEOUT,
                |p| matches!(p, Packet::SubAck { pkid: id, .. } if *id == pkid),
            )
            .await
        {
            Packet::SubAck { codes, .. } => codes,
            _ => unreachable!(),
        }
    }

    /// Reads one packet (stashed ones first).
    pub async fn recv(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(p);
        }
        self.read_packet(timeout).await.map(|(p, _)| p)
    }

    /// Reads one packet from the socket and also returns its raw bytes
    /// (ignores the stash).
    pub async fn recv_raw(&mut self, timeout: Duration) -> Result<(Packet, Vec<u8>), RecvError> {
        self.read_packet(timeout).await
    }

    async fn read_packet(&mut self, timeout: Duration) -> Result<(Packet, Vec<u8>), RecvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match decode(&mut self.buf, self.proto) {
                Ok(p) => return Ok(p),
                Err(DecodeError::Malformed(m)) => {
                    return Err(RecvError::Malformed(format!(
                        "{m}; buffer: {:02x?}",
                        &self.buf[..]
                    )))
                }
                Err(DecodeError::Incomplete) => {}
            }
            if self.closed {
                return Err(RecvError::Closed);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads one packet or panics.
    pub async fn expect(&mut self, timeout: Duration) -> Packet {
        match self.recv(timeout).await {
            Ok(p) => p,
            Err(e) => panic!("expected a packet within {timeout:?}, got {e:?}"),
        }
    }

    /// Returns the first packet satisfying `pred`, stashing the others for
    /// later `recv` calls. Panics on timeout/close.
    pub async fn recv_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Packet) -> bool,
    ) -> Packet {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).unwrap();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_packet(left).await {
                Ok((p, _)) if pred(&p) => return p,
                Ok((p, _)) => self.stash.push_back(p),
                Err(e) => panic!(
                    "wanted packet not received within {timeout:?}: {e:?}; other packets seen: {:?}",
                    self.stash
                ),
            }
        }
    }

    /// Waits for the next PUBLISH (other packets are stashed).
    pub async fn expect_publish(&mut self, timeout: Duration) -> Publish {
        match self
            .recv_matching(timeout, |p| matches!(p, Packet::Publish(_)))
            .await
        {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    }

    /// Asserts that no PUBLISH arrives within `dur` (a bounded wait used to
    /// prove absence). Other packets are stashed.
    pub async fn expect_no_publish(&mut self, dur: Duration) {
        if let Some(p) = self.stash.iter().find(|p| matches!(p, Packet::Publish(_))) {
            panic!("unexpected PUBLISH: {p:?}");
        }
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.read_packet(left).await {
                Ok((Packet::Publish(p), _)) => panic!("unexpected PUBLISH: {p:?}"),
                Ok((p, _)) => self.stash.push_back(p),
                Err(RecvError::Timeout) | Err(RecvError::Closed) => return,
                Err(e) => panic!("while expecting no PUBLISH: {e:?}"),
            }
        }
    }

    /// Asserts that the server closes the connection within `deadline`;
    /// returns the packets received before the close (e.g. a DISCONNECT).
    pub async fn expect_closed(&mut self, deadline: Duration) -> Vec<Packet> {
        let mut seen: Vec<Packet> = self.stash.drain(..).collect();
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.read_packet(left).await {
                Ok((p, _)) => seen.push(p),
                Err(RecvError::Closed) => return seen,
                // garbage after a close-worthy error: keep waiting for the close
                Err(RecvError::Malformed(_)) => self.buf.clear(),
                Err(RecvError::Timeout) => panic!(
                    "server did not close the connection within {deadline:?}; packets received: {seen:?}"
                ),
            }
        }
    }

    /// Like [`expect_closed`](Self::expect_closed) but also measures how long
    /// the close took, starting from `since`.
    pub async fn expect_closed_timed(
        &mut self,
        since: Instant,
        deadline: Duration,
    ) -> (Vec<Packet>, Duration) {
        let seen = self.expect_closed(deadline).await;
        (seen, since.elapsed())
    }

    /// Asserts the connection is closed and, if any packet was sent before the
    /// close, that it was a DISCONNECT with one of `reasons` (v5). Returns the
    /// DISCONNECT reason seen, if any.
    pub async fn expect_disconnect_or_close(
        &mut self,
        reasons: &[u8],
        deadline: Duration,
    ) -> Option<u8> {
        let seen = self.expect_closed(deadline).await;
        let mut found = None;
        for p in &seen {
            match p {
                Packet::Disconnect { reason, .. } => {
                    assert!(
                        reasons.contains(reason),
                        "DISCONNECT reason 0x{reason:02x}, expected one of {reasons:02x?}"
                    );
                    found = Some(*reason);
                }
                // packets legitimately in flight before the error are tolerated
                Packet::PubAck { .. }
                | Packet::PubRec { .. }
                | Packet::PubComp { .. }
                | Packet::Publish(_) => {}
                other => panic!("unexpected packet before close: {other:?}"),
            }
        }
        found
    }

    /// Asserts a DISCONNECT with exactly `reason` arrives and the connection
    /// is then closed.
    pub async fn expect_disconnect(&mut self, reason: u8, deadline: Duration) {
        let seen = self.expect_closed(deadline).await;
        let got: Vec<u8> = seen
            .iter()
            .filter_map(|p| match p {
                Packet::Disconnect { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![reason],
            "expected exactly one DISCONNECT 0x{reason:02x} before close; packets: {seen:?}"
        );
    }

    /// PINGREQ → PINGRESP round trip.
    pub async fn ping(&mut self) {
        self.send(&codec::pingreq()).await;
        self.recv_matching(crate::RECV_TIMEOUT, |p| matches!(p, Packet::PingResp))
            .await;
    }

    /// Sends DISCONNECT (v3 or v5 normal), half-closes the socket and waits
    /// (deadline) until the server has closed the connection.
    pub async fn disconnect(mut self) {
        let bytes = if self.proto.is_v5() {
            codec::disconnect(Some(0), &codec::Props::new())
        } else {
            codec::disconnect(None, &codec::Props::new())
        };
        let _ = self.try_send(&bytes).await;
        let _ = self.stream.shutdown().await;
        // Wait for the server to close its side: once it has, the DISCONNECT
        // was processed, so a reconnect with the same id is not a takeover.
        self.expect_closed(crate::RECV_TIMEOUT).await;
    }

    /// Drops the TCP connection without DISCONNECT (abnormal close).
    pub fn drop_connection(self) {
        drop(self)
    }

    /// Packets read but not yet consumed.
    pub fn stashed(&self) -> &VecDeque<Packet> {
        &self.stash
    }
}
