//! A hierarchical timer wheel, sans-IO: time is a `u64` count of milliseconds given by the
//! caller, and nothing here reads a clock.
//!
//! Every timeout the router arms (request deadlines, heartbeats, broadcast ack windows) lives in
//! one [`TimerWheel`]. Timers are entries of a [`Slab`]; each wheel slot is a list threaded
//! through the entries by index, so arming or cancelling a timer is O(1) and allocates nothing
//! once the slab has grown to the peak number of live timers.
//!
//! # Contract
//! - Time never goes backwards: [`TimerWheel::poll_expired`] with a `now` below
//!   [`TimerWheel::elapsed`] acts as if given `elapsed()`. Polling early, twice, or with the same
//!   `now` is harmless.
//! - A timer fires exactly once `now >= deadline`: never earlier, and never later than the first
//!   `poll_expired(now)` with such a `now`. The caller converts `Instant`s to ticks rounding
//!   deadlines **up** and `now` **down**, so that rounding cannot fire a timer early.
//! - `poll_expired(now)` first advances the wheel all the way to `now` (afterwards `elapsed() ==
//!   now`), then hands out **one** expired value per call. Call it until it returns `None`, then
//!   ask [`TimerWheel::next_deadline`] when to wake up next. Inserting and removing between two
//!   calls is allowed, including removing a timer that has expired but not been handed out yet.
//! - Expired values come out in non-decreasing deadline order; timers due in the same millisecond
//!   come out in no particular order.
//! - A deadline `<= elapsed()` is refused by [`TimerWheel::insert`] with [`Elapsed`], which hands
//!   the value back: the caller acts on it as if it had just fired.
//! - A [`TimerKey`] carries a generation, so a stale key (its timer fired or was removed and the
//!   slab slot reused) reaches nothing: [`TimerWheel::remove`] and [`TimerWheel::deadline`]
//!   return `None`. Generations come from a wrapping `u32` counter bumped on every insert, so a
//!   stale key can only match again if the very same slot is reused by exactly the 2^32-th later
//!   insert.
//! - Nothing panics, except `insert` beyond `u32::MAX - 1` live timers (slab indices are `u32`).
//!
//! # Levels
//! Six levels of 64 slots; a slot of level `L` spans 64^L ms and one rotation of it 64^(L+1) ms:
//!
//! | level | slot width          | one rotation (range)  |
//! |-------|---------------------|-----------------------|
//! | 0     | 1 ms                | 64 ms                 |
//! | 1     | 64 ms               | 4.096 s               |
//! | 2     | 4.096 s             | 262.144 s (~4.4 min)  |
//! | 3     | 262.144 s (~4.4 min)| ~4.66 h (2^24 ms)     |
//! | 4     | ~4.66 h             | ~12.4 days (2^30 ms)  |
//! | 5     | ~12.4 days          | ~795 days (2^36 ms)   |
//!
//! A timer due at `d` while the wheel stands at `elapsed` sits in level `L = msb(d ^ elapsed) /
//! 6`, slot `(d >> 6L) % 64`: the lowest level whose current rotation still holds `d`. So a
//! timer 64 ms away is in level 0 or 1 depending on alignment (deadline 63 from 0 is level 0,
//! 64 is level 1; 4095 is level 1, 4096 level 2, and so on).
//!
//! Deadlines in a later 2^36 ms "epoch" than `elapsed` (at least ~795 days away) are beyond
//! the levels' range. Rather than clamping them to the last slot, which would either fire them
//! early or make the top level a ring that a long jump must walk round once per 795 days, they
//! wait with their exact deadline in an overflow list. The wheel keeps a lower bound on the
//! earliest epoch start among them and re-places them when it reaches it.
//!
//! # Invariants
//! Checked by `debug_assert!` where cheap, and in full by the tests after every step.
//! 1. Every entry is linked into exactly one list, which its `location` names: a level slot, the
//!    overflow list or the expired list.
//! 2. An entry in level `L`, slot `s` has `elapsed < deadline`, `level_for(elapsed, deadline) ==
//!    L` and `slot_for(deadline, L) == s`. Consequently every occupied slot lies strictly after
//!    `elapsed`'s own slot in its level's current rotation: no level ever wraps.
//! 3. An overflow entry's deadline is in a later epoch than `elapsed`, and `overflow_next` is at
//!    most the start of that epoch and more than `elapsed`.
//! 4. An expired entry has `deadline <= elapsed`; the expired list is sorted by deadline.
//! 5. Bit `s` of a level's `occupied` mask is set iff slot `s` is non-empty.
//!
//! The wheel only ever moves `elapsed` to the start of the earliest occupied slot (or to
//! `overflow_next`), or to a `now` before it. No entry outside that slot changes level or slot
//! by such a move (its deadline still differs from `elapsed` in the same 6-bit group), so (2)
//! holds without touching them; the entries of the slot itself are re-placed into lower levels
//! or, when their deadline is the slot's start, moved to the expired list. Since slots are
//! processed in time order and an entry expires exactly at its deadline, (4) follows.
//!
//! # Complexity
//! - `insert`, `remove`, `deadline`, `len`: O(1).
//! - `next_deadline`: O(levels): one rotate and trailing-zero count per level.
//! - `poll_expired`: O(levels) per occupied slot processed, never per elapsed millisecond: empty
//!   slots are skipped through the masks. A timer moves down at most once per level, so
//!   advancing by any amount, a year or `u64::MAX`, costs O(levels × timers due). Each time the
//!   wheel reaches `overflow_next`, the overflow list is scanned once.

