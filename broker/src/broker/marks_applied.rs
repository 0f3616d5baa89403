//! Which nodes' down marks this node has applied, so that a message redirected to it as an
//! adopter waits for the mark (and so for the adopted sessions) before it is routed.
//!
//! A node that applies a mark sends what it held for the dead node to the live members
//! (the adopters among them) at once, marked `adopted_from`; the leader applies the mark first and its followers a
//! heartbeat later. A redirected message that reached an adopter in between found no
//! session adopted from that node and was acknowledged as delivered to nobody (the
//! "adoption race" of issue 14). It now waits here, a bounded time, for the mark.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use skein_seam::NodeId;
use tokio::sync::Notify;

/// The longest a redirected message waits for its mark (a follower applies it within a
/// heartbeat or two; one that folds it through a snapshot does not tell the broker, and
/// is not waited for longer than this).
pub(super) const MARK_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct MarksApplied {
    /// Nodes whose down mark (any of them, since this process started) was applied here.
    nodes: Mutex<HashSet<NodeId>>,
    applied: Notify,
}

impl MarksApplied {
    /// This node applied a mark of `node` (and adopted its sessions, if any are its own).
    pub(super) fn applied(&self, node: NodeId) {
        self.lock().insert(node);
        self.applied.notify_waiters();
    }

    /// Waits until a mark of `node` was applied here, at most `bound`; whether it was.
    pub(super) async fn wait_for(&self, node: NodeId, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.applied.notified();
            tokio::pin!(notified);
            // Registered before the look, so a mark applied in between wakes it.
            notified.as_mut().enable();
            if self.lock().contains(&node) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_mark_is_applied_or_the_bound_passes() {
        let marks = std::sync::Arc::new(MarksApplied::default());
        assert!(!marks.wait_for(NodeId(3), Duration::from_millis(20)).await);
        let waiter = {
            let marks = marks.clone();
            tokio::spawn(async move { marks.wait_for(NodeId(3), Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        marks.applied(NodeId(2));
        marks.applied(NodeId(3));
        let started = std::time::Instant::now();
        assert!(waiter.await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
        // Applied already: no wait.
        assert!(marks.wait_for(NodeId(3), Duration::ZERO).await);
    }
}
