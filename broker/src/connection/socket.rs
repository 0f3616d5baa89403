//! A connection's socket and its read and write buffers.

use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::events::Transport;
use crate::metrics::HotCounters;

mod wrapped;
pub use wrapped::{PeerIdentity, StreamIo, Wrapped};

/// What a connection that streams reads at once.
const READ_CHUNK: usize = 4096;
/// What a connection reads at once until a read fills its buffer: most clients send a
/// packet at a time (a CONNECT, a SUBSCRIBE, a sensor reading), and an allocation under
/// 1 KiB comes from the allocator's per-thread cache, where 4 KiB took glibc's slow path
/// (consolidating its free lists) once or twice per connection.
const FIRST_READ: usize = 992;
/// A write buffer larger than this is freed once it has been flushed.
const IDLE_WRITE_CAPACITY: usize = 1024;
/// At most this much is read from a parked socket before it is registered again.
const RESUME_READ_MAX: usize = 64 * 1024;
/// How long, and how much input, a closing connection drains before it is dropped.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// The socket of a connection and what has been read from and is to be written to it.
/// The stream is absent only while the connection is parked (the parker holds it then).
pub struct Socket {
    stream: Option<Stream>,
    /// Boxed and created on demand, freed when the connection parks: a parked connection
    /// holds no buffers, not even their 64 bytes of empty headers.
    buffers: Option<Box<Buffers>>,
}

/// Plain TCP, read and written with the socket's own non-blocking calls; or a layer in
/// user space over TCP (TLS, WebSocket), boxed: most connections are plain.
enum Stream {
    Tcp(TcpStream),
    Wrapped(Box<Wrapped>),
}

#[derive(Default)]
struct Buffers {
    read: BytesMut,
    write: BytesMut,
    /// A large read or write happened since the buffers were last considered idle.
    busy: bool,
    /// A read filled the read buffer since it was last given back: the client streams,
    /// read whole chunks (cleared with the buffer, when the connection goes quiet).
    streaming: bool,
}

fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is parked")
}

impl Socket {
    /// Wraps an accepted stream; the listener has made sure it has TCP_NODELAY.
    pub(super) fn new(stream: TcpStream) -> Socket {
        Socket {
            stream: Some(Stream::Tcp(stream)),
            buffers: None,
        }
    }

    /// Wraps a stream with a layer in user space (TLS, WebSocket) over its TCP socket.
    pub(crate) fn wrapped(stream: Wrapped) -> Socket {
        Socket {
            stream: Some(Stream::Wrapped(Box::new(stream))),
            buffers: None,
        }
    }

    /// How the client's MQTT reaches the node (what events call `protocol`).
    pub(super) fn transport(&self) -> Transport {
        match &self.stream {
            Some(Stream::Wrapped(w)) => w.transport(),
            _ => Transport::Tcp,
        }
    }

    /// What TLS learnt of the client (its certificate's common name).
    pub(super) fn identity(&self) -> &PeerIdentity {
        match &self.stream {
            Some(Stream::Wrapped(w)) => w.identity(),
            _ => &PeerIdentity::NotTls,
        }
    }

    /// Whether the stream is TLS-or-WebSocket wrapped (never parked).
    pub(super) fn is_wrapped(&self) -> bool {
        matches!(self.stream, Some(Stream::Wrapped(_)))
    }

    fn buffers(&mut self) -> &mut Buffers {
        self.buffers.get_or_insert_with(Box::default)
    }

    /// What has been read and not yet decoded.
    pub(super) fn rbuf(&mut self) -> &mut BytesMut {
        &mut self.buffers().read
    }

