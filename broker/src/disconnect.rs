//! Why a connection ended, in the canonical vocabulary of the events contract. A leaf (it
//! needs only the codec's reason codes): connections, auth, metrics and events all speak it.

use std::borrow::Cow;
use std::io;

use crate::codec::reason as rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Normal,
    TcpClosed,
    Kicked,
    Takeovered,
    KeepaliveTimeout,
    NotAuthenticated,
    NotAuthorized,
    TooManyConnection,
    GoAway,
    PingWithoutConnect,
    ClientIdTooLong,
    ClientIdRequired,
    BadWillMessage,
    ProtocolError,
    ServerInternalError,
    /// The token the client authenticated with expired.
    AuthenticationExpired,
    /// Its node died: the cluster marked it down (announced by the adopting node).
    NodeDown,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 17] = [
        DisconnectReason::Normal,
        DisconnectReason::TcpClosed,
        DisconnectReason::Kicked,
        DisconnectReason::Takeovered,
        DisconnectReason::KeepaliveTimeout,
        DisconnectReason::NotAuthenticated,
        DisconnectReason::NotAuthorized,
        DisconnectReason::TooManyConnection,
        DisconnectReason::GoAway,
        DisconnectReason::PingWithoutConnect,
        DisconnectReason::ClientIdTooLong,
        DisconnectReason::ClientIdRequired,
        DisconnectReason::BadWillMessage,
        DisconnectReason::ProtocolError,
        DisconnectReason::ServerInternalError,
        DisconnectReason::AuthenticationExpired,
        DisconnectReason::NodeDown,
    ];

    /// Its position in [`DisconnectReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `$events` dialect name, also used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::TcpClosed => "tcp_closed",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::Takeovered => "takeovered",
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::NotAuthenticated => "not_authenticated",
            DisconnectReason::NotAuthorized => "not_authorized",
            DisconnectReason::TooManyConnection => "too_many_connection",
            DisconnectReason::GoAway => "go_away",
            DisconnectReason::PingWithoutConnect => "ping_without_connect",
            DisconnectReason::ClientIdTooLong => "client_id_too_long",
            DisconnectReason::ClientIdRequired => "client_id_required",
            DisconnectReason::BadWillMessage => "bad_will_message",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::ServerInternalError => "server_internal_error",
            DisconnectReason::AuthenticationExpired => "authentication_expired",
            DisconnectReason::NodeDown => "node_down",
        }
    }
}

/// How a connection is closed: the canonical reason, and the MQTT 5 reason code to send in
/// the server's DISCONNECT (None: close without one).
#[derive(Debug, Clone)]
pub struct Close {
    pub reason: DisconnectReason,
    pub code: Option<u8>,
    /// For logs and v5 reason strings; static where it can be (no allocation on the
    /// common ends of a connection).
    pub detail: Cow<'static, str>,
}

impl Close {
    pub fn new(
        reason: DisconnectReason,
        code: Option<u8>,
        detail: impl Into<Cow<'static, str>>,
    ) -> Close {
        Close {
            reason,
            code,
            detail: detail.into(),
        }
    }

    pub fn protocol(detail: impl Into<Cow<'static, str>>) -> Close {
        Close::new(
            DisconnectReason::ProtocolError,
            Some(rc::PROTOCOL_ERROR),
            detail,
        )
    }

    pub fn with_code(code: u8, detail: impl Into<Cow<'static, str>>) -> Close {
        Close::new(DisconnectReason::ProtocolError, Some(code), detail)
    }

    pub fn silent(reason: DisconnectReason, detail: impl Into<Cow<'static, str>>) -> Close {
        Close::new(reason, None, detail)
    }

    /// A read from the socket failed.
    pub fn read_failed(error: &io::Error) -> Close {
        Close::silent(DisconnectReason::TcpClosed, read_failure_detail(error))
    }

    /// A write to the socket failed.
    pub fn write_failed(error: &io::Error) -> Close {
        let detail: Cow<'static, str> = match error.kind() {
            io::ErrorKind::ConnectionReset => "write failed: connection reset".into(),
            io::ErrorKind::BrokenPipe => "write failed: broken pipe".into(),
            _ => format!("write failed: {error}").into(),
        };
        Close::silent(DisconnectReason::TcpClosed, detail)
    }

    pub fn internal(detail: impl Into<Cow<'static, str>>) -> Close {
        Close::new(
            DisconnectReason::ServerInternalError,
            Some(rc::IMPLEMENTATION_SPECIFIC_ERROR),
            detail,
        )
    }
}

/// What a failed read is logged and reported as: the usual reset without formatting the
/// error (which allocates and asks libc for its text).
pub fn read_failure_detail(error: &io::Error) -> Cow<'static, str> {
    match error.kind() {
        io::ErrorKind::ConnectionReset => "read failed: connection reset".into(),
        _ => format!("read failed: {error}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_at_its_index() {
        for (i, reason) in DisconnectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
        let mut names: Vec<&str> = DisconnectReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DisconnectReason::ALL.len());
    }

    #[test]
    fn socket_failures_name_the_direction_and_the_error() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let read = Close::read_failed(&reset);
        assert_eq!(read.reason, DisconnectReason::TcpClosed);
        assert_eq!(read.code, None);
        assert!(matches!(read.detail, Cow::Borrowed(_)));
        assert_eq!(read.detail, "read failed: connection reset");
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(
            Close::write_failed(&pipe).detail,
            "write failed: broken pipe"
        );
        let other = io::Error::other("disk on fire");
        assert_eq!(
            Close::write_failed(&other).detail,
            "write failed: disk on fire"
        );
    }
}
