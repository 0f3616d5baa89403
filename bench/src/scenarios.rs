//! The scenarios: fanin, fanout and pairs share one engine (`throughput`); connect and
//! takeover have their own.

pub mod connect;
pub mod publisher;
pub mod subscriber;
pub mod takeover;
pub mod throughput;
pub mod ticker;
