//! The verdict: one line per invariant (`PASS name: ...` / `FAIL name: ...`) and, last,
//! the JSON line issue 14 specifies.

use std::collections::BTreeSet;

use crate::conns::Takeovers;
use crate::events::TakeoverEvents;
use crate::findings::Findings;
use crate::ledger::{Duplicates, Loss};
use crate::node_ip::NodeIps;

pub struct Inputs<'a> {
    pub rounds: u32,
    pub seed: u64,
    pub subscribers: u32,
    pub acked: u64,
    pub unacked: u64,
    pub received: u64,
    pub loss: &'a Loss,
    pub duplicates: Duplicates,
    pub findings: &'a Findings,
    /// None: equal; Some(how they differ) otherwise.
    pub registries: Option<String>,
    pub takeovers: &'a Takeovers,
    pub events: &'a TakeoverEvents,
    pub sessions_lost: u64,
    pub node_ips: &'a NodeIps,
}

pub struct Verdict {
    pub lines: Vec<String>,
    pub json: String,
    pub ok: bool,
}

pub fn verdict(i: &Inputs) -> Verdict {
    let mut lines = Vec::new();
    let mut ok = true;
    let mut check = |pass: bool, name: &str, detail: String| {
        ok &= pass;
        lines.push(format!(
            "{} {name}: {detail}",
            if pass { "PASS" } else { "FAIL" }
        ));
    };

    check(
        i.acked > 0 && i.received > 0,
        "traffic",
        format!(
            "{} QoS 1 messages acknowledged ({} sent without a success PUBACK), {} copies received by {} persistent subscribers",
            i.acked, i.unacked, i.received, i.subscribers
        ),
    );
    check(
        i.loss.pairs == 0,
        "lost",
        format!(
            "{} (subscriber, message) pairs acknowledged and never received ({} distinct messages); by subscriber {:?}; by round acknowledged {:?}",
            i.loss.pairs, i.loss.messages, i.loss.by_subscriber, i.loss.by_round
        ),
    );
    check(
        i.duplicates.violations() == 0,
        "duplicates",
        format!(
            "{} beyond QoS 1 rules ({} on the connection that already had the message, {} on a later connection without DUP); {} allowed redeliveries (DUP, on a later connection)",
            i.duplicates.violations(),
            i.duplicates.same_connection,
            i.duplicates.without_dup,
            i.duplicates.allowed
        ),
    );
    check(
        i.findings.double_owners.is_empty(),
        "double_owners",
        format!(
            "{} client ids held by two live connections at once (at a settle check, or a superseded connection still delivering over 1 s after its successor was accepted): {:?}",
            i.findings.double_owners.len(),
            i.findings.double_owners
        ),
    );
    check(
        i.registries.is_none(),
        "registries_equal",
        match &i.registries {
            None => "every node's GET /api/v1/clients and GET /api/v1/cluster agree".to_owned(),
            Some(diff) => diff.clone(),
        },
    );
    let (matched, mismatches) = takeover_match(i.takeovers, i.events);
    let t = i.takeovers;
    check(
        matched && t.spurious == 0 && t.wrong_reason == 0,
        "takeover_events",
        format!(
            "$events takeovered {}, $EVENT other_kicked {}, takeovers the harness caused (0x8E kicks) {} (+{} whose node was SIGKILLed before the end was seen, either way allowed), of which {} came from a CONNECT that got no success CONNACK and was registered after all, and {} no CONNECT explains (must be 0); {} superseded connections ended by their node's down mark first (0x9C, no takeover); {} superseded connections closed otherwise without 0x8E (must be 0); mismatches {:?}",
            i.events.total_dollar_events(),
            i.events.total_dollar_event(),
            t.caused_total(),
            t.voided_total(),
            t.late,
            t.spurious,
            t.marked_first,
            t.wrong_reason,
            mismatches
        ),
    );
    check(
        i.node_ips.wrong == 0,
        "node_ip",
        format!(
            "{} disconnect events (node, nodeIp) and {} registry rows (node_ip) checked against {} distinct node addresses; {} named a node by another address: {:?}",
            i.node_ips.events,
            i.node_ips.rows,
            i.node_ips.distinct,
            i.node_ips.wrong,
            i.node_ips.examples
        ),
    );
    check(
        i.sessions_lost == 0,
        "session_present",
        format!(
            "{} reconnects of a persistent subscriber answered Session Present = 0",
            i.sessions_lost
        ),
    );
    check(
        i.findings.unsettled == 0 && i.findings.crashes.is_empty() && i.findings.unconnected == 0,
        "cluster_settled",
        format!(
            "{} settle checks without a formed cluster in time, {} without every subscriber connected in time, nodes that exited by themselves: {:?}",
            i.findings.unsettled, i.findings.unconnected, i.findings.crashes
        ),
    );

    let json = format!(
        "{{\"rounds\":{},\"seed\":{},\"published_acked\":{},\"lost\":{},\"duplicates\":{},\"double_owners\":{},\"registries_equal\":{},\"takeover_events\":{},\"takeovers\":{},\"node_ip_events\":{},\"node_ip_wrong\":{},\"ok\":{}}}",
        i.rounds,
        i.seed,
        i.acked,
        i.loss.pairs,
        i.duplicates.violations(),
        i.findings.double_owners.len(),
        i.registries.is_none(),
        i.events.total_dollar_events(),
        i.takeovers.caused_total(),
        i.node_ips.events,
        i.node_ips.wrong,
        ok
    );
    Verdict { lines, json, ok }
}

/// Per client id, each dialect's takeover events must number at least the takeovers the
/// harness caused and at most those plus the ones a SIGKILL made uncertain.
fn takeover_match(t: &Takeovers, e: &TakeoverEvents) -> (bool, Vec<String>) {
    let ids: BTreeSet<&String> = t
        .caused
        .keys()
        .chain(t.voided.keys())
        .chain(e.dollar_events.keys())
        .chain(e.dollar_event.keys())
        .collect();
    let mut mismatches = Vec::new();
    for id in ids {
        let caused = t.caused.get(id).copied().unwrap_or(0);
        let voided = t.voided.get(id).copied().unwrap_or(0);
        let a = e.dollar_events.get(id).copied().unwrap_or(0);
        let b = e.dollar_event.get(id).copied().unwrap_or(0);
        let fits = |n: u64| n >= caused && n <= caused + voided;
        if !fits(a) || !fits(b) {
            mismatches.push(format!(
                "{id}: caused {caused} (+{voided} uncertain), $events {a}, $EVENT {b}"
            ));
        }
    }
    (mismatches.is_empty() && e.unreadable == 0, mismatches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_events_must_match_per_client_within_the_uncertain_ones() {
        let mut t = Takeovers::default();
        t.caused.insert("a".into(), 2);
        t.voided.insert("a".into(), 1);
        let mut e = TakeoverEvents::default();
        e.dollar_events.insert("a".into(), 3);
        e.dollar_event.insert("a".into(), 2);
        assert!(takeover_match(&t, &e).0);
        e.dollar_event.insert("a".into(), 1);
        assert!(!takeover_match(&t, &e).0);
        e.dollar_event.insert("a".into(), 2);
        e.dollar_events.insert("b".into(), 1);
        let (ok, why) = takeover_match(&t, &e);
        assert!(!ok);
        assert!(why[0].starts_with("b:"), "{why:?}");
    }
}
