//! One level of the wheel (64 slots and their occupancy mask), the index-linked list each slot
//! holds, and the arithmetic that maps a deadline to a level and a slot.
//!
//! Links are `u32` slab indices stored in the entries themselves (`Entry::prev` and
//! `Entry::next`), so a list is just a head and a tail: linking and unlinking are O(1) and
//! allocate nothing.

use slab::Slab;

use super::Entry;

/// Bits of a deadline consumed by one level: 6, so that a level's occupancy fits one `u64`.
pub(super) const SLOT_BITS: u32 = 6;

/// Slots per level (64).
pub(super) const SLOTS: usize = 1 << SLOT_BITS;

/// Levels in the wheel. Six levels of 6 bits cover 2^36 ms (about 795 days), far more than any
/// timeout the broker arms; later deadlines wait in the wheel's overflow list.
pub(super) const NUM_LEVELS: usize = 6;

/// Bits covered by the whole wheel (36): two deadlines that agree on every bit from this one up
/// lie in the same "epoch" and can be placed in the levels.
pub(super) const RANGE_BITS: u32 = SLOT_BITS * NUM_LEVELS as u32;

/// The "no entry" link. Slab indices are kept below it (see `TimerWheel::insert`).
pub(super) const NIL: u32 = u32::MAX;

/// The level a timer due at `deadline` belongs to while the wheel stands at `elapsed`, or `None`
/// when the deadline lies in a later epoch (beyond the levels' range: the overflow list).
///
/// The level is the 6-bit group of the highest bit in which `elapsed` and `deadline` differ. A
/// timer therefore sits in the lowest level whose current rotation still contains its deadline.
pub(super) fn level_for(elapsed: u64, deadline: u64) -> Option<usize> {
    debug_assert!(
        deadline > elapsed,
        "only future deadlines are placed in a level"
    );
    // `| (SLOTS - 1)` makes every difference inside the low 6 bits count as level 0 (and keeps
    // `leading_zeros` away from the all-zero case).
    let masked = (elapsed ^ deadline) | (SLOTS as u64 - 1);
    if masked >> RANGE_BITS != 0 {
        return None;
    }
    let significant = u64::BITS - 1 - masked.leading_zeros();
    Some((significant / SLOT_BITS) as usize)
}

/// The slot of `deadline` in `level`: the deadline's 6-bit group for that level.
pub(super) fn slot_for(deadline: u64, level: usize) -> usize {
    ((deadline >> (level as u32 * SLOT_BITS)) & (SLOTS as u64 - 1)) as usize
}

/// Milliseconds covered by one slot of `level`: 64^level.
pub(super) fn slot_width(level: usize) -> u64 {
    1 << (level as u32 * SLOT_BITS)
}

/// Milliseconds covered by one full rotation of `level`: 64^(level + 1).
pub(super) fn level_range(level: usize) -> u64 {
    1 << ((level as u32 + 1) * SLOT_BITS)
}

/// A doubly linked list threaded through the slab by index. Empty when `head == NIL`.
#[derive(Clone, Copy, Debug)]
pub(super) struct List {
    pub(super) head: u32,
    pub(super) tail: u32,
}

impl List {
    /// The empty list.
    pub(super) const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    pub(super) fn is_empty(&self) -> bool {
        self.head == NIL
    }

    /// The first entry, if any.
    pub(super) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// Appends `idx`, which must not be linked into any list. O(1).
    pub(super) fn push_back<T>(&mut self, entries: &mut Slab<Entry<T>>, idx: u32) {
        let old_tail = self.tail;
        {
            let entry = &mut entries[idx as usize];
            entry.prev = old_tail;
            entry.next = NIL;
        }
        if old_tail == NIL {
            // INVARIANT: head and tail are NIL together.
            debug_assert_eq!(self.head, NIL);
            self.head = idx;
        } else {
            entries[old_tail as usize].next = idx;
        }
        self.tail = idx;
    }

