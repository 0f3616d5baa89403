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
    let silent_for = |node: NodeId| {
        shared
            .peers
            .since_contact(node)
            .map_or(leading_for, |d| d.min(leading_for))
    };
    let mut alive: Vec<NodeId> = members
        .iter()
        .copied()
        .filter(|n| *n == shared.id || silent_for(*n) <= after)
        .collect();
    alive.sort_unstable();
    let voters: Vec<NodeId> = shared.membership().voter_ids().collect();
    let alive_voters = voters.iter().filter(|v| alive.contains(v)).count();
    if alive_voters * 2 <= voters.len() {
        // No majority heard from: this node cannot tell who is down (see the module docs).
        return Vec::new();
    }
    let down = shared
        .view
        .read(|r| r.down_nodes().iter().copied().collect::<Vec<_>>());
    let mut out = Vec::new();
    // A member marked down that leads now (it was cut off, then elected) is certainly up:
    // until marked up it could register no client (see `registry.rs`).
    if down.contains(&shared.id) {
        out.push((shared.id, Verdict::Up, Vec::new(), Duration::ZERO));
    }
    for node in members.iter().copied().filter(|n| *n != shared.id) {
        let silent = silent_for(node);
        let marked = down.contains(&node);
        if !marked && silent > after {
            out.push((node, Verdict::Down, alive.clone(), silent));
        } else if marked && silent <= after / 2 {
            // Heard from well within the detection time: back, not flapping at its edge.
            out.push((node, Verdict::Up, Vec::new(), silent));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
