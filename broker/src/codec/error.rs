//! Why a byte stream could not be turned into a packet.

use super::packet::{connack_v3, reason};

/// A decoding failure. Every variant is fatal for the connection: the stream
/// position is unknown afterwards, so the caller must close it (after sending a
/// CONNACK or DISCONNECT with [`DecodeError::reason_code`] where the protocol
/// allows).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes do not form a packet the specification can parse.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet parses but breaks a protocol rule (MQTT 5 distinguishes this
    /// from malformed packets in its reason codes).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces a packet larger than the allowed maximum.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// CONNECT names MQTT (or MQIsdp) but with a protocol level we do not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// CONNECT names a protocol other than `MQTT` / `MQIsdp`.
    #[error("invalid protocol name in CONNECT")]
    InvalidProtocolName,
    /// CONNECT's will is malformed or illegal (will QoS 3, will QoS or retain without the
    /// will flag, a will topic that is not a valid string, will properties not allowed).
    /// Events report it as `bad_will_message`, not as a protocol error.
    #[error("malformed will: {0}")]
    BadWill(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code for a CONNACK or DISCONNECT reporting this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) | DecodeError::BadWill(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            // A foreign protocol name is as unusable as an unknown level; the
            // spec leaves the response open, and 0x84 tells a client the most.
            DecodeError::UnsupportedProtocolVersion(_) | DecodeError::InvalidProtocolName => {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            }
        }
    }

    /// The MQTT 3.x CONNACK return code to send before closing, if the 3.x
    /// specification asks for one: only an unsupported protocol level does
    /// [MQTT-3.1.2-2]; everything else just closes the connection.
    pub fn connack_v3_code(&self) -> Option<u8> {
        match self {
            DecodeError::UnsupportedProtocolVersion(_) => {
                Some(connack_v3::UNACCEPTABLE_PROTOCOL_VERSION)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_will_is_a_malformed_packet_on_the_wire() {
        let e = DecodeError::BadWill("will QoS 3");
        assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
        assert_eq!(e.connack_v3_code(), None);
        assert_eq!(e.to_string(), "malformed will: will QoS 3");
    }
}
