//! Every MQTT connection the clients opened and every CONNECT they sent, as the client side
//! saw them: which connections a CONNECT for the same client id superseded (for certain:
//! it was accepted; or perhaps: it got no success CONNACK, and the server may have
//! registered it all the same), how each connection ended and whether its node was still
//! the same process then. From this come the takeovers the harness caused (`takeovers`)
//! and the client-side view of double owners.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::cluster::{Cut, NodeState, Topology};

mod takeovers;

pub use takeovers::Takeovers;

#[derive(Debug, Clone)]
pub struct Conn {
    pub node: usize,
    /// Seconds since the run started, when the CONNACK came.
    pub opened_at: f64,
    /// The node's incarnation when the connection was accepted.
    pub incarnation: u64,
    /// Whether a CONNECT for the same client id, sent on another connection while this one
    /// was open, took it over.
    pub superseded: Superseded,
    /// Seconds since the run started, when the last PUBLISH arrived on it.
    pub last_message_at: Option<f64>,
    pub closed: Option<Close>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Superseded {
    No,
    /// A CONNECT for its client id was sent while it was open and got no success CONNACK
    /// (yet): refused (0x88 when its registration did not commit in time), unanswered, or
    /// its connection failed. Its registration may still have committed (a late commit
    /// takes the session over before the node releases it again), or not.
    Maybe,
    /// A CONNECT for its client id sent while it was open was accepted: that registration
    /// committed after this connection's, so this one was taken over, unless the cluster
    /// had ended it first (its node marked down, 0x9C).
    Yes,
}

#[derive(Debug, Clone)]
pub struct Close {
    /// Seconds since the run started.
    pub at: f64,
    /// The harness closed it (DISCONNECT sent); anything else is the server or the network.
    pub by_us: bool,
    /// The reason code of the server's DISCONNECT, if one came.
    pub reason: Option<u8>,
    /// The node's incarnation when the end was seen (moved on: the node was SIGKILLed).
    pub incarnation: u64,
}

/// One CONNECT a client sent, and what came of it.
#[derive(Debug, Clone)]
struct Attempt {
    client: String,
    node: usize,
    /// Seconds since the run started.
    sent_at: f64,
    /// The connections of the client open when it was sent (not yet certainly superseded),
    /// each with whether it was marked `Maybe` before.
    open: Vec<(u64, Superseded)>,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Pending,
    /// A success CONNACK: the connection with this number.
    Accepted(u64),
    /// No success CONNACK, for this reason (the server may have registered it).
    Failed(String),
    /// The TCP connection was refused: no server read it.
    NeverRead,
}

/// A CONNECT on its way, as [`Conns::connecting`] recorded it.
#[derive(Debug)]
pub struct Connecting(usize);

#[derive(Debug)]
pub struct Conns {
    started: Instant,
    next: u64,
    /// Connection number → (client id, record).
    all: BTreeMap<u64, (String, Conn)>,
    /// Every CONNECT, in the order sent.
    attempts: Vec<Attempt>,
}

impl Conns {
    pub fn new(started: Instant) -> Conns {
        Conns {
            started,
            next: 0,
            all: BTreeMap::new(),
            attempts: Vec::new(),
        }
    }

    /// A CONNECT for `client` to `node` is about to be sent: every connection of it still
    /// open may be superseded by it from now on.
    pub fn connecting(&mut self, client: &str, node: usize) -> Connecting {
        let mut open = Vec::new();
        for (number, (id, conn)) in self.all.iter_mut() {
            if id == client && conn.closed.is_none() && conn.superseded != Superseded::Yes {
                open.push((*number, conn.superseded));
                conn.superseded = Superseded::Maybe;
            }
        }
        self.attempts.push(Attempt {
            client: client.to_owned(),
            node,
            sent_at: self.started.elapsed().as_secs_f64(),
            open,
            outcome: Outcome::Pending,
        });
        Connecting(self.attempts.len() - 1)
    }

    /// The CONNECT got a success CONNACK: a new connection, whose number this returns; the
    /// connections open when it was sent were taken over (see [`Superseded::Yes`]).
    pub fn accepted(&mut self, attempt: Connecting, incarnation: u64) -> u64 {
        let (client, node) = {
            let a = &self.attempts[attempt.0];
            (a.client.clone(), a.node)
        };
        let number = self.opened(&client, node, incarnation);
        let a = &mut self.attempts[attempt.0];
        a.outcome = Outcome::Accepted(number);
        for (conn, _) in &a.open {
            if let Some((_, c)) = self.all.get_mut(conn) {
                c.superseded = Superseded::Yes;
            }
        }
        number
    }

