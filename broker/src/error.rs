//! The broker crate's error type.
//!
//! Each variant's message includes its cause's message, so a variant does not also hand
//! the cause out as `source()`: printers that walk the chain (anyhow's `{:#}`, which the
//! binary uses) would print every cause twice, or more where the cause does the same (a
//! sled I/O error printed three times). The cause itself is kept in the variant.

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("storage: {0}")]
    Storage(skein_storage::StorageError),
    /// The storage engine failed a write, and sled keeps failing every write after its
    /// first I/O error until the database is opened again: the node stops so that its
    /// supervisor starts it again.
    #[error(
        "storage failed ({0}); sled cannot recover from it without reopening the database, \
         so the node stopped: start it again (with room on the disk)"
    )]
    StorageFailed(String),
    /// The node could not take part in its cluster (a bad peer list or setting, its Raft
    /// state unreadable).
    #[error("cluster: {0}")]
    Cluster(String),
    /// The TLS certificate, key or CA files could not be used.
    #[error("tls: {0}")]
    Tls(String),
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

impl From<skein_storage::StorageError> for BrokerError {
    fn from(e: skein_storage::StorageError) -> Self {
        BrokerError::Storage(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message as the binary prints it: every cause in the chain, joined by ": ".
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    #[test]
    fn a_cause_is_printed_once() {
        let io = || std::io::Error::from_raw_os_error(30);
        let e = BrokerError::Io {
            context: "opening the store".into(),
            cause: io(),
        };
        assert_eq!(chain(&e), format!("opening the store: {}", io()));
        let path = std::path::PathBuf::from("/data");
        let e = BrokerError::from(skein_storage::StorageError::CreateDir {
            path: path.clone(),
            source: io(),
        });
        let printed = chain(&e);
        assert_eq!(printed.matches(&io().to_string()).count(), 1, "{printed}");
    }
}
