//! [`EventLog`]: an append-only log of opaque entries with increasing `u64` ids, the
//! persisted form of the broker's "stream" event dialect.
//!
//! # Layout
//!
//! Entries live in append-only segment files in the log's directory (`event_log/` in the
//! store's), each named by the first id it may hold, zero-padded so that name order is id
//! order (`00000000000000000001.seg`). See `segment.rs` for the file format: a versioned
//! header, then records of length, crc32, id, append time (ns since the epoch, what
//! [`EventLog::trim_older_than`] compares) and the entry bytes. The newest segment takes
//! the appends; once it reaches the segment size a new one starts. Memory per segment is
//! its bounds plus a sparse index (one record position every few KiB), never per entry:
//! sled kept hundreds of bytes resident per entry, hundreds of MB at the default retention.
//!
//! Trimming moves a watermark (the first live id) and deletes the segment files wholly
//! below it, never the newest. Sled tree `event_log_meta` holds `first` = the watermark,
//! so trimmed entries stay trimmed across a restart, and `reserved` = the highest id
//! handed out or about to be, both u64 big-endian. Ids are taken from a block reserved
//! (and flushed) ahead of use, so an id is never handed out twice even when a crash loses
//! the unsynced tail of the log or every entry was trimmed: after a restart ids continue
//! above the reservation, leaving a gap. Consumers must treat ids as increasing, not
//! contiguous. Ids never wrap: once `u64::MAX` is handed out (only a corrupt reservation
//! gets near it) appends fail with [`StorageError::IdsExhausted`].
//!
//! # Crashes and damage
//!
//! Appends reach the file before they return (readable at once) but are durable only
//! after [`EventLog::sync`], which also notes in `event_log_meta` (`synced`: the newest
//! segment's first id and synced length, u64 big-endian each) how far that segment is
//! durable. The note reaches the disk with sled's next flush, so it may lag: it is a
//! lower bound. Older segments were synced when they filled.
//!
//! On open the segments are scanned to rebuild the index. A bad record in the newest
//! segment at or past its synced length is a write torn by a crash: the file is cut off
//! there. A bad record anywhere else is damage, not a crash, and nothing is cut off: the
//! segment keeps its readable prefix, takes no more appends (the next append starts a new
//! segment), and its unreadable tail may hold any id below the next segment's name (any
//! id at all while it is the newest). Reads reaching that tail fail with
//! [`StorageError::Corrupt`], as does [`EventLog::first_id`] while the tail is the head
//! of the log; reads starting past it work. [`EventLog::len`] counts readable entries
//! only.
//!
//! A trim drops a damaged segment, tail and all, only when it provably reaches past the
//! tail, judged by what follows it: trimming by id, when the next segment's name (its
//! first id) is at most the cutoff; by age, when the next segment's first record is older
//! than the cutoff; by length, when more entries must go than the damaged segment's
//! readable live ones (the tail's entries go uncounted: they were never in `len`). A trim
//! that cannot prove it stops at the damage and returns `Ok` with what it removed before
//! it, so that retention keeps running; as the log moves on, a later trim passes it. The
//! newest segment is never dropped, damaged or not.
//!
//! Older builds kept the entries in sled tree `event_log`; they are moved into segments
//! on open.

mod recovery;
mod segment;
#[cfg(test)]
mod tests;
mod trim;

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::{Db, Tree};

use self::segment::{corrupt, io_error, Cursor, Segment, Step, HEADER_LEN, MAX_ENTRY_LEN};
use crate::error::{Result, StorageError};

/// Name of the log in errors, and of the sled tree older builds kept it in.
const LOG_NAME: &str = "event_log";
const TREE_LOG_META: &str = "event_log_meta";
const RESERVED_KEY: &[u8] = b"reserved";
const FIRST_KEY: &[u8] = b"first";
const SYNCED_KEY: &[u8] = b"synced";

/// How many ids one reservation covers: one sled flush per this many appends.
const RESERVE_BLOCK: u64 = 1024;

#[derive(Clone, Copy, Debug)]
struct Options {
    /// A segment takes appends until the next would take it past this size.
    segment_bytes: u64,
    /// Distance in bytes between sparse index points: what a read scans at most to find
    /// its first entry, against 16 bytes of memory per point.
    index_every: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: 8 << 20,
            index_every: 8 << 10,
        }
    }
}