    /// The CONNECT got no success CONNACK (`why`). `never_read`: its TCP connection was
    /// refused (the node is down), so no server read it and it superseded nothing;
    /// otherwise the connections it marked stay `Maybe`.
    pub fn failed(&mut self, attempt: Connecting, why: String, never_read: bool) {
        let a = &mut self.attempts[attempt.0];
        if never_read {
            a.outcome = Outcome::NeverRead;
            for (conn, before) in &a.open {
                if let Some((_, c)) = self.all.get_mut(conn) {
                    if c.superseded == Superseded::Maybe {
                        c.superseded = *before;
                    }
                }
            }
        } else {
            a.outcome = Outcome::Failed(why);
        }
    }

    fn opened(&mut self, client: &str, node: usize, incarnation: u64) -> u64 {
        self.next += 1;
        self.all.insert(
            self.next,
            (
                client.to_owned(),
                Conn {
                    node,
                    opened_at: self.started.elapsed().as_secs_f64(),
                    incarnation,
                    superseded: Superseded::No,
                    last_message_at: None,
                    closed: None,
                },
            ),
        );
        self.next
    }

    /// A PUBLISH arrived on connection `conn`: it is live now.
    pub fn message(&mut self, conn: u64) {
        let at = self.started.elapsed().as_secs_f64();
        if let Some((_, c)) = self.all.get_mut(&conn) {
            c.last_message_at = Some(at);
        }
    }

    /// Client ids whose older connection still got a PUBLISH more than `grace` seconds
    /// after a newer one of theirs was accepted, while the newer one was open: two live
    /// connections at once. (The old node learns of the new registration through Raft, a
    /// heartbeat and an apply later: the grace covers that.) While the old node is cut off
    /// from the others it cannot learn it, and issue 14 wants its existing connections to
    /// keep serving local traffic: the grace then runs from the heal; the deliveries of
    /// such cut-off connections are counted apart (second map).
    pub fn overlaps(
        &self,
        grace: f64,
        cuts: &[Cut],
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut found = BTreeMap::new();
        let mut while_cut = BTreeMap::new();
        for (n_old, (id, old)) in &self.all {
            let Some(last) = old.last_message_at else {
                continue;
            };
            for (n_new, (id_new, new)) in self.all.range(n_old + 1..) {
                let open_then = new.closed.as_ref().is_none_or(|c| c.at >= last);
                if id_new != id || !open_then || last <= new.opened_at + grace {
                    continue;
                }
                // The end of the latest cut of the old node that began before `last`.
                let healed = cuts
                    .iter()
                    .filter(|c| c.node == old.node && c.from <= last)
                    .map(|c| c.until.unwrap_or(f64::INFINITY))
                    .fold(f64::NEG_INFINITY, f64::max);
                let text = format!(
                    "conn {n_old} on node {} still got a message at {last:.1}s, {:.1}s after conn {n_new} on node {} was accepted",
                    old.node + 1,
                    last - new.opened_at,
                    new.node + 1
                );
                if last > healed.max(new.opened_at) + grace {
                    found.entry(id.clone()).or_insert(text);
                } else {
                    while_cut.entry(id.clone()).or_insert(text);
                }
            }
        }
        (found, while_cut)
    }

    pub fn closed(&mut self, conn: u64, by_us: bool, reason: Option<u8>, topology: &Topology) {
        let at = self.started.elapsed().as_secs_f64();
        if let Some((_, c)) = self.all.get_mut(&conn) {
            if c.closed.is_none() {
                c.closed = Some(Close {
                    at,
                    by_us,
                    reason,
                    incarnation: topology.incarnation(c.node),
                });
            }
        }
    }

    /// Client ids with two or more open connections on nodes that run (not stopped: a
    /// stopped node cannot close anything until it resumes).
    pub fn double_owners(&self, topology: &Topology) -> BTreeMap<String, Vec<usize>> {
        let mut open: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (id, c) in self.all.values() {
            if c.closed.is_none() && topology.state(c.node) == NodeState::Running {
                open.entry(id.clone()).or_default().push(c.node);
            }
        }
        open.retain(|_, nodes| nodes.len() > 1);
        open
    }

