//! The broker crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("storage: {0}")]
    Storage(#[from] skein_storage::StorageError),
    /// The storage engine failed a write, and sled keeps failing every write after its
    /// first I/O error until the database is opened again: the node stops so that its
    /// supervisor starts it again.
    #[error(
        "storage failed ({0}); sled cannot recover from it without reopening the database, \
         so the node stopped: start it again (with room on the disk)"
    )]
    StorageFailed(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