/// Handle on the log. Cloning is cheap; clones share everything.
#[derive(Clone)]
pub struct EventLog {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    db: Db,
    meta: Tree,
    options: Options,
    /// Appends and trims are serialised: ids are allocated and written in order, so a
    /// reader that saw id N never later finds a smaller new id. Taken before `state`.
    writer: Mutex<Writer>,
    /// What readers need; held only to snapshot or publish, never during I/O.
    state: RwLock<State>,
    /// Readable live entries, kept up to date so `len` and trimming to a length need no
    /// scan.
    len: AtomicU64,
    /// The highest id written so far (0: none yet).
    last: AtomicU64,
    /// Something was written since the last sync.
    dirty: AtomicBool,
    /// `dir` is a private temporary directory, removed with the last handle.
    temporary: bool,
}

struct Writer {
    /// The next id to hand out; `None` once `u64::MAX` has been.
    next: Option<u64>,
    reserved: u64,
    /// The watermark as last stored in `event_log_meta`.
    stored_first: u64,
    /// Segment files trimmed away but not deleted yet. A file goes only once the
    /// watermark above it is stored (else a restart would find its entries live again
    /// with the file gone); a failed store or deletion is retried by the next trim.
    doomed: Vec<Arc<Path>>,
}

struct State {
    /// Oldest first; the last one takes appends. Empty until the first append.
    segments: VecDeque<Segment>,
    /// Watermark: every live id is at least this. While the log is not empty it is the
    /// first live id, unless the head of the log is a damaged segment's unreadable tail.
    first: u64,
    /// Offset of the first live record in `segments[0]` (its end when none is live).
    head_offset: u64,
    /// Records of `segments[0]` before `head_offset`, i.e. trimmed.
    head_skipped: u64,
}

/// How far the newest segment is known to be durable: its first id and synced length.
/// Stored under `synced` as both u64 big-endian, so byte order is field order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Synced {
    first_id: u64,
    len: u64,
}

impl Synced {
    fn encode(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.first_id.to_be_bytes());
        bytes[8..].copy_from_slice(&self.len.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Synced> {
        let (first_id, len) = bytes.split_first_chunk::<8>()?;
        Some(Synced {
            first_id: u64::from_be_bytes(*first_id),
            len: u64::from_be_bytes(<[u8; 8]>::try_from(len).ok()?),
        })
    }
}

/// What a reader snapshots of one segment before reading it without the lock.
struct Span {
    file: Arc<fs::File>,
    path: Arc<Path>,
    offset: u64,
    end: u64,
    last_id: u64,
    bad: Option<Arc<str>>,
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
    /// Opens (creating if needed) the log in `dir`, with its metadata in `db`.
    pub(crate) fn open(db: &Db, dir: &Path) -> Result<EventLog> {
        EventLog::open_with(db, dir, Options::default(), false)
    }

    /// A log in a new private directory under the system's temporary directory, removed
    /// when the last handle is dropped.
    pub(crate) fn open_temporary(db: &Db) -> Result<EventLog> {
        let dir = create_temp_dir()?;
        EventLog::open_with(db, &dir, Options::default(), true).inspect_err(|_| {
            let _ = fs::remove_dir_all(&dir);
        })
    }

    fn open_with(db: &Db, dir: &Path, options: Options, temporary: bool) -> Result<EventLog> {
        create_dir_durably(dir)?;
        let meta = db.open_tree(TREE_LOG_META)?;
        let reserved = get_u64(&meta, RESERVED_KEY)?.unwrap_or(0);
        let watermark = get_u64(&meta, FIRST_KEY)?.unwrap_or(0);
        let synced = get_synced(&meta)?;
        let state = recovery::recover(dir, watermark, synced, options)?;
        let len = state
            .segments
            .iter()
            .map(|s| s.count)
            .sum::<u64>()
            .saturating_sub(state.head_skipped);
        let last = state
            .segments
            .iter()
            .rev()
            .find(|s| s.count > 0)
            .map_or(0, |s| s.last_id);
        let top = last.max(reserved);
        let log = EventLog {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                db: db.clone(),
                meta,
                options,
                // Reserved up to `top`: the first append reserves a new block.
                writer: Mutex::new(Writer {
                    next: top.checked_add(1),
                    reserved: top,
                    stored_first: watermark,
                    doomed: Vec::new(),
                }),
                state: RwLock::new(state),
                len: AtomicU64::new(len),
                last: AtomicU64::new(last),
                dirty: AtomicBool::new(false),
                temporary,
            }),
        };
        log.migrate_from_sled()?;
        Ok(log)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.shared.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `entry`, stamped with the current time; returns its id.
    pub fn append(&self, entry: &[u8]) -> Result<u64> {
        self.append_at(now_ns(), entry)
    }

