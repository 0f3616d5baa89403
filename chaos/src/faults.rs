//! One fault round: some traffic, then SIGKILL, SIGSTOP or a cut of one node (the leader
//! on purpose in a share of rounds; as containers: `docker kill`, `docker pause`, `docker
//! network disconnect`), clients moved between nodes while it lasts, the node restarted,
//! resumed or healed, and the cluster waited for (with deadlines) and checked for double
//! owners.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::admin;
use crate::cluster::{Cluster, Cut};
use crate::findings::Findings;
use crate::options::FaultKind;
use crate::rng::Rng;
use crate::shared::{publisher_id, subscriber_id, Shared};
use crate::subscriber::Command;

/// How long the cluster may take to re-form after a fault.
pub const FORM_DEADLINE: Duration = Duration::from_secs(30);
/// How long every subscriber may take to be connected again.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(20);
/// How long a superseded connection may stay open once every node runs.
const OWNER_DEADLINE: Duration = Duration::from_secs(10);
/// Share of rounds whose target is the leader on purpose (others pick any node, the
/// leader included).
const LEADER_PERCENT: u64 = 40;

pub struct Clients {
    pub subscribers: Vec<mpsc::Sender<Command>>,
    pub publishers: Vec<mpsc::Sender<usize>>,
}

pub struct Round<'a> {
    pub number: u32,
    pub of: u32,
    pub cluster: &'a mut Cluster,
    pub clients: &'a Clients,
    pub shared: &'a Shared,
    pub rng: &'a mut Rng,
    pub election_timeout_ms: u64,
    /// The fault kinds to pick from (never empty).
    pub kinds: &'a [FaultKind],
    pub findings: &'a mut Findings,
}

enum Action {
    Subscriber(usize, Command),
    Publisher(usize, usize),
}

impl Round<'_> {
    pub async fn run(self) {
        let Round {
            number,
            of,
            cluster,
            clients,
            shared,
            rng,
            election_timeout_ms,
            kinds,
            findings,
        } = self;
        shared.round.store(number, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.between(500, 1500))).await;
        let n = cluster.len() as u64;
        let leader = cluster.leader().await;
        let on_leader = leader.is_some() && rng.chance(LEADER_PERCENT);
        let target = match leader {
            Some(l) if on_leader => l,
            _ => rng.below(n) as usize,
        };
        let fault = pick_fault(rng, kinds);
        let window = match fault {
            FaultKind::Kill => Duration::from_millis(rng.between(1000, 3000)),
            // Longer than an election takes to start without it.
            FaultKind::Stop => {
                Duration::from_millis(2 * election_timeout_ms + rng.between(500, 2500))
            }
            FaultKind::Cut => {
                Duration::from_millis(2 * election_timeout_ms + rng.between(1000, 3000))
            }
        };
        let actions = plan(rng, clients, n as usize, window);
        let role = if Some(target) == leader {
            "the leader"
        } else {
            "a follower"
        };
        findings.note(format!(
            "round {number}/{of}: {} node {} ({role}{}) for {:.1}s; {} client moves",
            cluster.fault_name(fault),
            target + 1,
            if on_leader { ", chosen as leader" } else { "" },
            window.as_secs_f64(),
            actions.len()
        ));
        let applied = match fault {
            FaultKind::Kill => cluster.kill(target),
            FaultKind::Stop => cluster.stop(target),
            FaultKind::Cut => {
                let from = shared.now();
                shared.cuts().push(Cut {
                    node: target,
                    from,
                    until: None,
                });
                cluster.cut(target)
            }
        };
        if let Err(e) = applied {
            findings.note(format!("round {number}: the fault failed: {e:#}"));
        }
        let start = Instant::now();
        for (at, action) in actions {
            tokio::time::sleep_until((start + at).into()).await;
            match action {
                Action::Subscriber(s, cmd) => {
                    let Command::Move { node, takeover } = cmd;
                    findings.note(format!(
                        "  {} moves to node {}{}",
                        subscriber_id(s as u32),
                        node + 1,
                        if takeover {
                            " while still connected (takeover)"
                        } else {
                            " (disconnects first)"
                        }
                    ));
                    let _ = clients.subscribers[s].try_send(cmd);
                }
                Action::Publisher(p, node) => {
                    findings.note(format!(
                        "  {} moves to node {}",
                        publisher_id(p as u32),
                        node + 1
                    ));
                    let _ = clients.publishers[p].try_send(node);
                }
            }
        }
        tokio::time::sleep_until((start + window).into()).await;
        let restored = match fault {
            FaultKind::Kill => cluster.restart(target).await,
            FaultKind::Stop => cluster.resume(target),
            FaultKind::Cut => {
                let healed = cluster.heal(target);
                let now = shared.now();
                if let Some(cut) = shared.cuts().last_mut() {
                    cut.until = Some(now);
                }
                healed
            }
        };
        match restored {
            Ok(()) => findings.note(format!(
                "round {number}: node {} {}",
                target + 1,
                match fault {
                    FaultKind::Kill => "restarted",
                    FaultKind::Stop => "resumed",
                    FaultKind::Cut => "healed",
                }
            )),
            Err(e) => findings.note(format!(
                "round {number}: node {} did not come back: {e:#}",
                target + 1
            )),
        }
        settle(cluster, shared, findings, &format!("round {number}")).await;
    }
}

