//! Trimming: moving the head of the log forward and deleting the segment files behind it.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::segment::{corrupt, io_error, Cursor, Step, HEADER_LEN};
use super::{remove_segment, EventLog, FIRST_KEY};
use crate::error::Result;

/// How far a trim goes.
#[derive(Clone, Copy)]
enum Until {
    /// Ids below this.
    Id(u64),
    /// Entries appended before this (ns since the epoch).
    Age(u64),
    /// This many entries.
    Count(u64),
}

/// A snapshot of the oldest segment and the head of the log in it.
struct Head {
    file: Arc<fs::File>,
    path: Arc<Path>,
    /// Where the first live record is (or `end`).
    offset: u64,
    end: u64,
    count: u64,
    skipped: u64,
    last_id: u64,
    bad: bool,
    /// The log's watermark.
    first: u64,
    /// The segment after it; `None`: the head segment is the newest.
    next: Option<Next>,
}

/// What deciding whether a trim passes a damaged head segment needs of the next one.
struct Next {
    /// Its name: every id in the damaged segment's tail is below it.
    first_id: u64,
    file: Arc<fs::File>,
    path: Arc<Path>,
    end: u64,
}

impl EventLog {
    /// Removes every entry with an id below `id`; returns how many were removed. See the
    /// module doc for how a trim treats a damaged segment.
    pub fn trim_before(&self, id: u64) -> Result<u64> {
        self.trim(|| Until::Id(id))
    }

    /// Removes the entries appended before `cutoff_ns` (nanoseconds since the epoch);
    /// returns how many were removed. Stops at the first newer entry: entries are appended
    /// in time order, give or take a clock step back, and a stray older entry behind a
    /// newer one goes with the next trim.
    pub fn trim_older_than(&self, cutoff_ns: u64) -> Result<u64> {
        self.trim(|| Until::Age(cutoff_ns))
    }

    /// Removes the oldest entries until at most `max` remain; returns how many went.
    pub fn trim_to_len(&self, max: u64) -> Result<u64> {
        // The length is read once the writer lock is held.
        self.trim(|| Until::Count(self.len().saturating_sub(max)))
    }

    /// Trims as far as `until` says, evaluated under the writer lock.
    fn trim(&self, until: impl FnOnce() -> Until) -> Result<u64> {
        let mut writer = self.writer();
        let until = until();
        let mut removed = 0;
        let trimmed = self.advance_head(until, &mut removed, &mut writer.doomed);
        // Even after an error what was removed stays removed: store the watermark, then
        // delete the files below it (a crash in between leaves them to the next open).
        // Compared with what was stored, not with what this trim did: an earlier trim's
        // store may have failed, and a no-op trim must still retry it.
        let first = self.state().first;
        if first != writer.stored_first {
            self.shared.meta.insert(FIRST_KEY, &first.to_be_bytes())?;
            self.shared.db.flush()?;
            writer.stored_first = first;
        }
        writer.doomed.retain(|path| !remove_segment(path));
        if removed > 0 {
            tracing::debug!(removed, "trimmed event log");
        }
        trimmed.map(|()| removed)
    }

    /// What trimming needs to know of the head segment.
    fn head(&self) -> Option<Head> {
        let state = self.state();
        let seg = state.segments.front()?;
        let next = state.segments.get(1).map(|n| Next {
            first_id: n.first_id,
            file: n.file.clone(),
            path: n.path.clone(),
            end: n.len,
        });
        Some(Head {
            file: seg.file.clone(),
            path: seg.path.clone(),
            offset: state.head_offset,
            end: seg.len,
            count: seg.count,
            skipped: state.head_skipped,
            last_id: seg.last_id,
            bad: seg.bad.is_some(),
            first: state.first,
            next,
        })
    }

