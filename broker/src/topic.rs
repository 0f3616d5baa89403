//! MQTT topics: name/filter validation, shared-subscription parsing, and the
//! subscription index that routes every PUBLISH to its subscribers.

mod error;
mod filter_match;
mod node;
mod shared;
mod subscribers;
mod tree;
mod validate;
mod walk;

#[cfg(test)]
mod proptests;

pub use error::TopicError;
pub use filter_match::matches;
pub use tree::TopicTree;
pub use validate::{parse_subscription, valid_topic_filter, valid_topic_name, MAX_TOPIC_LEN};
