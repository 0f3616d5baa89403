//! MQTT over WebSocket: the HTTP upgrade (path `/mqtt`, subprotocol `mqtt` or `mqttv3.1`)
//! and a byte stream over binary messages. A message may carry part of a packet or several
//! packets: the bytes are concatenated and the MQTT decoder frames them, as over TCP.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::connection::StreamIo;

/// The one path MQTT is served on.
pub const PATH: &str = "/mqtt";
/// The subprotocols accepted, in the client's order of preference: `mqtt` (3.1.1 and 5),
/// `mqttv3.1` (3.1).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// The most one outgoing message carries: larger writes go out as several messages.
const WRITE_CHUNK: usize = 64 * 1024;

/// The TCP socket under a stream (plain, or inside TLS).
pub trait OverTcp: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl StreamIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Why an upgrade was refused (the metric's reason).
pub type UpgradeFailure = &'static str;

/// Answers the HTTP upgrade on `stream`; messages and frames are bounded by
/// `max_message` (the node's `max_packet_size`).
// The callback's Result is tungstenite's `Callback` signature, large error and all.
#[allow(clippy::result_large_err)]
pub async fn accept<S: OverTcp>(
    stream: S,
    max_message: usize,
) -> Result<WsIo<S>, (UpgradeFailure, String)> {
    let mut refused: Option<UpgradeFailure> = None;
    let callback = |request: &Request, response: Response| upgrade(request, response, &mut refused);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        // Written at once (the connection batches its writes already), and bounded: at
        // most one chunk waits behind a full socket.
        .write_buffer_size(0)
        .max_write_buffer_size(2 * WRITE_CHUNK + 1024);
    match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await {
        Ok(ws) => Ok(WsIo {
            ws,
            pending: Bytes::new(),
        }),
        Err(e) => {
            let reason = match (&refused, &e) {
                (Some(r), _) => r,
                (None, WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    "closed"
                }
                (None, _) => "ws_upgrade",
            };
            Err((reason, e.to_string()))
        }
    }
}

/// Checks the path and picks the subprotocol.
#[allow(clippy::result_large_err)]
fn upgrade(
    request: &Request,
    mut response: Response,
    refused: &mut Option<UpgradeFailure>,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut answer = ErrorResponse::new(Some(why.to_owned()));
        *answer.status_mut() = status;
        answer
    };
    if request.uri().path() != PATH {
        *refused = Some("ws_path");
        return Err(refuse(StatusCode::NOT_FOUND, "MQTT is served on /mqtt"));
    }
    let Some(chosen) = choose_subprotocol(request) else {
        *refused = Some("ws_subprotocol");
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "no MQTT subprotocol (mqtt or mqttv3.1) offered",
        ));
    };
    response
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
    Ok(response)
}

/// The first subprotocol the client offers that MQTT uses.
fn choose_subprotocol(request: &Request) -> Option<&'static str> {
    request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|offered| {
            SUBPROTOCOLS
                .iter()
                .find(|p| p.eq_ignore_ascii_case(offered.trim()))
                .copied()
        })
}

/// A WebSocket connection as a byte stream: binary messages' payloads in, each write out
/// as one binary message. Pings are answered (by tungstenite, as it reads), a close is the
/// end of the stream, a text message is an error (MQTT is binary).
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last message read.
    pending: Bytes,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: OverTcp> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a WebSocket text message (MQTT is sent in binary messages)",
                    )))
                }
                // End of stream; tungstenite has queued its answering close frame.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: OverTcp> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(WRITE_CHUNK);
        let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
        Pin::new(&mut self.ws).start_send(message).map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}

impl<S: OverTcp> StreamIo for WsIo<S> {
    fn tcp(&self) -> &TcpStream {
        self.ws.get_ref().tcp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: &[&str]) -> Request {
        let mut builder = Request::builder().uri(path);
        for p in protocols {
            builder = builder.header("Sec-WebSocket-Protocol", *p);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_first_mqtt_subprotocol_offered_is_chosen() {
        assert_eq!(choose_subprotocol(&request(PATH, &["mqtt"])), Some("mqtt"));
        assert_eq!(
            choose_subprotocol(&request(PATH, &["wamp, MQTTv3.1", "mqtt"])),
            Some("mqttv3.1")
        );
        assert_eq!(choose_subprotocol(&request(PATH, &["wamp"])), None);
        assert_eq!(choose_subprotocol(&request(PATH, &[])), None);
    }

    #[test]
    fn other_paths_and_missing_subprotocols_are_refused_with_a_reason() {
        let mut refused = None;
        let answer = upgrade(&request("/", &["mqtt"]), Response::new(()), &mut refused);
        assert_eq!(answer.unwrap_err().status(), StatusCode::NOT_FOUND);
        assert_eq!(refused, Some("ws_path"));
        let mut refused = None;
        let answer = upgrade(&request(PATH, &["chat"]), Response::new(()), &mut refused);
        assert_eq!(answer.unwrap_err().status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused, Some("ws_subprotocol"));
        let mut refused = None;
        let answer = upgrade(&request(PATH, &["mqtt"]), Response::new(()), &mut refused).unwrap();
        assert_eq!(answer.headers()["Sec-WebSocket-Protocol"], "mqtt");
        assert_eq!(refused, None);
    }
}