mod level;
#[cfg(test)]
mod tests;

use std::fmt;

use slab::Slab;

use level::{level_for, slot_for, Expiration, Level, List, NIL, NUM_LEVELS, RANGE_BITS};

/// A set of timers, each carrying a value of type `T`, driven by the caller's clock.
///
/// See the [module docs](self) for the contract, the level table and the costs.
pub struct TimerWheel<T> {
    /// The timers. Entry indices fit a `u32` and are never [`NIL`].
    entries: Slab<Entry<T>>,
    /// The wheel's position in ms. Only moves forward.
    elapsed: u64,
    levels: [Level; NUM_LEVELS],
    /// Timers due in a later epoch than `elapsed` (beyond the levels' range), in no order.
    overflow: List,
    /// A lower bound on the start of the earliest epoch holding an overflow timer: when the wheel
    /// gets there, the overflow list is re-placed. `u64::MAX` while the list is empty. Removing an
    /// overflow timer does not raise it, which only costs one scan that finds nothing to move.
    overflow_next: u64,
    /// Timers with `deadline <= elapsed` not handed out yet, sorted by deadline.
    expired: List,
    /// Generation of the next inserted timer.
    next_generation: u32,
}

/// The handle of one armed timer, returned by [`TimerWheel::insert`].
///
/// It holds the timer's slab index and a generation: once the timer has fired or been removed,
/// the key reaches nothing, even after its slab slot has been reused by another timer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

/// The deadline given to [`TimerWheel::insert`] had already passed (`deadline <= elapsed()`);
/// the value is handed back, and the caller should act on it as if its timer had just fired.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed<T>(pub T);

/// One timer: its value, its exact deadline, its list links and which list it is in.
struct Entry<T> {
    value: T,
    deadline: u64,
    generation: u32,
    /// Previous entry in the same list, or [`NIL`].
    prev: u32,
    /// Next entry in the same list, or [`NIL`].
    next: u32,
    location: Location,
}

/// The list an entry is linked into.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Location {
    /// A slot of one level.
    Slot { level: u8, slot: u8 },
    /// The overflow list (deadline in a later epoch).
    Overflow,
    /// The expired list (deadline reached, value not yet handed out).
    Expired,
}

/// The next piece of work that advancing the wheel must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Process one slot of one level.
    Slot(Expiration),
    /// Re-place the overflow list, at this time.
    Overflow(u64),
}

