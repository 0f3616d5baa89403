//! Key layout of the per-client trees.
//!
//! Key = client id bytes ++ 0x00 ++ big-endian number (u64 queue sequence or
//! u16 packet id). sled orders keys bytewise, so big-endian numbers make a
//! prefix scan of `client id ++ 0x00` return one client's entries in numeric
//! order, and the separator keeps client "a" from seeing client "ab"'s
//! entries. That only holds if client ids never contain 0x00, which MQTT
//! guarantees and [`client_prefix`] enforces.

use crate::codec::DecodeError;
use crate::error::{Result, StorageError};

const SEPARATOR: u8 = 0;

/// Rejects client ids that would break the key layout.
pub(crate) fn check_client_id(client_id: &str) -> Result<()> {
    if client_id.as_bytes().contains(&SEPARATOR) {
        return Err(StorageError::InvalidClientId {
            client_id: client_id.to_owned(),
        });
    }
    Ok(())
}

/// The prefix under which all of one client's entries live.
pub(crate) fn client_prefix(client_id: &str) -> Result<Vec<u8>> {
    check_client_id(client_id)?;
    let mut key = Vec::with_capacity(client_id.len() + 1 + 8);
    key.extend_from_slice(client_id.as_bytes());
    key.push(SEPARATOR);
    Ok(key)
}

pub(crate) fn seq_key(client_id: &str, seq: u64) -> Result<Vec<u8>> {
    let mut key = client_prefix(client_id)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

pub(crate) fn packet_key(client_id: &str, packet_id: u16) -> Result<Vec<u8>> {
    let mut key = client_prefix(client_id)?;
    key.extend_from_slice(&packet_id.to_be_bytes());
    Ok(key)
}

/// The number after `prefix` in a key found by scanning that prefix.
fn suffix<const N: usize>(prefix: &[u8], key: &[u8]) -> std::result::Result<[u8; N], DecodeError> {
    key.strip_prefix(prefix)
        .and_then(|rest| <[u8; N]>::try_from(rest).ok())
        .ok_or_else(|| {
            DecodeError(format!(
                "key of {} bytes under a {}-byte client prefix, expected a {N}-byte suffix",
                key.len(),
                prefix.len()
            ))
        })
}

pub(crate) fn parse_seq(prefix: &[u8], key: &[u8]) -> std::result::Result<u64, DecodeError> {
    suffix(prefix, key).map(u64::from_be_bytes)
}

pub(crate) fn parse_packet_id(prefix: &[u8], key: &[u8]) -> std::result::Result<u16, DecodeError> {
    suffix(prefix, key).map(u16::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        let keys: Vec<_> = [0u64, 1, 255, 256, 65_536, u64::MAX]
            .iter()
            .map(|s| seq_key("c", *s).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn neighbouring_client_ids_do_not_share_prefixes() {
        let a = client_prefix("a").unwrap();
        for other in ["ab", "a/b", "a b", "", "b"] {
            assert!(!seq_key(other, 0).unwrap().starts_with(&a), "{other:?}");
            assert!(
                !packet_key(other, 0x6200).unwrap().starts_with(&a),
                "{other:?}"
            );
        }
        assert!(seq_key("a", 5).unwrap().starts_with(&a));
    }

    #[test]
    fn nul_in_client_id_is_rejected() {
        for id in ["\0", "a\0", "a\0b"] {
            assert!(matches!(
                client_prefix(id),
                Err(StorageError::InvalidClientId { .. })
            ));
            assert!(seq_key(id, 1).is_err());
            assert!(packet_key(id, 1).is_err());
        }
    }

    #[test]
    fn parse_round_trips_and_rejects_bad_lengths() {
        let p = client_prefix("c").unwrap();
        assert_eq!(parse_seq(&p, &seq_key("c", 300).unwrap()).unwrap(), 300);
        assert_eq!(
            parse_packet_id(&p, &packet_key("c", 513).unwrap()).unwrap(),
            513
        );
        assert!(parse_seq(&p, &packet_key("c", 1).unwrap()).is_err());
        assert!(parse_packet_id(&p, &seq_key("c", 1).unwrap()).is_err());
        assert!(parse_seq(&p, &p).is_err());
        assert!(parse_seq(b"x\0", &seq_key("c", 1).unwrap()).is_err());
    }
}
