//! What a listener does when `accept` fails: wait, longer each time, instead of spinning.
//!
//! Most accept errors (EMFILE, ENFILE, ENOBUFS) last as long as the shortage behind them,
//! and the failed connection stays in the kernel's queue, so retrying at once fails again
//! at once: a loop that spins burns a core and floods the log while the node can do
//! nothing about it. Each listener (MQTT, HTTP) keeps one of these: the wait doubles from
//! [`FIRST_DELAY`] to [`MAX_DELAY`] while accepts fail and starts over at the first
//! success; every failure is counted (`skein_accept_errors_total{listener}`) and logged at
//! most once per [`LOG_EVERY`], with how many went unlogged.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The wait after the first failed accept of a run.
pub const FIRST_DELAY: Duration = Duration::from_millis(5);
/// The longest wait between two accepts: how late a listener notices that the shortage
/// is over.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per listener this often.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// One listener's accept failures.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// `mqtt` or `http`: the metric's label and the log's field.
    listener: &'static str,
    /// The wait after the next failure.
    delay: Duration,
    /// When a failure was last logged.
    logged_at: Option<Instant>,
    /// Failures since then that were not logged.
    unlogged: u64,
}

impl AcceptBackoff {
    pub fn new(listener: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            listener,
            delay: FIRST_DELAY,
            logged_at: None,
            unlogged: 0,
        }
    }

    /// An accept succeeded: the next failure waits [`FIRST_DELAY`] again.
    #[inline]
    pub fn succeeded(&mut self) {
        self.delay = FIRST_DELAY;
    }

    /// Counts and (rate-limited) logs a failed accept, then waits before the next one;
    /// returns early when `shutdown` fires.
    pub async fn failed(&mut self, error: &std::io::Error, shutdown: &CancellationToken) {
        let delay = self.record(error, Instant::now());
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// The bookkeeping of [`AcceptBackoff::failed`]: returns how long to wait.
    fn record(&mut self, error: &std::io::Error, now: Instant) -> Duration {
        ::metrics::counter!(crate::metrics::ACCEPT_ERRORS, "listener" => self.listener)
            .increment(1);
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if due {
            tracing::warn!(
                listener = self.listener,
                error = %error,
                unlogged = self.unlogged,
                retry_in_ms = self.delay.as_millis() as u64,
                "accept failed; waiting before the next accept"
            );
            self.logged_at = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(24)
    }

    #[test]
    fn the_wait_doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let mut backoff = AcceptBackoff::new("mqtt");
        let now = Instant::now();
        let waits: Vec<u64> = (0..10)
            .map(|_| backoff.record(&emfile(), now).as_millis() as u64)
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.record(&emfile(), now), FIRST_DELAY);
    }

    #[test]
    fn failures_are_logged_at_most_once_per_interval() {
        let mut backoff = AcceptBackoff::new("http");
        let start = Instant::now();
        backoff.record(&emfile(), start);
        assert_eq!(backoff.logged_at, Some(start));
        for i in 1..=3 {
            backoff.record(&emfile(), start + Duration::from_millis(i));
        }
        assert_eq!(
            backoff.unlogged, 3,
            "within the interval: counted, not logged"
        );
        let later = start + LOG_EVERY;
        backoff.record(&emfile(), later);
        assert_eq!(backoff.logged_at, Some(later));
        assert_eq!(backoff.unlogged, 0);
    }

    #[tokio::test]
    async fn shutdown_cuts_the_wait_short() {
        let mut backoff = AcceptBackoff::new("mqtt");
        backoff.delay = MAX_DELAY;
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = Instant::now();
        backoff.failed(&emfile(), &shutdown).await;
        assert!(started.elapsed() < MAX_DELAY / 2, "{:?}", started.elapsed());
    }
}
