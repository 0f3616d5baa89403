//! [`LazyBox`]: a collection that costs one pointer while it is empty.
//!
//! Most sessions hold nothing in flight and nothing queued most of the time, yet an
//! empty `VecDeque` is 32 bytes in every session; with tens of thousands of idle
//! connections per node those inline headers were a tenth of a connection's memory.

use std::collections::{BTreeSet, VecDeque};
use std::ops::{Deref, DerefMut};

/// A collection with an empty value that can be shared read-only by every `LazyBox`.
pub trait EmptyCollection: Sized + 'static {
    /// A shared empty value (no allocation).
    fn empty() -> &'static Self;
    fn new_empty() -> Self;
    fn has_items(&self) -> bool;
}

impl<T: 'static> EmptyCollection for VecDeque<T> {
    fn empty() -> &'static Self {
        const { &VecDeque::new() }
    }
    fn new_empty() -> Self {
        VecDeque::new()
    }
    fn has_items(&self) -> bool {
        !self.is_empty()
    }
}

impl<T: 'static> EmptyCollection for BTreeSet<T> {
    fn empty() -> &'static Self {
        const { &BTreeSet::new() }
    }
    fn new_empty() -> Self {
        BTreeSet::new()
    }
    fn has_items(&self) -> bool {
        !self.is_empty()
    }
}

/// Reads see the collection (or a shared empty one); the first mutable access allocates
/// it. [`LazyBox::release_if_empty`] gives the allocation back.
pub struct LazyBox<T: EmptyCollection>(Option<Box<T>>);

impl<T: EmptyCollection> LazyBox<T> {
    pub const fn new() -> LazyBox<T> {
        LazyBox(None)
    }

    /// Frees the collection (and its buffer) when it holds nothing.
    pub fn release_if_empty(&mut self) {
        if self.0.as_deref().is_some_and(|c| !c.has_items()) {
            self.0 = None;
        }
    }

    /// The collection, if allocated: for changes that have nothing to do on an empty one
    /// (removing), without allocating one.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Takes the collection out, leaving nothing allocated.
    pub fn take(&mut self) -> T {
        self.0.take().map_or_else(T::new_empty, |b| *b)
    }

    #[cfg(test)]
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl<T: EmptyCollection> Default for LazyBox<T> {
    fn default() -> LazyBox<T> {
        LazyBox::new()
    }
}

impl<T: EmptyCollection> From<T> for LazyBox<T> {
    fn from(collection: T) -> LazyBox<T> {
        let mut lazy = LazyBox(Some(Box::new(collection)));
        lazy.release_if_empty();
        lazy
    }
}

impl<T: EmptyCollection> Deref for LazyBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Some(collection) => collection,
            None => T::empty(),
        }
    }
}

impl<T: EmptyCollection> DerefMut for LazyBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(|| Box::new(T::new_empty()))
    }
}

impl<T: EmptyCollection + std::fmt::Debug> std::fmt::Debug for LazyBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.deref().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_allocate_nothing_writes_do_and_empties_are_released() {
        let mut q: LazyBox<VecDeque<String>> = LazyBox::new();
        assert_eq!(std::mem::size_of_val(&q), std::mem::size_of::<usize>());
        assert!(q.is_empty() && q.front().is_none() && !q.is_allocated());
        q.push_back("a".into());
        assert!(q.is_allocated());
        assert_eq!(q.len(), 1);
        q.release_if_empty();
        assert!(q.is_allocated(), "a non-empty collection is kept");
        assert_eq!(q.pop_front().as_deref(), Some("a"));
        q.release_if_empty();
        assert!(!q.is_allocated());
        q.push_back("b".into());
        assert_eq!(q.take(), VecDeque::from(["b".to_owned()]));
        assert!(!q.is_allocated() && q.is_empty());
    }

    #[test]
    fn an_empty_collection_converts_to_nothing_allocated() {
        let set: LazyBox<BTreeSet<u16>> = BTreeSet::new().into();
        assert!(!set.is_allocated());
        let set: LazyBox<BTreeSet<u16>> = BTreeSet::from([3]).into();
        assert!(set.contains(&3) && set.is_allocated());
    }
}
