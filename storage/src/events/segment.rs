//! One segment file of the event log: the header and record format, the recovery scan
//! that rebuilds a segment's sparse index on open, and chunked positional reads.
//!
//! A segment is `HEADER` (magic `SKEINEV` + format version byte) followed by records:
//!
//! ```text
//! [u32 LE entry length][u32 LE crc32][u64 LE id][u64 LE at_ns][entry bytes]
//! ```
//!
//! The crc32 covers the length field and everything after the crc, so a flipped length is
//! caught by the checksum as well as by the bounds checks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Result, StorageError};

/// Magic bytes and format version: a newer format gets a new version byte, which this
/// build refuses instead of misreading.
const MAGIC: &[u8; 7] = b"SKEINEV";
pub(super) const FORMAT_VERSION: u8 = 1;
pub(super) const HEADER_LEN: u64 = 8;

/// Length, crc, id and timestamp in front of every entry.
pub(super) const RECORD_HEADER_LEN: usize = 4 + 4 + 8 + 8;

/// Largest entry accepted. Entries are ~100 bytes; the bound keeps a corrupt length field
/// from making a reader allocate gigabytes.
pub(super) const MAX_ENTRY_LEN: usize = 16 << 20;

/// Bytes read per positional read: bounds a reader's buffer whatever the segment size.
const READ_CHUNK: usize = 64 << 10;

const SUFFIX: &str = ".seg";

/// Segment file name: its first id, zero-padded so names sort like ids.
pub(super) fn file_name(first_id: u64) -> String {
    format!("{first_id:020}{SUFFIX}")
}

/// The first id of a segment file name, `None` for any other file.
pub(super) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends one record to `buf`.
pub(super) fn encode_record(buf: &mut Vec<u8>, id: u64, at_ns: u64, entry: &[u8]) -> Result<()> {
    let len = u32::try_from(entry.len())
        .ok()
        .filter(|_| entry.len() <= MAX_ENTRY_LEN)
        .ok_or(StorageError::EntryTooLarge {
            len: entry.len(),
            max: MAX_ENTRY_LEN,
        })?;
    let len = len.to_le_bytes();
    let (id, at_ns) = (id.to_le_bytes(), at_ns.to_le_bytes());
    let crc = checksum(&[&len, &id, &at_ns, entry]);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&id);
    buf.extend_from_slice(&at_ns);
    buf.extend_from_slice(entry);
    Ok(())
}

