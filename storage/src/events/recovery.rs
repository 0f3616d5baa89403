//! Opening the log: rebuilding the in-memory state from the segment files, and moving
//! the entries of older builds out of sled.

use std::collections::VecDeque;
use std::fs;
use std::path::Path;

use super::segment::{self, corrupt, io_error, Opened, Segment, HEADER_LEN};
use super::{remove_segment, EventLog, Options, State, Synced, LOG_NAME};
use crate::error::{self, Result};

/// Bytes of old entries copied per write while migrating from sled.
const MIGRATE_BATCH_BYTES: usize = 1 << 20;

impl EventLog {
    /// Moves the entries an older build kept in sled tree `event_log` into the segment
    /// files, with their ids and times, then drops the tree. Idempotent: after a crash
    /// mid-way the entries already copied (ids up to the files' last) are skipped.
    pub(super) fn migrate_from_sled(&self) -> Result<()> {
        let db = &self.shared.db;
        if !db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == LOG_NAME.as_bytes())
        {
            return Ok(());
        }
        let old = db.open_tree(LOG_NAME)?;
        let mut writer = self.writer();
        let mut copied = 0u64;
        let (mut buf, mut records) = (Vec::new(), Vec::new());
        for item in old.iter() {
            let (key, value) = item?;
            let id = decode_old_id(&key)?;
            if id <= self.last_id() {
                continue;
            }
            let (at_ns, entry) = decode_old_value(&value)?;
            records.push((id, buf.len() as u64));
            segment::encode_record(&mut buf, id, at_ns, entry)?;
            copied += 1;
            if buf.len() >= MIGRATE_BATCH_BYTES {
                self.write_records(&buf, &records)?;
                buf.clear();
                records.clear();
            }
        }
        self.write_records(&buf, &records)?;
        self.sync()?;
        // Once exhausted, ids must not start over.
        writer.next = writer
            .next
            .and_then(|next| Some(next.max(self.last_id().checked_add(1)?)));
        // Only now that the copies are durable may the originals go.
        db.drop_tree(LOG_NAME)?;
        db.flush()?;
        if copied > 0 {
            tracing::info!(copied, "moved the event log from sled into segment files");
        }
        Ok(())
    }
}

/// Scans the segment files in `dir` and deletes those wholly below the watermark.
/// `synced`: how much of which segment a sync is known to have made durable.
pub(super) fn recover(
    dir: &Path,
    watermark: u64,
    synced: Option<Synced>,
    options: Options,
) -> Result<State> {
    let names = list_segments(dir)?;
    let mut state = State {
        segments: VecDeque::with_capacity(names.len()),
        first: watermark,
        head_offset: HEADER_LEN,
        head_skipped: 0,
    };
    let mut head_id = None;
    // Whether the first live record may still be in a later segment. A damaged segment
    // ends the search: ids in its unreadable tail may be live, and taking the next
    // segment's first id as the head would skip them without a word.
    let mut searching = true;
    for (i, &first_id) in names.iter().enumerate() {
        let next_name = names.get(i + 1).copied();
        let path = dir.join(segment::file_name(first_id));
        // Every id in a segment is below the next one's name.
        if next_name.is_some_and(|n| n <= watermark) {
            remove_segment(&path);
            continue;
        }
        let durable = match (next_name, synced) {
            // Older segments were synced when the next one started.
            (Some(_), _) => u64::MAX,
            (None, Some(s)) if s.first_id == first_id => s.len,
            (None, _) => 0,
        };
        let opened = Segment::open(dir, first_id, durable, watermark, options.index_every)?;
        let keep =
            |o: &Opened| next_name.is_some() || o.segment.count > 0 || o.segment.bad.is_some();
        let Some(opened) = opened.filter(keep) else {
            // An empty newest segment: the next append starts a fresh one named by its id.
            remove_segment(&path);
            continue;
        };
        let seg = opened.segment;
        if let Some(prev) = state.segments.back() {
            if seg.count > 0 && prev.last_id >= first_id {
                return Err(corrupt(
                    &path,
                    0,
                    format!(
                        "segment starts at id {first_id} but the previous one reaches {}",
                        prev.last_id
                    ),
                ));
            }
        }
        if state.segments.is_empty() {
            (state.head_offset, state.head_skipped) = match opened.head {
                Some((offset, _)) => (offset, opened.below),
                None => (seg.len, seg.count),
            };
            head_id = opened.head.map(|(_, id)| id);
        } else if searching {
            head_id = seg.first_record_id();
        }
        searching = searching && head_id.is_none() && seg.bad.is_none();
        state.segments.push_back(seg);
    }
    if let Some(id) = head_id {
        state.first = id;
    }
    Ok(state)
}

/// First ids of the segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(first_id) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_file_name)
        {
            names.push(first_id);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Version byte of the values older builds wrote to sled tree `event_log`.
pub(super) const OLD_FORMAT_VERSION: u8 = 1;

fn decode_old_id(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| error::corrupt(LOG_NAME, format!("id of {} bytes, expected 8", bytes.len())))
}

/// (append time in ns, entry bytes) of an old sled value: version byte, u64 BE, entry.
fn decode_old_value(value: &[u8]) -> Result<(u64, &[u8])> {
    match value.split_first() {
        Some((&OLD_FORMAT_VERSION, rest)) => match rest.split_first_chunk::<8>() {
            Some((at, entry)) => Ok((u64::from_be_bytes(*at), entry)),
            None => Err(error::corrupt(LOG_NAME, "truncated header")),
        },
        Some((version, _)) => Err(error::corrupt(
            LOG_NAME,
            format!("unknown format version {version}"),
        )),
        None => Err(error::corrupt(LOG_NAME, "empty value")),
    }
}
