//! Bytes ⇄ [`Packet`] for MQTT 3.1, 3.1.1 and 5.0.

pub mod packet;

mod decode;
mod encode;
mod error;
mod properties;
mod wire;

#[cfg(test)]
mod connect_tests;
#[cfg(test)]
mod decode_tests;
#[cfg(test)]
mod encode_tests;
#[cfg(test)]
mod roundtrip_tests;
#[cfg(test)]
mod test_support;

pub use decode::{connect_protocol, decode};
pub use encode::{encode, encoded_len, PublishRef};
pub use error::DecodeError;
pub use packet::*;

/// The largest packet MQTT can frame: one type byte, a four-byte remaining
/// length, and the largest remaining length that can express.
pub const MAX_PACKET_SIZE: usize = 1 + 4 + wire::VBI_MAX as usize;