    /// Appends `entry` stamped with `at_ns` (nanoseconds since the epoch); returns its id,
    /// greater than every id returned before, in this process or an earlier one.
    pub fn append_at(&self, at_ns: u64, entry: &[u8]) -> Result<u64> {
        self.append_batch(&[(at_ns, entry)])
    }

    /// Appends `(at_ns, entry)` pairs in order with one write; returns the id of the last.
    /// The batch's ids are consecutive, so the first is the returned id minus the batch
    /// length plus one. An empty batch appends nothing and returns [`EventLog::last_id`].
    /// Entries over 16 MiB are refused (the whole batch, before anything is written), and
    /// so is a batch that would need ids past `u64::MAX` ([`StorageError::IdsExhausted`]).
    pub fn append_batch(&self, entries: &[(u64, &[u8])]) -> Result<u64> {
        if let Some((_, big)) = entries.iter().find(|(_, e)| e.len() > MAX_ENTRY_LEN) {
            return Err(StorageError::EntryTooLarge {
                len: big.len(),
                max: MAX_ENTRY_LEN,
            });
        }
        let mut writer = self.writer();
        if entries.is_empty() {
            return Ok(self.last_id());
        }
        let first = writer.next.ok_or(StorageError::IdsExhausted)?;
        let last = first
            .checked_add(entries.len() as u64 - 1)
            .ok_or(StorageError::IdsExhausted)?;
        if last > writer.reserved {
            // Saturating: near `u64::MAX` a shorter block is all there is to reserve.
            let reserved = last.saturating_add(RESERVE_BLOCK - 1);
            self.shared
                .meta
                .insert(RESERVED_KEY, &reserved.to_be_bytes())?;
            // The reservation must be durable before any id under it is used.
            self.shared.db.flush()?;
            writer.reserved = reserved;
        }
        let size = entries
            .iter()
            .map(|(_, e)| segment::RECORD_HEADER_LEN + e.len())
            .sum();
        let mut buf = Vec::with_capacity(size);
        let mut records = Vec::with_capacity(entries.len());
        for (i, (at_ns, entry)) in entries.iter().enumerate() {
            // No overflow: `first + len - 1` was checked above.
            let id = first + i as u64;
            records.push((id, buf.len() as u64));
            segment::encode_record(&mut buf, id, *at_ns, entry)?;
        }
        // Burnt even if the write fails: a partial write may have reached the disk.
        writer.next = last.checked_add(1);
        self.write_records(&buf, &records)?;
        Ok(last)
    }

    /// Writes encoded records (`records`: id and offset in `buf` of each, ids increasing
    /// and above every id in the files) to the newest segment, starting a new one first if
    /// it is full, then makes them visible. The caller holds the writer lock.
    fn write_records(&self, buf: &[u8], records: &[(u64, u64)]) -> Result<()> {
        let (Some(&(first_id, _)), Some(&(last_id, _))) = (records.first(), records.last()) else {
            return Ok(());
        };
        // One snapshot suffices: the caller holds the writer lock, and only writer-lock
        // holders change `segments`.
        let (newest, needs_new) = {
            let state = self.state();
            match state.segments.back() {
                None => (None, true),
                // A segment damaged before the last restart takes no more appends: its
                // unreadable tail would hide them.
                Some(seg) => (
                    Some((seg.file.clone(), seg.path.clone(), seg.len)),
                    seg.bad.is_some()
                        || seg.count > 0
                            && seg.len + buf.len() as u64 > self.shared.options.segment_bytes,
                ),
            }
        };
        let (file, path, offset) = match newest {
            Some((file, path, len)) if !needs_new => (file, path, len),
            previous => {
                let (file, path) =
                    self.start_segment(first_id, previous.map(|(file, path, _)| (file, path)))?;
                (file, path, HEADER_LEN)
            }
        };
        segment::write_at(&file, &path, offset, buf)?;
        self.shared.dirty.store(true, Ordering::Release);

        let mut state = self.state_mut();
        // A damaged segment still in the list has a live unreadable tail: the watermark
        // must stay below it, or reads from the start would skip it without a word.
        let head_moves_to_new = self.is_empty() && state.segments.iter().all(|s| s.bad.is_none());
        let index_every = self.shared.options.index_every;
        if let Some(seg) = state.segments.back_mut() {
            for &(id, at) in records {
                seg.note_record(id, offset + at, index_every);
            }
            seg.len = offset + buf.len() as u64;
        }
        if head_moves_to_new {
            state.first = first_id;
        }
        self.shared
            .len
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.shared.last.store(last_id, Ordering::Release);
        Ok(())
    }

