//! What the broker does with what the disk cannot take (see
//! [`skein_storage::StorageHealth`]): what a publish that needed the disk is told when
//! storage takes no new data, and how that is counted and logged (at most one line every
//! few seconds, however many messages). The task that measures free space lives in
//! `broker/storage_monitor.rs`.
//!
//! Nothing that could not be stored is acknowledged: a QoS 1/2 publish that a persistent
//! session needed gets a failure PUBACK/PUBREC (MQTT 5) or its connection closed without
//! one (3.x), and the admin API answers 507 or 503.

use std::time::Duration;

use skein_storage::{Availability, StorageError, StorageHealth};

use crate::log_limit::LogLimit;

/// At most one line per this long for each kind of storage trouble.
const LOG_EVERY: Duration = Duration::from_secs(10);

static REFUSALS: LogLimit = LogLimit::new(LOG_EVERY);
static WRITE_ERRORS: LogLimit = LogLimit::new(LOG_EVERY);

/// Why something that needed the disk was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Free space is below `storage_min_free_bytes`: refused before anything was written.
    LowSpace,
    /// A write failed, or the storage engine has failed.
    Failed,
}

impl NotStored {
    pub fn of(error: &StorageError) -> NotStored {
        match error {
            StorageError::LowSpace { .. } => NotStored::LowSpace,
            _ => NotStored::Failed,
        }
    }

    /// Why a store that takes no new data does not; None while it does.
    pub fn of_store(health: &StorageHealth) -> Option<NotStored> {
        match health.availability() {
            Availability::Available => None,
            Availability::LowSpace => Some(NotStored::LowSpace),
            Availability::Failed => Some(NotStored::Failed),
        }
    }

    /// The `reason` label of `skein_publishes_refused_total` and
    /// `skein_messages_dropped_total`.
    pub fn reason(self) -> &'static str {
        match self {
            NotStored::LowSpace => "storage_low_space",
            NotStored::Failed => "storage_error",
        }
    }

    /// What the publisher is told (MQTT 5 Reason String, the admin API's error).
    pub fn message(self) -> &'static str {
        match self {
            NotStored::LowSpace => {
                "not stored: free disk space on the node is below storage_min_free_bytes"
            }
            NotStored::Failed => "not stored: the node's storage failed",
        }
    }
}

/// A publish that needed the disk was refused: counted, and logged now and then.
pub fn publish_refused(not_stored: NotStored, topic: &str, health: &StorageHealth) {
    crate::metrics::publish_refused(not_stored.reason());
    if let Some(held_back) = REFUSALS.allow() {
        let detail = health
            .describe()
            .unwrap_or_else(|| String::from("a storage write failed"));
        tracing::warn!(%topic, reason = not_stored.reason(), %detail, held_back, "publish refused: it needed the disk, which takes no new data");
    }
}

/// A storage write for `client_id` failed (`what` says which). Refusals by the guard are
/// not errors and are counted where they are decided; anything else is logged now and then.
pub fn write_failed(what: &'static str, client_id: &str, error: &StorageError) {
    if matches!(error, StorageError::LowSpace { .. }) {
        return;
    }
    if let Some(held_back) = WRITE_ERRORS.allow() {
        tracing::error!(client_id, %error, held_back, "storage write failed: {what}");
    }
}
