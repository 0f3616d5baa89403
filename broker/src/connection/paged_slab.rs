//! [`PagedSlab`]: values stored densely in fixed-size pages, found again by a key.
//!
//! The parker keeps a record per idle connection. In a hash map each record cost its size
//! over the map's load factor (a table of 10k records is 61% full) plus a control byte;
//! here it costs its size plus a key. Pages are freed when they empty, so the slab
//! shrinks back after a wave of connections ends.

/// Slots per page.
const PAGE: usize = 256;

/// A key: the slot's index in the low 32 bits, and a generation in the high 32 bits so
/// that the key of a value already taken out does not find a later value in that slot
/// (the generation wraps after 2^32 inserts). Never 0.
pub type Key = u64;

pub struct PagedSlab<T> {
    pages: Vec<Option<Page<T>>>,
    /// Indexes of pages with a vacant slot (lowest first: fills the first pages, lets the
    /// last ones empty and go).
    with_room: std::collections::BTreeSet<u32>,
    len: usize,
    generation: u32,
}

struct Page<T> {
    slots: Box<[Option<(Key, T)>]>,
    /// Vacant slots of this page.
    vacant: Vec<u16>,
}

impl<T> Page<T> {
    fn new() -> Page<T> {
        Page {
            slots: (0..PAGE).map(|_| None).collect(),
            vacant: (0..PAGE as u16).rev().collect(),
        }
    }
}

impl<T> Default for PagedSlab<T> {
    fn default() -> PagedSlab<T> {
        PagedSlab {
            pages: Vec::new(),
            with_room: Default::default(),
            len: 0,
            generation: 0,
        }
    }
}

impl<T> PagedSlab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key the next [`PagedSlab::insert`] will use (so it can be handed out, e.g. as
    /// a poll token, before the value is stored). Makes room for it if needed.
    pub fn next_key(&mut self) -> Key {
        let page = match self.with_room.first() {
            Some(&page) => page,
            None => {
                let page = match self.pages.iter().position(Option::is_none) {
                    Some(free) => free,
                    None => {
                        self.pages.push(None);
                        self.pages.len() - 1
                    }
                };
                self.pages[page] = Some(Page::new());
                let page = page as u32;
                self.with_room.insert(page);
                page
            }
        };
        let slot = self.pages[page as usize]
            .as_ref()
            .and_then(|p| p.vacant.last().copied())
            .unwrap_or_default();
        let generation = self.generation.wrapping_add(1).max(1);
        (u64::from(generation) << 32) | (u64::from(page) * PAGE as u64 + u64::from(slot))
    }

    /// Stores `value`; returns its key, the one [`PagedSlab::next_key`] gave if nothing was
    /// inserted or removed since.
    pub fn insert(&mut self, value: T) -> Key {
        let key = self.next_key();
        let (page, slot) = split(key);
        let p = self.pages[page]
            .as_mut()
            .expect("next_key made the page with a vacant slot");
        p.vacant.pop();
        p.slots[slot] = Some((key, value));
        if p.vacant.is_empty() {
            self.with_room.remove(&(page as u32));
        }
        self.generation = (key >> 32) as u32;
        self.len += 1;
        key
    }

    /// Takes out the value stored under `key`; None if it was taken already.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let (page, slot) = split(key);
        let p = self.pages.get_mut(page)?.as_mut()?;
        let entry = p.slots.get_mut(slot)?;
        if entry.as_ref().is_none_or(|(k, _)| *k != key) {
            return None;
        }
        let (_, value) = entry.take()?;
        p.vacant.push(slot as u16);
        self.len -= 1;
        if p.vacant.len() == PAGE {
            self.pages[page] = None;
            self.with_room.remove(&(page as u32));
            while self.pages.last().is_some_and(Option::is_none) {
                self.pages.pop();
            }
        } else {
            self.with_room.insert(page as u32);
        }
        Some(value)
    }

    /// Whether a value is stored under `key`.
    pub fn contains(&self, key: Key) -> bool {
        let (page, slot) = split(key);
        self.pages
            .get(page)
            .and_then(Option::as_ref)
            .and_then(|p| p.slots.get(slot))
            .is_some_and(|entry| entry.as_ref().is_some_and(|(k, _)| *k == key))
    }

    /// The value stored under `key`, if any.
    #[cfg(test)]
    pub fn get(&self, key: Key) -> Option<&T> {
        let (page, slot) = split(key);
        match self.pages.get(page)?.as_ref()?.slots.get(slot)? {
            Some((k, value)) if *k == key => Some(value),
            _ => None,
        }
    }
}

fn split(key: Key) -> (usize, usize) {
    let index = (key & u64::from(u32::MAX)) as usize;
    (index / PAGE, index % PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_by_key_once() {
        let mut slab = PagedSlab::default();
        let a = slab.next_key();
        assert_eq!(slab.insert("a"), a);
        let b = slab.insert("b");
        assert_ne!(a, b);
        assert!(a != 0 && b != 0);
        assert_eq!(slab.len(), 2);
        assert_eq!(slab.get(a), Some(&"a"));
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(a), None);
        // The slot is reused under a new key: the old key still finds nothing.
        let c = slab.insert("c");
        assert_eq!(split(c), split(a));
        assert_ne!(c, a);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.remove(c), Some("c"));
        assert_eq!(slab.remove(b), Some("b"));
        assert!(slab.is_empty());
    }

    #[test]
    fn next_key_is_stable_until_an_insert() {
        let mut slab = PagedSlab::default();
        let a = slab.next_key();
        assert_eq!(slab.next_key(), a);
        assert_eq!(slab.insert(1), a);
        assert_ne!(slab.next_key(), a);
        assert_eq!(slab.get(a), Some(&1));
    }

    #[test]
    fn pages_fill_in_order_and_go_when_empty() {
        let mut slab = PagedSlab::default();
        let keys: Vec<Key> = (0..PAGE * 3).map(|i| slab.insert(i)).collect();
        assert_eq!(slab.pages.len(), 3);
        assert!(slab.with_room.is_empty());
        // Empty the middle page: it is freed, the others stay.
        for k in &keys[PAGE..2 * PAGE] {
            assert!(slab.remove(*k).is_some());
        }
        assert!(slab.pages[1].is_none());
        assert_eq!(slab.len(), 2 * PAGE);
        // New values go to the first page with room, not to a new one.
        assert!(slab.remove(keys[PAGE * 2 + 5]).is_some());
        let k = slab.insert(0);
        assert_eq!(split(k).0, 2);
        for k in keys[..PAGE].iter().chain(&keys[2 * PAGE..]) {
            slab.remove(*k);
        }
        slab.remove(k);
        assert!(slab.is_empty());
        assert!(slab.pages.is_empty(), "trailing empty pages are dropped");
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(slab.get(*k), None, "{i}");
        }
    }
}
