//! Why a subscription filter was refused.

/// A SUBSCRIBE/UNSUBSCRIBE topic filter that cannot be accepted.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    /// The filter (or the filter part of a `$share/` subscription) is missing or malformed.
    #[error("invalid topic filter")]
    InvalidFilter,
    /// A `$share/` subscription whose share name is empty or contains `+`, `#` or NUL.
    #[error("invalid shared subscription group name")]
    InvalidShareGroup,
}
