//! The listeners beside plain MQTT: MQTT over TLS (`mqtts`), over WebSocket (`ws`) and over
//! secure WebSocket (`wss`). Each accepts, runs its layer's handshake under a deadline, and
//! hands the stream to the same connection code as plain MQTT (same limits, sessions,
//! events and metrics).

mod certificate;
mod chain;
pub mod listener;
pub mod tls;
mod ws;

/// A listener, as metrics (`listener` label) and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Mqtt => "mqtt",
            Listener::Mqtts => "mqtts",
            Listener::Ws => "ws",
            Listener::Wss => "wss",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Listener::Mqtts | Listener::Wss)
    }

    fn websocket(self) -> bool {
        matches!(self, Listener::Ws | Listener::Wss)
    }
}
