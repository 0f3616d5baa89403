//! Authorization by ACL file (`acl_file`, Mosquitto's format, see [`file`]): the rules in
//! force, one client's view of them ([`ClientRules`]), and reloading them when the file
//! changes (its modification time and length, polled every `acl_poll_ms`) or on SIGHUP.
//!
//! A bad file at startup is a configuration error (the configuration loads it); a bad
//! file on reload is logged and counted (`skein_acl_reloads_total{outcome="error"}`) and
//! the rules in force stay. Connections see new rules at their next check: each keeps
//! its view with the generation it was built from and rebuilds it when that changed.

pub mod file;
pub mod rules;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

pub use file::{Access, AclFileError, AclRules, Rule};
pub use rules::ClientRules;

use crate::metrics::{ACL_RELOADS, ACL_RULES};

/// What tells a changed file apart: modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// The ACL rules in force, reloadable.
pub struct AclState {
    path: PathBuf,
    current: RwLock<Arc<AclRules>>,
    /// Bumped on every successful reload.
    generation: AtomicU64,
    /// The file as last read (successfully or not): a bad file is not reread (and
    /// reported) every poll, only once it changes again.
    stamp: Mutex<Stamp>,
}

impl AclState {
    /// The rules read from `path` at startup.
    pub fn new(path: PathBuf, rules: Arc<AclRules>) -> Arc<AclState> {
        let stamp = stamp_of(&path);
        metrics::gauge!(ACL_RULES).set(rules.len() as f64);
        Arc::new(AclState {
            path,
            current: RwLock::new(rules),
            generation: AtomicU64::new(1),
            stamp: Mutex::new(stamp),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The rules in force and their generation.
    pub fn current(&self) -> (u64, Arc<AclRules>) {
        let rules = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        (self.generation(), rules)
    }

    /// `rules` of the `client_id` / `username` as of the rules in force, with their
    /// generation.
    pub fn client_rules(&self, client_id: &str, username: Option<&str>) -> (u64, ClientRules) {
        let (generation, rules) = self.current();
        (generation, ClientRules::of(&rules, client_id, username))
    }

    /// Rereads the file; true when the new rules are in force. `why`: for the log.
    pub fn reload(&self, why: &'static str) -> bool {
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp_of(&self.path);
        match AclRules::load(&self.path) {
            Ok(rules) => {
                let count = rules.len();
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(rules);
                self.generation.fetch_add(1, Ordering::AcqRel);
                metrics::counter!(ACL_RELOADS, "outcome" => "success").increment(1);
                metrics::gauge!(ACL_RULES).set(count as f64);
                tracing::info!(path = %self.path.display(), rules = count, why, "ACL file reloaded");
                true
            }
            Err(e) => {
                metrics::counter!(ACL_RELOADS, "outcome" => "error").increment(1);
                tracing::error!(path = %self.path.display(), error = %e, why, "ACL file not reloaded: the previous rules stay in force");
                false
            }
        }
    }

    /// Whether the file changed since it was last read.
    fn changed(&self) -> bool {
        let now = stamp_of(&self.path);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// SIGHUP's handler, installed now: before it is, a SIGHUP ends the process. Called
    /// before the node says it listens; None (and a warning) when it can't be installed.
    pub fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: the ACL file reloads on change only");
                None
            }
        }
    }

    /// Reloads on `hangup` (see [`AclState::hangup_signal`]), and every `poll` when the
    /// file changed (None: SIGHUP only), until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        mut hangup: Option<tokio::signal::unix::Signal>,
        poll: Option<Duration>,
        shutdown: CancellationToken,
    ) {
        let mut tick = poll.map(|every| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let polled = async {
                match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup => { self.reload("SIGHUP"); }
                _ = polled => {
                    if self.changed() {
                        self.reload("file changed");
                    }
                }
            }
        }
    }
}

fn stamp_of(path: &std::path::Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_reload_keeps_the_rules_and_a_good_one_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, "topic read a/#\n").unwrap();
        let state = AclState::new(path.clone(), Arc::new(AclRules::load(&path).unwrap()));
        let (g1, r) = state.client_rules("c", None);
        assert_eq!(r.may_subscribe("a/b"), Some(true));

        std::fs::write(&path, "topic read b/#\nbogus line\n").unwrap();
        assert!(state.changed());
        assert!(!state.reload("test"));
        assert!(
            !state.changed(),
            "a bad file is not reread until it changes"
        );
        let (g2, r) = state.client_rules("c", None);
        assert_eq!(g1, g2);
        assert_eq!(r.may_subscribe("a/b"), Some(true));

        std::fs::write(&path, "topic read b/#\n").unwrap();
        assert!(state.reload("test"));
        let (g3, r) = state.client_rules("c", None);
        assert!(g3 > g2);
        assert_eq!(r.may_subscribe("a/b"), None);
        assert_eq!(r.may_subscribe("b/c"), Some(true));
    }
}
