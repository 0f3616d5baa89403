//! Device certificates in the replicated registry (issue 16): the first sight of a TLS
//! client certificate registers it, an operator sets its status. Keyed by the certificate's
//! serial number (lower-case hex), in a sorted map, so the snapshot is deterministic.
//!
//! Rules, in log order:
//! - register: the first command for a serial number creates the record with the status
//!   the proposer chose (active, or pending activation); a later one changes nothing and
//!   answers `created: false` with the record as it is (two nodes raced on one
//!   certificate: the log order decides which one registered it).
//! - set status: changes the record's status and `updated_at_ms`; an unknown serial
//!   number changes nothing and answers without a record. A status other than active is
//!   announced as a [`Change::CertificateStatus`], so every node ends the connections that
//!   use the certificate.

use skein_proto::v1 as pb;

use super::{invalid, Change, Registry};

/// The longest serial number accepted: RFC 5280 allows 20 octets; some CAs write more.
const MAX_SN_HEX: usize = 128;
/// The longest common name or chain accepted (a chain of a few dozen serials).
const MAX_TEXT: usize = 4096;

impl Registry {
    /// The certificate with serial number `sn`.
    pub fn certificate(&self, sn: &str) -> Option<&pb::CertificateRecord> {
        self.certificates.get(sn)
    }

    /// Every certificate, in serial number order.
    pub fn certificates(&self) -> impl Iterator<Item = &pb::CertificateRecord> {
        self.certificates.values()
    }

    pub(super) fn register_certificate(
        &mut self,
        c: &pb::RegisterCertificate,
        changes: &mut Vec<Change>,
    ) -> Result<pb::command_result::Result, pb::Rejected> {
        check_sn(&c.sn)?;
        if !c.ca_sn.is_empty() {
            check_sn(&c.ca_sn)?;
        }
        check_text("common name", &c.common_name)?;
        check_text("chain", &c.chain_sn)?;
        let status = check_status(c.status)?;
        if let Some(existing) = self.certificates.get(&c.sn) {
            return Ok(registered(existing.clone(), false));
        }
        let record = pb::CertificateRecord {
            sn: c.sn.clone(),
            ca_sn: c.ca_sn.clone(),
            common_name: c.common_name.clone(),
            chain_sn: c.chain_sn.clone(),
            status: status as i32,
            registered_by: c.node_id,
            registered_at_ms: c.stamped_at_ms,
            updated_at_ms: c.stamped_at_ms,
        };
        self.certificates.insert(c.sn.clone(), record.clone());
        changes.push(Change::CertificateStatus {
            sn: c.sn.clone(),
            status,
        });
        Ok(registered(record, true))
    }

    pub(super) fn set_certificate_status(
        &mut self,
        c: &pb::SetCertificateStatus,
        changes: &mut Vec<Change>,
    ) -> Result<pb::command_result::Result, pb::Rejected> {
        check_sn(&c.sn)?;
        let status = check_status(c.status)?;
        let Some(record) = self.certificates.get_mut(&c.sn) else {
            return Ok(pb::command_result::Result::CertificateStatusSet(
                pb::CertificateStatusSet {
                    record: None,
                    changed: false,
                },
            ));
        };
        let changed = record.status != status as i32;
        if changed {
            record.status = status as i32;
            record.updated_at_ms = c.stamped_at_ms;
            changes.push(Change::CertificateStatus {
                sn: c.sn.clone(),
                status,
            });
        }
        Ok(pb::command_result::Result::CertificateStatusSet(
            pb::CertificateStatusSet {
                record: Some(record.clone()),
                changed,
            },
        ))
    }

    /// Loads the certificates of a snapshot (sorted, each once).
    pub(super) fn load_certificates(
        &mut self,
        records: Vec<pb::CertificateRecord>,
    ) -> Result<(), String> {
        for record in records {
            check_sn(&record.sn).map_err(|r| r.detail)?;
            check_status(record.status).map_err(|r| r.detail)?;
            let sn = record.sn.clone();
            if self.certificates.insert(sn.clone(), record).is_some() {
                return Err(format!("certificate {sn} twice"));
            }
        }
        Ok(())
    }

    /// The certificates for a snapshot, in serial number order.
    pub(super) fn certificate_records(&self) -> Vec<pb::CertificateRecord> {
        self.certificates.values().cloned().collect()
    }
}

/// The registry's status for the seam's.
pub fn status_to_pb(status: skein_seam::CertificateStatus) -> pb::CertificateStatus {
    match status {
        skein_seam::CertificateStatus::PendingActivation => {
            pb::CertificateStatus::PendingActivation
        }
        skein_seam::CertificateStatus::Active => pb::CertificateStatus::Active,
        skein_seam::CertificateStatus::Inactive => pb::CertificateStatus::Inactive,
        skein_seam::CertificateStatus::Revoked => pb::CertificateStatus::Revoked,
    }
}

/// The seam's status for a registry status (None: unspecified, which the registry never
/// holds).
pub fn status_from_pb(status: pb::CertificateStatus) -> Option<skein_seam::CertificateStatus> {
    match status {
        pb::CertificateStatus::Unspecified => None,
        pb::CertificateStatus::PendingActivation => {
            Some(skein_seam::CertificateStatus::PendingActivation)
        }
        pb::CertificateStatus::Active => Some(skein_seam::CertificateStatus::Active),
        pb::CertificateStatus::Inactive => Some(skein_seam::CertificateStatus::Inactive),
        pb::CertificateStatus::Revoked => Some(skein_seam::CertificateStatus::Revoked),
    }
}

fn registered(record: pb::CertificateRecord, created: bool) -> pb::command_result::Result {
    pb::command_result::Result::CertificateRegistered(pb::CertificateRegistered {
        record: Some(record),
        created,
    })
}

/// A serial number as the registry keys it: lower-case hex, not empty, bounded.
fn check_sn(sn: &str) -> Result<(), pb::Rejected> {
    let hex = sn
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if sn.is_empty() || sn.len() > MAX_SN_HEX || !hex {
        return Err(invalid(format!(
            "certificate serial number {sn:?} is not 1 to {MAX_SN_HEX} lower-case hex digits"
        )));
    }
    Ok(())
}

fn check_text(what: &str, text: &str) -> Result<(), pb::Rejected> {
    if text.len() > MAX_TEXT {
        return Err(invalid(format!(
            "certificate {what} longer than {MAX_TEXT} bytes"
        )));
    }
    Ok(())
}

fn check_status(status: i32) -> Result<pb::CertificateStatus, pb::Rejected> {
    match pb::CertificateStatus::try_from(status) {
        Ok(pb::CertificateStatus::Unspecified) | Err(_) => Err(invalid(format!(
            "certificate status {status} is not one this build knows"
        ))),
        Ok(status) => Ok(status),
    }
}
