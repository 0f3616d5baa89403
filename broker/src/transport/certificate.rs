//! What the broker reads of a client certificate, from its DER encoding: the subject common
//! name (a username or client id), the serial number, and the issuer and subject names
//! (to find the certificate that signed it, for the device certificate registry). A few
//! fields do not justify a full X.509 parser. The certificate has been verified by rustls
//! before this reads it.

/// One DER element: its tag, its contents and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// The explicit `[0]` tag of the certificate's version.
const VERSION: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

const INTEGER: u8 = 0x02;

/// The fields of a certificate the registry needs, borrowed from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    /// The serial number's content octets (big-endian, as encoded).
    serial: &'a [u8],
    /// The issuer and subject names, whole DER elements (compared byte for byte: a CA
    /// writes its subject into the certificates it issues as it is).
    pub issuer: &'a [u8],
    pub subject: &'a [u8],
}

impl Fields<'_> {
    /// The serial number in lower-case hex, one pair of digits per octet, without the
    /// leading zero octet DER adds to keep a number positive (as `openssl x509 -serial`
    /// shows it, in lower case).
    pub fn serial_hex(&self) -> String {
        let mut serial = self.serial;
        while serial.len() > 1 && serial[0] == 0 {
            serial = &serial[1..];
        }
        serial.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A whole DER element (tag and length included) and what follows it.
fn whole(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, _, rest) = element(der)?;
    Some((&der[..der.len() - rest.len()], rest))
}

/// The serial number, issuer and subject of a certificate.
pub fn fields(der: &[u8]) -> Option<Fields<'_>> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut fields = tbs;
    let (tag, _, rest) = element(fields)?;
    if tag == VERSION {
        fields = rest;
    }
    let (INTEGER, serial, rest) = element(fields)? else {
        return None;
    };
    if serial.is_empty() {
        return None;
    }
    // signature, then issuer, validity, subject.
    let rest = element(rest)?.2;
    let (issuer, rest) = whole(rest)?;
    let rest = element(rest)?.2;
    let (subject, _) = whole(rest)?;
    Some(Fields {
        serial,
        issuer,
        subject,
    })
}

/// The first common name of the certificate's subject, if it has one in a string type
/// (UTF8String, PrintableString, IA5String, TeletexString).
pub fn common_name(der: &[u8]) -> Option<String> {
    let subject = fields(der)?.subject;
    let (SEQUENCE, mut names, _) = element(subject)? else {
        return None;
    };
    while let Some((tag, set, rest)) = element(names) {
        names = rest;
        if tag != SET {
            continue;
        }
        let mut attributes = set;
        while let Some((SEQUENCE, attribute, rest)) = element(attributes) {
            attributes = rest;
            let Some((OID, oid, value)) = element(attribute) else {
                continue;
            };
            if oid != COMMON_NAME {
                continue;
            }
            let (kind, text, _) = element(value)?;
            return match kind {
                0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(text.to_vec()).ok(),
                _ => None,
            };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element from its tag and contents (short or long form length).
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if contents.len() < 0x80 {
            out.push(contents.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(contents);
        out
    }

    fn name(attributes: &[(&[u8], u8, &str)]) -> Vec<u8> {
        let mut rdns = Vec::new();
        for (oid, kind, value) in attributes {
            let attribute = [tlv(OID, oid), tlv(*kind, value.as_bytes())].concat();
            rdns.extend(tlv(SET, &tlv(SEQUENCE, &attribute)));
        }
        tlv(SEQUENCE, &rdns)
    }

    fn certificate(subject: Vec<u8>, padding: usize) -> Vec<u8> {
        let tbs = [
            tlv(VERSION, &tlv(0x02, &[2])),
            tlv(0x02, &[0x1b, 0xf2]),
            tlv(SEQUENCE, &tlv(OID, &[0x2a, 0x86, 0x48])),
            name(&[(COMMON_NAME, 0x0c, "Issuing CA")]),
            tlv(SEQUENCE, &vec![0x17; padding]),
            subject,
        ]
        .concat();
        tlv(
            SEQUENCE,
            &[tlv(SEQUENCE, &tbs), tlv(0x03, &[0, 1, 2])].concat(),
        )
    }

    #[test]
    fn the_subject_common_name_is_read_not_the_issuer_s() {
        let organisation: &[u8] = &[0x55, 0x04, 0x0a];
        let subject = name(&[
            (organisation, 0x13, "Acme"),
            (COMMON_NAME, 0x0c, "VIN-1234-5678"),
        ]);
        assert_eq!(
            common_name(&certificate(subject.clone(), 4)).as_deref(),
            Some("VIN-1234-5678")
        );
        // Long-form lengths.
        assert_eq!(
            common_name(&certificate(subject, 300)).as_deref(),
            Some("VIN-1234-5678")
        );
    }

    #[test]
    fn serial_issuer_and_subject_are_read() {
        let subject = name(&[(COMMON_NAME, 0x0c, "VIN-1234-5678")]);
        let der = certificate(subject.clone(), 4);
        let f = fields(&der).expect("fields");
        assert_eq!(f.serial_hex(), "1bf2");
        assert_eq!(f.subject, subject.as_slice());
        assert_eq!(
            f.issuer,
            name(&[(COMMON_NAME, 0x0c, "Issuing CA")]).as_slice()
        );
        // DER's sign octet is not part of the number; a zero serial stays one pair.
        let positive = Fields {
            serial: &[0x00, 0x80, 0x01],
            issuer: &[],
            subject: &[],
        };
        assert_eq!(positive.serial_hex(), "8001");
        let zero = Fields {
            serial: &[0x00],
            issuer: &[],
            subject: &[],
        };
        assert_eq!(zero.serial_hex(), "00");
        for cut in 0..der.len() {
            // Truncated input never panics.
            let _ = fields(&der[..cut]);
        }
    }

    #[test]
    fn no_common_name_or_garbage_is_none() {
        let organisation: &[u8] = &[0x55, 0x04, 0x0a];
        assert_eq!(
            common_name(&certificate(name(&[(organisation, 0x13, "Acme")]), 4)),
            None
        );
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let whole = certificate(name(&[(COMMON_NAME, 0x0c, "x")]), 4);
        for cut in 0..whole.len() {
            // Truncated input never panics.
            let _ = common_name(&whole[..cut]);
        }
    }
}
