//! Durable state of a single Skein broker node, kept in sled.
//!
//! [`Store`] holds persistent MQTT sessions (metadata and subscriptions), the
//! queue of messages waiting for an offline or slow session, a session's
//! outgoing QoS 1/2 messages in flight, incoming QoS 2 packet ids awaiting
//! PUBREL, retained messages, and the append-only system event log
//! ([`EventLog`], whose ids keep increasing across restarts). Everything
//! survives a restart, including `kill -9`, once [`Store::flush`] has
//! returned (the event log: once [`EventLog::sync`] has); sled otherwise syncs
//! in the background every 500 ms.
//!
//! Each kind of record lives in its own sled tree, except the event log's
//! entries: they go to append-only segment files (see `events.rs`), as sled
//! keeps hundreds of bytes in memory per small record. Per-client trees are keyed
//! by `client id ++ 0x00 ++ big-endian number` so a prefix scan returns one
//! client's entries in order (see `keys.rs`); values use a versioned,
//! append-only binary format (see `codec.rs`). A `meta` tree records the
//! schema version so an older build refuses a store written by a newer one.
//!
//! [`StorageHealth`] says whether the store takes new data: the broker refuses what
//! needs the disk while free space is below its guard or after the storage engine
//! failed (sled keeps its first I/O error until the database is opened again).
//!
//! [`RaftLogStore`] ([`Store::raft_log`]) is a cluster node's openraft log, vote and commit
//! pointer in the same database, with [`RaftSnapshotSlot`] for its snapshot: entries are
//! reported durable, and votes and snapshots saved, only after a sled flush (see `raft_log.rs`).
//!
//! sled stays behind this API: apart from [`StorageError::Sled`], callers
//! never see its types.
//!
//! The crate's modules in layer order. Direction: each module imports only modules
//! listed below it (the store on top, the error type at the bottom).
//!
//! - `raft_log`: [`RaftLogStore`] and [`RaftSnapshotSlot`]: a cluster node's Raft log,
//!   vote and snapshot in the store's database.
//! - `store`: [`Store`]: the sled trees, and every read and write of them.
//! - `health`: [`StorageHealth`]: whether the store takes new data (free-space guard,
//!   a failed engine).
//! - `events`: [`EventLog`]: the append-only event log in segment files.
//! - `keys`: the keys of per-client records (`client id ++ 0x00 ++ number`).
//! - `codec`: the versioned binary format of stored values.
//! - `types`: the stored records ([`StoredSession`], [`StoredMessage`], ...).
//! - `error`: [`StorageError`], the crate's error type.

mod codec;
mod error;
mod events;
mod health;
mod keys;
#[cfg(test)]
mod kill_9;
mod raft_log;
mod store;
mod types;

pub use error::{Result, StorageError};
pub use events::EventLog;
pub use health::{Availability, MinFree, Space, StorageHealth};
pub use raft_log::{RaftLogStore, RaftSnapshotSlot, StoredSnapshot};
pub use store::{LastStop, MovedAwayRecord, PageWrite, Store};
pub use types::{StoredInflight, StoredMessage, StoredSession, StoredSubscription};
