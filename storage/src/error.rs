//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The underlying database failed (I/O, or sled's own corruption checks).
    #[error("storage engine error: {0}")]
    Sled(#[from] sled::Error),

    /// A stored key or value could not be decoded. Never silently dropped: the
    /// caller decides whether to refuse to start or to delete the record.
    #[error("corrupt record in tree `{tree}`: {reason}")]
    Corrupt { tree: &'static str, reason: String },

    /// The store was written by a newer Skein whose format this build cannot
    /// read. Opening it anyway could misread or overwrite newer records.
    #[error(
        "storage schema version {found} is newer than the {supported} this build supports; \
         upgrade Skein or point it at another data directory"
    )]
    SchemaTooNew { found: u32, supported: u32 },

    /// Client ids are part of composite keys separated by NUL, so an id
    /// containing NUL could read or delete another client's records. MQTT
    /// forbids U+0000 in strings, so the broker should never produce one.
    #[error("client id {client_id:?} contains U+0000 and cannot be stored")]
    InvalidClientId { client_id: String },

    /// A file of the event log could not be read, written, created or removed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An event log entry is larger than the log accepts (see `EventLog::append`).
    #[error("event log entry of {len} bytes exceeds the maximum of {max}")]
    EntryTooLarge { len: usize, max: usize },

    /// An event log segment file was written by a newer Skein in a format this build
    /// cannot read. Distinct from [`StorageError::SchemaTooNew`] so the message names the
    /// file, not the whole store.
    #[error(
        "event log segment {path} has format version {found}, newer than the {supported} \
         this build supports; upgrade Skein or point it at another data directory"
    )]
    EventLogFormatTooNew {
        path: PathBuf,
        found: u8,
        supported: u8,
    },

    /// The event log has handed out every id up to `u64::MAX`. Never reached by counting
    /// up; a corrupt stored reservation can get here, and reusing or wrapping ids would
    /// break the promise that they increase.
    #[error("event log ids are exhausted (the id counter reached u64::MAX)")]
    IdsExhausted,

    /// New data is refused: free space on the data directory's file system is below the
    /// `storage_min_free_bytes` guard (see [`crate::StorageHealth`]).
    #[error(
        "free space on the data directory is below storage_min_free_bytes \
         ({free} bytes free, {min_free} required)"
    )]
    LowSpace { free: u64, min_free: u64 },

    /// An earlier write failed and the storage engine refuses every write since; the
    /// store must be opened again (the broker restarts).
    #[error("storage failed earlier: {0}")]
    Failed(String),

    /// A Raft record (log entry, vote, log id, snapshot metadata) could not be serialized,
    /// so it was not written.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },

    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, StorageError>;

/// A record of `tree` that could not be decoded.
pub(crate) fn corrupt(tree: &'static str, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        tree,
        reason: reason.into(),
    }
}
