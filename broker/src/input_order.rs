//! The order in which input reaches the node, so that subscriptions take effect in that
//! order: a SUBSCRIBE that reached the node before another client's PUBLISH is in force
//! for that PUBLISH.
//!
//! Connections run in parallel on the runtime's workers, and tokio does not poll woken
//! tasks in the order they were woken (the task woken last runs first from the worker's
//! LIFO slot; another worker may steal the others). So the order is taken where it is
//! still known: when the reactor reports a socket readable, the connection's
//! [`StampingWaker`] takes a [`Ticket`], a position in one node-wide sequence. The
//! connection holds it until it has handled the input it then read. A PUBLISH read while
//! an earlier ticket is still held is routed at once all the same, and also written to
//! the late log ([`InputOrder::record_late`]): a SUBSCRIBE in that earlier input, once
//! handled, gets the publishes of the log read after its own input was reported. Only a
//! PUBLISH that matches nobody yet (the earlier input may be the SUBSCRIBE that it is
//! for), or one routed while the log is full, waits for the earlier tickets instead
//! ([`InputOrder::wait_clear_before`]). Waiting goes one way only, towards earlier
//! tickets, so it cannot deadlock; and a ticket is never held across a wait for anything
//! else (storage, a slow reader).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Wake, Waker};

use tokio::sync::Notify;

use crate::message::Message;

mod late_log;

pub use late_log::LateCutoff;
use late_log::LateLog;

/// A publish read while input reported before it was unhandled: by which connection,
/// and where in the order (see [`InputOrder::record_late`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateRead {
    pub connection: u64,
    pub position: u64,
}

/// No ticket is held.
const NONE_HELD: u64 = u64::MAX;

/// The node's sequence of input arrivals and the tickets still held.
pub struct InputOrder {
    held: Mutex<Held>,
    /// The earliest position still held (`NONE_HELD` when none): read without the lock by
    /// every publish.
    oldest: AtomicU64,
    /// The position the next ticket gets (every ticket taken so far is below it).
    next: AtomicU64,
    /// Publishes waiting for earlier input, so a release only notifies when one waits.
    waiters: AtomicUsize,
    released: Notify,
    /// `skein_publish_order_waits_total`.
    waits: metrics::Counter,
    /// `skein_publish_order_late_deliveries_total`.
    late_deliveries: metrics::Counter,
    late: LateLog,
}

#[derive(Default)]
struct Held {
    /// Held positions, ascending: taken in order, released in any order. At most two per
    /// connection (one being handled, one stamped meanwhile), so bounded by the
    /// connection limit.
    positions: VecDeque<u64>,
    next: u64,
}

impl InputOrder {
    /// `waits` counts the publishes that had to wait (`skein_publish_order_waits_total`),
    /// `late_deliveries` what new subscriptions got from the late log
    /// (`skein_publish_order_late_deliveries_total`).
    pub fn new(waits: metrics::Counter, late_deliveries: metrics::Counter) -> InputOrder {
        InputOrder {
            held: Mutex::new(Held {
                positions: VecDeque::new(),
                next: 1,
            }),
            oldest: AtomicU64::new(NONE_HELD),
            next: AtomicU64::new(1),
            waiters: AtomicUsize::new(0),
            released: Notify::new(),
            waits,
            late_deliveries,
            late: LateLog::default(),
        }
    }

    /// Whether a publish of connection `publisher` may be routed now with input reported
    /// before it still unhandled (see [`Self::record_late`]): false when its part of the
    /// late log is full.
    pub fn may_route_late(&self, publisher: u64) -> bool {
        self.late.has_room(publisher)
    }

    /// Writes down a publish routed while input reported before it was unhandled.
    /// Called while the subscription index is locked for reading, so that the log tells
    /// the publishes matched before a subscription was added from those matched after
    /// (see [`Self::late_cutoff`]).
    pub fn record_late(&self, read: LateRead, message: &Arc<Message>) {
        self.late
            .record(read.connection, read.position, message, || {
                self.oldest.load(Ordering::SeqCst)
            });
    }

    /// The end of the late log now. Called while the subscription index is locked for
    /// writing to add a subscription: the publishes logged before this were matched
    /// without it, those logged after with it.
    pub fn late_cutoff(&self) -> LateCutoff {
        self.late.cutoff()
    }

    /// A publish from the late log was queued for a new subscription.
    pub fn late_delivered(&self) {
        self.late_deliveries.increment(1);
    }