    /// Whether `client` has an open connection on a running node.
    pub fn connected(&self, client: &str, topology: &Topology) -> bool {
        self.all.values().any(|(id, c)| {
            id == client && c.closed.is_none() && topology.state(c.node) == NodeState::Running
        })
    }

    /// Every connection of `client` and every CONNECT it sent, in time order, one line
    /// each, for the report file.
    pub fn history(&self, client: &str) -> Vec<String> {
        let mut lines: Vec<(f64, String)> = self
            .all
            .iter()
            .filter(|(_, (id, _))| id == client)
            .map(|(n, (_, c))| {
                let end = match &c.closed {
                    None => "open".to_owned(),
                    Some(close) => format!(
                        "closed at {:.1}s by {}{}{}",
                        close.at,
                        if close.by_us {
                            "the harness"
                        } else {
                            "the server/network"
                        },
                        close
                            .reason
                            .map(|r| format!(", DISCONNECT 0x{r:02X}"))
                            .unwrap_or_default(),
                        if close.incarnation != c.incarnation {
                            ", node killed meanwhile"
                        } else {
                            ""
                        }
                    ),
                };
                let superseded = match c.superseded {
                    Superseded::No => "",
                    Superseded::Maybe => ", perhaps superseded",
                    Superseded::Yes => ", superseded",
                };
                (
                    c.opened_at,
                    format!(
                        "conn {n}: node {} from {:.1}s{superseded}, {end}",
                        c.node + 1,
                        c.opened_at
                    ),
                )
            })
            .collect();
        lines.extend(
            self.attempts
                .iter()
                .filter(|a| a.client == client && !matches!(a.outcome, Outcome::Accepted(_)))
                .map(|a| {
                    let what = match &a.outcome {
                        Outcome::Pending => "no answer yet".to_owned(),
                        Outcome::Failed(why) => why.clone(),
                        Outcome::NeverRead => "TCP connection refused".to_owned(),
                        Outcome::Accepted(_) => unreachable!("filtered"),
                    };
                    (
                        a.sent_at,
                        format!(
                            "CONNECT to node {} at {:.1}s: {what}",
                            a.node + 1,
                            a.sent_at
                        ),
                    )
                }),
        );
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        lines.into_iter().map(|(_, l)| l).collect()
    }

    pub fn count(&self) -> u64 {
        self.all.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(c: &mut Conns, n: u64, opened: f64, last: Option<f64>, closed: Option<f64>) {
        let conn = &mut c.all.get_mut(&n).expect("conn").1;
        conn.opened_at = opened;
        conn.last_message_at = last;
        conn.closed = closed.map(|at| Close {
            at,
            by_us: false,
            reason: Some(0x8E),
            incarnation: 0,
        });
    }

    #[test]
    fn an_old_connection_delivering_after_the_new_one_was_accepted_is_a_double_owner() {
        let mut c = Conns::new(Instant::now());
        let a = c.opened("x", 0, 0);
        let b = c.opened("x", 1, 0);
        // Within the grace: the old node had not applied the new registration yet.
        set(&mut c, a, 0.0, Some(5.5), Some(5.6));
        set(&mut c, b, 5.0, None, None);
        assert!(c.overlaps(1.0, &[]).0.is_empty());
        // 1.6 s later, with the new one still open.
        set(&mut c, a, 0.0, Some(6.6), Some(6.7));
        assert!(c.overlaps(1.0, &[]).0.contains_key("x"));
        // The old node was cut off until 6.0 s: excused, counted apart.
        let cut = Cut {
            node: 0,
            from: 4.0,
            until: Some(6.0),
        };
        let (found, while_cut) = c.overlaps(1.0, &[cut]);
        assert!(found.is_empty());
        assert!(while_cut.contains_key("x"));
        // Healed at 5.0 s: 1.6 s later is a double owner again.
        let cut = Cut {
            until: Some(5.0),
            ..cut
        };
        assert!(c.overlaps(1.0, &[cut]).0.contains_key("x"));
        // The new one had ended by then: one live connection at a time.
        set(&mut c, b, 5.0, None, Some(6.0));
        assert!(c.overlaps(1.0, &[]).0.is_empty());
        // Another client's connection is no overlap.
        let other = c.opened("y", 1, 0);
        set(&mut c, other, 1.0, None, None);
        assert!(c.overlaps(1.0, &[]).0.is_empty());
    }
}
