//! [`ForwardTally`]: where the forwards of one publisher's read batch are answered, and
//! [`ForwardError`], why a forward was not accepted.
//!
//! A QoS 1/2 publish forwarded to another node is acknowledged to its publisher only once
//! that node accepted it. Answering each forward through a channel of its own costs an
//! allocation and a wake-up per message; the peer answers per batch anyway. So the
//! publisher's connection hands the cluster one tally per read batch and a ticket per
//! publish (its position in the batch); the cluster counts each forward it queued as
//! outstanding and, when a batch of the peer's comes back, answers a whole run of tickets
//! with one subtraction. Failures are kept as ranges of tickets, so the publisher still
//! learns which publish was not taken. A tally is used for one read batch only: a forward
//! still outstanding when its connection gave up on it (closed, or refused the publish for
//! another reason) answers a tally nobody reads, never another batch's ticket.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::box_future::BoxFuture;
use crate::ids::NodeId;

/// Why a forwarded publish was not accepted by the peer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// The peer's bounded queue was full: the message was dropped (and counted).
    #[error("the forward queue to node {0} is full")]
    QueueFull(NodeId),
    /// The peer answered that it could not take it (its storage refused).
    #[error("node {node} refused the message: {detail}")]
    Refused { node: NodeId, detail: String },
    /// The node is not a member, or this node is shutting down.
    #[error("node {node} cannot be reached: {detail}")]
    Unavailable { node: NodeId, detail: String },
}

/// The answers to the forwards of one read batch (see the module docs). Tickets are the
/// caller's: one per publish, the same for each node it goes to.
#[derive(Default)]
pub struct ForwardTally {
    /// Forwards queued and not answered yet.
    outstanding: AtomicUsize,
    /// Whether `state.failed` holds anything: a settled tally without failures is read
    /// without the lock.
    any_failed: AtomicBool,
    state: Mutex<TallyState>,
}

#[derive(Default)]
struct TallyState {
    /// Tickets `first..=last` not accepted, and why.
    failed: Vec<(u32, u32, ForwardError)>,
    /// Forwards answered by a future of their own (a cluster handle without batched
    /// answers, see `ClusterHandle::forward_tallied`): polled by whoever waits.
    attached: Vec<(u32, BoxFuture<'static, Result<(), ForwardError>>)>,
    /// The task waiting for the tally to settle.
    waker: Option<Waker>,
}

impl std::fmt::Debug for ForwardTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardTally")
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

impl ForwardTally {
    pub fn new() -> Arc<ForwardTally> {
        Arc::new(ForwardTally::default())
    }

    fn state(&self) -> MutexGuard<'_, TallyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forwards queued and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// `n` more forwards were queued for this tally: each is answered later, once, by
    /// [`Self::accepted`] or [`Self::failed`]. Called by whoever queued them, before
    /// anything can answer them.
    pub fn expect(&self, n: usize) {
        self.outstanding.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` outstanding forwards were accepted.
    pub fn accepted(&self, n: usize) {
        self.answered(n);
    }

    /// The forwards of tickets `first..=last` (one each) were not accepted.
    pub fn failed(&self, first: u32, last: u32, error: ForwardError) {
        debug_assert!(first <= last);
        {
            let mut st = self.state();
            st.failed.push((first, last, error));
        }
        self.any_failed.store(true, Ordering::Release);
        self.answered((last - first) as usize + 1);
    }

    /// A forward answered by a future of its own instead (see
    /// `ClusterHandle::forward_tallied`'s default): counted as outstanding until the
    /// future resolves while someone waits for the tally.
    pub fn attach(&self, ticket: u32, answer: BoxFuture<'static, Result<(), ForwardError>>) {
        self.expect(1);
        self.state().attached.push((ticket, answer));
    }

    fn answered(&self, n: usize) {
        let before = self.outstanding.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "more answers than forwards");
        if before == n {
            // Taken under the lock the waiting task registers under: see `Settled::poll`.
            let waker = self.state().waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Resolves once every forward queued so far is answered.
    pub fn settled(&self) -> Settled<'_> {
        Settled(self)
    }

    /// How ticket `ticket`'s forwards ended (the first failure), once settled.
    pub fn outcome(&self, ticket: u32) -> Result<(), ForwardError> {
        if !self.any_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let st = self.state();
        match st
            .failed
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&ticket))
        {
            Some((_, _, error)) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

/// See [`ForwardTally::settled`].
pub struct Settled<'a>(&'a ForwardTally);

impl Future for Settled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let tally = self.0;
        if tally.outstanding() == 0 {
            return Poll::Ready(());
        }
        let mut st = tally.state();
        let mut done = Vec::new();
        st.attached
            .retain_mut(|(ticket, answer)| match answer.as_mut().poll(cx) {
                Poll::Ready(outcome) => {
                    done.push((*ticket, outcome));
                    false
                }
                Poll::Pending => true,
            });
        // Registered before looking again under the lock: an answer counted after this
        // look takes the lock to wake us (see `ForwardTally::answered`).
        st.waker = Some(cx.waker().clone());
        drop(st);
        for (ticket, outcome) in done {
            match outcome {
                Ok(()) => tally.accepted(1),
                Err(e) => tally.failed(ticket, ticket, e),
            }
        }
        if tally.outstanding() == 0 {
            tally.state().waker = None;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(detail: &str) -> ForwardError {
        ForwardError::Unavailable {
            node: NodeId(2),
            detail: detail.into(),
        }
    }

    #[tokio::test]
    async fn answers_in_any_order_settle_once_all_are_in() {
        let tally = ForwardTally::new();
        tally.expect(5);
        let waiting = tokio::spawn({
            let tally = tally.clone();
            async move {
                tally.settled().await;
                (0..5).map(|t| tally.outcome(t)).collect::<Vec<_>>()
            }
        });
        tokio::task::yield_now().await;
        // Tickets 3..=4 answered (failed) before 0..=2 (accepted): another node's batch
        // can come back first.
        tally.failed(3, 4, unavailable("gone"));
        assert!(!waiting.is_finished());
        tally.accepted(2);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one still outstanding");
        tally.accepted(1);
        let outcomes = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("settled")
            .unwrap();
        assert_eq!(outcomes[..3], [Ok(()), Ok(()), Ok(())]);
        assert_eq!(outcomes[3], Err(unavailable("gone")));
        assert_eq!(outcomes[4], Err(unavailable("gone")));
    }

    #[tokio::test]
    async fn attached_futures_are_polled_by_the_waiter() {
        let tally = ForwardTally::new();
        tally.expect(1);
        tally.attach(1, Box::pin(async { Err(unavailable("no such node")) }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tally.attach(
            2,
            Box::pin(async move {
                let _ = rx.await;
                Ok(())
            }),
        );
        assert_eq!(tally.outstanding(), 3);
        tally.accepted(1);
        let waiting = tokio::spawn({
            let tally = tally.clone();
            async move { tally.settled().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "ticket 2 still waits");
        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("settled")
            .unwrap();
        assert_eq!(tally.outcome(0), Ok(()));
        assert_eq!(tally.outcome(1), Err(unavailable("no such node")));
        assert_eq!(tally.outcome(2), Ok(()));
    }

    #[tokio::test]
    async fn a_tally_with_nothing_queued_is_settled() {
        ForwardTally::new().settled().await;
    }
}