    /// Moves the head of the log forward as `until` says, counting entries into `removed`
    /// and segments wholly behind the head into `doomed`. Whole segments are dropped
    /// without reading them when their bounds decide; otherwise records are scanned from
    /// the head. Stops at a damaged segment's unreadable tail unless `until` provably
    /// reaches past it.
    fn advance_head(
        &self,
        until: Until,
        removed: &mut u64,
        doomed: &mut Vec<Arc<Path>>,
    ) -> Result<()> {
        loop {
            let Some(head) = self.head() else {
                return Ok(());
            };
            let live = head.count.saturating_sub(head.skipped);
            let whole = if head.bad {
                passes_damage(until, &head, live, *removed)?
            } else {
                live == 0
                    || match until {
                        Until::Id(id) => head.last_id < id,
                        Until::Count(n) => n.saturating_sub(*removed) >= live,
                        Until::Age(_) => false,
                    }
            };
            let done = match until {
                Until::Id(id) => head.first >= id,
                Until::Count(n) => *removed >= n,
                Until::Age(_) => false,
            };
            if done && !whole {
                return Ok(());
            }
            let mut stop = None;
            if !whole {
                let mut cursor = Cursor::new(&head.file, head.offset, head.end);
                let mut gone = 0;
                loop {
                    match cursor.next().map_err(io_error(&head.path))? {
                        Step::Record(r) => {
                            let remove = match until {
                                Until::Id(id) => r.id < id,
                                Until::Age(cutoff) => r.at_ns < cutoff,
                                Until::Count(n) => *removed + gone < n,
                            };
                            if !remove {
                                stop = Some((r.offset, r.id, gone));
                                break;
                            }
                            gone += 1;
                        }
                        Step::End => break,
                        Step::Bad(reason) => {
                            return Err(corrupt(&head.path, cursor.offset(), reason));
                        }
                    }
                }
            }

            let mut state = self.state_mut();
            if let Some((offset, id, gone)) = stop {
                state.head_offset = offset;
                state.head_skipped += gone;
                state.first = id;
                *removed += gone;
                self.shared.len.fetch_sub(gone, Ordering::Relaxed);
                return Ok(());
            }
            // Every readable live record of the head segment goes.
            *removed += live;
            self.shared.len.fetch_sub(live, Ordering::Relaxed);
            // The newest segment takes appends; a damaged one not passed keeps its tail
            // live. Either way the file stays, with nothing readable live in it.
            if head.next.is_none() || head.bad && !whole {
                state.head_offset = head.end;
                state.head_skipped = head.count;
                state.first = state.first.max(head.last_id.saturating_add(1));
                return Ok(());
            }
            if head.bad {
                tracing::warn!(path = %head.path.display(), "trimmed away a corrupt event log segment");
            }
            state.segments.pop_front();
            doomed.push(head.path);
            state.head_offset = HEADER_LEN;
            state.head_skipped = 0;
            if let Some(next) = state.segments.front() {
                let next_first = next.first_record_id().unwrap_or(next.first_id);
                state.first = state.first.max(next_first);
            }
        }
    }
}

/// Whether `until` provably reaches past the unreadable tail of the damaged head segment
/// (`live` of its readable records live, `removed` entries removed so far). The tail's
/// entries were appended before the next segment's and have smaller ids, so they go when
/// the trim reaches that segment.
fn passes_damage(until: Until, head: &Head, live: u64, removed: u64) -> Result<bool> {
    let Some(next) = &head.next else {
        return Ok(false);
    };
    Ok(match until {
        Until::Id(id) => next.first_id <= id,
        // The tail holds the oldest entries after the readable ones: if more must go,
        // they are next, however many they are.
        Until::Count(n) => n.saturating_sub(removed) > live,
        Until::Age(cutoff) => {
            let mut cursor = Cursor::new(&next.file, HEADER_LEN, next.end);
            match cursor.next().map_err(io_error(&next.path))? {
                Step::Record(r) => r.at_ns < cutoff,
                Step::End => false,
                Step::Bad(reason) => return Err(corrupt(&next.path, cursor.offset(), reason)),
            }
        }
    })
}
