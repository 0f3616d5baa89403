//! Hand-over cursors: a node that takes a persistent session over from another one
//! writes each fetched page and, with it (in the same flush), how far it got
//! (`client id` + holder node → the holder's sequence). The holder deletes the page when
//! told; until this node knows it did, the cursor stays, so a later fetch from that holder
//! (after a crash of either node) first has it delete what is here already instead of
//! sending it again.
//!
//! Key: as the per-client trees (`keys.rs`), the client id, 0x00 and the holder's node id
//! (u64, big-endian). Value: a format byte (1), then the sequence (u64, big-endian).

use super::Store;
use crate::error::{corrupt, Result};
use crate::keys;

const FORMAT: u8 = 1;

impl Store {
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
    use crate::Store;

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