/// crc32 over the parts of a record it covers (all but the crc field itself).
fn checksum(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// (entry length, crc, id, at_ns) of a record header.
fn parse_record_header(h: &[u8]) -> Option<(u32, u32, u64, u64)> {
    let (len, h) = h.split_first_chunk::<4>()?;
    let (crc, h) = h.split_first_chunk::<4>()?;
    let (id, h) = h.split_first_chunk::<8>()?;
    let (at_ns, _) = h.split_first_chunk::<8>()?;
    Some((
        u32::from_le_bytes(*len),
        u32::from_le_bytes(*crc),
        u64::from_le_bytes(*id),
        u64::from_le_bytes(*at_ns),
    ))
}

pub(super) fn corrupt(path: &Path, offset: u64, reason: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        tree: super::LOG_NAME,
        reason: format!("{} at offset {offset}: {reason}", path.display()),
    }
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A position in the sparse index.
#[derive(Clone, Copy, Debug)]
struct IndexPoint {
    id: u64,
    offset: u64,
}

/// One segment file and what is known about its records: no per-record memory, only a
/// sparse index of record positions.
#[derive(Debug)]
pub(super) struct Segment {
    /// From the file name: every record in the file has an id at least this.
    pub(super) first_id: u64,
    pub(super) path: Arc<Path>,
    pub(super) file: Arc<File>,
    /// Bytes of header and complete, valid records. Appends go here; readers never look
    /// beyond it, so a record being written is invisible until it is complete.
    pub(super) len: u64,
    /// Records in the file (trimmed ones included).
    pub(super) count: u64,
    /// The last record's id; `first_id - 1` while empty, so ids stay ordered across a
    /// list of segments.
    pub(super) last_id: u64,
    /// Why the bytes after `len` can't be read: the segment was found damaged on open.
    /// Such a segment takes no more appends, and its unreadable tail may hold any ids
    /// between `last_id` and the next segment's `first_id`.
    pub(super) bad: Option<Arc<str>>,
    /// Always holds the first record, then one record every `index_every` bytes or so.
    index: Vec<IndexPoint>,
}

/// A segment as recovery found it, with where the log's watermark falls in it.
pub(super) struct Opened {
    pub(super) segment: Segment,
    /// Records with an id below the watermark.
    pub(super) below: u64,
    /// Offset and id of the first record at or above the watermark.
    pub(super) head: Option<(u64, u64)>,
}

impl Segment {
    /// Creates the file with just a header. The caller syncs the directory.
    pub(super) fn create(dir: &Path, first_id: u64) -> Result<Segment> {
        let path: Arc<Path> = dir.join(file_name(first_id)).into();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all_at(&header(), 0).map_err(io_error(&path))?;
        Ok(Segment::empty(first_id, path, Arc::new(file)))
    }

    fn empty(first_id: u64, path: Arc<Path>, file: Arc<File>) -> Segment {
        Segment {
            first_id,
            path,
            file,
            len: HEADER_LEN,
            count: 0,
            last_id: first_id.saturating_sub(1),
            bad: None,
            index: Vec::new(),
        }
    }

    /// Opens and scans an existing segment. `durable` is how many of its bytes are known
    /// to have been synced (`u64::MAX` for an older segment: it was synced when it
    /// filled). A bad record at or past `durable` is a write torn by a crash: the file is
    /// truncated there. Below it, it is damage: the segment keeps its readable prefix and
    /// remembers why the rest is not, and nothing is thrown away.
    ///
    /// `None`: the header itself was torn (a crash right after the segment was created,
    /// before anything in it was synced), so it holds nothing.
    pub(super) fn open(
        dir: &Path,
        first_id: u64,
        durable: u64,
        watermark: u64,
        index_every: u64,
    ) -> Result<Option<Opened>> {
        let path: Arc<Path> = dir.join(file_name(first_id)).into();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let file_len = file.metadata().map_err(io_error(&path))?.len();
        let mut h = [0; HEADER_LEN as usize];
        if file_len >= HEADER_LEN {
            file.read_exact_at(&mut h, 0).map_err(io_error(&path))?;
        }
        // Short or never written (zeros): a crash before the new segment's first sync, so
        // none of its records were durable either.
        if file_len < HEADER_LEN || h == [0; HEADER_LEN as usize] {
            if durable < HEADER_LEN {
                tracing::warn!(path = %path.display(), "discarding a torn new event log segment");
                return Ok(None);
            }
            return Err(corrupt(&path, 0, "missing header"));
        }
        check_header(&h, &path)?;

        let file = Arc::new(file);
        let mut segment = Segment::empty(first_id, path.clone(), file.clone());
        let (mut below, mut head) = (0, None);
        let mut cursor = Cursor::new(&file, HEADER_LEN, file_len);
        let problem = loop {
            match cursor.next().map_err(io_error(&path))? {
                Step::End => break None,
                Step::Bad(reason) => break Some(reason),
                Step::Record(r) => {
                    let min = match segment.count {
                        0 => first_id,
                        _ => segment.last_id.saturating_add(1),
                    };
                    if r.id < min {
                        break Some(format!("id {} where at least {min} was expected", r.id));
                    }
                    if r.id < watermark {
                        below += 1;
                    } else if head.is_none() {
                        head = Some((r.offset, r.id));
                    }
                    segment.note_record(r.id, r.offset, index_every);
                    segment.len = r.end();
                }
            }
        };
        if let Some(reason) = problem {
            let (offset, dropped) = (segment.len, file_len - segment.len);
            if offset >= durable {
                tracing::warn!(
                    path = %path.display(), offset, dropped, %reason,
                    "truncating a torn record at the end of the event log"
                );
                file.set_len(offset).map_err(io_error(&path))?;
                file.sync_data().map_err(io_error(&path))?;
            } else {
                tracing::warn!(
                    path = %path.display(), offset, unreadable = dropped, %reason,
                    "corrupt event log segment: reads reaching this offset will fail"
                );
                segment.bad = Some(reason.into());
            }
        } else if segment.len < durable && durable != u64::MAX {
            // Nothing to repair, but synced entries are gone (the file was cut short
            // behind the log's back): say so rather than lose them silently.
            tracing::warn!(
                path = %path.display(), len = segment.len, synced = durable,
                "event log segment is shorter than its last sync: synced entries are lost"
            );
        }
        Ok(Some(Opened {
            segment,
            below,
            head,
        }))
    }

    /// Accounts for a complete record at `offset` (the caller then moves `len`).
    pub(super) fn note_record(&mut self, id: u64, offset: u64, index_every: u64) {
        let due = match self.index.last() {
            Some(p) => offset.saturating_sub(p.offset) >= index_every,
            None => true,
        };
        if due {
            self.index.push(IndexPoint { id, offset });
        }
        self.count += 1;
        self.last_id = id;
    }

    /// Where to start scanning for `id`: the last indexed record at or before it.
    pub(super) fn offset_for(&self, id: u64) -> u64 {
        let i = self.index.partition_point(|p| p.id <= id);
        i.checked_sub(1)
            .and_then(|i| self.index.get(i))
            .map_or(HEADER_LEN, |p| p.offset)
    }

    #[cfg(test)]
    pub(super) fn index_len(&self) -> usize {
        self.index.len()
    }

    /// The id of the first record (trimmed or not).
    pub(super) fn first_record_id(&self) -> Option<u64> {
        self.index.first().map(|p| p.id)
    }

    pub(super) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(io_error(&self.path))
    }
}

