//! Skein's cluster wire protocol: the `.proto` files under `proto/` and the Rust that prost
//! and tonic generate from them at build time (see `build.rs`; no system `protoc` needed).
//!
//! Everything that crosses a node boundary is one of these messages; no Rust-only type does.
//!
//! - `v1`: package `skein.cluster.v1`, generated from these files:
//!   - `raft.proto`: the `Raft` service (AppendEntries, Vote, InstallSnapshot) and the Raft
//!     records it carries (log ids, votes, entries, memberships, snapshot metadata).
//!   - `registry.proto`: the client registry's commands (the Raft log's application data),
//!     their results, and the state machine's snapshot.
//!   - `cluster.proto`: the `Cluster` admin service (Join, Remove, Status), `AwaitFolded`
//!     (what a SUBACK waits for on every member) and `Propose`,
//!     the way a follower's proposer reaches the leader.
//!   - `dataplane.proto`: `Forward` (batched publish streams between nodes) and `Session`
//!     (kick a connection; hand a session over, not served yet).
//!
//! Messages are versioned the protobuf way: field numbers are append-only and never reused.
//! Those stored in the Raft log and snapshots (`registry.proto`) must also give a new field
//! a meaning when it is absent, as old entries lack it.

/// Package `skein.cluster.v1`.
pub mod v1 {
    // Generated code: its style is prost's and tonic's, not ours.
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("skein.cluster.v1");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1;

    /// An older build reading a command from a newer one (a oneof case it does not know)
    /// decodes it as "no command", which the state machine rejects, instead of failing the
    /// whole log entry.
    #[test]
    fn an_unknown_command_decodes_as_none_and_its_neighbours_survive() {
        let known = v1::Command {
            command: Some(v1::command::Command::Unsubscribe(v1::Unsubscribe {
                client_id: "c".into(),
                node_id: 2,
                epoch: 9,
                filter: "a/#".into(),
            })),
        };
        // Field 1 of CommandBatch (a Command) holding field 15 (unknown) as a message.
        let mut bytes = Vec::new();
        let unknown_command = [0x7a, 0x02, 0x08, 0x01]; // field 15, len 2: { field 1 = 1 }
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut bytes);
        prost::encoding::encode_varint(unknown_command.len() as u64, &mut bytes);
        bytes.extend_from_slice(&unknown_command);
        v1::CommandBatch {
            commands: vec![known.clone()],
            leader_stamped_ms: 0,
        }
        .encode(&mut bytes)
        .unwrap();

        let batch = v1::CommandBatch::decode(bytes.as_slice()).unwrap();
        assert_eq!(batch.commands.len(), 2);
        assert_eq!(batch.commands[0].command, None);
        assert_eq!(batch.commands[1], known);
    }
}
