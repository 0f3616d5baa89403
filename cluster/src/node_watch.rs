//! The leader's watch over the members: one it has not heard from for longer than
//! `node_down_after_ms` is marked down (`NodeDown`, see `registry/node_down.rs`), and one
//! marked down that it hears from again is marked up (`NodeUp`).
//!
//! Only the leader proposes, one command at a time (it awaits each); never a mark down for
//! itself, and a mark up for itself only when it finds itself marked down.
//! Contact is what [`crate::peers::Peers`] notes (a Raft answer from the member); a leader
//! counts silence only from when it became leader, so a new leader gives every member the
//! whole detection time again before it marks one down. A member already marked down (the
//! registry says so; a new leader reads the same) is not proposed again.
//!
//! The silence must be the member's, not the leader's own: a leader that was paused
//! (SIGSTOP, a stalled VM) finds every contact old when it resumes, while it may still
//! lead (no election happened in the meantime). So it marks nobody down unless it hears
//! from a majority of the voters (itself included) within the detection time, and a gap in
//! its own ticks (it did not run) starts the count again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use skein_proto::v1 as pb;
use skein_proto::v1::command::Command;
use tokio_util::sync::CancellationToken;

use crate::epoch::unix_millis;
use crate::metrics;
use crate::proposer::Proposer;
use crate::shared::Shared;
use crate::types::NodeId;

/// What the leader decided about one member this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Down,
    Up,
}

/// Watches the members while this node leads, until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, proposer: Proposer, shutdown: CancellationToken) {
    let after = shared.settings.node_down_after();
    let every = (after / 5).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when this node leads (in the current term), or ran again after a stall.
    let mut leading: Option<(u64, Instant)> = None;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Ticks far apart: this process did not run (paused, starved); what it missed
        // meanwhile is no member's fault.
        let stalled = last_tick.elapsed() > every * 3 + Duration::from_millis(500);
        last_tick = Instant::now();
        let (state, term) = {
            let m = shared.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            leading = None;
            continue;
        }
        let since = match leading {
            Some((t, since)) if t == term && !stalled => since,
            _ => {
                let now = Instant::now();
                leading = Some((term, now));
                now
            }
        };
        for (node, verdict, alive, silent) in verdicts(&shared, since.elapsed(), after) {
            let command = match verdict {
                Verdict::Down => {
                    tracing::warn!(
                        node,
                        after_ms = after.as_millis() as u64,
                        silent_ms = silent.as_millis() as u64,
                        adopters = ?alive,
                        "no contact with a member for node_down_after_ms: marking it down"
                    );
                    let now = unix_millis();
                    Command::NodeDown(pb::NodeDown {
                        node_id: node,
                        stamped_at_ms: now,
                        adopters: alive,
                        registered_after_ms: registered_after(now, silent, after),
                    })
                }
                Verdict::Up => {
                    tracing::info!(node, "a member marked down is heard from again");
                    Command::NodeUp(pb::NodeUp { node_id: node })
                }
            };
            let proposed = proposer
                .propose(pb::Command {
                    command: Some(command),
                })
                .await;
            match proposed {
                Ok(_) => metrics::node_marked(verdict == Verdict::Down),
                Err(e) => {
                    tracing::info!(node, ?verdict, error = %e, "could not propose a member's mark; trying again");
                    break;
                }
            }
        }
    }
}

/// A `NodeDown`'s `registered_after_ms` (see `registry/node_down.rs`): the clients the node
/// registered after this (its clock) stay its own. When this node last heard from it
/// (`silent` before `now_ms`), plus half the detection time: a registration the node
/// proposed just before its last answer here, or stamped by a clock running a little
/// ahead, is still taken; one made after a pause of at least the detection time (the
/// node resumed and read a waiting CONNECT) is not.
fn registered_after(now_ms: u64, silent: Duration, after: Duration) -> u64 {
    let silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX);
    let margin_ms = u64::try_from((after / 2).as_millis()).unwrap_or(u64::MAX);
    now_ms
        .saturating_sub(silent_ms)
        .saturating_add(margin_ms)
        .max(1)
}

/// The members to mark down or up now, each with the members alive (sorted, this node
/// included): the adopters a `NodeDown` names; and how long it has been silent.
/// `leading_for`: how long this node leads.
fn verdicts(
    shared: &Shared,
    leading_for: Duration,
    after: Duration,
) -> Vec<(NodeId, Verdict, Vec<NodeId>, Duration)> {
    let members: Vec<NodeId> = shared.membership().nodes().map(|(id, _)| *id).collect();
    let voters: Vec<NodeId> = shared.membership().voter_ids().collect();
    let down = shared
        .view
        .read(|r| r.down_nodes().iter().copied().collect::<Vec<_>>());
    decide(
        &Members {
            this: shared.id,
            all: &members,
            voters: &voters,
            down: &down,
        },
        |node| shared.peers.since_contact(node),
        leading_for,
        after,
    )
}

/// What [`decide`] reads of the cluster.
struct Members<'a> {
    this: NodeId,
    all: &'a [NodeId],
    voters: &'a [NodeId],
    /// Marked down in the registry.
    down: &'a [NodeId],
}

