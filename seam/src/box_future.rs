//! [`BoxFuture`], what the seam's asynchronous methods return.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future: trait objects cannot have `async fn`s.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
