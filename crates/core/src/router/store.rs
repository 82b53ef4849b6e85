//! A slab whose keys carry a generation.
//!
//! Requests, broadcasts and connections live in slabs; their keys are kept by timers, queues and
//! other entries long after the entry may have been freed and its slot reused. Every key carries
//! the generation of the entry it was issued for, and every lookup compares it, so a stale key
//! finds nothing instead of finding a stranger (the ABA guard of h2's `store.rs`).
//!
//! A store is keyed by any [`StoreKey`]: requests and broadcasts by the router-private [`Key`],
//! connections by the public [`ConnId`] itself, so the handle the I/O layer holds *is* the key
//! of the connection's entry (no conversion at each lookup).

use slab::Slab;

use crate::ids::ConnId;

/// A slot index plus the generation of the entry it was issued for.
pub(crate) trait StoreKey: Copy {
    fn from_parts(index: u32, generation: u32) -> Self;
    fn index(self) -> u32;
    fn generation(self) -> u32;
}

/// A generation-checked key into a [`Store`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Key {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl StoreKey for Key {
    fn from_parts(index: u32, generation: u32) -> Self {
        Key { index, generation }
    }
    fn index(self) -> u32 {
        self.index
    }
    fn generation(self) -> u32 {
        self.generation
    }
}

impl StoreKey for ConnId {
    fn from_parts(slot: u32, generation: u32) -> Self {
        ConnId { slot, generation }
    }
    fn index(self) -> u32 {
        self.slot
    }
    fn generation(self) -> u32 {
        self.generation
    }
}

struct Entry<T> {
    generation: u32,
    value: T,
}

/// A slab of `T` addressed by generation-checked keys of type `K`.
pub(crate) struct Store<T, K = Key> {
    slab: Slab<Entry<T>>,
    next_generation: u32,
    key: std::marker::PhantomData<K>,
}

impl<T, K: StoreKey> Store<T, K> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Store {
            slab: Slab::with_capacity(capacity),
            next_generation: 1,
            key: std::marker::PhantomData,
        }
    }

    /// Inserts the value built by `make` from its own key.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(K) -> T) -> K {
        let generation = self.next_generation;
        // Wrapping is harmless in practice: a stale key would have to survive four billion
        // insertions and land on the same slot.
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let entry = self.slab.vacant_entry();
        let key = K::from_parts(entry.key() as u32, generation);
        entry.insert(Entry {
            generation,
            value: make(key),
        });
        key
    }

    pub(crate) fn get(&self, key: K) -> Option<&T> {
        match self.slab.get(key.index() as usize) {
            Some(entry) if entry.generation == key.generation() => Some(&entry.value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: K) -> Option<&mut T> {
        match self.slab.get_mut(key.index() as usize) {
            Some(entry) if entry.generation == key.generation() => Some(&mut entry.value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: K) -> Option<T> {
        self.get(key)?;
        Some(self.slab.remove(key.index() as usize).value)
    }

    pub(crate) fn contains(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.slab
            .iter()
            .map(|(index, entry)| (K::from_parts(index as u32, entry.generation), &entry.value))
    }
}
