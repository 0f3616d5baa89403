//! One MQTT connection: a TCP (or TLS) stream with a reusable read buffer and a reusable
//! write buffer. Packets are encoded into `wbuf` and written together by `flush`; incoming
//! bytes accumulate in `rbuf` and are parsed in place.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::mqtt::{self, Packet};

const READ_CHUNK: usize = 64 * 1024;

/// Set by `--tls-ca`: every connection of the run is made over TLS.
static TLS: OnceLock<TlsConnector> = OnceLock::new();

/// Makes every connection of this run TLS, trusting the CAs in `ca` (PEM).
pub fn use_tls(ca: &Path) -> anyhow::Result<()> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    // ring, as the broker: no C build for the load generator either.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = TLS.set(TlsConnector::from(Arc::new(config)));
    Ok(())
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub struct Conn {
    pub stream: Stream,
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
        let stream = match TLS.get() {
            None => Stream::Tcp(stream),
            Some(tls) => {
                let name = ServerName::try_from("localhost").expect("a valid DNS name");
                let tls = tls
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                Stream::Tls(Box::new(tls))
            }
        };
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
            self.stream.flush().await?;
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

    /// Reads what the stream has without waiting (WouldBlock when nothing is there).
    pub fn try_read(&mut self) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.try_read_buf(&mut self.rbuf),
            Stream::Tls(s) => {
                const CHUNK: usize = 16 * 1024;
                let mut cx = TaskContext::from_waker(std::task::Waker::noop());
                let len = self.rbuf.len();
                self.rbuf.resize(len + CHUNK, 0);
                let mut buf = ReadBuf::new(&mut self.rbuf[len..]);
                let polled = Pin::new(s.as_mut()).poll_read(&mut cx, &mut buf);
                let n = buf.filled().len();
                self.rbuf.truncate(len + n);
                match polled {
                    Poll::Ready(Ok(())) => Ok(n),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
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
        let _ = self.stream.tcp().set_linger(Some(Duration::ZERO));
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
