//! The seam between a Skein broker node and its cluster: the identifiers both sides use
//! and the two traits across it. The broker crate and the cluster crate both depend on
//! this crate; neither depends on the other's internals, and the cluster never depends on
//! the broker (`broker -> seam <- cluster`).
//!
//! The crate's modules in layer order. Direction: each module imports only modules listed
//! below it.
//!
//! - `cluster_handle`: [`ClusterHandle`], what the broker asks of the cluster (claim a
//!   client id, release it, subscribe, forward a publish, admin reads), with the contract
//!   the cluster keeps; implemented by the cluster.
//! - `broker_handle`: [`BrokerHandle`], what the cluster asks of the local broker (deliver
//!   a forwarded publish, kick a connection, end a taken-over one, fold other nodes'
//!   interest); implemented by the broker.
//! - `certificate`: device certificates (status, record) as both sides name them.
//! - `forward_tally`: [`ForwardTally`], where the forwards of a read batch are answered
//!   together, and [`ForwardError`].
//! - `ids`: [`ClientId`] and [`NodeId`], the newtypes every layer names clients and nodes by.
//! - `box_future`: [`BoxFuture`], what the traits' asynchronous methods return.

mod box_future;
mod broker_handle;
mod certificate;
mod cluster_handle;
mod forward_tally;
pub mod ids;

pub use box_future::BoxFuture;
pub use broker_handle::{
    AdoptedSession, BrokerHandle, BrokerHandleError, DownClient, ForwardedPublish,
    HandedOverMessage, HandedOverSubscription, KickReason, PublishProperties, RegisteredConnection,
    RegisteredWill, SessionHandover, SharedTarget,
};
pub use certificate::{
    CertificateRecord, CertificateRegistration, CertificateStatus, SeenCertificate,
};
pub use cluster_handle::{
    ClientLocation, ClusterError, ClusterHandle, ClusterOverview, MemberOverview, NodeRecord,
    PreviousOwner, Registration,
};
pub use forward_tally::{ForwardError, ForwardTally, Settled};
pub use ids::{ClientId, NodeId};