    /// The logged publishes read after `position` (where the input with a new
    /// subscription was reported) and matched before `cutoff` (without that subscription).
    pub fn late_since(&self, position: u64, cutoff: &LateCutoff) -> Vec<Arc<Message>> {
        self.late.since(position, cutoff)
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next position; it counts as held until [`Self::release`].
    fn take(&self) -> u64 {
        let mut held = self.held();
        let position = held.next;
        held.next += 1;
        self.next.store(held.next, Ordering::SeqCst);
        held.positions.push_back(position);
        if held.positions.len() == 1 {
            self.oldest.store(position, Ordering::SeqCst);
        }
        position
    }

    /// A ticket for input that arrived now (where no waker stamped it).
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        Ticket {
            order: self.clone(),
            position: self.take(),
        }
    }

    /// Holds `position` once more; it is held already, so the oldest does not change.
    fn hold(&self, position: u64) {
        let mut held = self.held();
        let at = held.positions.partition_point(|&p| p <= position);
        held.positions.insert(at, position);
    }

    fn release(&self, position: u64) {
        let was_oldest = {
            let mut held = self.held();
            let Ok(i) = held.positions.binary_search(&position) else {
                return;
            };
            held.positions.remove(i);
            if i == 0 {
                let oldest = held.positions.front().copied().unwrap_or(NONE_HELD);
                self.oldest.store(oldest, Ordering::SeqCst);
            }
            i == 0
        };
        if !was_oldest {
            return;
        }
        if self.oldest.load(Ordering::SeqCst) == NONE_HELD {
            // Quiet: nothing in the late log is needed any more (under load its writers
            // prune it as they go).
            self.late.prune_all(|| self.oldest.load(Ordering::SeqCst));
        }
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    /// A position after every ticket taken so far: input read now without a ticket of its
    /// own is ordered after everything already stamped.
    pub fn now(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Whether every input stamped before `position` has been handled.
    pub fn is_clear_before(&self, position: u64) -> bool {
        self.oldest.load(Ordering::SeqCst) >= position
    }

    /// Waits until every input stamped before `position` has been handled.
    pub async fn wait_clear_before(&self, position: u64) {
        if self.is_clear_before(position) {
            return;
        }
        self.waits.increment(1);
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiters);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check: a release after it wakes this one.
            released.as_mut().enable();
            if self.is_clear_before(position) {
                return;
            }
            released.await;
        }
    }
}

/// A held position in the node's input order: input stamped with it has not been
/// handled yet. Dropping it releases the position.
pub struct Ticket {
    order: Arc<InputOrder>,
    position: u64,
}

