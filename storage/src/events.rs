//! [`EventLog`]: an append-only log of opaque entries with increasing `u64` ids, the
//! persisted form of the broker's "stream" event dialect.
//!
//! # Layout
//!
//! Tree `event_log`: key = id as 8 big-endian bytes (so sled's byte order is id order),
//! value = format version byte (1), append time as u64 big-endian nanoseconds since the
//! epoch (what [`EventLog::trim_older_than`] compares), then the entry bytes verbatim.
//!
//! Tree `event_log_meta`: `reserved` = the highest id handed out or about to be, as u64
//! big-endian. Ids are taken from a block reserved (and flushed) ahead of use, so an id is
//! never handed out twice even when a crash loses the last unflushed entries or every
//! entry was trimmed: after a restart ids continue above the reservation, leaving a gap.
//! Consumers must treat ids as increasing, not contiguous.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::{Batch, Db, Tree};

use crate::error::{Result, StorageError};

const TREE_LOG: &str = "event_log";
const TREE_LOG_META: &str = "event_log_meta";
const RESERVED_KEY: &[u8] = b"reserved";

/// Version byte at the start of every value.
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8;

/// How many ids one reservation covers: one flush per this many appends.
const RESERVE_BLOCK: u64 = 1024;

/// Most entries removed in one sled batch, so trimming a huge backlog doesn't build one
/// huge batch in memory.
const TRIM_CHUNK: usize = 10_000;

/// Handle on the log. Cloning is cheap; clones share the id counter.
#[derive(Clone)]
pub struct EventLog {
    db: Db,
    log: Tree,
    meta: Tree,
    shared: Arc<Shared>,
}

struct Shared {
    /// Appends and trims are serialised: ids are allocated and written in order, so a
    /// reader that saw id N never later finds a smaller new id.
    writer: Mutex<Writer>,
    /// Entries currently in the log (counted once at open, then kept up to date), so
    /// trimming to a maximum length needs no scan.
    len: AtomicU64,
    /// The highest id written so far (0: none yet).
    last: AtomicU64,
}

struct Writer {
    next: u64,
    reserved: u64,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("len", &self.len())
            .field("last_id", &self.last_id())
            .finish_non_exhaustive()
    }
}

