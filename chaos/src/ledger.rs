//! What the publishers had acknowledged and what each persistent subscriber received, and
//! the two message invariants computed from them: loss and duplicates.
//!
//! Every payload is `p<publisher>:<sequence>`; a publisher never sends one twice (after a
//! failed PUBACK wait it moves on to the next sequence on a new connection), so any second
//! copy at a subscriber comes from the broker.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

/// A message: (publisher, sequence).
pub type MessageId = (u32, u64);

/// One received copy.
#[derive(Debug, Clone, Copy)]
struct Copy {
    /// The connection (harness-wide number) it arrived on.
    conn: u64,
    dup: bool,
    /// When the harness read it (seconds since the run started).
    at: f64,
}

#[derive(Debug)]
pub struct Ledger {
    started: Instant,
    /// Acknowledged (PUBACK 0x00 or 0x10) messages: the round they were acknowledged in
    /// and when (seconds since the run started).
    acked: HashMap<MessageId, (u32, f64)>,
    /// PUBLISHes sent without a success PUBACK (timed out, refused, connection lost).
    pub unacked: u64,
    /// Refusals by reason code (e.g. 0x80, 0x97), for the report.
    pub refused: BTreeMap<u8, u64>,
    received: Vec<HashMap<MessageId, Vec<Copy>>>,
    /// Payloads that did not parse (would mean the broker mangled one).
    pub malformed: u64,
}

pub fn payload(publisher: u32, seq: u64) -> String {
    format!("p{publisher}:{seq}")
}

