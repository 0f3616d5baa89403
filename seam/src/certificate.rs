//! Device certificates as both sides of the seam name them (issue 16, seed 001): a TLS
//! client certificate registered cluster-wide on first sight, with a status an operator
//! sets.

use crate::ids::NodeId;

/// A device certificate's status (seed 001's `status` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateStatus {
    PendingActivation,
    Active,
    Inactive,
    Revoked,
}

impl CertificateStatus {
    pub const ALL: [CertificateStatus; 4] = [
        CertificateStatus::PendingActivation,
        CertificateStatus::Active,
        CertificateStatus::Inactive,
        CertificateStatus::Revoked,
    ];

    /// As events and the admin API spell it: `pending_activation`, `active`, `inactive`,
    /// `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::PendingActivation => "pending_activation",
            CertificateStatus::Active => "active",
            CertificateStatus::Inactive => "inactive",
            CertificateStatus::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<CertificateStatus> {
        CertificateStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for CertificateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node learnt of a client certificate it saw (serial numbers in lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCertificate {
    /// The device certificate's serial number: the registry's key.
    pub sn: String,
    /// The serial number of the CA certificate that signed it (empty: not found).
    pub ca_sn: String,
    /// Its subject common name (empty: none).
    pub common_name: String,
    /// The device certificate's serial, then its chain's, comma-separated.
    pub chain_sn: String,
}

/// A device certificate as the cluster's registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub seen: SeenCertificate,
    pub status: CertificateStatus,
    /// The node that registered it.
    pub registered_by: NodeId,
    /// When it was registered and last changed, ms since the Unix epoch.
    pub registered_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What registering a certificate answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRegistration {
    pub record: CertificateRecord,
    /// This call registered it (false: it was registered already, perhaps by another
    /// node a moment before): only the registering call raises `certificate.registered`.
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_names() {
        for s in CertificateStatus::ALL {
            assert_eq!(CertificateStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(CertificateStatus::parse("ACTIVE"), None);
        assert_eq!(CertificateStatus::parse(""), None);
    }
}