/// Writes `bytes` (whole records) at `offset`, the end of a segment's valid data, in one
/// positional write. On failure the file is cut back so no partial record stays behind.
pub(super) fn write_at(file: &File, path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    file.write_all_at(bytes, offset).map_err(|e| {
        // Best effort: whatever stays beyond `offset` is never read and the next write
        // overwrites it; recovery would cut it off as a torn tail.
        let _ = file.set_len(offset);
        io_error(path)(e)
    })
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()] = FORMAT_VERSION;
    h
}

fn check_header(h: &[u8], path: &Path) -> Result<()> {
    let (magic, version) = h.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(corrupt(path, 0, "not an event log segment (bad magic)"));
    }
    match version.first().copied() {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) if found > FORMAT_VERSION => Err(StorageError::EventLogFormatTooNew {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        }),
        found => Err(corrupt(
            path,
            MAGIC.len() as u64,
            format!("unknown format version {found:?}"),
        )),
    }
}

/// One record, borrowed from the cursor's buffer.
pub(super) struct Record<'a> {
    pub(super) offset: u64,
    pub(super) id: u64,
    pub(super) at_ns: u64,
    pub(super) entry: &'a [u8],
}

impl Record<'_> {
    /// Offset just past the record.
    pub(super) fn end(&self) -> u64 {
        self.offset + (RECORD_HEADER_LEN + self.entry.len()) as u64
    }
}

pub(super) enum Step<'a> {
    Record(Record<'a>),
    /// The end of the range was reached exactly at a record boundary.
    End,
    /// The bytes at [`Cursor::offset`] are not a valid record (why).
    Bad(String),
}

/// Reads the records of a byte range of a segment in order, a chunk at a time, with
/// positional reads (so any number of cursors share one file handle with the writer).
pub(super) struct Cursor<'a> {
    file: &'a File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_pos: u64,
    /// Where in `buf` the next record starts.
    at: usize,
    end: u64,
}

impl<'a> Cursor<'a> {
    /// `offset` must be a record boundary; `end` the end of the bytes to read.
    pub(super) fn new(file: &'a File, offset: u64, end: u64) -> Cursor<'a> {
        Cursor {
            file,
            buf: Vec::new(),
            buf_pos: offset,
            at: 0,
            end,
        }
    }

    /// Offset of the next record.
    pub(super) fn offset(&self) -> u64 {
        self.buf_pos + self.at as u64
    }

    pub(super) fn next(&mut self) -> io::Result<Step<'_>> {
        let offset = self.offset();
        let remaining = self.end.saturating_sub(offset);
        if remaining == 0 {
            return Ok(Step::End);
        }
        if remaining < RECORD_HEADER_LEN as u64 {
            return Ok(Step::Bad(format!(
                "{remaining} bytes, too short for a record"
            )));
        }
        self.fill(RECORD_HEADER_LEN)?;
        let Some((len, crc, id, at_ns)) = self.buf.get(self.at..).and_then(parse_record_header)
        else {
            return Ok(Step::Bad("unreadable record header".into()));
        };
        let len = len as usize;
        if len > MAX_ENTRY_LEN {
            return Ok(Step::Bad(format!(
                "entry length {len} exceeds the maximum {MAX_ENTRY_LEN}"
            )));
        }
        let total = RECORD_HEADER_LEN + len;
        if total as u64 > remaining {
            return Ok(Step::Bad(format!(
                "record of {total} bytes but only {remaining} left"
            )));
        }
        self.fill(total)?;
        let start = self.at;
        let Some(record) = self.buf.get(start..start + total) else {
            return Ok(Step::Bad("short read".into()));
        };
        let (header, entry) = record.split_at(RECORD_HEADER_LEN);
        let (len_field, rest) = header.split_at(4);
        let id_and_at = rest.get(4..).unwrap_or_default();
        if checksum(&[len_field, id_and_at, entry]) != crc {
            return Ok(Step::Bad("checksum mismatch".into()));
        }
        self.at = start + total;
        Ok(Step::Record(Record {
            offset,
            id,
            at_ns,
            entry: self
                .buf
                .get(start + RECORD_HEADER_LEN..start + total)
                .unwrap_or_default(),
        }))
    }

    /// Makes at least `n` unread bytes available (the caller checked they exist before
    /// `end`), reading at least a chunk so small records cost one read per chunk.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        let have = self.buf.len() - self.at;
        if have >= n {
            return Ok(());
        }
        self.buf.drain(..self.at);
        self.buf_pos += self.at as u64;
        self.at = 0;
        let buffered_end = self.buf_pos + self.buf.len() as u64;
        let left = usize::try_from(self.end.saturating_sub(buffered_end)).unwrap_or(usize::MAX);
        let want = (n - have).max(READ_CHUNK).min(left);
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let read = self.file.read_exact_at(&mut self.buf[old..], buffered_end);
        if read.is_err() {
            self.buf.truncate(old);
        }
        read
    }
}
