//! [`join_all`]: awaits futures concurrently on the caller's task (no spawn, so they may
//! borrow), for a SUBSCRIBE's proposals and the questions to every member.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Runs every future to completion, concurrently, and returns their outputs in order.
pub(crate) async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut busy = false;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => busy = true,
                }
            }
        }
        if busy {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outputs_come_in_order_however_the_futures_finish() {
        let delays = [30u64, 0, 10];
        let outputs = join_all(delays.iter().map(|ms| async move {
            tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
            *ms
        }))
        .await;
        assert_eq!(outputs, vec![30, 0, 10]);
        let none: Vec<u8> = join_all(Vec::<std::future::Ready<u8>>::new()).await;
        assert!(none.is_empty());
    }
}