    /// Starts the segment whose first id is `first_id`, after syncing the one it succeeds
    /// (so [`EventLog::sync`] only ever needs to sync the newest). Returns the new file and path.
    fn start_segment(
        &self,
        first_id: u64,
        previous: Option<(Arc<fs::File>, Arc<Path>)>,
    ) -> Result<(Arc<fs::File>, Arc<Path>)> {
        let dir = &self.shared.dir;
        if let Some((file, path)) = previous {
            file.sync_data().map_err(io_error(&path))?;
        }
        let seg = Segment::create(dir, first_id)?;
        // The new file's directory entry must be durable before its records are.
        sync_dir(dir)?;
        let newest = (seg.file.clone(), seg.path.clone());
        self.state_mut().segments.push_back(seg);
        Ok(newest)
    }

    /// Makes every append so far durable (fsync of the newest segment; older ones were
    /// synced when they filled). Returns at once when nothing was appended since the last.
    pub fn sync(&self) -> Result<()> {
        if !self.shared.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let newest = self.state().segments.back().map(|s| {
            let synced = Synced {
                first_id: s.first_id,
                len: s.len,
            };
            (s.file.clone(), s.path.clone(), synced)
        });
        if let Some((file, path, synced)) = newest {
            if let Err(e) = file.sync_data() {
                self.shared.dirty.store(true, Ordering::Release);
                return Err(io_error(&path)(e));
            }
            self.note_synced(synced);
        }
        Ok(())
    }

    /// Records how far the newest segment is durable, so that the next open tells damage
    /// in synced data from a torn tail instead of cutting both off.
    fn note_synced(&self, synced: Synced) {
        // Syncs run concurrently and may finish out of order: keep the furthest.
        let update = self.shared.meta.fetch_and_update(SYNCED_KEY, |old| {
            match old.and_then(Synced::decode) {
                Some(stored) if stored >= synced => Some(stored.encode().to_vec()),
                _ => Some(synced.encode().to_vec()),
            }
        });
        // Not the sync's failure: the entries are durable. A stale note only makes the
        // next open treat more of the segment as a possibly torn tail, as before it.
        if let Err(error) = update {
            tracing::warn!(%error, "cannot note how far the event log is synced");
        }
    }