fn parse(payload: &[u8]) -> Option<MessageId> {
    let text = std::str::from_utf8(payload).ok()?;
    let (p, s) = text.strip_prefix('p')?.split_once(':')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// How many duplicate examples the report lists (each with its copies' times: where to
/// look in the node logs).
const MAX_EXAMPLES: usize = 100;

/// Duplicates by kind (see chaos/README.md, "Duplicates").
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Duplicates {
    /// A few violations: subscriber, message and every copy as (connection, DUP).
    pub examples: Vec<String>,
    /// Subscribers with a violation.
    pub subscribers: BTreeSet<u32>,
    /// A second copy on the connection that already had one.
    pub same_connection: u64,
    /// A copy on a later connection without the DUP flag: the broker sent it as new.
    pub without_dup: u64,
    /// Allowed redeliveries (DUP set, on a later connection): not violations.
    pub allowed: u64,
    /// Every violation, counted by subscriber and the connections of the copy before and
    /// of the copy (equal: a second copy on one connection): where to look in the logs.
    pub by_connections: BTreeMap<(u32, u64, u64), u64>,
}

impl Duplicates {
    pub fn violations(&self) -> u64 {
        self.same_connection + self.without_dup
    }
}

/// Loss, per subscriber and per round the message was acknowledged in.
#[derive(Debug, Default)]
pub struct Loss {
    /// (subscriber, message) pairs: acknowledged, never received.
    pub pairs: u64,
    /// Distinct messages at least one subscriber missed.
    pub messages: u64,
    pub by_subscriber: BTreeMap<u32, u64>,
    pub by_round: BTreeMap<u32, u64>,
    /// What each subscriber missed, as runs of consecutive sequences of one publisher:
    /// (subscriber, publisher, first, last sequence, acknowledged from, until seconds).
    pub runs: Vec<(u32, u32, u64, u64, f64, f64)>,
}

impl Ledger {
    pub fn new(subscribers: u32, started: Instant) -> Ledger {
        Ledger {
            started,
            acked: HashMap::new(),
            unacked: 0,
            refused: BTreeMap::new(),
            received: (0..subscribers).map(|_| HashMap::new()).collect(),
            malformed: 0,
        }
    }

    pub fn acked(&mut self, id: MessageId, round: u32) {
        let at = self.started.elapsed().as_secs_f64();
        self.acked.insert(id, (round, at));
    }

    pub fn subscribers(&self) -> u32 {
        self.received.len() as u32
    }

    pub fn acked_count(&self) -> u64 {
        self.acked.len() as u64
    }

    pub fn received(&mut self, subscriber: u32, conn: u64, payload: &[u8], dup: bool) {
        let Some(id) = parse(payload) else {
            self.malformed += 1;
            return;
        };
        self.received[subscriber as usize]
            .entry(id)
            .or_default()
            .push(Copy {
                conn,
                dup,
                at: self.started.elapsed().as_secs_f64(),
            });
    }

    /// Acknowledged messages subscriber `s` has not received yet.
    pub fn missing(&self, s: u32) -> u64 {
        let got = &self.received[s as usize];
        self.acked.keys().filter(|id| !got.contains_key(id)).count() as u64
    }

    pub fn total_received(&self) -> u64 {
        self.received
            .iter()
            .map(|m| m.values().map(|c| c.len() as u64).sum::<u64>())
            .sum()
    }

    pub fn loss(&self) -> Loss {
        let mut loss = Loss::default();
        let mut missed: HashSet<MessageId> = HashSet::new();
        let mut acked: Vec<(&MessageId, &(u32, f64))> = self.acked.iter().collect();
        acked.sort_by_key(|(id, _)| **id);
        for (s, got) in self.received.iter().enumerate() {
            let s = s as u32;
            for (id, (round, at)) in &acked {
                if got.contains_key(id) {
                    continue;
                }
                loss.pairs += 1;
                missed.insert(**id);
                *loss.by_subscriber.entry(s).or_default() += 1;
                *loss.by_round.entry(*round).or_default() += 1;
                let (p, seq) = **id;
                match loss.runs.last_mut() {
                    Some(run) if run.0 == s && run.1 == p && run.3 + 1 == seq => {
                        run.3 = seq;
                        run.5 = *at;
                    }
                    _ => loss.runs.push((s, p, seq, seq, *at, *at)),
                }
            }
        }
        loss.messages = missed.len() as u64;
        loss
    }

    /// Every copy after the first is allowed only when it carries DUP and came on a later
    /// connection than the copy before it: QoS 1 lets the broker resend a message whose
    /// PUBACK it may not have had, once per new connection of the session, flagged DUP.
    /// Copies are taken in connection order (in arrival order within one connection): a
    /// message in flight on a connection that is taken over is resent with DUP on the new
    /// one, and the harness's reader of the old connection may note its copy after the
    /// new one's. An old connection that is sent a message after its successor got it is
    /// the double_owners check's.
    pub fn duplicates(&self) -> Duplicates {
        let mut d = Duplicates::default();
        for (s, got) in self.received.iter().enumerate() {
            for (id, copies) in got {
                let mut copies = copies.clone();
                copies.sort_by_key(|c| c.conn);
                let copies = &copies;
                let before_violations = d.violations();
                for pair in copies.windows(2) {
                    let (before, after) = (pair[0], pair[1]);
                    if after.conn == before.conn {
                        d.same_connection += 1;
                    } else if !after.dup {
                        d.without_dup += 1;
                    } else {
                        d.allowed += 1;
                        continue;
                    }
                    *d.by_connections
                        .entry((s as u32, before.conn, after.conn))
                        .or_default() += 1;
                }
                if d.violations() > before_violations {
                    d.subscribers.insert(s as u32);
                }
                if d.violations() > before_violations && d.examples.len() < MAX_EXAMPLES {
                    let list: Vec<String> = copies
                        .iter()
                        .map(|c| {
                            let dup = if c.dup { " DUP" } else { "" };
                            format!("conn {}{dup} at {:.1}s", c.conn, c.at)
                        })
                        .collect();
                    let acked = match self.acked.get(id) {
                        Some((_, at)) => format!("acknowledged at {at:.1}s"),
                        None => "not acknowledged".to_owned(),
                    };
                    d.examples.push(format!(
                        "subscriber {s} got p{}:{} ({acked}) {} times: {}",
                        id.0,
                        id.1,
                        copies.len(),
                        list.join(", ")
                    ));
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_acknowledged_messages_a_subscriber_never_got() {
        let mut l = Ledger::new(2, Instant::now());
        l.acked((0, 1), 0);
        l.acked((0, 2), 1);
        l.received(0, 1, b"p0:1", false);
        l.received(0, 1, b"p0:2", false);
        l.received(1, 2, b"p0:1", false);
        // Received but never acknowledged: neither lost nor required.
        l.received(1, 2, b"p0:3", false);
        let loss = l.loss();
        assert_eq!(loss.pairs, 1);
        assert_eq!(loss.messages, 1);
        assert_eq!(loss.by_round.get(&1), Some(&1));
        assert_eq!(l.missing(1), 1);
        assert_eq!(loss.runs.len(), 1);
        assert_eq!(loss.runs[0].0, 1);
        assert_eq!((loss.runs[0].2, loss.runs[0].3), (2, 2));
        assert_eq!(l.missing(0), 0);
    }

    #[test]
    fn duplicates_allow_one_dup_flagged_copy_per_new_connection() {
        let mut l = Ledger::new(1, Instant::now());
        l.received(0, 1, b"p0:1", false);
        l.received(0, 2, b"p0:1", true); // allowed
        l.received(0, 2, b"p0:1", true); // same connection
        l.received(0, 3, b"p0:1", false); // new connection, not DUP
        l.received(0, 3, b"junk", false);
        // Noted by the old connection's reader after the new one's DUP copy: in order.
        l.received(0, 5, b"p0:2", true);
        l.received(0, 4, b"p0:2", false);
        let d = l.duplicates();
        assert_eq!((d.same_connection, d.without_dup, d.allowed), (1, 1, 2));
        assert_eq!(d.examples.len(), 1, "{:?}", d.examples);
        assert_eq!(d.violations(), 2);
        assert_eq!(l.malformed, 1);
    }
}