    /// What is to be written.
    pub(super) fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.buffers().write
    }

    /// Whether the client has closed the socket (or reset it) with nothing after what was
    /// read: its end of stream is already in the kernel. Looks without reading or waiting;
    /// false when unsure (parked, more input pending, any other error).
    pub(super) fn peer_closed(&self) -> bool {
        // A layer over TCP may hold input of its own: unsure.
        let Some(Stream::Tcp(stream)) = &self.stream else {
            return false;
        };
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        // The stream is non-blocking (tokio's): no input yet is WouldBlock, not a wait.
        match socket2::SockRef::from(stream).peek(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }

    /// Whether bytes were read that are not decoded yet.
    pub(super) fn has_unread_input(&self) -> bool {
        self.buffers.as_ref().is_some_and(|b| !b.read.is_empty())
    }

    /// Bytes waiting to be written (without creating a buffer to find out).
    pub(super) fn pending_out(&self) -> usize {
        self.buffers.as_ref().map_or(0, |b| b.write.len())
    }

    /// Whether anything is still to be written: in the buffer, or inside a TLS or
    /// WebSocket layer that the TCP socket did not take yet.
    pub(super) fn output_pending(&self) -> bool {
        self.pending_out() > 0 || matches!(&self.stream, Some(Stream::Wrapped(w)) if w.unflushed())
    }

    /// Hands a plain TCP stream over (to park the connection), leaving the socket without
    /// one. None for a wrapped stream: its layer's state can't wait in the parker.
    pub(super) fn take_stream(&mut self) -> Option<TcpStream> {
        match self.stream.take() {
            Some(Stream::Tcp(stream)) => Some(stream),
            other => {
                self.stream = other;
                None
            }
        }
    }

    /// Gives the socket its stream back (when the connection is resumed).
    pub(super) fn put_stream(&mut self, stream: TcpStream) {
        self.stream = Some(Stream::Tcp(stream));
    }

    /// Gives a parked socket back to the connection, reading first what input it has: a
    /// socket registered anew with tokio reads nothing until the reactor has reported it
    /// readable (a turn later), and the parker already knows there is input. Ok(true)
    /// when something was read.
    pub(super) fn resume(
        &mut self,
        stream: std::net::TcpStream,
        counters: &HotCounters,
    ) -> io::Result<bool> {
        let read = self.read_parked(&stream);
        counters.bytes_in(read);
        self.stream = Some(Stream::Tcp(TcpStream::from_std(stream)?));
        Ok(read > 0)
    }

    /// Reads what a parked (non-blocking) socket has, up to `RESUME_READ_MAX`. An error or
    /// end of stream is left for the connection's own next read to find.
    fn read_parked(&mut self, stream: &std::net::TcpStream) -> usize {
        use std::io::Read;
        let rbuf = &mut self.buffers().read;
        let mut total = 0;
        while total < RESUME_READ_MAX {
            let len = rbuf.len();
            rbuf.resize(len + FIRST_READ, 0);
            match (&*stream).read(&mut rbuf[len..]) {
                Ok(n) => {
                    rbuf.truncate(len + n);
                    total += n;
                    if n < FIRST_READ {
                        break;
                    }
                }
                Err(e) => {
                    rbuf.truncate(len);
                    if e.kind() != io::ErrorKind::Interrupted {
                        break;
                    }
                }
            }
        }
        total
    }

    /// Ready when the socket has input, an error or end of stream to report. Needs no
    /// state of its own, so waiting on it costs an idle connection nothing.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.stream {
            Some(Stream::Tcp(stream)) => stream.poll_read_ready(cx),
            Some(Stream::Wrapped(w)) => w.poll_read_ready(cx),
            None => Poll::Ready(Err(parked())),
        }
    }

    /// Reads what the socket has without waiting: Ok(Some(false)) on end of stream,
    /// Ok(None) when nothing is there. The read buffer is only grown when a read is tried,
    /// and given back when that finds nothing, so an idle connection holds no buffer.
    pub(super) fn try_fill(&mut self, counters: &HotCounters) -> io::Result<Option<bool>> {
        let buffers = self.buffers.get_or_insert_with(Box::default);
        let stream = match &mut self.stream {
            Some(Stream::Tcp(stream)) => stream,
            Some(Stream::Wrapped(w)) => {
                let read = w.try_fill(&mut buffers.read, counters);
                buffers.busy |=
                    matches!(read, Ok(Some(true))) && buffers.read.len() >= READ_CHUNK / 2;
                return read;
            }
            None => return Err(parked()),
        };
        let rbuf = &mut buffers.read;
        let want = if buffers.streaming {
            READ_CHUNK
        } else {
            FIRST_READ
        };
        if rbuf.capacity() - rbuf.len() < want / 4 {
            rbuf.reserve(want);
        }
        let spare = rbuf.capacity() - rbuf.len();
        let mut got = None;
        // A read that leaves spare room has drained the socket: clear tokio's readiness
        // then (as its own poll_read does), or the next wake-up would be spurious and
        // cost a recv failing with EAGAIN.
        let read = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(&mut *rbuf)?;
            got = Some(n);
            if n > 0 && n < spare {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        // The closure's WouldBlock after a read only asked for the clearing.
        let read = got.map_or(read, Ok);
        match read {
            Ok(n) => {
                counters.bytes_in(n);
                buffers.streaming |= n == spare;
                buffers.busy |= n >= READ_CHUNK / 2;
                Ok(Some(n > 0))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if rbuf.is_empty() {
                    *rbuf = BytesMut::new();
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for and reads more bytes; Ok(false) on end of stream. Cancel-safe.
    pub(super) async fn fill(&mut self, counters: &HotCounters) -> io::Result<bool> {
        loop {
            match &self.stream {
                Some(Stream::Tcp(stream)) => stream.readable().await?,
                Some(Stream::Wrapped(w)) => {
                    std::future::poll_fn(|cx| w.poll_read_ready(cx)).await?
                }
                None => return Err(parked()),
            }
            if let Some(more) = self.try_fill(counters)? {
                return Ok(more);
            }
        }
    }

    /// Writes what the socket takes without waiting.
    pub(super) fn try_flush(&mut self, counters: &HotCounters) -> io::Result<()> {
        let Some(buffers) = self.buffers.as_deref_mut() else {
            return Ok(());
        };
        let stream = match &mut self.stream {
            Some(Stream::Tcp(stream)) => stream,
            Some(Stream::Wrapped(w)) => return w.try_flush(&mut buffers.write, counters),
            None if buffers.write.is_empty() => return Ok(()),
            None => return Err(parked()),
        };
        while !buffers.write.is_empty() {
            match stream.try_write(&buffers.write) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    counters.bytes_out(n);
                    buffers.busy |= n >= IDLE_WRITE_CAPACITY;
                    buffers.write.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Gives idle buffers back to the allocator (memory per idle connection).
    /// Buffers survive one loop iteration after a large read or write, so a streaming
    /// connection keeps them (re-growing them every batch cost a tenth of the CPU).
    pub(super) fn release_idle_buffers(&mut self) {
        if let Some(buffers) = self.buffers.as_deref_mut() {
            if std::mem::take(&mut buffers.busy) {
                return;
            }
        }
        self.release_buffers();
    }

    /// Gives back whatever buffer is empty, busy or not.
    pub(super) fn release_buffers(&mut self) {
        let Some(buffers) = self.buffers.as_deref_mut() else {
            return;
        };
        if buffers.read.is_empty() && buffers.read.capacity() > 0 {
            buffers.read = BytesMut::new();
            buffers.streaming = false;
        }
        if buffers.write.is_empty() && buffers.write.capacity() > IDLE_WRITE_CAPACITY {
            buffers.write = BytesMut::new();
        }
    }

    /// Frees the buffers altogether if they hold nothing (the connection is parking).
    pub(super) fn drop_empty_buffers(&mut self) {
        if self
            .buffers
            .as_ref()
            .is_some_and(|b| b.read.is_empty() && b.write.is_empty())
        {
            self.buffers = None;
        }
    }

    /// Flushes what is pending, half-closes, then reads and discards until the client closes
    /// (bounded). Closing outright with unread input makes the kernel send RST, and a
    /// client still writing would lose our last packet (a DISCONNECT or CONNACK) with it.
    pub(super) async fn close_gracefully(&mut self, counters: &HotCounters) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush(counters)).await;
        let stream = match &mut self.stream {
            Some(Stream::Tcp(stream)) => stream,
            Some(Stream::Wrapped(w)) => {
                let _ = tokio::time::timeout(LINGER, w.shutdown_and_drain(LINGER_MAX_BYTES)).await;
                return;
            }
            None => return,
        };
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            let mut left = LINGER_MAX_BYTES;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }

    /// Ends a TLS or WebSocket layer's side of the stream (close_notify, the close frame),
    /// bounded; nothing for plain TCP.
    pub(super) async fn end_layer(&mut self) {
        if let Some(Stream::Wrapped(w)) = &mut self.stream {
            let _ = tokio::time::timeout(LINGER, w.shutdown()).await;
        }
    }

    /// Writes the buffer out. Cancel-safe: what was written is consumed from the buffer, so
    /// an interrupted flush resumes where it stopped.
    pub(super) async fn flush(&mut self, counters: &HotCounters) -> io::Result<()> {
        loop {
            self.try_flush(counters)?;
            if !self.output_pending() {
                return Ok(());
            }
            match &mut self.stream {
                Some(Stream::Tcp(stream)) => stream.writable().await?,
                Some(Stream::Wrapped(w)) => {
                    let wbuf = &mut self.buffers.get_or_insert_with(Box::default).write;
                    std::future::poll_fn(|cx| w.poll_write_out(wbuf, counters, cx)).await?;
                }
                None => return Err(parked()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, Socket) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), Socket::new(accepted.unwrap().0))
    }

    /// Reads until `want` bytes are buffered, returning the size of each read.
    async fn read_sizes(socket: &mut Socket, want: usize) -> Vec<usize> {
        let counters = HotCounters::register();
        let mut sizes = Vec::new();
        while socket.rbuf().len() < want {
            let before = socket.rbuf().len();
            assert!(socket.fill(&counters).await.unwrap());
            sizes.push(socket.rbuf().len() - before);
        }
        sizes
    }

    #[test]
    fn the_tls_and_websocket_variant_costs_plain_connections_no_byte() {
        // Every connection holds a Socket, parked or not: the enum's tag fits in a niche.
        assert_eq!(
            std::mem::size_of::<Socket>(),
            std::mem::size_of::<Option<TcpStream>>() + std::mem::size_of::<Option<Box<Buffers>>>()
        );
    }

    #[tokio::test]
    async fn a_packet_at_a_time_is_read_into_a_small_buffer() {
        let (mut client, mut socket) = pair().await;
        client.write_all(&[0x30; 100]).await.unwrap();
        assert_eq!(read_sizes(&mut socket, 100).await, [100]);
        assert!(socket.rbuf().capacity() < 1024);
    }

    #[tokio::test]
    async fn a_read_that_fills_the_buffer_reads_whole_chunks_next() {
        let (mut client, mut socket) = pair().await;
        let total = FIRST_READ + 3 * READ_CHUNK;
        client.write_all(&vec![0x30; total]).await.unwrap();
        let sizes = read_sizes(&mut socket, total).await;
        assert_eq!(sizes[0], FIRST_READ);
        assert!(
            sizes[1..].iter().any(|&n| n > FIRST_READ),
            "reads after a full one stayed small: {sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<usize>(), total);
    }
}
