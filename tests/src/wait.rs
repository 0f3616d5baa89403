//! Waiting with deadlines: the default timeouts, and polling a condition until one passes.

use std::time::{Duration, Instant};

/// Default time to wait for something that should happen promptly.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounded wait used to show that something does NOT happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Polls `cond` every 10 ms until it is true or `deadline` passes; returns
/// whether it became true.
pub async fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking variant of [`wait_until`] for non-async code.
pub fn wait_until_blocking(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