impl Step {
    fn at(self) -> u64 {
        match self {
            Step::Slot(expiration) => expiration.at,
            Step::Overflow(at) => at,
        }
    }
}

impl<T> TimerWheel<T> {
    /// An empty wheel at time 0 (`elapsed() == 0`).
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty wheel at time 0 with room for `capacity` timers before the slab reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        TimerWheel {
            entries: Slab::with_capacity(capacity),
            elapsed: 0,
            levels: std::array::from_fn(Level::new),
            overflow: List::EMPTY,
            overflow_next: u64::MAX,
            expired: List::EMPTY,
            next_generation: 0,
        }
    }

    /// The wheel's current time in ms. It only moves forward, through
    /// [`poll_expired`](Self::poll_expired), which sets it to the `now` it was given.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Arms a timer that fires once time reaches `deadline` (ms). O(1).
    ///
    /// Deadlines beyond the levels' range (~795 days) are kept exactly: such a timer still fires
    /// at its deadline, not before.
    ///
    /// # Errors
    /// [`Elapsed`] with `value` if `deadline <= elapsed()`: the timer is due already.
    ///
    /// # Panics
    /// If `u32::MAX - 1` timers are already armed (the slab index would not fit a key).
    pub fn insert(&mut self, deadline: u64, value: T) -> Result<TimerKey, Elapsed<T>> {
        if deadline <= self.elapsed {
            return Err(Elapsed(value));
        }
        let vacant = self.entries.vacant_entry();
        let index = u32::try_from(vacant.key())
            .ok()
            .filter(|&index| index != NIL)
            .expect("TimerWheel: more than u32::MAX - 1 timers armed");
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        vacant.insert(Entry {
            value,
            deadline,
            generation,
            prev: NIL,
            next: NIL,
            // Overwritten by `place` straight away.
            location: Location::Expired,
        });
        self.place(index);
        Ok(TimerKey { index, generation })
    }

    /// Cancels a timer and returns its value, also when it has expired but not been handed out
    /// by [`poll_expired`](Self::poll_expired) yet. O(1).
    ///
    /// Returns `None` for a stale key (the timer already fired or was removed, whether or not its
    /// slot was reused since); never panics.
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        let location = self.get(key)?.location;
        match location {
            Location::Slot { level, slot } => {
                self.levels[usize::from(level)].unlink(&mut self.entries, key.index, slot.into())
            }
            Location::Overflow => {
                self.overflow.unlink(&mut self.entries, key.index);
                if self.overflow.is_empty() {
                    self.overflow_next = u64::MAX;
                }
            }
            Location::Expired => self.expired.unlink(&mut self.entries, key.index),
        }
        Some(self.entries.remove(key.index as usize).value)
    }

    /// The deadline the timer was armed with, or `None` for a stale key. O(1).
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.get(key).map(|entry| entry.deadline)
    }

    /// The earliest time at which [`poll_expired`](Self::poll_expired) can make progress, or
    /// `None` when no timer is armed. O(levels).
    ///
    /// It is never later than the earliest deadline, but may be earlier: the start of a slot of
    /// a higher level whose timers must move down first (polling then returns `None` and this
    /// moves on). It is at most `elapsed()` while expired values are waiting to be handed out:
    /// then poll again right away.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.expired.front() {
            Some(front) => Some(self.entries[front as usize].deadline),
            None => self.next_step().map(Step::at),
        }
    }

    /// Advances the wheel to `now` (ms) and returns the value of one expired timer
    /// (`deadline <= now`), or `None` when none is left. Call it until it returns `None`.
    ///
    /// A `now` below [`elapsed()`](Self::elapsed) counts as `elapsed()`, so calling early,
    /// twice or with the same `now` is harmless. Values come out in non-decreasing deadline
    /// order. Costs O(levels) per occupied slot passed, never per elapsed millisecond.
    #[must_use = "an expired timer's value is handed out only once"]
    pub fn poll_expired(&mut self, now: u64) -> Option<T> {
        self.advance(now);
        let front = self.expired.front()?;
        self.expired.unlink(&mut self.entries, front);
        let entry = self.entries.remove(front as usize);
        debug_assert!(entry.deadline <= self.elapsed);
        Some(entry.value)
    }

    /// The number of armed timers, including expired ones not handed out yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry `key` names, if it is still armed.
    fn get(&self, key: TimerKey) -> Option<&Entry<T>> {
        self.entries
            .get(key.index as usize)
            .filter(|entry| entry.generation == key.generation)
    }

    /// Processes every step due at or before `now`, then moves `elapsed` to `now`. Returns the
    /// number of steps taken (for the tests' cost checks).
    fn advance(&mut self, now: u64) -> usize {
        let mut steps = 0;
        while let Some(step) = self.next_step().filter(|step| step.at() <= now) {
            self.process(step);
            steps += 1;
        }
        // No step is due at or before `now`, so moving there changes no entry's place
        // (invariant 2 and 3 hold for the new `elapsed`).
        self.elapsed = self.elapsed.max(now);
        steps
    }

    /// The earliest step of work, over every level and the overflow list.
    fn next_step(&self) -> Option<Step> {
        // Lower levels are processed first on a tie, though invariant 2 rules ties out (a level's
        // slots all start before the next level's first slot after `elapsed`).
        let slots = self
            .levels
            .iter()
            .filter_map(|level| level.next_expiration(self.elapsed))
            .min_by_key(|expiration| expiration.at)
            .map(Step::Slot);
        let overflow = (!self.overflow.is_empty()).then_some(Step::Overflow(self.overflow_next));
        // INVARIANT: every slot holds timers of the current epoch, and `overflow_next` is the
        // start of a later one, so the overflow list waits until the levels are empty.
        debug_assert!(
            overflow.is_none() || slots.is_none_or(|step| step.at() < self.overflow_next),
            "{slots:?} not before overflow_next {}",
            self.overflow_next
        );
        slots.or(overflow)
    }

    /// Moves the wheel to the step's time and re-places the entries of its slot (or of the
    /// overflow list): each goes down a level, or to the expired list if due.
    fn process(&mut self, step: Step) {
        // INVARIANT: steps come in time order and never lie in the past.
        debug_assert!(
            step.at() > self.elapsed,
            "{step:?} at elapsed {}",
            self.elapsed
        );
        self.elapsed = step.at();
        let list = match step {
            Step::Slot(expiration) => self.levels[expiration.level].take_slot(expiration.slot),
            Step::Overflow(_) => {
                self.overflow_next = u64::MAX;
                self.overflow.take()
            }
        };
        let mut cursor = list.head;
        while cursor != NIL {
            // Read the link before `place` overwrites it.
            let next = self.entries[cursor as usize].next;
            self.place(cursor);
            cursor = next;
        }
    }

    /// Links the entry `index`, which is in no list, into the list its deadline calls for as
    /// the wheel stands at `elapsed`.
    fn place(&mut self, index: u32) {
        let deadline = self.entries[index as usize].deadline;
        let location = if deadline <= self.elapsed {
            self.expired.push_back(&mut self.entries, index);
            Location::Expired
        } else if let Some(level) = level_for(self.elapsed, deadline) {
            let slot = slot_for(deadline, level);
            self.levels[level].push(&mut self.entries, index, slot);
            // Both fit a u8: level < 6, slot < 64.
            Location::Slot {
                level: level as u8,
                slot: slot as u8,
            }
        } else {
            self.overflow.push_back(&mut self.entries, index);
            let epoch_start = deadline & !((1 << RANGE_BITS) - 1);
            // INVARIANT: an overflow deadline is in a later epoch than `elapsed`.
            debug_assert!(epoch_start > self.elapsed);
            self.overflow_next = self.overflow_next.min(epoch_start);
            Location::Overflow
        };
        self.entries[index as usize].location = location;
    }
}

impl<T> Default for TimerWheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("elapsed", &self.elapsed)
            .field("len", &self.len())
            .field("next_deadline", &self.next_deadline())
            .finish_non_exhaustive()
    }
}
