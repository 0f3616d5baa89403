//! The running task of one sink dialect (webhook, stream, Redis), stopped after the
//! connections have drained so the disconnects of a graceful shutdown still get out.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started sink: [`SinkTask::finish`] tells it to flush what it holds and stop.
pub struct SinkTask {
    name: &'static str,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl SinkTask {
    /// Spawns `run(stop)`; `run` must return soon after `stop` fires, having handled what
    /// was already queued.
    pub fn spawn<F, Fut>(name: &'static str, run: F) -> SinkTask
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        SinkTask { name, stop, task }
    }

    /// Stops the sink, giving it `grace` to hand on what it holds; past that it is aborted.
    pub async fn finish(self, grace: Duration) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => tracing::error!(sink = self.name, "sink task panicked"),
            Ok(Err(_)) => {}
            Err(_) => {
                tracing::warn!(
                    sink = self.name,
                    ?grace,
                    "sink still busy at shutdown, abandoned"
                );
                abort.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finish_stops_a_cooperative_task_and_aborts_a_stuck_one() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = SinkTask::spawn("ok", |stop| async move {
            stop.cancelled().await;
            let _ = tx.send(());
        });
        task.finish(Duration::from_secs(5)).await;
        assert!(rx.await.is_ok());

        let stuck = SinkTask::spawn("stuck", |_| std::future::pending());
        let started = std::time::Instant::now();
        stuck.finish(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
