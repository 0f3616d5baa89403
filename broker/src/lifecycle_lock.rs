//! The async lock that serialises a session's lifecycle changes (attach, detach,
//! takeover, expiry), in one byte per session.
//!
//! A `tokio::sync::Mutex` is 40 bytes, in every session of every idle client, for a lock
//! that is almost never contended. Here a session holds only a flag; a task that finds it
//! taken waits on one of a few wait queues shared by all sessions ([`LifecycleWaiters`]),
//! and every release wakes that queue's waiters to try again. Waiters of other sessions
//! on the same queue wake for nothing, which costs a retry, never a wrong result, and
//! never makes one session wait for another's lock.
//!
//! Not fair: a release frees the lock rather than handing it to the oldest waiter, so a
//! task that locks again at once can overtake a woken one. The broker holds these locks
//! briefly and never re-locks in a loop; a connect that still waits `LIFECYCLE_WAIT` gets
//! "server busy" rather than hanging.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Wait queues (a power of two).
const QUEUES: usize = 64;

/// The wait queues shared by the sessions of a broker.
pub struct LifecycleWaiters {
    queues: Box<[Notify]>,
}

impl Default for LifecycleWaiters {
    fn default() -> LifecycleWaiters {
        LifecycleWaiters {
            queues: (0..QUEUES).map(|_| Notify::new()).collect(),
        }
    }
}

impl std::fmt::Debug for LifecycleWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleWaiters").finish_non_exhaustive()
    }
}

impl LifecycleWaiters {
    fn queue(&self, lock: &LifecycleLock) -> &Notify {
        // The lock's address picks the queue: stable while anyone can wait on it.
        let address = lock as *const LifecycleLock as usize;
        &self.queues[(address >> 4) % QUEUES]
    }
}

/// One session's lock.
#[derive(Debug, Default)]
pub struct LifecycleLock {
    locked: AtomicBool,
}

/// Holds the lock; dropping it releases the lock and wakes the waiters.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LifecycleGuard<'a> {
    lock: &'a LifecycleLock,
    queue: &'a Notify,
}

impl LifecycleLock {
    /// Waits for the lock. Cancel-safe: a dropped wait holds nothing.
    pub async fn lock<'a>(&'a self, waiters: &'a LifecycleWaiters) -> LifecycleGuard<'a> {
        let queue = waiters.queue(self);
        loop {
            let mut released = pin!(queue.notified());
            // Registered before the attempt: a release after a failed attempt wakes us.
            released.as_mut().enable();
            if self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return LifecycleGuard { lock: self, queue };
            }
            released.await;
        }
    }

    #[cfg(test)]
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

impl Drop for LifecycleGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        self.queue.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_for_the_first() {
        let waiters = LifecycleWaiters::default();
        let lock = LifecycleLock::default();
        let guard = lock.lock(&waiters).await;
        assert!(lock.is_locked());
        let second = tokio::time::timeout(Duration::from_millis(50), lock.lock(&waiters)).await;
        assert!(second.is_err(), "taken while held");
        drop(guard);
        assert!(!lock.is_locked());
        let _again = tokio::time::timeout(Duration::from_secs(5), lock.lock(&waiters))
            .await
            .expect("free after release");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holders_never_overlap_and_all_get_their_turn() {
        let waiters = Arc::new(LifecycleWaiters::default());
        // Several locks, so some share a wait queue.
        let locks: Arc<Vec<LifecycleLock>> =
            Arc::new((0..3).map(|_| LifecycleLock::default()).collect());
        let inside: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..24 {
            let (waiters, locks, inside, done) =
                (waiters.clone(), locks.clone(), inside.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let i = t % 3;
                for _ in 0..50 {
                    let _guard = locks[i].lock(&waiters).await;
                    assert_eq!(inside[i].fetch_add(1, Ordering::SeqCst), 0, "overlap");
                    tokio::task::yield_now().await;
                    inside[i].fetch_sub(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("no task starves or deadlocks")
                .unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 24);
    }

    #[tokio::test]
    async fn a_cancelled_wait_holds_nothing() {
        let waiters = LifecycleWaiters::default();
        let lock = LifecycleLock::default();
        let guard = lock.lock(&waiters).await;
        let _ = tokio::time::timeout(Duration::from_millis(10), lock.lock(&waiters)).await;
        drop(guard);
        let _again = tokio::time::timeout(Duration::from_secs(5), lock.lock(&waiters))
            .await
            .expect("free");
    }
}
