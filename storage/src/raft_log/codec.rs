//! On-disk format of the Raft log store's records.
//!
//! # Layout (format version 1)
//!
//! Keys of the log tree are the entry's index as 8 big-endian bytes, so sled's bytewise key
//! order is index order and a range scan returns entries in log order.
//!
//! Every value starts with one format version byte, then:
//!
//! - log entry (`raft_log` tree), vote, committed log id, last purged log id (`raft_state`
//!   tree): the record as JSON, in openraft's own serde representation of `Entry`, `Vote` and
//!   `LogId`. The application's commands sit inside an entry's payload and carry their own
//!   version (the cluster crate's concern, not this format's).
//! - snapshot (`raft_snapshot` tree): the length of the metadata JSON as a big-endian u32,
//!   the metadata (openraft's `SnapshotMeta`) as JSON, then the state machine's bytes
//!   verbatim to the end of the value. Meta and data live in one value, so replacing the
//!   snapshot is one atomic insert.
//!
//! # Evolving the format
//!
//! Records are append-only across versions: a new encoding gets a new version byte and the
//! decoder keeps reading every older one. A version this build does not know is a
//! [`DecodeError`] naming it (never a panic, never a guess), so a store written by a newer
//! build is refused rather than misread.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::DecodeError;

/// The version byte written at the start of every value.
pub(crate) const FORMAT_VERSION: u8 = 1;

type DecodeResult<T> = std::result::Result<T, DecodeError>;

/// The key of the log entry at `index`.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a log tree key stands for.
pub(crate) fn parse_index_key(key: &[u8]) -> DecodeResult<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| DecodeError(format!("log key of {} bytes, expected 8", key.len())))
}

/// A record as format-1 JSON behind its version byte.
pub(crate) fn encode<T: Serialize>(record: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, record)?;
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(value: &[u8]) -> DecodeResult<T> {
    let body = strip_version(value)?;
    serde_json::from_slice(body).map_err(|e| DecodeError(format!("invalid record: {e}")))
}

/// A snapshot's metadata and the state machine's bytes, as one value.
pub(crate) fn encode_snapshot<M: Serialize>(meta: &M, data: &[u8]) -> serde_json::Result<Vec<u8>> {
    let meta = serde_json::to_vec(meta)?;
    // Snapshot metadata is a log id, a membership and an id: far below 4 GiB. A larger one
    // could not be read back, so refuse to write it.
    let meta_len = u32::try_from(meta.len()).map_err(|_| {
        serde::ser::Error::custom(format!("snapshot metadata of {} bytes", meta.len()))
    })?;
    let mut out = Vec::with_capacity(1 + 4 + meta.len() + data.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&meta_len.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    Ok(out)
}

pub(crate) fn decode_snapshot<M: DeserializeOwned>(value: &[u8]) -> DecodeResult<(M, Vec<u8>)> {
    let body = strip_version(value)?;
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| DecodeError("truncated snapshot: no metadata length".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return Err(DecodeError(format!(
            "truncated snapshot: metadata of {len} bytes, {} left",
            rest.len()
        )));
    }
    let (meta, data) = rest.split_at(len);
    let meta = serde_json::from_slice(meta)
        .map_err(|e| DecodeError(format!("invalid snapshot metadata: {e}")))?;
    Ok((meta, data.to_vec()))
}

fn strip_version(value: &[u8]) -> DecodeResult<&[u8]> {
    match value.split_first() {
        Some((&FORMAT_VERSION, body)) => Ok(body),
        Some((v, _)) => Err(DecodeError(format!(
            "unsupported format version {v} (this build reads {FORMAT_VERSION}); \
             written by a newer Skein?"
        ))),
        None => Err(DecodeError("empty value".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Vote};

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 3), index)
    }

    #[test]
    fn index_keys_sort_numerically_and_round_trip() {
        let indexes = [0u64, 1, 255, 256, 65_536, 1 << 40, u64::MAX];
        let keys: Vec<_> = indexes.iter().map(|i| index_key(*i)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (i, k) in indexes.iter().zip(&keys) {
            assert_eq!(parse_index_key(k).unwrap(), *i);
        }
        assert!(parse_index_key(&[0; 7]).is_err());
        assert!(parse_index_key(&[0; 9]).is_err());
    }

    #[test]
    fn records_round_trip_behind_a_version_byte() {
        let vote = Vote::new_committed(7, 2u64);
        let bytes = encode(&vote).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Vote<u64>>(&bytes).unwrap(), vote);

        let id = Some(log_id(4, 1_000_000));
        assert_eq!(
            decode::<Option<LogId<u64>>>(&encode(&id).unwrap()).unwrap(),
            id
        );
    }

    #[test]
    fn unknown_version_empty_and_garbage_are_errors() {
        let mut bytes = encode(&log_id(1, 1)).unwrap();
        bytes[0] = 2;
        let e = decode::<LogId<u64>>(&bytes).unwrap_err();
        assert!(e.0.contains("unsupported format version 2"), "{}", e.0);
        assert!(
            decode::<LogId<u64>>(&[0]).is_err(),
            "version 0 never existed"
        );
        assert!(decode::<LogId<u64>>(&[]).unwrap_err().0.contains("empty"));
        assert!(decode::<LogId<u64>>(&[FORMAT_VERSION, b'{']).is_err());
        // A well-formed record of another type is not silently accepted.
        assert!(decode::<LogId<u64>>(&encode(&"text").unwrap()).is_err());
    }

    #[test]
    fn snapshots_round_trip_with_arbitrary_data() {
        let meta = log_id(9, 42);
        let data: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
        let bytes = encode_snapshot(&meta, &data).unwrap();
        let (m, d) = decode_snapshot::<LogId<u64>>(&bytes).unwrap();
        assert_eq!((m, d), (meta, data));

        let (_, empty) =
            decode_snapshot::<LogId<u64>>(&encode_snapshot(&meta, &[]).unwrap()).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn damaged_snapshots_are_errors() {
        let bytes = encode_snapshot(&log_id(1, 2), b"state").unwrap();
        // Every truncation inside the header or metadata is caught, none panics.
        let meta_end = 1 + 4 + serde_json::to_vec(&log_id(1, 2)).unwrap().len();
        for len in 0..meta_end {
            assert!(
                decode_snapshot::<LogId<u64>>(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut newer = bytes.clone();
        newer[0] = 7;
        let e = decode_snapshot::<LogId<u64>>(&newer).unwrap_err();
        assert!(e.0.contains("unsupported format version 7"), "{}", e.0);

        let mut huge = bytes;
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_snapshot::<LogId<u64>>(&huge)
            .unwrap_err()
            .0
            .contains("truncated"));
    }
}
