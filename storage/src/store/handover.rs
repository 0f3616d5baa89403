//! Hand-over cursors: a node that takes a persistent session over from another one
//! writes each fetched page and, with it (in the same flush), how far it got
//! (`client id` + holder node → the holder's sequence). The holder deletes the page when
//! told; until this node knows it did, the cursor stays, so a later fetch from that holder
//! (after a crash of either node) first has it delete what is here already instead of
//! sending it again.
//!
//! Key: as the per-client trees (`keys.rs`), the client id, 0x00 and the holder's node id
//! (u64, big-endian). Value: a format byte (1), then the sequence (u64, big-endian).

use std::convert::Infallible;

use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional};

use super::Store;
use crate::codec;
use crate::error::{corrupt, Result};
use crate::keys;
use crate::types::{StoredInflight, StoredMessage};

const FORMAT: u8 = 1;

/// What one fetched page changes in a client's records (see [`Store::handover_write_page`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PageWrite {
    /// Messages queued: (sequence, message).
    pub queued: Vec<(u64, StoredMessage)>,
    pub inflight: Vec<StoredInflight>,
    /// Queued messages that go (a copy that reached this node directly, replaced by the
    /// page's in-flight one).
    pub unqueued: Vec<u64>,
}

impl PageWrite {
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.inflight.is_empty() && self.unqueued.is_empty()
    }
}