impl Ticket {
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Another ticket at the same position, released on its own (input from one report
    /// that several connections handle).
    pub fn share(&self) -> Ticket {
        self.order.hold(self.position);
        Ticket {
            order: self.order.clone(),
            position: self.position,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.order.release(self.position);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ticket").field(&self.position).finish()
    }
}

/// No position stamped.
const UNSTAMPED: u64 = 0;
/// Paused until the next [`StampingWaker::take`]: the connection waits for something
/// else, and input stamped now would hold publishes back until it is done.
const PAUSED: u64 = u64::MAX - 1;
/// Retired: wake-ups stamp nothing more.
const RETIRED: u64 = u64::MAX;

/// The waker a connection leaves with its socket's readiness: when the reactor reports
/// input, it takes a ticket (once until [`Self::take`]) before waking the task, so the
/// input's place in the order is fixed at the moment the node learns of it, however late
/// the task runs.
///
/// Cache-line aligned so that the node's allocator keeps it in pages of its own (see
/// `aligned_pool`): one is made per connection task and freed when the connection parks,
/// and from the general heap those frees left holes among the connection state that
/// stays (+136 B of RSS per parked connection).
#[repr(align(64))]
pub struct StampingWaker {
    order: Arc<InputOrder>,
    task: Waker,
    /// `UNSTAMPED`, a taken position, `PAUSED` or `RETIRED`.
    stamped: AtomicU64,
}

impl StampingWaker {
    /// Wraps `task`'s waker; returns the stamper and the waker to register with a socket.
    pub fn new(order: Arc<InputOrder>, task: &Waker) -> (Arc<StampingWaker>, Waker) {
        let stamper = Arc::new(StampingWaker {
            order,
            task: task.clone(),
            stamped: AtomicU64::new(UNSTAMPED),
        });
        let waker = Waker::from(stamper.clone());
        (stamper, waker)
    }

    /// Whether it wakes `task` (a connection resumed in a new task needs a new one).
    pub fn wakes(&self, task: &Waker) -> bool {
        self.task.will_wake(task)
    }

    fn stamp(&self) {
        if self.stamped.load(Ordering::SeqCst) != UNSTAMPED {
            return;
        }
        let position = self.order.take();
        if self
            .stamped
            .compare_exchange(UNSTAMPED, position, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            self.order.release(position);
        }
    }

    /// The ticket stamped since the last call, if any; stamping starts over (after a
    /// pause too).
    pub fn take(&self) -> Option<Ticket> {
        let mut current = self.stamped.load(Ordering::SeqCst);
        loop {
            if current == UNSTAMPED || current == RETIRED {
                return None;
            }
            if current == PAUSED {
                let _ = self.stamped.compare_exchange(
                    PAUSED,
                    UNSTAMPED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                return None;
            }
            match self.stamped.compare_exchange(
                current,
                UNSTAMPED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Ticket {
                        order: self.order.clone(),
                        position: current,
                    })
                }
                Err(now) => current = now,
            }
        }
    }

    /// Stops stamping until the next [`Self::take`], releasing what was stamped.
    pub fn pause(&self) {
        let mut current = self.stamped.load(Ordering::SeqCst);
        while current != RETIRED && current != PAUSED {
            match self
                .stamped
                .compare_exchange(current, PAUSED, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    if current != UNSTAMPED {
                        self.order.release(current);
                    }
                    return;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Stops stamping (the socket is parked or closed; the reactor may still hold this
    /// waker for a while) and releases what was stamped.
    pub fn retire(&self) {
        let was = self.stamped.swap(RETIRED, Ordering::SeqCst);
        if was != UNSTAMPED && was != RETIRED && was != PAUSED {
            self.order.release(was);
        }
    }
}

impl Wake for StampingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.stamp();
        self.task.wake_by_ref();
    }
}

impl Drop for StampingWaker {
    fn drop(&mut self) {
        self.retire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_position_is_clear_once_every_earlier_ticket_is_released() {
        let order = Arc::new(InputOrder::new(
            metrics::Counter::noop(),
            metrics::Counter::noop(),
        ));
        let first = order.ticket();
        let second = order.ticket();
        let third = order.ticket();
        assert!(order.is_clear_before(first.position()));
        assert!(!order.is_clear_before(third.position()));
        // Released out of order: the earliest one still held counts.
        drop(second);
        assert!(!order.is_clear_before(third.position()));
        drop(first);
        assert!(order.is_clear_before(third.position()));
        let later = order.now();
        assert!(!order.is_clear_before(later));
        drop(third);
        assert!(order.is_clear_before(later));
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_earlier_ticket_is_released() {
        let order = Arc::new(InputOrder::new(
            metrics::Counter::noop(),
            metrics::Counter::noop(),
        ));
        let earlier = order.ticket();
        let mine = order.ticket();
        let waiter = {
            let order = order.clone();
            let position = mine.position();
            tokio::spawn(async move { order.wait_clear_before(position).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(earlier);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woken")
            .unwrap();
        assert_eq!(order.waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_stamps_once_until_taken_nothing_while_paused_and_nothing_once_retired() {
        let order = Arc::new(InputOrder::new(
            metrics::Counter::noop(),
            metrics::Counter::noop(),
        ));
        let (stamper, waker) = StampingWaker::new(order.clone(), Waker::noop());
        assert!(stamper.take().is_none());
        waker.wake_by_ref();
        waker.wake_by_ref();
        let ticket = stamper.take().expect("stamped");
        assert!(!order.is_clear_before(order.now()));
        assert!(stamper.take().is_none());
        drop(ticket);
        assert!(order.is_clear_before(order.now()));
        stamper.pause();
        waker.wake_by_ref();
        assert!(
            order.is_clear_before(order.now()),
            "paused: nothing stamped"
        );
        assert!(stamper.take().is_none(), "taking ends the pause");
        waker.wake_by_ref();
        assert!(!order.is_clear_before(order.now()));
        stamper.pause();
        assert!(order.is_clear_before(order.now()), "pausing released it");
        let _ = stamper.take();
        waker.wake_by_ref();
        stamper.retire();
        assert!(order.is_clear_before(order.now()), "retiring released it");
        waker.wake_by_ref();
        assert!(stamper.take().is_none());
        assert!(order.is_clear_before(order.now()));
    }
}
