//! The device certificate commands the broker proposes (issue 16): register a client
//! certificate on first sight, set a certificate's status (admin API). Each returns once
//! the command is committed and applied on this node; the proposer stamps the time. The
//! registry's rules are in `registry/certificates.rs`.

use skein_proto::v1 as pb;
use skein_proto::v1::command::Command;
use skein_proto::v1::command_result::Result as Answer;
use skein_seam::{CertificateRecord, CertificateStatus, NodeId as SeamNodeId, SeenCertificate};

use crate::epoch::unix_millis;
use crate::error::{ClusterError, Result};
use crate::node::ClusterNode;
use crate::registry::{status_from_pb, status_to_pb};

impl ClusterNode {
    /// Registers `seen` with `status` unless it is registered already: the record as the
    /// registry holds it, and whether this call registered it.
    #[tracing::instrument(level = "debug", skip(self, seen), fields(node = self.id(), sn = %seen.sn))]
    pub async fn register_certificate(
        &self,
        seen: &SeenCertificate,
        status: CertificateStatus,
    ) -> Result<(CertificateRecord, bool)> {
        let (answer, _) = self
            .propose(Command::RegisterCertificate(pb::RegisterCertificate {
                sn: seen.sn.clone(),
                ca_sn: seen.ca_sn.clone(),
                common_name: seen.common_name.clone(),
                chain_sn: seen.chain_sn.clone(),
                status: status_to_pb(status) as i32,
                node_id: self.id(),
                stamped_at_ms: unix_millis(),
            }))
            .await?;
        match answer {
            Answer::CertificateRegistered(pb::CertificateRegistered {
                record: Some(record),
                created,
            }) => Ok((record_from_pb(&record)?, created)),
            other => Err(unexpected("register_certificate", &other)),
        }
    }

    /// Sets the status of certificate `sn`: the record as it is now, None for an unknown
    /// serial number.
    #[tracing::instrument(level = "debug", skip(self), fields(node = self.id()))]
    pub async fn set_certificate_status(
        &self,
        sn: &str,
        status: CertificateStatus,
    ) -> Result<Option<CertificateRecord>> {
        let (answer, _) = self
            .propose(Command::SetCertificateStatus(pb::SetCertificateStatus {
                sn: sn.to_owned(),
                status: status_to_pb(status) as i32,
                stamped_at_ms: unix_millis(),
            }))
            .await?;
        match answer {
            Answer::CertificateStatusSet(set) => {
                set.record.as_ref().map(record_from_pb).transpose()
            }
            other => Err(unexpected("set_certificate_status", &other)),
        }
    }

    /// The certificate `sn` as the registry on this node has applied it.
    pub fn certificate(&self, sn: &str) -> Option<CertificateRecord> {
        self.registry()
            .read(|r| r.certificate(sn).cloned())
            .and_then(|record| record_from_pb(&record).ok())
    }

    /// Every certificate, in serial number order.
    pub fn certificates(&self) -> Vec<CertificateRecord> {
        let records: Vec<pb::CertificateRecord> = self
            .registry()
            .read(|r| r.certificates().cloned().collect());
        records
            .iter()
            .filter_map(|r| record_from_pb(r).ok())
            .collect()
    }
}

fn record_from_pb(r: &pb::CertificateRecord) -> Result<CertificateRecord> {
    let status = pb::CertificateStatus::try_from(r.status)
        .ok()
        .and_then(status_from_pb)
        .ok_or_else(|| {
            ClusterError::Proposal(format!(
                "certificate {} has status {}, unknown to this build",
                r.sn, r.status
            ))
        })?;
    Ok(CertificateRecord {
        seen: SeenCertificate {
            sn: r.sn.clone(),
            ca_sn: r.ca_sn.clone(),
            common_name: r.common_name.clone(),
            chain_sn: r.chain_sn.clone(),
        },
        status,
        registered_by: SeamNodeId(r.registered_by),
        registered_at_ms: r.registered_at_ms,
        updated_at_ms: r.updated_at_ms,
    })
}

fn unexpected(command: &str, answer: &Answer) -> ClusterError {
    ClusterError::Proposal(format!("{command} was answered with {answer:?}"))
}
