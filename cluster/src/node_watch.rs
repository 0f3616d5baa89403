//! The leader's watch over the members: one it has not heard from for longer than
//! `node_down_after_ms` is marked down (`NodeDown`, see `registry/node_down.rs`), and one
//! marked down that it hears from again is marked up (`NodeUp`).
//!
//! Only the leader proposes, never for itself, one command at a time (it awaits each).
//! Contact is what [`crate::peers::Peers`] notes (a Raft answer from the member); a leader
//! counts silence only from when it became leader, so a new leader gives every member the
//! whole detection time again before it marks one down. A member already marked down (the
//! registry says so; a new leader reads the same) is not proposed again.

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
    // Since when this node leads (in the current term).
    let mut leading: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
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
            Some((t, since)) if t == term => since,
            _ => {
                let now = Instant::now();
                leading = Some((term, now));
                now
            }
        };
        for (node, verdict, alive) in verdicts(&shared, since.elapsed(), after) {
            let command = match verdict {
                Verdict::Down => {
                    tracing::warn!(
                        node,
                        after_ms = after.as_millis() as u64,
                        adopters = ?alive,
                        "no contact with a member for node_down_after_ms: marking it down"
                    );
                    Command::NodeDown(pb::NodeDown {
                        node_id: node,
                        stamped_at_ms: unix_millis(),
                        adopters: alive,
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

/// The members to mark down or up now, each with the members alive (sorted, this node
/// included): the adopters a `NodeDown` names. `leading_for`: how long this node leads.
fn verdicts(
    shared: &Shared,
    leading_for: Duration,
    after: Duration,
) -> Vec<(NodeId, Verdict, Vec<NodeId>)> {
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
    let down = shared
        .view
        .read(|r| r.down_nodes().iter().copied().collect::<Vec<_>>());
    let mut out = Vec::new();
    for node in members.iter().copied().filter(|n| *n != shared.id) {
        let silent = silent_for(node);
        let marked = down.contains(&node);
        if !marked && silent > after {
            out.push((node, Verdict::Down, alive.clone()));
        } else if marked && silent <= after / 2 {
            // Heard from well within the detection time: back, not flapping at its edge.
            out.push((node, Verdict::Up, Vec::new()));
        }
    }
    out
}
