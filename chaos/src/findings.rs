//! What the fault loop and the settle checks found along the way, and the run's log (the
//! same lines go to stderr as they happen and to the report file at the end).

use std::collections::BTreeMap;
use std::time::Instant;

pub struct Findings {
    started: Instant,
    pub log: Vec<String>,
    /// Rounds after which the cluster did not re-form (a leader and every member) in time.
    pub unsettled: u32,
    /// Nodes that exited without the harness killing them.
    pub crashes: Vec<String>,
    /// Client id → where it was seen held twice (first sighting).
    pub double_owners: BTreeMap<String, String>,
    /// Settle checks at which some subscriber had no open connection.
    pub unconnected: u32,
}

impl Findings {
    pub fn new() -> Findings {
        Findings {
            started: Instant::now(),
            log: Vec::new(),
            unsettled: 0,
            crashes: Vec::new(),
            double_owners: BTreeMap::new(),
            unconnected: 0,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn note(&mut self, line: impl Into<String>) {
        let line = format!(
            "[{:7.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            line.into()
        );
        eprintln!("{line}");
        self.log.push(line);
    }
}
