//! Which connections on this node use which device certificate, so that a certificate an
//! operator revokes or deactivates (on any node: the change reaches every node through the
//! registry) ends the connections that use it here, with reason `kicked` and a reason
//! string naming the certificate.
//!
//! Entries hold the connection's signal weakly: a connection that ended leaves a dead entry,
//! dropped at the next sweep (when the map has doubled since the last one), so the map
//! stays within twice the live connections that have a certificate.

use std::sync::{Arc, Mutex, Weak};

use skein_seam::CertificateStatus;

use crate::hash::HashMap;
use crate::session::{Kick, KickSignal};

/// The map is swept when it holds this many entries or twice as many as after the last
/// sweep, whichever is more.
const SWEEP_AT_LEAST: usize = 64;

#[derive(Debug)]
struct User {
    sn: Arc<str>,
    kick: Weak<KickSignal>,
    /// Set when the connection is told to go: the status that ended it.
    disabled: Option<CertificateStatus>,
}

#[derive(Debug, Default)]
struct Users {
    by_connection: HashMap<u64, User>,
    sweep_at: usize,
}

/// The connections that use a certificate, by connection id.
#[derive(Debug, Default)]
pub struct CertificateUsers {
    inner: Mutex<Users>,
}

impl CertificateUsers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Users> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `id`, signalled through `kick`, uses certificate `sn`.
    pub fn track(&self, id: u64, sn: Arc<str>, kick: &Arc<KickSignal>) {
        let mut users = self.lock();
        if users.by_connection.len() >= users.sweep_at.max(SWEEP_AT_LEAST) {
            users.by_connection.retain(|_, u| u.kick.strong_count() > 0);
            users.sweep_at = users.by_connection.len() * 2;
        }
        users.by_connection.insert(
            id,
            User {
                sn,
                kick: Arc::downgrade(kick),
                disabled: None,
            },
        );
    }

    /// Ends the connections that use certificate `sn`, which now has `status`; returns how
    /// many were told.
    pub fn disable(&self, sn: &str, status: CertificateStatus) -> usize {
        let mut told = 0;
        let mut users = self.lock();
        users.by_connection.retain(|id, user| {
            let Some(kick) = user.kick.upgrade() else {
                return false;
            };
            if &*user.sn == sn && user.disabled.is_none() {
                user.disabled = Some(status);
                if kick.send(Kick::CertificateDisabled) {
                    told += 1;
                    tracing::info!(connection = id, sn, %status, "certificate no longer active: ending its connection");
                }
            }
            true
        });
        if told > 0 {
            crate::metrics::certificate_kicks(status.as_str(), told as u64);
        }
        told
    }

    /// The certificates in use (each once), for a recheck against the registry.
    pub fn in_use(&self) -> Vec<Arc<str>> {
        let users = self.lock();
        let mut sns: Vec<Arc<str>> = users
            .by_connection
            .values()
            .filter(|u| u.kick.strong_count() > 0)
            .map(|u| u.sn.clone())
            .collect();
        sns.sort_unstable();
        sns.dedup();
        sns
    }

    /// Why connection `id` was told to go, for its DISCONNECT's reason string.
    pub fn why_disabled(&self, id: u64) -> Option<String> {
        let users = self.lock();
        let user = users.by_connection.get(&id)?;
        let status = user.disabled?;
        Some(format!("certificate {} is {status}", user.sn))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_connection.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabling_a_certificate_kicks_its_live_connections_only() {
        let users = CertificateUsers::default();
        let a = KickSignal::new();
        let a_held = a.clone();
        let b = KickSignal::new();
        let b_held = b.clone();
        users.track(1, "ab".into(), &a);
        users.track(2, "cd".into(), &b);
        assert_eq!(users.in_use(), [Arc::from("ab"), Arc::from("cd")]);
        assert_eq!(users.disable("ab", CertificateStatus::Revoked), 1);
        assert_eq!(a_held.try_recv(), Some(Kick::CertificateDisabled));
        assert_eq!(b_held.try_recv(), None);
        assert_eq!(
            users.why_disabled(1).as_deref(),
            Some("certificate ab is revoked")
        );
        assert_eq!(users.why_disabled(2), None);
        // Told once.
        assert_eq!(users.disable("ab", CertificateStatus::Inactive), 0);
        // A connection that ended is forgotten.
        drop((b, b_held));
        assert_eq!(users.disable("cd", CertificateStatus::Revoked), 0);
        assert_eq!(users.len(), 1);
    }

    #[test]
    fn ended_connections_are_swept_so_the_map_stays_bounded() {
        let users = CertificateUsers::default();
        let live = KickSignal::new();
        users.track(0, "ab".into(), &live);
        for id in 1..10_000 {
            let gone = KickSignal::new();
            users.track(id, "ab".into(), &gone);
        }
        assert!(users.len() <= SWEEP_AT_LEAST + 1, "{}", users.len());
        assert_eq!(users.in_use(), [Arc::from("ab")]);
    }
}
