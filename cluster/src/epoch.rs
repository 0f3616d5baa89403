//! [`EpochClock`]: the connection epochs this node stamps into registrations.
//!
//! An epoch names one connection together with its node id: (node, epoch) must never repeat,
//! or a late unregister of an old connection could remove a newer one. Epochs are the wall
//! clock in microseconds, forced strictly upward: unique within a run, and across restarts as
//! long as the clock does not step back by more than the time the node was down. Which
//! registration wins never depends on epochs (the Raft log order decides), so clocks of
//! different nodes need not agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub(crate) struct EpochClock {
    last: AtomicU64,
}

impl EpochClock {
    pub(crate) fn next(&self) -> u64 {
        let now = unix_micros();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The wall clock in milliseconds since the Unix epoch, as proposals stamp it.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_strictly_increase_even_within_a_microsecond() {
        let clock = EpochClock::default();
        let epochs: Vec<u64> = (0..10_000).map(|_| clock.next()).collect();
        assert!(epochs.windows(2).all(|w| w[0] < w[1]));
        assert!(epochs[0] >= unix_micros() - 10_000_000);
    }
}
