//! The takeovers the harness caused, from the client side's records, to be matched with
//! the takeover events (chaos/README.md, "takeover_events").
//!
//! What the client side knows for certain: a connection the server closed with DISCONNECT
//! 0x8E (Session taken over) while its node was the same process was taken over, and the
//! cluster owes one takeover event for it. A connection open when a CONNECT for its client
//! id was sent that then got a success CONNACK was superseded: the new registration
//! committed, so the old connection must end with 0x8E, unless the cluster had ended it
//! first by marking its node down (0x9C; its event is a `node_down` one). A CONNECT without
//! a success CONNACK (refused 0x88 after `connect_commit_timeout_ms`, unanswered within
//! the harness's wait, its connection failed) may or may not have been registered: a
//! registration that commits after its CONNECT was refused or abandoned takes the session
//! over before its node releases it again, so its 0x8E kick counts, and its absence is no
//! fault.

use std::collections::BTreeMap;

use super::{Conns, Outcome, Superseded};
use crate::mqtt::CONNECT_TIMEOUT_SECS;

const SESSION_TAKEN_OVER: u8 = 0x8E;
/// Use Another Server: the cluster marked the connection's node down (`node_down`).
const USE_ANOTHER_SERVER: u8 = 0x9C;
/// How long after it was sent a CONNECT without a success CONNACK may still take a session
/// over: the harness waits up to its connect timeout for the answer, and what the node
/// proposed by then commits or fails within the cluster's proposal timeout (5 s).
const LATE_COMMIT_SECS: f64 = CONNECT_TIMEOUT_SECS as f64 + 10.0;

#[derive(Debug, Default, Clone)]
pub struct Takeovers {
    /// Per client id: connections the server closed with 0x8E while their node lived on.
    pub caused: BTreeMap<String, u64>,
    /// Per client id: (perhaps) superseded connections, or 0x8E kicks, whose node was
    /// SIGKILLed before the end was seen: the takeover event may or may not have gone out.
    pub voided: BTreeMap<String, u64>,
    /// 0x8E kicks of connections no accepted CONNECT superseded, each explained by a CONNECT
    /// of the client id that got no success CONNACK and was registered after all (counted
    /// in `caused`).
    pub late: u64,
    /// 0x8E kicks that no CONNECT of the harness explains (counted in `caused`): a fault.
    pub spurious: u64,
    /// Superseded connections the server closed with 0x9C: the cluster marked their node
    /// down before the new registration committed (in Raft order the mark ended them, with
    /// its `node_down` event; the new connection then resumed the adopted session).
    pub marked_first: u64,
    /// Superseded connections the server closed with another reason (or none) while their
    /// node lived on: a fault.
    pub wrong_reason: u64,
    /// (client id, what), one per late, spurious, marked_first and wrong_reason
    /// connection, for the report file.
    pub examples: Vec<(String, String)>,
}

impl Takeovers {
    pub fn caused_total(&self) -> u64 {
        self.caused.values().sum()
    }

    pub fn voided_total(&self) -> u64 {
        self.voided.values().sum()
    }
}

impl Conns {
    pub fn takeovers(&self) -> Takeovers {
        let mut t = Takeovers::default();
        for (n, (id, c)) in &self.all {
            let Some(close) = &c.closed else { continue };
            if close.by_us {
                continue;
            }
            let kicked = close.reason == Some(SESSION_TAKEN_OVER);
            let what = |kind: &str| {
                (
                    id.clone(),
                    format!(
                        "{kind}: conn {n} on node {} (from {:.1}s) ended at {:.1}s{}",
                        c.node + 1,
                        c.opened_at,
                        close.at,
                        close
                            .reason
                            .map(|r| format!(" with 0x{r:02X}"))
                            .unwrap_or_else(|| " without a DISCONNECT".to_owned())
                    ),
                )
            };
            if close.incarnation != c.incarnation {
                if kicked || c.superseded != Superseded::No {
                    *t.voided.entry(id.clone()).or_default() += 1;
                }
                continue;
            }
            if kicked {
                *t.caused.entry(id.clone()).or_default() += 1;
                match c.superseded {
                    Superseded::Yes => {}
                    Superseded::Maybe => {
                        t.late += 1;
                        t.examples.push(what("a CONNECT sent while it was open got no success CONNACK, and was registered after all"));
                    }
                    Superseded::No if self.unanswered_before(id, close.at) => {
                        t.late += 1;
                        t.examples.push(what("a CONNECT sent before it was opened got no success CONNACK, and was registered after it"));
                    }
                    Superseded::No => {
                        t.spurious += 1;
                        t.examples
                            .push(what("0x8E that no CONNECT of the harness explains"));
                    }
                }
            } else if c.superseded == Superseded::Yes {
                if close.reason == Some(USE_ANOTHER_SERVER) {
                    t.marked_first += 1;
                    t.examples
                        .push(what("superseded, but its node was marked down first"));
                } else {
                    t.wrong_reason += 1;
                    t.examples
                        .push(what("superseded, closed by its node without 0x8E"));
                }
            }
        }
        t
    }

