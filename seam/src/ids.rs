//! Identifier newtypes, so a client id is never confused with a topic or a node name.

use std::fmt;

use arcstr::ArcStr;

/// An MQTT client identifier; cheap to clone (shared string behind a thin pointer).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(ArcStr);

impl ClientId {
    pub fn new(id: &str) -> ClientId {
        ClientId(ArcStr::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string itself, for a holder that keeps the id as long as the broker
    /// does (the cluster registry's entry for a local client) without a copy.
    pub fn shared(&self) -> &ArcStr {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A broker node's id in the cluster (a single node is a one-member cluster).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
