//! The scenarios: fanin, fanout and pairs share one engine (`throughput`), connect has its
//! own.

pub mod connect;
pub mod publisher;
pub mod subscriber;
pub mod throughput;
pub mod ticker;