    /// Whether `client` sent a CONNECT that got no success CONNACK (or none yet) within
    /// [`LATE_COMMIT_SECS`] before `at`.
    fn unanswered_before(&self, client: &str, at: f64) -> bool {
        self.attempts.iter().any(|a| {
            a.client == client
                && matches!(a.outcome, Outcome::Failed(_) | Outcome::Pending)
                && a.sent_at <= at
                && at - a.sent_at <= LATE_COMMIT_SECS
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Close;
    use super::*;
    use std::time::Instant;

    fn close(c: &mut Conns, n: u64, at: f64, reason: Option<u8>, incarnation: u64) {
        c.all.get_mut(&n).expect("conn").1.closed = Some(Close {
            at,
            by_us: false,
            reason,
            incarnation,
        });
    }

    fn sent_at(c: &mut Conns, at: f64) {
        c.attempts.last_mut().expect("attempt").sent_at = at;
    }

    #[test]
    fn an_accepted_connect_takes_over_what_was_open_and_owes_its_event() {
        let mut c = Conns::new(Instant::now());
        let first = c.connecting("x", 0);
        let a = c.accepted(first, 0);
        let second = c.connecting("x", 1);
        assert_eq!(c.all[&a].1.superseded, Superseded::Maybe);
        let b = c.accepted(second, 0);
        assert_eq!(c.all[&a].1.superseded, Superseded::Yes);
        assert_eq!(c.all[&b].1.superseded, Superseded::No);
        close(&mut c, a, 2.0, Some(SESSION_TAKEN_OVER), 0);
        let t = c.takeovers();
        assert_eq!(t.caused.get("x"), Some(&1));
        assert_eq!((t.late, t.spurious, t.wrong_reason), (0, 0, 0));
    }

    #[test]
    fn a_superseded_connection_ended_by_its_node_s_down_mark_is_no_takeover() {
        let mut c = Conns::new(Instant::now());
        let first = c.connecting("x", 0);
        let a = c.accepted(first, 0);
        let second = c.connecting("x", 1);
        c.accepted(second, 0);
        close(&mut c, a, 2.0, Some(USE_ANOTHER_SERVER), 0);
        let t = c.takeovers();
        assert_eq!(t.caused.get("x"), None);
        assert_eq!((t.marked_first, t.wrong_reason), (1, 0));
        // Without any DISCONNECT while its node lived on: a fault.
        close(&mut c, a, 2.0, None, 0);
        assert_eq!(c.takeovers().wrong_reason, 1);
        // Its node was SIGKILLed: either way.
        close(&mut c, a, 2.0, None, 1);
        let t = c.takeovers();
        assert_eq!((t.wrong_reason, t.voided.get("x")), (0, Some(&1)));
    }

    #[test]
    fn a_connect_without_a_success_connack_may_or_may_not_take_over() {
        let mut c = Conns::new(Instant::now());
        let first = c.connecting("x", 0);
        let a = c.accepted(first, 0);
        // Refused with 0x88 (or unanswered): the open connection is perhaps superseded.
        let refused = c.connecting("x", 1);
        c.failed(refused, "CONNACK refused: 0x88".into(), false);
        assert_eq!(c.all[&a].1.superseded, Superseded::Maybe);
        // Not kicked (the registration never committed), later ended by a down mark.
        close(&mut c, a, 9.0, Some(USE_ANOTHER_SERVER), 0);
        let t = c.takeovers();
        assert_eq!(
            (t.caused.get("x"), t.wrong_reason, t.marked_first),
            (None, 0, 0)
        );
        // Kicked by it after all (a late commit): a takeover, explained.
        close(&mut c, a, 9.0, Some(SESSION_TAKEN_OVER), 0);
        let t = c.takeovers();
        assert_eq!((t.caused.get("x"), t.late, t.spurious), (Some(&1), 1, 0));
    }

    #[test]
    fn a_connection_taken_over_by_a_connect_sent_before_it_was_opened() {
        let mut c = Conns::new(Instant::now());
        // Sent to a stopped node at 10 s, given up; the client connects elsewhere.
        let abandoned = c.connecting("x", 2);
        sent_at(&mut c, 10.0);
        c.failed(abandoned, "no CONNACK".into(), false);
        let next = c.connecting("x", 0);
        sent_at(&mut c, 13.5);
        let b = c.accepted(next, 0);
        // The resumed node registered the abandoned CONNECT: b is kicked.
        close(&mut c, b, 14.0, Some(SESSION_TAKEN_OVER), 0);
        let t = c.takeovers();
        assert_eq!((t.caused.get("x"), t.late, t.spurious), (Some(&1), 1, 0));
        // Long after any CONNECT that could commit late: nothing explains it.
        close(
            &mut c,
            b,
            14.0 + LATE_COMMIT_SECS,
            Some(SESSION_TAKEN_OVER),
            0,
        );
        let t = c.takeovers();
        assert_eq!((t.late, t.spurious), (0, 1));
    }

    #[test]
    fn a_connect_refused_at_tcp_supersedes_nothing_and_harness_closes_are_no_takeovers() {
        let mut c = Conns::new(Instant::now());
        let first = c.connecting("x", 0);
        let a = c.accepted(first, 0);
        let refused = c.connecting("x", 1);
        c.failed(refused, "TCP connection refused".into(), true);
        assert_eq!(c.all[&a].1.superseded, Superseded::No);
        // A later kick has no CONNECT to explain it.
        close(&mut c, a, 3.0, Some(SESSION_TAKEN_OVER), 0);
        assert_eq!(c.takeovers().spurious, 1);
        // Closed by the harness: never a takeover.
        let other = c.connecting("z", 0);
        let z = c.accepted(other, 0);
        let next = c.connecting("z", 1);
        c.accepted(next, 0);
        c.all.get_mut(&z).unwrap().1.closed = Some(Close {
            at: 4.0,
            by_us: true,
            reason: None,
            incarnation: 0,
        });
        let t = c.takeovers();
        assert_eq!(t.caused.get("z"), None);
        assert_eq!(t.wrong_reason, 0);
    }
}
