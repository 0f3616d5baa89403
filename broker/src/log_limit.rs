//! [`LogLimit`]: at most one log line per interval for a condition that can repeat once per
//! message (a full disk under a flood of publishes), with a count of the lines left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lets one line through per interval; the ones in between are only counted.
#[derive(Debug)]
pub struct LogLimit {
    every_ms: u64,
    /// Milliseconds since [`epoch`] before which lines are held back (0: none yet).
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

/// A monotonic origin shared by every limit, so a time fits in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimit {
    pub const fn new(every: Duration) -> LogLimit {
        LogLimit {
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Some(lines held back since the last one) when a line may be written now; None
    /// when it is to be left out (and is counted).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed().as_millis() as u64)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let limit = LogLimit::new(Duration::from_secs(10));
        assert_eq!(limit.allow_at(0), Some(0));
        for at in [1, 500, 9_999] {
            assert_eq!(limit.allow_at(at), None);
        }
        assert_eq!(limit.allow_at(10_000), Some(3), "three were held back");
        assert_eq!(limit.allow_at(10_001), None);
        assert_eq!(limit.allow_at(30_000), Some(1));
        assert_eq!(limit.allow_at(30_000), None);
    }

    #[test]
    fn the_first_line_goes_out_at_once() {
        let limit = LogLimit::new(Duration::from_secs(10));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
    }
}
