//! A client certificate as the device certificate registry names it (seed 001): its serial
//! number, the serial of the CA certificate that signed it, and the serials of its chain
//! up to the trust anchor (`certificateChainSn`), found by issuer and subject names among
//! the certificates the client presented and those of `tls_client_ca_file`.

use rustls_pki_types::CertificateDer;
use skein_seam::SeenCertificate;

use super::certificate;

/// A certificate of `tls_client_ca_file`, as the chain walk needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    serial_hex: String,
}

impl CaCert {
    /// None for a certificate whose fields cannot be read (rustls took it as a trust
    /// anchor, so this does not happen with a well-formed CA file).
    pub fn of(der: &[u8]) -> Option<CaCert> {
        let f = certificate::fields(der)?;
        Some(CaCert {
            subject: f.subject.to_vec(),
            issuer: f.issuer.to_vec(),
            serial_hex: f.serial_hex(),
        })
    }
}

/// A chain longer than this is cut there (a loop of cross-signed CAs, say).
const MAX_CHAIN: usize = 16;

/// The device certificate `presented[0]` as the registry names it: None when its fields
/// cannot be read. `cas` are the CA file's certificates.
pub fn seen(presented: &[CertificateDer<'_>], cas: &[CaCert]) -> Option<SeenCertificate> {
    let (device, intermediates) = presented.split_first()?;
    let fields = certificate::fields(device)?;
    let sn = fields.serial_hex();
    let mut chain = vec![sn.clone()];
    let mut issuer = fields.issuer.to_vec();
    let mut self_signed = fields.issuer == fields.subject;
    let intermediates: Vec<_> = intermediates
        .iter()
        .filter_map(|c| certificate::fields(c))
        .collect();
    let mut used = vec![false; intermediates.len()];
    while !self_signed && chain.len() < MAX_CHAIN {
        // What the client sent first (its intermediates), then the CA file.
        let next = intermediates
            .iter()
            .enumerate()
            .find(|(i, f)| !used[*i] && f.subject == issuer.as_slice())
            .map(|(i, f)| {
                used[i] = true;
                (f.serial_hex(), f.issuer.to_vec(), f.issuer == f.subject)
            })
            .or_else(|| {
                cas.iter().find(|ca| ca.subject == issuer).map(|ca| {
                    (
                        ca.serial_hex.clone(),
                        ca.issuer.clone(),
                        ca.issuer == ca.subject,
                    )
                })
            });
        let Some((serial, next_issuer, anchor)) = next else {
            break;
        };
        if chain.contains(&serial) {
            break;
        }
        chain.push(serial);
        issuer = next_issuer;
        self_signed = anchor;
    }
    Some(SeenCertificate {
        ca_sn: chain.get(1).cloned().unwrap_or_default(),
        common_name: certificate::common_name(device).unwrap_or_default(),
        chain_sn: chain.join(","),
        sn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn ca(name: &str, serial: u64) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.serial_number = Some(serial.into());
        p
    }

    #[test]
    fn the_chain_runs_from_the_device_through_presented_intermediates_to_the_ca_file() {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca("Root", 0x7439);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::new(root_params, &root_key);
        let mid_key = KeyPair::generate().unwrap();
        let mid_params = ca("Intermediate", 0xab);
        let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
        let mid_issuer = rcgen::Issuer::new(mid_params, &mid_key);
        let mut device = CertificateParams::new(Vec::<String>::new()).unwrap();
        device
            .distinguished_name
            .push(DnType::CommonName, "VIN-1234-5678");
        device.serial_number = Some(vec![0x00, 0x9b, 0xf2].into());
        let device_key = KeyPair::generate().unwrap();
        let via_mid = device.clone().signed_by(&device_key, &mid_issuer).unwrap();
        let direct = device.signed_by(&device_key, &root_issuer).unwrap();
        let cas = [CaCert::of(root.der()).unwrap()];

        let seen_direct = seen(&[direct.der().clone()], &cas).unwrap();
        assert_eq!(seen_direct.sn, "9bf2");
        assert_eq!(seen_direct.ca_sn, "7439");
        assert_eq!(seen_direct.chain_sn, "9bf2,7439");
        assert_eq!(seen_direct.common_name, "VIN-1234-5678");

        let seen_mid = seen(&[via_mid.der().clone(), mid.der().clone()], &cas).unwrap();
        assert_eq!(seen_mid.ca_sn, "ab");
        assert_eq!(seen_mid.chain_sn, "9bf2,ab,7439");

        // The signer unknown: the device alone, no CA serial.
        let unknown = seen(&[via_mid.der().clone()], &cas).unwrap();
        assert_eq!(unknown.ca_sn, "");
        assert_eq!(unknown.chain_sn, "9bf2");
        assert_eq!(seen(&[], &cas), None);
    }
}
