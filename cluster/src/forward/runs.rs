//! How a peer queue answers the publishers waiting for its messages: not one channel per
//! message, but [`Run`]s, consecutive messages of the queue that one publisher's read batch
//! forwarded with consecutive tickets of its [`ForwardTally`]. A batch the peer accepts
//! answers each of its runs with one subtraction; a run is split where a batch ends.
//!
//! A run (and a [`Ticket`], one message of a run taken out of the queue) that is dropped
//! unanswered tells its publisher the forward failed, as a dropped channel would: a
//! tally's waiter must never wait for an answer nobody holds any more.

use std::sync::Arc;

use skein_seam::{ForwardError, ForwardTally};

use crate::types::NodeId;

/// Messages `first_msg..first_msg + count` of a queue (positions counted from its start),
/// answered through `tally` as tickets `first_ticket..first_ticket + count`, queued in tick
/// `since` of the queue's clock.
pub(super) struct Run {
    tally: Arc<ForwardTally>,
    peer: NodeId,
    pub(super) first_ticket: u32,
    /// 0 once answered.
    pub(super) count: u32,
    pub(super) first_msg: u64,
    pub(super) since: u64,
}

impl Run {
    /// A run of one message (counted in `tally` as outstanding).
    pub(super) fn new(
        tally: &Arc<ForwardTally>,
        ticket: u32,
        peer: NodeId,
        at: u64,
        since: u64,
    ) -> Run {
        tally.expect(1);
        Run {
            tally: tally.clone(),
            peer,
            first_ticket: ticket,
            count: 1,
            first_msg: at,
            since,
        }
    }

    /// Adds the message at `at` with `ticket` of `tally`, queued in tick `since`, if it
    /// continues this run.
    pub(super) fn extend(
        &mut self,
        tally: &Arc<ForwardTally>,
        ticket: u32,
        at: u64,
        since: u64,
    ) -> bool {
        let continues = self.since == since
            && self.first_msg + u64::from(self.count) == at
            && self.first_ticket.checked_add(self.count) == Some(ticket)
            && Arc::ptr_eq(&self.tally, tally);
        if continues {
            tally.expect(1);
            self.count += 1;
        }
        continues
    }

    /// Positions past its last message.
    pub(super) fn end_msg(&self) -> u64 {
        self.first_msg + u64::from(self.count)
    }

    /// Splits off the first `n` messages (fewer than it has) as a run of their own.
    pub(super) fn split_front(&mut self, n: u32) -> Run {
        debug_assert!(n > 0 && n < self.count);
        let front = Run {
            tally: self.tally.clone(),
            peer: self.peer,
            first_ticket: self.first_ticket,
            count: n,
            first_msg: self.first_msg,
            since: self.since,
        };
        self.first_ticket += n;
        self.first_msg += u64::from(n);
        self.count -= n;
        front
    }

    /// The peer accepted every message of the run.
    pub(super) fn accept(mut self) {
        let n = std::mem::take(&mut self.count);
        self.tally.accepted(n as usize);
    }

    /// None of the run's messages is answered by the peer: `error` is the answer.
    pub(super) fn fail(mut self, error: ForwardError) {
        let n = std::mem::take(&mut self.count);
        if n > 0 {
            let first = self.first_ticket;
            self.tally.failed(first, first + (n - 1), error);
        }
    }

    /// One [`Ticket`] per message, in order.
    pub(super) fn into_tickets(mut self) -> impl Iterator<Item = Ticket> {
        let n = std::mem::take(&mut self.count);
        let (tally, peer, first) = (self.tally.clone(), self.peer, self.first_ticket);
        (0..n).map(move |i| Ticket {
            tally: Some(tally.clone()),
            peer,
            ticket: first + i,
        })
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.count > 0 {
            let error = dropped(self.peer);
            let n = std::mem::take(&mut self.count);
            self.tally
                .failed(self.first_ticket, self.first_ticket + (n - 1), error);
        }
    }
}

/// One message's answer, taken out of its queue (see `PeerQueue::take_all`).
pub(crate) struct Ticket {
    /// None once answered.
    tally: Option<Arc<ForwardTally>>,
    peer: NodeId,
    ticket: u32,
}

impl Ticket {
    pub(crate) fn answer(mut self, outcome: Result<(), ForwardError>) {
        if let Some(tally) = self.tally.take() {
            match outcome {
                Ok(()) => tally.accepted(1),
                Err(e) => tally.failed(self.ticket, self.ticket, e),
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tally) = self.tally.take() {
            tally.failed(self.ticket, self.ticket, dropped(self.peer));
        }
    }
}

fn dropped(peer: NodeId) -> ForwardError {
    ForwardError::Unavailable {
        node: skein_seam::NodeId(peer),
        detail: "its forward queue was closed".into(),
    }
}
