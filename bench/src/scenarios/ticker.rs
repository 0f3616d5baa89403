//! The offered-rate clock. Tokio's timer has a 1 ms granularity, which would make every
//! scheduled publish up to a millisecond late and put that lag into every latency. A
//! dedicated thread sleeps precisely (nanosleep) until each scheduled send time and wakes
//! the publisher it belongs to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One publisher's schedule: message k is due at start + offset + k * gap.
#[derive(Clone)]
pub struct Schedule {
    pub gap: Duration,
    pub offset: Duration,
    /// Woken when a message of this publisher falls due.
    pub tick: Arc<Notify>,
}

impl Schedule {
    pub fn new(gap: Duration, offset: Duration) -> Schedule {
        Schedule {
            gap,
            offset,
            tick: Arc::new(Notify::new()),
        }
    }

    /// When message `seq` is due.
    pub fn due_at(&self, start: Instant, seq: u64) -> Instant {
        start + self.offset + Duration::from_nanos((self.gap.as_nanos() as u64).saturating_mul(seq))
    }

    /// How many messages are due at `now` (at most `count`).
    pub fn due_count(&self, start: Instant, now: Instant, count: u64) -> u64 {
        let first = start + self.offset;
        if now < first {
            return 0;
        }
        let gap = self.gap.as_nanos().max(1);
        (((now - first).as_nanos() / gap) as u64 + 1).min(count)
    }
}

/// Runs the clock on its own thread until every message of every schedule fell due or
/// `stop` is set.
pub fn spawn(
    start: Instant,
    schedules: Vec<Schedule>,
    count: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("rate-clock".into())
        .spawn(move || {
            // Publishers share one gap and have increasing offsets within it, so walking
            // message by message, publisher by publisher, visits due times in order; a
            // schedule out of order only means an earlier wake-up.
            for seq in 0..count {
                for s in &schedules {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let at = s.due_at(start, seq);
                    loop {
                        let now = Instant::now();
                        if at <= now {
                            break;
                        }
                        // Long gaps are slept in slices so that `stop` is seen promptly.
                        std::thread::sleep((at - now).min(Duration::from_millis(50)));
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    s.tick.notify_one();
                }
            }
        })
        .expect("spawning the rate clock thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_counts_follow_the_schedule() {
        let s = Schedule::new(Duration::from_millis(10), Duration::from_millis(1));
        let t0 = Instant::now();
        assert_eq!(s.due_count(t0, t0, 100), 0);
        assert_eq!(s.due_count(t0, t0 + Duration::from_millis(1), 100), 1);
        assert_eq!(s.due_count(t0, t0 + Duration::from_millis(30), 100), 3);
        assert_eq!(s.due_count(t0, t0 + Duration::from_secs(60), 100), 100);
        assert_eq!(s.due_at(t0, 3), t0 + Duration::from_millis(31));
    }
}