/// One kind, drawn as a percentage so that the default pair (kill, stop) draws exactly as
/// the 50 % coin of earlier versions did (a seed keeps its faults); a single kind draws
/// nothing.
fn pick_fault(rng: &mut Rng, kinds: &[FaultKind]) -> FaultKind {
    if kinds.len() <= 1 {
        return kinds.first().copied().unwrap_or(FaultKind::Kill);
    }
    let at = rng.below(100) as usize * kinds.len() / 100;
    kinds[at]
}

/// The client moves of one round: at random instants within the fault window, a few
/// subscribers go to random nodes (half of them while still connected: takeovers), and
/// sometimes a publisher does.
fn plan(
    rng: &mut Rng,
    clients: &Clients,
    nodes: usize,
    window: Duration,
) -> Vec<(Duration, Action)> {
    let subs = clients.subscribers.len() as u64;
    let pubs = clients.publishers.len() as u64;
    let window_ms = window.as_millis() as u64;
    let mut actions = Vec::new();
    if subs > 0 {
        for _ in 0..rng.between(1, (subs / 2).max(1)) {
            let at = Duration::from_millis(rng.below(window_ms.max(1)));
            let s = rng.below(subs) as usize;
            let node = rng.below(nodes as u64) as usize;
            let takeover = rng.chance(50);
            actions.push((at, Action::Subscriber(s, Command::Move { node, takeover })));
        }
    }
    if pubs > 0 && rng.chance(30) {
        let at = Duration::from_millis(rng.below(window_ms.max(1)));
        let p = rng.below(pubs) as usize;
        let node = rng.below(nodes as u64) as usize;
        actions.push((at, Action::Publisher(p, node)));
    }
    actions.sort_by_key(|(at, _)| *at);
    actions
}

/// With every node running again: nodes that died by themselves are noted and restarted,
/// the cluster must re-form, every subscriber be connected again, and no client id be
/// held by two live connections (client side and every node's admin API).
pub async fn settle(cluster: &mut Cluster, shared: &Shared, findings: &mut Findings, label: &str) {
    for (node, status) in cluster.crashed() {
        let line = format!("{label}: node {} exited by itself ({status})", node + 1);
        findings.note(format!(
            "{line}; last log lines:\n{}",
            cluster.log_tail(node)
        ));
        findings.crashes.push(line);
        let _ = cluster.kill(node);
        if let Err(e) = cluster.restart(node).await {
            findings.note(format!("{label}: restarting node {}: {e:#}", node + 1));
        }
    }
    if let Err(e) = cluster.wait_formed(FORM_DEADLINE).await {
        findings.unsettled += 1;
        findings.note(format!("{label}: {e:#}"));
    }
    let topology = cluster.topology();
    let subscribers = shared.ledger().subscribers();
    let end = Instant::now() + RECONNECT_DEADLINE;
    loop {
        let missing: Vec<String> = (0..subscribers)
            .map(subscriber_id)
            .filter(|id| !shared.conns().connected(id, &topology))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= end {
            findings.unconnected += 1;
            findings.note(format!(
                "{label}: not connected after {RECONNECT_DEADLINE:?}: {missing:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = Instant::now() + OWNER_DEADLINE;
    loop {
        let client_side = shared.conns().double_owners(&topology);
        let api_side = admin::double_owners(&topology).await;
        let api_side = match api_side {
            Ok(a) => a,
            Err(e) => {
                findings.note(format!("{label}: admin API: {e:#}"));
                Default::default()
            }
        };
        if client_side.is_empty() && api_side.is_empty() {
            return;
        }
        if Instant::now() >= end {
            for (id, nodes) in client_side {
                let nodes: Vec<usize> = nodes.iter().map(|n| n + 1).collect();
                let what = format!("{label}: open client connections on nodes {nodes:?}");
                findings.note(format!("double owner {id}: {what}"));
                findings.double_owners.entry(id).or_insert(what);
            }
            for (id, nodes) in api_side {
                let nodes: Vec<usize> = nodes.iter().map(|n| n + 1).collect();
                let what = format!("{label}: admin API shows a live connection on nodes {nodes:?}");
                findings.note(format!("double owner {id}: {what}"));
                findings.double_owners.entry(id).or_insert(what);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pair_draws_as_the_old_coin_and_one_kind_draws_nothing() {
        let both = [FaultKind::Kill, FaultKind::Stop];
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..200 {
            let coin = if a.chance(50) {
                FaultKind::Kill
            } else {
                FaultKind::Stop
            };
            assert_eq!(pick_fault(&mut b, &both), coin);
        }
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(pick_fault(&mut a, &[FaultKind::Cut]), FaultKind::Cut);
        assert_eq!(a.next_u64(), b.next_u64(), "a single kind drew a number");
        let all = [FaultKind::Kill, FaultKind::Stop, FaultKind::Cut];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            seen.insert(pick_fault(&mut a, &all) as u8);
        }
        assert_eq!(seen.len(), 3);
    }
}
