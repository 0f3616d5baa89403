//! Whether the process that used the store before stopped in order.
//!
//! sled makes writes durable only when flushed (the broker flushes before it acknowledges
//! or sends what promises a record, and sled flushes by itself every 500 ms): a process
//! killed (SIGKILL, a crash, power lost) leaves a store that may miss its last few hundred
//! milliseconds of unflushed writes, e.g. a deletion after a client's PUBACK. What is
//! still queued there may have reached a client already, so the broker sends it as a
//! possible redelivery (DUP) after such a stop. An orderly shutdown records a mark in the
//! `meta` tree after its final flush; opening the store takes the mark away again (durably,
//! before anything else is written) so that a crash of the new run is not taken for a
//! clean stop. No mark at opening: the last stop was not clean.

use sled::{Db, Tree};

use super::{Store, TREE_META};
use crate::error::Result;

/// Present in `meta` from an orderly shutdown until the next opening. The value is a
/// format byte, for whatever the mark may have to say later.
const CLEAN_STOP_KEY: &[u8] = b"clean_stop";
const CLEAN_STOP_FORMAT: u8 = 1;

/// How the previous user of a store stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastStop {
    /// The store is new, or an orderly shutdown flushed everything and said so.
    Clean,
    /// No orderly shutdown was recorded (killed, crashed, or a build that did not record
    /// one): the last unflushed writes may be missing.
    Unclean,
}

/// Takes the clean-stop mark of an existing store (durably: a flush when there was one),
/// and says how its previous user stopped. A store `created` by this opening is clean.
pub(super) fn begin_run(db: &Db, meta: &Tree, created: bool) -> Result<LastStop> {
    if created {
        return Ok(LastStop::Clean);
    }
    if meta.remove(CLEAN_STOP_KEY)?.is_none() {
        return Ok(LastStop::Unclean);
    }
    // Durable before the new run writes or sends anything: a crash of this run must find
    // no mark.
    db.flush()?;
    Ok(LastStop::Clean)
}

impl Store {
    /// How the previous user of this store stopped (decided when it was opened).
    pub fn last_stop(&self) -> LastStop {
        self.last_stop
    }

    /// Records an orderly stop, durably. Call it last, once everything else was flushed and
    /// nothing more will be sent: the next opening takes the store's contents as complete.
    pub async fn mark_clean_stop(&self) -> Result<()> {
        let meta = self.open_tree(TREE_META)?;
        self.written(meta.insert(CLEAN_STOP_KEY, &[CLEAN_STOP_FORMAT]))?;
        self.flush().await
    }
}
