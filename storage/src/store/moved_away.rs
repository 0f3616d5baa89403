//! Sessions that moved away from this node, remembered across a restart: the broker
//! sends a forward that reaches this node for such a session on to its owner (see the
//! broker's `moved_away.rs`). Its memory in the process alone was lost when the node
//! restarted after the sessions had been handed over (and deleted here): a peer's forward
//! held for this node across both restarts then matched nothing and was acknowledged
//! (the chaos suite's seed 42, 100 rounds: four subscribers lost what a node queued for
//! node 2 while it was killed twice in a row).
//!
//! Key: the client id. Value: a format byte (1), when the session was sealed here (ms
//! since the Unix epoch, u64 big-endian), then each non-shared filter as a length (u16,
//! big-endian) and its UTF-8 bytes.

use super::Store;
use crate::error::{corrupt, Result};

const FORMAT: u8 = 1;

/// A remembered session: client id, when it was sealed here (ms since the Unix epoch),
/// its filters.
pub type MovedAwayRecord = (String, u64, Vec<String>);

impl Store {
    /// Remembers that the session of `client_id`, with `filters`, was sealed here at
    /// `at_ms` (durable with the next flush). Filters too long for the format are left out.
    pub fn moved_away_put(&self, client_id: &str, at_ms: u64, filters: &[String]) -> Result<()> {
        let mut value = Vec::with_capacity(9 + filters.iter().map(|f| f.len() + 2).sum::<usize>());
        value.push(FORMAT);
        value.extend_from_slice(&at_ms.to_be_bytes());
        for filter in filters {
            let Ok(len) = u16::try_from(filter.len()) else {
                continue;
            };
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(filter.as_bytes());
        }
        self.note_written(client_id.len() + value.len());
        self.written(self.moved_away.insert(client_id.as_bytes(), value))?;
        Ok(())
    }

    /// Forgets the sessions of `client_ids`.
    pub fn moved_away_remove<'a>(
        &self,
        client_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for client_id in client_ids {
            batch.remove(client_id.as_bytes());
        }
        self.written(self.moved_away.apply_batch(batch))?;
        Ok(())
    }

    /// Every remembered session.
    pub fn moved_away_load(&self) -> Result<Vec<MovedAwayRecord>> {
        self.moved_away
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                let bad = |what: &str| corrupt(super::TREE_MOVED_AWAY, what);
                let client_id = std::str::from_utf8(&k)
                    .map_err(|_| bad("client id not UTF-8"))?
                    .to_owned();
                let (at_ms, mut rest) = match v.as_ref() {
                    [FORMAT, rest @ ..] if rest.len() >= 8 => {
                        let (at, rest) = rest.split_at(8);
                        (u64::from_be_bytes(at.try_into().expect("8 bytes")), rest)
                    }
                    _ => return Err(bad("unknown format")),
                };
                let mut filters = Vec::new();
                while !rest.is_empty() {
                    let (len, after) = rest.split_at_checked(2).ok_or_else(|| bad("cut length"))?;
                    let len = usize::from(u16::from_be_bytes(len.try_into().expect("2 bytes")));
                    let (filter, after) = after
                        .split_at_checked(len)
                        .ok_or_else(|| bad("cut filter"))?;
                    filters.push(
                        std::str::from_utf8(filter)
                            .map_err(|_| bad("filter not UTF-8"))?
                            .to_owned(),
                    );
                    rest = after;
                }
                Ok((client_id, at_ms, filters))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_sessions_read_back_replaced_and_forgotten() {
        let store = Store::open_temporary().unwrap();
        store
            .moved_away_put("a", 10, &["t/#".into(), "x/+/y".into()])
            .unwrap();
        store.moved_away_put("b", 11, &[]).unwrap();
        store.moved_away_put("a", 12, &["u".into()]).unwrap();
        let mut all = store.moved_away_load().unwrap();
        all.sort();
        assert_eq!(
            all,
            [
                ("a".to_owned(), 12, vec!["u".to_owned()]),
                ("b".to_owned(), 11, vec![]),
            ]
        );
        store.moved_away_remove(["a", "nobody"]).unwrap();
        assert_eq!(
            store.moved_away_load().unwrap(),
            [("b".to_owned(), 11, vec![])]
        );
    }
}