impl Store {
    /// Writes a fetched page of `client_id`'s session held by node `holder` and the
    /// cursor saying it is written up to the holder's sequence `up_to`, in one
    /// transaction: after a crash either both are there or neither (a page without its
    /// cursor would be fetched and written again; a cursor without its page would have
    /// the holder delete messages this node never wrote). Durable with the next flush.
    pub fn handover_write_page(
        &self,
        client_id: &str,
        holder: u64,
        up_to: u64,
        page: &PageWrite,
    ) -> Result<()> {
        let cursor_key = keys::seq_key(client_id, holder)?;
        let mut cursor = [0u8; 9];
        cursor[0] = FORMAT;
        cursor[1..].copy_from_slice(&up_to.to_be_bytes());
        let mut queued = sled::Batch::default();
        let mut bytes = cursor_key.len() + cursor.len();
        for (seq, m) in &page.queued {
            let (key, value) = (keys::seq_key(client_id, *seq)?, codec::encode_message(m));
            bytes += key.len() + value.len();
            queued.insert(key, value);
        }
        for seq in &page.unqueued {
            queued.remove(keys::seq_key(client_id, *seq)?);
        }
        let mut inflight = sled::Batch::default();
        for f in &page.inflight {
            let (key, value) = (
                keys::packet_key(client_id, f.packet_id)?,
                codec::encode_inflight(f),
            );
            bytes += key.len() + value.len();
            inflight.insert(key, value);
        }
        self.note_written(bytes);
        let result = (&self.queue, &self.inflight, &self.handover).transaction(
            |(q, f, h)| -> ConflictableTransactionResult<(), Infallible> {
                q.apply_batch(&queued)?;
                f.apply_batch(&inflight)?;
                h.insert(&cursor_key[..], &cursor[..])?;
                Ok(())
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => self.written(Err(e)),
            Err(TransactionError::Abort(never)) => match never {},
        }
    }

    /// Notes that this node has written `client_id`'s messages held by node `holder` up
    /// to the holder's sequence `up_to` (durable with the next flush).
    pub fn handover_put(&self, client_id: &str, holder: u64, up_to: u64) -> Result<()> {
        let key = keys::seq_key(client_id, holder)?;
        let mut value = [0u8; 9];
        value[0] = FORMAT;
        value[1..].copy_from_slice(&up_to.to_be_bytes());
        self.note_written(key.len() + value.len());
        self.written(self.handover.insert(key, &value[..]))?;
        Ok(())
    }

    /// The holder deleted what the cursor covers: it goes.
    pub fn handover_remove(&self, client_id: &str, holder: u64) -> Result<()> {
        let key = keys::seq_key(client_id, holder)?;
        self.written(self.handover.remove(key))?;
        Ok(())
    }

    /// Every cursor of `client_id` goes (its session ended or started clean here: what
    /// other nodes still hold of the old one is not its).
    pub fn handover_forget(&self, client_id: &str) -> Result<()> {
        let prefix = keys::client_prefix(client_id)?;
        let mut batch = sled::Batch::default();
        for key in self.handover.scan_prefix(&prefix).keys() {
            batch.remove(key?);
        }
        self.written(self.handover.apply_batch(batch))?;
        Ok(())
    }

    /// Every cursor: (client id, holder node, the holder's sequence written up to).
    pub fn handover_load(&self) -> Result<Vec<(String, u64, u64)>> {
        self.handover
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                // The holder's id is the last 8 bytes, after the separator.
                let split = k
                    .len()
                    .checked_sub(9)
                    .filter(|at| k[*at] == 0)
                    .ok_or_else(|| corrupt(super::TREE_HANDOVER, "key without a holder"))?;
                let client_id = std::str::from_utf8(&k[..split])
                    .map_err(|_| corrupt(super::TREE_HANDOVER, "client id not UTF-8"))?;
                let holder = u64::from_be_bytes(k[split + 1..].try_into().expect("8 bytes"));
                let up_to = match v.as_ref() {
                    [FORMAT, rest @ ..] if rest.len() == 8 => {
                        u64::from_be_bytes(rest.try_into().expect("8 bytes"))
                    }
                    _ => return Err(corrupt(super::TREE_HANDOVER, "unknown cursor format")),
                };
                Ok((client_id.to_owned(), holder, up_to))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::PageWrite;
    use crate::{Store, StoredInflight, StoredMessage};

    #[test]
    fn a_page_and_its_cursor_are_written_together() {
        let store = Store::open_temporary().unwrap();
        let m = |topic: &str| StoredMessage {
            topic: topic.into(),
            qos: 1,
            publish_id: Some(5),
            ..StoredMessage::default()
        };
        store.queue_push("c", 70, &m("direct")).unwrap();
        let page = PageWrite {
            queued: vec![(3, m("a")), (4, m("b"))],
            inflight: vec![StoredInflight {
                packet_id: 9,
                seq: 2,
                message: m("in flight"),
                released: false,
            }],
            unqueued: vec![70],
        };
        assert!(!page.is_empty());
        store.handover_write_page("c", 2, 40, &page).unwrap();
        assert_eq!(store.handover_load().unwrap(), [("c".to_owned(), 2, 40)]);
        let queued: Vec<(u64, String)> = store
            .queue_load("c")
            .unwrap()
            .into_iter()
            .map(|(seq, m)| (seq, m.topic))
            .collect();
        assert_eq!(queued, [(3, "a".to_owned()), (4, "b".to_owned())]);
        assert_eq!(store.inflight_load("c").unwrap(), page.inflight);
        // A bad client id writes nothing at all.
        assert!(store
            .handover_write_page("c\0d", 2, 41, &PageWrite::default())
            .is_err());
        assert_eq!(store.handover_load().unwrap(), [("c".to_owned(), 2, 40)]);
    }

    #[test]
    fn cursors_are_kept_replaced_and_removed() {
        let store = Store::open_temporary().unwrap();
        store.handover_put("a", 2, 10).unwrap();
        store.handover_put("a", 2, 20).unwrap();
        store.handover_put("a", 3, 5).unwrap();
        // A node id whose bytes hold 0x00 and a client id next to "a".
        store.handover_put("ab", 256, 7).unwrap();
        let mut all = store.handover_load().unwrap();
        all.sort();
        assert_eq!(
            all,
            [
                ("a".to_owned(), 2, 20),
                ("a".to_owned(), 3, 5),
                ("ab".to_owned(), 256, 7)
            ]
        );
        store.handover_remove("a", 2).unwrap();
        store.handover_remove("a", 2).unwrap();
        assert_eq!(store.handover_load().unwrap().len(), 2);
        store.handover_forget("a").unwrap();
        assert_eq!(store.handover_load().unwrap(), [("ab".to_owned(), 256, 7)]);
        assert!(store.handover_put("a\0b", 1, 1).is_err());
    }
}
