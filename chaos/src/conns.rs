//! Every MQTT connection the persistent subscribers opened, as the client side saw it: when
//! it was superseded (a CONNECT with its client id was sent on another connection while it
//! was open), how it ended and whether its node was still the same process then. From this
//! come the takeovers the harness caused and the client-side view of double owners.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::cluster::{Cut, NodeState, Topology};

#[derive(Debug, Clone)]
pub struct Conn {
    pub node: usize,
    /// Seconds since the run started, when the CONNACK came.
    pub opened_at: f64,
    /// The node's incarnation when the connection was accepted.
    pub incarnation: u64,
    /// A CONNECT for the same client id went out on another connection while this was open.
    pub superseded: bool,
    /// Seconds since the run started, when the last PUBLISH arrived on it.
    pub last_message_at: Option<f64>,
    pub closed: Option<Close>,
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

#[derive(Debug)]
pub struct Conns {
    started: Instant,
    next: u64,
    /// Connection number → (client id, record).
    all: BTreeMap<u64, (String, Conn)>,
}

/// Takeovers as the client side saw them.
#[derive(Debug, Default, Clone)]
pub struct Takeovers {
    /// Per client id: superseded connections the server closed while their node lived on,
    /// and connections the server closed with 0x8E although nothing superseded them.
    pub caused: BTreeMap<String, u64>,
    /// Superseded connections whose node was SIGKILLed before they ended: the takeover
    /// event may or may not have been emitted first.
    pub voided: BTreeMap<String, u64>,
    /// Connections the server closed with 0x8E (session taken over) although no CONNECT
    /// for their id had been sent since they were accepted: taken over by an older CONNECT
    /// that a node processed late (counted in `caused` too).
    pub unexpected: u64,
    /// Which, for the report file.
    pub unexpected_examples: Vec<String>,
    /// Superseded connections the server closed with another reason than 0x8E.
    pub wrong_reason: u64,
}

const SESSION_TAKEN_OVER: u8 = 0x8E;

impl Conns {
    pub fn new(started: Instant) -> Conns {
        Conns {
            started,
            next: 0,
            all: BTreeMap::new(),
        }
    }

    /// A CONNECT for `client` is about to be sent: every connection of it still open is
    /// superseded. Returns the connections this marked, for [`Conns::not_sent`].
    pub fn connecting(&mut self, client: &str) -> Vec<u64> {
        let mut marked = Vec::new();
        for (number, (id, conn)) in self.all.iter_mut() {
            if id == client && conn.closed.is_none() && !conn.superseded {
                conn.superseded = true;
                marked.push(*number);
            }
        }
        marked
    }

    /// The CONNECT that marked `marked` failed without being known to have superseded
    /// them (see `Shared::superseded_nothing`).
    pub fn not_sent(&mut self, marked: &[u64]) {
        for number in marked {
            if let Some((_, conn)) = self.all.get_mut(number) {
                conn.superseded = false;
            }
        }
    }

    /// A CONNACK accepted a new connection; its number.
    pub fn opened(&mut self, client: &str, node: usize, incarnation: u64) -> u64 {
        self.next += 1;
        self.all.insert(
            self.next,
            (
                client.to_owned(),
                Conn {
                    node,
                    opened_at: self.started.elapsed().as_secs_f64(),
                    incarnation,
                    superseded: false,
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

    pub fn takeovers(&self) -> Takeovers {
        let mut t = Takeovers::default();
        for (id, c) in self.all.values() {
            let Some(close) = &c.closed else { continue };
            if close.by_us {
                continue;
            }
            if c.superseded {
                if close.incarnation == c.incarnation {
                    *t.caused.entry(id.clone()).or_default() += 1;
                    if close.reason != Some(SESSION_TAKEN_OVER) {
                        t.wrong_reason += 1;
                    }
                } else {
                    *t.voided.entry(id.clone()).or_default() += 1;
                }
            } else if close.reason == Some(SESSION_TAKEN_OVER) {
                // Still a takeover the harness caused, by a CONNECT it sent earlier (one a
                // node read late, after the client had given up on it): it owes an event.
                *t.caused.entry(id.clone()).or_default() += 1;
                t.unexpected += 1;
                t.unexpected_examples.push(format!(
                    "{id}: the connection on node {} (from {:.1}s) got 0x8E at {:.1}s",
                    c.node + 1,
                    c.opened_at,
                    close.at
                ));
            }
        }
        t
    }

    /// Every connection of `client`, one line each, for the report file.
    pub fn history(&self, client: &str) -> Vec<String> {
        self.all
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
                format!(
                    "conn {n}: node {} from {:.1}s{}, {end}",
                    c.node + 1,
                    c.opened_at,
                    if c.superseded { ", superseded" } else { "" }
                )
            })
            .collect()
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
            reason: Some(SESSION_TAKEN_OVER),
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

    #[test]
    fn takeovers_count_server_kicks_of_superseded_and_of_ghost_taken_connections() {
        let mut c = Conns::new(Instant::now());
        // A moves to B while open: A superseded, kicked with 0x8E by the same node process.
        let a = c.opened("x", 0, 0);
        assert_eq!(c.connecting("x"), [a]);
        let b = c.opened("x", 1, 0);
        set(&mut c, a, 0.0, None, Some(2.0));
        // B kicked with 0x8E with no CONNECT after it: an older CONNECT read late.
        set(&mut c, b, 1.0, None, Some(3.0));
        // C superseded, but its node was killed before it ended: uncertain.
        let d = c.opened("y", 0, 0);
        c.connecting("y");
        // A CONNECT whose TCP connection was refused supersedes nothing.
        let refused = c.opened("w", 0, 0);
        let marked = c.connecting("w");
        c.not_sent(&marked);
        assert!(!c.all[&refused].1.superseded);
        c.all.get_mut(&d).unwrap().1.closed = Some(Close {
            at: 4.0,
            by_us: false,
            reason: None,
            incarnation: 1,
        });
        // Closed by the harness: never a takeover.
        let e = c.opened("z", 0, 0);
        c.connecting("z");
        c.all.get_mut(&e).unwrap().1.closed = Some(Close {
            at: 4.0,
            by_us: true,
            reason: None,
            incarnation: 0,
        });
        let t = c.takeovers();
        assert_eq!(t.caused.get("x"), Some(&2));
        assert_eq!(t.unexpected, 1);
        assert_eq!(t.voided.get("y"), Some(&1));
        assert_eq!(t.caused.get("y"), None);
        assert_eq!(t.caused.get("z"), None);
        assert_eq!(t.wrong_reason, 0);
    }
}
