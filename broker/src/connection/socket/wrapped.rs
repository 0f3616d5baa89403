//! A socket whose bytes pass through a layer in user space (TLS, WebSocket framing) before
//! they are MQTT: read and written through `AsyncRead`/`AsyncWrite` instead of the TCP
//! socket's own non-blocking calls.
//!
//! Such a layer holds state of its own (decrypted records, a partial frame, a queued pong),
//! so a wrapped connection is never parked: the parker watches a raw fd and would not see
//! input already decrypted, nor be able to hand the layer's state back.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::events::Transport;
use crate::metrics::HotCounters;

/// What a layer over TCP offers the connection: a byte stream, the TCP socket under it (whose
/// readiness says when to read again), and what the layer learnt of the client.
pub trait StreamIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    fn tcp(&self) -> &TcpStream;
}

/// Read at most this much per `try_fill` before letting the connection handle it (the layer
/// may still hold more: the next wait then returns at once).
const READ_BATCH_MAX: usize = 64 * 1024;
const READ_CHUNK: usize = 4096;

/// What TLS learnt of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Not a TLS connection.
    NotTls,
    /// TLS without a client certificate.
    NoCertificate,
    /// A verified client certificate, with its subject's common name if it has one, and
    /// its serial numbers as the device certificate registry names them (None when they
    /// could not be read).
    Certificate {
        common_name: Option<Box<str>>,
        device: Option<Box<skein_seam::SeenCertificate>>,
    },
}

/// A wrapped stream and what its layer holds that the TCP socket's readiness cannot tell.
pub struct Wrapped {
    io: Box<dyn StreamIo>,
    transport: Transport,
    identity: PeerIdentity,
    /// The last read stopped at its batch limit: the layer may hold more input.
    more_input: bool,
    /// The layer reported end of stream (or an error) after returning data: said next.
    ended: bool,
    /// Written into the layer but not yet out of it (the TCP socket was full).
    unflushed: bool,
}

impl Wrapped {
    pub fn new(io: Box<dyn StreamIo>, transport: Transport, identity: PeerIdentity) -> Self {
        Wrapped {
            io,
            transport,
            identity,
            // The handshake may have read input past its own end (a TLS 1.3 client's
            // CONNECT in the same flight as its Finished): look in the layer first.
            more_input: true,
            ended: false,
            unflushed: false,
        }
    }

    pub(super) fn transport(&self) -> Transport {
        self.transport
    }

    pub(super) fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    pub(super) fn unflushed(&self) -> bool {
        self.unflushed
    }

    /// Ready when there is input to read: buffered in the layer, or on the TCP socket.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.more_input || self.ended {
            return Poll::Ready(Ok(()));
        }
        self.io.tcp().poll_read_ready(cx)
    }

    /// Reads what the layer has without waiting, as [`super::Socket::try_fill`]. Reads until
    /// the layer has nothing more (or the batch limit), so that the TCP socket's readiness
    /// is all that needs watching afterwards.
    pub(super) fn try_fill(
        &mut self,
        rbuf: &mut BytesMut,
        counters: &HotCounters,
    ) -> io::Result<Option<bool>> {
        if self.ended {
            return Ok(Some(false));
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut total = 0;
        self.more_input = false;
        loop {
            if total >= READ_BATCH_MAX {
                self.more_input = true;
                break;
            }
            let len = rbuf.len();
            rbuf.resize(len + READ_CHUNK, 0);
            let mut buf = ReadBuf::new(&mut rbuf[len..]);
            let polled = Pin::new(&mut self.io).poll_read(&mut cx, &mut buf);
            let n = buf.filled().len();
            rbuf.truncate(len + n);
            match polled {
                Poll::Ready(Ok(())) if n == 0 => {
                    if total == 0 {
                        return Ok(Some(false));
                    }
                    self.ended = true;
                    break;
                }
                Poll::Ready(Ok(())) => total += n,
                Poll::Pending => break,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Poll::Ready(Err(e)) => {
                    if total == 0 {
                        return Err(e);
                    }
                    // What was read before the error is handled first.
                    self.ended = true;
                    break;
                }
            }
        }
        counters.bytes_in(total);
        if total == 0 {
            if rbuf.is_empty() {
                *rbuf = BytesMut::new();
            }
            return Ok(None);
        }
        Ok(Some(true))
    }

    /// Writes what the layer takes and pushes it out, without waiting.
    pub(super) fn try_flush(
        &mut self,
        wbuf: &mut BytesMut,
        counters: &HotCounters,
    ) -> io::Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_write_out(wbuf, counters, &mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    /// Writes `wbuf` into the layer and flushes the layer; Ready once both are done.
    pub(super) fn poll_write_out(
        &mut self,
        wbuf: &mut BytesMut,
        counters: &HotCounters,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    counters.bytes_out(n);
                    wbuf.advance(n);
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    /// Ends the layer's side of the stream (TLS close_notify, WebSocket close frame).
    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.io.shutdown().await
    }

    /// Ends the layer's side of the stream (TLS close_notify, WebSocket close frame), then
    /// reads and discards what the client still sends, both bounded by the caller.
    pub(super) async fn shutdown_and_drain(&mut self, max_bytes: usize) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = self.io.shutdown().await;
        let mut sink = [0u8; 1024];
        let mut left = max_bytes;
        while left > 0 {
            match self.io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
}