    /// Unlinks `idx`, which must be linked into this list. O(1).
    pub(super) fn unlink<T>(&mut self, entries: &mut Slab<Entry<T>>, idx: u32) {
        let (prev, next) = {
            let entry = &mut entries[idx as usize];
            let links = (entry.prev, entry.next);
            entry.prev = NIL;
            entry.next = NIL;
            links
        };
        if prev == NIL {
            debug_assert_eq!(self.head, idx, "an entry without prev must be the head");
            self.head = next;
        } else {
            entries[prev as usize].next = next;
        }
        if next == NIL {
            debug_assert_eq!(self.tail, idx, "an entry without next must be the tail");
            self.tail = prev;
        } else {
            entries[next as usize].prev = prev;
        }
    }

    /// Detaches the whole list, leaving this one empty. The entries keep their links, so the
    /// caller walks the returned list by `next` (reading it before re-linking each entry).
    pub(super) fn take(&mut self) -> List {
        std::mem::replace(self, List::EMPTY)
    }
}

/// When and where the wheel must next do work in one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Expiration {
    /// The level holding the slot.
    pub(super) level: usize,
    /// The slot to process.
    pub(super) slot: usize,
    /// The time at which the slot starts: every timer in it is due at or after this time.
    pub(super) at: u64,
}

/// One level: 64 slots, each a [`List`], and a mask with bit `s` set iff slot `s` is non-empty.
#[derive(Debug)]
pub(super) struct Level {
    /// This level's number, 0 (1 ms slots) to `NUM_LEVELS - 1`.
    pub(super) level: usize,
    /// Bit `s` set iff `slots[s]` is non-empty.
    pub(super) occupied: u64,
    pub(super) slots: [List; SLOTS],
}

impl Level {
    pub(super) fn new(level: usize) -> Level {
        Level {
            level,
            occupied: 0,
            slots: [List::EMPTY; SLOTS],
        }
    }

    /// Links `idx` into `slot`. O(1).
    pub(super) fn push<T>(&mut self, entries: &mut Slab<Entry<T>>, idx: u32, slot: usize) {
        self.slots[slot].push_back(entries, idx);
        self.occupied |= 1 << slot;
    }

    /// Unlinks `idx` from `slot`, clearing the slot's bit if it empties. O(1).
    pub(super) fn unlink<T>(&mut self, entries: &mut Slab<Entry<T>>, idx: u32, slot: usize) {
        // INVARIANT: a slot holding an entry has its bit set.
        debug_assert!(self.occupied & (1 << slot) != 0);
        self.slots[slot].unlink(entries, idx);
        if self.slots[slot].is_empty() {
            self.occupied &= !(1 << slot);
        }
    }

    /// Detaches every entry of `slot` and clears its bit. O(1).
    pub(super) fn take_slot(&mut self, slot: usize) -> List {
        self.occupied &= !(1 << slot);
        self.slots[slot].take()
    }

    /// The first occupied slot at or after the wheel's position `elapsed`, and the time it
    /// starts. O(1): one rotate and one count of trailing zeros.
    pub(super) fn next_expiration(&self, elapsed: u64) -> Option<Expiration> {
        if self.occupied == 0 {
            return None;
        }
        // Rotating the mask so that bit 0 is the slot `elapsed` is in turns "the next occupied
        // slot, going round from now" into a count of trailing zeros.
        let now_slot = slot_for(elapsed, self.level);
        let distance = self.occupied.rotate_right(now_slot as u32).trailing_zeros() as usize;
        let slot = (now_slot + distance) % SLOTS;
        // INVARIANT: every timer in this level shares all bits above this level's group with
        // `elapsed` and is later in this group, so its slot lies strictly ahead of `now_slot` in
        // the current rotation; the wheel never wraps a level (far deadlines go to the overflow
        // list instead). Hence `slot > now_slot` and `at > elapsed`.
        debug_assert!(
            slot > now_slot,
            "level {} slot {slot} not after now_slot {now_slot} (elapsed {elapsed}, occupied {:#x})",
            self.level,
            self.occupied
        );
        let rotation_start = elapsed & !(level_range(self.level) - 1);
        let at = rotation_start + slot as u64 * slot_width(self.level);
        debug_assert!(at > elapsed);
        Some(Expiration {
            level: self.level,
            slot,
            at,
        })
    }
}