impl EventLog {
    pub(crate) fn open(db: &Db) -> Result<EventLog> {
        let log = db.open_tree(TREE_LOG)?;
        let meta = db.open_tree(TREE_LOG_META)?;
        let last_key = match log.last()? {
            Some((k, _)) => decode_id(&k)?,
            None => 0,
        };
        let reserved = match meta.get(RESERVED_KEY)? {
            Some(v) => decode_id(&v)?,
            None => 0,
        };
        let len = log.len() as u64;
        let next = last_key.max(reserved) + 1;
        Ok(EventLog {
            db: db.clone(),
            log,
            meta,
            shared: Arc::new(Shared {
                // Reserved up to `next - 1`: the first append reserves a new block.
                writer: Mutex::new(Writer {
                    next,
                    reserved: next - 1,
                }),
                len: AtomicU64::new(len),
                last: AtomicU64::new(last_key),
            }),
        })
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.shared.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `entry`, stamped with the current time; returns its id.
    pub fn append(&self, entry: &[u8]) -> Result<u64> {
        self.append_at(now_ns(), entry)
    }

    /// Appends `entry` stamped with `at_ns` (nanoseconds since the epoch); returns its id,
    /// greater than every id returned before, in this process or an earlier one.
    pub fn append_at(&self, at_ns: u64, entry: &[u8]) -> Result<u64> {
        let mut writer = self.writer();
        let id = writer.next;
        if id > writer.reserved {
            let reserved = id.saturating_add(RESERVE_BLOCK - 1);
            self.meta.insert(RESERVED_KEY, &reserved.to_be_bytes())?;
            // The reservation must be durable before any id under it is used.
            self.db.flush()?;
            writer.reserved = reserved;
        }
        let mut value = Vec::with_capacity(HEADER_LEN + entry.len());
        value.push(FORMAT_VERSION);
        value.extend_from_slice(&at_ns.to_be_bytes());
        value.extend_from_slice(entry);
        self.log.insert(id.to_be_bytes(), value)?;
        writer.next = id + 1;
        self.shared.len.fetch_add(1, Ordering::Relaxed);
        self.shared.last.store(id, Ordering::Release);
        Ok(id)
    }

    /// Up to `limit` entries with an id greater than `after`, in id order.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in self.log.range(start.to_be_bytes()..).take(limit) {
            let (k, v) = item?;
            let id = decode_id(&k)?;
            let (_, entry) = decode_value(&v)?;
            out.push((id, entry.to_vec()));
        }
        Ok(out)
    }

    /// The highest id written so far, by this process or an earlier one still in the log
    /// (0 when none). Entries after it don't exist yet.
    pub fn last_id(&self) -> u64 {
        self.shared.last.load(Ordering::Acquire)
    }

    /// The oldest id still in the log.
    pub fn first_id(&self) -> Result<Option<u64>> {
        self.log.first()?.map(|(k, _)| decode_id(&k)).transpose()
    }

    /// Entries currently in the log.
    pub fn len(&self) -> u64 {
        self.shared.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every entry with an id below `id`; returns how many were removed.
    pub fn trim_before(&self, id: u64) -> Result<u64> {
        self.trim_while(|entry_id, _| entry_id < id)
    }

    /// Removes the entries appended before `cutoff_ns` (nanoseconds since the epoch);
    /// returns how many were removed. Stops at the first newer entry: entries are appended
    /// in time order, give or take a clock step back, and a stray older entry behind a
    /// newer one goes with the next trim.
    pub fn trim_older_than(&self, cutoff_ns: u64) -> Result<u64> {
        self.trim_while(|_, at_ns| at_ns < cutoff_ns)
    }

    /// Removes the oldest entries until at most `max` remain; returns how many went.
    pub fn trim_to_len(&self, max: u64) -> Result<u64> {
        let mut excess = self.len().saturating_sub(max);
        self.trim_while(|_, _| {
            let remove = excess > 0;
            excess = excess.saturating_sub(1);
            remove
        })
    }

    /// Removes entries from the front while `remove(id, appended_at_ns)` says so.
    fn trim_while(&self, mut remove: impl FnMut(u64, u64) -> bool) -> Result<u64> {
        let _writer = self.writer();
        let mut removed = 0u64;
        loop {
            let mut batch = Batch::default();
            let mut in_batch = 0usize;
            let mut done = true;
            for item in self.log.iter() {
                let (k, v) = item?;
                let id = decode_id(&k)?;
                let (at_ns, _) = decode_value(&v)?;
                if !remove(id, at_ns) {
                    break;
                }
                batch.remove(k);
                in_batch += 1;
                if in_batch == TRIM_CHUNK {
                    done = false;
                    break;
                }
            }
            if in_batch > 0 {
                self.log.apply_batch(batch)?;
                removed += in_batch as u64;
                self.shared
                    .len
                    .fetch_sub(in_batch as u64, Ordering::Relaxed);
            }
            if done {
                break;
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "trimmed event log");
        }
        Ok(removed)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn decode_id(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(format!("id of {} bytes, expected 8", bytes.len())))
}

/// (append time in ns, entry bytes).
fn decode_value(value: &[u8]) -> Result<(u64, &[u8])> {
    match value.split_first() {
        Some((&FORMAT_VERSION, rest)) if rest.len() >= 8 => {
            let (at, entry) = rest.split_at(8);
            let at = <[u8; 8]>::try_from(at).map_err(|_| corrupt("truncated header"))?;
            Ok((u64::from_be_bytes(at), entry))
        }
        Some((&FORMAT_VERSION, _)) => Err(corrupt("truncated header")),
        Some((version, _)) => Err(corrupt(format!("unknown format version {version}"))),
        None => Err(corrupt("empty value")),
    }
}

fn corrupt(reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        tree: TREE_LOG,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> (Db, EventLog) {
        // sled releases its file lock asynchronously after a drop: retry briefly.
        let mut last = None;
        for _ in 0..50 {
            match sled::open(dir) {
                Ok(db) => {
                    let log = EventLog::open(&db).unwrap();
                    return (db, log);
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        panic!("cannot reopen: {last:?}");
    }

    fn ids(entries: &[(u64, Vec<u8>)]) -> Vec<u64> {
        entries.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn ids_increase_and_reads_resume_after_an_id() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let log = EventLog::open(&db).unwrap();
        assert_eq!((log.last_id(), log.len()), (0, 0));
        assert!(log.read_after(0, 10).unwrap().is_empty());
        let a = log.append(b"a").unwrap();
        let b = log.append(b"b").unwrap();
        let c = log.append(b"").unwrap();
        assert!(a >= 1 && a < b && b < c);
        assert_eq!(log.last_id(), c);
        assert_eq!(log.len(), 3);
        let all = log.read_after(0, 10).unwrap();
        assert_eq!(
            all,
            vec![(a, b"a".to_vec()), (b, b"b".to_vec()), (c, Vec::new())]
        );
        assert_eq!(ids(&log.read_after(a, 10).unwrap()), vec![b, c]);
        assert_eq!(ids(&log.read_after(0, 2).unwrap()), vec![a, b]);
        assert!(log.read_after(c, 10).unwrap().is_empty());
        assert!(log.read_after(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(log.first_id().unwrap(), Some(a));
    }

    #[test]
    fn trims_by_id_age_and_length() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let log = EventLog::open(&db).unwrap();
        let ids: Vec<u64> = (0..10u64)
            .map(|i| log.append_at(1_000 + i, &[i as u8]).unwrap())
            .collect();
        assert_eq!(log.trim_before(ids[2]).unwrap(), 2);
        assert_eq!(log.first_id().unwrap(), Some(ids[2]));
        assert_eq!(log.trim_older_than(1_005).unwrap(), 3);
        assert_eq!(log.first_id().unwrap(), Some(ids[5]));
        assert_eq!(log.len(), 5);
        assert_eq!(log.trim_to_len(2).unwrap(), 3);
        assert_eq!(log.trim_to_len(2).unwrap(), 0);
        assert_eq!(
            self::ids(&log.read_after(0, 10).unwrap()),
            vec![ids[8], ids[9]]
        );
        assert_eq!(log.len(), 2);
        // Trimming doesn't move the id counter back.
        let next = log.append(b"x").unwrap();
        assert!(next > ids[9]);
    }

    #[test]
    fn trimming_more_than_a_chunk_removes_everything_asked() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let log = EventLog::open(&db).unwrap();
        let n = TRIM_CHUNK as u64 + 5;
        for i in 0..n {
            log.append_at(i, b"e").unwrap();
        }
        assert_eq!(log.trim_older_than(n - 1).unwrap(), n - 1);
        assert_eq!(log.len(), 1);
        assert_eq!(log.read_after(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn ids_keep_increasing_across_reopen_even_when_everything_was_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let (db, log) = open(dir.path());
        let a = log.append(b"one").unwrap();
        let b = log.append(b"two").unwrap();
        db.flush().unwrap();
        drop((db, log));

        let (db, log) = open(dir.path());
        assert_eq!(log.len(), 2);
        assert_eq!(log.last_id(), b);
        assert_eq!(
            log.read_after(0, 10).unwrap(),
            vec![(a, b"one".to_vec()), (b, b"two".to_vec())]
        );
        let c = log.append(b"three").unwrap();
        assert!(c > b);
        assert_eq!(log.trim_before(c + 1).unwrap(), 3);
        assert!(log.is_empty());
        db.flush().unwrap();
        drop((db, log));

        let (_db, log) = open(dir.path());
        assert!(log.is_empty());
        let d = log.append(b"four").unwrap();
        assert!(d > c, "{d} after {c}");
    }

    #[test]
    fn ids_are_not_reused_when_unflushed_entries_are_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (db, log) = open(dir.path());
        let a = log.append(b"kept").unwrap();
        db.flush().unwrap();
        // Simulate a crash that lost the newest entry but not its reservation.
        let lost = log.append(b"lost").unwrap();
        log.log.remove(lost.to_be_bytes()).unwrap();
        db.flush().unwrap();
        drop((db, log));

        let (_db, log) = open(dir.path());
        assert_eq!(ids(&log.read_after(0, 10).unwrap()), vec![a]);
        assert!(log.append(b"new").unwrap() > lost);
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let log = EventLog::open(&db).unwrap();
        log.log.insert(1u64.to_be_bytes(), vec![9, 0]).unwrap();
        assert!(matches!(
            log.read_after(0, 10),
            Err(StorageError::Corrupt { .. })
        ));
        log.log
            .insert(1u64.to_be_bytes(), vec![FORMAT_VERSION, 0])
            .unwrap();
        assert!(log.read_after(0, 10).is_err());
        log.log.insert(1u64.to_be_bytes(), Vec::new()).unwrap();
        assert!(log.trim_before(5).is_err());
        log.log.insert([0u8], b"x".to_vec()).unwrap();
        assert!(log.first_id().is_err());
    }
}
