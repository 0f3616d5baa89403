//! One MQTT connection: a TCP stream with a reusable read buffer and a reusable write
//! buffer. Packets are encoded into `wbuf` and written together by `flush`; incoming bytes
//! accumulate in `rbuf` and are parsed in place.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::mqtt::{self, Packet};

const READ_CHUNK: usize = 64 * 1024;

pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
}

impl Conn {
    /// Opens a TCP connection, sends CONNECT and waits for a successful CONNACK.
    pub async fn open(
        addr: SocketAddr,
        client_id: &str,
        keepalive: u16,
        clean: bool,
    ) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
        };
        mqtt::encode_connect(&mut conn.wbuf, client_id, keepalive, clean);
        conn.flush().await?;
        match conn.next_packet_owned().await? {
            Owned::ConnAck(0) => Ok(conn),
            Owned::ConnAck(code) => bail!("{client_id}: CONNACK refused with return code {code}"),
            other => bail!("{client_id}: expected CONNACK, got {other:?}"),
        }
    }

    /// SUBSCRIBE to one filter and wait for the SUBACK; returns the granted QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> anyhow::Result<u8> {
        mqtt::encode_subscribe(&mut self.wbuf, 1, filter, qos);
        self.flush().await?;
        loop {
            match self.next_packet_owned().await? {
                Owned::SubAck(code) if code >= 0x80 => {
                    bail!("SUBSCRIBE {filter} refused ({code:#x})")
                }
                Owned::SubAck(code) => return Ok(code),
                Owned::Other => continue,
                other => bail!("expected SUBACK for {filter}, got {other:?}"),
            }
        }
    }

    /// Writes everything encoded so far and empties the write buffer.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes into the read buffer; end of stream is an error.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            ));
        }
        Ok(n)
    }

    /// Makes sure the read buffer can hold a whole packet of `total` bytes.
    pub fn reserve_for(&mut self, total: usize) {
        if self.rbuf.capacity() < total {
            self.rbuf.reserve(total - self.rbuf.len());
        }
    }

    /// The next packet during the handshake, reduced to what the handshake checks.
    async fn next_packet_owned(&mut self) -> anyhow::Result<Owned> {
        loop {
            if let Some((packet, used)) = mqtt::parse_packet(&self.rbuf)? {
                let owned = match packet {
                    Packet::ConnAck { code, .. } => Owned::ConnAck(code),
                    Packet::SubAck { codes, .. } => {
                        Owned::SubAck(codes.first().copied().unwrap_or(0x80))
                    }
                    Packet::Publish { .. } => Owned::Publish,
                    _ => Owned::Other,
                };
                self.rbuf.advance(used);
                return Ok(owned);
            }
            if let Some((head, remaining)) = mqtt::parse_fixed_header(&self.rbuf)? {
                self.reserve_for(head + remaining);
            }
            self.fill().await?;
        }
    }

    /// Holds the connection idle until `shutdown` turns true, sending PINGREQ every half
    /// keep alive and discarding what the broker sends. Returns false if the broker closed
    /// the connection meanwhile.
    pub async fn idle(&mut self, keepalive: u16, shutdown: &mut watch::Receiver<bool>) -> bool {
        let period = Duration::from_secs(u64::from(keepalive.max(2)) / 2);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = stopped(shutdown) => return true,
                _ = ping.tick(), if keepalive > 0 => {
                    mqtt::encode_pingreq(&mut self.wbuf);
                    if self.flush().await.is_err() {
                        return false;
                    }
                }
                r = self.fill() => {
                    if r.is_err() {
                        return false;
                    }
                    // Nothing here needs an answer (PINGRESP; late acks).
                    self.rbuf.clear();
                }
            }
        }
    }

    /// Sends DISCONNECT and closes, without waiting long for a stuck peer.
    /// Sends DISCONNECT and resets the socket instead of closing it: no TIME_WAIT is left
    /// behind. The connect scenario closes 10k connections a run, and the sockets a
    /// previous run left in TIME_WAIT made the next run's connects measurably slower
    /// (ephemeral port search), whichever broker came next.
    pub async fn close_without_time_wait(mut self) {
        mqtt::encode_disconnect(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_millis(500), self.flush()).await;
        // Deprecated because a non-zero linger blocks in close(); zero does not.
        #[allow(deprecated)]
        let _ = self.stream.set_linger(Some(Duration::ZERO));
    }

    pub async fn close(mut self) {
        mqtt::encode_disconnect(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[derive(Debug)]
enum Owned {
    ConnAck(u8),
    SubAck(u8),
    Publish,
    Other,
}
