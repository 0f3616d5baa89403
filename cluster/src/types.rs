//! The openraft type configuration: node ids, node records, and the log's application data.
//!
//! The application data (a [`pb::CommandBatch`]) and the answers to it (a
//! [`pb::CommandResults`]) are protobuf messages: they are what crosses the wire in
//! AppendEntries, so the log stores the very same encoding. openraft wants them
//! serde-serializable (the sled log store writes entries as JSON), so [`Proto`] wraps a
//! message and serializes it as one string: base64 of a format byte and the message's
//! protobuf bytes. Deriving serde on the generated types instead would give the log a second,
//! JSON-shaped format whose evolution rules differ from protobuf's (a renamed field would
//! break old entries); with the wrapper the protobuf rules in `registry.proto` are the only
//! ones to keep.

use std::fmt;
use std::io::Cursor;

use base64::Engine as _;
use prost::Message;
use serde::{Deserialize, Serialize};
use skein_proto::v1 as pb;

/// A cluster member's id (`--node-id`; the ids in `--peers`).
pub type NodeId = u64;

/// What the cluster knows of a member: its name and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Node {
    /// The configured node name (in Kubernetes, the pod name).
    pub name: String,
    /// The gRPC address members dial, `host:port` (the host may be a DNS name).
    pub grpc: String,
    /// The advertised MQTT address, `ip:port`, as events report it.
    pub mqtt: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(grpc {}, mqtt {})", self.name, self.grpc, self.mqtt)
    }
}

impl From<pb::Node> for Node {
    fn from(n: pb::Node) -> Node {
        Node {
            name: n.name,
            grpc: n.grpc,
            mqtt: n.mqtt,
        }
    }
}

impl From<Node> for pb::Node {
    fn from(n: Node) -> pb::Node {
        pb::Node {
            name: n.name,
            grpc: n.grpc,
            mqtt: n.mqtt,
        }
    }
}

openraft::declare_raft_types!(
    /// Skein's Raft: u64 node ids, [`Node`] records, registry command batches as entries.
    pub TypeConfig:
        D = Proto<pb::CommandBatch>,
        R = Proto<pb::CommandResults>,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft instance of a Skein node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// openraft's log id with our node ids.
pub type LogId = openraft::LogId<NodeId>;
/// openraft's membership with our node records.
pub type Membership = openraft::Membership<NodeId, Node>;

/// The format byte in front of a [`Proto`]'s bytes: version 1 is "a protobuf message".
const PROTO_FORMAT: u8 = 1;

/// A protobuf message as openraft application data (see the module docs).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Proto<M>(pub M);

impl<M: Message> Serialize for Proto<M> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(1 + self.0.encoded_len());
        bytes.push(PROTO_FORMAT);
        // Encoding into a Vec cannot run out of space.
        self.0
            .encode(&mut bytes)
            .map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl<'de, M: Message + Default> Deserialize<'de> for Proto<M> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| D::Error::custom(format!("application data is not base64: {e}")))?;
        match bytes.split_first() {
            Some((&PROTO_FORMAT, message)) => M::decode(message)
                .map(Proto)
                .map_err(|e| D::Error::custom(format!("invalid application data: {e}"))),
            Some((v, _)) => Err(D::Error::custom(format!(
                "application data format {v} is unknown (this build reads {PROTO_FORMAT}); \
                 written by a newer Skein?"
            ))),
            None => Err(D::Error::custom("empty application data")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> pb::CommandBatch {
        pb::CommandBatch {
            commands: vec![pb::Command {
                command: Some(pb::command::Command::Register(pb::RegisterClient {
                    client_id: "sensor-1".into(),
                    node_id: 3,
                    epoch: 77,
                    clean_start: true,
                    session_expiry_secs: 60,
                    will: None,
                    connection: None,
                    stamped_at_ms: 1_700_000_000_000,
                    commit_by_ms: 1_700_000_005_000,
                })),
            }],
            leader_stamped_ms: 1_700_000_000_100,
        }
    }

    #[test]
    fn app_data_round_trips_through_json_as_versioned_protobuf() {
        let data = Proto(batch());
        let json = serde_json::to_string(&data).unwrap();
        let back: Proto<pb::CommandBatch> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, data);

        let text: String = serde_json::from_str(&json).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        assert_eq!(raw[0], PROTO_FORMAT);
        assert_eq!(pb::CommandBatch::decode(&raw[1..]).unwrap(), batch());
    }

    #[test]
    fn unknown_format_and_garbage_are_errors() {
        let encode = |bytes: &[u8]| {
            serde_json::to_string(&base64::engine::general_purpose::STANDARD.encode(bytes)).unwrap()
        };
        let newer = encode(&[2, 0x0a, 0x00]);
        let e = serde_json::from_str::<Proto<pb::CommandBatch>>(&newer).unwrap_err();
        assert!(e.to_string().contains("format 2 is unknown"), "{e}");
        assert!(serde_json::from_str::<Proto<pb::CommandBatch>>(&encode(&[])).is_err());
        // Field 1 declared as 5 bytes long with only 1 present.
        assert!(
            serde_json::from_str::<Proto<pb::CommandBatch>>(&encode(&[1, 0x0a, 0x05, 0x00]))
                .is_err()
        );
        assert!(serde_json::from_str::<Proto<pb::CommandBatch>>("\"***\"").is_err());
    }
}
