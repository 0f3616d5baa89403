//! [`ConnectionBytes`]: how the registry keeps what the events of an online connection say
//! about it (`pb::RegisteredConnection`: username, addresses, protocol), for the node that
//! announces the connection's end should its node die.
//!
//! Every member keeps one per online client of the cluster, and reads it only when a node
//! is marked down or a snapshot is written: so it is held as its protobuf encoding, one
//! allocation of a few dozen bytes, rather than as the decoded message (its strings are
//! three more allocations, and the message itself is about 90 bytes).

use prost::Message;
use skein_proto::v1 as pb;

/// A `pb::RegisteredConnection`, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionBytes(Box<[u8]>);

impl ConnectionBytes {
    pub fn encode(connection: &pb::RegisteredConnection) -> ConnectionBytes {
        ConnectionBytes(connection.encode_to_vec().into_boxed_slice())
    }

    /// The message. The bytes are only ever this build's own encoding of a decoded
    /// message, so decoding cannot fail; were they damaged anyway, the connection reads
    /// as unknown (the events say so) rather than failing a node-down or a snapshot.
    pub fn decode(&self) -> pb::RegisteredConnection {
        pb::RegisteredConnection::decode(&*self.0).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the registry's connection record did not decode; announcing it as unknown");
            pb::RegisteredConnection::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_round_trips_and_its_encoding_is_small() {
        let c = pb::RegisteredConnection {
            username: Some("device-17".into()),
            peer: "10.0.0.9:5768".into(),
            sockname: "10.0.0.1:1883".into(),
            protocol_level: 5,
            websocket: true,
            keepalive: 60,
        };
        let bytes = ConnectionBytes::encode(&c);
        assert_eq!(bytes.decode(), c);
        // The strings' 35 bytes, a tag and a length for each, and three numbers of 2.
        assert_eq!(bytes.0.len(), 47);
        let none = ConnectionBytes::encode(&pb::RegisteredConnection::default());
        assert_eq!(none.decode(), pb::RegisteredConnection::default());
        assert!(none.0.is_empty());
        assert_eq!(
            ConnectionBytes(Box::new([0xff])).decode(),
            pb::RegisteredConnection::default()
        );
    }
}