    /// Up to `limit` entries with an id greater than `after`, in id order.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let Some(mut from) = after.checked_add(1) else {
            return Ok(out);
        };
        while out.len() < limit {
            let Some((span, start)) = self.span(from)? else {
                break;
            };
            let mut cursor = Cursor::new(&span.file, span.offset, span.end);
            while out.len() < limit {
                match cursor.next().map_err(io_error(&span.path))? {
                    Step::Record(r) if r.id >= start => out.push((r.id, r.entry.to_vec())),
                    Step::Record(_) => {}
                    Step::End => break,
                    Step::Bad(reason) => return Err(corrupt(&span.path, cursor.offset(), reason)),
                }
            }
            if out.len() == limit {
                break;
            }
            if let Some(reason) = span.bad {
                return Err(corrupt(&span.path, span.end, reason));
            }
            match span.last_id.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(out)
    }

    /// The segment holding the first live id at or above `from`, where to start reading it,
    /// and the id to start from. Corrupt when that id may be in a damaged segment's
    /// unreadable tail.
    fn span(&self, from: u64) -> Result<Option<(Span, u64)>> {
        let state = self.state();
        let start = from.max(state.first);
        let i = state.segments.partition_point(|s| s.last_id < start);
        // `start` is past the readable records of the segment before `i`; if that one is
        // damaged, ids up to the next segment's name may be in its tail.
        if let Some(prev) = i.checked_sub(1).and_then(|p| state.segments.get(p)) {
            let in_tail = match state.segments.get(i) {
                Some(next) => start < next.first_id,
                None => true,
            };
            if let (Some(reason), true) = (&prev.bad, in_tail) {
                return Err(corrupt(&prev.path, prev.len, reason));
            }
        }
        let Some(seg) = state.segments.get(i) else {
            return Ok(None);
        };
        let mut offset = seg.offset_for(start);
        if i == 0 {
            offset = offset.max(state.head_offset);
        }
        let span = Span {
            file: seg.file.clone(),
            path: seg.path.clone(),
            offset,
            end: seg.len,
            last_id: seg.last_id,
            bad: seg.bad.clone(),
        };
        Ok(Some((span, start)))
    }

    /// The highest id written so far, by this process or an earlier one (0 when none is
    /// left in the files). It may already be trimmed; entries after it don't exist yet.
    pub fn last_id(&self) -> u64 {
        self.shared.last.load(Ordering::Acquire)
    }

    /// The oldest id still in the log. Corrupt while the head of the log is a damaged
    /// segment's unreadable tail: the oldest id is unknown then.
    pub fn first_id(&self) -> Result<Option<u64>> {
        let state = self.state();
        for (i, seg) in state.segments.iter().enumerate() {
            let trimmed = if i == 0 { state.head_skipped } else { 0 };
            if seg.count > trimmed {
                break;
            }
            if let Some(reason) = &seg.bad {
                return Err(corrupt(&seg.path, seg.len, reason));
            }
        }
        Ok((!self.is_empty()).then_some(state.first))
    }

    /// Readable entries currently in the log (a damaged segment's tail is not counted).
    pub fn len(&self) -> u64 {
        self.shared.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(error) = fs::remove_dir_all(&self.dir) {
                tracing::debug!(%error, dir = %self.dir.display(), "cannot remove temporary event log");
            }
            return;
        }
        // A clean shutdown loses nothing even if the last sync was skipped.
        if *self.dirty.get_mut() {
            let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(seg) = state.segments.back() {
                if let Err(error) = seg.sync() {
                    tracing::warn!(%error, "cannot sync the event log on close");
                }
            }
        }
    }
}

/// Deletes a segment file below the stored watermark; whether it is gone.
fn remove_segment(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        // Harmless: it is below the stored watermark, so the next open removes it.
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot delete event log segment");
            false
        }
    }
}

/// Creates `dir` and its missing parents, syncing the directory above each one created:
/// a new directory's entry is durable only once its parent is synced, and segment files
/// in a directory lost to a crash would be lost with it. Returns the directories synced.
fn create_dir_durably(dir: &Path) -> Result<Vec<PathBuf>> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
    fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut synced = Vec::new();
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => continue,
        };
        sync_dir(parent)?;
        synced.push(parent.to_owned());
    }
    Ok(synced)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// A new, unique directory for a temporary log. Tests open many at once, in one process
/// and in several, hence process id, counter and clock in the name.
fn create_temp_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut attempt = 0;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!(
            "skein-events-{}-{n}-{}",
            std::process::id(),
            now_ns()
        ));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(source) => return Err(StorageError::CreateDir { path, source }),
        }
    }
}

fn get_u64(tree: &Tree, key: &[u8]) -> Result<Option<u64>> {
    tree.get(key)?
        .map(|v| {
            <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StorageError::Corrupt {
                    tree: TREE_LOG_META,
                    reason: format!(
                        "{} of {} bytes, expected 8",
                        String::from_utf8_lossy(key),
                        v.len()
                    ),
                })
        })
        .transpose()
}

/// The `synced` note. Advisory, so a malformed one is ignored (with a warning): without it
/// the newest segment is scanned as it was before the note existed.
fn get_synced(tree: &Tree) -> Result<Option<Synced>> {
    let Some(bytes) = tree.get(SYNCED_KEY)? else {
        return Ok(None);
    };
    let synced = Synced::decode(&bytes);
    if synced.is_none() {
        tracing::warn!(
            len = bytes.len(),
            "ignoring a malformed event log sync note"
        );
    }
    Ok(synced)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
