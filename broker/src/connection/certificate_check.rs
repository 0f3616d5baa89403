//! The device certificate registry at CONNECT (issue 16, seed 001): a client certificate
//! seen for the first time is registered cluster-wide (status `active`, or
//! `pending_activation` with `certificate_auto_activate = false`) and raises
//! `certificate.registered` from the node whose registration the log ordered first; a
//! certificate whose status is not active is refused (CONNACK 0x87 / return code 5) and
//! raises `certificate.rejected`.

use std::sync::Arc;

use skein_seam::{CertificateStatus, SeenCertificate};

use super::handshake::Refusal;
use super::PeerIdentity;
use crate::broker::Broker;
use crate::codec::{connack_v3, reason as rc, ProtocolVersion};
use crate::disconnect::DisconnectReason;
use crate::events::{raise, CertificateEvent, ClientInfo, EventBody, EventKind};

/// Checks the certificate `identity` carries, registering it on first sight. Ok(Some(sn))
/// for a connection that uses an active certificate (to be ended should it stop being
/// active), Ok(None) without one.
pub(super) async fn check(
    broker: &Broker,
    identity: &PeerIdentity,
    info: &Arc<ClientInfo>,
    protocol: ProtocolVersion,
) -> Result<Option<Arc<str>>, Refusal> {
    let seen = match identity {
        PeerIdentity::Certificate {
            device: Some(seen), ..
        } => seen,
        PeerIdentity::Certificate { device: None, .. } => {
            // rustls verified it; only its serial number could not be read here.
            tracing::warn!(client_id = %info.client_id, "client certificate without a readable serial number: not registered");
            return Ok(None);
        }
        _ => return Ok(None),
    };
    let status = match broker.cluster.certificate(&seen.sn) {
        Some(record) => record.status,
        None => register(broker, seen, info, protocol).await?,
    };
    if status != CertificateStatus::Active {
        crate::metrics::certificate_rejected(status.as_str());
        raise::raise(&broker.events, info, EventKind::CertificateRejected, || {
            EventBody::CertificateRejected(Box::new(CertificateEvent {
                seen: (**seen).clone(),
                status,
            }))
        });
        return Err(Refusal::connack(
            protocol,
            rc::NOT_AUTHORIZED,
            connack_v3::NOT_AUTHORIZED,
            DisconnectReason::NotAuthorized,
            &format!("certificate {} is {status}", seen.sn),
        ));
    }
    Ok(Some(Arc::from(seen.sn.as_str())))
}

/// Registers `seen` through the cluster; its status as registered (by this node or, a
/// moment before, by another).
async fn register(
    broker: &Broker,
    seen: &SeenCertificate,
    info: &Arc<ClientInfo>,
    protocol: ProtocolVersion,
) -> Result<CertificateStatus, Refusal> {
    let status = if broker.config.certificate_auto_activate {
        CertificateStatus::Active
    } else {
        CertificateStatus::PendingActivation
    };
    let registration = match broker
        .cluster
        .register_certificate(seen.clone(), status)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::certificate_registration_failed();
            return Err(Refusal::cluster_unavailable(
                protocol,
                &format!("registering certificate {}: {e}", seen.sn),
            ));
        }
    };
    let record = registration.record;
    if registration.created {
        crate::metrics::certificate_registered(record.status.as_str());
        tracing::info!(sn = %seen.sn, common_name = %seen.common_name, status = %record.status, "device certificate registered");
        raise::raise(
            &broker.events,
            info,
            EventKind::CertificateRegistered,
            || {
                EventBody::CertificateRegistered(Box::new(CertificateEvent {
                    seen: record.seen.clone(),
                    status: record.status,
                }))
            },
        );
    }
    Ok(record.status)
}
