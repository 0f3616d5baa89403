//! Keeps a member that did not run for a while (SIGSTOP, a paused VM, a starved process)
//! from starting an election the moment it runs again.
//!
//! openraft's election timer measures time, not time the process ran: a follower stopped
//! longer than the election timeout finds it expired on resume and campaigns before the
//! leader's next AppendEntries reaches it (the leader backs off from a peer that did not
//! answer). Its election fails (the others hold the leader's lease and its log is
//! behind), but its term is now higher: the leader's next AppendEntries to it is refused
//! with that term and the leader steps down. The cluster then has no leader until the
//! lease passes and another election ends (2–3 s with the defaults), and the resumed node
//! applies nothing meanwhile: it still holds connections whose clients were taken over
//! on other nodes while it was stopped, and delivers to them (issue 14's double owners:
//! chaos seed 7, `chaos-sub-3`, 1.1 s after the new connection's CONNACK).
//!
//! So openraft may start an election only after this node has *run* for an election
//! timeout without hearing from a leader: each AppendEntries or snapshot a leader's term
//! makes this node accept turns elections off, and a task ticking a few times per
//! heartbeat turns them back on once the silence, counted from the last contact or from
//! the end of the latest stall it noticed (a tick late by half an election timeout),
//! reaches the election timeout. A node that stopped while following a leader resumes
//! with elections off whichever task runs first. openraft's own timer still applies on
//! top, so a leader that died is replaced as fast as before (its timer is the lease plus
//! the election timeout, longer than the gate's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::types::Raft;

/// Ticks of the gate's task per heartbeat interval.
const TICKS_PER_HEARTBEAT: u32 = 5;

/// Whether openraft may start an election here (see the module docs).
#[derive(Debug)]
pub(crate) struct ElectionGate {
    /// When this process started: the base of the millisecond counts below.
    base: Instant,
    /// When a leader was last heard from, in ms since `base` (0: never).
    contact_ms: AtomicU64,
    election_timeout: Duration,
}

impl ElectionGate {
    pub(crate) fn new(election_timeout: Duration) -> Self {
        ElectionGate {
            base: Instant::now(),
            contact_ms: AtomicU64::new(0),
            election_timeout,
        }
    }

    /// This node accepted an AppendEntries or a snapshot chunk of the current leader: no
    /// election is due. Two atomic stores: it runs for every append.
    pub(crate) fn heard_from_leader(&self, raft: &Raft) {
        let ms = self.base.elapsed().as_millis().max(1) as u64;
        self.contact_ms.fetch_max(ms, Ordering::Relaxed);
        raft.runtime_config().elect(false);
    }

    /// The longest a tick may come late before it is taken for a stall: the silence
    /// before it does not count, as this node could not have heard anything meanwhile.
    fn stall(&self) -> Duration {
        self.election_timeout / 2
    }

    /// What the task decides at a tick at `now`, the previous one having been at `prev`
    /// and the latest stall having ended at `quiet_from` (updated here).
    fn decide(&self, prev: Instant, now: Instant, quiet_from: &mut Instant) -> Decision {
        let stalled = now.saturating_duration_since(prev) > self.stall();
        if stalled {
            *quiet_from = now;
        }
        let contact = self.base + Duration::from_millis(self.contact_ms.load(Ordering::Relaxed));
        let silent_since = (*quiet_from).max(contact);
        let open = now.saturating_duration_since(silent_since) >= self.election_timeout;
        Decision { stalled, open }
    }

    /// Turns elections on and off at each tick until `shutdown` (see the module docs).
    pub(crate) async fn run(&self, raft: Raft, heartbeat: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval((heartbeat / TICKS_PER_HEARTBEAT).max(MIN_TICK));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut prev = Instant::now();
        let mut quiet_from = prev;
        let mut open = true;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let now = Instant::now();
            let decision = self.decide(prev, now, &mut quiet_from);
            if decision.stalled {
                let gap = now.saturating_duration_since(prev);
                tracing::info!(?gap, "this node did not run for a while (stopped or starved): no election before it hears from the leader or runs an election timeout without");
                metrics::raft_stall();
            }
            // Stored at every tick (one atomic store): a contact in between may have
            // turned elections off, and one that comes right after this store is the
            // leader's, so openraft's own timer holds its election back meanwhile.
            raft.runtime_config().elect(decision.open);
            if decision.open != open {
                tracing::debug!(allowed = decision.open, "elections allowed on this node");
                open = decision.open;
            }
            prev = now;
        }
    }
}

/// The gate's task never ticks more often than this.
const MIN_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    /// The tick came late: the node did not run for a while.
    stalled: bool,
    /// Elections may start.
    open: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> ElectionGate {
        ElectionGate::new(Duration::from_millis(1000))
    }

    fn contact(gate: &ElectionGate, at: Instant) {
        let ms = at.duration_since(gate.base).as_millis() as u64;
        gate.contact_ms.fetch_max(ms, Ordering::Relaxed);
    }

    #[test]
    fn elections_open_after_an_election_timeout_of_running_without_a_leader() {
        let gate = gate();
        let t0 = gate.base;
        let mut quiet = t0;
        let ms = Duration::from_millis;
        contact(&gate, t0 + ms(100));
        // Ticks every 50 ms: closed until 1 s after the contact.
        let mut prev = t0 + ms(100);
        let mut opened_at = None;
        for i in 1..40 {
            let now = t0 + ms(100 + 50 * i);
            let d = gate.decide(prev, now, &mut quiet);
            assert!(!d.stalled);
            if d.open && opened_at.is_none() {
                opened_at = Some(now - (t0 + ms(100)));
            }
            prev = now;
        }
        assert_eq!(opened_at, Some(ms(1000)));
        // A contact closes them again.
        contact(&gate, prev);
        let d = gate.decide(prev, prev + ms(50), &mut quiet);
        assert_eq!(
            d,
            Decision {
                stalled: false,
                open: false
            }
        );
    }

    #[test]
    fn a_stall_restarts_the_silence_however_long_it_was() {
        let gate = gate();
        let t0 = gate.base;
        let mut quiet = t0;
        let ms = Duration::from_millis;
        contact(&gate, t0 + ms(10));
        // Stopped 4 s after a tick at 100 ms: the silence counts from the resume.
        let resumed = t0 + ms(4100);
        let d = gate.decide(t0 + ms(100), resumed, &mut quiet);
        assert_eq!(
            d,
            Decision {
                stalled: true,
                open: false
            }
        );
        assert_eq!(quiet, resumed);
        // Ticks every 50 ms from the resume: closed until an election timeout later.
        let mut prev = resumed;
        let mut opened_at = None;
        for i in 1..=20 {
            let now = resumed + ms(50 * i);
            let d = gate.decide(prev, now, &mut quiet);
            assert!(!d.stalled);
            if d.open && opened_at.is_none() {
                opened_at = Some(now - resumed);
            }
            prev = now;
        }
        assert_eq!(opened_at, Some(ms(1000)));
        // A tick late by less than half an election timeout is no stall.
        let later = resumed + ms(1400);
        let d = gate.decide(resumed + ms(1000), later, &mut quiet);
        assert_eq!(
            d,
            Decision {
                stalled: false,
                open: true
            }
        );
    }
}
