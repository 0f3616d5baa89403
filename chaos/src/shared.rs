//! What the clients, the watchers and the fault loop share during a run.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::cluster::{Cut, Topology};
use crate::conns::{Connecting, Conns};
use crate::ledger::Ledger;

/// The filter every persistent subscriber holds; publisher i publishes on `chaos/p<i>`.
pub const FILTER: &str = "chaos/#";
/// Session Expiry Interval of the persistent subscribers: far longer than any run.
pub const SESSION_EXPIRY_SECS: u32 = 3600;

pub fn subscriber_id(index: u32) -> String {
    format!("chaos-sub-{index}")
}

pub fn publisher_id(index: u32) -> String {
    format!("chaos-pub-{index}")
}

pub struct Shared {
    pub topology: Arc<Topology>,
    pub ledger: Mutex<Ledger>,
    pub conns: Mutex<Conns>,
    /// Disconnect events seen by the watchers: (topic, payload), so that the copy each
    /// watcher gets of one event counts once.
    pub events: Mutex<HashSet<(String, Bytes)>>,
    /// Reconnects of a persistent subscriber answered with Session Present = 0.
    pub sessions_lost: AtomicU64,
    /// The fault round now running (0 before the first), stamped on acknowledgements.
    pub round: AtomicU32,
    pub started: Instant,
    /// Partition mode: (node, cut at, healed at) in seconds since the run started.
    pub cuts: Mutex<Vec<Cut>>,
    /// Failed connection attempts by kind (for the report: what a client saw meanwhile).
    pub connect_failures: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn new(topology: Arc<Topology>, subscribers: u32, started: Instant) -> Shared {
        Shared {
            topology,
            ledger: Mutex::new(Ledger::new(subscribers, started)),
            conns: Mutex::new(Conns::new(started)),
            events: Mutex::new(HashSet::new()),
            sessions_lost: AtomicU64::new(0),
            round: AtomicU32::new(0),
            started,
            cuts: Mutex::new(Vec::new()),
            connect_failures: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panicking client task must not hide what the others recorded.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Records a failed CONNECT (see [`Conns::failed`]) and counts it by the kind of its
    /// error. Only a refused TCP connection (the node is down) means no server read the
    /// CONNECT; one refused with a CONNACK code (0x88 when its registration did not commit
    /// within `connect_commit_timeout_ms`), unanswered, or whose connection failed may
    /// still have been registered (its late commit takes the session over before the node
    /// releases it again).
    pub fn connect_failed(&self, attempt: Connecting, error: &anyhow::Error) {
        let text = format!("{error:#}");
        let tcp_refused = text.contains("Connection refused")
            && !text.starts_with("Connection refused, return code");
        let kind = if text.starts_with("no CONNACK") || text.contains("Timeout") {
            "no CONNACK within the connect timeout".to_owned()
        } else if let Some(code) = text.strip_prefix("Connection refused, return code: ") {
            format!("CONNACK refused: {}", code.trim_matches('`'))
        } else if tcp_refused {
            "TCP connection refused (node down)".to_owned()
        } else {
            text
        };
        self.conns().failed(attempt, kind.clone(), tcp_refused);
        let mut failures = self
            .connect_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *failures.entry(kind).or_default() += 1;
    }

    pub fn cuts(&self) -> MutexGuard<'_, Vec<Cut>> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn events(&self) -> MutexGuard<'_, HashSet<(String, Bytes)>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}