/// [`verdicts`] on plain values. `since_contact`: how long ago a member last answered
/// (`None`: not since this process started).
fn decide(
    members: &Members<'_>,
    since_contact: impl Fn(NodeId) -> Option<Duration>,
    leading_for: Duration,
    after: Duration,
) -> Vec<(NodeId, Verdict, Vec<NodeId>, Duration)> {
    // Silence counts from when this node leads at the latest: a new leader (or one that
    // ran again after a stall) gives every member the whole detection time.
    let silent_for = |node: NodeId| since_contact(node).map_or(leading_for, |d| d.min(leading_for));
    let mut alive: Vec<NodeId> = members
        .all
        .iter()
        .copied()
        .filter(|n| *n == members.this || silent_for(*n) <= after)
        .collect();
    alive.sort_unstable();
    let alive_voters = members.voters.iter().filter(|v| alive.contains(v)).count();
    if alive_voters * 2 <= members.voters.len() {
        // No majority heard from: this node cannot tell who is down (see the module docs).
        return Vec::new();
    }
    let mut out = Vec::new();
    // A member marked down that leads now (it was cut off, then elected) is certainly up:
    // until marked up it could register no client (see `registry.rs`).
    if members.down.contains(&members.this) {
        out.push((members.this, Verdict::Up, Vec::new(), Duration::ZERO));
    }
    for node in members.all.iter().copied().filter(|n| *n != members.this) {
        let marked = members.down.contains(&node);
        if !marked {
            let silent = silent_for(node);
            if silent > after {
                out.push((node, Verdict::Down, alive.clone(), silent));
            }
            continue;
        }
        // Marked up only on an answer heard well within the detection time (back, not
        // flapping at its edge). Not on the capped silence above: that is short after this
        // node's leadership (re)started, and says nothing of a member that is still dead.
        if let Some(heard) = since_contact(node).filter(|d| *d <= after / 2) {
            out.push((node, Verdict::Up, Vec::new(), heard));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_millis(3000);

    fn members<'a>(all: &'a [NodeId], down: &'a [NodeId]) -> Members<'a> {
        Members {
            this: 1,
            all,
            voters: all,
            down,
        }
    }

    #[test]
    fn a_dead_member_marked_down_stays_down_when_leadership_restarts() {
        // Node 3 was marked down and has not answered since (its last answer is 10 s
        // old); this leader's count just started again (a new term, or a stall).
        let contact = |n: NodeId| match n {
            2 => Some(Duration::from_millis(50)),
            3 => Some(Duration::from_secs(10)),
            _ => None,
        };
        let out = decide(
            &members(&[1, 2, 3], &[3]),
            contact,
            Duration::from_millis(100),
            AFTER,
        );
        assert!(out.is_empty(), "{out:?}");
        // Never heard from since this process started: not up either.
        let out = decide(
            &members(&[1, 2, 3], &[3]),
            |n| (n == 2).then_some(Duration::ZERO),
            Duration::ZERO,
            AFTER,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_member_marked_down_that_answers_again_is_marked_up() {
        let contact = |n: NodeId| Some(Duration::from_millis(if n == 3 { 200 } else { 50 }));
        let out = decide(
            &members(&[1, 2, 3], &[3]),
            contact,
            Duration::from_secs(60),
            AFTER,
        );
        assert_eq!(
            out,
            vec![(3, Verdict::Up, vec![], Duration::from_millis(200))]
        );
        // An answer near the edge of the detection time is not enough.
        let contact = |n: NodeId| Some(Duration::from_millis(if n == 3 { 2000 } else { 50 }));
        let out = decide(
            &members(&[1, 2, 3], &[3]),
            contact,
            Duration::from_secs(60),
            AFTER,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn silence_counts_from_when_this_node_leads() {
        // Node 3 silent for 10 s, but this node leads for 1 s only: not yet.
        let contact = |n: NodeId| {
            Some(if n == 3 {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            })
        };
        let out = decide(
            &members(&[1, 2, 3], &[]),
            contact,
            Duration::from_secs(1),
            AFTER,
        );
        assert!(out.is_empty(), "{out:?}");
        let out = decide(
            &members(&[1, 2, 3], &[]),
            contact,
            Duration::from_secs(4),
            AFTER,
        );
        assert_eq!(
            out,
            vec![(3, Verdict::Down, vec![1, 2], Duration::from_secs(4))]
        );
    }

    #[test]
    fn nobody_is_marked_down_without_a_majority_heard_from() {
        let contact = |_: NodeId| Some(Duration::from_secs(10));
        let out = decide(
            &members(&[1, 2, 3], &[]),
            contact,
            Duration::from_secs(60),
            AFTER,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn registrations_after_the_last_contact_and_half_the_detection_time_stay() {
        let after = Duration::from_millis(3000);
        // Last heard from 3.2 s before the mark at 10 000 ms: 6 800 + 1 500.
        assert_eq!(
            registered_after(10_000, Duration::from_millis(3200), after),
            8_300
        );
        // Never 0 (that would mean "take every client"), whatever the clocks say.
        assert_eq!(registered_after(100, Duration::from_secs(60), after), 1_500);
        assert_eq!(
            registered_after(0, Duration::from_secs(60), Duration::ZERO),
            1
        );
    }
}
