//! The seam between a Skein broker node and its cluster: the identifiers both sides use
//! and the two traits across it. The broker crate and the cluster crate both depend on
//! this crate; neither depends on the other's internals, and the cluster never depends on
//! the broker (`broker -> seam <- cluster`).
//!
//! The crate's modules in layer order. Direction: each module imports only modules listed
//! below it.
//!
//! - `broker_handle`: [`BrokerHandle`], what the cluster asks of the local broker (deliver
//!   a forwarded publish, kick a connection, hand a session over); implemented by the
//!   broker.
//! - `cluster_handle`: [`ClusterHandle`], what the broker asks of the cluster (claim a
//!   client id, release it), with the contract the cluster keeps; implemented by the
//!   cluster.
//! - `ids`: [`ClientId`] and [`NodeId`], the newtypes every layer names clients and nodes by.
//! - `box_future`: [`BoxFuture`], what the traits' asynchronous methods return.

mod box_future;
mod broker_handle;
mod cluster_handle;
pub mod ids;

pub use box_future::BoxFuture;
pub use broker_handle::{
    BrokerHandle, BrokerHandleError, ForwardedPublish, HandedOverSubscription, KickReason,
    PublishProperties, SessionHandover,
};
pub use cluster_handle::{ClusterError, ClusterHandle, Registration};
pub use ids::{ClientId, NodeId};
