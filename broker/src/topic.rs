//! MQTT topics: name/filter validation, shared-subscription parsing, the subscription
//! index that routes every PUBLISH to its subscribers, and the index of other nodes'
//! interest that says where it goes beyond this node.

mod error;
mod filter_match;
mod node;
mod remote_interest;
mod shared;
mod subscribers;
mod tree;
mod validate;
mod walk;

#[cfg(test)]
mod proptests;

pub use error::TopicError;
pub use filter_match::matches;
pub use remote_interest::{NodeTarget, RemoteInterest, RemoteTargets};
pub use tree::TopicTree;
pub use validate::{parse_subscription, valid_topic_filter, valid_topic_name, MAX_TOPIC_LEN};
pub use walk::{Group, GroupMembers};
