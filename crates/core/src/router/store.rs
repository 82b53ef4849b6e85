//! A slab whose keys carry a generation.
//!
//! Requests, broadcasts and connections live in slabs; their keys are kept by timers, queues and
//! other entries long after the entry may have been freed and its slot reused. Every key carries
//! the generation of the entry it was issued for, and every lookup compares it, so a stale key
//! finds nothing instead of finding a stranger (the ABA guard of h2's `store.rs`).

use slab::Slab;

/// A generation-checked key into a [`Store`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Key {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

struct Entry<T> {
    generation: u32,
    value: T,
}

/// A slab of `T` addressed by generation-checked [`Key`]s.
pub(crate) struct Store<T> {
    slab: Slab<Entry<T>>,
    next_generation: u32,
}

impl<T> Store<T> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Store {
            slab: Slab::with_capacity(capacity),
            next_generation: 1,
        }
    }

    /// Inserts the value built by `make` from its own key.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(Key) -> T) -> Key {
        let generation = self.next_generation;
        // Wrapping is harmless in practice: a stale key would have to survive four billion
        // insertions and land on the same slot.
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let entry = self.slab.vacant_entry();
        let key = Key {
            index: entry.key() as u32,
            generation,
        };
        entry.insert(Entry {
            generation,
            value: make(key),
        });
        key
    }

    pub(crate) fn get(&self, key: Key) -> Option<&T> {
        match self.slab.get(key.index as usize) {
            Some(entry) if entry.generation == key.generation => Some(&entry.value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slab.get_mut(key.index as usize) {
            Some(entry) if entry.generation == key.generation => Some(&mut entry.value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        self.get(key)?;
        Some(self.slab.remove(key.index as usize).value)
    }

    pub(crate) fn contains(&self, key: Key) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slab.iter().map(|(index, entry)| {
            (
                Key {
                    index: index as u32,
                    generation: entry.generation,
                },
                &entry.value,
            )
        })
    }
}
