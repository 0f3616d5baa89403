//! The storage monitor: measures free space on the data directory for the guard
//! (`storage_min_free_bytes`; the store logs each crossing), and stops the node once the
//! storage engine has failed.

use std::sync::Arc;
use std::time::Duration;

use skein_storage::{Availability, StorageHealth};

use super::Broker;

/// How often free space is measured (a `statvfs`, a few microseconds). A write error
/// changes the state at once, without waiting for this.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

impl Broker {
    /// Sets the guard from the configuration and takes the first measurement, so the
    /// node starts in the right state.
    pub(super) fn configure_storage_guard(&self) {
        let health = self.store.health();
        health.set_min_free(self.config.storage_min_free_bytes);
        if let Err(error) = health.check() {
            tracing::warn!(%error, "cannot measure free space on the data directory");
        }
    }

    /// Measures free space every [`CHECK_EVERY`]. Once the
    /// storage engine has failed, which sled does not recover from in the same process,
    /// it stops the node: the shutdown drains the connections, and `run` then returns
    /// an error, so the process exits non-zero and its supervisor starts it again on the
    /// same data.
    pub fn spawn_storage_monitor(self: &Arc<Self>) {
        let broker = self.clone();
        self.tasks.spawn(async move {
            let health = broker.store.health().clone();
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Set while measuring fails, so that it is logged once, not every tick.
            let mut unmeasurable = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = broker.shutdown.cancelled() => return,
                }
                let now = match health.check() {
                    Ok(now) => {
                        unmeasurable = false;
                        now
                    }
                    Err(error) => {
                        if !unmeasurable {
                            tracing::warn!(%error, "cannot measure free space on the data directory; the guard keeps its last state");
                        }
                        unmeasurable = true;
                        health.availability()
                    }
                };
                if now == Availability::Failed {
                    stop_for_failure(&health);
                    broker.shutdown.cancel();
                    return;
                }
            }
        });
    }
}

fn stop_for_failure(health: &StorageHealth) {
    tracing::error!(
        cause = health.failure().unwrap_or_default(),
        "storage failed: sled refuses every write after an I/O error until the database is \
         opened again, so the node stops now (exit status 1) for its supervisor to start it \
         again; nothing acknowledged is lost"
    );
}
