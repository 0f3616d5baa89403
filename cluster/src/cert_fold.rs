//! The certificate fold: a certificate whose status stops being active (an operator
//! revoked or deactivated it, on any node) ends the connections that use it on this node.
//! One task reads the change stream for it, apart from the registry fold (`fold.rs`),
//! whose order constraints (interest before takeovers) it has nothing to do with.
//!
//! Changes this task missed (a snapshot installed, the stream lagged) are made up for by
//! asking the broker to look every certificate its connections use up again.

use std::sync::Arc;

use skein_proto::v1 as pb;
use skein_seam::BrokerHandle;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::registry::{status_from_pb, Change, ChangeEvent};

/// Tells `broker` of certificates that stopped being active, until `shutdown`.
pub(crate) async fn run(
    broker: Arc<dyn BrokerHandle>,
    mut changes: broadcast::Receiver<ChangeEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = changes.recv() => event,
        };
        match event {
            Ok(ChangeEvent::Applied(applied)) => {
                for change in &applied.changes {
                    if let Change::CertificateStatus { sn, status } = change {
                        if *status == pb::CertificateStatus::Active {
                            continue;
                        }
                        if let Some(status) = status_from_pb(*status) {
                            broker.certificate_disabled(sn, status);
                        }
                    }
                }
            }
            Ok(ChangeEvent::Reset { .. } | ChangeEvent::Lagged { .. }) => {
                broker.certificates_recheck();
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::changes_lagged(missed);
                tracing::warn!(
                    missed,
                    "the certificate fold fell behind the change stream; looking the certificates in use up again"
                );
                broker.certificates_recheck();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
