//! [`BrokerSlot`]: where a member keeps the local broker, which is attached after the
//! member started (the broker is built with the member's handle, so it comes second).

use std::sync::{Arc, OnceLock};

use skein_seam::BrokerHandle;

/// The local broker, once attached; what peers ask of this node goes to it.
#[derive(Default)]
pub(crate) struct BrokerSlot(OnceLock<Arc<dyn BrokerHandle>>);

impl BrokerSlot {
    /// The broker; None until [`crate::ClusterNode::attach_broker`] was called.
    pub(crate) fn get(&self) -> Option<&Arc<dyn BrokerHandle>> {
        self.0.get()
    }

    /// Attaches `broker`; false (and nothing changes) when one is attached already.
    pub(crate) fn set(&self, broker: Arc<dyn BrokerHandle>) -> bool {
        self.0.set(broker).is_ok()
    }
}
